/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* upstream.c — backend origins and, per child, their pools of
 * idle keep-alive connections.
 *
 * An origin (http or https, host, port; or a Unix socket) with its pool
 * settings (max, ttl) and TLS settings is declared while the configuration
 * is read, resolved then, and an https:// one gets its TLS context
 * (upstream_tls.c). At child_init every origin gets its pool: a ring of
 * idle connections (fd, TLS object, the time it went idle) used as a LIFO
 * — the most recently used connection is the one most likely still open
 * on the backend — whose oldest entries, at the other end, are the first
 * to expire.
 *
 * Threads:
 *   apx_backend_declare()        configuration (single-threaded, parent)
 *   apx_backends_child_init()    child_init, before any engine thread
 *   apx_backend_take(), _release()   any request thread (MPM threads and
 *                                module workers at once): the ring has a
 *                                mutex, held for a few loads and stores
 *                                only — never across a syscall or an
 *                                OpenSSL call.
 * Invariants:
 *   - An fd (with its TLS object) is either in one ring or owned by
 *     exactly one request; closing an entry frees its TLS object.
 *   - A ring never holds more than the origin's pool_max entries, and
 *     entries in it are ordered by idle time (oldest at the head).
 *   - At child exit (pchild cleanup, after the engine threads are joined)
 *     every idle fd is closed.
 */
#include <sys/socket.h>
#include <sys/un.h>
#include <errno.h>
#include <unistd.h>

#include "httpd.h"
#include "http_config.h"
#include "http_log.h"
#include "apr_strings.h"
#include "apr_thread_mutex.h"
#include "apr_uri.h"

#include "child.h"
#include "upstream.h"

APLOG_USE_MODULE(asyncproxy);
extern module AP_MODULE_DECLARE_DATA asyncproxy_module;

/* Stale fds closed per take/release outside the lock; the rest wait for
 * the next call (each call removes at least as many as it could add). */
#define EXPIRE_BATCH 16

typedef struct idle_conn {
    int fd;
    struct ssl_st *ssl;         /* https:// origins, else NULL */
    apr_time_t since;
} idle_conn;

typedef struct backend_pool {
    apr_thread_mutex_t *mtx;
    idle_conn *ring;            /* cap entries */
    unsigned cap, head, count;  /* oldest at head, newest at head+count-1 */
} backend_pool;

/* ------------------------------------------------------------------ */
/* configuration                                                        */

static int spec_equal(const apx_backend *be, const apx_origin_spec *o)
{
    if (!be->uds_path != !o->uds_path || be->tls != o->tls)
        return 0;
    if (o->uds_path)
        return !strcmp(be->uds_path, o->uds_path)
               && !strcasecmp(be->hostname, o->hostname);
    return be->port == o->port && !strcasecmp(be->hostname, o->hostname)
           && (!o->tls || apx_tls_conf_equal(&be->tls_conf, &o->tls_conf));
}

/* The pool settings are part of the key: they were once fields written by
 * every mapping to the origin, so the last AsyncProxyPass read (in any
 * virtual host) decided them for all. Keyed, each mapping gets the max=
 * and ttl= it says; equal settings still share one pool (and its warm
 * connections). The TLS settings are too: a connection verified against
 * one CA file is no connection for a mapping that trusts another. */
