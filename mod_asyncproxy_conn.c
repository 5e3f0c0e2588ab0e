/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* mod_asyncproxy_conn.c — the handler entry, the two drivers of a request's
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
 *   conn_dispatch() and below       module worker threads
 * Invariants:
 *   - One thread touches a connection at a time: the park record, the
 *     request, its coroutine and both sockets change owner as one unit.
 *   - A connection handed over by the MPM is not touched by a module worker
 *     before the hand-over gate says the MPM thread has left it.
 *   - No pointer to r or rq survives ap_process_request_after_handler().
 */
#include <poll.h>
#include <sys/socket.h>
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

#include "mod_asyncproxy.h"

APLOG_USE_MODULE(asyncproxy);
extern module AP_MODULE_DECLARE_DATA asyncproxy_module;

/* What a parked connection waits for. */
enum {
    PH_NONE = 0,
    PH_REQUEST,     /* a request's coroutine waits for I/O */
    PH_WRITE,       /* write completion: output pending, wait writable */
    PH_KEEPALIVE,   /* idle between requests */
    PH_HEAD,        /* part of the next request head arrived */
    PH_LINGER       /* lingering close: drain until EOF or 2 s */
};

/* Steps of the adoption loop (the part of the event MPM's
 * process_socket() the module redoes). */
enum { STEP_PROCESS, STEP_AFTER, STEP_WC };

/* Bound on the hand-over gate: if the MPM thread's slot never visibly
 * changes (thread preempted, or busy again with the same status and no hook
 * ran), pass after this long. Generous on purpose: a latency spike is
 * better than touching a connection the MPM may still write. */
#define GATE_BOUND      apr_time_from_sec(1)
#define GATE_SLEEP_US   50
/* Lingering close reads at most this long (the MPM uses 2 s too). */
#define LINGER_TIME     apr_time_from_sec(2)
/* How much of an adopted connection's input we peek at to see a whole
 * request head; a head larger than this is handed to httpd as it is. */
#define HEAD_PEEK_BYTES (64 * 1024)

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
    apr_time_t deadline;        /* PH_HEAD / PH_LINGER absolute deadline */
    apr_bucket_brigade *peek_bb;
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

