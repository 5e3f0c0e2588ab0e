/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* coro_bench.c — coroutine figures, printed (not asserted):
 *   - context switches: resume+yield pairs per second;
 *   - create+destroy per second with pooled stacks (never started, and run
 *     to completion);
 *   - create+run+destroy with 1000 coroutines in flight, over the warm free
 *     list: stacks unmapped and mapped again vs kept cold (madvise);
 *   - resident stack bytes of a parked coroutine that called snprintf() with
 *     an 8 KB buffer on its stack (httpd's logging does), before and after
 *     apx_coro_stack_trim().
 * Single-threaded; about two seconds. Build with -DAPX_CORO_UCONTEXT=1 to
 * measure the fallback. */
#include "../../poller/coro.c"

#include <stdio.h>
#include <time.h>

#define STACK_SIZE (128 * 1024)

static double now_sec(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static intptr_t spin_body(apx_coro *coro, void *data)
{
    intptr_t v = 0;

    for (;;)
        v = apx_coro_yield(coro, v + 1);
    return 0;
}

static intptr_t empty_body(apx_coro *coro, void *data)
{
    return 1;
}

static __attribute__((noinline)) int log_line(int n)
{
    char buf[8192];

    return snprintf(buf, sizeof(buf), "APX%05d: request %d to %s took %.3f s "
                    "(%s)", n, n * 7, "http://127.0.0.1:8080/slow", n * 0.25,
                    "parked");
}

static intptr_t park_body(apx_coro *coro, void *data)
{
    int n = log_line(42);

    apx_coro_yield(coro, n);
    return 0;
}

int main(void)
{
    apx_stack_pool *pool;
    apx_coro *coro, *parked[1000];
    const long switches = 20 * 1000 * 1000L, creates = 1000 * 1000L;
    size_t fresh, deep, trimmed, total;
    intptr_t sink = 0;
    double t0, dt;
    long i;

    if (apx_stack_pool_create(&pool, STACK_SIZE, 1024) != APR_SUCCESS) {
        fprintf(stderr, "stack pool: out of memory\n");
        return 1;
    }
    printf("switch: %s; stacks %zu KB; struct apx_coro %zu bytes\n",
           CORO_UCONTEXT ? "ucontext" : "assembly",
           apx_stack_pool_stack_size(pool) / 1024, sizeof(struct apx_coro));

    apx_coro_create(&coro, pool, spin_body, NULL);
    apx_coro_resume(coro);
    t0 = now_sec();
    for (i = 0; i < switches; i++)
        sink += apx_coro_resume_value(coro, i);
    dt = now_sec() - t0;
    apx_coro_destroy(coro);
    printf("resume+yield pairs:        %8.1f M/s  (%.1f ns per pair)\n",
           switches / dt / 1e6, dt / switches * 1e9);

    t0 = now_sec();
    for (i = 0; i < creates; i++) {
        apx_coro_create(&coro, pool, empty_body, NULL);
        apx_coro_destroy(coro);
    }
    dt = now_sec() - t0;
    printf("create+destroy (pooled):   %8.1f M/s  (%.1f ns)\n",
           creates / dt / 1e6, dt / creates * 1e9);

    t0 = now_sec();
    for (i = 0; i < creates; i++) {
        apx_coro_create(&coro, pool, empty_body, NULL);
        sink += apx_coro_resume(coro);
        apx_coro_destroy(coro);
    }
    dt = now_sec() - t0;
    printf("create+run+destroy:        %8.1f M/s  (%.1f ns)\n",
           creates / dt / 1e6, dt / creates * 1e9);

    /* A fresh pool so the stacks start untouched. */
    apx_stack_pool_destroy(pool);
    apx_stack_pool_create(&pool, STACK_SIZE, 1024);
    apx_coro_create(&coro, pool, park_body, NULL);
    fresh = apx_coro_stack_resident(coro);
    sink += apx_coro_resume(coro);
    deep = apx_coro_stack_resident(coro);
    apx_coro_stack_trim(coro, 0);
    trimmed = apx_coro_stack_resident(coro);
    apx_coro_destroy(coro);
    printf("resident stack, parked after snprintf into 8 KB: fresh %zu, "
           "parked %zu, trimmed %zu bytes\n", fresh, deep, trimmed);

    total = 0;
    for (i = 0; i < 1000; i++) {
        apx_coro_create(&parked[i], pool, park_body, NULL);
        sink += apx_coro_resume(parked[i]);
        total += apx_coro_stack_resident(parked[i]);
    }
    printf("1000 such parked coroutines: %zu KB resident stack (%zu per "
           "request)\n", total / 1024, total / 1000);
    total = 0;
    for (i = 0; i < 1000; i++) {
        apx_coro_stack_trim(parked[i], 0);
        total += apx_coro_stack_resident(parked[i]);
        apx_coro_destroy(parked[i]);
    }
    printf("  after apx_coro_stack_trim(keep 0): %zu KB (%zu per request)\n",
           total / 1024, total / 1000);
    apx_stack_pool_destroy(pool);

    /* More coroutines in flight than the warm list keeps (57 in the
     * module: AsyncProxyWorkers max x 4 + ThreadsPerChild): the surplus is
     * either unmapped and mapped again (max_cold 0, the old behaviour) or
     * kept cold (madvise). Each round runs 1000 at once, each touching its
     * top page as a request does. */
    for (i = 0; i < 2; i++) {
        unsigned max_cold = i ? 1024 : 0;
        int round, j, rounds = 200;

        apx_stack_pool_create(&pool, STACK_SIZE, 57);
        apx_stack_pool_set_max_cold(pool, max_cold);
        t0 = now_sec();
        for (round = 0; round < rounds; round++) {
            for (j = 0; j < 1000; j++) {
                apx_coro_create(&parked[j], pool, empty_body, NULL);
                sink += apx_coro_resume(parked[j]);
            }
            for (j = 0; j < 1000; j++)
                apx_coro_destroy(parked[j]);
        }
        dt = now_sec() - t0;
        printf("1000 in flight, warm list 57, max_cold %4u: %6.2f us per "
               "create+run+destroy\n", max_cold, dt / (rounds * 1000.0) * 1e6);
        apx_stack_pool_destroy(pool);
    }
    return sink == 42 ? 2 : 0;    /* keeps the loops from being elided */
}
