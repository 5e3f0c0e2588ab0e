/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* upstream_check.c — active health checks (upstream_check.h).
 *
 * A probe is a state machine on its own apx_park record: a non-blocking
 * connect, the TLS handshake of an https:// member (upstream_tls.c's
 * steps, the member's origin: its CA, name, session slot), the request
 * ("METHOD PATH HTTP/1.1", Host, Connection: close), then the status line;
 * every step that would block parks the record on the poller with the
 * socket, the readiness it needs and what is left of timeout=, and the
 * record's dispatch (a worker) takes the next step. No thread waits and
 * no coroutine stack is used: a probe costs a socket and under 1 KiB.
 *
 * Sharing across children: each child runs one timer (a timer-only park,
 * every interval/8, 10..250 ms) that looks at each member's `next_due` in
 * the shared segment (upstream_shm.h); when it is due, the child CASes it
 * to now + interval and, if the CAS won, probes the member: one probe per
 * member per interval whatever the number of children. The prober writes
 * the result (counts, runs, status, duration, error) and turns the
 * verdict after fails= failures / passes= passes in a row; it bumps the
 * segment's generation, and every child's picker mirrors the verdict into
 * its group when it sees the generation move (upstream_group.c,
 * apx_bal_check_sync). A child that dies mid-probe costs one interval's
 * result; the next due time is already set.
 *
 * Threads: the timer and the probes run on engine workers; a probe record
 * is owned by one thread at a time (the one its park dispatched to), and
 * `busy` (atomic) keeps this child from starting a probe of a member
 * whose previous one has not ended. Records are APX_PARK_IDLE: when the
 * child stops, the engine dispatches them at once with SHUTDOWN and the
 * probe ends without a verdict (its socket closed); a cleanup on pchild
 * closes what a destroyed engine abandoned.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "httpd.h"
#include "http_config.h"
#include "http_log.h"
#include "ap_mpm.h"
#include "apr_lib.h"
#include "apr_strings.h"

#include "child.h"
#include "upstream_check.h"
#include "upstream_shm.h"

APLOG_USE_MODULE(asyncproxy);

/* The status line and a little more: the rest of the answer is not read
 * (the connection closes after the status). */
#define CHECK_RESP_MAX      256
/* The timer's period: an eighth of the shortest interval (a probe starts
 * at most that late), within these bounds. */
#define CHECK_TICK_MIN      apr_time_from_msec(10)
#define CHECK_TICK_MAX      apr_time_from_msec(250)
/* A Unix socket whose backlog is full answers EAGAIN with nothing to wait
 * on: the connect is tried again after this long (as backend.c does). */
#define CHECK_UNIX_RETRY    apr_time_from_msec(5)

enum { P_CONNECT = 0, P_CONNECTING, P_HANDSHAKE, P_SEND, P_RECV };
/* what a step says */
enum { S_NEXT = 0, S_WAIT, S_DONE };

typedef struct probe {
    apx_park park;
    apx_balancer *b;
    const apx_member *mb;
    apx_mshm_check *sh;
    const char *req;                /* the request bytes (pchild) */
    apr_size_t req_len;
    int fd;
    struct ssl_st *ssl;
    int step;
    apr_time_t started, deadline;
    apr_size_t off;                 /* sent, then received */
    volatile apr_uint32_t busy;     /* a probe of this member runs here */
    char buf[CHECK_RESP_MAX];
} probe;

static probe *probes;
static unsigned nprobes;
static server_rec *chk_server;
static apx_timer chk_tick;
static apr_interval_time_t tick_every;

const char *apx_check_error_name(unsigned err)
{
    static const char *const names[] = {
        "-", "connect", "timeout", "status", "response", "closed", "tls",
        "resource"
    };

    return err < sizeof(names) / sizeof(names[0]) ? names[err] : "?";
}

/* ------------------------------------------------------------------ */
/* the end of a probe                                                   */

static void close_probe(probe *pr)
{
    if (pr->ssl) {
        apx_tls_close(pr->ssl, 0);
        pr->ssl = NULL;
    }
    if (pr->fd >= 0) {
        close(pr->fd);
        pr->fd = -1;
    }
}

/* Ended without a verdict (the child stops, the engine refused the park):
 * the member keeps its state; the lease is spent. */
static void abandon_probe(probe *pr)
{
    close_probe(pr);
    __atomic_store_n(&pr->sh->prober, 0, __ATOMIC_RELEASE);
    apr_atomic_set32(&pr->busy, 0);
}

