/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* t/unit/poller.c — the engine with real threads, real sockets and the real
 * clock (the poller reads CLOCK_MONOTONIC itself; the timeouts used here are
 * 20-50 ms so the whole test stays short). The wake API has its own test,
 * t/unit/poller_wake.c. Waits are bounded: a missing dispatch fails the
 * test instead of hanging it. */
#include "poller_harness.h"

/* ----------------------------------------------------------------- tests */

static void test_events(apr_pool_t *pool)
{
    apx_engine *e = start_engine(pool, 1, 1, apr_time_from_sec(10));
    apx_engine_stats st;
    rec r;
    int sv[2];
    apr_time_t t0;

    ok(e != NULL, "engine started");
    ok(apx_engine_current_thread() == NULL, "no engine thread on the main thread");

    /* readable, made so by another thread (this one) after parking */
    socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
    rec_init(&r);
    r.p.fd[0] = sv[0];
    r.p.want[0] = APX_EV_IN;
    r.p.timeout = apr_time_from_sec(10);
    is_int(apx_park_submit(e, &r.p), APR_SUCCESS, "readable: submitted");
    WAIT_STATS(e, st, st.parked == 1, 2000);
    is_int(st.parked, 1, "readable: parked");
    is_int(calls_of(&r), 0, "readable: nothing before data");
    ok(write(sv[1], "x", 1) == 1, "peer writes");
    is_int(wait_calls(&r, 1, 5000), 1, "readable: dispatched");
    is_int(r.why, APX_EV_IN, "readable: why == IN");
    ok(r.got[0] == APX_EV_IN && r.got[1] == 0, "readable: got[0] IN");
    ok(r.thd_ok, "dispatch gets its worker's apr_thread_t, == current_thread()");
    ok(r.p.parked_at > 0, "parked_at set");
    ok(r.sig_ok, "workers run with asynchronous signals blocked, faults not");

    /* writable: re-park the same record on OUT */
    r.p.want[0] = APX_EV_OUT;
    is_int(apx_park_submit(e, &r.p), APR_SUCCESS, "writable: re-submitted after dispatch");
    is_int(wait_calls(&r, 2, 5000), 2, "writable: dispatched");
    is_int(r.why, APX_EV_OUT, "writable: why == OUT");

    /* closed by the peer */
    r.p.want[0] = APX_EV_IN;
    {
        char c;
        ok(read(sv[0], &c, 1) == 1, "drained the byte");
    }
    is_int(apx_park_submit(e, &r.p), APR_SUCCESS, "hangup: parked");
    close(sv[1]);
    is_int(wait_calls(&r, 3, 5000), 3, "hangup: dispatched");
    ok(r.why & APX_EV_HUP, "hangup: why has HUP");
    ok(!(r.why & APX_EV_TIMEOUT), "hangup: no TIMEOUT");
    close(sv[0]);

    /* timeout on a quiet socket */
    socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
    rec_init(&r);
    r.p.fd[0] = sv[0];
    r.p.want[0] = APX_EV_IN;
    r.p.timeout = 30000;
    t0 = mono_now();
    is_int(apx_park_submit(e, &r.p), APR_SUCCESS, "timeout: parked with 30 ms");
    is_int(wait_calls(&r, 1, 5000), 1, "timeout: dispatched");
    is_int(r.why, APX_EV_TIMEOUT, "timeout: why == TIMEOUT only");
    ok(r.at - t0 >= 30000, "timeout: not before the deadline (%ld us)", (long)(r.at - t0));
    ok(r.at - t0 < 1000000, "timeout: soon after it");
    stats(e, &st);
    ok(st.timeouts_total >= 1, "timeouts counted");
    close(sv[0]);
    close(sv[1]);

    /* timer only */
    rec_init(&r);
    r.p.timeout = 20000;
    t0 = mono_now();
    is_int(apx_park_submit(e, &r.p), APR_SUCCESS, "timer only: parked");
    is_int(wait_calls(&r, 1, 5000), 1, "timer only: dispatched");
    is_int(r.why, APX_EV_TIMEOUT, "timer only: TIMEOUT");
    ok(r.at - t0 >= 20000, "timer only: after 20 ms");

    /* run_submit */
    rec_init(&r);
    is_int(apx_run_submit(e, &r.p), APR_SUCCESS, "run_submit accepted");
    is_int(wait_calls(&r, 1, 5000), 1, "run_submit: dispatched");
    is_int(r.why, APX_EV_RUN, "run_submit: why == RUN");
    ok(r.thd_ok, "run_submit: on a worker");
    stats(e, &st);
    ok(st.runs_total >= 1 && st.dispatched_total >= 6 && st.parks_total >= 5,
       "totals counted (runs %llu, dispatched %llu, parks %llu)",
       (unsigned long long)st.runs_total, (unsigned long long)st.dispatched_total,
       (unsigned long long)st.parks_total);
    ok(flush(e), "flushed");
    is_int(calls_of(&r), 1, "dispatched once only");

    apx_engine_destroy(e, NULL);
}

static void test_two_fds(apr_pool_t *pool)
{
    apx_engine *e = start_engine(pool, 1, 1, apr_time_from_sec(10));
    rec r;
    int a[2], b[2];

    socketpair(AF_UNIX, SOCK_STREAM, 0, a);
    socketpair(AF_UNIX, SOCK_STREAM, 0, b);

    /* the second fd fires */
    rec_init(&r);
    r.p.fd[0] = a[0];
    r.p.want[0] = APX_EV_IN;
    r.p.fd[1] = b[0];
    r.p.want[1] = APX_EV_IN;
    r.p.timeout = apr_time_from_sec(10);
    apx_park_submit(e, &r.p);
    ok(write(b[1], "y", 1) == 1, "peer of fd[1] writes");
    is_int(wait_calls(&r, 1, 5000), 1, "two fds: dispatched on fd[1]");
    ok(r.got[1] == APX_EV_IN && r.got[0] == 0, "two fds: got[1] IN, got[0] nothing");

    /* the first fd fires (fd[1] still readable would fire too: drain it) */
    {
        char c;
        ok(read(b[0], &c, 1) == 1, "drained fd[1]");
    }
    apx_park_submit(e, &r.p);
    ok(write(a[1], "z", 1) == 1, "peer of fd[0] writes");
    is_int(wait_calls(&r, 2, 5000), 2, "two fds: dispatched on fd[0]");
    ok(r.got[0] == APX_EV_IN && r.got[1] == 0, "two fds: got[0] IN, got[1] nothing");

    /* both ready in the same epoll batch: one dispatch with both bits */
    ok(write(b[1], "y", 1) == 1, "fd[1] readable too");
    apx_park_submit(e, &r.p);
    is_int(wait_calls(&r, 3, 5000), 3, "two fds ready: dispatched");
    ok(r.got[0] == APX_EV_IN && r.got[1] == APX_EV_IN, "both got[] filled");
    ok(flush(e), "flushed");
    is_int(calls_of(&r), 3, "dispatched once for the two events");

    /* fd[0] unused, fd[1] only; its peer closing */
    rec_init(&r);
    r.p.fd[1] = b[0];
    r.p.want[1] = 0;    /* only hangup is of interest */
    apx_park_submit(e, &r.p);
    close(b[1]);
    is_int(wait_calls(&r, 1, 5000), 1, "fd[1] only, watched for hangup: dispatched");
    ok((r.got[1] & APX_EV_HUP) && r.got[0] == 0, "got[1] HUP");

    close(a[0]);
    close(a[1]);
    close(b[0]);
    apx_engine_destroy(e, NULL);
}

