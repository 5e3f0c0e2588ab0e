/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* apx_poller.h — the engine: one epoll poller thread, a worker queue and an
 * elastic pool of worker threads, per httpd child.
 *
 * A request that would block is *parked*: its owner fills an apx_park record
 * (one or two fds, the events wanted on each, a timeout) and hands it over
 * with apx_park_submit(). From then on the poller owns the record: it alone
 * touches the epoll set and the timeout queues. On readiness, hangup/error or
 * deadline it lets go of the record's fds (from then on nothing they report
 * reaches the record; they may stay in the poller's epoll set, which costs
 * the owner nothing: it may use, close or park them again), unlinks it from
 * its timeout queue, records what happened and pushes it onto the worker
 * queue; a worker pops it and calls record->dispatch() — the new owner. The
 * poller pushes a batch to the worker queue only after it has scanned the
 * whole epoll batch, so a later event of the same batch never refers to a
 * record a worker already freed.
 *
 * A record may also be made *wakeable* for one park: another thread then
 * ends the park early with apx_park_wake() (the response cache's coalesced
 * misses: waiters park on the pending entry and the fetching thread wakes
 * them). Whatever comes first — wake, readiness, hangup/error, deadline,
 * stopping, engine destroy — dispatches (or abandons) the record, exactly
 * once per park.
 *
 * Calling threads:
 *   apx_engine_create(), _start(), _destroy()   the child's main thread
 *   apx_engine_stopping()                       any thread
 *   apx_park_init(), apx_park_arm_wake()        the thread that owns the
 *                                               record (not submitted)
 *   apx_park_submit(), apx_run_submit()         the thread that currently
 *                                               owns the record; ownership
 *                                               passes to the engine
 *   apx_park_wake()                             any thread, under the lock
 *                                               that keeps the record alive
 *                                               (see its comment)
 *   apx_engine_stats()                          any thread
 *   record->dispatch()                          runs on a worker thread
 */
#ifndef APX_POLLER_H
#define APX_POLLER_H

#include <apr_pools.h>
#include <apr_thread_proc.h>
#include "apx_common.h"
#include "apx_tq.h"

typedef struct apx_engine apx_engine;
typedef struct apx_park apx_park;

/* Events: wanted (IN, OUT) and reported (all). Hangup and error are always
 * reported on a parked fd, wanted or not, with one exception: a half-close
 * by the peer (EPOLLRDHUP) is watched when IN or nothing is wanted on the fd,
 * not when only OUT is (a client that shut down its sending side after its
 * request must not wake a write-completion park in a loop); a full close or
 * reset still reports HUP/ERR there. */
enum {
    APX_EV_IN       = 0x01,
    APX_EV_OUT      = 0x02,
    APX_EV_HUP      = 0x04,  /* EPOLLHUP or EPOLLRDHUP: peer closed/half-closed */
    APX_EV_ERR      = 0x08,
    APX_EV_TIMEOUT  = 0x10,  /* deadline passed */
    APX_EV_SHUTDOWN = 0x20,  /* child stopping and the record is APX_PARK_IDLE,
                              * or the engine is being destroyed */
    APX_EV_RUN      = 0x40,  /* handed over with apx_run_submit() */
    APX_EV_WAKE     = 0x80,  /* ended by apx_park_wake(); got[] may still
                              * hold what the fds reported before */
    APX_EV_SHED     = 0x200  /* an APX_PARK_IDLE record shed early by
                              * apx_engine_shed_idle() (0x100 is the glue's) */
};

/* Record flags. */
enum {
    /* An idle keep-alive connection: dispatched with APX_EV_SHUTDOWN at once
     * when the child is stopping (graceful restart closes idle connections
     * immediately; in-flight requests finish). */
    APX_PARK_IDLE = 0x01
};

/* Runs on a worker thread; `thd` is that worker's APR thread (the glue sets
 * c->current_thread from it). The record is the callee's again. */
typedef void (*apx_park_fn)(apx_park *p, apr_thread_t *thd);

struct apx_park {
    /* --- set by the owner before submitting, read-only while parked --- */
    int fd[2];                      /* -1 when unused; both -1: timer only */
    unsigned want[2];               /* APX_EV_IN | APX_EV_OUT per fd */
    apr_interval_time_t timeout;    /* <= 0: no deadline */
    unsigned flags;                 /* APX_PARK_* */
    apx_park_fn dispatch;
    void *baton;                    /* the owner's context */
    uint32_t keep[2];               /* non-zero: an id of the file under
                                     * fd[i], the same for as long as the
                                     * owner keeps that file open and unique
                                     * among files it parks. Its epoll arm
                                     * may then outlive the park: a later
                                     * park of the same id wanting the same
                                     * events, while the arm has not fired,
                                     * costs no system call; one wanting
                                     * input after it fired ends at once
                                     * with what it reported. A watch (want
                                     * 0) on such an fd is armed for input
                                     * too (so that a keep-alive wait after
                                     * it can keep the arm); input alone
                                     * does not end the park: the poller
                                     * watches for the hangup only from
                                     * then on. */

