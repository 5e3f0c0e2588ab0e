/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */


/* cache_store.c — the response cache's store: its configuration
 * (AsyncProxyCache*), the per-child store on the engine's cache core, the
 * objects' lifetime (held for a request), markers (pass, Vary, gone), and
 * publishing a fetched object under its key while the key still holds
 * what the fetch began from.
 *
 * Threads: directives in pconf; child_init once; figures from any thread;
 * the rest inside a request's coroutine. The store is shared by every
 * thread of the child (the core's rwlock; refcounts are atomic).
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

apx_cache *apx__hc_store;
/* The last generation handed to a Vary marker. */
static volatile apr_uint64_t last_gen;

/* ------------------------------------------------------------------ */
/* configuration                                                        */

void apx_hc_set_init(apx_cache_set *cs)
{
    cs->on = -1;
    cs->gzip = -1;
    cs->ttl = -1;
    cs->stale_on_error = -1;
}

void apx_hc_set_merge(apx_cache_set *to, const apx_cache_set *base,
                      const apx_cache_set *add)
{
    to->on = add->on != -1 ? add->on : base->on;
    to->gzip = add->gzip != -1 ? add->gzip : base->gzip;
    to->ttl = add->ttl != -1 ? add->ttl : base->ttl;
    to->stale_on_error = add->stale_on_error != -1 ? add->stale_on_error
                                                   : base->stale_on_error;
}

static apx_cache_set *scope_set(cmd_parms *cmd, void *dconf)
{
    apx_srv_conf *sc;

    if (cmd->path)
        return &((apx_dir_conf *)dconf)->cache;
    sc = ap_get_module_config(cmd->server->module_config, &asyncproxy_module);
    return &sc->cache;
}

const char *apx_hc_cmd_flag(cmd_parms *cmd, void *dconf, int on)
{
    apx_cache_set *cs = scope_set(cmd, dconf);

    if (!strcasecmp(cmd->cmd->name, "AsyncProxyCache")) {
        cs->on = on;
        if (on)
            apx_gconf.cache_used = 1;
    }
    else {
        cs->gzip = on;
    }
    return NULL;
}

const char *apx_hc_cmd_take1(cmd_parms *cmd, void *dconf, const char *arg)
{
    const char *name = cmd->cmd->name, *err;

    if (!strcasecmp(name, "AsyncProxyCacheTTL")
        || !strcasecmp(name, "AsyncProxyCacheStaleOnError")) {
        apx_cache_set *cs = scope_set(cmd, dconf);
        apr_interval_time_t *to = !strcasecmp(name, "AsyncProxyCacheTTL")
                                  ? &cs->ttl : &cs->stale_on_error;

        if (!strcasecmp(arg, "off")) {
            *to = 0;
            return NULL;
        }
        return apx_parse_duration(cmd, arg, apr_time_from_msec(1),
                                  apr_time_from_sec(365 * 86400), to);
    }
    if ((err = ap_check_cmd_context(cmd, GLOBAL_ONLY)))
        return apr_psprintf(cmd->pool, "%s: the cache is one per child "
                            "process, so it is set in the main server "
                            "config only (%s)", name, err);
    if (!strcasecmp(name, "AsyncProxyCacheSize"))
        return apx_parse_size(cmd, arg, 0, (apr_size_t)1 << 40,
                              &apx_gconf.cache_size);
    if (!strcasecmp(name, "AsyncProxyCacheMaxObject"))
        return apx_parse_size(cmd, arg, 1, (apr_size_t)1 << 32,
                              &apx_gconf.cache_max_object);
    return apx_parse_duration(cmd, arg, apr_time_from_msec(1),
                              apr_time_from_sec(3600), &apx_gconf.cache_wait);
}

/* ------------------------------------------------------------------ */
/* the store                                                            */

hc_obj *apx__hc_obj_alloc(int kind)
{
    hc_obj *o = calloc(1, sizeof(*o));

    if (!o)
        return NULL;
    o->kind = kind;
    o->ce.size = sizeof(*o);
    if (kind == OBJ_PENDING && pthread_mutex_init(&o->mtx, NULL) != 0) {
        free(o);
        return NULL;
    }
    return o;
}

/* The core creates an entry on a miss: a pending object, whose expiry
 * (the core's default TTL, AsyncProxyCacheWait) bounds how long later
 * requests wait on it. */
