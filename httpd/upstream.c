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
 * Size: an explicit max= (idle= on a member) pins the ring's capacity.
 * Without one (APX_POOL_AUTO) the capacity follows demand: the highest
 * number of the origin's connections held by requests at once in this
 * child over the last one to two windows of ttl (at least 1 s), between
 * POOL_FLOOR and a ceiling from the fd limit ((RLIMIT_NOFILE - 64) / 2,
 * which also bounds all automatic pools together). The ring grows by
 * doubling (a malloc under the lock, a dozen times in a child's life at
 * most) and its capacity shrinks as the demand falls; the memory stays.
 * The demand is counted here: a take that finds a live connection, or
 * apx_backend_opened() for a new socket, begins a use; a release or
 * apx_backend_discard() ends it.
 *
 * Expiry: entries idle for ttl are closed by take/release (a batch at the
 * head) and by a timer on the engine's poller (a record parked with a
 * timeout and no fd, re-armed while any ring holds an entry, every
 * ttl/4 within [50 ms, 1 s]), so an origin no longer used still lets its
 * connections go. The timer also closes entries above the capacity and,
 * when the child's descriptors run short, the oldest whatever their age.
 * Without an engine (a synchronous MPM) there is no timer: entries expire
 * when the origin is used again.
 *
 * Threads:
 *   apx_backend_declare()        configuration (single-threaded, parent)
 *   apx_backends_child_init()    child_init, before any engine thread
 *   apx_backend_take(), _release(), _opened(), _discard(),
 *   apx_backends_status()        any request thread (MPM threads and
 *                                module workers at once); the timer on a
 *                                module worker, one pass at a time. Each
 *                                ring has a mutex, held for a few loads
 *                                and stores (and a rare malloc) only —
 *                                never across a close(), another syscall
 *                                or an OpenSSL call.
 * Invariants:
 *   - An fd (with its TLS object) is either in one ring or owned by
 *     exactly one request; closing an entry frees its TLS object.
 *   - A ring never holds more than its capacity (cap) once a call on it
 *     returns: a release at cap closes the oldest; a cap that fell is
 *     reached by batches (release, timer). Entries are ordered by idle
 *     time (oldest at the head).
 *   - idle_total is the sum of every ring's count (changed under each
 *     ring's mutex); the timer is on while it is not 0.
 *   - At child exit (pchild cleanup, after the engine threads are joined)
 *     every idle fd is closed.
 */
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/resource.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include "httpd.h"
#include "http_config.h"
#include "http_log.h"
#include "http_protocol.h"
#include "apr_atomic.h"
#include "apr_strings.h"
#include "apr_thread_mutex.h"
#include "apr_uri.h"

#include "child.h"
#include "upstream.h"

APLOG_USE_MODULE(asyncproxy);
extern module AP_MODULE_DECLARE_DATA asyncproxy_module;

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

/* Stale fds closed per take/release outside the lock; the rest wait for
 * the next call or the timer (each call removes at least as many as it
 * could add). */
#define EXPIRE_BATCH    16
/* The timer closes at most this many entries of one pool per lock hold,
 * and at most TIMER_BUDGET per pass over all pools: thousands of idle
 * connections that expire together (the end of a burst) go in a few
 * passes, TICK_SOON apart, without a long stall of one worker. */
#define TIMER_BATCH     64
#define TIMER_BUDGET    1024
#define TICK_SOON       apr_time_from_msec(10)
/* The timer's period is a quarter of the shortest ttl= (so an entry goes
 * within 1.25 x ttl), but no shorter than TICK_MIN (each tick is one
 * timeout-queue entry and a pass over the origins' locks) and no longer
 * than TICK_MAX. */
#define TICK_MIN        apr_time_from_msec(50)
#define TICK_MAX        apr_time_from_sec(1)
/* An automatic pool keeps at least this many entries: a handful of
 * requests in a row must not connect afresh because the demand window
 * saw only one at a time. The ring starts at this size. */
