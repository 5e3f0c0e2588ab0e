/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* exchange.h — the request path's private state: one proxied exchange
 * (apx_exchange) and the steps that request.c orders, one file each:
 * backend.c (the backend connection), request_send.c (request head and
 * body), response_head.c, response_body.c, tunnel.c. Private to the
 * request path.
 *
 * Threads: every function runs inside the request's coroutine, on the
 * thread that currently owns the request.
 */
#ifndef APX_HTTPD_EXCHANGE_H
#define APX_HTTPD_EXCHANGE_H

#include <sys/uio.h>

#include "apr_strings.h"
#include "apx_http.h"
#include "drive.h"
#include "upstream.h"
#include "child.h"
#include "map.h"
#include "request.h"
#include "cache.h"


/* Backend reads: 32 KiB per recv, and so at most 32 KiB per brigade passed
 * to the client, half the core output filter's 64 KiB blocking threshold. */
#define RBUF_SIZE       (32 * 1024)
/* Request body: one non-blocking read of the client at a time. */
#define BODY_READ_MAX   (64 * 1024)
/* Response head: at least 16 KiB, or two LimitRequestFieldSize lines'
 * worth when that is larger, never more than 64 KiB. */
#define HEAD_MIN        (16 * 1024)
#define HEAD_CAP        (64 * 1024)
#define HEAD_FIELDS     100
/* Interim (1xx) responses before the final one: a backend sending more is
 * stuck in a loop. */
#define MAX_INTERIM     16
/* Trailers of a chunked response are checked and dropped (httpd 2.4 cannot
 * send trailers to the client); bounded like a small head. */
#define TRAILER_MAX     4096
#define TRAILER_FIELDS  32
/* A stream goes back through the poller after this many bytes without a
 * wait (see apx_ex_recv()): ~1 ms of copying on loopback. */
#define STREAM_TURN     (1024 * 1024)
/* Slices of request body per sendmsg(). */
#define BODY_IOV        64

/* Results of the steps below. A step that fails has set rq->outcome,
 * rq->status and rq->note. */
enum {
    STEP_OK = 0,
    STEP_FAIL = -1,
    STEP_RETRY = 1      /* pooled connection died first: try a fresh one */
};

enum { REQ_BODY_NONE, REQ_BODY_LENGTH, REQ_BODY_CHUNKED };

