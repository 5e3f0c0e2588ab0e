/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */


/* cache_int.h — private to the cache_*.c files: the stored object, the
 * cache's part of one request, and what those files share. The cache (AsyncProxyCache): an
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
 *            cache compresses, Accept-Encoding are not forwarded), stream
 *            the body into a fill (cache_stream.c) that this request's
 *            client and the waiters read as it arrives, reserved from the
 *            budget (up to AsyncProxyCacheMaxObject), store it once whole
 *            — gzip-compressed when that is smaller — and wake the waiters
 *            that could not read it (HEAD, gzip clients, other variants);
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
#ifndef APX_HTTPD_CACHE_INT_H
#define APX_HTTPD_CACHE_INT_H

#include "apx_cache.h"
#include "apx_fresh.h"
#include "apx_gz.h"
#include "child.h"
#include "cache.h"

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
    ROLE_REFRESH,       /* after a STALE response: fetch for the store */
    ROLE_STREAM         /* read another request's streamed fill */
};

typedef struct hc_waiter hc_waiter;
struct hc_waiter {
    apx_park *p;
    hc_waiter *next, *prev;
    int linked;
};

/* A list of parked waiters (a pending object's, a fill's readers), under
 * the mutex that guards the list (cache_lookup.c): push w armed with p,
 * take w out if it is still in, wake every waiter and empty the list. */
void apx__hc_waiter_push(hc_waiter **list, hc_waiter *w, apx_park *p);
void apx__hc_waiter_unlink(hc_waiter **list, hc_waiter *w);
void apx__hc_waiter_wake_all(hc_waiter **list);

/* A streamed fill (cache_stream.c): the body of a storable miss as it
 * arrives, an append-only list of chunks read by the fetcher's client and
 * by the requests that were waiting on the same key, each at its own pace.
 * A chunk holds a reference on the next one, so what a reader still needs
 * stays alive after the fill let go of the head of the list (when it stops
 * storing), and what every reader passed goes at once. */
typedef struct hc_chunk hc_chunk;
struct hc_chunk {
    hc_chunk *next;                 /* set once, under the fill's mutex */
    /* the previous chunk's link (or the fill's `first`), the fill's
     * `tail`, each reader standing on it, each body bucket from it */
    volatile apr_uint32_t refs;
    apr_size_t size;                /* of data */
    apr_size_t len;                 /* written; grows under the fill's mutex */
    apr_size_t charge;              /* reserved from the store's budget */
    char data[1];
};

typedef struct hc_reader hc_reader;
struct hc_reader {
    hc_reader *next, *prev;
    apr_size_t pos;                 /* body bytes taken (fill's mutex) */
};

enum { FILL_RUNNING = 0, FILL_DONE, FILL_FAILED };

typedef struct hc_fill hc_fill;
struct hc_fill {
    pthread_mutex_t mtx;            /* guards everything below but refs */
    volatile apr_uint32_t refs;     /* the fetcher's, each reader's, the
                                     * pending object's */
    struct hc_obj *head;            /* what every reader is served (no
                                     * body); referenced */
    hc_chunk *first;                /* held while storing: the whole body */
    hc_chunk *tail;                 /* held until the fill ends */
    apr_size_t total;               /* bytes appended */
    int storing;
    int state;                      /* FILL_* */
    hc_waiter *waiters;             /* readers waiting for more */
    hc_reader *readers;             /* attached readers but the fetcher */
    unsigned nreaders;
    hc_waiter *fetcher;             /* the fetcher waiting for slow readers
                                     * (only once it stopped storing) */
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
    /* referenced: the fetch's streamed fill while waiters may read it
     * (set when it starts, cleared under mtx when it stops storing or
     * ends) */
    hc_fill *fill;

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
    /* referenced: the fill chunk body points into (one chunk, no copy) */
    hc_chunk *body_chunk;
    /* a streamed fill's head object: body_len is the backend's length,
     * or unknown (unsized); vary_ae: the stored copy will be gzip, so the
     * response already varies on Accept-Encoding */
    int unsized;
    int vary_ae;
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
    /* a streamed fill this request fills (filling) or reads, and its
     * cursor: the chunk it stands on (referenced) and the offset in it */
    hc_fill *fill;
    int filling;
    hc_chunk *rchunk;
    apr_size_t roff;
    hc_reader reader;
    int reader_linked;
    apr_size_t publish_reserved;    /* apx__hc_publish() converts these */
    apr_time_t kept_at;             /* the pending object's life was last
                                     * extended (a fill in progress) */
    hc_obj *published;              /* held for r: what a streamed fill
                                     * built when it ended */
};

/* The child's store (cache_store.c), NULL when the cache is off. */
extern apx_cache *apx__hc_store;

hc_obj *apx__hc_obj_alloc(int kind);
void apx__hc_hold_for_request(request_rec *r, hc_obj *o);
void apx__hc_drop(hc_obj **po);
void apx__hc_put_marker(const char *key, apr_size_t klen, int kind,
                       const char *vary, int skip_ae, apr_uint64_t gen,
                       apr_time_t expires, apr_time_t now);
int apx__hc_still_current(apx_hcache *hc);
void apx__hc_snapshot_prim(apx_hcache *hc);
int apx__hc_publish(apx_hcache *hc, hc_obj *o, const char *vary);
void apx__hc_mark_pass(apx_hcache *hc);
void apx__hc_set_label(apx_hcache *hc, const char *label);
int apx__hc_make_variant_key(apx_hcache *hc, const char *vary, int skip_ae,
                            apr_uint64_t gen);
void apx__hc_release_pending(apx_hcache *hc, int stored, hc_obj *result);
void apx__hc_set_serving(apx_hcache *hc, hc_obj *o);
int apx__hc_decide(apx_hcache *hc, const apx_hcache_resp *resp,
                  apr_time_t req_time, apr_time_t resp_time,
                  apx_fresh_times *t);
hc_obj *apx__hc_build_obj(apx_hcache *hc, const apx_hcache_resp *resp,
                          const apx_fresh_times *t, char *body,
                          apr_size_t len, hc_chunk *chunk);
hc_obj *apx__hc_build_head(apx_hcache *hc, const apx_hcache_resp *resp,
                           const apx_fresh_times *t, apr_int64_t len);
/* cache_stream.c */
void apx__hc_fill_unref(hc_fill *f);
void apx__hc_chunk_unref(hc_chunk *ch);
/* cache_serve.c: a body bucket over base[off, off + len) that calls
 * unref(owner) when its last copy goes (the caller took that reference);
 * setaside is a no-op, the owner outlives the bucket. */
apr_bucket *apx__hc_ref_bucket(const char *base, void (*unref)(void *),
                               void *owner, apr_size_t off, apr_size_t len,
                               apr_bucket_alloc_t *list);
/* Under the pending object's mutex: whether r may read a streamed fill,
 * and attaching it (reader at byte 0). */
int apx__hc_stream_can_attach(const apx_hcache *hc, const hc_fill *f);
int apx__hc_stream_attach(apx_hcache *hc, hc_fill *f);

#endif /* APX_HTTPD_CACHE_INT_H */
