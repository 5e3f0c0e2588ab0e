/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* response_body.c — the backend's response body relayed to the client:
 * read by read, paced by the client (nothing passed while the core output
 * filter still holds some), streams (no length) flushed read by read
 * behind the NOFLUSH connection filter, chunked trailers checked.
 *
 * Threads: inside the request's coroutine, on the thread that owns the
 * request; the NOFLUSH filter runs in whichever thread writes to the
 * connection.
 * Invariant: at most one receive buffer of body is in our hands.
 */

#include "httpd.h"
#include "http_config.h"
#include "http_core.h"
#include "http_log.h"
#include "http_protocol.h"
#include "http_request.h"
#include "util_filter.h"
#include "apr_lib.h"
#include "apr_strings.h"

#include "exchange.h"

APLOG_USE_MODULE(asyncproxy);
extern module AP_MODULE_DECLARE_DATA asyncproxy_module;

/* Writes what the core output filter holds without blocking; while some
 * is left, waits for the client to take it. */
int apx_ex_drain_output(apx_exchange *px)
{
    conn_rec *c = px->c;
    unsigned ev;

    /* An HTTP/2 stream has no socket to wait on; h2 paces it. */
    if (px->rq->client_fd < 0)
        return STEP_OK;
    while (c->data_in_output_filters) {
        if (apx_core_flush(c) != APR_SUCCESS)
            return apx_ex_client_gone(px);
        if (!c->data_in_output_filters)
            break;
        ev = apx_wait(px->rq, px->rq->client_fd, APX_EV_OUT,
                      apr_time_now() + px->client_timeout);
        if (ev & APX_EV_SHUTDOWN) {
            apx_ex_wait_interrupted(px, ev);
            return STEP_FAIL;
        }
        if (ev & APX_EV_TIMEOUT) {
            px->rq->outcome = APX_OUT_ABORT;
            px->rq->note = "client-timeout";
            return STEP_FAIL;
        }
        /* hung up without being writable: it will never read the rest */
        if (!(ev & APX_EV_OUT) && (ev & (APX_EV_HUP | APX_EV_ERR)))
            return apx_ex_client_gone(px);
    }
    return STEP_OK;
}

/* Writes what the core output filter holds, without waiting: 1 when some
 * is still held (the client is slow), 0 when nothing is, STEP_FAIL when
 * the client is gone. (A streamed cache fill serves its own client this
 * way between backend reads.) */
int apx_ex_output_pending(apx_exchange *px)
{
    conn_rec *c = px->c;

    if (px->rq->client_fd < 0 || !c->data_in_output_filters)
        return 0;
    if (apx_core_flush(c) != APR_SUCCESS)
        return apx_ex_client_gone(px);
    return c->data_in_output_filters ? 1 : 0;
}

/* Hands px->bb (plus EOS when last) to the output filters, then lets the
 * client take it before more is read from the backend. */
int apx_ex_pass_out(apx_exchange *px, int last)
{
    conn_rec *c = px->c;
    apr_status_t rv;

    if (last)
        APR_BRIGADE_INSERT_TAIL(px->bb, apr_bucket_eos_create(c->bucket_alloc));
    else if (APR_BRIGADE_EMPTY(px->bb))
        return STEP_OK;
    px->response_started = 1;
    rv = ap_pass_brigade(px->r->output_filters, px->bb);
    apr_brigade_cleanup(px->bb);
    if (rv != APR_SUCCESS || c->aborted)
        return apx_ex_client_gone(px);
    return last ? STEP_OK : apx_ex_drain_output(px);
}

static void add_transient(apx_exchange *px, const char *data, apr_size_t len)
{
    APR_BRIGADE_INSERT_TAIL(px->bb,
                            apr_bucket_transient_create(data, len,
                                                        px->c->bucket_alloc));
}

/* Moves the body bytes of rbuf into px->bb. Returns 1 when the body is
 * complete, 0 when more is expected, STEP_FAIL on a chunked error. */
