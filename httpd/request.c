/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* request.c — the request path (DESIGN.md §4): the code that
 * runs inside each proxied request's coroutine. Which requests are ours is
 * decided in map.c.
 *
 * apx_request_run() is straight-line code: connect or take a pooled backend
 * connection, send the request head and stream the body, read and check the
 * response head, hand it to httpd, stream the body back with flow control,
 * then pool or close the backend connection. Every would-block point goes
 * through apx_wait(), so the same code runs under the sync driver (poll in
 * place) and the async driver (parked in the poller, resumed on a module
 * worker).
 *
 * Threads:
 *   apx_request_run()    the thread that owns the request; after each
 *                      apx_wait() that may be another thread, so nothing
 *                      thread-local is kept across a wait (errno is read
 *                      right after the call that set it).
 * Invariants:
 *   - The backend fd is held in apx_exchange.fd and covered by a coroutine
 *     defer from the moment it exists, so it is closed if the coroutine is
 *     destroyed while parked (client abort, child exit).
 *   - Nothing of a malformed response reaches the client: the head is
 *     applied to r only once it parsed completely.
 *   - A body cut short by the backend aborts the client connection
 *     (APX_OUT_ABORT): never a short body that looks whole.
 *   - At most one receive buffer (RBUF_SIZE) of response body and one read
 *     of request body (BODY_READ_MAX) are in our hands per request; the core
 *     output filter never holds more than one pass and is never made to
 *     block (we pass only when nothing is pending).
 */
#include <stdlib.h>
#include <string.h>

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

/* ------------------------------------------------------------------ */
/* outcomes                                                             */

/* Puts r back as it was before the backend's head was applied, so that
 * ap_die() sends a clean error page. */
void apx_ex_unapply_head(apx_exchange *px)
{
    request_rec *r = px->r;

    if (!px->head_applied)
        return;
    px->head_applied = 0;
    r->status = HTTP_OK;
    r->status_line = NULL;
    r->content_type = NULL;
    r->clength = 0;
    apr_table_clear(r->headers_out);
}

/* The backend failed: an error page while nothing went to the client yet,
 * otherwise an aborted connection. */
int apx_ex_backend_failed(apx_exchange *px, int status, const char *note)
{
    apx_req *rq = px->rq;

    rq->note = note;
    if (px->response_started) {
        rq->outcome = APX_OUT_ABORT;
    }
    else {
        apx_ex_unapply_head(px);
        rq->outcome = APX_OUT_ERROR;
        rq->status = status;
    }
    return STEP_FAIL;
}

int apx_ex_client_gone(apx_exchange *px)
{
    apx_req *rq = px->rq;

    apr_atomic_inc32(&apx_ch->n.client_gone);
    rq->outcome = APX_OUT_ABORT;
    rq->note = "client-abort";
    /* for the access log, as nginx writes it; a response already under
     * way keeps the backend's status */
    if (!px->response_started)
        px->r->status = 499;
    return STEP_FAIL;
}

