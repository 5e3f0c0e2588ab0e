/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* slowd.c — the slow HTTP/1.1 backend the benchmarks and the demo put
 * behind the proxy.
 *
 *   GET /delay/MS/BYTES[?OPTIONS]     200 after MS milliseconds, BYTES of
 *                                     body; OPTIONS joined by '&':
 *                                       chunked=1    chunked, not
 *                                                    Content-Length
 *                                       max-age=N    adds "Cache-Control:
 *                                                    max-age=N" (cache
 *                                                    benchmarks)
 *                                       trickle=B:MS the body in pieces
 *                                                    of B bytes, the
 *                                                    first with the head,
 *                                                    each next MS ms
 *                                                    later (a slow
 *                                                    origin: streamed
 *                                                    cache misses)
 *                                     anything else is ignored (so a
 *                                     client can make distinct cache keys)
 *   GET /stats                        what this slowd answered so far, one
 *                                     "name value" line each: delay (GET
 *                                     /delay/ requests answered), requests
 *                                     (every response, /stats ones
 *                                     included), open, accepted; the
 *                                     stampede benchmark counts backend
 *                                     fetches with it
 *   GET /                             a small text page
 *   anything else                     404
 *
 * Body byte i is PATTERN[i % 64] (62 alphanumerics, '-', '\n'), so a client
 * can check any slice of a body. Any method is accepted (HEAD sends no
 * body); request bodies with Content-Length are read and discarded, chunked
 * request bodies are refused with 501 and the connection is closed.
 *
 * One thread, one epoll set. Connections are edge-triggered for EPOLLIN and
 * EPOLLOUT from accept to close, so a connection that waits costs no
 * syscall: it sits in a binary min-heap keyed by its deadline, and the
 * earliest deadline is the epoll_wait timeout. A waiting connection holds
 * its struct (344 bytes) and its read buffer (1 KiB, grown only for big
 * heads): 19,000 waiting requests measured 27 MB RSS and no CPU at all.
 * Bodies are written straight from one shared pattern buffer with writev
 * until EAGAIN, then resumed on EPOLLOUT: nothing is buffered per request.
 * Requests on one connection are answered in order (pipelining); bytes that
 * arrive while a response is pending stay in the kernel until it is done.
 *
 * Options: -p PORT (9000; 0 = any free port, the real one is printed)
 *          -a ADDR (127.0.0.1)  -b BACKLOG (4096)  -P PIDFILE
 *          -m MULT every /delay/ MULT times longer (1; a slow member of a
 *             balancer group in bench/balancer.pl)
 *          -q quiet (no periodic statistics line)
 * Raises RLIMIT_NOFILE to its hard limit. Prints "slowd listening on
 * ADDR:PORT" on stdout once it accepts. Stops
 * cleanly on SIGTERM/SIGINT (through a signalfd, so no wake-up is lost).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

/* The pattern period is a power of two so "i % 64" is a mask; the shared
 * buffer holds SPAN bytes from any phase, so one writev can send up to SPAN
 * body bytes (256 KiB fills a loopback socket buffer in one call). */
#define PATTERN_LEN   64
#define PATTERN_SPAN  (256 * 1024)
/* Chunk size for ?chunked=1: large enough to cost little framing, small
 * enough that a proxy sees several chunks of a 100 KiB body. */
#define CHUNK_MAX     (16 * 1024)
#define CHUNK_TAIL    "\r\n0\r\n\r\n"
/* Request heads: start small (most heads are < 1 KiB) and grow for proxies
 * that forward many headers; beyond HEAD_MAX the request gets 431. */
#define RBUF_INITIAL  1024
#define HEAD_MAX      (64 * 1024)
#define EVENTS_MAX    1024
/* After EMFILE the listener is muted this long instead of spinning on a
 * level-triggered accept that cannot succeed. */
#define ACCEPT_PAUSE_NS (100 * 1000000ull)
#define STATS_EVERY_NS  (5 * 1000000000ull)
#define MAX_DELAY_MS    (24ull * 3600 * 1000)

enum { ST_READING, ST_WAITING, ST_WRITING };

