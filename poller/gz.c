/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* gz.c — the gzip copy of a cached body: one-shot compression into a gzip
 * member, slice-by-slice inflation of it, and the HTTP rules around it
 * (compressible types, Accept-Encoding, the variant's ETag).
 *
 * Calling threads: any; nothing here keeps shared state. An inflater is
 * used by one thread at a time.
 *
 * Invariants:
 *   - the gzip header we write is fixed (mtime 0, OS 255, no name), so the
 *     same body at the same level always compresses to the same bytes;
 *   - zlib counts in uInt: inputs and outputs larger than UINT_MAX are
 *     handed to it in UINT_MAX pieces, never truncated.
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include "apx_gz.h"

/* 15 = the largest window (best ratio); +16 asks zlib for a gzip wrapper
 * instead of a zlib one, and makes inflate accept gzip only. */
#define GZ_WINDOW_BITS (15 + 16)
/* zlib's default: 8 gives the usual ratio at 256 KiB of deflate state. */
#define GZ_MEM_LEVEL 8
#define GZ_OS_UNKNOWN 255

/* ------------------------------------------------------------------------
 * Compression
 */

static uInt clamp_uint(size_t n)
{
    return n > UINT_MAX ? UINT_MAX : (uInt)n;
}

apr_status_t apx_gz_compress(const void *in, size_t len, int level,
                             void **out, size_t *outlen)
{
    z_stream zs;
    gz_header hdr;
    unsigned char *buf;
    size_t limit, cap, in_left, out_left;
    apr_status_t rv;
    int zrc;

    /* Worth it only when it saves at least a 16th: below that the CPU of
     * inflating for identity clients and the second copy cost more than
     * the bytes saved. */
    limit = len - len / 16;
    if (limit == 0)
        return APR_EGENERAL;
    if (level < 1)
        level = 1;
    else if (level > 9)
        level = 9;

    memset(&zs, 0, sizeof(zs));
    zrc = deflateInit2(&zs, level, Z_DEFLATED, GZ_WINDOW_BITS, GZ_MEM_LEVEL,
                       Z_DEFAULT_STRATEGY);
    if (zrc != Z_OK)
        return APR_ENOMEM;
    memset(&hdr, 0, sizeof(hdr));
    hdr.time = 0;
    hdr.os = GZ_OS_UNKNOWN;
    if (deflateSetHeader(&zs, &hdr) != Z_OK) {
        deflateEnd(&zs);
        return APR_ENOMEM;
    }

    /* A result of `limit` bytes or more is thrown away anyway, so the
     * buffer stops there: incompressible input fails as soon as it fills
     * it, instead of being deflated to the end. */
    cap = deflateBound(&zs, (uLong)len);
    if (cap > limit)
        cap = limit;
    buf = malloc(cap);
    if (!buf) {
        deflateEnd(&zs);
        return APR_ENOMEM;
    }

    zs.next_in = (Bytef *)(uintptr_t)in;    /* zlib never writes it */
    in_left = len;
    zs.next_out = buf;
    out_left = cap;
    for (;;) {
        if (zs.avail_in == 0 && in_left) {
            zs.avail_in = clamp_uint(in_left);
            in_left -= zs.avail_in;
        }
        if (zs.avail_out == 0) {
            if (!out_left) {
                rv = APR_EGENERAL;          /* not smaller than the limit */
                goto cleanup;
            }
            zs.avail_out = clamp_uint(out_left);
            out_left -= zs.avail_out;
        }
        zrc = deflate(&zs, in_left ? Z_NO_FLUSH : Z_FINISH);
        if (zrc == Z_STREAM_END)
            break;
        /* Z_BUF_ERROR means no progress, impossible with room on both
         * sides: a zlib failure like any other. */
        if (zrc != Z_OK) {
            rv = APR_ENOMEM;
            goto cleanup;
        }
    }
    if ((size_t)zs.total_out >= limit) {    /* filled the buffer exactly */
        rv = APR_EGENERAL;
        goto cleanup;
    }
    *outlen = (size_t)zs.total_out;
    /* The copy lives as long as its cache entry: give back the slack. */
    *out = realloc(buf, *outlen);
    if (!*out)
        *out = buf;
    deflateEnd(&zs);
    return APR_SUCCESS;

cleanup:
    deflateEnd(&zs);
    free(buf);
    return rv;
}

/* ------------------------------------------------------------------------
 * Inflation
 */

enum { GZ_INFLATING, GZ_ENDED, GZ_FAILED };

struct apx_gz_inflater {
    z_stream zs;
    const unsigned char *rest;  /* input beyond what zlib was given */
    size_t rest_len;
    int state;                  /* GZ_*; ENDED and FAILED are final */
};

apr_status_t apx_gz_inflater_create(apx_gz_inflater **pg, const void *in,
                                    size_t len)
{
    apx_gz_inflater *g = malloc(sizeof(*g));
    int zrc;

    *pg = NULL;
    if (!g)
        return APR_ENOMEM;
    memset(g, 0, sizeof(*g));
    zrc = inflateInit2(&g->zs, GZ_WINDOW_BITS);
    if (zrc != Z_OK) {
        free(g);
        return zrc == Z_MEM_ERROR ? APR_ENOMEM : APR_EGENERAL;
    }
    g->rest = in;
    g->rest_len = len;
    g->state = GZ_INFLATING;
    *pg = g;
    return APR_SUCCESS;
}

apr_status_t apx_gz_inflater_read(apx_gz_inflater *g, void *buf, size_t cap,
                                  size_t *got)
{
    uInt room = clamp_uint(cap);
    int zrc;

    *got = 0;
    if (g->state == GZ_ENDED)
        return APR_EOF;
    if (g->state == GZ_FAILED)
        return APR_EGENERAL;
    if (!room)
        return APR_SUCCESS;

    g->zs.next_out = buf;
    g->zs.avail_out = room;
    for (;;) {
        if (g->zs.avail_in == 0 && g->rest_len) {
            g->zs.next_in = (Bytef *)(uintptr_t)g->rest;
            g->zs.avail_in = clamp_uint(g->rest_len);
            g->rest += g->zs.avail_in;
            g->rest_len -= g->zs.avail_in;
        }
        zrc = inflate(&g->zs, Z_NO_FLUSH);
        *got = room - g->zs.avail_out;
        if (zrc == Z_STREAM_END) {
            g->state = GZ_ENDED;
            return APR_EOF;
        }
        if (zrc != Z_OK && zrc != Z_BUF_ERROR) {
            /* Z_DATA_ERROR (bad data, header or check), Z_NEED_DICT (not a
             * gzip member), Z_MEM_ERROR, Z_STREAM_ERROR. */
            g->state = GZ_FAILED;
            return zrc == Z_MEM_ERROR ? APR_ENOMEM : APR_EGENERAL;
        }
        if (g->zs.avail_out == 0)
            return APR_SUCCESS;
        /* inflate() stops short of a full buffer only when it has no input
         * left: the member was cut before its end (and trailer). */
        if ((g->zs.avail_in == 0 && g->rest_len == 0) || zrc == Z_BUF_ERROR) {
            g->state = GZ_FAILED;
            return APR_EGENERAL;
        }
    }
}

void apx_gz_inflater_destroy(apx_gz_inflater *g)
{
    if (!g)
        return;
    inflateEnd(&g->zs);
    free(g);
}

/* ------------------------------------------------------------------------
 * HTTP rules. Header values are ASCII: case folding never uses the locale.
 */

static int lower(int c)
{
    return c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c;
}

/* 1 when s[0..n) equals the lower-case word w, ignoring ASCII case. */
static int token_is(const char *s, size_t n, const char *w)
{
    size_t i;

    for (i = 0; i < n; i++)
        if (!w[i] || lower((unsigned char)s[i]) != w[i])
            return 0;
    return w[n] == '\0';
}

/* RFC 9110 tchar. */
static int is_tchar(int c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
        || (c >= '0' && c <= '9'))
        return 1;
    return c && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static int is_ows(int c)
{
    return c == ' ' || c == '\t';
}

static const char *skip_ows(const char *p)
{
    while (is_ows(*p))
        p++;
    return p;
}

static const char *skip_token(const char *p)
{
    while (is_tchar((unsigned char)*p))
        p++;
    return p;
}

/* A suffix of a subtype: 1 when sub[0..n) ends with w and has more
 * before it ("atom+xml" yes, "+xml" no). */
static int has_suffix(const char *sub, size_t n, const char *w)
{
    size_t wn = strlen(w);

    return n > wn && token_is(sub + n - wn, wn, w);
}

int apx_gz_type_is_compressible(const char *content_type)
{
    static const char *const exact[] = {
        "application/json", "application/javascript", "application/xml",
        "application/x-javascript", "application/ld+json", "image/svg+xml",
        "application/wasm", NULL
    };
    const char *p, *type, *sub, *end;
    size_t tlen, slen, i;

    if (!content_type)
        return 0;
    type = skip_ows(content_type);
    p = skip_token(type);
    tlen = (size_t)(p - type);
    if (!tlen || *p != '/')
        return 0;
    sub = p + 1;
    p = skip_token(sub);
    slen = (size_t)(p - sub);
    end = skip_ows(p);
    if (!slen || (*end && *end != ';'))
        return 0;

    if (token_is(type, tlen, "text"))
        return 1;
    for (i = 0; exact[i]; i++)
        if (token_is(type, (size_t)(p - type), exact[i]))
            return 1;
    return has_suffix(sub, slen, "+json") || has_suffix(sub, slen, "+xml");
}

/* qvalue (RFC 9110 §12.4.2) in thousandths at *pp; -1 when malformed. */
static int parse_qvalue(const char **pp)
{
    const char *p = *pp;
    int q, scale = 100, digits = 0;

    if (*p != '0' && *p != '1')
        return -1;
    q = (*p++ - '0') * 1000;
    if (*p == '.') {
        for (p++; *p >= '0' && *p <= '9'; p++) {
            if (++digits > 3)
                return -1;
            q += (*p - '0') * scale;
            scale /= 10;
        }
    }
    if (q > 1000)
        return -1;
    *pp = p;
    return q;
}

/* The value of a quoted-string or token parameter is skipped; returns NULL
 * when malformed. */
static const char *skip_param_value(const char *p)
{
    const char *s;

    if (*p != '"') {
        s = skip_token(p);
        return s == p ? NULL : s;
    }
    for (p++; *p && *p != '"'; p++)
        if (*p == '\\' && !*++p)
            return NULL;
    return *p == '"' ? p + 1 : NULL;
}

/* Parses one member of an Accept-Encoding list at *pp: its coding and q
 * (in thousandths, 1000 when absent). Leaves *pp after the member's ','
 * (or at the end). Returns 0 when the member is empty or malformed. */
static int parse_coding(const char **pp, const char **coding, size_t *clen,
                        int *q)
{
    const char *p = skip_ows(*pp), *name, *s;
    int ok = 1;

    *q = 1000;
    *coding = p;
    p = skip_token(p);
    *clen = (size_t)(p - *coding);
    if (!*clen)
        ok = 0;
    while (ok) {
        p = skip_ows(p);
        if (*p != ';')
            break;
        name = p = skip_ows(p + 1);
        p = skip_token(p);
        s = skip_ows(p);
        if (p == name || *s != '=') {
            ok = 0;
            break;
        }
        s = skip_ows(s + 1);
        if (token_is(name, (size_t)(p - name), "q")) {
            if ((*q = parse_qvalue(&s)) < 0)
                ok = 0;
            p = s;
        }
        else if (!(p = skip_param_value(s))) {
            ok = 0;     /* not ours to judge, but it must parse */
            p = s;
        }
    }
    if (ok && *p && *p != ',')
        ok = 0;
    /* A malformed member is skipped up to the next comma (a comma inside
     * its broken quoted-string included: nothing safer to resync on). */
    while (*p && *p != ',')
        p++;
    *pp = *p ? p + 1 : p;
    return ok;
}

/* When a coding is listed more than once (or as both gzip and x-gzip),
 * the lowest q wins: sending gzip to a client that refused it somewhere
 * breaks it, sending identity never does. */
int apx_gz_accepts(const char *accept_encoding)
{
    const char *p = accept_encoding, *coding;
    size_t clen;
    int q, gzip_q = -1, star_q = -1;

    if (!p)
        return 0;
    while (*p) {
        if (!parse_coding(&p, &coding, &clen, &q))
            continue;
        if (token_is(coding, clen, "gzip")
            || token_is(coding, clen, "x-gzip")) {
            if (gzip_q < 0 || q < gzip_q)
                gzip_q = q;
        }
        else if (clen == 1 && *coding == '*') {
            if (star_q < 0 || q < star_q)
                star_q = q;
        }
        /* "identity" and the others say nothing about gzip. */
    }
    if (gzip_q >= 0)
        return gzip_q > 0;
    return star_q > 0;
}

/* RFC 9110 etagc: any visible character but '"', or obs-text. */
static int is_etagc(unsigned char c)
{
    return c == 0x21 || (c >= 0x23 && c <= 0x7e) || c >= 0x80;
}

size_t apx_gz_etag(const char *etag, char *buf, size_t cap)
{
    static const char tail[] = "-gzip";
    const char *p;
    size_t n, len;

    if (!etag || !buf)
        return (size_t)-1;
    p = etag;
    if (p[0] == 'W' && p[1] == '/')
        p += 2;
    if (*p++ != '"')
        return (size_t)-1;
    while (is_etagc((unsigned char)*p))
        p++;
    if (p[0] != '"' || p[1] != '\0')
        return (size_t)-1;
    n = (size_t)(p - etag);                 /* all but the closing quote */
    len = n + sizeof(tail) - 1 + 1;
    if (len >= cap)
        return (size_t)-1;
    memcpy(buf, etag, n);
    memcpy(buf + n, tail, sizeof(tail) - 1);
    buf[len - 1] = '"';
    buf[len] = '\0';
    return len;
}