static apx_cache_entry *create_pending(const void *key, size_t klen,
                                       void *baton)
{
    hc_obj *o = apx__hc_obj_alloc(OBJ_PENDING);

    if (!o)
        return NULL;
    /* what a fill publishes under depends on it (apx__hc_still_current) */
    o->ce.flags = APX_CACHE_E_PINNED;
    return &o->ce;
}

static void destroy_obj(apx_cache_entry *e, void *baton)
{
    hc_obj *o = OBJ(e);

    if (o->kind == OBJ_PENDING) {
        pthread_mutex_destroy(&o->mtx);
        if (o->result)
            apx_cache_unref(apx__hc_store, &o->result->ce);
        if (o->fill)
            apx__hc_fill_unref(o->fill);
    }
    if (o->body_chunk)
        apx__hc_chunk_unref(o->body_chunk);
    else if (o->body_owner)
        apx_cache_unref(apx__hc_store, &o->body_owner->ce);
    else
        free(o->body);
    free(o);
}

void apx_hc_child_init(apr_pool_t *pchild, server_rec *s)
{
    apx_cache_conf cc;
    apr_status_t rv;

    if (!apx_gconf.cache_used || !apx_gconf.cache_size || apx__hc_store)
        return;
    memset(&cc, 0, sizeof(cc));
    cc.create = create_pending;
    cc.destroy = destroy_obj;
    cc.budget = apx_gconf.cache_size;
    cc.ttl = apx_gconf.cache_wait;
    cc.buckets = 4096;
    /* Never destroyed: body buckets may release their reference while
     * the process exits; the memory goes with it. */
    rv = apx_cache_create(&apx__hc_store, &cc);
    if (rv != APR_SUCCESS) {
        apx__hc_store = NULL;
        ap_log_error(APLOG_MARK, APLOG_ERR, rv, s, APXLOGNO(00015)
                     "cannot create the response cache; responses are "
                     "proxied without it");
    }
}

void apx_hc_figures(apr_uint64_t *entries, apr_uint64_t *bytes,
                    apr_uint64_t *evictions)
{
    apx_cache_stats st;

    *entries = *bytes = *evictions = 0;
    if (!apx__hc_store)
        return;
    apx_cache_stats_get(apx__hc_store, &st);
    *entries = st.entries;
    /* held: stored, and reserved by the fills in flight */
    *bytes = st.bytes + st.reserved;
    *evictions = st.evictions;
}

static apr_status_t unref_cleanup(void *data)
{
    apx_cache_unref(apx__hc_store, data);
    return APR_SUCCESS;
}

/* Keeps o alive until r->pool goes (its strings are in r's tables). */
void apx__hc_hold_for_request(request_rec *r, hc_obj *o)
{
    apx_cache_ref(&o->ce);
    apr_pool_cleanup_register(r->pool, &o->ce, unref_cleanup,
                              apr_pool_cleanup_null);
}

void apx__hc_drop(hc_obj **po)
{
    if (*po) {
        apx_cache_unref(apx__hc_store, &(*po)->ce);
        *po = NULL;
    }
}

/* A marker under key: OBJ_PASS or OBJ_VARY. */
void apx__hc_put_marker(const char *key, apr_size_t klen, int kind,
                       const char *vary, int skip_ae, apr_uint64_t gen,
                       apr_time_t expires, apr_time_t now)
{
    apr_size_t vlen = vary ? strlen(vary) + 1 : 0;
    hc_obj *m = calloc(1, sizeof(*m) + vlen);

    if (!m)
        return;
    m->kind = kind;
    if (vary) {
        memcpy(m + 1, vary, vlen);
        m->vary = (const char *)(m + 1);
    }
    m->skip_ae = skip_ae;
    m->gen = gen;
    m->ce.size = sizeof(*m) + vlen;
    m->ce.expires = expires;
    m->ce.refs = 1;
    if (apx_cache_put(apx__hc_store, &m->ce, key, klen, now, 0) != APR_SUCCESS) {
        destroy_obj(&m->ce, NULL);
        return;
    }
    apx_cache_unref(apx__hc_store, &m->ce);
}

/* Whether the primary key still holds what this request's lookup found
 * there (a Vary marker: one of the same generation). An unsafe request's
 * invalidation, or another request's store, replaced it otherwise: what
 * this fetch read may predate the change, so it is not stored. */
