/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* conf.h — the configuration records (conf.c parses the directives into
 * them, mod_asyncproxy.c holds the table) and the defaults.
 *
 * Threads: built in pconf, read-only once post_config has run.
 */
#ifndef APX_HTTPD_CONF_H
#define APX_HTTPD_CONF_H

#include "common.h"

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
/* The backend keep-alive pool (upstream.c): without max= (idle= on a
 * member) its capacity follows the recent number of the origin's
 * connections in use in the child, within a floor and a ceiling from the
 * fd limit. A fixed 256 closed most connections of a burst larger than
 * that as they came back, to open them again on the next one (issue 15:
 * 47.5k backend connects in a 20 s run of 10,000 clients where 10k
 * sufficed). APX_POOL_AUTO is above any max= the parser accepts. */
#define APX_POOL_AUTO               0xffffffffu
#define APX_DEFAULT_POOL_MAX        APX_POOL_AUTO
#define APX_DEFAULT_POOL_TTL        apr_time_from_sec(5)
#define APX_DEFAULT_RETRY_AFTER     1
/* A request waiting for a slot of a capped balancer member (max=): HAProxy
 * waits `timeout queue` (else `timeout connect`); 10 s is the issue's
 * example and well under the usual client timeouts. */
#define APX_DEFAULT_QUEUE_TIMEOUT   apr_time_from_sec(10)
/* Response cache (cache.c) */
#define APX_DEFAULT_CACHE_SIZE      (64 * 1024 * 1024)
#define APX_DEFAULT_CACHE_MAX_OBJ   (1024 * 1024)
#define APX_DEFAULT_CACHE_WAIT      apr_time_from_sec(10)
/* A stale response served when the backend fails: mod_cache does it by
 * default (CacheStaleOnError On, unbounded); bounded here, as long as the
 * revalidation keep (KEEP_STALE). */
#define APX_DEFAULT_CACHE_STALE_ON_ERROR apr_time_from_sec(600)
/* The lane (lane.c): threads default to ThreadsPerChild,
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
    apr_array_header_t *balancers;  /* apx_balancer *, <AsyncProxyBalancer> */
    apr_array_header_t *group_maps; /* apx_mapping * naming balancer://:
                                     * resolved by check_config */
    apr_array_header_t *group_reverses; /* apx_reverse naming balancer://:
                                     * checked by check_config */
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
    apr_interval_time_t stale_on_error; /* AsyncProxyCacheStaleOnError, -1
                                     * unset, 0 off */
} apx_cache_set;

typedef struct apx_backend apx_backend;   /* upstream.h */
typedef struct apx_balancer apx_balancer; /* upstream.h */

/* AsyncProxyPass PATH URL [key=value ...] | AsyncProxyPass PATH ! */
typedef struct apx_mapping {
    const char *path;               /* URL-path prefix matched */
    apr_size_t path_len;
    int excluded;                   /* "!": never proxied */
    const char *url;                /* as configured, for messages */
    const char *base;               /* path prefix on the backend ("/v1/") */
    const char *host_hdr;           /* Host sent when not preserving */
    apx_backend *backend;           /* origin + this mapping's pool; NULL
                                     * for a balancer */
    apx_balancer *balancer;         /* balancer://NAME/..., else NULL */
    const char *balancer_name;      /* NAME, until check_config finds it */
    const char *origin;             /* "http://host:port" or
                                     * "balancer://NAME" (r->filename) */
    const char *defined_at;         /* "file:line", for messages */
    unsigned pool_max;              /* max= (default APX_DEFAULT_POOL_MAX:
                                     * APX_POOL_AUTO) */
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
 * headers starting with URL are rewritten to start with PATH. URL may be
 * balancer://NAME/BASE: each member's origin followed by BASE. */
typedef struct apx_reverse {
    const char *path;
    const char *url;                /* balancer://: BASE ("/" at least) */
    apr_size_t url_len;
    const char *group;              /* balancer://NAME: NAME, else NULL */
    const char *defined_at;         /* "file:line", for check_config */
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
     * (head.c, set at post_config from mod_reqtimeout's
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

extern apx_global_conf apx_gconf;

/* conf.c: directive value parsers, shared by the config
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


/* directives.c: the directive handlers (the table is in mod_asyncproxy.c). */
const char *apx_cmd_workers(cmd_parms *cmd, void *dummy, const char *min,
                            const char *max);
const char *apx_cmd_stack_size(cmd_parms *cmd, void *dummy, const char *arg);
const char *apx_cmd_max_parked(cmd_parms *cmd, void *dummy, const char *arg);
const char *apx_cmd_retry_after(cmd_parms *cmd, void *dummy,
                                const char *arg);
const char *apx_cmd_lane(cmd_parms *cmd, void *dummy, const char *arg);
const char *apx_cmd_pass(cmd_parms *cmd, void *dconf, const char *args);
const char *apx_cmd_pass_reverse(cmd_parms *cmd, void *dconf,
                                 const char *path, const char *url);
const char *apx_cmd_srv_flag(cmd_parms *cmd, void *dummy, int on);
const char *apx_cmd_trusted(cmd_parms *cmd, void *dummy, const char *arg);
const char *apx_cmd_srv_time(cmd_parms *cmd, void *dummy, const char *arg);
/* upstream_conf.c: <AsyncProxyBalancer NAME> ... </AsyncProxyBalancer>
 * and what goes in it: AsyncProxyMember URL [key=value ...],
 * AsyncProxyBalancerSet key=value ..., AsyncProxyHealthCheck METHOD PATH
 * [key=value ...] */
const char *apx_cmd_balancer(cmd_parms *cmd, void *dummy, const char *arg);
const char *apx_cmd_member(cmd_parms *cmd, void *dummy, const char *args);
const char *apx_cmd_balancer_set(cmd_parms *cmd, void *dummy,
                                 const char *args);
const char *apx_cmd_health_check(cmd_parms *cmd, void *dummy,
                                 const char *args);

/* conf.c: the records (module record callbacks) and the configuration
 * hooks. */
void *apx_conf_create_srv(apr_pool_t *p, server_rec *s);
void *apx_conf_merge_srv(apr_pool_t *p, void *basev, void *addv);
void *apx_conf_create_dir(apr_pool_t *p, char *dir);
void *apx_conf_merge_dir(apr_pool_t *p, void *basev, void *addv);
int apx_conf_pre_config(apr_pool_t *pconf, apr_pool_t *plog,
                        apr_pool_t *ptemp);
/* check_config: every balancer://NAME of an AsyncProxyPass names a
 * defined <AsyncProxyBalancer NAME> (it may come later in the file). */
int apx_conf_check_config(apr_pool_t *pconf, apr_pool_t *plog,
                          apr_pool_t *ptemp, server_rec *s);
int apx_conf_post_config(apr_pool_t *pconf, apr_pool_t *plog,
                         apr_pool_t *ptemp, server_rec *s);

#endif /* APX_HTTPD_CONF_H */
