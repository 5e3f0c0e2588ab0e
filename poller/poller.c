/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* poller.c — the engine: one epoll poller thread, the intake, the wake
 * messages, the watchdog over the worker queue, and the engine's API; the
 * worker queue's threads are workers.c's, the shared records engine.h's.
 *
 * Threads and what they own:
 *   poller      the epoll set, the timeout queues (e->tqs, e->untimed) and
 *               every record in state PARKED or READY; e->events.
 *   any thread  pushes onto the intake list (in_mtx) and writes the eventfd.
 *   workers     pop the worker queue (wq_mtx) and run record->dispatch().
 *   main        create / start / destroy.
 *
 * A record's life: OWNED --park_submit--> INTAKE --poller--> PARKED
 *   --readiness/deadline/stopping--> READY (in the poller's local batch)
 *   --push--> QUEUED --worker pops--> OWNED (dispatch runs).
 * apx_run_submit() goes OWNED -> QUEUED directly. p->next links a record on
 * exactly one of intake, batch or worker queue at a time. A wakeable record
 * whose park a wake won while the poller held it goes PARKED (or INTAKE)
 * --> DETACHED (off its timeout queue, not dispatched; what its fds still
 * report is added to got[]) until the poller handles its wake message:
 * --> READY.
 *
 * Wakeable parks: p->wake decides who ends a park (apx_park_wake() against
 * every other cause). It moves only by atomics:
 *   WK_NONE         not wakeable (apx_park_init(), or submitted unarmed)
 *   WK_ARMED        apx_park_arm_wake(): the owner's, wakers may reach it
 *   WK_WOKEN_EARLY  woken before its submit: the submit queues it at once
 *   WK_SUBMITTED    handed over, nobody has won yet
 *   WK_WOKEN        a waker won: p is on e->woken (p->wnext), or was
 *   WK_CLAIMED      the poller (event, deadline, stopping, refused fd) or
 *                   destroy won: a wake now returns 0
 * Every move out of ARMED, and SUBMITTED -> WOKEN, happens under in_mtx
 * (apx_park_wake() and apx_park_submit() hold it), and the waker pushes p
 * onto e->woken in the same critical section as its CAS. So:
 *   - a record on e->woken was pushed onto the intake before (ARMED ->
 *     SUBMITTED goes with the intake push); the poller takes both lists in
 *     one critical section and handles the woken ones after arming the
 *     intake: it never meets a wake for a record it has not taken;
 *   - the only lock-free move is the poller's SUBMITTED -> CLAIMED (claim());
 *     when it loses, the wake message is on e->woken or in the poller's
 *     hands already, and will dispatch the record with WAKE and the got[]
 *     seen meanwhile;
 *   - destroy sets in_gone under in_mtx: no wake wins afterwards and every
 *     WOKEN record not yet dispatched is on the list destroy takes there, so
 *     destroy abandons those from that list and skips them on the intake and
 *     the timeout queues. Nothing is dispatched or abandoned twice.
 * A successful waker touches p only inside in_mtx; it writes the eventfd
 * there too, so destroy cannot have closed it yet.
 *
 * Invariants the poller keeps:
 *   - epoll data never holds a record pointer: it is (generation << 32 |
 *     fd), and the poller finds the record through its own fd table
 *     (e->slots, poller thread only), whose slot names the record parked
 *     on that fd and the generation of the arm that registered it. A
 *     record's slots are released (owner NULL) when its batch is pushed to
 *     the worker queue, *before* any worker can run or free it; an event
 *     whose slot has no owner or another generation is dropped. So the
 *     poller never delivers an event for a record it no longer owns, even
 *     though a released fd may stay in the epoll set, armed or disabled,
 *     and even after its owner closed it and the number was reused;
 *   - its timeout link is unlinked before it is pushed to the worker queue;
 *   - the batch is pushed only after the whole epoll_wait batch is scanned,
 *     and slots are released only there, so a later event of the same
 *     batch still finds its record; a record whose two fds both fire in
 *     one batch is taken off once (state READY) and gets both got[] bits;
 *   - the eventfd is registered with data.u64 == 0; generations skip 0.
 *
 * Registration: EPOLLONESHOT, and an fd stays in the set after its park:
 * one epoll_ctl per fd per park (MOD, or ADD the first time the poller sees
 * the number) instead of ADD at park plus DEL at take-off. A slot records
 * whether the poller believes the fd's current file is registered; the
 * belief goes stale when an owner closes an fd (the kernel drops the
 * registration with the last reference to the file) and a new file takes
 * the number: MOD then fails with ENOENT and the poller ADDs (and ADD
 * failing with EEXIST falls back to MOD). What may stay in the set after a
 * record left, and why it is harmless:
 *   - the fd that fired: ONESHOT disabled it (no event at all, not even
 *     HUP/ERR, until the next MOD);
 *   - an fd that did not fire (the other fd of the record, or every fd of a
 *     record ended by deadline, wake, stopping or a refused fd): still
 *     armed; it fires at most once (ONESHOT), and the event, whose
 *     generation is no longer its slot's owner's, is dropped. No syscall is
 *     spent on those paths; the next park of the fd re-arms it with MOD and
 *     a new generation;
 *   - a registration of a file closed under its number while another
 *     reference keeps the file alive (dup, fork): unreachable by number,
 *     armed or disabled as above, dropped by generation, freed by the
 *     kernel with the file.
 * An fd parked by one record cannot be parked by another until the first
 * leaves (its slot has an owner): the second is dispatched with ERR.
 * Kept arms: an arm whose record left without its fd firing (a client
 * watched for hangup while the record waited on its backend) is still
 * armed. When the owner names the fd's file (p->keep[i], an id constant for
 * as long as the file is open), the slot remembers the id, the mask and
 * whether an event of the arm has been seen since (any event, owned or
 * dropped: ONESHOT disabled the arm with it). A park of the same id with
 * the same mask on an arm not seen to fire takes the slot as it is, with
 * the arm's generation: no epoll_ctl. An event of that arm already in the
 * kernel's ready list but not yet read is then read with that generation
 * and belongs to the new park, which wants exactly what the arm was for.
 * A closed file's arm goes with it, and a new file under the number gets
 * another id from its owner: MOD, ENOENT, ADD as above. With a keep id, a
 * watch is armed EPOLLIN|EPOLLRDHUP, the mask a keep-alive wait wants:
 * the next park (the connection idle after its response) keeps it. Input
 * alone on such a watch (a pipelined request, an unread body) does not end
 * the park: the poller re-arms the fd for the hangup only (MOD).
 * Wanting IN registers EPOLLIN|EPOLLRDHUP; wanting nothing on an fd (watch a
 * client for hangup while waiting on the backend) registers EPOLLRDHUP; OUT
 * alone registers EPOLLOUT only, so a client that half-closed after sending
 * its request does not wake a write-completion park in a loop (a full close
 * still reports EPOLLHUP/EPOLLERR, which epoll always reports).
 *
 * Worker pool: workers.c.
 *
 * Log numbers used here: APX00301 - APX00307 (APX00300: workers.c).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>
