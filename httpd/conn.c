/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* conn.c — the life of a connection the module owns: parked between
 * requests and while a request waits, dispatched back to a worker, the
 * adoption loop (the part of the event MPM's process_socket() the module
 * redoes), the head wait, write completion, keep-alive, the hand-off of
 * other handlers' requests to the lane, and the lingering close.
 *
 * httpd 2.4 never takes a SUSPENDED connection back, so once our handler
 * (handler.c) or apx_conn_process() suspends, the module owns the
 * connection for the rest of its life (DESIGN.md §3): it finishes the
 * response, does write completion, keep-alive, pipelined requests (for any
 * handler), lingering close and the final apr_pool_destroy(c->pool).
 *
 * Threads:
 *   apx_conn_suspend()      MPM thread, after the handler (or
 *                           apx_conn_process()) returned SUSPENDED; it
 *                           closes the gate and arms the poller
 *   apx_conn_process()      MPM thread: a head that is not whole is
 *                           awaited in the poller instead
 *   conn_dispatch() and below  module worker threads
 *   lane_run()              a lane thread (lane.c)
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
#include "scoreboard.h"
#include "apr_strings.h"

#include "conf.h"
#include "child.h"
#include "drive.h"
#include "conn.h"
#include "head.h"
#include "lane.h"
#include "memory.h"
#include "outcome.h"
#include "shed.h"

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

/* Lingering close reads at most this long (the MPM uses 2 s too). */
#define LINGER_TIME     apr_time_from_sec(2)

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

static void conn_dispatch(apx_park *p, apr_thread_t *thd);

void apx_conn_abandon(apx_park *p, apr_thread_t *thd)
{
    apx_conn *ac = p->baton;

    if (p->dispatch != conn_dispatch || !ac->rq || !ac->rq->coro)
        return;
    /* The connection goes with the process; the coroutine is ended so its
     * defers run (the backend socket closes) and its stack is back in the
     * pool before the pool goes. */
    apx_coro_destroy(ac->rq->coro);
    ac->rq->coro = NULL;
}

static volatile apr_uint32_t conn_ids;