int apx_ex_take_body(apx_exchange *px)
{
    apr_size_t avail = px->rlen - px->roff;
    const char *data;
    size_t used, dlen;
    apr_status_t rv;

    switch (px->framing) {
    case APX_HTTP_BODY_LENGTH:
        if ((int64_t)avail > px->remaining)
            avail = (apr_size_t)px->remaining;
        if (avail)
            add_transient(px, px->rbuf + px->roff, avail);
        px->roff += avail;
        px->remaining -= (int64_t)avail;
        return px->remaining == 0;
    case APX_HTTP_BODY_CHUNKED:
        while (px->roff < px->rlen) {
            rv = apx_http_chunked_feed(&px->chunked, px->rbuf + px->roff,
                                       px->rlen - px->roff, &used, &data,
                                       &dlen);
            px->roff += used;
            if (dlen)
                add_transient(px, data, dlen);
            if (rv == APR_SUCCESS)
                return 1;
            if (rv != APR_INCOMPLETE) {
                apr_brigade_cleanup(px->bb);
                ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, px->r,
                              APXLOGNO(00108) "bad chunked body from "
                              "backend %s for %s after %" APR_UINT64_T_FMT
                              " bytes: %s", px->be->hostport, px->url,
                              (apr_uint64_t)px->chunked.body_bytes,
                              px->chunked.errstr ? px->chunked.errstr : "?");
                return apx_ex_backend_failed(px, HTTP_BAD_GATEWAY, "bad-response");
            }
        }
        return 0;
    default:    /* until close */
        if (avail)
            add_transient(px, px->rbuf + px->roff, avail);
        px->roff = px->rlen;
        return 0;
    }
}

/* The body ended where its framing said: the connection may be reused if
 * the backend allows it and nothing else came (and the request went out
 * whole). */
int apx_ex_is_clean(const apx_exchange *px)
{
    return px->framing != APX_HTTP_BODY_CLOSE
           && apx_http_resp_keepalive(&px->resp)
           && px->roff == px->rlen
           && px->body_done && !px->send_errno;
}

int apx_ex_relay_init(apx_exchange *px)
{
    if (px->framing == APX_HTTP_BODY_CHUNKED) {
        char *tbuf = apr_palloc(px->r->pool, TRAILER_MAX);
        apx_http_field *tf = apr_palloc(px->r->pool,
                                        TRAILER_FIELDS * sizeof(*tf));

        apx_http_chunked_init(&px->chunked, tbuf, TRAILER_MAX, tf,
                              TRAILER_FIELDS);
    }
    return px->framing == APX_HTTP_BODY_NONE
           || (px->framing == APX_HTTP_BODY_LENGTH && px->remaining == 0);
}

int apx_ex_body(apx_exchange *px, int done, apx_ex_sink_fn sink, void *baton)
{
    int rc;

    for (;;) {
        if (!done && px->roff < px->rlen) {
            done = apx_ex_take_body(px);
            if (done == STEP_FAIL)
                return STEP_FAIL;
        }
        if (done) {
            if (px->roff != px->rlen)
                ap_log_rerror(APLOG_MARK, APLOG_DEBUG, 0, px->r,
                              APXLOGNO(00113) "backend %s sent %"
                              APR_SIZE_T_FMT " bytes after the response to "
                              "%s; closing that connection",
                              px->be->hostport, px->rlen - px->roff, px->url);
            /* the backend is free before the client has everything */
            apx_ex_finish_backend(px, apx_ex_is_clean(px));
            return sink(px, baton, 1);
        }
        if ((rc = sink(px, baton, 0)) != STEP_OK)
            return rc;
        rc = apx_ex_recv(px, 0, "reading the response body");
        if (rc == STEP_FAIL)
            return STEP_FAIL;
        if (rc == RECV_EOF && px->framing == APX_HTTP_BODY_CLOSE) {
            apx_ex_finish_backend(px, 0);
            return sink(px, baton, 1);
        }
        if (rc != RECV_DATA) {
            ap_log_rerror(APLOG_MARK, APLOG_ERR,
                          rc == RECV_ERROR ? APR_FROM_OS_ERROR(px->recv_errno)
                                           : 0, px->r,
                          APXLOGNO(00107) "backend %s closed the connection "
                          "before the end of the response body for %s",
                          px->be->hostport, px->url);
            return apx_ex_backend_failed(px, HTTP_BAD_GATEWAY,
                                         "backend-truncated");
        }
    }
}

/* ------------------------------------------------------------------ */
/* streams                                                              */

