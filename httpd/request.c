/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* request.c — the request path (DESIGN.md §4): the code that
 * runs inside each proxied request's coroutine. Which requests are ours is
 * decided in map.c.
 *
 * apx_request_run() is straight-line code: connect or take a pooled backend
 * connection, send the request head and stream the body, read and check the
 * response head, hand it to httpd, stream the body back with flow control,
 * then pool or close the backend connection. Every would-block point goes
 * through apx_wait(), so the same code runs under the sync driver (poll in
 * place) and the async driver (parked in the poller, resumed on a module
 * worker).
 *
 * Threads:
 *   apx_request_run()    the thread that owns the request; after each
 *                      apx_wait() that may be another thread, so nothing
 *                      thread-local is kept across a wait (errno is read
 *                      right after the call that set it).
 * Invariants:
 *   - The backend fd is held in proxy_ctx.fd and covered by a coroutine
 *     defer from the moment it exists, so it is closed if the coroutine is
 *     destroyed while parked (client abort, child exit).
 *   - Nothing of a malformed response reaches the client: the head is
 *     applied to r only once it parsed completely.
 *   - A body cut short by the backend aborts the client connection
 *     (APX_OUT_ABORT): never a short body that looks whole.
 *   - At most one receive buffer (RBUF_SIZE) of response body and one read
 *     of request body (BODY_READ_MAX) are in our hands per request; the core
 *     output filter never holds more than one pass and is never made to
 *     block (we pass only when nothing is pending).
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "httpd.h"
#include "http_config.h"
#include "http_core.h"
#include "http_log.h"
#include "http_protocol.h"
#include "http_request.h"
#include "util_filter.h"
#include "apr_lib.h"
#include "apr_strings.h"

#include "request.h"

APLOG_USE_MODULE(asyncproxy);
extern module AP_MODULE_DECLARE_DATA asyncproxy_module;

/* ------------------------------------------------------------------ */
/* outcomes                                                             */

/* Puts r back as it was before the backend's head was applied, so that
 * ap_die() sends a clean error page. */
void apx_px_unapply_head(proxy_ctx *px)
{
    request_rec *r = px->r;

    if (!px->head_applied)
        return;
    px->head_applied = 0;
    r->status = HTTP_OK;
    r->status_line = NULL;
    r->content_type = NULL;
    r->clength = 0;
    apr_table_clear(r->headers_out);
}

/* The backend failed: an error page while nothing went to the client yet,
 * otherwise an aborted connection. */
int apx_px_backend_failed(proxy_ctx *px, int status, const char *note)
{
    apx_req *rq = px->rq;

    rq->note = note;
    if (px->response_started) {
        rq->outcome = APX_OUT_ABORT;
    }
    else {
        apx_px_unapply_head(px);
        rq->outcome = APX_OUT_ERROR;
        rq->status = status;
    }
    return STEP_FAIL;
}

int apx_px_client_gone(proxy_ctx *px)
{
    apx_req *rq = px->rq;

    apr_atomic_inc32(&apx_ch->n.client_gone);
    rq->outcome = APX_OUT_ABORT;
    rq->note = "client-abort";
    /* for the access log, as nginx writes it; a response already under
     * way keeps the backend's status */
    if (!px->response_started)
        px->r->status = 499;
    return STEP_FAIL;
}

