/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* http.c — HTTP/1.1 codec for backend connections: response-head parser,
 * body framing, chunked decoder, request-head writer, hop-by-hop helpers.
 *
 * Threads: any; every object belongs to one request, used by one thread at
 * a time. Nothing here locks or keeps mutable global state.
 *
 * Invariants:
 *  - The head parser copies exactly the bytes of the head (line by line,
 *    one memcpy each) and never reads past the '\n' of the blank line, so
 *    what the caller keeps after *consumed is body or the next head.
 *  - The chunked decoder never copies data; it returns after each data
 *    slice, and on APR_SUCCESS *consumed is the exact end of the message.
 *  - Every error is sticky: a parser that failed once fails forever.
 *  - Lengths are bounded by APX_HTTP_BODY_MAX (2^62), so no arithmetic on
 *    them can overflow.
 */
#include <string.h>
#include "apx_http.h"

/* Character classes: 1 = tchar (RFC 9110 §5.6.2), 2 = field-value byte
 * (VCHAR, obs-text, SP, HTAB), 4 = HEXDIG. */
#define HTTP_CC_TOKEN 1
#define HTTP_CC_VALUE 2
#define HTTP_CC_HEX   4

static const unsigned char http_char_class[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0,  /* 00 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,  /* 10 */
    2, 3, 2, 3, 3, 3, 3, 3, 2, 2, 3, 3, 2, 3, 3, 2,  /* 20 */
    7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 2, 2, 2, 2, 2, 2,  /* 30 */
    2, 7, 7, 7, 7, 7, 7, 3, 3, 3, 3, 3, 3, 3, 3, 3,  /* 40 */
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 3, 3,  /* 50 */
    3, 7, 7, 7, 7, 7, 7, 3, 3, 3, 3, 3, 3, 3, 3, 3,  /* 60 */
    3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 2, 3, 2, 3, 0,  /* 70 */
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,  /* 80 */
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,  /* 90 */
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,  /* a0 */
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,  /* b0 */
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,  /* c0 */
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,  /* d0 */
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,  /* e0 */
    2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,  /* f0 */
};

#define HTTP_IS_CLASS(c, k) (http_char_class[(unsigned char)(c)] & (k))
#define HTTP_IS_WS(c) ((c) == ' ' || (c) == '\t')

static const char *const error_text[] = {
    [APX_HTTP_E_NONE] = "no error",
    [APX_HTTP_E_STATUS_LINE] = "malformed status line",
    [APX_HTTP_E_BARE_CR] = "bare CR",
    [APX_HTTP_E_NO_COLON] = "header line without colon",
    [APX_HTTP_E_SPACE_BEFORE_COLON] = "whitespace before colon",
    [APX_HTTP_E_NAME] = "invalid header name",
    [APX_HTTP_E_VALUE] = "invalid header value",
    [APX_HTTP_E_OBS_FOLD] = "obsolete line folding",
    [APX_HTTP_E_HEAD_TOO_LONG] = "head too long",
    [APX_HTTP_E_TOO_MANY_FIELDS] = "too many header fields",
    [APX_HTTP_E_CL_INVALID] = "invalid Content-Length",
    [APX_HTTP_E_CL_CONFLICT] = "conflicting Content-Length",
    [APX_HTTP_E_CL_AND_TE] = "Content-Length with Transfer-Encoding",
    [APX_HTTP_E_TE] = "unsupported Transfer-Encoding",
    [APX_HTTP_E_BODY_NOT_ALLOWED] = "body framing on a bodiless status",
    [APX_HTTP_E_CHUNK_SIZE] = "bad chunk size",
    [APX_HTTP_E_CHUNK_EXT] = "bad chunk extension",
    [APX_HTTP_E_CHUNK_CRLF] = "missing CRLF in chunked body",
    [APX_HTTP_E_TRAILER_TOO_LONG] = "trailer section too long",
};

