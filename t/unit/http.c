/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* t/unit/http.c — the HTTP/1.1 codec: response heads (good, bad with the
 * exact error class, split every way), body framing, chunked decoding
 * (split at every position), the request writer and hop-by-hop helpers.
 * Single-threaded; splits come from a fixed-seed PRNG so runs repeat. */
#include <stdio.h>
#include <string.h>
#include <apr_general.h>
#include "../../poller/http.c"
#include "tap.h"

#define HEAD_MAX 16384
#define MAX_FIELDS 64

static char head_buf[HEAD_MAX];
static apx_http_field head_fields[MAX_FIELDS];

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

static uint64_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* ------------------------------------------------------------------------
 * Head helpers
 */

/* Feeds s[0..n) in pieces given by split: 0 = all at once, 1 = a byte at a
 * time, 2 = random pieces. Returns the final status; *consumed totals what
 * the head took. */
static apr_status_t feed_head(apx_http_resp *p, const char *s, size_t n,
                              int split, size_t *consumed)
{
    size_t off = 0, used;
    apr_status_t rv = APR_INCOMPLETE;

    *consumed = 0;
    if (split == 0) {
        rv = apx_http_resp_feed(p, s, n, consumed);
        return rv;
    }
    while (off < n) {
        size_t piece = split == 1 ? 1 : 1 + (size_t)(rng() % 23);

        if (piece > n - off)
            piece = n - off;
        rv = apx_http_resp_feed(p, s + off, piece, &used);
        *consumed += used;
        off += piece;
        if (rv != APR_INCOMPLETE)
            break;
        if (used != piece)
            return APR_EGENERAL;    /* INCOMPLETE must consume everything */
    }
    return rv;
}

/* Everything the parser reports, as text, to compare ways of feeding. */
static void head_signature(const apx_http_resp *p, apr_status_t rv,
                           size_t consumed, char *out, size_t cap)
{
    size_t o;
    unsigned k;

    o = (size_t)snprintf(out, cap, "rv=%d err=%d", rv, (int)p->error);
    if (rv != APR_SUCCESS)
        return;
    o += (size_t)snprintf(out + o, cap - o,
                          " st=%d mi=%d rs=[%.*s] cl=%lld ch=%d cc=%d ck=%d"
                          " used=%zu hl=%zu n=%u",
                          p->status, p->minor, (int)p->reason_len, p->reason,
                          (long long)p->content_length, p->chunked,
                          p->conn_close, p->conn_keep_alive, consumed,
                          p->head_len, p->nfields);
    for (k = 0; k < p->nfields && o < cap; k++)
        o += (size_t)snprintf(out + o, cap - o, " [%.*s]=[%.*s]",
                              (int)p->fields[k].name_len, p->fields[k].name,
                              (int)p->fields[k].value_len,
                              p->fields[k].value);
}

static apr_status_t parse_head(apx_http_resp *p, const char *s,
                               size_t *consumed)
{
    apx_http_resp_init(p, head_buf, HEAD_MAX, head_fields, MAX_FIELDS);
    return apx_http_resp_feed(p, s, strlen(s), consumed);
}

/* The response must parse the same whole, byte by byte and in 20 random
 * splits; returns 1 when all agree (and leaves p parsed whole). */
static int head_agrees(const char *s, size_t n)
{
    static char b2[HEAD_MAX];
    static apx_http_field f2[MAX_FIELDS];
    char want[4096], got[4096];
    apx_http_resp p, q;
    size_t used;
    apr_status_t rv;
    int split, round, same = 1;

    apx_http_resp_init(&p, head_buf, HEAD_MAX, head_fields, MAX_FIELDS);
    rv = feed_head(&p, s, n, 0, &used);
    head_signature(&p, rv, used, want, sizeof(want));
    for (split = 1; split <= 2; split++)
        for (round = 0; round < (split == 1 ? 1 : 20); round++) {
            apx_http_resp_init(&q, b2, HEAD_MAX, f2, MAX_FIELDS);
            rv = feed_head(&q, s, n, split, &used);
            head_signature(&q, rv, used, got, sizeof(got));
            if (strcmp(want, got) != 0) {
                diag("split %d: %s != %s", split, got, want);
                same = 0;
            }
        }
    return same;
}

static void head_err(const char *s, apx_http_error want, const char *name)
{
    apx_http_resp p;
    size_t used;
    apr_status_t rv = parse_head(&p, s, &used);

    if (!ok(rv == APX_HTTP_EPROTO && p.error == want, "bad head: %s", name))
        diag("  rv=%d error=%d (%s), wanted %d", rv, (int)p.error,
             p.errstr ? p.errstr : "-", (int)want);
}

static void head_ok(const char *s, const char *name)
{
    apx_http_resp p;
    size_t used;
    apr_status_t rv = parse_head(&p, s, &used);

    if (!ok(rv == APR_SUCCESS, "good head: %s", name))
        diag("  rv=%d error=%d (%s)", rv, (int)p.error,
             p.errstr ? p.errstr : "-");
}

static int field_is(const apx_http_field *f, const char *name,
                    const char *value)
{
    return f && f->name_len == strlen(name)
        && memcmp(f->name, name, f->name_len) == 0
        && f->value_len == strlen(value)
        && memcmp(f->value, value, f->value_len) == 0;
}

/* ------------------------------------------------------------------------
 * Head: good responses
 */
static void test_head_basic(void)
{
    const char *r = "HTTP/1.1 200 OK\r\n"
                    "Content-Type: text/plain\r\n"
                    "Set-Cookie: a=1\r\n"
                    "Content-Length:5\r\n"
                    "Set-Cookie: b=2; Path=/\r\n"
                    "X-Empty:\r\n"
                    "X-Spaces: \t  padded value \t \r\n"
                    "\r\n"
                    "hello";
    apx_http_resp p;
    size_t used;
    unsigned idx = 0;
    int64_t len = -7;
    const apx_http_field *f;

    is_int(parse_head(&p, r, &used), APR_SUCCESS, "basic: complete");
    is_int(used, strlen(r) - 5, "basic: consumed the head only");
    is_int(p.head_len, used, "basic: head_len");
    is_int(p.status, 200, "basic: status");
    is_int(p.minor, 1, "basic: minor version");
    ok(p.reason_len == 2 && memcmp(p.reason, "OK", 2) == 0, "basic: reason");
    is_int(p.nfields, 6, "basic: six fields");
    ok(field_is(&p.fields[0], "Content-Type", "text/plain"), "basic: 1st");
    ok(field_is(&p.fields[2], "Content-Length", "5"), "basic: no OWS");
    ok(field_is(&p.fields[1], "Set-Cookie", "a=1"), "basic: 2nd");
    ok(field_is(&p.fields[3], "Set-Cookie", "b=2; Path=/"),
       "basic: repeated field kept in order");
    ok(field_is(&p.fields[5], "X-Spaces", "padded value"),
       "basic: OWS trimmed both sides, inner space kept");
    f = apx_http_resp_find(&p, "set-cookie", &idx);
    ok(field_is(f, "Set-Cookie", "a=1") && idx == 1, "find: first cookie");
    idx++;
    f = apx_http_resp_find(&p, "SET-COOKIE", &idx);
    ok(field_is(f, "Set-Cookie", "b=2; Path=/") && idx == 3,
       "find: second cookie");
    idx++;
    ok(apx_http_resp_find(&p, "Set-Cookie", &idx) == NULL, "find: no third");
    idx = 0;
    f = apx_http_resp_find(&p, "x-empty", &idx);
    ok(f && f->value_len == 0, "empty value accepted");
    is_int(p.content_length, 5, "basic: content length");
    is_int(apx_http_resp_framing(&p, "GET", &len), APX_HTTP_BODY_LENGTH,
           "basic: framing by length");
    is_int(len, 5, "basic: framing length");
    ok(apx_http_resp_keepalive(&p), "basic: 1.1 keeps alive");
    ok(!apx_http_resp_is_interim(&p), "basic: not interim");
    ok(head_agrees(r, strlen(r)), "basic: same result in any split");
    is_int(p.len, used, "basic: only the head was copied");
}

