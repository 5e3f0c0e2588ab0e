/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* balance.c — upstream groups: selection, passive and active health, the
 * retry budget (apx_balance.h).
 *
 * Calling threads: any, under the caller's lock for the group; nothing here
 * locks, reads a clock or does I/O.
 *
 * Invariants:
 *   - g->elig, g->order/cum/start and every member's eff_weight describe
 *     the group as of the last refresh(); anything that changes a state sets
 *     g->dirty, and refresh_at is the first moment time alone changes them
 *     (an ejection ends, a slow-start step), so a pick refreshes (O(n)) only
 *     then and otherwise costs O(log n);
 *   - a member's eff_weight is > 0 iff it is UP or CHECKING;
 *   - g->ejected counts members in APX_BAL_EJECTED, g->inflight the sum of
 *     the members' in-flight counts;
 *   - a passive ejection never leaves the group without an eligible member.
 */
#include <stdlib.h>
#include <string.h>
#include "apx_balance.h"

/* The fields a pick reads stay in one cache line. */
_Static_assert(offsetof(apx_bal_member, until) == 64,
               "apx_bal_member: hot fields must fill the first 64 bytes");
_Static_assert((apr_uint64_t)APX_BAL_MAX * APX_BAL_WEIGHT_MAX * APX_BAL_WSCALE
               <= 0xffffffffu, "total effective weight must fit 32 bits");

/* Hash ring: 100 points per unit of weight keep a member's share within
 * about ±10 % of its weight (ketama uses 160 per server); the bounded load
 * absorbs the rest. At most 64 × 100 × 100 points (5 MiB) in the extreme
 * case, 400 (3 KiB) for four members of weight 1. */
#define RING_PER_WEIGHT     100
/* Slow start moves in 20 steps (5 % each): the sampling table is rebuilt
 * 20 times per window, not on every pick. */
#define RAMP_STEPS          20
/* The retry budget's window is 10 slots: it forgets traffic one tenth of a
 * window at a time, and a check sums 10 counters. */
#define BUDGET_SLOTS        10
/* Cost of a member with requests in flight but no latency sample yet
 * (Finagle's penalty): it gets one request at a time until its first
 * answer, so a new member is not flooded for looking free. */
#define NO_SAMPLE_PENALTY   1e12

typedef struct vnode {
    apr_uint32_t point;
    apr_uint32_t member;
} vnode;

struct apx_bal_group {
    apx_bal_config cfg;
    unsigned n;
    apx_bal_member *m;
    vnode *ring;
    unsigned ring_n;

    /* derived by refresh() */
    apr_uint64_t elig;                  /* bit i: member i UP or CHECKING */
    unsigned n_elig;
    apr_uint32_t total;                 /* sum of eligible eff_weight */
    uint8_t order[APX_BAL_MAX];     /* eligible members, ascending */
    apr_uint32_t cum[APX_BAL_MAX];      /* cum[k]: eff_weight of order[0..k] */
    apr_uint32_t start[APX_BAL_MAX];    /* member i's offset in that line */
    apr_time_t refresh_at;
    int dirty;

    unsigned ejected;
    apr_uint64_t inflight;

    /* retry budget: requests and retries per slot of budget_window/10 */
    apr_int64_t slot_of[BUDGET_SLOTS];
    apr_uint32_t slot_req[BUDGET_SLOTS];
    apr_uint32_t slot_retry[BUDGET_SLOTS];
};

/* ---- random source, hashing ------------------------------------------ */

