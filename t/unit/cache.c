/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* Unit tests of the cache core: hits, misses, expiry on a fake clock,
 * references outliving eviction, LRU under a budget, trylock fallback to
 * temporary entries, and racing creators on real threads. */
#include "../../poller/cache.c"
#include "tap.h"

typedef struct item {
    apx_cache_entry e;
    int value;
} item;

static volatile apr_uint32_t created, destroyed;
static size_t item_size = 100;

static apx_cache_entry *make_item(const void *key, size_t klen, void *baton)
{
    item *it = calloc(1, sizeof(*it));

    it->e.size = item_size;
    it->value = (int)klen;
    apr_atomic_inc32(&created);
    return &it->e;
}

static void free_item(apx_cache_entry *e, void *baton)
{
    apr_atomic_inc32(&destroyed);
    free(APX_CONTAINER_OF(e, item, e));
}

static apx_cache *new_cache(size_t budget)
{
    apx_cache_conf conf = { make_item, free_item, NULL, budget,
                            apr_time_from_sec(10), 64 };
    apx_cache *c = NULL;

    apx_cache_create(&c, &conf);
    return c;
}

#define NOW(s) ((apr_time_t)(s) * APR_USEC_PER_SEC + 1000000000)

static void test_basic(void)
{
    apx_cache *c = new_cache(0);
    apr_status_t err;
    apx_cache_entry *a, *b, *k1, *k2;
    apx_cache_stats st;

    a = apx_cache_get_ref(c, "alpha", 5, NOW(0), 0, &err);
    ok(a && err == APR_SUCCESS, "miss creates an entry");
    b = apx_cache_get_ref(c, "alpha", 5, NOW(1), 0, &err);
    ok(a == b, "second lookup hits the same entry");
    is_int(a->refs, 3, "two callers + the cache hold references");
    apx_cache_unref(c, a);
    apx_cache_unref(c, b);
    ok(!apx_cache_get_ref(c, "beta", 4, NOW(1), APX_CACHE_LOOKUP_ONLY, &err)
       && err == APR_NOTFOUND, "lookup-only miss returns NULL/APR_NOTFOUND");
    k1 = apx_cache_get_ref(c, "k\0x", 3, NOW(1), 0, &err);
    k2 = apx_cache_get_ref(c, "k\0y", 3, NOW(1), 0, &err);
    ok(k1 && k2 && k1 != k2, "keys with embedded NULs are distinct");
    apx_cache_unref(c, k1);
    apx_cache_unref(c, k2);
    apx_cache_stats_get(c, &st);
    is_int(st.entries, 3, "three entries linked");
    is_int(st.hits, 1, "one hit counted");
    apx_cache_destroy(c);
    is_int(destroyed, created, "destroy frees every entry");
}

/* A linked entry's expiry moves (a fetch in progress keeps its marker). */
static void test_set_expiry(void)
{
    apx_cache *c = new_cache(0);
    apx_cache_entry *e, *f;
    apr_status_t err;

    e = apx_cache_get_ref(c, "x", 1, NOW(0), 0, &err);     /* ttl 10 s */
    ok(apx_cache_set_expiry(c, e, NOW(30)) == 1, "set_expiry on a linked entry");
    f = apx_cache_get_ref(c, "x", 1, NOW(20), APX_CACHE_LOOKUP_ONLY, &err);
    ok(f == e, "... still fresh at 20 s (its ttl was 10 s)");
    if (f)
        apx_cache_unref(c, f);
    apx_cache_remove(c, e);
    ok(apx_cache_set_expiry(c, e, NOW(60)) == 0, "... 0 once unlinked");
    apx_cache_unref(c, e);
    apx_cache_destroy(c);
}