/* The verdict of one probe, written to the shared record (this child
 * holds the member's lease: no other writer), then logged when it turned
 * the member. */
static int finish(probe *pr, int ok, unsigned status, unsigned err, int os)
{
    apx_mshm_check *sh = pr->sh;
    const apx_check_conf *cc = pr->b->check;
    apr_time_t now = apr_time_now();
    apr_uint32_t ms = (apr_uint32_t)apr_time_as_msec(now - pr->started);
    apr_uint32_t run;
    int turned = 0;

    close_probe(pr);
    __atomic_store_n(&sh->last_status, status, __ATOMIC_RELAXED);
    __atomic_store_n(&sh->last_ms, ms, __ATOMIC_RELAXED);
    __atomic_store_n(&sh->last_err, err, __ATOMIC_RELAXED);
    __atomic_store_n(&sh->last_at, now, __ATOMIC_RELAXED);
    if (ok) {
        __atomic_add_fetch(&sh->passed, 1, __ATOMIC_RELAXED);
        __atomic_store_n(&sh->fail_run, 0, __ATOMIC_RELAXED);
        run = __atomic_add_fetch(&sh->pass_run, 1, __ATOMIC_RELAXED);
        __atomic_store_n(&sh->last_pass_at, now, __ATOMIC_RELEASE);
        if (!__atomic_load_n(&sh->up, __ATOMIC_ACQUIRE) && run >= cc->passes) {
            /* since before up: a reader that sees up sees when */
            __atomic_store_n(&sh->since, now, __ATOMIC_RELEASE);
            __atomic_store_n(&sh->up, 1, __ATOMIC_RELEASE);
            turned = 1;
        }
    } else {
        __atomic_add_fetch(&sh->failed, 1, __ATOMIC_RELAXED);
        __atomic_store_n(&sh->pass_run, 0, __ATOMIC_RELAXED);
        run = __atomic_add_fetch(&sh->fail_run, 1, __ATOMIC_RELAXED);
        if (__atomic_load_n(&sh->up, __ATOMIC_ACQUIRE) && run >= cc->fails) {
            __atomic_store_n(&sh->since, now, __ATOMIC_RELEASE);
            __atomic_store_n(&sh->up, 0, __ATOMIC_RELEASE);
            turned = 1;
        }
    }
    __atomic_store_n(&sh->prober, 0, __ATOMIC_RELEASE);
    apx_mshm_check_bump();
    apr_atomic_set32(&pr->busy, 0);

    if (APLOGtrace2(chk_server))
        ap_log_error(APLOG_MARK, APLOG_TRACE2, APR_FROM_OS_ERROR(os),
                     chk_server, "balancer %s: check of %s %s: status %u "
                     "in %u ms (%s)", pr->b->name, pr->mb->url,
                     ok ? "passed" : "failed", status, ms,
                     apx_check_error_name(err));
    if (turned && ok)
        ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, chk_server, APXLOGNO(00046)
                     "balancer %s: member %s passed %u health checks in a "
                     "row: back in service (slow start %" APR_TIME_T_FMT
                     " ms)", pr->b->name, pr->mb->url, run,
                     apr_time_as_msec(pr->b->cfg.slow_start));
    else if (turned)
        ap_log_error(APLOG_MARK, APLOG_WARNING, APR_FROM_OS_ERROR(os),
                     chk_server, APXLOGNO(00047) "balancer %s: member %s "
                     "failed %u health checks in a row: out of service "
                     "(last: %s, status %u, %s %s)", pr->b->name,
                     pr->mb->url, run, apx_check_error_name(err), status,
                     cc->method, cc->path);
    return S_DONE;
}

/* ------------------------------------------------------------------ */
/* the steps                                                            */

