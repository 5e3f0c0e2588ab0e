/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* cache.h — the response cache (AsyncProxyCache) as a layer under the
 * request path: its configuration, per-child store and figures, and the
 * few questions the request path asks it for one request. The request
 * path orders every exchange (request_cached.c); the cache answers and
 * owns the store, the keys, the objects and the coalescing. It never calls
 * the request path: what it needs of a response comes in an
 * apx_hcache_resp, what it decides goes back as a result value.
 *
 *   before    apx_hcache_create(), apx_hcache_lookup(): HIT / STALE (serve
 *             the object it holds), FETCH (with apx_hcache_skip_request_field()
 *             and apx_hcache_conditionals() shaping the request head),
 *             UNSAFE, or a wait for another request's fetch inside lookup;
 *   on head   apx_hcache_on_head(): STORE / PASS / NOT_MODIFIED /
 *             STALE_ON_ERROR; apx_hcache_failed() when there was no head;
 *   body      apx_hcache_stream_begin(), then apx_hcache_stream_append()
 *             per read of a STORE (the readers of the fill are served by
 *             apx_hcache_stream_body()); apx_hcache_capture() per read of
 *             a background refresh;
 *   after     apx_hcache_store() or apx_hcache_revalidated(), then
 *             apx_hcache_serve_head() / apx_hcache_serve_body() send what
 *             the cache holds for this request.
 *
 * Threads: directives in pconf; child_init once; figures from any thread;
 * apx_hcache_*() inside the request's coroutine, on the thread that owns
 * the request (the store itself is shared by all threads of the child).
 */
#ifndef APX_HTTPD_CACHE_H
#define APX_HTTPD_CACHE_H

#include "conf.h"
#include "drive.h"
#include "map.h"

const char *apx_hc_cmd_flag(cmd_parms *cmd, void *dconf, int on);
const char *apx_hc_cmd_take1(cmd_parms *cmd, void *dconf, const char *arg);
void apx_hc_set_init(apx_cache_set *cs);
void apx_hc_set_merge(apx_cache_set *to, const apx_cache_set *base,
                      const apx_cache_set *add);
void apx_hc_child_init(apr_pool_t *pchild, server_rec *s);
/* For the status page: entries, bytes, evictions of this child's cache. */
void apx_hc_figures(apr_uint64_t *entries, apr_uint64_t *bytes,
                    apr_uint64_t *evictions);

/* The cache's part of one request (r->pool). */
typedef struct apx_hcache apx_hcache;

/* What the cache needs to know of a request before it decides. */
typedef struct apx_hcache_req {
    apx_req *rq;
    const apx_mapping *map;
    const char *hostport;           /* the backend origin, "host:port" */
    const char *target;             /* origin-form target sent to it */
    const char *url;                /* for log lines */
    const char *xfh, *xfp;          /* the X-Forwarded-Host / -Proto sent */
    int body_empty;                 /* Content-Length: 0 */
    int body_left;                  /* a request body still to be sent */
    int drop_empty_body;            /* out: send as a GET without a body */
} apx_hcache_req;

/* A backend response head as the cache reads it (the request path's
 * accessors; all strings in r->pool). */
typedef struct apx_hcache_resp {
    int status;
    const char *reason;
    apr_size_t reason_len;
    apr_int64_t content_length;     /* -1: unknown */
    unsigned nfields;
    void *baton;
    /* the first value of a field, or all values of a list field joined
     * with ", "; NULL when absent */
    const char *(*field)(void *baton, const char *name, int list);
    /* each field as forwarded to the client (no hop-by-hop, framing or
     * Via; Location & co. mapped back) */
    void (*each)(void *baton, void (*fn)(void *fb, const char *name,
                                         const char *value), void *fb);
    const char *via;                /* the Via sent to the client */
} apx_hcache_resp;

/* NULL when r is not cached (sets the BYPASS label for a cache-enabled
 * scope the request cannot use). */
apx_hcache *apx_hcache_create(request_rec *r, apx_hcache_req *in);

enum {
    APX_HCACHE_HIT = 1,     /* serve what the cache holds */
    APX_HCACHE_STALE,       /* serve it, then refresh if apx_hcache_refresh_
                             * begin() says so */
    APX_HCACHE_FETCH,       /* fetch (maybe a revalidation) */
    APX_HCACHE_UNSAFE,      /* proxy; invalidate on a non-error head */
    APX_HCACHE_GONE,        /* a wait was interrupted: *ev says why */
    APX_HCACHE_ONLY_IF_CACHED,  /* answer 504 */
    /* apx_hcache_on_head() */
    APX_HCACHE_STORE,       /* capture the whole body, then store */
    APX_HCACHE_PASS,        /* relay, nothing is stored */
    APX_HCACHE_NOT_MODIFIED,    /* our revalidation's 304: read its (empty)
                                 * body, then apx_hcache_revalidated() */
    APX_HCACHE_STALE_ON_ERROR,  /* serve the stale object instead */
    /* apx_hcache_capture(), apx_hcache_serve_body() */
    APX_HCACHE_MORE,
    APX_HCACHE_LAST,
    APX_HCACHE_TOO_BIG,
    /* apx_hcache_lookup(): serve another request's streamed fill as it
     * arrives (apx_hcache_serve_head(), then apx_hcache_stream_body()) */
    APX_HCACHE_STREAM,
    /* apx_hcache_stream_body(): nothing new yet */
    APX_HCACHE_WAIT
};

/* Looks up r, waiting (parked, bounded by AsyncProxyCacheWait) while
 * another request fetches the same key. */
int apx_hcache_lookup(apx_hcache *hc, unsigned *ev);
/* Request fields the backend must not see for this fetch (a fetch meant
 * for the cache asks for the whole, identity-coded representation). */