/* Client hung up, or the child is going away: nothing to answer. */
int apx_ex_wait_interrupted(apx_exchange *px, unsigned ev)
{
    if (ev & APX_EV_CLIENT_GONE) {
        apx_ex_client_gone(px);
        return 1;
    }
    if (ev & APX_EV_SHUTDOWN) {
        px->rq->outcome = APX_OUT_ABORT;
        px->rq->note = "shutdown";
        return 1;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* the request                                                          */

static int method_is_idempotent(const request_rec *r)
{
    switch (r->method_number) {
    case M_GET:         /* HEAD too */
    case M_PUT:
    case M_DELETE:
    case M_OPTIONS:
    case M_TRACE:
        return 1;
    default:
        return 0;
    }
}

/* ------------------------------------------------------------------ */
/* one exchange                                                         */

/* Connect (or reuse), send, read the head; a pooled connection the
 * backend had closed is replaced once (DESIGN.md §4 step 2). Through a
 * balancer, a member is chosen first, and an attempt that failed before
 * anything reached the client may go to another member
 * (apx_ex_member_failed() says when). */
int apx_ex_roundtrip(apx_exchange *px)
{
    int fresh_only = 0, rc;

    if (!px->head_max) {
        apr_size_t head_max;

        head_max = (apr_size_t)px->r->server->limit_req_fieldsize * 2;
        if (head_max < HEAD_MIN)
            head_max = HEAD_MIN;
        if (head_max > HEAD_CAP)
            head_max = HEAD_CAP;
        px->head_max = head_max;
    }

    if (px->bal && px->member < 0 && (rc = apx_ex_member_pick(px))
                                       != STEP_OK)
        return rc;
    for (;;) {
        px->rlen = px->roff = 0;
        px->got_bytes = 0;
        px->send_errno = 0;
        px->attempt_at = apr_time_now();
        rc = apx_ex_open_backend(px, fresh_only);
        if (rc == STEP_OK)
            rc = apx_ex_send_request(px);
        if (rc == STEP_OK)
            rc = apx_ex_read_head(px);
        if (rc != STEP_RETRY) {
            if (!px->bal)
                return rc;
            if (rc == STEP_OK) {
                apx_ex_member_answered(px);
                return rc;
            }
            if (!apx_ex_member_failed(px))
                return rc;
            fresh_only = 0;
            continue;
        }
        apx_ex_finish_backend(px, 0);
        apr_atomic_inc32(&apx_ch->n.backend_retries);
        ap_log_rerror(APLOG_MARK, APLOG_DEBUG, 0, px->r, APXLOGNO(00114)
                      "pooled connection to %s was closed by the backend; "
                      "retrying %s on a new one", px->be->hostport, px->url);
        fresh_only = 1;
    }
}

/* ------------------------------------------------------------------ */
/* the coroutine                                                        */

static int setup(apx_exchange *px)
{
    apx_req *rq = px->rq;
    request_rec *r = px->r;
    const apx_mapping *m = rq->map;
    const apx_srv_conf *sc = rq->sconf;
    const char *te = apr_table_get(r->headers_in, "Transfer-Encoding");
    const char *cl = apr_table_get(r->headers_in, "Content-Length");
    apr_off_t len = 0;

    px->map = m;
    px->be = m->backend;
    px->bal = m->balancer;
    px->member = -1;
    /* a balancer's member, and so its Host, is chosen by the roundtrip;
     * until then the first member's stands in (apx_ex_head_set_host) */
    px->host_hdr = px->bal ? APR_ARRAY_IDX(px->bal->members, 0,
                                           apx_member).host_hdr
                           : m->host_hdr;
    px->fd = -1;
    px->timeout = m->timeout ? m->timeout
                  : sc->timeout ? sc->timeout : r->server->timeout;
    px->connect_timeout = m->connect_timeout ? m->connect_timeout
                          : sc->connect_timeout ? sc->connect_timeout
                          : APX_DEFAULT_CONNECT_TIMEOUT;
    px->client_timeout = r->server->timeout;
    px->tunnel_timeout = m->tunnel_timeout ? m->tunnel_timeout
                         : sc->tunnel_timeout ? sc->tunnel_timeout
                         : APX_DEFAULT_TUNNEL_TIMEOUT;
    px->stream_timeout = m->stream_timeout ? m->stream_timeout
                         : sc->stream_timeout ? sc->stream_timeout
                         : APX_DEFAULT_STREAM_TIMEOUT;
    px->idempotent = method_is_idempotent(r);
    px->target = apx_map_target(r, m);
    if (!px->target) {
        /* translate_name or fixups refused it already when they claimed
         * r; this is a request they did not see */
        rq->outcome = APX_OUT_ERROR;
        rq->status = HTTP_BAD_REQUEST;
        rq->note = "bad-request";
        return STEP_FAIL;
    }
    px->url = apr_pstrcat(r->pool, m->origin, px->target, NULL);
    px->bb = apr_brigade_create(r->pool, px->c->bucket_alloc);

    /* httpd's input filter already refused any coding but chunked and
     * dropped a Content-Length sent along with it */
    if (te) {
        px->body_kind = REQ_BODY_CHUNKED;
    }
    else if (cl) {
        /* The head goes out before httpd's input filter reads (and checks)
         * the body: check the length now, so the backend never sees one
         * that filter would refuse. */
        if (!ap_parse_strict_length(&len, cl)) {
            ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, APXLOGNO(00122)
                          "invalid Content-Length '%s' in the request", cl);
            rq->outcome = APX_OUT_ERROR;
            rq->status = HTTP_BAD_REQUEST;
            rq->note = "bad-request";
            return STEP_FAIL;
        }
        px->body_kind = REQ_BODY_LENGTH;
        px->body_length = len;
    }
    else {
        px->body_done = 1;
    }
    px->body_limit = ap_get_limit_req_body(r);
    if (px->body_limit && len > px->body_limit) {
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, APXLOGNO(00121)
                      "request body larger than LimitRequestBody (%"
                      APR_OFF_T_FMT ")", px->body_limit);
        rq->outcome = APX_OUT_ERROR;
        rq->status = HTTP_REQUEST_ENTITY_TOO_LARGE;
        rq->note = "bad-request-body";
        return STEP_FAIL;
    }

    px->upgrade = apx_ex_upgrade_wanted(px);
    /* an upgraded connection is never cached */
    if (!px->upgrade) {
        apx_hcache_req in;
        const char *xff;

        memset(&in, 0, sizeof(in));
        in.rq = rq;
        in.map = m;
        /* a group's objects are the group's, whichever member served */
        in.hostport = px->bal ? m->origin : px->be->hostport;
        in.target = px->target;
        in.url = px->url;
        apx_ex_forwarded(px, &xff, &in.xfh, &in.xfp);
        in.body_empty = px->body_kind == REQ_BODY_LENGTH
                        && px->body_length == 0;
        in.body_left = !px->body_done;
        px->hc = apx_hcache_create(r, &in);
        if (in.drop_empty_body) {
            /* a GET with Content-Length: 0 goes as one without a body */
            px->body_kind = REQ_BODY_NONE;
            px->body_done = 1;
        }
    }
    return STEP_OK;
}