#define POOL_FLOOR      16
/* The demand is the highest number of this origin's connections held by
 * requests at once over the last one to two windows of this length (the
 * pool's ttl, but at least DEMAND_WINDOW_MIN): a burst that ended longer
 * ago than that no longer sizes the pool, and by then its idle
 * connections have expired anyway. */
#define DEMAND_WINDOW_MIN apr_time_from_sec(1)
/* Descriptors the fd ceiling keeps out of every pool's reach: listeners,
 * logs, the engine's epoll and eventfds, the scoreboard, modules' files. */
#define FD_RESERVE      64
/* No pool grows past this, even with no fd limit (the max= bound). */
#define POOL_HARD_MAX   100000

typedef struct idle_conn {
    int fd;
    struct ssl_st *ssl;         /* https:// origins, else NULL */
    apr_time_t since;
} idle_conn;

/* be and keeps are set at child_init and read without the lock; the rest
 * is under mtx. */
typedef struct backend_pool {
    apr_thread_mutex_t *mtx;
    apx_backend *be;
    int keeps;                  /* 0: max=0 (or no memory): no ring */
    idle_conn *ring;            /* `alloc` entries, malloc'd */
    unsigned alloc, head, count;  /* oldest at head, newest at
                                   * head+count-1 (mod alloc) */
    unsigned cap;               /* most entries kept now: max=/idle=, or
                                 * the demand between POOL_FLOOR and the
                                 * fd ceiling */
    unsigned out;               /* connections held by requests now */
    unsigned peak, peak_prev;   /* highest `out` in this window, the last */
    apr_time_t window_at;       /* start of this window */
    /* figures for the status page */
    unsigned idle_peak;         /* highest `count` since the child began */
    apr_uint64_t connects;      /* sockets opened to the origin */
    apr_uint64_t reuses;        /* live idle connections taken */
    apr_uint64_t expired;       /* closed by age (ttl passed) by the timer */
    apr_uint64_t expired_use;   /* ... by a take or release */
    apr_uint64_t trimmed;       /* closed for room: above cap, fds short */
    apr_uint64_t dead;          /* closed by the backend, found on take */
} backend_pool;

/* Per child; set at child_init, then read-only (idle_total and the
 * timer's on are atomics). */
static unsigned pool_ceiling;           /* most entries of an automatic
                                         * pool, and of all pools
                                         * together */
static rlim_t fd_soft_limit;
static apr_interval_time_t tick_every;
static volatile apr_uint32_t idle_total;    /* entries in every ring */
static apx_timer expiry_tick;

static int pool_is_auto(const apx_backend *be)
{
    return be->pool_max == APX_POOL_AUTO;
}

static apr_interval_time_t demand_window(const apx_backend *be)
{
    return be->pool_ttl > DEMAND_WINDOW_MIN ? be->pool_ttl
                                            : DEMAND_WINDOW_MIN;
}

/* ---- the ring (under mtx) ---- */

static idle_conn ring_pop_oldest(backend_pool *bp)
{
    idle_conn ic = bp->ring[bp->head];

    bp->head = (bp->head + 1) % bp->alloc;
    bp->count--;
    apr_atomic_dec32(&idle_total);
    return ic;
}

static idle_conn ring_pop_newest(backend_pool *bp)
{
    bp->count--;
    apr_atomic_dec32(&idle_total);
    return bp->ring[(bp->head + bp->count) % bp->alloc];
}

static void ring_push(backend_pool *bp, int fd, struct ssl_st *ssl,
                      apr_time_t now)
{
    idle_conn *ic = &bp->ring[(bp->head + bp->count) % bp->alloc];

    ic->fd = fd;
    ic->ssl = ssl;
    ic->since = now;
    bp->count++;
    apr_atomic_inc32(&idle_total);
    if (bp->count > bp->idle_peak)
        bp->idle_peak = bp->count;
}

/* Makes room for one entry more than `count` when cap allows it: the
 * ring doubles (at least to POOL_FLOOR, at most to cap), its entries
 * copied oldest first. Growth is rare (log2 of the peak), so the malloc
 * under the lock is paid a dozen times in a child's life at most.
 * Returns 0 when the ring stays full (cap reached, or no memory). */