static void test_head_forms(void)
{
    apx_http_resp p;
    size_t used;
    const char *r;

    r = "HTTP/1.1 200 OK\nServer: x\nContent-Length: 0\n\nrest";
    is_int(parse_head(&p, r, &used), APR_SUCCESS, "bare LF lines accepted");
    is_int(used, strlen(r) - 4, "bare LF: consumed");
    is_int(p.nfields, 2, "bare LF: fields");
    ok(head_agrees(r, strlen(r)), "bare LF: any split");

    r = "HTTP/1.1 200 OK\r\nA: 1\n\r\n";
    is_int(parse_head(&p, r, &used), APR_SUCCESS, "mixed CRLF and LF");

    r = "HTTP/1.1 404 \r\n\r\n";
    is_int(parse_head(&p, r, &used), APR_SUCCESS, "empty reason with SP");
    ok(p.status == 404 && p.reason_len == 0, "empty reason: status, reason");

    r = "HTTP/1.1 500\r\n\r\n";
    is_int(parse_head(&p, r, &used), APR_SUCCESS, "empty reason without SP");
    ok(p.status == 500 && p.reason_len == 0, "no SP: status, reason");

    r = "HTTP/1.1 200 Very  Fine\tThanks \x80\xff\r\n\r\n";
    is_int(parse_head(&p, r, &used), APR_SUCCESS,
           "reason with spaces, HTAB, obs-text");
    is_int(p.reason_len, strlen("Very  Fine\tThanks \x80\xff"),
           "reason kept whole");

    r = "HTTP/1.0 200 OK\r\n\r\n";
    is_int(parse_head(&p, r, &used), APR_SUCCESS, "HTTP/1.0");
    is_int(p.minor, 0, "HTTP/1.0 minor");
    ok(!apx_http_resp_keepalive(&p), "HTTP/1.0: close by default");
    is_int(apx_http_resp_framing(&p, "GET", NULL), APX_HTTP_BODY_CLOSE,
           "no length: until close");

    r = "HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 2\r\n\r\n";
    is_int(parse_head(&p, r, &used), APR_SUCCESS, "HTTP/1.0 keep-alive");
    ok(apx_http_resp_keepalive(&p), "HTTP/1.0 keep-alive honoured");

    r = "HTTP/1.1 200 OK\r\nConnection: foo, Close\r\n\r\n";
    is_int(parse_head(&p, r, &used), APR_SUCCESS, "connection close");
    ok(p.conn_close && !apx_http_resp_keepalive(&p), "close in a list");

    r = "HTTP/1.1 200 OK\r\nX-Bin: caf\xc3\xa9 \x7e\r\nX-Tab: a\tb\r\n\r\n";
    is_int(parse_head(&p, r, &used), APR_SUCCESS, "obs-text and HTAB");
    ok(field_is(&p.fields[1], "X-Tab", "a\tb"), "inner HTAB kept");

    r = "HTTP/1.1 200 OK\r\n!#$%&'*+-.^_`|~09azAZ: v\r\n\r\n";
    is_int(parse_head(&p, r, &used), APR_SUCCESS, "every tchar in a name");

    r = "HTTP/1.9 200 OK\r\n\r\n";
    is_int(parse_head(&p, r, &used), APR_SUCCESS, "HTTP/1.9 accepted");
    is_int(p.minor, 9, "HTTP/1.9 minor");

    head_ok("HTTP/1.1 100 Continue\r\n\r\n", "100");
    head_ok("HTTP/1.1 599 X\r\n\r\n", "599");
    head_ok("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n", "CL 5, 5");
    head_ok("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"
            "Content-Length: 5\r\n\r\n", "CL twice equal");
    head_ok("HTTP/1.1 200 OK\r\nContent-Length: 4611686018427387904\r\n\r\n",
            "CL 2^62");
    head_ok("HTTP/1.1 200 OK\r\nContent-Length: 007\r\n\r\n",
            "CL leading zeros");
    head_ok("HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
            "204 with CL 0");
    head_ok("HTTP/1.1 304 Not Modified\r\nContent-Length: 1234\r\n\r\n",
            "304 with the representation's CL");
    head_ok("HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n",
            "304 with TE");
    head_ok("HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n",
            "TE case-insensitive");
    head_ok("HTTP/1.1 200 OK\r\nTransfer-Encoding: ,chunked ,\r\n\r\n",
            "TE empty list elements ignored");

    /* Content-Length collapsing */
    r = "HTTP/1.1 200 OK\r\nContent-Length: 5 , 5,5\r\nContent-Length: 05\r\n\r\n";
    is_int(parse_head(&p, r, &used), APR_SUCCESS, "CL repeats collapse");
    is_int(p.content_length, 5, "CL collapsed value");

    /* feeding after completion, and empty feeds */
    r = "HTTP/1.1 200 OK\r\n\r\n";
    apx_http_resp_init(&p, head_buf, HEAD_MAX, head_fields, MAX_FIELDS);
    is_int(apx_http_resp_feed(&p, r, 0, &used), APR_INCOMPLETE,
           "empty feed: incomplete");
    is_int(used, 0, "empty feed: nothing consumed");
    is_int(apx_http_resp_feed(&p, r, strlen(r), &used), APR_SUCCESS,
           "then complete");
    is_int(apx_http_resp_feed(&p, "HTTP", 4, &used), APR_SUCCESS,
           "feed after completion: still complete");
    is_int(used, 0, "feed after completion consumes nothing");
}

static void test_head_create(apr_pool_t *pool)
{
    apx_http_resp *p;
    size_t used;
    const char *r = "HTTP/1.1 200 OK\r\nA: b\r\n\r\n";

    is_int(apx_http_resp_create(&p, pool, 64, 4), APR_SUCCESS, "create");
    is_int(apx_http_resp_feed(p, r, strlen(r), &used), APR_SUCCESS,
           "created parser works");
    ok(field_is(&p->fields[0], "A", "b"), "created parser field");
    is_int(apx_http_resp_create(&p, pool, 0, 4), APR_EINVAL,
           "create: zero head_max refused");
}

/* ------------------------------------------------------------------------
 * Head: bad responses, each with its error class
 */
