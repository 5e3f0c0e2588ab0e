/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* upstream_group.c — balancer groups in the child: one apx_bal group
 * (poller/balance.c) per <AsyncProxyBalancer>, what a request hands it to
 * choose a member (its hash key, its sticky route), the outcome reports
 * and what they changed in the error log, and the members on the status
 * page.
 *
 * Threads:
 *   apx_balancer_find()            configuration (parent, single thread)
 *   apx_balancers_child_init()     child_init, before any request thread
 *   apx_group_*(), apx_balancers_status()   any request thread (MPM
 *                                  threads, module workers, lane threads)
 * Invariants:
 *   - Each group has one mutex; it is held for one engine call (a pick, a
 *     report, a retry) or for copying the members out, never across a
 *     syscall, a log line or a wait.
 *   - Every successful pick or retry is matched by exactly one
 *     apx_group_done() (the request path keeps that promise with a
 *     coroutine defer, see backend.c).
 *   - The method's state (latency averages, ejections, its in-flight
 *     counts) is per child: N children keep N views of each group. The
 *     active checks' verdict is shared (upstream_check.c writes it in
 *     the segment): each group mirrors it under its lock before a pick,
 *     a retry or a status copy, when the segment's generation moved. The
 *     caps of max= are shared by all children (upstream_shm.c): a capped
 *     member's slot is taken by apx_group_acquire() (upstream_queue.c) or
 *     a retry here, and given back by apx_group_done().
 */
#include <unistd.h>

#include "httpd.h"
#include "http_config.h"
#include "http_log.h"
#include "http_protocol.h"
#include "apr_strings.h"
#include "apr_thread_mutex.h"

#include "upstream.h"
#include "upstream_check.h"
#include "upstream_queue.h"
#include "upstream_shm.h"

APLOG_USE_MODULE(asyncproxy);
extern module AP_MODULE_DECLARE_DATA asyncproxy_module;

/* Per child. */
typedef struct group_rt {
    apr_thread_mutex_t *mtx;
    apx_bal_group *g;
    apx_bal_rng rng;                /* under mtx, like the group */
    apr_uint32_t check_gen;         /* the checks' generation last
                                     * mirrored (under mtx) */
} group_rt;

/* ------------------------------------------------------------------ */
/* configuration                                                        */

apx_balancer *apx_balancer_find(const char *name)
{
    apr_array_header_t *all = apx_gconf.balancers;
    int i;

    for (i = 0; all && i < all->nelts; i++) {
        apx_balancer *b = APR_ARRAY_IDX(all, i, apx_balancer *);

        if (!strcasecmp(b->name, name))
            return b;
    }
    return NULL;
}

void apx_balancers_child_init(apr_pool_t *pchild, server_rec *s)
{
    apr_array_header_t *all = apx_gconf.balancers;
    apr_time_t now = apr_time_now();
    int i, j;

    apx_mshm_child_init(pchild, s);
    apx_queue_child_init(pchild, s);
    apx_checks_child_init(pchild, s);
    for (i = 0; all && i < all->nelts; i++) {
        apx_balancer *b = APR_ARRAY_IDX(all, i, apx_balancer *);
        apx_bal_member_spec *specs;
        group_rt *rt = apr_pcalloc(pchild, sizeof(*rt));
        apr_status_t rv;

        b->rt = NULL;
        specs = apr_pcalloc(pchild, b->members->nelts * sizeof(*specs));
        for (j = 0; j < b->members->nelts; j++) {
            const apx_member *mb = &APR_ARRAY_IDX(b->members, j, apx_member);

            specs[j].name = mb->url;
            specs[j].route = mb->route;
            specs[j].weight = mb->weight;
        }
        rv = apr_thread_mutex_create(&rt->mtx, APR_THREAD_MUTEX_DEFAULT,
                                     pchild);
        if (rv == APR_SUCCESS)
            rv = apx_bal_group_create(&rt->g, pchild, &b->cfg, specs,
                                      (unsigned)b->members->nelts, now);
        if (rv != APR_SUCCESS) {
            /* the directives checked what the engine refuses: this is
             * memory or a lock */
            ap_log_error(APLOG_MARK, APLOG_CRIT, rv, s, APXLOGNO(00024)
                         "cannot set up balancer %s in this child; its "
                         "requests will get 503", b->name);
            continue;
        }
        for (j = 0; j < b->members->nelts; j++)
            if (APR_ARRAY_IDX(b->members, j, apx_member).drain)
                apx_bal_set_draining(rt->g, (unsigned)j, 1, now);
        /* mirror the checks' verdict at the first look */
        rt->check_gen = (apr_uint32_t)-1;
        /* distinct children draw distinct sequences */
        apx_bal_rng_seed(&rt->rng, (apr_uint64_t)now ^ ((apr_uint64_t)getpid()
                                                       << 32) ^ (apr_uint64_t)i);
        b->rt = rt;
    }
}

