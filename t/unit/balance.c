/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* t/unit/balance.c — upstream groups on a fake clock with a seeded random
 * source: smooth WRR interleaving, p2c-ewma cost and a simulation with one
 * slow member, ejection/backoff/share/recovery/slow start, active checks,
 * consistent hashing (stability, minimal movement, bounded load), sticky
 * routes, the retry budget; then a micro-benchmark (printed, not asserted). */
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <apr_general.h>
#include "tap.h"
#include "../../poller/balance.c"

#define BASE ((apr_time_t)1700000000 * APR_USEC_PER_SEC)
#define MS(ms) ((apr_interval_time_t)(ms) * 1000)
#define SEC(s) apr_time_from_sec(s)

static apr_pool_t *pool;

/* A group of n members named m0..m(n-1), routes r0..r(n-1), weights w
 * (NULL: all 1). */
static apx_bal_group *mkgroup(const apx_bal_config *cfg, unsigned n,
                              const unsigned *w, apr_time_t now)
{
    static char names[APX_BAL_MAX][16], routes[APX_BAL_MAX][16];
    apx_bal_member_spec specs[APX_BAL_MAX];
    apx_bal_group *g = NULL;
    unsigned i;

    for (i = 0; i < n; i++) {
        snprintf(names[i], sizeof(names[i]), "m%u", i);
        snprintf(routes[i], sizeof(routes[i]), "r%u", i);
        specs[i].name = names[i];
        specs[i].route = routes[i];
        specs[i].weight = w ? w[i] : 1;
    }
    if (apx_bal_group_create(&g, pool, cfg, specs, n, now) != APR_SUCCESS)
        return NULL;
    return g;
}

static void cfg_of(apx_bal_config *cfg, int method)
{
    apx_bal_config_init(cfg);
    cfg->method = method;
}

/* The defaults with `method`, and the random source seeded. */
static void setup(apx_bal_config *cfg, int method, apx_bal_rng *rng,
                  apr_uint64_t seed)
{
    cfg_of(cfg, method);
    apx_bal_rng_seed(rng, seed);
}

/* ---- smooth weighted round robin ---------------------------------------- */

static void test_wrr(void)
{
    static const struct {
        unsigned n, w[4];
        const char *want;       /* one period, member i as 'a' + i */
    } rows[] = {
        { 3, { 5, 1, 1 }, "aabacaa" },      /* nginx's documented example */
        { 2, { 2, 1 }, "aba" },
        { 3, { 1, 1, 1 }, "abc" },
        { 3, { 4, 2, 1 }, "abacaba" },
    };
    apx_bal_config cfg;
    apx_bal_rng rng;
    unsigned r, k, idx;

    setup(&cfg, APX_BAL_WRR, &rng, 1);
    for (r = 0; r < sizeof(rows) / sizeof(rows[0]); r++) {
        apx_bal_group *g = mkgroup(&cfg, rows[r].n, rows[r].w, BASE);
        size_t len = strlen(rows[r].want);
        char got[64] = "";

        for (k = 0; k < 3 * len; k++) {
            apx_bal_pick(g, NULL, BASE, &rng, &idx);
            apx_bal_done(g, idx, APX_BAL_OK, MS(1), BASE);
            got[k] = (char)('a' + idx);
        }
        got[3 * len] = 0;
        ok(strncmp(got, rows[r].want, len) == 0
           && strncmp(got + len, rows[r].want, len) == 0
           && strncmp(got + 2 * len, rows[r].want, len) == 0,
           "wrr %u members: sequence %s repeats %s", rows[r].n, got,
           rows[r].want);
    }
    {
        unsigned w[3] = { 5, 1, 1 }, cnt[3] = { 0, 0, 0 };
        apx_bal_group *g = mkgroup(&cfg, 3, w, BASE);

        for (k = 0; k < 700; k++) {
            apx_bal_pick(g, NULL, BASE, &rng, &idx);
            apx_bal_done(g, idx, APX_BAL_OK, MS(1), BASE);
            cnt[idx]++;
        }
        ok(cnt[0] == 500 && cnt[1] == 100 && cnt[2] == 100,
           "wrr {5,1,1}: 700 picks split 500/100/100 (got %u/%u/%u)",
           cnt[0], cnt[1], cnt[2]);
    }
}

/* ---- p2c-ewma ---------------------------------------------------------- */

/* p2c's candidates are drawn in proportion to effective weight, with the
 * excluded members (the first candidate, a failed member) cut out. */