static void test_head_bad(void)
{
    apx_http_resp p;
    size_t used;

    head_err("HTTP/1.1 20 OK\r\n\r\n", APX_HTTP_E_STATUS_LINE, "2-digit status");
    head_err("HTTP/1.1 2000 OK\r\n\r\n", APX_HTTP_E_STATUS_LINE, "4-digit status");
    head_err("HTTP/1.1 099 X\r\n\r\n", APX_HTTP_E_STATUS_LINE, "status < 100");
    head_err("HTTP/1.1 600 X\r\n\r\n", APX_HTTP_E_STATUS_LINE, "status >= 600");
    head_err("HTTP/1.1 2x0 OK\r\n\r\n", APX_HTTP_E_STATUS_LINE, "non-digit status");
    head_err("HTTP/2.0 200 OK\r\n\r\n", APX_HTTP_E_STATUS_LINE, "HTTP/2.0");
    head_err("HTTP/1.x 200 OK\r\n\r\n", APX_HTTP_E_STATUS_LINE, "HTTP/1.x");
    head_err("http/1.1 200 OK\r\n\r\n", APX_HTTP_E_STATUS_LINE, "lowercase http");
    head_err("HTTP/1.1  200 OK\r\n\r\n", APX_HTTP_E_STATUS_LINE, "two spaces");
    head_err("HTTP/1.1\t200 OK\r\n\r\n", APX_HTTP_E_STATUS_LINE, "HTAB separator");
    head_err("HTTP/1.1 200OK\r\n\r\n", APX_HTTP_E_STATUS_LINE, "no SP before reason");
    head_err(" HTTP/1.1 200 OK\r\n\r\n", APX_HTTP_E_STATUS_LINE, "leading space");
    head_err("\r\nHTTP/1.1 200 OK\r\n\r\n", APX_HTTP_E_STATUS_LINE, "leading empty line");
    head_err("HTTP/1.1 200 O\x01K\r\n\r\n", APX_HTTP_E_STATUS_LINE, "CTL in reason");
    head_err("HTTP/1.1 200 O\x7fK\r\n\r\n", APX_HTTP_E_STATUS_LINE, "DEL in reason");
    head_err("HTTP/1.1 200 OK\rX: y\r\n\r\n", APX_HTTP_E_BARE_CR, "bare CR in status line");
    head_err("HTTP/1.1 200 OK\r\nA: b\rc\r\n\r\n", APX_HTTP_E_BARE_CR, "bare CR in value");
    head_err("HTTP/1.1 200 OK\r\nA: b\r\r\n\r\n", APX_HTTP_E_BARE_CR, "CR CR LF");
    head_err("HTTP/1.1 200 OK\r\n\r\r\n", APX_HTTP_E_BARE_CR, "CR before final CRLF");
    head_err("HTTP/1.1 200 OK\r\nNoColonHere\r\n\r\n", APX_HTTP_E_NO_COLON, "no colon");
    head_err("HTTP/1.1 200 OK\r\nNo colon here\r\n\r\n", APX_HTTP_E_NO_COLON, "words without colon");
    head_err("HTTP/1.1 200 OK\r\nFoo : bar\r\n\r\n", APX_HTTP_E_SPACE_BEFORE_COLON, "SP before colon");
    head_err("HTTP/1.1 200 OK\r\nFoo\t: bar\r\n\r\n", APX_HTTP_E_SPACE_BEFORE_COLON, "HTAB before colon");
    head_err("HTTP/1.1 200 OK\r\n: bar\r\n\r\n", APX_HTTP_E_NAME, "empty name");
    head_err("HTTP/1.1 200 OK\r\nFo@o: bar\r\n\r\n", APX_HTTP_E_NAME, "@ in name");
    head_err("HTTP/1.1 200 OK\r\nFo(o): bar\r\n\r\n", APX_HTTP_E_NAME, "( in name");
    head_err("HTTP/1.1 200 OK\r\nFo\"o: bar\r\n\r\n", APX_HTTP_E_NAME, "quote in name");
    head_err("HTTP/1.1 200 OK\r\nF\xc3\xa9: bar\r\n\r\n", APX_HTTP_E_NAME, "non-ASCII name");
    head_err("HTTP/1.1 200 OK\r\nFoo\x7f: bar\r\n\r\n", APX_HTTP_E_NAME, "DEL in name");
    head_err("HTTP/1.1 200 OK\r\nFoo: b\x01r\r\n\r\n", APX_HTTP_E_VALUE, "CTL in value");
    head_err("HTTP/1.1 200 OK\r\nFoo: b\x7fr\r\n\r\n", APX_HTTP_E_VALUE, "DEL in value");
    head_err("HTTP/1.1 200 OK\r\nFoo: b\x1br\r\n\r\n", APX_HTTP_E_VALUE, "ESC in value");
    head_err("HTTP/1.1 200 OK\r\nFoo: a\r\n  folded\r\n\r\n", APX_HTTP_E_OBS_FOLD, "obs-fold SP");
    head_err("HTTP/1.1 200 OK\r\nFoo: a\r\n\tfolded\r\n\r\n", APX_HTTP_E_OBS_FOLD, "obs-fold HTAB");
    head_err("HTTP/1.1 200 OK\r\n Foo: a\r\n\r\n", APX_HTTP_E_OBS_FOLD, "first field indented");
    head_err("HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n", APX_HTTP_E_CL_INVALID, "CL letters");
    head_err("HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\n", APX_HTTP_E_CL_INVALID, "CL empty");
    head_err("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", APX_HTTP_E_CL_INVALID, "CL negative");
    head_err("HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n", APX_HTTP_E_CL_INVALID, "CL plus sign");
    head_err("HTTP/1.1 200 OK\r\nContent-Length: 5 5\r\n\r\n", APX_HTTP_E_CL_INVALID, "CL two numbers");
    head_err("HTTP/1.1 200 OK\r\nContent-Length: 5,\r\n\r\n", APX_HTTP_E_CL_INVALID, "CL trailing comma");
    head_err("HTTP/1.1 200 OK\r\nContent-Length: ,5\r\n\r\n", APX_HTTP_E_CL_INVALID, "CL leading comma");
    head_err("HTTP/1.1 200 OK\r\nContent-Length: 0x10\r\n\r\n", APX_HTTP_E_CL_INVALID, "CL hex");
    head_err("HTTP/1.1 200 OK\r\nContent-Length: 5.0\r\n\r\n", APX_HTTP_E_CL_INVALID, "CL decimal");
    head_err("HTTP/1.1 200 OK\r\nContent-Length: 4611686018427387905\r\n\r\n",
             APX_HTTP_E_CL_INVALID, "CL 2^62+1");
    head_err("HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
             APX_HTTP_E_CL_INVALID, "CL overflow");
    head_err("HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n", APX_HTTP_E_CL_CONFLICT, "CL 5, 6");
    head_err("HTTP/1.1 200 OK\r\nContent-Length: 5\r\ncontent-length: 6\r\n\r\n",
             APX_HTTP_E_CL_CONFLICT, "CL fields 5 and 6");
    head_err("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
             APX_HTTP_E_CL_AND_TE, "CL then TE");
    head_err("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n",
             APX_HTTP_E_CL_AND_TE, "TE then CL 0");
    head_err("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", APX_HTTP_E_TE, "TE gzip");
    head_err("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", APX_HTTP_E_TE, "TE gzip, chunked");
    head_err("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", APX_HTTP_E_TE, "TE chunked not last");
    head_err("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", APX_HTTP_E_TE, "TE chunked twice");
    head_err("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
             APX_HTTP_E_TE, "two TE fields");
    head_err("HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\n", APX_HTTP_E_TE, "TE identity");
    head_err("HTTP/1.1 200 OK\r\nTransfer-Encoding: \r\n\r\n", APX_HTTP_E_TE, "TE empty");
    head_err("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked;q=1\r\n\r\n", APX_HTTP_E_TE, "TE with params");
    head_err("HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunked\r\n\r\n", APX_HTTP_E_TE, "TE xchunked");
    head_err("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", APX_HTTP_E_TE, "TE in HTTP/1.0");
    head_err("HTTP/1.1 100 Continue\r\nContent-Length: 5\r\n\r\n",
             APX_HTTP_E_BODY_NOT_ALLOWED, "100 with CL");
    head_err("HTTP/1.1 103 Early Hints\r\nTransfer-Encoding: chunked\r\n\r\n",
             APX_HTTP_E_BODY_NOT_ALLOWED, "103 with TE");
    head_err("HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n",
             APX_HTTP_E_BODY_NOT_ALLOWED, "204 with CL 3");
    head_err("HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n",
             APX_HTTP_E_BODY_NOT_ALLOWED, "204 with TE");

    /* errors are sticky and the reason is a string */
    apx_http_resp_init(&p, head_buf, HEAD_MAX, head_fields, MAX_FIELDS);
    is_int(apx_http_resp_feed(&p, "XTTP/1.1 200 OK\r\n", 17, &used),
           APX_HTTP_EPROTO, "bad status line fails at once");
    ok(p.errstr && strcmp(p.errstr, "malformed status line") == 0,
       "reason string");
    is_int(apx_http_resp_feed(&p, "\r\n", 2, &used), APX_HTTP_EPROTO,
           "error is sticky");
    is_int(used, 0, "nothing consumed after an error");
    ok(strcmp(apx_http_strerror(APX_HTTP_E_HEAD_TOO_LONG), "head too long") == 0,
       "strerror: head too long");
    ok(strcmp(apx_http_strerror((apx_http_error)999), "unknown error") == 0,
       "strerror: out of range");
}