static apr_uint64_t splitmix64(apr_uint64_t *x)
{
    apr_uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void apx_bal_rng_seed(apx_bal_rng *rng, apr_uint64_t seed)
{
    int i;

    for (i = 0; i < 4; i++)
        rng->s[i] = splitmix64(&seed);
}

static inline apr_uint64_t rotl(apr_uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

apr_uint64_t apx_bal_rng_next(apx_bal_rng *rng)
{
    apr_uint64_t *s = rng->s;
    apr_uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;

    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return r;
}

/* Uniform in [0, bound), bound < 2^32 (Lemire's multiply-shift; the bias
 * is below 2^-32). */
static inline apr_uint32_t rng_below(apx_bal_rng *rng, apr_uint32_t bound)
{
    return (apr_uint32_t)(((apx_bal_rng_next(rng) >> 32) * bound) >> 32);
}

static inline apr_uint64_t fmix64(apr_uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    k *= 0xc4ceb9fe1a85ec53ULL;
    return k ^ (k >> 33);
}

apr_uint64_t apx_bal_hash(const void *data, apr_size_t len)
{
    const unsigned char *p = data;
    apr_uint64_t h = 0xcbf29ce484222325ULL;
    apr_size_t i;

    for (i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return fmix64(h);
}

/* ---- latency estimate ------------------------------------------------ */

/* e^-x for x >= 0, without libm (the module links none): 2^-k by the
 * exponent bits, e^-r for r in [0, ln 2) by ten Taylor terms (error below
 * 1e-9, plenty for a latency weight). */
static double exp_neg(double x)
{
    union { double d; apr_uint64_t u; } two_k;
    double r, sum = 1.0;
    int k, i;

    if (x <= 0.0)
        return 1.0;
    if (x >= 700.0)
        return 0.0;
    k = (int)(x * 1.4426950408889634);
    r = x - k * 0.6931471805599453;
    for (i = 10; i >= 1; i--)
        sum = 1.0 - r * sum / i;
    two_k.u = (apr_uint64_t)(1023 - k) << 52;
    return sum * two_k.d;
}

static inline double decay(const apx_bal_group *g, apr_time_t from,
                               apr_time_t now)
{
    if (now <= from || g->cfg.ewma_tau <= 0)
        return 1.0;
    return exp_neg((double)(now - from) / (double)g->cfg.ewma_tau);
}

/* Reading decays the estimate towards zero since the last sample (as
 * Finagle's and tower's peak EWMA do): a member nobody picks because it was
 * slow is tried again after a while instead of never. */
static inline double estimate(const apx_bal_group *g,
                                  const apx_bal_member *m, apr_time_t now)
{
    return m->ewma * decay(g, m->ewma_at, now);
}

/* A sample above the average replaces it (the "peak"); a lower one blends
 * in with weight 1 - e^(-dt/tau), dt the time since the previous sample:
 * the average is over time, not over a number of samples, so it means the
 * same at 10 and at 10,000 requests per second. */
static void observe(apx_bal_group *g, apx_bal_member *m, double lat,
                    apr_time_t now)
{
    double w, e;

    if (lat < 0.0)
        lat = 0.0;
    if (m->samples++ == 0) {
        m->ewma = lat;
    } else {
        w = decay(g, m->ewma_at, now);
        e = m->ewma * w + lat * (1.0 - w);
        m->ewma = lat > m->ewma ? lat : e;
    }
    m->ewma_at = now;
}

static inline double cost(const apx_bal_group *g, const apx_bal_member *m,
                              apr_time_t now)
{
    double est;

    if (m->samples == 0)
        return m->inflight ? NO_SAMPLE_PENALTY + m->inflight : 0.0;
    est = estimate(g, m, now);
    if (est < 1.0)
        est = 1.0;              /* 1 µs: in-flight counts still rank */
    return est * (m->inflight + 1) / m->eff_weight;
}

/* ---- states and the sampling table ----------------------------------- */

static inline int is_eligible_state(int state)
{
    return state == APX_BAL_UP || state == APX_BAL_CHECKING;
}

/* Weight at now, slow start applied; *next is lowered to the time of the
 * next ramp step. */
static apr_uint32_t ramped_weight(const apx_bal_group *g, apx_bal_member *m,
                                  apr_time_t now, apr_time_t *next)
{
    apr_uint32_t full = m->weight * APX_BAL_WSCALE, w;
    apr_interval_time_t win = g->cfg.slow_start, elapsed;
    apr_uint64_t step, pct;
    apr_time_t at;

    if (m->ramp_start == 0 || win <= 0)
        return full;
    elapsed = now - m->ramp_start;
    if (elapsed >= win) {
        m->ramp_start = 0;
        return full;
    }
    if (elapsed < 0)
        elapsed = 0;
    step = (apr_uint64_t)elapsed * RAMP_STEPS / (apr_uint64_t)win;
    pct = step * 100 / RAMP_STEPS;
    if (pct < g->cfg.min_weight_pct)
        pct = g->cfg.min_weight_pct;
    w = (apr_uint32_t)((apr_uint64_t)full * pct / 100);
    at = m->ramp_start + (apr_interval_time_t)((step + 1) * win / RAMP_STEPS);
    if (at < *next)
        *next = at;
    return w ? w : 1;
}

static void come_back(apx_bal_group *g, apx_bal_member *m, int state,
                      apr_time_t now)
{
    if (m->state == APX_BAL_EJECTED)
        g->ejected--;
    m->state = (uint8_t)state;
    m->ramp_start = g->cfg.slow_start > 0 ? now : 0;
    m->up_since = now;
    m->consecutive = 0;
    m->run_ok = 0;
    m->check_fail_run = 0;
    g->dirty = 1;
}

static void refresh(apx_bal_group *g, apr_time_t now)
{
    apr_time_t next = APR_INT64_MAX;
    apr_uint32_t total = 0;
    apr_uint64_t elig = 0;
    unsigned i, k = 0;

    for (i = 0; i < g->n; i++) {
        apx_bal_member *m = &g->m[i];

        if (m->state == APX_BAL_EJECTED) {
            if (now >= m->until)
                come_back(g, m, g->cfg.recover_checking ? APX_BAL_CHECKING
                                                        : APX_BAL_UP, now);
            else if (m->until < next)
                next = m->until;
        }
        if (!is_eligible_state(m->state)) {
            m->eff_weight = 0;
            continue;
        }
        m->eff_weight = ramped_weight(g, m, now, &next);
        g->start[i] = total;
        total += m->eff_weight;
        g->order[k] = (uint8_t)i;
        g->cum[k] = total;
        elig |= (apr_uint64_t)1 << i;
        k++;
    }
    g->elig = elig;
    g->n_elig = k;
    g->total = total;
    g->refresh_at = next;
    g->dirty = 0;
}

static inline void maybe_refresh(apx_bal_group *g, apr_time_t now)
{
    if (APX_UNLIKELY(g->dirty || now >= g->refresh_at))
        refresh(g, now);
}

static inline int is_eligible(const apx_bal_group *g, int i)
{
    return i >= 0 && (g->elig >> i) & 1;
}

/* ---- selection ---------------------------------------------------------- */

/* A member drawn with probability proportional to its effective weight,
 * leaving out ex1 and ex2 (-1: none): one draw over the line of weights
 * with the excluded stretches cut out, mapped back by stepping over them
 * in order, then a binary search of the cumulative weights. */
static int sample(const apx_bal_group *g, apx_bal_rng *rng, int ex1, int ex2)
{
    apr_uint32_t total = g->total, r;
    int ex[2], nex = 0, j, lo, hi;

    if (is_eligible(g, ex1))
        ex[nex++] = ex1;
    if (is_eligible(g, ex2) && ex2 != ex1)
        ex[nex++] = ex2;
    if (nex == 2 && g->start[ex[1]] < g->start[ex[0]]) {
        j = ex[0];
        ex[0] = ex[1];
        ex[1] = j;
    }
    for (j = 0; j < nex; j++)
        total -= g->m[ex[j]].eff_weight;
    if (total == 0)
        return -1;
    r = rng_below(rng, total);
    for (j = 0; j < nex; j++)
        if (r >= g->start[ex[j]])
            r += g->m[ex[j]].eff_weight;
    lo = 0;
    hi = (int)g->n_elig - 1;
    while (lo < hi) {
        int mid = (lo + hi) / 2;

        if (g->cum[mid] > r)
            hi = mid;
        else
            lo = mid + 1;
    }
    return g->order[lo];
}

static int pick_p2c(const apx_bal_group *g, apr_time_t now,
                    apx_bal_rng *rng, int ex)
{
    int a = sample(g, rng, ex, -1), b;

    if (a < 0)
        return -1;
    b = sample(g, rng, ex, a);
    if (b < 0)
        return a;
    return cost(g, &g->m[b], now) < cost(g, &g->m[a], now) ? b : a;
}

/* Smooth weighted round robin as nginx interleaves it: every eligible
 * member gains its weight, the richest is chosen and pays the total back.
 * O(eligible members): at most 64 additions. */
static int pick_wrr(apx_bal_group *g, int ex)
{
    apx_bal_member *best = NULL;
    apr_int64_t total = 0;
    int bi = -1;
    unsigned k;

    for (k = 0; k < g->n_elig; k++) {
        int i = g->order[k];
        apx_bal_member *m = &g->m[i];

        if (i == ex)
            continue;
        m->wrr_current += m->eff_weight;
        total += m->eff_weight;
        if (best == NULL || m->wrr_current > best->wrr_current) {
            best = m;
            bi = i;
        }
    }
    if (best)
        best->wrr_current -= total;
    return bi;
}

/* Is member i under its bounded load: would one more request keep it
 * within balance_pct % of its weighted share of all requests in flight
 * (this one included)? With c = pct/100 and share s = eff/total:
 * inflight + 1 <= ceil(c (T + 1) s)  <=>  inflight < c (T + 1) s. */
static inline int under_bound(const apx_bal_group *g, int i)
{
    const apx_bal_member *m = &g->m[i];

    if (g->cfg.balance_pct == 0)
        return 1;
    return (apr_uint64_t)m->inflight * 100 * g->total
           < (apr_uint64_t)g->cfg.balance_pct * (g->inflight + 1)
             * m->eff_weight;
}

/* Consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam):
 * from the key's point clockwise, the first eligible member under its
 * bound. Since c > 1 some eligible member is always under it; the walk
 * skips members already refused, so it ends within one lap. */
static int pick_hash(const apx_bal_group *g, const void *key,
                     apr_size_t len, int ex)
{
    apr_uint32_t h = (apr_uint32_t)(apx_bal_hash(key, len) >> 32);
    apr_uint64_t want = g->elig, refused = 0;
    unsigned lo = 0, hi = g->ring_n, steps;
    int first = -1;

    if (ex >= 0)
        want &= ~((apr_uint64_t)1 << ex);
    if (want == 0)
        return -1;
    while (lo < hi) {
        unsigned mid = (lo + hi) / 2;

        if (g->ring[mid].point < h)
            lo = mid + 1;
        else
            hi = mid;
    }
    for (steps = 0; steps < g->ring_n; steps++, lo++) {
        int i = (int)g->ring[lo % g->ring_n].member;
        apr_uint64_t bit = (apr_uint64_t)1 << i;

        if (!(want & bit) || (refused & bit))
            continue;
        if (first < 0)
            first = i;
        if (under_bound(g, i))
            return i;
        refused |= bit;
        if (refused == want)
            break;
    }
    return first;               /* balance_pct <= 100 can refuse all */
}

static int find_route(const apx_bal_group *g, const char *route,
                      apr_size_t len)
{
    unsigned i;

    if (route == NULL || len == 0)
        return -1;
    for (i = 0; i < g->n; i++)
        if (g->m[i].route_len == len && memcmp(g->m[i].route, route, len) == 0)
            return (int)i;
    return -1;
}

static int choose(apx_bal_group *g, const apx_bal_req *rq, apr_time_t now,
                  apx_bal_rng *rng, int ex)
{
    switch (g->cfg.method) {
    case APX_BAL_WRR:
        return pick_wrr(g, ex);
    case APX_BAL_HASH:
        if (rq && rq->key && rq->key_len)
            return pick_hash(g, rq->key, rq->key_len, ex);
        break;
    }
    return pick_p2c(g, now, rng, ex);
}

/* ---- the retry budget ----------------------------------------------- */

static unsigned budget_slot(apx_bal_group *g, apr_time_t now,
                            apr_int64_t *slot)
{
    apr_interval_time_t width = g->cfg.budget_window / BUDGET_SLOTS;
    unsigned i;

    if (width <= 0)
        width = 1;
    *slot = now / width;
    i = (unsigned)(*slot % BUDGET_SLOTS);
    if (g->slot_of[i] != *slot) {
        g->slot_of[i] = *slot;
        g->slot_req[i] = 0;
        g->slot_retry[i] = 0;
    }
    return i;
}

static int budget_allows(apx_bal_group *g, apr_time_t now)
{
    apr_uint64_t req = 0, retry = 0, floor;
    apr_int64_t slot;
    unsigned i;

    budget_slot(g, now, &slot);
    for (i = 0; i < BUDGET_SLOTS; i++) {
        if (g->slot_of[i] > slot - BUDGET_SLOTS) {
            req += g->slot_req[i];
            retry += g->slot_retry[i];
        }
    }
    floor = (apr_uint64_t)g->cfg.min_retry_rps
            * (apr_uint64_t)g->cfg.budget_window / APR_USEC_PER_SEC;
    return (retry + 1) * 100 <= g->cfg.budget_pct * req + floor * 100;
}

/* ---- the API ---------------------------------------------------------------- */

void apx_bal_config_init(apx_bal_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->method = APX_BAL_P2C_EWMA;
    cfg->ewma_tau = apr_time_from_sec(10);
    cfg->balance_pct = 125;
    cfg->consecutive = 5;
    cfg->base_eject = apr_time_from_sec(30);
    cfg->max_eject = apr_time_from_sec(300);
    cfg->max_eject_pct = 10;
    cfg->recover_checking = 1;
    cfg->slow_start = apr_time_from_sec(10);
    cfg->min_weight_pct = 10;
    cfg->passes = 2;
    cfg->fails = 3;
    cfg->budget_pct = 20;
    cfg->min_retry_rps = 10;
    cfg->budget_window = apr_time_from_sec(10);
}

static int vnode_cmp(const void *a, const void *b)
{
    const vnode *x = a, *y = b;

    if (x->point != y->point)
        return x->point < y->point ? -1 : 1;
    return (int)x->member - (int)y->member;
}

apr_status_t apx_bal_group_create(apx_bal_group **pg, apr_pool_t *p,
                                  const apx_bal_config *cfg,
                                  const apx_bal_member_spec *specs,
                                  unsigned n, apr_time_t now)
{
    apx_bal_group *g;
    unsigned i, j, v = 0;

    *pg = NULL;
    if (n == 0 || n > APX_BAL_MAX)
        return APR_EINVAL;
    for (i = 0; i < n; i++) {
        if (specs[i].name == NULL || specs[i].weight < 1
            || specs[i].weight > APX_BAL_WEIGHT_MAX
            || (specs[i].route && strlen(specs[i].route) >= APX_BAL_ROUTE_MAX))
            return APR_EINVAL;
        for (j = 0; j < i && specs[i].route && *specs[i].route; j++)
            if (specs[j].route && strcmp(specs[i].route, specs[j].route) == 0)
                return APR_EINVAL;
        v += specs[i].weight * RING_PER_WEIGHT;
    }
    g = apr_pcalloc(p, sizeof(*g));
    g->m = g ? apr_pcalloc(p, n * sizeof(*g->m)) : NULL;
    g->ring = g->m ? apr_palloc(p, v * sizeof(*g->ring)) : NULL;
    if (g == NULL || g->m == NULL || g->ring == NULL)
        return APR_ENOMEM;
    g->cfg = *cfg;
    g->n = n;
    for (i = 0; i < n; i++) {
        apx_bal_member *m = &g->m[i];

        m->weight = specs[i].weight;
        m->state = APX_BAL_UP;
        m->ewma_at = now;
        m->up_since = now;
        m->ring_id = apx_bal_hash(specs[i].name, strlen(specs[i].name));
        if (specs[i].route) {
            m->route_len = (apr_uint32_t)strlen(specs[i].route);
            memcpy(m->route, specs[i].route, m->route_len);
        }
        /* a member's points depend on its name and weight only, so adding
         * or removing another member moves no key between the rest */
        for (j = 0; j < m->weight * RING_PER_WEIGHT; j++) {
            apr_uint64_t x = fmix64(m->ring_id + (j + 1) * 0x9e3779b97f4a7c15ULL);

            g->ring[g->ring_n].point = (apr_uint32_t)(x >> 32);
            g->ring[g->ring_n].member = i;
            g->ring_n++;
        }
    }
    qsort(g->ring, g->ring_n, sizeof(*g->ring), vnode_cmp);
    for (i = 0; i < BUDGET_SLOTS; i++)
        g->slot_of[i] = APR_INT64_MIN;
    refresh(g, now);
    *pg = g;
    return APR_SUCCESS;
}

static void take(apx_bal_group *g, int i)
{
    g->m[i].inflight++;
    g->m[i].requests++;
    g->inflight++;
}

apr_status_t apx_bal_pick(apx_bal_group *g, const apx_bal_req *rq,
                          apr_time_t now, apx_bal_rng *rng, unsigned *idx)
{
    apr_int64_t slot;
    int i = -1;

    maybe_refresh(g, now);
    if (rq && rq->route) {
        i = find_route(g, rq->route, rq->route_len);
        if (i >= 0 && !is_eligible(g, i) && g->m[i].state != APX_BAL_DRAINING)
            i = -1;
    }
    if (i < 0 && (i = choose(g, rq, now, rng, -1)) < 0)
        return APR_EAGAIN;
    g->slot_req[budget_slot(g, now, &slot)]++;
    take(g, i);
    *idx = (unsigned)i;
    return APR_SUCCESS;
}

/* Ejects member i unless that would pass max_eject_pct (the first ejection
 * is always allowed, as in Envoy) or leave no member eligible. */
static int try_eject(apx_bal_group *g, int i, apr_time_t now)
{
    apx_bal_member *m = &g->m[i];
    apr_interval_time_t base = g->cfg.base_eject, dur;
    apr_int64_t healthy;

    if ((g->ejected > 0
         && (g->ejected + 1) * 100 > g->cfg.max_eject_pct * g->n)
        || (is_eligible(g, i) && g->n_elig <= 1))
        return APX_BAL_EV_EJECT_DENIED;
    /* the backoff forgets one ejection per base_eject spent in service */
    if (base > 0 && m->eject_mult > 0) {
        healthy = (now - m->up_since) / base;
        m->eject_mult = healthy >= m->eject_mult
                        ? 0 : (uint8_t)(m->eject_mult - healthy);
    }
    if (m->eject_mult < 255)
        m->eject_mult++;
    dur = base * m->eject_mult;
    if (g->cfg.max_eject > 0 && dur > g->cfg.max_eject)
        dur = g->cfg.max_eject;
    m->state = APX_BAL_EJECTED;
    m->until = now + dur;
    m->ejections++;
    m->consecutive = 0;
    m->run_ok = 0;
    m->ramp_start = 0;
    m->ejected_at = now;
    g->ejected++;
    refresh(g, now);
    return APX_BAL_EV_EJECTED;
}

int apx_bal_done(apx_bal_group *g, unsigned idx, int outcome,
                 apr_interval_time_t latency, apr_time_t now)
{
    apx_bal_member *m = &g->m[idx];

    maybe_refresh(g, now);
    if (m->inflight) {
        m->inflight--;
        g->inflight--;
    }
    if (outcome == APX_BAL_ABORTED)
        return APX_BAL_EV_NONE;
    if (outcome == APX_BAL_OK) {
        observe(g, m, (double)latency, now);
        m->consecutive = 0;
        if (m->state == APX_BAL_CHECKING && ++m->run_ok >= g->cfg.passes) {
            m->state = APX_BAL_UP;
            m->run_ok = 0;
            return APX_BAL_EV_UP;
        }
        return APX_BAL_EV_NONE;
    }
    /* a failure never lowers the estimate: a member that fails fast must
     * not look fast (the "black hole" of least-latency balancing) */
    {
        double est = estimate(g, m, now);

        observe(g, m, (double)latency > est ? (double)latency : est, now);
    }
    m->failures++;
    if (m->consecutive < 0xffff)
        m->consecutive++;
    if (m->state == APX_BAL_CHECKING)
        return try_eject(g, (int)idx, now);
    if (m->state == APX_BAL_UP && g->cfg.consecutive
        && m->consecutive >= g->cfg.consecutive)
        return try_eject(g, (int)idx, now);
    return APX_BAL_EV_NONE;
}

apr_status_t apx_bal_retry(apx_bal_group *g, const apx_bal_req *rq,
                           unsigned failed, apr_time_t now,
                           apx_bal_rng *rng, unsigned *idx)
{
    apr_int64_t slot;
    int i;

    maybe_refresh(g, now);
    if (!budget_allows(g, now))
        return APR_EBUSY;
    i = choose(g, rq, now, rng, (int)failed);
    if (i < 0 && is_eligible(g, (int)failed))
        i = (int)failed;        /* the only one left */
    if (i < 0)
        return APR_EAGAIN;
    g->slot_retry[budget_slot(g, now, &slot)]++;
    g->m[failed].retries++;
    take(g, i);
    *idx = (unsigned)i;
    return APR_SUCCESS;
}

/* The active checks take m out (an ejection it was under ends with it). */
static int go_down(apx_bal_group *g, apx_bal_member *m)
{
    if (m->state == APX_BAL_EJECTED)
        g->ejected--;
    m->state = APX_BAL_DOWN;
    m->run_ok = 0;
    m->ramp_start = 0;
    g->dirty = 1;
    return APX_BAL_EV_DOWN;
}

int apx_bal_check_report(apx_bal_group *g, unsigned idx, int ok,
                         apr_time_t now)
{
    apx_bal_member *m = &g->m[idx];

    maybe_refresh(g, now);
    m->last_check = now;
    if (ok) {
        m->checks_ok++;
        m->check_fail_run = 0;
        if (m->state == APX_BAL_UP || m->state == APX_BAL_DRAINING)
            return APX_BAL_EV_NONE;
        if (++m->run_ok < g->cfg.passes)
            return APX_BAL_EV_NONE;
        if (m->state == APX_BAL_CHECKING) {
            m->state = APX_BAL_UP;
            m->run_ok = 0;
        } else {
            come_back(g, m, APX_BAL_UP, now);
        }
        return APX_BAL_EV_UP;
    }
    m->checks_failed++;
    if (m->state != APX_BAL_UP)
        m->run_ok = 0;
    if (m->check_fail_run < 0xffff)
        m->check_fail_run++;
    if (m->check_fail_run < g->cfg.fails || m->state == APX_BAL_DOWN
        || m->state == APX_BAL_DRAINING)
        return APX_BAL_EV_NONE;
    return go_down(g, m);
}

int apx_bal_check_sync(apx_bal_group *g, unsigned idx, int up,
                       apr_time_t since, apr_time_t pass_at, apr_time_t now)
{
    apx_bal_member *m = &g->m[idx];

    maybe_refresh(g, now);
    if (m->state == APX_BAL_DRAINING)
        return APX_BAL_EV_NONE;
    if (!up) {
        if (m->state == APX_BAL_DOWN)
            return APX_BAL_EV_NONE;
        /* never the last one in service (Envoy's panic routing at its
         * simplest): checks that fail everywhere at once more often say
         * the checker is starved than that every member died; the next
         * verdict looks again */
        if (is_eligible(g, (int)idx) && g->n_elig <= 1)
            return APX_BAL_EV_EJECT_DENIED;
        return go_down(g, m);
    }
    if (m->state == APX_BAL_DOWN) {
        come_back(g, m, APX_BAL_UP, now);
        /* the ramp counts from the verdict, not from this child's look */
        if (m->ramp_start && since > 0 && since < now)
            m->ramp_start = since;
        return APX_BAL_EV_UP;
    }
    if (m->state == APX_BAL_EJECTED && pass_at > m->ejected_at) {
        come_back(g, m, g->cfg.recover_checking ? APX_BAL_CHECKING
                                                : APX_BAL_UP, now);
        return APX_BAL_EV_UP;
    }
    return APX_BAL_EV_NONE;
}

void apx_bal_set_draining(apx_bal_group *g, unsigned idx, int on,
                          apr_time_t now)
{
    apx_bal_member *m = &g->m[idx];

    if (on && m->state != APX_BAL_DRAINING) {
        if (m->state == APX_BAL_EJECTED)
            g->ejected--;
        m->state = APX_BAL_DRAINING;
        g->dirty = 1;
    } else if (!on && m->state == APX_BAL_DRAINING) {
        come_back(g, m, APX_BAL_UP, now);
    }
}

unsigned apx_bal_refresh(apx_bal_group *g, apr_time_t now)
{
    maybe_refresh(g, now);
    return g->n_elig;
}

unsigned apx_bal_count(const apx_bal_group *g)
{
    return g->n;
}

const apx_bal_member *apx_bal_member_at(const apx_bal_group *g, unsigned idx)
{
    return idx < g->n ? &g->m[idx] : NULL;
}

double apx_bal_latency(const apx_bal_group *g, unsigned idx, apr_time_t now)
{
    return idx < g->n ? estimate(g, &g->m[idx], now) : 0.0;
}

const char *apx_bal_state_name(int state)
{
    static const char *const names[] = {
        "up", "checking", "ejected", "down", "draining"
    };

    return state >= 0 && state <= APX_BAL_DRAINING ? names[state] : "?";
}

const char *apx_bal_session_route(const char *value, apr_size_t len,
                                  char sep, apr_size_t *rlen)
{
    const char *dot = value ? memchr(value, sep, len) : NULL;

    if (dot == NULL || dot + 1 == value + len)
        return NULL;
    *rlen = (apr_size_t)(value + len - (dot + 1));
    return dot + 1;
}
