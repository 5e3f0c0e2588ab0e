/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* tunnel.c — Upgrade tunnels (WebSocket): the client's
 * Upgrade is forwarded when the mapping allows the protocol (upgrade=); a
 * 101 from the backend is relayed and the connection becomes a two-way
 * byte tunnel, run by the request's coroutine.
 *
 * Threads: everything runs inside the request's coroutine, on the thread
 * that owns the request (a module worker once parked).
 * Invariants:
 *   - Nothing a peer does holds a worker: every read and write is
 *     non-blocking; when nothing can move, the coroutine waits on both
 *     sockets at once (apx_wait2: one park record, two fds) with the
 *     tunnel's idle deadline.
 *   - One bounded buffer per direction: client to backend, cbuf
 *     (TUNNEL_BUF); backend to client, one backend read (TUNNEL_BUF) handed
 *     to the output filters, and no next read while the core still holds
 *     some of it (c->data_in_output_filters). A side that does not read
 *     stops the other side's reads, so its sender is throttled by TCP.
 *   - Buffers are held only while bytes move: cbuf while it has bytes the
 *     backend has not taken, the read buffer for one pump; an idle tunnel
 *     holds none (the exchange's response buffers go once the 101 is
 *     out). Thousands of quiet tunnels share the few that are in use.
 *   - The client side goes through the connection's filters (mod_ssl):
 *     reads from c->input_filters with APR_NONBLOCK_READ, writes to
 *     c->output_filters with a FLUSH that the NOFLUSH filter keeps from
 *     the core (a blocking write there would hold the worker).
 */
#include <errno.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "httpd.h"
#include "http_config.h"
#include "http_core.h"
#include "http_log.h"
#include "http_protocol.h"
#include "http_request.h"
#include "util_filter.h"
#include "apr_optional.h"
#include "apr_strings.h"

#include "exchange.h"
#include "head.h"
#include "memory.h"

APLOG_USE_MODULE(asyncproxy);

/* One non-blocking read's worth, each way: large enough for a 1 MiB
 * message in ~32 rounds; taken from malloc only while bytes move. */
#define TUNNEL_BUF (32 * 1024)
/* Bytes moved before the tunnel goes back through the poller even though
 * both sides are still ready: two peers that are fast enough would
 * otherwise keep the worker for as long as they talk. 1 MiB is ~1 ms of
 * loopback copying, long enough that the extra park costs nothing. */
#define TUNNEL_TURN (1024 * 1024)

typedef struct tunnel {
    apx_exchange *px;
    conn_rec *c;
    int cfd;                        /* the client's socket (for waits and
                                     * the half-close only) */
    char *cbuf;                     /* client -> backend, NULL when empty */
    apr_size_t clen, coff;
    apr_bucket_brigade *in;
    unsigned client_eof:1;          /* the client sent all it will */
    unsigned backend_eof:1;
    unsigned backend_shut:1;        /* we sent the backend our FIN */
    unsigned client_shut:1;
    unsigned direct:1;              /* client bytes read from its socket */
    unsigned may_direct:1;          /* its input filters allow that */
    unsigned b_ready:1;             /* a read of that side may find bytes: */
    unsigned c_ready:1;             /* set by the poller's report, cleared
                                     * by a read that drained the socket
                                     * (short or EAGAIN); saves the reads
                                     * that would only say EAGAIN */
    unsigned backend_fin:1;         /* a side we wanted nothing from */
    unsigned client_fin:1;          /* reported its FIN: not watched for
                                     * its end again */
    apr_uint64_t bytes_in, bytes_out;
    apr_uint64_t turn_start;        /* bytes_in + bytes_out at the last
                                     * wait */
} tunnel;

/* The protocol name of an Upgrade element ("websocket", "foo/2" -> "foo"),
 * compared case-insensitively. */
static int proto_eq(const char *a, apr_size_t alen, const char *b,
                    apr_size_t blen)
{
    const char *s;

    if ((s = memchr(a, '/', alen)))
        alen = (apr_size_t)(s - a);
    if ((s = memchr(b, '/', blen)))
        blen = (apr_size_t)(s - b);
    return alen == blen && !strncasecmp(a, b, alen);
}