const char *apx_http_strerror(apx_http_error e)
{
    if ((unsigned)e < sizeof(error_text) / sizeof(error_text[0])
        && error_text[e])
        return error_text[e];
    return "unknown error";
}

/* ------------------------------------------------------------------------
 * Helpers
 */
static APR_INLINE unsigned char ascii_lower(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c | 0x20) : c;
}

int apx_http_token_eq(const char *a, size_t alen, const char *b, size_t blen)
{
    size_t i;

    if (alen != blen)
        return 0;
    for (i = 0; i < alen; i++)
        if (ascii_lower((unsigned char)a[i]) != ascii_lower((unsigned char)b[i]))
            return 0;
    return 1;
}

int apx_http_token_eqs(const char *a, size_t alen, const char *s)
{
    return apx_http_token_eq(a, alen, s, strlen(s));
}

int apx_http_is_token(const char *s, size_t len)
{
    size_t i;

    if (len == 0)
        return 0;
    for (i = 0; i < len; i++)
        if (!HTTP_IS_CLASS(s[i], HTTP_CC_TOKEN))
            return 0;
    return 1;
}

int apx_http_is_field_value(const char *v, size_t len)
{
    size_t i;

    if (len && (HTTP_IS_WS(v[0]) || HTTP_IS_WS(v[len - 1])))
        return 0;
    for (i = 0; i < len; i++)
        if (!HTTP_IS_CLASS(v[i], HTTP_CC_VALUE))
            return 0;
    return 1;
}

int apx_http_list_next(const char **pos, const char *end,
                       const char **elem, size_t *elem_len)
{
    const char *p = *pos, *s, *e;
    int quoted = 0;

    while (p < end && (HTTP_IS_WS(*p) || *p == ','))
        p++;
    if (p >= end) {
        *pos = end;
        return 0;
    }
    s = p;
    for (; p < end; p++) {
        if (quoted) {
            if (*p == '\\' && p + 1 < end)
                p++;
            else if (*p == '"')
                quoted = 0;
        }
        else if (*p == '"') {
            quoted = 1;
        }
        else if (*p == ',') {
            break;
        }
    }
    e = p;
    while (e > s && HTTP_IS_WS(e[-1]))
        e--;
    *elem = s;
    *elem_len = (size_t)(e - s);
    *pos = p;
    return 1;
}

/* One field line without its line ending, not starting with SP/HTAB. */
static apx_http_error parse_field_line(const char *s, size_t n,
                                       apx_http_field *f)
{
    size_t i = 0, name_len, vs, ve;

    while (i < n && HTTP_IS_CLASS(s[i], HTTP_CC_TOKEN))
        i++;
    if (i == n)
        return APX_HTTP_E_NO_COLON;
    if (s[i] != ':') {
        if (!memchr(s + i, ':', n - i))
            return APX_HTTP_E_NO_COLON;
        return HTTP_IS_WS(s[i]) ? APX_HTTP_E_SPACE_BEFORE_COLON : APX_HTTP_E_NAME;
    }
    if (i == 0)
        return APX_HTTP_E_NAME;
    name_len = i;
    vs = i + 1;
    ve = n;
    while (vs < ve && HTTP_IS_WS(s[vs]))
        vs++;
    while (ve > vs && HTTP_IS_WS(s[ve - 1]))
        ve--;
    for (i = vs; i < ve; i++)
        if (!HTTP_IS_CLASS(s[i], HTTP_CC_VALUE))
            return APX_HTTP_E_VALUE;
    f->name = s;
    f->name_len = name_len;
    f->value = s + vs;
    f->value_len = ve - vs;
    return APX_HTTP_E_NONE;
}

/* ------------------------------------------------------------------------
 * Response-head parser
 */
enum { RESP_S_STATUS = 0, RESP_S_FIELDS, RESP_S_DONE, RESP_S_ERROR };

static apr_status_t resp_fail(apx_http_resp *p, apx_http_error e,
                              const char *why)
{
    p->state = RESP_S_ERROR;
    p->error = e;
    p->errstr = why ? why : apx_http_strerror(e);
    return APX_HTTP_EPROTO;
}

