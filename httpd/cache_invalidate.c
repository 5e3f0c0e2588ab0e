/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */


/* cache_invalidate.c — RFC 9111 section 4.4: a non-error answer to an
 * unsafe method takes what is stored for its target and for a same-origin
 * Location / Content-Location out of the store, leaving a mark so a fetch
 * begun before it is not stored.
 *
 * Threads: inside the request's coroutine, on the thread that owns the
 * request.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "httpd.h"
#include "http_config.h"
#include "http_core.h"
#include "http_log.h"
#include "http_protocol.h"
#include "http_request.h"
#include "apr_buckets.h"
#include "apr_lib.h"
#include "apr_strings.h"
#include "apr_uri.h"

#include "cache_int.h"

APLOG_USE_MODULE(asyncproxy);
extern module AP_MODULE_DECLARE_DATA asyncproxy_module;

/* ------------------------------------------------------------------ */
/* invalidation (RFC 9111 section 4.4)                                  */

/* An authority without the scheme's default port, for comparing. */
static const char *bare_authority(apr_pool_t *p, const char *hostinfo,
                                  const char *scheme)
{
    const char *dflt = !strcasecmp(scheme, "https") ? ":443" : ":80";
    apr_size_t n = strlen(hostinfo), d = strlen(dflt);

    if (n > d && !strcmp(hostinfo + n - d, dflt))
        return apr_pstrmemdup(p, hostinfo, n - d);
    return hostinfo;
}

static int same_authority(apr_pool_t *p, const char *a, const char *b,
                          const char *scheme)
{
    return a && b && !strcasecmp(bare_authority(p, a, scheme),
                                 bare_authority(p, b, scheme));
}

/* A path of this server under this request's mapping -> the backend
 * target a GET for it is fetched with (as apx_map_target() makes it), or
 * NULL when it lies outside the mapping. A longer mapping that would
 * take the path instead is not looked for: its entries stay. */
static const char *client_path_target(apx_hcache *hc, const char *path,
                                      const char *query)
{
    const apx_mapping *m = hc->map;
    const char *rest;
    apr_size_t blen = strlen(m->base);

    if (strncmp(path, m->path, m->path_len)
        || !(m->path_len == 0 || m->path[m->path_len - 1] == '/'
             || path[m->path_len] == '\0' || path[m->path_len] == '/'))
        return NULL;
    rest = path + m->path_len;
    if (blen && m->base[blen - 1] == '/' && *rest == '/')
        rest++;
    return apr_pstrcat(hc->r->pool, m->base, rest, query ? "?" : "", query,
                       NULL);
}

/* The backend target that a Location or Content-Location value names when
 * it is of this request's origin (RFC 9111 section 4.4: never another
 * host), or NULL. The value is the backend's, before
 * AsyncProxyPassReverse: an absolute URL of the backend names a backend
 * target; one of the client's Host, or a reference relative to the
 * client's URL (as the client resolves it), a path of this server. */
static const char *same_origin_target(apx_hcache *hc, const char *value)
{
    request_rec *r = hc->r;
    apr_pool_t *p = r->pool;
    const char *scheme = ap_http_scheme(r);
    const char *host = apr_table_get(r->headers_in, "Host");
    char *v, *query, *frag, *path;
    apr_uri_t u;

    if (!value || !*value)
        return NULL;
    v = apr_pstrdup(p, value);
    if ((frag = strchr(v, '#')))
        *frag = '\0';
    if (strstr(v, "://") || (v[0] == '/' && v[1] == '/')) {
        if (apr_uri_parse(p, v, &u) != APR_SUCCESS || !u.hostinfo)
            return NULL;
        path = u.path && *u.path ? u.path : "/";
        if (u.scheme && !strcasecmp(u.scheme, "http")
            && same_authority(p, u.hostinfo, hc->hostport, "http"))
            return apr_pstrcat(p, path, u.query ? "?" : "", u.query, NULL);
        if ((u.scheme && strcasecmp(u.scheme, scheme))
            || !same_authority(p, u.hostinfo, host, scheme))
            return NULL;
        return client_path_target(hc, path, u.query);
    }
    if ((query = strchr(v, '?')))
        *query++ = '\0';
    if (*v == '/') {
        path = v;
    }
    else {
        /* relative to the client's path: its directory, or itself for a
         * bare "?query" */
        const char *end, *cur = r->parsed_uri.path ? r->parsed_uri.path : "/";

        if (!*v) {
            path = apr_pstrdup(p, cur);
        }
        else {
            end = strrchr(cur, '/');
            path = apr_pstrcat(p, apr_pstrmemdup(p, cur, end ? (apr_size_t)
                                                 (end - cur) + 1 : 0),
                               v, NULL);
        }
    }
    /* no dot-segment removal: such a reference is left alone */
    if (strstr(path, "/./") || strstr(path, "/../") || *path != '/'
        || (strlen(path) >= 2 && !strcmp(path + strlen(path) - 2, "/."))
        || (strlen(path) >= 3 && !strcmp(path + strlen(path) - 3, "/..")))
        return NULL;
    return client_path_target(hc, path, query);
}

/* Replaces what a primary key holds by an invalidation's mark; 1 when it
 * held something. */
static int forget(const char *key, apr_size_t klen)
{
    apr_time_t now = apr_time_now();
    int had = apx_cache_invalidate(apx__hc_store, key, klen);

    apx__hc_put_marker(key, klen, OBJ_GONE, NULL, 0, 0, now + GONE_TTL, now);
    return had;
}

/* A non-error answer to an unsafe method: what is stored for the target
 * and for a same-origin Location / Content-Location goes, every Vary
 * variant with it (they hang off the primary key's marker). A fetch of
 * one of them still in flight is not stored (apx__hc_still_current()). */
void apx_hcache_invalidate(apx_hcache *hc, const apx_hcache_resp *resp)
{
    static const char *const fields[] = { "Location", "Content-Location",
                                          NULL };
    request_rec *r = hc->r;
    int i, n;

    n = forget(hc->key, hc->klen);
    for (i = 0; fields[i]; i++) {
        const char *t = same_origin_target(hc, resp->field(resp->baton,
                                                           fields[i], 0));
        const char *k;

        if (!t)
            continue;
        k = apr_pstrcat(r->pool, hc->kpre, hc->hostport, t, NULL);
        if (strcmp(k, hc->key))
            n += forget(k, strlen(k));
    }
    apr_table_setn(r->notes, "asyncproxy-cache-invalidated",
                   apr_itoa(r->pool, n));
}
