/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* handler.c — our handler: a request that a mapping proxies gets its
 * coroutine here, runs its first slice on this thread and is parked (the
 * handler returns SUSPENDED; conn.c hands it to the poller) or ends here;
 * and, on connections the module owns, requests for other handlers are
 * sent to the lane (DESIGN.md §3).
 *
 * Threads: an MPM thread (a connection's first request), or a module
 * worker (later requests on an adopted connection), never both at once.
 */
#include "httpd.h"
#include "http_config.h"
#include "http_protocol.h"
#include "http_request.h"
#include "http_core.h"
#include "ap_mpm.h"
#include "apr_strings.h"

#include "child.h"
#include "conn.h"
#include "handler.h"
#include "map.h"
#include "outcome.h"
#include "request.h"

APLOG_USE_MODULE(asyncproxy);
extern module AP_MODULE_DECLARE_DATA asyncproxy_module;

/* Whether this request may be parked (DESIGN.md §3, step 1); otherwise
 * the sync driver runs it on this thread. */
static int can_park(request_rec *r)
{
    conn_rec *c = r->connection;

    return apx_ch && apx_ch->engine && c->cs && !c->master
           && !c->clogging_input_filters && !r->main && !r->prev
           && !apr_atomic_read32(&apx_ch->stopping);
}

int apx_handler_run(request_rec *r)
{
    conn_rec *c = r->connection;
    apx_child *ch = apx_ch;
    const apx_mapping *map;
    const apx_srv_conf *sc;
    apx_req *rq;
    apx_conn *ac = NULL;
    apr_status_t rv;

    if (!r->handler || strcmp(r->handler, "asyncproxy"))
        return DECLINED;
    map = apx_map_match(r);
    if (!map)
        return DECLINED;
    if (!ch) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, APXLOGNO(00012)
                      "asyncproxy is not initialised in this child");
        return HTTP_INTERNAL_SERVER_ERROR;
    }
    sc = ap_get_module_config(r->server->module_config, &asyncproxy_module);

    rq = apr_pcalloc(r->pool, sizeof(*rq));
    rq->r = r;
    rq->c = c;
    rq->map = map;
    rq->sconf = sc;
    rq->start = apr_time_now();
    rq->client_fd = -1;
    rq->async = can_park(r);
    if (!c->master) {
        apr_socket_t *csd = ap_get_conn_socket(c);
        apr_os_sock_t fd;

        if (csd && apr_os_sock_get(&fd, csd) == APR_SUCCESS)
            rq->client_fd = fd;
    }
    if (rq->async
        && apr_atomic_read32(&ch->n.parked_reqs) >= apx_gconf.max_parked) {
        apr_atomic_inc32(&ch->n.unavailable);
        ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r, APXLOGNO(00013)
                      "AsyncProxyMaxParked (%u) reached in this child: "
                      "503 for %s", apx_gconf.max_parked, r->uri);
        apr_table_setn(r->err_headers_out, "Retry-After",
                       apr_itoa(r->pool, (int)apx_gconf.retry_after));
        return HTTP_SERVICE_UNAVAILABLE;
    }
    rv = apx_coro_create(&rq->coro, ch->stacks, apx_request_run, rq);
    if (rv != APR_SUCCESS) {
        apr_atomic_inc32(&ch->n.unavailable);
        ap_log_rerror(APLOG_MARK, APLOG_ERR, rv, r, APXLOGNO(00014)
                      "cannot create a coroutine (out of memory?)");
        apr_table_setn(r->err_headers_out, "Retry-After",
                       apr_itoa(r->pool, (int)apx_gconf.retry_after));
        return HTTP_SERVICE_UNAVAILABLE;
    }
    apx_outcome_track(rq);
    if (rq->async) {
        apr_interval_time_t delay = map->park_delay >= 0 ? map->park_delay
                                    : sc->park_delay >= 0 ? sc->park_delay
                                    : APX_DEFAULT_PARK_DELAY;

        rq->park_after = rq->start + delay;
        ac = apx_conn_get(c);
        rq->park = &ac->park;
    }

    apx_coro_resume(rq->coro);
    if (apx_coro_is_finished(rq->coro)) {
        /* Finished on an MPM thread (a cache hit, a fast backend): the
         * connection is handed over all the same, so its keep-alive is
         * ours. Left with the MPM, it would be closed under load ("All
         * workers are busy or dying, will shutdown N keep-alive
         * connections") and its next request would start over on a new
         * connection and MPM thread. */
        if (!rq->async || apx_engine_current_thread())
            return apx_outcome_end(rq);
        rq->finished_sync = 1;
        ac->rq = rq;
        ac->want_park = 1;
        apr_atomic_inc32(&ch->n.handed_over);
        return SUSPENDED;
    }

    /* The coroutine waits for I/O: park it. On an MPM thread the suspend
     * hook arms the poller once httpd is done with the connection; on a
     * module worker (adopted connection) drive() parks it directly. */
    rq->counted = 1;
    apr_atomic_inc32(&ch->n.parked_reqs);
    apr_atomic_inc32(&ch->n.parked_total);
    ac->rq = rq;
    ac->want_park = 1;
    return SUSPENDED;
}

/* Runs first of all handlers. On a module worker, a request of a
 * connection the module adopted that another handler is to serve goes to
 * the lane: SUSPENDED here, and drive() hands it over once httpd has let go
 * of it. Insert-filter hooks have run (ap_invoke_handler()); the lane runs
 * the handler hook itself. */
int apx_handler_lane(request_rec *r)
{
    apx_conn *ac;

    if (!apx_engine_current_thread() || r->main || r->prev)
        return DECLINED;    /* an MPM or lane thread; a subrequest or an
                             * internal redirect runs where its parent does */
    ac = ap_get_module_config(r->connection->conn_config,
                              &asyncproxy_module);
    if (!ac || !ac->adopted)
        return DECLINED;
    if (r->handler && (!strcmp(r->handler, "asyncproxy-status")
                       || (!strcmp(r->handler, "asyncproxy")
                           && apx_map_match(r))))
        return DECLINED;    /* ours: it parks, or writes a few figures */
    ac->lane_r = r;
    ac->lane_handler = r->handler;
    ac->want_lane = 1;
    return SUSPENDED;
}