void apx_http_resp_reset(apx_http_resp *p)
{
    p->status = 0;
    p->minor = 0;
    p->reason = NULL;
    p->reason_len = 0;
    p->nfields = 0;
    p->head_len = 0;
    p->content_length = -1;
    p->chunked = 0;
    p->has_te = 0;
    p->conn_close = 0;
    p->conn_keep_alive = 0;
    p->error = APX_HTTP_E_NONE;
    p->errstr = NULL;
    p->len = 0;
    p->line_start = 0;
    p->state = RESP_S_STATUS;
}

void apx_http_resp_init(apx_http_resp *p, char *buf, size_t head_max,
                        apx_http_field *fields, unsigned max_fields)
{
    p->buf = buf;
    p->cap = head_max;
    p->fields = fields;
    p->max_fields = max_fields;
    apx_http_resp_reset(p);
}

apr_status_t apx_http_resp_create(apx_http_resp **pp, apr_pool_t *pool,
                                  size_t head_max, unsigned max_fields)
{
    apx_http_resp *p;

    *pp = NULL;
    if (head_max == 0)
        return APR_EINVAL;
    p = apr_palloc(pool, sizeof(*p));
    apx_http_resp_init(p, apr_palloc(pool, head_max), head_max,
                       max_fields ? apr_palloc(pool, max_fields
                                               * sizeof(apx_http_field))
                                  : NULL,
                       max_fields);
    *pp = p;
    return APR_SUCCESS;
}

/* "HTTP/1.x SP 3DIGIT [SP reason]" */
static apr_status_t parse_status_line(apx_http_resp *p, const char *s,
                                      size_t n)
{
    size_t i;

    if (n < 12 || memcmp(s, "HTTP/1.", 7) != 0
        || s[7] < '0' || s[7] > '9' || s[8] != ' '
        || s[9] < '1' || s[9] > '5'
        || s[10] < '0' || s[10] > '9' || s[11] < '0' || s[11] > '9')
        return resp_fail(p, APX_HTTP_E_STATUS_LINE, NULL);
    if (n > 12 && s[12] != ' ')
        return resp_fail(p, APX_HTTP_E_STATUS_LINE, NULL);
    for (i = 13; i < n; i++)
        if (!HTTP_IS_CLASS(s[i], HTTP_CC_VALUE))
            return resp_fail(p, APX_HTTP_E_STATUS_LINE,
                             "invalid character in reason phrase");
    p->minor = s[7] - '0';
    p->status = (s[9] - '0') * 100 + (s[10] - '0') * 10 + (s[11] - '0');
    p->reason = n > 12 ? s + 13 : s + 12;
    p->reason_len = n > 12 ? n - 13 : 0;
    p->state = RESP_S_FIELDS;
    return APR_INCOMPLETE;
}

/* 0 ok, else the error class. Equal repeats collapse into *cl. */
static apx_http_error parse_content_length(const char *v, size_t n,
                                           int64_t *cl)
{
    size_t i = 0;

    for (;;) {
        uint64_t x = 0;
        size_t digits = 0;

        while (i < n && HTTP_IS_WS(v[i]))
            i++;
        while (i < n && v[i] >= '0' && v[i] <= '9') {
            unsigned d = (unsigned)(v[i] - '0');

            if (x > (APX_HTTP_BODY_MAX - d) / 10)
                return APX_HTTP_E_CL_INVALID;
            x = x * 10 + d;
            digits++;
            i++;
        }
        if (digits == 0)
            return APX_HTTP_E_CL_INVALID;
        while (i < n && HTTP_IS_WS(v[i]))
            i++;
        if (*cl >= 0 && (uint64_t)*cl != x)
            return APX_HTTP_E_CL_CONFLICT;
        *cl = (int64_t)x;
        if (i == n)
            return APX_HTTP_E_NONE;
        if (v[i] != ',')
            return APX_HTTP_E_CL_INVALID;
        i++;
    }
}