/* Client hung up, or the child is going away: nothing to answer. */
int apx_px_wait_interrupted(proxy_ctx *px, unsigned ev)
{
    if (ev & APX_EV_CLIENT_GONE) {
        apx_px_client_gone(px);
        return 1;
    }
    if (ev & APX_EV_SHUTDOWN) {
        px->rq->outcome = APX_OUT_ABORT;
        px->rq->note = "shutdown";
        return 1;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* the backend connection                                               */

static void close_backend_deferred(void *arg)
{
    proxy_ctx *px = arg;

    if (px->fd >= 0) {
        close(px->fd);
        px->fd = -1;
    }
}

/* Ends the use of the backend connection: back to the pool only after a
 * clean exchange, else closed. */
void apx_px_finish_backend(proxy_ctx *px, int reusable)
{
    if (px->fd < 0)
        return;
    if (reusable)
        apx_backend_release(px->be, px->fd, apr_time_now());
    else
        close(px->fd);
    px->fd = -1;
}

/* Errors for which the origin's next address is worth a try. */
static int address_specific(int err)
{
    return err == ECONNREFUSED || err == ENETUNREACH || err == EHOSTUNREACH
           || err == EADDRNOTAVAIL || err == EAFNOSUPPORT;
}

/* One non-blocking connect. Returns 0, an errno value, or -1 when the wait
 * was interrupted (outcome set). px->fd is set as soon as the socket
 * exists, so the defer covers it across the wait. */
static int connect_addr(proxy_ctx *px, const apr_sockaddr_t *sa,
                        apr_time_t deadline)
{
    int fd, err, one = 1;
    socklen_t len = sizeof(err);
    unsigned ev;

    fd = socket(sa->family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return errno;
    px->fd = fd;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(fd, (const struct sockaddr *)&sa->sa, sa->salen) == 0)
        return 0;
    err = errno;
    if (err != EINPROGRESS) {
        apx_px_finish_backend(px, 0);
        return err;
    }
    ev = apx_wait_connect(px->rq, fd, deadline);
    if (apx_px_wait_interrupted(px, ev)) {
        apx_px_finish_backend(px, 0);
        return -1;
    }
    if (!(ev & (APX_EV_OUT | APX_EV_HUP | APX_EV_ERR))) {
        apx_px_finish_backend(px, 0);
        return ETIMEDOUT;
    }
    err = 0;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        err = errno;
    if (err)
        apx_px_finish_backend(px, 0);
    return err;
}

static int connect_backend(proxy_ctx *px)
{
    const apr_sockaddr_t *sa;
    apr_time_t deadline = apr_time_now() + px->connect_timeout;
    request_rec *r = px->r;
    int err = EADDRNOTAVAIL;

    px->reused = 0;
    for (sa = px->be->addr; sa; sa = sa->next) {
        err = connect_addr(px, sa, deadline);
        if (err == 0)
            return STEP_OK;
        if (err < 0)
            return STEP_FAIL;
        if (!address_specific(err))
            break;
    }
    if (err == ETIMEDOUT) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, APXLOGNO(00101)
                      "connect to backend %s timed out after %" APR_TIME_T_FMT
                      " ms", px->be->hostport,
                      apr_time_as_msec(px->connect_timeout));
        return apx_px_backend_failed(px, HTTP_GATEWAY_TIME_OUT, "connect-timeout");
    }
    if (err == EMFILE || err == ENFILE) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, APR_FROM_OS_ERROR(err), r,
                      APXLOGNO(00102) "cannot open a connection to backend "
                      "%s: out of file descriptors (raise the open files "
                      "limit, ulimit -n)", px->be->hostport);
        return apx_px_backend_failed(px, HTTP_SERVICE_UNAVAILABLE, "out-of-fds");
    }
    ap_log_rerror(APLOG_MARK, APLOG_ERR, APR_FROM_OS_ERROR(err), r,
                  APXLOGNO(00100) "connect to backend %s failed",
                  px->be->hostport);
    return apx_px_backend_failed(px, HTTP_BAD_GATEWAY, err == ECONNREFUSED
                          ? "connect-refused" : "connect-failed");
}

/* A pooled connection if there is a live one (and fresh_only is 0), else a
 * new one. */
static int open_backend(proxy_ctx *px, int fresh_only)
{
    if (!fresh_only) {
        px->fd = apx_backend_take(px->be, apr_time_now());
        if (px->fd >= 0) {
            px->reused = 1;
            apr_atomic_inc32(&apx_ch->n.backend_reused);
            return STEP_OK;
        }
    }
    return connect_backend(px);
}

/* Writes iov[0..n) to the backend (the array is consumed). Returns STEP_OK,
 * STEP_FAIL (timeout or interrupted wait; outcome set), or an errno value
 * > 0 when the backend stopped taking data (the caller decides). */
static int send_iov(proxy_ctx *px, struct iovec *iov, int n)
{
    struct msghdr mh;
    ssize_t w;
    unsigned ev;
    int err, hup = 0;

    while (n > 0) {
        memset(&mh, 0, sizeof(mh));
        mh.msg_iov = iov;
        mh.msg_iovlen = (size_t)n;
        w = sendmsg(px->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w >= 0) {
            while (n > 0 && (size_t)w >= iov->iov_len) {
                w -= (ssize_t)iov->iov_len;
                iov++;
                n--;
            }
            if (n > 0) {
                iov->iov_base = (char *)iov->iov_base + w;
                iov->iov_len -= (size_t)w;
            }
            hup = 0;
            continue;
        }
        err = errno;
        if (err == EINTR)
            continue;
        if (err != EAGAIN && err != EWOULDBLOCK)
            return err;
        /* A hangup that still leaves the socket unwritable would wake us
         * for ever: the backend is gone. */
        if (hup)
            return EPIPE;
        ev = apx_wait(px->rq, px->fd, APX_EV_OUT,
                      apr_time_now() + px->timeout);
        if (apx_px_wait_interrupted(px, ev))
            return STEP_FAIL;
        if (ev & APX_EV_TIMEOUT) {
            ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, px->r, APXLOGNO(00109)
                          "backend %s did not take the request for %s "
                          "within %" APR_TIME_T_FMT " ms", px->be->hostport,
                          px->url, apr_time_as_msec(px->timeout));
            return apx_px_backend_failed(px, HTTP_GATEWAY_TIME_OUT,
                                  "backend-timeout");
        }
        hup = !(ev & APX_EV_OUT) && (ev & (APX_EV_HUP | APX_EV_ERR));
    }
    return STEP_OK;
}

/* ------------------------------------------------------------------ */
/* the request                                                          */

static int method_is_idempotent(const request_rec *r)
{
    switch (r->method_number) {
    case M_GET:         /* HEAD too */
    case M_PUT:
    case M_DELETE:
    case M_OPTIONS:
    case M_TRACE:
        return 1;
    default:
        return 0;
    }
}

typedef struct head_ctx {
    proxy_ctx *px;
    apx_http_conn_tokens *client_conn;
} head_ctx;

/* Fields we write ourselves, or must not forward. The X-Forwarded-* of the
 * client are always among them: apx_px_forwarded() decides what of them
 * goes on. */
