/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* cache_stream.c — streamed fills: the body of a storable miss goes to
 * the fetcher's client and to every request that waited on the same key
 * as it arrives, each reader at its own pace, and into the store once it
 * is whole.
 *
 * The fill is an append-only list of chunks (cache_int.h). The fetcher
 * appends what each backend read brings and wakes the readers parked on
 * the fill; a reader sends from the chunks by reference (a bucket holding
 * the chunk), parked on its own client socket when that client is slow.
 * Every chunk is reserved from the store's budget (AsyncProxyCacheSize)
 * before it is filled: a fill that would exceed the budget, or a body
 * that turns out larger than AsyncProxyCacheMaxObject, stops storing —
 * the fill lets go of the head of the list, so the chunks every reader
 * passed go at once, and new requests for the key go to the backend.
 * The readers already attached still get the whole body from the chunks
 * they need (counted in the budget, forced); the fetcher then reads the
 * backend no further than FILL_WINDOW ahead of the slowest of them, and
 * once none is left it relays the rest as a plain proxy.
 *
 * Threads: each function runs inside its request's coroutine, on the
 * thread that owns that request; a fill is shared by the fetcher and its
 * readers. The fill's mutex guards the list's growth (a chunk's `next` and
 * `len`), its state, its waiter lists and the readers' positions; chunk
 * and fill reference counts are atomic; a body bucket drops its chunk on
 * whichever thread writes the connection.
 * Lock order: a pending object's mutex, then a fill's; the cache core's
 * lock may be taken under either (reservations), never the reverse.
 * Invariants: bytes [0, len) of a chunk never change once len covers
 * them; a reader never waits without being on the waiter list under the
 * mutex it checked for new bytes under.
 */
#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "httpd.h"
#include "http_config.h"
#include "http_log.h"
#include "http_protocol.h"
#include "apr_buckets.h"
#include "apr_strings.h"

#include "cache_int.h"

APLOG_USE_MODULE(asyncproxy);

/* Chunks of a body of unknown length: 64 KiB, two backend reads; a body
 * whose length is known gets one chunk of that length (no copy when it is
 * stored as it came). */
#define FILL_CHUNK      (64 * 1024)
/* Once a fill no longer stores, how far the fetcher may read ahead of the
 * slowest reader still attached: what a stalled client can pin. */
#define FILL_WINDOW     (256 * 1024)

/* ------------------------------------------------------------------ */
/* chunks and fills                                                     */

static void chunk_ref(hc_chunk *ch)
{
    __atomic_add_fetch(&ch->refs, 1, __ATOMIC_RELAXED);
}

/* Drops a reference; a chunk that goes drops its link to the next one, so
 * the run of chunks nobody needs any more goes with it (iteratively). */
void apx__hc_chunk_unref(hc_chunk *ch)
{
    while (ch && __atomic_sub_fetch(&ch->refs, 1, __ATOMIC_ACQ_REL) == 0) {
        hc_chunk *next = ch->next;

        if (ch->charge && apx__hc_store)
            apx_cache_unreserve(apx__hc_store, ch->charge);
        free(ch);
        ch = next;
    }
}

/* A chunk of size bytes, reserved from the budget first (force: counted
 * even over the budget), one reference; NULL when it cannot be had. */
static hc_chunk *chunk_create(apr_size_t size, int force)
{
    hc_chunk *ch;

    if (apx_cache_reserve(apx__hc_store, size, force) != APR_SUCCESS)
        return NULL;
    ch = malloc(offsetof(hc_chunk, data) + size);
    if (!ch) {
        apx_cache_unreserve(apx__hc_store, size);
        return NULL;
    }
    ch->next = NULL;
    ch->refs = 1;
    ch->size = size;
    ch->len = 0;
    ch->charge = size;
    return ch;
}

