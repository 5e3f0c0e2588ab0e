/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* apx_http.h — the engine's HTTP/1.1 codec for talking to backends
 * (RFC 9110 / RFC 9112): an incremental response-head parser, the body
 * framing decision, an incremental zero-copy chunked decoder, a request-head
 * writer and the hop-by-hop / list / token helpers the proxy needs.
 *
 * Strict with backends: anything ambiguous is an error (the proxy answers
 * 502), so nothing from a malformed response reaches the client and a
 * response can never desynchronise a pooled backend connection.
 *
 * Calling threads: any thread. A parser, decoder or writer is one plain
 * struct used by one thread at a time (one per response / request); nothing
 * here locks, allocates behind the caller's back or keeps global state. The
 * character tables are const.
 *
 * Decisions (each one a place where the RFCs leave a choice):
 *  - Line endings of the response head: CRLF, or a bare LF (RFC 9112 §2.2
 *    allows recipients to accept it). A bare CR anywhere is an error.
 *  - Line endings inside a chunked body (size lines, after data, trailers):
 *    CRLF only. Lenient chunk parsing is a known request/response smuggling
 *    vector and no sane server sends LF there.
 *  - Status line: "HTTP/1.<digit> SP 3DIGIT SP reason" with a status in
 *    100..599. An empty reason is accepted with or without its SP
 *    ("HTTP/1.1 200\r\n" is unambiguous). The reason may hold HTAB, SP,
 *    VCHAR and obs-text only.
 *  - obs-fold (a field line starting with SP/HTAB) is rejected, as is
 *    whitespace between a field name and its colon (RFC 9112 §5.1).
 *  - Transfer-Encoding: we only decode "chunked", and we cannot re-frame a
 *    body in another transfer coding, so a Transfer-Encoding whose only
 *    coding is not exactly "chunked" (e.g. "gzip, chunked", "identity",
 *    "chunked, chunked", or a TE without chunked last, which RFC 9112 §6.3
 *    would read until close) is an error. So is Transfer-Encoding in an
 *    HTTP/1.0 response (RFC 9112 §6.1: faulty framing) and together with
 *    Content-Length (RFC 9112 §6.1: smuggling).
 *  - Content-Length: a comma list of 1*DIGIT (at most 2^62); equal repeats,
 *    in one field ("5, 5") or several, collapse; different values, an empty
 *    element or a non-digit are errors.
 *  - 1xx and 204 responses must not announce a body: Transfer-Encoding, or
 *    a Content-Length other than 0, is an error (RFC 9110 §8.6 forbids CL
 *    there; "0" is tolerated since common servers send it and it is
 *    harmless). 304 may carry the representation's Content-Length or a
 *    Transfer-Encoding (RFC 9110 §8.6, RFC 9112 §6.1): legal, validated,
 *    and ignored — a 304 never has a body.
 *  - 101 Switching Protocols is reported like any 1xx; the proxy never sends
 *    Upgrade (it is hop-by-hop), so the caller treats a 101 as an error.
 *  - CONNECT is never forwarded, so the framing helper has no tunnel case.
 */
#ifndef APX_HTTP_H
#define APX_HTTP_H

#include <errno.h>
#include <apr_pools.h>
#include "apx_common.h"

/* Returned for any protocol violation; the object's error class and reason
 * say which. apr_strerror() prints it as "Protocol error". */
#define APX_HTTP_EPROTO APR_FROM_OS_ERROR(EPROTO)

/* Largest Content-Length and chunk size accepted: far beyond any real body
 * and small enough that sums of two never overflow a signed 64-bit value. */
#define APX_HTTP_BODY_MAX ((uint64_t)1 << 62)

/* Most bytes of a chunk line between the size and its CRLF (BWS and
 * extensions, which are ignored): 4 KiB is far more than any server sends
 * and bounds the work per chunk. */
#define APX_HTTP_CHUNK_EXT_MAX 4096
/* Most hex digits in a chunk size, leading zeros included. */
#define APX_HTTP_CHUNK_SIZE_DIGITS_MAX 32

/* Error classes: one per kind of violation, so tests and logs can tell
 * them apart. Each comes with a short fixed reason string. */