#include <apr_thread_mutex.h>
#include "apx_poller.h"
#include "engine.h"

/* Every cause but a wake calls this before it dispatches a record it holds:
 * 1 when the cause may dispatch, 0 when a wake already won the park (the
 * wake message dispatches it). Records parked unarmed always pass. */
static int claim(apx_park *p)
{
    unsigned w = WK_SUBMITTED;

    if (__atomic_compare_exchange_n(&p->wake, &w, WK_CLAIMED, 0,
                                    __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
        return 1;
    return w != WK_WOKEN;
}

/* ------------------------------------------------------------------ wake */

static void wake_poller(apx_engine *e)
{
    uint64_t one = 1;
    ssize_t n;

    /* EAGAIN means the counter is already non-zero: the poller will wake. */
    do {
        n = write(e->evfd, &one, sizeof(one));
    } while (n < 0 && errno == EINTR);
}

/* ---------------------------------------------------------------- poller */

static uint32_t epoll_mask(unsigned want, uint32_t keep)
{
    uint32_t m = 0;

    if (want & APX_EV_IN)
        m |= EPOLLIN | EPOLLRDHUP;
    if (want & APX_EV_OUT)
        m |= EPOLLOUT;
    if (!(want & (APX_EV_IN | APX_EV_OUT)))
        m |= keep ? EPOLLIN | EPOLLRDHUP : EPOLLRDHUP;
    return m;
}

static unsigned events_from_epoll(uint32_t ev)
{
    unsigned r = 0;

    if (ev & EPOLLIN)
        r |= APX_EV_IN;
    if (ev & EPOLLOUT)
        r |= APX_EV_OUT;
    if (ev & (EPOLLHUP | EPOLLRDHUP))
        r |= APX_EV_HUP;
    if (ev & EPOLLERR)
        r |= APX_EV_ERR;
    return r;
}

/* Slots of fds 0..fd, for an fd the kernel has just accepted (so a number
 * of an open file, below the process's fd limit). NULL when out of memory. */
static fd_slot *get_slot(apx_engine *e, int fd)
{
    unsigned n = e->nslots, want = (unsigned)fd + 1;
    fd_slot *s;

    if (want > n) {
        n = n ? n : 1024;
        while (n < want)
            n *= 2;
        s = realloc(e->slots, n * sizeof(*s));
        if (!s)
            return NULL;
        memset(s + e->nslots, 0, (n - e->nslots) * sizeof(*s));
        e->slots = s;
        e->nslots = n;
    }
    return &e->slots[fd];
}

/* The next arm's generation (never 0: the eventfd's data is 0). */
static uint32_t next_gen(apx_engine *e)
{
    if (++e->gen == 0)
        e->gen = 1;
    return e->gen;
}

/* Arms p->fd[i] for p: MOD when the poller believes the fd registered,
 * else ADD, falling back to the other on ENOENT/EEXIST (the belief was
 * stale: the number now names another file). Returns 0 or an errno: the
 * fd is parked by another record (EEXIST), not open (EBADF), cannot be
 * polled (EPERM), or the kernel or the slot table is out of memory. */
static int arm_fd(apx_engine *e, apx_park *p, int i)
{
    int fd = p->fd[i], op, err;
    fd_slot *s = (unsigned)fd < e->nslots ? &e->slots[fd] : NULL;
    struct epoll_event ev;

    if (s && s->owner)
        return EEXIST;
    memset(&ev, 0, sizeof(ev));
    ev.events = epoll_mask(p->want[i], p->keep[i]) | EPOLLONESHOT;
    if (s && s->reg && p->keep[i] && s->keep == p->keep[i]) {
        if (s->armed && s->mask == ev.events) {
            /* the arm of an earlier park of this file, not fired: kept */
            s->owner = p;
            s->idx = (unsigned char)i;
            ATOMIC_INC64(&e->arms_kept_total);
            return 0;
        }
        if (!s->armed && s->pending && (p->want[i] & APX_EV_IN)) {
            /* it fired while no park held it (the client's next request
             * came before this keep-alive wait): what it reported is still
             * there to read, so the park ends at once, the fd disabled */
            s->owner = p;
            s->idx = (unsigned char)i;
            p->got[i] = s->pending;
            s->pending = 0;
            ATOMIC_INC64(&e->arms_fired_total);
            return 0;
        }
    }
    if (s)
        s->pending = 0;
    ev.data.u64 = (uint64_t)next_gen(e) << 32 | (uint32_t)fd;
    op = s && s->reg ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
    if (epoll_ctl(e->epfd, op, fd, &ev) < 0) {
        err = errno;
        if (!(op == EPOLL_CTL_MOD ? err == ENOENT : err == EEXIST))
            goto failed;
        op = op == EPOLL_CTL_MOD ? EPOLL_CTL_ADD : EPOLL_CTL_MOD;
        if (epoll_ctl(e->epfd, op, fd, &ev) < 0) {
            err = errno;
            goto failed;
        }
    }
    if (!s && (s = get_slot(e, fd)) == NULL) {
        /* registered but unreachable: take it out again */
        epoll_ctl(e->epfd, EPOLL_CTL_DEL, fd, NULL);
        return ENOMEM;
    }
    s->owner = p;
    s->gen = e->gen;
    s->idx = (unsigned char)i;
    s->reg = 1;
    s->armed = 1;
    s->mask = ev.events;
    s->keep = p->keep[i];
    return 0;

failed:
    /* EBADF: not open (a registration went with its file); EPERM: never
     * registered; anything else leaves the belief unknown. Believing "not
     * registered" is always safe: the next arm tries ADD, then MOD. */
    if (s)
        s->reg = s->armed = 0;
    return err;
}

/* Input alone on a kept watch (see "Kept arms"): the fd, disabled by the
 * event, is armed again for the hangup only, under a new generation. 0, or
 * an errno (the owner then gets ERR for it). */
static int rewatch(apx_engine *e, fd_slot *s, int fd)
{
    struct epoll_event ev;

    memset(&ev, 0, sizeof(ev));
    ev.events = EPOLLRDHUP | EPOLLONESHOT;
    ev.data.u64 = (uint64_t)next_gen(e) << 32 | (uint32_t)fd;
    if (epoll_ctl(e->epfd, EPOLL_CTL_MOD, fd, &ev) < 0) {
        s->reg = s->armed = 0;
        return errno;
    }
    s->gen = e->gen;
    s->armed = 1;
    s->mask = ev.events;
    ATOMIC_INC64(&e->rewatch_total);
    return 0;
}

/* The record p parked on an event's fd, or NULL when the event belongs to
 * an arm whose record has left (or to an older file under that number);
 * *idx: which of p's fds. */
static apx_park *event_owner(apx_engine *e, uint64_t data, uint32_t events,
                             unsigned *idx)
{
    uint32_t fd = (uint32_t)data;
    fd_slot *s;

    if (fd >= e->nslots)
        return NULL;
    s = &e->slots[fd];
    if (s->gen != (uint32_t)(data >> 32))
        return NULL;
    s->armed = 0;           /* ONESHOT: this event disabled the arm */
    if (!s->owner) {
        if (s->keep)
            s->pending |= (unsigned char)(events_from_epoll(events)
                                          & (APX_EV_IN | APX_EV_HUP
                                             | APX_EV_ERR));
        return NULL;
    }
    *idx = s->idx;
    return s->owner;
}

/* The poller lets go of p's fds: from here an event on them is dropped.
 * Their registration stays (see "Registration" at the top of the file). */
static void release_fds(apx_engine *e, apx_park *p)
{
    int i, fd;

    for (i = 0; i < 2; i++) {
        fd = p->fd[i];
        if ((unsigned)fd < e->nslots && e->slots[fd].owner == p)
            e->slots[fd].owner = NULL;
    }
}

/* Off the timeout queue; p was PARKED. Its fds stay its own until its
 * batch is pushed (release_fds()). */
static void detach(apx_engine *e, apx_park *p)
{
    apx_tq_remove(&p->tq);
    e->nparked--;
}

/* PARKED -> READY: off the timeout queue, onto the batch.
 * Returns 0 when a wake won the park: then PARKED -> DETACHED, and the
 * caller adds no reason of its own. */
static int take_off(apx_engine *e, apx_park *p, park_list *batch)
{
    detach(e, p);
    if (!claim(p)) {
        set_state(p, ST_DETACHED);
        return 0;
    }
    set_state(p, ST_READY);
    list_push(batch, p);
    return 1;
}

/* The wake messages of one take: PARKED or DETACHED -> READY, with WAKE. */
static void wake_records(apx_engine *e, apx_park *w, park_list *batch)
{
    apx_park *next;

    for (; w; w = next) {
        next = w->wnext;
        w->wnext = NULL;
        if (get_state(w) == ST_PARKED)
            detach(e, w);
#ifdef APX_DEBUG
        else if (get_state(w) != ST_DETACHED) {
            apx_log(APX_LOG_CRIT, 0, "APX00307: wake message for record %p "
                    "in state %u", (void *)w, get_state(w));
            abort();
        }
#endif
        w->why |= APX_EV_WAKE;
        set_state(w, ST_READY);
        list_push(batch, w);
        ATOMIC_INC64(&e->wakes_total);
    }
}

static void arm(apx_engine *e, apx_park *p, apr_time_t now, apr_time_t wall,
                park_list *batch)
{
    apx_tq *q;
    int i, err;

    p->got[0] = p->got[1] = 0;
    p->why = 0;
    p->parked_at = wall;
    apx_tq_link_init(&p->tq);

    if (get_wake(p) == WK_WOKEN) {
        /* woken since its submit: its message is on the list taken with
         * it or on the next; registering it would only be undone */
        set_state(p, ST_DETACHED);
        return;
    }
    if ((p->flags & APX_PARK_IDLE) && e->stopping_swept) {
        p->why = APX_EV_SHUTDOWN;
        goto ready;
    }
    if (p->timeout > 0) {
        q = apx_tq_set_get(e->tqs, p->timeout);
        if (!q) {
            apx_log(APX_LOG_ERR, APR_ENOMEM, "APX00301: no memory for a "
                    "timeout queue: record dispatched with an error");
            p->why = APX_EV_ERR;
            goto ready;
        }
    }
    else {
        q = &e->untimed;
    }
    for (i = 0; i < 2; i++) {
        if (p->fd[i] < 0)
            continue;
        err = arm_fd(e, p, i);
        if (err) {
            /* EBADF (not open), EEXIST (parked by another record), EPERM
             * (a regular file), ENOMEM: the owner learns it from got[i]. */
            if (apx_log_is_enabled(APX_LOG_DEBUG))
                apx_log(APX_LOG_DEBUG, err, "APX00302: cannot watch fd %d "
                        "in epoll", p->fd[i]);
            p->got[i] = APX_EV_ERR;
            release_fds(e, p);
            goto ready;
        }
    }
    if (p->got[0] | p->got[1])
        goto ready;             /* an fd that fired while away */
    apx_tq_append(q, &p->tq, now);
    set_state(p, ST_PARKED);
    e->nparked++;
    return;

ready:
    if (!claim(p)) {
        /* woken between the take and here: its fds are released already;
         * the wake message dispatches it, with a refused fd's ERR in got[] */
        p->why = 0;
        set_state(p, ST_DETACHED);
        return;
    }
    set_state(p, ST_READY);
    list_push(batch, p);
}

typedef struct expire_ctx {
    apx_engine *e;
    park_list *batch;
} expire_ctx;

static void expire_one(apx_tq_link *l, void *baton)
{
    expire_ctx *x = baton;
    apx_park *p = APX_CONTAINER_OF(l, apx_park, tq);

    /* already unlinked from the queue by apx_tq_set_expire() */
    if (take_off(x->e, p, x->batch)) {
        p->why |= APX_EV_TIMEOUT;
        ATOMIC_INC64(&x->e->timeouts_total);
    }
}

/* Child stopping: every parked idle record goes now. */
static void sweep_idle_queue(apx_engine *e, apx_tq *q, park_list *batch)
{
    apx_tq_link *l, *next;
    apx_park *p;

    for (l = q->head.next; l != &q->head; l = next) {
        next = l->next;
        p = APX_CONTAINER_OF(l, apx_park, tq);
        if ((p->flags & APX_PARK_IDLE) && take_off(e, p, batch))
            p->why |= APX_EV_SHUTDOWN;
    }
}

static void sweep_idle(apx_engine *e, park_list *batch)
{
    apx_tq *q;

    for (q = apx_tq_set_first(e->tqs); q; q = q->next_in_set)
        sweep_idle_queue(e, q, batch);
    sweep_idle_queue(e, &e->untimed, batch);
}

/* The oldest parked idle member of q from `from` on (queues are FIFO by
 * deadline, so by park time: the first idle one met is the oldest). */
static apx_tq_link *oldest_idle(apx_tq *q, apx_tq_link *from)
{
    apx_tq_link *l;

    for (l = from; l != &q->head; l = l->next)
        if (APX_CONTAINER_OF(l, apx_park, tq)->flags & APX_PARK_IDLE)
            return l;
    return NULL;
}

/* Sheds up to n idle records, the longest parked first: a merge of each
 * queue's oldest idle member by park time. O(queues) per record shed plus
 * the non-idle members skipped; there are a few queues (timeouts are
 * rounded by the glue) and sheds are rare. */
static void shed_idle(apx_engine *e, unsigned n, park_list *batch)
{
    while (n) {
        apx_tq *q;
        apx_tq_link *l, *best = NULL;
        apx_park *p;

        for (q = apx_tq_set_first(e->tqs); q; q = q->next_in_set) {
            l = oldest_idle(q, q->head.next);
            if (l && (!best || APX_CONTAINER_OF(l, apx_park, tq)->parked_at
                               < APX_CONTAINER_OF(best, apx_park,
                                                  tq)->parked_at)) {
                best = l;
            }
        }
        if (!best && (l = oldest_idle(&e->untimed, e->untimed.head.next)))
            best = l;
        if (!best)
            return;
        p = APX_CONTAINER_OF(best, apx_park, tq);
        if (take_off(e, p, batch)) {
            p->why |= APX_EV_SHED;
            ATOMIC_INC64(&e->shed_total);
        }
        n--;
    }
}

static unsigned push_batch(apx_engine *e, park_list *batch)
{
    apx_park *p;
    int spawn;
    unsigned backlog;

    if (!batch->head)
        return 0;
    for (p = batch->head; p; p = p->next) {
        /* the last moment the poller may map an event to p */
        release_fds(e, p);
        p->why |= p->got[0] | p->got[1];
        set_state(p, ST_QUEUED);
    }
    pthread_mutex_lock(&e->wq_mtx);
    spawn = apx__enqueue_locked(e, batch, 0);
    backlog = e->wq.n;
    pthread_mutex_unlock(&e->wq_mtx);
    /* Starting a thread costs the poller some tens of microseconds; it
     * happens only when every worker is busy, which is exactly when the
     * records waiting need it. */
    if (spawn > 0)
        apx__start_workers(e, (unsigned)spawn);
    return backlog;
}

/* The watchdog, run by the poller each pass: while records wait for a busy
 * worker (e->watch), it checks that workers still take records; after
 * WATCH_US without a pop it wakes one more idle worker past awake_max, or
 * starts one. Returns the epoll_wait timeout to use: `ms`, or at most 1 ms
 * while watching. */
static int watch_queue(apx_engine *e, int ms)
{
    apr_time_t now;
    int spawn = 0;

    if (!__atomic_load_n(&e->watch, __ATOMIC_RELAXED))
        return ms;
    /* look at most every WATCH_US: wq_mtx is the workers' lock */
    now = mono_now();
    if (now < e->watch_next)
        return ms >= 0 && ms <= 1 ? ms : 1;
    e->watch_next = now + WATCH_US;
    pthread_mutex_lock(&e->wq_mtx);
    if (!e->wq.head || e->wq_stop) {
        __atomic_store_n(&e->watch, 0, __ATOMIC_RELAXED);
    }
    else if (e->dispatched_total != e->watch_pops) {
        e->watch_pops = e->dispatched_total;
        e->watch_at = now;
    }
    else if (now - e->watch_at >= WATCH_US) {
        e->watch_at = now;
        e->stalls_total++;
        if (e->idle)
            apx__wake_idle_locked(e);
        else if (e->started && e->workers < e->conf.workers_max) {
            e->workers++;
            e->live++;
            spawn = 1;
        }
    }
    if (e->watch && (ms < 0 || ms > 1))
        ms = 1;
    pthread_mutex_unlock(&e->wq_mtx);
    if (spawn)
        apx__start_workers(e, 1);
    return ms;
}

static void *APR_THREAD_FUNC poller_main(apr_thread_t *thd, void *data)
{
    apx_engine *e = ((engine_thread *)data)->e;
    park_list batch, in;
    apx_park *p, *woken;
    apr_time_t now, wall;
    uint64_t counter;
    unsigned idx;
    expire_ctx x;
    int n, i, stop, err;
    unsigned backlog, got;

    for (;;) {
        now = mono_now();
        n = epoll_wait(e->epfd, e->events, (int)e->conf.max_events,
                       watch_queue(e, apx_tq_set_wait_ms(e->tqs, now)));
        if (n < 0) {
            if (errno != EINTR && !e->epoll_failed_logged) {
                apx_log(APX_LOG_ERR, errno, "APX00303: epoll_wait failed");
                e->epoll_failed_logged = 1;
            }
            n = 0;
        }
        list_init(&batch);
        for (i = 0; i < n; i++) {
            if (!e->events[i].data.u64) {
                while (read(e->evfd, &counter, sizeof(counter)) < 0
                       && errno == EINTR)
                    ;
                continue;
            }
            p = event_owner(e, e->events[i].data.u64,
                            e->events[i].events, &idx);
            if (!p)
                continue;       /* an arm whose record has left: ONESHOT
                                 * disabled it, nothing to undo */
            got = events_from_epoll(e->events[i].events);
            if (!(p->want[idx] & (APX_EV_IN | APX_EV_OUT)) && p->keep[idx]
                && !(got & (APX_EV_HUP | APX_EV_ERR))) {
                /* input on a kept watch: not what it watches for */
                if (get_state(p) != ST_PARKED
                    || !(err = rewatch(e, &e->slots[p->fd[idx]],
                                       p->fd[idx])))
                    continue;
                got = APX_EV_ERR;
            }
            if (get_state(p) == ST_PARKED)
                take_off(e, p, &batch);
#ifdef APX_DEBUG
            else if (get_state(p) != ST_READY
                     && get_state(p) != ST_DETACHED) {
                /* a slot still owned by a record the poller handed on: a
                 * broken invariant (release_fds() missed) */
                apx_log(APX_LOG_CRIT, 0, "APX00306: event for record %p in "
                        "state %u", (void *)p, get_state(p));
                abort();
            }
#endif
            p->got[idx] |= got;
        }

        /* Taken every pass, woken or not: one uncontended lock, and a
         * submitter that saw a non-empty list did not write the eventfd.
         * The woken list is taken with the intake: each record on it was
         * pushed onto the intake earlier, so it is in `in` or already ours. */
        pthread_mutex_lock(&e->in_mtx);
        in = e->intake;
        list_init(&e->intake);
        woken = e->woken;
        e->woken = e->woken_tail = NULL;
        stop = e->stop_poller;
        pthread_mutex_unlock(&e->in_mtx);

        if (!e->stopping_swept
            && __atomic_load_n(&e->stopping, __ATOMIC_ACQUIRE)) {
            e->stopping_swept = 1;
            sweep_idle(e, &batch);
        }

        if (__atomic_load_n(&e->shed_want, __ATOMIC_RELAXED))
            shed_idle(e, __atomic_exchange_n(&e->shed_want, 0,
                                             __ATOMIC_RELAXED), &batch);

        now = mono_now();
        if (in.head) {
            wall = apr_time_now();
            while ((p = list_pop(&in)) != NULL)
                arm(e, p, now, wall, &batch);
        }
        /* after arming: every record on it is now PARKED or DETACHED */
        wake_records(e, woken, &batch);

        x.e = e;
        x.batch = &batch;
        apx_tq_set_expire(e->tqs, now, e->conf.expire_budget, expire_one, &x);

        backlog = push_batch(e, &batch);
        __atomic_store_n(&e->parked, e->nparked, __ATOMIC_RELAXED);
        /* Every worker it may wake has a record waiting already: harvesting
         * again at once only lengthens the queue one record at a time, and
         * with workers capped at the core count this thread would take
         * the CPU from them for each event (measured with a fast backend at
         * 64 connections: 1.5-2.1 context switches and 54-68 us per request
         * without the pause, 0.7-0.9 and 39-51 us with it). Readiness that
         * comes meanwhile is collected in one batch. */
        if (backlog >= e->awake_max)
            usleep(BACKLOG_PAUSE_US);
        if (stop)
            break;
    }
    return NULL;
}

/* ------------------------------------------------------------------- API */

void apx_engine_conf_default(apx_engine_conf *conf)
{
    conf->workers_min = 2;
    conf->workers_max = 16;
    conf->worker_idle_timeout = apr_time_from_sec(10);
    /* 256 per pass: a burst of expiries (a backend died under 10,000 parked
     * requests) is handed out in slices, between which fresh readiness is
     * still served. */
    conf->expire_budget = 256;
    conf->max_events = 256;
    conf->workers_awake = 0;
}

void apx_park_init(apx_park *p, apx_park_fn dispatch, void *baton)
{
    memset(p, 0, sizeof(*p));
    p->fd[0] = p->fd[1] = -1;
    p->dispatch = dispatch;
    p->baton = baton;
    apx_tq_link_init(&p->tq);
    set_state(p, ST_OWNED);
}

void apx_park_arm_wake(apx_park *p)
{
    set_wake(p, WK_ARMED);
}

apr_status_t apx_engine_create(apx_engine **pe, const apx_engine_conf *conf,
                               apr_pool_t *parent)
{
    apr_allocator_t *alloc = NULL;
    apr_thread_mutex_t *amtx;
    apr_pool_t *pool = NULL;
    apx_engine *e;
    pthread_condattr_t ca;
    struct epoll_event ev;
    apr_status_t rv;

    *pe = NULL;
    rv = apr_allocator_create(&alloc);
    if (rv != APR_SUCCESS)
        return rv;
    rv = apr_pool_create_ex(&pool, parent, NULL, alloc);
    if (rv != APR_SUCCESS) {
        apr_allocator_destroy(alloc);
        return rv;
    }
    apr_allocator_owner_set(alloc, pool);
    /* Threads create and destroy their own subpools of this pool. */
    rv = apr_thread_mutex_create(&amtx, APR_THREAD_MUTEX_DEFAULT, pool);
    if (rv != APR_SUCCESS)
        goto cleanup;
    apr_allocator_mutex_set(alloc, amtx);
    apr_pool_tag(pool, "apx_engine");

    e = apr_pcalloc(pool, sizeof(*e));
    e->pool = pool;
    e->conf = *conf;
    if (e->conf.workers_min < 1)
        e->conf.workers_min = 1;
    if (e->conf.workers_max < e->conf.workers_min)
        e->conf.workers_max = e->conf.workers_min;
    if (e->conf.expire_budget < 1)
        e->conf.expire_budget = 1;
    if (e->conf.max_events < 1)
        e->conf.max_events = 1;
    if (e->conf.worker_idle_timeout < 0)
        e->conf.worker_idle_timeout = 0;
    e->awake_max = e->conf.workers_awake;
    if (!e->awake_max) {
        long ncpu = sysconf(_SC_NPROCESSORS_ONLN);

        e->awake_max = ncpu > 0 ? (unsigned)ncpu : 1;
    }
    e->epfd = e->evfd = -1;
    list_init(&e->intake);
    list_init(&e->wq);
    apx_tq_init(&e->untimed, 0);
    e->events = apr_pcalloc(pool, e->conf.max_events * sizeof(*e->events));

    rv = apx_tq_set_create(&e->tqs);
    if (rv != APR_SUCCESS)
        goto cleanup;
    pthread_mutex_init(&e->in_mtx, NULL);
    pthread_mutex_init(&e->wq_mtx, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&e->wq_cond, &ca);
    pthread_cond_init(&e->exit_cond, &ca);
    pthread_condattr_destroy(&ca);

    e->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (e->epfd < 0) {
        rv = errno;
        goto cleanup_engine;
    }
    e->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (e->evfd < 0) {
        rv = errno;
        goto cleanup_engine;
    }
    memset(&ev, 0, sizeof(ev));
    ev.events = EPOLLIN;
    ev.data.u64 = 0;
    if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, e->evfd, &ev) < 0) {
        rv = errno;
        goto cleanup_engine;
    }
    *pe = e;
    return APR_SUCCESS;

cleanup_engine:
    if (e->epfd >= 0)
        close(e->epfd);
    if (e->evfd >= 0)
        close(e->evfd);
    apx_tq_set_destroy(e->tqs);
    pthread_cond_destroy(&e->wq_cond);
    pthread_cond_destroy(&e->exit_cond);
    pthread_mutex_destroy(&e->wq_mtx);
    pthread_mutex_destroy(&e->in_mtx);
cleanup:
    apr_pool_destroy(pool);     /* owns the allocator */
    return rv;
}

