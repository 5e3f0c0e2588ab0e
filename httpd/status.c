/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* status.c — the module's own figures, for its status
 * handler (SetHandler asyncproxy-status) and for mod_status' status_hook
 * (/server-status and ?auto). mod_status cannot see parked requests: they
 * have no scoreboard slot (c->sbh is NULL on module threads).
 *
 * Threads: request threads (MPM or module workers); reads counters only.
 */
#include "httpd.h"
#include "http_config.h"
#include "http_protocol.h"
#include "apr_strings.h"
#include "mod_status.h"

#include "conf.h"
#include "child.h"
#include "cache.h"
#include "status.h"
#include "lane.h"
#include "upstream.h"

APLOG_USE_MODULE(asyncproxy);

typedef struct figure {
    const char *name;
    apr_uint64_t value;
} figure;

#define MAX_FIGURES 96

static int collect(figure *f, const char **mode)
{
    apx_child *ch = apx_ch;
    apx_engine_stats es;
    unsigned in_use = 0, free_stacks = 0;
    int n = 0;

    memset(&es, 0, sizeof(es));
    *mode = "off";
    if (!ch)
        return 0;
    *mode = ch->engine ? "async" : "sync";
    if (ch->engine)
        apx_engine_stats_get(ch->engine, &es);
    if (ch->stacks)
        apx_stack_pool_stats(ch->stacks, &in_use, &free_stacks);

#define FIG(nm, v) do { f[n].name = (nm); f[n].value = (v); n++; } while (0)
    FIG("Workers", es.workers);
    FIG("WorkersBusy", es.workers_busy);
    FIG("ParkedNow", es.parked);
    FIG("QueuedNow", es.queued);
    FIG("ParksTotal", es.parks_total);
    FIG("DispatchedTotal", es.dispatched_total);
    FIG("TimeoutsTotal", es.timeouts_total);
    FIG("RequestsTotal", apr_atomic_read32(&ch->n.requests_total));
    FIG("InFlight", apr_atomic_read32(&ch->n.in_flight));
    FIG("ParkedRequests", apr_atomic_read32(&ch->n.parked_reqs));
    FIG("ParkedTotal", apr_atomic_read32(&ch->n.parked_total));
    FIG("SyncTotal", apr_atomic_read32(&ch->n.sync_total));
    FIG("DoneTotal", apr_atomic_read32(&ch->n.done_total));
    FIG("BadGateway", apr_atomic_read32(&ch->n.bad_gateway));
    FIG("GatewayTimeout", apr_atomic_read32(&ch->n.gateway_timeout));
    FIG("Unavailable", apr_atomic_read32(&ch->n.unavailable));
    FIG("ClientErrors", apr_atomic_read32(&ch->n.client_errors));
    FIG("Aborted", apr_atomic_read32(&ch->n.aborted));
    FIG("ClientGone", apr_atomic_read32(&ch->n.client_gone));
    FIG("BackendReused", apr_atomic_read32(&ch->n.backend_reused));
    FIG("BackendRetries", apr_atomic_read32(&ch->n.backend_retries));
    FIG("BackendTLSHandshakes", apr_atomic_read32(&ch->n.tls_handshakes));
    FIG("BackendTLSResumed", apr_atomic_read32(&ch->n.tls_resumed));
    FIG("KeepaliveClosed", apr_atomic_read32(&ch->n.keepalive_closed));
    FIG("HeadWaits", apr_atomic_read32(&ch->n.head_waits));
    FIG("HeadTimeouts", apr_atomic_read32(&ch->n.head_timeouts));
    FIG("HeadRefused", apr_atomic_read32(&ch->n.head_refused));
    FIG("HeadsAdopted", apr_atomic_read32(&ch->n.heads_adopted));
    FIG("IdleNow", apr_atomic_read32(&ch->n.idle_now));
    FIG("IdleShed", apr_atomic_read32(&ch->n.shed_total));
    FIG("IdleTrims", apr_atomic_read32(&ch->n.idle_trims));
    FIG("HandedOver", apr_atomic_read32(&ch->n.handed_over));
    FIG("ParkDelaySkipped", apr_atomic_read32(&ch->n.delay_skipped));
    FIG("AdoptedNow", apr_atomic_read32(&ch->n.adopted_now));
    FIG("AdoptedTotal", apr_atomic_read32(&ch->n.adopted_total));
    FIG("GateWaits", apr_atomic_read32(&ch->n.gate_waits));
    FIG("GateMaxMicroseconds", apr_atomic_read32(&ch->n.gate_max_us));
    FIG("GateBoundHits", apr_atomic_read32(&ch->n.gate_bound_hits));
    FIG("GateRequeues", apr_atomic_read32(&ch->n.gate_requeues));
    {
        apx_lane_figs lf;

        apx_lane_figures(&lf);
        FIG("LaneThreads", lf.threads);
        FIG("LaneThreadsMax", lf.threads_max);
        FIG("LaneBusy", lf.busy);
        FIG("LaneQueued", lf.queued);
        FIG("LaneTotal", lf.total);
        FIG("LaneRejected", lf.rejected);
    }
    FIG("StacksInUse", in_use);
    FIG("StacksFree", free_stacks);
    FIG("WakesTotal", es.wakes_total);
    FIG("WorkerStalls", es.stalls_total);
    FIG("ArmsKept", es.arms_kept_total);
    FIG("ArmsFired", es.arms_fired_total);
    FIG("Rewatches", es.rewatch_total);
    {
        apr_uint64_t entries, bytes, evictions;

        apx_hc_figures(&entries, &bytes, &evictions);
        FIG("CacheHits", apr_atomic_read32(&ch->n.cache_hits));
        FIG("CacheMisses", apr_atomic_read32(&ch->n.cache_misses));
        FIG("CacheStale", apr_atomic_read32(&ch->n.cache_stale));
        FIG("CacheBypass", apr_atomic_read32(&ch->n.cache_bypass));
        FIG("CacheCoalesced", apr_atomic_read32(&ch->n.cache_coalesced));
        FIG("CacheNotModified", apr_atomic_read32(&ch->n.cache_not_modified));
        FIG("CacheEntries", entries);
        FIG("CacheBytes", bytes);
        FIG("CacheEvictions", evictions);
    }
    FIG("StreamsNow", apr_atomic_read32(&ch->n.streams_now));
    FIG("StreamsTotal", apr_atomic_read32(&ch->n.streams_total));
    FIG("StreamBytes", apr_atomic_read64(&ch->n.stream_bytes));
    FIG("TunnelsNow", apr_atomic_read32(&ch->n.tunnels_now));
    FIG("TunnelsTotal", apr_atomic_read32(&ch->n.tunnels_total));
    FIG("TunnelBytesIn", apr_atomic_read64(&ch->n.tunnel_bytes_in));
    FIG("TunnelBytesOut", apr_atomic_read64(&ch->n.tunnel_bytes_out));
#undef FIG
    return n;
}

