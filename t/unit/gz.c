/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* Unit tests of the gzip copy: round trips read back in slices of several
 * sizes, the "not worth it" threshold against zlib run by the test itself,
 * the fixed header and trailer bytes, level clamping, corrupt and cut
 * members, foreign gzip members, and the HTTP rules (Accept-Encoding,
 * compressible types, the variant's ETag). */
#include "../../poller/gz.c"
#include "tap.h"

/* ------------------------------------------------------------------------
 * Helpers
 */

/* Text that compresses the way pages do: repeated words, changing numbers. */
static unsigned char *make_text(size_t len)
{
    static const char *const words[] = {
        "the ", "quick ", "brown ", "fox ", "jumps ", "over ", "lazy ",
        "dog ", "<div class=\"row\">", "</div>\n", "proxy ", "cache "
    };
    unsigned char *t = malloc(len);
    size_t i = 0;
    unsigned n = 0;
    char tmp[32];

    while (i < len) {
        const char *w = words[(n * 7 + n / 13) % 12];
        size_t wl;

        if (n % 5 == 0) {
            snprintf(tmp, sizeof(tmp), "%u ", n * 2654435761u % 100000);
            w = tmp;
        }
        wl = strlen(w);
        if (wl > len - i)
            wl = len - i;
        memcpy(t + i, w, wl);
        i += wl;
        n++;
    }
    return t;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static void fill_random(unsigned char *p, size_t len)
{
    size_t i;

    for (i = 0; i < len; i++) {
        rng_state ^= rng_state << 13;       /* xorshift64 */
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        p[i] = (unsigned char)(rng_state >> 24);
    }
}

/* Reads a whole member through the inflater, `slice` bytes at a time into
 * a buffer of exactly that size (so ASan sees any write past cap). Checks
 * the read protocol on the way: APR_SUCCESS always brings 1..slice bytes,
 * and a final status repeats with nothing more. Returns the final status;
 * *body (malloc()ed) and *blen get what was produced. */
static apr_status_t drain(const void *gz, size_t gzlen, size_t slice,
                          unsigned char **body, size_t *blen, int *proto_ok)
{
    apx_gz_inflater *g = NULL;
    unsigned char *buf = malloc(slice);
    size_t cap = 1 << 16, got;
    apr_status_t rv;

    *body = malloc(cap);
    *blen = 0;
    *proto_ok = 1;
    rv = apx_gz_inflater_create(&g, gz, gzlen);
    if (rv != APR_SUCCESS) {
        *proto_ok = 0;
        free(buf);
        return rv;
    }
    for (;;) {
        got = 12345;
        rv = apx_gz_inflater_read(g, buf, slice, &got);
        if (got > slice || (rv == APR_SUCCESS && got == 0)) {
            *proto_ok = 0;
            break;
        }
        if (*blen + got > cap) {
            while (*blen + got > cap)
                cap *= 2;
            *body = realloc(*body, cap);
        }
        memcpy(*body + *blen, buf, got);
        *blen += got;
        if (rv != APR_SUCCESS)
            break;
        if (*blen > ((size_t)64 << 20)) {   /* runaway: fail, not hang */
            *proto_ok = 0;
            break;
        }
    }
    if (rv == APR_EOF || rv == APR_EGENERAL) {
        apr_status_t again = apx_gz_inflater_read(g, buf, slice, &got);

        if (again != rv || got != 0)
            *proto_ok = 0;
    }
    apx_gz_inflater_destroy(g);
    free(buf);
    return rv;
}

/* 1 when the member inflates to want[0..wlen) with a 16 KiB read
 * buffer. */
static int round_trips(const void *gz, size_t gzlen, const void *want,
                       size_t wlen)
{
    unsigned char *body;
    size_t blen;
    int proto, same;
    apr_status_t rv = drain(gz, gzlen, 16384, &body, &blen, &proto);

    same = rv == APR_EOF && proto && blen == wlen && !memcmp(body, want, wlen);
    free(body);
    return same;
}

/* zlib itself, not our inflater: 1 when gz is one gzip member holding
 * want[0..wlen) with mtime 0, OS 255 and no optional header fields. */
static int zlib_says_gzip(const void *gz, size_t gzlen, const void *want,
                          size_t wlen)
{
    z_stream zs;
    gz_header h;
    unsigned char *out = malloc(wlen + 1);
    int zrc, good;

    memset(&zs, 0, sizeof(zs));
    memset(&h, 0, sizeof(h));
    if (inflateInit2(&zs, 15 + 16) != Z_OK) {
        free(out);
        return 0;
    }
    inflateGetHeader(&zs, &h);
    zs.next_in = (Bytef *)(uintptr_t)gz;
    zs.avail_in = (uInt)gzlen;
    zs.next_out = out;
    zs.avail_out = (uInt)wlen + 1;
    zrc = inflate(&zs, Z_FINISH);
    good = zrc == Z_STREAM_END && zs.avail_in == 0 && zs.total_out == wlen
           && !memcmp(out, want, wlen) && h.done == 1 && h.time == 0
           && h.os == 255 && !h.text && h.extra == Z_NULL
           && h.name == Z_NULL && h.comment == Z_NULL && !h.hcrc;
    inflateEnd(&zs);
    free(out);
    return good;
}

/* The gzip member zlib makes of in[0..len) with our parameters and header,
 * computed without the size limit apx_gz_compress applies. */
static unsigned char *reference_gzip(const void *in, size_t len, int level,
                                     size_t *outlen)
{
    z_stream zs;
    gz_header h;
    uLong bound;
    unsigned char *out;

    memset(&zs, 0, sizeof(zs));
    memset(&h, 0, sizeof(h));
    h.os = 255;
    deflateInit2(&zs, level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY);
    deflateSetHeader(&zs, &h);
    bound = deflateBound(&zs, (uLong)len);
    out = malloc(bound);
    zs.next_in = (Bytef *)(uintptr_t)in;
    zs.avail_in = (uInt)len;
    zs.next_out = out;
    zs.avail_out = (uInt)bound;
    if (deflate(&zs, Z_FINISH) != Z_STREAM_END) {
        free(out);
        out = NULL;
    }
    *outlen = zs.total_out;
    deflateEnd(&zs);
    return out;
}

static uint32_t le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16
           | (uint32_t)p[3] << 24;
}

/* ------------------------------------------------------------------------
 * Compression and inflation
 */

#define TEXT_LEN (200 * 1000)

static void test_round_trip_slices(void)
{
    static const size_t slices[] = { 1, 7, 4096, 65536 };
    unsigned char *text = make_text(TEXT_LEN), *body;
    void *gz = NULL;
    size_t gzlen = 0, blen, i;
    apr_status_t rv;
    int proto;

    rv = apx_gz_compress(text, TEXT_LEN, 6, &gz, &gzlen);
    is_int(rv, APR_SUCCESS, "text compresses");
    if (rv != APR_SUCCESS) {
        free(text);
        return;
    }
    ok(gzlen < TEXT_LEN - TEXT_LEN / 16,
       "text: %zu -> %zu bytes, under the limit", (size_t)TEXT_LEN, gzlen);
    for (i = 0; i < sizeof(slices) / sizeof(slices[0]); i++) {
        rv = drain(gz, gzlen, slices[i], &body, &blen, &proto);
        ok(rv == APR_EOF, "slices of %zu: the member ends with APR_EOF",
           slices[i]);
        ok(proto, "slices of %zu: SUCCESS brings 1..cap bytes, EOF repeats "
           "empty", slices[i]);
        ok(blen == TEXT_LEN && !memcmp(body, text, TEXT_LEN),
           "slices of %zu: %zu bytes back, identical", slices[i], blen);
        free(body);
    }
    ok(zlib_says_gzip(gz, gzlen, text, TEXT_LEN),
       "zlib's own inflate (15+16) reads it as one gzip member, same bytes");
    free(gz);
    free(text);
}

static void test_one_mib(void)
{
    size_t len = 1 << 20, gzlen = 0, blen, n = 0;
    unsigned char *body, *json = malloc(len);
    void *gz = NULL;
    apr_status_t rv;
    int proto, i = 0;

    while (n < len) {
        char rec[128];
        int k = snprintf(rec, sizeof(rec),
                         "{\"id\":%d,\"name\":\"item-%d\",\"price\":%d.%02d,"
                         "\"tags\":[\"a\",\"b\"]},\n", i, i * 31 % 977,
                         i % 500, i % 100);
        size_t take = (size_t)k < len - n ? (size_t)k : len - n;

        memcpy(json + n, rec, take);
        n += take;
        i++;
    }
    rv = apx_gz_compress(json, len, 9, &gz, &gzlen);
    is_int(rv, APR_SUCCESS, "1 MiB of JSON compresses at level 9");
    if (rv != APR_SUCCESS) {
        free(json);
        return;
    }
    ok(gzlen < len / 4, "1 MiB -> %zu bytes", gzlen);
    rv = drain(gz, gzlen, 65536, &body, &blen, &proto);
    ok(rv == APR_EOF && proto && blen == len && !memcmp(body, json, len),
       "1 MiB round trip in 64 KiB slices");
    free(body);
    rv = drain(gz, gzlen, 4096, &body, &blen, &proto);
    ok(rv == APR_EOF && proto && blen == len && !memcmp(body, json, len),
       "1 MiB round trip in 4 KiB slices");
    free(body);
    ok(zlib_says_gzip(gz, gzlen, json, len), "1 MiB: zlib inflates it too");
    free(gz);
    free(json);
}

static void test_not_worth_it(void)
{
    size_t len = 64 * 1024, gzlen = 12345;
    unsigned char *rnd = malloc(len);
    void *gz = NULL;
    apr_status_t rv;

    fill_random(rnd, len);
    rv = apx_gz_compress(rnd, len, 9, &gz, &gzlen);
    is_int(rv, APR_EGENERAL, "random data: APR_EGENERAL");
    ok(gz == NULL && gzlen == 12345, "random data: nothing returned");
    free(gz);

    rv = apx_gz_compress("", 0, 6, &gz, &gzlen);
    is_int(rv, APR_EGENERAL, "empty input: APR_EGENERAL");
    ok(gz == NULL, "empty input: nothing returned");
    rv = apx_gz_compress(NULL, 0, 6, &gz, &gzlen);
    is_int(rv, APR_EGENERAL, "NULL empty input: APR_EGENERAL");
    rv = apx_gz_compress("aaaaaaaaaaaaaaaa", 16, 9, &gz, &gzlen);
    is_int(rv, APR_EGENERAL, "16 bytes: the gzip framing alone is larger");
    ok(gz == NULL, "16 bytes: nothing returned");
    free(rnd);
}

/* Slides from incompressible to compressible in small steps and checks
 * each outcome against zlib run here without any limit: success exactly
 * when the member is under len - len/16, and then the very same bytes. */
static void test_threshold(void)
{
    enum { N = 4096, LIMIT = N - N / 16 };
    unsigned char *data = malloc(N), *ref;
    size_t k, reflen, gzlen, closest = (size_t)-1;
    int mismatches = 0, saw_success = 0, saw_refusal = 0;
    apr_status_t rv;
    void *gz;

    for (k = 0; k <= 800; k += 2) {
        memset(data, 'a', k);
        rng_state = 0x12345678u;
        fill_random(data + k, N - k);
        ref = reference_gzip(data, N, 6, &reflen);
        gz = NULL;
        rv = apx_gz_compress(data, N, 6, &gz, &gzlen);
        if (!ref || (rv == APR_SUCCESS) != (reflen < LIMIT)
            || (rv != APR_SUCCESS && rv != APR_EGENERAL)) {
            mismatches++;
            diag("k=%zu: reference %zu bytes (limit %d), got status %d",
                 k, reflen, LIMIT, rv);
        }
        else if (rv == APR_SUCCESS
                   && (gzlen != reflen || memcmp(gz, ref, reflen))) {
            mismatches++;
            diag("k=%zu: %zu bytes differ from the reference's %zu", k,
                 gzlen, reflen);
        }
        if (ref && (size_t)labs((long)reflen - LIMIT) < closest)
            closest = (size_t)labs((long)reflen - LIMIT);
        saw_success |= rv == APR_SUCCESS;
        saw_refusal |= rv == APR_EGENERAL;
        free(gz);
        free(ref);
    }
    ok(saw_success && saw_refusal, "the sweep crosses the threshold");
    is_int(mismatches, 0, "success iff zlib's size < len - len/16, and "
           "byte-identical to zlib's member");
    diag("closest reference size to the limit: %zu bytes away", closest);
    free(data);
}

static void test_header_bytes(void)
{
    unsigned char *text = make_text(10000), *g;
    void *gz = NULL, *gz2 = NULL;
    size_t gzlen = 0, gzlen2 = 0;

    if (apx_gz_compress(text, 10000, 6, &gz, &gzlen) != APR_SUCCESS) {
        ok(0, "10 kB of text compresses");
        free(text);
        return;
    }
    g = gz;
    ok(gzlen >= 18 && g[0] == 0x1f && g[1] == 0x8b, "magic 1f 8b");
    is_int(g[2], 8, "CM is deflate");
    is_int(g[3], 0, "FLG: no name, comment, extra or header CRC");
    is_int(le32(g + 4), 0, "MTIME is 0");
    is_int(g[9], 255, "OS is 255 (unknown)");
    is_int(le32(g + gzlen - 8), crc32(0, text, 10000), "trailer CRC32");
    is_int(le32(g + gzlen - 4), 10000, "trailer ISIZE");
    apx_gz_compress(text, 10000, 6, &gz2, &gzlen2);
    ok(gz2 && gzlen2 == gzlen && !memcmp(gz, gz2, gzlen),
       "compressing twice gives the same bytes");
    free(gz2);
    free(gz);
    free(text);
}

static void test_level_clamp(void)
{
    unsigned char *text = make_text(TEXT_LEN);
    static const int levels[] = { -3, 0, 1, 9, 10, 42 };
    void *gz[6] = { NULL };
    size_t len[6] = { 0 };
    int i, all = 1;

    for (i = 0; i < 6; i++)
        all &= apx_gz_compress(text, TEXT_LEN, levels[i], &gz[i], &len[i])
               == APR_SUCCESS;
    ok(all, "every level, in range or not, compresses");
    if (all) {
        ok(len[1] == len[2] && !memcmp(gz[1], gz[2], len[2])
           && len[0] == len[2] && !memcmp(gz[0], gz[2], len[2]),
           "levels -3 and 0 give level 1's bytes");
        ok(len[4] == len[3] && !memcmp(gz[4], gz[3], len[3])
           && len[5] == len[3] && !memcmp(gz[5], gz[3], len[3]),
           "levels 10 and 42 give level 9's bytes");
        ok(len[2] != len[3] || memcmp(gz[2], gz[3], len[2]),
           "levels 1 and 9 differ (%zu vs %zu bytes)", len[2], len[3]);
        ok(round_trips(gz[1], len[1], text, TEXT_LEN)
           && round_trips(gz[5], len[5], text, TEXT_LEN),
           "clamped outputs inflate back");
    }
    for (i = 0; i < 6; i++)
        free(gz[i]);
    free(text);
}

static void test_corrupt(void)
{
    static const size_t cuts[] = { 1, 4, 8, 9 };
    unsigned char *text = make_text(50000), *bad, *body;
    void *gz = NULL;
    size_t gzlen = 0, blen, i;
    uLongf zlen;
    apr_status_t rv;
    int proto;

    if (apx_gz_compress(text, 50000, 6, &gz, &gzlen) != APR_SUCCESS) {
        ok(0, "50 kB of text compresses");
        free(text);
        return;
    }
    bad = malloc(gzlen + 64);

    memcpy(bad, gz, gzlen);
    bad[gzlen / 2] ^= 0x55;
    rv = drain(bad, gzlen, 4096, &body, &blen, &proto);
    ok(rv == APR_EGENERAL && proto, "a flipped byte mid-stream: APR_EGENERAL,"
       " and it stays so");
    free(body);

    memcpy(bad, gz, gzlen);
    bad[gzlen - 8] ^= 0x01;
    rv = drain(bad, gzlen, 4096, &body, &blen, &proto);
    ok(rv == APR_EGENERAL && proto, "a wrong CRC32: APR_EGENERAL");
    ok(blen == 50000 && !memcmp(body, text, 50000),
       "(the whole body came out before the trailer said no)");
    free(body);

    memcpy(bad, gz, gzlen);
    bad[gzlen - 1] ^= 0x01;
    rv = drain(bad, gzlen, 4096, &body, &blen, &proto);
    ok(rv == APR_EGENERAL && proto, "a wrong ISIZE: APR_EGENERAL");
    free(body);

    memcpy(bad, gz, gzlen);
    bad[0] = 0x1e;
    rv = drain(bad, gzlen, 4096, &body, &blen, &proto);
    ok(rv == APR_EGENERAL && proto && blen == 0, "bad magic: APR_EGENERAL");
    free(body);

    for (i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
        rv = drain(gz, gzlen - cuts[i], 4096, &body, &blen, &proto);
        ok(rv == APR_EGENERAL && proto, "cut %zu bytes short: APR_EGENERAL",
           cuts[i]);
        free(body);
        rv = drain(gz, gzlen - cuts[i], 1, &body, &blen, &proto);
        ok(rv == APR_EGENERAL && proto,
           "cut %zu bytes short, 1-byte slices: APR_EGENERAL", cuts[i]);
        free(body);
    }
    rv = drain(gz, gzlen / 2, 4096, &body, &blen, &proto);
    ok(rv == APR_EGENERAL && proto && blen > 0 && blen < 50000
       && !memcmp(body, text, blen),
       "cut in half: APR_EGENERAL after a correct prefix (%zu bytes)", blen);
    free(body);
    rv = drain(gz, 10, 4096, &body, &blen, &proto);
    ok(rv == APR_EGENERAL && proto && blen == 0, "header only: APR_EGENERAL");
    free(body);
    rv = drain(gz, 0, 4096, &body, &blen, &proto);
    ok(rv == APR_EGENERAL && proto, "no input at all: APR_EGENERAL");
    free(body);
    rv = drain(NULL, 0, 4096, &body, &blen, &proto);
    ok(rv == APR_EGENERAL && proto, "NULL input: APR_EGENERAL");
    free(body);

    rv = drain(text, 50000, 4096, &body, &blen, &proto);
    ok(rv == APR_EGENERAL && proto && blen == 0,
       "plain text is no gzip: APR_EGENERAL");
    free(body);

    zlen = gzlen + 64;
    compress2(bad, &zlen, text, 1000, 6);   /* zlib wrapper, not gzip */
    rv = drain(bad, zlen, 4096, &body, &blen, &proto);
    ok(rv == APR_EGENERAL && proto && blen == 0,
       "a zlib-wrapped stream is refused: gzip only");
    free(body);

    free(bad);
    free(gz);
    free(text);
}

static void test_member_end(void)
{
    unsigned char *text = make_text(30000), *two, *body;
    void *gz = NULL;
    size_t gzlen = 0, blen;
    apr_status_t rv;
    int proto;

    if (apx_gz_compress(text, 30000, 6, &gz, &gzlen) != APR_SUCCESS) {
        ok(0, "30 kB of text compresses");
        free(text);
        return;
    }
    two = malloc(2 * gzlen);
    memcpy(two, gz, gzlen);
    memcpy(two + gzlen, gz, gzlen);
    rv = drain(two, 2 * gzlen, 4096, &body, &blen, &proto);
    ok(rv == APR_EOF && proto && blen == 30000 && !memcmp(body, text, 30000),
       "two members back to back: APR_EOF after the first one's body");
    free(body);
    memcpy(two + gzlen, "junk", 4);
    rv = drain(two, gzlen + 4, 7, &body, &blen, &proto);
    ok(rv == APR_EOF && proto && blen == 30000,
       "bytes after the member are not read");
    free(body);

    /* cap 0 asks for nothing and changes nothing */
    {
        apx_gz_inflater *g = NULL;
        unsigned char buf[1];
        size_t got = 99;

        apx_gz_inflater_create(&g, gz, gzlen);
        rv = apx_gz_inflater_read(g, buf, 0, &got);
        ok(rv == APR_SUCCESS && got == 0, "cap 0: APR_SUCCESS, nothing read");
        apx_gz_inflater_destroy(g);
        apx_gz_inflater_destroy(NULL);
        ok(1, "destroy(NULL) is a no-op");
    }
    free(two);
    free(gz);
    free(text);
}

/* Members from other gzip writers: optional header fields, another OS. */
static void test_foreign_member(void)
{
    unsigned char *text = make_text(20000), *out;
    z_stream zs;
    gz_header h;
    uLong bound;

    memset(&zs, 0, sizeof(zs));
    memset(&h, 0, sizeof(h));
    h.time = 1700000000;
    h.os = 3;
    h.name = (Bytef *)"index.html";
    h.comment = (Bytef *)"made elsewhere";
    h.extra = (Bytef *)"AB\002\000xy";
    h.extra_len = 6;
    h.hcrc = 1;
    deflateInit2(&zs, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY);
    deflateSetHeader(&zs, &h);
    bound = deflateBound(&zs, 20000);
    out = malloc(bound);
    zs.next_in = text;
    zs.avail_in = 20000;
    zs.next_out = out;
    zs.avail_out = (uInt)bound;
    deflate(&zs, Z_FINISH);
    ok(out[3] == 0x1e, "foreign member has FHCRC, FEXTRA, FNAME, FCOMMENT");
    ok(round_trips(out, zs.total_out, text, 20000),
       "a member with every optional header field inflates");
    deflateEnd(&zs);
    free(out);
    free(text);
}

/* ------------------------------------------------------------------------
 * HTTP rules
 */

static void test_accepts(void)
{
    static const struct { const char *ae; int want; } cases[] = {
        { NULL, 0 },
        { "", 0 },
        { "   ", 0 },
        { "gzip", 1 },
        { "GZIP", 1 },
        { "GZip", 1 },
        { "x-gzip", 1 },
        { "X-GZIP", 1 },
        { "gzip, deflate, br", 1 },
        { "deflate, gzip", 1 },
        { "br,gzip", 1 },
        { "gzip,", 1 },
        { ",,gzip,,", 1 },
        { " \t gzip \t ", 1 },
        { "deflate", 0 },
        { "br, deflate", 0 },
        { "identity", 0 },
        { "compress", 0 },
        { "gzipx", 0 },
        { "xgzip", 0 },
        { "gzip-x", 0 },
        { "gzi", 0 },
        { "x-gzi", 0 },
        { "gzip;q=0", 0 },
        { "gzip; q=0", 0 },
        { "gzip ;q=0", 0 },
        { "gzip\t;\tq=0", 0 },
        { "gzip; q = 0", 0 },
        { "gzip;Q=0", 0 },
        { "gzip;q=0.", 0 },
        { "gzip;q=0.0", 0 },
        { "gzip;q=0.00", 0 },
        { "gzip;q=0.000", 0 },
        { "gzip;Q=0.000", 0 },
        { "x-gzip;q=0", 0 },
        { "gzip;q=0.001", 1 },
        { "gzip;q=0.5", 1 },
        { "gzip;q=1", 1 },
        { "gzip;q=1.", 1 },
        { "gzip;q=1.0", 1 },
        { "gzip;q=1.000", 1 },
        { "gzip;Q=1", 1 },
        { "deflate;q=0.5, gzip;q=0.001", 1 },
        { "br;q=1.0, gzip;q=0.8, *;q=0.1", 1 },
        { "*", 1 },
        { "*;q=0.1", 1 },
        { "*;q=0", 0 },
        { "*;q=0.000", 0 },
        { "identity, *;q=0.5", 1 },
        { "identity;q=0, *", 1 },
        { "deflate, *;q=0", 0 },
        { "gzip;q=0, *", 0 },
        { "*, gzip;q=0", 0 },
        { "*;q=0, gzip", 1 },
        { "*;q=0, x-gzip;q=0.2", 1 },
        { "gzip;q=0, x-gzip", 0 },
        { "gzip;q=1, gzip;q=0", 0 },
        { "gzip;q=0,gzip;q=1", 0 },
        /* malformed members are skipped, the rest still counts */
        { "gzip;q=1.5", 0 },
        { "gzip;q=1.001", 0 },
        { "gzip;q=1.0001", 0 },
        { "gzip;q=0.1234", 0 },
        { "gzip;q=2", 0 },
        { "gzip;q=-1", 0 },
        { "gzip;q=.5", 0 },
        { "gzip;q=abc", 0 },
        { "gzip;q=0.5x", 0 },
        { "gzip;q=", 0 },
        { "gzip;q", 0 },
        { "gzip;", 0 },
        { "gzip;;q=1", 0 },
        { "gzip q=1", 0 },
        { "gzip\001", 0 },
        { "\"gzip\"", 0 },
        { "gzip;q=1.5, *", 1 },
        { "gzip;q=0.5x, deflate", 0 },
        { "bogus garbage, gzip", 1 },
        { "gzip;q=0 junk, *", 1 },
        { "gzip;level=1", 1 },
        { "gzip;level=1;q=0", 0 },
        { "gzip;foo=\"a,b\";q=0", 0 },
        { "gzip;foo=\"a\\\"b\";q=0", 0 },
        { "gzip;foo=\"unterminated", 0 },
    };
    size_t i;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int got = apx_gz_accepts(cases[i].ae);

        if (!ok(got == cases[i].want, "Accept-Encoding \"%s\" -> %d",
                cases[i].ae ? cases[i].ae : "(null)", cases[i].want))
            diag("  got %d", got);
    }
}

