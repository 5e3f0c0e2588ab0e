/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* mod_asyncproxy.c — httpd glue: the module record, directives, and the
 * per-child engine's life (child_init starts it, child_stopping tells it,
 * a pre-cleanup on pchild joins it).
 *
 * Threads: directives and post_config run single-threaded in the parent;
 * child_init on the child's main thread before the MPM starts its workers;
 * child_stopping on the child's main thread (signals) or an MPM thread
 * (internal shutdown); the pchild pre-cleanup on the child's main thread
 * while the MPM's structures still exist.
 */
#include "httpd.h"
#include "http_config.h"
#include "http_log.h"
#include "http_core.h"
#include "http_protocol.h"
#include "ap_mpm.h"
#include "mpm_common.h"
#include "apr_lib.h"
#include "apr_strings.h"
#include "apr_uri.h"
#include "util_cfgtree.h"

#include "httpd/conf.h"
#include "httpd/child.h"
#include "httpd/conn.h"
#include "httpd/map.h"
#include "httpd/request.h"
#include "httpd/upstream.h"
#include "httpd/cache.h"
#include "httpd/head.h"
#include "httpd/lane.h"
#include "httpd/status.h"

module AP_MODULE_DECLARE_DATA asyncproxy_module;

apx_global_conf apx_gconf;
apx_child *apx_ch;

/* ------------------------------------------------------------------ */
/* directives                                                          */

static const char *main_server_only(cmd_parms *cmd)
{
    const char *err = ap_check_cmd_context(cmd, GLOBAL_ONLY);

    if (err)
        return apr_psprintf(cmd->pool, "%s: one engine serves the whole "
                            "child process, so it is set in the main server "
                            "config only (%s)", cmd->cmd->name, err);
    return NULL;
}

static const char *set_workers(cmd_parms *cmd, void *dummy, const char *min,
                               const char *max)
{
    const char *err;
    unsigned lo, hi;

    if ((err = main_server_only(cmd)))
        return err;
    if ((err = apx_parse_uint(cmd, min, 1, 1024, &lo)))
        return err;
    hi = lo;
    if (max && (err = apx_parse_uint(cmd, max, 1, 1024, &hi)))
        return err;
    if (hi < lo)
        return apr_psprintf(cmd->pool, "%s: invalid value '%s %s': the "
                            "maximum is below the minimum", cmd->cmd->name,
                            min, max);
    apx_gconf.workers_min = lo;
    apx_gconf.workers_max = hi;
    return NULL;
}

static const char *set_stack_size(cmd_parms *cmd, void *dummy,
                                  const char *arg)
{
    const char *err;

    if ((err = main_server_only(cmd)))
        return err;
    return apx_parse_size(cmd, arg, APX_MIN_STACK_SIZE, APX_MAX_STACK_SIZE,
                          &apx_gconf.stack_size);
}

static const char *set_max_parked(cmd_parms *cmd, void *dummy,
                                  const char *arg)
{
    const char *err;

    if ((err = main_server_only(cmd)))
        return err;
    return apx_parse_uint(cmd, arg, 1, 1000000, &apx_gconf.max_parked);
}

static const char *set_retry_after(cmd_parms *cmd, void *dummy,
                                   const char *arg)
{
    const char *err;

    if ((err = main_server_only(cmd)))
        return err;
    return apx_parse_uint(cmd, arg, 0, 86400, &apx_gconf.retry_after);
}

static const char *set_lane(cmd_parms *cmd, void *dummy, const char *arg)
{
    const char *err;

    if ((err = main_server_only(cmd)))
        return err;
    if (!strcasecmp(cmd->cmd->name, "AsyncProxyLaneThreads"))
        return apx_parse_uint(cmd, arg, 1, 10000, &apx_gconf.lane_threads);
    return apx_parse_uint(cmd, arg, 0, 1000000, &apx_gconf.lane_queue);
}

static void *create_srv_conf(apr_pool_t *p, server_rec *s)
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

static void *merge_srv_conf(apr_pool_t *p, void *basev, void *addv)
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

static void *create_dir_conf(apr_pool_t *p, char *dir)
{
    apx_dir_conf *dc = apr_pcalloc(p, sizeof(*dc));

    dc->reverses = apr_array_make(p, 2, sizeof(apx_reverse));
    apx_hc_set_init(&dc->cache);
    return dc;
}

