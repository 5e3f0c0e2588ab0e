/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* t/unit/coro.c — coroutines: switch values, defers, the stack pool, nested
 * and cross-thread resumes, the guard page (in a forked child), stack trim,
 * cold stacks (pages given back, mapping kept),
 * and FPU state/alignment inside a coroutine.
 *
 * Built three ways by the Makefile (plain, ASan+UBSan, TSan); build it once
 * more with -DAPX_CORO_UCONTEXT=1 to test the ucontext fallback. */
#include "../../poller/coro.c"

#include <signal.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include "tap.h"

#define STACK_SIZE (128 * 1024)

static apx_stack_pool *pool;

static void is_str(const char *got, const char *want, const char *name)
{
    if (!ok(strcmp(got, want) == 0, "%s", name))
        diag("got '%s', expected '%s'", got, want);
}

static long thread_id(void)
{
    /* A syscall, unlike pthread_self() (declared const, so the compiler may
     * reuse its value across a yield that moved the coroutine). */
    return (long)syscall(SYS_gettid);
}

/* ---- values in and out ------------------------------------------------ */

static int body_started;

static intptr_t seq_body(apx_coro *coro, void *data)
{
    body_started = 1;
    apx_coro_yield(coro, 1);
    apx_coro_yield(coro, 2);
    apx_coro_yield(coro, 3);
    return 42;
}

static void test_sequence(void)
{
    apx_coro *coro;
    intptr_t got[4];
    int fin[4], i;

    body_started = 0;
    is_int(apx_coro_create(&coro, pool, seq_body, NULL), APR_SUCCESS,
           "create");
    ok(!body_started && !apx_coro_is_finished(coro),
       "nothing runs before the first resume");
    for (i = 0; i < 4; i++) {
        got[i] = apx_coro_resume(coro);
        fin[i] = apx_coro_is_finished(coro);
    }
    ok(got[0] == 1 && got[1] == 2 && got[2] == 3,
       "yields come out in order (%ld %ld %ld)", (long)got[0], (long)got[1],
       (long)got[2]);
    ok(!fin[0] && !fin[1] && !fin[2], "not finished while yielding");
    is_int(got[3], 42, "final resume returns fn's return value");
    ok(fin[3], "finished after return");
    is_int(apx_coro_resume(coro), 42,
           "resuming a finished coroutine returns its value again");
    apx_coro_destroy(coro);
}

static intptr_t echo_body(apx_coro *coro, void *data)
{
    intptr_t v = apx_coro_yield(coro, (intptr_t)data);

    while (v >= 0)
        v = apx_coro_yield(coro, v * 2 + 1);
    return -v;
}

static void test_resume_value(void)
{
    apx_coro *coro;
    int i, bad = 0;

    apx_coro_create(&coro, pool, echo_body, (void *)(intptr_t)77);
    ok(apx_coro_data(coro) == (void *)(intptr_t)77, "apx_coro_data");
    is_int(apx_coro_resume_value(coro, 999), 77,
           "first resume runs to the first yield");
    for (i = 0; i < 1000; i++)
        bad += apx_coro_resume_value(coro, i) != i * 2 + 1;
    is_int(bad, 0, "1000 resume_value/yield round trips");
    is_int(apx_coro_resume_value(coro, -5), 5, "value into the return path");
    ok(apx_coro_is_finished(coro), "finished");
    apx_coro_destroy(coro);
}

static apx_coro *seen_current;

static intptr_t current_body(apx_coro *coro, void *data)
{
    seen_current = apx_coro_current();
    apx_coro_yield(coro, 0);
    return apx_coro_current() == coro;
}

static void test_current(void)
{
    apx_coro *coro;

    ok(apx_coro_current() == NULL, "no current coroutine outside");
    apx_coro_create(&coro, pool, current_body, NULL);
    apx_coro_resume(coro);
    ok(seen_current == coro, "apx_coro_current() inside");
    ok(apx_coro_current() == NULL, "restored after the yield");
    is_int(apx_coro_resume(coro), 1, "still current after a resume");
    apx_coro_destroy(coro);
}

/* ---- defers ------------------------------------------------------------- */

static int dlog[256];
static int ndlog;

