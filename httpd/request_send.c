/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* request_send.c — what the backend is sent: the request head (hop-by-hop
 * fields removed, Host, X-Forwarded-*, Via; the response cache's stripped
 * fields left out) and the request body, streamed from the client's input
 * filters without blocking (Content-Length or chunked, 100-continue).
 *
 * Threads: inside the request's coroutine, on the thread that owns the
 * request.
 */
#include <errno.h>
#include <stdlib.h>
#include <sys/uio.h>

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

typedef struct head_ctx {
    apx_exchange *px;
    apx_http_conn_tokens *client_conn;
} head_ctx;

/* Fields we write ourselves, or must not forward. The X-Forwarded-* of the
 * client are always among them: apx_ex_forwarded() decides what of them
 * goes on. */
static int skip_request_field(const head_ctx *hd, const char *name)
{
    static const char *const ours[] = {
        "Host", "Expect", "Content-Length", "Transfer-Encoding", "Via",
        "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", NULL
    };
    int i;

    if (apx_http_is_hop_by_hop(name, strlen(name), hd->client_conn))
        return 1;
    for (i = 0; ours[i]; i++)
        if (!strcasecmp(name, ours[i]))
            return 1;
    if (hd->px->hc && apx_hcache_skip_request_field(hd->px->hc, name))
        return 1;
    return 0;
}

static void put_field(apx_exchange *px, const char *name, const char *value)
{
    if (apx_http_writer_field(&px->head, name, strlen(name), value,
                              strlen(value)) == APR_EINVAL)
        ap_log_rerror(APLOG_MARK, APLOG_DEBUG, 0, px->r, APXLOGNO(00116)
                      "request field %s not forwarded: invalid for HTTP/1.1",
                      name);
}

static int collect_conn_tokens(void *data, const char *key, const char *val)
{
    apx_http_conn_tokens *t = data;

    return apx_http_conn_tokens_add(t, val, strlen(val)) == APR_SUCCESS;
}

int apx_ex_peer_trusted(const apx_exchange *px)
{
    const apr_array_header_t *t = px->rq->sconf->trusted;
    apr_sockaddr_t *sa = px->r->connection->client_addr;
    int i;

    for (i = 0; t && sa && i < t->nelts; i++)
        if (apr_ipsubnet_test(APR_ARRAY_IDX(t, i, apr_ipsubnet_t *), sa))
            return 1;
    return 0;
}

/* A client's X-Forwarded-* are its word only: what reaches the backend
 * describes this hop (and the response cache keys on it), unless the peer
 * is a proxy the administrator trusts to have described the earlier
 * ones. */
void apx_ex_forwarded(const apx_exchange *px, const char **xff,
                      const char **xfh, const char **xfp)
{
    request_rec *r = px->r;
    int add = px->rq->sconf->add_forwarded != 0;    /* -1 (unset): On */
    int trusted = apx_ex_peer_trusted(px);
    const char *cff = NULL, *cfh = NULL, *cfp = NULL;

    if (trusted) {
        cff = apr_table_get(r->headers_in, "X-Forwarded-For");
        cfh = apr_table_get(r->headers_in, "X-Forwarded-Host");
        cfp = apr_table_get(r->headers_in, "X-Forwarded-Proto");
    }
    if (!add) {
        *xff = cff;
        *xfh = cfh;
        *xfp = cfp;
        return;
    }
    *xff = apx_list_append(r->pool, cff, r->useragent_ip);
    *xfh = cfh ? cfh : apr_table_get(r->headers_in, "Host");
    *xfp = cfp ? cfp : ap_http_scheme(r);
}

