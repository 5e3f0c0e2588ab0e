/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* mod_asyncproxy.h — what the httpd-facing files of the module share: the
 * configuration records, the per-child state and the log tag.
 *
 * Threads: configuration is built in pconf and read-only once post_config
 * has run; the per-child state is written by child_init (before any engine
 * thread exists) and afterwards only through atomics or the engine.
 */
#ifndef MOD_ASYNCPROXY_H
#define MOD_ASYNCPROXY_H

#include "httpd.h"
#include "http_config.h"
#include "http_log.h"
#include "apr_atomic.h"

#include "mod_asyncproxy_compat.h"

#include "apx_coro.h"
#include "apx_poller.h"

/* Our own log tags (never httpd's AH numbers): one per call site, never
 * reused; the next free number is kept in README.md. */
#define APXLOGNO(n) "APX" #n ": "

#define APX_DEFAULT_WORKERS_MIN   2
#define APX_DEFAULT_WORKERS_MAX   8
/* 128 KiB of address space per coroutine; only touched pages are resident.
 * httpd's ap_log_* formats into 8 KiB stack buffers and mod_ssl's write path
 * is deep, which 64 KiB did not leave room for with margin. */
#define APX_DEFAULT_STACK_SIZE    (128 * 1024)
#define APX_MIN_STACK_SIZE        (32 * 1024)
#define APX_MAX_STACK_SIZE        (8 * 1024 * 1024)

/* Defaults of the proxy settings (each overridable globally and per
 * mapping where mod_proxy has the same option). */
/* 0: park at once. A delay lets a fast backend's answer be served on the
 * MPM thread without a hand-over, but holds that thread meanwhile; the
 * benchmarks showed no gain from 5 ms, and under a burst of new connections
 * it kept the MPM at its thread limit (AH00484). */
#define APX_DEFAULT_PARK_DELAY      0
#define APX_CONNECT_GRACE           500     /* us; see apx_wait_connect() */
#define APX_DEFAULT_CONNECT_TIMEOUT apr_time_from_sec(5)
/* A response without a length (SSE, a chunked long poll) may stay quiet for
 * long between events; its silence is not a backend failure. 5 minutes is
 * longer than the keep-alive comment interval of the usual SSE servers
 * (15-60 s) and still lets a dead backend go within a few minutes. */
#define APX_DEFAULT_STREAM_TIMEOUT  apr_time_from_sec(300)
/* An upgraded connection (WebSocket) with nothing moving either way: the
 * same reasoning, and WebSocket servers ping every 20-60 s. */
#define APX_DEFAULT_TUNNEL_TIMEOUT  apr_time_from_sec(300)
#define APX_DEFAULT_MAX_PARKED      10000
#define APX_DEFAULT_POOL_MAX        256
#define APX_DEFAULT_POOL_TTL        apr_time_from_sec(5)
#define APX_DEFAULT_RETRY_AFTER     1
/* Response cache (mod_asyncproxy_cache.c) */
#define APX_DEFAULT_CACHE_SIZE      (64 * 1024 * 1024)
#define APX_DEFAULT_CACHE_MAX_OBJ   (1024 * 1024)
#define APX_DEFAULT_CACHE_WAIT      apr_time_from_sec(10)
/* The lane (mod_asyncproxy_lane.c): threads default to ThreadsPerChild,
 * the queue to this many jobs per thread. */
#define APX_DEFAULT_LANE_QUEUE_PER_THREAD 4

/* Engine settings: one engine per child, so these are global (main server
 * only). */
typedef struct apx_global_conf {
    unsigned workers_min, workers_max;
    apr_size_t stack_size;
    unsigned max_parked;            /* in-flight parked requests per child */
    unsigned retry_after;           /* seconds, on 503 */
    apr_array_header_t *backends;   /* apx_backend *, every origin configured */
    apr_size_t cache_size;          /* response cache budget per child */
    apr_size_t cache_max_object;    /* largest body stored */
    apr_interval_time_t cache_wait; /* longest wait on another's fetch */
    int cache_used;                 /* some scope enables the cache */
    unsigned lane_threads;          /* 0: ThreadsPerChild */
    unsigned lane_queue;            /* 0: APX_DEFAULT_LANE_QUEUE_PER_THREAD
                                     * per lane thread */
    int h2_allowed;                 /* some server's Protocols has h2 or
                                     * h2c (post_config) */
    double mpm_factor;              /* AsyncRequestWorkerFactor (post_config) */
    unsigned mpm_threads;           /* ThreadsPerChild (post_config) */
} apx_global_conf;

