/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* t/unit/poller_wake.c — apx_park_arm_wake()/apx_park_wake(): a parked
 * record is dispatched exactly once whatever comes first (wake, readiness,
 * hangup, deadline, stopping, destroy), with the poller held mid-pass,
 * stepped by hand, and raced by other threads (1 ms timeouts). Waits are
 * bounded: a missing dispatch fails the test instead of hanging it. */
#include "poller_harness.h"

/* ----------------------------------------------------------------- wakes */

/* Bounded wait until the poller has taken the intake. */
static int intake_taken(apx_engine *e, int ms)
{
    int i, empty = 0;

    for (i = 0; i < ms * 10; i++) {
        pthread_mutex_lock(&e->in_mtx);
        empty = e->intake.head == NULL;
        pthread_mutex_unlock(&e->in_mtx);
        if (empty)
            break;
        usleep(100);
    }
    return empty;
}

/* Holds the poller at its next push: a record it dispatches at once (a
 * regular file: ERR) makes it push a batch, and wq_mtx, taken here and left
 * locked for the caller, stops it there after its take. 1 when it took. */
static int hold_poller(apx_engine *e, rec *d, FILE *f)
{
    int i;

    rec_init(d);
    d->p.fd[0] = fileno(f);
    d->p.want[0] = APX_EV_IN;
    /* While the watchdog is on (records were queued earlier), the poller
     * takes wq_mtx before epoll_wait (watch_queue()), not only at its push:
     * held here, the poller would never take the intake (seen once under
     * TSan on a loaded machine). It turns itself off within WATCH_US once
     * the queue is empty. */
    for (i = 0; i < 50000 && __atomic_load_n(&e->watch, __ATOMIC_RELAXED); i++)
        usleep(100);
    pthread_mutex_lock(&e->wq_mtx);
    apx_park_submit(e, &d->p);
    return intake_taken(e, 2000);
}

/* The poller's take, for tests that act as the poller of an engine that
 * was never started. */
static apx_park *take_lists(apx_engine *e, park_list *in)
{
    apx_park *w;

    pthread_mutex_lock(&e->in_mtx);
    *in = e->intake;
    list_init(&e->intake);
    w = e->woken;
    e->woken = e->woken_tail = NULL;
    pthread_mutex_unlock(&e->in_mtx);
    return w;
}

static void arm_all(apx_engine *e, park_list *in, park_list *batch)
{
    apx_park *p;
    apr_time_t now = mono_now(), wall = apr_time_now();

    while ((p = list_pop(in)) != NULL)
        arm(e, p, now, wall, batch);
}

static void spin_until(apr_time_t t)
{
    while (mono_now() < t)
        ;
}

/* Wake before the submit, while parked (timer only, socket watched for
 * hangup), after the dispatch; re-arming; unarmed parks. */