static int ring_make_room(backend_pool *bp)
{
    idle_conn *nr;
    unsigned n, i;

    if (bp->count < bp->alloc)
        return 1;
    if (bp->alloc >= bp->cap)
        return 0;
    n = bp->alloc * 2 > POOL_FLOOR ? bp->alloc * 2 : POOL_FLOOR;
    if (n > bp->cap)
        n = bp->cap;
    nr = malloc(n * sizeof(*nr));
    if (!nr)
        return 0;
    for (i = 0; i < bp->count; i++)
        nr[i] = bp->ring[(bp->head + i) % bp->alloc];
    free(bp->ring);
    bp->ring = nr;
    bp->alloc = n;
    bp->head = 0;
    return 1;
}

/* Removes up to max expired entries from the head into out[]; returns
 * how many. */
static unsigned expire_head(backend_pool *bp, apr_interval_time_t ttl,
                            apr_time_t now, idle_conn *out, unsigned max)
{
    unsigned n = 0;

    while (n < max && bp->count
           && now - bp->ring[bp->head].since >= ttl)
        out[n++] = ring_pop_oldest(bp);
    return n;
}

/* Moves the demand window on and sets an automatic pool's cap from it:
 * the highest `out` of this window and the last, between the floor and
 * the fd ceiling. A pool not used for two windows has peak_prev = out
 * (nothing was higher meanwhile). */
static void follow_demand(backend_pool *bp, apr_time_t now)
{
    apr_interval_time_t w = demand_window(bp->be);
    unsigned want, floor;

    if (now - bp->window_at >= w) {
        bp->peak_prev = now - bp->window_at >= 2 * w ? bp->out : bp->peak;
        bp->peak = bp->out;
        bp->window_at = now;
    }
    if (!pool_is_auto(bp->be))
        return;
    want = bp->peak > bp->peak_prev ? bp->peak : bp->peak_prev;
    floor = POOL_FLOOR < pool_ceiling ? POOL_FLOOR : pool_ceiling;
    if (want < floor)
        want = floor;
    if (want > pool_ceiling)
        want = pool_ceiling;
    bp->cap = want;
}

static void out_inc(backend_pool *bp)
{
    if (++bp->out > bp->peak)
        bp->peak = bp->out;
}

static void out_dec(backend_pool *bp)
{
    /* a connection this file never saw begin (a caller outside the
     * request path) must not wrap the count */
    if (bp->out)
        bp->out--;
}

/* ---- closing ---- */

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

/* ---- the expiry timer ---- */

/* The timer runs while some pool holds an entry: started by the release
 * that finds it off, it stops when a pass leaves every ring empty. */
static void tick_start(void)
{
    if (tick_every)
        apx_timer_start(&expiry_tick, tick_every);
}

/* One pass of the timer over pool bp: entries past ttl, entries above
 * cap (the demand fell) and, when the child's descriptors run short, a
 * batch of the oldest whatever their age, closed outside the lock.
 * Returns how many were closed; *more says a full batch was taken. */
static unsigned tick_pool(backend_pool *bp, apr_time_t now, int short_fds,
                          unsigned budget, int *more)
{
    idle_conn batch[TIMER_BATCH];
    unsigned n, total = 0, room;

    do {
        room = budget - total < TIMER_BATCH ? budget - total : TIMER_BATCH;
        apr_thread_mutex_lock(bp->mtx);
        follow_demand(bp, now);
        n = expire_head(bp, bp->be->pool_ttl, now, batch, room);
        bp->expired += n;
        while (n < room && bp->count
               && (bp->count > bp->cap || short_fds)) {
            batch[n++] = ring_pop_oldest(bp);
            bp->trimmed++;
        }
        *more = n == room && bp->count;
        apr_thread_mutex_unlock(bp->mtx);
        close_all(batch, n);
        total += n;
    } while (*more && !short_fds && total < budget);
    return total;
}

