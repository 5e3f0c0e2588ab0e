/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* apx_balance.h — upstream groups: which member of a balancer group takes a
 * request, how members leave and rejoin it, and when a failed request may be
 * tried again.
 *
 *   - selection: p2c-ewma (default), smooth weighted round robin, consistent
 *     hashing with bounded load, and sticky routes on top of any of them;
 *   - passive health (outlier detection as Envoy does it): consecutive
 *     failures eject a member for a backoff that grows with each ejection,
 *     never more than a share of the group at once; a member coming back
 *     ramps its weight over a slow-start window;
 *   - active-check bookkeeping (the glue probes, this only counts);
 *   - a retry budget per group.
 *
 * No I/O and no clock: "now" (apr_time_t, µs) and the random source are
 * parameters, so tests drive a fake clock and a seeded generator.
 *
 * Calling threads: any, but every apx_bal_* call that takes a group reads
 * and writes its state and must be made under the caller's lock for that
 * group (the glue holds one mutex per child; nothing here locks or uses
 * atomics). apx_bal_config_init(), apx_bal_hash(), apx_bal_session_route(),
 * apx_bal_state_name() and apx_bal_rng_*() keep no shared state (an
 * apx_bal_rng belongs to whoever holds it: one per thread, or one under the
 * group lock).
 *
 * State is per child. apx_bal_member is plain old data (no pointers, no
 * handles), so the glue can later keep members in shared memory; the group
 * (ring, sampling table, budget) is derived and stays per child.
 */
#ifndef APX_BALANCE_H
#define APX_BALANCE_H

#include <apr_pools.h>
#include "apx_common.h"

/* A group holds 1..APX_BAL_MAX members: eligibility is a 64-bit mask. */
#define APX_BAL_MAX         64
/* Configured weights are 1..APX_BAL_WEIGHT_MAX (mod_proxy's lbfactor range). */
#define APX_BAL_WEIGHT_MAX  100
/* Sticky routes are at most APX_BAL_ROUTE_MAX - 1 bytes. */
#define APX_BAL_ROUTE_MAX   64

enum {
    APX_BAL_P2C_EWMA = 0,   /* two random members (weighted), lower cost */
    APX_BAL_WRR,            /* smooth weighted round robin (nginx) */
    APX_BAL_HASH            /* consistent hashing with bounded load */
};

/* Member states. Only UP and CHECKING take new requests; DRAINING takes
 * requests of its own sticky route only (mod_proxy_balancer's drain mode). */
enum {
    APX_BAL_UP = 0,
    APX_BAL_CHECKING,       /* back from an ejection, on probation: eligible
                             * (slow-starting); `passes` successes make it
                             * UP, one failure ejects it again */
    APX_BAL_EJECTED,        /* passive health: out until `until` */
    APX_BAL_DOWN,           /* active checks failed `fails` times: out until
                             * they pass `passes` times */
    APX_BAL_DRAINING        /* set by the administrator */
};

/* How a request to a member ended (apx_bal_done). */
enum {
    APX_BAL_OK = 0,         /* a response that is not a failure */
    APX_BAL_CONNECT_FAIL,   /* connect refused / unreachable / TLS failed */
    APX_BAL_TIMEOUT,        /* connect or response timeout */
    APX_BAL_5XX,            /* a status the glue's config counts as failure */
    APX_BAL_ABORTED         /* the client went away first: no verdict */
};

/* What a report changed (for the glue to log or show). */
enum {
    APX_BAL_EV_NONE = 0,
    APX_BAL_EV_EJECTED,     /* the member left (passive) */
    APX_BAL_EV_EJECT_DENIED,/* it reached the threshold, but ejecting it
                             * would pass max_eject_pct or leave nothing
                             * eligible: it stays */
    APX_BAL_EV_UP,          /* CHECKING or DOWN became UP */
    APX_BAL_EV_DOWN         /* active checks took it out */
};

