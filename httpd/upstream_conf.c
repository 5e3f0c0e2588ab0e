/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* upstream_conf.c — the balancer directives: <AsyncProxyBalancer NAME>
 * and, inside it, AsyncProxyMember and AsyncProxyBalancerSet, parsed into
 * an apx_balancer (upstream.h) whose members are origins declared like
 * AsyncProxyPass's (apx_backend_declare: one keep-alive pool each). The
 * AsyncProxyHealthCheck (active checks, upstream_check.c) goes in the
 * section too. The AsyncProxyPass that names balancer://NAME is resolved by check_config
 * (conf.c), so the section may come after it.
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
#include "upstream_check.h"

APLOG_USE_MODULE(asyncproxy);

static const char *where(cmd_parms *cmd)
{
    return apr_psprintf(cmd->pool, "%s:%d", cmd->directive->filename,
                        cmd->directive->line_num);
}

/* ------------------------------------------------------------------ */
/* <AsyncProxyBalancer NAME>                                            */

/* The section being read: AsyncProxyMember and AsyncProxyBalancerSet
 * belong to it. Configuration is read by one thread; the section's
 * handler sets and restores it around its walk. */
static apx_balancer *cur_balancer;

static const char *only_in_balancer(cmd_parms *cmd)
{
    if (!cur_balancer)
        return apr_psprintf(cmd->pool, "%s: only inside <AsyncProxyBalancer "
                            "NAME> ... </AsyncProxyBalancer>",
                            cmd->cmd->name);
    return NULL;
}

static int valid_name(const char *s)
{
    if (!*s)
        return 0;
    for (; *s; s++)
        if (!apr_isalnum(*s) && !strchr("._-", *s))
            return 0;
    return 1;
}

/* The next "key=value" of args: 1 with *key and *val set, 0 at the end,
 * -1 with *err set when the word has no '='. */
static int next_option(cmd_parms *cmd, const char **args, const char **key,
                       const char **val, const char **err)
{
    const char *opt = ap_getword_conf(cmd->pool, args), *eq;

    if (!*opt)
        return 0;
    eq = strchr(opt, '=');
    if (!eq || eq == opt) {
        *err = apr_psprintf(cmd->pool, "%s: invalid option '%s': expected "
                            "key=value", cmd->cmd->name, opt);
        return -1;
    }
    *key = apr_pstrmemdup(cmd->pool, opt, eq - opt);
    *val = eq + 1;
    return 1;
}

const char *apx_cmd_balancer(cmd_parms *cmd, void *dummy, const char *arg)
{
    const char *endp = ap_strrchr_c(arg, '>');
    const char *err, *name, *rest;
    apx_balancer *b, *prev;

    if ((err = ap_check_cmd_context(cmd, NOT_IN_DIR_LOC_FILE)))
        return err;
    if (!endp)
        return apr_psprintf(cmd->pool, "%s directive missing closing '>'",
                            cmd->cmd->name);
    rest = apr_pstrmemdup(cmd->pool, arg, endp - arg);
    name = ap_getword_conf(cmd->pool, &rest);
    if (!strncasecmp(name, "balancer://", 11))
        name += 11;
    if (*rest || !valid_name(name))
        return apr_psprintf(cmd->pool, "%s: invalid name '%s' (letters, "
                            "digits, '.', '_', '-'; used as "
                            "balancer://NAME)", cmd->cmd->name,
                            apr_pstrmemdup(cmd->pool, arg, endp - arg));
    if (cur_balancer)
        return apr_psprintf(cmd->pool, "%s %s: sections do not nest",
                            cmd->cmd->name, name);
    if ((b = apx_balancer_find(name)))
        return apr_psprintf(cmd->pool, "%s %s: defined twice (first at %s)",
                            cmd->cmd->name, name, b->defined_at);
    b = apr_pcalloc(cmd->pool, sizeof(*b));
    b->name = name;
    b->url = apr_pstrcat(cmd->pool, "balancer://", name, NULL);
    b->defined_at = where(cmd);
    b->members = apr_array_make(cmd->pool, 4, sizeof(apx_member));
    apx_bal_config_init(&b->cfg);
    b->queue_timeout = APX_DEFAULT_QUEUE_TIMEOUT;
    /* 502, 503, 504: the member itself says it cannot serve; a 500 is
     * more often one request's fault than the member's */
    b->fail_status[2] = b->fail_status[3] = b->fail_status[4] = 1;

    prev = cur_balancer;
    cur_balancer = b;
    {
        /* the walk leaves cmd naming the last directive it ran */
        const command_rec *self = cmd->cmd;
        ap_directive_t *dir = cmd->directive;

        err = ap_walk_config(cmd->directive->first_child, cmd,
                             cmd->context);
        cmd->cmd = self;
        cmd->directive = dir;
    }
    cur_balancer = prev;
    if (err)
        return err;
    if (b->members->nelts == 0)
        return apr_psprintf(cmd->pool, "%s %s: no AsyncProxyMember in it",
                            cmd->cmd->name, name);
    if (b->hash_from != APX_HASHKEY_CLIENT
        && b->cfg.method != APX_BAL_HASH)
        return apr_psprintf(cmd->pool, "%s %s: hashkey= is set but lbmethod "
                            "is not hash", cmd->cmd->name, name);
    APR_ARRAY_PUSH(apx_gconf.balancers, apx_balancer *) = b;
    return NULL;
}

