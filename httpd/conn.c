/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* conn.c — the handler entry, the two drivers of a request's
 * coroutine, and the life of a connection the module adopts.
 *
 * httpd 2.4 never takes a SUSPENDED connection back, so once our handler
 * suspends, the module owns the connection for the rest of its life
 * (DESIGN.md §3): it finishes the response, does write completion,
 * keep-alive, pipelined requests (for any handler), lingering close and
 * the final apr_pool_destroy(c->pool).
 *
 * Threads:
 *   asyncproxy_handler()            MPM thread (first request), or a module
 *                                   worker (later requests on an adopted
 *                                   connection)
 *   asyncproxy_suspend_connection() MPM thread, after the handler returned
 *                                   SUSPENDED; it arms the poller
 *   asyncproxy_process_connection() MPM thread: a head that is not whole
 *                                   is awaited in the poller instead
 *   conn_dispatch() and below       module worker threads
 *   lane_run()                      a lane thread (lane.c)
 * Invariants:
 *   - One thread touches a connection at a time: the park record, the
 *     request, its coroutine and both sockets change owner as one unit.
 *   - A connection handed over by the MPM is not touched by a module worker
 *     before the hand-over gate says the MPM thread has left it; the gate
 *     has no timed way through: a record whose gate is closed waits parked.
 *   - No pointer to r or rq survives ap_process_request_after_handler().
 *   - Nothing a client sends holds a module worker: httpd reads a head only
 *     once it is whole (head.c), and other handlers' requests
 *     run on the lane's threads, never on the workers.
 */
#include <poll.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <fcntl.h>
#include <unistd.h>

#include "httpd.h"
#include "http_config.h"
#include "http_connection.h"
#include "http_core.h"
#include "http_log.h"
#include "http_protocol.h"
#include "http_request.h"
#include "ap_mpm.h"
#include "mpm_common.h"
#include "scoreboard.h"
#include "apr_strings.h"

#include "conf.h"
#include "child.h"
#include "drive.h"
#include "conn.h"
#include "map.h"
#include "request.h"
#include "head.h"
#include "lane.h"

APLOG_USE_MODULE(asyncproxy);
extern module AP_MODULE_DECLARE_DATA asyncproxy_module;

/* What a parked connection waits for. */
enum {
    PH_NONE = 0,
    PH_REQUEST,     /* a request's coroutine waits for I/O */
    PH_WRITE,       /* write completion: output pending, wait writable */
    PH_KEEPALIVE,   /* idle between requests */
    PH_HEAD,        /* part of the next request head arrived */
    PH_LINGER,      /* lingering close: drain until EOF or 2 s */
    PH_GATE,        /* the hand-over gate was closed: look again soon */
    PH_AFTER        /* back from the lane: the request is complete */
};

/* Where the adoption loop (the part of the event MPM's process_socket()
 * the module redoes) goes on. */
enum { AT_HEAD, AT_PROCESS, AT_AFTER, AT_WC };

/* A closed hand-over gate is looked at again after this long, the record
 * parked meanwhile (no worker waits). The MPM thread leaves within
 * microseconds unless it was descheduled. */
#define GATE_RECHECK    1000
/* Gate waits longer than this are counted apart (GateBoundHits: until
 * 0.x the gate let a record through after this long). */
#define GATE_LONG       apr_time_from_sec(1)
/* With no sign at all from the MPM thread (no scoreboard slot and no
 * sequence slot: never seen), the gate opens this long after the hook. */
#define GATE_BLIND      apr_time_from_sec(1)
/* Lingering close reads at most this long (the MPM uses 2 s too). */
#define LINGER_TIME     apr_time_from_sec(2)
/* The shedding check (idle connections under pressure) runs this often. */
#define SHED_TICK       apr_time_from_msec(100)

typedef struct apx_conn apx_conn;
struct apx_conn {
    apx_park park;              /* the record the poller holds */
    conn_rec *c;
    apr_socket_t *csd;
    int fd;
    int phase;                  /* PH_* the park is for */
    apx_req *rq;                /* request in flight, or NULL */
    int want_park;              /* handler returned SUSPENDED to park rq */
    int adopted;
    /* The hand-over gate (DESIGN.md §3): the MPM thread that ran our
     * suspend hook still writes cs->c->sbh and cs->suspended after it. */
    int gate_pending;
    volatile worker_score *mpm_ws;
    unsigned char mpm_status;
    apr_time_t mpm_last_used;
    volatile apr_uint32_t *mpm_seq;
    apr_uint32_t mpm_seq_val;
    apr_time_t hook_time;
    apr_time_t gate_since;      /* first found closed, 0: not yet */
    int gate_phase;             /* the dispatch the gate held back */
    unsigned gate_why, gate_got[2];
    apr_time_t deadline;        /* PH_LINGER absolute deadline */
    apx_head *head;             /* the request head read ahead */
    int want_head;              /* process_connection suspended it to
                                 * await its head in the poller */
    /* a request for another handler, run on the lane */
    apx_lane_job lane;
    request_rec *lane_r;
    const char *lane_handler;
    int want_lane;
    apx_conn *prev, *next;      /* list of adopted connections */
};

/* ------------------------------------------------------------------ */
/* per-MPM-thread sequence numbers for the gate                         */

/* Each MPM thread bumps its own counter at the start of every unit of
 * work it does (pre_connection, resume_connection, suspend_connection):
 * when the counter of the thread that suspended a connection has moved,
 * that thread has left the connection. The slots live for the whole
 * process (never freed while a thread that used one may have exited). */
#define SEQ_SLOTS 4096
static volatile apr_uint32_t seq_slots[SEQ_SLOTS];
static volatile apr_uint32_t seq_next;
static __thread volatile apr_uint32_t *my_seq;

static volatile apr_uint32_t *thread_seq(void)
{
    if (!my_seq) {
        apr_uint32_t i = apr_atomic_inc32(&seq_next);

        if (i >= SEQ_SLOTS)
            return NULL;
        my_seq = &seq_slots[i];
    }
    return my_seq;
}

static void bump_seq(void)
{
    volatile apr_uint32_t *s = thread_seq();

    if (s)
        apr_atomic_inc32(s);
}

/* ------------------------------------------------------------------ */
/* adopted connections                                                  */

static apr_thread_mutex_t *adopted_mtx;
static apx_conn *adopted_head;

static void adopted_link(apx_conn *ac)
{
    apx_child *ch = apx_ch;

    ac->adopted = 1;
    apr_atomic_inc32(&ch->n.adopted_now);
    apr_atomic_inc32(&ch->n.adopted_total);
    apr_thread_mutex_lock(adopted_mtx);
    ac->prev = NULL;
    ac->next = adopted_head;
    if (adopted_head)
        adopted_head->prev = ac;
    adopted_head = ac;
    apr_thread_mutex_unlock(adopted_mtx);
}

static void adopted_unlink(apx_conn *ac)
{
    apr_thread_mutex_lock(adopted_mtx);
    if (ac->prev)
        ac->prev->next = ac->next;
    else
        adopted_head = ac->next;
    if (ac->next)
        ac->next->prev = ac->prev;
    ac->prev = ac->next = NULL;
    apr_thread_mutex_unlock(adopted_mtx);
    apr_atomic_dec32(&apx_ch->n.adopted_now);
}