/* The response cache settings of a scope (server, <Location>, mapping);
 * -1 / unset values are inherited. */
typedef struct apx_cache_set {
    int on;                         /* AsyncProxyCache, -1 unset */
    int gzip;                       /* AsyncProxyCacheGzip, -1 unset */
    apr_interval_time_t ttl;        /* AsyncProxyCacheTTL, -1 unset, 0 off */
} apx_cache_set;

/* One backend origin (scheme http, host, port) with one pair of pool
 * settings (max, ttl) and, per child, its pool of idle keep-alive
 * connections (mod_asyncproxy_backend.c). Mappings to the same origin with
 * the same settings share one record and one pool; mappings whose max= or
 * ttl= differ get a record each, so every mapping gets the pool it asked
 * for (README: AsyncProxyPass options). Created at configuration time; the
 * pool part is set up at child_init. */
typedef struct apx_backend apx_backend;
struct apx_backend {
    const char *hostname;
    apr_port_t port;
    const char *hostport;           /* "host:port" as in the URL */
    apr_sockaddr_t *addr;           /* resolved at configuration time */
    unsigned pool_max;              /* idle connections kept per child */
    apr_interval_time_t pool_ttl;   /* idle connection lifetime */
    unsigned id;                    /* index in apx_gconf.backends */
    void *pool;                     /* per child: mod_asyncproxy_backend.c */
};

/* AsyncProxyPass PATH URL [key=value ...] | AsyncProxyPass PATH ! */
typedef struct apx_mapping {
    const char *path;               /* URL-path prefix matched */
    apr_size_t path_len;
    int excluded;                   /* "!": never proxied */
    const char *url;                /* as configured, for messages */
    const char *base;               /* path prefix on the backend ("/v1/") */
    const char *host_hdr;           /* Host sent when not preserving */
    apx_backend *backend;           /* origin + this mapping's pool */
    unsigned pool_max;              /* max= (default APX_DEFAULT_POOL_MAX) */
    apr_interval_time_t pool_ttl;   /* ttl= (default APX_DEFAULT_POOL_TTL) */
    /* 0: inherit the server's value */
    apr_interval_time_t timeout;          /* whole response head wait, and
                                           * each later read or write */
    apr_interval_time_t connect_timeout;
    apr_interval_time_t stream_timeout;   /* streamtimeout=: each read of a
                                           * body without a length */
    apr_interval_time_t tunnel_timeout;   /* tunneltimeout=: an upgraded
                                           * connection with nothing moving */
    const char *upgrade;                  /* upgrade=: protocols a client may
                                           * switch to ("a,b" or "*"), NULL:
                                           * none */
    apr_interval_time_t park_delay;       /* -1: inherit */
    int cache;                            /* cache=on|off, -1: inherit */
} apx_mapping;

/* AsyncProxyPassReverse PATH URL: Location / Content-Location / URI
 * headers starting with URL are rewritten to start with PATH. */
typedef struct apx_reverse {
    const char *path;
    const char *url;
    apr_size_t url_len;
} apx_reverse;

/* Per server (virtual host); -1 / 0 mean unset and are merged. */
typedef struct apx_srv_conf {
    apr_array_header_t *maps;       /* apx_mapping *, longest prefix wins */
    apr_array_header_t *reverses;   /* apx_reverse */
    int preserve_host;              /* -1 unset */
    int add_forwarded;              /* X-Forwarded-*; -1 unset */
    /* AsyncProxyTrustedProxies: apr_ipsubnet_t *, NULL unset. Only a peer
     * in it has its X-Forwarded-* extended or passed on. */
    apr_array_header_t *trusted;
    apr_interval_time_t timeout;    /* 0 unset: the server's Timeout */
    apr_interval_time_t connect_timeout;
    apr_interval_time_t stream_timeout; /* 0 unset */
    apr_interval_time_t tunnel_timeout; /* 0 unset */
    apr_interval_time_t park_delay; /* -1 unset */
    apx_cache_set cache;
    int adopt_heads;                /* AsyncProxyAdoptSlowHeads, -1 unset */
    /* Waiting for a request head on a connection the module owns
     * (mod_asyncproxy_head.c, set at post_config from mod_reqtimeout's
     * header stage): timeout, maximum, minimum rate in bytes/s (0: none). */
    apr_interval_time_t head_timeout, head_max;
    apr_size_t head_rate;
} apx_srv_conf;

