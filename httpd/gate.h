/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* gate.h — the hand-over gate (gate.c; DESIGN.md §3): when may a module
 * worker first touch a connection the MPM handed over through our
 * suspend_connection hook.
 *
 * After that hook returns, the MPM thread still writes cs->c->sbh and
 * cs->suspended into the connection's memory; a module worker that freed or
 * reused the connection before crashed the child. The gate opens once that
 * MPM thread has visibly moved on.
 *
 * Threads:
 *   apx_gate_bump()    an MPM thread, at the start of each unit of work
 *   apx_gate_close()   the MPM thread, in the suspend hook
 *   apx_gate_pass()    the module worker the record was dispatched to
 */
#ifndef APX_HTTPD_GATE_H
#define APX_HTTPD_GATE_H

#include "common.h"
#include "scoreboard.h"
#include "apx_poller.h"

/* A closed gate is looked at again after this long (us), the record parked
 * meanwhile (no worker waits). The MPM thread leaves within microseconds
 * unless it was descheduled. */
#define APX_GATE_RECHECK    1000

typedef struct apx_gate {
    int pending;                /* closed by the hook, not yet passed */
    volatile worker_score *mpm_ws;
    unsigned char mpm_status;
    apr_time_t mpm_last_used;
    volatile apr_uint32_t *mpm_seq;
    apr_uint32_t mpm_seq_val;
    apr_time_t hook_time;
    apr_time_t since;           /* first found closed, 0: not yet */
    int phase;                  /* the dispatch the gate held back */
    unsigned why, got[2];
} apx_gate;

/* Marks the start of a unit of work on this MPM thread (pre_connection,
 * resume_connection, create_request, suspend_connection). */
void apx_gate_bump(void);
/* ... as hooks (REALLY_FIRST): pre_connection, resume_connection, and
 * create_request for keep-alive requests the MPM runs. */
int apx_gate_pre_connection(conn_rec *c, void *csd);
void apx_gate_resume_connection(conn_rec *c, request_rec *r);
int apx_gate_create_request(request_rec *r);
/* The suspend hook handed c over: the gate is closed until the MPM thread
 * that runs the hook (this one) has left it. Call before c->sbh is
 * cleared. */
void apx_gate_close(apx_gate *g, conn_rec *c);
/* A module worker got the record p of a connection whose gate is pending.
 * 1: open — the dispatch goes on (with what was held back, restored into
 * p->why, p->got and *phase, if it had to wait). 0: closed — what p was
 * dispatched for is held back and the caller re-parks the record as
 *  for APX_GATE_RECHECK. There is no way through on time alone. */
int apx_gate_pass(apx_gate *g, apx_park *p, int *phase, int regate);

#endif /* APX_HTTPD_GATE_H */
