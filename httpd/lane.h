/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* lane.h — the blocking lane (lane.c): a
 * bounded pool of threads for other handlers' requests on connections the
 * module owns, apart from the proxy's workers.
 */
#ifndef MOD_ASYNCPROXY_LANE_H
#define MOD_ASYNCPROXY_LANE_H

#include "apr_thread_proc.h"

typedef struct apx_lane_job apx_lane_job;
struct apx_lane_job {
    /* runs on a lane thread; the job is the callee's from then on */
    void (*run)(apx_lane_job *j, apr_thread_t *thd);
    apx_lane_job *next;         /* lane-private */
};

typedef struct apx_lane_figs {
    unsigned threads, threads_max, busy, queued;
    apr_uint64_t total, rejected;
} apx_lane_figs;

/* child_init: at most `threads` threads (started when needed), at most
 * `queue` jobs waiting. */
apr_status_t apx_lane_child_init(apr_pool_t *pchild, unsigned threads,
                                 unsigned queue);
/* Takes j: 1. Returns 0 when the lane is full or stopped (the caller keeps
 * j and answers 503). Any thread; never blocks beyond the lane's lock. */
int apx_lane_submit(apx_lane_job *j);
/* 1 on a lane thread. */
int apx_lane_is_current(void);
/* Child exit (main thread): drops waiting jobs, joins the threads once
 * their job ends (the caller shut the client sockets down first). */
void apx_lane_stop(void);
void apx_lane_figures(apx_lane_figs *f);

#endif /* MOD_ASYNCPROXY_LANE_H */
