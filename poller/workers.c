/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* workers.c — the engine's threads and its elastic worker pool: the
 * workers pop the worker queue (wq_mtx) and run each record's dispatch().
 *
 * Worker pool: workers_min threads start with the engine; a push that leaves
 * more records queued than there are workers outside dispatch() starts more,
 * up to workers_max, so one blocked dispatch cannot stall the rest. A worker
 * above the minimum that waited worker_idle_timeout without work exits. Every
 * thread is joinable and joined: an exiting worker joins the workers that
 * exited before it (they are gone or leaving: the join is short), then puts
 * itself on e->zombies; destroy joins whatever is left. Each thread has its
 * own subpool of the engine pool (the engine allocator has a mutex, so any
 * thread may create or destroy one), freed after its join: growing and
 * shrinking for months does not grow the engine pool.
 *
 * Threads: apx__spawn_thread() and the joins on the main thread or an
 * exiting worker; apx__enqueue_locked() and apx__wake_idle_locked() under
 * wq_mtx on any thread (the poller, a submitter); apx__start_workers()
 * without locks, after an enqueue asked for them.
 *
 * Log numbers used here: APX00300.
 */
#include <errno.h>
#include <signal.h>
#include <apr_pools.h>
#include "engine.h"

__thread apr_thread_t *apx__engine_thread;

/* Engine threads start with asynchronous signals blocked, so that httpd's
 * signals (SIGTERM, SIGHUP, SIGUSR1, ...) keep reaching the MPM's threads
 * even when the engine starts before the MPM blocked them itself; faults
 * stay deliverable. The mask is set around the creation so it holds from
 * the thread's first instruction. */
static void async_signals(sigset_t *set)
{
    sigfillset(set);
    sigdelset(set, SIGSEGV);
    sigdelset(set, SIGBUS);
    sigdelset(set, SIGILL);
    sigdelset(set, SIGFPE);
    sigdelset(set, SIGABRT);
    sigdelset(set, SIGTRAP);
    sigdelset(set, SIGSYS);
}

apr_status_t apx__spawn_thread(apx_engine *e, apr_thread_start_t fn,
                               engine_thread **pt)
{
    apr_pool_t *tp;
    engine_thread *t;
    sigset_t block, old;
    apr_status_t rv;

    rv = apr_pool_create(&tp, e->pool);
    if (rv != APR_SUCCESS)
        return rv;
    t = apr_pcalloc(tp, sizeof(*t));
    t->e = e;
    t->pool = tp;
    async_signals(&block);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    rv = apr_thread_create(&t->thd, NULL, fn, t, tp);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rv != APR_SUCCESS) {
        apr_pool_destroy(tp);
        return rv;
    }
    if (pt)
        *pt = t;
    return APR_SUCCESS;
}

void apx__join_thread(engine_thread *t)
{
    apr_status_t ret;

    apr_thread_join(&ret, t->thd);
    apr_pool_destroy(t->pool);
}

void apx__join_list(engine_thread *t)
{
    engine_thread *next;

    for (; t; t = next) {
        next = t->next;
        apx__join_thread(t);
    }
}

static void *APR_THREAD_FUNC worker_main(apr_thread_t *thd, void *data);

/* Starts n workers that the caller already counted in e->workers and
 * e->live; gives the count back for those that fail. Called without locks. */
void apx__start_workers(apx_engine *e, unsigned n)
{
    apr_status_t rv;

    for (; n; n--) {
        rv = apx__spawn_thread(e, worker_main, NULL);
        if (rv != APR_SUCCESS) {
            apx_log(APX_LOG_ERR, rv, "APX00300: cannot start an engine "
                    "worker thread");
            pthread_mutex_lock(&e->wq_mtx);
            e->workers--;
            e->live--;
            pthread_cond_broadcast(&e->exit_cond);
            pthread_mutex_unlock(&e->wq_mtx);
        }
    }
}

/* Wakes one idle worker (the caller saw e->idle). Called with wq_mtx held. */
void apx__wake_idle_locked(apx_engine *e)
{
    e->idle--;
    e->wakeups++;
    pthread_cond_signal(&e->wq_cond);
}