static void *merge_dir_conf(apr_pool_t *p, void *basev, void *addv)
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
static const char *parse_backend_url(cmd_parms *cmd, const char *url,
                                     apx_mapping *m, apr_uri_t *puri)
{
    apr_uri_t uri;

    if (apr_uri_parse(cmd->pool, url, &uri) != APR_SUCCESS || !uri.scheme
        || !uri.hostname)
        return apr_psprintf(cmd->pool, "%s: invalid value '%s': not an "
                            "absolute URL (http://host[:port]/path)",
                            cmd->cmd->name, url);
    if (strcasecmp(uri.scheme, "http"))
        return apr_psprintf(cmd->pool, "%s: invalid value '%s': scheme "
                            "'%s' is not supported (only http://)",
                            cmd->cmd->name, url, uri.scheme);
    if (uri.query || uri.fragment)
        return apr_psprintf(cmd->pool, "%s: invalid value '%s': a backend "
                            "URL has no query or fragment", cmd->cmd->name,
                            url);
    if (!uri.port)
        uri.port = 80;
    *puri = uri;
    m->url = url;
    m->base = uri.path && *uri.path ? uri.path : "/";
    m->host_hdr = uri.port_str ? apr_pstrcat(cmd->pool, uri.hostname, ":",
                                             uri.port_str, NULL)
                               : uri.hostname;
    return NULL;
}

static const char *parse_map_option(cmd_parms *cmd, apx_mapping *m,
                                    const char *opt)
{
    const char *eq = strchr(opt, '=');
    const char *key, *val;
    apr_interval_time_t t;
    const char *err;

    if (!eq || eq == opt)
        return apr_psprintf(cmd->pool, "%s: invalid option '%s': expected "
                            "key=value", cmd->cmd->name, opt);
    key = apr_pstrmemdup(cmd->pool, opt, eq - opt);
    val = eq + 1;
    if (!strcasecmp(key, "timeout")) {
        if ((err = apx_parse_duration(cmd, val, apr_time_from_msec(1),
                                      apr_time_from_sec(86400), &t)))
            return apr_pstrcat(cmd->pool, err, " (option timeout=)", NULL);
        m->timeout = t;
    }
    else if (!strcasecmp(key, "connecttimeout")) {
        if ((err = apx_parse_duration(cmd, val, apr_time_from_msec(1),
                                      apr_time_from_sec(3600), &t)))
            return apr_pstrcat(cmd->pool, err, " (option connecttimeout=)",
                               NULL);
        m->connect_timeout = t;
    }
    else if (!strcasecmp(key, "streamtimeout")) {
        if ((err = apx_parse_duration(cmd, val, apr_time_from_msec(1),
                                      apr_time_from_sec(86400), &t)))
            return apr_pstrcat(cmd->pool, err, " (option streamtimeout=)",
                               NULL);
        m->stream_timeout = t;
    }
    else if (!strcasecmp(key, "tunneltimeout")) {
        if ((err = apx_parse_duration(cmd, val, apr_time_from_msec(1),
                                      apr_time_from_sec(86400), &t)))
            return apr_pstrcat(cmd->pool, err, " (option tunneltimeout=)",
                               NULL);
        m->tunnel_timeout = t;
    }
    else if (!strcasecmp(key, "upgrade")) {
        const char *p;

        for (p = val; *p; p++)
            if (!apr_isalnum(*p) && !strchr(",-._*+", *p))
                return apr_psprintf(cmd->pool, "%s: invalid value '%s' for "
                                    "option upgrade= (protocol tokens "
                                    "separated by commas, or *)",
                                    cmd->cmd->name, val);
        m->upgrade = *val ? val : NULL;
    }
    else if (!strcasecmp(key, "parkdelay")) {
        if ((err = apx_parse_duration(cmd, val, 0, apr_time_from_sec(60),
                                      &t)))
            return apr_pstrcat(cmd->pool, err, " (option parkdelay=)", NULL);
        m->park_delay = t;
    }
    else if (!strcasecmp(key, "max")) {
        if ((err = apx_parse_uint(cmd, val, 0, 100000, &m->pool_max)))
            return apr_pstrcat(cmd->pool, err, " (option max=)", NULL);
    }
    else if (!strcasecmp(key, "ttl")) {
        if ((err = apx_parse_duration(cmd, val, apr_time_from_msec(1),
                                      apr_time_from_sec(86400), &t)))
            return apr_pstrcat(cmd->pool, err, " (option ttl=)", NULL);
        m->pool_ttl = t;
    }
    else if (!strcasecmp(key, "cache")) {
        if (!strcasecmp(val, "on"))
            m->cache = 1;
        else if (!strcasecmp(val, "off"))
            m->cache = 0;
        else
            return apr_psprintf(cmd->pool, "%s: invalid value '%s' for "
                                "option cache= (on or off)", cmd->cmd->name,
                                val);
        if (m->cache)
            apx_gconf.cache_used = 1;
    }
    else {
        return apr_psprintf(cmd->pool, "%s: unknown option '%s' (known: "
                            "timeout, connecttimeout, streamtimeout, "
                            "tunneltimeout, upgrade, parkdelay, max, ttl, "
                            "cache)", cmd->cmd->name, key);
    }
    return NULL;
}