static void test_wake(apr_pool_t *pool)
{
    apx_engine *e = start_engine(pool, 1, 1, apr_time_from_sec(10));
    apx_engine_stats st;
    rec r, r2;
    int sv[2];
    apr_time_t t0;

    /* unarmed: not wakeable */
    rec_init(&r);
    r.p.timeout = 20000;
    is_int(apx_park_wake(e, &r.p), 0, "unarmed record: wake returns 0");
    is_int(apx_park_submit(e, &r.p), APR_SUCCESS, "unarmed: parked");
    is_int(apx_park_wake(e, &r.p), 0, "unarmed, submitted: wake returns 0");
    is_int(wait_calls(&r, 1, 5000), 1, "unarmed: dispatched");
    is_int(r.why, APX_EV_TIMEOUT, "unarmed: by its deadline");

    /* woken before the submit */
    rec_init(&r);
    r.p.timeout = apr_time_from_sec(10);
    apx_park_arm_wake(&r.p);
    is_int(apx_park_wake(e, &r.p), 1, "wake before submit: returns 1");
    is_int(apx_park_wake(e, &r.p), 0, "a second wake: 0");
    ok(flush(e), "flushed");
    is_int(calls_of(&r), 0, "nothing happens before the submit");
    is_int(apx_park_submit(e, &r.p), APR_SUCCESS, "submitted after the wake");
    is_int(wait_calls(&r, 1, 5000), 1, "dispatched");
    is_int(r.why, APX_EV_WAKE, "why == WAKE");
    ok(r.got[0] == 0 && r.got[1] == 0 && r.thd_ok, "got[] 0, on a worker");
    is_int(apx_park_wake(e, &r.p), 0, "wake after the dispatch: 0");
    ok(flush(e), "flushed");
    is_int(calls_of(&r), 1, "dispatched once");
    WAIT_STATS(e, st, st.parked == 0, 2000);    /* published after each pass */
    ok(st.wakes_total == 1 && st.parked == 0, "wakes_total 1 (%llu), nothing parked",
       (unsigned long long)st.wakes_total);

    /* woken while parked, timer only, long deadline */
    rec_init(&r);
    r.p.timeout = apr_time_from_sec(10);
    apx_park_arm_wake(&r.p);
    is_int(apx_park_submit(e, &r.p), APR_SUCCESS, "timer only, armed: submitted");
    WAIT_STATS(e, st, st.parked == 1, 2000);
    is_int(st.parked, 1, "parked");
    is_int(calls_of(&r), 0, "not dispatched yet");
    t0 = mono_now();
    is_int(apx_park_wake(e, &r.p), 1, "wake while parked: 1");
    is_int(wait_calls(&r, 1, 5000), 1, "dispatched");
    is_int(r.why, APX_EV_WAKE, "why == WAKE");
    ok(r.at - t0 < 1000000, "at once, not at the deadline (%ld us)", (long)(r.at - t0));
    is_int(apx_park_wake(e, &r.p), 0, "wake after the dispatch: 0");
    WAIT_STATS(e, st, st.parked == 0, 2000);
    is_int(st.parked, 0, "off the poller");

    /* re-armed, parked again, woken again */
    apx_park_arm_wake(&r.p);
    is_int(apx_park_submit(e, &r.p), APR_SUCCESS, "re-armed and parked again");
    WAIT_STATS(e, st, st.parked == 1, 2000);
    is_int(apx_park_wake(e, &r.p), 1, "woken again: 1");
    is_int(wait_calls(&r, 2, 5000), 2, "dispatched a second time");
    is_int(r.why, APX_EV_WAKE, "with WAKE");

    /* parked again without arming: the last park's wake does not stick */
    r.p.timeout = 20000;
    is_int(apx_park_submit(e, &r.p), APR_SUCCESS, "parked again unarmed");
    is_int(apx_park_wake(e, &r.p), 0, "not wakeable: 0");
    is_int(wait_calls(&r, 3, 5000), 3, "dispatched by its deadline");
    is_int(r.why, APX_EV_TIMEOUT, "TIMEOUT only");

    /* armed and timed out: a later wake loses */
    apx_park_arm_wake(&r.p);
    is_int(apx_park_submit(e, &r.p), APR_SUCCESS, "armed, 20 ms");
    is_int(wait_calls(&r, 4, 5000), 4, "dispatched");
    is_int(r.why, APX_EV_TIMEOUT, "by its deadline");
    is_int(apx_park_wake(e, &r.p), 0, "wake after the timeout: 0");
    ok(flush(e), "flushed");
    is_int(calls_of(&r), 4, "no extra dispatch");

    /* a client socket watched for hangup only (want 0) */
    socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
    rec_init(&r);
    r.p.fd[0] = sv[0];
    r.p.want[0] = 0;
    r.p.timeout = apr_time_from_sec(10);
    apx_park_arm_wake(&r.p);
    is_int(apx_park_submit(e, &r.p), APR_SUCCESS, "socket, want 0, armed: parked");
    WAIT_STATS(e, st, st.parked == 1, 2000);
    t0 = mono_now();
    is_int(apx_park_wake(e, &r.p), 1, "woken while parked on a socket");
    is_int(wait_calls(&r, 1, 5000), 1, "dispatched");
    ok(r.why == APX_EV_WAKE && r.got[0] == 0, "why == WAKE, got[0] 0 (%#x)", r.why);
    ok(r.at - t0 < 1000000, "at once (%ld us)", (long)(r.at - t0));
    /* the poller let go of its fd with the wake: another record may park on it */
    rec_init(&r2);
    r2.p.fd[0] = sv[0];
    r2.p.want[0] = APX_EV_IN;
    r2.p.timeout = apr_time_from_sec(10);
    is_int(apx_park_submit(e, &r2.p), APR_SUCCESS, "the fd parked by another record");
    ok(write(sv[1], "x", 1) == 1, "peer writes");
    is_int(wait_calls(&r2, 1, 5000), 1, "the other record dispatched");
    is_int(r2.why, APX_EV_IN, "with IN, not ERR: the woken record let go of the fd");
    {
        char c;
        ok(read(sv[0], &c, 1) == 1, "drained");
    }

    /* armed, and the peer hangs up first: HUP, a later wake loses */
    apx_park_arm_wake(&r.p);
    is_int(apx_park_submit(e, &r.p), APR_SUCCESS, "armed on the socket again");
    WAIT_STATS(e, st, st.parked == 1, 2000);
    close(sv[1]);
    is_int(wait_calls(&r, 2, 5000), 2, "hangup: dispatched");
    ok((r.why & APX_EV_HUP) && !(r.why & APX_EV_WAKE), "with HUP, no WAKE (%#x)", r.why);
    is_int(apx_park_wake(e, &r.p), 0, "wake after the hangup: 0");
    ok(flush(e), "flushed");
    is_int(calls_of(&r), 2, "no extra dispatch");
    close(sv[0]);

    stats(e, &st);
    ok(st.wakes_total == 4, "wakes_total counts the 4 woken parks (%llu)",
       (unsigned long long)st.wakes_total);
    apx_engine_destroy(e, NULL);
}

