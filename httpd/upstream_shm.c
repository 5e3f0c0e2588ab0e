/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* upstream_shm.c — the members' shared counters (upstream_shm.h): one
 * anonymous shared segment per generation, created by the parent at
 * post_config and inherited by its children.
 *
 * Layout: a header, one apx_mshm_member (192 bytes) per member, then one
 * record per child (2 x ServerLimit of them, at least 8: a child that is
 * finishing gracefully still holds its record while its replacement
 * claims another). A record holds its child's pid and, per member, the
 * slots it took and its oldest waiter's arrival time.
 *
 * Threads: post_config in the parent; the rest from any thread of any
 * child, lock-free: the cap is a CAS loop on the member's `inflight`, the
 * record's words are atomics. A slot is counted twice — in the member's
 * `inflight` and in the taking child's record — so a child that died
 * holding slots (a crash, a kill) gives them back when any child sweeps
 * its record (apx_mshm_sweep(): at child_init, and once a second while a
 * queue has waiters). Between the two increments of a take, a crash
 * leaks that one slot until the next generation; no other path leaks.
 */
#include <errno.h>
#include <signal.h>
#include <sys/types.h>
#include <unistd.h>

#include "httpd.h"
#include "http_config.h"
#include "http_log.h"
#include "ap_mpm.h"
#include "apr_shm.h"

#include "upstream.h"
#include "upstream_shm.h"

APLOG_USE_MODULE(asyncproxy);

_Static_assert(sizeof(apx_mshm_check) == 128,
               "apx_mshm_check is two cache lines");
_Static_assert(sizeof(apx_mshm_member) == 192,
               "apx_mshm_member is three cache lines: queue, then check");

#define MSHM_MAGIC      0x41505851u     /* "APXQ" */
#define MSHM_MIN_RECS   8

typedef struct mshm_head {
    apr_uint32_t magic;
    apr_uint32_t nmembers;
    apr_uint32_t nrecs;
    apr_uint32_t rec_size;              /* bytes per record, 64-aligned */
    apr_uint32_t check_gen;             /* apx_mshm_check_bump() */
} mshm_head;

/* A record: pid (0: free, -1: being reclaimed), then head_at[nmembers]
 * (apr_time_t), then held[nmembers] (apr_uint32_t). */
typedef struct mshm_rec {
    apr_int32_t pid;
    apr_uint32_t pad;
} mshm_rec;

/* Set in the parent at post_config, inherited by the children; each
 * generation's children see the segment of their generation. */
static char *base;
static mshm_head *head;
static apx_mshm_member *members;
static char *recs;
/* this child's record, -1: none (every record taken) */
static int me = -1;

#define ALIGN64(x) (((x) + 63) & ~(apr_size_t)63)

static mshm_rec *rec_at(int i)
{
    return (mshm_rec *)(recs + (apr_size_t)i * head->rec_size);
}

static apr_time_t *rec_head_at(mshm_rec *r)
{
    return (apr_time_t *)((char *)r + sizeof(mshm_rec));
}

static apr_uint32_t *rec_held(mshm_rec *r)
{
    return (apr_uint32_t *)((char *)r + sizeof(mshm_rec)
                            + head->nmembers * sizeof(apr_time_t));
}