apr_status_t apx_engine_start(apx_engine *e)
{
    apr_status_t rv;
    unsigned n;

    rv = apx__spawn_thread(e, poller_main, &e->poller);
    if (rv != APR_SUCCESS) {
        apx_log(APX_LOG_CRIT, rv, "APX00304: cannot start the poller thread");
        return rv;
    }
    pthread_mutex_lock(&e->wq_mtx);
    e->started = 1;
    n = e->conf.workers_min;
    e->workers += n;
    e->live += n;
    pthread_mutex_unlock(&e->wq_mtx);
    apx__start_workers(e, n);

    pthread_mutex_lock(&e->wq_mtx);
    n = e->workers;
    if (n && e->wq.n) {
        /* records handed over with apx_run_submit() before the start */
        pthread_cond_broadcast(&e->wq_cond);
    }
    pthread_mutex_unlock(&e->wq_mtx);
    if (!n) {
        apx_log(APX_LOG_CRIT, APR_EGENERAL, "APX00305: no engine worker "
                "thread could be started");
        return APR_EGENERAL;
    }
    return APR_SUCCESS;
}

void apx_engine_stopping(apx_engine *e)
{
    __atomic_store_n(&e->stopping, 1, __ATOMIC_RELEASE);
    wake_poller(e);
}

