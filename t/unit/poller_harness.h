/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* t/unit/poller_harness.h — what the engine tests share (t/unit/poller.c,
 * t/unit/poller_wake.c): the engine compiled in with counting wrappers
 * around epoll_ctl()/epoll_wait(), a dispatch recorder, bounded waits and
 * engine start-up. Included once per test program; helpers one program
 * does not use are marked unused. */
#ifndef POLLER_HARNESS_H
#define POLLER_HARNESS_H

#include <dirent.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>
#include <apr_general.h>
#include "tap.h"

/* The engine's epoll_ctl() and epoll_wait() go through counting wrappers:
 * the registration tests count the calls per operation and the fd events
 * reported (sys/epoll.h is included above, so only the engine's calls are
 * renamed). */
static unsigned ctl_calls[4];   /* atomic; by op: ADD 1, DEL 2, MOD 3 */
static unsigned fd_events;      /* atomic; events other than the eventfd's */
static int counted_epoll_ctl(int epfd, int op, int fd, struct epoll_event *ev);
static int counted_epoll_wait(int epfd, struct epoll_event *ev, int max, int ms);
#define epoll_ctl counted_epoll_ctl
#define epoll_wait counted_epoll_wait
#include "../../poller/tq.c"
#include "../../poller/workers.c"
#include "../../poller/poller.c"
#undef epoll_ctl
#undef epoll_wait

static int counted_epoll_ctl(int epfd, int op, int fd, struct epoll_event *ev)
{
    __atomic_fetch_add(&ctl_calls[op & 3], 1, __ATOMIC_RELAXED);
    return epoll_ctl(epfd, op, fd, ev);
}

static int counted_epoll_wait(int epfd, struct epoll_event *ev, int max, int ms)
{
    int n = epoll_wait(epfd, ev, max, ms), i;

    for (i = 0; i < n; i++)
        if (ev[i].data.u64)
            __atomic_fetch_add(&fd_events, 1, __ATOMIC_RELAXED);
    return n;
}

/* --------------------------------------------------------------- helpers */

static pthread_mutex_t mtx = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;

typedef struct rec {
    apx_park p;
    int calls;              /* under mtx */
    unsigned why, got[2];
    int thd_ok;             /* thd given and == apx_engine_current_thread() */
    int sig_ok;             /* SIGTERM blocked, SIGSEGV not, on the worker */
    apr_time_t at;          /* mono time of the dispatch */
    int abandoned;
    int abandoned_ok;       /* on the destroying thread, thd NULL */
    int resubmit_rv;
    int rewake_rv;          /* apx_park_wake() from abandoned() */
} rec;

static pthread_t main_thread;
static apx_engine *cur_engine;

static void on_dispatch(apx_park *p, apr_thread_t *thd)
{
    rec *r = p->baton;

    pthread_mutex_lock(&mtx);
    r->calls++;
    r->why = p->why;
    r->got[0] = p->got[0];
    r->got[1] = p->got[1];
    r->thd_ok = thd != NULL && apx_engine_current_thread() == thd;
    {
        sigset_t cur;
        pthread_sigmask(SIG_BLOCK, NULL, &cur);
        r->sig_ok = sigismember(&cur, SIGTERM) && sigismember(&cur, SIGHUP)
            && !sigismember(&cur, SIGSEGV);
    }
    r->at = mono_now();
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mtx);
}

static void on_abandoned(apx_park *p, apr_thread_t *thd)
{
    rec *r = p->baton;

    r->abandoned++;
    r->abandoned_ok = thd == NULL && pthread_equal(pthread_self(), main_thread)
        && p->why == APX_EV_SHUTDOWN;
    /* the engine is gone: it must refuse, and the record stays ours */
    r->resubmit_rv = apx_park_submit(cur_engine, p);
    r->rewake_rv = apx_park_wake(cur_engine, p);
}

static void rec_init(rec *r)
{
    memset(r, 0, sizeof(*r));
    apx_park_init(&r->p, on_dispatch, r);
}

/* Waits until r was dispatched n times or ms passed; returns calls. */
static int wait_calls(rec *r, int n, int ms)
{
    struct timespec until;
    int c;

    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += ms / 1000;
    until.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&mtx);
    while (r->calls < n && pthread_cond_timedwait(&cv, &mtx, &until) == 0)
        ;
    c = r->calls;
    pthread_mutex_unlock(&mtx);
    return c;
}

static int calls_of(rec *r)
{
    int c;

    pthread_mutex_lock(&mtx);
    c = r->calls;
    pthread_mutex_unlock(&mtx);
    return c;
}

/* With one worker the queue is strict FIFO: once a run_submit marker ran,
 * everything queued before it has been dispatched. */
static int flush(apx_engine *e)
{
    rec m;

    rec_init(&m);
    if (apx_run_submit(e, &m.p) != APR_SUCCESS)
        return 0;
    return wait_calls(&m, 1, 5000) == 1;
}

static int count_tasks(void)
{
    DIR *d = opendir("/proc/self/task");
    struct dirent *de;
    int n = 0;

    if (!d)
        return -1;
    while ((de = readdir(d)) != NULL)
        if (de->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

/* Polls until the task count is `want` (threads leave the kernel a moment
 * after they signalled their exit). */
__attribute__((unused))
static int wait_tasks(int want, int ms)
{
    int i, n = count_tasks();

    for (i = 0; i < ms && n != want; i++) {
        usleep(1000);
        n = count_tasks();
    }
    return n;
}

static void stats(apx_engine *e, apx_engine_stats *st)
{
    apx_engine_stats_get(e, st);
}

/* Polls the stats until pred holds or ms passed. */
#define WAIT_STATS(e, st, cond, ms)                                        \
    do {                                                                   \
        int i_;                                                            \
        for (i_ = 0; i_ < (ms); i_++) {                                    \
            stats((e), &(st));                                             \
            if (cond)                                                      \
                break;                                                     \
            usleep(1000);                                                  \
        }                                                                  \
    } while (0)

static apx_engine *start_with(apr_pool_t *pool, const apx_engine_conf *conf)
{
    apx_engine *e = NULL;

    if (apx_engine_create(&e, conf, pool) != APR_SUCCESS)
        return NULL;
    if (apx_engine_start(e) != APR_SUCCESS) {
        apx_engine_destroy(e, NULL);
        return NULL;
    }
    cur_engine = e;
    return e;
}

static apx_engine *start_engine(apr_pool_t *pool, unsigned min, unsigned max,
                                apr_interval_time_t idle)
{
    apx_engine_conf conf;

    apx_engine_conf_default(&conf);
    conf.workers_min = min;
    conf.workers_max = max;
    conf.worker_idle_timeout = idle;
    return start_with(pool, &conf);
}


static void *noop_thread(void *arg)
{
    return arg;
}

/* The start of every poller test program: APR, a pool, the main thread. */
static apr_pool_t *harness_start(void)
{
    apr_pool_t *pool;
    pthread_t t;

    apr_initialize();
    apr_pool_create(&pool, NULL);
    main_thread = pthread_self();
    /* A sanitizer runtime may start a helper thread on the first
     * pthread_create: have that happen before any thread count is taken. */
    pthread_create(&t, NULL, noop_thread, NULL);
    pthread_join(t, NULL);
    return pool;
}

static int harness_done(apr_pool_t *pool)
{
    apr_pool_destroy(pool);
    apr_terminate();
    return done_testing();
}

#endif /* POLLER_HARNESS_H */
