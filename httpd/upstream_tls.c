/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* upstream_tls.c — TLS to backends with OpenSSL, non-blocking: one client
 * SSL_CTX per https:// origin (built while the configuration is read), an
 * SSL object per backend connection on its non-blocking socket, and the
 * last session each child got from the origin, offered on its next
 * connects (resumption). backend.c drives the steps and waits; upstream.c
 * keeps idle connections with their SSL object.
 *
 * Threads: see upstream_tls.h. An SSL object is used by one thread at a
 * time; the SSL_CTX is shared read-only after configuration (OpenSSL 3
 * allows SSL_new() on it from any thread); the session slot has a mutex,
 * held for a pointer swap or an SSL_set_session() (a refcount) only.
 * OpenSSL's error queue is per thread and mod_ssl shares our threads: every
 * call here starts with an empty queue and leaves it empty.
 *
 * Invariants:
 *   - mod_ssl lives in the same process: nothing here calls OpenSSL's
 *     global init or cleanup (OpenSSL 3 initialises itself on first use;
 *     the contexts go with pconf).
 *   - A session enters the slot only from a completed handshake, so with
 *     verification on, only a verified peer's session is ever offered.
 */
#include <errno.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "httpd.h"
#include "http_config.h"
#include "http_log.h"
#include "apr_strings.h"
#include "apr_thread_mutex.h"

#include "apx_poller.h"
#include "upstream_tls.h"

APLOG_USE_MODULE(asyncproxy);

struct apx_tls_origin {
    SSL_CTX *ctx;
    const char *name;               /* checked against the certificate */
    int name_is_ip;
    const char *sni;                /* NULL: an IP literal sends none */
    int verify;
    apr_thread_mutex_t *mtx;        /* per child: the session slot */
    SSL_SESSION *last;              /* per child: newest session, or NULL */
};

/* ------------------------------------------------------------------ */
/* configuration                                                        */

int apx_tls_option(cmd_parms *cmd, apx_tls_conf *tc, const char *key,
                   const char *val, const char **err)
{
    *err = NULL;
    if (!strcasecmp(key, "tlsca")) {
        if (!*val)
            *err = apr_psprintf(cmd->pool, "%s: option tlsca= needs a file "
                                "of PEM certificates", cmd->cmd->name);
        else
            tc->ca_file = ap_server_root_relative(cmd->pool, val);
        return 1;
    }
    if (!strcasecmp(key, "tlsname")) {
        if (!*val || strpbrk(val, " \t/"))
            *err = apr_psprintf(cmd->pool, "%s: invalid value '%s' for "
                                "option tlsname= (a host name)",
                                cmd->cmd->name, val);
        else
            tc->name = val;
        return 1;
    }
    if (!strcasecmp(key, "tlsverify")) {
        if (!strcasecmp(val, "on"))
            tc->verify = 1;
        else if (!strcasecmp(val, "off"))
            tc->verify = 0;
        else
            *err = apr_psprintf(cmd->pool, "%s: invalid value '%s' for "
                                "option tlsverify= (on or off)",
                                cmd->cmd->name, val);
        return 1;
    }
    return 0;
}

static int str_equal(const char *a, const char *b)
{
    return a == b || (a && b && !strcmp(a, b));
}

int apx_tls_conf_equal(const apx_tls_conf *a, const apx_tls_conf *b)
{
    return str_equal(a->ca_file, b->ca_file) && str_equal(a->name, b->name)
           && (a->verify != 0) == (b->verify != 0);
}

/* New sessions come after the handshake (TLS 1.2) or in tickets read with
 * the response (TLS 1.3); the newest one is kept. Returns 1: we keep the
 * reference OpenSSL gave us. */
static int session_new(SSL *ssl, SSL_SESSION *sess)
{
    apx_tls_origin *to = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
    SSL_SESSION *old;

    if (!to || !to->mtx || !SSL_SESSION_is_resumable(sess))
        return 0;
    apr_thread_mutex_lock(to->mtx);
    old = to->last;
    to->last = sess;
    apr_thread_mutex_unlock(to->mtx);
    if (old)
        SSL_SESSION_free(old);
    return 1;
}

static apr_status_t ctx_free(void *data)
{
    apx_tls_origin *to = data;

    SSL_CTX_free(to->ctx);
    to->ctx = NULL;
    return APR_SUCCESS;
}

/* OpenSSL's first error, for a configuration message. */
static const char *openssl_error(apr_pool_t *p)
{
    unsigned long e = ERR_get_error();
    char buf[256];

    ERR_clear_error();
    if (!e)
        return "unknown error";
    ERR_error_string_n(e, buf, sizeof(buf));
    return apr_pstrdup(p, buf);
}