static void test_bad_fds(apr_pool_t *pool)
{
    apx_engine *e = start_engine(pool, 1, 1, apr_time_from_sec(10));
    rec r, r2;
    int sv[2], closed_fd;
    FILE *f;

    socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
    closed_fd = dup(sv[0]);
    close(closed_fd);

    rec_init(&r);
    r.p.fd[0] = closed_fd;
    r.p.want[0] = APX_EV_IN;
#ifdef APX_DEBUG
    /* debug builds ask fcntl() at the submit */
    is_int(apx_park_submit(e, &r.p), APR_EINVAL, "closed fd: APR_EINVAL at once (APX_DEBUG)");
#else
    /* production builds leave it to epoll_ctl() in the poller (EBADF) */
    r.p.timeout = apr_time_from_sec(10);
    is_int(apx_park_submit(e, &r.p), APR_SUCCESS, "closed fd: taken (no fcntl without APX_DEBUG)");
    is_int(wait_calls(&r, 1, 5000), 1, "... and dispatched at once");
    ok(r.why == APX_EV_ERR && r.got[0] == APX_EV_ERR && r.got[1] == 0,
       "... with ERR on that fd (why %#x, got[0] %#x)", r.why, r.got[0]);
    rec_init(&r);
    r.p.want[0] = APX_EV_IN;
#endif
    r.p.fd[0] = -7;
    is_int(apx_park_submit(e, &r.p), APR_EINVAL, "negative fd other than -1: APR_EINVAL");
    r.p.fd[0] = sv[0];
    r.p.fd[1] = sv[0];
    is_int(apx_park_submit(e, &r.p), APR_EINVAL, "same fd twice: APR_EINVAL");
    r.p.fd[1] = -1;
    r.p.dispatch = NULL;
    is_int(apx_park_submit(e, &r.p), APR_EINVAL, "no dispatch callback: APR_EINVAL");
    r.p.dispatch = on_dispatch;

    /* twice while parked */
    r.p.timeout = apr_time_from_sec(10);
    is_int(apx_park_submit(e, &r.p), APR_SUCCESS, "parked");
    is_int(apx_park_submit(e, &r.p), APR_EINVAL, "the same record again while parked: APR_EINVAL");
    is_int(apx_run_submit(e, &r.p), APR_EINVAL, "run_submit of a parked record: APR_EINVAL");

    /* a second record on the same fd: epoll refuses (EEXIST): ERR */
    rec_init(&r2);
    r2.p.fd[0] = sv[0];
    r2.p.want[0] = APX_EV_IN;
    is_int(apx_park_submit(e, &r2.p), APR_SUCCESS, "another record on a parked fd is taken");
    is_int(wait_calls(&r2, 1, 5000), 1, "... and dispatched at once");
    ok((r2.why & APX_EV_ERR) && r2.got[0] == APX_EV_ERR, "... with ERR on that fd");

    /* a regular file cannot be polled (EPERM): dispatched with ERR */
    f = tmpfile();
    rec_init(&r2);
    r2.p.fd[0] = fileno(f);
    r2.p.want[0] = APX_EV_IN;
    is_int(apx_park_submit(e, &r2.p), APR_SUCCESS, "regular file taken");
    is_int(wait_calls(&r2, 1, 5000), 1, "regular file dispatched");
    is_int(r2.got[0], APX_EV_ERR, "regular file: ERR");
    fclose(f);

    ok(write(sv[1], "x", 1) == 1, "first record's fd made readable");
    is_int(wait_calls(&r, 1, 5000), 1, "the first record is unaffected");
    is_int(r.why, APX_EV_IN, "and sees IN");
    close(sv[0]);
    close(sv[1]);
    apx_engine_destroy(e, NULL);
}

/* ------------------------------------------------------- registration */

static void ctl_snap(unsigned c[4])
{
    int k;

    for (k = 0; k < 4; k++)
        c[k] = __atomic_load_n(&ctl_calls[k], __ATOMIC_RELAXED);
}

/* epoll_ctl calls by op since the snapshot c, as "ADD/MOD/DEL". */
static int ctl_since(const unsigned c[4], unsigned add, unsigned mod, unsigned del)
{
    unsigned now[4];

    ctl_snap(now);
    return now[EPOLL_CTL_ADD] - c[EPOLL_CTL_ADD] == add
        && now[EPOLL_CTL_MOD] - c[EPOLL_CTL_MOD] == mod
        && now[EPOLL_CTL_DEL] - c[EPOLL_CTL_DEL] == del;
}

/* Returns once the poller has made at least one full pass after the call:
 * events already pending on fds when it is called have been handled. A
 * timer-only record of 1 ms is submitted (its eventfd write lands behind
 * those events) and waited for. */
static int poller_pass(apx_engine *e)
{
    rec m;

    rec_init(&m);
    m.p.timeout = 1000;
    if (apx_park_submit(e, &m.p) != APR_SUCCESS)
        return 0;
    return wait_calls(&m, 1, 5000) == 1 && m.why == APX_EV_TIMEOUT;
}

/* fds stay registered across parks (ONESHOT, re-armed with MOD): one
 * epoll_ctl per fd per park, none at dispatch; an fd that did not fire
 * (deadline, wake, the other fd of the record) stays armed, and what it
 * reports after its record left reaches nobody; a number reused by another
 * file, and an old file still alive under a reused number, are told apart. */