void apx_conn_shutdown_all(void)
{
    apx_conn *ac;

    if (!adopted_mtx)
        return;
    /* Child exit: wakes any worker blocked in socket I/O; the connections
     * themselves are abandoned (the process is about to exit). */
    apr_thread_mutex_lock(adopted_mtx);
    for (ac = adopted_head; ac; ac = ac->next)
        shutdown(ac->fd, SHUT_RDWR);
    apr_thread_mutex_unlock(adopted_mtx);
}

static apx_conn *conn_get(conn_rec *c)
{
    apx_conn *ac = ap_get_module_config(c->conn_config, &asyncproxy_module);
    apr_os_sock_t fd;

    if (ac)
        return ac;
    ac = apr_pcalloc(c->pool, sizeof(*ac));
    ac->c = c;
    ac->csd = ap_get_conn_socket(c);
    ac->fd = -1;
    if (ac->csd && apr_os_sock_get(&fd, ac->csd) == APR_SUCCESS)
        ac->fd = fd;
    ap_set_module_config(c->conn_config, &asyncproxy_module, ac);
    return ac;
}

/* ------------------------------------------------------------------ */
/* the hand-over gate                                                   */

/* 1 when the MPM thread that ran the suspend hook has left the connection:
 * its scoreboard slot changed (it went idle, or on to other work), or its
 * sequence moved (a hook at the start of its next unit of work). */
static int gate_is_open(const apx_conn *ac, apr_time_t now)
{
    volatile worker_score *ws = ac->mpm_ws;

    __sync_synchronize();
    if (ws && (ws->status != ac->mpm_status
               || ws->last_used != ac->mpm_last_used))
        return 1;
    if (ac->mpm_seq && *ac->mpm_seq != ac->mpm_seq_val)
        return 1;
    return !ws && !ac->mpm_seq && now - ac->hook_time > GATE_BLIND;
}

static void gate_count(apx_conn *ac, apr_time_t now)
{
    apx_child *ch = apx_ch;
    apr_uint32_t waited, max;

    waited = (apr_uint32_t)(now - ac->gate_since);
    apr_atomic_inc32(&ch->n.gate_waits);
    if (now - ac->gate_since > GATE_LONG)
        apr_atomic_inc32(&ch->n.gate_bound_hits);
    do {
        max = apr_atomic_read32(&ch->n.gate_max_us);
    } while (waited > max
             && apr_atomic_cas32(&ch->n.gate_max_us, waited, max) != max);
}

static void park(apx_conn *ac, int phase, int fd0, unsigned want0, int fd1,
                 apr_interval_time_t timeout, unsigned flags);

/* Before a module worker first touches a connection handed over by the
 * MPM: 1 when the gate is open (the dispatch goes on, with what the record
 * held back if it had to wait). 0 when it is closed: the record is parked
 * on a short timer instead, whatever it was dispatched for kept for later;
 * the worker goes on to other work. There is no way through on time alone
 * (a descheduled MPM thread may still write cs->c->sbh and cs->suspended):
 * a long wait costs latency and a timer a millisecond, never memory. */
static int gate_pass(apx_conn *ac, apx_park *p)
{
    apr_time_t now = apr_time_now();

    if (!gate_is_open(ac, now)) {
        /* one more look: the MPM thread is usually a few instructions from
         * the end of process_socket() */
        sched_yield();
        now = apr_time_now();
    }
    if (gate_is_open(ac, now)) {
        ac->gate_pending = 0;
        __sync_synchronize();
        if (ac->gate_since) {
            gate_count(ac, now);
            p->why = ac->gate_why;
            p->got[0] = ac->gate_got[0];
            p->got[1] = ac->gate_got[1];
            ac->phase = ac->gate_phase;
        }
        return 1;
    }
    if (!ac->gate_since) {
        ac->gate_since = now;
        ac->gate_phase = ac->phase;
        ac->gate_why = p->why;
        ac->gate_got[0] = p->got[0];
        ac->gate_got[1] = p->got[1];
    }
    else if (ac->phase == PH_GATE && (p->why & APX_EV_SHUTDOWN)) {
        /* the engine is going: whatever the MPM thread does, the process
         * exits; hand the record on as the shutdown it is */
        ac->gate_pending = 0;
        ac->phase = ac->gate_phase;
        p->why = APX_EV_SHUTDOWN;
        p->got[0] = p->got[1] = 0;
        return 1;
    }
    apr_atomic_inc32(&apx_ch->n.gate_requeues);
    park(ac, PH_GATE, -1, 0, -1, GATE_RECHECK, 0);
    return 0;
}

/* ------------------------------------------------------------------ */
/* waiting: the two drivers                                             */

static int ms_until(apr_time_t deadline, apr_time_t now)
{
    apr_interval_time_t d;

    if (!deadline)
        return -1;
    if (deadline <= now)
        return 0;
    d = deadline - now;
    /* round up: never wake before the deadline */
    return (int)((d + 999) / 1000);
}

/* poll() on this thread: the sync driver, and the async driver's first
 * slice before the park delay ends. Returns 0 when `until` passed. */
static unsigned poll_in_place(apx_req *rq, int fd, unsigned events,
                              apr_time_t until)
{
    struct pollfd pfd[2];
    int n = 1, rc;
    unsigned got = 0;

    pfd[0].fd = fd;
    pfd[0].events = ((events & APX_EV_IN) ? POLLIN : 0)
                    | ((events & APX_EV_OUT) ? POLLOUT : 0);
    pfd[0].revents = 0;
    if (rq->client_fd >= 0 && rq->client_fd != fd && !rq->detached) {
        pfd[1].fd = rq->client_fd;
        pfd[1].events = POLLRDHUP;
        pfd[1].revents = 0;
        n = 2;
    }
    do {
        rc = poll(pfd, n, ms_until(until, apr_time_now()));
    } while (rc < 0 && errno == EINTR);
    if (rc <= 0)
        return 0;
    if (pfd[0].revents & POLLIN)
        got |= APX_EV_IN;
    if (pfd[0].revents & POLLOUT)
        got |= APX_EV_OUT;
    if (pfd[0].revents & (POLLHUP | POLLRDHUP))
        got |= APX_EV_HUP;
    if (pfd[0].revents & (POLLERR | POLLNVAL))
        got |= APX_EV_ERR;
    if (n == 2 && (pfd[1].revents & (POLLRDHUP | POLLHUP | POLLERR)))
        got |= APX_EV_CLIENT_GONE;
    return got;
}

/* poll() in place on an MPM thread, unless half of the MPM's threads do so
 * already (then they would stop accepting). Returns the events, or 0 when
 * `until` passed; *skipped says the cap refused. */
static unsigned wait_in_place(apx_req *rq, int fd, unsigned events,
                              apr_time_t until, int *skipped)
{
    apx_child *ch = apx_ch;
    unsigned got = 0;

    *skipped = 0;
    if (apr_atomic_inc32(&ch->delaying) < ch->delaying_max)
        got = poll_in_place(rq, fd, events, until);
    else
        *skipped = 1;
    apr_atomic_dec32(&ch->delaying);
    return got;
}

