/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* slowclient.c — the slow-reader client of the benchmark (bench/run.pl).
 *
 * Opens CONNS keep-alive connections to ADDR:PORT and on each one GETs PATH
 * over and over, reading at most READ bytes per connection every INTERVAL
 * milliseconds: 200 connections reading 4 KiB every 100 ms each take 25 s
 * to drain a 1 MiB response. The receive buffer is shrunk before connect
 * (-b, default 16 KiB: a window of a few reads) so the server really sees a
 * slow reader instead of loopback socket buffers of several MB swallowing
 * the whole response.
 *
 *   slowclient -p PORT -u PATH [-a ADDR] [-c CONNS] [-r READ] [-i MS]
 *              [-d SECONDS] [-b RCVBUF]
 *
 * Prints "slowclient connected N" once every connection has been opened,
 * then at the end (after -d seconds, or on SIGTERM/SIGINT) one line:
 *   slowclient conns=C responses=N bytes=B errors=E connect_errors=K
 *              status_errors=S duration_s=D
 * responses counts complete responses, bytes every byte read, errors
 * connections that ended in the middle of a response (or a read error),
 * status_errors complete responses whose status was not 2xx.
 *
 * One thread, no epoll: every connection has its own next-read time, spread
 * evenly over the interval at start, and the loop sleeps until the earliest
 * one. Responses must carry Content-Length or end at connection close
 * (chunked bodies are not decoded: each counts as an error).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Response heads of our backends and proxies are well under 8 KiB. */
#define HEAD_MAX        8192
/* A stuck connect (full accept queue) stalls the whole loop, so it is
 * bounded; it then counts as a connect error and is retried later. */
#define CONNECT_TIMEOUT_S 3

enum { ST_CLOSED, ST_HEAD, ST_BODY };

typedef struct conn {
    int fd;
    int state;
    int close_delimited;    /* no Content-Length: body ends at EOF */
    int keepalive;          /* the response allows another request */
    int status;
    uint64_t body_left;
    uint64_t next_ns;
    size_t hlen;
    char head[HEAD_MAX];
} conn;

static volatile sig_atomic_t stopping;
static struct sockaddr_in peer;
static const char *path = "/";
static char request[2048];
static size_t request_len;
static size_t read_max = 4096;
static int rcvbuf = 16384;

static uint64_t st_responses, st_bytes, st_errors, st_connect_errors, st_status_errors;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void on_signal(int sig)
{
    stopping = 1;
}

static void close_conn(conn *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->state = ST_CLOSED;
}

static int send_request(conn *c)
{
    size_t off = 0;
    while (off < request_len) {
        ssize_t n = send(c->fd, request + off, request_len - off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            /* The request is tiny and the socket buffer empty: EAGAIN here
             * means something is badly wrong. */
            return -1;
        }
        off += (size_t)n;
    }
    c->state = ST_HEAD;
    c->hlen = 0;
    c->body_left = 0;
    c->close_delimited = 0;
    c->keepalive = 1;
    c->status = 0;
    return 0;
}

static int open_conn(conn *c)
{
    struct timeval tv = { CONNECT_TIMEOUT_S, 0 };
    int one = 1;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    /* Before connect, so the window scale is chosen for the small buffer. */
    if (rcvbuf > 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(fd, (struct sockaddr *)&peer, sizeof(peer)) < 0) {
        close(fd);
        return -1;
    }
    c->fd = fd;
    if (send_request(c) < 0) {
        close_conn(c);
        return -1;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return 0;
}

/* Parses a complete head in c->head[0..end): status, Content-Length,
 * Connection, Transfer-Encoding. Returns -1 on a head we cannot follow. */
static int parse_head(conn *c, size_t end)
{
    char *p = c->head, *eol, *lim = c->head + end;
    int have_len = 0, http10 = 0;
    if (end < 12 || strncmp(p, "HTTP/1.", 7))
        return -1;
    http10 = p[7] == '0';
    c->status = atoi(p + 9);
    c->keepalive = !http10;
    while ((eol = memmem(p, (size_t)(lim - p), "\r\n", 2)) && eol < lim) {
        size_t len = (size_t)(eol - p);
        if (len > 15 && !strncasecmp(p, "Content-Length:", 15)) {
            c->body_left = strtoull(p + 15, NULL, 10);
            have_len = 1;
        }
        else if (len > 11 && !strncasecmp(p, "Connection:", 11)) {
            if (memmem(p, len, "close", 5))
                c->keepalive = 0;
            else if (memmem(p, len, "eep-", 4) || memmem(p, len, "EEP-", 4))
                c->keepalive = 1;
        }
        else if (len > 18 && !strncasecmp(p, "Transfer-Encoding:", 18)) {
            return -1;
        }
        p = eol + 2;
    }
    if (!have_len) {
        c->close_delimited = 1;
        c->keepalive = 0;
    }
    return 0;
}

static void response_done(conn *c)
{
    st_responses++;
    if (c->status < 200 || c->status > 299)
        st_status_errors++;
    if (!c->keepalive || send_request(c) < 0)
        close_conn(c);
}

/* Feeds n bytes just read into the connection's response state. */
static int consume(conn *c, const char *buf, size_t n)
{
    while (n > 0) {
        if (c->state == ST_HEAD) {
            size_t take = n, end;
            char *hend;
            if (take > HEAD_MAX - c->hlen)
                take = HEAD_MAX - c->hlen;
            if (take == 0)
                return -1;
            memcpy(c->head + c->hlen, buf, take);
            hend = memmem(c->head, c->hlen + take, "\r\n\r\n", 4);
            if (!hend) {
                c->hlen += take;
                buf += take;
                n -= take;
                continue;
            }
            end = (size_t)(hend - c->head) + 4;
            /* bytes of this read past the head are body */
            buf += end - c->hlen;
            n -= end - c->hlen;
            c->hlen = end;
            if (parse_head(c, end) < 0)
                return -1;
            c->state = ST_BODY;
            if (!c->close_delimited && c->body_left == 0) {
                response_done(c);
                if (c->state == ST_CLOSED)
                    return 0;
            }
        }
        else if (c->state == ST_BODY) {
            if (c->close_delimited)
                return 0;
            if (n < c->body_left) {
                c->body_left -= n;
                return 0;
            }
            buf += c->body_left;
            n -= c->body_left;
            c->body_left = 0;
            response_done(c);
            if (c->state == ST_CLOSED)
                return 0;
            /* Anything left is the start of an unrequested response. */
            if (n > 0)
                return -1;
        }
        else {
            return 0;
        }
    }
    return 0;
}

static void step(conn *c)
{
    char buf[65536];
    ssize_t n;
    if (c->state == ST_CLOSED) {
        if (open_conn(c) < 0)
            st_connect_errors++;
        return;
    }
    n = recv(c->fd, buf, read_max < sizeof(buf) ? read_max : sizeof(buf), MSG_DONTWAIT);
    if (n > 0) {
        st_bytes += (uint64_t)n;
        if (consume(c, buf, (size_t)n) < 0) {
            st_errors++;
            close_conn(c);
        }
    }
    else if (n == 0) {
        if (c->state == ST_BODY && c->close_delimited) {
            c->keepalive = 0;
            response_done(c);
        }
        else if (c->state == ST_BODY || c->hlen > 0) {
            st_errors++;
        }
        close_conn(c);
    }
    else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        st_errors++;
        close_conn(c);
    }
}