/* Server context: AsyncProxyPass PATH URL [key=value ...] | PATH !
 * <Location>:     AsyncProxyPass URL [key=value ...]      | ! */
static const char *set_pass(cmd_parms *cmd, void *dconf, const char *args)
{
    apx_mapping *m = apr_pcalloc(cmd->pool, sizeof(*m));
    const char *path, *url, *opt, *err;
    apr_uri_t uri;

    m->park_delay = -1;
    m->cache = -1;
    m->pool_max = APX_DEFAULT_POOL_MAX;
    m->pool_ttl = APX_DEFAULT_POOL_TTL;
    memset(&uri, 0, sizeof(uri));
    if (cmd->path) {
        path = cmd->path;
        url = ap_getword_conf(cmd->pool, &args);
    }
    else {
        path = ap_getword_conf(cmd->pool, &args);
        url = ap_getword_conf(cmd->pool, &args);
    }
    if (!*path || !*url)
        return apr_psprintf(cmd->pool, "%s: missing argument (usage: %s)",
                            cmd->cmd->name, cmd->path ? "URL [key=value ...]"
                            " | !" : "PATH URL [key=value ...] | PATH !");
    if (cmd->path && strpbrk(cmd->path, "*?[^$("))
        return apr_psprintf(cmd->pool, "%s: not allowed in a <Location> "
                            "with a regular expression or wildcard ('%s')",
                            cmd->cmd->name, cmd->path);
    if (*path != '/')
        return apr_psprintf(cmd->pool, "%s: invalid value '%s': the path "
                            "must start with '/'", cmd->cmd->name, path);
    m->path = path;
    m->path_len = strlen(path);
    if (!strcmp(url, "!")) {
        m->excluded = 1;
        if (*args)
            return apr_psprintf(cmd->pool, "%s: invalid value '%s': no "
                                "options after '!'", cmd->cmd->name, args);
    }
    else {
        if ((err = parse_backend_url(cmd, url, m, &uri)))
            return err;
        while (*(opt = ap_getword_conf(cmd->pool, &args)))
            if ((err = parse_map_option(cmd, m, opt)))
                return err;
        /* after the options: max= and ttl= choose the origin's record */
        err = apx_backend_declare(cmd->pool, uri.hostname, uri.port,
                                  m->pool_max, m->pool_ttl, &m->backend);
        if (err)
            return apr_psprintf(cmd->pool, "%s: invalid value '%s': %s",
                                cmd->cmd->name, url, err);
    }
    if (cmd->path) {
        ((apx_dir_conf *)dconf)->map = m;
    }
    else {
        apx_srv_conf *sc = ap_get_module_config(cmd->server->module_config,
                                                &asyncproxy_module);
        int i;

        for (i = 0; i < sc->maps->nelts; i++)
            if (!strcmp(APR_ARRAY_IDX(sc->maps, i, apx_mapping *)->path, path))
                return apr_psprintf(cmd->pool, "%s: path '%s' is mapped "
                                    "twice in the same server",
                                    cmd->cmd->name, path);
        APR_ARRAY_PUSH(sc->maps, apx_mapping *) = m;
    }
    return NULL;
}