static void tick_fire(apx_park *p, apr_thread_t *thd)
{
    apr_array_header_t *all = apx_gconf.backends;
    apr_time_t now = apr_time_now();
    unsigned closed = 0;
    int i, more = 0, short_fds;

    if (!apx_ch || !apx_ch->engine || (p->why & APX_EV_SHUTDOWN)
        || apr_atomic_read32(&apx_ch->stopping)) {
        apx_timer_stop(&expiry_tick);
        return;
    }
    short_fds = apx_fds_short(fd_soft_limit);
    for (i = 0; all && i < all->nelts && closed < TIMER_BUDGET; i++) {
        apx_backend *be = APR_ARRAY_IDX(all, i, apx_backend *);
        int m = 0;

        if (be->pool)
            closed += tick_pool(be->pool, now, short_fds,
                                TIMER_BUDGET - closed, &m);
        more |= m;
    }
    if (apr_atomic_read32(&idle_total)) {
        apx_timer_again(&expiry_tick, more || closed >= TIMER_BUDGET
                                      ? TICK_SOON : tick_every);
        return;
    }
    /* every ring empty: stop, unless an entry came meanwhile (its release
     * saw the timer still on) */
    apx_timer_stop(&expiry_tick);
    if (apr_atomic_read32(&idle_total))
        tick_start();
}

/* ---- child_init, cleanup ---- */

static apr_status_t close_idle(void *data)
{
    backend_pool *bp = data;

    /* pchild cleanup: the engine's pre-cleanup joined its threads (the
     * timer's included), and the MPM's are gone, so nothing takes or
     * releases any more. */
    while (bp->count) {
        idle_conn ic = ring_pop_oldest(bp);

        apx_backend_close(ic.fd, ic.ssl, 1);
    }
    free(bp->ring);
    bp->ring = NULL;
    bp->alloc = 0;
    return APR_SUCCESS;
}

/* Half the descriptors the child may open, less a reserve: every pooled
 * connection taken serves a request that also holds its client's
 * descriptor, so pools larger than that could never all be in use, and
 * idle ones beyond it would take descriptors clients need. */
static void set_ceiling(void)
{
    struct rlimit rl;

    fd_soft_limit = 0;
    pool_ceiling = POOL_HARD_MAX;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY)
        return;
    fd_soft_limit = rl.rlim_cur;
    if (rl.rlim_cur < 2 * FD_RESERVE + 2 * POOL_FLOOR)
        pool_ceiling = rl.rlim_cur > 2 * FD_RESERVE ? POOL_FLOOR / 2 : 1;
    else if ((rl.rlim_cur - FD_RESERVE) / 2 < POOL_HARD_MAX)
        pool_ceiling = (unsigned)((rl.rlim_cur - FD_RESERVE) / 2);
}

void apx_backends_child_init(apr_pool_t *pchild)
{
    apr_array_header_t *all = apx_gconf.backends;
    apr_time_t now = apr_time_now();
    int i;

    idle_total = 0;
    apx_timer_init(&expiry_tick, tick_fire, 0);
    tick_every = 0;
    if (!all)
        return;
    set_ceiling();
    for (i = 0; i < all->nelts; i++) {
        apx_backend *be = APR_ARRAY_IDX(all, i, apx_backend *);
        backend_pool *bp = apr_pcalloc(pchild, sizeof(*bp));
        apr_interval_time_t tick;
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
        bp->be = be;
        bp->window_at = now;
        /* a pinned pool gets its whole ring now, as it always did; an
         * automatic one starts at the floor and grows on demand */
        bp->cap = pool_is_auto(be) ? (POOL_FLOOR < pool_ceiling
                                      ? POOL_FLOOR : pool_ceiling)
                                   : be->pool_max;
        if (bp->cap) {
            bp->ring = malloc(bp->cap * sizeof(*bp->ring));
            if (!bp->ring) {
                ap_log_perror(APLOG_MARK, APLOG_CRIT, APR_ENOMEM, pchild,
                              APXLOGNO(00190) "no memory for the "
                              "connection pool of backend %s; connections "
                              "to it will not be reused", be->hostport);
                continue;
            }
            bp->alloc = bp->cap;
            bp->keeps = 1;
            tick = be->pool_ttl / 4;
            if (tick < TICK_MIN)
                tick = TICK_MIN;
            if (tick > TICK_MAX)
                tick = TICK_MAX;
            if (!tick_every || tick < tick_every)
                tick_every = tick;
        }
        apr_pool_cleanup_register(pchild, bp, close_idle,
                                  apr_pool_cleanup_null);
        be->pool = bp;
    }
}