typedef struct conn conn;
struct conn {
    conn *next, *prev;      /* all connections, so exit can release them */
    int fd;
    uint8_t state;
    uint8_t keepalive;
    uint8_t head_only;
    uint8_t chunked;
    uint8_t chunk_open;     /* a chunk's data was sent: next frame starts with CRLF */
    uint8_t final_sent;     /* last-chunk framed */
    uint8_t tail_left;      /* bytes of CHUNK_TAIL still to write after the data */
    uint8_t http10;         /* HTTP/1.0 request: keep-alive must be announced */
    uint8_t has_max_age;    /* ?max-age=N: send Cache-Control */
    uint8_t started;        /* the head went out: a wait is a trickle pause */
    uint16_t status;
    uint32_t max_age;
    uint32_t trickle_bytes; /* ?trickle=B:MS, 0: the body at once */
    uint32_t trickle_ms;
    uint64_t burst_left;    /* body bytes until the next trickle pause */
    uint32_t heap_idx;      /* position in the timer heap while ST_WAITING */
    uint64_t deadline_ns;
    uint64_t discard;       /* request body bytes still to read and drop */
    uint64_t body_left;     /* body bytes not yet framed */
    uint64_t seg_left;      /* body bytes of the current frame not yet written */
    uint64_t body_pos;      /* body bytes already written (pattern phase) */
    const char *fixed_body; /* static body (index, errors) instead of the pattern */
    char *own_body;         /* malloc'd fixed_body (/stats), freed with the next */
    char *rbuf;
    uint32_t rcap, rstart, rlen;
    uint16_t out_off, out_len;
    char out[224];          /* status line + headers, chunk framing */
};

static char pattern[PATTERN_SPAN + PATTERN_LEN];
static int epfd, lfd, sigfd;
static int quiet;
static unsigned delay_mult = 1;    /* -m: every /delay/ is this many times
                                    * longer (one slow member of a group) */
static int listen_paused;
static uint64_t accept_resume_ns;
/* epoll data tags for the two non-connection fds */
static char tag_listen, tag_signal;

static conn all_conns = { .next = &all_conns, .prev = &all_conns };
static conn **heap;
static uint32_t heap_len, heap_cap;

static uint64_t st_conns, st_accepted, st_requests, st_bytes;
static uint64_t st_total_requests, st_delay_requests;  /* never reset: /stats */

static const char index_body[] =
    "slowd: a slow HTTP/1.1 backend for benchmarks\n"
    "\n"
    "  GET /delay/MS/BYTES            200 after MS ms with a BYTES-long body\n"
    "  GET /delay/MS/BYTES?chunked=1  the same body, chunked\n"
    "  GET /delay/MS/BYTES?max-age=N  with Cache-Control: max-age=N\n"
    "  GET /stats                     requests answered so far\n"
    "\n"
    "Body byte i is PATTERN[i % 64]: 0-9 A-Z a-z '-' then a newline.\n";
static const char notfound_body[] = "not found\n";
static const char badreq_body[] = "bad request\n";
static const char toolarge_body[] = "request header too large\n";
static const char notimpl_body[] = "chunked request bodies are not supported\n";

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- timer heap: a binary min-heap of waiting connections ---- */

static void heap_set(uint32_t i, conn *c)
{
    heap[i] = c;
    c->heap_idx = i;
}

static void heap_up(uint32_t i)
{
    conn *c = heap[i];
    while (i > 0) {
        uint32_t p = (i - 1) / 2;
        if (heap[p]->deadline_ns <= c->deadline_ns)
            break;
        heap_set(i, heap[p]);
        i = p;
    }
    heap_set(i, c);
}

static void heap_down(uint32_t i)
{
    conn *c = heap[i];
    for (;;) {
        uint32_t l = 2 * i + 1, m;
        if (l >= heap_len)
            break;
        m = (l + 1 < heap_len && heap[l + 1]->deadline_ns < heap[l]->deadline_ns) ? l + 1 : l;
        if (heap[m]->deadline_ns >= c->deadline_ns)
            break;
        heap_set(i, heap[m]);
        i = m;
    }
    heap_set(i, c);
}

static int heap_push(conn *c)
{
    if (heap_len == heap_cap) {
        uint32_t ncap = heap_cap ? heap_cap * 2 : 1024;
        conn **n = realloc(heap, ncap * sizeof(*n));
        if (!n)
            return -1;
        heap = n;
        heap_cap = ncap;
    }
    heap_set(heap_len++, c);
    heap_up(heap_len - 1);
    return 0;
}

