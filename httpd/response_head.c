/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* response_head.c — the backend's response head: read and parsed into the
 * exchange's buffer, interim (1xx) responses forwarded or dropped, the
 * final head checked (Connection tokens, framing), its fields read for
 * others (the cache) and applied to r, Location & co. mapped back
 * (AsyncProxyPassReverse).
 *
 * Threads: inside the request's coroutine, on the thread that owns the
 * request.
 * Invariant: nothing of a malformed head reaches r or the client.
 */

#include "httpd.h"
#include "http_config.h"
#include "http_core.h"
#include "http_log.h"
#include "http_protocol.h"
#include "http_request.h"
#include "util_filter.h"
#include "apr_lib.h"
#include "apr_strings.h"

#include "exchange.h"

APLOG_USE_MODULE(asyncproxy);
extern module AP_MODULE_DECLARE_DATA asyncproxy_module;

static int bad_response(apx_exchange *px, const char *why)
{
    ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, px->r, APXLOGNO(00103)
                  "bad response from backend %s for %s: %s",
                  px->be->hostport, px->url, why);
    return apx_ex_backend_failed(px, HTTP_BAD_GATEWAY, "bad-response");
}

/* Sends a 1xx other than 100 on to the client (103 Early Hints, 102). */
static void forward_interim(apx_exchange *px)
{
    request_rec *r = px->r;
    const apx_http_resp *h = &px->resp;
    apr_table_t *saved = r->headers_out;
    int status = r->status;
    const char *line = r->status_line;
    apx_http_conn_tokens conn;
    unsigned i;

    apx_http_conn_tokens_init(&conn);
    for (i = 0; i < h->nfields; i++)
        if (apx_http_token_eqs(h->fields[i].name, h->fields[i].name_len,
                               "Connection"))
            apx_http_conn_tokens_add(&conn, h->fields[i].value,
                                     h->fields[i].value_len);
    r->headers_out = apr_table_make(r->pool, (int)h->nfields + 1);
    for (i = 0; i < h->nfields; i++) {
        const apx_http_field *f = &h->fields[i];

        if (apx_http_is_hop_by_hop(f->name, f->name_len, &conn))
            continue;
        apr_table_addn(r->headers_out,
                       apr_pstrmemdup(r->pool, f->name, f->name_len),
                       apr_pstrmemdup(r->pool, f->value, f->value_len));
    }
    r->status = h->status;
    r->status_line = apr_psprintf(r->pool, "%d %.*s", h->status,
                                  (int)h->reason_len, h->reason);
    ap_send_interim_response(r, 1);
    r->headers_out = saved;
    r->status = status;
    r->status_line = line;
}

/* The backend's connection ended before a complete head: retried once on
 * a fresh connection when that is safe, else 502. */
static int head_cut_short(apx_exchange *px, int err)
{
    if (!px->got_bytes && px->reused && px->idempotent && !px->body_started)
        return STEP_RETRY;
    if (px->send_errno) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR,
                      APR_FROM_OS_ERROR(px->send_errno), px->r,
                      APXLOGNO(00120) "backend %s stopped reading the "
                      "request body for %s and sent no response",
                      px->be->hostport, px->url);
        return apx_ex_backend_failed(px, HTTP_BAD_GATEWAY, "send-failed");
    }
    ap_log_rerror(APLOG_MARK, APLOG_ERR, err ? APR_FROM_OS_ERROR(err) : 0,
                  px->r, APXLOGNO(00104) "backend %s closed the connection "
                  "before a complete response head for %s (%s)",
                  px->be->hostport, px->url,
                  px->got_bytes ? "after part of it" : "nothing received");
    return apx_ex_backend_failed(px, HTTP_BAD_GATEWAY, "bad-response");
}

/* Reads and checks the final response head; interim ones are swallowed
 * (100) or forwarded. The bytes after the head stay in rbuf. */
