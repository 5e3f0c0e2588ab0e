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
#include "apx_balance.h"
#include "upstream_tls.h"

/* One backend origin (http or https, host, port; or a Unix socket) with
 * one pair of pool settings (max, ttl), its TLS settings, and, per child,
 * its pool of idle keep-alive connections (upstream.c). Mappings to the
 * same origin with the same settings share one record and one pool;
 * mappings whose max=, ttl= or tls*= differ get a record each, so every
 * mapping gets the pool it asked for (README: AsyncProxyPass options).
 * Created at configuration time; the pool part is set up at child_init. */
struct apx_backend {
    const char *hostname;           /* the URL's host (after '|' for a
                                     * Unix socket: for Host only) */
    apr_port_t port;
    const char *hostport;           /* "host:port" as in the URL, or
                                     * "unix:PATH": for messages */
    apr_sockaddr_t *addr;           /* resolved at configuration time;
                                     * NULL for a Unix socket */
    const char *uds_path;           /* unix:PATH, else NULL */
    int tls;                        /* https:// */
    apx_tls_conf tls_conf;          /* its tlsca=, tlsname=, tlsverify= */
    apx_tls_origin *tls_origin;     /* its SSL_CTX and session slot */
    unsigned pool_max;              /* idle connections kept per child;
                                     * APX_POOL_AUTO: follows demand */
    apr_interval_time_t pool_ttl;   /* idle connection lifetime */
    unsigned id;                    /* index in apx_gconf.backends */
    void *pool;                     /* per child: upstream.c */
};

/* What a backend URL names (directives.c, upstream_conf.c parse it). */
typedef struct apx_origin_spec {
    const char *hostname;           /* host of the URL (of the part after
                                     * '|' for a Unix socket) */
    apr_port_t port;
    int tls;                        /* https:// */
    apx_tls_conf tls_conf;          /* tls*= options (https:// only) */
    const char *uds_path;           /* "unix:PATH|http://host/": PATH */
} apx_origin_spec;

/* upstream.c: origins and their per-child keep-alive pools.
 * apx_backend_declare() runs at configuration time: finds the record of
 * (spec, pool_max, pool_ttl) in apx_gconf.backends or creates it (host
 * resolved, TLS context made); returns an error message or NULL. */
const char *apx_backend_declare(apr_pool_t *pconf,
                                const apx_origin_spec *spec,
                                unsigned pool_max,
                                apr_interval_time_t pool_ttl,
                                apx_backend **pb);
/* Configuration time: parses "unix:PATH|http://host[:port]/path" into
 * spec and *rest (the http:// URL after '|'); returns an error message or
 * NULL. */
const char *apx_origin_parse_unix(apr_pool_t *p, const char *url,
                                  apx_origin_spec *spec, const char **rest);
/* "http://host:port", "https://host:port" or "unix:PATH|http://host":
 * the origin's name in URLs of messages and r->filename (pconf). */
const char *apx_backend_origin(apr_pool_t *p, const apx_backend *be);
/* child_init: creates every origin's pool and TLS session slot. */
void apx_backends_child_init(apr_pool_t *pchild);
/* A live idle keep-alive connection to be (its fd, checked with a
 * non-blocking MSG_PEEK: closed or with unexpected bytes -> closed and
 * skipped; a TLS one with bytes there has its records processed first:
 * apx_tls_idle_usable()), or -1 when the pool has none: the caller
 * connects (and says so with apx_backend_opened() once it has a socket).
 * *ssl is the connection's TLS object (NULL for plain ones). Entries older
 * than be->pool_ttl are closed on the way. A connection returned is in use
 * until apx_backend_release() or apx_backend_discard(). Any request
 * thread. */
int apx_backend_take(apx_backend *be, apr_time_t now, struct ssl_st **ssl);
/* A socket to be was created (before its connect): counted as opened and
 * in use until apx_backend_release() or apx_backend_discard() of it. Any
 * request thread. */
void apx_backend_opened(apx_backend *be);
/* Gives back an fd (and its TLS object, or NULL) whose exchange ended
 * cleanly (framing complete, nothing extra received, keep-alive allowed,
 * request sent whole); when the pool is at its capacity the oldest is
 * closed; closes fd instead when the child is stopping or the origin has
 * no pool (max=0). Ends the connection's use. Any request thread. */
void apx_backend_release(apx_backend *be, int fd, struct ssl_st *ssl,
                         apr_time_t now);
/* Closes a connection to be that is not given back (taken or opened
 * before): apx_backend_close(), and its use ends. be may be NULL. Any
 * request thread. */
void apx_backend_discard(apx_backend *be, int fd, struct ssl_st *ssl,
                         int notify);
/* Closes a backend connection that is not pooled: the TLS object freed
 * (notify: after a close_notify, for a connection that worked), then the
 * fd. Counts nothing (apx_backend_discard() does). */
void apx_backend_close(int fd, struct ssl_st *ssl, int notify);
/* One line (short_report: "AsyncProxyPool: origin=... idle= cap= ...")
 * or table row per origin with its pool's figures in this child, copied
 * under the pool's lock and printed after it. Request thread. */
