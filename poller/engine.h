/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* engine.h — what poller.c (the poller thread, the API) and workers.c (the
 * worker queue's threads) share: the engine record, a record's states and
 * wake word, the record lists, the monotonic clock. Private to poller/:
 * include/apx_poller.h is the engine's interface. Which thread owns which
 * field is said at the top of poller.c and in struct apx_engine.
 */
#ifndef APX_POLLER_ENGINE_H
#define APX_POLLER_ENGINE_H

#include <pthread.h>
#include <stdint.h>
#include <time.h>
#include <apr_thread_proc.h>
#include "apx_poller.h"

enum {
    ST_OWNED = 0,       /* the owner's (also: after dispatch began) */
    ST_INTAKE,
    ST_PARKED,
    ST_READY,
    ST_QUEUED,
    ST_DETACHED         /* woken while the poller held it: waiting for its
                         * wake message (on no list nor timeout queue) */
};

/* The wake word (p->wake); see the top of the file. */
enum {
    WK_NONE = 0,
    WK_ARMED,
    WK_WOKEN_EARLY,
    WK_SUBMITTED,
    WK_WOKEN,
    WK_CLAIMED
};

/* The poller's view of one fd number (e->slots[fd]); see "Registration"
 * at the top of the file. */
typedef struct fd_slot {
    apx_park *owner;        /* parked on this fd, still the poller's
                             * (PARKED, READY or DETACHED); NULL: released */
    uint32_t gen;           /* generation of the last arm, in its epoll data */
    unsigned char idx;      /* owner->fd[idx] is this fd */
    unsigned char reg;      /* the fd's current file is believed to be in
                             * the epoll set */
    unsigned char armed;    /* ... armed by the last arm, and no event of
                             * it seen since (ONESHOT would have disabled
                             * it): a park of the same file with the same
                             * mask takes it as it is (see "Kept arms") */
    unsigned char pending;  /* IN/HUP/ERR of an event of the last arm
                             * that came with no owner (see "Kept arms") */
    uint32_t mask;          /* the epoll mask of the last arm */
    uint32_t keep;          /* the park's keep[] id of the last arm (0: none) */
} fd_slot;

typedef struct engine_thread engine_thread;
struct engine_thread {
    apx_engine *e;
    apr_pool_t *pool;       /* this thread's subpool; destroyed after join */
    apr_thread_t *thd;
    engine_thread *next;    /* on e->zombies */
};

typedef struct park_list {
    apx_park *head, *tail;
    unsigned n;
} park_list;

struct apx_engine {
    apx_engine_conf conf;
    apr_pool_t *pool;
    int epfd, evfd;

    /* --- intake: any thread -> poller (in_mtx) --- */
    pthread_mutex_t in_mtx;
    park_list intake;
    apx_park *woken, *woken_tail;   /* won by apx_park_wake(), via wnext */
    int stop_poller;            /* destroy began: the poller exits */
    int in_gone;                /* destroy joined everything: refuse */

    int stopping;               /* atomic: apx_engine_stopping() called */
    unsigned shed_want;         /* atomic: idle records to shed, asked of
                                 * the poller by apx_engine_shed_idle() */

    /* --- poller thread only --- */
    apx_tq_set *tqs;
    apx_tq untimed;             /* parked without deadline: never expired,
                                 * but found by the stopping sweep and by
                                 * destroy */
    struct epoll_event *events;
    unsigned nparked;           /* published to `parked` each pass */
    int stopping_swept;
    int epoll_failed_logged;
    apr_time_t watch_next;      /* the watchdog's next look */
    fd_slot *slots;             /* indexed by fd; malloc'd, grows */
    unsigned nslots;
    uint32_t gen;               /* last generation handed out; never 0 */

    /* --- worker queue and pool (wq_mtx) --- */
    pthread_mutex_t wq_mtx;
    pthread_cond_t wq_cond;     /* work queued, or stop */
    pthread_cond_t exit_cond;   /* a thread put itself on zombies */
    park_list wq;
    unsigned workers;           /* counted against min/max (incl. starting) */
    unsigned live;              /* worker threads not yet on zombies */
    unsigned busy;              /* inside dispatch() */
    unsigned idle;              /* waiting on wq_cond, not yet claimed */
    unsigned wakeups;           /* signals sent to idle workers, not yet
                                 * consumed: idle + wakeups = waiters */
    unsigned awake_max;         /* wake no more than this many (cores) */
    int watch;                  /* records wait for a busy worker: the
                                 * poller looks every WATCH_US (written
                                 * under wq_mtx, read atomically) */
    apr_uint64_t watch_pops;    /* dispatched_total when the poller last
                                 * saw progress */
    apr_time_t watch_at;        /* ... and when */
    int started;
    int wq_stop;                /* destroy: drain, then exit */
    int wq_gone;                /* destroy joined everything: refuse */
    engine_thread *zombies;     /* exited, not yet joined */

    engine_thread *poller;      /* main thread only */

    /* --- statistics (atomics) --- */
    unsigned parked;
    apr_uint64_t parks_total, dispatched_total, timeouts_total, runs_total;
    apr_uint64_t wakes_total, shed_total;
    apr_uint64_t arms_kept_total, arms_fired_total, rewatch_total;
                                /* poller thread writes */
    apr_uint64_t stalls_total;  /* wq_mtx: watchdog woke or started one */
};

/* A record that waits this long on the queue while no worker takes any
 * makes the poller wake (or start) one more worker past awake_max: the
 * awake ones may be blocked (a gate wait, a handler that blocks, a slow
 * log write). */
#define WATCH_US 1000
/* How long the poller lets readiness gather while the workers have a
 * backlog (see poller_main()): well under a millisecond of latency for a
 * record that would have waited in the queue anyway. */
#define BACKLOG_PAUSE_US 200

/* The worker thread running now, NULL on any other thread (workers.c sets
 * it; apx_engine_current_thread() returns it). */
extern __thread apr_thread_t *apx__engine_thread;


#define ATOMIC_INC64(p) __atomic_fetch_add((p), 1, __ATOMIC_RELAXED)

/* The state moves with ownership (under the hand-over locks); it is read
 * atomically only so that the "submitted twice" guard in the submit
 * functions, which looks at a record the caller may wrongly believe it
 * owns, is a defined check rather than a data race. */
static APR_INLINE unsigned get_state(const apx_park *p)
{
    return __atomic_load_n(&p->state, __ATOMIC_RELAXED);
}

static APR_INLINE void set_state(apx_park *p, unsigned st)
{
    __atomic_store_n(&p->state, st, __ATOMIC_RELAXED);
}

static APR_INLINE unsigned get_wake(const apx_park *p)
{
    return __atomic_load_n(&p->wake, __ATOMIC_ACQUIRE);
}

static APR_INLINE void set_wake(apx_park *p, unsigned w)
{
    __atomic_store_n(&p->wake, w, __ATOMIC_RELEASE);
}

/* ------------------------------------------------------------------ lists */

static APR_INLINE void list_init(park_list *l)
{
    l->head = l->tail = NULL;
    l->n = 0;
}

static APR_INLINE void list_push(park_list *l, apx_park *p)
{
    p->next = NULL;
    if (l->tail)
        l->tail->next = p;
    else
        l->head = p;
    l->tail = p;
    l->n++;
}

static APR_INLINE apx_park *list_pop(park_list *l)
{
    apx_park *p = l->head;

    if (p) {
        l->head = p->next;
        if (!l->head)
            l->tail = NULL;
        l->n--;
        p->next = NULL;
    }
    return p;
}

static APR_INLINE void list_splice(park_list *to, park_list *from)
{
    if (!from->head)
        return;
    if (to->tail)
        to->tail->next = from->head;
    else
        to->head = from->head;
    to->tail = from->tail;
    to->n += from->n;
    list_init(from);
}
/* ------------------------------------------------------------------ time */

/* Deadlines run on the monotonic clock: a wall-clock step must neither
 * expire every parked request nor keep them forever. */
static APR_INLINE apr_time_t mono_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (apr_time_t)ts.tv_sec * APR_USEC_PER_SEC + ts.tv_nsec / 1000;
}
/* workers.c: the threads and the worker pool (see there). */
apr_status_t apx__spawn_thread(apx_engine *e, apr_thread_start_t fn,
                               engine_thread **pt);
void apx__join_thread(engine_thread *t);
void apx__join_list(engine_thread *t);
void apx__start_workers(apx_engine *e, unsigned n);
void apx__wake_idle_locked(apx_engine *e);
int apx__enqueue_locked(apx_engine *e, park_list *ready, int check_gone);

#endif /* APX_POLLER_ENGINE_H */
