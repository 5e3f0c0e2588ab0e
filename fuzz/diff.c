/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* fuzz/diff.c — libFuzzer differential target: however the bytes arrive
 * (all at once, a byte at a time, or in pieces whose sizes come from the
 * input), the head parser and the chunked decoder must report the same
 * thing: status, error class, fields, bytes consumed, data and trailers.
 * Byte 0 selects the parser (even: head, odd: chunked) and seeds the
 * piece sizes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "apx_http.h"

#define CHECK(c) do { if (!(c)) abort(); } while (0)
#define HEAD_MAX 2048

typedef struct {
    apr_status_t rv;
    apx_http_error error;
    size_t consumed;
    char sig[8192];
    size_t sig_len;
} result;

static result res[3];
static char hbuf[3][HEAD_MAX];
static apx_http_field hfields[3][24];
static char tbuf[3][512];
static apx_http_field tfields[3][8];
static char out[3][8192];

static void sig_add(result *r, const char *p, size_t n)
{
    if (n == 0)
        return;
    if (n > sizeof(r->sig) - r->sig_len)
        n = sizeof(r->sig) - r->sig_len;
    memcpy(r->sig + r->sig_len, p, n);
    r->sig_len += n;
}

static void sig_fields(result *r, const apx_http_field *f, unsigned n)
{
    unsigned k;

    for (k = 0; k < n; k++) {
        sig_add(r, f[k].name, f[k].name_len);
        sig_add(r, ":", 1);
        sig_add(r, f[k].value, f[k].value_len);
        sig_add(r, "\n", 1);
    }
}

/* Piece size for mode m: 0 all, 1 one byte, 2 input-driven. */
static size_t piece(int m, const unsigned char *seed, size_t seed_len,
                    size_t *step, size_t left)
{
    size_t n;

    if (m == 0)
        return left;
    n = m == 1 || seed_len == 0 ? 1 : 1 + seed[(*step)++ % seed_len] % 41;
    return n < left ? n : left;
}

static void run_head(int m, const char *in, size_t size,
                     const unsigned char *seed, size_t seed_len)
{
    result *r = &res[m];
    apx_http_resp p;
    size_t off = 0, used, step = 0;
    apr_status_t rv = APR_INCOMPLETE;
    char line[128];
    int64_t len = -1;
    int heads = 0;

    memset(r, 0, sizeof(*r));
    apx_http_resp_init(&p, hbuf[m], HEAD_MAX, hfields[m], 24);
    while (off < size) {
        size_t n = piece(m, seed, seed_len, &step, size - off);

        rv = apx_http_resp_feed(&p, in + off, n, &used);
        CHECK(used <= n);
        off += used;
        if (rv == APR_INCOMPLETE) {
            CHECK(used == n);
            continue;
        }
        if (rv != APR_SUCCESS)
            break;
        sig_add(r, line, (size_t)snprintf(line, sizeof(line),
                "%d %d [%zu] cl=%lld ch=%d ka=%d fr=%d/%lld at=%zu\n",
                p.status, p.minor, p.reason_len,
                (long long)p.content_length, p.chunked,
                apx_http_resp_keepalive(&p),
                (int)apx_http_resp_framing(&p, "GET", &len), (long long)len,
                off));
        sig_add(r, p.reason, p.reason_len);
        sig_fields(r, p.fields, p.nfields);
        if (!apx_http_resp_is_interim(&p) || ++heads > 4)
            break;
        apx_http_resp_reset(&p);
        rv = APR_INCOMPLETE;
    }
    r->rv = rv;
    r->error = p.error;
    /* on error how much was consumed is unspecified */
    r->consumed = rv == APX_HTTP_EPROTO ? 0 : off;
}

static void run_chunked(int m, const char *in, size_t size,
                        const unsigned char *seed, size_t seed_len)
{
    result *r = &res[m];
    apx_http_chunked d;
    size_t off = 0, used, step = 0, dl = 0, dn, n = 0;
    const char *data;
    apr_status_t rv = APR_INCOMPLETE;

    memset(r, 0, sizeof(*r));
    apx_http_chunked_init(&d, tbuf[m], sizeof(tbuf[m]), tfields[m], 8);
    while (off < size) {
        if (n == 0)
            n = piece(m, seed, seed_len, &step, size - off);
        rv = apx_http_chunked_feed(&d, in + off, n, &used, &data, &dn);
        CHECK(used <= n);
        CHECK(dl + dn <= sizeof(out[m]));
        if (dn)
            memcpy(out[m] + dl, data, dn);
        dl += dn;
        off += used;
        n -= used;
        if (rv != APR_INCOMPLETE)
            break;
        CHECK(dn || n == 0);
    }
    r->rv = rv;
    r->error = d.error;
    r->consumed = rv == APX_HTTP_EPROTO ? 0 : off;
    if (rv != APX_HTTP_EPROTO) {
        sig_add(r, out[m], dl);
        sig_add(r, "|", 1);
        if (rv == APR_SUCCESS)
            sig_fields(r, d.fields, d.nfields);
    }
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    const unsigned char *seed;
    size_t seed_len;
    int m;

    if (size < 1 || size > 8192)
        return 0;
    /* piece sizes come from the input itself */
    seed = data + 1;
    seed_len = size - 1;
    for (m = 0; m < 3; m++) {
        if (data[0] & 1)
            run_chunked(m, (const char *)data + 1, size - 1, seed, seed_len);
        else
            run_head(m, (const char *)data + 1, size - 1, seed, seed_len);
    }
    for (m = 1; m < 3; m++) {
        CHECK(res[m].rv == res[0].rv);
        CHECK(res[m].error == res[0].error);
        CHECK(res[m].consumed == res[0].consumed);
        CHECK(res[m].sig_len == res[0].sig_len);
        CHECK(memcmp(res[m].sig, res[0].sig, res[0].sig_len) == 0);
    }
    return 0;
}