int apx__hc_still_current(apx_hcache *hc)
{
    apx_cache_entry *e;
    apr_status_t err;
    int same;

    if (!hc->prim_set)
        return 0;
    /* now = 0: whatever is linked, expired or not (a slow fetch outlives
     * its pending entry's AsyncProxyCacheWait) */
    e = apx_cache_get_ref(apx__hc_store, hc->key, hc->klen, 0, APX_CACHE_LOOKUP_ONLY,
                          &err);
    if (!e)
        return !hc->prim;
    same = hc->prim
           && (e == &hc->prim->ce
               || (hc->prim->kind == OBJ_VARY && OBJ(e)->kind == OBJ_VARY
                   && OBJ(e)->gen == hc->prim->gen));
    apx_cache_unref(apx__hc_store, e);
    return same;
}

/* Notes what the primary key holds now (NULL: nothing). */
void apx__hc_snapshot_prim(apx_hcache *hc)
{
    apx_cache_entry *e;
    apr_status_t err;

    e = apx_cache_get_ref(apx__hc_store, hc->key, hc->klen, 0, APX_CACHE_LOOKUP_ONLY,
                          &err);
    hc->prim = NULL;
    hc->prim_set = 1;
    if (e) {
        apx__hc_hold_for_request(hc->r, OBJ(e));
        hc->prim = OBJ(e);
        apx_cache_unref(apx__hc_store, e);
    }
}

/* Publishes o under the key this request's variant has; 1 when stored. */
int apx__hc_publish(apx_hcache *hc, hc_obj *o, const char *vary)
{
    request_rec *r = hc->r;
    apr_time_t now = apr_time_now();
    const char *key = hc->key;
    apr_size_t klen = hc->klen;

    hc->share = !vary || !*vary;
    if (!apx__hc_still_current(hc)) {
        if (APLOGrtrace1(r))
            ap_log_rerror(APLOG_MARK, APLOG_TRACE1, 0, r, APXLOGNO(00151)
                          "response for %s not stored: the key changed "
                          "while it was fetched (invalidated)", hc->url);
        return 0;
    }
    if (vary && *vary) {
        /* With our gzip copy the fetch carried no Accept-Encoding: what
         * came back is the answer to every client's, whatever coding the
         * backend chose, so Accept-Encoding is no part of the key. */
        int skip_ae = hc->set.gzip;
        hc_obj *m = hc->prim;
        int same = m && m->kind == OBJ_VARY && m->skip_ae == skip_ae
                   && !strcmp(m->vary, vary);
        apr_uint64_t gen = same ? m->gen : apr_atomic_inc64(&last_gen) + 1;

        /* the marker outlives no variant it points to */
        if (!same || o->ce.expires > m->ce.expires)
            apx__hc_put_marker(hc->key, hc->klen, OBJ_VARY, vary, skip_ae, gen,
                       same && m->ce.expires > o->ce.expires
                       ? m->ce.expires : o->ce.expires, now);
        /* our waiters came through the same marker: the same variant */
        hc->share = same && hc->vkey;
        /* never under the primary key: it would be served to every
         * variant (apx__hc_decide() refused a malformed Vary already) */
        if (!apx__hc_make_variant_key(hc, vary, skip_ae, gen))
            return 0;
        key = hc->vkey;
        klen = hc->vklen;
    }
    /* a streamed fill's reservation becomes the object's charge */
    if (apx_cache_put_reserved(apx__hc_store, &o->ce, key, klen, now, 0,
                               hc->publish_reserved) != APR_SUCCESS) {
        ap_log_rerror(APLOG_MARK, APLOG_DEBUG, 0, r, APXLOGNO(00125)
                      "response for %s not stored (cache busy)", hc->url);
        return 0;
    }
    return 1;
}

/* The fetch will not be stored: later requests go straight through for
 * a while (not after a plain failure: the next one may succeed). */
void apx__hc_mark_pass(apx_hcache *hc)
{
    apx__hc_put_marker(hc->vkey ? hc->vkey : hc->key, hc->vkey ? hc->vklen : hc->klen,
               OBJ_PASS, NULL, 0, 0, apr_time_now() + PASS_TTL,
               apr_time_now());
}