static const char *set_pass_reverse(cmd_parms *cmd, void *dconf,
                                    const char *a1, const char *a2)
{
    apx_reverse *rv;
    const char *path = cmd->path ? cmd->path : a1;
    const char *url = cmd->path ? a1 : a2;

    if (!url || (cmd->path && a2))
        return apr_psprintf(cmd->pool, "%s: wrong number of arguments "
                            "(usage: %s)", cmd->cmd->name,
                            cmd->path ? "URL" : "PATH URL");
    if (*path != '/')
        return apr_psprintf(cmd->pool, "%s: invalid value '%s': the path "
                            "must start with '/'", cmd->cmd->name, path);
    if (strncasecmp(url, "http://", 7))
        return apr_psprintf(cmd->pool, "%s: invalid value '%s': not an "
                            "http:// URL", cmd->cmd->name, url);
    if (cmd->path) {
        rv = apr_array_push(((apx_dir_conf *)dconf)->reverses);
    }
    else {
        apx_srv_conf *sc = ap_get_module_config(cmd->server->module_config,
                                                &asyncproxy_module);
        rv = apr_array_push(sc->reverses);
    }
    rv->path = path;
    rv->url = url;
    rv->url_len = strlen(url);
    return NULL;
}

static const char *set_srv_flag(cmd_parms *cmd, void *dummy, int on)
{
    apx_srv_conf *sc = ap_get_module_config(cmd->server->module_config,
                                            &asyncproxy_module);

    if (!strcasecmp(cmd->cmd->name, "AsyncProxyPreserveHost"))
        sc->preserve_host = on;
    else if (!strcasecmp(cmd->cmd->name, "AsyncProxyAdoptSlowHeads"))
        sc->adopt_heads = on;
    else
        sc->add_forwarded = on;
    return NULL;
}

/* AsyncProxyTrustedProxies ADDR[/BITS|/MASK] ...: one argument per call. */
static const char *set_trusted(cmd_parms *cmd, void *dummy, const char *arg)
{
    apx_srv_conf *sc = ap_get_module_config(cmd->server->module_config,
                                            &asyncproxy_module);
    char *ip = apr_pstrdup(cmd->pool, arg);
    char *mask = strchr(ip, '/');
    apr_ipsubnet_t *sub;
    apr_status_t rv;

    if (mask)
        *mask++ = '\0';
    rv = apr_ipsubnet_create(&sub, ip, mask, cmd->pool);
    if (rv != APR_SUCCESS)
        return apr_psprintf(cmd->pool, "%s: '%s' is not an IP address or "
                            "network (192.0.2.1, 10.0.0.0/8, "
                            "10.0.0.0/255.0.0.0, 2001:db8::/32)",
                            cmd->cmd->name, arg);
    if (!sc->trusted)
        sc->trusted = apr_array_make(cmd->pool, 4, sizeof(apr_ipsubnet_t *));
    APR_ARRAY_PUSH(sc->trusted, apr_ipsubnet_t *) = sub;
    return NULL;
}

static const char *set_srv_time(cmd_parms *cmd, void *dummy,
                                const char *arg)
{
    apx_srv_conf *sc = ap_get_module_config(cmd->server->module_config,
                                            &asyncproxy_module);
    const char *name = cmd->cmd->name;

    if (!strcasecmp(name, "AsyncProxyTimeout"))
        return apx_parse_duration(cmd, arg, apr_time_from_msec(1),
                                  apr_time_from_sec(86400), &sc->timeout);
    if (!strcasecmp(name, "AsyncProxyConnectTimeout"))
        return apx_parse_duration(cmd, arg, apr_time_from_msec(1),
                                  apr_time_from_sec(3600),
                                  &sc->connect_timeout);
    if (!strcasecmp(name, "AsyncProxyTunnelTimeout"))
        return apx_parse_duration(cmd, arg, apr_time_from_msec(1),
                                  apr_time_from_sec(86400),
                                  &sc->tunnel_timeout);
    if (!strcasecmp(name, "AsyncProxyStreamTimeout"))
        return apx_parse_duration(cmd, arg, apr_time_from_msec(1),
                                  apr_time_from_sec(86400),
                                  &sc->stream_timeout);
    return apx_parse_duration(cmd, arg, 0, apr_time_from_sec(60),
                              &sc->park_delay);
}

