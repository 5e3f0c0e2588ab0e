/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* request_cached.c — the order of steps for a request in a cached scope:
 * the request path asks the cache layer (cache.h) before the exchange
 * (hit, stale, wait, or fetch with the cache's request fields), on the
 * response head (store, pass, revalidated, stale-on-error), for each read
 * of a body it stores, and after; it runs every exchange itself — the
 * revalidation's conditional fetch, and the background refresh after a
 * stale-while-revalidate response — and sends what the cache serves.
 *
 * Threads: inside the request's coroutine, on the thread that owns the
 * request.
 */
#include <stdlib.h>

#include "httpd.h"
#include "http_config.h"
#include "http_log.h"
#include "http_protocol.h"
#include "apr_buckets.h"

#include "exchange.h"
#include "cache.h"

APLOG_USE_MODULE(asyncproxy);

/* What the body sinks below return beyond STEP_OK. */
enum { SINK_DONE = 10, SINK_TOO_BIG };

static const char *view_field(void *baton, const char *name, int list)
{
    return list ? apx_ex_resp_list(baton, name)
                : apx_ex_resp_field(baton, name);
}

static void view_each(void *baton, void (*fn)(void *fb, const char *name,
                                              const char *value), void *fb)
{
    apx_ex_each_field(baton, fn, fb);
}

/* The cache's view of the response head in px->resp. */
static void resp_view(apx_exchange *px, apx_hcache_resp *v)
{
    v->status = px->resp.status;
    v->reason = px->resp.reason;
    v->reason_len = px->resp.reason_len;
    v->content_length = px->resp.content_length;
    v->nfields = px->resp.nfields;
    v->baton = px;
    v->field = view_field;
    v->each = view_each;
    v->via = apx_ex_via(px);
}

/* Sends what the cache chose for this request, paced by the client. */
static int serve(apx_exchange *px, const char *label)
{
    int s, rc;

    apx_ex_unapply_head(px);
    px->head_applied = 1;
    if (!apx_hcache_serve_head(px->hc, label))
        return apx_ex_pass_out(px, 1);
    for (;;) {
        s = apx_hcache_serve_body(px->hc, px->bb);
        if (s < 0)
            return apx_ex_backend_failed(px, HTTP_INTERNAL_SERVER_ERROR,
                                         "cache-inflate");
        if (s == APX_HCACHE_LAST)
            return apx_ex_pass_out(px, 1);
        if ((rc = apx_ex_pass_out(px, 0)) != STEP_OK)
            return rc;
    }
}

/* ------------------------------------------------------------------ */
/* streamed fills                                                       */

/* Sends a streamed fill from this request's cursor, paced by its client:
 * a request that waited on the fetch, or the fetcher once its backend is
 * done. Waits for the next bytes parked (woken by the fetcher). */
static int stream_out(apx_exchange *px)
{
    apx_hcache *hc = px->hc;
    unsigned ev;
    int s, rc;

    for (;;) {
        s = apx_hcache_stream_body(hc, px->bb);
        if (s == APX_HCACHE_WAIT) {
            ev = apx_hcache_stream_wait(hc, apr_time_now() + px->timeout);
            if (apx_ex_wait_interrupted(px, ev))
                return STEP_FAIL;
            /* the fetcher reads with the same timeout: it failed first */
            if (!ev || (ev & APX_EV_TIMEOUT))
                return apx_ex_backend_failed(px, HTTP_GATEWAY_TIME_OUT,
                                             "cache-fill-timeout");
            continue;
        }
        /* the fetch failed: cut, never a short body that looks whole */
        if (s < 0)
            return apx_ex_backend_failed(px, HTTP_BAD_GATEWAY,
                                         "cache-fill-failed");
        if (s == APX_HCACHE_LAST)
            return apx_ex_pass_out(px, 1);
        if ((rc = apx_ex_pass_out(px, 0)) != STEP_OK)
            return rc;
    }
}

/* A request that waited on another's fetch reads its fill. */
static int serve_stream(apx_exchange *px, const char *label)
{
    int rc;

    apx_ex_unapply_head(px);
    px->head_applied = 1;
    if (!apx_hcache_serve_head(px->hc, label))
        rc = apx_ex_pass_out(px, 1);
    else
        rc = stream_out(px);
    apx_hcache_stream_end(px->hc);
    return rc;
}

/* The fetcher's own client, between backend reads: what it takes now,
 * without waiting for it. */
static int own_push(apx_exchange *px)
{
    apr_status_t rv;
    int s, p;

    for (;;) {
        p = apx_ex_output_pending(px);
        if (p)
            return p < 0 ? STEP_FAIL : STEP_OK;
        s = apx_hcache_stream_body(px->hc, px->bb);
        if (APR_BRIGADE_EMPTY(px->bb))
            return STEP_OK;
        px->response_started = 1;
        rv = ap_pass_brigade(px->r->output_filters, px->bb);
        apr_brigade_cleanup(px->bb);
        if (rv != APR_SUCCESS || px->c->aborted)
            return apx_ex_client_gone(px);
        if (s != APX_HCACHE_MORE)
            return apx_ex_output_pending(px) < 0 ? STEP_FAIL : STEP_OK;
    }
}

/* The fetcher's own client, at its pace: everything the fill has. */
static int own_catch_up(apx_exchange *px)
{
    int s, rc;

    for (;;) {
        s = apx_hcache_stream_body(px->hc, px->bb);
        if (s < 0 || APR_BRIGADE_EMPTY(px->bb))
            return STEP_OK;
        if ((rc = apx_ex_pass_out(px, 0)) != STEP_OK)
            return rc;
    }
}

/* A storable response, streamed: the fetcher reads the backend into the
 * fill (its readers woken at each read) and gives its own client what it
 * takes between reads, so a slow client holds back neither the backend
 * nor the other readers; once the body is whole (and stored), the rest
 * goes at the client's pace. A fill that stopped storing is read no
 * further ahead than its slowest reader allows, and relayed plainly once
 * nobody else reads it. */
static int fill_stream(apx_exchange *px, const apx_hcache_resp *v)
{
    apx_hcache *hc = px->hc;
    apx_req *rq = px->rq;
    int detached = rq->detached, body, done, rc, gone = 0, storing;
    int relay_rest = 0;
    /* a gzip client is served the stored gzip copy, made from the whole
     * body: it waits for it, as before streaming */
    int gzwait = apx_hcache_stream_wants_gzip(hc, NULL);
    unsigned n, ev;

    apx_ex_unapply_head(px);
    px->head_applied = 1;
    body = gzwait ? 0 : apx_hcache_serve_head(hc, "MISS");
    done = apx_ex_relay_init(px);
    /* the fill may outlive this client (others read it): its leaving is
     * seen when writing to it, not in the backend waits */
    rq->detached = 1;
    for (;;) {
        if (!done && px->roff < px->rlen) {
            done = apx_ex_take_body(px);
            if (done == STEP_FAIL)
                goto failed;
        }
        if (done)
            apx_ex_finish_backend(px, apx_ex_is_clean(px));
        storing = apx_hcache_stream_append(hc, px->bb, done, v);
        if (!APR_BRIGADE_EMPTY(px->bb))
            break;                  /* nobody else reads: relayed as is */
        if (!gone && body && own_push(px) != STEP_OK)
            gone = 1;
        if (done)
            break;
        if (!storing) {
            if (gzwait) {
                /* no gzip copy will be made: the body as it comes */
                gzwait = 0;
                body = apx_hcache_serve_head(hc, "MISS");
            }
            if (!gone && body && own_catch_up(px) != STEP_OK)
                gone = 1;
            if (apx_hcache_stream_leave_if_alone(hc)) {
                relay_rest = 1;
                break;
            }
            ev = apx_hcache_stream_throttle(hc, apr_time_now() + px->timeout);
            if (ev & APX_EV_SHUTDOWN) {
                apx_ex_wait_interrupted(px, ev);
                goto failed;
            }
        }
        rc = apx_ex_recv(px, 0, "reading the response body");
        if (rc == STEP_FAIL)
            goto failed;
        if (rc == RECV_EOF && px->framing == APX_HTTP_BODY_CLOSE) {
            done = 1;
            continue;
        }
        if (rc != RECV_DATA) {
            n = apx_hcache_stream_fail(hc);
            ap_log_rerror(APLOG_MARK, APLOG_ERR,
                          rc == RECV_ERROR ? APR_FROM_OS_ERROR(px->recv_errno)
                                           : 0, px->r,
                          APXLOGNO(00182) "backend %s closed the connection "
                          "before the end of the response body for %s; "
                          "nothing stored, %u other requests reading it cut",
                          px->be->hostport, px->url, n);
            apx_ex_backend_failed(px, HTTP_BAD_GATEWAY, "backend-truncated");
            goto out;
        }
    }
    rq->detached = detached;
    if (!APR_BRIGADE_EMPTY(px->bb)) {
        /* the fill is ours alone and we sent all of it: the rest of this
         * read, then a plain relay */
        apr_bucket_brigade *rest = apr_brigade_split(px->bb,
                                                     APR_BRIGADE_FIRST(px->bb));

        if (gzwait) {
            /* it stopped storing on this very read: no gzip copy */
            gzwait = 0;
            body = apx_hcache_serve_head(hc, "MISS");
        }
        if (!gone && body)
            gone = own_catch_up(px) != STEP_OK;
        apx_hcache_stream_leave_if_alone(hc);
        APR_BRIGADE_CONCAT(px->bb, rest);
        if (gone || !body) {
            apr_brigade_cleanup(px->bb);
            apx_hcache_stream_end(hc);
            if (gone)
                return STEP_FAIL;
            return done ? apx_ex_pass_out(px, 1) : apx_ex_relay(px, 0);
        }
        rc = apx_ex_pass_out(px, done);
        if (rc == STEP_OK && !done)
            rc = apx_ex_relay(px, 0);
        apx_hcache_stream_end(hc);
        return rc;
    }
    if (gone) {
        apx_hcache_stream_end(hc);
        return STEP_FAIL;
    }
    if (relay_rest)
        return apx_ex_relay(px, 0);
    if (gzwait) {
        if (apx_hcache_stream_serve_built(hc)) {
            apx_hcache_stream_end(hc);
            return serve(px, "MISS");
        }
        body = apx_hcache_serve_head(hc, "MISS");
    }
    rc = body ? stream_out(px) : apx_ex_pass_out(px, 1);
    apx_hcache_stream_end(hc);
    return rc;

failed:
    n = apx_hcache_stream_fail(hc);
    if (n)
        ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, px->r, APXLOGNO(00183)
                      "fetch of %s for the cache failed (%s): nothing "
                      "stored, %u other requests reading it cut", px->url,
                      rq->note ? rq->note : "?", n);
out:
    rq->detached = detached;
    apx_hcache_stream_end(hc);
    return STEP_FAIL;
}

