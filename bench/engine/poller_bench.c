/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* poller_bench.c — engine micro-benchmarks (printed, not asserted):
 *   1. wake latency: a record parked on a quiet socketpair, another thread
 *      writes the byte; time from just before write() to dispatch() start;
 *   2. hand-over latency: apx_park_submit() of an already readable fd to
 *      dispatch() start (intake, eventfd, epoll ADD, DEL, worker queue);
 *   3. throughput: records parked + dispatched per second with 256 records
 *      in flight on always-readable sockets, each re-parking itself from
 *      its dispatch.
 */
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <apr_general.h>
#include "../../poller/tq.c"
#include "../../poller/workers.c"
#include "../../poller/poller.c"

enum { LAT_N = 20000, INFLIGHT = 256 };

static apr_time_t lat[LAT_N];
/* Blocking waits, not spins: on a 2-core box a spinning waiter would take
 * the CPU the poller and the worker need. */
static pthread_mutex_t mtx = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static apr_time_t t_dispatch;               /* under mtx */
static int dispatched_flag;                 /* under mtx */

static void lat_dispatch(apx_park *p, apr_thread_t *thd)
{
    apr_time_t now = mono_now();

    pthread_mutex_lock(&mtx);
    t_dispatch = now;
    dispatched_flag = 1;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mtx);
}

static int cmp_time(const void *a, const void *b)
{
    apr_time_t x = *(const apr_time_t *)a, y = *(const apr_time_t *)b;

    return x < y ? -1 : x > y;
}

static void report(const char *what, apr_time_t *v, int n)
{
    qsort(v, n, sizeof(*v), cmp_time);
    printf("%-44s p50 %6.1f us   p99 %6.1f us   max %7.1f us  (n=%d)\n", what,
           (double)v[n / 2], (double)v[n * 99 / 100], (double)v[n - 1], n);
}


static void wait_dispatched(void)
{
    pthread_mutex_lock(&mtx);
    while (!dispatched_flag)
        pthread_cond_wait(&cv, &mtx);
    dispatched_flag = 0;
    pthread_mutex_unlock(&mtx);
}

/* The "peer": waits until the record is parked, then writes. */
typedef struct peer {
    apx_engine *e;
    int fd;
    int go;                 /* under mtx: round number to serve */
    apr_time_t t_write[LAT_N];
} peer;

static void *peer_main(void *arg)
{
    peer *pe = arg;
    int round;

    for (round = 1; round <= LAT_N; round++) {
        pthread_mutex_lock(&mtx);
        while (pe->go < round)
            pthread_cond_wait(&cv, &mtx);
        pthread_mutex_unlock(&mtx);
        /* parked means the poller armed it: the write now wakes epoll */
        while (__atomic_load_n(&pe->e->parked, __ATOMIC_RELAXED) == 0)
            sched_yield();
        pe->t_write[round - 1] = mono_now();
        if (write(pe->fd, "x", 1) != 1)
            abort();
    }
    return NULL;
}

static apx_engine *engine(apr_pool_t *pool, unsigned min, unsigned max)
{
    apx_engine_conf conf;
    apx_engine *e;

    apx_engine_conf_default(&conf);
    conf.workers_min = min;
    conf.workers_max = max;
    if (apx_engine_create(&e, &conf, pool) != APR_SUCCESS
        || apx_engine_start(e) != APR_SUCCESS)
        exit(1);
    return e;
}

static void bench_wake(apr_pool_t *pool)
{
    apx_engine *e = engine(pool, 1, 1);
    static peer pe;
    apx_park p;
    pthread_t th;
    int sv[2], i;
    char c;

    socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
    pe.e = e;
    pe.fd = sv[1];
    pthread_create(&th, NULL, peer_main, &pe);
    apx_park_init(&p, lat_dispatch, NULL);
    p.fd[0] = sv[0];
    p.want[0] = APX_EV_IN;
    p.timeout = apr_time_from_sec(10);
    for (i = 0; i < LAT_N; i++) {
        apx_park_submit(e, &p);
        pthread_mutex_lock(&mtx);
        pe.go = i + 1;
        pthread_cond_broadcast(&cv);
        pthread_mutex_unlock(&mtx);
        wait_dispatched();
        lat[i] = t_dispatch - pe.t_write[i];
        if (read(sv[0], &c, 1) != 1)
            abort();
        /* the poller publishes `parked` after its pass: let it show 0 */
        while (__atomic_load_n(&e->parked, __ATOMIC_RELAXED) != 0)
            sched_yield();
    }
    pthread_join(th, NULL);
    report("wake: peer write() -> dispatch()", lat, LAT_N);
    apx_engine_destroy(e, NULL);
    close(sv[0]);
    close(sv[1]);
}