static void log_defer(void *arg)
{
    if (ndlog < (int)(sizeof(dlog) / sizeof(dlog[0])))
        dlog[ndlog++] = (int)(intptr_t)arg;
}

static int dlog_is(const int *want, int n)
{
    int i;

    if (ndlog != n)
        return 0;
    for (i = 0; i < n; i++)
        if (dlog[i] != want[i])
            return 0;
    return 1;
}

static int defers_before_return;

static intptr_t defer3_body(apx_coro *coro, void *data)
{
    apx_coro_defer(coro, log_defer, (void *)1);
    apx_coro_defer(coro, log_defer, (void *)2);
    apx_coro_yield(coro, 0);
    apx_coro_defer(coro, log_defer, (void *)3);
    apx_coro_yield(coro, 0);
    defers_before_return = ndlog;
    return 7;
}

static void test_defer_on_return(void)
{
    apx_coro *coro;
    static const int want[] = { 3, 2, 1 };

    ndlog = 0;
    apx_coro_create(&coro, pool, defer3_body, NULL);
    apx_coro_resume(coro);
    apx_coro_resume(coro);
    is_int(ndlog, 0, "no defer runs while the coroutine lives");
    is_int(apx_coro_resume(coro), 7, "returns");
    is_int(defers_before_return, 0, "defers not run before fn returned");
    ok(dlog_is(want, 3), "defers ran in reverse order on return");
    apx_coro_destroy(coro);
    is_int(ndlog, 3, "destroy after return runs nothing again");
}

static void test_defer_on_destroy(void)
{
    apx_coro *coro;
    static const int want[] = { 3, 2, 1 };

    ndlog = 0;
    apx_coro_create(&coro, pool, defer3_body, NULL);
    apx_coro_resume(coro);
    apx_coro_resume(coro);
    is_int(ndlog, 0, "suspended with three defers");
    apx_coro_destroy(coro);
    ok(dlog_is(want, 3), "destroy while suspended runs them in reverse");

    ndlog = 0;
    apx_coro_create(&coro, pool, defer3_body, NULL);
    apx_coro_destroy(coro);
    is_int(ndlog, 0, "destroying a never-started coroutine runs nothing");
}

static intptr_t disarm_fire_body(apx_coro *coro, void *data)
{
    apx_defer *d1, *d2, *d3, *d4;
    int ran_early;

    d1 = apx_coro_defer(coro, log_defer, (void *)1);
    d2 = apx_coro_defer(coro, log_defer, (void *)2);
    d3 = apx_coro_defer(coro, log_defer, (void *)3);
    d4 = apx_coro_defer(coro, log_defer, (void *)4);
    apx_coro_defer_disarm(coro, d2);     /* in the middle: a tombstone */
    apx_coro_defer_fire(coro, d3);       /* runs 3 now */
    ran_early = ndlog;
    apx_coro_defer_fire(coro, d3);       /* already gone: nothing */
    apx_coro_yield(coro, ran_early);
    (void)d1;
    (void)d4;
    return 0;
}

static void test_disarm_fire(void)
{
    apx_coro *coro;
    static const int want[] = { 3, 4, 1 };

    ndlog = 0;
    apx_coro_create(&coro, pool, disarm_fire_body, NULL);
    is_int(apx_coro_resume(coro), 1, "fire ran exactly one defer at once");
    is_int(dlog[0], 3, "the fired one");
    apx_coro_resume(coro);
    ok(dlog_is(want, 3), "disarmed never runs, fired runs once, rest reverse");
    apx_coro_destroy(coro);
}

static intptr_t many_defers_body(apx_coro *coro, void *data)
{
    apx_defer *h[100];
    int i;

    for (i = 0; i < 100; i++)
        h[i] = apx_coro_defer(coro, log_defer, (void *)(intptr_t)i);
    apx_coro_defer_disarm(coro, h[50]);
    apx_coro_defer_fire(coro, h[10]);
    apx_coro_defer_disarm(coro, h[99]);
    return coro->defers != coro->inline_defers;
}