static void test_expiry(void)
{
    apx_cache *c = new_cache(0);
    apr_status_t err;
    apx_cache_entry *a, *b;
    apr_uint32_t d0 = destroyed;

    a = apx_cache_get_ref(c, "x", 1, NOW(0), 0, &err);
    b = apx_cache_get_ref(c, "x", 1, NOW(11), 0, &err);
    ok(a != b, "an expired entry is not returned; a fresh one is made");
    ok(!(a->flags & APX_CACHE_E_LINKED), "the expired one was unlinked");
    is_int(destroyed - d0, 0, "but stays alive while referenced");
    apx_cache_unref(c, a);
    is_int(destroyed - d0, 1, "freed exactly at its last unref");
    apx_cache_unref(c, b);
    is_int(apx_cache_prune(c, NOW(15)), 0, "prune before expiry removes nothing");
    is_int(apx_cache_prune(c, NOW(30)), 1, "prune after expiry removes it");
    is_int(destroyed - d0, 2, "pruned unreferenced entry freed");
    apx_cache_destroy(c);
}

static void test_lru_budget(void)
{
    apx_cache *c = new_cache(300);   /* three 100-byte items */
    apr_status_t err;
    apx_cache_entry *e, *held;
    apx_cache_stats st;
    char k[2] = "a";
    int i;

    for (i = 0; i < 3; i++) {
        k[0] = (char)('a' + i);
        apx_cache_unref(c, apx_cache_get_ref(c, k, 1, NOW(0), 0, &err));
    }
    /* touch "a" so "b" is the least recently used */
    apx_cache_unref(c, apx_cache_get_ref(c, "a", 1, NOW(1), 0, &err));
    held = apx_cache_get_ref(c, "c", 1, NOW(1), 0, &err);
    apx_cache_unref(c, apx_cache_get_ref(c, "d", 1, NOW(2), 0, &err));
    apx_cache_stats_get(c, &st);
    ok(st.bytes <= 300, "budget holds after insert (%zu bytes)", st.bytes);
    e = apx_cache_get_ref(c, "b", 1, NOW(2), APX_CACHE_LOOKUP_ONLY, &err);
    ok(!e, "least recently used entry was evicted");
    e = apx_cache_get_ref(c, "a", 1, NOW(2), APX_CACHE_LOOKUP_ONLY, &err);
    ok(e != NULL, "recently used entry survived");
    if (e)
        apx_cache_unref(c, e);
    /* evict "c" while we hold it */
    apx_cache_unref(c, apx_cache_get_ref(c, "e", 1, NOW(3), 0, &err));
    apx_cache_unref(c, apx_cache_get_ref(c, "f", 1, NOW(3), 0, &err));
    apx_cache_unref(c, apx_cache_get_ref(c, "g", 1, NOW(3), 0, &err));
    ok(!(held->flags & APX_CACHE_E_LINKED), "held entry evicted");
    is_int(((item *)held)->value, 1, "evicted entry still readable while referenced");
    apx_cache_unref(c, held);
    ok(apx_cache_invalidate(c, "g", 1), "invalidate finds the key");
    ok(!apx_cache_invalidate(c, "g", 1), "second invalidate finds nothing");
    apx_cache_destroy(c);
    is_int(destroyed, created, "no leak after LRU test");
}

static void test_put(void)
{
    apx_cache *c = new_cache(0);
    apr_status_t err;
    item *mine = calloc(1, sizeof(*mine));
    apx_cache_entry *e;

    apr_atomic_inc32(&created);
    mine->e.refs = 1;
    mine->e.size = 10;
    mine->value = 42;
    apx_cache_unref(c, apx_cache_get_ref(c, "p", 1, NOW(0), 0, &err));
    ok(apx_cache_put(c, &mine->e, "p", 1, NOW(0), 0) == APR_SUCCESS,
       "put publishes a caller-built entry");
    e = apx_cache_get_ref(c, "p", 1, NOW(1), APX_CACHE_LOOKUP_ONLY, &err);
    ok(e == &mine->e, "lookup returns the published entry, replacing the old");
    apx_cache_unref(c, e);
    apx_cache_unref(c, &mine->e);
    apx_cache_destroy(c);
    is_int(destroyed, created, "no leak after put");
}

/* apx_cache_remove() unlinks that very entry, never whatever replaced it
 * under the same key. */