/* Bad heads must fail the same way whatever the split. */
static void test_head_bad_splits(void)
{
    static const char *const bad[] = {
        "HTTP/1.1 200 OK\r\nFoo : bar\r\n\r\n",
        "HTTP/1.1 200 OK\r\nA: b\rc\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        "HTTP/1.1 2000 OK\r\n\r\n",
        "HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
    };
    size_t k;

    for (k = 0; k < sizeof(bad) / sizeof(bad[0]); k++)
        ok(head_agrees(bad[k], strlen(bad[k])), "bad head %zu: same in any split", k);
}

static void test_head_limits(void)
{
    static char big[HEAD_MAX + 64];
    static char small_buf[256];
    apx_http_field f[4];
    apx_http_resp p;
    size_t used, n, pad;
    const char *pre = "HTTP/1.1 200 OK\r\nX-Pad: ";

    /* build a head of exactly HEAD_MAX bytes */
    pad = HEAD_MAX - strlen(pre) - 4;
    strcpy(big, pre);
    memset(big + strlen(pre), 'a', pad);
    strcpy(big + strlen(pre) + pad, "\r\n\r\nBODY");
    n = strlen(big);
    apx_http_resp_init(&p, head_buf, HEAD_MAX, head_fields, MAX_FIELDS);
    is_int(apx_http_resp_feed(&p, big, n, &used), APR_SUCCESS,
           "head of exactly head_max bytes fits");
    is_int(used, HEAD_MAX, "consumed head_max");
    ok(head_agrees(big, n), "limit head: same in any split");

    /* one byte more */
    big[strlen(pre)] = 'b';
    memmove(big + strlen(pre) + 1, big + strlen(pre), n - strlen(pre) + 1);
    n++;
    apx_http_resp_init(&p, head_buf, HEAD_MAX, head_fields, MAX_FIELDS);
    is_int(apx_http_resp_feed(&p, big, n, &used), APX_HTTP_EPROTO,
           "one byte over head_max fails");
    is_int(p.error, APX_HTTP_E_HEAD_TOO_LONG, "class: head too long");
    ok(head_agrees(big, n), "over-limit head: same error in any split");

    /* a head that never ends fails as soon as it passes the limit */
    apx_http_resp_init(&p, small_buf, sizeof(small_buf), f, 4);
    memset(big, 'x', 300);
    memcpy(big, "HTTP/1.1 200 OK\r\nX: ", 20);
    is_int(apx_http_resp_feed(&p, big, 256, &used), APR_INCOMPLETE,
           "unterminated 256 bytes into a 256-byte buffer: incomplete");
    is_int(apx_http_resp_feed(&p, big + 256, 1, &used), APX_HTTP_EPROTO,
           "257th byte: too long");
    is_int(p.error, APX_HTTP_E_HEAD_TOO_LONG, "class: head too long (stream)");

    /* field count limit: 4 fits, 5 does not */
    apx_http_resp_init(&p, small_buf, sizeof(small_buf), f, 4);
    is_int(apx_http_resp_feed(&p, "HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n",
                              45, &used), APR_SUCCESS, "max fields fit");
    is_int(p.nfields, 4, "four fields");
    apx_http_resp_init(&p, small_buf, sizeof(small_buf), f, 4);
    is_int(apx_http_resp_feed(&p, "HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\n\r\n",
                              51, &used), APX_HTTP_EPROTO, "one field too many");
    is_int(p.error, APX_HTTP_E_TOO_MANY_FIELDS, "class: too many fields");
    apx_http_resp_init(&p, small_buf, sizeof(small_buf), NULL, 0);
    is_int(apx_http_resp_feed(&p, "HTTP/1.1 200 OK\r\n\r\n", 19, &used),
           APR_SUCCESS, "no field storage, no fields: fine");
}

static void test_head_interim(void)
{
    const char *r = "HTTP/1.1 100 Continue\r\n\r\n"
                    "HTTP/1.1 103 Early Hints\r\n"
                    "Link: </a.css>; rel=preload\r\n"
                    "Link: </b.js>; rel=preload\r\n\r\n"
                    "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc";
    size_t n = strlen(r), off = 0, used;
    apx_http_resp p;
    int heads = 0, statuses[3] = { 0, 0, 0 };
    int split;

    for (split = 0; split < 3; split++) {
        apx_http_resp_init(&p, head_buf, HEAD_MAX, head_fields, MAX_FIELDS);
        off = 0;
        heads = 0;
        while (off < n) {
            apr_status_t rv = feed_head(&p, r + off, n - off, split, &used);

            off += used;
            if (rv != APR_SUCCESS)
                break;
            statuses[heads++] = p.status;
            if (p.status == 103)
                ok(p.nfields == 2 && field_is(&p.fields[1], "Link",
                                              "</b.js>; rel=preload"),
                   "103 fields (split %d)", split);
            if (!apx_http_resp_is_interim(&p))
                break;
            is_int(apx_http_resp_framing(&p, "GET", NULL), APX_HTTP_BODY_NONE,
                   "interim: no body");
            apx_http_resp_reset(&p);
        }
        ok(heads == 3 && statuses[0] == 100 && statuses[1] == 103
           && statuses[2] == 200, "100, 103, 200 in order (split %d)", split);
        is_int(n - off, 3, "after the final head: the body");
    }
}

/* Two responses back to back on one buffer: the caller sees exactly where
 * each head and body ends. */
