/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* hostile.c — hostile and normal HTTP/1.1 clients for the hardening tests
 * (t/integration/40-hostile-clients.t). One thread, epoll, non-blocking
 * sockets to 127.0.0.1 only; every run is bounded by -d seconds and stops
 * by itself.
 *
 *   hostile -p PORT -m MODE [-c CONNS] [-u PATH] [-t TARGET] [-s BYTES]
 *           [-i MS] [-d SECONDS] [-n REQUESTS]
 *
 * Modes (each connection of an attack first does one complete GET of PATH
 * where it says "adopted", so that the module owns the connection):
 *   pipelined  adopted by a GET sent together with the single byte "G" of
 *              a next request (one write): the byte waits in the server's
 *              buffer when the response ends; holds
 *   bighead    adopted, then BYTES of header lines of a next request (no
 *              end of head), then one more byte every MS ms
 *   slowbody   adopted, then "POST TARGET" with Content-Length BYTES and
 *              its body one byte every MS ms
 *   idle       adopted, then nothing: an idle keep-alive connection
 *   slowloris  a first request head (of PATH) sent one byte every MS ms,
 *              never completed within the run
 *   normal     CONNS loops of complete GETs of PATH, a new connection per
 *              request, until -n requests were answered or -d passed
 *
 * Output: "ready N" once N connections of an attack reached their hostile
 * phase (or 30 s passed), then at the end one line:
 *   done mode=M conns=C ready=R server_closed=K responses=X ok=Y errors=E
 *        p50_ms=.. p99_ms=.. max_ms=..
 * (latencies of the complete responses: the adopting GETs of an attack, or
 * the requests of `normal`). SIGTERM ends the run early with the same line.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { M_PIPELINED, M_BIGHEAD, M_SLOWBODY, M_IDLE, M_SLOWLORIS, M_NORMAL };
enum { S_CONNECTING, S_SENDING, S_READING, S_HOSTILE, S_DONE };

typedef struct conn {
    int fd;
    int state;
    char *out;              /* what is left to send in S_SENDING */
    size_t outlen, outoff;
    char in[16384];
    size_t inlen;
    double started;         /* request sent at (latency) */
    double next_trickle;
    size_t trickled;        /* hostile bytes sent one by one */
} conn;

static int port, mode, nconns = 1, interval_ms = 1000, duration = 10;
static long nrequests = 0;
static size_t bytes = 65 * 1024 + 1000;
static const char *path = "/", *target = "/static.html";
static volatile sig_atomic_t stop_now;
static int epfd;
static long ready, server_closed, responses, ok, errors, answered, opened;
static double *lat;
static long nlat, lat_cap;
static char *bighead_buf;
static size_t bighead_len;

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void on_term(int sig)
{
    (void)sig;
    stop_now = 1;
}