typedef enum {
    APX_HTTP_E_NONE = 0,
    APX_HTTP_E_STATUS_LINE,     /* malformed status line */
    APX_HTTP_E_BARE_CR,         /* CR not followed by LF */
    APX_HTTP_E_NO_COLON,        /* field line without ':' */
    APX_HTTP_E_SPACE_BEFORE_COLON,
    APX_HTTP_E_NAME,            /* empty field name or non-token char */
    APX_HTTP_E_VALUE,           /* CTL (other than HTAB) or DEL in a value */
    APX_HTTP_E_OBS_FOLD,        /* line folding */
    APX_HTTP_E_HEAD_TOO_LONG,
    APX_HTTP_E_TOO_MANY_FIELDS,
    APX_HTTP_E_CL_INVALID,      /* Content-Length not 1*DIGIT, or too big */
    APX_HTTP_E_CL_CONFLICT,     /* differing Content-Length values */
    APX_HTTP_E_CL_AND_TE,
    APX_HTTP_E_TE,              /* Transfer-Encoding other than "chunked" */
    APX_HTTP_E_BODY_NOT_ALLOWED,/* 1xx/204 announcing a body */
    APX_HTTP_E_CHUNK_SIZE,      /* empty, non-hex, too long, > 2^62 */
    APX_HTTP_E_CHUNK_EXT,       /* bad char in / too long extension */
    APX_HTTP_E_CHUNK_CRLF,      /* CRLF missing after size line or data */
    APX_HTTP_E_TRAILER_TOO_LONG
} apx_http_error;

/* A slice of bytes; never NUL-terminated. */
typedef struct {
    const char *name;
    size_t name_len;
    const char *value;      /* OWS trimmed on both sides; may be empty */
    size_t value_len;
} apx_http_field;

/* ------------------------------------------------------------------------
 * Response-head parser.
 *
 * The parser copies the head, line by line (one memcpy per feed and line,
 * never per byte), into a buffer of head_max bytes that the caller owns, so
 * the caller may read from a non-blocking socket into any buffer of its own
 * and feed whatever arrived, even a byte at a time. It copies exactly the
 * bytes of the head and never looks past the blank line that ends it, so the
 * bytes after it (body, or the next head) stay where they are in the
 * caller's input. Field, reason and value slices point into the parser's
 * buffer and stay valid until apx_http_resp_reset()/init or the buffer dies.
 * A head longer than head_max bytes (counted up to and including the blank
 * line) fails with APX_HTTP_E_HEAD_TOO_LONG; exactly head_max bytes fits.
 */
typedef struct apx_http_resp apx_http_resp;
struct apx_http_resp {
    /* set by init; read-only afterwards */
    char *buf;
    size_t cap;
    apx_http_field *fields;
    unsigned max_fields;

    /* results, valid once feed returned APR_SUCCESS */
    int status;                 /* 100..599 */
    int minor;                  /* HTTP/1.<minor> */
    const char *reason;
    size_t reason_len;
    unsigned nfields;           /* fields[0..nfields) in wire order */
    size_t head_len;            /* bytes of the head, blank line included */
    int64_t content_length;     /* -1 when absent */
    unsigned chunked:1;         /* Transfer-Encoding: chunked */
    unsigned has_te:1;          /* any Transfer-Encoding (304 keeps it) */
    unsigned conn_close:1;      /* Connection lists "close" */
    unsigned conn_keep_alive:1; /* Connection lists "keep-alive" */

    /* on error: the class and a short fixed reason string */
    apx_http_error error;
    const char *errstr;

    /* private */
    size_t len;                 /* bytes stored in buf */
    size_t line_start;          /* start of the line being received */
    int state;
};

/* Prepares p to parse one head into buf[0..head_max) with room for
 * max_fields fields. Both arrays are the caller's and must outlive p's use. */
void apx_http_resp_init(apx_http_resp *p, char *buf, size_t head_max,
                        apx_http_field *fields, unsigned max_fields);
/* Same, with the buffer and the field array allocated from pool. */
apr_status_t apx_http_resp_create(apx_http_resp **pp, apr_pool_t *pool,
                                  size_t head_max, unsigned max_fields);
/* Forgets the current head (slices become invalid) to parse the next one
 * on the same buffers: after a 1xx interim response. */