/* ------------------------------------------------------------------ */
/* what a request gives the pick                                        */

/* The value of cookie `name` in the request's Cookie fields, or NULL. */
static const char *find_cookie(request_rec *r, const char *name,
                               apr_size_t *vlen)
{
    const apr_array_header_t *arr = apr_table_elts(r->headers_in);
    const apr_table_entry_t *e = (const apr_table_entry_t *)arr->elts;
    apr_size_t nlen = strlen(name);
    int i;

    for (i = 0; i < arr->nelts; i++) {
        const char *p;

        if (!e[i].key || !e[i].val || strcasecmp(e[i].key, "Cookie"))
            continue;
        for (p = e[i].val; *p; ) {
            const char *end;

            while (*p == ' ' || *p == '\t' || *p == ';')
                p++;
            end = p + strcspn(p, ";");
            if ((apr_size_t)(end - p) > nlen && !strncmp(p, name, nlen)
                && p[nlen] == '=') {
                const char *v = p + nlen + 1, *ve = end;

                while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
                    ve--;
                if (ve - v >= 2 && *v == '"' && ve[-1] == '"') {
                    v++;
                    ve--;
                }
                *vlen = (apr_size_t)(ve - v);
                return v;
            }
            p = end;
        }
    }
    return NULL;
}

/* `name=value` as a path parameter (";jsessionid=...") or in the query,
 * as mod_proxy_balancer reads a session from the URL; NULL when absent. */
static const char *find_url_param(request_rec *r, const char *name,
                                  apr_size_t *vlen)
{
    const char *p = r->unparsed_uri;
    apr_size_t nlen = strlen(name);

    while (p && (p = strpbrk(p, ";?&"))) {
        p++;
        if (!strncmp(p, name, nlen) && p[nlen] == '=') {
            *vlen = strcspn(p + nlen + 1, ";?&#");
            return p + nlen + 1;
        }
    }
    return NULL;
}

static void request_key(const apx_balancer *b, request_rec *r,
                        apx_bal_req *in)
{
    const char *v = NULL;
    apr_size_t len = 0;

    memset(in, 0, sizeof(*in));
    if (b->sticky_cookie) {
        v = find_cookie(r, b->sticky_cookie, &len);
        if (!v)
            v = find_url_param(r, b->sticky_param, &len);
        if (v)
            in->route = apx_bal_session_route(v, len, '.', &in->route_len);
    }
    if (b->cfg.method != APX_BAL_HASH)
        return;
    switch (b->hash_from) {
    case APX_HASHKEY_COOKIE:
        v = find_cookie(r, b->hash_name, &len);
        break;
    case APX_HASHKEY_HEADER:
        v = apr_table_get(r->headers_in, b->hash_name);
        len = v ? strlen(v) : 0;
        break;
    default:
        v = r->useragent_ip;
        len = v ? strlen(v) : 0;
        break;
    }
    in->key = v;
    in->key_len = len;
}

/* ------------------------------------------------------------------ */
/* picks and reports                                                    */

static const apx_member *member_of(const apx_balancer *b, unsigned idx)
{
    return &APR_ARRAY_IDX(b->members, (int)idx, apx_member);
}

/* Under rt->mtx: the shared verdict of the active checks into this
 * child's group, when a probe ended since the last look (one atomic load
 * otherwise). */
static void follow_checks(apx_balancer *b, group_rt *rt, apr_time_t now)
{
    apr_uint32_t gen;
    unsigned j;

    if (!b->check)
        return;
    gen = apx_mshm_check_gen();
    if (gen == rt->check_gen)
        return;
    rt->check_gen = gen;
    for (j = 0; j < (unsigned)b->members->nelts; j++) {
        const apx_mshm_member *sm = apx_mshm_at(member_of(b, j)->gidx);
        int up;

        if (!sm)
            continue;
        up = (int)__atomic_load_n(&sm->chk.up, __ATOMIC_ACQUIRE);
        apx_bal_check_sync(rt->g, j, up,
                           __atomic_load_n(&sm->chk.since, __ATOMIC_ACQUIRE),
                           __atomic_load_n(&sm->chk.last_pass_at,
                                           __ATOMIC_ACQUIRE), now);
    }
}

