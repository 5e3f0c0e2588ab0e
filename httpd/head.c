/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* head.c — a request head, read ahead without blocking.
 *
 * httpd reads a request head with blocking reads (ap_read_request()): a
 * client that sends its head slowly holds the thread that reads it. On a
 * connection the module owns, the head is therefore read *ahead*, with
 * non-blocking reads, into a buffer of the module's, and httpd reads only a
 * head that is whole; the connection waits parked in between
 * (conn.c). The buffer is an input filter at the top of the
 * connection's filters (AP_FTYPE_CONNECTION: above mod_ssl, so it holds
 * plaintext, and above mod_reqtimeout): it serves what it holds to every
 * read first, in each mode httpd uses, and passes reads on once it is empty.
 * A speculative peek could not do this: mod_ssl peeks at most 8 KiB, and a
 * peek rescans the whole head on every byte of a trickle.
 *
 * The wait for a head has a deadline that follows mod_reqtimeout's header
 * stage (RequestReadTimeout header=T[-MAX][,MinRate=R], as written in the
 * configuration for the server or virtual host), or that module's defaults
 * (20-40 s, 500 bytes/s) when it sets none or is not loaded: T from the
 * start of the wait, a second more per R bytes received, never past MAX.
 * header=0 means the server's Timeout.
 *
 * A head that breaks a limit httpd would enforce on it anyway — longer than
 * LimitRequestLine or LimitRequestFieldSize, more fields than
 * LimitRequestFields (the largest values of any virtual host) — is refused
 * with the status httpd would answer (414, 400; 431 past 1 MiB when
 * LimitRequestFields is 0), by the caller, without waiting for its end:
 * httpd itself would read an over-long line to its end first.
 *
 * Threads: the thread that owns the connection (an MPM thread in the
 * process_connection hook, a module worker otherwise); the configuration
 * is read-only after post_config.
 */
#include <errno.h>
#include <sys/socket.h>

#include "httpd.h"
#include "http_config.h"
#include "http_core.h"
#include "http_log.h"
#include "util_cfgtree.h"
#include "util_filter.h"
#include "apr_optional.h"
#include "apr_portable.h"
#include "apr_strings.h"

#include "conf.h"
#include "child.h"
#include "head.h"

APLOG_USE_MODULE(asyncproxy);
extern module AP_MODULE_DECLARE_DATA asyncproxy_module;

#define HEAD_FILTER     "ASYNCPROXY_HEAD"
/* Read ahead in slices of this size (mod_ssl returns at most 8 KiB a read
 * anyway). */
#define READ_SLICE      8192
/* Empty lines before a request line that httpd skips (its own bound). */
#define MAX_BLANK_LINES 10
/* With LimitRequestFields 0 (no limit) a head is still bounded. */
#define UNLIMITED_CAP   (1024 * 1024)

/* mod_reqtimeout's defaults for the header stage. */
#define RT_HEADER_TIMEOUT   20
#define RT_HEADER_MAX       40
#define RT_HEADER_RATE      500

struct apx_head {
    conn_rec *c;
    ap_filter_t *f;                 /* our filter on c */
    apr_bucket_brigade *stash;      /* read ahead, not yet served */
    apr_bucket_brigade *tmp;
    /* the head awaited now */
    int waiting;
    apr_time_t start;
    apr_size_t scanned;             /* bytes of it looked at */
    apr_size_t line_len;            /* of the current line, CR LF apart */
    unsigned lines, fields, blank, rl_spaces;
    int at_line_start, continuation;
    int result;                     /* APX_HEAD_MORE until decided */
    int eof;
    /* 1 from a head read that left no client byte in the filters below
     * ours (all of them pass bytes through unchanged, and its last read
     * returned less than a slice) until the next read passed down: a
     * non-blocking look ahead then needs no read() of its own (below) */
    int below_empty;
    int fd;                         /* the client socket, -1: not known */
};

/* mod_logio's byte counter (%I), when loaded (post_config): reads that go
 * around the filters count themselves (apx_client_recv). */
static APR_OPTIONAL_FN_TYPE(ap_logio_add_bytes_in) *logio_add_bytes_in;