/* The wake wins while the poller is held in its push; the peer then hangs
 * up: the poller's next pass sees the hangup, loses the claim, and the wake
 * message dispatches the record with WAKE and the hangup. Same hold with a
 * deadline passing after the wake: WAKE, no TIMEOUT. */
static void test_wake_held_poller(apr_pool_t *pool)
{
    apx_engine *e = start_engine(pool, 1, 1, apr_time_from_sec(10));
    apx_engine_stats st;
    rec r, d;
    int sv[2], taken, woke;
    FILE *f = tmpfile();

    socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
    rec_init(&r);
    r.p.fd[0] = sv[0];
    r.p.want[0] = 0;
    r.p.timeout = apr_time_from_sec(10);
    apx_park_arm_wake(&r.p);
    apx_park_submit(e, &r.p);
    WAIT_STATS(e, st, st.parked == 1, 2000);
    is_int(st.parked, 1, "socket record parked");

    /* hold the poller at its push, then wake */
    taken = hold_poller(e, &d, f);
    woke = apx_park_wake(e, &r.p);
    close(sv[1]);
    pthread_mutex_unlock(&e->wq_mtx);
    ok(taken, "the poller took the intake and stopped at its push");
    is_int(woke, 1, "wake while the poller is held: 1");
    is_int(wait_calls(&r, 1, 5000), 1, "dispatched");
    ok(r.why == (APX_EV_WAKE | APX_EV_HUP), "by the wake, with the hangup seen after it "
       "(why %#x)", r.why);
    ok(r.got[0] & APX_EV_HUP, "got[0] has HUP");
    is_int(wait_calls(&d, 1, 5000), 1, "the other record dispatched too");
    ok(flush(e), "flushed");
    is_int(calls_of(&r), 1, "once");
    close(sv[0]);

    /* timer only, deadline passes while held, after the wake */
    rec_init(&r);
    r.p.timeout = 20000;
    apx_park_arm_wake(&r.p);
    apx_park_submit(e, &r.p);
    WAIT_STATS(e, st, st.parked == 1, 2000);
    taken = hold_poller(e, &d, f);
    woke = apx_park_wake(e, &r.p);
    spin_until(mono_now() + 40000);     /* past the 20 ms deadline */
    pthread_mutex_unlock(&e->wq_mtx);
    ok(taken, "held again");
    is_int(woke, 1, "woken before its deadline");
    is_int(wait_calls(&r, 1, 5000), 1, "dispatched");
    is_int(r.why, APX_EV_WAKE, "WAKE, not TIMEOUT, though the deadline has passed");
    ok(flush(e), "flushed");
    is_int(calls_of(&r), 1, "once");
    stats(e, &st);
    ok(st.timeouts_total == 0 && st.wakes_total == 2, "no timeout counted, 2 wakes");
    fclose(f);
    apx_engine_destroy(e, NULL);
}