static void test_registration(apr_pool_t *pool)
{
    apx_engine *e = start_engine(pool, 1, 1, apr_time_from_sec(10));
    unsigned c[4], ev0;
    rec r, r2;
    int a[2], b[2], d[2], x[2], n, keep;
    char ch;

    socketpair(AF_UNIX, SOCK_STREAM, 0, a);
    socketpair(AF_UNIX, SOCK_STREAM, 0, b);
    socketpair(AF_UNIX, SOCK_STREAM, 0, x);

    /* first park of a number: ADD; dispatch: nothing */
    rec_init(&r);
    r.p.fd[0] = a[0];
    r.p.want[0] = APX_EV_IN;
    r.p.timeout = apr_time_from_sec(10);
    ctl_snap(c);
    apx_park_submit(e, &r.p);
    ok(write(a[1], "x", 1) == 1, "peer writes");
    is_int(wait_calls(&r, 1, 5000), 1, "first park: dispatched");
    is_int(r.why, APX_EV_IN, "with IN");
    ok(ctl_since(c, 1, 0, 0), "first park: one ADD, no DEL at the dispatch");
    ok(read(a[0], &ch, 1) == 1, "drained");

    /* the next park of the same fd: one MOD */
    ctl_snap(c);
    apx_park_submit(e, &r.p);
    ok(write(a[1], "x", 1) == 1, "peer writes");
    is_int(wait_calls(&r, 2, 5000), 2, "second park: dispatched");
    is_int(r.why, APX_EV_IN, "with IN");
    ok(ctl_since(c, 0, 1, 0), "second park: one MOD, nothing else");
    ok(read(a[0], &ch, 1) == 1, "drained");

    /* ended by its deadline: the fd stays armed; its readiness afterwards
     * reaches nobody (an APX_DEBUG build aborts on a misdelivery) */
    r.p.timeout = 20000;
    ctl_snap(c);
    apx_park_submit(e, &r.p);
    is_int(wait_calls(&r, 3, 5000), 3, "deadline: dispatched");
    is_int(r.why, APX_EV_TIMEOUT, "with TIMEOUT");
    ok(ctl_since(c, 0, 1, 0), "deadline: the park's MOD only, no DEL");
    ev0 = __atomic_load_n(&fd_events, __ATOMIC_RELAXED);
    ok(write(a[1], "x", 1) == 1, "peer writes after the deadline");
    ok(poller_pass(e) && poller_pass(e), "two poller passes");
    ok(flush(e), "flushed");
    is_int(calls_of(&r), 3, "the late readiness dispatches nothing");
    is_int(__atomic_load_n(&fd_events, __ATOMIC_RELAXED) - ev0, 1,
           "it was reported once (ONESHOT), not on every pass");
    r.p.timeout = apr_time_from_sec(10);
    ctl_snap(c);
    apx_park_submit(e, &r.p);
    is_int(wait_calls(&r, 4, 5000), 4, "parked again (ONESHOT had disabled the fd): "
           "the pending byte is reported");
    ok(r.why == APX_EV_IN && ctl_since(c, 0, 1, 0), "IN, after one MOD");
    ok(read(a[0], &ch, 1) == 1, "drained");

    /* ended by a wake: the same */
    apx_park_arm_wake(&r.p);
    ctl_snap(c);
    apx_park_submit(e, &r.p);
    ok(poller_pass(e), "armed record parked");
    is_int(apx_park_wake(e, &r.p), 1, "woken");
    is_int(wait_calls(&r, 5, 5000), 5, "dispatched");
    is_int(r.why, APX_EV_WAKE, "with WAKE");
    ok(ctl_since(c, 0, 1, 0), "wake: the park's MOD only, no DEL");
    ok(write(a[1], "x", 1) == 1, "peer writes after the wake");
    ok(poller_pass(e), "a poller pass");
    is_int(calls_of(&r), 5, "the late readiness dispatches nothing");
    rec_init(&r2);              /* another record on the same fd */
    r2.p.fd[0] = a[0];
    r2.p.want[0] = APX_EV_IN;
    r2.p.timeout = apr_time_from_sec(10);
    apx_park_submit(e, &r2.p);
    is_int(wait_calls(&r2, 1, 5000), 1, "another record parked on the fd gets its event");
    ok(r2.why == APX_EV_IN && r2.got[0] == APX_EV_IN, "IN, not ERR");
    ok(read(a[0], &ch, 1) == 1, "drained");

    /* two fds, one fires: the other stays armed for nobody */
    rec_init(&r);
    r.p.fd[0] = x[0];
    r.p.want[0] = APX_EV_IN;
    r.p.fd[1] = b[0];
    r.p.want[1] = 0;            /* hangup only */
    r.p.timeout = apr_time_from_sec(10);
    ok(write(x[1], "x", 1) == 1, "fd[0] readable");
    apx_park_submit(e, &r.p);
    is_int(wait_calls(&r, 1, 5000), 1, "two fds: dispatched");
    ok(r.got[0] == APX_EV_IN && r.got[1] == 0, "by fd[0]");
    close(b[1]);
    ok(poller_pass(e), "fd[1]'s peer hung up; a poller pass");
    ok(flush(e), "flushed");
    is_int(calls_of(&r), 1, "the hangup on the released fd[1] dispatches nothing");
    rec_init(&r2);
    r2.p.fd[1] = b[0];
    r2.p.want[1] = 0;
    r2.p.timeout = apr_time_from_sec(10);
    ctl_snap(c);
    apx_park_submit(e, &r2.p);
    is_int(wait_calls(&r2, 1, 5000), 1, "parked again for hangup: dispatched");
    ok((r2.got[1] & APX_EV_HUP) && r2.got[0] == 0 && ctl_since(c, 0, 1, 0),
       "HUP on fd[1], after one MOD (got[1] %#x)", r2.got[1]);

    /* the owner closes an fd, a new file takes the number: MOD fails with
     * ENOENT, the poller ADDs */
    n = b[0];
    socketpair(AF_UNIX, SOCK_STREAM, 0, d);     /* before: not on n */
    close(b[0]);
    ok(dup2(d[0], n) == n, "a new socket under the closed fd's number");
    close(d[0]);
    rec_init(&r);
    r.p.fd[0] = n;
    r.p.want[0] = APX_EV_IN;
    r.p.timeout = apr_time_from_sec(10);
    ctl_snap(c);
    apx_park_submit(e, &r.p);
    ok(write(d[1], "x", 1) == 1, "its peer writes");
    is_int(wait_calls(&r, 1, 5000), 1, "reused number: dispatched");
    ok(r.why == APX_EV_IN && ctl_since(c, 1, 1, 0), "IN, after MOD (ENOENT) and ADD");
    ok(read(n, &ch, 1) == 1, "drained");
    close(d[1]);
    /* n stays open: its socket's peer is closed now, but it is drained and
     * parks no more; the number is reused again below */

    /* an old file still alive under a reused number: its registration
     * stays in the set, armed; its event must not reach the new record */
    socketpair(AF_UNIX, SOCK_STREAM, 0, b);
    rec_init(&r);
    r.p.fd[0] = x[0];           /* still readable: fires at once */
    r.p.want[0] = APX_EV_IN;
    r.p.fd[1] = b[0];           /* watched for hangup, never fires */
    r.p.want[1] = 0;
    r.p.timeout = apr_time_from_sec(10);
    apx_park_submit(e, &r.p);
    is_int(wait_calls(&r, 1, 5000), 1, "dispatched by fd[0], fd[1] left armed");
    keep = dup(b[0]);           /* the file outlives its number */
    socketpair(AF_UNIX, SOCK_STREAM, 0, d);
    ok(keep >= 0 && dup2(d[0], b[0]) == b[0], "the number now names another socket");
    close(d[0]);
    rec_init(&r2);
    r2.p.fd[0] = b[0];
    r2.p.want[0] = APX_EV_IN;
    r2.p.timeout = apr_time_from_sec(10);
    ctl_snap(c);
    apx_park_submit(e, &r2.p);
    ok(poller_pass(e), "a new record parked on the number");
    ok(ctl_since(c, 1, 1, 0), "MOD (ENOENT: the old file's entry is unreachable by "
       "number) and ADD");
    close(b[1]);                /* the old file's peer hangs up */
    ok(poller_pass(e), "the old file's registration fired; a poller pass");
    is_int(calls_of(&r2), 0, "its hangup does not reach the new record");
    is_int(calls_of(&r), 1, "nor the old one");
    ok(write(d[1], "x", 1) == 1, "the new socket's peer writes");
    is_int(wait_calls(&r2, 1, 5000), 1, "the new record dispatched");
    ok(r2.why == APX_EV_IN && r2.got[0] == APX_EV_IN, "with IN only (why %#x)", r2.why);

    apx_engine_destroy(e, NULL);
    close(keep);
    close(b[0]);
    close(d[1]);
    close(n);
    close(a[0]);
    close(a[1]);
    close(x[0]);
    close(x[1]);
}