void apx_http_resp_reset(apx_http_resp *p);

/* Feeds the next len bytes. *consumed is set to how many of them belong to
 * the head. Returns
 *   APR_SUCCESS      the head is complete; the bytes after *consumed are
 *                    the body (or, after a 1xx, the next head); further
 *                    feeds consume nothing and return APR_SUCCESS again;
 *   APR_INCOMPLETE   more is needed; all len bytes were consumed;
 *   APX_HTTP_EPROTO  p->error / p->errstr say why; sticky; *consumed is
 *                    then unspecified (the connection is not reusable).
 * len may be 0. */
apr_status_t apx_http_resp_feed(apx_http_resp *p, const char *data,
                                size_t len, size_t *consumed);

/* 1 for a complete 1xx head: reset and parse the next head. */
int apx_http_resp_is_interim(const apx_http_resp *p);

/* The first field named name (case-insensitive) at index >= *index; sets
 * *index to its index. NULL when none. Pass *index = 0 to start and
 * *index + 1 to continue (repeated fields, e.g. Set-Cookie). */
const apx_http_field *apx_http_resp_find(const apx_http_resp *p,
                                         const char *name, unsigned *index);

/* How the body of a complete head is delimited (RFC 9112 §6.3). */
typedef enum {
    APX_HTTP_BODY_NONE = 0,     /* HEAD request, 1xx, 204, 304 */
    APX_HTTP_BODY_LENGTH,       /* *length bytes (may be 0) */
    APX_HTTP_BODY_CHUNKED,
    APX_HTTP_BODY_CLOSE         /* until the backend closes */
} apx_http_framing;

/* method is the request's method (case-sensitive, as on the wire); *length
 * is set for APX_HTTP_BODY_LENGTH and may be NULL. */
apx_http_framing apx_http_resp_framing(const apx_http_resp *p,
                                       const char *method, int64_t *length);

/* 1 when the backend connection may be reused after this response as far
 * as the head tells (HTTP/1.1 without "close", or HTTP/1.0 with
 * "keep-alive"). The caller also requires framing != APX_HTTP_BODY_CLOSE
 * and the body fully read. */
int apx_http_resp_keepalive(const apx_http_resp *p);

/* ------------------------------------------------------------------------
 * Chunked decoder (RFC 9112 §7.1). Zero-copy: data slices point into the
 * caller's input. Extensions are checked (no CTL but HTAB) and ignored;
 * trailer fields are copied into the caller's buffer tbuf[0..tmax) and
 * parsed like head fields (at most max_fields of them). With tmax == 0
 * (tbuf may then be NULL) any trailer field is APX_HTTP_E_TRAILER_TOO_LONG.
 */
typedef struct apx_http_chunked apx_http_chunked;
struct apx_http_chunked {
    char *tbuf;
    size_t tmax;
    apx_http_field *fields;
    unsigned max_fields;

    unsigned nfields;           /* trailer fields received */
    uint64_t body_bytes;        /* data bytes delivered so far */
    apx_http_error error;
    const char *errstr;

    /* private */
    uint64_t remaining;         /* size being read / data left in chunk */
    size_t tlen, line_start;
    unsigned digits, ext_len;
    int state;
};

void apx_http_chunked_init(apx_http_chunked *d, char *tbuf, size_t tmax,
                           apx_http_field *fields, unsigned max_fields);

/* Decodes from in[0..len). Sets *consumed to the input bytes used and
 * (*data, *data_len) to a data slice inside in[0..*consumed) (data_len 0
 * when none). Stops right after a data slice, so call again with the rest:
 *
 *     while (off < len) {
 *         rv = apx_http_chunked_feed(d, in + off, len - off, &used,
 *                                    &data, &n);
 *         off += used;
 *         if (n) pass_on(data, n);
 *         if (rv != APR_INCOMPLETE) break;   // done or error
 *     }
 *
 * Returns
 *   APR_SUCCESS      the message ended exactly at in + *consumed (after the
 *                    trailer section's CRLF); later bytes are not body;
 *                    further feeds consume nothing and return APR_SUCCESS;
 *   APR_INCOMPLETE   not finished; when *data_len == 0, all len bytes were
 *                    consumed;
 *   APX_HTTP_EPROTO  d->error / d->errstr say why; sticky; *consumed is
 *                    then unspecified. */