static void bench_handover(apr_pool_t *pool)
{
    apx_engine *e = engine(pool, 1, 1);
    apx_park p;
    apr_time_t t0;
    int sv[2], i;

    socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
    if (write(sv[1], "x", 1) != 1)      /* stays readable */
        abort();
    apx_park_init(&p, lat_dispatch, NULL);
    p.fd[0] = sv[0];
    p.want[0] = APX_EV_IN;
    p.timeout = apr_time_from_sec(10);
    for (i = 0; i < LAT_N; i++) {
        t0 = mono_now();
        apx_park_submit(e, &p);
        wait_dispatched();
        lat[i] = t_dispatch - t0;
    }
    report("hand-over: park_submit(ready fd) -> dispatch()", lat, LAT_N);
    apx_engine_destroy(e, NULL);
    close(sv[0]);
    close(sv[1]);
}

/* Throughput: each record re-parks itself until the run ends. */
static apx_engine *tp_engine;
static int tp_stop;                 /* atomic */
static apr_uint64_t tp_count;       /* atomic */
static int tp_outstanding;          /* atomic: records not yet retired */

static void tp_dispatch(apx_park *p, apr_thread_t *thd)
{
    __atomic_fetch_add(&tp_count, 1, __ATOMIC_RELAXED);
    if (__atomic_load_n(&tp_stop, __ATOMIC_RELAXED)
        || apx_park_submit(tp_engine, p) != APR_SUCCESS)
        __atomic_fetch_sub(&tp_outstanding, 1, __ATOMIC_RELEASE);
}

static void tp_run_dispatch(apx_park *p, apr_thread_t *thd)
{
    __atomic_fetch_add(&tp_count, 1, __ATOMIC_RELAXED);
    if (__atomic_load_n(&tp_stop, __ATOMIC_RELAXED)
        || apx_run_submit(tp_engine, p) != APR_SUCCESS)
        __atomic_fetch_sub(&tp_outstanding, 1, __ATOMIC_RELEASE);
}

static void bench_throughput(apr_pool_t *pool, unsigned workers, int run_only)
{
    apx_park *recs = calloc(INFLIGHT, sizeof(*recs));
    int (*sv)[2] = calloc(INFLIGHT, sizeof(*sv));
    apr_time_t t0, t1;
    apr_uint64_t n0, n1;
    int i;

    tp_engine = engine(pool, workers, workers);
    tp_stop = 0;
    tp_count = 0;
    tp_outstanding = INFLIGHT;
    for (i = 0; i < INFLIGHT; i++) {
        apx_park_init(&recs[i], run_only ? tp_run_dispatch : tp_dispatch, NULL);
        if (!run_only) {
            socketpair(AF_UNIX, SOCK_STREAM, 0, sv[i]);
            if (write(sv[i][1], "x", 1) != 1)
                abort();
            recs[i].fd[0] = sv[i][0];
            recs[i].want[0] = APX_EV_IN;
            recs[i].timeout = apr_time_from_sec(10);
        }
    }
    for (i = 0; i < INFLIGHT; i++)
        if (run_only)
            apx_run_submit(tp_engine, &recs[i]);
        else
            apx_park_submit(tp_engine, &recs[i]);
    usleep(200000);     /* warm up */
    n0 = __atomic_load_n(&tp_count, __ATOMIC_RELAXED);
    t0 = mono_now();
    usleep(1500000);
    n1 = __atomic_load_n(&tp_count, __ATOMIC_RELAXED);
    t1 = mono_now();
    __atomic_store_n(&tp_stop, 1, __ATOMIC_RELAXED);
    while (__atomic_load_n(&tp_outstanding, __ATOMIC_ACQUIRE) > 0)
        usleep(1000);
    printf("%-44s %9.0f /s  (%d in flight, %u workers)\n",
           run_only ? "run_submit -> dispatch (no epoll)"
                    : "parked + dispatched (ready sockets)",
           (double)(n1 - n0) * 1e6 / (double)(t1 - t0), INFLIGHT, workers);
    apx_engine_destroy(tp_engine, NULL);
    if (!run_only)
        for (i = 0; i < INFLIGHT; i++) {
            close(sv[i][0]);
            close(sv[i][1]);
        }
    free(sv);
    free(recs);
}

int main(void)
{
    apr_pool_t *pool;

    apr_initialize();
    apr_pool_create(&pool, NULL);
    bench_wake(pool);
    bench_handover(pool);
    bench_throughput(pool, 1, 0);
    bench_throughput(pool, 2, 0);
    bench_throughput(pool, 2, 1);
    apr_pool_destroy(pool);
    apr_terminate();
    return 0;
}