static void test_sample(void)
{
    static const struct {
        int ex1, ex2;
        unsigned want[4];       /* expected shares, per mille */
    } rows[] = {
        { -1, -1, { 100, 200, 300, 400 } },
        { 2, -1, { 143, 286, 0, 571 } },
        { 3, 0, { 0, 400, 600, 0 } },
        { 1, 1, { 125, 0, 375, 500 } },
    };
    static const unsigned w[4] = { 1, 2, 3, 4 };
    enum { DRAWS = 100000 };
    apx_bal_config cfg;
    apx_bal_group *g;
    apx_bal_rng rng;
    unsigned r, k;

    cfg_of(&cfg, APX_BAL_P2C_EWMA);
    g = mkgroup(&cfg, 4, w, BASE);
    apx_bal_rng_seed(&rng, 14);
    for (r = 0; r < sizeof(rows) / sizeof(rows[0]); r++) {
        unsigned cnt[4] = { 0, 0, 0, 0 }, off = 0;

        for (k = 0; k < DRAWS; k++)
            cnt[sample(g, &rng, rows[r].ex1, rows[r].ex2)]++;
        for (k = 0; k < 4; k++) {
            unsigned got = (unsigned)((cnt[k] * 1000ULL + DRAWS / 2) / DRAWS);

            off += got + 10 < rows[r].want[k] || got > rows[r].want[k] + 10
                   || (rows[r].want[k] == 0 && cnt[k] != 0);
        }
        ok(off == 0, "weighted draw excluding %d and %d: %u/%u/%u/%u per "
           "10^5, as weights", rows[r].ex1, rows[r].ex2, cnt[0], cnt[1],
           cnt[2], cnt[3]);
    }
    g->m[0].state = APX_BAL_DOWN;
    g->m[1].state = APX_BAL_DOWN;
    g->m[2].state = APX_BAL_DOWN;
    refresh(g, BASE);
    is_int(sample(g, &rng, 3, -1), -1, "nothing left after exclusion: -1");
}

static void test_p2c_cost(void)
{
    /* With two members p2c always compares both: the cheaper wins. */
    static const struct {
        double lat[2];
        unsigned inflight[2], w[2];
        unsigned want;
        const char *why;
    } rows[] = {
        { { 10000, 1000 }, { 0, 0 }, { 1, 1 }, 1, "lower latency wins" },
        { { 1000, 1000 }, { 5, 1 }, { 1, 1 }, 1, "fewer in flight wins" },
        { { 1000, 5000 }, { 9, 0 }, { 1, 1 }, 1,
          "1 ms x 10 in flight costs more than 5 ms x 1" },
        { { 1000, 5000 }, { 3, 0 }, { 1, 1 }, 0,
          "1 ms x 4 in flight costs less than 5 ms x 1" },
        { { 2000, 1000 }, { 1, 1 }, { 4, 1 }, 0,
          "weight 4 divides the cost of the slower member" },
    };
    apx_bal_config cfg;
    apx_bal_rng rng;
    unsigned r, k, idx;

    setup(&cfg, APX_BAL_P2C_EWMA, &rng, 2);
    for (r = 0; r < sizeof(rows) / sizeof(rows[0]); r++) {
        apx_bal_group *g = mkgroup(&cfg, 2, rows[r].w, BASE);
        int all = 1;

        for (k = 0; k < 2; k++) {
            g->m[k].ewma = rows[r].lat[k];
            g->m[k].ewma_at = BASE;
            g->m[k].samples = 1;
            g->m[k].inflight = rows[r].inflight[k];
        }
        for (k = 0; k < 50; k++) {
            apx_bal_pick(g, NULL, BASE, &rng, &idx);
            all &= idx == rows[r].want;
            apx_bal_done(g, idx, APX_BAL_ABORTED, 0, BASE);
        }
        ok(all, "p2c: %s", rows[r].why);
    }
}

static double fabs_d(double x)
{
    return x < 0 ? -x : x;
}

static void test_ewma(void)
{
    apx_bal_config cfg;
    apx_bal_group *g;
    apx_bal_member *m;
    double e;

    ok(exp_neg(0) == 1.0 && fabs_d(exp_neg(1) - 0.36787944117) < 1e-9
       && fabs_d(exp_neg(10) - 4.539992976e-5) < 1e-12
       && exp_neg(800) == 0.0, "exp_neg matches e^-x");
    cfg_of(&cfg, APX_BAL_P2C_EWMA);
    g = mkgroup(&cfg, 1, NULL, BASE);
    m = &g->m[0];
    observe(g, m, 1000, BASE);
    ok(m->ewma == 1000, "first sample is the estimate");
    observe(g, m, 50000, BASE + MS(1));
    ok(m->ewma == 50000, "a slower sample replaces it at once (peak)");
    observe(g, m, 1000, BASE + MS(1) + SEC(10));
    e = 50000 * exp_neg(1) + 1000 * (1 - exp_neg(1));
    ok(fabs_d(m->ewma - e) < 1e-6,
       "a faster one 10 s (tau) later blends in with weight 1 - 1/e (%.0f)",
       m->ewma);
    ok(fabs_d(apx_bal_latency(g, 0, m->ewma_at + SEC(10)) - e * exp_neg(1))
       < 1e-6, "reading decays the estimate of an idle member");
}

/* Discrete-time simulation: one request per ms for 30 s on 4 members, the
 * last one 10x slower; each answers after its fixed latency. */
static void test_p2c_sim(void)
{
    static const apr_interval_time_t lat[4] = { MS(10), MS(10), MS(10), MS(100) };
    enum { N = 30000, QMAX = 4096 };
    static apr_time_t due[4][QMAX];
    unsigned head[4] = { 0 }, tail[4] = { 0 }, cnt[4] = { 0 };
    apx_bal_config cfg;
    apx_bal_group *g;
    apx_bal_rng rng;
    unsigned t, k, idx;

    cfg_of(&cfg, APX_BAL_P2C_EWMA);
    g = mkgroup(&cfg, 4, NULL, BASE);
    apx_bal_rng_seed(&rng, 3);
    for (t = 0; t < N; t++) {
        apr_time_t now = BASE + MS(t);

        for (k = 0; k < 4; k++) {
            while (head[k] != tail[k] && due[k][head[k] % QMAX] <= now) {
                apx_bal_done(g, k, APX_BAL_OK, lat[k], now);
                head[k]++;
            }
        }
        apx_bal_pick(g, NULL, now, &rng, &idx);
        due[idx][tail[idx]++ % QMAX] = now + lat[idx];
        cnt[idx]++;
    }
    diag("p2c sim: shares %u / %u / %u / slow %u", cnt[0], cnt[1], cnt[2],
         cnt[3]);
    ok(cnt[3] * 10 <= N, "p2c sends >= 90%% of traffic away from a 10x slower "
       "member (%.2f%% to it)", 100.0 * cnt[3] / N);
    ok(cnt[0] > N / 5 && cnt[1] > N / 5 && cnt[2] > N / 5,
       "the three fast members share the rest");
}

