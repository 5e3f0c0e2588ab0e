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
 * Members are numbered globally (apx_member.gidx): balancer by balancer,
 * member by member, in configuration order.
 */
#ifndef APX_HTTPD_UPSTREAM_SHM_H
#define APX_HTTPD_UPSTREAM_SHM_H

#include "common.h"

/* One member's shared figures: exactly 64 bytes (a cache line of its own,
 * so two members' counters never share one: checked in upstream_shm.c). */
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

/* Raises *word to v if v is larger (atomically). */
void apx_mshm_max64(apr_uint64_t *word, apr_uint64_t v);

#endif /* APX_HTTPD_UPSTREAM_SHM_H */