/* The backend failed and the cache holds a stale copy it may serve. */
static int serve_stale(apx_exchange *px)
{
    apx_req *rq = px->rq;

    rq->outcome = APX_OUT_RUNNING;
    rq->status = 0;
    rq->note = NULL;
    apx_ex_finish_backend(px, 0);
    return serve(px, "STALE");
}

static int capture_sink(apx_exchange *px, void *baton, int last)
{
    int *ended = baton;
    int s;

    *ended = last;
    s = apx_hcache_capture(px->hc, px->bb, last);
    if (s == APX_HCACHE_TOO_BIG)
        return SINK_TOO_BIG;
    return s == APX_HCACHE_LAST ? SINK_DONE : STEP_OK;
}

/* A 304 has no body; this ends the exchange (and pools the connection). */
static int discard_sink(apx_exchange *px, void *baton, int last)
{
    apr_brigade_cleanup(px->bb);
    return last ? SINK_DONE : STEP_OK;
}

/* The request head (with the cache's conditionals when it revalidates),
 * then the exchange. */
static int cached_exchange(apx_exchange *px)
{
    int cond = apx_hcache_conditionals(px->hc, 1);
    int rc = apx_ex_build_head(px);

    if (cond)
        apx_hcache_conditionals(px->hc, 0);
    if (rc == STEP_OK)
        rc = apx_ex_roundtrip(px);
    return rc;
}