int apx_hcache_skip_request_field(const apx_hcache *hc, const char *name);
/* on = 1 before the request head is built: when this fetch revalidates a
 * stored object, puts the cache's conditionals in place of the client's in
 * r->headers_in and returns 1; on = 0 afterwards puts the client's back. */
int apx_hcache_conditionals(apx_hcache *hc, int on);
/* The final response head of a fetch (req_time: when it was sent). */
int apx_hcache_on_head(apx_hcache *hc, const apx_hcache_resp *resp,
                       apr_time_t req_time);
/* The exchange failed before a head (status: the error status, or 0):
 * APX_HCACHE_STALE_ON_ERROR or APX_HCACHE_PASS. */
int apx_hcache_failed(apx_hcache *hc, int status);
/* The fetch ends without anything for the store (requests waiting on it
 * fetch for themselves). */
void apx_hcache_abandon(apx_hcache *hc);
/* A background refresh's body, read by read (bb is emptied):
 * APX_HCACHE_MORE, APX_HCACHE_LAST (last = 1 taken), or APX_HCACHE_TOO_BIG
 * (nothing is stored). A request's own fetch streams instead. */
int apx_hcache_capture(apx_hcache *hc, apr_bucket_brigade *bb, int last);
/* The captured body and resp become the object this request serves; 1,
 * or 0 when out of memory (then the captured body goes out as it is). */
int apx_hcache_store(apx_hcache *hc, const apx_hcache_resp *resp);
/* After NOT_MODIFIED: 1 when the stored object was updated (served as
 * REVALIDATED), 0 when the 304 is not for it (fetch again, without
 * conditionals). */
int apx_hcache_revalidated(apx_hcache *hc, const apx_hcache_resp *resp,
                           apr_time_t req_time);
/* A non-error answer to an unsafe method: what is stored for its target
 * and a same-origin Location / Content-Location goes. */
void apx_hcache_invalidate(apx_hcache *hc, const apx_hcache_resp *resp);
/* Serving what the cache chose (label: X-AsyncProxy-Cache): the head
 * onto r, returns 1 when a body follows; then the body slice by slice into
 * bb (APX_HCACHE_MORE, APX_HCACHE_LAST, or -1: cannot be read, 500). */
int apx_hcache_serve_head(apx_hcache *hc, const char *label);
int apx_hcache_serve_body(apx_hcache *hc, apr_bucket_brigade *bb);
/* Streamed fills (cache_stream.c). After on_head() said STORE: 1 when
 * the body is streamed into the store (this request then sends its client
 * the head with apx_hcache_serve_head() and the body with
 * apx_hcache_stream_body() as it comes), 0 when it is not stored (over the
 * budget, out of memory): relay it as a PASS. */
int apx_hcache_stream_begin(apx_hcache *hc, const apx_hcache_resp *resp);
/* The fetcher: what a backend read put in bb (emptied) joins the fill;
 * last = 1 ends it (and publishes the object when it still stores).
 * Returns 1 while the fill stores, 0 once it stopped (too large, over the
 * budget): the readers attached still get every byte. */
int apx_hcache_stream_append(apx_hcache *hc, apr_bucket_brigade *bb,
                             int last, const apx_hcache_resp *resp);
/* Whether this request's client waits for the stored gzip copy rather
 * than reading the fill (f NULL: the request's own fill). */
struct hc_fill;
int apx_hcache_stream_wants_gzip(const apx_hcache *hc, const struct hc_fill *f);
/* The fetcher, after the fill ended: the object it built (stored or not)
 * becomes what this request serves; 0 when there is none. */
int apx_hcache_stream_serve_built(apx_hcache *hc);
/* The fetcher's backend failed: every reader's response is cut, nothing
 * is stored. Returns how many other requests were reading it. */
unsigned apx_hcache_stream_fail(apx_hcache *hc);
/* The fetcher, once the fill stopped storing: bytes its own client has
 * still to take; and 1 when no other request reads the fill any more (the
 * fetcher may then leave it and relay the rest plainly: the fill is let
 * go). */
apr_size_t apx_hcache_stream_lag(apx_hcache *hc);
int apx_hcache_stream_leave_if_alone(apx_hcache *hc);
/* The fetcher, once the fill stopped storing: waits (parked) while the
 * slowest reader is more than a window behind. Returns 0 when it did not
 * wait, else the wait's APX_EV_* bits. */
unsigned apx_hcache_stream_throttle(apx_hcache *hc, apr_time_t deadline);
/* Any reader (the fetcher too): the next slice of the fill from its
 * cursor into bb: APX_HCACHE_MORE, APX_HCACHE_LAST (the body ends with
 * what was added), APX_HCACHE_WAIT (nothing new yet), or -1 (the fill
 * failed: cut the response). */
int apx_hcache_stream_body(apx_hcache *hc, apr_bucket_brigade *bb);
/* After WAIT: parks until the fill has more (or ended). APX_EV_* bits, 0
 * when the request cannot park. */
unsigned apx_hcache_stream_wait(apx_hcache *hc, apr_time_t deadline);
/* A reader is done with the fill (its chunks go when nobody needs them);
 * the fetcher's fill, if it still runs, fails. Idempotent; r->pool's
 * cleanup does it too. */
void apx_hcache_stream_end(apx_hcache *hc);

/* After a STALE response went out: 1 when this request refreshes the
 * object (the cache then answers on_head for that fetch); refresh_end()
 * once it is over (or when the response failed). */
int apx_hcache_refresh_begin(apx_hcache *hc);
void apx_hcache_refresh_end(apx_hcache *hc);

#endif /* APX_HTTPD_CACHE_H */