/* ---- passive health ----------------------------------------------------- */

static int fail_n(apx_bal_group *g, unsigned idx, unsigned n, apr_time_t now)
{
    int ev = APX_BAL_EV_NONE;
    unsigned k;

    for (k = 0; k < n; k++) {
        g->m[idx].inflight++;
        g->inflight++;
        ev = apx_bal_done(g, idx, APX_BAL_CONNECT_FAIL, MS(1), now);
    }
    return ev;
}

static int never_picks(apx_bal_group *g, unsigned bad, apr_time_t now,
                       apx_bal_rng *rng)
{
    unsigned k, idx;
    int never = 1;

    for (k = 0; k < 200; k++) {
        if (apx_bal_pick(g, NULL, now, rng, &idx) != APR_SUCCESS)
            return 0;
        never &= idx != bad;
        apx_bal_done(g, idx, APX_BAL_ABORTED, 0, now);
    }
    return never;
}

/* A p2c group of n members of weight 1 for the health tests; other
 * settings are changed in g->cfg afterwards. */
static apx_bal_group *health_group(unsigned n, unsigned consecutive,
                                   unsigned max_eject_pct, apx_bal_rng *rng,
                                   apr_uint64_t seed)
{
    apx_bal_config cfg;

    cfg_of(&cfg, APX_BAL_P2C_EWMA);
    cfg.consecutive = consecutive;
    cfg.max_eject_pct = max_eject_pct;
    apx_bal_rng_seed(rng, seed);
    return mkgroup(&cfg, n, NULL, BASE);
}

static void test_eject(void)
{
    apx_bal_rng rng;
    apx_bal_group *g = health_group(4, 3, 50, &rng, 4);
    apr_time_t t = BASE;

    g->cfg.recover_checking = 0;

    is_int(fail_n(g, 1, 2, t), APX_BAL_EV_NONE, "two failures: still up");
    g->m[1].inflight++;
    g->inflight++;
    apx_bal_done(g, 1, APX_BAL_OK, MS(1), t);
    is_int(fail_n(g, 1, 2, t), APX_BAL_EV_NONE, "a success resets the count");
    is_int(fail_n(g, 1, 1, t), APX_BAL_EV_EJECTED, "third failure in a row ejects");
    is_int(g->m[1].state, APX_BAL_EJECTED, "state ejected");
    is_int(g->m[1].until - t, SEC(30), "first ejection: base_eject (30 s)");
    ok(never_picks(g, 1, t + SEC(29), &rng), "never picked while ejected");
    is_int(apx_bal_refresh(g, t + SEC(30)), 4, "back at its time");
    is_int(g->m[1].state, APX_BAL_UP, "directly up (recover_checking = 0)");

    /* slow start: 10 % at first, 5 % steps, full after 10 s */
    t += SEC(30);
    is_int(g->m[1].eff_weight, APX_BAL_WSCALE / 10, "slow start begins at 10 %");
    apx_bal_refresh(g, t + SEC(5));
    is_int(g->m[1].eff_weight, APX_BAL_WSCALE / 2, "half weight half-way");
    apx_bal_refresh(g, t + MS(9999));
    is_int(g->m[1].eff_weight, APX_BAL_WSCALE * 95 / 100, "95 % just before the end");
    apx_bal_refresh(g, t + SEC(10));
    is_int(g->m[1].eff_weight, APX_BAL_WSCALE, "full weight after the window");
    is_int(g->m[1].ramp_start, 0, "ramp over");

    /* backoff grows when ejected again soon, capped at max_eject */
    t += SEC(11);
    fail_n(g, 1, 3, t);
    is_int(g->m[1].until - t, SEC(60), "second ejection: 2 x base");
    t = g->m[1].until;
    apx_bal_refresh(g, t);
    fail_n(g, 1, 3, t);
    is_int(g->m[1].until - t, SEC(90), "third: 3 x base");
    g->cfg.max_eject = SEC(100);
    t = g->m[1].until;
    apx_bal_refresh(g, t);
    fail_n(g, 1, 3, t);
    is_int(g->m[1].until - t, SEC(100), "fourth: capped at max_eject");
    is_int(g->m[1].ejections, 4, "four ejections counted");
    /* 10 minutes in service forget the multiplier (one per base_eject) */
    t = g->m[1].until;
    apx_bal_refresh(g, t);
    fail_n(g, 1, 3, t + SEC(600));
    is_int(g->m[1].until - (t + SEC(600)), SEC(30),
           "after 10 min healthy the backoff is back to base");
}

