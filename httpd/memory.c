/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* memory.c — what a connection that waits gives back. The MPM gives each
 * connection its own APR allocator, which keeps every block freed on it
 * (up to MaxMemFree, 2 MB by default) for the next request: for a
 * connection that will wait a long time (an idle keep-alive connection, a
 * tunnel) that is 8-16 KB held for nothing. APR has no call that drops an
 * allocator's free blocks; lowering its limit and cycling the blocks
 * through it does: a block freed beyond the limit goes back to the system.
 *
 * Threads: the thread that owns the connection (its allocator has no
 * mutex).
 */
#include <string.h>

#include "httpd.h"
#include "mpm_common.h"
#include "apr_allocator.h"

#include "memory.h"

/* Blocks taken and given back per trim at most: more than a proxied
 * request leaves (its pool's 1-3 blocks, the core's read buffer). */
#define TRIM_BLOCKS 8
/* Bytes after a block's header looked at to tell a fresh block. */
#define FRESH_PROBE 64

/* 1 when the block the allocator just handed out looks fresh: no free
 * block was left, and the allocator mapped a new one, which the kernel
 * gives zero-filled. A block that served before holds what a pool or a
 * read buffer put there; one whose first bytes happen to be zero only
 * ends the trim early (a block kept, no harm). */
static int looks_fresh(const apr_memnode_t *n)
{
    static const char zero[FRESH_PROBE];
    const char *p = (const char *)n + APR_MEMNODE_T_SIZE;

    return (apr_size_t)(n->endp - p) >= FRESH_PROBE
           && !memcmp(p, zero, FRESH_PROBE);
}

void apx_mem_trim(conn_rec *c, int hold)
{
    apr_allocator_t *a = apr_pool_allocator_get(c->pool);
    apr_memnode_t *held[TRIM_BLOCKS];
    int i, k = 0;

    if (!a)
        return;
    /* nothing kept: each block freed from here on goes back */
    apr_allocator_max_free_set(a, 1);
    /* the free blocks it kept, smallest first (a request for one minimal
     * block takes a larger one when no minimal one is free) */
    for (i = 0; i < TRIM_BLOCKS; i++) {
        if (!(held[k] = apr_allocator_alloc(a, 8192 - APR_MEMNODE_T_SIZE)))
            break;
        /* the free list is empty: taking more would map blocks only to
         * unmap them (an mmap/munmap pair and a page fault each) */
        if (looks_fresh(held[k++]))
            break;
    }
    while (k > 0)
        apr_allocator_free(a, held[--k]);
    if (!hold)
        apr_allocator_max_free_set(a, ap_max_mem_free);
}

void apx_mem_release(conn_rec *c)
{
    apr_allocator_t *a = apr_pool_allocator_get(c->pool);

    if (a)
        apr_allocator_max_free_set(a, ap_max_mem_free);
}