const char *apx_backend_declare(apr_pool_t *pconf,
                                const apx_origin_spec *spec,
                                unsigned pool_max,
                                apr_interval_time_t pool_ttl,
                                apx_backend **pb)
{
    apr_array_header_t *all = apx_gconf.backends;
    const char *hostname = spec->hostname, *err;
    apr_port_t port = spec->port;
    apx_backend *be;
    apr_status_t rv;
    int i;

    for (i = 0; i < all->nelts; i++) {
        be = APR_ARRAY_IDX(all, i, apx_backend *);
        if (spec_equal(be, spec) && be->pool_max == pool_max
            && be->pool_ttl == pool_ttl) {
            *pb = be;
            return NULL;
        }
    }
    be = apr_pcalloc(pconf, sizeof(*be));
    be->hostname = apr_pstrdup(pconf, hostname);
    be->port = port;
    be->pool_max = pool_max;
    be->pool_ttl = pool_ttl;
    if (spec->uds_path) {
        be->uds_path = apr_pstrdup(pconf, spec->uds_path);
        be->hostport = apr_pstrcat(pconf, "unix:", be->uds_path, NULL);
    }
    else {
        /* an IPv6 literal needs its brackets back for "host:port" */
        be->hostport = strchr(hostname, ':')
                       ? apr_psprintf(pconf, "[%s]:%u", hostname,
                                      (unsigned)port)
                       : apr_psprintf(pconf, "%s:%u", hostname,
                                      (unsigned)port);
        rv = apr_sockaddr_info_get(&be->addr, be->hostname, APR_UNSPEC, port,
                                   0, pconf);
        if (rv != APR_SUCCESS) {
            char buf[120];

            return apr_psprintf(pconf, "cannot resolve backend host '%s': "
                                "%s", hostname,
                                apr_strerror(rv, buf, sizeof(buf)));
        }
    }
    if (spec->tls) {
        be->tls = 1;
        be->tls_conf = spec->tls_conf;
        err = apx_tls_origin_create(pconf, &be->tls_conf, be->hostname,
                                    &be->tls_origin);
        if (err)
            return err;
    }
    be->id = (unsigned)all->nelts;
    APR_ARRAY_PUSH(all, apx_backend *) = be;
    *pb = be;
    return NULL;
}

/* mod_proxy's form: the socket, then the URL the backend is asked for
 * (its host goes into Host). The path must be absolute: the server root
 * is not the backend's business. */
const char *apx_origin_parse_unix(apr_pool_t *p, const char *url,
                                  apx_origin_spec *spec, const char **rest)
{
    const char *bar = strchr(url, '|');
    const char *path;

    if (strncasecmp(url, "unix:", 5) || !bar)
        return "not unix:PATH|http://host/path";
    path = apr_pstrmemdup(p, url + 5, bar - (url + 5));
    if (*path != '/')
        return "the socket of unix:PATH needs an absolute path";
    if (strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path))
        return "the socket path is too long for a Unix socket";
    if (strncasecmp(bar + 1, "http://", 7))
        return "a Unix socket is spoken to in http:// "
               "(unix:PATH|http://host/path)";
    spec->uds_path = path;
    *rest = bar + 1;
    return NULL;
}

const char *apx_backend_origin(apr_pool_t *p, const apx_backend *be)
{
    if (be->uds_path)
        return apr_pstrcat(p, "unix:", be->uds_path, "|http://",
                           be->hostname, NULL);
    return apr_pstrcat(p, be->tls ? "https://" : "http://", be->hostport,
                       NULL);
}

/* ------------------------------------------------------------------ */
/* the per-child pools                                                  */

static apr_status_t close_idle(void *data)
{
    backend_pool *bp = data;

    /* pchild cleanup: the engine's pre-cleanup joined its threads, and the
     * MPM's are gone, so nothing takes or releases any more. */
    while (bp->count) {
        apx_backend_close(bp->ring[bp->head].fd, bp->ring[bp->head].ssl, 1);
        bp->head = (bp->head + 1) % bp->cap;
        bp->count--;
    }
    return APR_SUCCESS;
}

void apx_backends_child_init(apr_pool_t *pchild)
{
    apr_array_header_t *all = apx_gconf.backends;
    int i;

    if (!all)
        return;
    for (i = 0; i < all->nelts; i++) {
        apx_backend *be = APR_ARRAY_IDX(all, i, apx_backend *);
        backend_pool *bp = apr_pcalloc(pchild, sizeof(*bp));
        apr_status_t rv;

        be->pool = NULL;
        if (be->tls_origin)
            apx_tls_origin_child_init(be->tls_origin, pchild);
        rv = apr_thread_mutex_create(&bp->mtx, APR_THREAD_MUTEX_DEFAULT,
                                     pchild);
        if (rv != APR_SUCCESS) {
            /* no pool for this origin: every request connects afresh */
            ap_log_perror(APLOG_MARK, APLOG_CRIT, rv, pchild,
                          APXLOGNO(00150) "cannot create the connection "
                          "pool lock of backend %s; connections to it will "
                          "not be reused", be->hostport);
            continue;
        }
        bp->cap = be->pool_max;
        if (bp->cap)
            bp->ring = apr_palloc(pchild, bp->cap * sizeof(*bp->ring));
        apr_pool_cleanup_register(pchild, bp, close_idle,
                                  apr_pool_cleanup_null);
        be->pool = bp;
    }
}