static void test_eject_share(void)
{
    static const struct {
        unsigned n, pct, max_ejected;
    } rows[] = {
        { 4, 50, 2 },
        { 4, 10, 1 },       /* the first ejection is always allowed */
        { 4, 100, 3 },      /* ... but one member stays eligible */
        { 1, 100, 0 },
        { 10, 30, 3 },
    };
    apx_bal_rng rng;
    unsigned r, i, idx;

    for (r = 0; r < sizeof(rows) / sizeof(rows[0]); r++) {
        apx_bal_group *g = health_group(rows[r].n, 2, rows[r].pct, &rng, 5);
        int denied = 0;

        for (i = 0; i < rows[r].n; i++)
            if (fail_n(g, i, 5, BASE) == APX_BAL_EV_EJECT_DENIED)
                denied++;
        is_int(g->ejected, rows[r].max_ejected,
               "all fail: max_eject_pct holds");
        ok(denied == (int)(rows[r].n - rows[r].max_ejected),
           "  (%u members, %u %%: %d denied)", rows[r].n, rows[r].pct, denied);
        ok(apx_bal_pick(g, NULL, BASE, &rng, &idx) == APR_SUCCESS,
           "  a member is still eligible");
        apx_bal_done(g, idx, APX_BAL_ABORTED, 0, BASE);
    }
}

static void test_checking(void)
{
    apx_bal_rng rng;
    apx_bal_group *g = health_group(3, 3, 50, &rng, 13);
    apr_time_t t = BASE;

    fail_n(g, 0, 3, t);
    t = g->m[0].until;
    apx_bal_refresh(g, t);
    is_int(g->m[0].state, APX_BAL_CHECKING, "back in checking (recover_checking)");
    ok(g->m[0].eff_weight > 0, "checking is eligible");
    is_int(fail_n(g, 0, 1, t), APX_BAL_EV_EJECTED, "one failure while checking ejects");
    is_int(g->m[0].until - t, SEC(60), "... with the grown backoff");
    t = g->m[0].until;
    apx_bal_refresh(g, t);
    g->m[0].inflight += 2;
    g->inflight += 2;
    is_int(apx_bal_done(g, 0, APX_BAL_OK, MS(1), t), APX_BAL_EV_NONE,
           "one success: still checking");
    is_int(apx_bal_done(g, 0, APX_BAL_OK, MS(1), t), APX_BAL_EV_UP,
           "passes successes: up");
    is_int(g->m[0].state, APX_BAL_UP, "state up");
}

/* ---- active checks ------------------------------------------------------ */

static void test_active(void)
{
    apx_bal_rng rng;
    apx_bal_group *g = health_group(3, 2, 10, &rng, 6);   /* passes 2, fails 3 */
    apr_time_t t = BASE;

    is_int(apx_bal_check_report(g, 2, 0, t), APX_BAL_EV_NONE, "1 failed check");
    is_int(apx_bal_check_report(g, 2, 0, t), APX_BAL_EV_NONE, "2 failed checks");
    is_int(apx_bal_check_report(g, 2, 1, t), APX_BAL_EV_NONE, "a pass resets");
    apx_bal_check_report(g, 2, 0, t);
    apx_bal_check_report(g, 2, 0, t);
    is_int(apx_bal_check_report(g, 2, 0, t), APX_BAL_EV_DOWN, "fails failed checks: down");
    ok(never_picks(g, 2, t, &rng), "a down member is never picked");
    is_int(apx_bal_check_report(g, 2, 1, t + SEC(2)), APX_BAL_EV_NONE, "1 pass");
    is_int(apx_bal_check_report(g, 2, 1, t + SEC(4)), APX_BAL_EV_UP, "passes passes: up");
    is_int(g->m[2].checks_ok, 3, "checks_ok counted");
    is_int(g->m[2].checks_failed, 5, "checks_failed counted");
    apx_bal_refresh(g, t + SEC(4));
    is_int(g->m[2].eff_weight, APX_BAL_WSCALE / 10, "back from down: slow start");

    /* an ejected member whose checks pass comes back early (Envoy) */
    fail_n(g, 1, 2, t);
    is_int(g->m[1].state, APX_BAL_EJECTED, "member 1 ejected");
    apx_bal_check_report(g, 1, 1, t + SEC(1));
    is_int(apx_bal_check_report(g, 1, 1, t + SEC(2)), APX_BAL_EV_UP,
           "ejected member with passing checks: up before its time");
    is_int(g->ejected, 0, "no member counted ejected");

    /* all down: nothing eligible (checks are authoritative) */
    {
        unsigned i, k, idx;

        for (i = 0; i < 3; i++)
            for (k = 0; k < 3; k++)
                apx_bal_check_report(g, i, 0, t + SEC(5));
        is_int(apx_bal_pick(g, NULL, t + SEC(5), &rng, &idx), APR_EAGAIN,
               "every member down: APR_EAGAIN");
    }
}

/* The shared verdict mirrored into a child's group (the glue's prober in
 * another child decided it). */
