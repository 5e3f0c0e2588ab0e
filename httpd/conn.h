/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */
/* conn.h — a connection the module owns (conn.c): adopted after its first
 * response or taken with its first head, it lives in the poller between
 * requests until it closes.
 *
 * Threads: child_init and child exit (main thread).
 */
#ifndef APX_HTTPD_CONN_H
#define APX_HTTPD_CONN_H

#include "common.h"
#include "drive.h"
#include "gate.h"
#include "head.h"
#include "lane.h"

/* A connection's own record (c->conn_config): the park record the poller
 * holds, and what the hooks on the MPM thread, our handler and the lane
 * leave for the adoption loop. Owned by whichever thread owns the
 * connection. */
typedef struct apx_conn apx_conn;
struct apx_conn {
    apx_park park;              /* the record the poller holds */
    conn_rec *c;
    apr_socket_t *csd;
    int fd;
    apr_uint32_t id;            /* the socket's id for the poller (keep[]) */
    int phase;                  /* PH_* the park is for */
    apx_req *rq;                /* request in flight, or NULL */
    int want_park;              /* handler returned SUSPENDED to park rq */
    int adopted;
    apx_gate gate;              /* the hand-over gate (gate.h) */
    apr_time_t deadline;        /* PH_LINGER, PH_KEEPALIVE: absolute
                                 * deadline */
    int idle_trim;              /* PH_KEEPALIVE: the first, short part of
                                 * the wait (memory.c trims after it) */
    apx_head *head;             /* the request head read ahead */
    int want_head;              /* process_connection suspended it to
                                 * await its head in the poller */
    /* a request for another handler, run on the lane */
    apx_lane_job lane;
    request_rec *lane_r;
    const char *lane_handler;
    int want_lane;
    apx_conn *prev, *next;      /* list of adopted connections */
};

/* The connection's record, made on first use (its park record set to be
 * dispatched to conn.c). The thread that owns c. */
apx_conn *apx_conn_get(conn_rec *c);

/* Hooks (mod_asyncproxy.c registers them):
 *   apx_conn_child_init()   child_init, FIRST: the list of adopted
 *                           connections
 *   apx_conn_process()      process_connection, MPM threads, before
 *                           mod_ssl's: a first head that is not whole is
 *                           awaited parked (AsyncProxyAdoptSlowHeads)
 *   apx_conn_suspend()      suspend_connection, MPM threads: hands a
 *                           connection our handler or apx_conn_process()
 *                           suspended over to the poller
 *   apx_conn_drop_h2c()     post_read_request: no h2c upgrade on a
 *                           connection the module owns */
void apx_conn_child_init(apr_pool_t *pchild, server_rec *s);
int apx_conn_process(conn_rec *c);
void apx_conn_suspend(conn_rec *c, request_rec *r);
int apx_conn_drop_h2c(request_rec *r);
/* Shuts down the sockets of every adopted connection (child exit). */
void apx_conn_shutdown_all(void);
/* Child exit, for apx_engine_destroy(): a record the engine still held
 * when it stopped (a request parked on its backend whose client's hangup
 * the poller did not see in time). A request's coroutine is destroyed; the
 * connection itself is left to the process exit. Main thread. */
void apx_conn_abandon(apx_park *p, apr_thread_t *thd);

#endif /* APX_HTTPD_CONN_H */