/* The largest limits of any server, for the scan. */
static apr_size_t lim_line = DEFAULT_LIMIT_REQUEST_LINE;
static apr_size_t lim_fieldsize = DEFAULT_LIMIT_REQUEST_FIELDSIZE;
static unsigned lim_fields = DEFAULT_LIMIT_REQUEST_FIELDS;
static apr_size_t head_cap = UNLIMITED_CAP;

/* ------------------------------------------------------------------ */
/* the filter: what was read ahead is served first                     */

static apr_status_t serve_readbytes(apx_head *h, apr_bucket_brigade *bb,
                                    apr_off_t readbytes)
{
    apr_bucket *e, *b;
    apr_status_t rv;

    rv = apr_brigade_partition(h->stash, readbytes, &e);
    if (rv != APR_SUCCESS && rv != APR_INCOMPLETE)
        return rv;
    while ((b = APR_BRIGADE_FIRST(h->stash)) != e
           && b != APR_BRIGADE_SENTINEL(h->stash)) {
        APR_BUCKET_REMOVE(b);
        APR_BRIGADE_INSERT_TAIL(bb, b);
    }
    return APR_SUCCESS;
}

static apr_status_t serve_speculative(apx_head *h, apr_bucket_brigade *bb,
                                      apr_off_t readbytes)
{
    apr_bucket *e, *b, *copy;
    apr_status_t rv;

    rv = apr_brigade_partition(h->stash, readbytes, &e);
    if (rv != APR_SUCCESS && rv != APR_INCOMPLETE)
        return rv;
    for (b = APR_BRIGADE_FIRST(h->stash); b != e
         && b != APR_BRIGADE_SENTINEL(h->stash); b = APR_BUCKET_NEXT(b)) {
        rv = apr_bucket_copy(b, &copy);
        if (rv != APR_SUCCESS)
            return rv;
        APR_BRIGADE_INSERT_TAIL(bb, copy);
    }
    return APR_SUCCESS;
}

/* Drops CR and LF bytes at the front of the stash. 1 when it emptied. */
static int eat_crlf(apx_head *h)
{
    apr_bucket *b;
    const char *data;
    apr_size_t len, i;

    while ((b = APR_BRIGADE_FIRST(h->stash)) != APR_BRIGADE_SENTINEL(h->stash)) {
        if (apr_bucket_read(b, &data, &len, APR_BLOCK_READ) != APR_SUCCESS)
            return 0;
        for (i = 0; i < len && (data[i] == '\r' || data[i] == '\n'); i++)
            ;
        if (i < len) {
            if (i && apr_bucket_split(b, i) == APR_SUCCESS)
                apr_bucket_delete(b);
            return 0;
        }
        apr_bucket_delete(b);
    }
    return 1;
}

/* Splitting and partitioning leave empty buckets behind: a stash of only
 * those holds nothing (ap_check_pipeline() would take one for data). */
static int stash_is_empty(apx_head *h)
{
    apr_bucket *b;

    while ((b = APR_BRIGADE_FIRST(h->stash)) != APR_BRIGADE_SENTINEL(h->stash)
           && b->length == 0)
        apr_bucket_delete(b);
    return APR_BRIGADE_EMPTY(h->stash);
}

/* A read our buffer cannot serve goes on to the filters below, which may
 * keep bytes from it. */
static apr_status_t pass_down(apx_head *h, ap_filter_t *f,
                              apr_bucket_brigade *bb, ap_input_mode_t mode,
                              apr_read_type_e block, apr_off_t readbytes)
{
    h->below_empty = 0;
    return ap_get_brigade(f->next, bb, mode, block, readbytes);
}

