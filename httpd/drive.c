/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* drive.c — the two drivers behind apx_wait() (drive.h): the sync driver
 * poll()s on the current thread (worker/prefork MPM, HTTP/2 streams,
 * subrequests); the async driver polls in place on an MPM thread for at
 * most the park delay, and otherwise yields the request's coroutine with
 * the wait described in the apx_req, for its owner to park it (conn.c).
 *
 * Threads: inside the request's coroutine, on whichever thread owns the
 * request. The cap on MPM threads waiting in place is an atomic.
 */
#include <errno.h>
#include <poll.h>

#include "util_filter.h"

#include "child.h"
#include "drive.h"

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

apr_status_t apx_core_flush(conn_rec *c)
{
    ap_filter_t *f = c->output_filters;

    while (f->next)
        f = f->next;
    if (f->frec->filter_func.out_func(f, NULL) != APR_SUCCESS || c->aborted)
        return APR_ECONNABORTED;
    return APR_SUCCESS;
}

unsigned apx_wait_wake(apx_req *rq, int (*enlist)(void *baton, apx_park *p),
                       void *baton, apr_time_t deadline)
{
    apx_park *p = rq->park;

    if (!rq->async || rq->client_fd < 0 || !p)
        return 0;
    /* The record is ours while the request runs: make its next park
     * wakeable before a waker can reach it, initialised afresh in the
     * owner's state (apx_park_init()). */
    apx_park_init(p, p->dispatch, p->baton);
    apx_park_arm_wake(p);
    if (!enlist(baton, p))
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
