/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* backend.c — the backend connection of one exchange: a pooled one or a
 * new non-blocking connect (each of the origin's addresses in turn, or its
 * Unix socket), for https:// the TLS handshake, the request bytes written
 * (sendmsg(), or SSL_write) and the response read into the exchange's
 * receive buffer (recv(), or SSL_read), every would-block point through
 * apx_wait(). The idle pool itself is upstream.c's, the OpenSSL calls are
 * upstream_tls.c's: this file decides what to wait for.
 *
 * Threads: inside the request's coroutine, on the thread that owns the
 * request.
 * Invariants: px->fd (and px->tls with it) is covered by a coroutine defer
 * from the moment the socket exists; the receive buffers are taken on the
 * first readable byte. A TLS step that cannot go on waits for what
 * OpenSSL asked (a read may want the socket writable and a write may want
 * it readable), never for what the caller meant to do.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include "httpd.h"
#include "http_config.h"
#include "http_core.h"
#include "http_log.h"
#include "http_protocol.h"
#include "http_request.h"
#include "util_filter.h"
#include "apr_lib.h"
#include "apr_strings.h"

#include "exchange.h"
#include "upstream_queue.h"

APLOG_USE_MODULE(asyncproxy);
extern module AP_MODULE_DECLARE_DATA asyncproxy_module;

void apx_ex_close_backend_deferred(void *arg)
{
    apx_exchange *px = arg;

    if (px->fd >= 0) {
        apx_backend_discard(px->be, px->fd, px->tls, 0);
        px->fd = -1;
        px->tls = NULL;
    }
}

/* ------------------------------------------------------------------ */
/* balancer members                                                     */

/* Gives the member's slot back to the group with the outcome. */
static void member_report(apx_exchange *px, int outcome)
{
    int idx = px->member;
    apr_interval_time_t latency;

    if (idx < 0)
        return;
    latency = px->member_answered ? px->member_latency
                                  : apr_time_now() - px->attempt_at;
    px->member = -1;
    px->member_answered = 0;
    apx_group_done(px->bal, px->r->server, (unsigned)idx, outcome, latency);
}

/* A coroutine defer: the coroutine ends (or dies parked) holding a slot.
 * A response head that came is its outcome; else there is no verdict. */
static void member_deferred(void *arg)
{
    apx_exchange *px = arg;

    if (px->member >= 0)
        member_report(px, px->member_answered ? px->member_outcome
                                              : APX_BAL_ABORTED);
}

/* px on member idx (which holds a slot): its origin, Host, URL. */
static void use_member(apx_exchange *px, unsigned idx)
{
    const apx_member *mb = &APR_ARRAY_IDX(px->bal->members, (int)idx,
                                          apx_member);

    px->member = (int)idx;
    px->member_answered = 0;
    px->tries++;
    px->be = mb->be;
    px->host_hdr = mb->host_hdr;
    px->url = apr_pstrcat(px->r->pool, mb->url, px->target, NULL);
    apx_ex_head_set_host(px);
}

int apx_ex_member_pick(apx_exchange *px)
{
    unsigned idx;

    if (!px->member_defer) {
        px->member_defer = apx_coro_defer(px->rq->coro, member_deferred, px);
        if (!px->member_defer) {
            ap_log_rerror(APLOG_MARK, APLOG_ERR, APR_ENOMEM, px->r,
                          APXLOGNO(00130) "no memory to track the "
                          "balancer's member");
            return apx_ex_backend_failed(px, HTTP_SERVICE_UNAVAILABLE,
                                         "no-memory");
        }
    }
    px->tries = 0;
    switch (apx_group_acquire(px->bal, px->rq, px->r, &idx)) {
    case APX_ACQ_OK:
        break;
    case APX_ACQ_FULL:
        return apx_ex_backend_failed(px, HTTP_SERVICE_UNAVAILABLE,
                                     "queue-full");
    case APX_ACQ_TIMEOUT:
        return apx_ex_backend_failed(px, HTTP_SERVICE_UNAVAILABLE,
                                     "queue-timeout");
    case APX_ACQ_GONE:
        return apx_ex_client_gone(px);
    case APX_ACQ_SHUTDOWN:
        apx_ex_wait_interrupted(px, APX_EV_SHUTDOWN);
        return STEP_FAIL;
    default:
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, px->r, APXLOGNO(00131)
                      "balancer %s has no member in service for %s%s",
                      px->bal->name, px->bal->url, px->target);
        return apx_ex_backend_failed(px, HTTP_SERVICE_UNAVAILABLE,
                                     "no-member");
    }
    use_member(px, idx);
    return STEP_OK;
}