static apr_status_t head_filter(ap_filter_t *f, apr_bucket_brigade *bb,
                                ap_input_mode_t mode, apr_read_type_e block,
                                apr_off_t readbytes)
{
    apx_head *h = f->ctx;

    if (mode == AP_MODE_INIT || stash_is_empty(h)) {
        /* httpd's look for a pipelined request after each response
         * (ap_check_pipeline): with our buffer and every filter below
         * empty, the only place a next request can be is the socket, and
         * the connection's next wait (ours in the poller, or the MPM's)
         * polls it at once. One read() per request less, which on the
         * slow path always failed. */
        if (mode == AP_MODE_SPECULATIVE && block == APR_NONBLOCK_READ
            && h->below_empty)
            return APR_EAGAIN;
        return pass_down(h, f, bb, mode, block, readbytes);
    }
    switch (mode) {
    case AP_MODE_GETLINE:
        /* the stash holds no metadata: this never blocks */
        return apr_brigade_split_line(bb, h->stash, APR_BLOCK_READ,
                                      readbytes > 0 ? readbytes
                                                    : HUGE_STRING_LEN);
    case AP_MODE_READBYTES:
        return serve_readbytes(h, bb, readbytes);
    case AP_MODE_SPECULATIVE:
        return serve_speculative(h, bb, readbytes);
    case AP_MODE_EATCRLF:
        if (eat_crlf(h))
            return pass_down(h, f, bb, mode, block, readbytes);
        return APR_SUCCESS;
    default:
        /* AP_MODE_EXHAUSTIVE: what we hold, then the rest */
        APR_BRIGADE_CONCAT(bb, h->stash);
        return pass_down(h, f, bb, mode, block, readbytes);
    }
}

/* ------------------------------------------------------------------ */
/* the scan                                                             */

/* Looks at len more bytes of the head; sets h->result when decided. */
static void scan(apx_head *h, const char *d, apr_size_t len)
{
    apr_size_t i;

    for (i = 0; i < len && h->result == APX_HEAD_MORE; i++) {
        char ch = d[i];

        h->scanned++;
        if (ch == '\n') {
            if (h->line_len == 0) {
                if (h->lines == 0) {
                    /* empty lines before the request line are skipped */
                    if (++h->blank > MAX_BLANK_LINES)
                        h->result = HTTP_BAD_REQUEST;
                    continue;
                }
                h->result = APX_HEAD_COMPLETE;
                break;
            }
            if (++h->lines == 1 && h->rl_spaces < 2) {
                /* no protocol: HTTP/0.9, or junk httpd will refuse; either
                 * way httpd reads no header after it */
                h->result = APX_HEAD_COMPLETE;
                break;
            }
            if (h->lines > 1 && !h->continuation && lim_fields
                && ++h->fields > lim_fields)
                h->result = HTTP_BAD_REQUEST;
            h->line_len = 0;
            h->at_line_start = 1;
            continue;
        }
        if (ch == '\r')
            continue;
        if (h->at_line_start) {
            h->continuation = h->lines > 0 && (ch == ' ' || ch == '\t');
            h->at_line_start = 0;
        }
        h->line_len++;
        if (h->lines == 0) {
            if (ch == ' ')
                h->rl_spaces++;
            if (h->line_len > lim_line)
                h->result = HTTP_REQUEST_URI_TOO_LARGE;
        }
        else if (h->line_len > lim_fieldsize) {
            h->result = HTTP_BAD_REQUEST;
        }
    }
    /* past every limit at once (LimitRequestFields 0): httpd would read on
     * with blocking reads, so the module answers this one itself */
    if (h->result == APX_HEAD_MORE && h->scanned > head_cap)
        h->result = HTTP_REQUEST_HEADER_FIELDS_TOO_LARGE;
}

static void scan_brigade(apx_head *h, apr_bucket_brigade *bb)
{
    apr_bucket *b;
    const char *data;
    apr_size_t len;

    for (b = APR_BRIGADE_FIRST(bb);
         b != APR_BRIGADE_SENTINEL(bb) && h->result == APX_HEAD_MORE;
         b = APR_BUCKET_NEXT(b)) {
        if (apr_bucket_read(b, &data, &len, APR_BLOCK_READ) == APR_SUCCESS)
            scan(h, data, len);
    }
}

/* ------------------------------------------------------------------ */
/* API                                                                  */

int apx_filters_pass_through(ap_filter_t *f, int reqtimeout)
{
    for (; f; f = f->next) {
        const char *n = f->frec->name;

        if (strcasecmp(n, "core_in") && strcasecmp(n, "log_input_output")
            && strcasecmp(n, HEAD_FILTER)
            && (!reqtimeout || strcasecmp(n, "reqtimeout")))
            return 0;
    }
    return 1;
}