/* A fetch for the store (or not, as the cache said), and the answer. */
static int fetch(apx_exchange *px)
{
    apx_hcache *hc = px->hc;
    apx_hcache_resp v;
    apr_time_t req_time;
    int rc;

again:
    req_time = apr_time_now();
    rc = cached_exchange(px);
    if (rc != STEP_OK) {
        if (apx_hcache_failed(hc, px->rq->outcome == APX_OUT_ERROR
                                  ? px->rq->status : 0)
            == APX_HCACHE_STALE_ON_ERROR)
            return serve_stale(px);
        return rc;
    }
    resp_view(px, &v);
    switch (apx_hcache_on_head(hc, &v, req_time)) {
    case APX_HCACHE_NOT_MODIFIED:
        rc = apx_ex_check_head(px);
        if (rc == STEP_OK
            && apx_ex_body(px, apx_ex_relay_init(px), discard_sink, NULL)
               != SINK_DONE)
            rc = STEP_FAIL;
        if (rc != STEP_OK) {
            apx_hcache_abandon(hc);
            return STEP_FAIL;
        }
        if (!apx_hcache_revalidated(hc, &v, req_time))
            goto again;     /* not ours to update: the whole response */
        return serve(px, "REVALIDATED");
    case APX_HCACHE_STALE_ON_ERROR:
        return serve_stale(px);
    case APX_HCACHE_PASS:
        rc = apx_ex_apply_head(px);
        if (rc == STEP_OK)
            rc = apx_ex_relay(px, apx_ex_relay_init(px));
        return rc;
    default:
        break;
    }

    /* storable: streamed to this client, the requests waiting on it and
     * the store at once */
    rc = apx_ex_apply_head(px);
    if (rc != STEP_OK) {
        apx_hcache_abandon(hc);
        return rc;
    }
    if (apx_hcache_stream_begin(hc, &v))
        return fill_stream(px, &v);
    /* not stored (over the budget): a plain relay */
    return apx_ex_relay(px, apx_ex_relay_init(px));
}