int apx_engine_is_stopping(const apx_engine *e)
{
    return __atomic_load_n(&e->stopping, __ATOMIC_ACQUIRE);
}

/* Empties q onto out, leaving out the woken records: destroy takes those
 * from the woken list. */
static void abandon_queue(apx_tq *q, park_list *out)
{
    apx_tq_link *l;
    apx_park *p;

    while ((l = q->head.next) != &q->head) {
        apx_tq_remove(l);
        p = APX_CONTAINER_OF(l, apx_park, tq);
        if (get_wake(p) != WK_WOKEN)
            list_push(out, p);
    }
}

void apx_engine_destroy(apx_engine *e, apx_park_fn abandoned)
{
    park_list left, in;
    engine_thread *reap;
    apx_park *p, *next, *woken;
    apx_tq *q;

    if (!e)
        return;

    /* 1. The poller: it pushes its last batch and returns. */
    pthread_mutex_lock(&e->in_mtx);
    e->stop_poller = 1;
    pthread_mutex_unlock(&e->in_mtx);
    if (e->poller) {
        wake_poller(e);
        apx__join_thread(e->poller);
        e->poller = NULL;
    }

    /* 2. Workers finish what they run and drain the queue (idle records
     * dispatched with SHUTDOWN close their connections there), then exit;
     * every one of them is joined, those that shrank away earlier too. */
    pthread_mutex_lock(&e->wq_mtx);
    e->wq_stop = 1;
    pthread_cond_broadcast(&e->wq_cond);
    for (;;) {
        if (e->zombies) {
            reap = e->zombies;
            e->zombies = NULL;
            pthread_mutex_unlock(&e->wq_mtx);
            apx__join_list(reap);
            pthread_mutex_lock(&e->wq_mtx);
            continue;
        }
        if (!e->live)
            break;
        pthread_cond_wait(&e->exit_cond, &e->wq_mtx);
    }
    e->wq_gone = 1;
    pthread_mutex_unlock(&e->wq_mtx);

    /* 3. No engine thread runs any more. From in_gone on no wake wins, so
     * every woken record not yet dispatched is on `woken` (its waker pushed
     * it with its CAS); it may also still sit on the intake or a timeout
     * queue, or be DETACHED: it is abandoned from `woken` alone. */
    pthread_mutex_lock(&e->in_mtx);
    e->in_gone = 1;
    in = e->intake;
    list_init(&e->intake);
    woken = e->woken;
    e->woken = e->woken_tail = NULL;
    pthread_mutex_unlock(&e->in_mtx);
    list_init(&left);
    while ((p = list_pop(&in)) != NULL) {
        if (get_wake(p) != WK_WOKEN)
            list_push(&left, p);
    }
    for (q = apx_tq_set_first(e->tqs); q; q = q->next_in_set)
        abandon_queue(q, &left);
    abandon_queue(&e->untimed, &left);
    for (p = woken; p; p = next) {
        next = p->wnext;
        p->wnext = NULL;
        list_push(&left, p);
    }
    list_splice(&left, &e->wq);
    close(e->epfd);             /* every registration goes with it */
    close(e->evfd);
    e->epfd = e->evfd = -1;
    free(e->slots);
    e->slots = NULL;
    e->nslots = 0;

    for (p = left.head; p; p = next) {
        next = p->next;
        p->next = NULL;
        set_state(p, ST_OWNED);
        p->got[0] = p->got[1] = 0;
        p->why = APX_EV_SHUTDOWN;
        if (abandoned)
            abandoned(p, NULL);
    }

    apx_tq_set_destroy(e->tqs);
    pthread_cond_destroy(&e->wq_cond);
    pthread_cond_destroy(&e->exit_cond);
    pthread_mutex_destroy(&e->wq_mtx);
    pthread_mutex_destroy(&e->in_mtx);
    apr_pool_destroy(e->pool);
}