ssize_t apx_client_recv(conn_rec *c, int fd, void *buf, apr_size_t len)
{
    ssize_t n;

    do {
        n = recv(fd, buf, len, MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
    if (n > 0 && logio_add_bytes_in)
        logio_add_bytes_in(c, (apr_off_t)n);
    return n;
}

apx_head *apx_head_get(conn_rec *c, apx_head **slot)
{
    apx_head *h = *slot;
    apr_socket_t *sock;
    apr_os_sock_t fd;

    if (h)
        return h;
    sock = ap_get_conn_socket(c);
    h = apr_pcalloc(c->pool, sizeof(*h));
    h->c = c;
    h->stash = apr_brigade_create(c->pool, c->bucket_alloc);
    h->tmp = apr_brigade_create(c->pool, c->bucket_alloc);
    h->f = ap_add_input_filter(HEAD_FILTER, h, NULL, c);
    h->fd = -1;
    if (sock && apr_os_sock_get(&fd, sock) == APR_SUCCESS)
        h->fd = fd;
    *slot = h;
    return h;
}

void apx_head_begin(apx_head *h, apr_time_t now)
{
    h->waiting = 1;
    h->start = now;
    h->scanned = h->line_len = 0;
    h->lines = h->fields = h->blank = h->rl_spaces = 0;
    h->at_line_start = 1;
    h->continuation = 0;
    h->result = APX_HEAD_MORE;
    /* what an earlier read left (a pipelined request) is this head's start */
    scan_brigade(h, h->stash);
}

int apx_head_is_waiting(const apx_head *h)
{
    return h && h->waiting;
}

apr_size_t apx_head_bytes(const apx_head *h)
{
    return h->scanned;
}

/* One recv() of the client socket into a heap bucket on h->tmp, as the
 * core's reader would do it, but without its second, "greedy" read that
 * fails whenever the head came in one piece. APR_SUCCESS with bytes,
 * APR_EAGAIN, APR_EOF, or the error. */
static apr_status_t read_direct(apx_head *h)
{
    apr_bucket_alloc_t *ba = h->c->bucket_alloc;
    char *buf = apr_bucket_alloc(APR_BUCKET_BUFF_SIZE, ba);
    ssize_t n;
    int err;

    if (!buf)
        return APR_ENOMEM;
    n = apx_client_recv(h->c, h->fd, buf, APR_BUCKET_BUFF_SIZE);
    if (n <= 0) {
        err = errno;
        apr_bucket_free(buf);
        if (n == 0)
            return APR_EOF;
        return err == EAGAIN || err == EWOULDBLOCK ? APR_EAGAIN
                                                   : APR_FROM_OS_ERROR(err);
    }
    APR_BRIGADE_INSERT_TAIL(h->tmp, apr_bucket_heap_create(buf, (apr_size_t)n,
                                                           apr_bucket_free,
                                                           ba));
    return APR_SUCCESS;
}

int apx_head_read(apx_head *h)
{
    apr_status_t rv = APR_SUCCESS;
    apr_bucket *b;
    apr_off_t got = READ_SLICE;
    /* Nothing passed down since the last head left the filters below
     * empty: read the socket itself (no filter there changes bytes). */
    int direct = h->below_empty && h->fd >= 0;

    h->below_empty = 0;
    while (h->result == APX_HEAD_MORE && !h->eof) {
        if (direct) {
            rv = read_direct(h);
            got = 0;
        }
        else {
            rv = ap_get_brigade(h->f->next, h->tmp, AP_MODE_READBYTES,
                                APR_NONBLOCK_READ, READ_SLICE);
            if (rv == APR_SUCCESS && !APR_BRIGADE_EMPTY(h->tmp)
                && apr_brigade_length(h->tmp, 0, &got) != APR_SUCCESS)
                got = READ_SLICE;
        }
        if (rv != APR_SUCCESS)
            break;
        if (APR_BRIGADE_EMPTY(h->tmp))
            break;
        /* keep the data, set aside for the connection's life; note EOS */
        while ((b = APR_BRIGADE_FIRST(h->tmp))
               != APR_BRIGADE_SENTINEL(h->tmp)) {
            APR_BUCKET_REMOVE(b);
            if (APR_BUCKET_IS_EOS(b))
                h->eof = 1;
            if (APR_BUCKET_IS_METADATA(b) || b->length == 0) {
                apr_bucket_destroy(b);
                continue;
            }
            if (apr_bucket_setaside(b, h->c->pool) != APR_SUCCESS) {
                apr_bucket_destroy(b);
                rv = APR_EGENERAL;
                break;
            }
            APR_BRIGADE_INSERT_TAIL(h->stash, b);
            if (h->result == APX_HEAD_MORE) {
                const char *data;
                apr_size_t len;

                if (apr_bucket_read(b, &data, &len, APR_BLOCK_READ)
                    == APR_SUCCESS)
                    scan(h, data, len);
            }
        }
        if (rv != APR_SUCCESS)
            break;
    }
    apr_brigade_cleanup(h->tmp);
    if (h->result != APX_HEAD_MORE) {
        h->waiting = 0;
        /* The core's reader hands over at most one socket read (8,000
         * bytes) per call: a call that returned less than a slice left no
         * byte of the client's in it. */
        h->below_empty = got < READ_SLICE && !h->eof
                         && (direct || apx_filters_pass_through(h->f->next, 1));
        return h->result;
    }
    if (APR_STATUS_IS_EOF(rv) || h->eof)
        h->eof = 1;
    else if (!APR_STATUS_IS_EAGAIN(rv) && rv != APR_SUCCESS) {
        /* a reset, a TLS error, mod_reqtimeout's own deadline */
        h->waiting = 0;
        return APX_HEAD_CLOSED;
    }
    if (h->eof) {
        h->waiting = 0;
        return APX_HEAD_CLOSED;
    }
    return APX_HEAD_MORE;
}

apr_time_t apx_head_deadline(const apx_head *h)
{
    const apx_srv_conf *sc = ap_get_module_config(
        h->c->base_server->module_config, &asyncproxy_module);
    apr_interval_time_t t = sc->head_timeout, max = sc->head_max;
    apr_time_t d;

    if (t <= 0)
        return h->start + h->c->base_server->timeout;
    d = h->start + t;
    if (sc->head_rate) {
        /* without a maximum the rate extends it without bound, as in
         * mod_reqtimeout (the head's size bounds it here) */
        d += (apr_time_t)h->scanned * APR_USEC_PER_SEC / sc->head_rate;
        if (max > t && d > h->start + max)
            d = h->start + max;
    }
    return d;
}

/* ------------------------------------------------------------------ */
/* configuration                                                        */

/* "header=20-40,MinRate=500": sets what it names; NULL or an error. */
static const char *parse_header_stage(apx_srv_conf *sc, const char *args,
                                      apr_pool_t *p)
{
    while (*args) {
        char *word = ap_getword_conf(p, &args), *val, *rate;
        apr_int64_t t, max = 0, r = 0;

        if (!*word)
            break;
        if (strncasecmp(word, "header=", 7))
            continue;
        val = word + 7;
        rate = strchr(val, ',');
        if (rate) {
            *rate++ = '\0';
            if (strncasecmp(rate, "minrate=", 8))
                return rate;
            r = apr_atoi64(rate + 8);
        }
        t = apr_atoi64(val);
        if ((val = strchr(val, '-')))
            max = apr_atoi64(val + 1);
        if (t < 0 || max < 0 || r < 0)
            return word;
        sc->head_timeout = apr_time_from_sec(t);
        sc->head_max = apr_time_from_sec(max);
        sc->head_rate = (apr_size_t)r;
    }
    return NULL;
}

/* RequestReadTimeout in the server's own scope (and in <IfModule> and the
 * like inside it); the last one wins, as for any directive. */
static void find_reqtimeout(apx_srv_conf *sc, const ap_directive_t *d,
                            apr_pool_t *p, server_rec *s)
{
    for (; d; d = d->next) {
        if (!strcasecmp(d->directive, "RequestReadTimeout")) {
            const char *bad = parse_header_stage(sc, d->args, p);

            if (bad)
                ap_log_error(APLOG_MARK, APLOG_WARNING, 0, s, APXLOGNO(00016)
                             "RequestReadTimeout '%s' (%s:%d): cannot read "
                             "'%s'; the module waits for request heads with "
                             "mod_reqtimeout's defaults", d->args,
                             d->filename, d->line_num, bad);
        }
        else if (d->first_child && strcasecmp(d->directive, "<VirtualHost")
                 && strcasecmp(d->directive, "<Directory")
                 && strcasecmp(d->directive, "<DirectoryMatch")
                 && strcasecmp(d->directive, "<Location")
                 && strcasecmp(d->directive, "<LocationMatch")
                 && strcasecmp(d->directive, "<Files")
                 && strcasecmp(d->directive, "<FilesMatch")
                 && strcasecmp(d->directive, "<If")
                 && strcasecmp(d->directive, "<ElseIf")
                 && strcasecmp(d->directive, "<Else")) {
            find_reqtimeout(sc, d->first_child, p, s);
        }
    }
}

/* The <VirtualHost> sections, each with the server it made. */
static void vhost_sections(const ap_directive_t *d, apr_pool_t *p,
                           server_rec *main_s, const apx_srv_conf *base,
                           int loaded)
{
    for (; d; d = d->next) {
        if (!strcasecmp(d->directive, "<VirtualHost")) {
            server_rec *s;

            for (s = main_s->next; s; s = s->next) {
                apx_srv_conf *sc;

                if ((int)s->defn_line_number != d->line_num || !s->defn_name
                    || strcmp(s->defn_name, d->filename))
                    continue;
                sc = ap_get_module_config(s->module_config,
                                          &asyncproxy_module);
                sc->head_timeout = base->head_timeout;
                sc->head_max = base->head_max;
                sc->head_rate = base->head_rate;
                if (loaded)
                    find_reqtimeout(sc, d->first_child, p, s);
            }
        }
        else if (d->first_child && d->directive[0] == '<'
                 && !strncasecmp(d->directive, "<If", 3)
                 && strcasecmp(d->directive, "<If")) {
            /* <IfModule>, <IfDefine>, <IfVersion>, <IfFile>, ... */
            vhost_sections(d->first_child, p, main_s, base, loaded);
        }
    }
}

void apx_head_post_config(apr_pool_t *p, server_rec *main_s)
{
    apx_srv_conf *base = ap_get_module_config(main_s->module_config,
                                              &asyncproxy_module);
    int loaded = ap_find_linked_module("mod_reqtimeout.c") != NULL;
    server_rec *s;
    apr_size_t fields_max = 0;
    int unlimited = 0;

    /* registered by mod_logio's register_hooks, if it is loaded */
    logio_add_bytes_in = APR_RETRIEVE_OPTIONAL_FN(ap_logio_add_bytes_in);
    base->head_timeout = apr_time_from_sec(RT_HEADER_TIMEOUT);
    base->head_max = apr_time_from_sec(RT_HEADER_MAX);
    base->head_rate = RT_HEADER_RATE;
    if (loaded)
        find_reqtimeout(base, ap_conftree, p, main_s);
    for (s = main_s->next; s; s = s->next) {
        apx_srv_conf *sc = ap_get_module_config(s->module_config,
                                                &asyncproxy_module);

        sc->head_timeout = base->head_timeout;
        sc->head_max = base->head_max;
        sc->head_rate = base->head_rate;
    }
    vhost_sections(ap_conftree, p, main_s, base, loaded);

    lim_line = lim_fieldsize = 0;
    lim_fields = 0;
    for (s = main_s; s; s = s->next) {
        if ((apr_size_t)s->limit_req_line > lim_line)
            lim_line = s->limit_req_line;
        if ((apr_size_t)s->limit_req_fieldsize > lim_fieldsize)
            lim_fieldsize = s->limit_req_fieldsize;
        if (s->limit_req_fields <= 0)
            unlimited = 1;
        else if ((apr_size_t)s->limit_req_fields > fields_max)
            fields_max = s->limit_req_fields;
    }
    lim_fields = unlimited ? 0 : (unsigned)fields_max;
    /* the request line, the fields, their line ends, the empty line */
    head_cap = unlimited ? UNLIMITED_CAP
               : lim_line + 2 + fields_max * (lim_fieldsize + 2) + 2
                 + MAX_BLANK_LINES * 2;
}

void apx_head_register_filter(apr_pool_t *p)
{
    ap_register_input_filter(HEAD_FILTER, head_filter, NULL,
                             AP_FTYPE_CONNECTION);
}