int apx_request_body_left(const apx_req *rq)
{
    const apx_exchange *px = rq->proxy;

    return px && !px->body_done;
}

intptr_t apx_request_run(apx_coro *coro, void *data)
{
    apx_req *rq = data;
    request_rec *r = rq->r;
    apx_exchange *px = apr_pcalloc(r->pool, sizeof(*px));
    int rc;

    px->rq = rq;
    px->r = r;
    px->c = rq->c;
    px->fd = -1;
    rq->proxy = px;
    px->defer = apx_coro_defer(coro, apx_ex_close_backend_deferred, px);

    rc = setup(px);
    if (rc == STEP_OK && px->hc) {
        rc = apx_ex_run_cached(px);
    }
    else if (rc == STEP_OK) {
        rc = apx_ex_build_head(px);
        if (rc == STEP_OK)
            rc = apx_ex_roundtrip(px);
        if (rc == STEP_OK && px->resp.status == HTTP_SWITCHING_PROTOCOLS) {
            rc = apx_ex_tunnel(px);
        }
        else {
            if (rc == STEP_OK)
                rc = apx_ex_apply_head(px);
            if (rc == STEP_OK)
                rc = apx_ex_relay(px, apx_ex_relay_init(px));
        }
    }
    if (rc == STEP_OK && rq->outcome == APX_OUT_RUNNING)
        rq->outcome = APX_OUT_DONE;
    /* every failure path closes: nothing half-read goes back to the pool */
    apx_ex_finish_backend(px, 0);
    if (px->defer)
        apx_coro_defer_disarm(coro, px->defer);
    if (px->stream_defer)
        apx_coro_defer_fire(coro, px->stream_defer);
    if (px->bufs_defer)
        apx_coro_defer_fire(coro, px->bufs_defer);
    if (px->member_defer)
        apx_coro_defer_fire(coro, px->member_defer);
    return 0;
}
