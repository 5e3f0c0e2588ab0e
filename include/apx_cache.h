/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* apx_cache.h — the cache core (after Lwan's lwan-cache): a hash of
 * refcounted entries keyed by bytes, each with an expiry time, a byte budget
 * with LRU eviction. The proxy's response cache builds on it.
 *
 * - Lookups take the read lock; with APX_CACHE_TRYLOCK they never block:
 *   when the lock is busy a miss yields a *temporary* entry (made by the
 *   create callback, never inserted, freed on its last unref) and a lookup
 *   without create returns NULL with APR_EBUSY.
 * - Entries are created without holding the lock; when two threads race to
 *   create the same key, the first to insert wins and the loser's entry is
 *   destroyed before the winner's is returned (no leak, no double insert).
 * - An entry stays alive while referenced, even after eviction, expiry or
 *   invalidation; it stops counting in the budget once unlinked.
 * - Time is always passed in ("now"): tests drive a fake clock.
 * - Reservations: bytes held outside any entry (a response being fetched
 *   for the store) count against the budget with the linked entries.
 *   apx_cache_reserve() evicts least recently used entries to make room
 *   and fails when the reservations alone leave none; publishing an entry
 *   with apx_cache_put_reserved() turns a reservation into its charge under
 *   the same lock, so the bytes are never counted twice nor let go between.
 *
 * Calling threads: any thread, all functions; apx_cache_create() and
 * apx_cache_destroy() by the owner (no reference may be outstanding when
 * destroying: entries are freed through the cache's destroy callback).
 */
#ifndef APX_CACHE_H
#define APX_CACHE_H

#include "apx_common.h"

typedef struct apx_cache apx_cache;
typedef struct apx_cache_entry apx_cache_entry;

/* Embedded in the user's record (use APX_CONTAINER_OF). The create callback
 * fills `size` (bytes charged to the budget) and may set `expires` (0: the
 * cache's default TTL from now). `state` belongs to the user (e.g. "pending"
 * for miss coalescing); the cache never reads it. */
struct apx_cache_entry {
    apx_cache_entry *hnext;         /* hash chain */
    apx_cache_entry *lru_prev, *lru_next;
    char *key;                      /* copy owned by the cache */
    size_t klen;
    apr_uint32_t hash;
    volatile apr_uint32_t refs;
    unsigned flags;                 /* APX_CACHE_E_* */
    volatile apr_uint32_t state;    /* user-owned */
    apr_time_t expires;
    size_t size;
};

enum {
    APX_CACHE_E_LINKED    = 0x01,   /* in the hash and the LRU list */
    APX_CACHE_E_TEMPORARY = 0x02,   /* never inserted (lock was busy) */
    /* never evicted to make room (expiry, invalidation and removal still
     * unlink it); set by the create callback or before apx_cache_put():
     * a small marker that work in flight depends on */
    APX_CACHE_E_PINNED    = 0x04
};

/* Lookup flags. */
enum {
    APX_CACHE_TRYLOCK     = 0x01,   /* never wait for the lock */
    APX_CACHE_LOOKUP_ONLY = 0x02    /* a miss returns NULL (APR_NOTFOUND) */
};

/* Returns a new entry for key, or NULL (the lookup then fails with
 * APR_ENOMEM or *err from the callback). */
typedef apx_cache_entry *(*apx_cache_create_fn)(const void *key, size_t klen,
                                                void *baton);
typedef void (*apx_cache_destroy_fn)(apx_cache_entry *e, void *baton);

typedef struct apx_cache_conf {
    apx_cache_create_fn create;     /* may be NULL: lookups are LOOKUP_ONLY */
    apx_cache_destroy_fn destroy;
    void *baton;
    size_t budget;                  /* bytes of linked entries, 0: no limit */
    apr_interval_time_t ttl;        /* default lifetime */
    unsigned buckets;               /* rounded up to a power of two */
} apx_cache_conf;

typedef struct apx_cache_stats {
    unsigned entries;
    size_t bytes;                   /* charged by linked entries */
    size_t reserved;                /* held by reservations */
    apr_uint64_t hits, misses, evictions, expirations, temporaries,
                 lock_busy, races_lost, reserve_fails;
} apx_cache_stats;

apr_status_t apx_cache_create(apx_cache **pc, const apx_cache_conf *conf);
void apx_cache_destroy(apx_cache *c);

/* A referenced entry for key (found fresh, or created and inserted), or
 * NULL with *err set (APR_NOTFOUND, APR_EBUSY, APR_ENOMEM). */
apx_cache_entry *apx_cache_get_ref(apx_cache *c, const void *key,
                                   size_t klen, apr_time_t now, int flags,
                                   apr_status_t *err);
/* Publishes a caller-built entry under key, replacing a linked one. The
 * caller's reference stays the caller's. APR_EBUSY with TRYLOCK. */
apr_status_t apx_cache_put(apx_cache *c, apx_cache_entry *e, const void *key,
                           size_t klen, apr_time_t now, int flags);
/* apx_cache_put() that first gives back `reserved` bytes of the caller's
 * reservation (the entry's size is charged instead), under one lock. */
apr_status_t apx_cache_put_reserved(apx_cache *c, apx_cache_entry *e,
                                    const void *key, size_t klen,
                                    apr_time_t now, int flags,
                                    size_t reserved);
/* Reserves n bytes of the budget, evicting least recently used entries
 * when the budget would be exceeded: APR_SUCCESS, or APR_ENOSPC (nothing
 * reserved, nothing evicted) when the reservations alone leave no room.
 * force = 1 always succeeds and may exceed the budget (bytes already held
 * that must be counted); it still evicts what it can. */
apr_status_t apx_cache_reserve(apx_cache *c, size_t n, int force);
/* Gives back n reserved bytes. */
void apx_cache_unreserve(apx_cache *c, size_t n);
void apx_cache_ref(apx_cache_entry *e);
void apx_cache_unref(apx_cache *c, apx_cache_entry *e);
/* Unlinks key's entry; 1 when there was one. */
int apx_cache_invalidate(apx_cache *c, const void *key, size_t klen);
/* Unlinks this very entry if it is still linked (whatever now holds its
 * key is left alone); 1 when it was. The caller's reference stays. */
int apx_cache_remove(apx_cache *c, apx_cache_entry *e);
/* Sets the expiry of this very entry while it is linked (a fetch in
 * progress keeps its pending marker alive); 1 when it was linked. */
int apx_cache_set_expiry(apx_cache *c, apx_cache_entry *e, apr_time_t expires);
/* Unlinks every expired entry; returns how many. */
unsigned apx_cache_prune(apx_cache *c, apr_time_t now);
int apx_cache_entry_is_fresh(const apx_cache_entry *e, apr_time_t now);
void apx_cache_stats_get(apx_cache *c, apx_cache_stats *st);

#endif /* APX_CACHE_H */