    /* --- set by the engine when it dispatches --- */
    unsigned got[2];                /* events seen on fd[0] / fd[1] */
    unsigned why;                   /* got[0] | got[1] | TIMEOUT | SHUTDOWN | RUN */
    apr_time_t parked_at;           /* when the poller took it */

    /* --- engine-private --- */
    apx_tq_link tq;
    apx_park *next;
    unsigned state;
    apx_park *wnext;                /* on the engine's woken list (in_mtx) */
    unsigned wake;                  /* atomic: the wake word, see poller.c */
};

typedef struct apx_engine_conf {
    unsigned workers_min;           /* started at once; >= 1 */
    unsigned workers_max;           /* the pool grows to this when every
                                     * worker is busy and records wait */
    unsigned workers_awake;         /* wake at most this many for queued
                                     * records (0: online CPUs); past it a
                                     * worker more only when the queue makes
                                     * no progress for 1 ms */
    apr_interval_time_t worker_idle_timeout; /* idle above min: thread exits */
    unsigned expire_budget;         /* timeouts handled per poller pass */
    unsigned max_events;            /* epoll_wait batch size */
} apx_engine_conf;

typedef struct apx_engine_stats {
    unsigned parked;                /* in the poller now */
    unsigned queued;                /* on the worker queue now */
    unsigned workers, workers_busy;
    apr_uint64_t parks_total, dispatched_total, timeouts_total;
    apr_uint64_t runs_total;        /* apx_run_submit() hand-overs */
    apr_uint64_t wakes_total;       /* parks ended by apx_park_wake() and
                                     * handed to a worker with WAKE */
    apr_uint64_t stalls_total;      /* the queue made no progress for 1 ms:
                                     * a worker more was woken or started */
    apr_uint64_t shed_total;        /* idle records shed (APX_EV_SHED) */
    apr_uint64_t arms_kept_total;   /* fds parked on an arm left from an
                                     * earlier park (keep[]): no epoll_ctl */
    apr_uint64_t arms_fired_total;  /* fds parked for input on an arm
                                     * left from an earlier park that fired
                                     * meanwhile: dispatched at once */
    apr_uint64_t rewatch_total;     /* input on a kept watch: re-armed for
                                     * the hangup only */
} apx_engine_stats;

/* Fills conf with the defaults (workers 2..16, idle 10 s, budget 256,
 * batch 256). */
void apx_engine_conf_default(apx_engine_conf *conf);

/* The engine takes its own allocator and pool under `parent`. Nothing runs
 * before apx_engine_start(). */
apr_status_t apx_engine_create(apx_engine **pe, const apx_engine_conf *conf,
                               apr_pool_t *parent);
/* Starts the poller and workers_min workers. On failure the caller still
 * calls apx_engine_destroy(). Engine threads run with asynchronous signals
 * blocked (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGTRAP, SIGSYS stay
 * deliverable). */
apr_status_t apx_engine_start(apx_engine *e);

/* The child is stopping: idle records are dispatched with SHUTDOWN now and
 * any idle record parked later at once. Wakes the poller; returns at once. */
void apx_engine_stopping(apx_engine *e);
int apx_engine_is_stopping(const apx_engine *e);

/* Stops the poller, lets workers finish what they run, joins every thread.
 * Records still parked or queued are then passed to abandoned() on the
 * calling thread (NULL: dropped). Frees the engine's pool.
 * In detail: the poller is stopped and joined first; workers then drain the
 * worker queue (so records that stopping() dispatched with SHUTDOWN are
 * still handled) and exit; every engine thread, including those that exited
 * earlier by shrinking, is joined before abandoned() runs. abandoned(p, NULL)
 * sees why = APX_EV_SHUTDOWN and got[] = 0; the fds are already out of the
 * (closed) epoll set; apx_park_submit()/apx_run_submit() from there return
 * APR_EINVAL. Records parked by a dispatch during destroy are abandoned.
 * A record woken (apx_park_wake() returned 1) but not yet on the worker
 * queue when the poller stopped is abandoned too, once, with why =
 * APX_EV_SHUTDOWN; apx_park_wake() from the point where destroy takes the
 * intake (after joining the workers) returns 0.
 * Must be called (the glue does it from a pchild pre-cleanup) before the
 * parent pool dies: the engine registers nothing on the parent. */