void apx_backends_status(request_rec *r, int short_report);

/* ------------------------------------------------------------------ */
/* balancer groups (upstream_group.c)                                   */

/* Where a hash key comes from (hashkey=). */
enum { APX_HASHKEY_CLIENT = 0, APX_HASHKEY_COOKIE, APX_HASHKEY_HEADER };

/* One AsyncProxyMember: an origin with its own keep-alive pool. */
typedef struct apx_member {
    const char *url;                /* "http://host:port", its identity */
    const char *host_hdr;           /* Host sent to it ("host[:port]") */
    const char *route;              /* route=, NULL: none */
    unsigned weight;                /* weight= (loadfactor=), 1..100 */
    unsigned pool_max;              /* idle=: idle connections per child */
    apr_interval_time_t pool_ttl;   /* ttl= */
    unsigned cap;                   /* max=: requests in flight to it, all
                                     * children together; 0: no cap */
    unsigned gidx;                  /* its number in the shared memory
                                     * (upstream_shm.h), set at
                                     * post_config */
    int drain;                      /* status=drain: its own sticky route
                                     * only (mod_proxy's status=+N) */
    apx_backend *be;
} apx_member;

/* <AsyncProxyBalancer NAME>: built at configuration time in pconf and
 * read-only afterwards, except `rt`, the per-child group that
 * apx_balancers_child_init() sets up. */
struct apx_balancer {
    const char *name;
    const char *url;                /* "balancer://NAME" */
    const char *defined_at;         /* "file:line" of the section */
    apr_array_header_t *members;    /* apx_member */
    apx_bal_config cfg;             /* lbmethod=, failures=, ejecttime= ... */
    int hash_from;                  /* APX_HASHKEY_* */
    const char *hash_name;          /* the cookie or header of hashkey= */
    const char *sticky_cookie;      /* stickysession=COOKIE|PARAM, NULL: */
    const char *sticky_param;       /* no sticky routes */
    unsigned char fail_status[100]; /* failstatus=: 500 + i counts as a
                                     * failure */
    /* the parked queue of a capped member (upstream_queue.c) */
    unsigned queue_max;             /* queue=: waiting per member, all
                                     * children together */
    int queue_limited;              /* 0: queue= not set, no limit but
                                     * AsyncProxyMaxParked */
    apr_interval_time_t queue_timeout;  /* queuetimeout= */
    struct apx_check_conf *check;   /* AsyncProxyHealthCheck, NULL: none
                                     * (upstream_check.h) */
    void *rt;                       /* per child: upstream_group.c */
};

/* The balancer named `name` (without "balancer://"), or NULL.
 * Configuration time. */
apx_balancer *apx_balancer_find(const char *name);
/* child_init: one group per balancer, each with its lock. */
void apx_balancers_child_init(apr_pool_t *pchild, server_rec *s);

/* One pick of a member for request r by the group's method (request
 * thread, inside the coroutine or not; takes the group's lock for the
 * engine call only). Returns APR_SUCCESS with *idx the member (counted in
 * the child's group: every success is matched by one apx_group_unpick(),
 * or, once the member's slot is taken, one apx_group_done()), APR_EAGAIN
 * when no member is eligible, APR_ENOTIMPL when the child has no group
 * (its creation failed at child_init). It takes no slot of a capped
 * member: the request path calls apx_group_acquire()
 * (upstream_queue.h), which does. */
apr_status_t apx_group_pick(apx_balancer *b, request_rec *r, unsigned *idx);
/* Undoes a pick whose member was never used (no slot taken: the queue
 * refused it, or it left the queue): no verdict on the member. */
void apx_group_unpick(apx_balancer *b, unsigned idx);
/* The request on member idx ended: outcome APX_BAL_*, latency from the
 * start of the attempt to the response head (or the failure). Gives the
 * member's slot back (a capped member: to this child's oldest waiter
 * when it is the oldest of all children's, else to the shared count).
 * Logs what the report changed (an ejection, a member back up). */
void apx_group_done(apx_balancer *b, server_rec *s, unsigned idx,
                    int outcome, apr_interval_time_t latency);
/* The request failed on member `failed` (reported already) and may be
 * replayed: another member within the group's retry budget (APR_SUCCESS,
 * *idx counted in flight, its slot taken), APR_EBUSY (budget spent) or
 * APR_EAGAIN (none eligible, or the one chosen is at its max= or has a
 * queue: a retry does not wait and does not pass waiters). */
apr_status_t apx_group_retry(apx_balancer *b, request_rec *r,
                             unsigned failed, unsigned *idx);
/* 1 when the balancer counts a response status as a member failure. */
int apx_group_fail_status(const apx_balancer *b, int status);
/* The members of every balancer with their state, for the status page
 * (short_report: one "AsyncProxyMember: key=value ..." line each). The
 * figures are copied under each group's lock and printed after it. */
void apx_balancers_status(request_rec *r, int short_report);

#endif /* APX_HTTPD_UPSTREAM_H */