static void test_types(void)
{
    static const struct { const char *ct; int want; } cases[] = {
        { NULL, 0 },
        { "", 0 },
        { "text/html", 1 },
        { "TEXT/HTML", 1 },
        { "Text/Plain", 1 },
        { "text/plain; charset=utf-8", 1 },
        { "text/css;charset=UTF-8", 1 },
        { "text/html ; charset=utf-8", 1 },
        { "  text/html  ", 1 },
        { "text/csv", 1 },
        { "text/x-custom-thing", 1 },
        { "application/json", 1 },
        { "Application/JSON; charset=utf-8", 1 },
        { "application/json;", 1 },
        { "application/javascript", 1 },
        { "application/x-javascript", 1 },
        { "application/xml", 1 },
        { "application/ld+json", 1 },
        { "image/svg+xml", 1 },
        { "IMAGE/SVG+XML; charset=utf-8", 1 },
        { "application/wasm", 1 },
        { "application/problem+json", 1 },
        { "application/vnd.api+json", 1 },
        { "application/atom+xml", 1 },
        { "application/rss+XML", 1 },
        { "application/x+json; a=b", 1 },
        { "text/", 0 },
        { "text", 0 },
        { "/html", 0 },
        { "texts/html", 0 },
        { "tex/html", 0 },
        { "xtext/html", 0 },
        { "text /html", 0 },
        { "text/ html", 0 },
        { "text/html extra", 0 },
        { "text/html\001", 0 },
        { "application/+json", 0 },
        { "application/+xml", 0 },
        { "application/jsonx", 0 },
        { "application/json-seq", 0 },
        { "application/x+json+zip", 0 },
        { "application/javascriptx", 0 },
        { "application/xml-dtd", 0 },
        { "application/wasm2", 0 },
        { "xapplication/json", 0 },
        { "application/octet-stream", 0 },
        { "application/gzip", 0 },
        { "application/zip", 0 },
        { "application/pdf", 0 },
        { "image/png", 0 },
        { "image/jpeg", 0 },
        { "image/svg", 0 },
        { "image/svgxml", 0 },
        { "video/mp4", 0 },
        { "audio/mpeg", 0 },
        { "font/woff2", 0 },
        { "multipart/form-data; boundary=x", 0 },
        { "json", 0 },
    };
    size_t i;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int got = apx_gz_type_is_compressible(cases[i].ct);

        if (!ok(got == cases[i].want, "Content-Type \"%s\" -> %d",
                cases[i].ct ? cases[i].ct : "(null)", cases[i].want))
            diag("  got %d", got);
    }
}