static const command_rec asyncproxy_cmds[] = {
    AP_INIT_RAW_ARGS("AsyncProxyPass", set_pass, NULL, RSRC_CONF | ACCESS_CONF,
                     "PATH URL [timeout= connecttimeout= streamtimeout= "
                     "tunneltimeout= upgrade= parkdelay= max= ttl= cache=] | PATH ! (in <Location>: URL [...] | !)"),
    AP_INIT_TAKE12("AsyncProxyPassReverse", set_pass_reverse, NULL,
                   RSRC_CONF | ACCESS_CONF,
                   "PATH URL: rewrite Location, Content-Location and URI "
                   "response headers that start with URL"),
    AP_INIT_FLAG("AsyncProxyPreserveHost", set_srv_flag, NULL, RSRC_CONF,
                 "On: send the client's Host header to the backend"),
    AP_INIT_FLAG("AsyncProxyAddHeaders", set_srv_flag, NULL, RSRC_CONF,
                 "Off: do not add X-Forwarded-For/-Host/-Proto (default On)"),
    AP_INIT_FLAG("AsyncProxyAdoptSlowHeads", set_srv_flag, NULL, RSRC_CONF,
                 "On (default): a connection whose request head is not "
                 "complete is taken from the MPM thread and its head awaited "
                 "in the poller, so no slow head holds a thread"),
    AP_INIT_TAKE1("AsyncProxyLaneThreads", set_lane, NULL, RSRC_CONF,
                  "threads per child for other handlers' requests on "
                  "connections the module owns (default: ThreadsPerChild)"),
    AP_INIT_TAKE1("AsyncProxyLaneQueue", set_lane, NULL, RSRC_CONF,
                  "such requests waiting for a lane thread per child; "
                  "beyond: 503 (default: 4 per lane thread)"),
    AP_INIT_ITERATE("AsyncProxyTrustedProxies", set_trusted, NULL, RSRC_CONF,
                    "addresses or networks of proxies in front of this "
                    "server whose X-Forwarded-* are believed (default: "
                    "none; a client's are replaced by this hop's)"),
    AP_INIT_TAKE1("AsyncProxyTimeout", set_srv_time, NULL, RSRC_CONF,
                  "backend response and I/O timeout (default: Timeout)"),
    AP_INIT_TAKE1("AsyncProxyConnectTimeout", set_srv_time, NULL, RSRC_CONF,
                  "backend connect timeout (default 5s)"),
    AP_INIT_TAKE1("AsyncProxyStreamTimeout", set_srv_time, NULL, RSRC_CONF,
                  "longest silence between two reads of a response body "
                  "without a length, e.g. SSE (default 300s)"),
    AP_INIT_TAKE1("AsyncProxyTunnelTimeout", set_srv_time, NULL, RSRC_CONF,
                  "longest time an upgraded connection (WebSocket) may "
                  "move nothing either way (default 300s)"),
    AP_INIT_TAKE1("AsyncProxyParkDelay", set_srv_time, NULL, RSRC_CONF,
                  "how long the first thread waits for a fast response "
                  "before parking the request (default 5ms)"),
    AP_INIT_TAKE1("AsyncProxyMaxParked", set_max_parked, NULL, RSRC_CONF,
                  "parked requests per child; beyond it 503 with "
                  "Retry-After (default 10000)"),
    AP_INIT_TAKE1("AsyncProxyRetryAfter", set_retry_after, NULL, RSRC_CONF,
                  "seconds sent in Retry-After with a 503 (default 1)"),
    AP_INIT_TAKE12("AsyncProxyWorkers", set_workers, NULL, RSRC_CONF,
                   "MIN [MAX]: module worker threads per child (elastic "
                   "between MIN and MAX; default 2 8)"),
    AP_INIT_TAKE1("AsyncProxyStackSize", set_stack_size, NULL, RSRC_CONF,
                  "coroutine stack size per in-flight request, e.g. 128K "
                  "(32K..8M; only touched pages are resident)"),
    AP_INIT_FLAG("AsyncProxyCache", apx_hc_cmd_flag, NULL,
                 RSRC_CONF | ACCESS_CONF,
                 "On: store cacheable responses of this scope in memory "
                 "(default Off)"),
    AP_INIT_FLAG("AsyncProxyCacheGzip", apx_hc_cmd_flag, NULL,
                 RSRC_CONF | ACCESS_CONF,
                 "Off: store compressible bodies as they came (default On: "
                 "one gzip copy, served decompressed where not accepted)"),
    AP_INIT_TAKE1("AsyncProxyCacheTTL", apx_hc_cmd_take1, NULL,
                  RSRC_CONF | ACCESS_CONF,
                  "lifetime of responses without explicit freshness, e.g. "
                  "500ms or 10s; off (default): such responses are not "
                  "stored"),
    AP_INIT_TAKE1("AsyncProxyCacheSize", apx_hc_cmd_take1, NULL, RSRC_CONF,
                  "memory budget of the response cache per child, e.g. 64M "
                  "(default)"),
    AP_INIT_TAKE1("AsyncProxyCacheMaxObject", apx_hc_cmd_take1, NULL,
                  RSRC_CONF, "largest body stored, e.g. 1M (default)"),
    AP_INIT_TAKE1("AsyncProxyCacheWait", apx_hc_cmd_take1, NULL, RSRC_CONF,
                  "longest a request waits for another request's fetch of "
                  "the same object before going to the backend itself "
                  "(default 10s)"),
    { NULL }
};