/* -1 (unused) or a plausible fd number. Only debug builds ask the kernel
 * whether the fd is open: fcntl() would cost a syscall per fd per park (3
 * per proxied request), and epoll_ctl() in the poller refuses a closed fd
 * anyway (EBADF: dispatched with got[i] = ERR). */
static int fd_is_valid(int fd)
{
    if (fd == -1)
        return 1;
#ifdef APX_DEBUG
    return fd >= 0 && fcntl(fd, F_GETFD) != -1;
#else
    return fd >= 0;
#endif
}

/* OWNED -> QUEUED for apx_run_submit() (why RUN) and for a record woken
 * before its submit (why WAKE). */
static apr_status_t queue_one(apx_engine *e, apx_park *p, unsigned why)
{
    park_list one;
    int spawn, watched;

    p->got[0] = p->got[1] = 0;
    p->why = why;
    p->parked_at = apr_time_now();
    set_state(p, ST_QUEUED);
    list_init(&one);
    list_push(&one, p);
    pthread_mutex_lock(&e->wq_mtx);
    watched = e->watch;
    spawn = apx__enqueue_locked(e, &one, 1);
    /* the poller may sleep for long: make it start watching */
    watched = !watched && e->watch;
    if (spawn >= 0) {
        if (why == APX_EV_RUN) {
            ATOMIC_INC64(&e->runs_total);
        }
        else {
            ATOMIC_INC64(&e->parks_total);
            ATOMIC_INC64(&e->wakes_total);
        }
    }
    pthread_mutex_unlock(&e->wq_mtx);
    if (spawn < 0) {
        set_state(p, ST_OWNED);
        return APR_EINVAL;
    }
    if (spawn > 0)
        apx__start_workers(e, (unsigned)spawn);
    if (watched)
        wake_poller(e);
    return APR_SUCCESS;
}

