/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */


/* cache_lookup.c — the response cache before the exchange: whether a
 * request may use the cache, its key (and a Vary variant's), the lookup,
 * and coalescing: a request whose key another request is fetching parks
 * on the pending object and is woken when that fetch ends.
 *
 * Threads: inside the request's coroutine, on the thread that owns the
 * request. A pending object's waiter list is guarded by its mutex: the
 * fetcher wakes the waiters under it, and a waiter, resumed for whatever
 * reason, delists itself under it before it goes on — so the fetcher never
 * touches a waiter that may be gone.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "httpd.h"
#include "http_config.h"
#include "http_core.h"
#include "http_log.h"
#include "http_protocol.h"
#include "http_request.h"
#include "apr_buckets.h"
#include "apr_lib.h"
#include "apr_strings.h"
#include "apr_uri.h"

#include "cache_int.h"

APLOG_USE_MODULE(asyncproxy);
extern module AP_MODULE_DECLARE_DATA asyncproxy_module;

/* ------------------------------------------------------------------ */
/* the request's part                                                   */

void apx__hc_set_label(apx_hcache *hc, const char *label)
{
    request_rec *r = hc->r;
    apx_counters *n = &apx_ch->n;

    apr_table_setn(r->err_headers_out, HDR_LABEL, label);
    apr_table_setn(r->notes, "asyncproxy-cache", label);
    if (hc->reason)
        apr_table_setn(r->notes, "asyncproxy-cache-reason", hc->reason);
    /* REVALIDATED: served from memory after a 304 */
    if (!strcmp(label, "HIT") || !strcmp(label, "REVALIDATED"))
        apr_atomic_inc32(&n->cache_hits);
    else if (!strcmp(label, "MISS"))
        apr_atomic_inc32(&n->cache_misses);
    else if (!strcmp(label, "STALE"))
        apr_atomic_inc32(&n->cache_stale);
    else
        apr_atomic_inc32(&n->cache_bypass);
}

static const char *vary_get(void *baton, const char *name)
{
    return apr_table_get(((request_rec *)baton)->headers_in, name);
}

/* key + "\n" + the marker's generation + "\n" + the request's values of
 * the marker's Vary fields. */
int apx__hc_make_variant_key(apx_hcache *hc, const char *vary, int skip_ae,
                            apr_uint64_t gen)
{
    static const char *const ae[] = { "accept-encoding", NULL };
    request_rec *r = hc->r;
    apr_size_t cap = VARY_KEY_MIN, need;
    char head[24];
    apr_size_t hlen;
    char *buf;

    hlen = (apr_size_t)apr_snprintf(head, sizeof(head), "\n%" APR_UINT64_T_HEX_FMT
                                    "\n", gen);
    for (;;) {
        buf = apr_palloc(r->pool, hc->klen + hlen + cap);
        memcpy(buf, hc->key, hc->klen);
        memcpy(buf + hc->klen, head, hlen);
        need = apx_fresh_vary_key(vary, skip_ae ? ae : NULL, vary_get, r,
                                  buf + hc->klen + hlen, cap);
        if (need == (apr_size_t)-1)
            return 0;
        if (need < cap)
            break;
        cap = need + 1;
    }
    hc->vkey = buf;
    hc->vklen = hc->klen + hlen + need;
    return 1;
}

/* RFC 9110 §9.2.1 and the IANA method registry: the methods that ask for
 * nothing to change. Any other, unknown ones included, may change the
 * resource (RFC 9111 §4.4). */
static int method_is_safe(const char *method)
{
    static const char *const safe[] = {
        "GET", "HEAD", "OPTIONS", "TRACE", "PROPFIND", "REPORT", "SEARCH",
        NULL
    };
    int i;

    for (i = 0; safe[i]; i++)
        if (!strcmp(method, safe[i]))
            return 1;
    return 0;
}