apr_status_t apx_http_chunked_feed(apx_http_chunked *d, const char *in,
                                   size_t len, size_t *consumed,
                                   const char **data, size_t *data_len);

int apx_http_chunked_is_done(const apx_http_chunked *d);

/* ------------------------------------------------------------------------
 * Request-head writer: "METHOD SP target SP HTTP/1.1 CRLF", fields, CRLF.
 * Into a fixed caller buffer (overflow -> APR_ENOSPC, sticky) or a string
 * grown in a pool. The text is always NUL-terminated (the NUL is not
 * counted in len).
 */
typedef struct {
    char *buf;
    size_t len;
    size_t cap;                 /* bytes usable, NUL excluded */
    apr_pool_t *pool;           /* grows from here when set */
    apr_status_t status;        /* first APR_ENOSPC, sticky */
} apx_http_writer;

/* buf must hold at least 1 byte (the NUL); cap is its full size. */
void apx_http_writer_init_buf(apx_http_writer *w, char *buf, size_t cap);
void apx_http_writer_init_pool(apx_http_writer *w, apr_pool_t *pool,
                               size_t initial);
/* Validation failures (method not a token; target empty or holding SP or
 * a CTL; name not a token; value with CTL) write nothing and return
 * APR_EINVAL: the writer stays usable. */
apr_status_t apx_http_writer_request_line(apx_http_writer *w,
                                          const char *method,
                                          const char *target);
apr_status_t apx_http_writer_field(apx_http_writer *w, const char *name,
                                   size_t name_len, const char *value,
                                   size_t value_len);
/* Appends the blank line; returns the sticky status. */
apr_status_t apx_http_writer_end(apx_http_writer *w);

/* ------------------------------------------------------------------------
 * Hop-by-hop headers (RFC 9110 §7.6.1), for requests and responses alike.
 */
#define APX_HTTP_MAX_CONN_TOKENS 32

typedef struct {
    struct {
        const char *p;
        size_t len;
    } tok[APX_HTTP_MAX_CONN_TOKENS];
    unsigned n;
} apx_http_conn_tokens;

void apx_http_conn_tokens_init(apx_http_conn_tokens *t);
/* Adds the tokens of one Connection field value (call once per Connection
 * field); slices point into value. APR_EINVAL when an element is not a
 * token, APR_ENOSPC beyond APX_HTTP_MAX_CONN_TOKENS: the caller cannot
 * strip what it could not record and should refuse the message. */
apr_status_t apx_http_conn_tokens_add(apx_http_conn_tokens *t,
                                      const char *value, size_t len);
int apx_http_conn_tokens_has(const apx_http_conn_tokens *t,
                             const char *name, size_t len);
/* 1 for Connection, Keep-Alive, TE, Trailer, Transfer-Encoding, Upgrade,
 * Proxy-* (Proxy-Connection, Proxy-Authorization...) and any name listed
 * in conn (which may be NULL). */
int apx_http_is_hop_by_hop(const char *name, size_t len,
                           const apx_http_conn_tokens *conn);

/* ------------------------------------------------------------------------
 * Helpers.
 */
/* ASCII case-insensitive equality of two slices. */
int apx_http_token_eq(const char *a, size_t alen, const char *b, size_t blen);
/* Same, against a NUL-terminated string. */
int apx_http_token_eqs(const char *a, size_t alen, const char *s);
/* 1 when s[0..len) is a non-empty token (RFC 9110 §5.6.2). */
int apx_http_is_token(const char *s, size_t len);
/* 1 when v[0..len) is a valid field value: no CTL but HTAB, no DEL, no
 * leading or trailing SP/HTAB. Empty is valid. */
int apx_http_is_field_value(const char *v, size_t len);
/* Comma-list iteration (RFC 9110 §5.6.1): returns 1 and the next element
 * (OWS trimmed, commas inside quoted strings kept) advancing *pos, 0 at
 * end. Empty elements are skipped. */
int apx_http_list_next(const char **pos, const char *end,
                       const char **elem, size_t *elem_len);

/* The reason string of an error class (the same strings as errstr). */
const char *apx_http_strerror(apx_http_error e);

#endif /* APX_HTTP_H */