static apr_status_t finish_head(apx_http_resp *p)
{
    int64_t cl = -1;
    int chunked = 0, has_te = 0;
    unsigned k;

    for (k = 0; k < p->nfields; k++) {
        const apx_http_field *f = &p->fields[k];
        const char *pos = f->value, *end = f->value + f->value_len, *el;
        size_t elen;
        apx_http_error e;

        switch (ascii_lower((unsigned char)f->name[0])) {
        case 'c':
            if (apx_http_token_eqs(f->name, f->name_len, "content-length")) {
                e = parse_content_length(f->value, f->value_len, &cl);
                if (e != APX_HTTP_E_NONE)
                    return resp_fail(p, e, NULL);
            }
            else if (apx_http_token_eqs(f->name, f->name_len, "connection")) {
                while (apx_http_list_next(&pos, end, &el, &elen)) {
                    if (apx_http_token_eqs(el, elen, "close"))
                        p->conn_close = 1;
                    else if (apx_http_token_eqs(el, elen, "keep-alive"))
                        p->conn_keep_alive = 1;
                }
            }
            break;
        case 't':
            if (!apx_http_token_eqs(f->name, f->name_len,
                                    "transfer-encoding"))
                break;
            has_te = 1;
            while (apx_http_list_next(&pos, end, &el, &elen)) {
                if (!apx_http_token_eqs(el, elen, "chunked"))
                    return resp_fail(p, APX_HTTP_E_TE,
                                     "unsupported transfer coding");
                if (chunked)
                    return resp_fail(p, APX_HTTP_E_TE, "chunked twice");
                chunked = 1;
            }
            break;
        default:
            break;
        }
    }
    if (has_te) {
        if (!chunked)
            return resp_fail(p, APX_HTTP_E_TE, "empty Transfer-Encoding");
        if (cl >= 0)
            return resp_fail(p, APX_HTTP_E_CL_AND_TE, NULL);
        if (p->minor == 0)
            return resp_fail(p, APX_HTTP_E_TE,
                             "Transfer-Encoding in HTTP/1.0");
    }
    if ((p->status < 200 || p->status == 204) && (has_te || cl > 0))
        return resp_fail(p, APX_HTTP_E_BODY_NOT_ALLOWED, NULL);
    p->content_length = cl;
    p->chunked = chunked;
    p->has_te = has_te;
    p->head_len = p->len;
    p->state = RESP_S_DONE;
    return APR_SUCCESS;
}

/* The line buf[line_start..len) is complete and ends with '\n'. */
static apr_status_t resp_line(apx_http_resp *p)
{
    const char *s = p->buf + p->line_start;
    size_t n = p->len - p->line_start - 1;
    apx_http_error e;

    if (n && s[n - 1] == '\r')
        n--;
    if (memchr(s, '\r', n))
        return resp_fail(p, APX_HTTP_E_BARE_CR, NULL);
    if (p->state == RESP_S_STATUS)
        return parse_status_line(p, s, n);
    if (n == 0)
        return finish_head(p);
    if (HTTP_IS_WS(s[0]))
        return resp_fail(p, APX_HTTP_E_OBS_FOLD, NULL);
    if (p->nfields >= p->max_fields)
        return resp_fail(p, APX_HTTP_E_TOO_MANY_FIELDS, NULL);
    e = parse_field_line(s, n, &p->fields[p->nfields]);
    if (e != APX_HTTP_E_NONE)
        return resp_fail(p, e, NULL);
    p->nfields++;
    return APR_INCOMPLETE;
}