static void heap_remove(conn *c)
{
    uint32_t i = c->heap_idx;
    conn *last = heap[--heap_len];
    if (i == heap_len)
        return;
    heap_set(i, last);
    if (i > 0 && heap[(i - 1) / 2]->deadline_ns > last->deadline_ns)
        heap_up(i);
    else
        heap_down(i);
}

/* ---- connections ---- */

static void conn_close(conn *c, int linger)
{
    if (c->state == ST_WAITING)
        heap_remove(c);
    if (linger) {
        /* Send our FIN first and drop what the client already sent, so the
         * close does not turn into an RST that could eat our response. */
        char junk[4096];
        shutdown(c->fd, SHUT_WR);
        while (read(c->fd, junk, sizeof(junk)) > 0)
            ;
    }
    close(c->fd);
    c->prev->next = c->next;
    c->next->prev = c->prev;
    free(c->own_body);
    free(c->rbuf);
    free(c);
    st_conns--;
}

static int out_printf(conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int out_printf(conn *c, const char *fmt, ...)
{
    va_list ap;
    int n;
    size_t room = sizeof(c->out) - c->out_len;
    va_start(ap, fmt);
    n = vsnprintf(c->out + c->out_len, room, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= room)
        return -1;
    c->out_len += (uint16_t)n;
    return 0;
}

/* Appends the framing of the next body piece to c->out; returns 0 when the
 * body (and its last-chunk) is complete. */
static int frame_next(conn *c)
{
    if (c->out_off == c->out_len)
        c->out_off = c->out_len = 0;
    if (c->body_left > 0) {
        if (c->chunked) {
            uint64_t n = c->body_left < CHUNK_MAX ? c->body_left : CHUNK_MAX;
            out_printf(c, "%s%" PRIx64 "\r\n", c->chunk_open ? "\r\n" : "", n);
            c->chunk_open = 1;
            c->seg_left = n;
            c->body_left -= n;
            if (!c->body_left) {
                /* the last data chunk: its CRLF and the last-chunk go out in
                 * the same writev as the data */
                c->tail_left = sizeof(CHUNK_TAIL) - 1;
                c->final_sent = 1;
            }
        }
        else {
            c->seg_left = c->body_left;
            c->body_left = 0;
        }
        return 1;
    }
    if (c->chunked && !c->final_sent) {
        out_printf(c, "%s0\r\n\r\n", c->chunk_open ? "\r\n" : "");
        c->final_sent = 1;
        return 1;
    }
    return 0;
}

static const char *reason(unsigned status)
{
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 431: return "Request Header Fields Too Large";
    case 501: return "Not Implemented";
    default:  return "Unknown";
    }
}

/* Builds the head into c->out and enters ST_WRITING; body_left, chunked,
 * head_only, keepalive and status were set when the request was parsed. */
static void response_start(conn *c)
{
    uint64_t len = c->body_left;
    c->out_off = c->out_len = 0;
    c->seg_left = 0;
    c->body_pos = 0;
    c->chunk_open = c->final_sent = c->tail_left = 0;
    out_printf(c, "HTTP/1.1 %u %s\r\nServer: slowd\r\nContent-Type: text/plain\r\n",
               c->status, reason(c->status));
    if (c->chunked)
        out_printf(c, "Transfer-Encoding: chunked\r\n");
    else
        out_printf(c, "Content-Length: %" PRIu64 "\r\n", len);
    if (c->has_max_age)
        out_printf(c, "Cache-Control: max-age=%" PRIu32 "\r\n", c->max_age);
    out_printf(c, "%s\r\n", !c->keepalive ? "Connection: close\r\n"
               : c->http10 ? "Connection: keep-alive\r\n" : "");
    if (c->head_only)
        c->body_left = 0, c->chunked = 0;
    else
        frame_next(c);
    c->state = ST_WRITING;
    c->started = 1;
    c->burst_left = c->trickle_bytes;
    st_requests++;
    st_total_requests++;
    if (!c->fixed_body && c->status == 200)
        st_delay_requests++;
}

/* Returns 0 when the response is fully written, 1 on EAGAIN, 2 at a
 * trickle pause, -1 on error. */