/* The test thread is the poller of an engine never started: every place a
 * wake can meet a record, step by step; then destroy with woken records on
 * the intake, a timeout queue, the woken list and the worker queue. */
static void test_wake_steps(apr_pool_t *pool)
{
    apx_engine_conf conf;
    apx_engine *e;
    rec a, b, c, d, f, f2, g, h, i;
    rec *all[] = { &a, &b, &c, &d, &f, &f2, &g, &h, &i };
    park_list in, batch;
    apx_park *w;
    expire_ctx x;
    int sv[2], k, once = 1, ok_ab = 1, rewake = 1;

    apx_engine_conf_default(&conf);
    conf.workers_min = conf.workers_max = 1;
    ok(apx_engine_create(&e, &conf, pool) == APR_SUCCESS, "created (not started)");
    cur_engine = e;
    socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
    list_init(&batch);

    rec_init(&a);               /* parked, woken, then its deadline passes */
    a.p.timeout = 1000;
    apx_park_arm_wake(&a.p);
    apx_park_submit(e, &a.p);
    rec_init(&b);               /* woken on the intake */
    b.p.fd[0] = sv[0];
    b.p.want[0] = APX_EV_IN;
    b.p.timeout = apr_time_from_sec(10);
    apx_park_arm_wake(&b.p);
    apx_park_submit(e, &b.p);
    is_int(apx_park_wake(e, &b.p), 1, "woken on the intake: 1");
    is_int(apx_park_wake(e, &b.p), 0, "twice: 0");

    w = take_lists(e, &in);
    ok(in.n == 2 && w == &b.p && !b.p.wnext, "the take has both records and b's wake");
    arm_all(e, &in, &batch);
    ok(get_state(&a.p) == ST_PARKED && get_state(&b.p) == ST_DETACHED,
       "a parked; b, already woken, detached");
    ok(epoll_ctl(e->epfd, EPOLL_CTL_DEL, sv[0], NULL) < 0 && errno == ENOENT,
       "b's fd was never registered");
    is_int(e->nparked, 1, "one parked");
    wake_records(e, w, &batch);
    ok(batch.n == 1 && batch.head == &b.p && get_state(&b.p) == ST_READY
       && b.p.why == APX_EV_WAKE, "b on the batch with WAKE");

    is_int(apx_park_wake(e, &a.p), 1, "a woken while parked");
    x.e = e;
    x.batch = &batch;
    apx_tq_set_expire(e->tqs, mono_now() + apr_time_from_sec(1), 16, expire_one, &x);
    ok(batch.n == 1 && get_state(&a.p) == ST_DETACHED && e->nparked == 0,
       "its deadline passes: the expiry loses the claim, a detached off the batch");
    ok(!(a.p.why & APX_EV_TIMEOUT) && e->timeouts_total == 0, "no TIMEOUT");
    ok(!apx_tq_link_is_linked(&a.p.tq), "a off its timeout queue");
    w = take_lists(e, &in);
    ok(w == &a.p && in.n == 0, "a's wake message comes on the next take");
    wake_records(e, w, &batch);
    ok(batch.n == 2 && get_state(&a.p) == ST_READY && a.p.why == APX_EV_WAKE,
       "the message puts a on the batch with WAKE");
    is_int(e->wakes_total, 2, "two wakes counted");

    rec_init(&c);               /* its deadline claims it: a wake loses */
    c.p.timeout = 1000;
    apx_park_arm_wake(&c.p);
    apx_park_submit(e, &c.p);
    take_lists(e, &in);
    arm_all(e, &in, &batch);
    apx_tq_set_expire(e->tqs, mono_now() + apr_time_from_sec(1), 16, expire_one, &x);
    ok(batch.n == 3 && (c.p.why & APX_EV_TIMEOUT), "c expired onto the batch");
    is_int(apx_park_wake(e, &c.p), 0, "a wake after the expiry claimed it: 0");
    push_batch(e, &batch);      /* not started: they wait in the queue */

    /* for destroy */
    rec_init(&h);               /* parked, never woken */
    h.p.timeout = apr_time_from_sec(30);
    apx_park_arm_wake(&h.p);
    apx_park_submit(e, &h.p);
    rec_init(&f);               /* parked, then woken */
    f.p.timeout = apr_time_from_sec(30);
    apx_park_arm_wake(&f.p);
    apx_park_submit(e, &f.p);
    rec_init(&f2);              /* parked behind f, woken before it */
    f2.p.timeout = apr_time_from_sec(30);
    apx_park_arm_wake(&f2.p);
    apx_park_submit(e, &f2.p);
    take_lists(e, &in);
    arm_all(e, &in, &batch);
    ok(get_state(&h.p) == ST_PARKED && get_state(&f.p) == ST_PARKED
       && get_state(&f2.p) == ST_PARKED, "h, f, f2 parked");
    rec_init(&d);               /* on the intake, woken */
    apx_park_arm_wake(&d.p);
    apx_park_submit(e, &d.p);
    rec_init(&i);               /* on the intake, never woken */
    apx_park_arm_wake(&i.p);
    apx_park_submit(e, &i.p);
    is_int(apx_park_wake(e, &f2.p), 1, "f2 woken on its timeout queue");
    is_int(apx_park_wake(e, &f.p), 1, "f woken on its timeout queue");
    is_int(apx_park_wake(e, &d.p), 1, "d woken on the intake");
    rec_init(&g);               /* woken before its submit: queued */
    apx_park_arm_wake(&g.p);
    is_int(apx_park_wake(e, &g.p), 1, "g woken before its submit");
    is_int(apx_park_submit(e, &g.p), APR_SUCCESS, "g submitted: to the worker queue");
    is_int(get_state(&g.p), ST_QUEUED, "g queued");

    apx_engine_destroy(e, on_abandoned);
    for (k = 0; k < (int)(sizeof(all) / sizeof(all[0])); k++) {
        if (all[k]->abandoned != 1 || all[k]->calls != 0)
            once = 0;
        if (!all[k]->abandoned_ok || all[k]->resubmit_rv != APR_EINVAL)
            ok_ab = 0;
        if (all[k]->rewake_rv != 0)
            rewake = 0;
    }
    ok(once, "destroy abandons each record exactly once: woken ones on the intake, "
       "a timeout queue, the woken list, the worker queue, and the others");
    ok(ok_ab, "on the destroying thread with SHUTDOWN; submit refused");
    ok(rewake, "a wake from abandoned(): 0");
    close(sv[0]);
    close(sv[1]);
}