static void test_check_sync(void)
{
    apx_bal_rng rng;
    apx_bal_group *g = health_group(4, 3, 50, &rng, 7);
    apr_time_t t = BASE;

    is_int(apx_bal_check_sync(g, 2, 1, 0, 0, t), APX_BAL_EV_NONE,
           "sync: up and up: nothing");
    is_int(apx_bal_check_sync(g, 2, 0, t, 0, t), APX_BAL_EV_DOWN,
           "sync: down takes an up member down at once");
    is_int(apx_bal_check_sync(g, 2, 0, t, 0, t), APX_BAL_EV_NONE,
           "sync: down again: nothing more");
    ok(never_picks(g, 2, t, &rng), "sync: a down member is never picked");
    /* up since 4 s ago: this child ramps as if it had seen it then */
    is_int(apx_bal_check_sync(g, 2, 1, t + SEC(6), t + SEC(6), t + SEC(10)),
           APX_BAL_EV_UP, "sync: up brings it back");
    is_int(g->m[2].state, APX_BAL_UP, "sync: state up");
    apx_bal_refresh(g, t + SEC(10));
    is_int(g->m[2].eff_weight, APX_BAL_WSCALE * 40 / 100,
           "sync: slow start counted from the verdict (40 % after 4 s of 10)");
    apx_bal_refresh(g, t + SEC(16));
    is_int(g->m[2].eff_weight, APX_BAL_WSCALE, "sync: full weight at since + 10 s");

    /* passive ejection: a check that passed before it does not undo it,
     * one that passed after it does (on probation, slow-starting) */
    t += SEC(20);
    fail_n(g, 1, 3, t);
    is_int(g->m[1].state, APX_BAL_EJECTED, "sync: member 1 ejected passively");
    is_int(apx_bal_check_sync(g, 1, 1, BASE, t - SEC(1), t + SEC(1)),
           APX_BAL_EV_NONE, "sync: a pass from before the ejection: still out");
    is_int(apx_bal_check_sync(g, 1, 1, BASE, t + MS(500), t + SEC(1)),
           APX_BAL_EV_UP, "sync: a pass after the ejection: back early");
    is_int(g->m[1].state, APX_BAL_CHECKING, "sync: ... on probation");
    is_int(g->ejected, 0, "sync: no member counted ejected");
    apx_bal_refresh(g, t + SEC(1));
    is_int(g->m[1].eff_weight, APX_BAL_WSCALE / 10, "sync: ... slow-starting");

    /* ejected, then the checks say down: down (no share limit) */
    fail_n(g, 0, 3, t + SEC(2));
    is_int(g->m[0].state, APX_BAL_EJECTED, "sync: member 0 ejected");
    is_int(apx_bal_check_sync(g, 0, 0, t + SEC(2), 0, t + SEC(3)),
           APX_BAL_EV_DOWN, "sync: ejected, checks down: down");
    is_int(g->ejected, 0, "sync: the ejection count gave it back");

    /* the last member in service stays whatever the checks say */
    {
        apx_bal_group *g2 = health_group(2, 3, 50, &rng, 8);

        is_int(apx_bal_check_sync(g2, 0, 0, t, 0, t), APX_BAL_EV_DOWN,
               "sync: one of two down");
        is_int(apx_bal_check_sync(g2, 1, 0, t, 0, t), APX_BAL_EV_EJECT_DENIED,
               "sync: the last one in service stays");
        is_int(g2->m[1].state, APX_BAL_UP, "sync: ... up");
        apx_bal_check_sync(g2, 0, 1, t + SEC(1), t + SEC(1), t + SEC(1));
        is_int(apx_bal_check_sync(g2, 1, 0, t, 0, t + SEC(2)), APX_BAL_EV_DOWN,
               "sync: down once another is back");
    }

    /* draining is the administrator's */
    apx_bal_set_draining(g, 3, 1, t);
    is_int(apx_bal_check_sync(g, 3, 0, t, 0, t), APX_BAL_EV_NONE,
           "sync: draining stays draining");
    is_int(g->m[3].state, APX_BAL_DRAINING, "sync: state draining");
}

/* ---- draining ---------------------------------------------------------------- */

static void test_draining(void)
{
    apx_bal_config cfg;
    apx_bal_group *g;
    apx_bal_rng rng;
    apx_bal_req rq = { NULL, 0, "r1", 2 };
    unsigned idx;

    setup(&cfg, APX_BAL_WRR, &rng, 7);
    g = mkgroup(&cfg, 3, NULL, BASE);
    apx_bal_set_draining(g, 1, 1, BASE);
    ok(never_picks(g, 1, BASE, &rng), "draining member takes no new request");
    apx_bal_pick(g, &rq, BASE, &rng, &idx);
    is_int(idx, 1, "... but its sticky route still reaches it");
    apx_bal_done(g, idx, APX_BAL_OK, MS(1), BASE);
    apx_bal_set_draining(g, 1, 0, BASE);
    is_int(g->m[1].state, APX_BAL_UP, "undrained: up");
}

/* ---- consistent hashing ----------------------------------------------- */

static int key_pick(apx_bal_group *g, unsigned k, apx_bal_rng *rng, int release)
{
    char key[32];
    apx_bal_req rq;
    unsigned idx;

    memset(&rq, 0, sizeof(rq));
    rq.key = key;
    rq.key_len = (apr_size_t)snprintf(key, sizeof(key), "user-%u", k);
    if (apx_bal_pick(g, &rq, BASE, rng, &idx) != APR_SUCCESS)
        return -1;
    if (release)
        apx_bal_done(g, idx, APX_BAL_OK, MS(1), BASE);
    return (int)idx;
}