/* AsyncProxyMember http://host[:port][/] [weight=N] [route=R] [max=N]
 * [idle=N] [ttl=D]; also https://host[:port] [tlsca=F] [tlsname=N]
 * [tlsverify=on|off] and unix:/PATH|http://host. max= caps the requests in
 * flight to the member across all children (upstream_shm.c); idle= is the
 * per-child pool of idle keep-alive connections (max= on AsyncProxyPass;
 * max= here meant that before the cap existed). */
const char *apx_cmd_member(cmd_parms *cmd, void *dummy, const char *args)
{
    const char *err = NULL, *url, *key, *val, *http_url;
    int more;
    apx_balancer *b = cur_balancer;
    apx_member *mb;
    apr_uri_t uri;
    apx_origin_spec spec;
    int i;

    if ((err = only_in_balancer(cmd)))
        return err;
    url = ap_getword_conf(cmd->pool, &args);
    if (!*url)
        return apr_psprintf(cmd->pool, "%s: missing URL (usage: %s "
                            "http://host[:port] [weight=N] [route=R] [max=N] "
                            "[idle=N] [ttl=D])", cmd->cmd->name,
                            cmd->cmd->name);
    memset(&spec, 0, sizeof(spec));
    spec.tls_conf.verify = -1;
    http_url = url;
    if (!strncasecmp(url, "unix:", 5)
        && (err = apx_origin_parse_unix(cmd->pool, url, &spec, &http_url)))
        return apr_psprintf(cmd->pool, "%s: invalid value '%s': %s",
                            cmd->cmd->name, url, err);
    if (apr_uri_parse(cmd->pool, http_url, &uri) != APR_SUCCESS
        || !uri.scheme || !uri.hostname || !*uri.hostname)
        return apr_psprintf(cmd->pool, "%s: invalid value '%s': not an "
                            "absolute URL (http://host[:port], "
                            "https://host[:port] or unix:/PATH|http://host)",
                            cmd->cmd->name, url);
    if (!strcasecmp(uri.scheme, "https"))
        spec.tls = 1;
    else if (strcasecmp(uri.scheme, "http"))
        return apr_psprintf(cmd->pool, "%s: invalid value '%s': scheme "
                            "'%s' is not supported (http://, https://, "
                            "unix:)", cmd->cmd->name, url, uri.scheme);
    if ((uri.path && *uri.path && strcmp(uri.path, "/")) || uri.query
        || uri.fragment || uri.user)
        return apr_psprintf(cmd->pool, "%s: invalid value '%s': a member is "
                            "an origin, http://host[:port]; the path goes in "
                            "AsyncProxyPass ... balancer://%s/PATH",
                            cmd->cmd->name, url, b->name);
    if (b->members->nelts >= APX_BAL_MAX)
        return apr_psprintf(cmd->pool, "%s %s: more than %d members in "
                            "balancer %s", cmd->cmd->name, url, APX_BAL_MAX,
                            b->name);
    if (!uri.port)
        uri.port = spec.tls ? 443 : 80;
    spec.hostname = uri.hostname;
    spec.port = uri.port;

    mb = apr_array_push(b->members);
    memset(mb, 0, sizeof(*mb));
    mb->weight = 1;
    mb->pool_max = APX_DEFAULT_POOL_MAX;
    mb->pool_ttl = APX_DEFAULT_POOL_TTL;
    mb->host_hdr = uri.port_str ? apr_pstrcat(cmd->pool, uri.hostname, ":",
                                              uri.port_str, NULL)
                                : uri.hostname;
    while ((more = next_option(cmd, &args, &key, &val, &err)) > 0) {
        if (!strcasecmp(key, "weight") || !strcasecmp(key, "loadfactor"))
            err = apx_parse_uint(cmd, val, 1, APX_BAL_WEIGHT_MAX,
                                 &mb->weight);
        else if (!strcasecmp(key, "max"))
            err = apx_parse_uint(cmd, val, 0, 1000000, &mb->cap);
        else if (!strcasecmp(key, "idle"))
            err = apx_parse_uint(cmd, val, 0, 100000, &mb->pool_max);
        else if (!strcasecmp(key, "ttl"))
            err = apx_parse_duration(cmd, val, apr_time_from_msec(1),
                                     apr_time_from_sec(86400),
                                     &mb->pool_ttl);
        else if (!strcasecmp(key, "status")) {
            if (!strcasecmp(val, "drain") || !strcasecmp(val, "+N"))
                mb->drain = 1;
            else if (!strcasecmp(val, "up") || !strcasecmp(val, "-N"))
                mb->drain = 0;
            else
                return apr_psprintf(cmd->pool, "%s: invalid value '%s' for "
                                    "option status= (drain or +N: only its "
                                    "own sticky route; up or -N)",
                                    cmd->cmd->name, val);
            err = NULL;
        }
        else if (!strcasecmp(key, "route")) {
            if (!valid_name(val) || strlen(val) >= APX_BAL_ROUTE_MAX)
                return apr_psprintf(cmd->pool, "%s: invalid value '%s' for "
                                    "option route= (letters, digits, '.', "
                                    "'_', '-'; at most %d)", cmd->cmd->name,
                                    val, APX_BAL_ROUTE_MAX - 1);
            mb->route = val;
            err = NULL;
        }
        else if (apx_tls_option(cmd, &spec.tls_conf, key, val, &err)) {
            if (!spec.tls)
                return apr_psprintf(cmd->pool, "%s: option '%s=' is for an "
                                    "https:// member", cmd->cmd->name, key);
            if (err)
                return err;
        }
        else
            return apr_psprintf(cmd->pool, "%s: unknown option '%s' (known: "
                                "weight, route, max, idle, ttl, status, "
                                "tlsca, tlsname, tlsverify)", cmd->cmd->name,
                                key);
        if (err)
            return apr_psprintf(cmd->pool, "%s (option %s=)", err, key);
    }
    if (more < 0)
        return err;
    err = apx_backend_declare(cmd->pool, &spec, mb->pool_max, mb->pool_ttl,
                              &mb->be);
    if (err)
        return apr_psprintf(cmd->pool, "%s: invalid value '%s': %s",
                            cmd->cmd->name, url, err);
    mb->url = apx_backend_origin(cmd->pool, mb->be);
    for (i = 0; i < b->members->nelts - 1; i++) {
        const apx_member *o = &APR_ARRAY_IDX(b->members, i, apx_member);

        if (!strcasecmp(o->url, mb->url))
            return apr_psprintf(cmd->pool, "%s: invalid value '%s': already "
                                "a member of balancer %s", cmd->cmd->name,
                                url, b->name);
        if (mb->route && o->route && !strcmp(o->route, mb->route))
            return apr_psprintf(cmd->pool, "%s: invalid value '%s' for "
                                "option route=: member %s of balancer %s "
                                "has it already", cmd->cmd->name, mb->route,
                                o->url, b->name);
    }
    return NULL;
}

