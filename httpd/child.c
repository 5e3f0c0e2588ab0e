/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* child.c — the per-child engine's life: child_init creates the stack pool,
 * the lane, the backend pools, the cache store and the engine;
 * child_stopping tells them; a pre-cleanup on pchild stops and joins every
 * engine thread while the MPM's structures still exist.
 *
 * Threads: child_init on the child's main thread before the MPM starts its
 * workers; child_stopping on the child's main thread (signals) or an MPM
 * thread (internal shutdown); the pchild pre-cleanup on the child's main
 * thread.
 */
#include <errno.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include "httpd.h"
#include "http_config.h"
#include "http_log.h"
#include "ap_mpm.h"

#include "conf.h"
#include "child.h"
#include "cache.h"
#include "conn.h"
#include "lane.h"
#include "shed.h"
#include "upstream.h"
#include "upstream_check.h"

APLOG_USE_MODULE(asyncproxy);

apx_child *apx_ch;

static void log_sink(int level, apr_status_t status, const char *msg,
                     void *baton)
{
    server_rec *s = baton;

    ap_log_error(APLOG_MARK, level, status, s, "%s", msg);
}

/* Runs before pchild's subpools and the MPM's structures go: stops the
 * poller, lets workers finish, joins every engine thread. Records still
 * parked are abandoned; their connections close when the process exits. */
static apr_status_t child_cleanup(void *data)
{
    apx_child *ch = data;
    apx_engine_stats st;

    if (!ch->engine)
        return APR_SUCCESS;
    apr_atomic_set32(&ch->stopping, 1);
    apx_conn_shutdown_all();
    /* lane threads hand their connections back to the engine: join them
     * while it still takes records */
    apx_lane_stop();
    apx_engine_stats_get(ch->engine, &st);
    apx_engine_destroy(ch->engine, apx_conn_abandon);
    ch->engine = NULL;
    ap_log_error(APLOG_MARK, APLOG_DEBUG, 0, ch->s, APXLOGNO(00002)
                 "engine stopped and joined (%u parked, %u queued "
                 "abandoned)", st.parked, st.queued);
    if (ch->stacks) {
        apx_stack_pool_destroy(ch->stacks);
        ch->stacks = NULL;
    }
    apx_ch = NULL;
    return APR_SUCCESS;
}

int apx_fds_short(unsigned long soft_limit)
{
    int fd;

    if (!soft_limit || soft_limit == (unsigned long)RLIM_INFINITY)
        return 0;
    fd = fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, 0);
    if (fd < 0)
        return errno == EMFILE;
    close(fd);
    return (unsigned long)fd >= soft_limit - soft_limit / 16;
}

void apx_timer_init(apx_timer *t, apx_park_fn fire, unsigned flags)
{
    t->fire = fire;
    t->flags = flags;
    t->on = 0;
}

void apx_timer_again(apx_timer *t, apr_interval_time_t after)
{
    apx_park_init(&t->park, t->fire, t);
    t->park.timeout = after;
    t->park.flags = t->flags;
    if (!apx_ch || !apx_ch->engine
        || apx_park_submit(apx_ch->engine, &t->park) != APR_SUCCESS)
        apr_atomic_set32(&t->on, 0);
}

int apx_timer_start(apx_timer *t, apr_interval_time_t after)
{
    /* the read first: some owners come here on every request, and a
     * failed CAS still takes the cache line */
    if (!apx_ch || !apx_ch->engine || apr_atomic_read32(&t->on)
        || apr_atomic_cas32(&t->on, 1, 0) != 0)
        return 0;
    apx_timer_again(t, after);
    return 1;
}

void apx_timer_stop(apx_timer *t)
{
    apr_atomic_set32(&t->on, 0);
}

