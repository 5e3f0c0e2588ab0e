/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* upstream_check.h — active health checks of balancer members
 * (upstream_check.c): AsyncProxyHealthCheck METHOD PATH [interval=]
 * [timeout=] [passes=] [fails=] [expect=] [host=] in a balancer section.
 * A probe is a small state machine parked on the poller (connect, TLS,
 * request, status line), never a thread; one child probes each member per
 * interval (a lease in the shared segment, upstream_shm.h) and every
 * child follows the verdict written there (upstream_group.c).
 *
 * Threads: the configuration is parsed in the parent (upstream_conf.c);
 * apx_checks_child_init() on the child's main thread; apx_checks_start()
 * once the engine runs; the probes and their timer run on engine workers.
 */
#ifndef APX_HTTPD_UPSTREAM_CHECK_H
#define APX_HTTPD_UPSTREAM_CHECK_H

#include "upstream.h"

/* Why the last probe failed (apx_mshm_check.last_err). */
enum {
    APX_CHECK_ERR_NONE = 0,
    APX_CHECK_ERR_CONNECT,          /* refused, unreachable */
    APX_CHECK_ERR_TIMEOUT,          /* no status line within timeout= */
    APX_CHECK_ERR_STATUS,           /* a status outside expect= */
    APX_CHECK_ERR_RESPONSE,         /* not an HTTP/1.x status line */
    APX_CHECK_ERR_CLOSED,           /* closed or reset before a status */
    APX_CHECK_ERR_TLS,              /* handshake failed or refused */
    APX_CHECK_ERR_RESOURCE          /* no socket, no memory (this child) */
};

/* One AsyncProxyHealthCheck (pconf, read-only after configuration). */
typedef struct apx_check_conf {
    const char *method;             /* GET, HEAD, OPTIONS ... */
    const char *path;               /* "/healthz" */
    const char *host;               /* host=, NULL: the member's Host */
    apr_interval_time_t interval;   /* between two probes of a member */
    apr_interval_time_t timeout;    /* per probe, <= interval */
    unsigned passes;                /* passes in a row: back up */
    unsigned fails;                 /* failures in a row: down */
    unsigned expect_lo, expect_hi;  /* a status in [lo, hi] passes */
} apx_check_conf;

/* Defaults: interval 2 s (HAProxy's inter), timeout = min(2 s, interval),
 * passes 2 (rise), fails 3 (fall), expect 200-399. */
#define APX_CHECK_INTERVAL  apr_time_from_sec(2)
#define APX_CHECK_TIMEOUT   apr_time_from_sec(2)

/* "connect", "timeout", "status", ... ("-": none). */
const char *apx_check_error_name(unsigned err);

/* child_init: one probe record per member of a balancer with a check. */
void apx_checks_child_init(apr_pool_t *pchild, server_rec *s);
/* Starts this child's check timer on the engine (child.c, once the engine
 * runs; nothing without an engine: checks need the event MPM). */
void apx_checks_start(void);

#endif /* APX_HTTPD_UPSTREAM_CHECK_H */
