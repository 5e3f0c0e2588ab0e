/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* map.c — which requests are ours: translate_name (server
 * mappings, longest prefix, "!" exclusions), map_to_storage (no file walk),
 * fixups (the <Location> form), and the backend target built from the raw
 * request URI (path, query and percent-encoding forwarded unchanged).
 *
 * Threads: the request's thread (an MPM thread or a module worker running
 * an adopted connection's later request); configuration is read-only.
 */
#include "httpd.h"
#include "http_config.h"
#include "http_core.h"
#include "http_log.h"
#include "http_protocol.h"
#include "http_request.h"
#include "mod_core.h"
#include "apr_lib.h"
#include "apr_strings.h"

#include "conf.h"
#include "child.h"
#include "map.h"
#include "upstream.h"

APLOG_USE_MODULE(asyncproxy);
extern module AP_MODULE_DECLARE_DATA asyncproxy_module;

/* ------------------------------------------------------------------ */
/* mapping                                                              */

/* "/app" matches "/app" and "/app/x" but not "/apple"; "/app/" matches
 * what starts with it. */
static int prefix_matches(const char *uri, const char *path, apr_size_t len)
{
    if (strncmp(uri, path, len))
        return 0;
    return len == 0 || path[len - 1] == '/' || uri[len] == '\0'
           || uri[len] == '/';
}

/* The longest matching prefix; a longer "!" mapping wins and means the
 * request is not proxied (the caller checks excluded). */
static const apx_mapping *find_map(const apr_array_header_t *maps,
                                   const char *uri)
{
    const apx_mapping *best = NULL;
    int i;

    for (i = 0; i < maps->nelts; i++) {
        const apx_mapping *m = APR_ARRAY_IDX(maps, i, const apx_mapping *);

        if ((!best || m->path_len > best->path_len)
            && prefix_matches(uri, m->path, m->path_len))
            best = m;
    }
    return best;
}

static int hex_value(int ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    return (apr_tolower(ch) - 'a') + 10;
}

/* Next byte of a raw path, %XX decoded; advances *p. */
static int next_decoded(const char **p, const char *end)
{
    const char *s = *p;

    if (s[0] == '%' && end - s >= 3 && apr_isxdigit(s[1])
        && apr_isxdigit(s[2])) {
        *p = s + 3;
        return hex_value(s[1]) * 16 + hex_value(s[2]);
    }
    *p = s + 1;
    return (unsigned char)s[0];
}

/* Path segments as a backend may read them: a segment ends at '/' and also
 * at '\' or an encoded slash ("%2F", "%5C": AllowEncodedSlashes On or
 * NoDecode lets them through, and some backends decode before resolving),
 * and only what precedes a ';' counts (Tomcat and Jetty read "..;x" as
 * ".."). next_segment() classifies the segment at *ps and moves past it. */
enum { SEG_NAME, SEG_DOT, SEG_DOTDOT, SEG_EMPTY };

static int next_segment(const char **ps, const char *end)
{
    const char *p = *ps;
    int dots = 0, other = 0, params = 0, ch;

    while (p < end) {
        ch = next_decoded(&p, end);
        if (ch == '/' || ch == '\\')
            break;
        if (ch == ';')
            params = 1;
        else if (params)
            continue;
        else if (ch == '.')
            dots++;
        else
            other++;
    }
    *ps = p;
    if (other || dots > 2)
        return SEG_NAME;
    return dots == 2 ? SEG_DOTDOT : dots == 1 ? SEG_DOT : SEG_EMPTY;
}

/* 1 when a segment of the raw path s..end is a dot segment: the backend
 * would resolve it, possibly above the mapping's base. */
static int has_dot_segment(const char *s, const char *end)
{
    while (s < end) {
        int kind = next_segment(&s, end);

        if (kind == SEG_DOT || kind == SEG_DOTDOT)
            return 1;
    }
    return 0;
}

/* 1 when resolving the dot segments of s..end climbs above its start: the
 * backend would then leave the mapping's base path. Empty segments count
 * for nothing (a backend may merge slashes). */
static int leaves_base(const char *s, const char *end)
{
    long depth = 0;

    while (s < end) {
        switch (next_segment(&s, end)) {
        case SEG_DOTDOT:
            if (--depth < 0)
                return 1;
            break;
        case SEG_NAME:
            depth++;
            break;
        default:
            break;
        }
    }
    return 0;
}

/* The path part of r->unparsed_uri (origin-form, or absolute-form
 * "http://host/..."): start and end (at '?' or '#'). */