static int conn_write(conn *c)
{
    for (;;) {
        struct iovec iov[3];
        int n = 0;
        ssize_t w;
        size_t done, seg_iov = 0;
        if (c->out_off == c->out_len && c->seg_left == 0 && c->tail_left == 0 && !frame_next(c))
            return 0;
        if (c->out_off < c->out_len) {
            iov[n].iov_base = c->out + c->out_off;
            iov[n++].iov_len = (size_t)(c->out_len - c->out_off);
        }
        if (c->seg_left) {
            if (c->fixed_body) {
                iov[n].iov_base = (char *)c->fixed_body + c->body_pos;
                iov[n].iov_len = (size_t)c->seg_left;
            }
            else {
                iov[n].iov_base = pattern + (c->body_pos & (PATTERN_LEN - 1));
                iov[n].iov_len = c->seg_left < PATTERN_SPAN ? (size_t)c->seg_left : PATTERN_SPAN;
            }
            if (c->trickle_bytes) {
                if (!c->burst_left)
                    return 2;
                if (iov[n].iov_len > c->burst_left)
                    iov[n].iov_len = (size_t)c->burst_left;
            }
            seg_iov = iov[n++].iov_len;
        }
        if (c->tail_left && seg_iov == c->seg_left) {
            iov[n].iov_base = (char *)CHUNK_TAIL + (sizeof(CHUNK_TAIL) - 1 - c->tail_left);
            iov[n++].iov_len = c->tail_left;
        }
        w = writev(c->fd, iov, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return (errno == EAGAIN || errno == EWOULDBLOCK) ? 1 : -1;
        }
        st_bytes += (uint64_t)w;
        done = (size_t)w;
        if (c->out_off < c->out_len) {
            size_t h = (size_t)(c->out_len - c->out_off);
            size_t t = done < h ? done : h;
            c->out_off += (uint16_t)t;
            done -= t;
        }
        if (done > c->seg_left) {
            c->tail_left -= (uint8_t)(done - c->seg_left);
            done = (size_t)c->seg_left;
        }
        c->seg_left -= done;
        c->body_pos += done;
        if (c->trickle_bytes)
            c->burst_left -= done;
    }
}

static int token_eq(const char *p, size_t n, const char *tok)
{
    return strlen(tok) == n && strncasecmp(p, tok, n) == 0;
}

/* Parses one request head h[0, hlen) and fills in the response to give:
 * status, body, framing, keep-alive, and the deadline (0 = answer now). */