typedef struct apx_exchange {
    apx_req *rq;
    request_rec *r;
    conn_rec *c;
    const apx_mapping *map;
    apx_backend *be;
    apx_defer *defer;
    int fd;                         /* backend socket, -1 when none */
    struct ssl_st *tls;             /* its TLS object (https://), or NULL;
                                     * owned with fd */
    int reused;                     /* fd came from the pool */
    int idempotent;
    apr_interval_time_t timeout;    /* backend response head, each I/O */
    apr_interval_time_t connect_timeout;
    apr_interval_time_t client_timeout;
    apr_interval_time_t stream_timeout; /* each body read of a stream */
    apr_interval_time_t tunnel_timeout; /* an upgraded connection idle */
    const char *upgrade;            /* the Upgrade the client asked for and
                                     * the mapping allows, else NULL */
    const char *target;             /* origin-form request target */
    const char *url;                /* for log lines */
    apx_http_writer head;           /* the request head */

    /* request body */
    int body_kind;
    apr_off_t body_length;          /* REQ_BODY_LENGTH */
    apr_off_t body_limit;           /* LimitRequestBody, 0: none */
    apr_off_t body_bytes;
    unsigned body_started:1;        /* a byte of it was read from the client */
    unsigned body_done:1;           /* all of it went to the backend */
    int send_errno;                 /* backend stopped taking the body */
    int recv_errno;                 /* RECV_ERROR's cause */

    /* response */
    apx_http_resp resp;
    apx_http_conn_tokens conn;      /* the backend's Connection tokens */
    apr_size_t head_max;            /* response head buffer size */
    apx_defer *bufs_defer;          /* frees the buffers below (one malloc,
                                     * made on the first readable byte) */
    char *rbuf;                     /* RBUF_SIZE bytes from the backend;
                                     * NULL until then */
    apr_size_t rlen, roff;          /* bytes in rbuf, bytes used */
    unsigned got_bytes:1;           /* a byte came back on this attempt */
    unsigned head_applied:1;        /* r carries the backend's head */
    unsigned response_started:1;    /* something went to the output filters */
    unsigned stream:1;              /* no length: each read goes out at once */
    apr_size_t turn_bytes;          /* read since the last wait */
    int *noflush;                   /* the connection's NOFLUSH switch */
    apx_defer *stream_defer;        /* counts the stream out */
    apx_http_framing framing;
    int64_t remaining;              /* APX_HTTP_BODY_LENGTH */
    apx_http_chunked chunked;
    apr_bucket_brigade *bb;
    apx_hcache *hc;                 /* the response cache's part, or NULL */

    /* a balancer mapping (backend.c): px->be is the member's origin */
    apx_balancer *bal;              /* NULL: a single origin */
    int member;                     /* index holding an in-flight slot of
                                     * the group, -1: none */
    unsigned tries;                 /* members tried for this exchange */
    apr_time_t attempt_at;          /* this attempt began (latency) */
    int member_outcome;             /* APX_BAL_* of the response head */
    apr_interval_time_t member_latency;
    unsigned member_answered:1;     /* the head came: report the outcome
                                     * when the exchange ends */
    apx_defer *member_defer;        /* reports the slot if the coroutine
                                     * dies holding it */
    const char *host_hdr;           /* Host sent when not preserving */
    unsigned host_ours:1;           /* px->head's Host is host_hdr */
    apr_size_t host_at, host_end;   /* where that field is in px->head */
} apx_exchange;

/* What apx_ex_recv() found (or STEP_FAIL: timeout or interrupted wait, the
 * outcome is set). */
enum { RECV_EOF = 0, RECV_DATA = 1, RECV_ERROR = 2 };

int apx_ex_backend_failed(apx_exchange *px, int status, const char *note);
int apx_ex_client_gone(apx_exchange *px);
int apx_ex_wait_interrupted(apx_exchange *px, unsigned ev);
void apx_ex_unapply_head(apx_exchange *px);
void apx_ex_finish_backend(apx_exchange *px, int reusable);
/* Whether the client's peer address is in AsyncProxyTrustedProxies. */
int apx_ex_peer_trusted(const apx_exchange *px);
/* The X-Forwarded-For, -Host and -Proto values the backend is sent (NULL:
 * none): this hop's own (the client's address, the Host the request came
 * with, our scheme), the client's dropped; from a trusted peer, its
 * X-Forwarded-For appended to and its -Host / -Proto passed on. With
 * AsyncProxyAddHeaders Off only a trusted peer's values, unchanged. */
void apx_ex_forwarded(const apx_exchange *px, const char **xff,
                      const char **xfh, const char **xfp);
int apx_ex_build_head(apx_exchange *px);
int apx_ex_recv(apx_exchange *px, apr_time_t deadline, const char *phase);
int apx_ex_roundtrip(apx_exchange *px);
/* Checks the final head's Connection tokens and sets the body framing
 * (apply_head does it too). */
int apx_ex_check_head(apx_exchange *px);
int apx_ex_apply_head(apx_exchange *px);
/* Calls fn for each backend response field forwarded to the client (no
 * hop-by-hop, framing or Via; Location & co. mapped back) in r->pool. */
void apx_ex_each_field(apx_exchange *px,
                       void (*fn)(void *baton, const char *name,
                                  const char *value),
                       void *baton);
/* The first value of a backend response field, or NULL; all values of a
 * list field joined with ", ", or NULL (r->pool). */