/* ---- the request path ---- */

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
    int undo = 0;

    *ssl = NULL;
    if (!bp || !bp->keeps)
        return -1;
    for (;;) {
        got.fd = -1;
        got.ssl = NULL;
        apr_thread_mutex_lock(bp->mtx);
        if (undo) {
            /* the last one taken was dead: not a reuse after all */
            out_dec(bp);
            bp->reuses--;
            bp->dead++;
            undo = 0;
        }
        follow_demand(bp, now);
        n = expire_head(bp, be->pool_ttl, now, stale, EXPIRE_BATCH);
        bp->expired_use += n;
        if (bp->count) {
            got = ring_pop_newest(bp);
            out_inc(bp);
            bp->reuses++;
        }
        apr_thread_mutex_unlock(bp->mtx);
        close_all(stale, n);
        if (got.fd < 0 || conn_is_alive(got.fd, got.ssl)) {
            *ssl = got.ssl;
            return got.fd;
        }
        apx_backend_close(got.fd, got.ssl, 0);
        undo = 1;
    }
}

void apx_backend_opened(apx_backend *be)
{
    backend_pool *bp = be->pool;

    if (!bp)
        return;
    apr_thread_mutex_lock(bp->mtx);
    out_inc(bp);
    bp->connects++;
    apr_thread_mutex_unlock(bp->mtx);
}

void apx_backend_discard(apx_backend *be, int fd, struct ssl_st *ssl,
                         int notify)
{
    backend_pool *bp = be ? be->pool : NULL;

    if (bp) {
        apr_thread_mutex_lock(bp->mtx);
        out_dec(bp);
        apr_thread_mutex_unlock(bp->mtx);
    }
    apx_backend_close(fd, ssl, notify);
}

void apx_backend_release(apx_backend *be, int fd, struct ssl_st *ssl,
                         apr_time_t now)
{
    backend_pool *bp = be->pool;
    idle_conn stale[2 * EXPIRE_BATCH + 2];
    unsigned n;

    if (!bp) {
        apx_backend_close(fd, ssl, 1);
        return;
    }
    apr_thread_mutex_lock(bp->mtx);
    out_dec(bp);
    /* A stopping child has no use for idle connections. */
    if (!bp->keeps || (apx_ch && apr_atomic_read32(&apx_ch->stopping))) {
        apr_thread_mutex_unlock(bp->mtx);
        apx_backend_close(fd, ssl, 1);
        return;
    }
    follow_demand(bp, now);
    n = expire_head(bp, be->pool_ttl, now, stale, EXPIRE_BATCH);
    bp->expired_use += n;
    /* at cap (the demand fell below what the ring holds, or a pinned pool
     * is full): the oldest go, a batch at a time (the timer takes the
     * rest), the freshest stays */
    while (n < 2 * EXPIRE_BATCH && bp->count && bp->count >= bp->cap) {
        stale[n++] = ring_pop_oldest(bp);
        bp->trimmed++;
    }
    /* all pools together at the fd ceiling; or no memory to grow */
    if (bp->count && pool_is_auto(be)
        && apr_atomic_read32(&idle_total) >= pool_ceiling) {
        stale[n++] = ring_pop_oldest(bp);
        bp->trimmed++;
    }
    if (bp->count && bp->count < bp->cap && !ring_make_room(bp)) {
        stale[n++] = ring_pop_oldest(bp);
        bp->trimmed++;
    }
    if (bp->count < bp->cap && bp->count < bp->alloc) {
        ring_push(bp, fd, ssl, now);
        fd = -1;
    }
    apr_thread_mutex_unlock(bp->mtx);
    if (fd >= 0)
        apx_backend_close(fd, ssl, 1);
    close_all(stale, n);
    tick_start();
}