/* 10,000 records from 4 threads at once: eventfds made readable before or
 * after the hand-over, and timer-only records. */
enum { MANY = 10000, SUBMITTERS = 4 };

typedef struct many_rec {
    apx_park p;
    int kind;               /* 0 ready at once, 1 readable later, 2 timer */
    int calls;              /* atomic */
    unsigned why;
} many_rec;

static int many_done;       /* atomic */
static many_rec *many;
static int many_fd_records;

static void many_dispatch(apx_park *p, apr_thread_t *thd)
{
    many_rec *m = p->baton;

    m->why = p->why;
    __atomic_fetch_add(&m->calls, 1, __ATOMIC_RELAXED);
    pthread_mutex_lock(&mtx);
    many_done++;
    if (many_done >= MANY)
        pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mtx);
}

typedef struct submitter {
    apx_engine *e;
    int from, to;
    int failures;
} submitter;

static void *submit_many(void *arg)
{
    submitter *s = arg;
    uint64_t one = 1;
    int i;

    for (i = s->from; i < s->to; i++)
        if (apx_park_submit(s->e, &many[i].p) != APR_SUCCESS)
            s->failures++;
    /* the "peers": make the kind-1 records readable after the hand-over */
    for (i = s->from; i < s->to; i++)
        if (many[i].kind == 1 && write(many[i].p.fd[0], &one, sizeof(one)) != sizeof(one))
            s->failures++;
    return NULL;
}

static void test_many(apr_pool_t *pool)
{
    apx_engine *e = start_engine(pool, 2, 4, apr_time_from_sec(10));
    pthread_t th[SUBMITTERS];
    submitter sub[SUBMITTERS];
    struct rlimit rl;
    apx_engine_stats st;
    uint64_t one = 1;
    struct timespec until;
    int i, once = 1, why_ok = 1, failures = 0, fd_budget;

    /* fds: raise the soft limit when we may, else use fewer fd records */
    getrlimit(RLIMIT_NOFILE, &rl);
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    fd_budget = rl.rlim_cur > 300 ? (int)rl.rlim_cur - 200 : 0;
    if (fd_budget > MANY * 2 / 3)
        fd_budget = MANY * 2 / 3;

    many = calloc(MANY, sizeof(*many));
    many_fd_records = 0;
    for (i = 0; i < MANY; i++) {
        many_rec *m = &many[i];

        apx_park_init(&m->p, many_dispatch, m);
        m->kind = i % 3;
        if (m->kind != 2 && many_fd_records < fd_budget) {
            m->p.fd[0] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
            m->p.want[0] = APX_EV_IN;
            m->p.timeout = apr_time_from_sec(20);
            many_fd_records++;
            if (m->kind == 0 && write(m->p.fd[0], &one, sizeof(one)) != sizeof(one))
                failures++;
        }
        else {
            m->kind = 2;
            m->p.timeout = 1000 + (i % 40) * 1000;     /* 1..40 ms */
        }
    }
    diag("%d fd records, %d timer-only", many_fd_records, MANY - many_fd_records);

    for (i = 0; i < SUBMITTERS; i++) {
        sub[i].e = e;
        sub[i].from = i * (MANY / SUBMITTERS);
        sub[i].to = (i + 1) * (MANY / SUBMITTERS);
        sub[i].failures = 0;
        pthread_create(&th[i], NULL, submit_many, &sub[i]);
    }
    for (i = 0; i < SUBMITTERS; i++) {
        pthread_join(th[i], NULL);
        failures += sub[i].failures;
    }
    is_int(failures, 0, "10,000 submitted from 4 threads at once");

    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 20;
    pthread_mutex_lock(&mtx);
    while (many_done < MANY && pthread_cond_timedwait(&cv, &mtx, &until) == 0)
        ;
    pthread_mutex_unlock(&mtx);
    for (i = 0; i < MANY; i++) {
        if (__atomic_load_n(&many[i].calls, __ATOMIC_RELAXED) != 1)
            once = 0;
        if (many[i].kind == 2 ? many[i].why != APX_EV_TIMEOUT : many[i].why != APX_EV_IN)
            why_ok = 0;
    }
    pthread_mutex_lock(&mtx);
    is_int(many_done, MANY, "all 10,000 dispatched");
    pthread_mutex_unlock(&mtx);
    ok(once, "each exactly once");
    ok(why_ok, "each with the right reason (IN / TIMEOUT)");
    stats(e, &st);
    ok(st.dispatched_total == MANY && st.parks_total == MANY,
       "stats: %llu parked, %llu dispatched in total",
       (unsigned long long)st.parks_total, (unsigned long long)st.dispatched_total);
    WAIT_STATS(e, st, st.parked == 0 && st.queued == 0, 2000);
    ok(st.parked == 0 && st.queued == 0, "nothing left parked or queued");
    ok(st.workers >= 2 && st.workers <= 4, "workers within min..max (%u)", st.workers);

    apx_engine_destroy(e, NULL);
    for (i = 0; i < MANY; i++)
        if (many[i].p.fd[0] >= 0)
            close(many[i].p.fd[0]);
    free(many);
}

