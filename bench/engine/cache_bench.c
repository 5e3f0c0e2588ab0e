/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* Cache core micro-benchmark: hit lookups (get_ref + unref) per second on
 * 1 and 2 threads, over 1024 warm keys. Printed, not asserted. */
#include <stdio.h>
#include <time.h>
#include "../../poller/cache.c"

#define KEYS 1024
#define LOOKUPS 2000000

static apx_cache *cache;

static apx_cache_entry *make(const void *k, size_t n, void *b)
{
    apx_cache_entry *e = calloc(1, sizeof(*e));

    e->size = 64;
    return e;
}

static void drop(apx_cache_entry *e, void *b)
{
    free(e);
}

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *lookups(void *arg)
{
    char key[16];
    unsigned i;

    for (i = 0; i < LOOKUPS; i++) {
        apr_status_t err;
        apx_cache_entry *e;

        snprintf(key, sizeof(key), "k%u", (i * 7919u) % KEYS);
        e = apx_cache_get_ref(cache, key, strlen(key), 1, APX_CACHE_TRYLOCK,
                              &err);
        if (e)
            apx_cache_unref(cache, e);
    }
    return NULL;
}

int main(void)
{
    apx_cache_conf conf = { make, drop, NULL, 0, apr_time_from_sec(3600), 4096 };
    pthread_t t[2];
    int n, i;

    apx_cache_create(&cache, &conf);
    lookups(NULL);      /* warm: every key created */
    for (n = 1; n <= 2; n++) {
        double t0 = now_s(), dt;

        for (i = 0; i < n; i++)
            pthread_create(&t[i], NULL, lookups, NULL);
        for (i = 0; i < n; i++)
            pthread_join(t[i], NULL);
        dt = now_s() - t0;
        printf("cache hits, %d thread%s: %.1f M lookups/s\n", n,
               n > 1 ? "s" : "", n * LOOKUPS / dt / 1e6);
    }
    apx_cache_destroy(cache);
    return 0;
}