/* "10%" or "10": 0..100. */
static const char *parse_pct(cmd_parms *cmd, const char *key,
                             const char *val, unsigned *out)
{
    apr_size_t n = strlen(val);
    const char *num = n && val[n - 1] == '%'
                      ? apr_pstrmemdup(cmd->pool, val, n - 1) : val;

    if (apx_parse_uint(cmd, num, 0, 100, out))
        return apr_psprintf(cmd->pool, "%s: invalid value '%s' for option "
                            "%s= (a share, 0%%..100%%)", cmd->cmd->name, val,
                            key);
    return NULL;
}

static const char *parse_fail_status(cmd_parms *cmd, apx_balancer *b,
                                     const char *val)
{
    char *list = apr_pstrdup(cmd->pool, val), *tok, *last;
    unsigned st;

    memset(b->fail_status, 0, sizeof(b->fail_status));
    if (!strcasecmp(val, "none"))
        return NULL;
    for (tok = apr_strtok(list, ",", &last); tok;
         tok = apr_strtok(NULL, ",", &last)) {
        if (apx_parse_uint(cmd, tok, 500, 599, &st))
            return apr_psprintf(cmd->pool, "%s: invalid value '%s' for "
                                "option failstatus= (statuses 500..599 "
                                "separated by commas, or none)",
                                cmd->cmd->name, val);
        b->fail_status[st - 500] = 1;
    }
    return NULL;
}