/* ---- the status page ---- */

typedef struct pool_view {
    unsigned count, cap, idle_peak, out, demand;
    apr_uint64_t connects, reuses, expired, expired_use, trimmed, dead;
} pool_view;

void apx_backends_status(request_rec *r, int short_report)
{
    apr_array_header_t *all = apx_gconf.backends;
    apr_time_t now = apr_time_now();
    int i;

    if (!all || !all->nelts)
        return;
    if (!short_report)
        ap_rputs("<h3>backend keep-alive pools (this child)</h3>\n<table>\n"
                 "<tr><th>origin</th><th>max</th><th>ttl (ms)</th>"
                 "<th>idle now</th><th>capacity</th><th>idle peak</th>"
                 "<th>in use</th><th>demand</th><th>connects</th>"
                 "<th>reuses</th><th>expired (timer)</th>"
                 "<th>expired (on use)</th><th>trimmed</th>"
                 "<th>dead</th></tr>\n", r);
    for (i = 0; i < all->nelts; i++) {
        apx_backend *be = APR_ARRAY_IDX(all, i, apx_backend *);
        backend_pool *bp = be->pool;
        const char *origin = apx_backend_origin(r->pool, be);
        const char *max = pool_is_auto(be)
                          ? "auto" : apr_psprintf(r->pool, "%u",
                                                  be->pool_max);
        pool_view v;

        if (!bp)
            continue;
        apr_thread_mutex_lock(bp->mtx);
        follow_demand(bp, now);
        v.count = bp->count;
        v.cap = bp->keeps ? bp->cap : 0;
        v.idle_peak = bp->idle_peak;
        v.out = bp->out;
        v.demand = bp->peak > bp->peak_prev ? bp->peak : bp->peak_prev;
        v.connects = bp->connects;
        v.reuses = bp->reuses;
        v.expired = bp->expired;
        v.expired_use = bp->expired_use;
        v.trimmed = bp->trimmed;
        v.dead = bp->dead;
        apr_thread_mutex_unlock(bp->mtx);
        if (short_report) {
            ap_rprintf(r, "AsyncProxyPool: origin=%s max=%s ttl_ms=%"
                       APR_TIME_T_FMT " idle=%u cap=%u idle_peak=%u "
                       "inuse=%u demand=%u connects=%" APR_UINT64_T_FMT
                       " reuses=%" APR_UINT64_T_FMT " expired=%"
                       APR_UINT64_T_FMT " expired_use=%" APR_UINT64_T_FMT
                       " trimmed=%" APR_UINT64_T_FMT
                       " dead=%" APR_UINT64_T_FMT " child=%d\n", origin, max,
                       apr_time_as_msec(be->pool_ttl), v.count, v.cap,
                       v.idle_peak, v.out, v.demand, v.connects, v.reuses,
                       v.expired, v.expired_use, v.trimmed, v.dead,
                       (int)getpid());
            continue;
        }
        ap_rprintf(r, "<tr><td>%s</td><td>%s</td><td>%" APR_TIME_T_FMT
                   "</td><td>%u</td><td>%u</td><td>%u</td><td>%u</td>"
                   "<td>%u</td><td>%" APR_UINT64_T_FMT "</td><td>%"
                   APR_UINT64_T_FMT "</td><td>%" APR_UINT64_T_FMT
                   "</td><td>%" APR_UINT64_T_FMT "</td><td>%"
                   APR_UINT64_T_FMT "</td><td>%" APR_UINT64_T_FMT
                   "</td></tr>\n",
                   ap_escape_html(r->pool, origin), max,
                   apr_time_as_msec(be->pool_ttl), v.count, v.cap,
                   v.idle_peak, v.out, v.demand, v.connects, v.reuses,
                   v.expired, v.expired_use, v.trimmed, v.dead);
    }
    if (!short_report)
        ap_rputs("</table>\n", r);
}