static void note_latency(double ms)
{
    if (nlat == lat_cap) {
        lat_cap = lat_cap ? lat_cap * 2 : 1024;
        lat = realloc(lat, lat_cap * sizeof(*lat));
        if (!lat)
            exit(3);
    }
    lat[nlat++] = ms;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

static double pct(double p)
{
    long i;

    if (!nlat)
        return 0;
    i = (long)(p * (nlat - 1) + 0.5);
    return lat[i];
}

static void set_out(conn *c, const char *data, size_t len)
{
    free(c->out);
    c->out = malloc(len);
    if (!c->out)
        exit(3);
    memcpy(c->out, data, len);
    c->outlen = len;
    c->outoff = 0;
}

static char *get_request(size_t *len)
{
    static char buf[1024];
    int n = snprintf(buf, sizeof(buf), "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     "User-Agent: hostile\r\n\r\n%s", path,
                     mode == M_PIPELINED ? "G" : "");

    *len = (size_t)n;
    return buf;
}

static void watch(conn *c, unsigned events, int op)
{
    struct epoll_event ev;

    ev.events = events;
    ev.data.ptr = c;
    epoll_ctl(epfd, op, c->fd, &ev);
}

static int open_conn(conn *c)
{
    struct sockaddr_in sa;
    int one = 1;

    free(c->out);
    memset(c, 0, sizeof(*c));
    opened++;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (c->fd < 0) {
        errors++;
        c->state = S_DONE;
        return -1;
    }
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((unsigned short)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0
        && errno != EINPROGRESS) {
        close(c->fd);
        c->fd = -1;
        errors++;
        c->state = S_DONE;
        return -1;
    }
    c->state = S_CONNECTING;
    watch(c, EPOLLOUT, EPOLL_CTL_ADD);
    return 0;
}

static void finish_conn(conn *c, int by_server)
{
    if (c->fd >= 0) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    c->fd = -1;
    if (by_server)
        server_closed++;
    c->state = S_DONE;
}

/* The hostile phase's first bytes (after the adopting response). */
static void start_hostile(conn *c, double t)
{
    char head[512];
    int n;

    c->state = S_HOSTILE;
    c->next_trickle = t + interval_ms / 1000.0;
    ready++;
    switch (mode) {
    case M_PIPELINED:           /* the "G" went with the request */
        c->outlen = c->outoff = 0;
        break;
    case M_BIGHEAD:
        set_out(c, bighead_buf, bighead_len);
        break;
    case M_SLOWBODY:
        n = snprintf(head, sizeof(head), "POST %s HTTP/1.1\r\nHost: 127.0.0.1"
                     "\r\nContent-Type: application/octet-stream\r\n"
                     "Content-Length: %zu\r\n\r\n", target, bytes);
        set_out(c, head, (size_t)n);
        break;
    case M_SLOWLORIS:
        n = snprintf(head, sizeof(head), "GET %s HTTP/1.1\r\nHost: 127.0.0.1"
                     "\r\nX-Slow: ", path);
        set_out(c, head, (size_t)n);
        break;
    default:
        c->outlen = c->outoff = 0;
        break;
    }
    watch(c, EPOLLIN | EPOLLRDHUP | (c->outlen ? EPOLLOUT : 0), EPOLL_CTL_MOD);
}

/* One complete response in c->in? Content-Length framing only (the tests'
 * backends send it). Returns its status, 0 when incomplete. */
static int take_response(conn *c)
{
    char *end, *cl;
    int status = 0;
    size_t head_len, body_len = 0;

    c->in[c->inlen < sizeof(c->in) ? c->inlen : sizeof(c->in) - 1] = '\0';
    end = strstr(c->in, "\r\n\r\n");
    if (!end)
        return 0;
    head_len = (size_t)(end - c->in) + 4;
    sscanf(c->in, "HTTP/1.%*d %d", &status);
    cl = strcasestr(c->in, "\r\nContent-Length:");
    if (cl && cl < end)
        body_len = strtoul(cl + 17, NULL, 10);
    if (c->inlen < head_len + body_len)
        return 0;
    memmove(c->in, c->in + head_len + body_len,
            c->inlen - head_len - body_len);
    c->inlen -= head_len + body_len;
    return status ? status : -1;
}

static void on_response(conn *c, int status, double t)
{
    responses++;
    if (status >= 200 && status < 300)
        ok++;
    else
        errors++;
    note_latency((t - c->started) * 1000.0);
    if (mode == M_NORMAL) {
        answered++;
        finish_conn(c, 0);
        if (!stop_now && (!nrequests || opened < nrequests))
            open_conn(c);
        return;
    }
    start_hostile(c, t);
}

static void handle(conn *c, unsigned ev, double t)
{
    ssize_t n;
    int status;

    if (c->state == S_CONNECTING) {
        int err = 0;
        socklen_t el = sizeof(err);
        size_t len;
        char *req;

        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err) {
            errors++;
            finish_conn(c, 0);
            return;
        }
        if (mode == M_SLOWLORIS) {
            start_hostile(c, t);
            return;
        }
        req = get_request(&len);
        set_out(c, req, len);
        c->state = S_SENDING;
        c->started = t;
        watch(c, EPOLLOUT | EPOLLIN | EPOLLRDHUP, EPOLL_CTL_MOD);
    }
    if ((ev & EPOLLOUT) && c->outoff < c->outlen) {
        n = send(c->fd, c->out + c->outoff, c->outlen - c->outoff,
                 MSG_NOSIGNAL);
        if (n > 0)
            c->outoff += (size_t)n;
        else if (n < 0 && errno != EAGAIN) {
            finish_conn(c, 1);
            return;
        }
        if (c->outoff == c->outlen) {
            if (c->state == S_SENDING)
                c->state = S_READING;
            watch(c, EPOLLIN | EPOLLRDHUP, EPOLL_CTL_MOD);
        }
    }
    if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
        for (;;) {
            if (c->inlen >= sizeof(c->in) - 1)
                c->inlen = 0;   /* not a response we can parse: drop */
            n = recv(c->fd, c->in + c->inlen, sizeof(c->in) - 1 - c->inlen, 0);
            if (n > 0) {
                c->inlen += (size_t)n;
                continue;
            }
            if (n == 0 || errno != EAGAIN) {
                if (c->state == S_READING)
                    errors++;
                finish_conn(c, 1);
                return;
            }
            break;
        }
        if (c->state == S_READING && (status = take_response(c)) != 0)
            on_response(c, status, t);
        else if (c->state == S_HOSTILE)
            c->inlen = 0;   /* e.g. a 408/400 before the close */
    }
}