static void request_parse(conn *c, char *h, size_t hlen)
{
    char *end = h + hlen, *p = h, *sp1, *sp2, *eol, *tgt, *q;
    size_t tlen;
    int minor = 1, conn_close_tok = 0, conn_keep_tok = 0, te = 0, bad = 0;
    int have_cl = 0;
    uint64_t cl = 0, ms = 0, bytes = 0;

    c->fixed_body = NULL;
    free(c->own_body);
    c->own_body = NULL;
    c->chunked = 0;
    c->trickle_bytes = c->trickle_ms = 0;
    c->started = 0;
    c->head_only = 0;
    c->keepalive = 0;
    c->has_max_age = 0;

    while (p < end && (*p == '\r' || *p == '\n'))
        p++;
    eol = memchr(p, '\n', (size_t)(end - p));
    if (!eol)
        goto bad_request;
    sp1 = memchr(p, ' ', (size_t)(eol - p));
    if (!sp1 || sp1 == p)
        goto bad_request;
    tgt = sp1 + 1;
    sp2 = memchr(tgt, ' ', (size_t)(eol - tgt));
    if (!sp2 || sp2 == tgt)
        goto bad_request;
    tlen = (size_t)(sp2 - tgt);
    if ((size_t)(eol - sp2) < 9 || memcmp(sp2 + 1, "HTTP/1.", 7) != 0)
        goto bad_request;
    if (sp2[8] == '0')
        minor = 0;
    else if (sp2[8] < '0' || sp2[8] > '9')
        goto bad_request;
    c->head_only = (sp1 - p == 4 && memcmp(p, "HEAD", 4) == 0);

    for (p = eol + 1; p < end; p = eol + 1) {
        char *colon, *v, *ve;
        eol = memchr(p, '\n', (size_t)(end - p));
        if (!eol)
            eol = end;
        ve = eol;
        if (ve > p && ve[-1] == '\r')
            ve--;
        if (ve == p)
            break;                      /* the empty line ending the head */
        colon = memchr(p, ':', (size_t)(ve - p));
        if (!colon || colon == p) {
            bad = 1;
            continue;
        }
        v = colon + 1;
        while (v < ve && (*v == ' ' || *v == '\t'))
            v++;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
            ve--;
        if (token_eq(p, (size_t)(colon - p), "Connection")) {
            char *t = v;
            while (t < ve) {
                char *comma = memchr(t, ',', (size_t)(ve - t)), *te_ = comma ? comma : ve, *ts = t;
                while (ts < te_ && *ts == ' ')
                    ts++;
                while (te_ > ts && te_[-1] == ' ')
                    te_--;
                if (token_eq(ts, (size_t)(te_ - ts), "close"))
                    conn_close_tok = 1;
                else if (token_eq(ts, (size_t)(te_ - ts), "keep-alive"))
                    conn_keep_tok = 1;
                t = comma ? comma + 1 : ve;
            }
        }
        else if (token_eq(p, (size_t)(colon - p), "Content-Length")) {
            uint64_t n = 0;
            char *d = v;
            if (d == ve)
                bad = 1;
            for (; d < ve; d++) {
                if (*d < '0' || *d > '9' || n > (UINT64_MAX - 9) / 10) {
                    bad = 1;
                    break;
                }
                n = n * 10 + (uint64_t)(*d - '0');
            }
            if (have_cl && n != cl)
                bad = 1;
            have_cl = 1;
            cl = n;
        }
        else if (token_eq(p, (size_t)(colon - p), "Transfer-Encoding")) {
            if (!token_eq(v, (size_t)(ve - v), "identity"))
                te = 1;
        }
    }
    if (bad)
        goto bad_request;
    c->keepalive = minor ? !conn_close_tok : (conn_keep_tok && !conn_close_tok);
    c->http10 = !minor;
    if (te) {
        c->status = 501;
        c->fixed_body = notimpl_body;
        c->body_left = sizeof(notimpl_body) - 1;
        c->keepalive = 0;
        c->deadline_ns = 0;
        return;
    }
    c->discard = cl;

    q = memchr(tgt, '?', tlen);
    if (tlen == 1 && tgt[0] == '/') {
        c->status = 200;
        c->fixed_body = index_body;
        c->body_left = sizeof(index_body) - 1;
        c->deadline_ns = 0;
        return;
    }
    if ((q ? (size_t)(q - tgt) : tlen) == 6 && memcmp(tgt, "/stats", 6) == 0) {
        char buf[256];
        int n;

        /* this response counts itself */
        n = snprintf(buf, sizeof(buf), "delay %" PRIu64 "\nrequests %" PRIu64
                     "\nopen %" PRIu64 "\naccepted %" PRIu64 "\n",
                     st_delay_requests, st_total_requests + 1, st_conns,
                     st_accepted);
        c->own_body = malloc((size_t)n + 1);
        if (c->own_body) {
            memcpy(c->own_body, buf, (size_t)n + 1);
            c->status = 200;
            c->fixed_body = c->own_body;
            c->body_left = (uint64_t)n;
            c->deadline_ns = 0;
            return;
        }
    }
    if (tlen > 7 && memcmp(tgt, "/delay/", 7) == 0) {
        char *d = tgt + 7, *pe = q ? q : tgt + tlen;
        int ok = (d < pe && *d >= '0' && *d <= '9');
        for (; ok && d < pe && *d >= '0' && *d <= '9'; d++) {
            ms = ms * 10 + (uint64_t)(*d - '0');
            ok = ms <= MAX_DELAY_MS;
        }
        if (ok && d < pe && *d == '/') {
            d++;
            ok = (d < pe);
            for (; ok && d < pe && *d >= '0' && *d <= '9'; d++) {
                bytes = bytes * 10 + (uint64_t)(*d - '0');
                ok = bytes < (1ull << 50);
            }
        }
        if (ok && d == pe) {
            c->status = 200;
            c->body_left = bytes;
            if (q) {
                char *a = q + 1, *qe = tgt + tlen;
                while (a < qe) {
                    char *amp = memchr(a, '&', (size_t)(qe - a));
                    char *ae = amp ? amp : qe;
                    if (token_eq(a, (size_t)(ae - a), "chunked=1"))
                        c->chunked = 1;
                    else if (ae - a > 8 && strncasecmp(a, "trickle=", 8) == 0) {
                        unsigned long tb = 0, tm = 0;
                        char tail = 0;
                        char tmp[48];
                        size_t tl = (size_t)(ae - a - 8);
                        if (tl < sizeof(tmp)) {
                            memcpy(tmp, a + 8, tl);
                            tmp[tl] = 0;
                            if (sscanf(tmp, "%lu:%lu%c", &tb, &tm, &tail) == 2 && tb > 0
                                && tb <= UINT32_MAX && tm <= 600000) {
                                c->trickle_bytes = (uint32_t)tb;
                                c->trickle_ms = (uint32_t)tm;
                            }
                        }
                    }
                    else if (ae - a > 8 && strncasecmp(a, "max-age=", 8) == 0) {
                        uint64_t v = 0;
                        char *d2 = a + 8;
                        for (; d2 < ae && *d2 >= '0' && *d2 <= '9' && v <= UINT32_MAX; d2++)
                            v = v * 10 + (uint64_t)(*d2 - '0');
                        if (d2 == ae && v <= UINT32_MAX) {
                            c->has_max_age = 1;
                            c->max_age = (uint32_t)v;
                        }
                    }
                    a = amp ? amp + 1 : qe;
                }
            }
            /* An HTTP/1.0 client cannot read chunked framing. */
            if (!minor)
                c->chunked = 0;
            c->deadline_ns = ms ? now_ns() + ms * delay_mult * 1000000ull : 0;
            return;
        }
    }
    c->status = 404;
    c->fixed_body = notfound_body;
    c->body_left = sizeof(notfound_body) - 1;
    c->deadline_ns = 0;
    return;

bad_request:
    c->status = 400;
    c->fixed_body = badreq_body;
    c->body_left = sizeof(badreq_body) - 1;
    c->keepalive = 0;
    c->head_only = 0;
    c->chunked = 0;
    c->deadline_ns = 0;
}

