/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* fuzz/head.c — libFuzzer target: the response-head parser on arbitrary
 * input (1xx heads followed by a final head), then the body decoder the
 * framing selects. Byte 0 picks the head limit so the limit path is hit.
 * Checks the parser's promises; any violation aborts. */
#include <stdlib.h>
#include <string.h>
#include "apx_http.h"

#define CHECK(c) do { if (!(c)) abort(); } while (0)

static char head_buf[64 + 255 * 16];
static apx_http_field fields[32];
static char tbuf[512];
static apx_http_field tfields[8];

static void check_head(const apx_http_resp *p, const char *in, size_t used)
{
    unsigned k;

    CHECK(p->status >= 100 && p->status <= 599);
    CHECK(p->minor >= 0 && p->minor <= 9);
    CHECK(p->head_len == used && used <= p->cap);
    /* the head was copied verbatim and nothing past it */
    CHECK(memcmp(p->buf, in, used) == 0);
    CHECK(p->nfields <= p->max_fields);
    CHECK(p->reason >= p->buf && p->reason + p->reason_len <= p->buf + used);
    for (k = 0; k < p->nfields; k++) {
        const apx_http_field *f = &p->fields[k];

        CHECK(f->name >= p->buf && f->value + f->value_len <= p->buf + used);
        CHECK(apx_http_is_token(f->name, f->name_len));
        CHECK(apx_http_is_field_value(f->value, f->value_len));
    }
    CHECK(!(p->chunked && p->content_length >= 0));
    CHECK(p->content_length <= (int64_t)APX_HTTP_BODY_MAX);
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    const char *in = (const char *)data;
    apx_http_resp p;
    size_t off = 1, used;
    apr_status_t rv;
    int64_t len = -1;
    int heads = 0;

    if (size < 1)
        return 0;
    apx_http_resp_init(&p, head_buf, 64 + (size_t)data[0] * 16, fields, 32);
    for (;;) {
        rv = apx_http_resp_feed(&p, in + off, size - off, &used);
        CHECK(used <= size - off);
        if (rv == APR_INCOMPLETE) {
            CHECK(used == size - off);
            return 0;
        }
        if (rv != APR_SUCCESS) {
            CHECK(rv == APX_HTTP_EPROTO && p.error != APX_HTTP_E_NONE
                  && p.errstr != NULL);
            return 0;
        }
        check_head(&p, in + off, used);
        off += used;
        if (!apx_http_resp_is_interim(&p) || ++heads > 8)
            break;
        CHECK(apx_http_resp_framing(&p, "GET", NULL) == APX_HTTP_BODY_NONE);
        apx_http_resp_reset(&p);
    }
    (void)apx_http_resp_keepalive(&p);
    switch (apx_http_resp_framing(&p, "GET", &len)) {
    case APX_HTTP_BODY_LENGTH:
        CHECK(len >= 0);
        break;
    case APX_HTTP_BODY_CHUNKED: {
        apx_http_chunked d;
        const char *out;
        size_t n;
        uint64_t total = 0;

        CHECK(p.chunked);
        apx_http_chunked_init(&d, tbuf, sizeof(tbuf), tfields, 8);
        while (off < size) {
            rv = apx_http_chunked_feed(&d, in + off, size - off, &used, &out,
                                       &n);
            CHECK(used <= size - off);
            if (n)
                CHECK(out >= in + off && out + n <= in + off + used);
            total += n;
            off += used;
            if (rv != APR_INCOMPLETE)
                break;
            CHECK(n || off == size);
        }
        CHECK(total == d.body_bytes);
        break;
    }
    default:
        break;
    }
    CHECK(apx_http_resp_framing(&p, "HEAD", NULL) == APX_HTTP_BODY_NONE);
    return 0;
}