apr_status_t apx_http_resp_feed(apx_http_resp *p, const char *data,
                                size_t len, size_t *consumed)
{
    size_t used = 0;

    *consumed = 0;
    if (p->state == RESP_S_DONE)
        return APR_SUCCESS;
    if (p->state == RESP_S_ERROR)
        return APX_HTTP_EPROTO;
    while (used < len) {
        const char *nl = memchr(data + used, '\n', len - used);
        size_t n = nl ? (size_t)(nl - (data + used)) + 1 : len - used;
        apr_status_t rv;

        if (n > p->cap - p->len) {
            *consumed = used;
            return resp_fail(p, APX_HTTP_E_HEAD_TOO_LONG, NULL);
        }
        memcpy(p->buf + p->len, data + used, n);
        p->len += n;
        used += n;
        if (!nl)
            break;
        rv = resp_line(p);
        p->line_start = p->len;
        if (rv != APR_INCOMPLETE) {
            *consumed = used;
            return rv;
        }
    }
    *consumed = used;
    return APR_INCOMPLETE;
}

int apx_http_resp_is_interim(const apx_http_resp *p)
{
    return p->state == RESP_S_DONE && p->status < 200;
}

const apx_http_field *apx_http_resp_find(const apx_http_resp *p,
                                         const char *name, unsigned *index)
{
    size_t nlen = strlen(name);
    unsigned k;

    for (k = *index; k < p->nfields; k++)
        if (apx_http_token_eq(p->fields[k].name, p->fields[k].name_len,
                              name, nlen)) {
            *index = k;
            return &p->fields[k];
        }
    return NULL;
}

apx_http_framing apx_http_resp_framing(const apx_http_resp *p,
                                       const char *method, int64_t *length)
{
    if (method && strcmp(method, "HEAD") == 0)
        return APX_HTTP_BODY_NONE;
    if (p->status < 200 || p->status == 204 || p->status == 304)
        return APX_HTTP_BODY_NONE;
    if (p->chunked)
        return APX_HTTP_BODY_CHUNKED;
    if (p->content_length >= 0) {
        if (length)
            *length = p->content_length;
        return APX_HTTP_BODY_LENGTH;
    }
    return APX_HTTP_BODY_CLOSE;
}

int apx_http_resp_keepalive(const apx_http_resp *p)
{
    if (p->conn_close)
        return 0;
    return p->minor >= 1 || p->conn_keep_alive;
}

/* ------------------------------------------------------------------------
 * Chunked decoder
 */
enum {
    CHUNK_S_SIZE = 0,        /* hex digits of a chunk size */
    CHUNK_S_SIZE_WS,         /* BWS after the size: only ';' may follow */
    CHUNK_S_EXT,             /* chunk extensions up to CR */
    CHUNK_S_SIZE_LF,         /* LF ending the size line */
    CHUNK_S_DATA,
    CHUNK_S_DATA_CR,         /* CRLF after the data */
    CHUNK_S_DATA_LF,
    CHUNK_S_TRAILER_START,   /* a trailer line or the final CRLF */
    CHUNK_S_TRAILER_LINE,
    CHUNK_S_FINAL_LF,
    CHUNK_S_DONE,
    CHUNK_S_ERROR
};

void apx_http_chunked_init(apx_http_chunked *d, char *tbuf, size_t tmax,
                           apx_http_field *fields, unsigned max_fields)
{
    memset(d, 0, sizeof(*d));
    d->tbuf = tbuf;
    d->tmax = tbuf ? tmax : 0;
    d->fields = fields;
    d->max_fields = fields ? max_fields : 0;
    d->state = CHUNK_S_SIZE;
}

int apx_http_chunked_is_done(const apx_http_chunked *d)
{
    return d->state == CHUNK_S_DONE;
}

static apr_status_t chunked_fail(apx_http_chunked *d, apx_http_error e,
                                 const char *why)
{
    d->state = CHUNK_S_ERROR;
    d->error = e;
    d->errstr = why ? why : apx_http_strerror(e);
    return APX_HTTP_EPROTO;
}