static int skip_request_field(const head_ctx *hc, const char *name)
{
    static const char *const ours[] = {
        "Host", "Expect", "Content-Length", "Transfer-Encoding", "Via",
        "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", NULL
    };
    int i;

    if (apx_http_is_hop_by_hop(name, strlen(name), hc->client_conn))
        return 1;
    for (i = 0; ours[i]; i++)
        if (!strcasecmp(name, ours[i]))
            return 1;
    if (hc->px->hc && apx_hc_skip_request_field(hc->px->hc, name))
        return 1;
    return 0;
}

static void put_field(proxy_ctx *px, const char *name, const char *value)
{
    if (apx_http_writer_field(&px->head, name, strlen(name), value,
                              strlen(value)) == APR_EINVAL)
        ap_log_rerror(APLOG_MARK, APLOG_DEBUG, 0, px->r, APXLOGNO(00116)
                      "request field %s not forwarded: invalid for HTTP/1.1",
                      name);
}

/* "a, b" from an existing value and ours. */
static const char *append_value(apr_pool_t *p, const char *old,
                                const char *add)
{
    return old && *old ? apr_pstrcat(p, old, ", ", add, NULL) : add;
}

static int collect_conn_tokens(void *data, const char *key, const char *val)
{
    apx_http_conn_tokens *t = data;

    return apx_http_conn_tokens_add(t, val, strlen(val)) == APR_SUCCESS;
}

int apx_px_peer_trusted(const proxy_ctx *px)
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
void apx_px_forwarded(const proxy_ctx *px, const char **xff,
                      const char **xfh, const char **xfp)
{
    request_rec *r = px->r;
    int add = px->rq->sconf->add_forwarded != 0;    /* -1 (unset): On */
    int trusted = apx_px_peer_trusted(px);
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
    *xff = append_value(r->pool, cff, r->useragent_ip);
    *xfh = cfh ? cfh : apr_table_get(r->headers_in, "Host");
    *xfp = cfp ? cfp : ap_http_scheme(r);
}

/* Builds the request head into px->head (r->pool). */
int apx_px_build_head(proxy_ctx *px)
{
    request_rec *r = px->r;
    const apx_srv_conf *sc = px->rq->sconf;
    const apr_array_header_t *arr = apr_table_elts(r->headers_in);
    const apr_table_entry_t *e = (const apr_table_entry_t *)arr->elts;
    apx_http_conn_tokens conn;
    head_ctx hc;
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
    hc.px = px;
    hc.client_conn = &conn;

    put_field(px, "Host", sc->preserve_host == 1 && host ? host
                                                          : px->map->host_hdr);
    for (i = 0; i < arr->nelts; i++) {
        if (!e[i].key || !e[i].val || skip_request_field(&hc, e[i].key))
            continue;
        put_field(px, e[i].key, e[i].val);
    }
    v = append_value(r->pool, apr_table_get(r->headers_in, "Via"),
                     apr_pstrcat(r->pool, "1.1 ", r->server->server_hostname,
                                 NULL));
    put_field(px, "Via", v);
    apx_px_forwarded(px, &xff, &xfh, &xfp);
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
static int client_body_failed(proxy_ctx *px, apr_status_t rv)
{
    request_rec *r = px->r;
    int status;

    px->c->keepalive = AP_CONN_CLOSE;
    if (px->c->aborted || APR_STATUS_IS_ECONNRESET(rv)
        || APR_STATUS_IS_ECONNABORTED(rv) || APR_STATUS_IS_EPIPE(rv))
        return apx_px_client_gone(px);
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
static int send_body_brigade(proxy_ctx *px, apr_off_t len, int eos)
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
            if ((rc = send_iov(px, iov, n)) != STEP_OK)
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
    return n ? send_iov(px, iov, n) : STEP_OK;
}

/* Streams the client's body to the backend, one bounded read at a time. A
 * backend that stops reading (it may have answered early, e.g. 413) ends
 * the streaming with px->send_errno set; its answer is read next. */
static int send_body(proxy_ctx *px)
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
            if (apx_px_wait_interrupted(px, ev))
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
static int send_request(proxy_ctx *px)
{
    struct iovec iov;
    int rc;

    iov.iov_base = px->head.buf;
    iov.iov_len = px->head.len;
    rc = send_iov(px, &iov, 1);
    if (rc > 0) {
        /* the most common death of a pooled connection */
        if (px->reused && px->idempotent && !px->body_started)
            return STEP_RETRY;
        ap_log_rerror(APLOG_MARK, APLOG_ERR, APR_FROM_OS_ERROR(rc), px->r,
                      APXLOGNO(00119) "sending the request for %s to "
                      "backend %s failed", px->url, px->be->hostport);
        return apx_px_backend_failed(px, HTTP_BAD_GATEWAY, "send-failed");
    }
    if (rc != STEP_OK || px->body_done)
        return rc;
    return send_body(px);
}

/* ------------------------------------------------------------------ */
/* the response head                                                    */

static int bad_response(proxy_ctx *px, const char *why)
{
    ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, px->r, APXLOGNO(00103)
                  "bad response from backend %s for %s: %s",
                  px->be->hostport, px->url, why);
    return apx_px_backend_failed(px, HTTP_BAD_GATEWAY, "bad-response");
}