static void test_defer_growth(void)
{
    apx_coro *coro;
    int i, order_ok = 1, k;

    ndlog = 0;
    apx_coro_create(&coro, pool, many_defers_body, NULL);
    is_int(apx_coro_resume(coro), 1, "100 defers outgrew the inline array");
    /* dlog: 10 (fired), then 98..0 without 50 and 10. */
    k = 1;
    for (i = 98; i >= 0; i--) {
        if (i == 50 || i == 10)
            continue;
        if (k >= ndlog || dlog[k++] != i)
            order_ok = 0;
    }
    ok(dlog[0] == 10 && ndlog == 1 + 97 && order_ok,
       "grown list: handles stay valid, reverse order (%d ran)", ndlog);
    apx_coro_destroy(coro);
}

static intptr_t lifo_body(apx_coro *coro, void *data)
{
    int i;

    for (i = 0; i < 10000; i++) {
        apx_defer *a = apx_coro_defer(coro, log_defer, (void *)1);
        apx_defer *b = apx_coro_defer(coro, log_defer, (void *)2);

        /* Released out of order: a stays a tombstone until b goes. */
        apx_coro_defer_disarm(coro, a);
        apx_coro_defer_disarm(coro, b);
    }
    return coro->ndefers * 1000 + coro->defer_cap;
}

static void test_defer_lifo_reuse(void)
{
    apx_coro *coro;

    ndlog = 0;
    apx_coro_create(&coro, pool, lifo_body, NULL);
    is_int(apx_coro_resume(coro), CORO_INLINE_DEFERS,
           "10000 defer+disarm pairs leave an empty inline list");
    is_int(ndlog, 0, "and ran nothing");
    apx_coro_destroy(coro);
}

static void *failing_realloc(void *p, size_t n)
{
    return NULL;
}

static intptr_t oom_body(apx_coro *coro, void *data)
{
    apx_defer *h = NULL;
    int i, before;

    for (i = 0; i < CORO_INLINE_DEFERS; i++)
        apx_coro_defer(coro, log_defer, (void *)(intptr_t)i);
    before = ndlog;
    h = apx_coro_defer(coro, log_defer, (void *)99);
    return h == NULL && before == 0 && ndlog == 1 && dlog[0] == 99;
}

static void test_defer_oom(void)
{
    apx_coro *coro;

    ndlog = 0;
    defer_realloc = failing_realloc;
    apx_coro_create(&coro, pool, oom_body, NULL);
    is_int(apx_coro_resume(coro), 1,
           "defer without memory returns NULL and runs fn at once");
    defer_realloc = realloc;
    is_int(ndlog, 1 + CORO_INLINE_DEFERS, "the registered ones still ran");
    apx_coro_destroy(coro);
}

/* ---- the stack pool ----------------------------------------------------- */

static intptr_t touch_body(apx_coro *coro, void *data)
{
    volatile char buf[2048];

    buf[0] = 1;
    buf[sizeof(buf) - 1] = 2;
    apx_coro_yield(coro, buf[0] + buf[sizeof(buf) - 1]);
    return 0;
}

static void test_many(void)
{
    apx_stack_pool *p;
    apx_coro *c[40];
    unsigned in_use, nfree;
    int round, i, bad = 0;
    void *first;

    is_int(apx_stack_pool_create(&p, 70000, 16), APR_SUCCESS, "pool");
    ok(apx_stack_pool_stack_size(p) >= 70000
       && apx_stack_pool_stack_size(p) % (size_t)sysconf(_SC_PAGESIZE) == 0,
       "stack size rounded up to pages (%zu)", apx_stack_pool_stack_size(p));

    apx_coro_create(&c[0], p, touch_body, NULL);
    first = c[0];
    apx_coro_destroy(c[0]);
    apx_coro_create(&c[0], p, touch_body, NULL);
    ok(c[0] == first, "a destroyed coroutine's stack is reused next");
    apx_coro_destroy(c[0]);

    for (round = 0; round < 1000; round++) {
        for (i = 0; i < 10; i++) {
            if (apx_coro_create(&c[i], p, touch_body, NULL) != APR_SUCCESS) {
                bad++;
                c[i] = NULL;
                continue;
            }
            bad += apx_coro_resume(c[i]) != 3;
        }
        for (i = 0; i < 10; i++)
            apx_coro_destroy(c[i]);
    }
    is_int(bad, 0, "10,000 coroutines created, run and destroyed");
    is_int(p->maps, 10, "only 10 stacks ever mapped");
    apx_stack_pool_stats(p, &in_use, &nfree);
    ok(in_use == 0 && nfree == 10, "stats: %u in use, %u free", in_use,
       nfree);

    for (i = 0; i < 40; i++)
        apx_coro_create(&c[i], p, touch_body, NULL);
    apx_stack_pool_stats(p, &in_use, &nfree);
    ok(in_use == 40 && nfree == 0, "40 in use, free list drained");
    for (i = 0; i < 40; i++)
        apx_coro_destroy(c[i]);
    apx_stack_pool_stats(p, &in_use, &nfree);
    ok(in_use == 0 && nfree == 16, "free list capped at 16 (got %u)", nfree);
    is_int(apx_stack_pool_cold(p), 24, "the other 24 kept cold");
    is_int(p->maps, 40, "40 stacks mapped in all");
    is_int(p->unmaps, 0, "none unmapped");
    apx_stack_pool_destroy(p);
}