void apx_ex_member_answered(apx_exchange *px)
{
    px->member_outcome = apx_group_fail_status(px->bal, px->resp.status)
                         ? APX_BAL_5XX : APX_BAL_OK;
    px->member_latency = apr_time_now() - px->attempt_at;
    px->member_answered = 1;
}

/* The retry rules (README: Balancer groups). Nothing reached the client
 * (the outcome is an error page still to send) and then:
 *   - a connect that failed: always (no byte of the request left);
 *   - a connection that died, or a response head that did not come in
 *     time: for an idempotent method, when no byte of a request body was
 *     read from the client (it cannot be replayed: it is not kept) and
 *     the member sent nothing (not even a 1xx, which went on to the
 *     client);
 * each retry leaving out the member that just failed, at most as many
 * attempts as members, within the group's retry budget. A
 * malformed head, a configured failure status and the client's or our
 * own failures are not retried. */
int apx_ex_member_failed(apx_exchange *px)
{
    apx_req *rq = px->rq;
    const char *note = rq->note ? rq->note : "";
    int outcome, retry, failed = px->member;
    int safe = px->idempotent && !px->body_started && !px->got_bytes;
    apr_status_t rv;
    unsigned idx;

    apx_ex_finish_backend(px, 0);
    if (!strcmp(note, "connect-refused") || !strcmp(note, "connect-failed")) {
        outcome = APX_BAL_CONNECT_FAIL;
        retry = 1;
    }
    else if (!strcmp(note, "connect-timeout")) {
        outcome = APX_BAL_TIMEOUT;
        retry = 1;
    }
    else if (!strcmp(note, "backend-timeout")) {
        outcome = APX_BAL_TIMEOUT;
        retry = safe;
    }
    else if (!strcmp(note, "send-failed")) {
        outcome = APX_BAL_CONNECT_FAIL;
        retry = safe;
    }
    else if (!strcmp(note, "bad-response")) {
        /* closed before a whole head, or a malformed one */
        outcome = APX_BAL_CONNECT_FAIL;
        retry = safe;
    }
    else {
        /* the client left, the child stops, no memory or descriptors, a
         * request we refused: nothing said about the member */
        outcome = APX_BAL_ABORTED;
        retry = 0;
    }
    member_report(px, outcome);
    if (!retry || rq->outcome != APX_OUT_ERROR || failed < 0
        || px->tries >= (unsigned)px->bal->members->nelts)
        return 0;
    rv = apx_group_retry(px->bal, px->r, (unsigned)failed, &idx);
    if (rv != APR_SUCCESS) {
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, px->r, APXLOGNO(00132)
                      "balancer %s: %s not retried after member %s failed "
                      "(%s)", px->bal->name, px->url,
                      APR_ARRAY_IDX(px->bal->members, failed,
                                    apx_member).url,
                      rv == APR_EBUSY ? "retry budget spent"
                                      : "no other member in service");
        return 0;
    }
    ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, px->r, APXLOGNO(00133)
                  "balancer %s: %s %s failed on member %s (%s); retrying on "
                  "member %s", px->bal->name, px->r->method, px->target,
                  APR_ARRAY_IDX(px->bal->members, failed, apx_member).url,
                  note, APR_ARRAY_IDX(px->bal->members, (int)idx,
                                      apx_member).url);
    rq->outcome = APX_OUT_RUNNING;
    rq->status = 0;
    rq->note = NULL;
    use_member(px, idx);
    return 1;
}