static int mapping_allows(const char *list, const char *proto,
                          apr_size_t len)
{
    const char *p = list, *e;

    if (!strcmp(list, "*"))
        return 1;
    while (*p) {
        e = strchr(p, ',');
        if (!e)
            e = p + strlen(p);
        if (proto_eq(p, (apr_size_t)(e - p), proto, len))
            return 1;
        p = *e ? e + 1 : e;
    }
    return 0;
}

const char *apx_ex_upgrade_wanted(apx_exchange *px)
{
    request_rec *r = px->r;
    const char *up = apr_table_get(r->headers_in, "Upgrade");
    const char *conn = apr_table_get(r->headers_in, "Connection");
    const char *p = up;

    if (!px->map->upgrade || !up || !conn
        || !ap_find_token(r->pool, conn, "upgrade"))
        return NULL;
    /* HTTP/1.1 only (RFC 9110 7.8); not an h2 stream (extended CONNECT is
     * out of scope); and no request body, whose end the tunnel could not
     * tell from the upgraded protocol's first bytes */
    if (r->proto_num < HTTP_VERSION(1, 1) || px->rq->client_fd < 0
        || px->c->master || !px->body_done)
        return NULL;
    /* the first protocol of the client's list that the mapping allows */
    while (*p) {
        const char *s, *e;

        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        s = p;
        while (*p && *p != ',' && *p != ' ' && *p != '\t')
            p++;
        e = p;
        if (e > s && mapping_allows(px->map->upgrade, s,
                                    (apr_size_t)(e - s)))
            return apr_pstrmemdup(r->pool, s, (apr_size_t)(e - s));
        while (*p && *p != ',')
            p++;
    }
    return NULL;
}

int apx_ex_upgrade_accepted(apx_exchange *px)
{
    const char *up = apx_ex_resp_field(px, "Upgrade");
    apr_size_t n;

    if (!up)
        return 0;
    while (*up == ' ' || *up == '\t')
        up++;
    n = strcspn(up, ", \t");
    return proto_eq(up, n, px->upgrade, strlen(px->upgrade));
}

/* ------------------------------------------------------------------ */
/* the two sides                                                        */

static void tunnel_end(void *arg)
{
    apx_child *ch = apx_ch;

    if (ch)
        apr_atomic_dec32(&ch->n.tunnels_now);
}

static apr_status_t to_client(tunnel *t, const char *data, apr_size_t len)
{
    apr_bucket_brigade *bb = t->px->bb;
    apr_bucket_alloc_t *ba = t->c->bucket_alloc;
    apr_status_t rv;

    APR_BRIGADE_INSERT_TAIL(bb, apr_bucket_transient_create(data, len, ba));
    APR_BRIGADE_INSERT_TAIL(bb, apr_bucket_flush_create(ba));
    rv = ap_pass_brigade(t->c->output_filters, bb);
    apr_brigade_cleanup(bb);
    if (rv != APR_SUCCESS || t->c->aborted)
        return APR_ECONNABORTED;
    t->bytes_out += len;
    apr_atomic_add64(&apx_ch->n.tunnel_bytes_out, len);
    /* what the core set aside goes out now if the socket takes it */
    return apx_core_flush(t->c);
}

/* Every input filter of c passes the client's bytes on unchanged (head.h).
 * With mod_reqtimeout in the chain the tunnel reads through the filters. */
static int filters_allow_direct(conn_rec *c)
{
    return apx_filters_pass_through(c->input_filters, 0);
}

/* From the first EAGAIN of the filter chain on, the client's bytes are
 * read with recv() into cbuf: no bucket, no allocator block per read. The
 * connection's allocator has nothing left to hand out per message then, so
 * it keeps no free blocks: what the request and the 101 used and gave back
 * goes back to the system now, and so does whatever is freed later. An
 * idle tunnel then holds its pools' live blocks only (memory.c); the
 * MPM's limit (MaxMemFree) is put back when the tunnel ends. */
static void go_direct(tunnel *t)
{
    t->direct = 1;
    apx_mem_trim(t->c, 1);
}

static void drop_cbuf(tunnel *t)
{
    free(t->cbuf);
    t->cbuf = NULL;
    t->clen = t->coff = 0;
}

/* The coroutine's defer: what the tunnel holds when it ends. */
static void tunnel_free(void *arg)
{
    drop_cbuf(arg);
}

