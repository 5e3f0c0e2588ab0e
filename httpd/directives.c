/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* directives.c — the handlers of the module's directives (the table is in
 * mod_asyncproxy.c): engine settings, AsyncProxyPass and its options,
 * AsyncProxyPassReverse, the per-server switches and times.
 *
 * Threads: configuration time only (pconf, single thread, in the parent).
 */
#include "httpd.h"
#include "http_config.h"
#include "http_core.h"
#include "apr_lib.h"
#include "apr_strings.h"
#include "apr_uri.h"

#include "conf.h"
#include "upstream.h"

APLOG_USE_MODULE(asyncproxy);
extern module AP_MODULE_DECLARE_DATA asyncproxy_module;

static const char *main_server_only(cmd_parms *cmd)
{
    const char *err = ap_check_cmd_context(cmd, GLOBAL_ONLY);

    if (err)
        return apr_psprintf(cmd->pool, "%s: one engine serves the whole "
                            "child process, so it is set in the main server "
                            "config only (%s)", cmd->cmd->name, err);
    return NULL;
}

const char *apx_cmd_workers(cmd_parms *cmd, void *dummy, const char *min,
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

const char *apx_cmd_stack_size(cmd_parms *cmd, void *dummy,
                                  const char *arg)
{
    const char *err;

    if ((err = main_server_only(cmd)))
        return err;
    return apx_parse_size(cmd, arg, APX_MIN_STACK_SIZE, APX_MAX_STACK_SIZE,
                          &apx_gconf.stack_size);
}

const char *apx_cmd_max_parked(cmd_parms *cmd, void *dummy,
                                  const char *arg)
{
    const char *err;

    if ((err = main_server_only(cmd)))
        return err;
    return apx_parse_uint(cmd, arg, 1, 1000000, &apx_gconf.max_parked);
}

const char *apx_cmd_retry_after(cmd_parms *cmd, void *dummy,
                                   const char *arg)
{
    const char *err;

    if ((err = main_server_only(cmd)))
        return err;
    return apx_parse_uint(cmd, arg, 0, 86400, &apx_gconf.retry_after);
}

const char *apx_cmd_lane(cmd_parms *cmd, void *dummy, const char *arg)
{
    const char *err;

    if ((err = main_server_only(cmd)))
        return err;
    if (!strcasecmp(cmd->cmd->name, "AsyncProxyLaneThreads"))
        return apx_parse_uint(cmd, arg, 1, 10000, &apx_gconf.lane_threads);
    return apx_parse_uint(cmd, arg, 0, 1000000, &apx_gconf.lane_queue);
}

/* "http://host[:port][/path]", "https://...", "unix:PATH|http://host/path"
 * or "balancer://NAME/path": the origin into *spec (declared by the caller
 * once the options are read), the base path and Host into m. */
static const char *parse_backend_url(cmd_parms *cmd, const char *url,
                                     apx_mapping *m, apx_origin_spec *spec)
{
    const char *http_url = url, *err;
    apr_uri_t uri;

    if (!strncasecmp(url, "unix:", 5)) {
        err = apx_origin_parse_unix(cmd->pool, url, spec, &http_url);
        if (err)
            return apr_psprintf(cmd->pool, "%s: invalid value '%s': %s",
                                cmd->cmd->name, url, err);
    }
    if (apr_uri_parse(cmd->pool, http_url, &uri) != APR_SUCCESS
        || !uri.scheme || !uri.hostname)
        return apr_psprintf(cmd->pool, "%s: invalid value '%s': not an "
                            "absolute URL (http://host[:port]/path, "
                            "https://host[:port]/path, "
                            "unix:/PATH|http://host/path or "
                            "balancer://NAME/path)", cmd->cmd->name, url);
    if (!strcasecmp(uri.scheme, "balancer")) {
        if (uri.port_str || uri.user || uri.password)
            return apr_psprintf(cmd->pool, "%s: invalid value '%s': a "
                                "balancer is named balancer://NAME/path",
                                cmd->cmd->name, url);
        if (uri.query || uri.fragment)
            return apr_psprintf(cmd->pool, "%s: invalid value '%s': a "
                                "backend URL has no query or fragment",
                                cmd->cmd->name, url);
        m->url = url;
        m->base = uri.path && *uri.path ? uri.path : "/";
        m->balancer_name = uri.hostname;
        m->origin = apr_pstrcat(cmd->pool, "balancer://", uri.hostname,
                                NULL);
        return NULL;
    }
    if (!strcasecmp(uri.scheme, "https"))
        spec->tls = 1;
    else if (strcasecmp(uri.scheme, "http"))
        return apr_psprintf(cmd->pool, "%s: invalid value '%s': scheme "
                            "'%s' is not supported (http://, https://, "
                            "unix:)", cmd->cmd->name, url, uri.scheme);
    if (uri.query || uri.fragment)
        return apr_psprintf(cmd->pool, "%s: invalid value '%s': a backend "
                            "URL has no query or fragment", cmd->cmd->name,
                            url);
    if (!uri.port)
        uri.port = spec->tls ? 443 : 80;
    spec->hostname = uri.hostname;
    spec->port = uri.port;
    m->url = url;
    m->base = uri.path && *uri.path ? uri.path : "/";
    m->host_hdr = uri.port_str ? apr_pstrcat(cmd->pool, uri.hostname, ":",
                                             uri.port_str, NULL)
                               : uri.hostname;
    return NULL;
}

static const char *where(cmd_parms *cmd)
{
    return apr_psprintf(cmd->pool, "%s:%d", cmd->directive->filename,
                        cmd->directive->line_num);
}

/* The mapping options that take a duration: where each goes, its range. */
static const struct duration_option {
    const char *key;
    apr_size_t offset;          /* of its apr_interval_time_t in apx_mapping */
    apr_interval_time_t min, max;
} duration_options[] = {
    { "timeout", APR_OFFSETOF(apx_mapping, timeout),
      apr_time_from_msec(1), apr_time_from_sec(86400) },
    { "connecttimeout", APR_OFFSETOF(apx_mapping, connect_timeout),
      apr_time_from_msec(1), apr_time_from_sec(3600) },
    { "streamtimeout", APR_OFFSETOF(apx_mapping, stream_timeout),
      apr_time_from_msec(1), apr_time_from_sec(86400) },
    { "tunneltimeout", APR_OFFSETOF(apx_mapping, tunnel_timeout),
      apr_time_from_msec(1), apr_time_from_sec(86400) },
    { "parkdelay", APR_OFFSETOF(apx_mapping, park_delay),
      0, apr_time_from_sec(60) },
    { "ttl", APR_OFFSETOF(apx_mapping, pool_ttl),
      apr_time_from_msec(1), apr_time_from_sec(86400) },
    { NULL, 0, 0, 0 }
};

static const char *parse_map_option(cmd_parms *cmd, apx_mapping *m,
                                    apx_tls_conf *tc, const char *opt)
{
    const char *eq = strchr(opt, '=');
    const struct duration_option *d;
    const char *key, *val;
    const char *err;

    if (!eq || eq == opt)
        return apr_psprintf(cmd->pool, "%s: invalid option '%s': expected "
                            "key=value", cmd->cmd->name, opt);
    key = apr_pstrmemdup(cmd->pool, opt, eq - opt);
    val = eq + 1;
    if (apx_tls_option(cmd, tc, key, val, &err))
        return err;
    for (d = duration_options; d->key; d++) {
        if (!strcasecmp(key, d->key)) {
            apr_interval_time_t *out = (apr_interval_time_t *)
                                       ((char *)m + d->offset);

            if ((err = apx_parse_duration(cmd, val, d->min, d->max, out)))
                return apr_psprintf(cmd->pool, "%s (option %s=)", err,
                                    d->key);
            return NULL;
        }
    }
    if (!strcasecmp(key, "upgrade")) {
        const char *p;

        for (p = val; *p; p++)
            if (!apr_isalnum(*p) && !strchr(",-._*+", *p))
                return apr_psprintf(cmd->pool, "%s: invalid value '%s' for "
                                    "option upgrade= (protocol tokens "
                                    "separated by commas, or *)",
                                    cmd->cmd->name, val);
        m->upgrade = *val ? val : NULL;
    }
    else if (!strcasecmp(key, "max")) {
        if ((err = apx_parse_uint(cmd, val, 0, 100000, &m->pool_max)))
            return apr_pstrcat(cmd->pool, err, " (option max=)", NULL);
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
                            "cache, tlsca, tlsname, tlsverify)",
                            cmd->cmd->name, key);
    }
    return NULL;
}