/* ------------------------------------------------------------------ */
/* the backend connection                                               */

/* Ends the use of the backend connection: back to the pool only after a
 * clean exchange, else closed. A balancer member whose response head came
 * gets its outcome now: the exchange is over. */
void apx_ex_finish_backend(apx_exchange *px, int reusable)
{
    if (px->member >= 0 && px->member_answered)
        member_report(px, px->member_outcome);
    if (px->fd < 0)
        return;
    /* a TLS connection cut mid-way gets no close_notify: after a failed
     * step OpenSSL must not be asked to write one */
    if (reusable)
        apx_backend_release(px->be, px->fd, px->tls, apr_time_now());
    else
        apx_backend_discard(px->be, px->fd, px->tls, 0);
    px->fd = -1;
    px->tls = NULL;
}

/* Errors for which the origin's next address is worth a try. */
static int address_specific(int err)
{
    return err == ECONNREFUSED || err == ENETUNREACH || err == EHOSTUNREACH
           || err == EADDRNOTAVAIL || err == EAFNOSUPPORT;
}

/* A Unix socket whose backlog is full answers EAGAIN and gives nothing
 * to wait on: the connect is tried again after this long, until the
 * connect timeout. */
#define UNIX_RETRY apr_time_from_msec(5)

/* One non-blocking connect. Returns 0, an errno value, or -1 when the wait
 * was interrupted (outcome set). px->fd is set as soon as the socket
 * exists, so the defer covers it across the wait. */
static int connect_addr(apx_exchange *px, int family,
                        const struct sockaddr *sa, socklen_t salen,
                        apr_time_t deadline)
{
    int fd, err, one = 1;
    socklen_t len = sizeof(err);
    unsigned ev;
    apr_time_t until;

    fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return errno;
    px->fd = fd;
    apx_backend_opened(px->be);
    if (family != AF_UNIX)
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    for (;;) {
        if (connect(fd, sa, salen) == 0)
            return 0;
        err = errno;
        if (err != EAGAIN || family != AF_UNIX)
            break;
        until = apr_time_now() + UNIX_RETRY;
        ev = apx_wait(px->rq, -1, 0, until < deadline ? until : deadline);
        if (apx_ex_wait_interrupted(px, ev)) {
            apx_ex_finish_backend(px, 0);
            return -1;
        }
        if (apr_time_now() >= deadline) {
            apx_ex_finish_backend(px, 0);
            return ETIMEDOUT;
        }
    }
    if (err != EINPROGRESS) {
        apx_ex_finish_backend(px, 0);
        return err;
    }
    ev = apx_wait_connect(px->rq, fd, deadline);
    if (apx_ex_wait_interrupted(px, ev)) {
        apx_ex_finish_backend(px, 0);
        return -1;
    }
    if (!(ev & (APX_EV_OUT | APX_EV_HUP | APX_EV_ERR))) {
        apx_ex_finish_backend(px, 0);
        return ETIMEDOUT;
    }
    err = 0;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        err = errno;
    if (err)
        apx_ex_finish_backend(px, 0);
    return err;
}

static int connect_unix(apx_exchange *px, apr_time_t deadline)
{
    struct sockaddr_un su;

    memset(&su, 0, sizeof(su));
    su.sun_family = AF_UNIX;
    /* the length was checked when the configuration was read */
    apr_cpystrn(su.sun_path, px->be->uds_path, sizeof(su.sun_path));
    return connect_addr(px, AF_UNIX, (const struct sockaddr *)&su,
                        sizeof(su), deadline);
}

/* The TLS handshake on the connected px->fd, within the connect's
 * deadline: a backend that takes the connection and never answers the
 * ClientHello costs a parked record until the connect timeout, as a
 * connect that hangs does. Verification failures are refused with OpenSSL's
 * reason; the connection never reaches the pool. */