apx_hcache *apx_hcache_create(request_rec *r, apx_hcache_req *in)
{
    const apx_mapping *m = in->rq->map;
    const apx_dir_conf *dc = ap_get_module_config(r->per_dir_config,
                                                  &asyncproxy_module);
    const apx_srv_conf *sc = in->rq->sconf;
    apx_cache_set set;
    const char *v, *xfh = in->xfh, *xfp = in->xfp;
    const char *host = apr_table_get(r->headers_in, "Host");
    apx_hcache *hc;
    apx_cc cc;

    set = sc->cache;
    if (dc)
        apx_hc_set_merge(&set, &sc->cache, &dc->cache);
    if (m->cache != -1)
        set.on = m->cache;
    if (set.on != 1 || !apx__hc_store || !apx_ch)
        return NULL;

    hc = apr_pcalloc(r->pool, sizeof(*hc));
    hc->rq = in->rq;
    hc->r = r;
    hc->map = in->map;
    hc->hostport = in->hostport;
    hc->url = in->url;
    hc->set = set;
    if (hc->set.gzip == -1)
        hc->set.gzip = 1;
    if (hc->set.ttl == -1)
        hc->set.ttl = 0;
    if (hc->set.stale_on_error == -1)
        hc->set.stale_on_error = APX_DEFAULT_CACHE_STALE_ON_ERROR;
    /* Whatever of the client's the backend is sent beyond the target is
     * in the key, as sent: the Host with its port (AsyncProxyPreserveHost
     * forwards it, X-Forwarded-Host always), and the X-Forwarded-Host and
     * -Proto a trusted proxy passed on. A response that reflects them is
     * only ever served to requests that would have made the same. */
    hc->kpre = apr_psprintf(r->pool, "%s:%u\n%s://%s\n%s%s\n%s%s\n",
                            r->server->defn_name ? r->server->defn_name : "",
                            r->server->defn_line_number, ap_http_scheme(r),
                            host ? host : "",
                            xfh ? "=" : "", xfh ? xfh : "",
                            xfp ? "=" : "", xfp ? xfp : "");
    hc->key = apr_pstrcat(r->pool, hc->kpre, in->hostport, in->target,
                          NULL);
    hc->klen = strlen(hc->key);
    if (r->method_number != M_GET) {
        /* (HEAD is M_GET with header_only) */
        hc->reason = "method";
        apx__hc_set_label(hc, "BYPASS");
        if (method_is_safe(r->method))
            return NULL;
        hc->unsafe = 1;
        return hc;
    }
    apx_cc_init(&cc);
    v = apr_table_get(r->headers_in, "Cache-Control");
    if (v)
        apx_cc_parse(&cc, v, strlen(v));
    if (cc.flags & APX_CC_NO_STORE) {
        hc->reason = "request-no-store";
        apx__hc_set_label(hc, "BYPASS");
        return NULL;
    }
    /* A GET with Content-Length: 0 has no body: it is fetched as a plain
     * GET, and a hit leaves nothing unread in the connection. */
    if (in->body_empty) {
        in->drop_empty_body = 1;
        in->body_left = 0;
    }
    /* a GET with a body: its answer may depend on it, and a hit would
     * leave it unread in the connection */
    if (in->body_left) {
        hc->reason = "request-body";
        apx__hc_set_label(hc, "BYPASS");
        return NULL;
    }
    hc->only_if_cached = (cc.flags & APX_CC_ONLY_IF_CACHED) != 0;
    hc->accept_gz = apx_gz_accepts(apr_table_get(r->headers_in,
                                                 "Accept-Encoding"));
    return hc;
}

int apx_hcache_skip_request_field(const apx_hcache *hc, const char *name)
{
    static const char *const fill[] = {
        "If-None-Match", "If-Modified-Since", "If-Match",
        "If-Unmodified-Since", "If-Range", "Range", NULL
    };
    int i;

    if (!hc->strip)
        return 0;
    /* ours, put in place of the client's for a revalidation */
    if (hc->cond && (!strcasecmp(name, "If-None-Match")
                     || !strcasecmp(name, "If-Modified-Since")))
        return 0;
    for (i = 0; fill[i]; i++)
        if (!strcasecmp(name, fill[i]))
            return 1;
    return hc->set.gzip && !strcasecmp(name, "Accept-Encoding");
}

