/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* upstream.c — backend origins and, per child, their pools of
 * idle keep-alive connections.
 *
 * An origin (http, host, port) with its pool settings (max, ttl) is
 * declared while the configuration is read and resolved then. At child_init every origin gets its pool: a ring of
 * idle connections (fd + the time it went idle) used as a LIFO — the most
 * recently used connection is the one most likely still open on the
 * backend — whose oldest entries, at the other end, are the first to expire.
 *
 * Threads:
 *   apx_backend_declare()        configuration (single-threaded, parent)
 *   apx_backends_child_init()    child_init, before any engine thread
 *   apx_backend_take(), _release()   any request thread (MPM threads and
 *                                module workers at once): the ring has a
 *                                mutex, held for a few loads and stores
 *                                only — never across a syscall.
 * Invariants:
 *   - An fd is either in one ring or owned by exactly one request.
 *   - A ring never holds more than the origin's pool_max entries, and
 *     entries in it are ordered by idle time (oldest at the head).
 *   - At child exit (pchild cleanup, after the engine threads are joined)
 *     every idle fd is closed.
 */
#include <sys/socket.h>
#include <errno.h>
#include <unistd.h>

#include "httpd.h"
#include "http_config.h"
#include "http_log.h"
#include "apr_strings.h"
#include "apr_thread_mutex.h"

#include "child.h"
#include "upstream.h"

APLOG_USE_MODULE(asyncproxy);
extern module AP_MODULE_DECLARE_DATA asyncproxy_module;

/* Stale fds closed per take/release outside the lock; the rest wait for
 * the next call (each call removes at least as many as it could add). */
#define EXPIRE_BATCH 16

typedef struct idle_conn {
    int fd;
    apr_time_t since;
} idle_conn;

typedef struct backend_pool {
    apr_thread_mutex_t *mtx;
    idle_conn *ring;            /* cap entries */
    unsigned cap, head, count;  /* oldest at head, newest at head+count-1 */
} backend_pool;

/* ------------------------------------------------------------------ */
/* configuration                                                        */

/* The pool settings are part of the key: they were once fields written by
 * every mapping to the origin, so the last AsyncProxyPass read (in any
 * virtual host) decided them for all. Keyed, each mapping gets the max=
 * and ttl= it says; equal settings still share one pool (and its warm
 * connections). */
const char *apx_backend_declare(apr_pool_t *pconf, const char *hostname,
                                apr_port_t port, unsigned pool_max,
                                apr_interval_time_t pool_ttl,
                                apx_backend **pb)
{
    apr_array_header_t *all = apx_gconf.backends;
    apx_backend *be;
    apr_status_t rv;
    int i;

    for (i = 0; i < all->nelts; i++) {
        be = APR_ARRAY_IDX(all, i, apx_backend *);
        if (be->port == port && !strcasecmp(be->hostname, hostname)
            && be->pool_max == pool_max && be->pool_ttl == pool_ttl) {
            *pb = be;
            return NULL;
        }
    }
    be = apr_pcalloc(pconf, sizeof(*be));
    be->hostname = apr_pstrdup(pconf, hostname);
    be->port = port;
    /* an IPv6 literal needs its brackets back for "host:port" */
    be->hostport = strchr(hostname, ':')
                   ? apr_psprintf(pconf, "[%s]:%u", hostname, (unsigned)port)
                   : apr_psprintf(pconf, "%s:%u", hostname, (unsigned)port);
    be->pool_max = pool_max;
    be->pool_ttl = pool_ttl;
    rv = apr_sockaddr_info_get(&be->addr, be->hostname, APR_UNSPEC, port, 0,
                               pconf);
    if (rv != APR_SUCCESS) {
        char buf[120];

        return apr_psprintf(pconf, "cannot resolve backend host '%s': %s",
                            hostname, apr_strerror(rv, buf, sizeof(buf)));
    }
    be->id = (unsigned)all->nelts;
    APR_ARRAY_PUSH(all, apx_backend *) = be;
    *pb = be;
    return NULL;
}

/* ------------------------------------------------------------------ */
/* the per-child pools                                                  */

static apr_status_t close_idle(void *data)
{
    backend_pool *bp = data;

    /* pchild cleanup: the engine's pre-cleanup joined its threads, and the
     * MPM's are gone, so nothing takes or releases any more. */
    while (bp->count) {
        close(bp->ring[bp->head].fd);
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

/* Removes up to max expired entries from the head; returns how many, their
 * fds in out[]. Called with the lock held. */
static unsigned expire_head(backend_pool *bp, apr_interval_time_t ttl,
                            apr_time_t now, int *out, unsigned max)
{
    unsigned n = 0;

    while (n < max && bp->count
           && now - bp->ring[bp->head].since >= ttl) {
        out[n++] = bp->ring[bp->head].fd;
        bp->head = (bp->head + 1) % bp->cap;
        bp->count--;
    }
    return n;
}

static void close_all(const int *fds, unsigned n)
{
    unsigned i;

    for (i = 0; i < n; i++)
        close(fds[i]);
}

/* An idle connection is usable when the backend neither closed it (recv
 * returns 0, or an error such as ECONNRESET) nor sent anything on it since
 * the last response (bytes there would desynchronise the next one). */
static int conn_is_alive(int fd)
{
    char b;
    ssize_t n = recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);

    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

int apx_backend_take(apx_backend *be, apr_time_t now)
{
    backend_pool *bp = be->pool;
    int stale[EXPIRE_BATCH];
    unsigned n;
    int fd;

    if (!bp || !bp->cap)
        return -1;
    for (;;) {
        fd = -1;
        apr_thread_mutex_lock(bp->mtx);
        n = expire_head(bp, be->pool_ttl, now, stale, EXPIRE_BATCH);
        if (bp->count) {
            bp->count--;
            fd = bp->ring[(bp->head + bp->count) % bp->cap].fd;
        }
        apr_thread_mutex_unlock(bp->mtx);
        close_all(stale, n);
        if (fd < 0 || conn_is_alive(fd))
            return fd;
        close(fd);
    }
}

void apx_backend_release(apx_backend *be, int fd, apr_time_t now)
{
    backend_pool *bp = be->pool;
    int stale[EXPIRE_BATCH + 1];
    unsigned n;

    /* A stopping child has no use for idle connections. */
    if (!bp || !bp->cap || (apx_ch && apr_atomic_read32(&apx_ch->stopping))) {
        close(fd);
        return;
    }
    apr_thread_mutex_lock(bp->mtx);
    n = expire_head(bp, be->pool_ttl, now, stale, EXPIRE_BATCH);
    if (bp->count == bp->cap) {
        /* full: the oldest goes, the freshest stays */
        stale[n++] = bp->ring[bp->head].fd;
        bp->head = (bp->head + 1) % bp->cap;
        bp->count--;
    }
    bp->ring[(bp->head + bp->count) % bp->cap].fd = fd;
    bp->ring[(bp->head + bp->count) % bp->cap].since = now;
    bp->count++;
    apr_thread_mutex_unlock(bp->mtx);
    close_all(stale, n);
}