int apx_ex_read_head(apx_exchange *px)
{
    apr_time_t deadline = apr_time_now() + px->timeout;
    apx_http_resp *h = &px->resp;
    unsigned interim = 0;
    apr_status_t rv;
    int rc;
    size_t used;

    apx_http_resp_reset(h);
    for (;;) {
        if (px->roff < px->rlen) {
            rv = apx_http_resp_feed(h, px->rbuf + px->roff,
                                    px->rlen - px->roff, &used);
            px->roff += used;
            if (rv == APR_SUCCESS && !apx_http_resp_is_interim(h))
                return STEP_OK;
            if (rv == APR_SUCCESS) {
                if (h->status == HTTP_SWITCHING_PROTOCOLS && !px->upgrade)
                    return bad_response(px, "101 Switching Protocols to a "
                                        "request that asked for no upgrade");
                if (h->status == HTTP_SWITCHING_PROTOCOLS) {
                    if (!apx_ex_upgrade_accepted(px))
                        return bad_response(px, "101 Switching Protocols "
                                            "to another protocol than the "
                                            "one asked for");
                    return STEP_OK;
                }
                if (++interim > MAX_INTERIM)
                    return bad_response(px, "too many interim responses");
                if (h->status != HTTP_CONTINUE)
                    forward_interim(px);
                apx_http_resp_reset(h);
                continue;
            }
            if (rv != APR_INCOMPLETE)
                return bad_response(px, h->errstr ? h->errstr
                                                  : "malformed head");
        }
        rc = apx_ex_recv(px, deadline, "waiting for the response head");
        if (rc == STEP_FAIL)
            return STEP_FAIL;
        if (rc != RECV_DATA)
            return head_cut_short(px, rc == RECV_ERROR ? px->recv_errno : 0);
    }
}

/* value, when it is origin (olen bytes: scheme and authority, compared
 * case-insensitively) followed by base (blen bytes, exactly), as path on
 * this server; else NULL. */
static const char *map_one(request_rec *r, const char *path,
                           const char *origin, apr_size_t olen,
                           const char *base, apr_size_t blen,
                           const char *value)
{
    const char *rest;
    apr_size_t plen;

    if (strncasecmp(value, origin, olen) || strncmp(value + olen, base, blen))
        return NULL;
    rest = value + olen + blen;
    /* "http://b:8080" + "" must not take "http://b:80801/" */
    if (!blen && *rest && *rest != '/' && *rest != '?' && *rest != '#')
        return NULL;
    plen = strlen(path);
    if (plen && path[plen - 1] == '/' && *rest == '/')
        rest++;
    return ap_construct_url(r->pool, apr_pstrcat(r->pool, path, rest, NULL),
                            r);
}

/* balancer://NAME/BASE: tried with each member's origin (a unix: member's
 * is its http://host). */
static const char *map_group(request_rec *r, const apx_reverse *rv,
                             const char *value)
{
    apx_balancer *b = apx_balancer_find(rv->group);
    const char *mapped = NULL, *origin, *bar;
    int i;

    for (i = 0; b && !mapped && i < b->members->nelts; i++) {
        origin = APR_ARRAY_IDX(b->members, i, apx_member).url;
        if (!strncmp(origin, "unix:", 5) && (bar = strchr(origin, '|')))
            origin = bar + 1;
        mapped = map_one(r, rv->path, origin, strlen(origin), rv->url,
                         rv->url_len, value);
    }
    return mapped;
}

/* AsyncProxyPassReverse: a backend URL in Location & co. becomes the same
 * resource's URL on this server. The scheme and authority compare
 * case-insensitively, the path exactly. */
static const char *map_reverse(request_rec *r, const apr_array_header_t *rvs,
                               const char *value)
{
    const char *mapped;
    int i;

    for (i = 0; rvs && i < rvs->nelts; i++) {
        const apx_reverse *rv = &APR_ARRAY_IDX(rvs, i, apx_reverse);
        const char *auth_end;
        apr_size_t alen;

        if (rv->group) {
            mapped = map_group(r, rv, value);
        }
        else {
            auth_end = strchr(rv->url + 7, '/');
            alen = auth_end ? (apr_size_t)(auth_end - rv->url) : rv->url_len;
            mapped = map_one(r, rv->path, rv->url, alen, rv->url + alen,
                             rv->url_len - alen, value);
        }
        if (mapped)
            return mapped;
    }
    return NULL;
}

static const char *reverse_location(apx_exchange *px, const char *value)
{
    request_rec *r = px->r;
    const apx_dir_conf *dc = ap_get_module_config(r->per_dir_config,
                                                  &asyncproxy_module);
    const char *mapped = NULL;

    if (dc)
        mapped = map_reverse(r, dc->reverses, value);
    if (!mapped)
        mapped = map_reverse(r, px->rq->sconf->reverses, value);
    return mapped ? mapped : value;
}