static void test_remove(void)
{
    apx_cache *c = new_cache(0);
    apr_status_t err;
    apx_cache_entry *a, *b, *e;
    item *other = calloc(1, sizeof(*other));

    a = apx_cache_get_ref(c, "r", 1, NOW(0), 0, &err);
    ok(a != NULL, "entry created");
    apr_atomic_inc32(&created);
    other->e.refs = 1;
    other->e.size = 10;
    ok(apx_cache_put(c, &other->e, "r", 1, NOW(0), 0) == APR_SUCCESS,
       "another entry replaces it under the key");
    b = &other->e;
    is_int(apx_cache_remove(c, a), 0, "removing the replaced one: not linked");
    e = apx_cache_get_ref(c, "r", 1, NOW(1), APX_CACHE_LOOKUP_ONLY, &err);
    ok(e == b, "the replacement is still there");
    apx_cache_unref(c, e);
    is_int(apx_cache_remove(c, b), 1, "removing the linked one");
    e = apx_cache_get_ref(c, "r", 1, NOW(1), APX_CACHE_LOOKUP_ONLY, &err);
    ok(e == NULL, "key now empty");
    is_int(apx_cache_remove(c, b), 0, "second remove: nothing");
    apx_cache_unref(c, a);
    apx_cache_unref(c, b);
    apx_cache_destroy(c);
    is_int(destroyed, created, "no leak after remove");
}

static apx_cache *lock_cache;
static pthread_barrier_t lock_barrier;

static void *hold_write_lock(void *arg)
{
    pthread_rwlock_wrlock(&lock_cache->lock);
    pthread_barrier_wait(&lock_barrier);   /* locked */
    pthread_barrier_wait(&lock_barrier);   /* test done */
    pthread_rwlock_unlock(&lock_cache->lock);
    return NULL;
}

static void test_trylock(void)
{
    pthread_t t;
    apr_status_t err;
    apx_cache_entry *e;
    apr_uint32_t d0;

    lock_cache = new_cache(0);
    pthread_barrier_init(&lock_barrier, NULL, 2);
    pthread_create(&t, NULL, hold_write_lock, NULL);
    pthread_barrier_wait(&lock_barrier);
    e = apx_cache_get_ref(lock_cache, "t", 1, NOW(0), APX_CACHE_TRYLOCK, &err);
    ok(e && (e->flags & APX_CACHE_E_TEMPORARY),
       "busy lock + TRYLOCK gives a temporary entry instead of blocking");
    ok(!apx_cache_get_ref(lock_cache, "t", 1, NOW(0),
                          APX_CACHE_TRYLOCK | APX_CACHE_LOOKUP_ONLY, &err)
       && err == APR_EBUSY, "busy lock + lookup-only gives APR_EBUSY");
    d0 = destroyed;
    apx_cache_unref(lock_cache, e);
    is_int(destroyed - d0, 1, "temporary entry freed on its unref");
    pthread_barrier_wait(&lock_barrier);
    pthread_join(t, NULL);
    ok(!apx_cache_get_ref(lock_cache, "t", 1, NOW(0), APX_CACHE_LOOKUP_ONLY, &err),
       "the temporary entry was never inserted");
    apx_cache_destroy(lock_cache);
}

#define RACERS 4
#define ROUNDS 20000
static apx_cache *race_cache;

static void *racer(void *arg)
{
    unsigned seed = (unsigned)(uintptr_t)arg;
    char key[16];
    int i;

    for (i = 0; i < ROUNDS; i++) {
        apr_status_t err;
        apx_cache_entry *e;
        int k = (int)(rand_r(&seed) % 64);

        snprintf(key, sizeof(key), "key%d", k);
        e = apx_cache_get_ref(race_cache, key, strlen(key),
                              NOW(i / 1000), (i & 1) ? APX_CACHE_TRYLOCK : 0,
                              &err);
        if (e) {
            if (e->klen != strlen(key) || memcmp(e->key, key, e->klen))
                ok(0, "entry returned for the wrong key");
            apx_cache_unref(race_cache, e);
        }
        if (k == 0 && (i % 97) == 0)
            apx_cache_invalidate(race_cache, key, strlen(key));
    }
    return NULL;
}