/* ---- cold stacks ---------------------------------------------------------- */

/* Resident bytes of a stack kept cold (its struct is gone: no coro API). */
static size_t cold_resident(const apx_stack_pool *p, void *top_struct)
{
    char *lo = (char *)top_struct + CORO_HDR - p->stack_size;
    size_t npages = p->stack_size / p->page, i, n = 0;
    unsigned char *vec = malloc(npages);

    if (!vec || mincore(lo, p->stack_size, vec) != 0) {
        free(vec);
        return (size_t)-1;
    }
    for (i = 0; i < npages; i++)
        n += vec[i] & 1;
    free(vec);
    return n * p->page;
}

static intptr_t deep_body(apx_coro *coro, void *data)
{
    char buf[40 * 1024];
    volatile char *v = buf;
    size_t i;

    for (i = 0; i < sizeof(buf); i += 512)
        v[i] = (char)i;
    apx_coro_yield(coro, 1);
    return v[512] == (char)512 ? 7 : -1;
}

static void test_cold(void)
{
    apx_stack_pool *p;
    apx_coro *c[10];
    unsigned in_use, nfree;
    size_t res, worst = 0;
    int i, bad = 0;

    is_int(apx_stack_pool_create(&p, 64 * 1024, 2), APR_SUCCESS, "pool");
    for (i = 0; i < 10; i++) {
        apx_coro_create(&c[i], p, deep_body, NULL);
        bad += apx_coro_resume(c[i]) != 1;
    }
    ok(apx_coro_stack_resident(c[0]) >= 40 * 1024,
       "a deep coroutine has its pages resident");
    for (i = 0; i < 10; i++) {
        bad += apx_coro_resume(c[i]) != 7;
        apx_coro_destroy(c[i]);
    }
    is_int(bad, 0, "10 deep coroutines ran");
    apx_stack_pool_stats(p, &in_use, &nfree);
    ok(in_use == 0 && nfree == 2 && apx_stack_pool_cold(p) == 8,
       "2 warm, 8 cold (%u, %u)", nfree, apx_stack_pool_cold(p));
    for (i = 0; i < (int)p->ncold; i++) {
        res = cold_resident(p, p->cold[i]);
        if (res > worst)
            worst = res;
    }
    is_int((int)worst, 0, "a cold stack has no resident page");
    is_int((int)p->unmaps, 0, "nothing unmapped");

    for (i = 0; i < 10; i++) {
        apx_coro_create(&c[i], p, deep_body, NULL);
        bad += apx_coro_resume(c[i]) != 1;
    }
    is_int((int)p->maps, 10, "cold and warm stacks reused: no new mapping");
    apx_stack_pool_set_max_cold(p, 3);
    for (i = 0; i < 10; i++) {
        bad += apx_coro_resume(c[i]) != 7;
        apx_coro_destroy(c[i]);
    }
    is_int(bad, 0, "they ran deep again on zeroed pages");
    ok(apx_stack_pool_cold(p) == 3 && p->unmaps == 5,
       "over both caps the rest is unmapped (%u cold, %lu unmapped)",
       apx_stack_pool_cold(p), p->unmaps);
    apx_stack_pool_set_max_cold(p, 0);
    ok(apx_stack_pool_cold(p) == 0 && p->unmaps == 8,
       "lowering the cap unmaps the surplus at once (%lu unmapped)",
       p->unmaps);
    apx_coro_create(&c[0], p, deep_body, NULL);
    apx_coro_destroy(c[0]);
    apx_coro_create(&c[1], p, deep_body, NULL);
    apx_coro_create(&c[2], p, deep_body, NULL);
    apx_coro_create(&c[3], p, deep_body, NULL);
    for (i = 1; i < 4; i++)
        apx_coro_destroy(c[i]);
    ok(apx_stack_pool_cold(p) == 0 && p->unmaps == 9 && p->maps == 11,
       "cap 0: a warm list only, as before (%lu maps, %lu unmaps)",
       p->maps, p->unmaps);
    apx_stack_pool_destroy(p);
}

