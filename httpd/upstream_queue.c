/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* upstream_queue.c — the parked queue of a capped member (upstream_queue.h).
 *
 * Which member a request waits for: the one the group's method picked
 * (its sticky route's, its hash key's, p2c's or wrr's choice). That is
 * HAProxy's rule for a request bound to a server; a group-wide queue that
 * takes the first member with a free slot is not done (p2c-ewma already
 * steers away from a loaded member; a member full of slow requests fills
 * its queue and answers 503 sooner than its neighbours).
 *
 * Order across children: each child keeps one FIFO per member and
 * publishes its oldest waiter's arrival in the shared record
 * (apx_mshm_set_head). A slot goes to the oldest waiter of all children:
 *   - freed in a child whose own head is the oldest: handed over at once,
 *     without ever being given back (nobody can take it in between);
 *   - otherwise given back to the shared count; each child with waiters
 *     runs a timer every QUEUE_TICK that takes free slots for its head
 *     while that head is the oldest. So a slot freed in child A for a
 *     waiter of child B is idle for at most one tick (2 ms), and two
 *     waiters of different children are served in arrival order unless
 *     their arrivals are closer than the clocks' reads (same machine, one
 *     wall clock).
 * New arrivals never pass waiters: a request takes a slot directly only
 * when nobody waits for the member in any child.
 *
 * Threads: one mutex per child guards every FIFO of the child; it is held
 * for list work, shared-memory atomics and apx_park_wake() (which never
 * blocks beyond the engine's intake lock), never across a wait or a log
 * line. A waiter, resumed for whatever reason, leaves its FIFO under the
 * mutex before it looks at `granted`, so a slot handed to it as its
 * timeout fired is still seen (and used, or given back).
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>

#include "httpd.h"
#include "http_config.h"
#include "http_log.h"

#include "child.h"
#include "upstream_queue.h"
#include "upstream_shm.h"

APLOG_USE_MODULE(asyncproxy);

/* A child with waiters looks for slots freed in other children this often:
 * the longest a slot stays idle when its waiter is in another child. */
#define QUEUE_TICK          apr_time_from_msec(2)
/* Dead children's records are looked for this often while waiters exist
 * (a crashed child's slots would otherwise keep the queue waiting). */
#define QUEUE_SWEEP_EVERY   apr_time_from_sec(1)
/* A waiter that cannot park (worker MPM, HTTP/2 stream) looks this often;
 * it holds its thread anyway, as every request does there. */
#define QUEUE_SYNC_POLL_MS  5

typedef struct q_waiter {
    struct q_waiter *next, *prev;
    apx_park *p;                    /* NULL: a waiter polling in place */
    apr_time_t at;                  /* arrival: the order across children */
    unsigned gidx;
    unsigned linked:1;              /* in its FIFO (under q_mtx) */
    unsigned granted:1;             /* holds a slot (set under q_mtx) */
} q_waiter;

typedef struct q_list {
    q_waiter *head, *tail;
    apr_uint32_t n;
} q_list;

static pthread_mutex_t q_mtx = PTHREAD_MUTEX_INITIALIZER;
static q_list *lists;               /* per member (gidx), this child */
static unsigned nlists;
static apr_uint32_t waiting_here;   /* under q_mtx */
static server_rec *q_server;

static apx_timer q_tick;
static void tick_fire(apx_park *p, apr_thread_t *thd);
static apr_time_t last_sweep;       /* the tick's own (one at a time) */

void apx_queue_child_init(apr_pool_t *pchild, server_rec *s)
{
    apr_array_header_t *all = apx_gconf.balancers;
    int i;

    lists = NULL;
    nlists = 0;
    waiting_here = 0;
    apx_timer_init(&q_tick, tick_fire, 0);
    q_server = s;
    for (i = 0; all && i < all->nelts; i++)
        nlists += (unsigned)APR_ARRAY_IDX(all, i, apx_balancer *)
                  ->members->nelts;
    if (!nlists || !apx_mshm_at(0))
        return;
    lists = apr_pcalloc(pchild, nlists * sizeof(*lists));
}

apr_uint32_t apx_queue_here(unsigned gidx)
{
    apr_uint32_t n;

    if (!lists || gidx >= nlists)
        return 0;
    pthread_mutex_lock(&q_mtx);
    n = lists[gidx].n;
    pthread_mutex_unlock(&q_mtx);
    return n;
}

/* ------------------------------------------------------------------ */
/* the FIFOs (under q_mtx)                                              */

static void publish_head(unsigned gidx)
{
    q_list *l = &lists[gidx];

    apx_mshm_set_head(gidx, l->head ? l->head->at : 0);
}

static void unlink_waiter(q_waiter *w)
{
    q_list *l = &lists[w->gidx];

    if (w->prev)
        w->prev->next = w->next;
    else
        l->head = w->next;
    if (w->next)
        w->next->prev = w->prev;
    else
        l->tail = w->prev;
    w->next = w->prev = NULL;
    w->linked = 0;
    l->n--;
    waiting_here--;
    apx_mshm_queued_add(w->gidx, -1);
}

/* The head of gidx's FIFO gets a slot the caller holds for it. */
static void grant_head(unsigned gidx, apr_time_t now)
{
    q_list *l = &lists[gidx];
    q_waiter *w = l->head;
    apx_mshm_member *sm = apx_mshm_at(gidx);

    unlink_waiter(w);
    publish_head(gidx);
    w->granted = 1;
    __atomic_add_fetch(&sm->dispatched, 1, __ATOMIC_RELAXED);
    apx_mshm_max64(&sm->max_wait_us,
                   now > w->at ? (apr_uint64_t)(now - w->at) : 0);
    /* 0 when its park already ended (timeout, client gone): it finds
     * `granted` when it leaves the FIFO */
    if (w->p && apx_ch && apx_ch->engine)
        apx_park_wake(apx_ch->engine, w->p);
}

/* Free slots go to this child's waiters while its head is the oldest. */
static void dispatch(unsigned gidx, apr_time_t now)
{
    q_list *l = &lists[gidx];

    while (l->head && apx_mshm_head_is_oldest(gidx, l->head->at)
           && apx_mshm_take(gidx))
        grant_head(gidx, now);
}

int apx_queue_release(unsigned gidx)
{
    q_list *l;

    if (lists && gidx < nlists) {
        l = &lists[gidx];
        pthread_mutex_lock(&q_mtx);
        if (l->head && apx_mshm_head_is_oldest(gidx, l->head->at)) {
            grant_head(gidx, apr_time_now());
            pthread_mutex_unlock(&q_mtx);
            return 1;
        }
        pthread_mutex_unlock(&q_mtx);
    }
    apx_mshm_release(gidx);
    return 0;
}

int apx_queue_try_take(unsigned gidx)
{
    apx_mshm_member *sm = apx_mshm_at(gidx);

    if (!sm || !sm->cap)
        return 1;
    if (__atomic_load_n(&sm->queued, __ATOMIC_ACQUIRE))
        return 0;
    return apx_mshm_take(gidx);
}

/* ------------------------------------------------------------------ */
/* the cross-child timer                                                */

static void tick_start(void)
{
    apx_timer_start(&q_tick, QUEUE_TICK);
}

static void tick_fire(apx_park *p, apr_thread_t *thd)
{
    apr_time_t now = apr_time_now();
    apr_uint32_t more;
    unsigned g;

    if (!apx_ch || !apx_ch->engine || (p->why & APX_EV_SHUTDOWN)) {
        apx_timer_stop(&q_tick);
        return;
    }
    if (now - last_sweep >= QUEUE_SWEEP_EVERY) {
        last_sweep = now;
        apx_mshm_sweep(q_server);
    }
    pthread_mutex_lock(&q_mtx);
    for (g = 0; g < nlists; g++)
        if (lists[g].n)
            dispatch(g, now);
    more = waiting_here;
    pthread_mutex_unlock(&q_mtx);
    if (more) {
        apx_timer_again(&q_tick, QUEUE_TICK);
        return;
    }
    /* no waiter left: stop, unless one came meanwhile (its enlist saw the
     * timer still on) */
    apx_timer_stop(&q_tick);
    pthread_mutex_lock(&q_mtx);
    more = waiting_here;
    pthread_mutex_unlock(&q_mtx);
    if (more)
        tick_start();
}

/* ------------------------------------------------------------------ */
/* waiting                                                              */

/* Joins the FIFO (apx_wait_wake's enlist, or the polling waiter's): 0 when
 * a slot was taken at once (nobody older waits, in any child), 1 when the
 * waiter is linked (p armed: a grant wakes it). */
static int enlist(void *baton, apx_park *p)
{
    q_waiter *w = baton;
    q_list *l = &lists[w->gidx];
    apr_time_t now = apr_time_now();

    pthread_mutex_lock(&q_mtx);
    w->p = p;
    w->at = now;
    if (!l->head && apx_mshm_head_is_oldest(w->gidx, now)
        && apx_mshm_take(w->gidx)) {
        /* never linked: our record must not be woken (it is armed for
         * this park only, which will not happen) */
        w->granted = 1;
        pthread_mutex_unlock(&q_mtx);
        return 0;
    }
    w->prev = l->tail;
    w->next = NULL;
    if (l->tail)
        l->tail->next = w;
    else
        l->head = w;
    l->tail = w;
    w->linked = 1;
    l->n++;
    waiting_here++;
    apx_mshm_queued_add(w->gidx, 1);
    if (l->head == w)
        publish_head(w->gidx);
    pthread_mutex_unlock(&q_mtx);
    tick_start();
    return 1;
}

/* Leaves the FIFO if still in it; returns whether a slot was handed over. */
static int leave(q_waiter *w)
{
    int granted;

    pthread_mutex_lock(&q_mtx);
    if (w->linked) {
        int was_head = lists[w->gidx].head == w;

        unlink_waiter(w);
        if (was_head)
            publish_head(w->gidx);
    }
    granted = w->granted;
    pthread_mutex_unlock(&q_mtx);
    return granted;
}

/* A coroutine defer: the coroutine dies while it waits (the child stops):
 * out of the FIFO, and a slot handed over meanwhile goes on. */
static void waiter_deferred(void *arg)
{
    q_waiter *w = arg;

    if (leave(w)) {
        w->granted = 0;
        apx_queue_release(w->gidx);
    }
}

/* A request that cannot park waits on its thread, watching its client. */
static unsigned wait_in_place(apx_req *rq, q_waiter *w, apr_time_t deadline)
{
    struct pollfd pfd;
    apr_time_t now;
    int granted, ms;

    if (!enlist(w, NULL))
        return APX_EV_WAKE;
    for (;;) {
        now = apr_time_now();
        pthread_mutex_lock(&q_mtx);
        if (w->linked && lists[w->gidx].head == w)
            dispatch(w->gidx, now);
        granted = w->granted;
        pthread_mutex_unlock(&q_mtx);
        if (granted)
            return APX_EV_WAKE;
        if (now >= deadline)
            return APX_EV_TIMEOUT;
        ms = (int)((deadline - now + 999) / 1000);
        if (ms > QUEUE_SYNC_POLL_MS)
            ms = QUEUE_SYNC_POLL_MS;
        if (rq->client_fd < 0) {
            poll(NULL, 0, ms);
            continue;
        }
        pfd.fd = rq->client_fd;
        pfd.events = POLLRDHUP;
        pfd.revents = 0;
        if (poll(&pfd, 1, ms) > 0
            && (pfd.revents & (POLLRDHUP | POLLHUP | POLLERR)))
            return APX_EV_CLIENT_GONE;
    }
}

int apx_group_acquire(apx_balancer *b, apx_req *rq, request_rec *r,
                      unsigned *idx)
{
    const apx_member *mb;
    apx_mshm_member *sm;
    q_waiter *w;
    apx_defer *d = NULL;
    apr_time_t now;
    unsigned ev;
    apr_uint32_t queued;

    if (apx_group_pick(b, r, idx) != APR_SUCCESS)
        return APX_ACQ_NO_MEMBER;
    mb = &APR_ARRAY_IDX(b->members, (int)*idx, apx_member);
    sm = apx_mshm_at(mb->gidx);
    if (!mb->cap || !sm)
        return APX_ACQ_OK;
    queued = __atomic_load_n(&sm->queued, __ATOMIC_ACQUIRE);
    if (!queued && apx_mshm_take(mb->gidx))
        return APX_ACQ_OK;
    if (!lists || (b->queue_limited && queued >= b->queue_max)) {
        __atomic_add_fetch(&sm->queue_full, 1, __ATOMIC_RELAXED);
        apx_group_unpick(b, *idx);
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, APXLOGNO(00038)
                      "balancer %s: member %s is at max=%u with %u "
                      "waiting (queue=%u): 503", b->name, mb->url, mb->cap,
                      queued, b->queue_max);
        return APX_ACQ_FULL;
    }

    w = apr_pcalloc(r->pool, sizeof(*w));
    w->gidx = mb->gidx;
    now = apr_time_now();
    if (rq->coro)
        d = apx_coro_defer(rq->coro, waiter_deferred, w);
    if (rq->async && rq->park && rq->client_fd >= 0)
        ev = apx_wait_wake(rq, enlist, w, now + b->queue_timeout);
    else
        ev = wait_in_place(rq, w, now + b->queue_timeout);
    if (d)
        apx_coro_defer_disarm(rq->coro, d);

    if (leave(w)) {
        if (!(ev & (APX_EV_CLIENT_GONE | APX_EV_SHUTDOWN)))
            return APX_ACQ_OK;
        /* handed a slot as it was leaving: the slot goes on */
        apx_queue_release(w->gidx);
    }
    apx_group_unpick(b, *idx);
    if (ev & APX_EV_CLIENT_GONE) {
        __atomic_add_fetch(&sm->queue_gone, 1, __ATOMIC_RELAXED);
        return APX_ACQ_GONE;
    }
    if (ev & APX_EV_SHUTDOWN)
        return APX_ACQ_SHUTDOWN;
    __atomic_add_fetch(&sm->queue_timeouts, 1, __ATOMIC_RELAXED);
    ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, APXLOGNO(00039)
                  "balancer %s: waited %" APR_TIME_T_FMT " ms for a slot "
                  "of member %s (max=%u) without getting one "
                  "(queuetimeout): 503", b->name,
                  apr_time_as_msec(apr_time_now() - now), mb->url, mb->cap);
    return APX_ACQ_TIMEOUT;
}