apx_conn *apx_conn_get(conn_rec *c)
{
    apx_conn *ac = ap_get_module_config(c->conn_config, &asyncproxy_module);
    apr_os_sock_t fd;

    if (ac)
        return ac;
    ac = apr_pcalloc(c->pool, sizeof(*ac));
    ac->c = c;
    /* the id of its socket for the poller's kept arms (apx_park.keep): one
     * per connection of this process, never 0 */
    do {
        ac->id = apr_atomic_inc32(&conn_ids) + 1;
    } while (!ac->id);
    ac->csd = ap_get_conn_socket(c);
    ac->fd = -1;
    if (ac->csd && apr_os_sock_get(&fd, ac->csd) == APR_SUCCESS)
        ac->fd = fd;
    /* fresh, not submitted: every park of it is dispatched to us */
    apx_park_init(&ac->park, conn_dispatch, ac);
    ap_set_module_config(c->conn_config, &asyncproxy_module, ac);
    return ac;
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

/* Sets p's fds and hands the connection to the poller; the client's
 * socket is named by the connection's id (the poller's kept arms). On
 * failure (engine gone) the record is dispatched on this thread as a
 * shutdown. */
static void submit_park(apx_conn *ac, int fd0, unsigned want0, int fd1,
                        unsigned want1, apr_interval_time_t timeout,
                        unsigned flags)
{
    apx_park *p = &ac->park;

    p->fd[0] = fd0;
    p->want[0] = want0;
    p->fd[1] = fd1;
    p->want[1] = want1;
    p->keep[0] = fd0 == ac->fd ? ac->id : 0;
    p->keep[1] = fd1 == ac->fd ? ac->id : 0;
    p->timeout = timeout;
    p->flags = flags;
    if (!apx_ch || !apx_ch->engine
        || apx_park_submit(apx_ch->engine, p) != APR_SUCCESS)
        dispatch_engine_gone(p);
}

/* Parks the connection on fd0 (and fd1 watched for hangup). */
static void park(apx_conn *ac, int phase, int fd0, unsigned want0, int fd1,
                 apr_interval_time_t timeout, unsigned flags)
{
    /* An armed record keeps its wake word, and one that a waker may still
     * reach (a gate re-park before the coroutine delisted it) is not
     * rewritten under it: set the fields one by one. */
    if (!(ac->rq && ac->rq->wait_wake
          && (phase == PH_REQUEST || phase == PH_GATE)))
        apx_park_init(&ac->park, conn_dispatch, ac);
    ac->phase = phase;
    submit_park(ac, fd0, want0, fd1, 0, timeout, flags);
}

/* park() with something wanted on both fds (a tunnel). */
static void park2(apx_conn *ac, int fd0, unsigned want0, int fd1,
                  unsigned want1, apr_interval_time_t timeout)
{
    apx_park_init(&ac->park, conn_dispatch, ac);
    ac->phase = PH_REQUEST;
    submit_park(ac, fd0, want0, fd1, want1, timeout, 0);
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
        /* A tunnel parks for long, and its coroutine ran deep once (the
         * handler, the exchange, the 101 through the filters) and never
         * again: that part of its stack goes back to the kernel, once. */
        if (!rq->stack_trimmed) {
            apx_coro_stack_trim(rq->coro, 0);
            rq->stack_trimmed = 1;
        }
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

/* On a module worker: the coroutine of an adopted connection's request
 * finished; complete the request as ap_process_async_request() would. */
static void finish_adopted_request(apx_conn *ac)
{
    apx_req *rq = ac->rq;
    request_rec *r = rq->r;
    int rc;

    ac->rq = NULL;
    rc = apx_outcome_end(rq);
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

/* An idle connection waits IDLE_TRIM_AFTER first, then gives back what its
 * last request left in the connection's allocator (memory.c) and waits the
 * rest of KeepAliveTimeout: a client that sends its next request at once
 * finds the blocks still there, one that stays idle costs its live blocks
 * only. */
#define IDLE_TRIM_AFTER apr_time_from_sec(1)

static void park_keepalive(apx_conn *ac)
{
    conn_rec *c = ac->c;
    apr_interval_time_t t = c->base_server->keep_alive_timeout;

    c->cs->state = CONN_STATE_SUSPENDED;
    apx_shed_idle_inc();
    ac->idle_trim = 0;
    if (t > 2 * IDLE_TRIM_AFTER) {
        ac->idle_trim = 1;
        ac->deadline = apr_time_now() + t;
        t = IDLE_TRIM_AFTER;
    }
    park(ac, PH_KEEPALIVE, ac->fd, APX_EV_IN, -1, t, APX_PARK_IDLE);
}

/* The first part of the idle wait ended quietly: trim, wait the rest. */
static void idle_trim(apx_conn *ac)
{
    apr_time_t now = apr_time_now();

    ac->idle_trim = 0;
    apx_mem_trim(ac->c, 0);
    apr_atomic_inc32(&apx_ch->n.idle_trims);
    apx_shed_idle_inc();
    park(ac, PH_KEEPALIVE, ac->fd, APX_EV_IN, -1,
         park_timeout(ac->deadline > now ? ac->deadline - now : 1),
         APX_PARK_IDLE);
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
    apx_shed_idle_inc();
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
    if (ac->phase == PH_KEEPALIVE && ac->idle_trim
        && (why & APX_EV_TIMEOUT)
        && !(why & (APX_EV_IN | APX_EV_HUP | APX_EV_ERR | APX_EV_SHED
                    | APX_EV_SHUTDOWN))
        && !apr_atomic_read32(&apx_ch->stopping)) {
        idle_trim(ac);
        return;
    }
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
            if (apx_core_flush(c) != APR_SUCCESS) {
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

    if (ac->gate.pending
        && !apx_gate_pass(&ac->gate, p, &ac->phase, PH_GATE)) {
        park(ac, PH_GATE, -1, 0, -1, APX_GATE_RECHECK, 0);
        return;
    }
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

void apx_conn_suspend(conn_rec *c, request_rec *r)
{
    apx_conn *ac = ap_get_module_config(c->conn_config, &asyncproxy_module);

    /* The MPM calls this for every suspension it makes (keep-alive, write
     * completion, ...): a new unit of work on this thread for the gate. */
    apx_gate_bump();
    if (!ac || !(ac->want_park || ac->want_head)
        || apx_engine_current_thread())
        return;
    if (!c->cs || c->cs->state != CONN_STATE_SUSPENDED) {
        ac->want_park = ac->want_head = 0;
        /* The MPM kept the connection (e.g. aborted): it will close it,
         * and r->pool's cleanup releases the coroutine. */
        return;
    }
    apx_gate_close(&ac->gate, c);
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
        apx_shed_idle_inc();
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

/* On a connection the module owns, an HTTP/1.1 request may ask to
 * upgrade to h2c where a server allows it; httpd's core would switch in a
 * handler that runs before any other (and at map_to_storage for OPTIONS *),
 * and mod_http2 would then run the whole h2 session on this module worker.
 * The request is served as HTTP/1.1 instead (a server may ignore an
 * Upgrade, RFC 9110 7.8). */
int apx_conn_drop_h2c(request_rec *r)
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
int apx_conn_process(conn_rec *c)
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
    ac = apx_conn_get(c);
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

void apx_conn_child_init(apr_pool_t *pchild, server_rec *s)
{
    apr_thread_mutex_create(&adopted_mtx, APR_THREAD_MUTEX_DEFAULT, pchild);
    adopted_head = NULL;
}