static const char *raw_path(const char *u, const char **end)
{
    const char *p = u;

    if (*u != '/') {
        const char *scheme_end = strstr(u, "://");

        if (scheme_end) {
            p = scheme_end + 3;
            p += strcspn(p, "/?#");
        }
    }
    *end = p + strcspn(p, "?#");
    return p;
}

/* What follows the mapping's prefix in the raw path, bytes unchanged; NULL
 * when the raw path does not spell the prefix byte for byte once decoded
 * (httpd merged slashes or removed dot segments), or when the rest holds a
 * dot segment. */
static const char *raw_rest(apr_pool_t *p, const char *path, const char *end,
                            const char *prefix, apr_size_t len)
{
    const char *s = path;
    apr_size_t i;

    for (i = 0; i < len; i++) {
        if (s >= end || next_decoded(&s, end) != (unsigned char)prefix[i])
            return NULL;
    }
    if (has_dot_segment(s, end))
        return NULL;
    return apr_pstrmemdup(p, s, end - s);
}

/* The request target for the backend: the mapping's base, the rest of the
 * client's path after the prefix (raw bytes: percent-encoding unchanged),
 * and the raw query. NULL when the path would leave the base (400). */
const char *apx_map_target(request_rec *r, const apx_mapping *m)
{
    const char *end, *path = raw_path(r->unparsed_uri, &end);
    const char *rest, *query = NULL, *base = m->base;
    apr_size_t blen = strlen(base);

    rest = raw_rest(r->pool, path, end, m->path, m->path_len);
    if (!rest) {
        /* Fall back on httpd's normalised path, re-encoded. httpd removed
         * the "." and ".." it knows, but not "..;" nor a ".." that an
         * encoded slash hides until after its normalisation (r->uri then
         * holds a plain "../"): refuse what would still climb out. */
        const char *u = r->uri;

        if (!strncmp(u, m->path, m->path_len))
            u += m->path_len;
        if (leaves_base(u, u + strlen(u)))
            return NULL;
        rest = ap_escape_uri(r->pool, u);
    }
    if (*end == '?') {
        query = end + 1;
        query = apr_pstrmemdup(r->pool, query, strcspn(query, "#"));
    }
    if (blen && base[blen - 1] == '/' && *rest == '/')
        rest++;
    return apr_pstrcat(r->pool, base, rest, query ? "?" : "", query, NULL);
}

/* Marks r as ours (mod_proxy does the same with PROXYREQ_REVERSE, which
 * also makes httpd keep the backend's Date and Server fields). Returns OK,
 * or HTTP_BAD_REQUEST for a path that would leave the mapping's base. */
static int claim_request(request_rec *r, const apx_mapping *m)
{
    const char *target = apx_map_target(r, m);

    if (!target) {
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, APXLOGNO(00127)
                      "refused: the path of '%s' would leave the base of "
                      "AsyncProxyPass %s %s on the backend", r->unparsed_uri,
                      m->path, m->url);
        return HTTP_BAD_REQUEST;
    }
    ap_set_module_config(r->request_config, &asyncproxy_module, (void *)m);
    r->handler = "asyncproxy";
    r->proxyreq = PROXYREQ_REVERSE;
    r->filename = apr_pstrcat(r->pool, "asyncproxy:", m->origin, target,
                              NULL);
    return OK;
}

/* Max-Forwards = 1*DIGIT (RFC 9110 §7.6.2); -1 when invalid. A count
 * above MAX_FORWARDS_CAP is as good as unlimited and is clamped to it. */
#define MAX_FORWARDS_CAP 1000000000L
static long parse_max_forwards(const char *v)
{
    long n = 0;

    if (!*v)
        return -1;
    for (; *v; v++) {
        if (!apr_isdigit(*v))
            return -1;
        if (n <= MAX_FORWARDS_CAP)
            n = n * 10 + (*v - '0');
    }
    return n > MAX_FORWARDS_CAP ? MAX_FORWARDS_CAP : n;
}

/* The methods of a proxied path as far as the proxy is concerned (the
 * backend decides the rest): all but CONNECT; httpd's Allow adds TRACE
 * unless TraceEnable is off. */
static void set_allowed(request_rec *r)
{
    r->allowed = (AP_METHOD_BIT << M_GET) | (AP_METHOD_BIT << M_POST)
                 | (AP_METHOD_BIT << M_PUT) | (AP_METHOD_BIT << M_DELETE)
                 | (AP_METHOD_BIT << M_OPTIONS) | (AP_METHOD_BIT << M_PATCH);
    r->allowed_methods->method_mask = r->allowed;
}