typedef struct apx_bal_config {
    int method;                         /* APX_BAL_P2C_EWMA */
    /* p2c-ewma: time constant of the latency average (Finagle's 10 s) */
    apr_interval_time_t ewma_tau;
    /* hash: a member takes a key only while its in-flight count stays
     * within balance_pct % of its weighted share (Google's c = 1.25);
     * 0: plain consistent hashing */
    unsigned balance_pct;               /* 125 */
    /* passive health (Envoy's defaults) */
    unsigned consecutive;               /* 5 failures in a row eject */
    apr_interval_time_t base_eject;     /* 30 s, × number of ejections */
    apr_interval_time_t max_eject;      /* 300 s cap */
    unsigned max_eject_pct;             /* 10 %: one member always may go */
    int recover_checking;               /* 1: back in CHECKING; 0: UP */
    /* slow start: weight ramps from min_weight_pct % to 100 % */
    apr_interval_time_t slow_start;     /* 10 s, 0: off */
    unsigned min_weight_pct;            /* 10 */
    /* active checks (the passes=2 fails=3); passes also counts
     * successes that move CHECKING to UP */
    unsigned passes;
    unsigned fails;
    /* retry budget (Linkerd's): retries <= budget_pct % of requests over
     * the window, plus min_retry_rps per second whatever the traffic */
    unsigned budget_pct;                /* 20 */
    unsigned min_retry_rps;             /* 10 */
    apr_interval_time_t budget_window;  /* 10 s */
} apx_bal_config;

/* What the glue knows of one member when it builds the group. name is its
 * identity (the URL): it places the member on the hash ring, so the same
 * name keeps its keys across restarts and regroupings. route may be NULL. */
typedef struct apx_bal_member_spec {
    const char *name;
    const char *route;
    unsigned weight;
} apx_bal_member_spec;

/* One member: plain old data. The fields a pick reads fill the first 64
 * bytes (one cache line; checked by a _Static_assert in balance.c). Read it
 * (status page) under the group lock. */
typedef struct apx_bal_member {
    /* -- line 1: read by every pick -- */
    double ewma;                /* peak-EWMA latency, µs, as of ewma_at */
    apr_time_t ewma_at;
    apr_int64_t wrr_current;    /* smooth WRR's current_weight */
    apr_uint32_t weight;        /* configured, 1..APX_BAL_WEIGHT_MAX */
    apr_uint32_t eff_weight;    /* weight × APX_BAL_WSCALE, ramped during
                                 * slow start; 0 while not eligible */
    apr_uint32_t inflight;
    apr_uint32_t route_len;
    uint8_t state;          /* APX_BAL_UP ... */
    uint8_t eject_mult;     /* backoff multiplier (decays while up) */
    uint16_t consecutive;   /* failures in a row */
    uint16_t run_ok;        /* successes in a row while CHECKING or
                                 * DOWN (towards passes) */
    uint16_t check_fail_run;/* active-check failures in a row */
    apr_uint32_t samples;       /* latency samples seen (0: no estimate) */
    apr_uint32_t checks_ok;     /* active checks passed ... */
    /* -- then: health timing, counters, identity -- */
    apr_uint32_t checks_failed; /* ... and failed */
    apr_time_t until;           /* EJECTED: may come back at */
    apr_time_t ramp_start;      /* slow start began (0: not ramping) */
    apr_time_t up_since;        /* back in service since (backoff decay) */
    apr_time_t last_check;      /* last active-check report */
    apr_time_t ejected_at;      /* the last passive ejection began */
    apr_uint64_t requests;      /* picked, retries included */
    apr_uint64_t failures;      /* CONNECT_FAIL + TIMEOUT + 5XX */
    apr_uint64_t ejections;
    apr_uint64_t retries;       /* requests retried elsewhere after failing
                                 * here */
    apr_uint64_t ring_id;       /* hash of the spec's name */
    char route[APX_BAL_ROUTE_MAX];
} apx_bal_member;

/* Effective weights are fixed point: a slow-starting weight-1 member still
 * has 1/1024 steps, and 64 × 100 × 1024 fits 32 bits. */
#define APX_BAL_WSCALE 1024

/* Per-request input to a pick. key is hashed for APX_BAL_HASH (NULL or
 * empty: the member is chosen as by p2c-ewma); route, when not NULL, names
 * the sticky member (apx_bal_session_route() finds it in a session id). */
typedef struct apx_bal_req {
    const void *key;
    apr_size_t key_len;
    const char *route;
    apr_size_t route_len;
} apx_bal_req;

/* The injected random source: xoshiro256**, seeded by the caller. */
typedef struct apx_bal_rng {
    apr_uint64_t s[4];
} apx_bal_rng;

typedef struct apx_bal_group apx_bal_group;

void apx_bal_rng_seed(apx_bal_rng *rng, apr_uint64_t seed);
apr_uint64_t apx_bal_rng_next(apx_bal_rng *rng);

/* The defaults above. */
void apx_bal_config_init(apx_bal_config *cfg);

/* Builds a group of n (1..APX_BAL_MAX) members in pool p, all UP and
 * eligible at `now`. cfg is copied. APR_EINVAL for n out of range, a
 * weight out of 1..APX_BAL_WEIGHT_MAX, a missing name, a route too long or
 * two members with the same route; APR_ENOMEM. */