/* A pick (failed < 0) or a retry away from member `failed`. */
static apr_status_t choose(apx_balancer *b, request_rec *r, int failed,
                           unsigned *idx)
{
    group_rt *rt = b->rt;
    apx_bal_req in;
    apr_time_t now;
    apr_status_t rv;

    if (!rt)
        return APR_ENOTIMPL;
    request_key(b, r, &in);
    now = apr_time_now();
    apr_thread_mutex_lock(rt->mtx);
    follow_checks(b, rt, now);
    rv = failed < 0 ? apx_bal_pick(rt->g, &in, now, &rt->rng, idx)
                    : apx_bal_retry(rt->g, &in, (unsigned)failed, now,
                                    &rt->rng, idx);
    apr_thread_mutex_unlock(rt->mtx);
    return rv;
}

apr_status_t apx_group_pick(apx_balancer *b, request_rec *r, unsigned *idx)
{
    return choose(b, r, -1, idx);
}

void apx_group_unpick(apx_balancer *b, unsigned idx)
{
    group_rt *rt = b->rt;

    if (!rt)
        return;
    apr_thread_mutex_lock(rt->mtx);
    apx_bal_done(rt->g, idx, APX_BAL_ABORTED, 0, apr_time_now());
    apr_thread_mutex_unlock(rt->mtx);
}

apr_status_t apx_group_retry(apx_balancer *b, request_rec *r,
                             unsigned failed, unsigned *idx)
{
    apr_status_t rv = choose(b, r, (int)failed, idx);

    if (rv == APR_SUCCESS && member_of(b, *idx)->cap
        && !apx_queue_try_take(member_of(b, *idx)->gidx)) {
        apx_group_unpick(b, *idx);
        return APR_EAGAIN;
    }
    return rv;
}

void apx_group_done(apx_balancer *b, server_rec *s, unsigned idx,
                    int outcome, apr_interval_time_t latency)
{
    group_rt *rt = b->rt;
    const apx_bal_member *m;
    unsigned consecutive = 0, mult = 0;
    apr_interval_time_t away = 0;
    apr_time_t now = apr_time_now();
    int ev;

    if (member_of(b, idx)->cap)
        apx_queue_release(member_of(b, idx)->gidx);
    if (!rt)
        return;
    apr_thread_mutex_lock(rt->mtx);
    ev = apx_bal_done(rt->g, idx, outcome, latency, now);
    if (ev != APX_BAL_EV_NONE) {
        m = apx_bal_member_at(rt->g, idx);
        consecutive = m->consecutive;
        mult = m->eject_mult;
        away = m->until - now;
    }
    apr_thread_mutex_unlock(rt->mtx);

    switch (ev) {
    case APX_BAL_EV_EJECTED:
        ap_log_error(APLOG_MARK, APLOG_WARNING, 0, s, APXLOGNO(00025)
                      "balancer %s: member %s ejected for %" APR_TIME_T_FMT
                      " ms (backoff x%u) after it failed",
                      b->name, member_of(b, idx)->url,
                      apr_time_as_msec(away), mult);
        break;
    case APX_BAL_EV_EJECT_DENIED:
        /* said once per run of failures, not on each one */
        if (consecutive == b->cfg.consecutive || consecutive <= 1)
            ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, s, APXLOGNO(00026)
                          "balancer %s: member %s keeps failing but stays: "
                          "ejecting it would pass maxeject=%u%% or leave "
                          "no member", b->name, member_of(b, idx)->url,
                          b->cfg.max_eject_pct);
        break;
    case APX_BAL_EV_UP:
        ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, s, APXLOGNO(00027)
                      "balancer %s: member %s is back up", b->name,
                      member_of(b, idx)->url);
        break;
    default:
        break;
    }
}

int apx_group_fail_status(const apx_balancer *b, int status)
{
    return status >= 500 && status <= 599 && b->fail_status[status - 500];
}

/* ------------------------------------------------------------------ */
/* status                                                               */

typedef struct member_view {
    apx_bal_member m;
    double latency;
    apx_mshm_member sh;             /* all children (zeros: no cap) */
    apr_uint32_t queued_here;
    apr_uint32_t held_here;
    apx_mshm_check chk;             /* zeros: no check */
} member_view;

