/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* head.h — a request head read ahead without blocking
 * (head.c).
 *
 * Threads: every function runs on the thread that owns the connection.
 */
#ifndef MOD_ASYNCPROXY_HEAD_H
#define MOD_ASYNCPROXY_HEAD_H

#include <sys/types.h>

#include "httpd.h"
#include "util_filter.h"

typedef struct apx_head apx_head;

/* apx_head_read() results; a refusal is the HTTP status to answer (400,
 * 414), as httpd would answer that head. */
enum {
    APX_HEAD_MORE = 0,      /* not whole yet: wait until readable */
    APX_HEAD_COMPLETE = 1,  /* a whole head is buffered: httpd may read it */
    APX_HEAD_CLOSED = -1    /* EOF, reset or a read error before a whole
                             * head */
};

/* The connection's read-ahead buffer (its input filter is added on the
 * first call); *slot keeps it (c->pool). */
apx_head *apx_head_get(conn_rec *c, apx_head **slot);
/* A new head is awaited from now on (the deadline counts from `now`); what
 * is buffered already is its start. */
void apx_head_begin(apx_head *h, apr_time_t now);
int apx_head_is_waiting(const apx_head *h);
/* Reads what the client sent, without blocking; APX_HEAD_* or a status. */
int apx_head_read(apx_head *h);
/* When the wait must end (408), from the header stage of the server the
 * connection came in on. */
apr_time_t apx_head_deadline(const apx_head *h);
/* Bytes of the awaited head seen so far. */
apr_size_t apx_head_bytes(const apx_head *h);

/* 1 when every input filter from f down passes the client's bytes on as
 * they came and keeps none between calls: ours (the read-ahead, empty
 * between requests), mod_logio's counter, the core's socket reader, and
 * with `reqtimeout` mod_reqtimeout's deadlines. Anything else (mod_ssl, a
 * filter of another module) may hold bytes. */
int apx_filters_pass_through(ap_filter_t *f, int reqtimeout);

/* One non-blocking recv() of c's client socket fd, for reads that go
 * around the filters: credited to mod_logio's %I when that module is
 * loaded. The byte count, 0 at EOF, or -1 with errno (EINTR retried). */
ssize_t apx_client_recv(conn_rec *c, int fd, void *buf, apr_size_t len);

/* post_config: the header deadlines of every server, the scan's limits. */
void apx_head_post_config(apr_pool_t *p, server_rec *main_s);
void apx_head_register_filter(apr_pool_t *p);

#endif /* MOD_ASYNCPROXY_HEAD_H */
