/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* child.h — the state of this child process: its engine, its stack pool
 * and the figures every file counts into (child.c starts and stops it).
 *
 * Threads: written by child_init before any engine thread exists;
 * afterwards only through atomics or the engine.
 */
#ifndef APX_HTTPD_CHILD_H
#define APX_HTTPD_CHILD_H

#include "common.h"
#include "apx_coro.h"
#include "apx_poller.h"

/* Figures of this child, for the status page and mod_status. */
typedef struct apx_counters {
    volatile apr_uint32_t adopted_now;     /* connections the module owns */
    volatile apr_uint32_t adopted_total;
    volatile apr_uint32_t gate_waits;      /* hand-overs that had to wait */
    volatile apr_uint32_t gate_max_us;     /* longest such wait */
    volatile apr_uint32_t gate_bound_hits; /* waits that hit the bound */
    volatile apr_uint32_t requests_total;  /* proxied requests started */
    volatile apr_uint32_t in_flight;       /* proxied requests not finished */
    volatile apr_uint32_t parked_reqs;     /* of those, parked at least once
                                            * (counted against MaxParked) */
    volatile apr_uint32_t parked_total;
    volatile apr_uint32_t sync_total;      /* ran on the sync driver */
    volatile apr_uint32_t done_total;
    volatile apr_uint32_t bad_gateway;     /* 502 answered */
    volatile apr_uint32_t gateway_timeout; /* 504 answered */
    volatile apr_uint32_t unavailable;     /* 503 answered */
    volatile apr_uint32_t client_errors;   /* 400/408/413 to the client */
    volatile apr_uint32_t aborted;         /* connection aborted mid-way */
    volatile apr_uint32_t client_gone;     /* client left while waiting */
    volatile apr_uint32_t backend_reused;  /* pooled connection taken */
    volatile apr_uint32_t backend_retries; /* idempotent retry on a fresh one */
    volatile apr_uint32_t tls_handshakes;  /* TLS handshakes with backends */
    volatile apr_uint32_t tls_resumed;     /* of those, sessions resumed */
    volatile apr_uint32_t keepalive_closed;/* idle adopted closed (timeout/stop) */
    volatile apr_uint32_t head_waits;      /* partial request head re-parked */
    volatile apr_uint32_t head_timeouts;   /* 408: head not whole in time */
    volatile apr_uint32_t head_refused;    /* head over every limit: closed */
    volatile apr_uint32_t heads_adopted;   /* connections taken from an MPM
                                            * thread to await their head */
    volatile apr_uint32_t idle_now;        /* adopted, parked between requests
                                            * or awaiting a head */
    volatile apr_uint32_t shed_total;      /* of those, closed under pressure */
    volatile apr_uint32_t idle_trims;      /* idle connections that gave back
                                            * their allocator's free blocks */
    volatile apr_uint32_t gate_requeues;   /* gate found closed: re-parked */
    volatile apr_uint32_t handed_over;     /* finished on an MPM thread, the
                                            * connection adopted anyway */
    volatile apr_uint32_t delay_skipped;   /* parked at once: too many MPM
                                            * threads in the park delay */
    volatile apr_uint32_t cache_hits;      /* served from the cache */
    volatile apr_uint32_t cache_misses;    /* fetched to be stored */
    volatile apr_uint32_t cache_stale;     /* served stale */
    volatile apr_uint32_t cache_bypass;    /* not cacheable */
    volatile apr_uint32_t cache_coalesced; /* waited for another's fetch */
    volatile apr_uint32_t cache_not_modified; /* 304 from the cache */
    volatile apr_uint32_t streams_now;     /* bodies without a length being
                                            * relayed event by event */
    volatile apr_uint32_t streams_total;
    volatile apr_uint64_t stream_bytes;    /* their body bytes to clients */
    volatile apr_uint32_t tunnels_now;     /* upgraded connections open */
    volatile apr_uint32_t tunnels_total;
    volatile apr_uint64_t tunnel_bytes_in; /* client to backend */
    volatile apr_uint64_t tunnel_bytes_out;/* backend to client */
} apx_counters;

/* Per-child state. */
typedef struct apx_child {
    apr_pool_t *pchild;
    server_rec *s;
    int mpm_async;              /* AP_MPMQ_IS_ASYNC at child_init */
    apx_engine *engine;         /* NULL: synchronous driver only */
    apx_stack_pool *stacks;
    volatile apr_uint32_t stopping;
    volatile apr_uint32_t delaying; /* MPM threads waiting out a park delay */
    apr_uint32_t delaying_max;      /* ... at most this many (read-only) */
    apx_counters n;
} apx_child;

extern apx_child *apx_ch;

/* child.c: child_init starts the engine and what it serves; child_stopping
 * tells them the child is going. */
void apx_child_init(apr_pool_t *pchild, server_rec *s);
void apx_child_stopping(apr_pool_t *pchild, int graceful);
/* child.c: 1 when the lowest free descriptor is within 1/16 of soft_limit
 * (RLIMIT_NOFILE's soft value; 0 or RLIM_INFINITY: never), or none is
 * free: accept() and connect() are about to fail (descriptors are handed
 * out lowest first). One dup() and one close(); any thread. */
int apx_fds_short(unsigned long soft_limit);

/* child.c: a per-child timer, a park record with no fd whose fire runs on
 * a module worker `after` it was armed, for as long as its owner wants it
 * (the backend pool's expiry, the shedding tick, the member queues, the
 * health checks). `on` says the record is the engine's or its fire's:
 *   apx_timer_start()  any thread: arms it when it is off (1), else 0;
 *   apx_timer_again()  from fire: once more, `after` from now;
 *   apx_timer_stop()   from fire: off. A start that came meanwhile saw it
 *                      still on and did nothing: fire looks again after
 *                      stopping whether it is wanted after all.
 * A submit that fails (no engine, child stopping) turns it off. */
typedef struct apx_timer {
    apx_park park;
    apx_park_fn fire;
    unsigned flags;                 /* APX_PARK_* of the record */
    volatile apr_uint32_t on;
} apx_timer;

void apx_timer_init(apx_timer *t, apx_park_fn fire, unsigned flags);
int apx_timer_start(apx_timer *t, apr_interval_time_t after);
void apx_timer_again(apx_timer *t, apr_interval_time_t after);
void apx_timer_stop(apx_timer *t);

#endif /* APX_HTTPD_CHILD_H */