unsigned apx_wait(apx_req *rq, int fd, unsigned events, apr_time_t deadline)
{
    unsigned got;
    apr_time_t now = apr_time_now();
    int skipped;

    if (deadline && now >= deadline)
        return APX_EV_TIMEOUT;
    if (rq->async) {
        /* The first slice runs on an MPM thread: a fast backend answers
         * within the park delay and is served without a hand-over. On a
         * module worker we never wait in place. */
        if (!apx_engine_current_thread() && now < rq->park_after) {
            apr_time_t until = rq->park_after;

            if (deadline && deadline < until)
                until = deadline;
            got = wait_in_place(rq, fd, events, until, &skipped);
            if (got)
                return got;
            if (skipped) {
                /* this one parks now, and so do its later waits */
                apr_atomic_inc32(&apx_ch->n.delay_skipped);
                rq->park_after = 0;
            }
            else if (deadline && apr_time_now() >= deadline)
                return APX_EV_TIMEOUT;
        }
        rq->wait_fd = fd;
        rq->wait_events = events;
        rq->wait_deadline = deadline;
        rq->wait_got = 0;
        apx_coro_yield(rq->coro, 1);
        return rq->wait_got;
    }
    got = poll_in_place(rq, fd, events, deadline);
    return got ? got : APX_EV_TIMEOUT;
}

unsigned apx_wait2(apx_req *rq, int fd0, unsigned ev0, int fd1, unsigned ev1,
                   apr_time_t deadline, unsigned *got1)
{
    struct pollfd pfd[2];
    unsigned got = 0;
    int i, rc;

    *got1 = 0;
    if (deadline && apr_time_now() >= deadline)
        return APX_EV_TIMEOUT;
    if (rq->async) {
        rq->wait_two = 1;
        rq->wait_fd = fd0;
        rq->wait_events = ev0;
        rq->wait_fd1 = fd1;
        rq->wait_events1 = ev1;
        rq->wait_deadline = deadline;
        rq->wait_got = rq->wait_got1 = 0;
        apx_coro_yield(rq->coro, 1);
        rq->wait_two = 0;
        *got1 = rq->wait_got1;
        return rq->wait_got;
    }
    /* the sync driver (worker/prefork MPM): this thread is the request's */
    pfd[0].fd = fd0;
    pfd[0].events = ((ev0 & APX_EV_IN) ? POLLIN | POLLRDHUP : 0)
                    | ((ev0 & APX_EV_OUT) ? POLLOUT : 0);
    pfd[1].fd = fd1;
    pfd[1].events = ((ev1 & APX_EV_IN) ? POLLIN | POLLRDHUP : 0)
                    | ((ev1 & APX_EV_OUT) ? POLLOUT : 0);
    pfd[0].revents = pfd[1].revents = 0;
    do {
        rc = poll(pfd, 2, ms_until(deadline, apr_time_now()));
    } while (rc < 0 && errno == EINTR);
    if (rc <= 0)
        return APX_EV_TIMEOUT;
    for (i = 0; i < 2; i++) {
        unsigned g = 0;

        if (pfd[i].revents & POLLIN)
            g |= APX_EV_IN;
        if (pfd[i].revents & POLLOUT)
            g |= APX_EV_OUT;
        if (pfd[i].revents & (POLLHUP | POLLRDHUP))
            g |= APX_EV_HUP;
        if (pfd[i].revents & (POLLERR | POLLNVAL))
            g |= APX_EV_ERR;
        if (i == 0)
            got = g;
        else
            *got1 = g;
    }
    return got;
}

unsigned apx_wait_connect(apx_req *rq, int fd, apr_time_t deadline)
{
    apr_time_t until = apr_time_now() + APX_CONNECT_GRACE;
    unsigned got;
    int skipped;

    if (rq->async && !apx_engine_current_thread() && until > rq->park_after) {
        if (deadline && deadline < until)
            until = deadline;
        got = wait_in_place(rq, fd, APX_EV_OUT, until, &skipped);
        if (got)
            return got;
    }
    return apx_wait(rq, fd, APX_EV_OUT, deadline);
}

static void conn_dispatch(apx_park *p, apr_thread_t *thd);

unsigned apx_wait_wake(apx_req *rq, int (*enlist)(void *baton, apx_park *p),
                       void *baton, apr_time_t deadline)
{
    apx_conn *ac;

    if (!rq->async || rq->client_fd < 0)
        return 0;
    ac = conn_get(rq->c);
    /* The record is ours while the request runs: make its next park
     * wakeable before a waker can reach it. */
    apx_park_init(&ac->park, conn_dispatch, ac);
    apx_park_arm_wake(&ac->park);
    if (!enlist(baton, &ac->park))
        return APX_EV_WAKE;
    rq->wait_wake = 1;
    rq->wait_fd = -1;
    rq->wait_events = 0;
    rq->wait_deadline = deadline;
    rq->wait_got = 0;
    apx_coro_yield(rq->coro, 1);
    rq->wait_wake = 0;
    return rq->wait_got;
}

/* ------------------------------------------------------------------ */
/* parking                                                              */

static void drive(apx_conn *ac, int step);
static void close_conn(apx_conn *ac);
static void resume_request(apx_conn *ac);

/* The engine refused a record (it is gone): dispatched on this thread as a
 * shutdown. */
static void dispatch_engine_gone(apx_park *p)
{
    p->why = APX_EV_SHUTDOWN;
    p->got[0] = p->got[1] = 0;
    conn_dispatch(p, apx_engine_current_thread());
}

/* Hands the connection to the poller. On failure (engine gone) the
 * record is dispatched on this thread as a shutdown. */
static void park(apx_conn *ac, int phase, int fd0, unsigned want0, int fd1,
                 apr_interval_time_t timeout, unsigned flags)
{
    apx_park *p = &ac->park;

    /* An armed record keeps its wake word, and one that a waker may still
     * reach (a gate re-park before the coroutine delisted it) is not
     * rewritten under it: set the fields one by one. */
    if (!(ac->rq && ac->rq->wait_wake
          && (phase == PH_REQUEST || phase == PH_GATE)))
        apx_park_init(p, conn_dispatch, ac);
    ac->phase = phase;
    p->fd[0] = fd0;
    p->want[0] = want0;
    p->fd[1] = fd1;
    p->want[1] = 0;
    p->timeout = timeout;
    p->flags = flags;
    if (!apx_ch || !apx_ch->engine
        || apx_park_submit(apx_ch->engine, p) != APR_SUCCESS)
        dispatch_engine_gone(p);
}

/* park() with something wanted on both fds (a tunnel). */
static void park2(apx_conn *ac, int fd0, unsigned want0, int fd1,
                  unsigned want1, apr_interval_time_t timeout)
{
    apx_park *p = &ac->park;

    apx_park_init(p, conn_dispatch, ac);
    ac->phase = PH_REQUEST;
    p->fd[0] = fd0;
    p->want[0] = want0;
    p->fd[1] = fd1;
    p->want[1] = want1;
    p->timeout = timeout;
    p->flags = 0;
    if (!apx_ch || !apx_ch->engine
        || apx_park_submit(apx_ch->engine, p) != APR_SUCCESS)
        dispatch_engine_gone(p);
}

/* The poller keeps one timeout queue per distinct timeout value and scans
 * them all on every loop (apx_tq_set_wait_ms, apx_tq_set_expire), and never
 * frees one: a remaining time to the microsecond made a new queue on almost
 * every park (129 after 5 s of the 1 s, 1,000-connection benchmark; 10% of
 * the child's instructions per request). Rounded up, a few queues serve
 * all parks (4 in the same run); a deadline passes at most 1% late. */
static apr_interval_time_t park_timeout(apr_interval_time_t t)
{
    apr_interval_time_t grain = t <= apr_time_from_sec(1) ? 1000
                                : t <= apr_time_from_sec(10) ? 10000
                                : 100000;

    if (t < 1000)
        t = 1000;
    return (t + grain - 1) / grain * grain;
}