int apx_mshm_post_config(apr_pool_t *pconf, server_rec *s)
{
    apr_array_header_t *all = apx_gconf.balancers;
    apr_shm_t *shm;
    apr_size_t rec_size, size;
    apr_status_t rv;
    unsigned n = 0, any_shared = 0;
    int i, j, limit = 0;

    base = NULL;
    head = NULL;
    members = NULL;
    recs = NULL;
    for (i = 0; all && i < all->nelts; i++) {
        apx_balancer *b = APR_ARRAY_IDX(all, i, apx_balancer *);

        for (j = 0; j < b->members->nelts; j++) {
            apx_member *mb = &APR_ARRAY_IDX(b->members, j, apx_member);

            mb->gidx = n++;
            if (mb->cap || b->check)
                any_shared = 1;
        }
    }
    /* Without a cap or a check nothing needs sharing: the queue only
     * exists behind a cap. */
    if (!any_shared)
        return OK;
    if (ap_mpm_query(AP_MPMQ_HARD_LIMIT_DAEMONS, &limit) != APR_SUCCESS
        || limit < 1)
        limit = 16;
    rec_size = ALIGN64(sizeof(mshm_rec) + n * sizeof(apr_time_t)
                       + n * sizeof(apr_uint32_t));
    if ((unsigned)limit * 2 < MSHM_MIN_RECS)
        limit = MSHM_MIN_RECS / 2;
    size = ALIGN64(sizeof(mshm_head)) + n * sizeof(apx_mshm_member)
           + (apr_size_t)limit * 2 * rec_size;
    rv = apr_shm_create(&shm, size, NULL, pconf);
    if (rv != APR_SUCCESS) {
        ap_log_error(APLOG_MARK, APLOG_STARTUP | APLOG_ERR, rv, s,
                     APXLOGNO(00035) "cannot create the shared memory "
                     "(%" APR_SIZE_T_FMT " bytes) that balancer "
                     "members share across children (max= caps, "
                     "AsyncProxyHealthCheck)",
                     size);
        return HTTP_INTERNAL_SERVER_ERROR;
    }
    base = apr_shm_baseaddr_get(shm);
    memset(base, 0, size);
    head = (mshm_head *)base;
    head->magic = MSHM_MAGIC;
    head->nmembers = n;
    head->nrecs = (apr_uint32_t)limit * 2;
    head->rec_size = (apr_uint32_t)rec_size;
    members = (apx_mshm_member *)(base + ALIGN64(sizeof(mshm_head)));
    recs = (char *)(members + n);
    for (i = 0; all && i < all->nelts; i++) {
        apx_balancer *b = APR_ARRAY_IDX(all, i, apx_balancer *);

        for (j = 0; j < b->members->nelts; j++) {
            apx_member *mb = &APR_ARRAY_IDX(b->members, j, apx_member);

            members[mb->gidx].cap = mb->cap;
            /* up until the checks say otherwise (HAProxy starts its
             * servers up too): a restart does not 503 for an interval */
            members[mb->gidx].chk.up = 1;
        }
    }
    return OK;
}

/* Gives back everything record i holds. The caller owns the record (its
 * pid is ours or -1). Returns the slots given back. */
static apr_uint32_t drain_rec(int i)
{
    mshm_rec *r = rec_at(i);
    apr_uint32_t *held = rec_held(r), total = 0;
    apr_time_t *hat = rec_head_at(r);
    unsigned m;

    for (m = 0; m < head->nmembers; m++) {
        apr_uint32_t h = __atomic_exchange_n(&held[m], 0, __ATOMIC_ACQ_REL);

        __atomic_store_n(&hat[m], 0, __ATOMIC_RELEASE);
        if (h) {
            __atomic_sub_fetch(&members[m].inflight, h, __ATOMIC_ACQ_REL);
            __atomic_add_fetch(&members[m].reclaimed, h, __ATOMIC_RELAXED);
            total += h;
        }
    }
    return total;
}

unsigned apx_mshm_sweep(server_rec *s)
{
    unsigned i, swept = 0;
    apr_int32_t mypid = (apr_int32_t)getpid();

    if (!head)
        return 0;
    for (i = 0; i < head->nrecs; i++) {
        mshm_rec *r = rec_at((int)i);
        apr_int32_t pid = __atomic_load_n(&r->pid, __ATOMIC_ACQUIRE);
        apr_uint32_t slots;

        if (pid <= 0 || pid == mypid)
            continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH)
            continue;
        /* dead: the one sweeper whose CAS wins drains it */
        if (!__atomic_compare_exchange_n(&r->pid, &pid, -1, 0,
                                         __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            continue;
        slots = drain_rec((int)i);
        __atomic_store_n(&r->pid, 0, __ATOMIC_RELEASE);
        swept++;
        ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, s, APXLOGNO(00037)
                     "balancer members: child %d is gone; its %u in-flight "
                     "slot(s) are given back", (int)pid, slots);
    }
    return swept;
}

static apr_status_t child_cleanup(void *data)
{
    if (head && me >= 0) {
        drain_rec(me);
        __atomic_store_n(&rec_at(me)->pid, 0, __ATOMIC_RELEASE);
        me = -1;
    }
    return APR_SUCCESS;
}