/* Builds the request head into px->head (r->pool). */
int apx_ex_build_head(apx_exchange *px)
{
    request_rec *r = px->r;
    const apx_srv_conf *sc = px->rq->sconf;
    const apr_array_header_t *arr = apr_table_elts(r->headers_in);
    const apr_table_entry_t *e = (const apr_table_entry_t *)arr->elts;
    apx_http_conn_tokens conn;
    head_ctx hd;
    const char *host = apr_table_get(r->headers_in, "Host");
    const char *v, *xff, *xfh, *xfp;
    int i;

    apx_http_writer_init_pool(&px->head, r->pool, 1024);
    if (apx_http_writer_request_line(&px->head, r->method, px->target)
        != APR_SUCCESS) {
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, APXLOGNO(00117)
                      "cannot forward request line: method '%s' or target "
                      "'%s' is not valid HTTP/1.1", r->method, px->target);
        px->rq->outcome = APX_OUT_ERROR;
        px->rq->status = HTTP_BAD_REQUEST;
        px->rq->note = "bad-request";
        return STEP_FAIL;
    }
    apx_http_conn_tokens_init(&conn);
    if (!apr_table_do(collect_conn_tokens, &conn, r->headers_in,
                      "Connection", NULL)) {
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, APXLOGNO(00112)
                      "client Connection header cannot be honoured (not a "
                      "token list, or more than %d tokens)",
                      APX_HTTP_MAX_CONN_TOKENS);
        px->rq->outcome = APX_OUT_ERROR;
        px->rq->status = HTTP_BAD_REQUEST;
        px->rq->note = "bad-request";
        return STEP_FAIL;
    }
    hd.px = px;
    hd.client_conn = &conn;

    px->host_ours = !(sc->preserve_host == 1 && host);
    px->host_at = px->head.len;
    put_field(px, "Host", px->host_ours ? px->host_hdr : host);
    px->host_end = px->head.len;
    for (i = 0; i < arr->nelts; i++) {
        if (!e[i].key || !e[i].val || skip_request_field(&hd, e[i].key))
            continue;
        put_field(px, e[i].key, e[i].val);
    }
    v = apx_list_append(r->pool, apr_table_get(r->headers_in, "Via"),
                     apr_pstrcat(r->pool, "1.1 ", r->server->server_hostname,
                                 NULL));
    put_field(px, "Via", v);
    apx_ex_forwarded(px, &xff, &xfh, &xfp);
    if (xff)
        put_field(px, "X-Forwarded-For", xff);
    if (xfh)
        put_field(px, "X-Forwarded-Host", xfh);
    if (xfp)
        put_field(px, "X-Forwarded-Proto", xfp);
    if (px->upgrade) {
        /* hop-by-hop, so skipped above: forwarded only when the mapping
         * allows the protocol (upgrade=) */
        put_field(px, "Connection", "Upgrade");
        put_field(px, "Upgrade", px->upgrade);
    }
    if (px->body_kind == REQ_BODY_CHUNKED)
        put_field(px, "Transfer-Encoding", "chunked");
    else if (px->body_kind == REQ_BODY_LENGTH)
        put_field(px, "Content-Length",
                  apr_off_t_toa(r->pool, px->body_length));
    if (apx_http_writer_end(&px->head) != APR_SUCCESS) {
        /* a pool writer only fails on allocation */
        px->rq->outcome = APX_OUT_ERROR;
        px->rq->status = HTTP_INTERNAL_SERVER_ERROR;
        return STEP_FAIL;
    }
    return STEP_OK;
}

void apx_ex_head_set_host(apx_exchange *px)
{
    apr_size_t hlen, len;
    char *buf;

    if (!px->host_ours || !px->host_end)
        return;
    hlen = strlen(px->host_hdr);
    /* "Host: " value CRLF, as put_field() wrote it */
    if (px->host_end - px->host_at == hlen + 8
        && !memcmp(px->head.buf + px->host_at + 6, px->host_hdr, hlen))
        return;
    len = px->head.len - (px->host_end - px->host_at) + hlen + 8;
    buf = apr_palloc(px->r->pool, len + 1);
    memcpy(buf, px->head.buf, px->host_at);
    memcpy(buf + px->host_at, "Host: ", 6);
    memcpy(buf + px->host_at + 6, px->host_hdr, hlen);
    memcpy(buf + px->host_at + 6 + hlen, "\r\n", 2);
    memcpy(buf + px->host_at + hlen + 8, px->head.buf + px->host_end,
           px->head.len - px->host_end + 1);
    px->head.buf = buf;
    px->head.len = len;
    px->head.cap = len;
    px->host_end = px->host_at + hlen + 8;
}

/* Tells a client that waits for "100 Continue" to send its body: httpd's
 * input filter only does so on blocking reads, and ours do not block. */
static void send_continue(request_rec *r)
{
    int status = r->status;
    const char *line = r->status_line;

    if (!r->expecting_100 || r->proto_num < HTTP_VERSION(1, 1))
        return;
    r->status = HTTP_CONTINUE;
    r->status_line = "100 Continue";
    ap_send_interim_response(r, 0);
    r->status = status;
    r->status_line = line;
}

/* The client's body could not be read. */
static int client_body_failed(apx_exchange *px, apr_status_t rv)
{
    request_rec *r = px->r;
    int status;

    px->c->keepalive = AP_CONN_CLOSE;
    if (px->c->aborted || APR_STATUS_IS_ECONNRESET(rv)
        || APR_STATUS_IS_ECONNABORTED(rv) || APR_STATUS_IS_EPIPE(rv))
        return apx_ex_client_gone(px);
    /* AP_FILTER_ERROR: httpd's input filter has answered (400, 413)
     * itself; handing it back to ap_die() is the convention */
    status = ap_map_http_request_error(rv, HTTP_BAD_REQUEST);
    ap_log_rerror(APLOG_MARK, APLOG_INFO, rv, r, APXLOGNO(00111)
                  "reading the request body from the client failed (%s)",
                  status == AP_FILTER_ERROR ? "answered by httpd"
                  : apr_psprintf(r->pool, "answering %d", status));
    px->rq->note = "bad-request-body";
    px->rq->outcome = px->response_started ? APX_OUT_ABORT : APX_OUT_ERROR;
    px->rq->status = status;
    return STEP_FAIL;
}

/* Sends the data of bb (and, for chunked, its framing) to the backend.
 * Returns STEP_OK, STEP_FAIL, or an errno (> 0) when the backend stopped
 * taking data. */