/* Races: the owner parks, a waker wakes at a random moment around it
 * (before the submit, while it is on the intake, parked, at the deadline,
 * after). The waker calls apx_park_wake() under the "entry" lock while the
 * record is enlisted; the owner delists under it after its dispatch, as the
 * cache does. */
enum { RACE_TIMEOUT_N = 400, RACE_HANGUP_N = 300 };

typedef struct race {
    apx_engine *e;
    pthread_mutex_t entry;
    apx_park *enlisted;         /* under entry */
    int go, done, stop;         /* under mtx */
    apr_time_t wake_at;         /* under mtx */
    int won;                    /* under mtx: 1, 0, -1 delisted already */
} race;

static race rc;

static void *race_waker(void *arg)
{
    apr_time_t at;
    int k, won;

    for (;;) {
        pthread_mutex_lock(&mtx);
        while (rc.go == rc.done && !rc.stop)
            pthread_cond_wait(&cv, &mtx);
        if (rc.go == rc.done) {
            pthread_mutex_unlock(&mtx);
            break;
        }
        k = rc.go;
        at = rc.wake_at;
        pthread_mutex_unlock(&mtx);

        spin_until(at);
        pthread_mutex_lock(&rc.entry);
        won = rc.enlisted ? apx_park_wake(rc.e, rc.enlisted) : -1;
        pthread_mutex_unlock(&rc.entry);

        pthread_mutex_lock(&mtx);
        rc.won = won;
        rc.done = k;
        pthread_cond_broadcast(&cv);
        pthread_mutex_unlock(&mtx);
    }
    return NULL;
}

static unsigned lcg_next(unsigned *s)
{
    *s = *s * 1103515245u + 12345u;
    return (*s >> 8) & 0xffffff;
}

