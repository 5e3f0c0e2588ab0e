/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* conf.c — the configuration records' life: the parsers of directive
 * values (every error names the directive and the offending value, so
 * `apachectl configtest` points the administrator at the line to fix), the
 * per-server and per-directory records and their merging, and the checks
 * at post_config. The directives themselves are in directives.c.
 *
 * Threads: configuration time only (pconf, single thread, in the parent);
 * read-only afterwards.
 */
#include <errno.h>
#include <stdlib.h>
#include "httpd.h"
#include "http_config.h"
#include "http_core.h"
#include "http_protocol.h"
#include "ap_mpm.h"
#include "util_cfgtree.h"
#include "apr_strings.h"
#include "apr_lib.h"

#include "conf.h"
#include "cache.h"
#include "head.h"
#include "upstream.h"
#include "upstream_shm.h"

APLOG_USE_MODULE(asyncproxy);
extern module AP_MODULE_DECLARE_DATA asyncproxy_module;

apx_global_conf apx_gconf;

static const char *bad_value(cmd_parms *cmd, const char *arg, const char *why)
{
    return apr_psprintf(cmd->pool, "%s: invalid value '%s': %s",
                        cmd->cmd->name, arg, why);
}

const char *apx_parse_uint(cmd_parms *cmd, const char *arg, unsigned min,
                           unsigned max, unsigned *out)
{
    char *end;
    unsigned long v;

    errno = 0;
    if (!apr_isdigit(*arg))
        return bad_value(cmd, arg, "not a whole number");
    v = strtoul(arg, &end, 10);
    if (errno || *end)
        return bad_value(cmd, arg, "not a whole number");
    if (v < min || v > max)
        return apr_psprintf(cmd->pool, "%s: invalid value '%s': must be "
                            "between %u and %u", cmd->cmd->name, arg, min, max);
    *out = (unsigned)v;
    return NULL;
}

/* "65536", "64K", "64k", "8M": bytes. */
const char *apx_parse_size(cmd_parms *cmd, const char *arg, apr_size_t min,
                           apr_size_t max, apr_size_t *out)
{
    char *end;
    unsigned long long v;
    unsigned long long mult = 1;

    errno = 0;
    if (!apr_isdigit(*arg))
        return bad_value(cmd, arg, "not a size (e.g. 65536, 64K, 8M)");
    v = strtoull(arg, &end, 10);
    if (errno)
        return bad_value(cmd, arg, "too large");
    switch (*end) {
    case 'k': case 'K': mult = 1024; end++; break;
    case 'm': case 'M': mult = 1024 * 1024; end++; break;
    case 'g': case 'G': mult = 1024ULL * 1024 * 1024; end++; break;
    default: break;
    }
    if (*end)
        return bad_value(cmd, arg, "not a size (e.g. 65536, 64K, 8M)");
    if (v > (unsigned long long)max / mult + 1)
        v = (unsigned long long)max + 1;
    else
        v *= mult;
    if (v < min || v > max)
        return apr_psprintf(cmd->pool, "%s: invalid value '%s': must be "
                            "between %" APR_SIZE_T_FMT " and %" APR_SIZE_T_FMT
                            " bytes", cmd->cmd->name, arg, min, max);
    *out = (apr_size_t)v;
    return NULL;
}

/* "30" or "30s" seconds, "500ms" milliseconds, "2m" minutes. */
const char *apx_parse_duration(cmd_parms *cmd, const char *arg,
                               apr_interval_time_t min,
                               apr_interval_time_t max,
                               apr_interval_time_t *out)
{
    char *end;
    unsigned long long v;
    apr_interval_time_t t;

    errno = 0;
    if (!apr_isdigit(*arg))
        return bad_value(cmd, arg, "not a duration (e.g. 30, 30s, 500ms)");
    v = strtoull(arg, &end, 10);
    if (errno || v > 1000000000ULL)
        return bad_value(cmd, arg, "too large");
    if (!*end || !strcasecmp(end, "s"))
        t = apr_time_from_sec(v);
    else if (!strcasecmp(end, "ms"))
        t = (apr_interval_time_t)v * 1000;
    else if (!strcasecmp(end, "m") || !strcasecmp(end, "min"))
        t = apr_time_from_sec(v * 60);
    else
        return bad_value(cmd, arg, "not a duration (e.g. 30, 30s, 500ms)");
    if (t < min || t > max)
        return apr_psprintf(cmd->pool, "%s: invalid value '%s': must be "
                            "between %" APR_TIME_T_FMT "ms and %"
                            APR_TIME_T_FMT "ms", cmd->cmd->name, arg,
                            min / 1000, max / 1000);
    *out = t;
    return NULL;
}

/* ------------------------------------------------------------------ */
/* the records                                                          */