static void test_hash(void)
{
    enum { KEYS = 20000 };
    static int map8[KEYS];
    apx_bal_config cfg;
    apx_bal_group *g8, *g8b, *g7;
    apx_bal_member_spec specs[7];
    apx_bal_rng rng;
    unsigned k, i, moved = 0, bad = 0, same = 1, cnt[8] = { 0 };
    static char names[8][8];

    cfg_of(&cfg, APX_BAL_HASH);
    cfg.balance_pct = 0;        /* the plain ring first */
    apx_bal_rng_seed(&rng, 8);
    g8 = mkgroup(&cfg, 8, NULL, BASE);
    g8b = mkgroup(&cfg, 8, NULL, BASE);
    for (k = 0; k < KEYS; k++) {
        map8[k] = key_pick(g8, k, &rng, 1);
        same &= map8[k] == key_pick(g8, k, &rng, 1)
                && map8[k] == key_pick(g8b, k, &rng, 1);
        cnt[map8[k]]++;
    }
    ok(same, "the same key maps to the same member (again, and in another "
       "group built from the same names)");
    for (i = 0; i < 8; i++)
        bad += cnt[i] < KEYS / 8 * 7 / 10 || cnt[i] > KEYS / 8 * 13 / 10;
    ok(bad == 0, "each of 8 members holds its eighth of the keys within 30 %%");

    /* a group without m3 (names, not indexes, place the points) */
    for (i = 0, k = 0; i < 8; i++) {
        if (i == 3)
            continue;
        snprintf(names[i], sizeof(names[i]), "m%u", i);
        specs[k].name = names[i];
        specs[k].route = NULL;
        specs[k].weight = 1;
        k++;
    }
    apx_bal_group_create(&g7, pool, &cfg, specs, 7, BASE);
    bad = 0;
    for (k = 0; k < KEYS; k++) {
        int j = key_pick(g7, k, &rng, 1), was = map8[k];
        int now8 = j < 3 ? j : j + 1;   /* g7's index -> g8's */

        if (now8 != was) {
            moved++;
            bad += was != 3;
        }
    }
    is_int(bad, 0, "removing m3 moves only m3's keys");
    ok(moved > KEYS / 8 * 7 / 10 && moved < KEYS / 8 * 13 / 10,
       "about 1/8 of the keys move (%u of %u)", moved, (unsigned)KEYS);

    /* ejecting m3 maps exactly like removing it */
    g8->m[3].state = APX_BAL_DOWN;
    g8->dirty = 1;
    bad = 0;
    for (k = 0; k < KEYS; k++) {
        int j = key_pick(g7, k, &rng, 1), now8 = j < 3 ? j : j + 1;

        bad += key_pick(g8, k, &rng, 1) != now8;
    }
    is_int(bad, 0, "a member out of service maps as if removed");
}

/* Skewed keys (a few very hot), requests held in flight: with c = 1.25 no
 * member goes over ceil(1.25 x its weighted share); without the bound the
 * hottest keys' member does. */
static unsigned skewed_key(apx_bal_rng *rng)
{
    double u = (double)(apx_bal_rng_next(rng) >> 11) / 9007199254740992.0;

    return (unsigned)(u * u * u * u * 1000);   /* ~18 % of draws are key 0 */
}

/* Runs 4000 picks with the bound set to cfg_pct and counts the picks that
 * left the chosen member over ceil(pct/100 x its share); *worst is the
 * highest load seen, in % of the fair share, once 100 requests are in
 * flight. */
static int bound_run(unsigned cfg_pct, unsigned pct, const unsigned *w,
                     unsigned n, unsigned *worst_over)
{
    apx_bal_config cfg;
    apx_bal_group *g;
    apx_bal_rng rng;
    unsigned k, i, wsum = 0, over = 0;

    cfg_of(&cfg, APX_BAL_HASH);
    cfg.balance_pct = cfg_pct;
    apx_bal_rng_seed(&rng, 9);
    g = mkgroup(&cfg, n, w, BASE);
    for (i = 0; i < n; i++)
        wsum += w[i];
    *worst_over = 0;
    for (k = 0; k < 4000; k++) {
        int j = key_pick(g, skewed_key(&rng), &rng, 0);
        apr_uint64_t total = g->inflight, load;

        /* the member just chosen is within ceil(c x its share) */
        load = (apr_uint64_t)g->m[j].inflight * 100 * wsum;
        if (load >= (apr_uint64_t)pct * total * w[j] + 100 * wsum)
            over++;
        if (total >= 100 && load / (total * w[j]) > *worst_over)
            *worst_over = (unsigned)(load / (total * w[j]));
        /* one in three picks, a random request completes */
        if (k % 3 == 0) {
            unsigned v = (unsigned)(apx_bal_rng_next(&rng) % n);

            if (g->m[v].inflight)
                apx_bal_done(g, v, APX_BAL_OK, MS(1), BASE);
        }
    }
    return (int)over;
}

static void test_hash_bounded(void)
{
    static const unsigned w1[4] = { 1, 1, 1, 1 }, w2[4] = { 3, 1, 1, 1 };
    unsigned worst;
    int over;

    over = bound_run(125, 125, w1, 4, &worst);
    is_int(over, 0, "bounded load c=1.25, 4 equal members, skewed keys: no "
           "member over ceil(c x average)");
    diag("  worst load at a pick: %u %% of the fair share (the bound is a "
         "ceiling of a whole count)", worst);
    over = bound_run(125, 125, w2, 4, &worst);
    is_int(over, 0, "bounded load c=1.25, weights 3/1/1/1: no member over "
           "ceil(c x weighted share)");
    over = bound_run(0, 125, w1, 4, &worst);
    ok(over > 0, "without the bound the same keys overload a member "
       "(%d picks over, worst %u %%)", over, worst);
}

/* ---- sticky --------------------------------------------------------------- */