/* A hostile byte every interval (bighead, slowbody, slowloris). */
static void trickle(conn *c, double t)
{
    static const char filler[] = "abcdefghijklmnopqrstuvwxyz";
    char b;

    if (c->state != S_HOSTILE || c->outoff < c->outlen || t < c->next_trickle)
        return;
    if (mode != M_BIGHEAD && mode != M_SLOWBODY && mode != M_SLOWLORIS)
        return;
    if (mode == M_SLOWBODY && c->trickled >= bytes)
        return;
    b = filler[c->trickled % 26];
    if (send(c->fd, &b, 1, MSG_NOSIGNAL) == 1)
        c->trickled++;
    c->next_trickle = t + interval_ms / 1000.0;
}

static void usage(void)
{
    fprintf(stderr, "usage: hostile -p PORT -m pipelined|bighead|slowbody|"
            "idle|slowloris|normal [-c CONNS] [-u PATH] [-t TARGET] "
            "[-s BYTES] [-i MS] [-d SECONDS] [-n REQUESTS]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    static const char *names[] = { "pipelined", "bighead", "slowbody", "idle",
                                   "slowloris", "normal" };
    struct epoll_event evs[256];
    struct rlimit rl;
    conn *conns;
    double t0, t, ready_by;
    int opt, i, n, printed_ready = 0;
    const char *mname = NULL;

    while ((opt = getopt(argc, argv, "p:m:c:u:t:s:i:d:n:")) != -1) {
        switch (opt) {
        case 'p': port = atoi(optarg); break;
        case 'm': mname = optarg; break;
        case 'c': nconns = atoi(optarg); break;
        case 'u': path = optarg; break;
        case 't': target = optarg; break;
        case 's': bytes = strtoul(optarg, NULL, 10); break;
        case 'i': interval_ms = atoi(optarg); break;
        case 'd': duration = atoi(optarg); break;
        case 'n': nrequests = atol(optarg); break;
        default: usage();
        }
    }
    if (!port || !mname || nconns < 1 || duration < 1)
        usage();
    for (mode = 0; mode < 6 && strcmp(names[mode], mname); mode++)
        ;
    if (mode == 6)
        usage();
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (mode == M_BIGHEAD) {
        /* header lines of 1000 bytes: each under LimitRequestFieldSize,
         * together past a 64 KiB window */
        size_t off;
        int k = 0;

        bighead_buf = malloc(bytes + 1100);
        off = (size_t)sprintf(bighead_buf, "GET %s HTTP/1.1\r\nHost: 127.0.0.1"
                              "\r\n", path);
        while (off < bytes) {
            off += (size_t)sprintf(bighead_buf + off, "X-Big-%03d: ", k++);
            memset(bighead_buf + off, 'b', 980);
            off += 980;
            memcpy(bighead_buf + off, "\r\n", 2);
            off += 2;
        }
        memcpy(bighead_buf + off, "X-Last: ", 8);
        bighead_len = off + 8;
    }
    signal(SIGTERM, on_term);
    signal(SIGINT, on_term);
    signal(SIGPIPE, SIG_IGN);
    epfd = epoll_create1(0);
    conns = calloc((size_t)nconns, sizeof(*conns));
    if (!conns || epfd < 0)
        return 3;
    t0 = now_s();
    ready_by = t0 + 30;
    for (i = 0; i < nconns; i++)
        open_conn(&conns[i]);
    setvbuf(stdout, NULL, _IOLBF, 0);
    while (!stop_now) {
        t = now_s();
        if (t - t0 >= duration)
            break;
        if (mode == M_NORMAL && nrequests && answered >= nrequests)
            break;
        if (mode != M_NORMAL && !printed_ready
            && (ready >= nconns || t >= ready_by)) {
            printf("ready %ld\n", ready);
            printed_ready = 1;
        }
        n = epoll_wait(epfd, evs, 256, 20);
        t = now_s();
        for (i = 0; i < n; i++)
            handle(evs[i].data.ptr, evs[i].events, t);
        for (i = 0; i < nconns; i++)
            trickle(&conns[i], t);
    }
    if (mode != M_NORMAL && !printed_ready)
        printf("ready %ld\n", ready);
    qsort(lat, (size_t)nlat, sizeof(*lat), cmp_double);
    printf("done mode=%s conns=%d ready=%ld server_closed=%ld responses=%ld "
           "ok=%ld errors=%ld p50_ms=%.1f p99_ms=%.1f max_ms=%.1f\n",
           mname, nconns, ready, server_closed, responses, ok, errors,
           pct(0.50), pct(0.99), nlat ? lat[nlat - 1] : 0.0);
    return 0;
}