/* The trailer line tbuf[line_start..tlen) is complete and ends with '\n'. */
static apr_status_t trailer_line(apx_http_chunked *d)
{
    const char *s = d->tbuf + d->line_start;
    size_t n = d->tlen - d->line_start - 1;
    apx_http_error e;

    if (n == 0 || s[n - 1] != '\r')
        return chunked_fail(d, APX_HTTP_E_CHUNK_CRLF, "bare LF in trailer");
    n--;
    if (memchr(s, '\r', n))
        return chunked_fail(d, APX_HTTP_E_BARE_CR, NULL);
    if (d->nfields >= d->max_fields)
        return chunked_fail(d, APX_HTTP_E_TOO_MANY_FIELDS, NULL);
    e = parse_field_line(s, n, &d->fields[d->nfields]);
    if (e != APX_HTTP_E_NONE)
        return chunked_fail(d, e, NULL);
    d->nfields++;
    d->line_start = d->tlen;
    return APR_INCOMPLETE;
}

apr_status_t apx_http_chunked_feed(apx_http_chunked *d, const char *in,
                                   size_t len, size_t *consumed,
                                   const char **data, size_t *data_len)
{
    size_t i = 0;

    *consumed = 0;
    *data = NULL;
    *data_len = 0;
    if (d->state == CHUNK_S_DONE)
        return APR_SUCCESS;
    if (d->state == CHUNK_S_ERROR)
        return APX_HTTP_EPROTO;

#define CHUNK_FAIL(e, why) \
    do { *consumed = i; return chunked_fail(d, e, why); } while (0)
    while (i < len) {
        char c = in[i];

        switch (d->state) {
        case CHUNK_S_DATA: {
            size_t n = len - i;

            if ((uint64_t)n > d->remaining)
                n = (size_t)d->remaining;
            *data = in + i;
            *data_len = n;
            d->remaining -= n;
            d->body_bytes += n;
            if (d->remaining == 0)
                d->state = CHUNK_S_DATA_CR;
            *consumed = i + n;
            return APR_INCOMPLETE;
        }
        case CHUNK_S_SIZE:
            if (HTTP_IS_CLASS(c, HTTP_CC_HEX)) {
                unsigned v = c <= '9' ? (unsigned)(c - '0')
                                      : (unsigned)((c | 0x20) - 'a' + 10);

                if (d->digits >= APX_HTTP_CHUNK_SIZE_DIGITS_MAX)
                    CHUNK_FAIL(APX_HTTP_E_CHUNK_SIZE, "chunk size too long");
                if (d->remaining > (APX_HTTP_BODY_MAX - v) / 16)
                    CHUNK_FAIL(APX_HTTP_E_CHUNK_SIZE, "chunk size too big");
                d->remaining = d->remaining * 16 + v;
                d->digits++;
                break;
            }
            if (d->digits == 0)
                CHUNK_FAIL(APX_HTTP_E_CHUNK_SIZE, "missing chunk size");
            if (c == ';' || HTTP_IS_WS(c)) {
                d->ext_len = 1;
                d->state = c == ';' ? CHUNK_S_EXT : CHUNK_S_SIZE_WS;
            }
            else if (c == '\r') {
                d->state = CHUNK_S_SIZE_LF;
            }
            else if (c == '\n') {
                CHUNK_FAIL(APX_HTTP_E_CHUNK_CRLF, "bare LF after chunk size");
            }
            else {
                CHUNK_FAIL(APX_HTTP_E_CHUNK_SIZE, "invalid chunk size");
            }
            break;
        case CHUNK_S_SIZE_WS:
            if (c == ';')
                d->state = CHUNK_S_EXT;
            else if (!HTTP_IS_WS(c))
                CHUNK_FAIL(APX_HTTP_E_CHUNK_EXT, "whitespace after chunk size");
            if (++d->ext_len > APX_HTTP_CHUNK_EXT_MAX)
                CHUNK_FAIL(APX_HTTP_E_CHUNK_EXT, "chunk extension too long");
            break;
        case CHUNK_S_EXT:
            if (c == '\r') {
                d->state = CHUNK_S_SIZE_LF;
                break;
            }
            if (!HTTP_IS_CLASS(c, HTTP_CC_VALUE))
                CHUNK_FAIL(APX_HTTP_E_CHUNK_EXT, NULL);
            if (++d->ext_len > APX_HTTP_CHUNK_EXT_MAX)
                CHUNK_FAIL(APX_HTTP_E_CHUNK_EXT, "chunk extension too long");
            break;
        case CHUNK_S_SIZE_LF:
            if (c != '\n')
                CHUNK_FAIL(APX_HTTP_E_BARE_CR, NULL);
            d->digits = 0;
            d->state = d->remaining ? CHUNK_S_DATA : CHUNK_S_TRAILER_START;
            break;
        case CHUNK_S_DATA_CR:
            if (c != '\r')
                CHUNK_FAIL(APX_HTTP_E_CHUNK_CRLF, "no CRLF after chunk data");
            d->state = CHUNK_S_DATA_LF;
            break;
        case CHUNK_S_DATA_LF:
            if (c != '\n')
                CHUNK_FAIL(APX_HTTP_E_CHUNK_CRLF, "no CRLF after chunk data");
            d->state = CHUNK_S_SIZE;
            break;
        case CHUNK_S_TRAILER_START:
            if (c == '\r') {
                d->state = CHUNK_S_FINAL_LF;
                break;
            }
            if (c == '\n')
                CHUNK_FAIL(APX_HTTP_E_CHUNK_CRLF, "bare LF ending chunked body");
            if (HTTP_IS_WS(c))
                CHUNK_FAIL(APX_HTTP_E_OBS_FOLD, NULL);
            d->state = CHUNK_S_TRAILER_LINE;
            continue;               /* the line starts with this byte */
        case CHUNK_S_TRAILER_LINE: {
            const char *nl = memchr(in + i, '\n', len - i);
            size_t n = nl ? (size_t)(nl - (in + i)) + 1 : len - i;
            apr_status_t rv;

            if (n > d->tmax - d->tlen)
                CHUNK_FAIL(APX_HTTP_E_TRAILER_TOO_LONG, NULL);
            memcpy(d->tbuf + d->tlen, in + i, n);
            d->tlen += n;
            i += n;
            if (nl) {
                rv = trailer_line(d);
                if (rv != APR_INCOMPLETE) {
                    *consumed = i;
                    return rv;
                }
                d->state = CHUNK_S_TRAILER_START;
            }
            continue;
        }
        case CHUNK_S_FINAL_LF:
            if (c != '\n')
                CHUNK_FAIL(APX_HTTP_E_BARE_CR, NULL);
            d->state = CHUNK_S_DONE;
            *consumed = i + 1;
            return APR_SUCCESS;
        default:
            CHUNK_FAIL(APX_HTTP_E_NONE, "decoder misuse");
        }
        i++;
    }
#undef CHUNK_FAIL
    *consumed = len;
    return APR_INCOMPLETE;
}