/* Finds the end of a head (blank line, CRLF or bare LF) in the buffered
 * bytes; returns its length including the blank line, or 0. */
static size_t head_end(const char *b, size_t n)
{
    size_t i = 0;
    /* leading empty lines before a request line are tolerated */
    while (i < n && (b[i] == '\r' || b[i] == '\n'))
        i++;
    for (; i < n; i++) {
        if (b[i] != '\n')
            continue;
        if (i + 1 < n && b[i + 1] == '\n')
            return i + 2;
        if (i + 2 < n && b[i + 1] == '\r' && b[i + 2] == '\n')
            return i + 3;
    }
    return 0;
}

/* ST_READING: consume buffered bytes, then read, until a request is parsed
 * (returns 1), the socket is drained (0) or the connection must go (-1). */
static int conn_read(conn *c)
{
    for (;;) {
        size_t avail = c->rlen - c->rstart, hl;
        ssize_t r;
        if (c->discard && avail) {
            size_t d = avail < c->discard ? avail : (size_t)c->discard;
            c->rstart += (uint32_t)d;
            c->discard -= d;
            avail -= d;
        }
        if (!c->discard && avail) {
            hl = head_end(c->rbuf + c->rstart, avail);
            if (hl) {
                char *h = c->rbuf + c->rstart;
                c->rstart += (uint32_t)hl;
                request_parse(c, h, hl);
                return 1;
            }
            if (avail >= HEAD_MAX) {
                c->status = 431;
                c->fixed_body = toolarge_body;
                c->body_left = sizeof(toolarge_body) - 1;
                c->keepalive = c->head_only = c->chunked = 0;
                c->deadline_ns = 0;
                return 1;
            }
        }
        if (c->rstart == c->rlen) {
            c->rstart = c->rlen = 0;
        }
        else if (c->rstart > 0 && c->rlen == c->rcap) {
            memmove(c->rbuf, c->rbuf + c->rstart, c->rlen - c->rstart);
            c->rlen -= c->rstart;
            c->rstart = 0;
        }
        if (c->rlen == c->rcap) {
            uint32_t ncap = c->rcap * 2;
            char *nb = realloc(c->rbuf, ncap);
            if (!nb)
                return -1;
            c->rbuf = nb;
            c->rcap = ncap;
        }
        r = read(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen);
        if (r > 0) {
            c->rlen += (uint32_t)r;
            continue;
        }
        if (r == 0)
            return -1;
        if (errno == EINTR)
            continue;
        return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -1;
    }
}

