/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* cache.c — the response cache (AsyncProxyCache): an
 * in-memory store per child on the engine's cache core, following RFC
 * 9111's rules for a shared cache (poller/fresh.c).
 *
 * What the request path asks (cache.h; it orders the exchanges,
 * request_cached.c), by outcome:
 *   lookup   key = virtual host + Host + backend URL (+ the request's
 *            values of the fields a stored Vary names);
 *   HIT      served from memory: the body goes out by reference (a bucket
 *            holding a reference on the object), sliced and paced by the
 *            client like any proxied body; 304 for a matching conditional;
 *   WAIT     another request is fetching the key: this one *parks* on the
 *            pending object (no thread, no polling interval) and is woken
 *            when the fetch ends, then looks up again — a hit, or it goes
 *            to the backend itself when the fetch failed or was not
 *            storable; bounded by AsyncProxyCacheWait;
 *   FILL     the first miss: fetch (conditionals, Range and, when this
 *            cache compresses, Accept-Encoding are not forwarded), read the
 *            whole body into memory (up to AsyncProxyCacheMaxObject),
 *            store it once — gzip-compressed when that is smaller — wake the
 *            waiters, then serve this request from the stored object;
 *   STALE    within stale-while-revalidate: served at once; the first such
 *            request refreshes the object after its own response went out.
 *            Within stale-if-error: served when the refresh fails.
 *   PASS     a key known not to be storable (a "pass" marker, kept
 *            PASS_TTL): fetched without coalescing, stored if it has
 *            become storable;
 *   BYPASS   not cacheable at all: the plain proxy path.
 *
 * Threads: the store is shared by every thread of the child (the core's
 * rwlock; refcounts are atomic). A pending object's waiter list is guarded
 * by its mutex: the fetcher wakes the waiters under it, and a waiter,
 * resumed for whatever reason, delists itself under it before it goes on —
 * so the fetcher never touches a waiter that may be gone.
 * Invariants:
 *   - An object is never freed while a response is written from it: the
 *     request holds a reference until r->pool goes, and each body bucket
 *     holds its own.
 *   - Nothing of an object changes once it is published; a refresh
 *     publishes a new object.
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

#include "apx_cache.h"
#include "apx_fresh.h"
#include "apx_gz.h"
#include "child.h"
#include "cache.h"

APLOG_USE_MODULE(asyncproxy);
extern module AP_MODULE_DECLARE_DATA asyncproxy_module;

/* How long a key that gave an unstorable response is fetched without
 * coalescing (as Varnish's hit-for-miss): waiting on a fetch that will
 * not be shared only adds its latency to everyone's. */
#define PASS_TTL        apr_time_from_sec(10)
/* zlib level of the one compressed copy: 6 is within a few percent of 9's
 * size at a third of its time. */
#define GZIP_LEVEL      6
/* Bodies shorter than this are stored as they came. */
#define GZIP_MIN        256
/* Hits go out in slices of this, each taken by the client before the next
 * (half the core output filter's 64 KiB blocking threshold). */
#define SERVE_SLICE     (32 * 1024)
/* How long an invalidation's mark stays: a fetch in flight for longer
 * than that (the backend timeouts allow it) may still store what it read
 * before the change. The mark is a few hundred bytes, and the next fetch
 * of the key replaces it. */
#define GONE_TTL        apr_time_from_sec(120)
/* How long a stale response with a validator is kept to be revalidated
 * (a conditional request and a 304 instead of the whole body) when
 * nothing needs its memory first (LRU). */
#define KEEP_STALE      apr_time_from_sec(600)
/* Lookups per request: marker -> variant, then again after a wait. */
#define MAX_ROUNDS      4
#define VARY_KEY_MIN    256

#define HDR_LABEL       "X-AsyncProxy-Cache"

/* OBJ_GONE: what an invalidation leaves under a primary key, so a fetch
 * that began before it finds the key changed even when nothing else was
 * stored there (still_current()); a lookup takes it for a miss. */
enum { OBJ_PENDING = 1, OBJ_READY, OBJ_VARY, OBJ_PASS, OBJ_GONE };

enum {
    ROLE_HIT = 1,
    ROLE_STALE,         /* within stale-while-revalidate */
    ROLE_WAIT,
    ROLE_FILL,
    ROLE_PASS,          /* fetch, store when storable, no coalescing */
    ROLE_FETCH,         /* fetch, never store (HEAD miss, fallbacks) */
    ROLE_UNSAFE,        /* an unsafe method: proxied, and a non-error
                         * answer invalidates what is stored for it */
    ROLE_REFRESH        /* after a STALE response: fetch for the store */
};

typedef struct hc_waiter hc_waiter;
struct hc_waiter {
    apx_park *p;
    hc_waiter *next, *prev;
    int linked;
};

typedef struct hc_field {
    const char *name, *value;
} hc_field;

typedef struct hc_obj hc_obj;
struct hc_obj {
    apx_cache_entry ce;
    int kind;                       /* OBJ_* */

    /* OBJ_PENDING */
    pthread_mutex_t mtx;
    hc_waiter *waiters;
    int done;                       /* fetch ended: waiters look again */
    int stored;                     /* ... and stored something: else the
                                     * waiters go to the backend themselves */
    /* referenced: what the fetch stored, when every waiter may have it
     * (same variant): they take it without a lookup, which a response
     * that is stale at once (no-cache) would send to the backend again */
    struct hc_obj *result;
    volatile apr_uint32_t claimed;  /* one request fetches */

    /* OBJ_VARY: the field names of the variants' Vary */
    const char *vary;
    int skip_ae;                    /* Accept-Encoding is ours, not a key */
    /* in its variants' keys: a marker made anew (first store, a changed
     * Vary, after an invalidation) gets a new one, so the variants stored
     * under an earlier marker are never reached again and age out */
    apr_uint64_t gen;

    /* OBJ_READY */
    int status;
    const char *status_line;
    hc_field *fields;
    unsigned nfields;
    const char *ctype;
    const char *etag, *etag_gz;
    apr_time_t last_modified;
    apx_fresh_times ft;
    char *body;                     /* malloc()ed, or body_owner's */
    /* referenced: the object whose body this one shares (a 304 updated
     * the head of that one; always the first owner, so no chains) */
    struct hc_obj *body_owner;
    apr_size_t body_len;            /* as stored */
    apr_size_t plain_len;           /* decompressed, when gz */
    int gz;                         /* body is our gzip copy */
    volatile apr_uint32_t refreshing;
};

#define OBJ(e) APX_CONTAINER_OF((e), hc_obj, ce)