static void race_run(apr_pool_t *pool, int hangup)
{
    int n = hangup ? RACE_HANGUP_N : RACE_TIMEOUT_N;
    apx_engine *e = start_engine(pool, 2, 4, apr_time_from_sec(10));
    apx_engine_stats st0, st;
    rec *recs = calloc(n, sizeof(*recs));
    int *won = calloc(n, sizeof(*won));
    pthread_t th;
    unsigned seed = hangup ? 7 : 3;
    int i, k, sv[2], lost = 0, once = 1, why_ok = 1, won_n = 0, late = 0;
    int timeouts = 0, hups = 0, submit_fail = 0;
    const char *what = hangup ? "hangup" : "timeout";
    apr_time_t base, js, jw, jh = 0;
    struct timespec until;

    memset(&rc, 0, sizeof(rc));
    pthread_mutex_init(&rc.entry, NULL);
    rc.e = e;
    pthread_create(&th, NULL, race_waker, NULL);
    stats(e, &st0);

    for (i = 1; i < n && lost < 3; i++) {
        rec *r = &recs[i];

        rec_init(r);
        if (hangup) {
            socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
            r->p.fd[0] = sv[0];
            r->p.want[0] = 0;
            r->p.timeout = apr_time_from_sec(10);
        }
        else {
            r->p.timeout = 1000;        /* 1 ms */
        }
        apx_park_arm_wake(&r->p);
        pthread_mutex_lock(&rc.entry);
        rc.enlisted = &r->p;
        pthread_mutex_unlock(&rc.entry);

        /* every other park, the wake aims at the moment the other cause
         * fires (the deadline lands ~1 ms after the submit, plus the
         * poller's latency); the rest spread over before/during/after */
        base = mono_now() + 200;
        js = base + lcg_next(&seed) % 2000;
        jw = base + lcg_next(&seed) % 3000;
        if (hangup)
            jh = js + lcg_next(&seed) % 1500;
        if (i & 1)
            jw = (hangup ? jh : js + 1000) + lcg_next(&seed) % 300 - 100;
        pthread_mutex_lock(&mtx);
        rc.wake_at = jw;
        rc.go = i;
        pthread_cond_broadcast(&cv);
        pthread_mutex_unlock(&mtx);

        spin_until(js);
        if (apx_park_submit(e, &r->p) != APR_SUCCESS)
            submit_fail++;
        if (hangup) {
            spin_until(jh);
            close(sv[1]);
        }
        if (wait_calls(r, 1, 5000) != 1)
            lost++;
        pthread_mutex_lock(&rc.entry);
        rc.enlisted = NULL;
        pthread_mutex_unlock(&rc.entry);

        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += 5;
        pthread_mutex_lock(&mtx);
        while (rc.done != i && pthread_cond_timedwait(&cv, &mtx, &until) == 0)
            ;
        won[i] = rc.done == i ? rc.won : -2;
        pthread_mutex_unlock(&mtx);
        if (hangup)
            close(sv[0]);       /* out of epoll since the dispatch */
    }
    pthread_mutex_lock(&mtx);
    rc.stop = 1;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mtx);
    pthread_join(th, NULL);

    ok(flush(e), "%s race: flushed", what);
    stats(e, &st);
    for (k = 1; k < i; k++) {
        unsigned why;

        pthread_mutex_lock(&mtx);
        why = recs[k].why;
        if (recs[k].calls != 1)
            once = 0;
        pthread_mutex_unlock(&mtx);
        if (won[k] == 1) {
            won_n++;
            if (!(why & APX_EV_WAKE) || (why & (APX_EV_TIMEOUT | APX_EV_SHUTDOWN)))
                why_ok = 0;
        }
        else {
            if (won[k] == -1)
                late++;
            if (won[k] == -2 || (why & APX_EV_WAKE))
                why_ok = 0;
            if (hangup ? !(why & APX_EV_HUP) : why != APX_EV_TIMEOUT)
                why_ok = 0;
        }
        if (why & APX_EV_TIMEOUT)
            timeouts++;
        if (why & APX_EV_HUP)
            hups++;
    }
    diag("%s race: %d parks, wake won %d, %s won %d (%d of them before the wake "
         "was tried)", what, i - 1, won_n, what, i - 1 - won_n, late);
    is_int(submit_fail, 0, "submits accepted");
    is_int(lost, 0, "every park dispatched");
    ok(once, "%s race: each park dispatched exactly once", what);
    ok(why_ok, "%s race: WAKE exactly when the wake returned 1, else %s", what,
       hangup ? "HUP" : "TIMEOUT only");
    ok(st.wakes_total - st0.wakes_total == (apr_uint64_t)won_n,
       "wakes_total counts the wakes won (%llu)",
       (unsigned long long)(st.wakes_total - st0.wakes_total));
    ok(st.dispatched_total - st0.dispatched_total == (apr_uint64_t)i,
       "dispatched_total: the parks plus the flush marker");
    if (!hangup)
        ok(st.timeouts_total - st0.timeouts_total == (apr_uint64_t)timeouts,
           "timeouts_total counts the deadlines that won (%d)", timeouts);
    else
        diag("hangup race: HUP in why of %d dispatches", hups);
    apx_engine_destroy(e, NULL);
    pthread_mutex_destroy(&rc.entry);
    free(recs);
    free(won);
}