static void park_request(apx_conn *ac)
{
    apx_req *rq = ac->rq;
    apr_interval_time_t timeout = 0;

    if (rq->wait_deadline)
        timeout = park_timeout(rq->wait_deadline - apr_time_now());
    if (rq->wait_two) {
        park2(ac, rq->wait_fd, rq->wait_events, rq->wait_fd1,
              rq->wait_events1, timeout);
        return;
    }
    /* A wakeable wait has no fd of its own: only the client's hangup
     * (fd[1]) is watched. */
    park(ac, PH_REQUEST, rq->wait_fd, rq->wait_events,
         rq->wait_fd != ac->fd && !rq->detached ? ac->fd : -1, timeout, 0);
}

/* ------------------------------------------------------------------ */
/* finishing a request                                                  */

/* r->pool cleanup: last-chance release of the coroutine (and, through its
 * defers, the backend connection) when the request pool goes without the
 * normal path having run — e.g. the MPM closed an aborted connection. */
static apr_status_t req_cleanup(void *data)
{
    apx_req *rq = data;
    apx_child *ch = apx_ch;

    if (rq->coro) {
        apx_coro_destroy(rq->coro);
        rq->coro = NULL;
    }
    if (ch) {
        if (rq->counted)
            apr_atomic_dec32(&ch->n.parked_reqs);
        apr_atomic_dec32(&ch->n.in_flight);
    }
    rq->counted = 0;
    return APR_SUCCESS;
}

static void count_outcome(apx_req *rq)
{
    apx_counters *n = &apx_ch->n;

    switch (rq->outcome) {
    case APX_OUT_DONE:
    case APX_OUT_TUNNEL:
        apr_atomic_inc32(&n->done_total);
        break;
    case APX_OUT_ERROR:
        /* Client-side errors (400, 408, 413, httpd's own answers) are the
         * client's figures, not the backends'. */
        if (rq->status == HTTP_GATEWAY_TIME_OUT)
            apr_atomic_inc32(&n->gateway_timeout);
        else if (rq->status == HTTP_SERVICE_UNAVAILABLE)
            apr_atomic_inc32(&n->unavailable);
        else if (rq->status == HTTP_BAD_GATEWAY)
            apr_atomic_inc32(&n->bad_gateway);
        else
            apr_atomic_inc32(&n->client_errors);
        break;
    default:
        apr_atomic_inc32(&n->aborted);
        break;
    }
}

static void close_if_body_left(apx_req *rq);

/* Ends the coroutine and turns the outcome into what httpd needs: the
 * handler's return value (OK, or an error status for ap_die()). */
static int end_request(apx_req *rq)
{
    request_rec *r = rq->r;

    apr_pool_cleanup_run(r->pool, rq, req_cleanup);
    count_outcome(rq);
    close_if_body_left(rq);
    if (rq->note)
        apr_table_setn(r->notes, "asyncproxy", rq->note);
    switch (rq->outcome) {
    case APX_OUT_DONE:
        return OK;
    case APX_OUT_ERROR:
        if (rq->status == HTTP_SERVICE_UNAVAILABLE)
            apr_table_setn(r->err_headers_out, "Retry-After",
                           apr_itoa(r->pool, (int)apx_gconf.retry_after));
        return rq->status;
    default:
        /* Never let the filters finish a response that was cut short: an
         * aborted connection makes the core output filter drop the rest
         * (no last-chunk, no Content-Length completed). */
        r->connection->aborted = 1;
        r->connection->keepalive = AP_CONN_CLOSE;
        return OK;
    }
}

/* On a module worker: the coroutine of an adopted connection's request
 * finished; complete the request as ap_process_async_request() would. */
static void finish_adopted_request(apx_conn *ac)
{
    apx_req *rq = ac->rq;
    request_rec *r = rq->r;
    int rc;

    ac->rq = NULL;
    rc = end_request(rq);
    if (rc == OK) {
        if (!ac->c->aborted)
            ap_finalize_request_protocol(r);
    }
    else {
        ap_die(rc, r);
    }
    /* Logs the request and destroys r->pool through the EOR bucket; sets
     * c->cs->state. Nothing of r or rq may be touched afterwards. */
    ap_process_request_after_handler(r);
    drive(ac, AT_AFTER);
}

static void resume_request(apx_conn *ac)
{
    apx_req *rq = ac->rq;

    if (!apx_coro_is_finished(rq->coro))
        apx_coro_resume(rq->coro);
    if (!apx_coro_is_finished(rq->coro)) {
        park_request(ac);
        return;
    }
    finish_adopted_request(ac);
}

/* ------------------------------------------------------------------ */
/* the adoption loop                                                    */

static apr_status_t flush_nonblocking(conn_rec *c)
{
    ap_filter_t *f = c->output_filters;

    while (f->next)
        f = f->next;
    /* The core output filter takes NULL as "write what is pending without
     * blocking", as the event MPM calls it in write completion. */
    return f->frec->filter_func.out_func(f, NULL);
}

static void destroy_conn(apx_conn *ac)
{
    conn_rec *c = ac->c;

    if (ac->adopted)
        adopted_unlink(ac);
    /* The MPM's cleanup on c->pool decrements the counter that matches
     * c->cs->state; SUSPENDED is the one it incremented for us. */
    c->cs->state = CONN_STATE_SUSPENDED;
    apr_pool_destroy(c->pool);  /* closes the socket too */
}

static void close_conn(apx_conn *ac)
{
    conn_rec *c = ac->c;

    if (ap_start_lingering_close(c)) {
        destroy_conn(ac);
        return;
    }
    c->cs->state = CONN_STATE_SUSPENDED;
    ac->deadline = apr_time_now() + LINGER_TIME;
    park(ac, PH_LINGER, ac->fd, APX_EV_IN, -1, LINGER_TIME, 0);
}

static void linger_event(apx_conn *ac, unsigned why)
{
    char buf[512];
    apr_size_t len;
    apr_status_t rv;
    apr_time_t now;

    if (!(why & APX_EV_IN)) {
        destroy_conn(ac);
        return;
    }
    apr_socket_timeout_set(ac->csd, 0);
    do {
        len = sizeof(buf);
        rv = apr_socket_recv(ac->csd, buf, &len);
    } while (rv == APR_SUCCESS && len > 0);
    now = apr_time_now();
    if (APR_STATUS_IS_EAGAIN(rv) && now < ac->deadline) {
        park(ac, PH_LINGER, ac->fd, APX_EV_IN, -1, ac->deadline - now, 0);
        return;
    }
    destroy_conn(ac);
}

static void idle_inc(void);

static void park_keepalive(apx_conn *ac)
{
    conn_rec *c = ac->c;

    c->cs->state = CONN_STATE_SUSPENDED;
    idle_inc();
    park(ac, PH_KEEPALIVE, ac->fd, APX_EV_IN, -1,
         c->base_server->keep_alive_timeout, APX_PARK_IDLE);
}

/* Answers a head we will not let httpd read (it would block on it) and
 * closes: written through the connection's filters (TLS too), flushed
 * without blocking by the write-completion step. */