void apx_ex_each_field(apx_exchange *px,
                       void (*fn)(void *baton, const char *name,
                                  const char *value),
                       void *baton)
{
    request_rec *r = px->r;
    const apx_http_resp *h = &px->resp;
    unsigned i;

    for (i = 0; i < h->nfields; i++) {
        const apx_http_field *f = &h->fields[i];
        char *name, *value;

        if (apx_http_is_hop_by_hop(f->name, f->name_len, &px->conn)
            || apx_http_token_eqs(f->name, f->name_len, "Content-Length")
            || apx_http_token_eqs(f->name, f->name_len, "Transfer-Encoding")
            || apx_http_token_eqs(f->name, f->name_len, "Via"))
            continue;
        value = apr_pstrmemdup(r->pool, f->value, f->value_len);
        name = apr_pstrmemdup(r->pool, f->name, f->name_len);
        if (!strcasecmp(name, "Location")
            || !strcasecmp(name, "Content-Location")
            || !strcasecmp(name, "URI"))
            value = (char *)reverse_location(px, value);
        fn(baton, name, value);
    }
}

const char *apx_ex_resp_field(apx_exchange *px, const char *name)
{
    const apx_http_resp *h = &px->resp;
    unsigned i;

    for (i = 0; i < h->nfields; i++)
        if (apx_http_token_eqs(h->fields[i].name, h->fields[i].name_len,
                               name))
            return apr_pstrmemdup(px->r->pool, h->fields[i].value,
                                  h->fields[i].value_len);
    return NULL;
}

const char *apx_ex_resp_list(apx_exchange *px, const char *name)
{
    const apx_http_resp *h = &px->resp;
    const char *all = NULL;
    unsigned i;

    for (i = 0; i < h->nfields; i++)
        if (apx_http_token_eqs(h->fields[i].name, h->fields[i].name_len,
                               name))
            all = apx_list_append(px->r->pool, all,
                               apr_pstrmemdup(px->r->pool, h->fields[i].value,
                                              h->fields[i].value_len));
    return all;
}

const char *apx_ex_via(apx_exchange *px)
{
    request_rec *r = px->r;

    return apx_list_append(r->pool, apx_ex_resp_list(px, "Via"),
                        apr_pstrcat(r->pool, "1.1 ",
                                    r->server->server_hostname, NULL));
}

static void apply_field(void *baton, const char *name, const char *value)
{
    request_rec *r = baton;

    if (!strcasecmp(name, "Content-Type")) {
        if (!r->content_type)
            ap_set_content_type(r, value);
        return;
    }
    apr_table_addn(r->headers_out, name, value);
}

int apx_ex_check_head(apx_exchange *px)
{
    const apx_http_resp *h = &px->resp;
    unsigned i;

    px->framing = apx_http_resp_framing(h, px->r->method, &px->remaining);

    apx_http_conn_tokens_init(&px->conn);
    for (i = 0; i < h->nfields; i++) {
        const apx_http_field *f = &h->fields[i];

        if (apx_http_token_eqs(f->name, f->name_len, "Connection")
            && apx_http_conn_tokens_add(&px->conn, f->value, f->value_len)
               != APR_SUCCESS)
            return bad_response(px, "Connection header with more tokens "
                                "than can be stripped, or not a token list");
    }
    return STEP_OK;
}

/* Copies the checked head into r: status, fields minus hop-by-hop and
 * framing (httpd frames the body for the client itself). */
int apx_ex_apply_head(apx_exchange *px)
{
    request_rec *r = px->r;
    const apx_http_resp *h = &px->resp;

    if (apx_ex_check_head(px) != STEP_OK)
        return STEP_FAIL;
    px->head_applied = 1;
    r->status = h->status;
    r->status_line = h->reason_len
                     ? apr_psprintf(r->pool, "%d %.*s", h->status,
                                    (int)h->reason_len, h->reason)
                     : NULL;
    /* Only the backend says what the body is: not mod_mime's guess from
     * the URL's extension (a ".gz" would otherwise gain an encoding). */
    r->content_type = NULL;
    r->content_encoding = NULL;
    r->content_languages = NULL;
    apx_ex_each_field(px, apply_field, r);
    apr_table_setn(r->headers_out, "Via", apx_ex_via(px));
    /* The backend's length, also for HEAD (httpd leaves a HEAD's length
     * alone); filters that transform the body drop or recompute it. */
    if (h->content_length >= 0 && h->status >= 200 && h->status != 204
        && h->status != 304)
        ap_set_content_length(r, (apr_off_t)h->content_length);
    /* An unread client body would be parsed as the next request. */
    if (!px->body_done)
        px->c->keepalive = AP_CONN_CLOSE;
    apr_table_setn(r->notes, "asyncproxy-backend-time",
                   apr_psprintf(r->pool, "%" APR_TIME_T_FMT,
                                apr_time_now() - px->rq->start));
    return STEP_OK;
}