static void print_figures(request_rec *r, int short_report)
{
    figure f[MAX_FIGURES];
    const char *mode;
    int i, n = collect(f, &mode);

    if (short_report) {
        ap_rprintf(r, "AsyncProxyMode: %s\n", mode);
        for (i = 0; i < n; i++)
            ap_rprintf(r, "AsyncProxy%s: %" APR_UINT64_T_FMT "\n", f[i].name,
                       f[i].value);
        apx_backends_status(r, 1);
        apx_balancers_status(r, 1);
        return;
    }
    ap_rputs("<h2>mod_asyncproxy (this child)</h2>\n<table>\n", r);
    ap_rprintf(r, "<tr><th>Mode</th><td>%s</td></tr>\n", mode);
    for (i = 0; i < n; i++)
        ap_rprintf(r, "<tr><th>%s</th><td>%" APR_UINT64_T_FMT "</td></tr>\n",
                   f[i].name, f[i].value);
    ap_rputs("</table>\n", r);
    apx_backends_status(r, 0);
    apx_balancers_status(r, 0);
}

int apx_status_hook(request_rec *r, int flags)
{
    print_figures(r, (flags & AP_STATUS_SHORT) != 0);
    return OK;
}

int apx_status_handler(request_rec *r)
{
    if (!r->handler || strcmp(r->handler, "asyncproxy-status"))
        return DECLINED;
    if (r->method_number != M_GET)
        return HTTP_METHOD_NOT_ALLOWED;
    ap_set_content_type(r, "text/plain; charset=utf-8");
    apr_table_setn(r->headers_out, "Cache-Control", "no-store");
    if (r->header_only)
        return OK;
    print_figures(r, 1);
    return OK;
}