apr_status_t apx_bal_group_create(apx_bal_group **pg, apr_pool_t *p,
                                  const apx_bal_config *cfg,
                                  const apx_bal_member_spec *specs,
                                  unsigned n, apr_time_t now);

/* Chooses a member for a new request: the sticky route's member when rq
 * names one that is UP, CHECKING or DRAINING, else the group's method among
 * UP and CHECKING members. Counts the request (budget, member's requests,
 * in-flight): every successful pick is matched by one apx_bal_done().
 * APR_EAGAIN: no member is eligible (answer 503). rq may be NULL. */
apr_status_t apx_bal_pick(apx_bal_group *g, const apx_bal_req *rq,
                          apr_time_t now, apx_bal_rng *rng, unsigned *idx);

/* The request on member idx ended: outcome APX_BAL_*, latency (µs) from
 * sending the request to the response head (or the failure). Releases the
 * in-flight slot, feeds the latency average and passive health. Returns
 * an APX_BAL_EV_* for the glue to log. */
int apx_bal_done(apx_bal_group *g, unsigned idx, int outcome,
                 apr_interval_time_t latency, apr_time_t now);

/* May the request that failed on member `failed` (already reported with
 * apx_bal_done) be tried again, and where? Whether the request is safe to
 * replay (method, body sent) is the glue's decision; this checks the
 * group's budget and picks a member other than `failed` whenever another
 * is eligible (the route is ignored: its member is the one that failed).
 * APR_SUCCESS: *idx took the retry (counted in-flight: apx_bal_done it);
 * APR_EBUSY: the budget is spent; APR_EAGAIN: no member is eligible. */
apr_status_t apx_bal_retry(apx_bal_group *g, const apx_bal_req *rq,
                           unsigned failed, apr_time_t now,
                           apx_bal_rng *rng, unsigned *idx);

/* An active check of member idx passed (ok = 1) or failed. `fails` failures
 * in a row take an UP, CHECKING or EJECTED member DOWN (active checks are
 * authoritative: no share limit); `passes` passes in a row bring a DOWN or
 * EJECTED member back UP (slow-starting) and a CHECKING one UP. */
int apx_bal_check_report(apx_bal_group *g, unsigned idx, int ok,
                         apr_time_t now);

/* The active checks' verdict as shared by every child (the glue probes in
 * one child and mirrors the result into each child's group): up = 0 takes
 * an UP, CHECKING or EJECTED member DOWN at once (no share limit: the
 * checks are authoritative) unless it is the last eligible member
 * (APX_BAL_EV_EJECT_DENIED: it stays, and the next call looks again);
 * up = 1 brings a DOWN member back UP with its
 * slow start counted from `since` (when the verdict turned up, so every
 * child ramps in step), and brings an EJECTED member back early, on
 * probation (CHECKING, slow-starting from now), when a check passed after
 * its ejection began (pass_at > the ejection's start: Envoy's
 * successful_active_health_check_uneject_host). DRAINING is left alone.
 * Returns APX_BAL_EV_DOWN, APX_BAL_EV_UP, APX_BAL_EV_EJECT_DENIED or
 * APX_BAL_EV_NONE. */
int apx_bal_check_sync(apx_bal_group *g, unsigned idx, int up,
                       apr_time_t since, apr_time_t pass_at, apr_time_t now);

/* Administrator: drain member idx (on = 1) or return it to service. */
void apx_bal_set_draining(apx_bal_group *g, unsigned idx, int on,
                          apr_time_t now);

/* Members whose ejection ended come back (pick and retry do this too);
 * returns how many members are eligible at now. */
unsigned apx_bal_refresh(apx_bal_group *g, apr_time_t now);

unsigned apx_bal_count(const apx_bal_group *g);
/* Member idx (< apx_bal_count), for the status page. */
const apx_bal_member *apx_bal_member_at(const apx_bal_group *g, unsigned idx);
/* The member's latency estimate at now (µs), decayed while it was idle. */
double apx_bal_latency(const apx_bal_group *g, unsigned idx, apr_time_t now);
/* "up", "checking", "ejected", "down", "draining". */
const char *apx_bal_state_name(int state);

/* 64-bit hash of bytes (FNV-1a, then a murmur3 finaliser for avalanche). */
apr_uint64_t apx_bal_hash(const void *data, apr_size_t len);

/* The route part of a session id as mod_proxy_balancer reads it: what
 * follows the first `sep` ('.': "JSESSIONID=abc.node1" gives "node1").
 * NULL when there is none; else *rlen is its length. */
const char *apx_bal_session_route(const char *value, apr_size_t len,
                                  char sep, apr_size_t *rlen);

#endif /* APX_BALANCE_H */
