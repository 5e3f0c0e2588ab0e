/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* lane.c — the blocking lane: a bounded pool of threads of
 * its own where requests for other handlers run on connections the module
 * owns (static files, CGI, PHP, DAV, mod_proxy_*, ...).
 *
 * Such handlers read and write the client with blocking I/O, for as long as
 * the client makes them: run on the proxy's workers they would hold them
 * (a slow upload to a CGI, a large file to a slow reader). The lane keeps
 * them apart: at most AsyncProxyLaneThreads threads (started on demand),
 * at most AsyncProxyLaneQueue jobs waiting for one; beyond that the caller
 * answers 503. The proxy's workers never wait for the lane.
 *
 * Threads:
 *   apx_lane_child_init(), apx_lane_stop()   the child's main thread
 *   apx_lane_submit(), apx_lane_figures()    any thread
 *   job->run()                               a lane thread
 *   apx_lane_is_current()                    any thread (is it a lane one?)
 */
#include "httpd.h"
#include "http_log.h"
#include "apr_thread_proc.h"
#include "apr_thread_cond.h"

#include "child.h"
#include "lane.h"

APLOG_USE_MODULE(asyncproxy);

typedef struct lane_thread lane_thread;
struct lane_thread {
    apr_thread_t *thd;
    lane_thread *next;
};

static struct {
    apr_pool_t *pool;
    apr_thread_mutex_t *mtx;
    apr_thread_cond_t *cond;
    apx_lane_job *head, *tail;      /* waiting jobs, FIFO */
    unsigned threads_max, queue_max;
    unsigned threads, idle, queued, busy;
    apr_uint64_t total, rejected;
    int stop;
    lane_thread *all;
} lane;

static __thread int on_lane;

int apx_lane_is_current(void)
{
    return on_lane;
}

static void *APR_THREAD_FUNC lane_main(apr_thread_t *thd, void *data)
{
    apx_lane_job *j;

    on_lane = 1;
    apr_thread_mutex_lock(lane.mtx);
    for (;;) {
        while (!lane.head && !lane.stop) {
            lane.idle++;
            apr_thread_cond_wait(lane.cond, lane.mtx);
            lane.idle--;
        }
        if (lane.stop)
            break;
        j = lane.head;
        lane.head = j->next;
        if (!lane.head)
            lane.tail = NULL;
        lane.queued--;
        lane.busy++;
        apr_thread_mutex_unlock(lane.mtx);
        j->run(j, thd);
        apr_thread_mutex_lock(lane.mtx);
        lane.busy--;
    }
    apr_thread_mutex_unlock(lane.mtx);
    return NULL;
}

apr_status_t apx_lane_child_init(apr_pool_t *pchild, unsigned threads,
                                 unsigned queue)
{
    apr_status_t rv;

    memset(&lane, 0, sizeof(lane));
    lane.pool = pchild;
    lane.threads_max = threads;
    lane.queue_max = queue;
    rv = apr_thread_mutex_create(&lane.mtx, APR_THREAD_MUTEX_DEFAULT, pchild);
    if (rv == APR_SUCCESS)
        rv = apr_thread_cond_create(&lane.cond, pchild);
    if (rv != APR_SUCCESS)
        lane.mtx = NULL;
    return rv;
}

int apx_lane_submit(apx_lane_job *j)
{
    lane_thread *t = NULL;
    apr_status_t rv;

    if (!lane.mtx)
        return 0;
    apr_thread_mutex_lock(lane.mtx);
    /* a job takes an idle thread, a new one, or a place in the queue */
    if (lane.stop || (lane.queued >= lane.idle + lane.queue_max
                      + (lane.threads_max - lane.threads))) {
        lane.rejected++;
        apr_thread_mutex_unlock(lane.mtx);
        return 0;
    }
    j->next = NULL;
    if (lane.tail)
        lane.tail->next = j;
    else
        lane.head = j;
    lane.tail = j;
    lane.queued++;
    lane.total++;
    if (lane.queued > lane.idle && lane.threads < lane.threads_max) {
        /* Threads are few and live for the child: started under the lock
         * so the count never overshoots; a start costs some tens of
         * microseconds, once per thread. */
        t = apr_pcalloc(lane.pool, sizeof(*t));
        rv = apr_thread_create(&t->thd, NULL, lane_main, NULL, lane.pool);
        if (rv == APR_SUCCESS) {
            t->next = lane.all;
            lane.all = t;
            lane.threads++;
        }
        else {
            ap_log_perror(APLOG_MARK, APLOG_ERR, rv, lane.pool,
                          APXLOGNO(00017) "cannot start a lane thread "
                          "(%u running)", lane.threads);
        }
    }
    apr_thread_cond_signal(lane.cond);
    apr_thread_mutex_unlock(lane.mtx);
    return 1;
}

void apx_lane_stop(void)
{
    lane_thread *t;
    apr_status_t rv;

    if (!lane.mtx)
        return;
    apr_thread_mutex_lock(lane.mtx);
    lane.stop = 1;
    /* jobs still waiting are dropped: the child is exiting, and their
     * connections go with it */
    lane.head = lane.tail = NULL;
    lane.queued = 0;
    apr_thread_cond_broadcast(lane.cond);
    apr_thread_mutex_unlock(lane.mtx);
    /* the mutex stays: a module worker may still ask (and be refused)
     * until the engine is joined after this */
    for (t = lane.all; t; t = t->next)
        apr_thread_join(&rv, t->thd);
    lane.all = NULL;
}

void apx_lane_figures(apx_lane_figs *f)
{
    memset(f, 0, sizeof(*f));
    if (!lane.mtx)
        return;
    apr_thread_mutex_lock(lane.mtx);
    f->threads = lane.threads;
    f->threads_max = lane.threads_max;
    f->busy = lane.busy;
    f->queued = lane.queued;
    f->total = lane.total;
    f->rejected = lane.rejected;
    apr_thread_mutex_unlock(lane.mtx);
}