static void write_refusal(apx_conn *ac, int status)
{
    conn_rec *c = ac->c;
    apr_bucket_brigade *bb = apr_brigade_create(c->pool, c->bucket_alloc);
    const char *msg = apr_psprintf(c->pool, "HTTP/1.1 %s\r\nContent-Length: "
                                   "0\r\nConnection: close\r\n\r\n",
                                   ap_get_status_line(status));

    ap_log_cerror(APLOG_MARK, APLOG_INFO, 0, c, APXLOGNO(00018)
                  "request head %s after %" APR_SIZE_T_FMT " bytes: %d, "
                  "connection closed", status == HTTP_REQUEST_TIME_OUT
                  ? "not complete in time" : "too large",
                  apx_head_bytes(ac->head), status);
    if (status == HTTP_REQUEST_TIME_OUT)
        apr_atomic_inc32(&apx_ch->n.head_timeouts);
    else
        apr_atomic_inc32(&apx_ch->n.head_refused);
    c->keepalive = AP_CONN_CLOSE;
    APR_BRIGADE_INSERT_TAIL(bb, apr_bucket_immortal_create(msg, strlen(msg),
                                                           c->bucket_alloc));
    if (ap_pass_brigade(c->output_filters, bb) != APR_SUCCESS)
        c->aborted = 1;
    apr_table_setn(c->notes, "short-lingering-close", "1");
}

static int refuse_head(apx_conn *ac, int status)
{
    write_refusal(ac, status);
    return AT_WC;
}

/* The wait for a request head: AT_PROCESS once httpd may read it (whole,
 * or broken in a way httpd answers at once), AT_WC to answer and close, or
 * -1 when the connection was parked or closed. `why` is what ended the
 * last park (0 when none: a pipelined head, a first look). */
static int await_head(apx_conn *ac, unsigned why)
{
    conn_rec *c = ac->c;
    apx_head *h = apx_head_get(c, &ac->head);
    apr_time_t now = apr_time_now(), deadline;
    int rc;

    if (!apx_head_is_waiting(h))
        apx_head_begin(h, now);
    if (why & (APX_EV_SHED | APX_EV_SHUTDOWN)) {
        /* the child is at its connection limit, or stopping */
        if (why & APX_EV_SHED)
            apr_atomic_inc32(&apx_ch->n.shed_total);
        apr_table_setn(c->notes, "short-lingering-close", "1");
        close_conn(ac);
        return -1;
    }
    rc = apx_head_read(h);
    if (rc == APX_HEAD_COMPLETE)
        return AT_PROCESS;
    if (rc == APX_HEAD_CLOSED) {
        apr_table_setn(c->notes, "short-lingering-close", "1");
        close_conn(ac);
        return -1;
    }
    if (rc != APX_HEAD_MORE) {
        /* Over a limit: answered here. httpd would answer it too, but it
         * reads an over-long line to its end first (AP_GETLINE_NOSPC_EOL),
         * with blocking reads, however slowly it comes. */
        return refuse_head(ac, rc);
    }
    deadline = apx_head_deadline(h);
    if (now >= deadline || apr_atomic_read32(&apx_ch->stopping)) {
        if (!apx_head_bytes(h)) {
            close_conn(ac);
            return -1;
        }
        return refuse_head(ac, HTTP_REQUEST_TIME_OUT);
    }
    apr_atomic_inc32(&apx_ch->n.head_waits);
    idle_inc();
    c->cs->state = CONN_STATE_SUSPENDED;
    park(ac, PH_HEAD, ac->fd, APX_EV_IN, -1, park_timeout(deadline - now),
         APX_PARK_IDLE);
    return -1;
}

static void keepalive_event(apx_conn *ac, unsigned why)
{
    conn_rec *c = ac->c;
    int step;

    apr_atomic_dec32(&apx_ch->n.idle_now);
    if (ac->phase == PH_KEEPALIVE
        && (!(why & APX_EV_IN) || (why & (APX_EV_SHUTDOWN | APX_EV_TIMEOUT
                                          | APX_EV_SHED))
            || apr_atomic_read32(&apx_ch->stopping))) {
        if (why & APX_EV_SHED)
            apr_atomic_inc32(&apx_ch->n.shed_total);
        apr_atomic_inc32(&apx_ch->n.keepalive_closed);
        apr_table_setn(c->notes, "short-lingering-close", "1");
        close_conn(ac);
        return;
    }
    step = await_head(ac, why & (APX_EV_SHED | APX_EV_SHUTDOWN));
    if (step >= 0)
        drive(ac, step);
}

/* An unread request body is left in the connection: httpd would read it to
 * its end (ap_finalize_request_protocol()), with blocking reads, to keep the
 * connection; closing it instead never waits for the client. */
static void close_if_body_left(apx_req *rq)
{
    if (rq->c->keepalive != AP_CONN_CLOSE && apx_request_body_left(rq))
        rq->c->keepalive = AP_CONN_CLOSE;
}

static void lane_submit(apx_conn *ac);

static void drive(apx_conn *ac, int step)
{
    conn_rec *c = ac->c;

    for (;;) {
        switch (step) {
        case AT_HEAD:
            step = await_head(ac, 0);
            if (step < 0)
                return;
            continue;
        case AT_PROCESS:
            c->cs->state = APX_CS_PROCESSING;
            c->cs->sense = CONN_SENSE_DEFAULT;
            ap_run_process_connection(c);
            /* fall through */
        case AT_AFTER:
            if (c->cs->state == CONN_STATE_SUSPENDED) {
                if (ac->want_park) {
                    /* Our handler suspended again, on this module thread:
                     * no MPM and no hook involved, we park it ourselves. */
                    ac->want_park = 0;
                    park_request(ac);
                    return;
                }
                if (ac->want_lane) {
                    /* another handler's request: to the lane */
                    ac->want_lane = 0;
                    lane_submit(ac);
                    return;
                }
                /* Another module's handler suspended an adopted
                 * connection; 2.4 has no way to hand it back. */
                ap_log_cerror(APLOG_MARK, APLOG_ERR, 0, c, APXLOGNO(00010)
                              "a handler other than asyncproxy returned "
                              "SUSPENDED on a connection this module "
                              "adopted; closing it");
                c->aborted = 1;
                close_conn(ac);
                return;
            }
            if (c->cs->state == APX_CS_KEEPALIVE)
                c->cs->state = CONN_STATE_WRITE_COMPLETION;
            if (c->cs->state != CONN_STATE_WRITE_COMPLETION || c->aborted) {
                close_conn(ac);
                return;
            }
            /* fall through */
        case AT_WC:
            if (flush_nonblocking(c) != APR_SUCCESS) {
                c->aborted = 1;
                close_conn(ac);
                return;
            }
            if (c->data_in_output_filters) {
                c->cs->state = CONN_STATE_SUSPENDED;
                park(ac, PH_WRITE, ac->fd, APX_EV_OUT, -1,
                     c->base_server->timeout, 0);
                return;
            }
            if (c->keepalive != AP_CONN_KEEPALIVE || c->aborted
                || apr_atomic_read32(&apx_ch->stopping)) {
                close_conn(ac);
                return;
            }
            if (c->data_in_input_filters) {
                step = AT_HEAD;     /* a pipelined request */
                continue;
            }
            park_keepalive(ac);
            return;
        }
    }
}

/* ------------------------------------------------------------------ */
/* the lane: other handlers' requests                                   */

/* Completes the request as ap_process_async_request() would have after
 * ap_invoke_handler() returned `rc`. */
static void complete_request(request_rec *r, int rc)
{
    if (rc == DECLINED) {
        ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r, APXLOGNO(00019)
                      "handler \"%s\" not found for: %s", r->handler,
                      r->filename ? r->filename : r->uri);
        rc = HTTP_INTERNAL_SERVER_ERROR;
    }
    if (rc == DONE)
        rc = OK;
    if (rc == OK)
        ap_finalize_request_protocol(r);
    else {
        r->status = HTTP_OK;
        ap_die(rc, r);
    }
    /* Logs the request and destroys r->pool (EOR bucket). */
    ap_process_request_after_handler(r);
}