static void test_race(void)
{
    pthread_t t[RACERS];
    apx_cache_stats st;
    int i;

    item_size = 1000;
    race_cache = new_cache(40 * 1000);   /* smaller than the key space */
    for (i = 0; i < RACERS; i++)
        pthread_create(&t[i], NULL, racer, (void *)(uintptr_t)(i + 1));
    for (i = 0; i < RACERS; i++)
        pthread_join(t[i], NULL);
    apx_cache_stats_get(race_cache, &st);
    ok(st.bytes <= 40 * 1000, "budget held under %d threads (%zu bytes)",
       RACERS, st.bytes);
    ok(st.hits > 0 && st.misses > 0, "hits %llu, misses %llu, races lost %llu, "
       "temporaries %llu", (unsigned long long)st.hits,
       (unsigned long long)st.misses, (unsigned long long)st.races_lost,
       (unsigned long long)st.temporaries);
    apx_cache_destroy(race_cache);
    is_int(destroyed, created, "racing creators: every created entry destroyed once");
}

/* Reservations count with linked entries: a reservation evicts the least
 * recently used, fails (evicting nothing) when reservations alone leave no
 * room, force always succeeds, and publishing converts a reservation into
 * the entry's charge. */
static void test_reserve(void)
{
    apx_cache *c;
    apx_cache_entry *a, *b, *e;
    apx_cache_stats st;
    apr_status_t err;
    item *it;

    item_size = 300;
    c = new_cache(1000);
    a = apx_cache_get_ref(c, "a", 1, NOW(0), 0, &err);
    b = apx_cache_get_ref(c, "b", 1, NOW(0), 0, &err);
    apx_cache_unref(c, a);
    apx_cache_unref(c, b);
    ok(apx_cache_reserve(c, 400, 0) == APR_SUCCESS, "400 bytes reserved next "
       "to 600 linked");
    apx_cache_stats_get(c, &st);
    ok(st.bytes == 600 && st.reserved == 400 && st.evictions == 0,
       "... nothing evicted (bytes %zu, reserved %zu)", st.bytes, st.reserved);
    ok(apx_cache_reserve(c, 200, 0) == APR_SUCCESS, "200 more: fits after "
       "evicting the oldest");
    apx_cache_stats_get(c, &st);
    ok(st.bytes == 300 && st.reserved == 600 && st.evictions == 1,
       "... one eviction (bytes %zu, reserved %zu)", st.bytes, st.reserved);
    e = apx_cache_get_ref(c, "a", 1, NOW(0), APX_CACHE_LOOKUP_ONLY, &err);
    ok(!e, "... the least recently used one (a) went");
    ok(apx_cache_reserve(c, 500, 0) == APR_ENOSPC, "500 more: reservations "
       "alone would exceed the budget: APR_ENOSPC");
    apx_cache_stats_get(c, &st);
    ok(st.bytes == 300 && st.reserved == 600 && st.reserve_fails == 1,
       "... nothing evicted, nothing reserved (bytes %zu, reserved %zu)",
       st.bytes, st.reserved);
    ok(apx_cache_reserve(c, 500, 1) == APR_SUCCESS, "forced: succeeds");
    apx_cache_stats_get(c, &st);
    ok(st.bytes == 0 && st.reserved == 1100, "... evicting what it can, "
       "over the budget (bytes %zu, reserved %zu)", st.bytes, st.reserved);
    apx_cache_unreserve(c, 500);
    apx_cache_unreserve(c, 200);

    /* publish: 400 reserved become a 450-byte entry's charge */
    it = calloc(1, sizeof(*it));
    it->e.size = 450;
    it->e.refs = 1;
    apr_atomic_inc32(&created);
    ok(apx_cache_put_reserved(c, &it->e, "p", 1, NOW(0), 0, 400)
       == APR_SUCCESS, "put_reserved links the entry");
    apx_cache_stats_get(c, &st);
    ok(st.bytes == 450 && st.reserved == 0, "... the reservation became its "
       "charge (bytes %zu, reserved %zu)", st.bytes, st.reserved);
    apx_cache_unref(c, &it->e);
    apx_cache_unreserve(c, 10);

    /* a pinned entry stays when room is made, even the oldest */
    apx_cache_invalidate(c, "p", 1);
    it = calloc(1, sizeof(*it));
    it->e.size = 100;
    it->e.refs = 1;
    it->e.flags = APX_CACHE_E_PINNED;
    apr_atomic_inc32(&created);
    apx_cache_put(c, &it->e, "pin", 3, NOW(0), 0);
    apx_cache_unref(c, &it->e);
    item_size = 300;
    apx_cache_unref(c, apx_cache_get_ref(c, "q", 1, NOW(0), 0, &err));
    ok(apx_cache_reserve(c, 900, 0) == APR_SUCCESS, "900 reserved next to "
       "a pinned 100 (oldest) and a 300");
    e = apx_cache_get_ref(c, "pin", 3, NOW(0), APX_CACHE_LOOKUP_ONLY, &err);
    apx_cache_stats_get(c, &st);
    ok(e && st.bytes == 100, "... the pinned entry stayed, the other went "
       "(bytes %zu)", st.bytes);
    if (e)
        apx_cache_unref(c, e);
    apx_cache_unreserve(c, 900);
    apx_cache_stats_get(c, &st);
    ok(st.reserved == 0, "unreserve never goes below zero");
    apx_cache_destroy(c);
}