/* ------------------------------------------------------------------------
 * Request-head writer
 */
void apx_http_writer_init_buf(apx_http_writer *w, char *buf, size_t cap)
{
    w->buf = buf;
    w->len = 0;
    w->pool = NULL;
    w->status = APR_SUCCESS;
    if (cap == 0 || buf == NULL) {
        w->cap = 0;
        w->status = APR_ENOSPC;
        return;
    }
    w->cap = cap - 1;
    buf[0] = '\0';
}

void apx_http_writer_init_pool(apx_http_writer *w, apr_pool_t *pool,
                               size_t initial)
{
    if (initial < 64)
        initial = 64;
    w->buf = apr_palloc(pool, initial + 1);
    w->buf[0] = '\0';
    w->len = 0;
    w->cap = initial;
    w->pool = pool;
    w->status = APR_SUCCESS;
}

/* Room for n more bytes (plus the NUL), growing in the pool if allowed. */
static int writer_reserve(apx_http_writer *w, size_t n)
{
    size_t cap;
    char *nb;

    if (w->status != APR_SUCCESS)
        return 0;
    if (n <= w->cap - w->len)
        return 1;
    if (!w->pool) {
        w->status = APR_ENOSPC;
        return 0;
    }
    cap = w->cap * 2;
    if (cap < w->len + n)
        cap = w->len + n;
    nb = apr_palloc(w->pool, cap + 1);
    memcpy(nb, w->buf, w->len + 1);
    w->buf = nb;
    w->cap = cap;
    return 1;
}