/* ---- nested resume ------------------------------------------------------ */

static intptr_t inner_body(apx_coro *coro, void *data)
{
    int i;

    for (i = 1; i <= 3; i++)
        if (apx_coro_current() != coro
            || apx_coro_yield(coro, i * 100) != i)
            return -1;
    return 1000;
}

static void destroy_defer(void *arg)
{
    apx_coro_destroy(arg);
}

static intptr_t outer_body(apx_coro *coro, void *data)
{
    apx_coro *inner;
    intptr_t sum = 0;
    int i;

    if (apx_coro_create(&inner, pool, inner_body, NULL) != APR_SUCCESS)
        return -1;
    apx_coro_defer(coro, destroy_defer, inner);
    sum += apx_coro_resume(inner);
    for (i = 1; i <= 3; i++) {
        if (apx_coro_current() != coro)
            return -2;
        apx_coro_yield(coro, sum);
        sum += apx_coro_resume_value(inner, i);
    }
    return sum + (apx_coro_is_finished(inner) ? 1 : 0);
}

static void test_nested(void)
{
    apx_coro *outer;
    intptr_t v[4];
    int i;

    apx_coro_create(&outer, pool, outer_body, NULL);
    for (i = 0; i < 4; i++)
        v[i] = apx_coro_resume(outer);
    ok(v[0] == 100 && v[1] == 300 && v[2] == 600 && v[3] == 1601,
       "a coroutine resumes another (%ld %ld %ld %ld)", (long)v[0],
       (long)v[1], (long)v[2], (long)v[3]);
    ok(apx_coro_current() == NULL, "current restored through two levels");
    apx_coro_destroy(outer);
}

/* ---- cross-thread resume ------------------------------------------------ */

#define XT_ROUNDS 40

struct xt {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int turn;                   /* 0 creator, 1 or 2 a resumer, 3 done */
    apx_coro *coro;
    int resumes;
    long creator_tid;
    long resumer_tid[XT_ROUNDS + 1];
    long coro_tid[XT_ROUNDS + 1];
    intptr_t got[XT_ROUNDS + 1];
    int current_inside, current_after, bad_values;
    int order[2], norder;
    long defer_tid;
};

static struct xt xt;

static void xt_defer(void *arg)
{
    xt.order[xt.norder++] = (int)(intptr_t)arg;
    xt.defer_tid = thread_id();
}

static intptr_t xt_body(apx_coro *coro, void *data)
{
    struct xt *x = data;
    int i;

    apx_coro_defer(coro, xt_defer, (void *)1);
    apx_coro_defer(coro, xt_defer, (void *)2);
    for (i = 0; i < XT_ROUNDS; i++) {
        x->coro_tid[i] = thread_id();
        x->current_inside += apx_coro_current() == coro;
        if (apx_coro_yield(coro, i * 10) != 1000 + i + 1)
            x->bad_values++;
    }
    x->coro_tid[XT_ROUNDS] = thread_id();
    x->current_inside += apx_coro_current() == coro;
    return 12345;
}

static void *xt_creator(void *arg)
{
    pthread_mutex_lock(&xt.mu);
    xt.creator_tid = thread_id();
    if (apx_coro_create(&xt.coro, pool, xt_body, &xt) == APR_SUCCESS)
        xt.turn = 1;
    else
        xt.turn = 3;
    pthread_cond_broadcast(&xt.cv);
    pthread_mutex_unlock(&xt.mu);
    return NULL;
}