/* Threads reserve, publish and give back at once: the budget holds for
 * linked + reserved whenever a non-forced reservation succeeded, and
 * everything is given back in the end (TSan-clean). */
#define RESERVERS 6
static apx_cache *res_cache;
static volatile apr_uint32_t res_over;

static void *reserver(void *arg)
{
    unsigned id = (unsigned)(uintptr_t)arg, seed = id;
    apx_cache_stats st;
    char key[32];
    int i;

    for (i = 0; i < 3000; i++) {
        size_t n = 100 + rand_r(&seed) % 900;

        if (apx_cache_reserve(res_cache, n, 0) != APR_SUCCESS)
            continue;
        apx_cache_stats_get(res_cache, &st);
        if (st.reserved > 20 * 1000)
            apr_atomic_inc32(&res_over);
        if (i % 3 == 0) {
            item *it = calloc(1, sizeof(*it));

            apr_atomic_inc32(&created);
            it->e.size = n;
            it->e.refs = 1;
            snprintf(key, sizeof(key), "%u-%d", id, i % 50);
            apx_cache_put_reserved(res_cache, &it->e, key, strlen(key),
                                   NOW(0), 0, n);
            apx_cache_unref(res_cache, &it->e);
        }
        else {
            apx_cache_unreserve(res_cache, n);
        }
    }
    return NULL;
}

static void test_reserve_threads(void)
{
    pthread_t t[RESERVERS];
    apx_cache_stats st;
    int i;

    res_cache = new_cache(20 * 1000);
    for (i = 0; i < RESERVERS; i++)
        pthread_create(&t[i], NULL, reserver, (void *)(uintptr_t)(i + 1));
    for (i = 0; i < RESERVERS; i++)
        pthread_join(t[i], NULL);
    apx_cache_stats_get(res_cache, &st);
    ok(res_over == 0, "%d threads reserving: reservations never passed the "
       "budget", RESERVERS);
    ok(st.reserved == 0 && st.bytes <= 20 * 1000, "... all given back "
       "(reserved %zu), linked %zu within the budget", st.reserved, st.bytes);
    apx_cache_destroy(res_cache);
    is_int(destroyed, created, "... every entry destroyed once");
}

int main(void)
{
    test_basic();
    test_expiry();
    test_lru_budget();
    test_put();
    test_remove();
    test_trylock();
    test_race();
    test_reserve();
    test_reserve_threads();
    test_set_expiry();
    return done_testing();
}