static void test_wake_races(apr_pool_t *pool)
{
    race_run(pool, 0);
    race_run(pool, 1);
}

/* Wakes racing stopping(), and wakes from a dispatch that runs while
 * destroy() drains the workers (the poller already gone). */
enum { STOP_A = 20, STOP_I = 10 };

static rec stop_a[STOP_A], stop_i[STOP_I], stop_c, stop_d;
static int stop_won_a[STOP_A], stop_won_i[STOP_I];
static int fetch_entered, destroy_began, fetch_poller_gone, fetch_c_rv, fetch_d_rv;
static int fetch_won_c, fetch_won_d, stop_base_tasks;

static void *stop_waker(void *arg)
{
    apx_engine *e = arg;
    int k;

    for (k = 0; k < STOP_I; k++) {
        stop_won_i[k] = apx_park_wake(e, &stop_i[k].p);
        stop_won_a[k] = apx_park_wake(e, &stop_a[k].p);
    }
    return NULL;
}

static void fetcher_dispatch(apx_park *p, apr_thread_t *thd)
{
    apx_engine *e = cur_engine;
    int k, stop = 0;

    pthread_mutex_lock(&mtx);
    fetch_entered = 1;
    pthread_cond_broadcast(&cv);
    while (!destroy_began)
        pthread_cond_wait(&cv, &mtx);
    pthread_mutex_unlock(&mtx);
    /* destroy stops and joins the poller before it drains the workers */
    for (k = 0; k < 2000 && !stop; k++) {
        pthread_mutex_lock(&e->in_mtx);
        stop = e->stop_poller;
        pthread_mutex_unlock(&e->in_mtx);
        if (!stop)
            usleep(1000);
    }
    /* the poller's thread gone: at most this worker and the other one
     * (which may already have left the drain) remain */
    for (k = 0; k < 2000 && count_tasks() > stop_base_tasks + 2; k++)
        usleep(1000);
    fetch_poller_gone = stop && count_tasks() <= stop_base_tasks + 2;

    /* in the reverse of their queue order: destroy must not meet one of
     * them on both its timeout queue and the woken list */
    for (k = STOP_A - 1; k >= STOP_I; k--)
        stop_won_a[k] = apx_park_wake(e, &stop_a[k].p);
    /* woken before its submit, submitted during the drain: dispatched */
    fetch_won_c = apx_park_wake(e, &stop_c.p);
    fetch_c_rv = apx_park_submit(e, &stop_c.p);
    /* parked after the poller left, then woken: abandoned */
    fetch_d_rv = apx_park_submit(e, &stop_d.p);
    fetch_won_d = apx_park_wake(e, &stop_d.p);
}