/* ------------------------------------------------------------------ */
/* lookup                                                               */

/* Replaces an unusable object under key with a pending one we fill. */
static int claim_fresh_pending(apx_hcache *hc, const char *key, apr_size_t klen,
                               apr_time_t now)
{
    hc_obj *p = apx__hc_obj_alloc(OBJ_PENDING);

    if (!p)
        return ROLE_FETCH;
    p->ce.refs = 1;
    p->ce.flags = APX_CACHE_E_PINNED;
    p->claimed = 1;
    if (apx_cache_put(apx__hc_store, &p->ce, key, klen, now, 0) != APR_SUCCESS) {
        apx_cache_unref(apx__hc_store, &p->ce);
        return ROLE_FETCH;
    }
    hc->pending = p;
    if (!hc->vkey) {
        /* the primary key now holds ours */
        apx__hc_hold_for_request(hc->r, p);
        hc->prim = p;
    }
    return ROLE_FILL;
}

static int lookup(apx_hcache *hc, apr_time_t now)
{
    request_rec *r = hc->r;
    const char *key = hc->key;
    apr_size_t klen = hc->klen;
    apx_cache_entry *e;
    apr_status_t err;
    hc_obj *o;
    int flags = r->header_only ? APX_CACHE_LOOKUP_ONLY : 0;

    hc->vkey = NULL;
    hc->prim = NULL;
    hc->prim_set = 1;
    hc->reval = NULL;
    for (;;) {
        e = apx_cache_get_ref(apx__hc_store, key, klen, now, flags, &err);
        if (!e)
            return r->header_only ? ROLE_FETCH : ROLE_PASS;
        o = OBJ(e);
        if (!hc->vkey) {
            apx__hc_hold_for_request(r, o);
            hc->prim = o;
        }
        switch (o->kind) {
        case OBJ_VARY:
            if (hc->vkey
                || !apx__hc_make_variant_key(hc, o->vary, o->skip_ae, o->gen)) {
                apx_cache_unref(apx__hc_store, e);
                return ROLE_FETCH;
            }
            apx_cache_unref(apx__hc_store, e);
            key = hc->vkey;
            klen = hc->vklen;
            continue;
        case OBJ_PASS:
            apx_cache_unref(apx__hc_store, e);
            return r->header_only ? ROLE_FETCH : ROLE_PASS;
        case OBJ_GONE:
            apx_cache_unref(apx__hc_store, e);
            if (r->header_only)
                return ROLE_FETCH;
            return claim_fresh_pending(hc, key, klen, now);
        case OBJ_PENDING:
            hc->pending = o;
            if (!r->header_only && apr_atomic_cas32(&o->claimed, 1, 0) == 0)
                return ROLE_FILL;
            return ROLE_WAIT;
        default:
            break;
        }
        switch (apx_fresh_state(&o->ft, now)) {
        case APX_FRESH:
            hc->obj = o;
            return ROLE_HIT;
        case APX_STALE_REVALIDATE:
            hc->obj = o;
            return ROLE_STALE;
        case APX_STALE_IF_ERROR:
            /* fetched again, conditionally when it has a validator (its
             * reference, taken by the lookup, is the request's through
             * hc->stale); served if that fetch fails */
            hc->stale = o;
            if (!r->header_only && (o->etag || o->last_modified))
                hc->reval = o;
            return r->header_only ? ROLE_FETCH : ROLE_PASS;
        default:
            /* stale: with a validator it is revalidated (RFC 9111 4.3.1)
             * by the request that claims the key; the others wait for
             * that as for a miss */
            if (!r->header_only && (o->etag || o->last_modified)) {
                apx__hc_hold_for_request(r, o);
                hc->reval = o;
            }
            apx_cache_unref(apx__hc_store, e);
            if (r->header_only)
                return ROLE_FETCH;
            return claim_fresh_pending(hc, key, klen, now);
        }
    }
}

