/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* upstream_shm.h — the balancer members' counters shared by all children
 * of one generation (upstream_shm.c): each member's in-flight slots under
 * its max= cap, its queue length and queue figures, and one record per
 * live child holding what that child has taken, so a child that dies
 * gives its slots back.
 *
 * Threads: apx_mshm_post_config() in the parent (configuration, single
 * thread); apx_mshm_child_init() on the child's main thread; everything
 * else from any thread of a child: every shared word is read and written
 * with __atomic builtins, never under a lock (another process cannot take
 * our locks).
 *
 * The segment exists when a member has a max= cap or a balancer has an
 * AsyncProxyHealthCheck.
 *
 * Members are numbered globally (apx_member.gidx): balancer by balancer,
 * member by member, in configuration order.
 */
#ifndef APX_HTTPD_UPSTREAM_SHM_H
#define APX_HTTPD_UPSTREAM_SHM_H

#include "common.h"

/* One member's active-check state (upstream_check.c), 128 bytes. One child
 * at a time probes the member: the one whose CAS moved `next_due` forward
 * (the lease); it alone writes the result words until its probe ends (a
 * probe's timeout is at most the interval, so leases do not overlap; a
 * timeout dispatched late may meet the next probe by a few ms: every word
 * is an atomic, so the worst is two results counted in either order).
 * Every child reads them (acquire loads) to follow the verdict. */
typedef struct apx_mshm_check {
    apr_time_t next_due;            /* the next probe is due (the lease) */
    apr_time_t last_at;             /* the last probe ended */
    apr_time_t since;               /* the verdict last turned (0: never) */
    apr_time_t last_pass_at;        /* the last probe that passed ended */
    apr_uint64_t passed;            /* probes that passed ... */
    apr_uint64_t failed;            /* ... and failed, all children */
    apr_uint32_t up;                /* the verdict: 1 up (at start), 0 down */
    apr_uint32_t pass_run;          /* passes in a row */
    apr_uint32_t fail_run;          /* failures in a row */
    apr_uint32_t last_status;       /* HTTP status of the last probe, 0:
                                     * none came */
    apr_uint32_t last_ms;           /* its duration */
    apr_uint32_t last_err;          /* APX_CHECK_ERR_* (upstream_check.h) */
    apr_int32_t prober;             /* pid of the child probing now, 0 */
    apr_uint32_t pad[13];
} apx_mshm_check;

/* One member's shared figures: the queue's line (64 bytes, so two members'
 * counters never share one), then the check's two lines (checked in
 * upstream_shm.c). */
typedef struct apx_mshm_member {
    apr_uint32_t cap;               /* max=, 0: no cap (set by the parent) */
    apr_uint32_t inflight;          /* slots taken, all children */
    apr_uint32_t queued;            /* waiting in some child's queue */
    apr_uint32_t pad;
    apr_uint64_t queue_timeouts;    /* left at queuetimeout (503) */
    apr_uint64_t queue_full;        /* refused: queue= reached (503) */
    apr_uint64_t queue_gone;        /* left because their client went */
    apr_uint64_t dispatched;        /* got a slot after waiting */
    apr_uint64_t max_wait_us;       /* longest wait that got a slot */
    apr_uint64_t reclaimed;         /* slots given back for dead children */
    apx_mshm_check chk;             /* active checks (upstream_check.c) */
} apx_mshm_member;

/* Counts the members of every balancer, numbers them (gidx) and creates
 * the segment for this generation in pconf (anonymous shared memory,
 * inherited by the children forked from now on). The previous
 * generation's segment stays mapped in its children until they exit, so
 * during a graceful restart the old children count against the old
 * segment: the backend may see up to max= from each generation while the
 * old one finishes. Returns OK, or an error status after logging. */
int apx_mshm_post_config(apr_pool_t *pconf, server_rec *s);
/* child_init: claims this child's record (reclaiming dead children's
 * records on the way); a cleanup on pchild gives the record back with
 * whatever it still held. */
void apx_mshm_child_init(apr_pool_t *pchild, server_rec *s);

/* Member gidx's shared figures, or NULL when there is no segment. */
apx_mshm_member *apx_mshm_at(unsigned gidx);

/* Takes one of member gidx's slots if fewer than its cap are taken (a CAS
 * loop); 1 on success, 0 when full. A member without cap: always 1,
 * nothing counted. */
int apx_mshm_take(unsigned gidx);
/* Gives back a slot this child took with apx_mshm_take() (never twice,
 * never one that a reclaim already gave back: it counts per child). */
void apx_mshm_release(unsigned gidx);
/* Slots of member gidx this child holds. */
apr_uint32_t apx_mshm_held_here(unsigned gidx);

/* The queue's shared view: the number waiting, and this child's oldest
 * waiter's arrival (0: none) so that the children serve their waiters in
 * arrival order across processes. */
void apx_mshm_queued_add(unsigned gidx, int delta);
void apx_mshm_set_head(unsigned gidx, apr_time_t at);
/* 1 when no other live child has a waiter for gidx that arrived before
 * `at` (ties: the lower record wins). */
int apx_mshm_head_is_oldest(unsigned gidx, apr_time_t at);

/* Records of children that died without giving their slots back (a crash,
 * a kill): their slots and queue marks are reclaimed. Any thread; cheap
 * when nothing died (one kill(pid, 0) per claimed record). Returns the
 * number of records reclaimed. */
unsigned apx_mshm_sweep(server_rec *s);

/* Bumped by the prober after each probe result (any member): a child's
 * picker compares it with the value it last saw and reads the members'
 * verdicts only when it moved. 0 when there is no segment. */
apr_uint32_t apx_mshm_check_gen(void);
void apx_mshm_check_bump(void);

/* Raises *word to v if v is larger (atomically). */
void apx_mshm_max64(apr_uint64_t *word, apr_uint64_t v);

#endif /* APX_HTTPD_UPSTREAM_SHM_H */