void apx_engine_destroy(apx_engine *e, apx_park_fn abandoned);

/* Hands p to the poller. The caller must not touch p (nor what it guards)
 * afterwards: it may already be running on a worker when this returns.
 * An armed record already woken goes straight to the worker queue (see
 * apx_park_wake()).
 * Returns APR_EINVAL for a bad fd or when the engine is gone (the caller
 * still owns p then).
 * APR_EINVAL (synchronous) when: an fd is negative but not -1,
 * fd[0] == fd[1] >= 0, dispatch is NULL, p is not the caller's (already
 * submitted; p must have been apx_park_init()ed once), or — in APX_DEBUG
 * builds only — an fd is not open (fcntl F_GETFD fails: a syscall per fd
 * per park, which production builds do not pay).
 * An fd the poller cannot watch is dispatched at once with got[i] =
 * APX_EV_ERR (and ERR in why): not open (EBADF: closed after the submit,
 * or, in production builds, before it), a regular file (EPERM), an fd
 * parked by another record the poller still holds. The deadline counts
 * from when the poller takes p (p->parked_at, wall clock); deadlines run
 * on CLOCK_MONOTONIC. */
apr_status_t apx_park_submit(apx_engine *e, apx_park *p);

/* Puts p straight onto the worker queue (why = APX_EV_RUN). APR_EINVAL when
 * dispatch is NULL, p is not the caller's, or the engine is gone. Before
 * apx_engine_start() records wait in the queue. */
apr_status_t apx_run_submit(apx_engine *e, apx_park *p);

/* Initialises the record fields to "nothing wanted" (fds -1), not
 * wakeable. It rewrites every field, the wake word too: never call it on a
 * record that is armed (apx_park_arm_wake() called and the park it covers
 * not yet dispatched) or that a waker may still reach — set the fields of
 * the next park one by one instead. */
void apx_park_init(apx_park *p, apx_park_fn dispatch, void *baton);

/* Makes the record's *next* park wakeable. Owner thread, while it owns p,
 * before it makes p reachable to wakers (enlists it); p must have been
 * apx_park_init()ed once. One arm covers one park: the park's dispatch (or
 * abandon) disarms it, so re-arm before enlisting for another park; a park
 * submitted without arming is not wakeable (apx_park_wake() returns 0).
 * apx_run_submit() neither uses nor clears an arm. */
void apx_park_arm_wake(apx_park *p);

/* Ends the park of an armed record: it is handed to a worker with why =
 * APX_EV_WAKE (| got[] bits its fds reported before the wake won; never
 * TIMEOUT or SHUTDOWN). Any thread; never blocks beyond the engine's intake
 * lock. Returns 1 when this call won: exactly one dispatch with WAKE follows
 * (or the record is abandoned by apx_engine_destroy(), which wins too):
 *   - armed and already submitted: taken off the poller at once;
 *   - armed, not yet submitted: nothing happens now; the owner's next
 *     apx_park_submit() puts it straight onto the worker queue (why = WAKE,
 *     got[] = 0, no fd registered). If that submit fails (APR_EINVAL) the
 *     owner keeps p and no dispatch follows, as for any failed submit.
 * Returns 0 and changes nothing when the record is not armed, was already
 * woken, another cause (event, deadline, stopping) already claimed the park,
 * it was dispatched, or the engine is being destroyed (destroy then abandons
 * a submitted record itself).
 * Lifetime contract: the caller guarantees p stays alive for the whole call.
 * The intended pattern: the waker holds the lock of the list p is enlisted
 * on (the cache entry's waiter list) while calling this, and the owner, once
 * dispatched for whatever reason, takes that lock to delist p before it
 * frees, re-inits or re-arms p. This function touches p only before it
 * returns: after a win the engine alone touches p until dispatch. e must be
 * alive: never call it after apx_engine_destroy() returned. */
int apx_park_wake(apx_engine *e, apx_park *p);

void apx_engine_stats_get(apx_engine *e, apx_engine_stats *st);

/* Sheds up to n parked APX_PARK_IDLE records, the longest parked first
 * (across all their timeout queues): each is dispatched with APX_EV_SHED, as
 * if its deadline had come. Asked of the poller, which does it on its next
 * pass; requests add up until then. Any thread; returns at once. (The glue
 * closes idle keep-alive connections this way when the child is at its
 * connection limit or short of file descriptors.) */
void apx_engine_shed_idle(apx_engine *e, unsigned n);

/* The APR thread of the calling worker, or NULL off the engine's workers. */
apr_thread_t *apx_engine_current_thread(void);

#endif /* APX_POLLER_H */