/* Elastic pool: min 1, max 4. Dispatches that block on a gate make the pool
 * grow; a record still gets served while three workers are stuck; the pool
 * never passes max; idle workers above min go away and are joined. */
static int gate_open, gate_entered;

static void blocking_dispatch(apx_park *p, apr_thread_t *thd)
{
    rec *r = p->baton;

    pthread_mutex_lock(&mtx);
    gate_entered++;
    pthread_cond_broadcast(&cv);
    while (!gate_open)
        pthread_cond_wait(&cv, &mtx);
    r->calls++;
    r->thd_ok = thd != NULL && apx_engine_current_thread() == thd;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mtx);
}

/* Closes the gate and hands one blocking record over. */
static void submit_blocker(apx_engine *e, rec *blk)
{
    gate_open = 0;
    gate_entered = 0;
    rec_init(blk);
    blk->p.dispatch = blocking_dispatch;
    apx_run_submit(e, &blk->p);
}

static void open_gate(void)
{
    pthread_mutex_lock(&mtx);
    gate_open = 1;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mtx);
}

static int wait_entered(int n, int ms)
{
    struct timespec until;
    int c;

    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += ms / 1000;
    pthread_mutex_lock(&mtx);
    while (gate_entered < n && pthread_cond_timedwait(&cv, &mtx, &until) == 0)
        ;
    c = gate_entered;
    pthread_mutex_unlock(&mtx);
    return c;
}

static void test_elastic(apr_pool_t *pool)
{
    int base = count_tasks();
    apx_engine *e = start_engine(pool, 1, 4, 100000 /* 100 ms */);
    apx_engine_stats st;
    rec blk[5], r;
    int sv[2], i;

    is_int(wait_tasks(base + 2, 2000), base + 2, "poller + 1 worker started");
    stats(e, &st);
    is_int(st.workers, 1, "stats: 1 worker");

    gate_open = 0;
    gate_entered = 0;
    for (i = 0; i < 3; i++) {
        rec_init(&blk[i]);
        blk[i].p.dispatch = blocking_dispatch;
        apx_run_submit(e, &blk[i].p);
    }
    is_int(wait_entered(3, 5000), 3, "three dispatches block at the same time: the pool grew");
    stats(e, &st);
    /* (a fourth may have started already: the watchdog starts one when
     * the queue makes no progress for 1 ms, which a loaded machine allows) */
    ok(st.workers >= 3 && st.workers_busy == 3, "3 workers, 3 busy (%u, %u)",
       st.workers, st.workers_busy);

    /* a socket record is still served while three workers are stuck */
    socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
    rec_init(&r);
    r.p.fd[0] = sv[0];
    r.p.want[0] = APX_EV_OUT;
    apx_park_submit(e, &r.p);
    is_int(wait_calls(&r, 1, 5000), 1, "another record is served while three block");
    ok(r.why == APX_EV_OUT && r.thd_ok, "on a fourth worker");
    stats(e, &st);
    is_int(st.workers, 4, "the pool is at max");
    is_int(wait_tasks(base + 5, 2000), base + 5, "poller + 4 workers running");

    /* at max: a fifth blocker takes the fourth worker, a sixth waits */
    for (i = 3; i < 5; i++) {
        rec_init(&blk[i]);
        blk[i].p.dispatch = blocking_dispatch;
        apx_run_submit(e, &blk[i].p);
    }
    is_int(wait_entered(4, 5000), 4, "four blocked");
    WAIT_STATS(e, st, st.queued == 1, 5000);
    ok(st.queued == 1 && st.workers == 4, "never above max: one waits in the queue "
       "(queued %u, workers %u)", st.queued, st.workers);
    is_int(count_tasks(), base + 5, "no fifth worker thread");

    open_gate();
    for (i = 0; i < 5; i++)
        is_int(wait_calls(&blk[i], 1, 5000), 1, "blocked dispatch finished");
    ok(blk[0].thd_ok && blk[4].thd_ok, "blocked ones ran on workers");

    /* shrink after 100 ms idle, down to min, threads gone */
    WAIT_STATS(e, st, st.workers == 1, 3000);
    is_int(st.workers, 1, "idle workers above min exited");
    is_int(wait_tasks(base + 2, 2000), base + 2, "their threads are gone");
    {
        engine_thread *z;
        unsigned live, zombies = 0;

        pthread_mutex_lock(&e->wq_mtx);
        live = e->live;
        for (z = e->zombies; z; z = z->next)
            zombies++;
        pthread_mutex_unlock(&e->wq_mtx);
        is_int(live, 1, "one live worker thread left");
        ok(zombies >= 1 && zombies <= 3, "exited workers are joined by the next one to exit: "
           "%u left for destroy to join", zombies);
    }

    /* and the pool grows again after shrinking */
    gate_open = 0;
    gate_entered = 0;
    for (i = 0; i < 2; i++) {
        rec_init(&blk[i]);
        blk[i].p.dispatch = blocking_dispatch;
        apx_run_submit(e, &blk[i].p);
    }
    is_int(wait_entered(2, 5000), 2, "grew again after a shrink");
    open_gate();
    for (i = 0; i < 2; i++)
        wait_calls(&blk[i], 1, 5000);

    apx_engine_destroy(e, NULL);
    is_int(wait_tasks(base, 2000), base, "destroy joined every engine thread");
    close(sv[0]);
    close(sv[1]);
}

/* stopping(): idle records go with SHUTDOWN (also ones parked later); busy
 * ones stay parked and destroy() hands them to abandoned() once. */