/* On a lane thread: runs the handler the request was headed for, then
 * hands the connection back to the engine. */
static void lane_run(apx_lane_job *j, apr_thread_t *thd)
{
    apx_conn *ac = APX_CONTAINER_OF(j, apx_conn, lane);
    conn_rec *c = ac->c;
    request_rec *r = ac->lane_r;
    const char *saved = r->handler;
    int rc;

    c->current_thread = thd;
    ac->lane_r = NULL;
    r->handler = ac->lane_handler;
    rc = ap_run_handler(r);
    r->handler = saved;
    if (rc == SUSPENDED) {
        /* no way to take such a request back on a connection we own */
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, APXLOGNO(00020)
                      "handler \"%s\" suspended a request on a connection "
                      "this module adopted: not supported, closing it",
                      ac->lane_handler);
        c->aborted = 1;
        rc = DONE;
    }
    complete_request(r, rc);
    apx_park_init(&ac->park, conn_dispatch, ac);
    ac->phase = PH_AFTER;
    if (!apx_ch || !apx_ch->engine
        || apx_run_submit(apx_ch->engine, &ac->park) != APR_SUCCESS)
        dispatch_engine_gone(&ac->park);
}

static void lane_submit(apx_conn *ac)
{
    request_rec *r = ac->lane_r;

    ac->lane.run = lane_run;
    if (apx_lane_submit(&ac->lane))
        return;
    /* full: 503 on this worker, and no body read for it */
    ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r, APXLOGNO(00021)
                  "the lane (AsyncProxyLaneThreads, AsyncProxyLaneQueue) is "
                  "full: 503 for %s", r->uri);
    ac->lane_r = NULL;
    r->connection->keepalive = AP_CONN_CLOSE;
    apr_table_setn(r->err_headers_out, "Retry-After",
                   apr_itoa(r->pool, (int)apx_gconf.retry_after));
    complete_request(r, HTTP_SERVICE_UNAVAILABLE);
    drive(ac, AT_AFTER);
}

/* Runs on a module worker when the poller hands a parked connection back
 * (or the engine is shutting down). */
static void conn_dispatch(apx_park *p, apr_thread_t *thd)
{
    apx_conn *ac = p->baton;
    conn_rec *c = ac->c;
    unsigned why;

    if (ac->gate_pending && !gate_pass(ac, p))
        return;
    why = p->why;
    if (thd)
        c->current_thread = thd;

    switch (ac->phase) {
    case PH_REQUEST: {
        apx_req *rq = ac->rq;
        unsigned got = p->got[0] & (APX_EV_IN | APX_EV_OUT | APX_EV_HUP
                                    | APX_EV_ERR);

        if (rq->wait_two)
            rq->wait_got1 = p->got[1];
        else if (p->got[1] & (APX_EV_HUP | APX_EV_ERR))
            got |= APX_EV_CLIENT_GONE;
        if (why & APX_EV_TIMEOUT)
            got |= APX_EV_TIMEOUT;
        if (why & APX_EV_SHUTDOWN)
            got |= APX_EV_SHUTDOWN;
        if (why & APX_EV_WAKE)
            got |= APX_EV_WAKE;
        rq->wait_got = got;
        resume_request(ac);
        break;
    }
    case PH_WRITE:
        if (why & (APX_EV_OUT | APX_EV_HUP | APX_EV_ERR)) {
            /* a hangup lets the write fail and close quickly */
            drive(ac, AT_WC);
        }
        else {
            c->aborted = 1;
            close_conn(ac);
        }
        break;
    case PH_KEEPALIVE:
    case PH_HEAD:
        keepalive_event(ac, why);
        break;
    case PH_LINGER:
        linger_event(ac, why);
        break;
    case PH_AFTER:
        drive(ac, AT_AFTER);
        break;
    default:
        ap_log_cerror(APLOG_MARK, APLOG_CRIT, 0, c, APXLOGNO(00011)
                      "parked connection dispatched in phase %d", ac->phase);
        break;
    }
}

/* ------------------------------------------------------------------ */
/* hooks                                                                */

/* Whether this request may be parked (DESIGN.md §3, step 1); otherwise
 * the sync driver runs it on this thread. */
static int can_park(request_rec *r)
{
    conn_rec *c = r->connection;

    return apx_ch && apx_ch->engine && c->cs && !c->master
           && !c->clogging_input_filters && !r->main && !r->prev
           && !apr_atomic_read32(&apx_ch->stopping);
}

static int asyncproxy_handler(request_rec *r)
{
    conn_rec *c = r->connection;
    apx_child *ch = apx_ch;
    const apx_mapping *map;
    const apx_srv_conf *sc;
    apx_req *rq;
    apx_conn *ac = NULL;
    apr_status_t rv;

    if (!r->handler || strcmp(r->handler, "asyncproxy"))
        return DECLINED;
    map = apx_map_match(r);
    if (!map)
        return DECLINED;
    if (!ch) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, APXLOGNO(00012)
                      "asyncproxy is not initialised in this child");
        return HTTP_INTERNAL_SERVER_ERROR;
    }
    sc = ap_get_module_config(r->server->module_config, &asyncproxy_module);

    rq = apr_pcalloc(r->pool, sizeof(*rq));
    rq->r = r;
    rq->c = c;
    rq->map = map;
    rq->sconf = sc;
    rq->start = apr_time_now();
    rq->client_fd = -1;
    rq->async = can_park(r);
    if (!c->master) {
        apr_socket_t *csd = ap_get_conn_socket(c);
        apr_os_sock_t fd;

        if (csd && apr_os_sock_get(&fd, csd) == APR_SUCCESS)
            rq->client_fd = fd;
    }
    if (rq->async
        && apr_atomic_read32(&ch->n.parked_reqs) >= apx_gconf.max_parked) {
        apr_atomic_inc32(&ch->n.unavailable);
        ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r, APXLOGNO(00013)
                      "AsyncProxyMaxParked (%u) reached in this child: "
                      "503 for %s", apx_gconf.max_parked, r->uri);
        apr_table_setn(r->err_headers_out, "Retry-After",
                       apr_itoa(r->pool, (int)apx_gconf.retry_after));
        return HTTP_SERVICE_UNAVAILABLE;
    }
    rv = apx_coro_create(&rq->coro, ch->stacks, apx_request_run, rq);
    if (rv != APR_SUCCESS) {
        apr_atomic_inc32(&ch->n.unavailable);
        ap_log_rerror(APLOG_MARK, APLOG_ERR, rv, r, APXLOGNO(00014)
                      "cannot create a coroutine (out of memory?)");
        apr_table_setn(r->err_headers_out, "Retry-After",
                       apr_itoa(r->pool, (int)apx_gconf.retry_after));
        return HTTP_SERVICE_UNAVAILABLE;
    }
    apr_atomic_inc32(&ch->n.requests_total);
    apr_atomic_inc32(&ch->n.in_flight);
    apr_pool_cleanup_register(r->pool, rq, req_cleanup,
                              apr_pool_cleanup_null);
    if (!rq->async)
        apr_atomic_inc32(&ch->n.sync_total);
    else {
        apr_interval_time_t delay = map->park_delay >= 0 ? map->park_delay
                                    : sc->park_delay >= 0 ? sc->park_delay
                                    : APX_DEFAULT_PARK_DELAY;

        rq->park_after = rq->start + delay;
        ac = conn_get(c);
    }

    apx_coro_resume(rq->coro);
    if (apx_coro_is_finished(rq->coro)) {
        /* Finished on an MPM thread (a cache hit, a fast backend): the
         * connection is handed over all the same, so its keep-alive is
         * ours. Left with the MPM, it would be closed under load ("All
         * workers are busy or dying, will shutdown N keep-alive
         * connections") and its next request would start over on a new
         * connection and MPM thread. */
        if (!rq->async || apx_engine_current_thread())
            return end_request(rq);
        rq->finished_sync = 1;
        ac->rq = rq;
        ac->want_park = 1;
        apr_atomic_inc32(&ch->n.handed_over);
        return SUSPENDED;
    }

    /* The coroutine waits for I/O: park it. On an MPM thread the suspend
     * hook arms the poller once httpd is done with the connection; on a
     * module worker (adopted connection) drive() parks it directly. */
    rq->counted = 1;
    apr_atomic_inc32(&ch->n.parked_reqs);
    apr_atomic_inc32(&ch->n.parked_total);
    ac->rq = rq;
    ac->want_park = 1;
    return SUSPENDED;
}