static int step_connect(probe *pr, unsigned *want)
{
    const apx_backend *be = pr->mb->be;
    struct sockaddr_un su;
    const struct sockaddr *sa;
    socklen_t salen;
    int family, one = 1, err;

    if (be->uds_path) {
        memset(&su, 0, sizeof(su));
        su.sun_family = AF_UNIX;
        /* the length was checked when the configuration was read */
        apr_cpystrn(su.sun_path, be->uds_path, sizeof(su.sun_path));
        sa = (const struct sockaddr *)&su;
        salen = sizeof(su);
        family = AF_UNIX;
    } else if (be->addr) {
        /* the first address: a check says whether the member answers
         * there, not which of its addresses would */
        sa = (const struct sockaddr *)&be->addr->sa;
        salen = be->addr->salen;
        family = be->addr->family;
    } else {
        return finish(pr, 0, 0, APX_CHECK_ERR_CONNECT, EADDRNOTAVAIL);
    }
    pr->fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (pr->fd < 0)
        return finish(pr, 0, 0, APX_CHECK_ERR_RESOURCE, errno);
    if (family != AF_UNIX)
        setsockopt(pr->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(pr->fd, sa, salen) == 0) {
        pr->step = P_CONNECTING;
        return S_NEXT;
    }
    err = errno;
    if (err == EINPROGRESS) {
        pr->step = P_CONNECTING;
        *want = APX_EV_OUT;
        return S_WAIT;
    }
    if (err == EAGAIN && family == AF_UNIX) {
        close_probe(pr);
        *want = 0;                  /* a timer: P_CONNECT again */
        return S_WAIT;
    }
    return finish(pr, 0, 0, APX_CHECK_ERR_CONNECT, err);
}

static int step_connected(probe *pr)
{
    int err = 0;
    socklen_t len = sizeof(err);

    if (getsockopt(pr->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        err = errno;
    if (err)
        return finish(pr, 0, 0, APX_CHECK_ERR_CONNECT, err);
    if (pr->mb->be->tls) {
        pr->ssl = apx_tls_new(pr->mb->be->tls_origin, pr->fd);
        if (!pr->ssl)
            return finish(pr, 0, 0, APX_CHECK_ERR_RESOURCE, ENOMEM);
        pr->step = P_HANDSHAKE;
    } else {
        pr->step = P_SEND;
    }
    return S_NEXT;
}

static int step_handshake(probe *pr, unsigned *want)
{
    apr_pool_t *tmp;
    const char *why;

    if (apx_tls_handshake(pr->ssl, want) == 0) {
        pr->step = P_SEND;
        return S_NEXT;
    }
    if (*want)
        return S_WAIT;
    /* empties this thread's OpenSSL error queue (a worker's pools are not
     * ours: a pool of its own for the text); the reason shows in
     * check_error=tls and at trace level */
    if (apr_pool_create(&tmp, NULL) == APR_SUCCESS) {
        apx_tls_failure(pr->ssl, tmp, &why);
        if (APLOGtrace2(chk_server))
            ap_log_error(APLOG_MARK, APLOG_TRACE2, 0, chk_server,
                         "balancer %s: check of %s: TLS: %s", pr->b->name,
                         pr->mb->url, why);
        apr_pool_destroy(tmp);
    }
    return finish(pr, 0, 0, APX_CHECK_ERR_TLS, EPROTO);
}

static int step_send(probe *pr, unsigned *want)
{
    ssize_t n;

    while (pr->off < pr->req_len) {
        if (pr->ssl) {
            n = apx_tls_write(pr->ssl, pr->req + pr->off,
                              pr->req_len - pr->off, want);
            if (n < 0 && *want)
                return S_WAIT;
        } else {
            n = send(pr->fd, pr->req + pr->off, pr->req_len - pr->off,
                     MSG_NOSIGNAL);
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                *want = APX_EV_OUT;
                return S_WAIT;
            }
            if (n < 0 && errno == EINTR)
                continue;
        }
        if (n <= 0)
            return finish(pr, 0, 0, APX_CHECK_ERR_CLOSED,
                          n < 0 ? errno : ECONNRESET);
        pr->off += (apr_size_t)n;
    }
    pr->off = 0;
    pr->step = P_RECV;
    return S_NEXT;
}

/* "HTTP/1.x NNN" at the start of buf: the status, or 0. */
static unsigned status_of(const char *buf, apr_size_t len)
{
    if (len < 12 || memcmp(buf, "HTTP/1.", 7) || !apr_isdigit(buf[7])
        || buf[8] != ' ' || !apr_isdigit(buf[9]) || !apr_isdigit(buf[10])
        || !apr_isdigit(buf[11]) || (len > 12 && buf[12] != ' '
                                     && buf[12] != '\r' && buf[12] != '\n'))
        return 0;
    return (unsigned)((buf[9] - '0') * 100 + (buf[10] - '0') * 10
                      + (buf[11] - '0'));
}

static int step_recv(probe *pr, unsigned *want)
{
    const apx_check_conf *cc = pr->b->check;
    unsigned status;
    ssize_t n;

    for (;;) {
        if (memchr(pr->buf, '\n', pr->off) || pr->off == sizeof(pr->buf))
            break;
        if (pr->ssl) {
            n = apx_tls_read(pr->ssl, pr->buf + pr->off,
                             sizeof(pr->buf) - pr->off, want);
            if (n < 0 && *want)
                return S_WAIT;
        } else {
            n = recv(pr->fd, pr->buf + pr->off, sizeof(pr->buf) - pr->off,
                     0);
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                *want = APX_EV_IN;
                return S_WAIT;
            }
            if (n < 0 && errno == EINTR)
                continue;
        }
        if (n < 0)
            return finish(pr, 0, 0, APX_CHECK_ERR_CLOSED, errno);
        if (n == 0)
            break;
        pr->off += (apr_size_t)n;
    }
    status = status_of(pr->buf, pr->off);
    if (!status)
        return finish(pr, 0, 0, pr->off ? APX_CHECK_ERR_RESPONSE
                                        : APX_CHECK_ERR_CLOSED, 0);
    if (status < cc->expect_lo || status > cc->expect_hi)
        return finish(pr, 0, status, APX_CHECK_ERR_STATUS, 0);
    return finish(pr, 1, status, APX_CHECK_ERR_NONE, 0);
}