static void *xt_resumer(void *arg)
{
    int me = (int)(intptr_t)arg;

    for (;;) {
        int k;

        pthread_mutex_lock(&xt.mu);
        while (xt.turn != me && xt.turn != 3)
            pthread_cond_wait(&xt.cv, &xt.mu);
        if (xt.turn == 3) {
            pthread_mutex_unlock(&xt.mu);
            return NULL;
        }
        pthread_mutex_unlock(&xt.mu);

        /* The turn hands the coroutine over as one unit, like a parked
         * request popped by another worker. */
        k = xt.resumes++;
        xt.resumer_tid[k] = thread_id();
        xt.got[k] = apx_coro_resume_value(xt.coro, 1000 + k);
        xt.current_after += apx_coro_current() == NULL;

        pthread_mutex_lock(&xt.mu);
        xt.turn = apx_coro_is_finished(xt.coro) || xt.resumes > XT_ROUNDS
                  ? 3 : 3 - me;
        pthread_cond_broadcast(&xt.cv);
        pthread_mutex_unlock(&xt.mu);
    }
}

static void test_cross_thread(void)
{
    pthread_t a, b, c;
    int k, vals_ok = 1, tids_ok = 1, alternates = 1;

    pthread_mutex_init(&xt.mu, NULL);
    pthread_cond_init(&xt.cv, NULL);
    pthread_create(&b, NULL, xt_resumer, (void *)1);
    pthread_create(&c, NULL, xt_resumer, (void *)2);
    pthread_create(&a, NULL, xt_creator, NULL);
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    pthread_join(c, NULL);

    is_int(xt.resumes, XT_ROUNDS + 1, "resumed the expected number of times");
    for (k = 0; k < XT_ROUNDS; k++)
        if (xt.got[k] != k * 10)
            vals_ok = 0;
    ok(vals_ok && xt.got[XT_ROUNDS] == 12345 && xt.bad_values == 0,
       "values cross threads both ways");
    for (k = 0; k <= XT_ROUNDS; k++) {
        if (xt.coro_tid[k] != xt.resumer_tid[k])
            tids_ok = 0;
        if (k && xt.resumer_tid[k] == xt.resumer_tid[k - 1])
            alternates = 0;
    }
    ok(tids_ok, "the coroutine ran on whichever thread resumed it");
    ok(alternates && xt.resumer_tid[0] != xt.creator_tid,
       "resumes alternated between two threads, neither the creator");
    is_int(xt.current_inside, XT_ROUNDS + 1,
           "apx_coro_current() right after every migration");
    is_int(xt.current_after, XT_ROUNDS + 1,
           "resumers' current restored to NULL");
    ok(apx_coro_is_finished(xt.coro), "finished");
    ok(xt.norder == 2 && xt.order[0] == 2 && xt.order[1] == 1,
       "defers ran in reverse order");
    ok(xt.defer_tid == xt.resumer_tid[XT_ROUNDS],
       "on the thread of the final resume");
    apx_coro_destroy(xt.coro);
    pthread_cond_destroy(&xt.cv);
    pthread_mutex_destroy(&xt.mu);
}

/* Created on one thread, suspended on a second, destroyed on a third. */
static apx_coro *xd_coro;

static intptr_t xd_body(apx_coro *coro, void *data)
{
    apx_coro_defer(coro, xt_defer, (void *)7);
    apx_coro_yield(coro, 0);
    return 0;
}

static void *xd_resume(void *arg)
{
    apx_coro_resume(xd_coro);
    return NULL;
}

static void test_cross_thread_destroy(void)
{
    pthread_t t;

    xt.norder = 0;
    apx_coro_create(&xd_coro, pool, xd_body, NULL);
    pthread_create(&t, NULL, xd_resume, NULL);
    pthread_join(t, NULL);
    is_int(xt.norder, 0, "suspended on another thread");
    apx_coro_destroy(xd_coro);
    ok(xt.norder == 1 && xt.order[0] == 7 && xt.defer_tid == thread_id(),
       "destroyed here: its defer ran here");
}