static void asyncproxy_suspend_connection(conn_rec *c, request_rec *r)
{
    apx_conn *ac = ap_get_module_config(c->conn_config, &asyncproxy_module);
    volatile apr_uint32_t *seq;

    /* The MPM calls this for every suspension it makes (keep-alive, write
     * completion, ...): a new unit of work on this thread for the gate. */
    bump_seq();
    if (!ac || !(ac->want_park || ac->want_head)
        || apx_engine_current_thread())
        return;
    if (!c->cs || c->cs->state != CONN_STATE_SUSPENDED) {
        ac->want_park = ac->want_head = 0;
        /* The MPM kept the connection (e.g. aborted): it will close it,
         * and r->pool's cleanup releases the coroutine. */
        return;
    }
    ac->hook_time = apr_time_now();
    ac->gate_pending = 1;
    ac->gate_since = 0;
    ac->mpm_ws = c->sbh ? ap_get_scoreboard_worker(c->sbh) : NULL;
    if (ac->mpm_ws) {
        ac->mpm_status = ac->mpm_ws->status;
        ac->mpm_last_used = ac->mpm_ws->last_used;
    }
    seq = thread_seq();
    ac->mpm_seq = seq;
    ac->mpm_seq_val = seq ? *seq : 0;
    /* notify_suspend() sets c->sbh = NULL right after this hook; doing it
     * first means a module worker never sees the MPM thread's handle. */
    c->sbh = NULL;
    adopted_link(ac);
    if (ac->want_head) {
        /* a head that was not whole: awaited in the poller from now on */
        apx_head *h = ac->head;
        apr_time_t now = apr_time_now(), deadline = apx_head_deadline(h);

        ac->want_head = 0;
        apr_atomic_inc32(&apx_ch->n.heads_adopted);
        idle_inc();
        park(ac, PH_HEAD, ac->fd, APX_EV_IN, -1,
             park_timeout(deadline > now ? deadline - now : 1), APX_PARK_IDLE);
        return;
    }
    ac->want_park = 0;
    if (ac->rq && ac->rq->finished_sync) {
        /* nothing to wait for: straight to a module worker, which ends
         * the request and runs the connection on */
        apx_park_init(&ac->park, conn_dispatch, ac);
        ac->phase = PH_REQUEST;
        if (!apx_ch || !apx_ch->engine
            || apx_run_submit(apx_ch->engine, &ac->park) != APR_SUCCESS)
            dispatch_engine_gone(&ac->park);
        return;
    }
    park_request(ac);
}

/* Runs first of all handlers. On a module worker, a request of a
 * connection the module adopted that another handler is to serve goes to
 * the lane: SUSPENDED here, and drive() hands it over once httpd has let go
 * of it. Insert-filter hooks have run (ap_invoke_handler()); the lane runs
 * the handler hook itself. */
static int asyncproxy_lane_handler(request_rec *r)
{
    apx_conn *ac;

    if (!apx_engine_current_thread() || r->main || r->prev)
        return DECLINED;    /* an MPM or lane thread; a subrequest or an
                             * internal redirect runs where its parent does */
    ac = ap_get_module_config(r->connection->conn_config,
                              &asyncproxy_module);
    if (!ac || !ac->adopted)
        return DECLINED;
    if (r->handler && (!strcmp(r->handler, "asyncproxy-status")
                       || (!strcmp(r->handler, "asyncproxy")
                           && apx_map_match(r))))
        return DECLINED;    /* ours: it parks, or writes a few figures */
    ac->lane_r = r;
    ac->lane_handler = r->handler;
    ac->want_lane = 1;
    return SUSPENDED;
}

/* On a connection the module owns, an HTTP/1.1 request may ask to
 * upgrade to h2c where a server allows it; httpd's core would switch in a
 * handler that runs before any other (and at map_to_storage for OPTIONS *),
 * and mod_http2 would then run the whole h2 session on this module worker.
 * The request is served as HTTP/1.1 instead (a server may ignore an
 * Upgrade, RFC 9110 7.8). */
static int asyncproxy_post_read_request(request_rec *r)
{
    const char *up;
    apx_conn *ac;

    if (!apx_gconf.h2_allowed || !apx_engine_current_thread())
        return DECLINED;
    ac = ap_get_module_config(r->connection->conn_config, &asyncproxy_module);
    up = apr_table_get(r->headers_in, "Upgrade");
    if (ac && ac->adopted && up && ap_find_token(r->pool, up, "h2c")) {
        apr_table_unset(r->headers_in, "Upgrade");
        apr_table_unset(r->headers_in, "HTTP2-Settings");
    }
    return DECLINED;
}

/* MPM threads: a connection whose request head is not whole is not read
 * here (httpd would block this thread on it until the head or a timeout
 * came): the module takes the connection over and awaits the head parked,
 * under the header deadline (AsyncProxyAdoptSlowHeads). A whole head is
 * left to httpd, read from the module's buffer. */
static int asyncproxy_process_connection(conn_rec *c)
{
    const apx_srv_conf *sc;
    const char *proto;
    apx_conn *ac;
    apx_head *h;
    int rc;

    if (!apx_ch || !apx_ch->engine || !c->cs || c->master
        || c->clogging_input_filters || apx_engine_current_thread()
        || apx_lane_is_current() || apr_atomic_read32(&apx_ch->stopping))
        return DECLINED;
    sc = ap_get_module_config(c->base_server->module_config,
                              &asyncproxy_module);
    if (sc->adopt_heads == 0)
        return DECLINED;
    /* Where any server speaks HTTP/2 the connections stay with the MPM:
     * mod_http2 takes them in a later process_connection hook (once TLS
     * chose h2 — for the virtual host SNI names, which is not known yet —
     * or on the h2c preface) and would run the whole h2 session on
     * whichever thread calls it: a module worker, for a connection adopted
     * here. */
    if (apx_gconf.h2_allowed)
        return DECLINED;
    /* Only HTTP listeners: a protocol module (Listen 21 ftp, ProtocolEcho)
     * may wait for its server to speak first. */
    proto = ap_get_server_protocol(c->base_server);
    if (proto && strcasecmp(proto, "http") && strcasecmp(proto, "https"))
        return DECLINED;
    ac = conn_get(c);
    if (ac->adopted || ac->fd < 0)
        return DECLINED;
    h = apx_head_get(c, &ac->head);
    if (!apx_head_is_waiting(h))
        apx_head_begin(h, apr_time_now());
    rc = apx_head_read(h);
    if (rc == APX_HEAD_COMPLETE || rc == APX_HEAD_CLOSED)
        return DECLINED;    /* httpd's: it reads the head from our buffer */
    if (rc != APX_HEAD_MORE) {
        /* over a limit: httpd would read the rest of the line, blocking
         * (see await_head()); the MPM flushes this small answer in its
         * lingering close */
        write_refusal(ac, rc);
        c->cs->state = CONN_STATE_LINGER;
        return DONE;
    }
    ac->want_head = 1;
    c->cs->state = CONN_STATE_SUSPENDED;
    return DONE;
}

