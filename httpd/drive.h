/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* drive.h — one proxied request in flight (apx_req) and the wait
 * primitive its coroutine calls at every would-block point; the two drivers
 * behind it (poll in place, or park in the poller) live in drive.c.
 *
 * Threads: every function runs inside the request's coroutine, on the
 * thread that currently owns the request.
 */
#ifndef APX_HTTPD_DRIVE_H
#define APX_HTTPD_DRIVE_H

#include "conf.h"
#include "apx_coro.h"
#include "apx_poller.h"

/* How a proxied request ended (apx_req.outcome). */
enum {
    APX_OUT_RUNNING = 0,
    APX_OUT_DONE,       /* the whole response went to the output filters */
    APX_OUT_ERROR,      /* nothing sent yet: answer rq->status (502/503/504) */
    APX_OUT_TUNNEL,     /* an upgraded connection ran and closed: nothing
                         * more to send, the connection closes */
    APX_OUT_ABORT       /* response cut short or client gone: abort the
                         * client connection, never a short body that looks
                         * whole */
};

/* Added to apx_wait()'s result when the client hung up while we waited
 * for something else. */
#define APX_EV_CLIENT_GONE 0x100

/* One proxied request in flight. Lives in r->pool; owned by whichever
 * thread runs its coroutine (the MPM thread in the handler, later the
 * module worker that popped it). */
typedef struct apx_req {
    request_rec *r;
    conn_rec *c;
    const apx_mapping *map;
    const apx_srv_conf *sconf;
    apx_coro *coro;
    int client_fd;
    int async;                  /* waits may park (else: poll in place) */
    int counted;                /* holds a slot of max_parked */
    apr_time_t park_after;      /* handler phase: poll in place until then */
    /* the wait in progress, for the driver */
    int wait_fd;
    unsigned wait_events;
    apr_time_t wait_deadline;
    unsigned wait_got;
    int wait_wake;              /* the wait is apx_wait_wake()'s */
    apx_park *park;             /* the connection's park record (its
                                 * dispatch set by conn.c), NULL when the
                                 * request cannot park */
    int wait_two;               /* apx_wait2(): fd1 is watched as asked */
    int stack_trimmed;          /* conn.c gave back the stack's unused
                                 * pages at the first such wait */
    int wait_fd1;
    unsigned wait_events1;
    unsigned wait_got1;
    int finished_sync;          /* ended on the MPM thread, handed over
                                 * only for the connection's sake */
    int detached;               /* waits ignore the client (a background
                                 * refresh after the response went out) */
    int outcome;                /* APX_OUT_* */
    int status;                 /* with APX_OUT_ERROR */
    const char *note;           /* outcome for the log: "client-abort", ... */
    apr_time_t start;
    void *proxy;                /* request.c's state */
} apx_req;

/* drive.c:
 * apx_wait() runs inside a request's coroutine: it waits until `fd` is
 * ready for `events` (APX_EV_IN / APX_EV_OUT) or `deadline` passes, watching
 * the client for a hangup meanwhile. The sync driver poll()s in place; the
 * async driver polls in place until the park delay ends, then yields so the
 * request is parked. Returns the APX_EV_* seen on fd, APX_EV_TIMEOUT,
 * APX_EV_SHUTDOWN, and/or APX_EV_CLIENT_GONE. */
unsigned apx_wait(apx_req *rq, int fd, unsigned events, apr_time_t deadline);
/* Waits for either of two fds (a tunnel: backend and client) at once:
 * returns what fd0 reported (plus TIMEOUT / SHUTDOWN), and in *got1 what
 * fd1 reported (IN, OUT, HUP, ERR). Neither fd is taken for "the client
 * hung up": a hangup is the caller's to read from the bits. Never polls in
 * place on an MPM thread (a tunnel waits for long). */
unsigned apx_wait2(apx_req *rq, int fd0, unsigned ev0, int fd1, unsigned ev1,
                   apr_time_t deadline, unsigned *got1);
/* apx_wait(fd, APX_EV_OUT) for a non-blocking connect: on an MPM thread it
 * first polls in place for up to APX_CONNECT_GRACE whatever the park delay
 * says (a connect to a near backend completes in ~0.1 ms; parking for it
 * costs a hand-over to the poller and back, and the gate then waits for the
 * MPM thread), within the same cap as the park delay: at most half of the
 * MPM's threads wait in place at a time. */
unsigned apx_wait_connect(apx_req *rq, int fd, apr_time_t deadline);
/* drive.c: waits, parked, until another thread wakes the
 * request's record (the response cache's miss coalescing). enlist() runs
 * on the calling thread with the record armed: it returns 1 when it
 * enlisted the record where a waker will find it, 0 when there is nothing
 * to wait for any more (then no wait happens). The caller must delist the
 * record under the waker's lock after the wait, whatever ended it.
 * Returns APX_EV_WAKE, APX_EV_TIMEOUT, APX_EV_SHUTDOWN and/or
 * APX_EV_CLIENT_GONE; 0 when the request cannot park (sync driver). */
unsigned apx_wait_wake(apx_req *rq, int (*enlist)(void *baton, apx_park *p),
                       void *baton, apr_time_t deadline);

/* drive.c: writes what the core output filter of c holds, never blocking
 * (NULL brigade: "write what is pending", as the event MPM's write
 * completion calls it); the step before a wait for the client to take
 * more. APR_ECONNABORTED when the client is gone. The thread that owns c. */
apr_status_t apx_core_flush(conn_rec *c);

#endif /* APX_HTTPD_DRIVE_H */
