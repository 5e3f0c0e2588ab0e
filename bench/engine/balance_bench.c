/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* Balancer micro-benchmark (issue 13 row (b): "the balancer should cost
 * under 2 µs"): one pick + one done per request, the whole of the engine's
 * part of a balanced request, for each method over 4 members, one thread,
 * with and without a mutex around each call (the glue holds the group's
 * lock for each). Printed, not asserted. The glue's other part (reading
 * the sticky cookie, the shared-memory slot of max=, the check generation)
 * is a few loads and one CAS. */
#include <pthread.h>
#include <stdio.h>
#include <time.h>
#include "../../poller/balance.c"

#define N 4
#define PICKS 2000000

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void run(apr_pool_t *p, int method, const char *name, int locked)
{
    static const char *names[N] = { "a", "b", "c", "d" };
    apx_bal_member_spec specs[N];
    apx_bal_config cfg;
    apx_bal_group *g;
    apx_bal_rng rng;
    apx_bal_req rq = { "key-42", 6, NULL, 0 };
    pthread_mutex_t mtx = PTHREAD_MUTEX_INITIALIZER;
    apr_time_t t = apr_time_now();
    unsigned idx, i;
    double t0, dt;

    memset(specs, 0, sizeof(specs));
    for (i = 0; i < N; i++) {
        specs[i].name = names[i];
        specs[i].weight = 1 + i;
    }
    apx_bal_config_init(&cfg);
    cfg.method = method;
    if (apx_bal_group_create(&g, p, &cfg, specs, N, t) != APR_SUCCESS) {
        fprintf(stderr, "group_create failed\n");
        exit(1);
    }
    apx_bal_rng_seed(&rng, 42);
    t0 = now_s();
    for (i = 0; i < PICKS; i++) {
        t += 1000;      /* a request a millisecond: latencies decay */
        if (locked)
            pthread_mutex_lock(&mtx);
        if (apx_bal_pick(g, &rq, t, &rng, &idx) != APR_SUCCESS) {
            fprintf(stderr, "pick failed\n");
            exit(1);
        }
        if (locked) {
            pthread_mutex_unlock(&mtx);
            pthread_mutex_lock(&mtx);
        }
        apx_bal_done(g, idx, APX_BAL_OK, 20000 + (idx == 3 ? 180000 : 0), t);
        if (locked)
            pthread_mutex_unlock(&mtx);
    }
    dt = now_s() - t0;
    printf("%-9s %-9s %7.1f ns per pick + done (%u requests)\n", name,
           locked ? "locked" : "unlocked", dt * 1e9 / PICKS, PICKS);
}

int main(void)
{
    apr_pool_t *p;

    apr_initialize();
    apr_pool_create(&p, NULL);
    run(p, APX_BAL_P2C_EWMA, "p2c-ewma", 0);
    run(p, APX_BAL_P2C_EWMA, "p2c-ewma", 1);
    run(p, APX_BAL_WRR, "wrr", 1);
    run(p, APX_BAL_HASH, "hash", 1);
    apr_pool_destroy(p);
    apr_terminate();
    return 0;
}
