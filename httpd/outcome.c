/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* outcome.c — how a proxied request's coroutine ends: its outcome turned
 * into what httpd needs (the handler's return value, the note for the log,
 * the connection closed when the response was cut short or a body is left
 * unread), the figures, and the last-chance release of the coroutine when
 * r->pool goes first.
 *
 * Threads: the thread that owns the request (the MPM thread that ran the
 * handler, or the module worker that resumed it).
 */
#include "httpd.h"
#include "http_protocol.h"
#include "apr_strings.h"

#include "child.h"
#include "outcome.h"
#include "request.h"

APLOG_USE_MODULE(asyncproxy);

/* r->pool cleanup: last-chance release of the coroutine (and, through its
 * defers, the backend connection) when the request pool goes without the
 * normal path having run — e.g. the MPM closed an aborted connection. */
static apr_status_t req_cleanup(void *data)
{
    apx_req *rq = data;
    apx_child *ch = apx_ch;

    if (rq->coro) {
        apx_coro_destroy(rq->coro);
        rq->coro = NULL;
    }
    if (ch) {
        if (rq->counted)
            apr_atomic_dec32(&ch->n.parked_reqs);
        apr_atomic_dec32(&ch->n.in_flight);
    }
    rq->counted = 0;
    return APR_SUCCESS;
}

/* An unread request body is left in the connection: httpd would read it to
 * its end (ap_finalize_request_protocol()), with blocking reads, to keep the
 * connection; closing it instead never waits for the client. */
static void close_if_body_left(apx_req *rq)
{
    if (rq->c->keepalive != AP_CONN_CLOSE && apx_request_body_left(rq))
        rq->c->keepalive = AP_CONN_CLOSE;
}

static void count_outcome(apx_req *rq)
{
    apx_counters *n = &apx_ch->n;

    switch (rq->outcome) {
    case APX_OUT_DONE:
    case APX_OUT_TUNNEL:
        apr_atomic_inc32(&n->done_total);
        break;
    case APX_OUT_ERROR:
        /* Client-side errors (400, 408, 413, httpd's own answers) are the
         * client's figures, not the backends'. */
        if (rq->status == HTTP_GATEWAY_TIME_OUT)
            apr_atomic_inc32(&n->gateway_timeout);
        else if (rq->status == HTTP_SERVICE_UNAVAILABLE)
            apr_atomic_inc32(&n->unavailable);
        else if (rq->status == HTTP_BAD_GATEWAY)
            apr_atomic_inc32(&n->bad_gateway);
        else
            apr_atomic_inc32(&n->client_errors);
        break;
    default:
        apr_atomic_inc32(&n->aborted);
        break;
    }
}

int apx_outcome_end(apx_req *rq)
{
    request_rec *r = rq->r;

    apr_pool_cleanup_run(r->pool, rq, req_cleanup);
    count_outcome(rq);
    close_if_body_left(rq);
    if (rq->note)
        apr_table_setn(r->notes, "asyncproxy", rq->note);
    switch (rq->outcome) {
    case APX_OUT_DONE:
        return OK;
    case APX_OUT_ERROR:
        if (rq->status == HTTP_SERVICE_UNAVAILABLE)
            apr_table_setn(r->err_headers_out, "Retry-After",
                           apr_itoa(r->pool, (int)apx_gconf.retry_after));
        return rq->status;
    default:
        /* Never let the filters finish a response that was cut short: an
         * aborted connection makes the core output filter drop the rest
         * (no last-chunk, no Content-Length completed). */
        r->connection->aborted = 1;
        r->connection->keepalive = AP_CONN_CLOSE;
        return OK;
    }
}

void apx_outcome_track(apx_req *rq)
{
    apx_child *ch = apx_ch;

    apr_atomic_inc32(&ch->n.requests_total);
    apr_atomic_inc32(&ch->n.in_flight);
    apr_pool_cleanup_register(rq->r->pool, rq, req_cleanup,
                              apr_pool_cleanup_null);
    if (!rq->async)
        apr_atomic_inc32(&ch->n.sync_total);
}