/* ---- guard page --------------------------------------------------------- */

static char *guard_lo, *guard_hi;
static int guard_fd = -1;
static volatile int recurse_limit = 1 << 30;

static void segv_handler(int sig, siginfo_t *si, void *uc)
{
    char c = (char *)si->si_addr >= guard_lo && (char *)si->si_addr < guard_hi
             ? 'G' : 'X';
    struct sigaction dfl;

    if (write(guard_fd, &c, 1) != 1)
        _exit(4);
    /* Back to the default action: returning re-runs the faulting access,
     * and the kernel kills the child with SIGSEGV. */
    memset(&dfl, 0, sizeof(dfl));
    dfl.sa_handler = SIG_DFL;
    sigaction(SIGSEGV, &dfl, NULL);
}

static __attribute__((noinline)) int recurse(int depth)
{
    volatile char buf[256];

    buf[0] = (char)depth;
    buf[255] = 1;
    if (depth >= recurse_limit)
        return buf[0];
    return recurse(depth + 1) + buf[depth & 255];
}

static intptr_t overflow_body(apx_coro *coro, void *data)
{
    return recurse(0);
}

static void overflow_child(int fd)
{
    apx_stack_pool *p;
    apx_coro *coro;
    stack_t ss;
    struct sigaction sa;

    guard_fd = fd;
    ss.ss_sp = malloc(64 * 1024);
    ss.ss_size = 64 * 1024;
    ss.ss_flags = 0;
    if (!ss.ss_sp || sigaltstack(&ss, NULL) != 0)
        _exit(2);
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = segv_handler;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGSEGV, &sa, NULL) != 0)
        _exit(2);
    if (apx_stack_pool_create(&p, 32 * 1024, 0) != APR_SUCCESS
        || apx_coro_create(&coro, p, overflow_body, NULL) != APR_SUCCESS)
        _exit(2);
    guard_hi = stack_lo(coro);
    guard_lo = guard_hi - p->page;
    apx_coro_resume(coro);
    _exit(3);                   /* the recursion came back: no fault */
}

static void test_guard_page(void)
{
    int fds[2], status = 0;
    char c = 0;
    pid_t pid;

    if (pipe(fds) != 0) {
        ok(0, "pipe");
        return;
    }
    fflush(stdout);
    pid = fork();
    if (pid == 0) {
        close(fds[0]);
        overflow_child(fds[1]);
    }
    close(fds[1]);
    if (read(fds[0], &c, 1) != 1)
        c = 0;
    close(fds[0]);
    waitpid(pid, &status, 0);
    ok(WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV,
       "stack overflow in a coroutine kills the child with SIGSEGV "
       "(status 0x%x)", status);
    is_int(c, 'G', "the faulting address is in the guard page");
}

/* ---- stack trim and resident bytes -------------------------------------- */

#define DEEP (96 * 1024)

static __attribute__((noinline)) int touch_deep(void)
{
    char buf[DEEP];
    volatile char *p = buf;
    int i, sum = 0;

    for (i = 0; i < DEEP; i += 256)
        p[i] = (char)i;
    for (i = 0; i < DEEP; i += 4096)
        sum += p[i];
    return sum;
}

static intptr_t trim_body(apx_coro *coro, void *data)
{
    /* Live data just above the saved stack pointer must survive a trim
     * with keep == 0. */
    volatile unsigned char live[600];
    unsigned i, sum = 0;
    int deep = touch_deep();

    for (i = 0; i < sizeof(live); i++)
        live[i] = (unsigned char)(i * 7);
    apx_coro_yield(coro, 1);
    for (i = 0; i < sizeof(live); i++)
        sum += live[i] == (unsigned char)(i * 7);
    if (touch_deep() != deep)
        return -1;
    apx_coro_yield(coro, sum);
    return 0;
}