/* Removes up to max expired entries from the head; returns how many, in
 * out[]. Called with the lock held. */
static unsigned expire_head(backend_pool *bp, apr_interval_time_t ttl,
                            apr_time_t now, idle_conn *out, unsigned max)
{
    unsigned n = 0;

    while (n < max && bp->count
           && now - bp->ring[bp->head].since >= ttl) {
        out[n++] = bp->ring[bp->head];
        bp->head = (bp->head + 1) % bp->cap;
        bp->count--;
    }
    return n;
}

void apx_backend_close(int fd, struct ssl_st *ssl, int notify)
{
    apx_tls_close(ssl, notify);
    if (fd >= 0)
        close(fd);
}

static void close_all(const idle_conn *ic, unsigned n)
{
    unsigned i;

    for (i = 0; i < n; i++)
        apx_backend_close(ic[i].fd, ic[i].ssl, 1);
}

/* An idle connection is usable when the backend neither closed it (recv
 * returns 0, or an error such as ECONNRESET) nor sent anything on it since
 * the last response (bytes there would desynchronise the next one). On a
 * TLS connection bytes there may be records that are no response: a
 * session ticket sent late, a close_notify; they are processed, and the
 * connection kept only when that delivered nothing and left it open. */
static int conn_is_alive(int fd, struct ssl_st *ssl)
{
    char b;
    ssize_t n = recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);

    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)
        && (!ssl || !apx_tls_pending(ssl)))
        return 1;
    return ssl && n != 0 && apx_tls_idle_usable(ssl);
}

int apx_backend_take(apx_backend *be, apr_time_t now, struct ssl_st **ssl)
{
    backend_pool *bp = be->pool;
    idle_conn stale[EXPIRE_BATCH], got;
    unsigned n;

    *ssl = NULL;
    if (!bp || !bp->cap)
        return -1;
    for (;;) {
        got.fd = -1;
        got.ssl = NULL;
        apr_thread_mutex_lock(bp->mtx);
        n = expire_head(bp, be->pool_ttl, now, stale, EXPIRE_BATCH);
        if (bp->count) {
            bp->count--;
            got = bp->ring[(bp->head + bp->count) % bp->cap];
        }
        apr_thread_mutex_unlock(bp->mtx);
        close_all(stale, n);
        if (got.fd < 0 || conn_is_alive(got.fd, got.ssl)) {
            *ssl = got.ssl;
            return got.fd;
        }
        apx_backend_close(got.fd, got.ssl, 0);
    }
}

void apx_backend_release(apx_backend *be, int fd, struct ssl_st *ssl,
                         apr_time_t now)
{
    backend_pool *bp = be->pool;
    idle_conn stale[EXPIRE_BATCH + 1];
    unsigned n;

    /* A stopping child has no use for idle connections. */
    if (!bp || !bp->cap || (apx_ch && apr_atomic_read32(&apx_ch->stopping))) {
        apx_backend_close(fd, ssl, 1);
        return;
    }
    apr_thread_mutex_lock(bp->mtx);
    n = expire_head(bp, be->pool_ttl, now, stale, EXPIRE_BATCH);
    if (bp->count == bp->cap) {
        /* full: the oldest goes, the freshest stays */
        stale[n++] = bp->ring[bp->head];
        bp->head = (bp->head + 1) % bp->cap;
        bp->count--;
    }
    bp->ring[(bp->head + bp->count) % bp->cap].fd = fd;
    bp->ring[(bp->head + bp->count) % bp->cap].ssl = ssl;
    bp->ring[(bp->head + bp->count) % bp->cap].since = now;
    bp->count++;
    apr_thread_mutex_unlock(bp->mtx);
    close_all(stale, n);
}