/* The receive buffer, the response head buffer and its fields, taken when
 * the backend first has something to read, so a request parked while it
 * waits for its response holds none of them; given back when the coroutine
 * ends (a defer). From malloc, not r->pool: a pool's blocks stay in the
 * connection's allocator after the request, resident, for as long as the
 * connection lives. bench/PROFILE.md: 52 -> 40 KB per parked request (the
 * same buffers taken lazily from r->pool: 56 KB). */
static int get_buffers(proxy_ctx *px)
{
    apr_size_t fsize = HEAD_FIELDS * sizeof(apx_http_field);
    char *b = malloc(fsize + RBUF_SIZE + px->head_max);

    if (b)
        px->bufs_defer = apx_coro_defer(px->rq->coro, free, b);
    if (!b || !px->bufs_defer) {
        /* apx_coro_defer() already freed b when it failed */
        ap_log_rerror(APLOG_MARK, APLOG_ERR, APR_ENOMEM, px->r,
                      APXLOGNO(00126) "no memory for the response buffers");
        return apx_px_backend_failed(px, HTTP_SERVICE_UNAVAILABLE,
                                     "no-memory");
    }
    /* the fields first: malloc's alignment is theirs */
    apx_http_resp_init(&px->resp, b + fsize + RBUF_SIZE, px->head_max,
                       (apx_http_field *)(void *)b, HEAD_FIELDS);
    px->rbuf = b + fsize;
    return STEP_OK;
}

/* Reads more of the response into rbuf (emptied first). On RECV_ERROR the
 * errno is in px->recv_errno. deadline 0: one backend timeout from now.
 * phase names what timed out in the log line. */
int apx_px_recv(proxy_ctx *px, apr_time_t deadline, const char *phase)
{
    ssize_t n;
    unsigned ev;
    int err, turn;

    px->roff = px->rlen = 0;
    /* A stream whose backend and client are both fast would keep this
     * worker for as long as it lasts: after STREAM_TURN bytes without a
     * wait, wait anyway (through the poller's queue, at once if the
     * backend is still readable). */
    turn = px->stream && px->turn_bytes >= STREAM_TURN;
    if (!px->rbuf) {
        /* Nothing read yet: one byte of peek says whether the buffers are
         * needed now (a fast backend may have answered already) or only
         * after the wait. */
        char probe;

        n = recv(px->fd, &probe, 1, MSG_PEEK | MSG_DONTWAIT);
        if ((n >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK))
            && get_buffers(px) != STEP_OK)
            return STEP_FAIL;
    }
    for (;;) {
        if (px->rbuf && !turn) {
            n = recv(px->fd, px->rbuf, RBUF_SIZE, MSG_DONTWAIT);
            if (n > 0) {
                px->got_bytes = 1;
                px->rlen = (apr_size_t)n;
                px->turn_bytes += (apr_size_t)n;
                return RECV_DATA;
            }
            if (n == 0)
                return RECV_EOF;
            err = errno;
            if (err == EINTR)
                continue;
            if (err != EAGAIN && err != EWOULDBLOCK) {
                px->recv_errno = err;
                return RECV_ERROR;
            }
        }
        px->turn_bytes = 0;
        turn = 0;
        ev = apx_wait(px->rq, px->fd, APX_EV_IN,
                      deadline ? deadline : apr_time_now() + px->timeout);
        if (apx_px_wait_interrupted(px, ev))
            return STEP_FAIL;
        if (ev & APX_EV_TIMEOUT) {
            ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, px->r, APXLOGNO(00106)
                          "backend %s timed out (%" APR_TIME_T_FMT " ms) "
                          "%s for %s", px->be->hostport,
                          apr_time_as_msec(px->timeout), phase, px->url);
            return apx_px_backend_failed(px, HTTP_GATEWAY_TIME_OUT,
                                  "backend-timeout");
        }
        if (!px->rbuf && get_buffers(px) != STEP_OK)
            return STEP_FAIL;
    }
}

/* Sends a 1xx other than 100 on to the client (103 Early Hints, 102). */
static void forward_interim(proxy_ctx *px)
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
static int head_cut_short(proxy_ctx *px, int err)
{
    if (!px->got_bytes && px->reused && px->idempotent && !px->body_started)
        return STEP_RETRY;
    if (px->send_errno) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR,
                      APR_FROM_OS_ERROR(px->send_errno), px->r,
                      APXLOGNO(00120) "backend %s stopped reading the "
                      "request body for %s and sent no response",
                      px->be->hostport, px->url);
        return apx_px_backend_failed(px, HTTP_BAD_GATEWAY, "send-failed");
    }
    ap_log_rerror(APLOG_MARK, APLOG_ERR, err ? APR_FROM_OS_ERROR(err) : 0,
                  px->r, APXLOGNO(00104) "backend %s closed the connection "
                  "before a complete response head for %s (%s)",
                  px->be->hostport, px->url,
                  px->got_bytes ? "after part of it" : "nothing received");
    return apx_px_backend_failed(px, HTTP_BAD_GATEWAY, "bad-response");
}

/* Reads and checks the final response head; interim ones are swallowed
 * (100) or forwarded. The bytes after the head stay in rbuf. */
