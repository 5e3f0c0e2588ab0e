/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* cache.c — the cache core: hash of refcounted entries, TTL, byte budget
 * with LRU eviction (after Lwan's lwan-cache.c).
 *
 * Threads: any. Locks: `lock` (rwlock) guards the hash, the LRU list and the
 * byte count; hits take it shared, and move their entry to the LRU tail
 * only when `lru_mtx` is free (a hit never waits to record recency: LRU
 * order is approximate under contention, which is what a cache can afford).
 * Reference counts are atomic; an entry is freed by whoever drops the last
 * reference, the cache holding one reference while the entry is linked.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <apr_atomic.h>
#include "apx_cache.h"

struct apx_cache {
    pthread_rwlock_t lock;
    pthread_mutex_t lru_mtx;        /* guards LRU moves done under the read lock */
    apx_cache_entry **buckets;
    unsigned mask;
    apx_cache_entry lru;            /* sentinel: lru.lru_next is the oldest */
    unsigned entries;
    size_t bytes;
    size_t reserved;                /* apx_cache_reserve(), under `lock` */
    apx_cache_conf conf;
    volatile apr_uint32_t hits, misses, evictions, expirations, temporaries,
                          lock_busy, races_lost, reserve_fails;
};

static apr_uint32_t hash_key(const void *key, size_t klen)
{
    const unsigned char *p = key;
    apr_uint32_t h = 2166136261u;   /* FNV-1a */
    size_t i;

    for (i = 0; i < klen; i++) {
        h ^= p[i];
        h *= 16777619u;
    }
    return h;
}

apr_status_t apx_cache_create(apx_cache **pc, const apx_cache_conf *conf)
{
    apx_cache *c = calloc(1, sizeof(*c));
    unsigned n = 16;

    if (!c)
        return APR_ENOMEM;
    while (n < conf->buckets && n < (1u << 24))
        n <<= 1;
    c->buckets = calloc(n, sizeof(*c->buckets));
    if (!c->buckets) {
        free(c);
        return APR_ENOMEM;
    }
    c->mask = n - 1;
    c->conf = *conf;
    c->lru.lru_next = c->lru.lru_prev = &c->lru;
    pthread_rwlock_init(&c->lock, NULL);
    pthread_mutex_init(&c->lru_mtx, NULL);
    *pc = c;
    return APR_SUCCESS;
}

static void free_entry(apx_cache *c, apx_cache_entry *e)
{
    free(e->key);
    e->key = NULL;
    c->conf.destroy(e, c->conf.baton);
}

/* Reference counts use the compiler's atomics rather than APR's: the
 * release/acquire pair orders every write to the entry before its free
 * (and ThreadSanitizer sees it; libapr is not instrumented). */
static void ref_entry(apx_cache_entry *e)
{
    __atomic_add_fetch(&e->refs, 1, __ATOMIC_RELAXED);
}

static int unref_entry(apx_cache_entry *e)
{
    return __atomic_sub_fetch(&e->refs, 1, __ATOMIC_ACQ_REL) == 0;
}

void apx_cache_ref(apx_cache_entry *e)
{
    ref_entry(e);
}

void apx_cache_unref(apx_cache *c, apx_cache_entry *e)
{
    if (unref_entry(e))
        free_entry(c, e);
}

static apx_cache_entry *find_locked(apx_cache *c, const void *key,
                                    size_t klen, apr_uint32_t h)
{
    apx_cache_entry *e;

    for (e = c->buckets[h & c->mask]; e; e = e->hnext)
        if (e->hash == h && e->klen == klen && !memcmp(e->key, key, klen))
            return e;
    return NULL;
}

static void lru_unlink(apx_cache_entry *e)
{
    e->lru_prev->lru_next = e->lru_next;
    e->lru_next->lru_prev = e->lru_prev;
}

static void lru_append(apx_cache *c, apx_cache_entry *e)
{
    e->lru_prev = c->lru.lru_prev;
    e->lru_next = &c->lru;
    c->lru.lru_prev->lru_next = e;
    c->lru.lru_prev = e;
}

/* Write lock held. Drops the cache's reference; returns 1 when that was
 * the last one, so the caller frees it after unlocking. */
static int unlink_locked(apx_cache *c, apx_cache_entry *e)
{
    apx_cache_entry **pp = &c->buckets[e->hash & c->mask];

    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    e->hnext = NULL;
    pthread_mutex_lock(&c->lru_mtx);
    lru_unlink(e);
    pthread_mutex_unlock(&c->lru_mtx);
    e->flags &= ~APX_CACHE_E_LINKED;
    c->entries--;
    c->bytes -= e->size;
    return unref_entry(e);
}

/* Write lock held. Evicts the least recently used entries until `need`
 * more bytes fit in the budget with what is linked and reserved, or none
 * is left; those whose last reference went are chained on *dead. */
static void evict_locked(apx_cache *c, size_t need, apx_cache_entry **dead)
{
    apx_cache_entry *e = c->lru.lru_next, *next;

    while (c->conf.budget && c->bytes + c->reserved + need > c->conf.budget
           && e != &c->lru) {
        next = e->lru_next;
        if (!(e->flags & APX_CACHE_E_PINNED)) {
            apr_atomic_inc32(&c->evictions);
            if (unlink_locked(c, e)) {
                e->hnext = *dead;
                *dead = e;
            }
        }
        e = next;
    }
}

/* Write lock held. Entries whose last reference went are chained on
 * *dead (through hnext) to be freed after unlocking. */
static void link_locked(apx_cache *c, apx_cache_entry *e,
                        apx_cache_entry **dead)
{
    apx_cache_entry **b = &c->buckets[e->hash & c->mask];

    e->hnext = *b;
    *b = e;
    pthread_mutex_lock(&c->lru_mtx);
    lru_append(c, e);
    pthread_mutex_unlock(&c->lru_mtx);
    e->flags |= APX_CACHE_E_LINKED;
    ref_entry(e);                   /* the cache's own reference */
    c->entries++;
    c->bytes += e->size;
    /* Evict the least recently used until the budget holds again (the new
     * entry itself goes last, when it alone is over the budget). */
    evict_locked(c, 0, dead);
}

static void free_dead(apx_cache *c, apx_cache_entry *dead)
{
    while (dead) {
        apx_cache_entry *next = dead->hnext;

        free_entry(c, dead);
        dead = next;
    }
}

int apx_cache_entry_is_fresh(const apx_cache_entry *e, apr_time_t now)
{
    return e->expires > now;
}

static apr_status_t fill_key(apx_cache_entry *e, const void *key,
                             size_t klen, apr_uint32_t h)
{
    e->key = malloc(klen ? klen : 1);
    if (!e->key)
        return APR_ENOMEM;
    memcpy(e->key, key, klen);
    e->klen = klen;
    e->hash = h;
    return APR_SUCCESS;
}

apx_cache_entry *apx_cache_get_ref(apx_cache *c, const void *key,
                                   size_t klen, apr_time_t now, int flags,
                                   apr_status_t *err)
{
    apr_uint32_t h = hash_key(key, klen);
    apx_cache_entry *e, *dead = NULL;
    int locked;

    *err = APR_SUCCESS;
    if (flags & APX_CACHE_TRYLOCK)
        locked = pthread_rwlock_tryrdlock(&c->lock) == 0;
    else
        locked = pthread_rwlock_rdlock(&c->lock) == 0;
    if (locked) {
        e = find_locked(c, key, klen, h);
        if (e && apx_cache_entry_is_fresh(e, now)) {
            ref_entry(e);
            if (pthread_mutex_trylock(&c->lru_mtx) == 0) {
                lru_unlink(e);
                lru_append(c, e);
                pthread_mutex_unlock(&c->lru_mtx);
            }
            pthread_rwlock_unlock(&c->lock);
            apr_atomic_inc32(&c->hits);
            return e;
        }
        pthread_rwlock_unlock(&c->lock);
    }
    else {
        apr_atomic_inc32(&c->lock_busy);
    }
    apr_atomic_inc32(&c->misses);
    if ((flags & APX_CACHE_LOOKUP_ONLY) || !c->conf.create) {
        *err = locked ? APR_NOTFOUND : APR_EBUSY;
        return NULL;
    }

    /* Made without any lock held: creation may be slow. */
    e = c->conf.create(key, klen, c->conf.baton);
    if (!e) {
        *err = APR_ENOMEM;
        return NULL;
    }
    e->refs = 1;
    e->flags &= APX_CACHE_E_PINNED;
    e->hnext = e->lru_prev = e->lru_next = NULL;
    if (!e->expires)
        e->expires = now + c->conf.ttl;
    if (fill_key(e, key, klen, h) != APR_SUCCESS) {
        c->conf.destroy(e, c->conf.baton);
        *err = APR_ENOMEM;
        return NULL;
    }
    if (!locked || (flags & APX_CACHE_TRYLOCK)
        ? pthread_rwlock_trywrlock(&c->lock) != 0
        : pthread_rwlock_wrlock(&c->lock) != 0) {
        /* Busy: serve this caller from an unshared entry. */
        e->flags |= APX_CACHE_E_TEMPORARY;
        apr_atomic_inc32(&c->temporaries);
        return e;
    }
    {
        apx_cache_entry *other = find_locked(c, key, klen, h);

        if (other && apx_cache_entry_is_fresh(other, now)) {
            /* Lost the race: the winner's entry serves everyone. */
            ref_entry(other);
            pthread_rwlock_unlock(&c->lock);
            apr_atomic_inc32(&c->races_lost);
            apx_cache_unref(c, e);
            return other;
        }
        if (other) {
            apr_atomic_inc32(&c->expirations);
            if (unlink_locked(c, other)) {
                other->hnext = dead;
                dead = other;
            }
        }
        link_locked(c, e, &dead);
    }
    pthread_rwlock_unlock(&c->lock);
    free_dead(c, dead);
    return e;
}

apr_status_t apx_cache_put(apx_cache *c, apx_cache_entry *e, const void *key,
                           size_t klen, apr_time_t now, int flags)
{
    return apx_cache_put_reserved(c, e, key, klen, now, flags, 0);
}

apr_status_t apx_cache_put_reserved(apx_cache *c, apx_cache_entry *e,
                                    const void *key, size_t klen,
                                    apr_time_t now, int flags,
                                    size_t reserved)
{
    apr_uint32_t h = hash_key(key, klen);
    apx_cache_entry *old, *dead = NULL;

    if (e->flags & APX_CACHE_E_LINKED)
        return APR_EINVAL;
    if (!e->key && fill_key(e, key, klen, h) != APR_SUCCESS)
        return APR_ENOMEM;
    if (!e->expires)
        e->expires = now + c->conf.ttl;
    if ((flags & APX_CACHE_TRYLOCK) ? pthread_rwlock_trywrlock(&c->lock)
                                    : pthread_rwlock_wrlock(&c->lock)) {
        apr_atomic_inc32(&c->lock_busy);
        return APR_EBUSY;
    }
    c->reserved -= reserved < c->reserved ? reserved : c->reserved;
    old = find_locked(c, e->key, e->klen, e->hash);
    if (old && unlink_locked(c, old)) {
        old->hnext = dead;
        dead = old;
    }
    link_locked(c, e, &dead);
    pthread_rwlock_unlock(&c->lock);
    free_dead(c, dead);
    return APR_SUCCESS;
}

apr_status_t apx_cache_reserve(apx_cache *c, size_t n, int force)
{
    apx_cache_entry *dead = NULL;
    apr_status_t rv = APR_SUCCESS;

    pthread_rwlock_wrlock(&c->lock);
    /* every linked entry may go, reservations may not: when they alone
     * leave no room, nothing is evicted for nothing */
    if (!force && c->conf.budget && c->reserved + n > c->conf.budget) {
        rv = APR_ENOSPC;
        apr_atomic_inc32(&c->reserve_fails);
    }
    else {
        evict_locked(c, n, &dead);
        c->reserved += n;
    }
    pthread_rwlock_unlock(&c->lock);
    free_dead(c, dead);
    return rv;
}

void apx_cache_unreserve(apx_cache *c, size_t n)
{
    pthread_rwlock_wrlock(&c->lock);
    /* never below zero, whatever a caller's arithmetic did */
    c->reserved -= n < c->reserved ? n : c->reserved;
    pthread_rwlock_unlock(&c->lock);
}

int apx_cache_remove(apx_cache *c, apx_cache_entry *e)
{
    int was_linked, last = 0;

    pthread_rwlock_wrlock(&c->lock);
    /* the flag only changes under the write lock */
    was_linked = (e->flags & APX_CACHE_E_LINKED) != 0;
    if (was_linked)
        last = unlink_locked(c, e);
    pthread_rwlock_unlock(&c->lock);
    if (last)
        free_entry(c, e);
    return was_linked;
}

int apx_cache_set_expiry(apx_cache *c, apx_cache_entry *e, apr_time_t expires)
{
    int linked;

    /* lookups read expires under the read lock */
    pthread_rwlock_wrlock(&c->lock);
    linked = (e->flags & APX_CACHE_E_LINKED) != 0;
    if (linked)
        e->expires = expires;
    pthread_rwlock_unlock(&c->lock);
    return linked;
}

int apx_cache_invalidate(apx_cache *c, const void *key, size_t klen)
{
    apr_uint32_t h = hash_key(key, klen);
    apx_cache_entry *e, *dead = NULL;

    pthread_rwlock_wrlock(&c->lock);
    e = find_locked(c, key, klen, h);
    if (e && unlink_locked(c, e))
        dead = e;
    pthread_rwlock_unlock(&c->lock);
    free_dead(c, dead);
    return e != NULL;
}

unsigned apx_cache_prune(apx_cache *c, apr_time_t now)
{
    apx_cache_entry *e, *next, *dead = NULL;
    unsigned n = 0;

    pthread_rwlock_wrlock(&c->lock);
    for (e = c->lru.lru_next; e != &c->lru; e = next) {
        next = e->lru_next;
        if (apx_cache_entry_is_fresh(e, now))
            continue;
        n++;
        apr_atomic_inc32(&c->expirations);
        if (unlink_locked(c, e)) {
            e->hnext = dead;
            dead = e;
        }
    }
    pthread_rwlock_unlock(&c->lock);
    free_dead(c, dead);
    return n;
}

void apx_cache_stats_get(apx_cache *c, apx_cache_stats *st)
{
    pthread_rwlock_rdlock(&c->lock);
    st->entries = c->entries;
    st->bytes = c->bytes;
    st->reserved = c->reserved;
    pthread_rwlock_unlock(&c->lock);
    st->hits = apr_atomic_read32(&c->hits);
    st->misses = apr_atomic_read32(&c->misses);
    st->evictions = apr_atomic_read32(&c->evictions);
    st->expirations = apr_atomic_read32(&c->expirations);
    st->temporaries = apr_atomic_read32(&c->temporaries);
    st->lock_busy = apr_atomic_read32(&c->lock_busy);
    st->races_lost = apr_atomic_read32(&c->races_lost);
    st->reserve_fails = apr_atomic_read32(&c->reserve_fails);
}

void apx_cache_destroy(apx_cache *c)
{
    apx_cache_entry *e, *next, *dead = NULL;

    pthread_rwlock_wrlock(&c->lock);
    for (e = c->lru.lru_next; e != &c->lru; e = next) {
        next = e->lru_next;
        if (unlink_locked(c, e)) {
            e->hnext = dead;
            dead = e;
        }
    }
    pthread_rwlock_unlock(&c->lock);
    free_dead(c, dead);
    pthread_rwlock_destroy(&c->lock);
    pthread_mutex_destroy(&c->lru_mtx);
    free(c->buckets);
    free(c);
}
