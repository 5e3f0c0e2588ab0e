/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* upstream_queue.h — the parked queue of a capped balancer member
 * (upstream_queue.c): a request whose member is at its max= waits, parked
 * and holding no thread, in a FIFO of this child; slots are handed to the
 * waiters in arrival order across all children (upstream_shm.h).
 *
 * Threads: apx_queue_child_init() on the child's main thread;
 * apx_group_acquire() inside the request's coroutine; the rest from any
 * request thread.
 */
#ifndef APX_HTTPD_UPSTREAM_QUEUE_H
#define APX_HTTPD_UPSTREAM_QUEUE_H

#include "drive.h"
#include "upstream.h"

/* What apx_group_acquire() gives. */
enum {
    APX_ACQ_OK = 0,         /* *idx holds a slot (when capped) */
    APX_ACQ_NO_MEMBER,      /* no member eligible (503) */
    APX_ACQ_FULL,           /* the member's queue holds queue= (503) */
    APX_ACQ_TIMEOUT,        /* waited queuetimeout= (503) */
    APX_ACQ_GONE,           /* the client left while it waited */
    APX_ACQ_SHUTDOWN        /* the child stops */
};

void apx_queue_child_init(apr_pool_t *pchild, server_rec *s);

/* Picks a member for the request (apx_group_pick) and takes one of its
 * slots; when the member is at its max= (or others wait for it already,
 * in any child: no overtaking), the request waits in the member's queue:
 * parked with its client watched (a client that leaves is gone from the
 * queue at once) until a slot is handed to it, queuetimeout= passes, or
 * the child stops. On APX_ACQ_OK the caller reports the member with
 * apx_group_done() exactly once (which gives the slot back); on any other
 * result nothing is held. */
int apx_group_acquire(apx_balancer *b, apx_req *rq, request_rec *r,
                      unsigned *idx);

/* A slot of member gidx that this child held is free: handed to this
 * child's oldest waiter when no other child has an older one (returns 1:
 * the slot stays taken, now the waiter's), else given back to the shared
 * count (0), where the other children's queue timers find it. */
int apx_queue_release(unsigned gidx);
/* A slot without waiting and without passing a waiter (a retry): 1 taken,
 * 0 not (full, or someone waits). */
int apx_queue_try_take(unsigned gidx);
/* Requests of member gidx waiting in this child. */
apr_uint32_t apx_queue_here(unsigned gidx);

#endif /* APX_HTTPD_UPSTREAM_QUEUE_H */