/* After a stale response went out whole: a new copy for the store.
 * Nothing of it reaches this client, whose leaving no longer matters; the
 * request's outcome stays. The connection's next request waits for it
 * (bounded by the backend timeouts), as with nginx's background update. */
static void refresh(apx_exchange *px)
{
    apx_hcache *hc = px->hc;
    apx_req *rq = px->rq;
    int outcome = rq->outcome, status = rq->status;
    const char *note = rq->note;
    apr_time_t req_time = apr_time_now();
    apx_hcache_resp v;
    int rc, ended = 0;

    /* the client may leave now: it has its response */
    rq->detached = 1;
    rc = cached_exchange(px);
    if (rc == STEP_OK)
        rc = apx_ex_check_head(px);
    if (rc == STEP_OK) {
        resp_view(px, &v);
        switch (apx_hcache_on_head(hc, &v, req_time)) {
        case APX_HCACHE_NOT_MODIFIED:
            /* a 304 naming another representation updates nothing: the
             * next request after the window fetches the whole */
            if (apx_ex_body(px, apx_ex_relay_init(px), discard_sink, NULL)
                == SINK_DONE)
                apx_hcache_revalidated(hc, &v, req_time);
            break;
        case APX_HCACHE_STORE:
            if (apx_ex_body(px, apx_ex_relay_init(px), capture_sink, &ended)
                == SINK_DONE)
                apx_hcache_store(hc, &v);
            break;
        default:
            break;
        }
    }
    apx_ex_finish_backend(px, 0);
    apx_hcache_refresh_end(hc);
    rq->outcome = outcome;
    rq->status = status;
    rq->note = note;
}

/* An unsafe method through a cached scope: the plain proxy path, plus
 * the invalidation as soon as the answer's head is known (a client that
 * follows its Location already misses the old copy). */
static int run_unsafe(apx_exchange *px)
{
    apx_hcache_resp v;
    int rc;

    rc = apx_ex_build_head(px);
    if (rc == STEP_OK)
        rc = apx_ex_roundtrip(px);
    if (rc != STEP_OK)
        return rc;
    if (px->resp.status >= 200 && px->resp.status < 400) {
        resp_view(px, &v);
        apx_hcache_invalidate(px->hc, &v);
    }
    rc = apx_ex_apply_head(px);
    if (rc == STEP_OK)
        rc = apx_ex_relay(px, apx_ex_relay_init(px));
    return rc;
}

int apx_ex_run_cached(apx_exchange *px)
{
    apx_hcache *hc = px->hc;
    unsigned ev = 0;
    int rc;

    switch (apx_hcache_lookup(hc, &ev)) {
    case APX_HCACHE_UNSAFE:
        return run_unsafe(px);
    case APX_HCACHE_GONE:
        apx_ex_wait_interrupted(px, ev);
        return STEP_FAIL;
    case APX_HCACHE_ONLY_IF_CACHED:
        px->rq->outcome = APX_OUT_ERROR;
        px->rq->status = HTTP_GATEWAY_TIME_OUT;
        px->rq->note = "cache-only-if-cached";
        return STEP_FAIL;
    case APX_HCACHE_HIT:
        return serve(px, "HIT");
    case APX_HCACHE_STREAM:
        return serve_stream(px, "HIT");
    case APX_HCACHE_STALE:
        rc = serve(px, "STALE");
        if (rc == STEP_OK && apx_hcache_refresh_begin(hc)) {
            px->rq->outcome = APX_OUT_DONE;
            rc = apx_ex_drain_output(px);
            if (rc == STEP_OK)
                refresh(px);
        }
        else {
            apx_hcache_refresh_end(hc);
        }
        return rc;
    default:
        return fetch(px);
    }
}