/* ------------------------------------------------------------------ */
/* engine life                                                         */

static void log_sink(int level, apr_status_t status, const char *msg,
                     void *baton)
{
    server_rec *s = baton;

    ap_log_error(APLOG_MARK, level, status, s, "%s", msg);
}

/* Runs before pchild's subpools and the MPM's structures go: stops the
 * poller, lets workers finish, joins every engine thread. Records still
 * parked are abandoned; their connections close when the process exits. */
static apr_status_t child_cleanup(void *data)
{
    apx_child *ch = data;
    apx_engine_stats st;

    if (!ch->engine)
        return APR_SUCCESS;
    apr_atomic_set32(&ch->stopping, 1);
    apx_conn_shutdown_all();
    /* lane threads hand their connections back to the engine: join them
     * while it still takes records */
    apx_lane_stop();
    apx_engine_stats_get(ch->engine, &st);
    apx_engine_destroy(ch->engine, NULL);
    ch->engine = NULL;
    ap_log_error(APLOG_MARK, APLOG_DEBUG, 0, ch->s, APXLOGNO(00002)
                 "engine stopped and joined (%u parked, %u queued "
                 "abandoned)", st.parked, st.queued);
    if (ch->stacks) {
        apx_stack_pool_destroy(ch->stacks);
        ch->stacks = NULL;
    }
    apx_ch = NULL;
    return APR_SUCCESS;
}

static void asyncproxy_child_init(apr_pool_t *pchild, server_rec *s)
{
    apx_child *ch = apr_pcalloc(pchild, sizeof(*ch));
    apx_engine_conf ec;
    apr_status_t rv;
    int threads = 0;

    ch->pchild = pchild;
    ch->s = s;
    if (ap_mpm_query(AP_MPMQ_IS_ASYNC, &ch->mpm_async) != APR_SUCCESS)
        ch->mpm_async = 0;
    ap_mpm_query(AP_MPMQ_MAX_THREADS, &threads);
    /* Half the MPM's threads may wait in place at once (a park delay, a
     * backend connect); the rest park at once and stay free to accept.
     * Without the cap, a burst of new connections to a slow backend holds
     * every MPM thread for the whole wait: with a 5 ms park delay, 25
     * threads allow 5,000 first requests per second per child, and the
     * listener stops accepting (AH00484) meanwhile. */
    ch->delaying_max = threads > 1 ? (apr_uint32_t)threads / 2 : 1;
    apx_log_set(log_sink, s,
                ap_get_server_module_loglevel(s, APLOG_MODULE_INDEX));

    rv = apx_stack_pool_create(&ch->stacks, apx_gconf.stack_size,
                               apx_gconf.workers_max * 4 + (unsigned)threads);
    if (rv != APR_SUCCESS) {
        ap_log_error(APLOG_MARK, APLOG_CRIT, rv, s, APXLOGNO(00003)
                     "cannot create the coroutine stack pool");
        return;
    }
    apx_ch = ch;
    {
        unsigned lt = apx_gconf.lane_threads ? apx_gconf.lane_threads
                      : threads > 0 ? (unsigned)threads : 25;
        unsigned lq = apx_gconf.lane_queue ? apx_gconf.lane_queue
                      : lt * APX_DEFAULT_LANE_QUEUE_PER_THREAD;

        rv = apx_lane_child_init(pchild, lt, lq);
        if (rv != APR_SUCCESS)
            ap_log_error(APLOG_MARK, APLOG_CRIT, rv, s, APXLOGNO(00022)
                         "cannot create the lane: other handlers' requests "
                         "on adopted connections will get 503");
    }
    apx_backends_child_init(pchild);
    apx_hc_child_init(pchild, s);
    apr_pool_pre_cleanup_register(pchild, ch, child_cleanup);

    if (!ch->mpm_async) {
        ap_log_error(APLOG_MARK, APLOG_INFO, 0, s, APXLOGNO(00004)
                     "synchronous mode: the MPM (%s) is not asynchronous, "
                     "requests wait on their own thread",
                     ap_show_mpm());
        return;
    }
    apx_engine_conf_default(&ec);
    ec.workers_min = apx_gconf.workers_min;
    ec.workers_max = apx_gconf.workers_max;
    rv = apx_engine_create(&ch->engine, &ec, pchild);
    if (rv == APR_SUCCESS)
        rv = apx_engine_start(ch->engine);
    if (rv != APR_SUCCESS) {
        ap_log_error(APLOG_MARK, APLOG_CRIT, rv, s, APXLOGNO(00005)
                     "cannot start the engine; falling back to synchronous "
                     "mode");
        if (ch->engine)
            apx_engine_destroy(ch->engine, NULL);
        ch->engine = NULL;
        return;
    }
    apx_conn_engine_started(s, apx_gconf.mpm_factor, apx_gconf.mpm_threads);
    ap_log_error(APLOG_MARK, APLOG_INFO, 0, s, APXLOGNO(00006)
                 "asynchronous mode: MPM %s, engine with %u..%u workers, "
                 "%" APR_SIZE_T_FMT "-byte coroutine stacks", ap_show_mpm(),
                 ec.workers_min, ec.workers_max, apx_gconf.stack_size);
}