/* The cache's part of one request (r->pool). */
struct apx_hcache {
    apx_req *rq;
    request_rec *r;
    const apx_mapping *map;
    const char *hostport;           /* the backend origin */
    const char *url;                /* for log lines */
    int role;                       /* ROLE_* of the fetch under way */
    hc_obj *refreshed;              /* the STALE object this request
                                     * refreshes (held for r) */
    hc_obj *serving;                /* held for r: what is served */
    apr_size_t serve_off;           /* next body byte of serving */
    apx_gz_inflater *inflater;      /* serving's gzip copy, inflated */
    int serve_inflate;              /* ... for a client without gzip */
    apr_int64_t cap_hint;           /* the response's length, -1 */
    const char *inm, *ims;          /* the client's, while ours are in */
    apx_fresh_times ft;             /* of the response on_head() took */
    apx_cache_set set;              /* effective settings */
    const char *kpre;               /* the key up to the backend URL */
    const char *key;                /* primary key */
    apr_size_t klen;
    const char *vkey;               /* variant key, when a marker said so */
    apr_size_t vklen;
    int accept_gz;                  /* the client takes gzip */
    int strip;                      /* fetch for the store: see skip */
    int only_if_cached;             /* the request's only-if-cached */
    int unsafe;                     /* ROLE_UNSAFE */
    /* held until r->pool goes: what the last lookup found under the
     * primary key. A fetch is stored only while it is still there (or a
     * marker of the same generation): else the key was invalidated (or
     * filled by someone else) meanwhile. */
    hc_obj *prim;
    int prim_set;                   /* prim is a snapshot (NULL: empty) */
    hc_obj *reval;                  /* held: the stale object a FILL
                                     * revalidates (it has a validator) */
    int cond;                       /* the head being built carries our
                                     * conditionals */
    int share;                      /* what publish() stored suits every
                                     * request waiting on our pending */
    hc_obj *obj;                    /* referenced: what we serve */
    hc_obj *stale;                  /* referenced: stale-if-error fallback */
    hc_obj *pending;                /* referenced: filled or waited on */
    hc_waiter waiter;
    const char *reason;             /* why not stored */
    /* the body being captured */
    char *cap;
    apr_size_t cap_len, cap_size;
};

static apx_cache *store;
/* The last generation handed to a Vary marker. */
static volatile apr_uint64_t last_gen;

/* ------------------------------------------------------------------ */
/* configuration                                                        */

void apx_hc_set_init(apx_cache_set *cs)
{
    cs->on = -1;
    cs->gzip = -1;
    cs->ttl = -1;
}