static void writer_put(apx_http_writer *w, const char *s, size_t n)
{
    memcpy(w->buf + w->len, s, n);
    w->len += n;
}

apr_status_t apx_http_writer_request_line(apx_http_writer *w,
                                          const char *method,
                                          const char *target)
{
    size_t ml = strlen(method), tl = strlen(target), i;

    if (!apx_http_is_token(method, ml) || tl == 0)
        return APR_EINVAL;
    for (i = 0; i < tl; i++)
        if (!HTTP_IS_CLASS(target[i], HTTP_CC_VALUE) || HTTP_IS_WS(target[i]))
            return APR_EINVAL;
    if (!writer_reserve(w, ml + tl + 11))
        return w->status;
    writer_put(w, method, ml);
    writer_put(w, " ", 1);
    writer_put(w, target, tl);
    writer_put(w, " HTTP/1.1\r\n", 11);
    w->buf[w->len] = '\0';
    return APR_SUCCESS;
}

apr_status_t apx_http_writer_field(apx_http_writer *w, const char *name,
                                   size_t name_len, const char *value,
                                   size_t value_len)
{
    if (!apx_http_is_token(name, name_len)
        || !apx_http_is_field_value(value, value_len))
        return APR_EINVAL;
    if (!writer_reserve(w, name_len + value_len + 4))
        return w->status;
    writer_put(w, name, name_len);
    writer_put(w, ": ", 2);
    writer_put(w, value, value_len);
    writer_put(w, "\r\n", 2);
    w->buf[w->len] = '\0';
    return APR_SUCCESS;
}

apr_status_t apx_http_writer_end(apx_http_writer *w)
{
    if (!writer_reserve(w, 2))
        return w->status;
    writer_put(w, "\r\n", 2);
    w->buf[w->len] = '\0';
    return APR_SUCCESS;
}

/* ------------------------------------------------------------------------
 * Hop-by-hop
 */
void apx_http_conn_tokens_init(apx_http_conn_tokens *t)
{
    t->n = 0;
}

apr_status_t apx_http_conn_tokens_add(apx_http_conn_tokens *t,
                                      const char *value, size_t len)
{
    const char *pos = value, *el;
    size_t elen;

    while (apx_http_list_next(&pos, value + len, &el, &elen)) {
        if (!apx_http_is_token(el, elen))
            return APR_EINVAL;
        if (t->n >= APX_HTTP_MAX_CONN_TOKENS)
            return APR_ENOSPC;
        t->tok[t->n].p = el;
        t->tok[t->n].len = elen;
        t->n++;
    }
    return APR_SUCCESS;
}

int apx_http_conn_tokens_has(const apx_http_conn_tokens *t,
                             const char *name, size_t len)
{
    unsigned k;

    for (k = 0; k < t->n; k++)
        if (apx_http_token_eq(t->tok[k].p, t->tok[k].len, name, len))
            return 1;
    return 0;
}

int apx_http_is_hop_by_hop(const char *name, size_t len,
                           const apx_http_conn_tokens *conn)
{
    static const char *const fixed[] = {
        "connection", "keep-alive", "te", "trailer", "transfer-encoding",
        "upgrade"
    };
    size_t k;

    for (k = 0; k < sizeof(fixed) / sizeof(fixed[0]); k++)
        if (apx_http_token_eqs(name, len, fixed[k]))
            return 1;
    if (len > 6 && apx_http_token_eq(name, 6, "proxy-", 6))
        return 1;
    return conn ? apx_http_conn_tokens_has(conn, name, len) : 0;
}