static void test_stopping(apr_pool_t *pool)
{
    int base = count_tasks();
    apx_engine *e = start_engine(pool, 1, 1, apr_time_from_sec(10));
    apx_engine_stats st;
    rec idle1, idle2, idle3, busy1, busy2, busy3;
    int a[2], b[2], c[2];

    socketpair(AF_UNIX, SOCK_STREAM, 0, a);
    socketpair(AF_UNIX, SOCK_STREAM, 0, b);
    socketpair(AF_UNIX, SOCK_STREAM, 0, c);

    rec_init(&idle1);           /* keep-alive connection, timed */
    idle1.p.fd[0] = a[0];
    idle1.p.want[0] = APX_EV_IN;
    idle1.p.timeout = apr_time_from_sec(10);
    idle1.p.flags = APX_PARK_IDLE;
    rec_init(&idle2);           /* idle, no deadline */
    idle2.p.flags = APX_PARK_IDLE;
    rec_init(&busy1);           /* in-flight request waiting on a backend */
    busy1.p.fd[0] = b[0];
    busy1.p.want[0] = APX_EV_IN;
    busy1.p.timeout = apr_time_from_sec(10);
    rec_init(&busy2);           /* timer only, no deadline */
    rec_init(&busy3);           /* timed, never dispatched */
    busy3.p.timeout = apr_time_from_sec(30);

    ok(!apx_engine_is_stopping(e), "not stopping yet");
    apx_park_submit(e, &idle1.p);
    apx_park_submit(e, &idle2.p);
    apx_park_submit(e, &busy1.p);
    apx_park_submit(e, &busy2.p);
    apx_park_submit(e, &busy3.p);
    WAIT_STATS(e, st, st.parked == 5, 2000);
    is_int(st.parked, 5, "five parked");

    apx_engine_stopping(e);
    ok(apx_engine_is_stopping(e), "stopping");
    is_int(wait_calls(&idle1, 1, 5000), 1, "idle socket record dispatched");
    is_int(idle1.why, APX_EV_SHUTDOWN, "with SHUTDOWN");
    is_int(wait_calls(&idle2, 1, 5000), 1, "idle untimed record dispatched");
    is_int(idle2.why, APX_EV_SHUTDOWN, "with SHUTDOWN");
    ok(flush(e), "flushed");
    ok(calls_of(&busy1) == 0 && calls_of(&busy2) == 0 && calls_of(&busy3) == 0,
       "in-flight records stay parked");
    WAIT_STATS(e, st, st.parked == 3, 2000);
    is_int(st.parked, 3, "three still parked");

    rec_init(&idle3);           /* parked after stopping: goes at once */
    idle3.p.fd[0] = c[0];
    idle3.p.want[0] = APX_EV_IN;
    idle3.p.timeout = apr_time_from_sec(10);
    idle3.p.flags = APX_PARK_IDLE;
    is_int(apx_park_submit(e, &idle3.p), APR_SUCCESS, "idle record parked after stopping");
    is_int(wait_calls(&idle3, 1, 5000), 1, "dispatched at once");
    is_int(idle3.why, APX_EV_SHUTDOWN, "with SHUTDOWN");

    apx_engine_destroy(e, on_abandoned);
    ok(busy1.abandoned == 1 && busy2.abandoned == 1 && busy3.abandoned == 1,
       "destroy hands each parked record to abandoned() once");
    ok(busy1.abandoned_ok && busy2.abandoned_ok && busy3.abandoned_ok,
       "on the destroying thread, thd NULL, why SHUTDOWN");
    ok(busy1.resubmit_rv == APR_EINVAL && busy3.resubmit_rv == APR_EINVAL,
       "submitting to a destroyed engine: APR_EINVAL");
    ok(idle1.abandoned == 0 && idle2.abandoned == 0 && idle3.abandoned == 0,
       "dispatched ones are not abandoned");
    ok(calls_of(&busy1) == 0 && calls_of(&busy2) == 0, "nor dispatched");
    is_int(wait_tasks(base, 2000), base, "every thread joined");
    close(a[0]); close(a[1]);
    close(b[0]); close(b[1]);
    close(c[0]); close(c[1]);
}

/* The awake cap: records wake at most workers_awake workers (the rest wait
 * for one of those to take them), and the watchdog adds a worker when the
 * queue makes no progress for WATCH_US because the awake ones are stuck. */
static int in_dispatch, most_in_dispatch;    /* under mtx */

static void busy_dispatch(apx_park *p, apr_thread_t *thd)
{
    apr_time_t until = mono_now() + 300;

    pthread_mutex_lock(&mtx);
    if (++in_dispatch > most_in_dispatch)
        most_in_dispatch = in_dispatch;
    pthread_mutex_unlock(&mtx);
    while (mono_now() < until)
        ;                       /* on the CPU, as a proxied request is */
    pthread_mutex_lock(&mtx);
    in_dispatch--;
    pthread_mutex_unlock(&mtx);
    on_dispatch(p, thd);
}

static apx_engine *start_capped(apr_pool_t *pool, unsigned min, unsigned max,
                                unsigned awake)
{
    apx_engine_conf conf;

    apx_engine_conf_default(&conf);
    conf.workers_min = min;
    conf.workers_max = max;
    conf.workers_awake = awake;
    return start_with(pool, &conf);
}

#define CAPPED 40

static void test_awake_cap(apr_pool_t *pool)
{
    int base = count_tasks();
    apx_engine *e = start_capped(pool, 4, 4, 1);
    apx_engine_stats st;
    rec *rs = calloc(CAPPED, sizeof(*rs)), blk, r;
    int i, served = 0;

    is_int(wait_tasks(base + 5, 2000), base + 5, "poller + 4 workers, 1 may be awake");
    /* a worker still starting counts as awake and takes a record: wait
     * until all four wait on the queue */
    for (i = 0; i < 2000; i++) {
        unsigned idle;

        pthread_mutex_lock(&e->wq_mtx);
        idle = e->idle;
        pthread_mutex_unlock(&e->wq_mtx);
        if (idle == 4)
            break;
        usleep(1000);
    }

    /* 40 records of 300 us each at once: one worker takes them in turn */
    pthread_mutex_lock(&mtx);
    in_dispatch = most_in_dispatch = 0;
    pthread_mutex_unlock(&mtx);
    for (i = 0; i < CAPPED; i++) {
        rec_init(&rs[i]);
        rs[i].p.dispatch = busy_dispatch;
    }
    for (i = 0; i < CAPPED; i++)
        apx_run_submit(e, &rs[i].p);
    for (i = 0; i < CAPPED; i++)
        served += wait_calls(&rs[i], 1, 5000);
    is_int(served, CAPPED, "every record dispatched once");
    stats(e, &st);
    /* a worker preempted for over 1 ms (a loaded machine, a sanitizer)
     * lets the watchdog wake one more: each such stall allows one */
    ok(most_in_dispatch <= 1 + (int)st.stalls_total,
       "at most one worker inside dispatch at a time (%d, %u stalls)",
       most_in_dispatch, (unsigned)st.stalls_total);

    /* the awake worker blocks: the watchdog wakes another for the next */
    submit_blocker(e, &blk);
    is_int(wait_entered(1, 5000), 1, "the awake worker blocks");
    /* every other worker back on the queue, none awake: then only the
     * watchdog can serve the next record (on a loaded machine a worker
     * woken by an earlier stall may still be about) */
    for (i = 0; i < 2000; i++) {
        unsigned idle, workers;

        pthread_mutex_lock(&e->wq_mtx);
        idle = e->idle;
        workers = e->workers;
        pthread_mutex_unlock(&e->wq_mtx);
        if (idle + 1 == workers)
            break;
        usleep(1000);
    }
    stats(e, &st);
    {
        apr_uint64_t stalls0 = st.stalls_total;

        rec_init(&r);
        apx_run_submit(e, &r.p);
        is_int(wait_calls(&r, 1, 5000), 1, "a queued record is served while it blocks");
        stats(e, &st);
        ok(st.stalls_total > stalls0, "by the watchdog (stalls %u -> %u)",
           (unsigned)stalls0, (unsigned)st.stalls_total);
    }
    open_gate();
    is_int(wait_calls(&blk, 1, 5000), 1, "blocked dispatch finished");
    apx_engine_destroy(e, on_abandoned);
    is_int(wait_tasks(base, 2000), base, "every thread joined");

    /* min 1: no idle worker to wake, the watchdog starts one */
    e = start_capped(pool, 1, 3, 1);
    submit_blocker(e, &blk);
    is_int(wait_entered(1, 5000), 1, "the only worker blocks");
    rec_init(&r);
    apx_run_submit(e, &r.p);
    is_int(wait_calls(&r, 1, 5000), 1, "the next record is served on a started worker");
    stats(e, &st);
    /* (a loaded machine may stall the queue twice: a third is allowed) */
    ok(st.workers >= 2 && st.stalls_total >= 1, "2 workers (%u), %u stalls",
       st.workers, (unsigned)st.stalls_total);
    open_gate();
    wait_calls(&blk, 1, 5000);
    apx_engine_destroy(e, on_abandoned);
    is_int(wait_tasks(base, 2000), base, "every thread joined");
    free(rs);
}