static void test_sticky(void)
{
    static const struct {
        const char *value, *route;
    } rows[] = {
        { "abc.node1", "node1" },
        { "abc", NULL },
        { "a.b.c", "b.c" },
        { ".x", "x" },
        { "abc.", NULL },
        { "", NULL },
    };
    apx_bal_group *g;
    apx_bal_rng rng;
    apx_bal_req rq;
    unsigned r, k, idx;
    int all = 1;

    for (r = 0; r < sizeof(rows) / sizeof(rows[0]); r++) {
        apr_size_t len = 0;
        const char *got = apx_bal_session_route(rows[r].value,
                                                strlen(rows[r].value), '.', &len);

        ok(rows[r].route ? got && len == strlen(rows[r].route)
                           && memcmp(got, rows[r].route, len) == 0
                         : got == NULL,
           "session route of \"%s\": %s", rows[r].value,
           rows[r].route ? rows[r].route : "(none)");
    }

    g = health_group(4, 1, 50, &rng, 10);
    memset(&rq, 0, sizeof(rq));
    rq.route = "r2";
    rq.route_len = 2;
    for (k = 0; k < 100; k++) {
        apx_bal_pick(g, &rq, BASE, &rng, &idx);
        all &= idx == 2;
        apx_bal_done(g, idx, APX_BAL_OK, MS(1), BASE);
    }
    ok(all, "route r2 always reaches member 2");
    rq.route = "nope";
    rq.route_len = 4;
    ok(apx_bal_pick(g, &rq, BASE, &rng, &idx) == APR_SUCCESS,
       "unknown route: the algorithm picks");
    apx_bal_done(g, idx, APX_BAL_ABORTED, 0, BASE);
    fail_n(g, 2, 1, BASE);
    is_int(g->m[2].state, APX_BAL_EJECTED, "member 2 ejected");
    rq.route = "r2";
    rq.route_len = 2;
    all = 1;
    for (k = 0; k < 100; k++) {
        apx_bal_pick(g, &rq, BASE, &rng, &idx);
        all &= idx != 2;
        apx_bal_done(g, idx, APX_BAL_ABORTED, 0, BASE);
    }
    ok(all, "route of an ejected member: falls back to the others");
}

/* ---- retries ----------------------------------------------------------- */

static void test_retry(void)
{
    apx_bal_config cfg;
    apx_bal_group *g;
    apx_bal_rng rng;
    apr_time_t t = BASE;
    unsigned k, idx, granted = 0;
    int never_same = 1;
    apr_status_t rv = APR_SUCCESS;

    cfg_of(&cfg, APX_BAL_P2C_EWMA);
    cfg.consecutive = 0;        /* no ejection: budget only */
    cfg.min_retry_rps = 0;
    apx_bal_rng_seed(&rng, 11);
    g = mkgroup(&cfg, 4, NULL, t);
    for (k = 0; k < 100; k++) {
        apx_bal_pick(g, NULL, t, &rng, &idx);
        apx_bal_done(g, idx, APX_BAL_OK, MS(1), t);
    }
    for (k = 0; k < 30; k++) {
        unsigned failed = k % 4, to;

        rv = apx_bal_retry(g, NULL, failed, t, &rng, &to);
        if (rv != APR_SUCCESS)
            break;
        granted++;
        never_same &= to != failed;
        apx_bal_done(g, to, APX_BAL_OK, MS(1), t);
    }
    is_int(granted, 20, "20 % of 100 requests: 20 retries granted");
    is_int(rv, APR_EBUSY, "the 21st is denied (APR_EBUSY)");
    ok(never_same, "a retry never goes to the member that failed");
    is_int(g->m[0].retries + g->m[1].retries + g->m[2].retries
           + g->m[3].retries, 20, "retries counted on the failed members");

    t += SEC(11);
    is_int(apx_bal_retry(g, NULL, 0, t, &rng, &idx), APR_EBUSY,
           "a window later, no traffic and no floor: denied");
    g->cfg.min_retry_rps = 1;
    for (k = 0, granted = 0; k < 20; k++) {
        if (apx_bal_retry(g, NULL, 0, t, &rng, &idx) != APR_SUCCESS)
            break;
        granted++;
        apx_bal_done(g, idx, APX_BAL_OK, MS(1), t);
    }
    is_int(granted, 10, "the floor: 1 retry/s over a 10 s window");

    /* slots expire one by one: requests 5 s ago still count */
    g->cfg.min_retry_rps = 0;
    t += SEC(20);
    for (k = 0; k < 50; k++) {
        apx_bal_pick(g, NULL, t, &rng, &idx);
        apx_bal_done(g, idx, APX_BAL_OK, MS(1), t);
    }
    for (k = 0, granted = 0; k < 20; k++) {
        if (apx_bal_retry(g, NULL, 1, t + SEC(5), &rng, &idx) != APR_SUCCESS)
            break;
        granted++;
        apx_bal_done(g, idx, APX_BAL_OK, MS(1), t + SEC(5));
    }
    is_int(granted, 10, "50 requests 5 s ago: 10 retries");
    is_int(apx_bal_retry(g, NULL, 1, t + SEC(11), &rng, &idx), APR_EBUSY,
           "11 s later they have left the window");

    /* a group of one retries on its only member; hash retries elsewhere */
    g = mkgroup(&cfg, 1, NULL, t);
    apx_bal_pick(g, NULL, t, &rng, &idx);
    apx_bal_done(g, idx, APX_BAL_CONNECT_FAIL, MS(1), t);
    g->cfg.min_retry_rps = 10;
    is_int(apx_bal_retry(g, NULL, 0, t, &rng, &idx), APR_SUCCESS,
           "group of one: the retry may use the same member");
    is_int(idx, 0, "... member 0");
    apx_bal_done(g, idx, APX_BAL_OK, MS(1), t);
    {
        apx_bal_req rq = { "some-key", 8, NULL, 0 };
        unsigned first;

        cfg_of(&cfg, APX_BAL_HASH);
        g = mkgroup(&cfg, 4, NULL, t);
        apx_bal_pick(g, &rq, t, &rng, &first);
        apx_bal_done(g, first, APX_BAL_TIMEOUT, SEC(5), t);
        ok(apx_bal_retry(g, &rq, first, t, &rng, &idx) == APR_SUCCESS
           && idx != first, "hash: the retry goes to the next member on the ring");
        apx_bal_done(g, idx, APX_BAL_OK, MS(1), t);
    }
}