void apx_hc_set_merge(apx_cache_set *to, const apx_cache_set *base,
                      const apx_cache_set *add)
{
    to->on = add->on != -1 ? add->on : base->on;
    to->gzip = add->gzip != -1 ? add->gzip : base->gzip;
    to->ttl = add->ttl != -1 ? add->ttl : base->ttl;
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

    if (!strcasecmp(name, "AsyncProxyCacheTTL")) {
        apx_cache_set *cs = scope_set(cmd, dconf);

        if (!strcasecmp(arg, "off")) {
            cs->ttl = 0;
            return NULL;
        }
        return apx_parse_duration(cmd, arg, apr_time_from_msec(1),
                                  apr_time_from_sec(365 * 86400), &cs->ttl);
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

static hc_obj *obj_alloc(int kind)
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
    hc_obj *o = obj_alloc(OBJ_PENDING);

    return o ? &o->ce : NULL;
}

static void destroy_obj(apx_cache_entry *e, void *baton)
{
    hc_obj *o = OBJ(e);

    if (o->kind == OBJ_PENDING) {
        pthread_mutex_destroy(&o->mtx);
        if (o->result)
            apx_cache_unref(store, &o->result->ce);
    }
    if (o->body_owner)
        apx_cache_unref(store, &o->body_owner->ce);
    else
        free(o->body);
    free(o);
}

void apx_hc_child_init(apr_pool_t *pchild, server_rec *s)
{
    apx_cache_conf cc;
    apr_status_t rv;

    if (!apx_gconf.cache_used || !apx_gconf.cache_size || store)
        return;
    memset(&cc, 0, sizeof(cc));
    cc.create = create_pending;
    cc.destroy = destroy_obj;
    cc.budget = apx_gconf.cache_size;
    cc.ttl = apx_gconf.cache_wait;
    cc.buckets = 4096;
    /* Never destroyed: body buckets may release their reference while
     * the process exits; the memory goes with it. */
    rv = apx_cache_create(&store, &cc);
    if (rv != APR_SUCCESS) {
        store = NULL;
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
    if (!store)
        return;
    apx_cache_stats_get(store, &st);
    *entries = st.entries;
    *bytes = st.bytes;
    *evictions = st.evictions;
}

static apr_status_t unref_cleanup(void *data)
{
    apx_cache_unref(store, data);
    return APR_SUCCESS;
}

/* Keeps o alive until r->pool goes (its strings are in r's tables). */
static void hold_for_request(request_rec *r, hc_obj *o)
{
    apx_cache_ref(&o->ce);
    apr_pool_cleanup_register(r->pool, &o->ce, unref_cleanup,
                              apr_pool_cleanup_null);
}

static void drop(hc_obj **po)
{
    if (*po) {
        apx_cache_unref(store, &(*po)->ce);
        *po = NULL;
    }
}

/* ------------------------------------------------------------------ */
/* a body bucket that holds a reference on its object                   */

typedef struct hc_bucket {
    apr_bucket_refcount refcount;
    hc_obj *o;
} hc_bucket;

static apr_status_t hcb_read(apr_bucket *b, const char **str,
                             apr_size_t *len, apr_read_type_e block)
{
    hc_bucket *h = b->data;

    *str = h->o->body + b->start;
    *len = b->length;
    return APR_SUCCESS;
}

static void hcb_destroy(void *data)
{
    hc_bucket *h = data;

    if (apr_bucket_shared_destroy(h)) {
        apx_cache_unref(store, &h->o->ce);
        apr_bucket_free(h);
    }
}

static const apr_bucket_type_t hc_bucket_type = {
    "ASYNCPROXY-CACHE", 5, APR_BUCKET_DATA,
    hcb_destroy,
    hcb_read,
    apr_bucket_setaside_noop,   /* the object outlives the bucket */
    apr_bucket_shared_split,
    apr_bucket_shared_copy
};

static apr_bucket *hcb_create(hc_obj *o, apr_size_t off, apr_size_t len,
                              apr_bucket_alloc_t *list)
{
    apr_bucket *b = apr_bucket_alloc(sizeof(*b), list);
    hc_bucket *h = apr_bucket_alloc(sizeof(*h), list);

    APR_BUCKET_INIT(b);
    b->free = apr_bucket_free;
    b->list = list;
    h->o = o;
    apx_cache_ref(&o->ce);
    b = apr_bucket_shared_make(b, h, off, len);
    b->type = &hc_bucket_type;
    return b;
}

/* ------------------------------------------------------------------ */
/* the request's part                                                   */

static void set_label(apx_hcache *hc, const char *label)
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
static int make_variant_key(apx_hcache *hc, const char *vary, int skip_ae,
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
    if (set.on != 1 || !store || !apx_ch)
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
        set_label(hc, "BYPASS");
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
        set_label(hc, "BYPASS");
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
        set_label(hc, "BYPASS");
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
    hc_obj *p = obj_alloc(OBJ_PENDING);

    if (!p)
        return ROLE_FETCH;
    p->ce.refs = 1;
    p->claimed = 1;
    if (apx_cache_put(store, &p->ce, key, klen, now, 0) != APR_SUCCESS) {
        apx_cache_unref(store, &p->ce);
        return ROLE_FETCH;
    }
    hc->pending = p;
    if (!hc->vkey) {
        /* the primary key now holds ours */
        hold_for_request(hc->r, p);
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
        e = apx_cache_get_ref(store, key, klen, now, flags, &err);
        if (!e)
            return r->header_only ? ROLE_FETCH : ROLE_PASS;
        o = OBJ(e);
        if (!hc->vkey) {
            hold_for_request(r, o);
            hc->prim = o;
        }
        switch (o->kind) {
        case OBJ_VARY:
            if (hc->vkey
                || !make_variant_key(hc, o->vary, o->skip_ae, o->gen)) {
                apx_cache_unref(store, e);
                return ROLE_FETCH;
            }
            apx_cache_unref(store, e);
            key = hc->vkey;
            klen = hc->vklen;
            continue;
        case OBJ_PASS:
            apx_cache_unref(store, e);
            return r->header_only ? ROLE_FETCH : ROLE_PASS;
        case OBJ_GONE:
            apx_cache_unref(store, e);
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
            hc->stale = o;
            return r->header_only ? ROLE_FETCH : ROLE_PASS;
        default:
            /* stale: with a validator it is revalidated (RFC 9111 4.3.1)
             * by the request that claims the key; the others wait for
             * that as for a miss */
            if (!r->header_only && (o->etag || o->last_modified)) {
                hold_for_request(r, o);
                hc->reval = o;
            }
            apx_cache_unref(store, e);
            if (r->header_only)
                return ROLE_FETCH;
            return claim_fresh_pending(hc, key, klen, now);
        }
    }
}

/* ------------------------------------------------------------------ */
/* waiting for another request's fetch                                  */

static int enlist(void *baton, apx_park *p)
{
    apx_hcache *hc = baton;
    hc_obj *o = hc->pending;
    hc_waiter *w = &hc->waiter;
    int ok;

    pthread_mutex_lock(&o->mtx);
    ok = !o->done;
    if (ok) {
        w->p = p;
        w->prev = NULL;
        w->next = o->waiters;
        if (o->waiters)
            o->waiters->prev = w;
        o->waiters = w;
        w->linked = 1;
    }
    pthread_mutex_unlock(&o->mtx);
    return ok;
}

static void delist(void *arg)
{
    apx_hcache *hc = arg;
    hc_obj *o = hc->pending;
    hc_waiter *w = &hc->waiter;

    pthread_mutex_lock(&o->mtx);
    if (w->linked) {
        if (w->prev)
            w->prev->next = w->next;
        else
            o->waiters = w->next;
        if (w->next)
            w->next->prev = w->prev;
        w->linked = 0;
    }
    pthread_mutex_unlock(&o->mtx);
}

/* The fetch of a pending object ended (stored or not): every waiter is
 * woken to look again. */
static void release_pending(apx_hcache *hc, int stored, hc_obj *result)
{
    hc_obj *o = hc->pending;
    hc_waiter *w;

    if (!o)
        return;
    apx_cache_remove(store, &o->ce);
    pthread_mutex_lock(&o->mtx);
    o->done = 1;
    o->stored = stored;
    if (stored && result && !o->result) {
        apx_cache_ref(&result->ce);
        o->result = result;
    }
    for (w = o->waiters; w; w = w->next) {
        w->linked = 0;
        if (apx_ch && apx_ch->engine)
            apx_park_wake(apx_ch->engine, w->p);
    }
    o->waiters = NULL;
    pthread_mutex_unlock(&o->mtx);
    drop(&hc->pending);
}

static apr_status_t release_pending_cleanup(void *data)
{
    release_pending(data, 0, NULL);
    return APR_SUCCESS;
}

/* Returns 1 when the fetch stored something (look again), 0 when this
 * request goes to the backend itself (the fetch failed or was not
 * storable, the wait bound passed, or it cannot park), -1 when the client
 * left or the child stops (*pev says which). */
static int wait_for_fetch(apx_hcache *hc, unsigned *pev)
{
    apx_coro *coro = hc->rq->coro;
    apx_defer *d;
    unsigned ev;
    int stored, gone;

    apr_atomic_inc32(&apx_ch->n.cache_coalesced);
    d = apx_coro_defer(coro, delist, hc);
    ev = apx_wait_wake(hc->rq, enlist, hc,
                       apr_time_now() + apx_gconf.cache_wait);
    delist(hc);
    if (d)
        apx_coro_defer_disarm(coro, d);
    *pev = ev;
    gone = (ev & (APX_EV_CLIENT_GONE | APX_EV_SHUTDOWN)) != 0;
    /* set under the mutex delist took */
    stored = hc->pending->stored;
    if (stored && hc->pending->result && !gone) {
        hc->obj = hc->pending->result;
        apx_cache_ref(&hc->obj->ce);
    }
    drop(&hc->pending);
    if (gone)
        return -1;
    if (!ev || (ev & APX_EV_TIMEOUT) || !stored)
        return 0;
    return 1;
}

/* ------------------------------------------------------------------ */
/* serving a stored object                                              */

static apr_status_t inflater_destroy(void *g)
{
    apx_gz_inflater_destroy(g);
    return APR_SUCCESS;
}

/* o is what r is served from: held until r->pool goes. */
static void set_serving(apx_hcache *hc, hc_obj *o)
{
    hold_for_request(hc->r, o);
    hc->serving = o;
    hc->serve_off = 0;
}

/* The next slice of the gzip copy, inflated, for a client that does not
 * take gzip. */
static int serve_inflated(apx_hcache *hc, apr_bucket_brigade *bb)
{
    hc_obj *o = hc->serving;
    apr_status_t rv;
    apr_size_t got;
    char *buf;

    if (!hc->inflater) {
        if (apx_gz_inflater_create(&hc->inflater, o->body, o->body_len)
            != APR_SUCCESS)
            return -1;
        /* r->pool goes only after the coroutine, so this covers every
         * exit */
        apr_pool_cleanup_register(hc->r->pool, hc->inflater,
                                  inflater_destroy, apr_pool_cleanup_null);
    }
    buf = malloc(SERVE_SLICE);
    if (!buf)
        return -1;
    rv = apx_gz_inflater_read(hc->inflater, buf, SERVE_SLICE, &got);
    if (rv != APR_SUCCESS && rv != APR_EOF) {
        free(buf);
        ap_log_rerror(APLOG_MARK, APLOG_ERR, rv, hc->r, APXLOGNO(00123)
                      "stored gzip copy of %s does not inflate", hc->url);
        return -1;
    }
    if (got)
        APR_BRIGADE_INSERT_TAIL(bb, apr_bucket_heap_create(buf, got, free,
                                                           bb->bucket_alloc));
    else
        free(buf);
    return rv == APR_EOF ? APX_HCACHE_LAST : APX_HCACHE_MORE;
}

int apx_hcache_serve_body(apx_hcache *hc, apr_bucket_brigade *bb)
{
    hc_obj *o = hc->serving;
    apr_size_t n;

    if (hc->serve_inflate)
        return serve_inflated(hc, bb);
    if (hc->serve_off >= o->body_len)
        return APX_HCACHE_LAST;
    n = o->body_len - hc->serve_off;
    if (n > SERVE_SLICE)
        n = SERVE_SLICE;
    APR_BRIGADE_INSERT_TAIL(bb, hcb_create(o, hc->serve_off, n,
                                           bb->bucket_alloc));
    hc->serve_off += n;
    return hc->serve_off < o->body_len ? APX_HCACHE_MORE : APX_HCACHE_LAST;
}

/* Puts the object being served on r (whose own head the request path took
 * off); 1 when a body follows. */
int apx_hcache_serve_head(apx_hcache *hc, const char *label)
{
    request_rec *r = hc->r;
    hc_obj *o = hc->serving;
    int gz_out = o->gz && hc->accept_gz;
    const char *etag = gz_out ? o->etag_gz : o->etag;
    const char *ims;
    apr_int64_t age;
    unsigned i;

    set_label(hc, label);
    r->status = o->status;
    r->status_line = o->status_line;
    r->content_type = NULL;
    r->content_encoding = NULL;
    for (i = 0; i < o->nfields; i++)
        apr_table_addn(r->headers_out, o->fields[i].name, o->fields[i].value);
    if (o->ctype)
        ap_set_content_type(r, o->ctype);
    if (etag)
        apr_table_setn(r->headers_out, "ETag", etag);
    if (o->gz) {
        const char *vary = apr_table_get(r->headers_out, "Vary");

        if (!vary || !ap_find_token(r->pool, vary, "Accept-Encoding"))
            apr_table_mergen(r->headers_out, "Vary", "Accept-Encoding");
    }
    if (gz_out)
        apr_table_setn(r->headers_out, "Content-Encoding", "gzip");
    age = apx_fresh_age(&o->ft, apr_time_now());
    if (age > 0 || strcmp(label, "MISS"))
        apr_table_setn(r->headers_out, "Age",
                       apr_psprintf(r->pool, "%" APR_INT64_T_FMT, age));

    /* RFC 9110 §13.1.3: an If-Modified-Since that is no HTTP-date is
     * ignored (parsed as 0) */
    ims = apr_table_get(r->headers_in, "If-Modified-Since");
    if (o->status == HTTP_OK
        && apx_fresh_not_modified(apr_table_get(r->headers_in,
                                                "If-None-Match"),
                                  ims ? apx_fresh_parse_date(ims, strlen(ims),
                                                             apr_time_now())
                                      : 0,
                                  etag, o->last_modified)) {
        apr_atomic_inc32(&apx_ch->n.cache_not_modified);
        r->status = HTTP_NOT_MODIFIED;
        r->status_line = NULL;
        return 0;
    }
    if (o->status == HTTP_NO_CONTENT || o->status == HTTP_NOT_MODIFIED)
        return 0;
    ap_set_content_length(r, (apr_off_t)(o->gz && !gz_out ? o->plain_len
                                                          : o->body_len));
    if (r->header_only)
        return 0;
    hc->serve_inflate = o->gz && !gz_out;
    return 1;
}

/* ------------------------------------------------------------------ */
/* fetching into the store                                              */

/* Where decide() reads a response's fields: first value, or all values of
 * a list field joined with ", "; NULL when absent. */
typedef const char *(*field_get_fn)(void *baton, const char *name, int list);

static const char *resp_field(void *baton, const char *name, int list)
{
    const apx_hcache_resp *rs = baton;

    return rs->field(rs->baton, name, list);
}

/* Whether a response with this status and these fields may be stored;
 * fills *t when it may. */
static int decide_fields(apx_hcache *hc, int status, field_get_fn get,
                         void *baton, apr_time_t req_time,
                         apr_time_t resp_time, apx_fresh_times *t)
{
    request_rec *r = hc->r;
    apx_fresh_req rq;
    apx_fresh_resp rs;
    apx_fresh_policy pol;
    const char *v;
    int why;

    memset(&rq, 0, sizeof(rq));
    memset(&rs, 0, sizeof(rs));
    memset(&pol, 0, sizeof(pol));
    rq.method_get = !r->header_only;
    rq.method_head = r->header_only;
    rq.authorization = apr_table_get(r->headers_in, "Authorization") != NULL;
    apx_cc_init(&rq.cc);
    if ((v = apr_table_get(r->headers_in, "Cache-Control")))
        apx_cc_parse(&rq.cc, v, strlen(v));

    rs.status = status;
    apx_cc_init(&rs.cc);
    if ((v = get(baton, "Cache-Control", 1)))
        apx_cc_parse(&rs.cc, v, strlen(v));
    /* all Expires lines joined: two of them are no HTTP-date, so the
     * response is stale (RFC 9111 §4.2.1) */
    if ((v = get(baton, "Expires", 1))) {
        rs.has_expires = 1;
        rs.expires = apx_fresh_parse_date(v, strlen(v), resp_time);
    }
    if ((v = get(baton, "Date", 0)))
        rs.date = apx_fresh_parse_date(v, strlen(v), resp_time);
    if ((v = get(baton, "Last-Modified", 0)))
        rs.last_modified = apx_fresh_parse_date(v, strlen(v), resp_time);
    rs.age = -1;
    if ((v = get(baton, "Age", 1)))
        rs.age = apx_fresh_parse_age(v, strlen(v));
    rs.has_etag = get(baton, "ETag", 0) != NULL;
    rs.set_cookie = get(baton, "Set-Cookie", 0) != NULL;
    /* Vary: *, or a list we cannot make a key of (not field names):
     * every request would be a variant of its own */
    if ((v = get(baton, "Vary", 1))
        && apx_fresh_vary_key(v, NULL, NULL, NULL, NULL, 0) == (size_t)-1)
        rs.vary_star = 1;
    if ((v = get(baton, "Pragma", 1)) && ap_find_token(r->pool, v,
                                                     "no-cache"))
        rs.pragma_no_cache = 1;
    rs.request_time = req_time;
    rs.response_time = resp_time;
    pol.default_ttl = hc->set.ttl > 0 ? hc->set.ttl : 0;
    pol.keep = KEEP_STALE;

    why = apx_fresh_storable(&rq, &rs, &pol, t);
    if (why != APX_STORE_OK)
        hc->reason = apx_fresh_reason(why);
    return why == APX_STORE_OK;
}

/* Whether the head resp may be stored; fills *t when it may. */
static int decide(apx_hcache *hc, const apx_hcache_resp *resp,
                  apr_time_t req_time, apr_time_t resp_time,
                  apx_fresh_times *t)
{
    if (!decide_fields(hc, resp->status, resp_field, (void *)resp, req_time,
                       resp_time, t))
        return 0;
    if (resp->content_length >= 0
        && (apr_uint64_t)resp->content_length
           > (apr_uint64_t)apx_gconf.cache_max_object) {
        hc->reason = "too-large";
        return 0;
    }
    return 1;
}

enum { CAP_TOO_BIG = 1 };

static int cap_append(apx_hcache *hc, apr_bucket_brigade *bb)
{
    apr_off_t len = 0;
    apr_size_t n;

    apr_brigade_length(bb, 1, &len);
    if (!len)
        return 0;
    if (hc->cap_len + (apr_size_t)len > apx_gconf.cache_max_object)
        return CAP_TOO_BIG;
    if (hc->cap_len + (apr_size_t)len > hc->cap_size) {
        apr_int64_t cl = hc->cap_hint;
        /* a known length is allocated once */
        apr_size_t size = hc->cap_size ? hc->cap_size * 2
                          : cl > 0 ? (apr_size_t)cl : 16 * 1024;
        char *nb;

        while (size < hc->cap_len + (apr_size_t)len)
            size *= 2;
        if (size > apx_gconf.cache_max_object)
            size = apx_gconf.cache_max_object;
        nb = realloc(hc->cap, size);
        if (!nb)
            return CAP_TOO_BIG;
        hc->cap = nb;
        hc->cap_size = size;
    }
    n = (apr_size_t)len;
    apr_brigade_flatten(bb, hc->cap + hc->cap_len, &n);
    hc->cap_len += n;
    apr_brigade_cleanup(bb);
    return 0;
}

static apr_status_t cap_cleanup(void *data)
{
    apx_hcache *hc = data;

    free(hc->cap);
    hc->cap = NULL;
    return APR_SUCCESS;
}

static void mark_pass(apx_hcache *hc);

int apx_hcache_capture(apx_hcache *hc, apr_bucket_brigade *bb, int last)
{
    if (cap_append(hc, bb) == CAP_TOO_BIG) {
        /* what was read stays in hc->cap, then bb */
        if (hc->role != ROLE_REFRESH) {
            hc->reason = "too-large";
            mark_pass(hc);
            release_pending(hc, 0, NULL);
            set_label(hc, "BYPASS");
        }
        return APX_HCACHE_TOO_BIG;
    }
    return last ? APX_HCACHE_LAST : APX_HCACHE_MORE;
}

apr_bucket *apx_hcache_take_captured(apx_hcache *hc, apr_bucket_alloc_t *ba)
{
    apr_bucket *b;

    if (!hc->cap_len)
        return NULL;
    b = apr_bucket_heap_create(hc->cap, hc->cap_len, free, ba);
    hc->cap = NULL;
    hc->cap_len = hc->cap_size = 0;
    return b;
}

typedef struct field_list {
    apr_array_header_t *a;
    apr_size_t bytes;
} field_list;

static void collect_field(void *baton, const char *name, const char *value)
{
    field_list *fl = baton;
    hc_field *f;

    /* kept apart (the type is set through httpd, the ETag depends on the
     * copy served), or computed on every response (Age). Everything else,
     * Content-Encoding included, is stored exactly as it came. */
    if (!strcasecmp(name, "Content-Type") || !strcasecmp(name, "ETag")
        || !strcasecmp(name, "Age"))
        return;
    f = apr_array_push(fl->a);
    f->name = name;
    f->value = value;
    fl->bytes += strlen(name) + strlen(value) + 2;
}

/* One malloc()ed block holds the object and its strings. */
static char *put_str(char **pp, const char *s)
{
    char *d = *pp;
    apr_size_t n;

    if (!s)
        return NULL;
    n = strlen(s) + 1;
    memcpy(d, s, n);
    *pp += n;
    return d;
}

/* Builds the stored object from the head resp and the body in hc->cap
 * (taken over). */
static hc_obj *build_obj(apx_hcache *hc, const apx_hcache_resp *resp,
                         const apx_fresh_times *t)
{
    request_rec *r = hc->r;
    field_list fl;
    const char *ctype = resp->field(resp->baton, "Content-Type", 0);
    const char *cenc = resp->field(resp->baton, "Content-Encoding", 0);
    const char *etag = resp->field(resp->baton, "ETag", 0);
    const char *lm = resp->field(resp->baton, "Last-Modified", 0);
    const char *status_line;
    char etag_gz[512];
    const char *etg = NULL;
    apr_size_t bytes;
    hc_obj *o;
    char *p;
    unsigned i;

    fl.a = apr_array_make(r->pool, (int)resp->nfields + 2,
                          sizeof(hc_field));
    fl.bytes = 0;
    resp->each(resp->baton, collect_field, &fl);
    collect_field(&fl, "Via", resp->via);
    status_line = resp->reason_len
                  ? apr_psprintf(r->pool, "%d %.*s", resp->status,
                                 (int)resp->reason_len, resp->reason)
                  : NULL;
    bytes = sizeof(*o) + fl.a->nelts * sizeof(hc_field) + fl.bytes
            + (ctype ? strlen(ctype) + 1 : 0) + (etag ? strlen(etag) + 1 : 0)
            + (status_line ? strlen(status_line) + 1 : 0)
            + sizeof(etag_gz);
    o = calloc(1, bytes);
    if (!o)
        return NULL;
    o->kind = OBJ_READY;
    o->fields = (hc_field *)(o + 1);
    p = (char *)(o->fields + fl.a->nelts);
    for (i = 0; i < (unsigned)fl.a->nelts; i++) {
        hc_field *f = &APR_ARRAY_IDX(fl.a, i, hc_field);

        o->fields[i].name = put_str(&p, f->name);
        o->fields[i].value = put_str(&p, f->value);
    }
    o->nfields = (unsigned)fl.a->nelts;
    o->ctype = put_str(&p, ctype);
    o->etag = put_str(&p, etag);
    o->status_line = put_str(&p, status_line);
    o->status = resp->status;
    o->last_modified = lm ? apx_fresh_parse_date(lm, strlen(lm),
                                                 apr_time_now()) : 0;
    o->ft = *t;

    o->body = hc->cap;
    o->body_len = o->plain_len = hc->cap_len;
    hc->cap = NULL;
    hc->cap_len = hc->cap_size = 0;
    if (hc->set.gzip && !cenc && o->body_len >= GZIP_MIN
        && apx_gz_type_is_compressible(ctype)) {
        void *z;
        size_t zlen;

        if (apx_gz_compress(o->body, o->body_len, GZIP_LEVEL, &z, &zlen)
            == APR_SUCCESS) {
            free(o->body);
            o->body = z;
            o->body_len = zlen;
            o->gz = 1;
            if (etag && apx_gz_etag(etag, etag_gz, sizeof(etag_gz))
                        != (size_t)-1)
                etg = etag_gz;
        }
    }
    o->etag_gz = put_str(&p, etg);
    o->ce.size = bytes + o->body_len;
    o->ce.expires = apx_fresh_keep_until(t);
    o->ce.refs = 1;
    return o;
}

/* A marker under key: OBJ_PASS or OBJ_VARY. */
static void put_marker(const char *key, apr_size_t klen, int kind,
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
    if (apx_cache_put(store, &m->ce, key, klen, now, 0) != APR_SUCCESS) {
        destroy_obj(&m->ce, NULL);
        return;
    }
    apx_cache_unref(store, &m->ce);
}

/* Whether the primary key still holds what this request's lookup found
 * there (a Vary marker: one of the same generation). An unsafe request's
 * invalidation, or another request's store, replaced it otherwise: what
 * this fetch read may predate the change, so it is not stored. */
static int still_current(apx_hcache *hc)
{
    apx_cache_entry *e;
    apr_status_t err;
    int same;

    if (!hc->prim_set)
        return 0;
    /* now = 0: whatever is linked, expired or not (a slow fetch outlives
     * its pending entry's AsyncProxyCacheWait) */
    e = apx_cache_get_ref(store, hc->key, hc->klen, 0, APX_CACHE_LOOKUP_ONLY,
                          &err);
    if (!e)
        return !hc->prim;
    same = hc->prim
           && (e == &hc->prim->ce
               || (hc->prim->kind == OBJ_VARY && OBJ(e)->kind == OBJ_VARY
                   && OBJ(e)->gen == hc->prim->gen));
    apx_cache_unref(store, e);
    return same;
}

/* Notes what the primary key holds now (NULL: nothing). */
static void snapshot_prim(apx_hcache *hc)
{
    apx_cache_entry *e;
    apr_status_t err;

    e = apx_cache_get_ref(store, hc->key, hc->klen, 0, APX_CACHE_LOOKUP_ONLY,
                          &err);
    hc->prim = NULL;
    hc->prim_set = 1;
    if (e) {
        hold_for_request(hc->r, OBJ(e));
        hc->prim = OBJ(e);
        apx_cache_unref(store, e);
    }
}

/* Publishes o under the key this request's variant has; 1 when stored. */
static int publish(apx_hcache *hc, hc_obj *o, const char *vary)
{
    request_rec *r = hc->r;
    apr_time_t now = apr_time_now();
    const char *key = hc->key;
    apr_size_t klen = hc->klen;

    hc->share = !vary || !*vary;
    if (!still_current(hc)) {
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
            put_marker(hc->key, hc->klen, OBJ_VARY, vary, skip_ae, gen,
                       same && m->ce.expires > o->ce.expires
                       ? m->ce.expires : o->ce.expires, now);
        /* our waiters came through the same marker: the same variant */
        hc->share = same && hc->vkey;
        /* never under the primary key: it would be served to every
         * variant (decide() refused a malformed Vary already) */
        if (!make_variant_key(hc, vary, skip_ae, gen))
            return 0;
        key = hc->vkey;
        klen = hc->vklen;
    }
    if (apx_cache_put(store, &o->ce, key, klen, now, 0) != APR_SUCCESS) {
        ap_log_rerror(APLOG_MARK, APLOG_DEBUG, 0, r, APXLOGNO(00125)
                      "response for %s not stored (cache busy)", hc->url);
        return 0;
    }
    return 1;
}

/* The fetch will not be stored: later requests go straight through for
 * a while (not after a plain failure: the next one may succeed). */
static void mark_pass(apx_hcache *hc)
{
    put_marker(hc->vkey ? hc->vkey : hc->key, hc->vkey ? hc->vklen : hc->klen,
               OBJ_PASS, NULL, 0, 0, apr_time_now() + PASS_TTL,
               apr_time_now());
}

/* A usable stale object when the backend failed (stale-if-error). */
static int stale_usable(apx_hcache *hc)
{
    int st;

    if (!hc->stale)
        return 0;
    st = apx_fresh_state(&hc->stale->ft, apr_time_now());
    return st == APX_STALE_REVALIDATE || st == APX_STALE_IF_ERROR
           || st == APX_FRESH;
}

/* ------------------------------------------------------------------ */
/* revalidation (RFC 9111 section 4.3)                                  */

/* For a revalidation of hc->reval, the cache's conditionals in place of
 * the client's (which serve_head() answers later, from the outcome). Each
 * validator the object has goes: the entity-tag, and the Last-Modified
 * date (4.3.1). */
int apx_hcache_conditionals(apx_hcache *hc, int on)
{
    request_rec *r = hc->r;
    hc_obj *old = hc->reval;

    if (!old)
        return 0;
    if (on) {
        hc->inm = apr_table_get(r->headers_in, "If-None-Match");
        hc->ims = apr_table_get(r->headers_in, "If-Modified-Since");
        apr_table_unset(r->headers_in, "If-None-Match");
        apr_table_unset(r->headers_in, "If-Modified-Since");
        if (old->etag)
            apr_table_setn(r->headers_in, "If-None-Match", old->etag);
        if (old->last_modified) {
            char *d = apr_palloc(r->pool, APR_RFC822_DATE_LEN);

            apr_rfc822_date(d, old->last_modified);
            apr_table_setn(r->headers_in, "If-Modified-Since", d);
        }
        hc->cond = 1;
        return 1;
    }
    hc->cond = 0;
    apr_table_unset(r->headers_in, "If-None-Match");
    apr_table_unset(r->headers_in, "If-Modified-Since");
    if (hc->inm)
        apr_table_setn(r->headers_in, "If-None-Match", hc->inm);
    if (hc->ims)
        apr_table_setn(r->headers_in, "If-Modified-Since", hc->ims);
    return 1;
}

/* Fields a 304 does not replace in the stored response (RFC 9111 3.2):
 * the ones describing the stored body as we keep it (its length, coding,
 * type, the entity-tag our gzip copy's is made from), and those computed
 * on every response. */
static int keeps_stored(const char *name)
{
    static const char *const kept[] = {
        "Content-Length", "Content-Encoding", "Content-Type", "ETag",
        "Content-Range", "Age", "Via", "Transfer-Encoding", NULL
    };
    int i;

    for (i = 0; kept[i]; i++)
        if (!strcasecmp(name, kept[i]))
            return 1;
    return 0;
}

typedef struct merged_head {
    apr_array_header_t *a;          /* hc_field */
    apr_size_t bytes;               /* of the names and values */
    const hc_obj *old;
    apr_pool_t *p;
} merged_head;

static void collect_304(void *baton, const char *name, const char *value)
{
    merged_head *mh = baton;
    hc_field *f;

    if (keeps_stored(name))
        return;
    f = apr_array_push(mh->a);
    f->name = name;
    f->value = value;
}

/* decide()'s view of the merged head (ETag and Content-Type are kept
 * apart in the object). */
static const char *merged_field(void *baton, const char *name, int list)
{
    merged_head *mh = baton;
    const char *all = NULL;
    int i;

    if (!strcasecmp(name, "ETag"))
        return mh->old->etag;
    if (!strcasecmp(name, "Content-Type"))
        return mh->old->ctype;
    for (i = 0; i < mh->a->nelts; i++) {
        const hc_field *f = &APR_ARRAY_IDX(mh->a, i, hc_field);

        if (strcasecmp(f->name, name))
            continue;
        if (!list)
            return f->value;
        all = all ? apr_pstrcat(mh->p, all, ", ", f->value, NULL) : f->value;
    }
    return all;
}

/* The stored head of old updated with the 304's fields (4.3.4): each
 * field the 304 carries replaces all of old's of that name. */
static void merge_head(apx_hcache *hc, const hc_obj *old,
                       const apx_hcache_resp *resp, merged_head *mh)
{
    apr_array_header_t *fresh = apr_array_make(hc->r->pool, 16,
                                               sizeof(hc_field));
    merged_head m304;
    unsigned i;
    int j;

    m304.a = fresh;
    resp->each(resp->baton, collect_304, &m304);
    mh->a = apr_array_make(hc->r->pool, (int)old->nfields + fresh->nelts,
                           sizeof(hc_field));
    mh->old = old;
    mh->p = hc->r->pool;
    mh->bytes = 0;
    for (i = 0; i < old->nfields; i++) {
        int replaced = 0;

        for (j = 0; j < fresh->nelts && !replaced; j++)
            replaced = !strcasecmp(old->fields[i].name,
                                   APR_ARRAY_IDX(fresh, j, hc_field).name);
        if (!replaced)
            *(hc_field *)apr_array_push(mh->a) = old->fields[i];
    }
    for (j = 0; j < fresh->nelts; j++)
        *(hc_field *)apr_array_push(mh->a) = APR_ARRAY_IDX(fresh, j,
                                                           hc_field);
    for (j = 0; j < mh->a->nelts; j++) {
        const hc_field *f = &APR_ARRAY_IDX(mh->a, j, hc_field);

        mh->bytes += strlen(f->name) + strlen(f->value) + 2;
    }
}

/* A new object: old's status, body (shared, not copied) and coding with
 * the merged head and new freshness. */
static hc_obj *build_updated(apx_hcache *hc, const hc_obj *old,
                             const merged_head *mh, const apx_fresh_times *t)
{
    const char *lm = merged_field((void *)mh, "Last-Modified", 0);
    apr_size_t bytes;
    hc_obj *o, *owner;
    char *p;
    int i;

    bytes = sizeof(*o) + mh->a->nelts * sizeof(hc_field) + mh->bytes
            + (old->ctype ? strlen(old->ctype) + 1 : 0)
            + (old->etag ? strlen(old->etag) + 1 : 0)
            + (old->etag_gz ? strlen(old->etag_gz) + 1 : 0)
            + (old->status_line ? strlen(old->status_line) + 1 : 0);
    o = calloc(1, bytes);
    if (!o)
        return NULL;
    o->kind = OBJ_READY;
    o->fields = (hc_field *)(o + 1);
    p = (char *)(o->fields + mh->a->nelts);
    for (i = 0; i < mh->a->nelts; i++) {
        const hc_field *f = &APR_ARRAY_IDX(mh->a, i, hc_field);

        o->fields[i].name = put_str(&p, f->name);
        o->fields[i].value = put_str(&p, f->value);
    }
    o->nfields = (unsigned)mh->a->nelts;
    o->ctype = put_str(&p, old->ctype);
    o->etag = put_str(&p, old->etag);
    o->etag_gz = put_str(&p, old->etag_gz);
    o->status_line = put_str(&p, old->status_line);
    o->status = old->status;
    o->last_modified = lm ? apx_fresh_parse_date(lm, strlen(lm),
                                                 apr_time_now()) : 0;
    o->ft = *t;
    owner = old->body_owner ? old->body_owner : (hc_obj *)old;
    apx_cache_ref(&owner->ce);
    o->body_owner = owner;
    o->body = owner->body;
    o->body_len = old->body_len;
    o->plain_len = old->plain_len;
    o->gz = old->gz;
    /* the body counts here: the entry that held it is no longer linked
     * once this one replaces it */
    o->ce.size = bytes + o->body_len;
    o->ce.expires = apx_fresh_keep_until(t);
    o->ce.refs = 1;
    return o;
}

/* After NOT_MODIFIED (the 304's empty body read): the updated object, or
 * 0 when the 304 names another representation than the stored one (4.3.4:
 * it then updates nothing, and the request path asks again without
 * conditionals). */
int apx_hcache_revalidated(apx_hcache *hc, const apx_hcache_resp *resp,
                           apr_time_t req_time)
{
    hc_obj *old = hc->reval, *o;
    const char *etag = resp->field(resp->baton, "ETag", 0);
    merged_head mh;
    apx_fresh_times t;
    int ok, stored = 0;

    if (etag && (!old->etag || !apx_fresh_not_modified(etag, 0, old->etag,
                                                        0))) {
        hc->reval = NULL;
        return 0;
    }
    merge_head(hc, old, resp, &mh);
    ok = decide_fields(hc, old->status, merged_field, &mh, req_time,
                       apr_time_now(), &t);
    if (!ok) {
        /* still good for this request, which it validated: served once,
         * as fresh as it is now */
        memset(&t, 0, sizeof(t));
        t.response_time = apr_time_now();
    }
    o = build_updated(hc, old, &mh, &t);
    if (!o) {
        hc->reval = NULL;
        return 0;
    }
    if (ok)
        stored = publish(hc, o, merged_field(&mh, "Vary", 1));
    if (hc->role != ROLE_REFRESH) {
        release_pending(hc, stored, stored && hc->share ? o : NULL);
        set_serving(hc, o);
    }
    apx_cache_unref(store, &o->ce);
    return 1;
}

/* The stale object goes out instead of the backend's failure. */
static int stale_instead(apx_hcache *hc)
{
    hc->reason = "stale-if-error";
    set_serving(hc, hc->stale);
    return APX_HCACHE_STALE_ON_ERROR;
}

static int start_capture(apx_hcache *hc, const apx_hcache_resp *resp)
{
    hc->cap_hint = resp->content_length;
    apr_pool_cleanup_register(hc->r->pool, hc, cap_cleanup,
                              apr_pool_cleanup_null);
    return APX_HCACHE_STORE;
}

int apx_hcache_on_head(apx_hcache *hc, const apx_hcache_resp *resp,
                       apr_time_t req_time)
{
    if (hc->reval && resp->status == HTTP_NOT_MODIFIED)
        return APX_HCACHE_NOT_MODIFIED;
    if (hc->role == ROLE_REFRESH)
        return decide(hc, resp, req_time, apr_time_now(), &hc->ft)
               ? start_capture(hc, resp) : APX_HCACHE_PASS;
    if (resp->status >= 500 && stale_usable(hc)) {
        release_pending(hc, 0, NULL);
        return stale_instead(hc);
    }
    if (hc->role == ROLE_FETCH
        || !decide(hc, resp, req_time, apr_time_now(), &hc->ft)) {
        if (hc->role != ROLE_FETCH && hc->reason)
            mark_pass(hc);
        release_pending(hc, 0, NULL);
        set_label(hc, hc->role == ROLE_FETCH && !hc->reason ? "MISS"
                                                           : "BYPASS");
        return APX_HCACHE_PASS;
    }
    /* storable: the whole body first, then one object for everyone */
    return start_capture(hc, resp);
}

int apx_hcache_failed(apx_hcache *hc, int status)
{
    release_pending(hc, 0, NULL);
    if (status >= 500 && stale_usable(hc))
        return stale_instead(hc);
    set_label(hc, hc->role == ROLE_FETCH ? "BYPASS" : "MISS");
    return APX_HCACHE_PASS;
}

void apx_hcache_abandon(apx_hcache *hc)
{
    release_pending(hc, 0, NULL);
}

int apx_hcache_store(apx_hcache *hc, const apx_hcache_resp *resp)
{
    hc_obj *o = build_obj(hc, resp, &hc->ft);
    int stored;

    if (!o) {
        if (hc->role != ROLE_REFRESH) {
            release_pending(hc, 0, NULL);
            hc->reason = "out-of-memory";
            set_label(hc, "BYPASS");
        }
        return 0;
    }
    stored = publish(hc, o, resp->field(resp->baton, "Vary", 1));
    if (hc->role != ROLE_REFRESH) {
        release_pending(hc, stored, hc->share ? o : NULL);
        set_serving(hc, o);
    }
    apx_cache_unref(store, &o->ce);
    return 1;
}

/* After a stale response went out whole, the request that claimed the
 * object fetches a new copy for the store; nothing of it reaches the
 * client. */
int apx_hcache_refresh_begin(apx_hcache *hc)
{
    hc_obj *old = hc->refreshed;

    if (!old)
        return 0;
    hc->role = ROLE_REFRESH;
    hc->strip = 1;
    hc->reason = NULL;
    hc->reval = old->etag || old->last_modified ? old : NULL;
    return 1;
}

void apx_hcache_refresh_end(apx_hcache *hc)
{
    if (hc->refreshed)
        apr_atomic_set32(&hc->refreshed->refreshing, 0);
    hc->refreshed = NULL;
}

/* ------------------------------------------------------------------ */
/* invalidation (RFC 9111 section 4.4)                                  */

/* An authority without the scheme's default port, for comparing. */
static const char *bare_authority(apr_pool_t *p, const char *hostinfo,
                                  const char *scheme)
{
    const char *dflt = !strcasecmp(scheme, "https") ? ":443" : ":80";
    apr_size_t n = strlen(hostinfo), d = strlen(dflt);

    if (n > d && !strcmp(hostinfo + n - d, dflt))
        return apr_pstrmemdup(p, hostinfo, n - d);
    return hostinfo;
}

static int same_authority(apr_pool_t *p, const char *a, const char *b,
                          const char *scheme)
{
    return a && b && !strcasecmp(bare_authority(p, a, scheme),
                                 bare_authority(p, b, scheme));
}

/* A path of this server under this request's mapping -> the backend
 * target a GET for it is fetched with (as apx_map_target() makes it), or
 * NULL when it lies outside the mapping. A longer mapping that would
 * take the path instead is not looked for: its entries stay. */
static const char *client_path_target(apx_hcache *hc, const char *path,
                                      const char *query)
{
    const apx_mapping *m = hc->map;
    const char *rest;
    apr_size_t blen = strlen(m->base);

    if (strncmp(path, m->path, m->path_len)
        || !(m->path_len == 0 || m->path[m->path_len - 1] == '/'
             || path[m->path_len] == '\0' || path[m->path_len] == '/'))
        return NULL;
    rest = path + m->path_len;
    if (blen && m->base[blen - 1] == '/' && *rest == '/')
        rest++;
    return apr_pstrcat(hc->r->pool, m->base, rest, query ? "?" : "", query,
                       NULL);
}

/* The backend target that a Location or Content-Location value names when
 * it is of this request's origin (RFC 9111 section 4.4: never another
 * host), or NULL. The value is the backend's, before
 * AsyncProxyPassReverse: an absolute URL of the backend names a backend
 * target; one of the client's Host, or a reference relative to the
 * client's URL (as the client resolves it), a path of this server. */
static const char *same_origin_target(apx_hcache *hc, const char *value)
{
    request_rec *r = hc->r;
    apr_pool_t *p = r->pool;
    const char *scheme = ap_http_scheme(r);
    const char *host = apr_table_get(r->headers_in, "Host");
    char *v, *query, *frag, *path;
    apr_uri_t u;

    if (!value || !*value)
        return NULL;
    v = apr_pstrdup(p, value);
    if ((frag = strchr(v, '#')))
        *frag = '\0';
    if (strstr(v, "://") || (v[0] == '/' && v[1] == '/')) {
        if (apr_uri_parse(p, v, &u) != APR_SUCCESS || !u.hostinfo)
            return NULL;
        path = u.path && *u.path ? u.path : "/";
        if (u.scheme && !strcasecmp(u.scheme, "http")
            && same_authority(p, u.hostinfo, hc->hostport, "http"))
            return apr_pstrcat(p, path, u.query ? "?" : "", u.query, NULL);
        if ((u.scheme && strcasecmp(u.scheme, scheme))
            || !same_authority(p, u.hostinfo, host, scheme))
            return NULL;
        return client_path_target(hc, path, u.query);
    }
    if ((query = strchr(v, '?')))
        *query++ = '\0';
    if (*v == '/') {
        path = v;
    }
    else {
        /* relative to the client's path: its directory, or itself for a
         * bare "?query" */
        const char *end, *cur = r->parsed_uri.path ? r->parsed_uri.path : "/";

        if (!*v) {
            path = apr_pstrdup(p, cur);
        }
        else {
            end = strrchr(cur, '/');
            path = apr_pstrcat(p, apr_pstrmemdup(p, cur, end ? (apr_size_t)
                                                 (end - cur) + 1 : 0),
                               v, NULL);
        }
    }
    /* no dot-segment removal: such a reference is left alone */
    if (strstr(path, "/./") || strstr(path, "/../") || *path != '/'
        || (strlen(path) >= 2 && !strcmp(path + strlen(path) - 2, "/."))
        || (strlen(path) >= 3 && !strcmp(path + strlen(path) - 3, "/..")))
        return NULL;
    return client_path_target(hc, path, query);
}

/* Replaces what a primary key holds by an invalidation's mark; 1 when it
 * held something. */
static int forget(const char *key, apr_size_t klen)
{
    apr_time_t now = apr_time_now();
    int had = apx_cache_invalidate(store, key, klen);

    put_marker(key, klen, OBJ_GONE, NULL, 0, 0, now + GONE_TTL, now);
    return had;
}

/* A non-error answer to an unsafe method: what is stored for the target
 * and for a same-origin Location / Content-Location goes, every Vary
 * variant with it (they hang off the primary key's marker). A fetch of
 * one of them still in flight is not stored (still_current()). */
void apx_hcache_invalidate(apx_hcache *hc, const apx_hcache_resp *resp)
{
    static const char *const fields[] = { "Location", "Content-Location",
                                          NULL };
    request_rec *r = hc->r;
    int i, n;

    n = forget(hc->key, hc->klen);
    for (i = 0; fields[i]; i++) {
        const char *t = same_origin_target(hc, resp->field(resp->baton,
                                                           fields[i], 0));
        const char *k;

        if (!t)
            continue;
        k = apr_pstrcat(r->pool, hc->kpre, hc->hostport, t, NULL);
        if (strcmp(k, hc->key))
            n += forget(k, strlen(k));
    }
    apr_table_setn(r->notes, "asyncproxy-cache-invalidated",
                   apr_itoa(r->pool, n));
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
        if (hc->obj) {
            /* the fetch we waited for left what it stored for us */
            role = ROLE_HIT;
            break;
        }
        if (rc == 0) {
            /* the fetch we waited for is over (or still running): what
             * we fetch is stored if the key holds then what it holds now */
            snapshot_prim(hc);
            role = ROLE_PASS;
            break;
        }
        role = ROLE_FETCH;
    }
    if (hc->only_if_cached && role != ROLE_HIT && role != ROLE_STALE) {
        /* RFC 9111 section 5.2.1.7: a stored response or 504 */
        release_pending(hc, 0, NULL);
        drop(&hc->stale);
        hc->reason = "only-if-cached";
        set_label(hc, "BYPASS");
        return APX_HCACHE_ONLY_IF_CACHED;
    }
    if (hc->stale) {
        /* the stale-if-error fallback lives as long as r */
        hc_obj *o = hc->stale;

        hold_for_request(hc->r, o);
        apx_cache_unref(store, &o->ce);
    }
    switch (role) {
    case ROLE_HIT:
        set_serving(hc, hc->obj);
        drop(&hc->obj);
        return APX_HCACHE_HIT;
    case ROLE_STALE:
        if (apr_atomic_cas32(&hc->obj->refreshing, 1, 0) == 0)
            hc->refreshed = hc->obj;
        hc->reason = "stale-while-revalidate";
        set_serving(hc, hc->obj);
        drop(&hc->obj);
        return APX_HCACHE_STALE;
    default:
        hc->role = role;
        hc->strip = role == ROLE_FILL || role == ROLE_PASS;
        return APX_HCACHE_FETCH;
    }
}