static int handshake_backend(apx_exchange *px, apr_time_t deadline)
{
    request_rec *r = px->r;
    const char *why;
    unsigned want, ev;

    px->tls = apx_tls_new(px->be->tls_origin, px->fd);
    if (!px->tls) {
        apx_ex_finish_backend(px, 0);
        ap_log_rerror(APLOG_MARK, APLOG_ERR, APR_ENOMEM, r, APXLOGNO(00134)
                      "no memory for a TLS connection to backend %s",
                      px->be->hostport);
        return apx_ex_backend_failed(px, HTTP_SERVICE_UNAVAILABLE,
                                     "no-memory");
    }
    while (apx_tls_handshake(px->tls, &want) < 0) {
        if (!want) {
            int refused = apx_tls_failure(px->tls, r->pool, &why);

            apx_ex_finish_backend(px, 0);
            if (refused)
                ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, APXLOGNO(00135)
                              "TLS to backend %s refused: certificate "
                              "verification failed: %s", px->be->hostport,
                              why);
            else
                ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, APXLOGNO(00136)
                              "TLS handshake with backend %s failed: %s",
                              px->be->hostport, why);
            return apx_ex_backend_failed(px, HTTP_BAD_GATEWAY,
                                         "connect-failed");
        }
        ev = apx_wait(px->rq, px->fd, want, deadline);
        if (apx_ex_wait_interrupted(px, ev)) {
            apx_ex_finish_backend(px, 0);
            return STEP_FAIL;
        }
        if (ev & APX_EV_TIMEOUT) {
            apx_ex_finish_backend(px, 0);
            ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, APXLOGNO(00137)
                          "TLS handshake with backend %s timed out after %"
                          APR_TIME_T_FMT " ms", px->be->hostport,
                          apr_time_as_msec(px->connect_timeout));
            return apx_ex_backend_failed(px, HTTP_GATEWAY_TIME_OUT,
                                         "connect-timeout");
        }
        /* a hangup or an error: the next step says which */
    }
    apr_atomic_inc32(&apx_ch->n.tls_handshakes);
    if (apx_tls_resumed(px->tls))
        apr_atomic_inc32(&apx_ch->n.tls_resumed);
    return STEP_OK;
}

static int connect_backend(apx_exchange *px)
{
    const apr_sockaddr_t *sa;
    apr_time_t deadline = apr_time_now() + px->connect_timeout;
    request_rec *r = px->r;
    int err = EADDRNOTAVAIL;

    px->reused = 0;
    if (px->be->uds_path) {
        err = connect_unix(px, deadline);
        if (err < 0)
            return STEP_FAIL;
    }
    for (sa = px->be->addr; sa; sa = sa->next) {
        err = connect_addr(px, sa->family, (const struct sockaddr *)&sa->sa,
                           sa->salen, deadline);
        if (err <= 0)
            break;
        if (!address_specific(err))
            break;
    }
    if (err == 0)
        return px->be->tls ? handshake_backend(px, deadline) : STEP_OK;
    if (err < 0)
        return STEP_FAIL;
    if (err == ETIMEDOUT) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, APXLOGNO(00101)
                      "connect to backend %s timed out after %" APR_TIME_T_FMT
                      " ms", px->be->hostport,
                      apr_time_as_msec(px->connect_timeout));
        return apx_ex_backend_failed(px, HTTP_GATEWAY_TIME_OUT, "connect-timeout");
    }
    if (err == EMFILE || err == ENFILE) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, APR_FROM_OS_ERROR(err), r,
                      APXLOGNO(00102) "cannot open a connection to backend "
                      "%s: out of file descriptors (raise the open files "
                      "limit, ulimit -n)", px->be->hostport);
        return apx_ex_backend_failed(px, HTTP_SERVICE_UNAVAILABLE, "out-of-fds");
    }
    ap_log_rerror(APLOG_MARK, APLOG_ERR, APR_FROM_OS_ERROR(err), r,
                  APXLOGNO(00100) "connect to backend %s failed",
                  px->be->hostport);
    return apx_ex_backend_failed(px, HTTP_BAD_GATEWAY, err == ECONNREFUSED
                          ? "connect-refused" : "connect-failed");
}