/* Per directory (<Location>): AsyncProxyPass URL with the location as
 * the path. */
typedef struct apx_dir_conf {
    apx_mapping *map;
    apr_array_header_t *reverses;
    apx_cache_set cache;
} apx_dir_conf;

/* Figures of this child, for the status page and mod_status. */
typedef struct apx_counters {
    volatile apr_uint32_t adopted_now;     /* connections the module owns */
    volatile apr_uint32_t adopted_total;
    volatile apr_uint32_t gate_waits;      /* hand-overs that had to wait */
    volatile apr_uint32_t gate_max_us;     /* longest such wait */
    volatile apr_uint32_t gate_bound_hits; /* waits that hit the bound */
    volatile apr_uint32_t requests_total;  /* proxied requests started */
    volatile apr_uint32_t in_flight;       /* proxied requests not finished */
    volatile apr_uint32_t parked_reqs;     /* of those, parked at least once
                                            * (counted against MaxParked) */
    volatile apr_uint32_t parked_total;
    volatile apr_uint32_t sync_total;      /* ran on the sync driver */
    volatile apr_uint32_t done_total;
    volatile apr_uint32_t bad_gateway;     /* 502 answered */
    volatile apr_uint32_t gateway_timeout; /* 504 answered */
    volatile apr_uint32_t unavailable;     /* 503 answered */
    volatile apr_uint32_t client_errors;   /* 400/408/413 to the client */
    volatile apr_uint32_t aborted;         /* connection aborted mid-way */
    volatile apr_uint32_t client_gone;     /* client left while waiting */
    volatile apr_uint32_t backend_reused;  /* pooled connection taken */
    volatile apr_uint32_t backend_retries; /* idempotent retry on a fresh one */
    volatile apr_uint32_t keepalive_closed;/* idle adopted closed (timeout/stop) */
    volatile apr_uint32_t head_waits;      /* partial request head re-parked */
    volatile apr_uint32_t head_timeouts;   /* 408: head not whole in time */
    volatile apr_uint32_t head_refused;    /* head over every limit: closed */
    volatile apr_uint32_t heads_adopted;   /* connections taken from an MPM
                                            * thread to await their head */
    volatile apr_uint32_t idle_now;        /* adopted, parked between requests
                                            * or awaiting a head */
    volatile apr_uint32_t shed_total;      /* of those, closed under pressure */
    volatile apr_uint32_t gate_requeues;   /* gate found closed: re-parked */
    volatile apr_uint32_t handed_over;     /* finished on an MPM thread, the
                                            * connection adopted anyway */
    volatile apr_uint32_t delay_skipped;   /* parked at once: too many MPM
                                            * threads in the park delay */
    volatile apr_uint32_t cache_hits;      /* served from the cache */
    volatile apr_uint32_t cache_misses;    /* fetched to be stored */
    volatile apr_uint32_t cache_stale;     /* served stale */
    volatile apr_uint32_t cache_bypass;    /* not cacheable */
    volatile apr_uint32_t cache_coalesced; /* waited for another's fetch */
    volatile apr_uint32_t cache_not_modified; /* 304 from the cache */
    volatile apr_uint32_t streams_now;     /* bodies without a length being
                                            * relayed event by event */
    volatile apr_uint32_t streams_total;
    volatile apr_uint64_t stream_bytes;    /* their body bytes to clients */
    volatile apr_uint32_t tunnels_now;     /* upgraded connections open */
    volatile apr_uint32_t tunnels_total;
    volatile apr_uint64_t tunnel_bytes_in; /* client to backend */
    volatile apr_uint64_t tunnel_bytes_out;/* backend to client */
} apx_counters;