void apx_child_init(apr_pool_t *pchild, server_rec *s)
{
    apx_child *ch = apr_pcalloc(pchild, sizeof(*ch));
    apx_engine_conf ec;
    apr_status_t rv;
    int threads = 0;

    ch->pchild = pchild;
    ch->s = s;
    if (ap_mpm_query(AP_MPMQ_IS_ASYNC, &ch->mpm_async) != APR_SUCCESS)
        ch->mpm_async = 0;
    ap_mpm_query(AP_MPMQ_MAX_THREADS, &threads);
    /* Half the MPM's threads may wait in place at once (a park delay, a
     * backend connect); the rest park at once and stay free to accept.
     * Without the cap, a burst of new connections to a slow backend holds
     * every MPM thread for the whole wait: with a 5 ms park delay, 25
     * threads allow 5,000 first requests per second per child, and the
     * listener stops accepting (AH00484) meanwhile. */
    ch->delaying_max = threads > 1 ? (apr_uint32_t)threads / 2 : 1;
    apx_log_set(log_sink, s,
                ap_get_server_module_loglevel(s, APLOG_MODULE_INDEX));

    rv = apx_stack_pool_create(&ch->stacks, apx_gconf.stack_size,
                               apx_gconf.workers_max * 4 + (unsigned)threads);
    if (rv != APR_SUCCESS) {
        ap_log_error(APLOG_MARK, APLOG_CRIT, rv, s, APXLOGNO(00003)
                     "cannot create the coroutine stack pool");
        return;
    }
    apx_ch = ch;
    {
        unsigned lt = apx_gconf.lane_threads ? apx_gconf.lane_threads
                      : threads > 0 ? (unsigned)threads : 25;
        unsigned lq = apx_gconf.lane_queue ? apx_gconf.lane_queue
                      : lt * APX_DEFAULT_LANE_QUEUE_PER_THREAD;

        rv = apx_lane_child_init(pchild, lt, lq);
        if (rv != APR_SUCCESS)
            ap_log_error(APLOG_MARK, APLOG_CRIT, rv, s, APXLOGNO(00022)
                         "cannot create the lane: other handlers' requests "
                         "on adopted connections will get 503");
    }
    apx_backends_child_init(pchild);
    apx_balancers_child_init(pchild, s);
    apx_hc_child_init(pchild, s);
    apr_pool_pre_cleanup_register(pchild, ch, child_cleanup);

    if (!ch->mpm_async) {
        ap_log_error(APLOG_MARK, APLOG_INFO, 0, s, APXLOGNO(00004)
                     "synchronous mode: the MPM (%s) is not asynchronous, "
                     "requests wait on their own thread",
                     ap_show_mpm());
        return;
    }
    apx_engine_conf_default(&ec);
    ec.workers_min = apx_gconf.workers_min;
    ec.workers_max = apx_gconf.workers_max;
    rv = apx_engine_create(&ch->engine, &ec, pchild);
    if (rv == APR_SUCCESS)
        rv = apx_engine_start(ch->engine);
    if (rv != APR_SUCCESS) {
        ap_log_error(APLOG_MARK, APLOG_CRIT, rv, s, APXLOGNO(00005)
                     "cannot start the engine; falling back to synchronous "
                     "mode");
        if (ch->engine)
            apx_engine_destroy(ch->engine, NULL);
        ch->engine = NULL;
        return;
    }
    apx_shed_child_init(s, apx_gconf.mpm_factor, apx_gconf.mpm_threads);
    apx_checks_start();
    ap_log_error(APLOG_MARK, APLOG_INFO, 0, s, APXLOGNO(00006)
                 "asynchronous mode: MPM %s, engine with %u..%u workers, "
                 "%" APR_SIZE_T_FMT "-byte coroutine stacks", ap_show_mpm(),
                 ec.workers_min, ec.workers_max, apx_gconf.stack_size);
}

void apx_child_stopping(apr_pool_t *pchild, int graceful)
{
    apx_child *ch = apx_ch;

    if (!ch)
        return;
    apr_atomic_set32(&ch->stopping, 1);
    if (ch->engine)
        apx_engine_stopping(ch->engine);
}