/* A pooled connection if there is a live one (and fresh_only is 0), else a
 * new one. */
int apx_ex_open_backend(apx_exchange *px, int fresh_only)
{
    if (!fresh_only) {
        px->fd = apx_backend_take(px->be, apr_time_now(), &px->tls);
        if (px->fd >= 0) {
            px->reused = 1;
            apr_atomic_inc32(&apx_ch->n.backend_reused);
            return STEP_OK;
        }
    }
    return connect_backend(px);
}

/* One write of iov[0..n) (n > 0): the byte count, or -1 with errno; on
 * EAGAIN *want says what to wait for. TLS writes one slice per record
 * call (SSL_write takes one buffer). */
static ssize_t send_some(apx_exchange *px, const struct iovec *iov, int n,
                         unsigned *want)
{
    struct msghdr mh;

    *want = APX_EV_OUT;
    if (px->tls) {
        ssize_t w = apx_tls_write(px->tls, iov->iov_base, iov->iov_len,
                                  want);

        if (w < 0 && *want)
            errno = EAGAIN;
        return w;
    }
    memset(&mh, 0, sizeof(mh));
    mh.msg_iov = (struct iovec *)iov;
    mh.msg_iovlen = (size_t)n;
    return sendmsg(px->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
}

/* Writes iov[0..n) to the backend (the array is consumed). Returns STEP_OK,
 * STEP_FAIL (timeout or interrupted wait; outcome set), or an errno value
 * > 0 when the backend stopped taking data (the caller decides). */
int apx_ex_send_iov(apx_exchange *px, struct iovec *iov, int n)
{
    ssize_t w;
    unsigned ev, want;
    int err, hup = 0;

    for (;;) {
        /* empty slices: SSL_write takes no zero-length write */
        while (n > 0 && iov->iov_len == 0) {
            iov++;
            n--;
        }
        if (n <= 0)
            break;
        w = send_some(px, iov, n, &want);
        if (w >= 0) {
            while (n > 0 && (size_t)w >= iov->iov_len) {
                w -= (ssize_t)iov->iov_len;
                iov++;
                n--;
            }
            if (n > 0) {
                iov->iov_base = (char *)iov->iov_base + w;
                iov->iov_len -= (size_t)w;
            }
            hup = 0;
            continue;
        }
        err = errno;
        if (err == EINTR)
            continue;
        if (err != EAGAIN && err != EWOULDBLOCK)
            return err;
        /* A hangup that still leaves the socket unwritable would wake us
         * for ever: the backend is gone. */
        if (hup)
            return EPIPE;
        ev = apx_wait(px->rq, px->fd, want, apr_time_now() + px->timeout);
        if (apx_ex_wait_interrupted(px, ev))
            return STEP_FAIL;
        if (ev & APX_EV_TIMEOUT) {
            ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, px->r, APXLOGNO(00109)
                          "backend %s did not take the request for %s "
                          "within %" APR_TIME_T_FMT " ms", px->be->hostport,
                          px->url, apr_time_as_msec(px->timeout));
            return apx_ex_backend_failed(px, HTTP_GATEWAY_TIME_OUT,
                                  "backend-timeout");
        }
        hup = !(ev & want) && (ev & (APX_EV_HUP | APX_EV_ERR));
    }
    return STEP_OK;
}

/* The receive buffer, the response head buffer and its fields, taken when
 * the backend first has something to read, so a request parked while it
 * waits for its response holds none of them; given back when the coroutine
 * ends (a defer). From malloc, not r->pool: a pool's blocks stay in the
 * connection's allocator after the request, resident, for as long as the
 * connection lives. bench/PROFILE.md: 52 -> 40 KB per parked request (the
 * same buffers taken lazily from r->pool: 56 KB). */
