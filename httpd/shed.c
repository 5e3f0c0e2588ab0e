/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* shed.c — closing idle adopted connections under pressure (shed.h).
 *
 * Threads: apx_shed_child_init() on the main thread at child_init;
 * apx_shed_idle_inc() on whichever thread parks a connection idle; the
 * tick on a module worker, one at a time (its record is parked by one
 * owner only). Shared state is atomics.
 */
#include <errno.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include "httpd.h"
#include "ap_mpm.h"
#include "scoreboard.h"

#include "child.h"
#include "shed.h"

/* The check runs this often while some adopted connection is idle. */
#define SHED_TICK       apr_time_from_msec(100)

/* Like the event MPM for its own keep-alive connections: when the child
 * stops accepting (at its connection limit: parked and adopted connections
 * count) or runs short of file descriptors, the idle adopted connections
 * that waited longest are closed, so new clients get in. Checked every
 * SHED_TICK on a worker: a few loads and one dup(). */
static apx_timer shed_tick;
static int my_slot = -1;
static rlim_t fd_soft_limit;
static apr_uint32_t conn_cap;   /* the MPM's limit with every thread idle */
static unsigned not_accepting_ticks;    /* the tick's own (one at a time) */

/* The timer runs while some adopted connection is idle (and so nothing is
 * left parked when none is). */
void apx_shed_idle_inc(void)
{
    if (apr_atomic_inc32(&apx_ch->n.idle_now) == 0)
        apx_timer_start(&shed_tick, SHED_TICK);
}

static void shed_tick_fire(apx_park *p, apr_thread_t *thd)
{
    apx_child *ch = apx_ch;
    unsigned idle, shed = 0;

    if (!ch || !ch->engine || (p->why & APX_EV_SHUTDOWN)
        || apr_atomic_read32(&ch->stopping)) {
        apx_timer_stop(&shed_tick);
        return;
    }
    idle = apr_atomic_read32(&ch->n.idle_now);
    if (!idle) {
        /* nothing to shed: stop, unless a connection went idle meanwhile
         * (its idle_inc() saw the timer still on) */
        apx_timer_stop(&shed_tick);
        if (apr_atomic_read32(&ch->n.idle_now))
            apx_timer_start(&shed_tick, SHED_TICK);
        return;
    }
    {
        process_score *ps = my_slot >= 0 ? ap_get_scoreboard_process(my_slot)
                                         : NULL;
        apr_uint32_t conns = apr_atomic_read32(&ch->n.adopted_now);

        if (ps && ps->connections > conns)
            conns = ps->connections;
        /* the listener is off (for two looks in a row: all MPM threads
         * busy for a moment turns it off too): get under its limit again */
        not_accepting_ticks = ps && ps->not_accepting
                              ? not_accepting_ticks + 1 : 0;
        if (not_accepting_ticks >= 2)
            shed = 16 + idle / 8;
        else if (conn_cap && conns + conn_cap / 16 >= conn_cap)
            /* about to be: make room before it stops */
            shed = conns + conn_cap / 16 - conn_cap + 1;
        if (apx_fds_short(fd_soft_limit))
            shed += 16 + idle / 4;
        if (shed > idle)
            shed = idle;
        if (shed)
            apx_engine_shed_idle(ch->engine, shed);
    }
    apx_timer_again(&shed_tick, SHED_TICK);
}

void apx_shed_child_init(server_rec *s, double factor, unsigned threads)
{
    struct rlimit rl;
    int i, limit = 0;

    ap_mpm_query(AP_MPMQ_HARD_LIMIT_DAEMONS, &limit);
    for (i = 0; i < limit; i++) {
        process_score *ps = ap_get_scoreboard_process(i);

        if (ps && ps->pid == getpid()) {
            my_slot = i;
            break;
        }
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
        fd_soft_limit = rl.rlim_cur;
    apx_timer_init(&shed_tick, shed_tick_fire, 0);
    conn_cap = threads ? (apr_uint32_t)(threads + (threads - 1) * factor) : 0;
}