void apx_mshm_child_init(apr_pool_t *pchild, server_rec *s)
{
    apr_int32_t mypid = (apr_int32_t)getpid();
    unsigned i;
    int round;

    me = -1;
    if (!head)
        return;
    /* this child may replace one that died holding slots */
    apx_mshm_sweep(s);
    for (round = 0; round < 2 && me < 0; round++) {
        if (round == 1)
            apx_mshm_sweep(s);
        for (i = 0; i < head->nrecs && me < 0; i++) {
            apr_int32_t zero = 0;

            if (__atomic_compare_exchange_n(&rec_at((int)i)->pid, &zero,
                                            mypid, 0, __ATOMIC_ACQ_REL,
                                            __ATOMIC_ACQUIRE))
                me = (int)i;
        }
    }
    if (me < 0)
        ap_log_error(APLOG_MARK, APLOG_WARNING, 0, s, APXLOGNO(00036)
                     "balancer members: no free record among %u in the "
                     "shared memory; this child's in-flight slots are "
                     "capped but would not be given back if it crashed",
                     head->nrecs);
    apr_pool_cleanup_register(pchild, NULL, child_cleanup,
                              apr_pool_cleanup_null);
}

apx_mshm_member *apx_mshm_at(unsigned gidx)
{
    return head && gidx < head->nmembers ? &members[gidx] : NULL;
}

int apx_mshm_take(unsigned gidx)
{
    apx_mshm_member *m = apx_mshm_at(gidx);
    apr_uint32_t cur;

    if (!m || !m->cap)
        return 1;
    cur = __atomic_load_n(&m->inflight, __ATOMIC_ACQUIRE);
    do {
        if (cur >= m->cap)
            return 0;
    } while (!__atomic_compare_exchange_n(&m->inflight, &cur, cur + 1, 1,
                                          __ATOMIC_ACQ_REL,
                                          __ATOMIC_ACQUIRE));
    if (me >= 0)
        __atomic_add_fetch(&rec_held(rec_at(me))[gidx], 1, __ATOMIC_ACQ_REL);
    return 1;
}

void apx_mshm_release(unsigned gidx)
{
    apx_mshm_member *m = apx_mshm_at(gidx);
    apr_uint32_t *held, h;

    if (!m || !m->cap)
        return;
    if (me >= 0) {
        /* never below 0: a slot the child cleanup already gave back is not
         * given back twice */
        held = &rec_held(rec_at(me))[gidx];
        h = __atomic_load_n(held, __ATOMIC_ACQUIRE);
        do {
            if (!h)
                return;
        } while (!__atomic_compare_exchange_n(held, &h, h - 1, 1,
                                              __ATOMIC_ACQ_REL,
                                              __ATOMIC_ACQUIRE));
    }
    __atomic_sub_fetch(&m->inflight, 1, __ATOMIC_ACQ_REL);
}

apr_uint32_t apx_mshm_held_here(unsigned gidx)
{
    if (!head || me < 0 || gidx >= head->nmembers)
        return 0;
    return __atomic_load_n(&rec_held(rec_at(me))[gidx], __ATOMIC_ACQUIRE);
}

void apx_mshm_queued_add(unsigned gidx, int delta)
{
    apx_mshm_member *m = apx_mshm_at(gidx);

    if (m)
        __atomic_add_fetch(&m->queued, (apr_uint32_t)delta, __ATOMIC_ACQ_REL);
}

void apx_mshm_set_head(unsigned gidx, apr_time_t at)
{
    if (head && me >= 0 && gidx < head->nmembers)
        __atomic_store_n(&rec_head_at(rec_at(me))[gidx], at,
                         __ATOMIC_RELEASE);
}

int apx_mshm_head_is_oldest(unsigned gidx, apr_time_t at)
{
    unsigned i;

    if (!head || gidx >= head->nmembers)
        return 1;
    for (i = 0; i < head->nrecs; i++) {
        mshm_rec *r;
        apr_time_t other;

        if ((int)i == me)
            continue;
        r = rec_at((int)i);
        if (__atomic_load_n(&r->pid, __ATOMIC_ACQUIRE) <= 0)
            continue;
        other = __atomic_load_n(&rec_head_at(r)[gidx], __ATOMIC_ACQUIRE);
        if (other && (other < at || (other == at && (int)i < me)))
            return 0;
    }
    return 1;
}

apr_uint32_t apx_mshm_check_gen(void)
{
    return head ? __atomic_load_n(&head->check_gen, __ATOMIC_ACQUIRE) : 0;
}

void apx_mshm_check_bump(void)
{
    if (head)
        __atomic_add_fetch(&head->check_gen, 1, __ATOMIC_ACQ_REL);
}

void apx_mshm_max64(apr_uint64_t *word, apr_uint64_t v)
{
    apr_uint64_t cur = __atomic_load_n(word, __ATOMIC_RELAXED);

    while (v > cur
           && !__atomic_compare_exchange_n(word, &cur, v, 1,
                                           __ATOMIC_RELAXED,
                                           __ATOMIC_RELAXED))
        ;
}