/* One non-blocking read of the client into cbuf (empty). Returns 1 when
 * bytes came, 0 when none (or EOF: client_eof set), -1 on an error. */
static int from_client(tunnel *t)
{
    apr_size_t len = TUNNEL_BUF;
    apr_bucket *e;
    apr_status_t rv;
    ssize_t n;

    if (t->direct) {
        if (!t->cbuf && !(t->cbuf = malloc(TUNNEL_BUF)))
            return -1;
        n = apx_client_recv(t->c, t->cfd, t->cbuf, TUNNEL_BUF);
        if (n > 0) {
            t->clen = (apr_size_t)n;
            t->coff = 0;
            if (n < TUNNEL_BUF)
                t->c_ready = 0;
            return 1;
        }
        drop_cbuf(t);
        if (n == 0) {
            t->client_eof = 1;
            return 0;
        }
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return -1;
        t->c_ready = 0;
        return 0;
    }
    apr_brigade_cleanup(t->in);
    rv = ap_get_brigade(t->c->input_filters, t->in, AP_MODE_READBYTES,
                        APR_NONBLOCK_READ, TUNNEL_BUF);
    /* nothing to read (the core answers a non-blocking read that finds
     * nothing with an empty brigade): every filter is empty now, so from
     * here on straight from the socket when nothing in between changes
     * the bytes */
    if (APR_STATUS_IS_EAGAIN(rv)
        || (rv == APR_SUCCESS && APR_BRIGADE_EMPTY(t->in))) {
        if (t->may_direct)
            go_direct(t);
        return 0;
    }
    if (rv == APR_EOF) {
        t->client_eof = 1;
        return 0;
    }
    if (rv != APR_SUCCESS)
        return -1;
    for (e = APR_BRIGADE_FIRST(t->in); e != APR_BRIGADE_SENTINEL(t->in);
         e = APR_BUCKET_NEXT(e))
        if (APR_BUCKET_IS_EOS(e))
            t->client_eof = 1;
    if (!t->cbuf && !(t->cbuf = malloc(TUNNEL_BUF)))
        return -1;
    if (apr_brigade_flatten(t->in, t->cbuf, &len) != APR_SUCCESS)
        return -1;
    apr_brigade_cleanup(t->in);
    t->clen = len;
    t->coff = 0;
    if (!len)
        drop_cbuf(t);
    return len > 0;
}

/* Moves what can move without waiting. Returns 1 when something moved, 0
 * when nothing could, -1 when a side failed (the tunnel ends). */
static int pump(tunnel *t)
{
    apx_exchange *px = t->px;
    char *rb = NULL;
    int moved = 0, rc;
    ssize_t n;

    /* backend -> client, only while the client took what it was given */
    if (t->c->data_in_output_filters && apx_core_flush(t->c) != APR_SUCCESS)
        return -1;
    while (t->b_ready && !t->backend_eof && !t->c->data_in_output_filters) {
        if (!rb && !(rb = malloc(TUNNEL_BUF)))
            return -1;
        n = recv(px->fd, rb, TUNNEL_BUF, MSG_DONTWAIT);
        if (n > 0) {
            /* the core sets aside what it keeps: rb is free again */
            if (to_client(t, rb, (apr_size_t)n) != APR_SUCCESS) {
                free(rb);
                return -1;
            }
            moved = 1;
            if (n < TUNNEL_BUF)
                t->b_ready = 0;
        }
        else if (n == 0) {
            t->backend_eof = 1;
        }
        else if (errno == EINTR) {
            continue;
        }
        else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            t->b_ready = 0;
            break;
        }
        else {
            free(rb);
            return -1;
        }
    }
    free(rb);
    /* the backend is done sending: once the client has it all, pass the
     * half-close on (the client may still send) */
    if (t->backend_eof && !t->client_shut && !t->c->data_in_output_filters) {
        shutdown(t->cfd, SHUT_WR);
        t->client_shut = 1;
        moved = 1;
    }

    /* client -> backend */
    for (;;) {
        if (t->coff < t->clen) {
            n = send(px->fd, t->cbuf + t->coff, t->clen - t->coff,
                     MSG_DONTWAIT | MSG_NOSIGNAL);
            if (n > 0) {
                t->coff += (apr_size_t)n;
                t->bytes_in += (apr_uint64_t)n;
                /* an answer may follow at once (one read to see) */
                t->b_ready = 1;
                apr_atomic_add64(&apx_ch->n.tunnel_bytes_in,
                                 (apr_uint64_t)n);
                moved = 1;
                if (t->coff == t->clen)
                    drop_cbuf(t);
                continue;
            }
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                break;
            return -1;
        }
        if (t->client_eof || (t->direct && !t->c_ready))
            break;
        rc = from_client(t);
        if (rc < 0)
            return -1;
        if (rc == 0)
            break;
        moved = 1;
    }
    if (t->client_eof && !t->clen && !t->backend_shut) {
        shutdown(px->fd, SHUT_WR);
        t->backend_shut = 1;
        moved = 1;
    }
    return moved;
}