const char *apx_ex_resp_field(apx_exchange *px, const char *name);
const char *apx_ex_resp_list(apx_exchange *px, const char *name);
/* The Via value sent to the client (the backend's plus ours). */
const char *apx_ex_via(apx_exchange *px);
int apx_ex_drain_output(apx_exchange *px);
int apx_ex_output_pending(apx_exchange *px);
int apx_ex_pass_out(apx_exchange *px, int last);
int apx_ex_take_body(apx_exchange *px);
int apx_ex_is_clean(const apx_exchange *px);
/* Body: init returns 1 when there is no body left to read. */
int apx_ex_relay_init(apx_exchange *px);
/* Reads the response body to its end, handing what px->bb holds to
 * sink() after each read (last = 1 once the body ended and the backend
 * connection was pooled or closed). Returns what the sink returned when it
 * was not STEP_OK or when last was 1, or STEP_FAIL. */
typedef int (*apx_ex_sink_fn)(apx_exchange *px, void *baton, int last);
int apx_ex_body(apx_exchange *px, int done, apx_ex_sink_fn sink, void *baton);
/* apx_ex_body() into the output filters, paced by the client. */
int apx_ex_relay(apx_exchange *px, int done);

/* The NOFLUSH switch of the connection (request.c): while
 * on, FLUSH buckets stop above the core output filter, which would make
 * them blocking writes. NULL when the filter could not be added. */
int *apx_ex_noflush_switch(apx_exchange *px);

/* "a, b" from an existing list value and one more (p). */
static APR_INLINE const char *apx_list_append(apr_pool_t *p, const char *old,
                                              const char *add)
{
    return old && *old ? apr_pstrcat(p, old, ", ", add, NULL) : add;
}

/* backend.c */
/* A coroutine defer: closes px->fd if the coroutine dies holding it. */
void apx_ex_close_backend_deferred(void *px);
/* A pooled connection if there is a live one (and fresh_only is 0), else a
 * new one. */
int apx_ex_open_backend(apx_exchange *px, int fresh_only);
/* Balancer mappings: a member for the exchange (px->be, px->host_hdr,
 * px->url become its own); STEP_FAIL with 503 when none is eligible. */
int apx_ex_member_pick(apx_exchange *px);
/* The head came: its outcome is kept for when the exchange ends
 * (apx_ex_finish_backend() reports it). */
void apx_ex_member_answered(apx_exchange *px);
/* The attempt failed (outcome set, the backend connection closed or not):
 * reports it to the group; returns 1 when the request goes to another
 * member (the failure undone, px on that member), 0 when the failure
 * stands. */
int apx_ex_member_failed(apx_exchange *px);
/* request_send.c: puts px->host_hdr into the built head's Host field
 * (a member was chosen after the head was built). */
void apx_ex_head_set_host(apx_exchange *px);
/* Writes iov[0..n) to the backend (the array is consumed). Returns STEP_OK,
 * STEP_FAIL (timeout or interrupted wait; outcome set), or an errno value
 * > 0 when the backend stopped taking data (the caller decides). */
int apx_ex_send_iov(apx_exchange *px, struct iovec *iov, int n);
/* request_send.c: the head in px->head, then the body. */
int apx_ex_send_request(apx_exchange *px);
/* response_head.c: the final response head into px->resp. */
int apx_ex_read_head(apx_exchange *px);

/* tunnel.c */
/* 1 when the backend's 101 answers px->upgrade. */
int apx_ex_upgrade_accepted(apx_exchange *px);
/* The backend said 101: relays it, then moves bytes both ways until
 * either side is done (outcome APX_OUT_TUNNEL) or fails. */
int apx_ex_tunnel(apx_exchange *px);
/* setup(): the protocol to forward in Upgrade, or NULL. */
const char *apx_ex_upgrade_wanted(apx_exchange *px);

/* request_cached.c: the exchange of a request in a cached scope (px->hc
 * set), from the cache's lookup to what it serves. */
int apx_ex_run_cached(apx_exchange *px);

#endif /* APX_HTTPD_EXCHANGE_H */