static void test_trim(void)
{
    apx_stack_pool *p;
    apx_coro *coro;
    size_t fresh, deep, trimmed, again;

    apx_stack_pool_create(&p, 256 * 1024, 0);
    apx_coro_create(&coro, p, trim_body, NULL);
    fresh = apx_coro_stack_resident(coro);
    apx_coro_resume(coro);
    deep = apx_coro_stack_resident(coro);
    apx_coro_stack_trim(coro, 0);
    trimmed = apx_coro_stack_resident(coro);
    diag("resident stack: fresh %zu, after a %d KB call %zu, trimmed %zu",
         fresh, DEEP / 1024, deep, trimmed);
    ok(fresh <= 8192, "a fresh stack has its top page or two resident");
    ok(deep >= DEEP, "a deep call made the stack resident");
    ok(trimmed <= 16384 && trimmed < deep,
       "trim gave back the pages below the stack pointer");
    is_int(apx_coro_resume(coro), 600,
           "live frames survived the trim and the coroutine ran deep again");
    again = apx_coro_stack_resident(coro);
    ok(again >= DEEP, "pages came back on use (%zu)", again);
    apx_coro_stack_trim(coro, 32 * 1024);
    trimmed = apx_coro_stack_resident(coro);
    ok(trimmed >= 32 * 1024 && trimmed <= 48 * 1024,
       "trim keeps `keep` bytes below the stack pointer (%zu)", trimmed);
    apx_coro_resume(coro);
    ok(apx_coro_is_finished(coro), "finished after the trims");
    apx_coro_destroy(coro);
    apx_stack_pool_destroy(p);
}

/* ---- FPU state and stack alignment -------------------------------------- */

static __attribute__((noinline)) int frame_aligned(void)
{
    /* With a frame pointer, rbp (x29) is 16-aligned iff the call site was. */
    return ((uintptr_t)__builtin_frame_address(0) & 15) == 0;
}

static intptr_t fp_body(apx_coro *coro, void *data)
{
    char *out = data;
    volatile double x = 3.14159265;
    int aligned = frame_aligned();

    snprintf(out, 64, "%.3f %g %.2Lf", x, x * 2, (long double)x);
    apx_coro_yield(coro, 0);
    snprintf(out + 64, 64, "%.1e", x / 2);
#if defined(__x86_64__)
    /* Round toward zero inside; the resumer must not see it. */
    __builtin_ia32_ldmxcsr((__builtin_ia32_stmxcsr() & ~0x6000u) | 0x6000u);
    apx_coro_yield(coro, 0);
    aligned += ((__builtin_ia32_stmxcsr() >> 13) & 3) == 3 ? 10 : 0;
#endif
    return aligned + frame_aligned();
}

static void test_fp(void)
{
    apx_coro *coro;
    char out[128];
    intptr_t rv;

    memset(out, 0, sizeof(out));
    apx_coro_create(&coro, pool, fp_body, out);
    apx_coro_resume(coro);
    is_str(out, "3.142 6.28319 3.14", "snprintf of doubles inside");
    apx_coro_resume(coro);
    is_str(out + 64, "1.6e+00", "and after a yield");
#if defined(__x86_64__)
    ok(((__builtin_ia32_stmxcsr() >> 13) & 3) == 0,
       "the coroutine's MXCSR rounding mode stayed inside");
    rv = apx_coro_resume(coro);
    is_int(rv, 12, "its rounding mode came back with it; frames 16-aligned");
#else
    rv = apx_coro_resume(coro);
    is_int(rv, 2, "frames 16-aligned at every call");
#endif
    apx_coro_destroy(coro);
}

int main(void)
{
    if (apx_stack_pool_create(&pool, STACK_SIZE, 64) != APR_SUCCESS) {
        ok(0, "stack pool");
        return done_testing();
    }
    diag("switch: %s, struct apx_coro %zu bytes",
         CORO_UCONTEXT ? "ucontext" : "assembly", sizeof(struct apx_coro));
    test_sequence();
    test_resume_value();
    test_current();
    test_defer_on_return();
    test_defer_on_destroy();
    test_disarm_fire();
    test_defer_growth();
    test_defer_lifo_reuse();
    test_defer_oom();
    test_many();
    test_cold();
    test_nested();
    test_fp();
    test_trim();
    test_cross_thread();
    test_cross_thread_destroy();
    test_guard_page();
    {
        unsigned in_use;

        apx_stack_pool_stats(pool, &in_use, NULL);
        is_int(in_use, 0, "every coroutine returned its stack");
    }
    apx_stack_pool_destroy(pool);
    return done_testing();
}