/* Drives a connection as far as it can go without blocking. */
static void conn_run(conn *c)
{
    for (;;) {
        int r;
        switch (c->state) {
        case ST_READING:
            r = conn_read(c);
            if (r <= 0) {
                if (r < 0)
                    conn_close(c, 0);
                return;
            }
            if (c->deadline_ns) {
                c->state = ST_WAITING;
                if (heap_push(c) < 0) {
                    c->state = ST_READING;
                    conn_close(c, 0);
                }
                return;
            }
            response_start(c);
            break;
        case ST_WAITING:
            return;
        case ST_WRITING:
            r = conn_write(c);
            if (r == 1)
                return;
            if (r == 2) {
                /* a trickle pause: the next piece after trickle_ms */
                c->deadline_ns = now_ns() + (uint64_t)c->trickle_ms * 1000000ull;
                c->burst_left = c->trickle_bytes;
                c->state = ST_WAITING;
                if (heap_push(c) < 0) {
                    c->state = ST_WRITING;
                    conn_close(c, 0);
                }
                return;
            }
            if (r < 0) {
                conn_close(c, 0);
                return;
            }
            if (!c->keepalive) {
                conn_close(c, 1);
                return;
            }
            c->state = ST_READING;
            c->started = 0;
            c->trickle_bytes = 0;
            break;
        }
    }
}

static void accept_all(uint64_t now)
{
    for (;;) {
        int one = 1;
        struct epoll_event ev;
        conn *c;
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                struct epoll_event lev = { 0 };
                lev.data.ptr = &tag_listen;
                epoll_ctl(epfd, EPOLL_CTL_MOD, lfd, &lev);
                listen_paused = 1;
                accept_resume_ns = now + ACCEPT_PAUSE_NS;
                if (!quiet)
                    fprintf(stderr, "slowd: accept: %s; pausing accepts for 100 ms\n", strerror(errno));
            }
            return;
        }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        c = calloc(1, sizeof(*c));
        if (c)
            c->rbuf = malloc(RBUF_INITIAL);
        if (!c || !c->rbuf) {
            if (c)
                free(c);
            close(fd);
            continue;
        }
        c->fd = fd;
        c->rcap = RBUF_INITIAL;
        c->state = ST_READING;
        ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
        ev.data.ptr = c;
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
            free(c->rbuf);
            free(c);
            close(fd);
            continue;
        }
        c->next = all_conns.next;
        c->prev = &all_conns;
        c->next->prev = c;
        all_conns.next = c;
        st_conns++;
        st_accepted++;
        /* the request often arrives with the connection: answer without
         * another epoll round trip */
        conn_run(c);
    }
}