static void test_wake_stop_destroy(apr_pool_t *pool)
{
    apx_engine *e;
    apx_engine_stats st;
    pthread_t th;
    rec f;
    int k, once_i = 1, why_i = 1, woke_a = 1, once_a = 1, ab_ok = 1, n_ab = 0;

    stop_base_tasks = count_tasks();
    e = start_engine(pool, 2, 2, apr_time_from_sec(10));
    for (k = 0; k < STOP_A; k++) {
        rec_init(&stop_a[k]);
        stop_a[k].p.timeout = apr_time_from_sec(30);
        apx_park_arm_wake(&stop_a[k].p);
        apx_park_submit(e, &stop_a[k].p);
    }
    for (k = 0; k < STOP_I; k++) {
        rec_init(&stop_i[k]);
        stop_i[k].p.flags = APX_PARK_IDLE;
        apx_park_arm_wake(&stop_i[k].p);
        apx_park_submit(e, &stop_i[k].p);
    }
    WAIT_STATS(e, st, st.parked == STOP_A + STOP_I, 2000);
    is_int(st.parked, STOP_A + STOP_I, "30 armed records parked (10 idle)");

    pthread_create(&th, NULL, stop_waker, e);
    apx_engine_stopping(e);
    pthread_join(th, NULL);
    for (k = 0; k < STOP_I; k++) {
        if (wait_calls(&stop_i[k], 1, 5000) != 1)
            once_i = 0;
        if (stop_won_i[k] ? stop_i[k].why != APX_EV_WAKE
                          : stop_i[k].why != APX_EV_SHUTDOWN)
            why_i = 0;
        if (!stop_won_a[k] || wait_calls(&stop_a[k], 1, 5000) != 1
            || stop_a[k].why != APX_EV_WAKE)
            woke_a = 0;
    }
    ok(flush(e), "flushed");
    for (k = 0; k < STOP_I; k++)
        if (calls_of(&stop_i[k]) != 1)
            once_i = 0;
    ok(once_i, "idle records woken while stopping: each dispatched once");
    ok(why_i, "by whichever won: WAKE when the wake returned 1, else SHUTDOWN");
    ok(woke_a, "in-flight records woken while stopping: won, dispatched with WAKE");

    /* destroy while a dispatch wakes the rest */
    rec_init(&stop_c);
    stop_c.p.timeout = apr_time_from_sec(30);
    apx_park_arm_wake(&stop_c.p);
    rec_init(&stop_d);
    stop_d.p.timeout = apr_time_from_sec(30);
    apx_park_arm_wake(&stop_d.p);
    rec_init(&f);
    f.p.dispatch = fetcher_dispatch;
    apx_run_submit(e, &f.p);
    pthread_mutex_lock(&mtx);
    while (!fetch_entered)
        pthread_cond_wait(&cv, &mtx);
    destroy_began = 1;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mtx);
    apx_engine_destroy(e, on_abandoned);

    ok(fetch_poller_gone, "the poller had left when the dispatch woke the rest");
    for (k = STOP_I; k < STOP_A; k++) {
        if (stop_a[k].calls + stop_a[k].abandoned != 1)
            once_a = 0;
        if (stop_won_a[k] != 1)
            woke_a = 0;
        if (stop_a[k].abandoned) {
            n_ab++;
            if (!stop_a[k].abandoned_ok || stop_a[k].rewake_rv != 0)
                ab_ok = 0;
        }
    }
    ok(woke_a, "wakes during destroy, before it took the intake: 1");
    ok(once_a, "each of them dispatched or abandoned exactly once");
    is_int(n_ab, STOP_A - STOP_I, "(abandoned: the poller was gone)");
    ok(ab_ok, "abandoned on the destroying thread with SHUTDOWN; wake from there: 0");
    ok(fetch_won_c == 1 && fetch_c_rv == APR_SUCCESS, "woken before a submit during the drain");
    ok(stop_c.calls == 1 && stop_c.why == APX_EV_WAKE && stop_c.abandoned == 0,
       "dispatched once with WAKE by the draining workers");
    ok(fetch_d_rv == APR_SUCCESS && fetch_won_d == 1, "parked and woken after the poller left");
    ok(stop_d.calls == 0 && stop_d.abandoned == 1, "abandoned once");
    ok(f.calls == 0 && f.abandoned == 0, "the fetcher itself ran");
    for (k = 0; k < STOP_I; k++)
        if (stop_i[k].abandoned || stop_a[k].abandoned)
            ab_ok = 0;
    ok(ab_ok, "records dispatched before are not abandoned");
    is_int(wait_tasks(stop_base_tasks, 2000), stop_base_tasks, "every thread joined");
}

int main(void)
{
    apr_pool_t *pool = harness_start();

    test_wake(pool);
    test_wake_held_poller(pool);
    test_wake_steps(pool);
    test_wake_races(pool);
    test_wake_stop_destroy(pool);

    return harness_done(pool);
}
