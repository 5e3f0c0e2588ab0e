/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* upstream.h — backend origins and their per-child keep-alive pools
 * (upstream.c).
 *
 * Threads: apx_backend_declare() at configuration time; child_init once;
 * take/release from any request thread.
 */
#ifndef APX_HTTPD_UPSTREAM_H
#define APX_HTTPD_UPSTREAM_H

#include "conf.h"

/* One backend origin (scheme http, host, port) with one pair of pool
 * settings (max, ttl) and, per child, its pool of idle keep-alive
 * connections (upstream.c). Mappings to the same origin with
 * the same settings share one record and one pool; mappings whose max= or
 * ttl= differ get a record each, so every mapping gets the pool it asked
 * for (README: AsyncProxyPass options). Created at configuration time; the
 * pool part is set up at child_init. */
struct apx_backend {
    const char *hostname;
    apr_port_t port;
    const char *hostport;           /* "host:port" as in the URL */
    apr_sockaddr_t *addr;           /* resolved at configuration time */
    unsigned pool_max;              /* idle connections kept per child */
    apr_interval_time_t pool_ttl;   /* idle connection lifetime */
    unsigned id;                    /* index in apx_gconf.backends */
    void *pool;                     /* per child: upstream.c */
};

/* upstream.c: origins and their per-child keep-alive pools.
 * apx_backend_declare() runs at configuration time: finds the record of
 * (hostname, port, pool_max, pool_ttl) in apx_gconf.backends or creates
 * it; returns an error message or NULL. */
const char *apx_backend_declare(apr_pool_t *pconf, const char *hostname,
                                apr_port_t port, unsigned pool_max,
                                apr_interval_time_t pool_ttl,
                                apx_backend **pb);
/* child_init: creates every origin's pool. */
void apx_backends_child_init(apr_pool_t *pchild);
/* A live idle keep-alive connection to be (its fd, checked with a
 * non-blocking MSG_PEEK: closed or with unexpected bytes -> closed and
 * skipped), or -1 when the pool has none: the caller connects. Entries
 * older than be->pool_ttl are closed on the way. Any request thread. */
int apx_backend_take(apx_backend *be, apr_time_t now);
/* Gives back an fd whose exchange ended cleanly (framing complete, nothing
 * extra received, keep-alive allowed, request sent whole); when the pool
 * holds pool_max the oldest is closed; closes fd instead when the child is
 * stopping or the origin has no pool. Any request thread. */
void apx_backend_release(apx_backend *be, int fd, apr_time_t now);


#endif /* APX_HTTPD_UPSTREAM_H */