void *apx_conf_create_srv(apr_pool_t *p, server_rec *s)
{
    apx_srv_conf *sc = apr_pcalloc(p, sizeof(*sc));

    sc->maps = apr_array_make(p, 4, sizeof(apx_mapping *));
    sc->reverses = apr_array_make(p, 4, sizeof(apx_reverse));
    sc->preserve_host = -1;
    sc->add_forwarded = -1;
    sc->park_delay = -1;
    sc->adopt_heads = -1;
    apx_hc_set_init(&sc->cache);
    return sc;
}

void *apx_conf_merge_srv(apr_pool_t *p, void *basev, void *addv)
{
    apx_srv_conf *base = basev, *add = addv;
    apx_srv_conf *sc = apr_pcalloc(p, sizeof(*sc));

    /* The virtual host's own mappings and the main server's; the longest
     * matching prefix wins, so order does not matter. */
    sc->maps = apr_array_append(p, add->maps, base->maps);
    sc->reverses = apr_array_append(p, add->reverses, base->reverses);
    sc->preserve_host = add->preserve_host != -1 ? add->preserve_host
                                                 : base->preserve_host;
    sc->add_forwarded = add->add_forwarded != -1 ? add->add_forwarded
                                                 : base->add_forwarded;
    /* a virtual host's list replaces the main server's */
    sc->trusted = add->trusted ? add->trusted : base->trusted;
    sc->timeout = add->timeout ? add->timeout : base->timeout;
    sc->connect_timeout = add->connect_timeout ? add->connect_timeout
                                               : base->connect_timeout;
    sc->stream_timeout = add->stream_timeout ? add->stream_timeout
                                             : base->stream_timeout;
    sc->tunnel_timeout = add->tunnel_timeout ? add->tunnel_timeout
                                             : base->tunnel_timeout;
    sc->park_delay = add->park_delay != -1 ? add->park_delay
                                           : base->park_delay;
    sc->adopt_heads = add->adopt_heads != -1 ? add->adopt_heads
                                             : base->adopt_heads;
    apx_hc_set_merge(&sc->cache, &base->cache, &add->cache);
    return sc;
}

void *apx_conf_create_dir(apr_pool_t *p, char *dir)
{
    apx_dir_conf *dc = apr_pcalloc(p, sizeof(*dc));

    dc->reverses = apr_array_make(p, 2, sizeof(apx_reverse));
    apx_hc_set_init(&dc->cache);
    return dc;
}

void *apx_conf_merge_dir(apr_pool_t *p, void *basev, void *addv)
{
    apx_dir_conf *base = basev, *add = addv;
    apx_dir_conf *dc = apr_pcalloc(p, sizeof(*dc));

    dc->map = add->map ? add->map : base->map;
    dc->reverses = apr_array_append(p, add->reverses, base->reverses);
    apx_hc_set_merge(&dc->cache, &base->cache, &add->cache);
    return dc;
}

/* "http://host[:port][/path]" -> backend host and port (declared by the
 * caller once the options are read) + base path. */

/* ------------------------------------------------------------------ */
/* pre_config, post_config                                              */

/* Globals outlive a restart's re-read of the configuration: start every
 * read from the defaults. */
int apx_conf_pre_config(apr_pool_t *pconf, apr_pool_t *plog,
                                 apr_pool_t *ptemp)
{
    apx_gconf.workers_min = APX_DEFAULT_WORKERS_MIN;
    apx_gconf.workers_max = APX_DEFAULT_WORKERS_MAX;
    apx_gconf.stack_size = APX_DEFAULT_STACK_SIZE;
    apx_gconf.max_parked = APX_DEFAULT_MAX_PARKED;
    apx_gconf.retry_after = APX_DEFAULT_RETRY_AFTER;
    apx_gconf.backends = apr_array_make(pconf, 8, sizeof(apx_backend *));
    apx_gconf.balancers = apr_array_make(pconf, 2, sizeof(apx_balancer *));
    apx_gconf.group_maps = apr_array_make(pconf, 2, sizeof(apx_mapping *));
    apx_gconf.group_reverses = apr_array_make(pconf, 2, sizeof(apx_reverse));
    apx_gconf.cache_size = APX_DEFAULT_CACHE_SIZE;
    apx_gconf.cache_max_object = APX_DEFAULT_CACHE_MAX_OBJ;
    apx_gconf.cache_wait = APX_DEFAULT_CACHE_WAIT;
    apx_gconf.cache_used = 0;
    apx_gconf.lane_threads = 0;
    apx_gconf.lane_queue = 0;
    apx_gconf.mpm_factor = 2.0;
    apx_gconf.mpm_threads = 25;
    return OK;
}

/* A balancer may be defined after the AsyncProxyPass that names it (as
 * mod_proxy allows), so the names are resolved once the whole
 * configuration is read; check_config runs for configtest too. */