apr_status_t apx_park_submit(apx_engine *e, apx_park *p)
{
    apr_status_t rv;
    unsigned w;
    int was_empty;

    if (!p->dispatch || get_state(p) != ST_OWNED
        || !fd_is_valid(p->fd[0]) || !fd_is_valid(p->fd[1])
        || (p->fd[0] >= 0 && p->fd[0] == p->fd[1]))
        return APR_EINVAL;
    set_state(p, ST_INTAKE);
    pthread_mutex_lock(&e->in_mtx);
    if (e->in_gone) {
        pthread_mutex_unlock(&e->in_mtx);
        set_state(p, ST_OWNED);
        return APR_EINVAL;
    }
    /* Wakers move the word under in_mtx too: ARMED -> SUBMITTED goes with
     * the intake push, so a wake message never precedes its record. A word
     * left over from an earlier park (WOKEN, CLAIMED) must not make this
     * unarmed park look woken: it becomes NONE. */
    w = get_wake(p);
    if (w == WK_WOKEN_EARLY) {
        set_wake(p, WK_WOKEN);
        pthread_mutex_unlock(&e->in_mtx);
        rv = queue_one(e, p, APX_EV_WAKE);
        if (rv != APR_SUCCESS)
            set_wake(p, WK_WOKEN_EARLY);    /* the owner's again, still woken */
        return rv;
    }
    set_wake(p, w == WK_ARMED ? WK_SUBMITTED : WK_NONE);
    was_empty = e->intake.head == NULL;
    list_push(&e->intake, p);
    ATOMIC_INC64(&e->parks_total);
    pthread_mutex_unlock(&e->in_mtx);
    /* The poller takes the whole list each pass: only the submitter that
     * found it empty needs to wake it. */
    if (was_empty)
        wake_poller(e);
    return APR_SUCCESS;
}