/* ---- create ----------------------------------------------------------------- */

static void test_create(void)
{
    static const struct {
        const char *name, *route;
        unsigned weight;
    } rows[] = {
        { NULL, NULL, 1 },
        { "a", NULL, 0 },
        { "a", NULL, 101 },
        { "a", "0123456789012345678901234567890123456789012345678901234567890123", 1 },
    };
    apx_bal_member_spec specs[2];
    apx_bal_config cfg;
    apx_bal_group *g;
    unsigned r;

    apx_bal_config_init(&cfg);
    for (r = 0; r < sizeof(rows) / sizeof(rows[0]); r++) {
        specs[0].name = rows[r].name;
        specs[0].route = rows[r].route;
        specs[0].weight = rows[r].weight;
        is_int(apx_bal_group_create(&g, pool, &cfg, specs, 1, BASE), APR_EINVAL,
               "invalid member spec refused");
    }
    specs[0].name = "a";
    specs[1].name = "b";
    specs[0].route = specs[1].route = "same";
    specs[0].weight = specs[1].weight = 1;
    is_int(apx_bal_group_create(&g, pool, &cfg, specs, 2, BASE), APR_EINVAL,
           "two members with one route refused");
    is_int(apx_bal_group_create(&g, pool, &cfg, specs, 0, BASE), APR_EINVAL,
           "an empty group refused");
    is_int(apx_bal_group_create(&g, pool, &cfg, specs, APX_BAL_MAX + 1, BASE),
           APR_EINVAL, "more than APX_BAL_MAX refused");
    ok(strcmp(apx_bal_state_name(APX_BAL_EJECTED), "ejected") == 0
       && strcmp(apx_bal_state_name(99), "?") == 0, "state names");
}

/* ---- micro-benchmark ---------------------------------------------------- */

static double now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static void bench(void)
{
    static const struct {
        int method;
        int sticky;
        const char *name;
    } algos[] = {
        { APX_BAL_P2C_EWMA, 0, "p2c-ewma" },
        { APX_BAL_WRR, 0, "wrr" },
        { APX_BAL_HASH, 0, "hash-bounded" },
        { APX_BAL_P2C_EWMA, 1, "sticky" },
    };
    static const unsigned sizes[] = { 4, 64 };
    enum { ITERS = 200000 };
    unsigned a, s, k, idx;

    for (a = 0; a < sizeof(algos) / sizeof(algos[0]); a++) {
        for (s = 0; s < 2; s++) {
            apx_bal_config cfg;
            apx_bal_group *g;
            apx_bal_rng rng;
            apx_bal_req rq;
            static char keys[1024][8], routes[APX_BAL_MAX][8];
            static apr_size_t key_len[1024], route_len[APX_BAL_MAX];
            double t0, t1;
            apr_time_t now = BASE;

            cfg_of(&cfg, algos[a].method);
            g = mkgroup(&cfg, sizes[s], NULL, now);
            apx_bal_rng_seed(&rng, 12);
            memset(&rq, 0, sizeof(rq));
            for (k = 0; k < 1024; k++)
                key_len[k] = (apr_size_t)snprintf(keys[k], sizeof(keys[k]), "k%u", k);
            for (k = 0; k < APX_BAL_MAX; k++)
                route_len[k] = (apr_size_t)snprintf(routes[k], sizeof(routes[k]),
                                                    "r%u", k);
            t0 = now_ns();
            for (k = 0; k < ITERS; k++) {
                rq.key = keys[k & 1023];
                rq.key_len = key_len[k & 1023];
                if (algos[a].sticky) {
                    rq.route = routes[k % sizes[s]];
                    rq.route_len = route_len[k % sizes[s]];
                }
                apx_bal_pick(g, &rq, now, &rng, &idx);
                apx_bal_done(g, idx, APX_BAL_OK, MS(1) + (k & 255), now);
                now += 5;
            }
            t1 = now_ns();
            diag("bench %-12s %2u members: %6.1f ns per pick + done",
                 algos[a].name, sizes[s], (t1 - t0) / ITERS);
        }
    }
}

int main(void)
{
    apr_initialize();
    apr_pool_create(&pool, NULL);
    test_create();
    test_wrr();
    test_ewma();
    test_sample();
    test_p2c_cost();
    test_p2c_sim();
    test_eject();
    test_eject_share();
    test_checking();
    test_active();
    test_check_sync();
    test_draining();
    test_hash();
    test_hash_bounded();
    test_sticky();
    test_retry();
    bench();
    apr_pool_destroy(pool);
    apr_terminate();
    return done_testing();
}