/* Server context: AsyncProxyPass PATH URL [key=value ...] | PATH !
 * <Location>:     AsyncProxyPass URL [key=value ...]      | ! */
const char *apx_cmd_pass(cmd_parms *cmd, void *dconf, const char *args)
{
    apx_mapping *m = apr_pcalloc(cmd->pool, sizeof(*m));
    const char *path, *url, *opt, *err;
    apx_origin_spec spec;

    m->park_delay = -1;
    m->cache = -1;
    m->pool_max = APX_DEFAULT_POOL_MAX;
    m->pool_ttl = APX_DEFAULT_POOL_TTL;
    memset(&spec, 0, sizeof(spec));
    spec.tls_conf.verify = -1;
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
        if ((err = parse_backend_url(cmd, url, m, &spec)))
            return err;
        while (*(opt = ap_getword_conf(cmd->pool, &args))) {
            if (m->balancer_name && (!strncasecmp(opt, "max=", 4)
                                     || !strncasecmp(opt, "ttl=", 4)
                                     || !strncasecmp(opt, "tls", 3)))
                return apr_psprintf(cmd->pool, "%s: option '%s' is not "
                                    "for a balancer: each AsyncProxyMember "
                                    "has its own idle= (the idle pool), "
                                    "ttl= and tls*=",
                                    cmd->cmd->name, opt);
            if (!spec.tls && !strncasecmp(opt, "tls", 3))
                return apr_psprintf(cmd->pool, "%s: option '%s' is for an "
                                    "https:// backend", cmd->cmd->name, opt);
            if ((err = parse_map_option(cmd, m, &spec.tls_conf, opt)))
                return err;
        }
        /* FIXME: a tunnel moves bytes with recv()/send() on the backend
         * socket (tunnel.c); over TLS it needs the steps of backend.c */
        if (spec.tls && m->upgrade)
            return apr_psprintf(cmd->pool, "%s %s: upgrade= is not "
                                "supported to an https:// backend yet",
                                cmd->cmd->name, url);
        m->defined_at = where(cmd);
        if (m->balancer_name) {
            /* the section may come later in the file: check_config finds
             * it (apx_conf_check_config) */
            APR_ARRAY_PUSH(apx_gconf.group_maps, apx_mapping *) = m;
        }
        else {
            /* after the options: max= and ttl= choose the origin's
             * record */
            err = apx_backend_declare(cmd->pool, &spec, m->pool_max,
                                      m->pool_ttl, &m->backend);
            if (err)
                return apr_psprintf(cmd->pool, "%s: invalid value '%s': %s",
                                    cmd->cmd->name, url, err);
            m->origin = apx_backend_origin(cmd->pool, m->backend);
        }
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

const char *apx_cmd_pass_reverse(cmd_parms *cmd, void *dconf,
                                    const char *a1, const char *a2)
{
    apx_reverse *rv;
    const char *path = cmd->path ? cmd->path : a1;
    const char *url = cmd->path ? a1 : a2;
    const char *group = NULL;

    if (!url || (cmd->path && a2))
        return apr_psprintf(cmd->pool, "%s: wrong number of arguments "
                            "(usage: %s)", cmd->cmd->name,
                            cmd->path ? "URL" : "PATH URL");
    if (*path != '/')
        return apr_psprintf(cmd->pool, "%s: invalid value '%s': the path "
                            "must start with '/'", cmd->cmd->name, path);
    if (strncasecmp(url, "http://", 7) && strncasecmp(url, "https://", 8)
        && strncasecmp(url, "balancer://", 11))
        return apr_psprintf(cmd->pool, "%s: invalid value '%s': not an "
                            "http://, https:// or balancer:// URL",
                            cmd->cmd->name, url);
    if (!strncasecmp(url, "balancer://", 11)) {
        const char *name = url + 11, *slash = strchr(name, '/');

        group = slash ? apr_pstrmemdup(cmd->pool, name, slash - name)
                      : name;
        if (!*group)
            return apr_psprintf(cmd->pool, "%s: invalid value '%s': no "
                                "balancer name", cmd->cmd->name, url);
        url = slash ? slash : "/";
    }
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
    rv->group = group;
    rv->defined_at = where(cmd);
    /* the section may come later in the file: check_config looks */
    if (group)
        APR_ARRAY_PUSH(apx_gconf.group_reverses, apx_reverse) = *rv;
    return NULL;
}

const char *apx_cmd_srv_flag(cmd_parms *cmd, void *dummy, int on)
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
const char *apx_cmd_trusted(cmd_parms *cmd, void *dummy, const char *arg)
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

const char *apx_cmd_srv_time(cmd_parms *cmd, void *dummy,
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