apr_status_t apx_run_submit(apx_engine *e, apx_park *p)
{
    if (!p->dispatch || get_state(p) != ST_OWNED)
        return APR_EINVAL;
    return queue_one(e, p, APX_EV_RUN);
}

int apx_park_wake(apx_engine *e, apx_park *p)
{
    unsigned w, to = WK_NONE;
    int won = 0;

    pthread_mutex_lock(&e->in_mtx);
    if (!e->in_gone) {
        w = get_wake(p);
        for (;;) {
            if (w == WK_ARMED)
                to = WK_WOKEN_EARLY;
            else if (w == WK_SUBMITTED)
                to = WK_WOKEN;
            else
                break;
            /* fails only against the poller's SUBMITTED -> CLAIMED (or an
             * owner re-arming a record it left enlisted): look again */
            if (__atomic_compare_exchange_n(&p->wake, &w, to, 0,
                                            __ATOMIC_ACQ_REL,
                                            __ATOMIC_ACQUIRE)) {
                won = 1;
                break;
            }
        }
        if (won && to == WK_WOKEN) {
            /* In the CAS's critical section: destroy and the poller see the
             * record on the list whenever they see WOKEN. The eventfd is
             * written here too, before destroy can close it; only the
             * waker that found the list empty writes it (the poller takes
             * the whole list every pass). */
            p->wnext = NULL;
            if (e->woken_tail) {
                e->woken_tail->wnext = p;
            }
            else {
                e->woken = p;
                wake_poller(e);
            }
            e->woken_tail = p;
        }
    }
    pthread_mutex_unlock(&e->in_mtx);
    return won;
}