static const char *parse_hash_key(cmd_parms *cmd, apx_balancer *b,
                                  const char *val)
{
    const char *name = strchr(val, ':');

    if (!strcasecmp(val, "client")) {
        b->hash_from = APX_HASHKEY_CLIENT;
        b->hash_name = NULL;
        return NULL;
    }
    if (name && name[1] && !strncasecmp(val, "cookie:", 7)) {
        b->hash_from = APX_HASHKEY_COOKIE;
        b->hash_name = name + 1;
        return NULL;
    }
    if (name && name[1] && !strncasecmp(val, "header:", 7)) {
        b->hash_from = APX_HASHKEY_HEADER;
        b->hash_name = name + 1;
        return NULL;
    }
    return apr_psprintf(cmd->pool, "%s: invalid value '%s' for option "
                        "hashkey= (cookie:NAME, header:NAME or client)",
                        cmd->cmd->name, val);
}

/* AsyncProxyBalancerSet key=value ... (inside the section) */
const char *apx_cmd_balancer_set(cmd_parms *cmd, void *dummy,
                                 const char *args)
{
    apx_balancer *b = cur_balancer;
    apx_bal_config *cfg;
    const char *err = NULL, *key, *val;
    int more;

    if ((err = only_in_balancer(cmd)))
        return err;
    cfg = &b->cfg;
    if (!*args)
        return apr_psprintf(cmd->pool, "%s: missing key=value",
                            cmd->cmd->name);
    while ((more = next_option(cmd, &args, &key, &val, &err)) > 0) {
        err = NULL;
        if (!strcasecmp(key, "lbmethod")) {
            if (!strcasecmp(val, "p2c-ewma") || !strcasecmp(val, "p2c"))
                cfg->method = APX_BAL_P2C_EWMA;
            else if (!strcasecmp(val, "wrr")
                     || !strcasecmp(val, "byrequests"))
                cfg->method = APX_BAL_WRR;
            else if (!strcasecmp(val, "hash"))
                cfg->method = APX_BAL_HASH;
            else
                return apr_psprintf(cmd->pool, "%s: invalid value '%s' for "
                                    "option lbmethod= (p2c-ewma, wrr or "
                                    "hash)", cmd->cmd->name, val);
        }
        else if (!strcasecmp(key, "hashkey")) {
            err = parse_hash_key(cmd, b, val);
        }
        else if (!strcasecmp(key, "stickysession")) {
            const char *bar = strchr(val, '|');

            if (!*val || bar == val || (bar && !bar[1]))
                return apr_psprintf(cmd->pool, "%s: invalid value '%s' for "
                                    "option stickysession= (NAME, or "
                                    "COOKIE|PARAMETER)", cmd->cmd->name,
                                    val);
            b->sticky_cookie = bar ? apr_pstrmemdup(cmd->pool, val, bar - val)
                                   : val;
            b->sticky_param = bar ? bar + 1 : val;
        }
        else if (!strcasecmp(key, "failures")) {
            err = apx_parse_uint(cmd, val, 0, 10000, &cfg->consecutive);
        }
        else if (!strcasecmp(key, "ejecttime")) {
            err = apx_parse_duration(cmd, val, apr_time_from_msec(100),
                                     apr_time_from_sec(86400),
                                     &cfg->base_eject);
            /* the backoff grows to ten ejections' worth, at least the
             * default cap */
            if (!err)
                cfg->max_eject = cfg->base_eject * 10 > cfg->max_eject
                                 ? cfg->base_eject * 10 : cfg->max_eject;
        }
        else if (!strcasecmp(key, "maxeject")) {
            err = parse_pct(cmd, key, val, &cfg->max_eject_pct);
        }
        else if (!strcasecmp(key, "retrybudget")) {
            err = parse_pct(cmd, key, val, &cfg->budget_pct);
            /* 0 %: no retries at all, not even the floor of 10/s */
            if (!err && cfg->budget_pct == 0)
                cfg->min_retry_rps = 0;
        }
        else if (!strcasecmp(key, "slowstart")) {
            if (!strcmp(val, "0") || !strcasecmp(val, "off"))
                cfg->slow_start = 0;
            else
                err = apx_parse_duration(cmd, val, 0,
                                         apr_time_from_sec(3600),
                                         &cfg->slow_start);
        }
        else if (!strcasecmp(key, "failstatus")) {
            err = parse_fail_status(cmd, b, val);
        }
        else if (!strcasecmp(key, "queue")) {
            /* per member, all children together; 0: no waiting at all */
            if (!strcasecmp(val, "none") || !strcasecmp(val, "unlimited"))
                b->queue_limited = 0;
            else if (!(err = apx_parse_uint(cmd, val, 0, 10000000,
                                            &b->queue_max)))
                b->queue_limited = 1;
        }
        else if (!strcasecmp(key, "queuetimeout")) {
            err = apx_parse_duration(cmd, val, apr_time_from_msec(1),
                                     apr_time_from_sec(3600),
                                     &b->queue_timeout);
        }
        else {
            return apr_psprintf(cmd->pool, "%s: unknown option '%s' (known: "
                                "lbmethod, hashkey, stickysession, failures, "
                                "ejecttime, maxeject, retrybudget, slowstart, "
                                "failstatus, queue, queuetimeout)",
                                cmd->cmd->name, key);
        }
        if (err)
            return apr_psprintf(cmd->pool, "%s (option %s=)", err, key);
    }
    return more < 0 ? err : NULL;
}