static void shared_view(const apx_member *mb, member_view *v)
{
    const apx_mshm_member *sm = mb->cap ? apx_mshm_at(mb->gidx) : NULL;

    const apx_mshm_member *all = apx_mshm_at(mb->gidx);

    memset(&v->sh, 0, sizeof(v->sh));
    memset(&v->chk, 0, sizeof(v->chk));
    v->queued_here = v->held_here = 0;
    if (all) {
        const apx_mshm_check *c = &all->chk;

        v->chk.up = __atomic_load_n(&c->up, __ATOMIC_ACQUIRE);
        v->chk.passed = __atomic_load_n(&c->passed, __ATOMIC_RELAXED);
        v->chk.failed = __atomic_load_n(&c->failed, __ATOMIC_RELAXED);
        v->chk.last_status = __atomic_load_n(&c->last_status,
                                             __ATOMIC_RELAXED);
        v->chk.last_ms = __atomic_load_n(&c->last_ms, __ATOMIC_RELAXED);
        v->chk.last_err = __atomic_load_n(&c->last_err, __ATOMIC_RELAXED);
        v->chk.last_at = __atomic_load_n(&c->last_at, __ATOMIC_RELAXED);
        v->chk.prober = __atomic_load_n(&c->prober, __ATOMIC_RELAXED);
        v->chk.pass_run = __atomic_load_n(&c->pass_run, __ATOMIC_RELAXED);
        v->chk.fail_run = __atomic_load_n(&c->fail_run, __ATOMIC_RELAXED);
    }
    if (!sm)
        return;
    v->sh.cap = sm->cap;
    v->sh.inflight = __atomic_load_n(&sm->inflight, __ATOMIC_RELAXED);
    v->sh.queued = __atomic_load_n(&sm->queued, __ATOMIC_RELAXED);
    v->sh.queue_timeouts = __atomic_load_n(&sm->queue_timeouts,
                                           __ATOMIC_RELAXED);
    v->sh.queue_full = __atomic_load_n(&sm->queue_full, __ATOMIC_RELAXED);
    v->sh.queue_gone = __atomic_load_n(&sm->queue_gone, __ATOMIC_RELAXED);
    v->sh.dispatched = __atomic_load_n(&sm->dispatched, __ATOMIC_RELAXED);
    v->sh.max_wait_us = __atomic_load_n(&sm->max_wait_us, __ATOMIC_RELAXED);
    v->sh.reclaimed = __atomic_load_n(&sm->reclaimed, __ATOMIC_RELAXED);
    v->queued_here = apx_queue_here(mb->gidx);
    v->held_here = apx_mshm_held_here(mb->gidx);
}