static void test_head_pipelined(void)
{
    const char *r = "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody"
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
                    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                    "3\r\nabc\r\n0\r\n\r\nEXTRA";
    size_t n = strlen(r), off = 0, used;
    apx_http_resp p;
    apx_http_chunked d;
    int64_t len = -1;
    const char *data;
    size_t dlen;

    apx_http_resp_init(&p, head_buf, HEAD_MAX, head_fields, MAX_FIELDS);
    is_int(apx_http_resp_feed(&p, r, n, &used), APR_SUCCESS, "pipelined 1");
    is_int(apx_http_resp_framing(&p, "GET", &len), APX_HTTP_BODY_LENGTH, "1: length");
    off = used + (size_t)len;
    ok(memcmp(r + used, "body", 4) == 0, "1: body where expected");
    apx_http_resp_reset(&p);
    is_int(apx_http_resp_feed(&p, r + off, n - off, &used), APR_SUCCESS, "pipelined 2");
    is_int(p.status, 404, "2: status");
    is_int(apx_http_resp_framing(&p, "GET", &len), APX_HTTP_BODY_LENGTH, "2: length");
    is_int(len, 0, "2: zero length");
    off += used;
    apx_http_resp_reset(&p);
    is_int(apx_http_resp_feed(&p, r + off, n - off, &used), APR_SUCCESS, "pipelined 3");
    is_int(apx_http_resp_framing(&p, "GET", NULL), APX_HTTP_BODY_CHUNKED, "3: chunked");
    off += used;
    apx_http_chunked_init(&d, NULL, 0, NULL, 0);
    is_int(apx_http_chunked_feed(&d, r + off, n - off, &used, &data, &dlen),
           APR_INCOMPLETE, "3: data first");
    ok(dlen == 3 && memcmp(data, "abc", 3) == 0, "3: data");
    off += used;
    is_int(apx_http_chunked_feed(&d, r + off, n - off, &used, &data, &dlen),
           APR_SUCCESS, "3: done");
    off += used;
    is_int(n - off, 5, "extra bytes after the last response reported");
    ok(memcmp(r + off, "EXTRA", 5) == 0, "extra bytes are the tail");
}