static void test_etag(void)
{
    static const struct { const char *in, *want; } cases[] = {
        { "\"abc\"", "\"abc-gzip\"" },
        { "W/\"abc\"", "W/\"abc-gzip\"" },
        { "\"5e1-6a3b0c\"", "\"5e1-6a3b0c-gzip\"" },
        { "\"\"", "\"-gzip\"" },
        { "W/\"\"", "W/\"-gzip\"" },
        { "\"a!#~\"", "\"a!#~-gzip\"" },
        { "\"caf\xc3\xa9\"", "\"caf\xc3\xa9-gzip\"" },
        { "abc", NULL },
        { "W/abc", NULL },
        { "\"abc", NULL },
        { "abc\"", NULL },
        { "\"", NULL },
        { "W/", NULL },
        { "W/\"abc", NULL },
        { "\"ab\"c\"", NULL },
        { "\"abc\" ", NULL },
        { " \"abc\"", NULL },
        { "\"a b\"", NULL },
        { "\"a\tb\"", NULL },
        { "w/\"abc\"", NULL },
        { "W\"abc\"", NULL },
        { "*", NULL },
        { "", NULL },
        { NULL, NULL },
    };
    char buf[64];
    size_t i, n;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *in = cases[i].in ? cases[i].in : "(null)";

        memset(buf, 'X', sizeof(buf));
        n = apx_gz_etag(cases[i].in, buf, sizeof(buf));
        if (cases[i].want)
            ok(n == strlen(cases[i].want) && !strcmp(buf, cases[i].want),
               "ETag %s -> %s", in, cases[i].want);
        else
            ok(n == (size_t)-1 && buf[0] == 'X', "ETag [%s] -> -1, buf "
               "untouched", in);
    }

    /* "abc" -> "abc-gzip": 10 characters, 11 bytes with the NUL */
    memset(buf, 'X', sizeof(buf));
    n = apx_gz_etag("\"abc\"", buf, 11);
    ok(n == 10 && !strcmp(buf, "\"abc-gzip\"") && buf[11] == 'X',
       "cap exactly length + 1 fits, nothing written past it");
    memset(buf, 'X', sizeof(buf));
    n = apx_gz_etag("\"abc\"", buf, 10);
    ok(n == (size_t)-1 && buf[0] == 'X', "cap one short: -1, buf untouched");
    n = apx_gz_etag("W/\"abc\"", buf, 12);
    ok(n == (size_t)-1, "weak tag, cap one short: -1");
    n = apx_gz_etag("W/\"abc\"", buf, 13);
    ok(n == 12 && !strcmp(buf, "W/\"abc-gzip\""), "weak tag, exact cap fits");
    n = apx_gz_etag("\"abc\"", buf, 0);
    ok(n == (size_t)-1, "cap 0: -1");
    n = apx_gz_etag("\"abc\"", NULL, 0);
    ok(n == (size_t)-1, "NULL buffer: -1");
}

int main(void)
{
    test_round_trip_slices();
    test_one_mib();
    test_not_worth_it();
    test_threshold();
    test_header_bytes();
    test_level_clamp();
    test_corrupt();
    test_member_end();
    test_foreign_member();
    test_accepts();
    test_types();
    test_etag();
    return done_testing();
}