void apx_balancers_status(request_rec *r, int short_report)
{
    apr_array_header_t *all = apx_gconf.balancers;
    apr_time_t now = apr_time_now();
    int i;
    unsigned j, n;

    for (i = 0; all && i < all->nelts; i++) {
        apx_balancer *b = APR_ARRAY_IDX(all, i, apx_balancer *);
        group_rt *rt = b->rt;
        member_view *v;

        if (!rt)
            continue;
        n = (unsigned)b->members->nelts;
        v = apr_palloc(r->pool, n * sizeof(*v));
        apr_thread_mutex_lock(rt->mtx);
        follow_checks(b, rt, now);
        apx_bal_refresh(rt->g, now);
        for (j = 0; j < n; j++) {
            v[j].m = *apx_bal_member_at(rt->g, j);
            v[j].latency = apx_bal_latency(rt->g, j, now);
        }
        apr_thread_mutex_unlock(rt->mtx);
        for (j = 0; j < n; j++)
            shared_view(member_of(b, j), &v[j]);

        if (!short_report)
            ap_rprintf(r, "<h3>balancer://%s</h3>\n<table>\n<tr><th>member"
                       "</th><th>route</th><th>weight</th><th>state</th>"
                       "<th>in flight (this child)</th><th>max</th>"
                       "<th>in flight (all)</th><th>queued (all)</th>"
                       "<th>queued (this child)</th><th>queue timeouts"
                       "</th><th>queue full</th><th>left the queue</th>"
                       "<th>longest wait (ms)</th>"
                       "<th>latency (ms)</th>"
                       "<th>requests</th><th>failures</th><th>ejections"
                       "</th><th>retries</th><th>check</th><th>checks "
                       "passed</th><th>checks failed</th><th>last check"
                       "</th></tr>\n",
                       ap_escape_html(r->pool, b->name));
        for (j = 0; j < n; j++) {
            const apx_member *mb = member_of(b, j);
            const apx_bal_member *m = &v[j].m;
            const member_view *w = &v[j];
            const char *state = apx_bal_state_name(m->state);
            const char *check = "none", *cerr = "-";
            apr_int64_t check_age = -1;

            if (b->check) {
                check = w->chk.up ? "up" : "down";
                cerr = apx_check_error_name(w->chk.last_err);
                if (w->chk.last_at)
                    check_age = apr_time_as_msec(now - w->chk.last_at);
                /* down, and a probe is on its way: item 6's "checking" */
                if (m->state == APX_BAL_DOWN && w->chk.prober)
                    state = "checking";
            }

            if (short_report) {
                /* the fields of the first slice first, in their order:
                 * readers of this line may match it whole */
                ap_rprintf(r, "AsyncProxyMember: balancer=%s index=%u "
                           "url=%s route=%s weight=%u state=%s inflight=%u "
                           "latency_us=%.0f requests=%" APR_UINT64_T_FMT
                           " failures=%" APR_UINT64_T_FMT " ejections=%"
                           APR_UINT64_T_FMT " retries=%" APR_UINT64_T_FMT
                           " max=%u inflight_all=%u held_here=%u queued=%u "
                           "queued_here=%u queue_timeouts=%" APR_UINT64_T_FMT
                           " queue_full=%" APR_UINT64_T_FMT " queue_gone=%"
                           APR_UINT64_T_FMT " queue_dispatched=%"
                           APR_UINT64_T_FMT " queue_max_wait_ms=%"
                           APR_UINT64_T_FMT " slots_reclaimed=%"
                           APR_UINT64_T_FMT " check=%s checks_passed=%"
                           APR_UINT64_T_FMT " checks_failed=%"
                           APR_UINT64_T_FMT " check_status=%u check_ms=%u "
                           "check_error=%s check_age_ms=%" APR_INT64_T_FMT
                           " check_run=%u weight_now=%u child=%d\n",
                           b->name, j,
                           mb->url, mb->route ? mb->route : "-", mb->weight,
                           state, m->inflight, v[j].latency, m->requests,
                           m->failures, m->ejections, m->retries, mb->cap,
                           w->sh.inflight, w->held_here, w->sh.queued,
                           w->queued_here, w->sh.queue_timeouts,
                           w->sh.queue_full, w->sh.queue_gone,
                           w->sh.dispatched, w->sh.max_wait_us / 1000,
                           w->sh.reclaimed, check, w->chk.passed,
                           w->chk.failed, w->chk.last_status, w->chk.last_ms,
                           cerr, check_age,
                           w->chk.up ? w->chk.fail_run : w->chk.pass_run,
                           m->eff_weight, (int)getpid());
                continue;
            }
            ap_rprintf(r, "<tr><td>%s</td><td>%s</td><td>%u</td><td>%s</td>"
                       "<td>%u</td><td>%u</td><td>%u</td><td>%u</td>"
                       "<td>%u</td><td>%" APR_UINT64_T_FMT "</td><td>%"
                       APR_UINT64_T_FMT "</td><td>%" APR_UINT64_T_FMT
                       "</td><td>%" APR_UINT64_T_FMT "</td>"
                       "<td>%.1f</td><td>%" APR_UINT64_T_FMT
                       "</td><td>%" APR_UINT64_T_FMT "</td><td>%"
                       APR_UINT64_T_FMT "</td><td>%" APR_UINT64_T_FMT
                       "</td><td>%s</td><td>%" APR_UINT64_T_FMT "</td><td>%"
                       APR_UINT64_T_FMT "</td><td>%u in %u ms (%s)</td>"
                       "</tr>\n", ap_escape_html(r->pool, mb->url),
                       mb->route ? ap_escape_html(r->pool, mb->route) : "",
                       mb->weight, state, m->inflight, mb->cap,
                       w->sh.inflight, w->sh.queued, w->queued_here,
                       w->sh.queue_timeouts, w->sh.queue_full,
                       w->sh.queue_gone, w->sh.max_wait_us / 1000,
                       v[j].latency / 1000.0,
                       m->requests, m->failures, m->ejections, m->retries,
                       check, w->chk.passed, w->chk.failed,
                       w->chk.last_status, w->chk.last_ms, cerr);
        }
        if (!short_report)
            ap_rputs("</table>\n", r);
    }
}