/* A response without a length (SSE, a chunked long poll, a body up to the
 * backend's close) is relayed as an open-ended stream: each backend read is
 * passed with a FLUSH bucket, so that mod_deflate, mod_brotli,
 * mod_substitute and mod_ssl emit what they hold at once instead of waiting
 * for more. Below them the core output filter would turn that FLUSH into a
 * blocking write — up to Timeout on a module worker, for a client that does
 * not read — so the NOFLUSH filter, between mod_ssl and the core, drops it
 * while a stream of this module runs; apx_ex_drain_output() then writes
 * without blocking and parks on the client when it cannot (the core's own
 * non-blocking path: what it cannot write it sets aside). Other handlers on
 * the same connection (the lane) see their FLUSH buckets pass untouched. */
#define NOFLUSH_FILTER "ASYNCPROXY_NOFLUSH"

static ap_filter_rec_t *noflush_handle;

static apr_status_t noflush_filter(ap_filter_t *f, apr_bucket_brigade *bb)
{
    const int *on = f->ctx;
    apr_bucket *e, *next;

    if (*on) {
        for (e = APR_BRIGADE_FIRST(bb); e != APR_BRIGADE_SENTINEL(bb);
             e = next) {
            next = APR_BUCKET_NEXT(e);
            if (APR_BUCKET_IS_FLUSH(e))
                apr_bucket_delete(e);
        }
    }
    return ap_pass_brigade(f->next, bb);
}

void apx_stream_register_filter(apr_pool_t *p)
{
    /* just above the core (AP_FTYPE_NETWORK), below mod_ssl
     * (AP_FTYPE_CONNECTION + 5) */
    noflush_handle = ap_register_output_filter(NOFLUSH_FILTER, noflush_filter,
                                               NULL, AP_FTYPE_NETWORK - 1);
}

/* The connection's NOFLUSH switch; the filter is added once per
 * connection (a filter added to the connection's chain cannot be taken out
 * of a request's chain that already points at it). */
int *apx_ex_noflush_switch(apx_exchange *px)
{
    conn_rec *c = px->c;
    ap_filter_t *f;
    int *on;

    for (f = c->output_filters; f; f = f->next)
        if (f->frec == noflush_handle)
            return f->ctx;
    on = apr_pcalloc(c->pool, sizeof(*on));
    /* with r, so that r's chain, which already ends in the connection's
     * filters, is linked through the new one */
    if (!ap_add_output_filter_handle(noflush_handle, on, px->r, c))
        return NULL;
    return on;
}

static void stream_end(void *arg)
{
    apx_exchange *px = arg;
    apx_child *ch = apx_ch;

    if (px->noflush)
        *px->noflush = 0;
    if (ch)
        apr_atomic_dec32(&ch->n.streams_now);
}

/* A body without a length: relayed read by read, each read flushed, and
 * the backend's silence bounded by streamtimeout= instead of timeout=
 * (which bounded the head). */
static void stream_begin(apx_exchange *px)
{
    px->stream_defer = apx_coro_defer(px->rq->coro, stream_end, px);
    if (!px->stream_defer)
        return;     /* out of memory: relayed as any body */
    px->stream = 1;
    px->timeout = px->stream_timeout;
    apr_atomic_inc32(&apx_ch->n.streams_now);
    apr_atomic_inc32(&apx_ch->n.streams_total);
    /* an HTTP/2 stream has no socket of its own and no core filter below:
     * its FLUSH goes to h2, which never blocks on it */
    if (px->rq->client_fd >= 0) {
        px->noflush = apx_ex_noflush_switch(px);
        if (px->noflush)
            *px->noflush = 1;
    }
}

static int relay_sink(apx_exchange *px, void *baton, int last)
{
    apr_off_t len = 0;

    if (px->stream && !APR_BRIGADE_EMPTY(px->bb)) {
        apr_brigade_length(px->bb, 0, &len);
        apr_atomic_add64(&apx_ch->n.stream_bytes, (apr_uint64_t)len);
        if (!last)
            APR_BRIGADE_INSERT_TAIL(px->bb,
                                    apr_bucket_flush_create(px->c->bucket_alloc));
    }
    return apx_ex_pass_out(px, last);
}

int apx_ex_relay(apx_exchange *px, int done)
{
    if (!done && !px->stream && (px->framing == APX_HTTP_BODY_CHUNKED
                                 || px->framing == APX_HTTP_BODY_CLOSE))
        stream_begin(px);
    return apx_ex_body(px, done, relay_sink, NULL);
}