/* Records handed over before start(): queued ones run at start; with no
 * start at all, destroy abandons both kinds. */
static void test_before_start(apr_pool_t *pool)
{
    apx_engine_conf conf;
    apx_engine *e;
    rec r1, r2;
    int base = count_tasks();

    apx_engine_conf_default(&conf);
    conf.workers_min = 1;
    conf.workers_max = 2;
    ok(apx_engine_create(&e, &conf, pool) == APR_SUCCESS, "created (not started)");
    cur_engine = e;
    rec_init(&r1);
    rec_init(&r2);
    r2.p.timeout = apr_time_from_sec(10);
    is_int(apx_run_submit(e, &r1.p), APR_SUCCESS, "run_submit before start");
    is_int(apx_park_submit(e, &r2.p), APR_SUCCESS, "park_submit before start");
    is_int(count_tasks(), base, "no thread before start");
    apx_engine_destroy(e, on_abandoned);
    ok(r1.abandoned == 1 && r2.abandoned == 1 && r1.abandoned_ok && r2.abandoned_ok,
       "never started: both abandoned once");
    ok(r1.calls == 0 && r2.calls == 0, "and not dispatched");

    ok(apx_engine_create(&e, &conf, pool) == APR_SUCCESS, "created again");
    cur_engine = e;
    rec_init(&r1);
    apx_run_submit(e, &r1.p);
    ok(apx_engine_start(e) == APR_SUCCESS, "started");
    is_int(wait_calls(&r1, 1, 5000), 1, "record run_submitted before start runs");
    is_int(r1.why, APX_EV_RUN, "as RUN");
    apx_engine_destroy(e, on_abandoned);
    is_int(r1.abandoned, 0, "and is not abandoned");
    is_int(wait_tasks(base, 2000), base, "every thread joined");
}

/* apx_engine_shed_idle(): the longest parked idle records go first, across
 * their timeout queues; records that are not idle are never shed. */
static void test_shed(apr_pool_t *pool)
{
    apx_engine *e = start_engine(pool, 1, 2, apr_time_from_sec(10));
    apx_engine_stats st;
    rec old_idle, busy, mid_idle, young_idle;
    rec *order[4];
    unsigned parked = 0;
    int i;

    order[0] = &old_idle;       /* 10 s queue, parked first */
    order[1] = &busy;           /* 10 s queue, an in-flight request */
    order[2] = &mid_idle;       /* a 20 s queue of its own */
    order[3] = &young_idle;     /* 10 s queue, parked last */
    for (i = 0; i < 4; i++) {
        rec_init(order[i]);
        order[i]->p.timeout = apr_time_from_sec(i == 2 ? 20 : 10);
        order[i]->p.flags = order[i] == &busy ? 0 : APX_PARK_IDLE;
        apx_park_submit(e, &order[i]->p);
        parked++;
        WAIT_STATS(e, st, st.parked == parked, 2000);
        usleep(2000);           /* distinct park times */
    }
    is_int(st.parked, 4, "four parked");

    apx_engine_shed_idle(e, 2);
    is_int(wait_calls(&old_idle, 1, 5000), 1, "the oldest idle record is shed");
    is_int(old_idle.why, APX_EV_SHED, "with SHED");
    is_int(wait_calls(&mid_idle, 1, 5000), 1,
           "the next oldest, from another timeout queue, too");
    is_int(mid_idle.why, APX_EV_SHED, "with SHED");
    ok(flush(e), "flushed");
    ok(calls_of(&young_idle) == 0, "a younger idle record stays");
    ok(calls_of(&busy) == 0, "a record that is not idle stays");

    apx_engine_shed_idle(e, 5);
    is_int(wait_calls(&young_idle, 1, 5000), 1, "asked for more: the last idle one goes");
    ok(flush(e), "flushed");
    ok(calls_of(&busy) == 0, "the busy record is never shed");
    /* the poller publishes its parked count after it pushed the batch */
    WAIT_STATS(e, st, st.parked == 1 && st.shed_total == 3, 2000);
    is_int(st.shed_total, 3, "three shed in all");
    is_int(st.parked, 1, "one still parked");
    apx_engine_destroy(e, on_abandoned);
    is_int(busy.abandoned, 1, "the busy one is abandoned at destroy");
}

/* ---------------------------------------------------------- kept arms */

/* A record parked with keep ids (apx_park.keep): an arm that did not fire
 * is taken by the next park of the same file and mask without epoll_ctl;
 * one that fired while no park held it ends the next park wanting input at
 * once; input on a kept watch does not end it (re-armed for the hangup);
 * another id under the same number, or another mask, is armed anew. */