static int is_ip_literal(const char *host)
{
    ASN1_OCTET_STRING *ip = a2i_IPADDRESS(host);

    if (!ip)
        return 0;
    ASN1_OCTET_STRING_free(ip);
    return 1;
}

const char *apx_tls_origin_create(apr_pool_t *pconf, const apx_tls_conf *tc,
                                  const char *host, apx_tls_origin **pto)
{
    apx_tls_origin *to = apr_pcalloc(pconf, sizeof(*to));
    SSL_CTX *ctx;

    ERR_clear_error();
    ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx)
        return apr_psprintf(pconf, "cannot create a TLS context: %s",
                            openssl_error(pconf));
    to->ctx = ctx;
    apr_pool_cleanup_register(pconf, to, ctx_free, apr_pool_cleanup_null);
    to->verify = tc->verify != 0;
    to->name = tc->name ? tc->name : host;
    to->name_is_ip = is_ip_literal(to->name);
    /* RFC 6066 §3: no IP literal in SNI */
    to->sni = to->name_is_ip ? NULL : to->name;

    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    /* a backend that closes without close_notify ends the stream as a
     * plain TCP close would (framing decides whether it was whole) */
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
    /* partial writes: SSL_write behaves as send(); the retry after a
     * WANT_WRITE may come from another thread, with the same bytes at
     * the same place, but say the buffer may move anyway. Idle pooled
     * connections give their 34 KB of buffers back. */
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE
                          | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER
                          | SSL_MODE_RELEASE_BUFFERS);
    /* one read() takes what the socket holds, not a record header and
     * then its body (two syscalls a record); bytes read ahead are
     * invisible to epoll: apx_tls_pending() counts them */
    SSL_CTX_set_read_ahead(ctx, 1);
    /* our own slot, not OpenSSL's cache: one session per origin per child */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT
                                        | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx, session_new);
    SSL_CTX_set_app_data(ctx, to);
    if (to->verify) {
        if (tc->ca_file) {
            if (SSL_CTX_load_verify_locations(ctx, tc->ca_file, NULL) != 1)
                return apr_psprintf(pconf, "cannot read the CA certificates "
                                    "of tlsca=%s: %s", tc->ca_file,
                                    openssl_error(pconf));
        }
        else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
            return apr_psprintf(pconf, "cannot use the system's CA "
                                "certificates: %s", openssl_error(pconf));
        }
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    }
    else {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    }
    ERR_clear_error();
    *pto = to;
    return NULL;
}

static apr_status_t slot_free(void *data)
{
    apx_tls_origin *to = data;

    if (to->last)
        SSL_SESSION_free(to->last);
    to->last = NULL;
    to->mtx = NULL;
    return APR_SUCCESS;
}

void apx_tls_origin_child_init(apx_tls_origin *to, apr_pool_t *pchild)
{
    apr_status_t rv;

    to->last = NULL;
    rv = apr_thread_mutex_create(&to->mtx, APR_THREAD_MUTEX_DEFAULT, pchild);
    if (rv != APR_SUCCESS) {
        /* every connect then makes a full handshake */
        to->mtx = NULL;
        ap_log_perror(APLOG_MARK, APLOG_WARNING, rv, pchild, APXLOGNO(00028)
                      "cannot create the TLS session lock of backend %s; "
                      "TLS sessions to it will not be resumed", to->name);
        return;
    }
    apr_pool_cleanup_register(pchild, to, slot_free, apr_pool_cleanup_null);
}

/* ------------------------------------------------------------------ */
/* connections                                                          */

SSL *apx_tls_new(apx_tls_origin *to, int fd)
{
    SSL *ssl;
    int ok;

    ERR_clear_error();
    ssl = SSL_new(to->ctx);
    if (!ssl)
        goto fail;
    ok = SSL_set_fd(ssl, fd) == 1;
    if (ok && to->sni)
        ok = SSL_set_tlsext_host_name(ssl, to->sni) == 1;
    if (ok && to->verify) {
        /* the hostname check (SSL_set1_host) or, for an IP literal, the
         * address check against the certificate's IP SANs */
        ok = to->name_is_ip
             ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), to->name)
               == 1
             : SSL_set1_host(ssl, to->name) == 1;
        if (ok)
            SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    }
    if (ok && to->mtx) {
        apr_thread_mutex_lock(to->mtx);
        if (to->last)
            ok = SSL_set_session(ssl, to->last) == 1;
        apr_thread_mutex_unlock(to->mtx);
    }
    if (!ok)
        goto fail;
    SSL_set_connect_state(ssl);
    return ssl;
fail:
    SSL_free(ssl);
    ERR_clear_error();
    return NULL;
}