/* Sends the backend's 101 on (its fields minus hop-by-hop, plus ours). */
static int send_101(apx_exchange *px)
{
    request_rec *r = px->r;
    const char *up = apx_ex_resp_field(px, "Upgrade");
    apr_table_t *out = apr_table_make(r->pool, 8);
    const apx_http_resp *h = &px->resp;
    apr_table_t *saved = r->headers_out;
    int i;

    if (apx_ex_check_head(px) != STEP_OK)
        return STEP_FAIL;
    for (i = 0; i < (int)h->nfields; i++) {
        const apx_http_field *f = &h->fields[i];

        if (apx_http_is_hop_by_hop(f->name, f->name_len, &px->conn))
            continue;
        apr_table_addn(out, apr_pstrmemdup(r->pool, f->name, f->name_len),
                       apr_pstrmemdup(r->pool, f->value, f->value_len));
    }
    apr_table_setn(out, "Upgrade", up);
    apr_table_setn(out, "Connection", "Upgrade");
    r->headers_out = out;
    r->status = HTTP_SWITCHING_PROTOCOLS;
    r->status_line = "101 Switching Protocols";
    ap_send_interim_response(r, 1);
    r->headers_out = saved;
    px->response_started = 1;
    if (px->c->aborted)
        return apx_ex_client_gone(px);
    return apx_ex_drain_output(px);
}