/* ------------------------------------------------------------------ */
/* driving                                                              */

static void probe_fire(apx_park *p, apr_thread_t *thd);

/* Parks the probe until its fd is ready for `want` (0: a timer only) or
 * its deadline. */
static void park_probe(probe *pr, unsigned want, apr_time_t until)
{
    apr_time_t now = apr_time_now();

    apx_park_init(&pr->park, probe_fire, pr);
    pr->park.fd[0] = want ? pr->fd : -1;
    pr->park.want[0] = want;
    pr->park.flags = APX_PARK_IDLE;
    pr->park.timeout = until > now ? until - now : 1;
    if (!apx_ch || !apx_ch->engine
        || apx_park_submit(apx_ch->engine, &pr->park) != APR_SUCCESS)
        abandon_probe(pr);
}

/* Takes steps until the probe must wait (parked) or has its verdict. */
static void run_probe(probe *pr)
{
    unsigned want;
    int rc;

    for (;;) {
        want = 0;
        switch (pr->step) {
        case P_CONNECT:
            rc = step_connect(pr, &want);
            break;
        case P_CONNECTING:
            rc = step_connected(pr);
            break;
        case P_HANDSHAKE:
            rc = step_handshake(pr, &want);
            break;
        case P_SEND:
            rc = step_send(pr, &want);
            break;
        default:
            rc = step_recv(pr, &want);
            break;
        }
        if (rc == S_DONE)
            return;
        if (rc == S_WAIT) {
            apr_time_t until = pr->deadline;

            if (!want && until > apr_time_now() + CHECK_UNIX_RETRY)
                until = apr_time_now() + CHECK_UNIX_RETRY;
            park_probe(pr, want, until);
            return;
        }
    }
}

static void probe_fire(apx_park *p, apr_thread_t *thd)
{
    probe *pr = p->baton;

    if (p->why & (APX_EV_SHUTDOWN | APX_EV_SHED)) {
        abandon_probe(pr);
        return;
    }
    if ((p->why & APX_EV_TIMEOUT) && apr_time_now() >= pr->deadline) {
        finish(pr, 0, 0, APX_CHECK_ERR_TIMEOUT, ETIMEDOUT);
        return;
    }
    /* readiness, a hangup or an error: the step that waited says which */
    run_probe(pr);
}

static void start_probe(probe *pr, apr_time_t now)
{
    const apx_check_conf *cc = pr->b->check;

    pr->started = now;
    pr->deadline = now + cc->timeout;
    pr->step = P_CONNECT;
    pr->off = 0;
    pr->fd = -1;
    pr->ssl = NULL;
    __atomic_store_n(&pr->sh->prober, (apr_int32_t)getpid(),
                     __ATOMIC_RELEASE);
    run_probe(pr);
}

/* ------------------------------------------------------------------ */
/* the timer                                                            */