void apx_engine_stats_get(apx_engine *e, apx_engine_stats *st)
{
    pthread_mutex_lock(&e->wq_mtx);
    st->queued = e->wq.n;
    st->workers = e->workers;
    st->workers_busy = e->busy;
    st->stalls_total = e->stalls_total;
    pthread_mutex_unlock(&e->wq_mtx);
    st->parked = __atomic_load_n(&e->parked, __ATOMIC_RELAXED);
    st->parks_total = __atomic_load_n(&e->parks_total, __ATOMIC_RELAXED);
    st->dispatched_total = __atomic_load_n(&e->dispatched_total, __ATOMIC_RELAXED);
    st->timeouts_total = __atomic_load_n(&e->timeouts_total, __ATOMIC_RELAXED);
    st->runs_total = __atomic_load_n(&e->runs_total, __ATOMIC_RELAXED);
    st->wakes_total = __atomic_load_n(&e->wakes_total, __ATOMIC_RELAXED);
    st->shed_total = __atomic_load_n(&e->shed_total, __ATOMIC_RELAXED);
    st->arms_kept_total = __atomic_load_n(&e->arms_kept_total,
                                          __ATOMIC_RELAXED);
    st->rewatch_total = __atomic_load_n(&e->rewatch_total, __ATOMIC_RELAXED);
    st->arms_fired_total = __atomic_load_n(&e->arms_fired_total,
                                           __ATOMIC_RELAXED);
}

void apx_engine_shed_idle(apx_engine *e, unsigned n)
{
    if (!n)
        return;
    __atomic_fetch_add(&e->shed_want, n, __ATOMIC_RELAXED);
    wake_poller(e);
}

apr_thread_t *apx_engine_current_thread(void)
{
    return apx__engine_thread;
}