static void asyncproxy_child_stopping(apr_pool_t *pchild, int graceful)
{
    apx_child *ch = apx_ch;

    if (!ch)
        return;
    apr_atomic_set32(&ch->stopping, 1);
    if (ch->engine)
        apx_engine_stopping(ch->engine);
}

/* Globals outlive a restart's re-read of the configuration: start every
 * read from the defaults. */
static int asyncproxy_pre_config(apr_pool_t *pconf, apr_pool_t *plog,
                                 apr_pool_t *ptemp)
{
    apx_gconf.workers_min = APX_DEFAULT_WORKERS_MIN;
    apx_gconf.workers_max = APX_DEFAULT_WORKERS_MAX;
    apx_gconf.stack_size = APX_DEFAULT_STACK_SIZE;
    apx_gconf.max_parked = APX_DEFAULT_MAX_PARKED;
    apx_gconf.retry_after = APX_DEFAULT_RETRY_AFTER;
    apx_gconf.backends = apr_array_make(pconf, 8, sizeof(apx_backend *));
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

static int asyncproxy_post_config(apr_pool_t *pconf, apr_pool_t *plog,
                                  apr_pool_t *ptemp, server_rec *s)
{
    int async = 0;
    const char *v;
    double factor = 2.0;
    long threads = 25;
    double cap;

    if (ap_state_query(AP_SQ_MAIN_STATE) == AP_SQ_MS_CREATE_PRE_CONFIG)
        return OK;
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

static void asyncproxy_register_hooks(apr_pool_t *p)
{
    ap_hook_pre_config(asyncproxy_pre_config, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_post_config(asyncproxy_post_config, NULL, NULL, APR_HOOK_MIDDLE);
    apx_conn_register_hooks(p);
    apx_head_register_hooks(p);
    apx_map_register_hooks(p);
    apx_stream_register_filter(p);
    ap_hook_child_init(asyncproxy_child_init, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_child_stopping(asyncproxy_child_stopping, NULL, NULL,
                           APR_HOOK_MIDDLE);
    apx_status_register(p);
}

AP_DECLARE_MODULE(asyncproxy) = {
    STANDARD20_MODULE_STUFF,
    create_dir_conf,            /* per-directory config creator */
    merge_dir_conf,             /* dir config merger */
    create_srv_conf,            /* server config creator */
    merge_srv_conf,             /* server config merger */
    asyncproxy_cmds,            /* command table */
    asyncproxy_register_hooks,  /* set up other request processing hooks */
    AP_MODULE_FLAG_NONE         /* flags */
};