static void tick_fire(apx_park *p, apr_thread_t *thd)
{
    apr_time_t now, due;
    unsigned i;

    if ((p->why & APX_EV_SHUTDOWN) || !apx_ch || !apx_ch->engine
        || apx_engine_is_stopping(apx_ch->engine)
        || apr_atomic_read32(&apx_ch->stopping)) {
        apx_timer_stop(&chk_tick);
        return;
    }
    now = apr_time_now();
    for (i = 0; i < nprobes; i++) {
        probe *pr = &probes[i];

        if (apr_atomic_read32(&pr->busy))
            continue;
        due = __atomic_load_n(&pr->sh->next_due, __ATOMIC_ACQUIRE);
        if (now < due)
            continue;
        /* the lease: one child wins each interval */
        if (!__atomic_compare_exchange_n(&pr->sh->next_due, &due,
                                         now + pr->b->check->interval, 0,
                                         __ATOMIC_ACQ_REL,
                                         __ATOMIC_ACQUIRE))
            continue;
        apr_atomic_set32(&pr->busy, 1);
        start_probe(pr, now);
    }
    apx_timer_again(&chk_tick, tick_every);
}

void apx_checks_start(void)
{
    if (nprobes)
        apx_timer_start(&chk_tick, tick_every);
}

/* ------------------------------------------------------------------ */
/* child_init                                                           */

/* After the engine is destroyed (a pre-cleanup of pchild): what it
 * abandoned mid-probe is closed here. */
static apr_status_t checks_cleanup(void *data)
{
    unsigned i;

    for (i = 0; i < nprobes; i++)
        close_probe(&probes[i]);
    nprobes = 0;
    probes = NULL;
    return APR_SUCCESS;
}

void apx_checks_child_init(apr_pool_t *pchild, server_rec *s)
{
    apr_array_header_t *all = apx_gconf.balancers;
    apr_interval_time_t shortest = 0;
    unsigned n = 0, k = 0;
    int i, j;

    probes = NULL;
    nprobes = 0;
    /* idle: a stopping child dispatches it at once (and it stops) */
    apx_timer_init(&chk_tick, tick_fire, APX_PARK_IDLE);
    chk_server = s;
    for (i = 0; all && i < all->nelts; i++) {
        apx_balancer *b = APR_ARRAY_IDX(all, i, apx_balancer *);

        if (!b->check)
            continue;
        n += (unsigned)b->members->nelts;
        if (!shortest || b->check->interval < shortest)
            shortest = b->check->interval;
    }
    if (!n || !apx_mshm_at(0))
        return;
    if (!apx_ch || !apx_ch->mpm_async) {
        /* a probe parks: without the engine there is nothing to run it */
        ap_log_error(APLOG_MARK, APLOG_WARNING, 0, s, APXLOGNO(00048)
                     "AsyncProxyHealthCheck: the MPM (%s) is not "
                     "asynchronous: no health checks run in this child; "
                     "members are judged by their requests only "
                     "(failures=)", ap_show_mpm());
        return;
    }
    probes = apr_pcalloc(pchild, n * sizeof(*probes));
    for (i = 0; all && i < all->nelts; i++) {
        apx_balancer *b = APR_ARRAY_IDX(all, i, apx_balancer *);
        const apx_check_conf *cc = b->check;

        if (!cc)
            continue;
        for (j = 0; j < b->members->nelts; j++) {
            probe *pr = &probes[k++];
            const apx_member *mb = &APR_ARRAY_IDX(b->members, j, apx_member);

            pr->b = b;
            pr->mb = mb;
            pr->sh = &apx_mshm_at(mb->gidx)->chk;
            pr->fd = -1;
            pr->req = apr_psprintf(pchild, "%s %s HTTP/1.1\r\nHost: %s\r\n"
                                   "User-Agent: mod_asyncproxy-check\r\n"
                                   "Connection: close\r\n\r\n", cc->method,
                                   cc->path, cc->host ? cc->host
                                                      : mb->host_hdr);
            pr->req_len = strlen(pr->req);
            apx_park_init(&pr->park, probe_fire, pr);
        }
    }
    nprobes = k;
    tick_every = shortest / 8;
    if (tick_every < CHECK_TICK_MIN)
        tick_every = CHECK_TICK_MIN;
    if (tick_every > CHECK_TICK_MAX)
        tick_every = CHECK_TICK_MAX;
    apr_pool_cleanup_register(pchild, NULL, checks_cleanup,
                              apr_pool_cleanup_null);
}