static void usage(void)
{
    fprintf(stderr, "usage: slowd [-p PORT] [-a ADDR] [-b BACKLOG] [-P PIDFILE] [-m MULT] [-q]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *addr = "127.0.0.1", *pidfile = NULL;
    int port = 9000, backlog = 4096, opt, one = 1, i;
    struct sockaddr_in sa;
    socklen_t salen = sizeof(sa);
    struct rlimit rl;
    sigset_t sigs;
    struct epoll_event ev, *events;
    uint64_t next_stats, last_requests = 0, last_accepted = 0;
    char abuf[INET_ADDRSTRLEN];

    while ((opt = getopt(argc, argv, "p:a:b:P:m:qh")) != -1) {
        switch (opt) {
        case 'p': port = atoi(optarg); break;
        case 'a': addr = optarg; break;
        case 'b': backlog = atoi(optarg); break;
        case 'P': pidfile = optarg; break;
        case 'm': delay_mult = (unsigned)atoi(optarg); break;
        case 'q': quiet = 1; break;
        default: usage();
        }
    }
    if (optind != argc || port < 0 || port > 65535 || backlog <= 0
        || delay_mult < 1 || delay_mult > 1000)
        usage();

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
            perror("slowd: setrlimit(RLIMIT_NOFILE)");
    }
    signal(SIGPIPE, SIG_IGN);
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    sigprocmask(SIG_BLOCK, &sigs, NULL);
    sigfd = signalfd(-1, &sigs, SFD_NONBLOCK | SFD_CLOEXEC);
    if (sigfd < 0) {
        perror("slowd: signalfd");
        return 1;
    }

    for (i = 0; i < (int)sizeof(pattern); i++) {
        static const char pat[PATTERN_LEN + 1] =
            "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-\n";
        pattern[i] = pat[i % PATTERN_LEN];
    }

    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1) {
        fprintf(stderr, "slowd: bad address '%s' (IPv4 only)\n", addr);
        return 2;
    }
    lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0 || setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0
        || bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(lfd, backlog) < 0
        || getsockname(lfd, (struct sockaddr *)&sa, &salen) < 0) {
        fprintf(stderr, "slowd: listen on %s:%d: %s\n", addr, port, strerror(errno));
        return 1;
    }

    epfd = epoll_create1(EPOLL_CLOEXEC);
    events = calloc(EVENTS_MAX, sizeof(*events));
    if (epfd < 0 || !events) {
        perror("slowd: epoll_create1");
        return 1;
    }
    ev.events = EPOLLIN;
    ev.data.ptr = &tag_listen;
    epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &ev);
    ev.events = EPOLLIN;
    ev.data.ptr = &tag_signal;
    epoll_ctl(epfd, EPOLL_CTL_ADD, sigfd, &ev);

    if (pidfile) {
        FILE *f = fopen(pidfile, "w");
        if (!f || fprintf(f, "%ld\n", (long)getpid()) < 0 || fclose(f) != 0) {
            fprintf(stderr, "slowd: pidfile %s: %s\n", pidfile, strerror(errno));
            return 1;
        }
    }
    inet_ntop(AF_INET, &sa.sin_addr, abuf, sizeof(abuf));
    printf("slowd listening on %s:%u\n", abuf, (unsigned)ntohs(sa.sin_port));
    fflush(stdout);

    next_stats = now_ns() + STATS_EVERY_NS;
    for (;;) {
        uint64_t now = now_ns(), wake = quiet ? UINT64_MAX : next_stats;
        int n, timeout;
        if (heap_len && heap[0]->deadline_ns < wake)
            wake = heap[0]->deadline_ns;
        if (listen_paused && accept_resume_ns < wake)
            wake = accept_resume_ns;
        if (wake == UINT64_MAX)
            timeout = -1;
        else if (wake <= now)
            timeout = 0;
        else {
            /* round up: waking early would only loop once more */
            uint64_t ms = (wake - now + 999999) / 1000000;
            timeout = ms > 60000 ? 60000 : (int)ms;
        }
        n = epoll_wait(epfd, events, EVENTS_MAX, timeout);
        if (n < 0 && errno != EINTR) {
            perror("slowd: epoll_wait");
            return 1;
        }
        now = now_ns();
        for (i = 0; i < n; i++) {
            void *p = events[i].data.ptr;
            if (p == &tag_listen) {
                accept_all(now);
            }
            else if (p == &tag_signal) {
                struct signalfd_siginfo si;
                if (read(sigfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
                    if (!quiet)
                        fprintf(stderr, "slowd: signal %u, exiting (%" PRIu64 " open connections)\n",
                                si.ssi_signo, st_conns);
                    if (pidfile)
                        unlink(pidfile);
                    while (all_conns.next != &all_conns)
                        conn_close(all_conns.next, 0);
                    free(heap);
                    free(events);
                    close(epfd);
                    close(lfd);
                    close(sigfd);
                    return 0;
                }
            }
            else {
                conn *c = p;
                if (events[i].events & (EPOLLERR | EPOLLHUP))
                    conn_close(c, 0);
                else
                    conn_run(c);
            }
        }
        while (heap_len && heap[0]->deadline_ns <= now) {
            conn *c = heap[0];
            heap_remove(c);
            if (c->started)
                c->state = ST_WRITING;     /* after a trickle pause */
            else
                response_start(c);
            conn_run(c);
        }
        if (listen_paused && accept_resume_ns <= now) {
            ev.events = EPOLLIN;
            ev.data.ptr = &tag_listen;
            epoll_ctl(epfd, EPOLL_CTL_MOD, lfd, &ev);
            listen_paused = 0;
        }
        if (!quiet && now >= next_stats) {
            if (st_requests != last_requests || st_accepted != last_accepted)
                fprintf(stderr, "slowd: %" PRIu64 " open, %u waiting, %" PRIu64 " req/s, %.1f MB/s\n",
                        st_conns, heap_len, (uint64_t)((st_requests - last_requests) * 1000000000ull
                        / (STATS_EVERY_NS + now - next_stats)),
                        (double)st_bytes / 1e6 / ((double)(STATS_EVERY_NS + now - next_stats) / 1e9));
            last_requests = st_requests;
            last_accepted = st_accepted;
            st_bytes = 0;
            next_stats = now + STATS_EVERY_NS;
        }
    }
}