static void gate_wait(apx_conn *ac)
{
    apx_child *ch = apx_ch;
    volatile worker_score *ws = ac->mpm_ws;
    apr_time_t start = 0, now;
    apr_uint32_t waited, max;

    ac->gate_pending = 0;
    for (;;) {
        __sync_synchronize();
        if (ws && (ws->status != ac->mpm_status
                   || ws->last_used != ac->mpm_last_used))
            break;
        if (ac->mpm_seq && *ac->mpm_seq != ac->mpm_seq_val)
            break;
        now = apr_time_now();
        if (!start)
            start = now;
        if (now - ac->hook_time > GATE_BOUND) {
            apr_atomic_inc32(&ch->n.gate_bound_hits);
            break;
        }
        usleep(GATE_SLEEP_US);
    }
    __sync_synchronize();
    if (start) {
        waited = (apr_uint32_t)(apr_time_now() - start);
        apr_atomic_inc32(&ch->n.gate_waits);
        do {
            max = apr_atomic_read32(&ch->n.gate_max_us);
        } while (waited > max
                 && apr_atomic_cas32(&ch->n.gate_max_us, waited, max) != max);
    }
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

    /* an armed record keeps its wake word: set the fields one by one */
    if (!(ac->rq && ac->rq->wait_wake && phase == PH_REQUEST))
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

/* Ends the coroutine and turns the outcome into what httpd needs: the
 * handler's return value (OK, or an error status for ap_die()). */
static int end_request(apx_req *rq)
{
    request_rec *r = rq->r;

    apr_pool_cleanup_run(r->pool, rq, req_cleanup);
    count_outcome(rq);
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
    drive(ac, STEP_AFTER);
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

static void park_keepalive(apx_conn *ac)
{
    conn_rec *c = ac->c;

    c->cs->state = CONN_STATE_SUSPENDED;
    ac->deadline = 0;
    park(ac, PH_KEEPALIVE, ac->fd, APX_EV_IN, -1,
         c->base_server->keep_alive_timeout, APX_PARK_IDLE);
}

/* 1: a whole request head is buffered; 0: not yet; -1: closed or error.
 * Reads without consuming (AP_MODE_SPECULATIVE) and without blocking, so a
 * client that sends its head a byte at a time never holds a worker. */
static int head_is_complete(apx_conn *ac)
{
    conn_rec *c = ac->c;
    apr_bucket *b;
    apr_status_t rv;
    apr_size_t seen = 0;
    int state = 0;  /* 0: in a line; 1: after LF; 2: start, no byte yet */
    int result = 0;

    if (!ac->peek_bb)
        ac->peek_bb = apr_brigade_create(c->pool, c->bucket_alloc);
    rv = ap_get_brigade(c->input_filters, ac->peek_bb, AP_MODE_SPECULATIVE,
                        APR_NONBLOCK_READ, HEAD_PEEK_BYTES);
    if (APR_STATUS_IS_EAGAIN(rv)) {
        apr_brigade_cleanup(ac->peek_bb);
        return 0;
    }
    if (rv != APR_SUCCESS) {
        apr_brigade_cleanup(ac->peek_bb);
        return -1;
    }
    state = 2;
    for (b = APR_BRIGADE_FIRST(ac->peek_bb);
         b != APR_BRIGADE_SENTINEL(ac->peek_bb) && !result;
         b = APR_BUCKET_NEXT(b)) {
        const char *data;
        apr_size_t len, i;

        if (APR_BUCKET_IS_EOS(b)) {
            result = seen ? result : -1;
            break;
        }
        if (apr_bucket_read(b, &data, &len, APR_NONBLOCK_READ) != APR_SUCCESS)
            break;
        for (i = 0; i < len; i++) {
            char ch = data[i];

            seen++;
            if (ch == '\r')
                continue;
            if (ch == '\n') {
                /* empty lines before the request line are allowed
                 * (RFC 9112 §2.2); a second LF after a line ends the head */
                if (state == 1) {
                    result = 1;
                    break;
                }
                if (state != 2)
                    state = 1;
                continue;
            }
            state = 0;
        }
    }
    apr_brigade_cleanup(ac->peek_bb);
    if (!result && seen == 0)
        return -1;  /* readable with nothing to read: EOF */
    if (!result && seen >= HEAD_PEEK_BYTES)
        return 1;   /* too large to peek: httpd enforces its own limits */
    return result;
}

static void keepalive_event(apx_conn *ac, unsigned why)
{
    conn_rec *c = ac->c;
    apr_time_t now;
    int rc;

    if (!(why & APX_EV_IN) || (why & (APX_EV_SHUTDOWN | APX_EV_TIMEOUT))
        || apr_atomic_read32(&apx_ch->stopping)) {
        apr_atomic_inc32(&apx_ch->n.keepalive_closed);
        apr_table_setn(c->notes, "short-lingering-close", "1");
        close_conn(ac);
        return;
    }
    rc = head_is_complete(ac);
    if (rc < 0) {
        close_conn(ac);
        return;
    }
    if (rc == 0) {
        /* Part of a head: wait for the rest, bounded by Timeout from the
         * first byte (mod_reqtimeout's job in the MPM; the MPM would block
         * a thread instead). */
        now = apr_time_now();
        if (!ac->deadline)
            ac->deadline = now + c->base_server->timeout;
        if (now >= ac->deadline) {
            apr_table_setn(c->notes, "short-lingering-close", "1");
            close_conn(ac);
            return;
        }
        apr_atomic_inc32(&apx_ch->n.head_waits);
        park(ac, PH_HEAD, ac->fd, APX_EV_IN, -1, ac->deadline - now,
             APX_PARK_IDLE);
        return;
    }
    ac->deadline = 0;
    drive(ac, STEP_PROCESS);
}

static void drive(apx_conn *ac, int step)
{
    conn_rec *c = ac->c;

    for (;;) {
        switch (step) {
        case STEP_PROCESS:
            c->cs->state = APX_CS_PROCESSING;
            c->cs->sense = CONN_SENSE_DEFAULT;
            ap_run_process_connection(c);
            /* fall through */
        case STEP_AFTER:
            if (c->cs->state == CONN_STATE_SUSPENDED) {
                if (ac->want_park) {
                    /* Our handler suspended again, on this module thread:
                     * no MPM and no hook involved, we park it ourselves. */
                    ac->want_park = 0;
                    park_request(ac);
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
        case STEP_WC:
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
                step = STEP_PROCESS;   /* pipelined request */
                continue;
            }
            park_keepalive(ac);
            return;
        }
    }
}

/* Runs on a module worker when the poller hands a parked connection back
 * (or the engine is shutting down). */
static void conn_dispatch(apx_park *p, apr_thread_t *thd)
{
    apx_conn *ac = p->baton;
    conn_rec *c = ac->c;
    unsigned why = p->why;

    if (ac->gate_pending)
        gate_wait(ac);
    if (thd)
        c->current_thread = thd;

    switch (ac->phase) {
    case PH_REQUEST: {
        apx_req *rq = ac->rq;
        unsigned got = p->got[0] & (APX_EV_IN | APX_EV_OUT | APX_EV_HUP
                                    | APX_EV_ERR);

        if (p->got[1] & (APX_EV_HUP | APX_EV_ERR))
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
            drive(ac, STEP_WC);
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
    map = apx_proxy_match(r);
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
    rv = apx_coro_create(&rq->coro, ch->stacks, apx_proxy_run, rq);
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
    if (!ac || !ac->want_park || apx_engine_current_thread())
        return;
    ac->want_park = 0;
    if (!c->cs || c->cs->state != CONN_STATE_SUSPENDED) {
        /* The MPM kept the connection (e.g. aborted): it will close it,
         * and r->pool's cleanup releases the coroutine. */
        return;
    }
    ac->hook_time = apr_time_now();
    ac->gate_pending = 1;
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
    ap_hook_child_init(conn_child_init, NULL, NULL, APR_HOOK_FIRST);
    ap_hook_handler(asyncproxy_handler, NULL, NULL, APR_HOOK_FIRST);
    ap_hook_suspend_connection(asyncproxy_suspend_connection, NULL, NULL,
                               APR_HOOK_MIDDLE);
    ap_hook_resume_connection(asyncproxy_resume_connection, NULL, NULL,
                              APR_HOOK_MIDDLE);
    ap_hook_pre_connection(asyncproxy_pre_connection, NULL, NULL,
                           APR_HOOK_REALLY_FIRST);
    ap_hook_create_request(asyncproxy_create_request, NULL, NULL,
                           APR_HOOK_REALLY_FIRST);
}