static int read_head(proxy_ctx *px)
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
                    if (!apx_px_upgrade_accepted(px))
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
        rc = apx_px_recv(px, deadline, "waiting for the response head");
        if (rc == STEP_FAIL)
            return STEP_FAIL;
        if (rc != RECV_DATA)
            return head_cut_short(px, rc == RECV_ERROR ? px->recv_errno : 0);
    }
}

/* Connect (or reuse), send, read the head; a pooled connection the
 * backend had closed is replaced once (DESIGN.md §4 step 2). */
int apx_px_exchange(proxy_ctx *px)
{
    int fresh_only = 0, rc;

    if (!px->head_max) {
        apr_size_t head_max;

        head_max = (apr_size_t)px->r->server->limit_req_fieldsize * 2;
        if (head_max < HEAD_MIN)
            head_max = HEAD_MIN;
        if (head_max > HEAD_CAP)
            head_max = HEAD_CAP;
        px->head_max = head_max;
    }

    for (;;) {
        px->rlen = px->roff = 0;
        px->got_bytes = 0;
        px->send_errno = 0;
        rc = open_backend(px, fresh_only);
        if (rc == STEP_OK)
            rc = send_request(px);
        if (rc == STEP_OK)
            rc = read_head(px);
        if (rc != STEP_RETRY)
            return rc;
        apx_px_finish_backend(px, 0);
        apr_atomic_inc32(&apx_ch->n.backend_retries);
        ap_log_rerror(APLOG_MARK, APLOG_DEBUG, 0, px->r, APXLOGNO(00114)
                      "pooled connection to %s was closed by the backend; "
                      "retrying %s on a new one", px->be->hostport, px->url);
        fresh_only = 1;
    }
}

/* AsyncProxyPassReverse: a backend URL in Location & co. becomes the same
 * resource's URL on this server. The scheme and authority compare
 * case-insensitively, the path exactly. */
static const char *map_reverse(request_rec *r, const apr_array_header_t *rvs,
                               const char *value)
{
    int i;

    for (i = 0; rvs && i < rvs->nelts; i++) {
        const apx_reverse *rv = &APR_ARRAY_IDX(rvs, i, apx_reverse);
        const char *auth_end = strchr(rv->url + 7, '/');
        apr_size_t alen = auth_end ? (apr_size_t)(auth_end - rv->url)
                                   : rv->url_len;
        const char *rest;
        apr_size_t plen;

        if (strncasecmp(value, rv->url, alen)
            || strncmp(value + alen, rv->url + alen, rv->url_len - alen))
            continue;
        rest = value + rv->url_len;
        plen = strlen(rv->path);
        if (plen && rv->path[plen - 1] == '/' && *rest == '/')
            rest++;
        return ap_construct_url(r->pool,
                                apr_pstrcat(r->pool, rv->path, rest, NULL),
                                r);
    }
    return NULL;
}

static const char *reverse_location(proxy_ctx *px, const char *value)
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