/* expect=NNN or expect=LO-HI, statuses 100..599. */
static const char *parse_expect(cmd_parms *cmd, const char *val,
                                apx_check_conf *cc)
{
    const char *dash = strchr(val, '-');
    const char *lo = dash ? apr_pstrmemdup(cmd->pool, val, dash - val) : val;
    const char *hi = dash ? dash + 1 : val;

    if (apx_parse_uint(cmd, lo, 100, 599, &cc->expect_lo)
        || apx_parse_uint(cmd, hi, 100, 599, &cc->expect_hi)
        || cc->expect_lo > cc->expect_hi)
        return apr_psprintf(cmd->pool, "%s: invalid value '%s' for option "
                            "expect= (a status, or a range LO-HI, within "
                            "100..599)", cmd->cmd->name, val);
    return NULL;
}

/* AsyncProxyHealthCheck METHOD PATH [interval=D] [timeout=D] [passes=N]
 * [fails=N] [expect=LO-HI] [host=NAME] (inside the section). passes= and
 * fails= are also the group's (apx_bal_config), for the engine's
 * bookkeeping of the verdict. */
const char *apx_cmd_health_check(cmd_parms *cmd, void *dummy,
                                 const char *args)
{
    apx_balancer *b = cur_balancer;
    apx_check_conf *cc;
    const char *err = NULL, *key, *val, *method, *path, *c;
    int more, timeout_set = 0;

    if ((err = only_in_balancer(cmd)))
        return err;
    if (b->check)
        return apr_psprintf(cmd->pool, "%s: balancer %s has one already",
                            cmd->cmd->name, b->name);
    method = ap_getword_conf(cmd->pool, &args);
    path = ap_getword_conf(cmd->pool, &args);
    if (!*method || !*path)
        return apr_psprintf(cmd->pool, "%s: usage: %s METHOD PATH "
                            "[interval=D] [timeout=D] [passes=N] [fails=N] "
                            "[expect=LO-HI] [host=NAME]", cmd->cmd->name,
                            cmd->cmd->name);
    for (c = method; *c; c++)
        if (!apr_isupper(*c))
            return apr_psprintf(cmd->pool, "%s: invalid method '%s' "
                                "(GET, HEAD, OPTIONS ...: capital letters)",
                                cmd->cmd->name, method);
    if (*path != '/' || strpbrk(path, " \t\r\n"))
        return apr_psprintf(cmd->pool, "%s: invalid path '%s' (it starts "
                            "with '/')", cmd->cmd->name, path);
    cc = apr_pcalloc(cmd->pool, sizeof(*cc));
    cc->method = method;
    cc->path = path;
    cc->interval = APX_CHECK_INTERVAL;
    cc->timeout = APX_CHECK_TIMEOUT;
    cc->passes = 2;
    cc->fails = 3;
    cc->expect_lo = 200;
    cc->expect_hi = 399;
    while ((more = next_option(cmd, &args, &key, &val, &err)) > 0) {
        err = NULL;
        if (!strcasecmp(key, "interval"))
            err = apx_parse_duration(cmd, val, apr_time_from_msec(100),
                                     apr_time_from_sec(3600), &cc->interval);
        else if (!strcasecmp(key, "timeout")) {
            err = apx_parse_duration(cmd, val, apr_time_from_msec(10),
                                     apr_time_from_sec(3600), &cc->timeout);
            timeout_set = 1;
        }
        else if (!strcasecmp(key, "passes") || !strcasecmp(key, "rise"))
            err = apx_parse_uint(cmd, val, 1, 1000, &cc->passes);
        else if (!strcasecmp(key, "fails") || !strcasecmp(key, "fall"))
            err = apx_parse_uint(cmd, val, 1, 1000, &cc->fails);
        else if (!strcasecmp(key, "expect"))
            err = parse_expect(cmd, val, cc);
        else if (!strcasecmp(key, "host")) {
            if (!*val || strpbrk(val, " \t\r\n/"))
                return apr_psprintf(cmd->pool, "%s: invalid value '%s' for "
                                    "option host= (a host name, with a "
                                    "port if needed)", cmd->cmd->name, val);
            cc->host = val;
        }
        else
            return apr_psprintf(cmd->pool, "%s: unknown option '%s' (known: "
                                "interval, timeout, passes, fails, expect, "
                                "host)", cmd->cmd->name, key);
        if (err)
            return apr_psprintf(cmd->pool, "%s (option %s=)", err, key);
    }
    if (more < 0)
        return err;
    /* a probe ends before the next is due: the lease of one interval
     * covers it, so two children never probe a member at once */
    if (!timeout_set && cc->timeout > cc->interval)
        cc->timeout = cc->interval;
    if (cc->timeout > cc->interval)
        return apr_psprintf(cmd->pool, "%s: timeout=%" APR_TIME_T_FMT "ms is "
                            "longer than interval=%" APR_TIME_T_FMT "ms (a "
                            "probe ends before the next is due)",
                            cmd->cmd->name, apr_time_as_msec(cc->timeout),
                            apr_time_as_msec(cc->interval));
    b->cfg.passes = cc->passes;
    b->cfg.fails = cc->fails;
    b->check = cc;
    return NULL;
}