static void test_framing(void)
{
    apx_http_resp p;
    size_t used;
    int64_t len = -1;

    parse_head(&p, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", &used);
    is_int(apx_http_resp_framing(&p, "HEAD", &len), APX_HTTP_BODY_NONE,
           "HEAD request: no body despite CL");
    is_int(apx_http_resp_framing(&p, "head", &len), APX_HTTP_BODY_LENGTH,
           "methods are case-sensitive");
    parse_head(&p, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", &used);
    is_int(apx_http_resp_framing(&p, "POST", NULL), APX_HTTP_BODY_CHUNKED,
           "chunked");
    is_int(apx_http_resp_framing(&p, "HEAD", NULL), APX_HTTP_BODY_NONE,
           "HEAD + chunked: none");
    parse_head(&p, "HTTP/1.1 200 OK\r\n\r\n", &used);
    is_int(apx_http_resp_framing(&p, "GET", NULL), APX_HTTP_BODY_CLOSE,
           "no framing: until close");
    parse_head(&p, "HTTP/1.1 204 No Content\r\n\r\n", &used);
    is_int(apx_http_resp_framing(&p, "GET", NULL), APX_HTTP_BODY_NONE, "204: none");
    parse_head(&p, "HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n", &used);
    is_int(apx_http_resp_framing(&p, "GET", NULL), APX_HTTP_BODY_NONE,
           "304 with CL: none");
    parse_head(&p, "HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n", &used);
    is_int(apx_http_resp_framing(&p, "GET", NULL), APX_HTTP_BODY_NONE,
           "304 with TE: none");
    parse_head(&p, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n", &used);
    is_int(apx_http_resp_framing(&p, "GET", NULL), APX_HTTP_BODY_NONE, "101: none");
    ok(apx_http_resp_is_interim(&p), "101 reported as 1xx");
    parse_head(&p, "HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n", &used);
    is_int(apx_http_resp_framing(&p, NULL, &len), APX_HTTP_BODY_LENGTH,
           "CL 0: length");
    is_int(len, 0, "CL 0: zero");
}

/* ------------------------------------------------------------------------
 * Chunked decoder
 */
static char tbuf[1024];
static apx_http_field tfields[8];

/* Decodes s[0..n) split as for feed_head() (3 = at position `at`), collects
 * the data in out. Returns the final status, *consumed the total used. */
static apr_status_t decode(apx_http_chunked *d, const char *s, size_t n,
                           int split, size_t at, char *out, size_t *out_len,
                           size_t *consumed)
{
    size_t off = 0, used, dlen, limit;
    const char *data;
    apr_status_t rv = APR_INCOMPLETE;

    *out_len = 0;
    *consumed = 0;
    while (off < n) {
        if (split == 0)
            limit = n;
        else if (split == 1)
            limit = off + 1;
        else if (split == 2)
            limit = off + 1 + (size_t)(rng() % 17);
        else
            limit = off < at ? at : n;
        if (limit > n)
            limit = n;
        /* feed [off, limit) until it is used up or the decoder stops */
        while (off < limit) {
            rv = apx_http_chunked_feed(d, s + off, limit - off, &used, &data,
                                       &dlen);
            if (dlen) {
                if (data < s + off || data + dlen > s + off + used)
                    return APR_EGENERAL;    /* must point into the input */
                memcpy(out + *out_len, data, dlen);
                *out_len += dlen;
            }
            off += used;
            *consumed = off;
            if (rv != APR_INCOMPLETE)
                return rv;
            if (!dlen && off != limit)
                return APR_EGENERAL;    /* INCOMPLETE w/o data eats all */
        }
    }
    return rv;
}

static void chunked_err(const char *s, apx_http_error want, const char *name)
{
    apx_http_chunked d;
    char out[256];
    size_t olen, used;
    apr_status_t rv;
    int split;

    for (split = 0; split <= 1; split++) {
        apx_http_chunked_init(&d, tbuf, sizeof(tbuf), tfields, 8);
        rv = decode(&d, s, strlen(s), split, 0, out, &olen, &used);
        if (!ok(rv == APX_HTTP_EPROTO && d.error == want,
                "bad chunked%s: %s", split ? " (bytewise)" : "", name))
            diag("  rv=%d error=%d (%s), wanted %d", rv, (int)d.error,
                 d.errstr ? d.errstr : "-", (int)want);
    }
}

static void test_chunked_good(void)
{
    apx_http_chunked d;
    char out[512];
    size_t olen, used;
    const char *s;

    s = "5\r\nhello\r\n0\r\n\r\n";
    apx_http_chunked_init(&d, tbuf, sizeof(tbuf), tfields, 8);
    is_int(decode(&d, s, strlen(s), 0, 0, out, &olen, &used), APR_SUCCESS,
           "simple: done");
    ok(olen == 5 && memcmp(out, "hello", 5) == 0, "simple: data");
    is_int(used, strlen(s), "simple: consumed all");
    is_int(d.body_bytes, 5, "simple: body bytes");
    ok(apx_http_chunked_is_done(&d), "simple: is_done");
    {
        const char *data;
        size_t dlen;

        is_int(apx_http_chunked_feed(&d, "5\r\n", 3, &used, &data, &dlen),
               APR_SUCCESS, "feed after done: still done");
        ok(used == 0 && dlen == 0, "feed after done: nothing used");
    }

    s = "0\r\n\r\n";
    apx_http_chunked_init(&d, NULL, 0, NULL, 0);
    is_int(decode(&d, s, strlen(s), 1, 0, out, &olen, &used), APR_SUCCESS,
           "empty body, no trailer storage");
    is_int(olen, 0, "empty body: no data");

    s = "a\r\n0123456789\r\nA\r\nabcdefghij\r\n000F\r\n"
        "klmnopqrstuvwxy\r\n00\r\n\r\n";
    apx_http_chunked_init(&d, tbuf, sizeof(tbuf), tfields, 8);
    is_int(decode(&d, s, strlen(s), 0, 0, out, &olen, &used), APR_SUCCESS,
           "hex cases and leading zeros");
    ok(olen == 35 && memcmp(out, "0123456789abcdefghijklmnopqrstuvwxy", 35) == 0,
       "hex cases: data");

    s = "5;name=value\r\nhello\r\n6 ; a=\"b;c\" ;x\r\n world\r\n"
        "3\t;e\r\n!!!\r\n0;last\r\n\r\n";
    apx_http_chunked_init(&d, tbuf, sizeof(tbuf), tfields, 8);
    is_int(decode(&d, s, strlen(s), 0, 0, out, &olen, &used), APR_SUCCESS,
           "extensions ignored");
    ok(olen == 14 && memcmp(out, "hello world!!!", 14) == 0,
       "extensions: data intact");

    s = "3\r\nabc\r\n0\r\nX-Checksum: 900150983cd2\r\nX-Other:v  \r\n\r\nNEXT";
    apx_http_chunked_init(&d, tbuf, sizeof(tbuf), tfields, 8);
    is_int(decode(&d, s, strlen(s), 0, 0, out, &olen, &used), APR_SUCCESS,
           "trailers: done");
    is_int(used, strlen(s) - 4, "trailers: stops before the next message");
    is_int(d.nfields, 2, "trailers: two fields");
    ok(field_is(&d.fields[0], "X-Checksum", "900150983cd2"), "trailer 1");
    ok(field_is(&d.fields[1], "X-Other", "v"), "trailer 2 trimmed");

    {   /* exactly APX_HTTP_CHUNK_EXT_MAX bytes of extension is fine */
        static char ext[APX_HTTP_CHUNK_EXT_MAX + 64];
        size_t k = 0;

        ext[k++] = '1';
        ext[k++] = ';';
        memset(ext + k, 'e', APX_HTTP_CHUNK_EXT_MAX - 1);
        k += APX_HTTP_CHUNK_EXT_MAX - 1;
        strcpy(ext + k, "\r\nZ\r\n0\r\n\r\n");
        apx_http_chunked_init(&d, NULL, 0, NULL, 0);
        is_int(decode(&d, ext, strlen(ext), 0, 0, out, &olen, &used),
               APR_SUCCESS, "extension of exactly the limit");
        ext[2] = 'f';
        memmove(ext + 3, ext + 2, strlen(ext + 2) + 1);
        apx_http_chunked_init(&d, NULL, 0, NULL, 0);
        is_int(decode(&d, ext, strlen(ext), 0, 0, out, &olen, &used),
               APX_HTTP_EPROTO, "extension one over the limit");
        is_int(d.error, APX_HTTP_E_CHUNK_EXT, "class: chunk extension");
    }

    s = "4000000000000000\r\n";
    apx_http_chunked_init(&d, NULL, 0, NULL, 0);
    is_int(decode(&d, s, strlen(s), 0, 0, out, &olen, &used), APR_INCOMPLETE,
           "chunk size 2^62 accepted");
    is_int(d.remaining, APX_HTTP_BODY_MAX, "2^62 pending");
}

/* Every split point of a message with extensions and trailers, byte-wise
 * and random pieces: identical data, consumption and trailers. */
static void test_chunked_splits(void)
{
    const char *s = "7;ext=1\r\nabcdefg\r\n1\r\nh\r\n10 ;q=\"x\"\r\n"
                    "ijklmnopqrstuvwx\r\n0\r\nT-One: 1\r\nT-Two: two\r\n\r\n"
                    "HTTP/1.1 200 OK\r\n";
    size_t n = strlen(s), at, olen, used, want_used;
    char out[256];
    apx_http_chunked d;
    int bad = 0, round;

    want_used = n - strlen("HTTP/1.1 200 OK\r\n");
    for (at = 0; at <= n; at++) {
        apx_http_chunked_init(&d, tbuf, sizeof(tbuf), tfields, 8);
        if (decode(&d, s, n, 3, at, out, &olen, &used) != APR_SUCCESS
            || olen != 24 || memcmp(out, "abcdefghijklmnopqrstuvwx", 24) != 0
            || used != want_used || d.nfields != 2
            || !field_is(&d.fields[1], "T-Two", "two")) {
            diag("split at %zu differs", at);
            bad++;
        }
    }
    is_int(bad, 0, "chunked: every two-piece split agrees");
    apx_http_chunked_init(&d, tbuf, sizeof(tbuf), tfields, 8);
    ok(decode(&d, s, n, 1, 0, out, &olen, &used) == APR_SUCCESS && olen == 24
       && used == want_used && d.nfields == 2, "chunked: byte at a time");
    for (bad = 0, round = 0; round < 200; round++) {
        apx_http_chunked_init(&d, tbuf, sizeof(tbuf), tfields, 8);
        if (decode(&d, s, n, 2, 0, out, &olen, &used) != APR_SUCCESS
            || olen != 24 || used != want_used || d.nfields != 2)
            bad++;
    }
    is_int(bad, 0, "chunked: 200 random splits agree");
}

static void test_chunked_bad(void)
{
    static char trailer_buf[16];
    apx_http_field tf[1];
    apx_http_chunked d;
    char out[64];
    size_t olen, used;
    const char *s;

    chunked_err("g\r\n", APX_HTTP_E_CHUNK_SIZE, "non-hex size");
    chunked_err("\r\n", APX_HTTP_E_CHUNK_SIZE, "empty size");
    chunked_err(";ext\r\n", APX_HTTP_E_CHUNK_SIZE, "extension without size");
    chunked_err("-5\r\n", APX_HTTP_E_CHUNK_SIZE, "negative size");
    chunked_err("0x5\r\n", APX_HTTP_E_CHUNK_SIZE, "0x prefix");
    chunked_err(" 5\r\n", APX_HTTP_E_CHUNK_SIZE, "leading space");
    chunked_err("+5\r\n", APX_HTTP_E_CHUNK_SIZE, "plus sign");
    chunked_err("4000000000000001\r\n", APX_HTTP_E_CHUNK_SIZE, "size 2^62+1");
    chunked_err("FFFFFFFFFFFFFFFFF\r\n", APX_HTTP_E_CHUNK_SIZE, "size overflow");
    chunked_err("000000000000000000000000000000005\r\n", APX_HTTP_E_CHUNK_SIZE,
                "33 size digits");
    chunked_err("5\nhello\r\n", APX_HTTP_E_CHUNK_CRLF, "bare LF after size");
    chunked_err("5\rhello\r\n", APX_HTTP_E_BARE_CR, "bare CR after size");
    chunked_err("5;a\nhello", APX_HTTP_E_CHUNK_EXT, "bare LF in extension");
    chunked_err("5;a\x01\r\nhello", APX_HTTP_E_CHUNK_EXT, "CTL in extension");
    chunked_err("5;a\x7f\r\nhello", APX_HTTP_E_CHUNK_EXT, "DEL in extension");
    chunked_err("5 \r\nhello\r\n", APX_HTTP_E_CHUNK_EXT, "space then CRLF");
    chunked_err("5 x\r\nhello\r\n", APX_HTTP_E_CHUNK_EXT, "space then junk");
    chunked_err("5\r\nhelloX\r\n", APX_HTTP_E_CHUNK_CRLF, "data too long");
    chunked_err("5\r\nhello\n0\r\n\r\n", APX_HTTP_E_CHUNK_CRLF, "LF only after data");
    chunked_err("5\r\nhello\rX", APX_HTTP_E_CHUNK_CRLF, "CR then junk after data");
    chunked_err("5\r\nhelloX\n0\r\n\r\n", APX_HTTP_E_CHUNK_CRLF, "junk then LF after data");
    chunked_err("5\r\nhello\r\n\r\n", APX_HTTP_E_CHUNK_SIZE, "blank line for size");
    chunked_err("0\r\n\n", APX_HTTP_E_CHUNK_CRLF, "final bare LF");
    chunked_err("0\r\n\rX", APX_HTTP_E_BARE_CR, "final CR without LF");
    chunked_err("0\r\nA: b\n\r\n", APX_HTTP_E_CHUNK_CRLF, "trailer with bare LF");
    chunked_err("0\r\nA: b\r\n c\r\n\r\n", APX_HTTP_E_OBS_FOLD, "folded trailer");
    chunked_err("0\r\nNoColon\r\n\r\n", APX_HTTP_E_NO_COLON, "trailer without colon");
    chunked_err("0\r\nA : b\r\n\r\n", APX_HTTP_E_SPACE_BEFORE_COLON, "trailer SP before colon");
    chunked_err("0\r\nA: b\x01\r\n\r\n", APX_HTTP_E_VALUE, "trailer CTL");
    chunked_err("0\r\nA: b\rc\r\n\r\n", APX_HTTP_E_BARE_CR, "trailer bare CR");
    chunked_err("0\r\nA@: b\r\n\r\n", APX_HTTP_E_NAME, "trailer bad name");

    /* bounded trailers */
    s = "0\r\nA: 0123456789AB\r\n\r\n";    /* 17-byte line, 16-byte buffer */
    apx_http_chunked_init(&d, trailer_buf, sizeof(trailer_buf), tf, 1);
    is_int(decode(&d, s, strlen(s), 0, 0, out, &olen, &used), APX_HTTP_EPROTO,
           "trailer over its buffer");
    is_int(d.error, APX_HTTP_E_TRAILER_TOO_LONG, "class: trailer too long");
    apx_http_chunked_init(&d, trailer_buf, sizeof(trailer_buf), tf, 1);
    is_int(decode(&d, s, strlen(s), 1, 0, out, &olen, &used), APX_HTTP_EPROTO,
           "trailer over its buffer (bytewise)");
    s = "0\r\nA: 0123456789A\r\n\r\n";
    apx_http_chunked_init(&d, trailer_buf, sizeof(trailer_buf), tf, 1);
    is_int(decode(&d, s, strlen(s), 1, 0, out, &olen, &used), APR_SUCCESS,
           "trailer of exactly the buffer size");
    s = "0\r\nA: 1\r\nB: 2\r\n\r\n";
    apx_http_chunked_init(&d, tbuf, sizeof(tbuf), tf, 1);
    is_int(decode(&d, s, strlen(s), 0, 0, out, &olen, &used), APX_HTTP_EPROTO,
           "too many trailers");
    is_int(d.error, APX_HTTP_E_TOO_MANY_FIELDS, "class: too many trailer fields");
    s = "0\r\nA: 1\r\n\r\n";
    apx_http_chunked_init(&d, NULL, 0, NULL, 0);
    is_int(decode(&d, s, strlen(s), 0, 0, out, &olen, &used), APX_HTTP_EPROTO,
           "trailer with no trailer storage");
    is_int(d.error, APX_HTTP_E_TRAILER_TOO_LONG, "class: no trailer room");

    /* sticky */
    {
        const char *data;
        size_t dlen;

        apx_http_chunked_init(&d, NULL, 0, NULL, 0);
        is_int(apx_http_chunked_feed(&d, "z", 1, &used, &data, &dlen),
               APX_HTTP_EPROTO, "bad size fails");
        is_int(apx_http_chunked_feed(&d, "5\r\n", 3, &used, &data, &dlen),
               APX_HTTP_EPROTO, "chunked error sticky");
        ok(used == 0 && dlen == 0, "nothing used after error");
    }
}

/* ------------------------------------------------------------------------
 * Writer and hop-by-hop
 */
static void test_writer(apr_pool_t *pool)
{
    const char *want = "GET /a?b=c HTTP/1.1\r\nHost: backend\r\n"
                       "X-Forwarded-For: 10.0.0.1\r\nX-Empty: \r\n\r\n";
    char buf[128];
    apx_http_writer w;
    size_t wl = strlen(want);

    apx_http_writer_init_buf(&w, buf, sizeof(buf));
    is_int(apx_http_writer_request_line(&w, "GET", "/a?b=c"), APR_SUCCESS,
           "writer: request line");
    is_int(apx_http_writer_field(&w, "Host", 4, "backend", 7), APR_SUCCESS,
           "writer: field");
    is_int(apx_http_writer_field(&w, "X-Forwarded-For", 15, "10.0.0.1", 8),
           APR_SUCCESS, "writer: second field");
    is_int(apx_http_writer_field(&w, "Bad Name", 8, "v", 1), APR_EINVAL,
           "writer: bad name refused");
    is_int(apx_http_writer_field(&w, "X", 1, "a\r\nInjected: 1", 15), APR_EINVAL,
           "writer: CRLF in value refused");
    is_int(apx_http_writer_field(&w, "X", 1, " lead", 5), APR_EINVAL,
           "writer: leading space refused");
    is_int(apx_http_writer_field(&w, "X-Empty", 7, "", 0), APR_SUCCESS,
           "writer: empty value");
    is_int(apx_http_writer_end(&w), APR_SUCCESS, "writer: end");
    ok(w.len == wl && strcmp(w.buf, want) == 0, "writer: exact text");

    /* fixed buffer: exactly enough (plus NUL), then one byte short */
    {
        char *exact = malloc(wl + 1);

        apx_http_writer_init_buf(&w, exact, wl + 1);
        apx_http_writer_request_line(&w, "GET", "/a?b=c");
        apx_http_writer_field(&w, "Host", 4, "backend", 7);
        apx_http_writer_field(&w, "X-Forwarded-For", 15, "10.0.0.1", 8);
        apx_http_writer_field(&w, "X-Empty", 7, "", 0);
        is_int(apx_http_writer_end(&w), APR_SUCCESS, "writer: exact fit");
        ok(strcmp(exact, want) == 0, "writer: exact fit text");
        apx_http_writer_init_buf(&w, exact, wl);
        apx_http_writer_request_line(&w, "GET", "/a?b=c");
        apx_http_writer_field(&w, "Host", 4, "backend", 7);
        apx_http_writer_field(&w, "X-Forwarded-For", 15, "10.0.0.1", 8);
        apx_http_writer_field(&w, "X-Empty", 7, "", 0);
        is_int(apx_http_writer_end(&w), APR_ENOSPC, "writer: one short");
        is_int(apx_http_writer_field(&w, "A", 1, "b", 1), APR_ENOSPC,
               "writer: overflow sticky");
        ok(w.len < wl && exact[w.len] == '\0', "writer: NUL-terminated");
        free(exact);
    }

    is_int(apx_http_writer_request_line(&w, "G ET", "/"), APR_EINVAL, "bad method");
    apx_http_writer_init_buf(&w, buf, sizeof(buf));
    is_int(apx_http_writer_request_line(&w, "GET", "/a b"), APR_EINVAL, "SP in target");
    is_int(apx_http_writer_request_line(&w, "GET", "/a\nb"), APR_EINVAL, "LF in target");
    is_int(apx_http_writer_request_line(&w, "GET", ""), APR_EINVAL, "empty target");
    is_int(apx_http_writer_request_line(&w, "", "/"), APR_EINVAL, "empty method");
    is_int(w.len, 0, "refused lines wrote nothing");

    /* pool-grown */
    {
        apx_http_writer pw;
        char value[200];
        int k, good = 1;

        memset(value, 'v', sizeof(value));
        apx_http_writer_init_pool(&pw, pool, 8);
        apx_http_writer_request_line(&pw, "POST", "/upload");
        for (k = 0; k < 50; k++)
            if (apx_http_writer_field(&pw, "X-Long", 6, value, sizeof(value))
                != APR_SUCCESS)
                good = 0;
        ok(good, "pool writer: 50 long fields");
        is_int(apx_http_writer_end(&pw), APR_SUCCESS, "pool writer: end");
        is_int(pw.len, strlen("POST /upload HTTP/1.1\r\n") + 50 * (6 + 2 + 200 + 2) + 2,
               "pool writer: length");
        is_int(strlen(pw.buf), pw.len, "pool writer: NUL-terminated");
        ok(memcmp(pw.buf + pw.len - 5, "v\r\n\r\n", 5) == 0, "pool writer: tail");
    }
}

static void test_hop_by_hop(void)
{
    static const char *const hop[] = {
        "Connection", "connection", "Keep-Alive", "KEEP-ALIVE", "TE", "te",
        "Trailer", "Transfer-Encoding", "Upgrade", "Proxy-Connection",
        "Proxy-Authorization", "proxy-authenticate", "X-Private", "x-other",
    };
    static const char *const end_to_end[] = {
        "Host", "Content-Length", "Set-Cookie", "Trailers", "Tee",
        "Proxy", "Proxy-", "X-Priv", "Connectionx", "Content-Type",
    };
    const char *cv1 = "close, X-Private", *cv2 = " ,x-other ,";
    apx_http_conn_tokens t;
    size_t k;
    int good = 1;

    apx_http_conn_tokens_init(&t);
    is_int(apx_http_conn_tokens_add(&t, cv1, strlen(cv1)), APR_SUCCESS,
           "connection tokens 1");
    is_int(apx_http_conn_tokens_add(&t, cv2, strlen(cv2)), APR_SUCCESS,
           "connection tokens 2");
    is_int(t.n, 3, "three tokens");
    ok(apx_http_conn_tokens_has(&t, "CLOSE", 5), "has close (case)");
    ok(!apx_http_conn_tokens_has(&t, "clos", 4), "prefix is not membership");
    for (k = 0; k < sizeof(hop) / sizeof(hop[0]); k++)
        if (!apx_http_is_hop_by_hop(hop[k], strlen(hop[k]), &t)) {
            diag("%s should be hop-by-hop", hop[k]);
            good = 0;
        }
    ok(good, "hop-by-hop names recognised");
    good = 1;
    for (k = 0; k < sizeof(end_to_end) / sizeof(end_to_end[0]); k++)
        if (apx_http_is_hop_by_hop(end_to_end[k], strlen(end_to_end[k]), &t)) {
            diag("%s should be end-to-end", end_to_end[k]);
            good = 0;
        }
    ok(good, "end-to-end names kept");
    ok(!apx_http_is_hop_by_hop("X-Private", 9, NULL), "listed only via conn");
    ok(apx_http_is_hop_by_hop("Upgrade", 7, NULL), "fixed list without conn");

    apx_http_conn_tokens_init(&t);
    is_int(apx_http_conn_tokens_add(&t, "a, b c", 6), APR_EINVAL,
           "non-token in Connection");
    apx_http_conn_tokens_init(&t);
    {
        char many[512];
        size_t o = 0;
        int i;

        for (i = 0; i < APX_HTTP_MAX_CONN_TOKENS; i++)
            o += (size_t)snprintf(many + o, sizeof(many) - o, "t%d,", i);
        is_int(apx_http_conn_tokens_add(&t, many, o), APR_SUCCESS,
               "max connection tokens");
        is_int(apx_http_conn_tokens_add(&t, "one-more", 8), APR_ENOSPC,
               "one token too many");
    }
}

static void test_helpers(void)
{
    const char *v = " a ,, \"x,y\" ,\tb;q=\"1,2\\\"3\" ,", *pos = v, *el;
    size_t elen;

    ok(apx_http_token_eq("Content-Length", 14, "content-LENGTH", 14), "token_eq");
    ok(!apx_http_token_eq("Content-Length", 14, "Content-Lengt", 13), "token_eq length");
    ok(!apx_http_token_eq("a", 1, "b", 1), "token_eq differs");
    ok(!apx_http_token_eqs("[", 1, "{"), "no case folding outside letters");
    ok(apx_http_is_token("X-Foo_1", 7), "is_token");
    ok(!apx_http_is_token("", 0), "empty is not a token");
    ok(!apx_http_is_token("a:b", 3), "colon is not tchar");
    ok(apx_http_is_field_value("a b\tc\x80", 6), "field value ok");
    ok(apx_http_is_field_value("", 0), "empty field value ok");
    ok(!apx_http_is_field_value("a\x00", 2), "NUL in value");
    ok(!apx_http_is_field_value("a ", 2), "trailing space in value");

    ok(apx_http_list_next(&pos, v + strlen(v), &el, &elen)
       && elen == 1 && el[0] == 'a', "list: a");
    ok(apx_http_list_next(&pos, v + strlen(v), &el, &elen)
       && elen == 5 && memcmp(el, "\"x,y\"", 5) == 0,
       "list: quoted comma kept, empty element skipped");
    ok(apx_http_list_next(&pos, v + strlen(v), &el, &elen)
       && elen == 12 && memcmp(el, "b;q=\"1,2\\\"3\"", 12) == 0,
       "list: escaped quote inside quotes");
    ok(!apx_http_list_next(&pos, v + strlen(v), &el, &elen), "list: end");
    pos = ", ,\t";
    ok(!apx_http_list_next(&pos, pos + 4, &el, &elen), "list: only empties");
}

int main(void)
{
    apr_pool_t *pool;

    apr_initialize();
    apr_pool_create(&pool, NULL);

    test_head_basic();
    test_head_forms();
    test_head_create(pool);
    test_head_bad();
    test_head_bad_splits();
    test_head_limits();
    test_head_interim();
    test_head_pipelined();
    test_framing();
    test_chunked_good();
    test_chunked_splits();
    test_chunked_bad();
    test_writer(pool);
    test_hop_by_hop();
    test_helpers();

    apr_pool_destroy(pool);
    apr_terminate();
    return done_testing();
}