void apx_px_each_field(proxy_ctx *px,
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

const char *apx_px_resp_field(proxy_ctx *px, const char *name)
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

const char *apx_px_resp_list(proxy_ctx *px, const char *name)
{
    const apx_http_resp *h = &px->resp;
    const char *all = NULL;
    unsigned i;

    for (i = 0; i < h->nfields; i++)
        if (apx_http_token_eqs(h->fields[i].name, h->fields[i].name_len,
                               name))
            all = append_value(px->r->pool, all,
                               apr_pstrmemdup(px->r->pool, h->fields[i].value,
                                              h->fields[i].value_len));
    return all;
}

const char *apx_px_via(proxy_ctx *px)
{
    request_rec *r = px->r;

    return append_value(r->pool, apx_px_resp_list(px, "Via"),
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

int apx_px_check_head(proxy_ctx *px)
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
int apx_px_apply_head(proxy_ctx *px)
{
    request_rec *r = px->r;
    const apx_http_resp *h = &px->resp;

    if (apx_px_check_head(px) != STEP_OK)
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
    apx_px_each_field(px, apply_field, r);
    apr_table_setn(r->headers_out, "Via", apx_px_via(px));
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

/* ------------------------------------------------------------------ */
/* the response body                                                    */

/* Writes what the core output filter holds without blocking; while some
 * is left, waits for the client to take it. */
int apx_px_drain_output(proxy_ctx *px)
{
    conn_rec *c = px->c;
    ap_filter_t *f;
    apr_status_t rv;
    unsigned ev;

    /* An HTTP/2 stream has no socket to wait on; h2 paces it. */
    if (px->rq->client_fd < 0)
        return STEP_OK;
    while (c->data_in_output_filters) {
        f = c->output_filters;
        while (f->next)
            f = f->next;
        /* NULL: "write what is pending, never block", as the event MPM's
         * write completion calls it */
        rv = f->frec->filter_func.out_func(f, NULL);
        if (rv != APR_SUCCESS || c->aborted)
            return apx_px_client_gone(px);
        if (!c->data_in_output_filters)
            break;
        ev = apx_wait(px->rq, px->rq->client_fd, APX_EV_OUT,
                      apr_time_now() + px->client_timeout);
        if (ev & APX_EV_SHUTDOWN) {
            apx_px_wait_interrupted(px, ev);
            return STEP_FAIL;
        }
        if (ev & APX_EV_TIMEOUT) {
            px->rq->outcome = APX_OUT_ABORT;
            px->rq->note = "client-timeout";
            return STEP_FAIL;
        }
        /* hung up without being writable: it will never read the rest */
        if (!(ev & APX_EV_OUT) && (ev & (APX_EV_HUP | APX_EV_ERR)))
            return apx_px_client_gone(px);
    }
    return STEP_OK;
}

/* Hands px->bb (plus EOS when last) to the output filters, then lets the
 * client take it before more is read from the backend. */
int apx_px_pass_out(proxy_ctx *px, int last)
{
    conn_rec *c = px->c;
    apr_status_t rv;

    if (last)
        APR_BRIGADE_INSERT_TAIL(px->bb, apr_bucket_eos_create(c->bucket_alloc));
    else if (APR_BRIGADE_EMPTY(px->bb))
        return STEP_OK;
    px->response_started = 1;
    rv = ap_pass_brigade(px->r->output_filters, px->bb);
    apr_brigade_cleanup(px->bb);
    if (rv != APR_SUCCESS || c->aborted)
        return apx_px_client_gone(px);
    return last ? STEP_OK : apx_px_drain_output(px);
}

static void add_transient(proxy_ctx *px, const char *data, apr_size_t len)
{
    APR_BRIGADE_INSERT_TAIL(px->bb,
                            apr_bucket_transient_create(data, len,
                                                        px->c->bucket_alloc));
}

/* Moves the body bytes of rbuf into px->bb. Returns 1 when the body is
 * complete, 0 when more is expected, STEP_FAIL on a chunked error. */
int apx_px_take_body(proxy_ctx *px)
{
    apr_size_t avail = px->rlen - px->roff;
    const char *data;
    size_t used, dlen;
    apr_status_t rv;

    switch (px->framing) {
    case APX_HTTP_BODY_LENGTH:
        if ((int64_t)avail > px->remaining)
            avail = (apr_size_t)px->remaining;
        if (avail)
            add_transient(px, px->rbuf + px->roff, avail);
        px->roff += avail;
        px->remaining -= (int64_t)avail;
        return px->remaining == 0;
    case APX_HTTP_BODY_CHUNKED:
        while (px->roff < px->rlen) {
            rv = apx_http_chunked_feed(&px->chunked, px->rbuf + px->roff,
                                       px->rlen - px->roff, &used, &data,
                                       &dlen);
            px->roff += used;
            if (dlen)
                add_transient(px, data, dlen);
            if (rv == APR_SUCCESS)
                return 1;
            if (rv != APR_INCOMPLETE) {
                apr_brigade_cleanup(px->bb);
                ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, px->r,
                              APXLOGNO(00108) "bad chunked body from "
                              "backend %s for %s after %" APR_UINT64_T_FMT
                              " bytes: %s", px->be->hostport, px->url,
                              (apr_uint64_t)px->chunked.body_bytes,
                              px->chunked.errstr ? px->chunked.errstr : "?");
                return apx_px_backend_failed(px, HTTP_BAD_GATEWAY, "bad-response");
            }
        }
        return 0;
    default:    /* until close */
        if (avail)
            add_transient(px, px->rbuf + px->roff, avail);
        px->roff = px->rlen;
        return 0;
    }
}

/* The body ended where its framing said: the connection may be reused if
 * the backend allows it and nothing else came (and the request went out
 * whole). */
int apx_px_exchange_is_clean(const proxy_ctx *px)
{
    return px->framing != APX_HTTP_BODY_CLOSE
           && apx_http_resp_keepalive(&px->resp)
           && px->roff == px->rlen
           && px->body_done && !px->send_errno;
}

int apx_px_relay_init(proxy_ctx *px)
{
    if (px->framing == APX_HTTP_BODY_CHUNKED) {
        char *tbuf = apr_palloc(px->r->pool, TRAILER_MAX);
        apx_http_field *tf = apr_palloc(px->r->pool,
                                        TRAILER_FIELDS * sizeof(*tf));

        apx_http_chunked_init(&px->chunked, tbuf, TRAILER_MAX, tf,
                              TRAILER_FIELDS);
    }
    return px->framing == APX_HTTP_BODY_NONE
           || (px->framing == APX_HTTP_BODY_LENGTH && px->remaining == 0);
}

int apx_px_body(proxy_ctx *px, int done, apx_px_sink_fn sink, void *baton)
{
    int rc;

    for (;;) {
        if (!done && px->roff < px->rlen) {
            done = apx_px_take_body(px);
            if (done == STEP_FAIL)
                return STEP_FAIL;
        }
        if (done) {
            if (px->roff != px->rlen)
                ap_log_rerror(APLOG_MARK, APLOG_DEBUG, 0, px->r,
                              APXLOGNO(00113) "backend %s sent %"
                              APR_SIZE_T_FMT " bytes after the response to "
                              "%s; closing that connection",
                              px->be->hostport, px->rlen - px->roff, px->url);
            /* the backend is free before the client has everything */
            apx_px_finish_backend(px, apx_px_exchange_is_clean(px));
            return sink(px, baton, 1);
        }
        if ((rc = sink(px, baton, 0)) != STEP_OK)
            return rc;
        rc = apx_px_recv(px, 0, "reading the response body");
        if (rc == STEP_FAIL)
            return STEP_FAIL;
        if (rc == RECV_EOF && px->framing == APX_HTTP_BODY_CLOSE) {
            apx_px_finish_backend(px, 0);
            return sink(px, baton, 1);
        }
        if (rc != RECV_DATA) {
            ap_log_rerror(APLOG_MARK, APLOG_ERR,
                          rc == RECV_ERROR ? APR_FROM_OS_ERROR(px->recv_errno)
                                           : 0, px->r,
                          APXLOGNO(00107) "backend %s closed the connection "
                          "before the end of the response body for %s",
                          px->be->hostport, px->url);
            return apx_px_backend_failed(px, HTTP_BAD_GATEWAY,
                                         "backend-truncated");
        }
    }
}

/* ------------------------------------------------------------------ */
/* streams                                                              */

/* A response without a length (SSE, a chunked long poll, a body up to the
 * backend's close) is relayed as an open-ended stream: each backend read is
 * passed with a FLUSH bucket, so that mod_deflate, mod_brotli,
 * mod_substitute and mod_ssl emit what they hold at once instead of waiting
 * for more. Below them the core output filter would turn that FLUSH into a
 * blocking write — up to Timeout on a module worker, for a client that does
 * not read — so the NOFLUSH filter, between mod_ssl and the core, drops it
 * while a stream of this module runs; apx_px_drain_output() then writes
 * without blocking and parks on the client when it cannot (the core's own
 * non-blocking path: what it cannot write it sets aside). Other handlers on
 * the same connection (the lane) see their FLUSH buckets pass untouched. */
#define NOFLUSH_FILTER "ASYNCPROXY_NOFLUSH"

static ap_filter_rec_t *noflush_handle;

static apr_status_t noflush_filter(ap_filter_t *f, apr_bucket_brigade *bb)
{
    const int *on = f->ctx;
    apr_bucket *e, *next;

    if (*on) {
        for (e = APR_BRIGADE_FIRST(bb); e != APR_BRIGADE_SENTINEL(bb);
             e = next) {
            next = APR_BUCKET_NEXT(e);
            if (APR_BUCKET_IS_FLUSH(e))
                apr_bucket_delete(e);
        }
    }
    return ap_pass_brigade(f->next, bb);
}

void apx_stream_register_filter(apr_pool_t *p)
{
    /* just above the core (AP_FTYPE_NETWORK), below mod_ssl
     * (AP_FTYPE_CONNECTION + 5) */
    noflush_handle = ap_register_output_filter(NOFLUSH_FILTER, noflush_filter,
                                               NULL, AP_FTYPE_NETWORK - 1);
}

/* The connection's NOFLUSH switch; the filter is added once per
 * connection (a filter added to the connection's chain cannot be taken out
 * of a request's chain that already points at it). */
int *apx_px_noflush_switch(proxy_ctx *px)
{
    conn_rec *c = px->c;
    ap_filter_t *f;
    int *on;

    for (f = c->output_filters; f; f = f->next)
        if (f->frec == noflush_handle)
            return f->ctx;
    on = apr_pcalloc(c->pool, sizeof(*on));
    /* with r, so that r's chain, which already ends in the connection's
     * filters, is linked through the new one */
    if (!ap_add_output_filter_handle(noflush_handle, on, px->r, c))
        return NULL;
    return on;
}

static void stream_end(void *arg)
{
    proxy_ctx *px = arg;
    apx_child *ch = apx_ch;

    if (px->noflush)
        *px->noflush = 0;
    if (ch)
        apr_atomic_dec32(&ch->n.streams_now);
}

/* A body without a length: relayed read by read, each read flushed, and
 * the backend's silence bounded by streamtimeout= instead of timeout=
 * (which bounded the head). */
static void stream_begin(proxy_ctx *px)
{
    px->stream_defer = apx_coro_defer(px->rq->coro, stream_end, px);
    if (!px->stream_defer)
        return;     /* out of memory: relayed as any body */
    px->stream = 1;
    px->timeout = px->stream_timeout;
    apr_atomic_inc32(&apx_ch->n.streams_now);
    apr_atomic_inc32(&apx_ch->n.streams_total);
    /* an HTTP/2 stream has no socket of its own and no core filter below:
     * its FLUSH goes to h2, which never blocks on it */
    if (px->rq->client_fd >= 0) {
        px->noflush = apx_px_noflush_switch(px);
        if (px->noflush)
            *px->noflush = 1;
    }
}

static int relay_sink(proxy_ctx *px, void *baton, int last)
{
    apr_off_t len = 0;

    if (px->stream && !APR_BRIGADE_EMPTY(px->bb)) {
        apr_brigade_length(px->bb, 0, &len);
        apr_atomic_add64(&apx_ch->n.stream_bytes, (apr_uint64_t)len);
        if (!last)
            APR_BRIGADE_INSERT_TAIL(px->bb,
                                    apr_bucket_flush_create(px->c->bucket_alloc));
    }
    return apx_px_pass_out(px, last);
}

int apx_px_relay(proxy_ctx *px, int done)
{
    if (!done && !px->stream && (px->framing == APX_HTTP_BODY_CHUNKED
                                 || px->framing == APX_HTTP_BODY_CLOSE))
        stream_begin(px);
    return apx_px_body(px, done, relay_sink, NULL);
}

/* ------------------------------------------------------------------ */
/* the coroutine                                                        */

static int setup(proxy_ctx *px)
{
    apx_req *rq = px->rq;
    request_rec *r = px->r;
    const apx_mapping *m = rq->map;
    const apx_srv_conf *sc = rq->sconf;
    const char *te = apr_table_get(r->headers_in, "Transfer-Encoding");
    const char *cl = apr_table_get(r->headers_in, "Content-Length");
    apr_off_t len = 0;

    px->map = m;
    px->be = m->backend;
    px->fd = -1;
    px->timeout = m->timeout ? m->timeout
                  : sc->timeout ? sc->timeout : r->server->timeout;
    px->connect_timeout = m->connect_timeout ? m->connect_timeout
                          : sc->connect_timeout ? sc->connect_timeout
                          : APX_DEFAULT_CONNECT_TIMEOUT;
    px->client_timeout = r->server->timeout;
    px->tunnel_timeout = m->tunnel_timeout ? m->tunnel_timeout
                         : sc->tunnel_timeout ? sc->tunnel_timeout
                         : APX_DEFAULT_TUNNEL_TIMEOUT;
    px->stream_timeout = m->stream_timeout ? m->stream_timeout
                         : sc->stream_timeout ? sc->stream_timeout
                         : APX_DEFAULT_STREAM_TIMEOUT;
    px->idempotent = method_is_idempotent(r);
    px->target = apx_map_target(r, m);
    if (!px->target) {
        /* translate_name or fixups refused it already when they claimed
         * r; this is a request they did not see */
        rq->outcome = APX_OUT_ERROR;
        rq->status = HTTP_BAD_REQUEST;
        rq->note = "bad-request";
        return STEP_FAIL;
    }
    px->url = apr_pstrcat(r->pool, "http://", px->be->hostport, px->target,
                          NULL);
    px->bb = apr_brigade_create(r->pool, px->c->bucket_alloc);

    /* httpd's input filter already refused any coding but chunked and
     * dropped a Content-Length sent along with it */
    if (te) {
        px->body_kind = REQ_BODY_CHUNKED;
    }
    else if (cl) {
        /* The head goes out before httpd's input filter reads (and checks)
         * the body: check the length now, so the backend never sees one
         * that filter would refuse. */
        if (!ap_parse_strict_length(&len, cl)) {
            ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, APXLOGNO(00122)
                          "invalid Content-Length '%s' in the request", cl);
            rq->outcome = APX_OUT_ERROR;
            rq->status = HTTP_BAD_REQUEST;
            rq->note = "bad-request";
            return STEP_FAIL;
        }
        px->body_kind = REQ_BODY_LENGTH;
        px->body_length = len;
    }
    else {
        px->body_done = 1;
    }
    px->body_limit = ap_get_limit_req_body(r);
    if (px->body_limit && len > px->body_limit) {
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, APXLOGNO(00121)
                      "request body larger than LimitRequestBody (%"
                      APR_OFF_T_FMT ")", px->body_limit);
        rq->outcome = APX_OUT_ERROR;
        rq->status = HTTP_REQUEST_ENTITY_TOO_LARGE;
        rq->note = "bad-request-body";
        return STEP_FAIL;
    }

    px->upgrade = apx_px_upgrade_wanted(px);
    /* an upgraded connection is never cached */
    px->hc = px->upgrade ? NULL : apx_hc_create(px);
    return STEP_OK;
}

int apx_request_body_left(const apx_req *rq)
{
    const proxy_ctx *px = rq->proxy;

    return px && !px->body_done;
}

intptr_t apx_request_run(apx_coro *coro, void *data)
{
    apx_req *rq = data;
    request_rec *r = rq->r;
    proxy_ctx *px = apr_pcalloc(r->pool, sizeof(*px));
    int rc;

    px->rq = rq;
    px->r = r;
    px->c = rq->c;
    px->fd = -1;
    rq->proxy = px;
    px->defer = apx_coro_defer(coro, close_backend_deferred, px);

    rc = setup(px);
    if (rc == STEP_OK && px->hc) {
        rc = apx_hc_run(px);
    }
    else if (rc == STEP_OK) {
        rc = apx_px_build_head(px);
        if (rc == STEP_OK)
            rc = apx_px_exchange(px);
        if (rc == STEP_OK && px->resp.status == HTTP_SWITCHING_PROTOCOLS) {
            rc = apx_px_tunnel(px);
        }
        else {
            if (rc == STEP_OK)
                rc = apx_px_apply_head(px);
            if (rc == STEP_OK)
                rc = apx_px_relay(px, apx_px_relay_init(px));
        }
    }
    if (rc == STEP_OK && rq->outcome == APX_OUT_RUNNING)
        rq->outcome = APX_OUT_DONE;
    /* every failure path closes: nothing half-read goes back to the pool */
    apx_px_finish_backend(px, 0);
    if (px->defer)
        apx_coro_defer_disarm(coro, px->defer);
    if (px->stream_defer)
        apx_coro_defer_fire(coro, px->stream_defer);
    if (px->bufs_defer)
        apx_coro_defer_fire(coro, px->bufs_defer);
    return 0;
}