/* ------------------------------------------------------------------ */
/* waiting for another request's fetch                                  */

void apx__hc_waiter_push(hc_waiter **list, hc_waiter *w, apx_park *p)
{
    w->p = p;
    w->prev = NULL;
    w->next = *list;
    if (*list)
        (*list)->prev = w;
    *list = w;
    w->linked = 1;
}

void apx__hc_waiter_unlink(hc_waiter **list, hc_waiter *w)
{
    if (!w->linked)
        return;
    if (w->prev)
        w->prev->next = w->next;
    else
        *list = w->next;
    if (w->next)
        w->next->prev = w->prev;
    w->linked = 0;
}

void apx__hc_waiter_wake_all(hc_waiter **list)
{
    hc_waiter *w;

    for (w = *list; w; w = w->next) {
        w->linked = 0;
        if (apx_ch && apx_ch->engine)
            apx_park_wake(apx_ch->engine, w->p);
    }
    *list = NULL;
}

static int enlist(void *baton, apx_park *p)
{
    apx_hcache *hc = baton;
    hc_obj *o = hc->pending;
    hc_waiter *w = &hc->waiter;
    int ok;

    pthread_mutex_lock(&o->mtx);
    /* a streamed fill to read: no wait */
    ok = !o->done && !(o->fill && apx__hc_stream_can_attach(hc, o->fill));
    if (ok)
        apx__hc_waiter_push(&o->waiters, w, p);
    pthread_mutex_unlock(&o->mtx);
    return ok;
}

static void delist(void *arg)
{
    apx_hcache *hc = arg;
    hc_obj *o = hc->pending;
    hc_waiter *w = &hc->waiter;

    pthread_mutex_lock(&o->mtx);
    apx__hc_waiter_unlink(&o->waiters, w);
    pthread_mutex_unlock(&o->mtx);
}

/* The fetch of a pending object ended (stored or not): every waiter is
 * woken to look again. */
void apx__hc_release_pending(apx_hcache *hc, int stored, hc_obj *result)
{
    hc_obj *o = hc->pending;

    if (!o)
        return;
    apx_cache_remove(apx__hc_store, &o->ce);
    pthread_mutex_lock(&o->mtx);
    o->done = 1;
    o->stored = stored;
    if (stored && result && !o->result) {
        apx_cache_ref(&result->ce);
        o->result = result;
    }
    apx__hc_waiter_wake_all(&o->waiters);
    pthread_mutex_unlock(&o->mtx);
    apx__hc_drop(&hc->pending);
}

static apr_status_t release_pending_cleanup(void *data)
{
    apx__hc_release_pending(data, 0, NULL);
    return APR_SUCCESS;
}

/* Returns 1 when the fetch stored something (look again), 2 when this
 * request reads the fetch's streamed fill, 0 when it goes to the backend
 * itself (the fetch failed or was not storable, the wait bound passed, or
 * it cannot park), -1 when the client left or the child stops (*pev says
 * which). */