/* Appends a ready list to the worker queue and wakes idle workers for it,
 * but keeps at most awake_max workers awake (busy ones count): a worker
 * that finishes a record takes the next one itself, so waking one per
 * record only has more threads than cores contend for the queue and
 * switch (measured: 3.3 context switches per proxied request with one
 * wake per record). Starts new workers only up to awake_max; past it the
 * poller's watchdog (watch_queue()) adds workers while the queue makes no
 * progress. Returns how many to start (the caller starts them after
 * unlocking), or -1 when the engine is gone. Called with wq_mtx held. */
int apx__enqueue_locked(apx_engine *e, park_list *ready, int check_gone)
{
    unsigned k = ready->n, awake, takers, spawn = 0;

    if (check_gone && e->wq_gone)
        return -1;
    list_splice(&e->wq, ready);
    awake = e->workers - e->idle;       /* busy, between records, woken,
                                         * or still starting */
    for (; k && e->idle && awake < e->awake_max; k--, awake++)
        apx__wake_idle_locked(e);
    takers = awake - e->busy;
    if (e->started && !e->wq_stop && !e->idle && awake < e->awake_max
        && e->workers < e->conf.workers_max && e->wq.n > takers) {
        spawn = e->wq.n - takers;
        if (spawn > e->awake_max - awake)
            spawn = e->awake_max - awake;
        if (spawn > e->conf.workers_max - e->workers)
            spawn = e->conf.workers_max - e->workers;
        e->workers += spawn;
        e->live += spawn;
        takers += spawn;
    }
    if (e->wq.n > takers && !e->watch) {
        __atomic_store_n(&e->watch, 1, __ATOMIC_RELAXED);
        e->watch_pops = e->dispatched_total;
        e->watch_at = mono_now();
    }
    return (int)spawn;
}

static void *APR_THREAD_FUNC worker_main(apr_thread_t *thd, void *data)
{
    engine_thread *self = data, *reap;
    apx_engine *e = self->e;
    apx_park *p;
    struct timespec until;
    int rc;

    apx__engine_thread = thd;
    pthread_mutex_lock(&e->wq_mtx);
    for (;;) {
        p = list_pop(&e->wq);
        if (p) {
            set_state(p, ST_OWNED);
            e->busy++;
            /* under wq_mtx: the watchdog reads it as the queue's progress */
            ATOMIC_INC64(&e->dispatched_total);
            pthread_mutex_unlock(&e->wq_mtx);
            p->dispatch(p, thd);
            pthread_mutex_lock(&e->wq_mtx);
            e->busy--;
            continue;
        }
        if (e->wq_stop)
            break;

        e->idle++;
        if (e->workers > e->conf.workers_min) {
            clock_gettime(CLOCK_MONOTONIC, &until);
            until.tv_sec += e->conf.worker_idle_timeout / APR_USEC_PER_SEC;
            until.tv_nsec += (e->conf.worker_idle_timeout % APR_USEC_PER_SEC) * 1000;
            if (until.tv_nsec >= 1000000000L) {
                until.tv_sec++;
                until.tv_nsec -= 1000000000L;
            }
            rc = pthread_cond_timedwait(&e->wq_cond, &e->wq_mtx, &until);
        }
        else {
            rc = pthread_cond_wait(&e->wq_cond, &e->wq_mtx);
        }
        if (e->wakeups)
            e->wakeups--;
        else
            e->idle--;
        if (rc == ETIMEDOUT && !e->wq.head && !e->wq_stop
            && e->workers > e->conf.workers_min)
            break;              /* idle too long above the minimum */
    }

    e->workers--;
    reap = e->zombies;
    e->zombies = NULL;
    pthread_mutex_unlock(&e->wq_mtx);

    /* Those exited before us: their threads are gone or leaving. */
    apx__join_list(reap);

    pthread_mutex_lock(&e->wq_mtx);
    self->next = e->zombies;
    e->zombies = self;
    e->live--;
    pthread_cond_broadcast(&e->exit_cond);
    pthread_mutex_unlock(&e->wq_mtx);
    apx__engine_thread = NULL;
    return NULL;
}

