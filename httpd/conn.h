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

void apx_conn_register_hooks(apr_pool_t *p);
/* child_init, once the engine runs: the scoreboard slot, the fd limit and
 * the MPM's connection limit for shedding idle connections, and the timer
 * that checks them. */
void apx_conn_engine_started(server_rec *s, double factor, unsigned threads);
/* Shuts down the sockets of every adopted connection (child exit). */
void apx_conn_shutdown_all(void);

#endif /* APX_HTTPD_CONN_H */