/* ------------------------------------------------------------------ */
/* shedding idle connections under pressure                             */

/* Like the event MPM for its own keep-alive connections: when the child
 * stops accepting (at its connection limit: parked and adopted connections
 * count) or runs short of file descriptors, the idle adopted connections
 * that waited longest are closed, so new clients get in. Checked every
 * SHED_TICK on a worker: a few loads and one dup(). */
static apx_park shed_tick;
static int my_slot = -1;
static rlim_t fd_soft_limit;
static apr_uint32_t conn_cap;   /* the MPM's limit with every thread idle */
static unsigned not_accepting_ticks;    /* the tick's own (one at a time) */

static volatile apr_uint32_t shed_tick_on;     /* the record is ours */

static void shed_tick_fire(apx_park *p, apr_thread_t *thd);

static void shed_tick_arm(void)
{
    apx_park_init(&shed_tick, shed_tick_fire, NULL);
    shed_tick.timeout = SHED_TICK;
    if (!apx_ch || !apx_ch->engine
        || apx_park_submit(apx_ch->engine, &shed_tick) != APR_SUCCESS)
        apr_atomic_set32(&shed_tick_on, 0);
}

/* The timer runs while some adopted connection is idle (and so nothing is
 * left parked when none is). */
static void shed_tick_start(void)
{
    if (apr_atomic_cas32(&shed_tick_on, 1, 0) == 0)
        shed_tick_arm();
}

/* An adopted connection parks idle: between requests or awaiting a head. */
static void idle_inc(void)
{
    if (apr_atomic_inc32(&apx_ch->n.idle_now) == 0)
        shed_tick_start();
}

/* The lowest free descriptor: near the limit, accept() is about to fail
 * (descriptors are handed out lowest first). */
static int fds_short(void)
{
    int fd;

    if (!fd_soft_limit || fd_soft_limit == RLIM_INFINITY)
        return 0;
    fd = fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, 0);
    if (fd < 0)
        return errno == EMFILE;
    close(fd);
    return (rlim_t)fd >= fd_soft_limit - fd_soft_limit / 16;
}

static void shed_tick_fire(apx_park *p, apr_thread_t *thd)
{
    apx_child *ch = apx_ch;
    unsigned idle, shed = 0;

    if (!ch || !ch->engine || (p->why & APX_EV_SHUTDOWN)
        || apr_atomic_read32(&ch->stopping)) {
        apr_atomic_set32(&shed_tick_on, 0);
        return;
    }
    idle = apr_atomic_read32(&ch->n.idle_now);
    if (!idle) {
        /* nothing to shed: stop, unless a connection went idle meanwhile
         * (its idle_inc() saw the timer still on) */
        apr_atomic_set32(&shed_tick_on, 0);
        if (apr_atomic_read32(&ch->n.idle_now))
            shed_tick_start();
        return;
    }
    {
        process_score *ps = my_slot >= 0 ? ap_get_scoreboard_process(my_slot)
                                         : NULL;
        apr_uint32_t conns = apr_atomic_read32(&ch->n.adopted_now);

        if (ps && ps->connections > conns)
            conns = ps->connections;
        /* the listener is off (for two looks in a row: all MPM threads
         * busy for a moment turns it off too): get under its limit again */
        not_accepting_ticks = ps && ps->not_accepting
                              ? not_accepting_ticks + 1 : 0;
        if (not_accepting_ticks >= 2)
            shed = 16 + idle / 8;
        else if (conn_cap && conns + conn_cap / 16 >= conn_cap)
            /* about to be: make room before it stops */
            shed = conns + conn_cap / 16 - conn_cap + 1;
        if (fds_short())
            shed += 16 + idle / 4;
        if (shed > idle)
            shed = idle;
        if (shed)
            apx_engine_shed_idle(ch->engine, shed);
    }
    shed_tick_arm();
}

/* child_init, after the engine started. */
void apx_conn_engine_started(server_rec *s, double factor, unsigned threads)
{
    struct rlimit rl;
    int i, limit = 0;

    ap_mpm_query(AP_MPMQ_HARD_LIMIT_DAEMONS, &limit);
    for (i = 0; i < limit; i++) {
        process_score *ps = ap_get_scoreboard_process(i);

        if (ps && ps->pid == getpid()) {
            my_slot = i;
            break;
        }
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
        fd_soft_limit = rl.rlim_cur;
    conn_cap = threads ? (apr_uint32_t)(threads + (threads - 1) * factor) : 0;
}

static int asyncproxy_pre_connection(conn_rec *c, void *csd)
{
    bump_seq();
    return OK;
}

static void asyncproxy_resume_connection(conn_rec *c, request_rec *r)
{
    bump_seq();
}

/* A keep-alive request the MPM runs has no connection hook: without this,
 * a gate whose MPM thread went on to such a request (same scoreboard
 * status) waits until that request ends. (The gate waits measured in a
 * burst of first requests were another case, parks on the backend connect:
 * see apx_wait_connect().) */
static int asyncproxy_create_request(request_rec *r)
{
    bump_seq();
    return OK;
}

static void conn_child_init(apr_pool_t *pchild, server_rec *s)
{
    apr_thread_mutex_create(&adopted_mtx, APR_THREAD_MUTEX_DEFAULT, pchild);
    adopted_head = NULL;
}

void apx_conn_register_hooks(apr_pool_t *p)
{
    static const char *const process_connection_succ[] = { "mod_ssl.c",
                                                           NULL };

    ap_hook_child_init(conn_child_init, NULL, NULL, APR_HOOK_FIRST);
    ap_hook_handler(asyncproxy_handler, NULL, NULL, APR_HOOK_FIRST);
    ap_hook_handler(asyncproxy_lane_handler, NULL, NULL,
                    APR_HOOK_REALLY_FIRST);
    ap_hook_post_read_request(asyncproxy_post_read_request, NULL, NULL,
                              APR_HOOK_REALLY_FIRST);
    /* After mod_reqtimeout's (FIRST) has put its filters on, and before
     * mod_ssl's: that one runs the TLS handshake with a blocking read, and
     * a client that stalls in it would hold the MPM thread; ours reads
     * without blocking (the handshake then progresses in the poller). */
    ap_hook_process_connection(asyncproxy_process_connection, NULL,
                               process_connection_succ, APR_HOOK_MIDDLE);
    ap_hook_suspend_connection(asyncproxy_suspend_connection, NULL, NULL,
                               APR_HOOK_MIDDLE);
    ap_hook_resume_connection(asyncproxy_resume_connection, NULL, NULL,
                              APR_HOOK_MIDDLE);
    ap_hook_pre_connection(asyncproxy_pre_connection, NULL, NULL,
                           APR_HOOK_REALLY_FIRST);
    ap_hook_create_request(asyncproxy_create_request, NULL, NULL,
                           APR_HOOK_REALLY_FIRST);
}