/* What a proxy answers itself, before any backend exchange (RFC 9110
 * §7.6.2, §9.3.6): DECLINED to proxy r, else the hook's result (DONE once
 * answered, or an error status).
 *   CONNECT                  405: a reverse proxy opens no tunnels.
 *   TRACE                    as httpd answers its own: 405 when TraceEnable
 *                            is off; echoed when Max-Forwards is 0.
 *   OPTIONS, Max-Forwards 0  200 with Allow, no body.
 *   Max-Forwards n > 0       forwarded as n - 1 (any method, as mod_proxy;
 *                            0 on other methods goes on unchanged).
 *   Max-Forwards invalid     400 (as mod_proxy): a hop that cannot count
 *                            must not pass the request on. */
static int answer_locally(request_rec *r)
{
    const core_server_config *core =
        ap_get_core_module_config(r->server->module_config);
    const char *v = apr_table_get(r->headers_in, "Max-Forwards");
    request_rec *first = r;
    long n = -1;

    if (r->method_number == M_CONNECT) {
        set_allowed(r);
        return HTTP_METHOD_NOT_ALLOWED;
    }
    /* An internal redirect (ErrorDocument, ...) shares headers_in with the
     * request it came from: count this hop once per client request. */
    while (first->prev)
        first = first->prev;
    if (v && apr_table_get(first->notes, "asyncproxy-max-forwards"))
        v = NULL;
    else if (v)
        apr_table_setn(first->notes, "asyncproxy-max-forwards", v);
    if (v && (n = parse_max_forwards(v)) < 0) {
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, APXLOGNO(00128)
                      "invalid Max-Forwards '%s' in the request", v);
        return HTTP_BAD_REQUEST;
    }
    if (r->method_number == M_TRACE
        && (n == 0 || core->trace_enable == AP_TRACE_DISABLE)) {
        set_allowed(r);
        return ap_send_http_trace(r);
    }
    if (r->method_number == M_OPTIONS && n == 0) {
        set_allowed(r);
        if (ap_send_http_options(r) != OK)
            return DECLINED;
        ap_set_content_length(r, 0);
        return DONE;
    }
    if (n > 0)
        apr_table_setn(r->headers_in, "Max-Forwards",
                       apr_ltoa(r->pool, n - 1));
    return DECLINED;
}

/* Answers r here, or claims it for m. */
static int take_request(request_rec *r, const apx_mapping *m)
{
    int rc = answer_locally(r);

    return rc != DECLINED ? rc : claim_request(r, m);
}

int apx_map_translate(request_rec *r)
{
    const apx_dir_conf *dc;
    const apx_srv_conf *sc;
    const apx_mapping *m;

    if (r->proxyreq || !r->uri || r->uri[0] != '/')
        return DECLINED;
    /* httpd walked the <Location>s before translate_name: an
     * AsyncProxyPass inside one wins over the server's list, as
     * ProxyPass does. */
    dc = ap_get_module_config(r->per_dir_config, &asyncproxy_module);
    m = dc ? dc->map : NULL;
    if (!m) {
        sc = ap_get_module_config(r->server->module_config,
                                  &asyncproxy_module);
        m = sc ? find_map(sc->maps, r->uri) : NULL;
    }
    if (!m || m->excluded)
        return DECLINED;
    return take_request(r, m);
}

/* No file walk for a proxied request. */
int apx_map_to_storage(request_rec *r)
{
    return ap_get_module_config(r->request_config, &asyncproxy_module)
           ? OK : DECLINED;
}

/* A <Location> AsyncProxyPass that translate_name did not see (another
 * module translated first): claim the request now. */
int apx_map_fixups(request_rec *r)
{
    const apx_dir_conf *dc;

    if (r->proxyreq
        || ap_get_module_config(r->request_config, &asyncproxy_module))
        return DECLINED;
    dc = ap_get_module_config(r->per_dir_config, &asyncproxy_module);
    if (!dc || !dc->map || dc->map->excluded)
        return DECLINED;
    return take_request(r, dc->map);
}

const apx_mapping *apx_map_match(request_rec *r)
{
    const apx_mapping *m;
    const apx_dir_conf *dc;

    m = ap_get_module_config(r->request_config, &asyncproxy_module);
    if (m)
        return m;
    dc = ap_get_module_config(r->per_dir_config, &asyncproxy_module);
    if (dc && dc->map && !dc->map->excluded)
        return dc->map;
    return NULL;
}