/* Maps an SSL_get_error() verdict: -1 with *want, or an error (errno). The
 * error queue is left for apx_tls_failure() only for SSL_ERROR_SSL. */
static int step_result(SSL *ssl, int rc, unsigned *want)
{
    int e = SSL_get_error(ssl, rc);
    int sys = errno;

    *want = 0;
    switch (e) {
    case SSL_ERROR_WANT_READ:
        *want = APX_EV_IN;
        return -1;
    case SSL_ERROR_WANT_WRITE:
        *want = APX_EV_OUT;
        return -1;
    case SSL_ERROR_ZERO_RETURN:
        return 0;
    case SSL_ERROR_SYSCALL:
        ERR_clear_error();
        errno = sys ? sys : ECONNRESET;
        return -1;
    default:
        errno = EPROTO;
        return -1;
    }
}

int apx_tls_handshake(SSL *ssl, unsigned *want)
{
    int rc;

    ERR_clear_error();
    rc = SSL_do_handshake(ssl);
    if (rc == 1) {
        *want = 0;
        return 0;
    }
    rc = step_result(ssl, rc, want);
    if (rc == 0) {
        /* closed during the handshake */
        errno = ECONNRESET;
        rc = -1;
    }
    return rc;
}

ssize_t apx_tls_read(SSL *ssl, char *buf, size_t len, unsigned *want)
{
    size_t got = 0, n;
    int rc;

    /* One SSL_read delivers one record (16 KiB at most): read on while
     * bytes are already in hand (read ahead), so one call fills more of
     * the buffer without a read() that would only say EAGAIN. A failure
     * after some bytes is met again by the next call. */
    for (;;) {
        ERR_clear_error();
        rc = SSL_read_ex(ssl, buf + got, len - got, &n);
        if (rc != 1)
            break;
        got += n;
        if (got == len || !SSL_has_pending(ssl))
            return (ssize_t)got;
    }
    if (got) {
        ERR_clear_error();
        *want = 0;
        return (ssize_t)got;
    }
    return step_result(ssl, rc, want);
}

ssize_t apx_tls_write(SSL *ssl, const char *buf, size_t len, unsigned *want)
{
    size_t n;
    int rc;

    ERR_clear_error();
    rc = SSL_write_ex(ssl, buf, len, &n);
    if (rc == 1) {
        *want = 0;
        return (ssize_t)n;
    }
    rc = step_result(ssl, rc, want);
    if (rc == 0) {
        /* the peer's close_notify: it takes nothing more */
        errno = EPIPE;
        rc = -1;
    }
    return rc;
}

int apx_tls_pending(SSL *ssl)
{
    /* decrypted bytes, or raw ones read ahead and not yet processed */
    return SSL_has_pending(ssl);
}

int apx_tls_failure(SSL *ssl, apr_pool_t *p, const char **why)
{
    long v = SSL_get_verify_result(ssl);
    unsigned long e;
    char buf[256];

    if (v != X509_V_OK) {
        ERR_clear_error();
        *why = X509_verify_cert_error_string(v);
        return 1;
    }
    e = ERR_get_error();
    ERR_clear_error();
    if (!e) {
        *why = "connection closed or reset during the handshake";
        return 0;
    }
    ERR_error_string_n(e, buf, sizeof(buf));
    *why = apr_pstrdup(p, buf);
    return 0;
}

int apx_tls_resumed(SSL *ssl)
{
    return SSL_session_reused(ssl) == 1;
}

int apx_tls_idle_usable(SSL *ssl)
{
    char b;
    size_t n;
    int rc;

    if (SSL_pending(ssl) > 0)
        return 0;
    ERR_clear_error();
    /* processes the records there (a ticket, a close_notify, an alert);
     * application data now would desynchronise the next response */
    rc = SSL_peek_ex(ssl, &b, 1, &n);
    if (rc == 1)
        return 0;
    rc = SSL_get_error(ssl, rc);
    ERR_clear_error();
    return rc == SSL_ERROR_WANT_READ;
}

void apx_tls_close(SSL *ssl, int notify)
{
    if (!ssl)
        return;
    ERR_clear_error();
    if (notify) {
        /* one non-blocking attempt; a full socket buffer skips it */
        SSL_shutdown(ssl);
    }
    /* SSL_free() of a connection that sent no close_notify marks its
     * session not resumable — the very session our slot holds (a TLS 1.3
     * ticket becomes the connection's session). A connection closed for
     * a timeout, a peer's close or a response that ends with the
     * connection says nothing against its session; a fatal TLS error has
     * already marked it (OpenSSL does on a fatal alert). */
    SSL_set_shutdown(ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
    ERR_clear_error();
    SSL_free(ssl);
}
