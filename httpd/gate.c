/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* gate.c — the hand-over gate (see gate.h): per-MPM-thread sequence
 * numbers and the look at the MPM thread's scoreboard slot.
 *
 * Threads: apx_gate_bump() and apx_gate_close() on MPM threads,
 * apx_gate_pass() on the module worker that owns the record; a gate is
 * touched by one thread at a time (the record's owner), the sequence slots
 * are atomics.
 */
#include <sched.h>

#include "httpd.h"
#include "scoreboard.h"

#include "child.h"
#include "gate.h"

/* Gate waits longer than this are counted apart (GateBoundHits: until
 * 0.x the gate let a record through after this long). */
#define GATE_LONG       apr_time_from_sec(1)
/* With no sign at all from the MPM thread (no scoreboard slot and no
 * sequence slot: never seen), the gate opens this long after the hook. */
#define GATE_BLIND      apr_time_from_sec(1)

/* Each MPM thread bumps its own counter at the start of every unit of
 * work it does (pre_connection, resume_connection, create_request,
 * suspend_connection): when the counter of the thread that suspended a
 * connection has moved, that thread has left the connection. The slots
 * live for the whole process (never freed while a thread that used one may
 * have exited). */
#define SEQ_SLOTS 4096
static volatile apr_uint32_t seq_slots[SEQ_SLOTS];
static volatile apr_uint32_t seq_next;
static __thread volatile apr_uint32_t *my_seq;

static volatile apr_uint32_t *thread_seq(void)
{
    if (!my_seq) {
        apr_uint32_t i = apr_atomic_inc32(&seq_next);

        if (i >= SEQ_SLOTS)
            return NULL;
        my_seq = &seq_slots[i];
    }
    return my_seq;
}

void apx_gate_bump(void)
{
    volatile apr_uint32_t *s = thread_seq();

    if (s)
        apr_atomic_inc32(s);
}

void apx_gate_close(apx_gate *g, conn_rec *c)
{
    volatile apr_uint32_t *seq;

    g->hook_time = apr_time_now();
    g->pending = 1;
    g->since = 0;
    g->mpm_ws = c->sbh ? ap_get_scoreboard_worker(c->sbh) : NULL;
    if (g->mpm_ws) {
        /* The event MPM's worker writes SERVER_READY (SERVER_GRACEFUL when
         * dying) into its slot each time it comes back from
         * process_socket(). A thread that hands over a connection it has
         * not yet marked busy (a new connection's head adopted in our
         * process_connection hook) still shows that value here: the slot
         * would not change when it leaves, and the gate would wait for the
         * thread's next unit of work — on a quiet server, for ever,
         * looked at again every APX_GATE_RECHECK. Marked busy, its next
         * loop opens the gate. */
        if (g->mpm_ws->status == SERVER_READY
            || g->mpm_ws->status == SERVER_GRACEFUL)
            ap_update_child_status(c->sbh, SERVER_BUSY_READ, NULL);
        g->mpm_status = g->mpm_ws->status;
        g->mpm_last_used = g->mpm_ws->last_used;
    }
    seq = thread_seq();
    g->mpm_seq = seq;
    g->mpm_seq_val = seq ? *seq : 0;
}

/* 1 when the MPM thread that ran the suspend hook has left the connection:
 * its scoreboard slot changed (it went idle, or on to other work), or its
 * sequence moved (a hook at the start of its next unit of work). */
static int is_open(const apx_gate *g, apr_time_t now)
{
    volatile worker_score *ws = g->mpm_ws;

    __sync_synchronize();
    if (ws && (ws->status != g->mpm_status
               || ws->last_used != g->mpm_last_used))
        return 1;
    if (g->mpm_seq && *g->mpm_seq != g->mpm_seq_val)
        return 1;
    return !ws && !g->mpm_seq && now - g->hook_time > GATE_BLIND;
}

static void count_wait(apx_gate *g, apr_time_t now)
{
    apx_child *ch = apx_ch;
    apr_uint32_t waited, max;

    waited = (apr_uint32_t)(now - g->since);
    apr_atomic_inc32(&ch->n.gate_waits);
    if (now - g->since > GATE_LONG)
        apr_atomic_inc32(&ch->n.gate_bound_hits);
    do {
        max = apr_atomic_read32(&ch->n.gate_max_us);
    } while (waited > max
             && apr_atomic_cas32(&ch->n.gate_max_us, waited, max) != max);
}

/* A closed gate costs latency and a timer a millisecond, never memory, and
 * has no way through on time alone: a descheduled MPM thread may still
 * write cs->c->sbh and cs->suspended. */
int apx_gate_pass(apx_gate *g, apx_park *p, int *phase, int regate)
{
    apr_time_t now = apr_time_now();

    if (!is_open(g, now)) {
        /* one more look: the MPM thread is usually a few instructions from
         * the end of process_socket() */
        sched_yield();
        now = apr_time_now();
    }
    if (is_open(g, now)) {
        g->pending = 0;
        __sync_synchronize();
        if (g->since) {
            count_wait(g, now);
            p->why = g->why;
            p->got[0] = g->got[0];
            p->got[1] = g->got[1];
            *phase = g->phase;
        }
        return 1;
    }
    if (!g->since) {
        g->since = now;
        g->phase = *phase;
        g->why = p->why;
        g->got[0] = p->got[0];
        g->got[1] = p->got[1];
    }
    else if (*phase == regate && (p->why & APX_EV_SHUTDOWN)) {
        /* the engine is going: whatever the MPM thread does, the process
         * exits; hand the record on as the shutdown it is */
        g->pending = 0;
        *phase = g->phase;
        p->why = APX_EV_SHUTDOWN;
        p->got[0] = p->got[1] = 0;
        return 1;
    }
    apr_atomic_inc32(&apx_ch->n.gate_requeues);
    return 0;
}

/* The hooks at the start of an MPM thread's units of work. */
int apx_gate_pre_connection(conn_rec *c, void *csd)
{
    apx_gate_bump();
    return OK;
}

void apx_gate_resume_connection(conn_rec *c, request_rec *r)
{
    apx_gate_bump();
}

/* A keep-alive request the MPM runs has no connection hook: without this,
 * a gate whose MPM thread went on to such a request (same scoreboard
 * status) waits until that request ends. (The gate waits measured in a
 * burst of first requests were another case, parks on the backend connect:
 * see apx_wait_connect().) */
int apx_gate_create_request(request_rec *r)
{
    apx_gate_bump();
    return OK;
}