int apx_ex_tunnel(apx_exchange *px)
{
    apx_req *rq = px->rq;
    request_rec *r = px->r;
    conn_rec *c = px->c;
    tunnel t;
    apx_defer *bufd;
    apr_time_t deadline;
    int *noflush, rc;

    memset(&t, 0, sizeof(t));
    t.px = px;
    t.c = c;
    t.cfd = rq->client_fd;
    /* the connection never serves another request */
    c->keepalive = AP_CONN_CLOSE;
    noflush = apx_ex_noflush_switch(px);
    if (!noflush) {
        apx_ex_finish_backend(px, 0);
        return apx_ex_backend_failed(px, HTTP_INTERNAL_SERVER_ERROR,
                                     "no-memory");
    }
    *noflush = 1;
    if (!(bufd = apx_coro_defer(rq->coro, tunnel_free, &t)))
        return apx_ex_backend_failed(px, HTTP_SERVICE_UNAVAILABLE,
                                     "no-memory");
    t.in = apr_brigade_create(r->pool, c->bucket_alloc);
    /* mod_reqtimeout's body limits are for request bodies, not for an
     * upgraded protocol that may be quiet for minutes */
    ap_remove_input_filter_byhandle(c->input_filters, "reqtimeout");
    t.may_direct = filters_allow_direct(c);
    t.b_ready = t.c_ready = 1;

    if (send_101(px) != STEP_OK) {
        apx_coro_defer_fire(rq->coro, bufd);
        return STEP_FAIL;
    }
    apr_atomic_inc32(&apx_ch->n.tunnels_now);
    apr_atomic_inc32(&apx_ch->n.tunnels_total);
    if (!apx_coro_defer(rq->coro, tunnel_end, NULL))
        tunnel_end(NULL);   /* it ran already: counted out */
    rq->note = "tunnel";

    rc = STEP_OK;
    /* what the backend sent right after its 101 */
    if (px->roff < px->rlen
        && to_client(&t, px->rbuf + px->roff, px->rlen - px->roff)
           != APR_SUCCESS)
        rc = STEP_FAIL;
    px->roff = px->rlen = 0;
    /* the response head and its buffers have served */
    if (px->bufs_defer) {
        apx_coro_defer_fire(rq->coro, px->bufs_defer);
        px->bufs_defer = NULL;
        px->rbuf = NULL;
    }
    deadline = apr_time_now() + px->tunnel_timeout;
    while (rc == STEP_OK) {
        unsigned want_b, want_c, got, got1, gb, gc;
        int watch_b, watch_c;
        int moved = pump(&t);

        if (moved < 0) {
            rq->note = "tunnel-closed";
            break;
        }
        if (t.client_eof && t.backend_eof && t.client_shut
            && t.backend_shut)
            break;
        if (moved) {
            deadline = apr_time_now() + px->tunnel_timeout;
            if (t.bytes_in + t.bytes_out - t.turn_start < TUNNEL_TURN)
                continue;
            /* turn over: the wait below returns at once through the
             * poller's queue if a side is still ready */
        }
        t.turn_start = t.bytes_in + t.bytes_out;
        want_b = (t.coff < t.clen ? APX_EV_OUT : 0)
                 | (!t.backend_eof && !c->data_in_output_filters
                    ? APX_EV_IN : 0);
        want_c = (c->data_in_output_filters ? APX_EV_OUT : 0)
                 | (!t.client_eof && !t.clen ? APX_EV_IN : 0);
        if (!want_b && !want_c)
            break;
        /* A side we want nothing from (its reads wait for the other
         * side to take bytes) is still watched for its end: a peer that
         * resets while the other one stalls ends the tunnel at once, not
         * at the idle timeout. Its FIN is reported once, then that side
         * waits unwatched until we want bytes from it (a half-close is
         * not an end: what it sent still goes on). */
        watch_b = want_b || (!t.backend_eof && !t.backend_fin);
        watch_c = want_c || (!t.client_eof && !t.client_fin);
        if (watch_b) {
            got = apx_wait2(rq, px->fd, want_b, watch_c ? t.cfd : -1,
                            want_c, deadline, &got1);
            gb = got;
            gc = got1;
        }
        else {
            got = apx_wait2(rq, t.cfd, want_c, -1, 0, deadline, &got1);
            gb = got & ~(unsigned)(APX_EV_IN | APX_EV_OUT | APX_EV_HUP
                                   | APX_EV_ERR);
            gc = got;
        }
        if (gb & (APX_EV_IN | APX_EV_HUP | APX_EV_ERR))
            t.b_ready = 1;
        if (gc & (APX_EV_IN | APX_EV_HUP | APX_EV_ERR))
            t.c_ready = 1;
        if (!want_b && (gb & APX_EV_HUP))
            t.backend_fin = 1;
        if (!want_c && (gc & APX_EV_HUP))
            t.client_fin = 1;
        if (got & APX_EV_SHUTDOWN) {
            rq->note = "shutdown";
            break;
        }
        if (got & APX_EV_TIMEOUT) {
            ap_log_rerror(APLOG_MARK, APLOG_DEBUG, 0, r, APXLOGNO(00180)
                          "tunnel to %s idle for %" APR_TIME_T_FMT " ms: "
                          "closed", px->be->hostport,
                          apr_time_as_msec(px->tunnel_timeout));
            rq->note = "tunnel-timeout";
            break;
        }
        if ((gb | gc) & APX_EV_ERR) {
            rq->note = "tunnel-closed";
            break;
        }
    }
    *noflush = 0;
    if (t.direct)
        apx_mem_release(c);
    apx_coro_defer_fire(rq->coro, bufd);
    apx_ex_finish_backend(px, 0);
    if (rc != STEP_OK)
        return apx_ex_client_gone(px);
    /* for the access log, written now that the tunnel closed: the status
     * that was sent, and what went to the client (%b) */
    r->status = HTTP_SWITCHING_PROTOCOLS;
    r->bytes_sent = (apr_off_t)t.bytes_out;
    r->sent_bodyct = 1;     /* else mod_log_config writes "-" */
    apr_table_setn(r->notes, "asyncproxy-tunnel-in",
                   apr_psprintf(r->pool, "%" APR_UINT64_T_FMT, t.bytes_in));
    apr_table_setn(r->notes, "asyncproxy-tunnel-out",
                   apr_psprintf(r->pool, "%" APR_UINT64_T_FMT, t.bytes_out));
    rq->outcome = APX_OUT_TUNNEL;
    return STEP_OK;
}