int apx_conf_check_config(apr_pool_t *pconf, apr_pool_t *plog,
                          apr_pool_t *ptemp, server_rec *s)
{
    int i, rc = OK;

    for (i = 0; i < apx_gconf.group_maps->nelts; i++) {
        apx_mapping *m = APR_ARRAY_IDX(apx_gconf.group_maps, i,
                                       apx_mapping *);

        m->balancer = apx_balancer_find(m->balancer_name);
        if (!m->balancer) {
            ap_log_error(APLOG_MARK, APLOG_STARTUP | APLOG_ERR, 0, s,
                         APXLOGNO(00023) "AsyncProxyPass %s %s (%s): unknown "
                         "balancer '%s': no <AsyncProxyBalancer %s> is "
                         "defined", m->path, m->url, m->defined_at,
                         m->balancer_name, m->balancer_name);
            rc = HTTP_INTERNAL_SERVER_ERROR;
        }
        else if (m->upgrade) {
            int j;

            /* FIXME: tunnel.c moves bytes with recv()/send() on the
             * backend socket; over TLS it needs backend.c's steps */
            for (j = 0; j < m->balancer->members->nelts; j++)
                if (APR_ARRAY_IDX(m->balancer->members, j,
                                  apx_member).be->tls) {
                    ap_log_error(APLOG_MARK, APLOG_STARTUP | APLOG_ERR, 0, s,
                                 APXLOGNO(00029) "AsyncProxyPass %s %s "
                                 "(%s): upgrade= is not supported to an "
                                 "https:// member yet (balancer %s)",
                                 m->path, m->url, m->defined_at,
                                 m->balancer_name);
                    rc = HTTP_INTERNAL_SERVER_ERROR;
                    break;
                }
        }
    }
    for (i = 0; i < apx_gconf.group_reverses->nelts; i++) {
        const apx_reverse *rv = &APR_ARRAY_IDX(apx_gconf.group_reverses, i,
                                               apx_reverse);

        if (!apx_balancer_find(rv->group)) {
            ap_log_error(APLOG_MARK, APLOG_STARTUP | APLOG_ERR, 0, s,
                         APXLOGNO(00030) "AsyncProxyPassReverse %s "
                         "balancer://%s%s (%s): unknown balancer '%s': no "
                         "<AsyncProxyBalancer %s> is defined", rv->path,
                         rv->group, rv->url, rv->defined_at, rv->group,
                         rv->group);
            rc = HTTP_INTERNAL_SERVER_ERROR;
        }
    }
    return rc;
}

/* The event MPM stops accepting when a child's connections exceed
 * ThreadsPerChild + idle workers x AsyncRequestWorkerFactor, and parked and
 * adopted connections count (DESIGN.md §3). Warn with the value to set. */
static const char *conftree_value(const char *name)
{
    ap_directive_t *d;
    const char *val = NULL;

    for (d = ap_conftree; d; d = d->next)
        if (!strcasecmp(d->directive, name))
            val = d->args;
    return val;
}

int apx_conf_post_config(apr_pool_t *pconf, apr_pool_t *plog,
                                  apr_pool_t *ptemp, server_rec *s)
{
    int async = 0;
    const char *v;
    double factor = 2.0;
    long threads = 25;
    double cap;

    if (ap_state_query(AP_SQ_MAIN_STATE) == AP_SQ_MS_CREATE_PRE_CONFIG)
        return OK;
    if (apx_mshm_post_config(pconf, s) != OK)
        return HTTP_INTERNAL_SERVER_ERROR;
    apx_head_post_config(pconf, s);
    {
        server_rec *vs;

        apx_gconf.h2_allowed = 0;
        for (vs = s; vs; vs = vs->next)
            if (ap_is_allowed_protocol(NULL, NULL, vs, "h2")
                || ap_is_allowed_protocol(NULL, NULL, vs, "h2c"))
                apx_gconf.h2_allowed = 1;
    }
    if (ap_mpm_query(AP_MPMQ_IS_ASYNC, &async) != APR_SUCCESS || !async)
        return OK;
    if ((v = conftree_value("AsyncRequestWorkerFactor")))
        factor = atof(v);
    if ((v = conftree_value("ThreadsPerChild")))
        threads = atol(v);
    if (threads <= 0)
        threads = 25;
    apx_gconf.mpm_factor = factor;
    apx_gconf.mpm_threads = (unsigned)threads;
    cap = (double)threads * (1.0 + factor);
    if (cap < (double)apx_gconf.max_parked) {
        long need = (long)((apx_gconf.max_parked + threads - 1) / threads);

        ap_log_error(APLOG_MARK, APLOG_WARNING, 0, s, APXLOGNO(00007)
                     "AsyncRequestWorkerFactor %g with ThreadsPerChild %ld "
                     "lets the event MPM hold at most about %.0f connections "
                     "per child, below AsyncProxyMaxParked %u: parked "
                     "requests count as connections, so the server will "
                     "stop accepting early. Set AsyncRequestWorkerFactor "
                     "%ld (or lower AsyncProxyMaxParked).", factor, threads,
                     cap, apx_gconf.max_parked, need);
    }
    return OK;
}