static int send_body_brigade(apx_exchange *px, apr_off_t len, int eos)
{
    struct iovec iov[BODY_IOV + 2];
    char size_line[32];
    apr_bucket *b;
    int n = 0, rc;

    if (px->body_kind == REQ_BODY_CHUNKED && len > 0) {
        iov[n].iov_base = size_line;
        iov[n].iov_len = (size_t)apr_snprintf(size_line, sizeof(size_line),
                                              "%" APR_UINT64_T_HEX_FMT "\r\n",
                                              (apr_uint64_t)len);
        n++;
    }
    for (b = APR_BRIGADE_FIRST(px->bb); b != APR_BRIGADE_SENTINEL(px->bb);
         b = APR_BUCKET_NEXT(b)) {
        const char *data;
        apr_size_t blen;

        if (APR_BUCKET_IS_METADATA(b))
            continue;
        if (apr_bucket_read(b, &data, &blen, APR_BLOCK_READ) != APR_SUCCESS)
            return client_body_failed(px, APR_EGENERAL);
        if (!blen)
            continue;
        if (n == BODY_IOV) {
            if ((rc = apx_ex_send_iov(px, iov, n)) != STEP_OK)
                return rc;
            n = 0;
        }
        iov[n].iov_base = (void *)data;
        iov[n].iov_len = blen;
        n++;
    }
    if (px->body_kind == REQ_BODY_CHUNKED) {
        if (len > 0) {
            iov[n].iov_base = (void *)"\r\n";
            iov[n].iov_len = 2;
            n++;
        }
        if (eos) {
            iov[n].iov_base = (void *)"0\r\n\r\n";
            iov[n].iov_len = 5;
            n++;
        }
    }
    return n ? apx_ex_send_iov(px, iov, n) : STEP_OK;
}

/* Streams the client's body to the backend, one bounded read at a time. A
 * backend that stops reading (it may have answered early, e.g. 413) ends
 * the streaming with px->send_errno set; its answer is read next. */
static int send_body(apx_exchange *px)
{
    request_rec *r = px->r;
    int client_fd = px->rq->client_fd;
    /* HTTP/2 streams have no socket of their own: the sync driver reads
     * them blocking (h2 does the flow control) */
    apr_read_type_e block = client_fd < 0 ? APR_BLOCK_READ : APR_NONBLOCK_READ;
    apr_status_t rv;
    apr_off_t len;
    unsigned ev;
    int eos, rc;

    send_continue(r);
    for (;;) {
        rv = ap_get_brigade(r->input_filters, px->bb, AP_MODE_READBYTES,
                            block, BODY_READ_MAX);
        if (APR_STATUS_IS_EAGAIN(rv)) {
            apr_brigade_cleanup(px->bb);
            ev = apx_wait(px->rq, client_fd, APX_EV_IN,
                          apr_time_now() + px->client_timeout);
            if (apx_ex_wait_interrupted(px, ev))
                return STEP_FAIL;
            if (ev & APX_EV_TIMEOUT)
                return client_body_failed(px, APR_TIMEUP);
            continue;
        }
        if (rv != APR_SUCCESS) {
            apr_brigade_cleanup(px->bb);
            return client_body_failed(px, rv);
        }
        eos = !APR_BRIGADE_EMPTY(px->bb)
              && APR_BUCKET_IS_EOS(APR_BRIGADE_LAST(px->bb));
        apr_brigade_length(px->bb, 1, &len);
        if (len > 0)
            px->body_started = 1;
        px->body_bytes += len;
        if (px->body_limit && px->body_bytes > px->body_limit) {
            apr_brigade_cleanup(px->bb);
            ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, APXLOGNO(00118)
                          "request body larger than LimitRequestBody "
                          "(%" APR_OFF_T_FMT ")", px->body_limit);
            return client_body_failed(px, APR_ENOSPC);
        }
        rc = send_body_brigade(px, len, eos);
        apr_brigade_cleanup(px->bb);
        if (rc > 0) {
            px->send_errno = rc;
            return STEP_OK;
        }
        if (rc != STEP_OK)
            return rc;
        if (eos) {
            px->body_done = 1;
            return STEP_OK;
        }
    }
}

/* Request head, then body. */
int apx_ex_send_request(apx_exchange *px)
{
    struct iovec iov;
    int rc;

    iov.iov_base = px->head.buf;
    iov.iov_len = px->head.len;
    rc = apx_ex_send_iov(px, &iov, 1);
    if (rc > 0) {
        /* the most common death of a pooled connection */
        if (px->reused && px->idempotent && !px->body_started)
            return STEP_RETRY;
        ap_log_rerror(APLOG_MARK, APLOG_ERR, APR_FROM_OS_ERROR(rc), px->r,
                      APXLOGNO(00119) "sending the request for %s to "
                      "backend %s failed", px->url, px->be->hostport);
        return apx_ex_backend_failed(px, HTTP_BAD_GATEWAY, "send-failed");
    }
    if (rc != STEP_OK || px->body_done)
        return rc;
    return send_body(px);
}