void apx__hc_fill_unref(hc_fill *f)
{
    if (__atomic_sub_fetch(&f->refs, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    apx__hc_chunk_unref(f->first);
    apx__hc_chunk_unref(f->tail);
    if (f->head)
        apx_cache_unref(apx__hc_store, &f->head->ce);
    pthread_mutex_destroy(&f->mtx);
    free(f);
}

static void fill_ref(hc_fill *f)
{
    __atomic_add_fetch(&f->refs, 1, __ATOMIC_RELAXED);
}

/* Fill's mutex held. */
static void wake_readers_locked(hc_fill *f)
{
    apx__hc_waiter_wake_all(&f->waiters);
}

/* Fill's mutex held. */
static void wake_fetcher_locked(hc_fill *f)
{
    hc_waiter *w = f->fetcher;

    if (!w)
        return;
    w->linked = 0;
    f->fetcher = NULL;
    if (apx_ch && apx_ch->engine)
        apx_park_wake(apx_ch->engine, w->p);
}

/* Fill's mutex held: the position of the slowest attached reader. */
static apr_size_t slowest_locked(const hc_fill *f)
{
    const hc_reader *rd;
    apr_size_t min = f->total;

    for (rd = f->readers; rd; rd = rd->next)
        if (rd->pos < min)
            min = rd->pos;
    return min;
}

static void chunk_unref_cb(void *ch)
{
    apx__hc_chunk_unref(ch);
}

/* ------------------------------------------------------------------ */
/* readers                                                              */

int apx__hc_stream_can_attach(const apx_hcache *hc, const hc_fill *f)
{
    const apx_req *rq = hc->rq;

    /* a HEAD waits for the stored head; a gzip client for the stored gzip
     * copy (made from the whole body); a request that cannot park (worker
     * MPM) cannot wait for the next bytes */
    return !hc->r->header_only && !apx_hcache_stream_wants_gzip(hc, f)
           && rq->async && rq->client_fd >= 0 && rq->park;
}

int apx_hcache_stream_wants_gzip(const apx_hcache *hc, const hc_fill *f)
{
    if (!f)
        f = hc->fill;
    return hc->accept_gz && f && f->head->vary_ae;
}

/* Leaves the fill: the reader's position no longer holds the fetcher
 * back; for the fetcher, a fill still running fails (its coroutine went
 * mid-body). Idempotent; also r->pool's cleanup. */
static apr_status_t stream_leave(void *data)
{
    apx_hcache *hc = data;
    hc_fill *f = hc->fill;

    if (!f)
        return APR_SUCCESS;
    if (hc->filling)
        apx_hcache_stream_fail(hc);
    pthread_mutex_lock(&f->mtx);
    if (hc->reader_linked) {
        hc_reader *rd = &hc->reader;

        if (rd->prev)
            rd->prev->next = rd->next;
        else
            f->readers = rd->next;
        if (rd->next)
            rd->next->prev = rd->prev;
        hc->reader_linked = 0;
        f->nreaders--;
        wake_fetcher_locked(f);
    }
    pthread_mutex_unlock(&f->mtx);
    apx__hc_chunk_unref(hc->rchunk);
    hc->rchunk = NULL;
    hc->fill = NULL;
    hc->filling = 0;
    apx__hc_fill_unref(f);
    return APR_SUCCESS;
}

void apx_hcache_stream_end(apx_hcache *hc)
{
    stream_leave(hc);
}

/* Under the pending object's mutex (so the fill still stores, or has
 * just stored, and holds its first chunk): r reads the fill from byte 0.
 * 0 when the fill no longer holds its first chunk. */
int apx__hc_stream_attach(apx_hcache *hc, hc_fill *f)
{
    hc_reader *rd = &hc->reader;

    pthread_mutex_lock(&f->mtx);
    if (!f->first || f->state == FILL_FAILED) {
        pthread_mutex_unlock(&f->mtx);
        return 0;
    }
    chunk_ref(f->first);
    hc->rchunk = f->first;
    hc->roff = 0;
    rd->pos = 0;
    rd->prev = NULL;
    rd->next = f->readers;
    if (f->readers)
        f->readers->prev = rd;
    f->readers = rd;
    f->nreaders++;
    hc->reader_linked = 1;
    pthread_mutex_unlock(&f->mtx);
    fill_ref(f);
    hc->fill = f;
    apr_pool_cleanup_register(hc->r->pool, hc, stream_leave,
                              apr_pool_cleanup_null);
    return 1;
}

int apx_hcache_stream_body(apx_hcache *hc, apr_bucket_brigade *bb)
{
    hc_fill *f = hc->fill;
    hc_chunk *ch = hc->rchunk, *drop = NULL;
    apr_size_t n, pos;
    int state;

    pthread_mutex_lock(&f->mtx);
    /* a chunk gets a next one only once it is full */
    if (hc->roff == ch->len && ch->next) {
        drop = ch;
        ch = ch->next;
        chunk_ref(ch);
        hc->rchunk = ch;
        hc->roff = 0;
    }
    n = ch->len - hc->roff;
    if (n > SERVE_SLICE)
        n = SERVE_SLICE;
    state = f->state;
    if (n) {
        hc->reader.pos += n;
        if (hc->reader_linked)
            wake_fetcher_locked(f);
    }
    pos = hc->reader.pos;
    if (state == FILL_DONE && pos < f->total)
        state = FILL_RUNNING;       /* more to read before the end */
    pthread_mutex_unlock(&f->mtx);
    apx__hc_chunk_unref(drop);

    /* a failed fill cuts every response at once: no more bytes of a body
     * that will not be whole */
    if (state == FILL_FAILED)
        return -1;
    if (n) {
        chunk_ref(ch);
        APR_BRIGADE_INSERT_TAIL(bb, apx__hc_ref_bucket(ch->data,
                                                       chunk_unref_cb, ch,
                                                       hc->roff, n,
                                                       bb->bucket_alloc));
        hc->roff += n;
    }
    if (state == FILL_DONE)
        return APX_HCACHE_LAST;
    return n ? APX_HCACHE_MORE : APX_HCACHE_WAIT;
}

static int enlist_reader(void *baton, apx_park *p)
{
    apx_hcache *hc = baton;
    hc_fill *f = hc->fill;
    hc_waiter *w = &hc->waiter;
    int ok;

    pthread_mutex_lock(&f->mtx);
    ok = f->state == FILL_RUNNING && hc->roff == hc->rchunk->len
         && !hc->rchunk->next;
    if (ok)
        apx__hc_waiter_push(&f->waiters, w, p);
    pthread_mutex_unlock(&f->mtx);
    return ok;
}

static void delist_reader(void *arg)
{
    apx_hcache *hc = arg;
    hc_fill *f = hc->fill;
    hc_waiter *w = &hc->waiter;

    pthread_mutex_lock(&f->mtx);
    apx__hc_waiter_unlink(&f->waiters, w);
    pthread_mutex_unlock(&f->mtx);
}

unsigned apx_hcache_stream_wait(apx_hcache *hc, apr_time_t deadline)
{
    apx_coro *coro = hc->rq->coro;
    apx_defer *d;
    unsigned ev;

    d = apx_coro_defer(coro, delist_reader, hc);
    ev = apx_wait_wake(hc->rq, enlist_reader, hc, deadline);
    delist_reader(hc);
    if (d)
        apx_coro_defer_disarm(coro, d);
    return ev;
}

/* ------------------------------------------------------------------ */
/* the fetcher                                                          */

/* Vary names nothing but Accept-Encoding, which this cache's fetch does
 * not send when it makes the gzip copy: every waiter gets the same. */
static int vary_only_ae(const char *vary)
{
    const char *p = vary;

    while (*p) {
        apr_size_t n;

        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        if (!*p)
            break;
        n = strcspn(p, " \t,");
        if (n != 15 || strncasecmp(p, "accept-encoding", 15))
            return 0;
        p += n;
    }
    return 1;
}

/* Whether the requests waiting on our pending object all get this
 * response (else they wait for the stored object, as before streaming). */
static int shareable(apx_hcache *hc, const apx_hcache_resp *resp)
{
    const char *vary = resp->field(resp->baton, "Vary", 1);

    if (!vary || !*vary)
        return 1;
    if (hc->set.gzip && vary_only_ae(vary))
        return 1;
    /* came through a Vary marker naming the same fields: the same variant */
    return hc->vkey && hc->prim && hc->prim->kind == OBJ_VARY
           && !strcmp(hc->prim->vary, vary);
}

/* No new reader from now on: the pending object forgets the fill. */
static void stop_sharing(apx_hcache *hc)
{
    hc_obj *o = hc->pending;
    hc_fill *f = NULL;

    if (!o)
        return;
    pthread_mutex_lock(&o->mtx);
    if (o->fill == hc->fill) {
        f = o->fill;
        o->fill = NULL;
    }
    pthread_mutex_unlock(&o->mtx);
    if (f)
        apx__hc_fill_unref(f);      /* never the last: the fetcher's stays */
}

/* The fill lets go of its first chunk (what every reader passed goes). */
static void drop_first(hc_fill *f)
{
    hc_chunk *first;

    pthread_mutex_lock(&f->mtx);
    f->storing = 0;
    first = f->first;
    f->first = NULL;
    pthread_mutex_unlock(&f->mtx);
    apx__hc_chunk_unref(first);
}

/* The fill will not be stored (too large, over the budget): requests that
 * did not attach go to the backend themselves, those that did read on. */
static void stop_storing(apx_hcache *hc, const char *reason, int pass)
{
    hc_fill *f = hc->fill;
    unsigned n;

    if (!f->storing)
        return;
    stop_sharing(hc);
    drop_first(f);
    hc->reason = reason;
    apr_table_setn(hc->r->notes, "asyncproxy-cache-reason", reason);
    if (pass)
        apx__hc_mark_pass(hc);
    apx__hc_release_pending(hc, 0, NULL);
    pthread_mutex_lock(&f->mtx);
    n = f->nreaders;
    pthread_mutex_unlock(&f->mtx);
    if (APLOGrdebug(hc->r))
        ap_log_rerror(APLOG_MARK, APLOG_DEBUG, 0, hc->r, APXLOGNO(00181)
                      "%s: not stored (%s) after %" APR_SIZE_T_FMT " bytes; "
                      "%u other requests reading it get the rest",
                      hc->url, reason, f->total, n);
}

int apx_hcache_stream_begin(apx_hcache *hc, const apx_hcache_resp *resp)
{
    apr_int64_t cl = resp->content_length;
    apr_size_t size = cl >= 0 ? (apr_size_t)cl : FILL_CHUNK;
    hc_fill *f = NULL;
    hc_chunk *ch = NULL;
    hc_obj *head, *o = hc->pending;
    const char *why = "out-of-memory";

    int mtx = 0;

    head = apx__hc_build_head(hc, resp, &hc->ft, cl);
    if (head && (f = calloc(1, sizeof(*f)))
        && (mtx = pthread_mutex_init(&f->mtx, NULL) == 0)) {
        ch = chunk_create(size ? size : 1, 0);
        if (!ch)
            why = "fill-budget";
    }
    if (!ch) {
        if (mtx)
            pthread_mutex_destroy(&f->mtx);
        free(f);
        if (head)
            apx_cache_unref(apx__hc_store, &head->ce);
        hc->reason = why;
        apx__hc_release_pending(hc, 0, NULL);
        apx__hc_set_label(hc, "MISS");
        return 0;
    }
    ch->refs = 2;                   /* first, tail */
    f->first = f->tail = ch;
    f->head = head;
    f->storing = 1;
    f->refs = 1;
    hc->fill = f;
    hc->filling = 1;
    chunk_ref(ch);                  /* the fetcher's own cursor */
    hc->rchunk = ch;
    hc->roff = 0;
    hc->reader.pos = 0;
    apr_pool_cleanup_register(hc->r->pool, hc, stream_leave,
                              apr_pool_cleanup_null);
    apx__hc_set_serving(hc, head);
    if (o && shareable(hc, resp)) {
        /* the requests parked on our pending object attach now; later
         * ones attach on their lookup */
        pthread_mutex_lock(&o->mtx);
        if (!o->done && !o->fill) {
            fill_ref(f);
            o->fill = f;
            apx__hc_waiter_wake_all(&o->waiters);
        }
        pthread_mutex_unlock(&o->mtx);
    }
    return 1;
}

static int alone(hc_fill *f);

/* The next chunk at the tail (the fill's tail reference moves to it), or
 * NULL: out of memory, or the fill stopped storing (over the budget) and
 * nobody but the fetcher reads it (*solo = 1). */
static hc_chunk *grow(apx_hcache *hc, hc_fill *f, int *solo)
{
    hc_chunk *ch = NULL, *old;

    *solo = 0;
    if (f->storing) {
        ch = chunk_create(FILL_CHUNK, 0);
        if (!ch)
            stop_storing(hc, "fill-budget", 0);
    }
    if (!ch) {
        /* readers attached still need every byte: counted, over the
         * budget if need be, FILL_WINDOW ahead of them at most */
        if (alone(f)) {
            *solo = 1;
            return NULL;
        }
        ch = chunk_create(FILL_CHUNK, 1);
    }
    if (!ch)
        return NULL;
    ch->refs = 2;                   /* the old tail's link, the fill's tail */
    pthread_mutex_lock(&f->mtx);
    old = f->tail;
    old->next = ch;
    f->tail = ch;
    pthread_mutex_unlock(&f->mtx);
    apx__hc_chunk_unref(old);
    return ch;
}

/* Whether a fill that stopped storing has nobody to keep chunks for but
 * the fetcher itself. */
static int alone(hc_fill *f)
{
    int a;

    pthread_mutex_lock(&f->mtx);
    a = !f->storing && !f->nreaders;
    pthread_mutex_unlock(&f->mtx);
    return a;
}

/* The whole body is in the chunks: the stored object. */
static void publish_fill(apx_hcache *hc, const apx_hcache_resp *resp)
{
    hc_fill *f = hc->fill;
    hc_chunk *first = f->first, *ch;
    apr_size_t total = f->total, flat = 0;
    char *buf;
    hc_obj *o;
    int stored = 0;

    if (!first->next && first->size == total) {
        /* the one chunk of a known length: the object points into it (or
         * compresses from it) */
        o = apx__hc_build_obj(hc, resp, &hc->ft, first->data, total, first);
        if (o && o->body_chunk)
            hc->publish_reserved = first->charge;
    }
    else {
        /* a body of unknown length: one copy of its exact size, with its
         * own charge (the chunks go as their readers pass them) */
        if (apx_cache_reserve(apx__hc_store, total, 0) != APR_SUCCESS) {
            hc->reason = "fill-budget";
            apx__hc_release_pending(hc, 0, NULL);
            return;
        }
        flat = total;
        buf = malloc(total ? total : 1);
        o = NULL;
        if (buf) {
            apr_size_t at = 0;

            for (ch = first; ch; ch = ch->next) {
                memcpy(buf + at, ch->data, ch->len);
                at += ch->len;
            }
            o = apx__hc_build_obj(hc, resp, &hc->ft, buf, total, NULL);
            if (!o)
                free(buf);
        }
        hc->publish_reserved = flat;
    }
    if (o) {
        stored = apx__hc_publish(hc, o, resp->field(resp->baton, "Vary", 1));
        /* a fetcher whose client takes gzip is served from it */
        apx__hc_hold_for_request(hc->r, o);
        hc->published = o;
    }
    if (stored && o->body_chunk)
        first->charge = 0;          /* the object's charge now */
    if (!stored && flat)
        apx_cache_unreserve(apx__hc_store, flat);
    hc->publish_reserved = 0;
    if (!o)
        hc->reason = "out-of-memory";
    apx__hc_release_pending(hc, stored, stored && hc->share ? o : NULL);
    if (o)
        apx_cache_unref(apx__hc_store, &o->ce);
}

/* The body ended: readers see the end; the object is stored when the
 * fill still stores. */
static void finish(apx_hcache *hc, const apx_hcache_resp *resp)
{
    hc_fill *f = hc->fill;

    pthread_mutex_lock(&f->mtx);
    f->state = FILL_DONE;
    wake_readers_locked(f);
    pthread_mutex_unlock(&f->mtx);
    if (f->storing) {
        /* late requests wait for the object now, not for bytes */
        stop_sharing(hc);
        publish_fill(hc, resp);
        drop_first(f);
    }
    hc->filling = 0;
}

int apx_hcache_stream_append(apx_hcache *hc, apr_bucket_brigade *bb,
                             int last, const apx_hcache_resp *resp)
{
    hc_fill *f = hc->fill;
    apr_bucket *b;
    int added = 0;

    while (!APR_BRIGADE_EMPTY(bb)) {
        const char *data;
        apr_size_t len, used = 0;

        b = APR_BRIGADE_FIRST(bb);
        if (apr_bucket_read(b, &data, &len, APR_BLOCK_READ) != APR_SUCCESS)
            break;
        while (used < len) {
            hc_chunk *t = f->tail;
            apr_size_t n = t->size - t->len;

            if (f->storing && f->total + (len - used)
                              > apx_gconf.cache_max_object)
                stop_storing(hc, "too-large", 1);
            if (!n) {
                int solo = !f->storing && alone(f);

                if (!solo && !(t = grow(hc, f, &solo)) && !solo)
                    goto out;       /* out of memory: the caller fails */
                if (solo) {
                    /* nobody to keep bytes for: the rest goes as is */
                    if (used) {
                        apr_bucket_split(b, used);
                        apr_bucket_delete(b);
                    }
                    goto out;
                }
                n = t->size;
            }
            if (n > len - used)
                n = len - used;
            /* beyond len: no reader looks there before len covers it */
            memcpy(t->data + t->len, data + used, n);
            pthread_mutex_lock(&f->mtx);
            t->len += n;
            f->total += n;
            pthread_mutex_unlock(&f->mtx);
            used += n;
            added = 1;
        }
        apr_bucket_delete(b);
    }
out:
    if (added && f->storing && hc->pending) {
        /* bytes flow: the fetch is alive, so its pending object stays
         * (later requests attach instead of fetching again); at most
         * once a second, which takes the store's write lock */
        apr_time_t now = apr_time_now();

        if (now - hc->kept_at >= apr_time_from_sec(1)) {
            apx_cache_set_expiry(apx__hc_store, &hc->pending->ce,
                                 now + apx_gconf.cache_wait);
            hc->kept_at = now;
        }
    }
    if (APR_BRIGADE_EMPTY(bb) && last) {
        finish(hc, resp);
        return f->storing;
    }
    if (added) {
        pthread_mutex_lock(&f->mtx);
        wake_readers_locked(f);
        pthread_mutex_unlock(&f->mtx);
    }
    return f->storing;
}

unsigned apx_hcache_stream_fail(apx_hcache *hc)
{
    hc_fill *f = hc->fill;
    unsigned n;

    if (!f || !hc->filling)
        return 0;
    hc->filling = 0;
    stop_sharing(hc);
    pthread_mutex_lock(&f->mtx);
    f->state = FILL_FAILED;
    n = f->nreaders;
    wake_readers_locked(f);
    pthread_mutex_unlock(&f->mtx);
    drop_first(f);
    if (!hc->reason)
        hc->reason = "backend-failed";
    apx__hc_release_pending(hc, 0, NULL);
    return n;
}

int apx_hcache_stream_serve_built(apx_hcache *hc)
{
    if (!hc->published)
        return 0;
    apx__hc_set_serving(hc, hc->published);
    return 1;
}

apr_size_t apx_hcache_stream_lag(apx_hcache *hc)
{
    hc_fill *f = hc->fill;
    apr_size_t lag;

    pthread_mutex_lock(&f->mtx);
    lag = f->total - hc->reader.pos;
    pthread_mutex_unlock(&f->mtx);
    return lag;
}

int apx_hcache_stream_leave_if_alone(apx_hcache *hc)
{
    hc_fill *f = hc->fill;

    if (!f || !alone(f) || apx_hcache_stream_lag(hc))
        return 0;
    /* nobody reads it but us, and we have it all: let it go */
    hc->filling = 0;
    pthread_mutex_lock(&f->mtx);
    f->state = FILL_DONE;
    pthread_mutex_unlock(&f->mtx);
    stream_leave(hc);
    return 1;
}

static int enlist_fetcher(void *baton, apx_park *p)
{
    apx_hcache *hc = baton;
    hc_fill *f = hc->fill;
    hc_waiter *w = &hc->waiter;
    int ok;

    pthread_mutex_lock(&f->mtx);
    ok = !f->storing && f->nreaders
         && f->total - slowest_locked(f) > FILL_WINDOW;
    if (ok) {
        w->p = p;
        w->linked = 1;
        f->fetcher = w;
    }
    pthread_mutex_unlock(&f->mtx);
    return ok;
}

static void delist_fetcher(void *arg)
{
    apx_hcache *hc = arg;
    hc_fill *f = hc->fill;

    pthread_mutex_lock(&f->mtx);
    if (hc->waiter.linked) {
        f->fetcher = NULL;
        hc->waiter.linked = 0;
    }
    pthread_mutex_unlock(&f->mtx);
}

unsigned apx_hcache_stream_throttle(apx_hcache *hc, apr_time_t deadline)
{
    hc_fill *f = hc->fill;
    apx_coro *coro = hc->rq->coro;
    apx_defer *d;
    unsigned ev;
    int behind;

    pthread_mutex_lock(&f->mtx);
    behind = !f->storing && f->nreaders
             && f->total - slowest_locked(f) > FILL_WINDOW;
    pthread_mutex_unlock(&f->mtx);
    if (!behind)
        return 0;
    d = apx_coro_defer(coro, delist_fetcher, hc);
    ev = apx_wait_wake(hc->rq, enlist_fetcher, hc, deadline);
    delist_fetcher(hc);
    if (d)
        apx_coro_defer_disarm(coro, d);
    return ev ? ev : APX_EV_WAKE;
}
