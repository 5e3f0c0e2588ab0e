/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* fuzz/chunked.c — libFuzzer target: the chunked decoder.
 *  1. decodes the input as a chunked body, checking that every data slice
 *     lies in the consumed input and that the bookkeeping adds up;
 *  2. encodes the input as the payload of a chunked body (chunk sizes,
 *     extensions and a trailer chosen from the input bytes), decodes it in
 *     input-driven pieces and requires exactly the payload back, done, and
 *     the end of the message found exactly. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "apx_http.h"

#define CHECK(c) do { if (!(c)) abort(); } while (0)

static char tbuf[1024];
static apx_http_field tfields[16];
static char enc[8192 * 16 + 1024];  /* <= 15 bytes of framing per byte */
static char dec[8192 + 64];

static void decode_raw(const char *in, size_t size)
{
    apx_http_chunked d;
    const char *out;
    size_t off = 0, used, n;
    uint64_t total = 0;
    apr_status_t rv = APR_INCOMPLETE;
    unsigned k;

    apx_http_chunked_init(&d, tbuf, sizeof(tbuf), tfields, 16);
    while (off < size) {
        rv = apx_http_chunked_feed(&d, in + off, size - off, &used, &out, &n);
        CHECK(used <= size - off);
        if (n) {
            CHECK(out >= in + off && out + n <= in + off + used);
            CHECK(used > 0);
        }
        total += n;
        off += used;
        if (rv != APR_INCOMPLETE)
            break;
        CHECK(n || off == size);
    }
    CHECK(total == d.body_bytes && total <= size);
    if (rv == APR_SUCCESS) {
        CHECK(apx_http_chunked_is_done(&d));
        for (k = 0; k < d.nfields; k++) {
            CHECK(apx_http_is_token(d.fields[k].name, d.fields[k].name_len));
            CHECK(apx_http_is_field_value(d.fields[k].value,
                                          d.fields[k].value_len));
        }
    }
    else if (rv != APR_INCOMPLETE) {
        CHECK(rv == APX_HTTP_EPROTO && d.error != APX_HTTP_E_NONE);
    }
}

static void round_trip(const unsigned char *data, size_t size)
{
    apx_http_chunked d;
    const char *out;
    size_t e = 0, i = 0, off = 0, used, n, dl = 0, step = 0;
    apr_status_t rv = APR_INCOMPLETE;

    while (i < size) {
        size_t c = 1 + data[i] % 64;

        if (c > size - i)
            c = size - i;
        e += (size_t)sprintf(enc + e, (data[i] & 0x40) ? "%zX" : "%zx", c);
        if (data[i] & 0x80)
            e += (size_t)sprintf(enc + e, " ;x=\"%u\"", data[i]);
        enc[e++] = '\r';
        enc[e++] = '\n';
        memcpy(enc + e, data + i, c);
        e += c;
        enc[e++] = '\r';
        enc[e++] = '\n';
        i += c;
    }
    e += (size_t)sprintf(enc + e, "0\r\n%s\r\nNEXT",
                         size & 1 ? "X-Sum: 1\r\n" : "");
    e -= 4;                                 /* "NEXT" is not the body */
    apx_http_chunked_init(&d, tbuf, sizeof(tbuf), tfields, 16);
    while (off < e + 4) {
        size_t piece = size ? 1 + data[step++ % size] % 29 : e + 4;

        if (piece > e + 4 - off)
            piece = e + 4 - off;
        rv = apx_http_chunked_feed(&d, enc + off, piece, &used, &out, &n);
        CHECK(n == 0 || (out >= enc + off && out + n <= enc + off + used));
        if (n)
            memcpy(dec + dl, out, n);
        dl += n;
        off += used;
        if (rv != APR_INCOMPLETE)
            break;
    }
    CHECK(rv == APR_SUCCESS);
    CHECK(off == e);
    CHECK(dl == size && memcmp(dec, data, size) == 0);
    CHECK(d.nfields == (size & 1));
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    decode_raw((const char *)data, size);
    if (size <= 8192)
        round_trip(data, size);
    return 0;
}