static void usage(void)
{
    fprintf(stderr, "usage: slowclient -p PORT -u PATH [-a ADDR] [-c CONNS] [-r READ_BYTES]\n"
                    "                  [-i INTERVAL_MS] [-d SECONDS] [-b RCVBUF]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *addr = "127.0.0.1";
    int port = 0, nconns = 200, opt;
    unsigned interval_ms = 100;
    double duration_s = 10;
    uint64_t start, end, interval_ns;
    conn *conns;
    struct rlimit rl;
    struct sigaction sa;
    int i, announced = 0;

    while ((opt = getopt(argc, argv, "a:p:u:c:r:i:d:b:")) != -1) {
        switch (opt) {
        case 'a': addr = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'u': path = optarg; break;
        case 'c': nconns = atoi(optarg); break;
        case 'r': read_max = (size_t)strtoul(optarg, NULL, 10); break;
        case 'i': interval_ms = (unsigned)strtoul(optarg, NULL, 10); break;
        case 'd': duration_s = strtod(optarg, NULL); break;
        case 'b': rcvbuf = atoi(optarg); break;
        default: usage();
        }
    }
    if (port <= 0 || port > 65535 || nconns <= 0 || read_max == 0 || interval_ms == 0 ||
        duration_s <= 0 || path[0] != '/')
        usage();
    memset(&peer, 0, sizeof(peer));
    peer.sin_family = AF_INET;
    peer.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, addr, &peer.sin_addr) != 1)
        usage();
    request_len = (size_t)snprintf(request, sizeof(request),
                                   "GET %s HTTP/1.1\r\nHost: %s:%d\r\n"
                                   "User-Agent: apx-slowclient\r\n\r\n", path, addr, port);
    if (request_len >= sizeof(request))
        usage();

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    conns = calloc((size_t)nconns, sizeof(*conns));
    if (!conns) {
        perror("calloc");
        return 1;
    }
    interval_ns = (uint64_t)interval_ms * 1000000ull;
    start = now_ns();
    end = start + (uint64_t)(duration_s * 1e9);
    for (i = 0; i < nconns; i++) {
        conns[i].fd = -1;
        conns[i].state = ST_CLOSED;
        conns[i].next_ns = start + interval_ns * (uint64_t)i / (uint64_t)nconns;
    }

    while (!stopping) {
        uint64_t now = now_ns(), next = UINT64_MAX;
        if (now >= end)
            break;
        for (i = 0; i < nconns; i++) {
            conn *c = &conns[i];
            if (c->next_ns <= now) {
                step(c);
                c->next_ns += interval_ns;
                /* fell behind (a slow connect): do not burst to catch up */
                if (c->next_ns < now)
                    c->next_ns = now + interval_ns;
            }
            if (c->next_ns < next)
                next = c->next_ns;
        }
        if (!announced) {
            int open = 0;
            for (i = 0; i < nconns; i++)
                open += conns[i].fd >= 0;
            if (open == nconns) {
                printf("slowclient connected %d\n", nconns);
                fflush(stdout);
                announced = 1;
            }
        }
        now = now_ns();
        if (next > end)
            next = end;
        if (next > now) {
            struct timespec ts = { (time_t)((next - now) / 1000000000ull),
                                   (long)((next - now) % 1000000000ull) };
            nanosleep(&ts, NULL);
        }
    }
    printf("slowclient conns=%d responses=%" PRIu64 " bytes=%" PRIu64 " errors=%" PRIu64
           " connect_errors=%" PRIu64 " status_errors=%" PRIu64 " duration_s=%.2f\n",
           nconns, st_responses, st_bytes, st_errors, st_connect_errors, st_status_errors,
           (double)(now_ns() - start) / 1e9);
    for (i = 0; i < nconns; i++)
        close_conn(&conns[i]);
    free(conns);
    return 0;
}