static int wait_for_fetch(apx_hcache *hc, unsigned *pev)
{
    apx_coro *coro = hc->rq->coro;
    apr_time_t deadline = apr_time_now() + apx_gconf.cache_wait;
    hc_obj *o = hc->pending;
    apx_defer *d;
    unsigned ev;
    int stored, gone, attached, again;

    apr_atomic_inc32(&apx_ch->n.cache_coalesced);
    d = apx_coro_defer(coro, delist, hc);
    do {
        ev = apx_wait_wake(hc->rq, enlist, hc, deadline);
        delist(hc);
        gone = (ev & (APX_EV_CLIENT_GONE | APX_EV_SHUTDOWN)) != 0;
        attached = again = 0;
        pthread_mutex_lock(&o->mtx);
        if (!o->done && !gone && ev && !(ev & APX_EV_TIMEOUT)) {
            /* woken when the fetch began streaming: read it, or (a HEAD,
             * another variant) wait on for the stored object */
            if (o->fill && apx__hc_stream_can_attach(hc, o->fill))
                attached = apx__hc_stream_attach(hc, o->fill);
            else
                again = 1;
        }
        pthread_mutex_unlock(&o->mtx);
    } while (again);
    if (d)
        apx_coro_defer_disarm(coro, d);
    *pev = ev;
    if (attached) {
        apx__hc_drop(&hc->pending);
        return 2;
    }
    /* set under the mutex delist took */
    stored = o->stored;
    if (stored && o->result && !gone) {
        hc->obj = o->result;
        apx_cache_ref(&hc->obj->ce);
    }
    apx__hc_drop(&hc->pending);
    if (gone)
        return -1;
    if (!ev || (ev & APX_EV_TIMEOUT) || !stored)
        return 0;
    return 1;
}

int apx_hcache_lookup(apx_hcache *hc, unsigned *ev)
{
    int round, role = ROLE_FETCH, rc;

    if (hc->unsafe)
        return APX_HCACHE_UNSAFE;
    /* a coroutine destroyed mid-fetch still wakes its waiters */
    apr_pool_cleanup_register(hc->r->pool, hc, release_pending_cleanup,
                              apr_pool_cleanup_null);
    for (round = 0; round < MAX_ROUNDS; round++) {
        role = lookup(hc, apr_time_now());
        if (role != ROLE_WAIT)
            break;
        rc = wait_for_fetch(hc, ev);
        if (rc < 0)
            return APX_HCACHE_GONE;
        if (rc == 2) {
            role = ROLE_STREAM;
            break;
        }
        if (hc->obj) {
            /* the fetch we waited for left what it stored for us */
            role = ROLE_HIT;
            break;
        }
        if (rc == 0) {
            /* the fetch we waited for is over (or still running): what
             * we fetch is stored if the key holds then what it holds now */
            apx__hc_snapshot_prim(hc);
            role = ROLE_PASS;
            break;
        }
        role = ROLE_FETCH;
    }
    if (hc->only_if_cached && role != ROLE_HIT && role != ROLE_STALE
        && role != ROLE_STREAM) {
        /* RFC 9111 section 5.2.1.7: a stored response or 504 */
        apx__hc_release_pending(hc, 0, NULL);
        apx__hc_drop(&hc->stale);
        hc->reason = "only-if-cached";
        apx__hc_set_label(hc, "BYPASS");
        return APX_HCACHE_ONLY_IF_CACHED;
    }
    if (hc->stale) {
        /* the stale-if-error fallback lives as long as r */
        hc_obj *o = hc->stale;

        apx__hc_hold_for_request(hc->r, o);
        apx_cache_unref(apx__hc_store, &o->ce);
    }
    switch (role) {
    case ROLE_HIT:
        apx__hc_set_serving(hc, hc->obj);
        apx__hc_drop(&hc->obj);
        return APX_HCACHE_HIT;
    case ROLE_STREAM:
        /* served as the fetch we waited for reads it: a hit for us */
        apx__hc_set_serving(hc, hc->fill->head);
        return APX_HCACHE_STREAM;
    case ROLE_STALE:
        if (apr_atomic_cas32(&hc->obj->refreshing, 1, 0) == 0)
            hc->refreshed = hc->obj;
        hc->reason = "stale-while-revalidate";
        apx__hc_set_serving(hc, hc->obj);
        apx__hc_drop(&hc->obj);
        return APX_HCACHE_STALE;
    default:
        hc->role = role;
        hc->strip = role == ROLE_FILL || role == ROLE_PASS;
        return APX_HCACHE_FETCH;
    }
}