static int get_buffers(apx_exchange *px)
{
    apr_size_t fsize = HEAD_FIELDS * sizeof(apx_http_field);
    char *b = malloc(fsize + RBUF_SIZE + px->head_max);

    if (b)
        px->bufs_defer = apx_coro_defer(px->rq->coro, free, b);
    if (!b || !px->bufs_defer) {
        /* apx_coro_defer() already freed b when it failed */
        ap_log_rerror(APLOG_MARK, APLOG_ERR, APR_ENOMEM, px->r,
                      APXLOGNO(00126) "no memory for the response buffers");
        return apx_ex_backend_failed(px, HTTP_SERVICE_UNAVAILABLE,
                                     "no-memory");
    }
    /* the fields first: malloc's alignment is theirs */
    apx_http_resp_init(&px->resp, b + fsize + RBUF_SIZE, px->head_max,
                       (apx_http_field *)(void *)b, HEAD_FIELDS);
    px->rbuf = b + fsize;
    return STEP_OK;
}

/* One read into rbuf: the byte count, 0 at the end, or -1 with errno; on
 * EAGAIN *want says what to wait for. */
static ssize_t recv_some(apx_exchange *px, unsigned *want)
{
    *want = APX_EV_IN;
    if (px->tls) {
        ssize_t n = apx_tls_read(px->tls, px->rbuf, RBUF_SIZE, want);

        if (n < 0 && *want)
            errno = EAGAIN;
        return n;
    }
    return recv(px->fd, px->rbuf, RBUF_SIZE, MSG_DONTWAIT);
}

/* Reads more of the response into rbuf (emptied first). On RECV_ERROR the
 * errno is in px->recv_errno. deadline 0: one backend timeout from now.
 * phase names what timed out in the log line. */
int apx_ex_recv(apx_exchange *px, apr_time_t deadline, const char *phase)
{
    ssize_t n;
    unsigned ev, want = APX_EV_IN;
    int err, turn;

    px->roff = px->rlen = 0;
    /* A stream whose backend and client are both fast would keep this
     * worker for as long as it lasts: after STREAM_TURN bytes without a
     * wait, wait anyway (through the poller's queue, at once if the
     * backend is still readable). */
    turn = px->stream && px->turn_bytes >= STREAM_TURN;
    /* Nothing read yet: the buffers are taken after the first wait. Right
     * after the request went out a look at the socket (a peek) nearly
     * always failed, a syscall per request for nothing; a backend that
     * did answer already is reported by the poller at once. Decrypted
     * TLS bytes in hand need no wait. */
    if (!px->rbuf && px->tls && apx_tls_pending(px->tls)
        && get_buffers(px) != STEP_OK)
        return STEP_FAIL;
    for (;;) {
        if (px->rbuf && !turn) {
            n = recv_some(px, &want);
            if (n > 0) {
                px->got_bytes = 1;
                px->rlen = (apr_size_t)n;
                px->turn_bytes += (apr_size_t)n;
                return RECV_DATA;
            }
            if (n == 0)
                return RECV_EOF;
            err = errno;
            if (err == EINTR)
                continue;
            if (err != EAGAIN && err != EWOULDBLOCK) {
                px->recv_errno = err;
                return RECV_ERROR;
            }
        }
        else if (turn && px->tls && apx_tls_pending(px->tls)) {
            /* the turn's bytes are decrypted already and the socket may
             * stay quiet: yield through the poller on writability, which
             * an idle backend connection has at once */
            want = APX_EV_OUT;
        }
        px->turn_bytes = 0;
        turn = 0;
        ev = apx_wait(px->rq, px->fd, want,
                      deadline ? deadline : apr_time_now() + px->timeout);
        want = APX_EV_IN;
        if (apx_ex_wait_interrupted(px, ev))
            return STEP_FAIL;
        if (ev & APX_EV_TIMEOUT) {
            ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, px->r, APXLOGNO(00106)
                          "backend %s timed out (%" APR_TIME_T_FMT " ms) "
                          "%s for %s", px->be->hostport,
                          apr_time_as_msec(px->timeout), phase, px->url);
            return apx_ex_backend_failed(px, HTTP_GATEWAY_TIME_OUT,
                                  "backend-timeout");
        }
        if (!px->rbuf && get_buffers(px) != STEP_OK)
            return STEP_FAIL;
    }
}