static void test_kept_arms(apr_pool_t *pool)
{
    apx_engine *e = start_engine(pool, 1, 1, apr_time_from_sec(10));
    apx_engine_stats st0, st;
    unsigned c[4];
    rec r, w;
    int a[2], b[2], fdnum;
    char ch;

    socketpair(AF_UNIX, SOCK_STREAM, 0, a);
    socketpair(AF_UNIX, SOCK_STREAM, 0, b);

    /* a watch on a[0] (keep 7) beside a wait on b[0]: the watch is armed
     * for input as well */
    rec_init(&r);
    r.p.fd[0] = b[0];
    r.p.want[0] = APX_EV_IN;
    r.p.fd[1] = a[0];
    r.p.want[1] = 0;
    r.p.keep[1] = 7;
    r.p.timeout = apr_time_from_sec(10);
    apx_engine_stats_get(e, &st0);
    apx_park_submit(e, &r.p);
    ok(poller_pass(e), "watch parked");
    ok(write(a[1], "p", 1) == 1, "input on the watched fd");
    ok(poller_pass(e) && poller_pass(e), "two poller passes");
    is_int(calls_of(&r), 0, "input alone does not end the watch");
    apx_engine_stats_get(e, &st);
    is_int((int)(st.rewatch_total - st0.rewatch_total), 1,
           "the watch was re-armed for the hangup only");
    ok(read(a[0], &ch, 1) == 1, "drained");
    ok(write(b[1], "r", 1) == 1, "the awaited fd fires");
    is_int(wait_calls(&r, 1, 5000), 1, "dispatched");
    ok(r.got[0] == APX_EV_IN && r.got[1] == 0, "IN on fd[0], nothing on the watch");
    ok(read(b[0], &ch, 1) == 1, "drained");

    /* the watch again (its mask is now the hangup's: armed anew), then the
     * record leaves by fd[0]; a keep-alive park of a[0] for input with the
     * same id takes the unfired watch as it is */
    ctl_snap(c);
    apx_park_submit(e, &r.p);
    ok(poller_pass(e), "parked");
    ok(ctl_since(c, 0, 2, 0), "two MODs (the watch's mask changed)");
    ok(write(b[1], "r", 1) == 1, "the awaited fd fires");
    is_int(wait_calls(&r, 2, 5000), 2, "dispatched");
    ok(read(b[0], &ch, 1) == 1, "drained");
    ctl_snap(c);
    apx_park_submit(e, &r.p);
    ok(poller_pass(e), "parked");
    ok(ctl_since(c, 0, 1, 0), "the watch's unfired arm is kept: one MOD (fd[0])");
    ok(write(b[1], "r", 1) == 1, "the awaited fd fires");
    is_int(wait_calls(&r, 3, 5000), 3, "dispatched");
    ok(read(b[0], &ch, 1) == 1, "drained");

    rec_init(&w);
    w.p.fd[0] = a[0];
    w.p.want[0] = APX_EV_IN;
    w.p.keep[0] = 7;
    w.p.timeout = apr_time_from_sec(10);
    apx_engine_stats_get(e, &st0);
    ctl_snap(c);
    apx_park_submit(e, &w.p);
    ok(poller_pass(e), "keep-alive park");
    ok(ctl_since(c, 0, 0, 0), "it took the watch's arm: no epoll_ctl");
    apx_engine_stats_get(e, &st);
    is_int((int)(st.arms_kept_total - st0.arms_kept_total), 1, "ArmsKept +1");
    ok(write(a[1], "n", 1) == 1, "the next request comes");
    is_int(wait_calls(&w, 1, 5000), 1, "the keep-alive park is dispatched");
    is_int(w.why, APX_EV_IN, "with IN");
    ok(read(a[0], &ch, 1) == 1, "drained");

    /* the watch fires while no park holds it (the next request before the
     * keep-alive park): that park ends at once, with no epoll_ctl */
    ctl_snap(c);
    apx_park_submit(e, &r.p);
    ok(write(b[1], "r", 1) == 1, "the awaited fd fires");
    is_int(wait_calls(&r, 4, 5000), 4, "dispatched");
    ok(read(b[0], &ch, 1) == 1, "drained");
    ok(write(a[1], "n", 1) == 1, "input on a[0], no park holds it");
    ok(poller_pass(e), "seen by the poller");
    apx_engine_stats_get(e, &st0);
    ctl_snap(c);
    apx_park_submit(e, &w.p);
    is_int(wait_calls(&w, 2, 5000), 2, "the keep-alive park ends at once");
    is_int(w.why, APX_EV_IN, "with IN");
    ok(ctl_since(c, 0, 0, 0), "no epoll_ctl");
    apx_engine_stats_get(e, &st);
    is_int((int)(st.arms_fired_total - st0.arms_fired_total), 1, "ArmsFired +1");
    ok(read(a[0], &ch, 1) == 1, "drained");
    /* what it took was used up: the next park arms again */
    ctl_snap(c);
    apx_park_submit(e, &w.p);
    ok(poller_pass(e), "parked again");
    ok(ctl_since(c, 0, 1, 0), "one MOD");
    is_int(calls_of(&w), 2, "nothing to report: it waits");
    ok(write(a[1], "n", 1) == 1, "input");
    is_int(wait_calls(&w, 3, 5000), 3, "dispatched");
    ok(read(a[0], &ch, 1) == 1, "drained");

    /* a keep-alive park left by its deadline stays armed; the file is
     * closed and another takes its number under another id: armed anew,
     * and its input is reported */
    w.p.timeout = 20000;
    apx_park_submit(e, &w.p);
    is_int(wait_calls(&w, 4, 5000), 4, "deadline");
    is_int(w.why, APX_EV_TIMEOUT, "with TIMEOUT");
    fdnum = a[0];
    close(a[0]);
    close(a[1]);
    socketpair(AF_UNIX, SOCK_STREAM, 0, a);
    if (a[0] != fdnum) {
        int t = a[0];
        a[0] = dup2(t, fdnum) == fdnum ? fdnum : t;
        if (a[0] != t)
            close(t);
    }
    is_int(a[0], fdnum, "a new file under the number");
    w.p.fd[0] = a[0];
    w.p.keep[0] = 8;
    w.p.timeout = apr_time_from_sec(10);
    ctl_snap(c);
    apx_park_submit(e, &w.p);
    ok(poller_pass(e), "parked");
    ok(ctl_since(c, 1, 1, 0) || ctl_since(c, 0, 1, 0),
       "armed with epoll_ctl (MOD, ADD after ENOENT)");
    ok(write(a[1], "n", 1) == 1, "input on the new file");
    is_int(wait_calls(&w, 5, 5000), 5, "dispatched");
    is_int(w.why, APX_EV_IN, "with IN");
    ok(read(a[0], &ch, 1) == 1, "drained");

    /* a hangup on a kept watch ends the park */
    r.p.fd[1] = a[0];
    r.p.keep[1] = 8;
    apx_park_submit(e, &r.p);
    ok(poller_pass(e), "watch parked");
    close(a[1]);
    is_int(wait_calls(&r, 5, 5000), 5, "the hangup ends it");
    ok(r.got[1] & APX_EV_HUP, "with HUP on the watch");

    close(a[0]);
    close(b[0]);
    close(b[1]);
    apx_engine_destroy(e, NULL);
}

int main(void)
{
    apr_pool_t *pool = harness_start();

    test_events(pool);
    test_two_fds(pool);
    test_bad_fds(pool);
    test_registration(pool);
    test_kept_arms(pool);
    test_many(pool);
    test_elastic(pool);
    test_awake_cap(pool);
    test_stopping(pool);
    test_shed(pool);
    test_before_start(pool);

    return harness_done(pool);
}