/* Per-child state. */
typedef struct apx_child {
    apr_pool_t *pchild;
    server_rec *s;
    int mpm_async;              /* AP_MPMQ_IS_ASYNC at child_init */
    apx_engine *engine;         /* NULL: synchronous driver only */
    apx_stack_pool *stacks;
    volatile apr_uint32_t stopping;
    volatile apr_uint32_t delaying; /* MPM threads waiting out a park delay */
    apr_uint32_t delaying_max;      /* ... at most this many (read-only) */
    apx_counters n;
} apx_child;

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
    int wait_two;               /* apx_wait2(): fd1 is watched as asked */
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
    void *proxy;                /* mod_asyncproxy_proxy.c's state */
} apx_req;

extern apx_global_conf apx_gconf;
extern apx_child *apx_ch;

/* mod_asyncproxy_conf.c: directive value parsers, shared by the config
 * code and the tests of it. Each returns NULL or an error message naming
 * the directive and the value. */
const char *apx_parse_size(cmd_parms *cmd, const char *arg, apr_size_t min,
                           apr_size_t max, apr_size_t *out);
const char *apx_parse_duration(cmd_parms *cmd, const char *arg,
                               apr_interval_time_t min,
                               apr_interval_time_t max,
                               apr_interval_time_t *out);
const char *apx_parse_uint(cmd_parms *cmd, const char *arg, unsigned min,
                           unsigned max, unsigned *out);

/* mod_asyncproxy_conn.c: the two drivers and the adopted connection.
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
void apx_conn_register_hooks(apr_pool_t *p);
/* child_init, once the engine runs: the scoreboard slot, the fd limit and
 * the MPM's connection limit for shedding idle connections, and the timer
 * that checks them. */
void apx_conn_engine_started(server_rec *s, double factor, unsigned threads);
/* Shuts down the sockets of every adopted connection (child exit). */
void apx_conn_shutdown_all(void);

/* mod_asyncproxy_proxy.c: the request path, run as a coroutine. */
intptr_t apx_proxy_run(apx_coro *coro, void *rq);
/* The mapping that proxies r, or NULL (not ours, or excluded with "!"). */
/* mod_asyncproxy_map.c */
const apx_mapping *apx_proxy_match(request_rec *r);
void apx_proxy_register_hooks(apr_pool_t *p);
/* mod_asyncproxy_proxy.c: the connection filter that streams use. */
void apx_stream_register_filter(apr_pool_t *p);
/* 1 when the request body is not read to its end (mod_asyncproxy_proxy.c):
 * the connection must then close rather than have httpd read the rest. */
struct apx_req;
int apx_proxy_body_left(const struct apx_req *rq);
/* The backend request target for r under mapping m (in r->pool). */
const char *apx_proxy_target(request_rec *r, const apx_mapping *m);

/* mod_asyncproxy_backend.c: origins and their per-child keep-alive pools.
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

/* mod_asyncproxy_conn.c: waits, parked, until another thread wakes the
 * request's record (the response cache's miss coalescing). enlist() runs
 * on the calling thread with the record armed: it returns 1 when it
 * enlisted the record where a waker will find it, 0 when there is nothing
 * to wait for any more (then no wait happens). The caller must delist the
 * record under the waker's lock after the wait, whatever ended it.
 * Returns APX_EV_WAKE, APX_EV_TIMEOUT, APX_EV_SHUTDOWN and/or
 * APX_EV_CLIENT_GONE; 0 when the request cannot park (sync driver). */
unsigned apx_wait_wake(apx_req *rq, int (*enlist)(void *baton, apx_park *p),
                       void *baton, apr_time_t deadline);

/* mod_asyncproxy_cache.c: the response cache. Directives (pconf), the
 * per-child store (child_init) and the figures; the request path is in
 * apx_hc_run(), called from the proxy coroutine. */
const char *apx_hc_cmd_flag(cmd_parms *cmd, void *dconf, int on);
const char *apx_hc_cmd_take1(cmd_parms *cmd, void *dconf, const char *arg);
void apx_hc_set_init(apx_cache_set *cs);
void apx_hc_set_merge(apx_cache_set *to, const apx_cache_set *base,
                      const apx_cache_set *add);
void apx_hc_child_init(apr_pool_t *pchild, server_rec *s);
/* For the status page: entries, bytes, evictions of this child's cache. */
void apx_hc_figures(apr_uint64_t *entries, apr_uint64_t *bytes,
                    apr_uint64_t *evictions);

/* mod_asyncproxy_status.c */
void apx_status_register(apr_pool_t *p);

#endif /* MOD_ASYNCPROXY_H */
