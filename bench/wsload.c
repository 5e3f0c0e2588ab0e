/* wsload: epoll WebSocket load client for the benchmark.
 * Usage: wsload -p PORT [-u /PATH] [-c CONNS] [-d SECONDS] [-i INTERVAL_MS]
 *               [-s BYTES] [-k HANDSHAKES_IN_FLIGHT] [-t CONNECT_TIMEOUT_S]
 * Phase 1 opens CONNS connections to 127.0.0.1:PORT (non-blocking, at most
 * -k handshakes in flight) and upgrades each (GET PATH, Upgrade: websocket).
 * Phase 2, once all are up or failed (or -t passed), lasts SECONDS: each
 * established connection sends a masked text frame of BYTES (>= 24; carries
 * its send time) every INTERVAL_MS, the sends of all connections spread
 * evenly over the interval. Echoes are matched by their timestamp; latency
 * = arrival - send. After SECONDS it waits 2 s more for the last echoes.
 * Prints key=value lines: established, connect/handshake failures, closed
 * (by the peer during phase 2), sent, echoed, msgs_per_s, p50/p99/max ms.
 * Raises RLIMIT_NOFILE to the hard limit. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { C_NEW, C_CONNECTING, C_HANDSHAKE, C_UP, C_DEAD };

struct conn {
    int fd, state;
    size_t in_len;
    unsigned char in[512];
};

#define HBUCKETS 200000 /* 10 us each: up to 2 s; beyond goes to the last */
static uint64_t hist[HBUCKETS];
static uint64_t lat_max;
static struct conn *conns;
static int nconns, ep, port, in_flight;
static long n_up, n_connfail, n_hsfail, n_closed, n_sent, n_echoed, n_sendfail;
static const char *path = "/";
static size_t msgsize = 32;
static int phase2;

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void kill_conn(struct conn *c, int hs_fail)
{
    if (c->state == C_DEAD)
        return;
    if (c->state == C_CONNECTING)
        n_connfail++, in_flight--;
    else if (c->state == C_HANDSHAKE)
        n_hsfail++, in_flight--;
    else if (c->state == C_UP) {
        n_up--;
        n_closed++;
    }
    (void)hs_fail;
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->state = C_DEAD;
}

static void start_conn(struct conn *c)
{
    struct sockaddr_in a = { .sin_family = AF_INET };
    struct epoll_event ev;
    int one = 1;

    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    in_flight++;
    c->state = C_CONNECTING;
    if (c->fd < 0) {
        kill_conn(c, 0);
        return;
    }
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c->fd, (struct sockaddr *)&a, sizeof a) && errno != EINPROGRESS) {
        kill_conn(c, 0);
        return;
    }
    ev.events = EPOLLOUT | EPOLLIN;
    ev.data.ptr = c;
    epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
}

static void send_handshake(struct conn *c)
{
    char req[512];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n", path, port);
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };
    if (write(c->fd, req, n) != n) {
        kill_conn(c, 1);
        return;
    }
    c->state = C_HANDSHAKE;
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

static void record(uint64_t lat)
{
    uint64_t b = lat / 10;
    if (b >= HBUCKETS)
        b = HBUCKETS - 1;
    hist[b]++;
    if (lat > lat_max)
        lat_max = lat;
    n_echoed++;
}

static void on_read(struct conn *c)
{
    ssize_t r = read(c->fd, c->in + c->in_len, sizeof c->in - 1 - c->in_len);
    if (r <= 0) {
        if (r < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        kill_conn(c, 1);
        return;
    }
    c->in_len += r;
    if (c->state == C_HANDSHAKE) {
        char *end;
        c->in[c->in_len] = 0;
        end = strstr((char *)c->in, "\r\n\r\n");
        if (!end) {
            if (c->in_len >= sizeof c->in - 1)
                kill_conn(c, 1);
            return;
        }
        /* the key is RFC 6455's example: its accept is known */
        if (strncmp((char *)c->in, "HTTP/1.1 101", 12) ||
            !strstr((char *)c->in, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")) {
            kill_conn(c, 1);
            return;
        }
        end += 4;
        c->in_len -= (unsigned char *)end - c->in;
        memmove(c->in, end, c->in_len);
        c->state = C_UP;
        in_flight--;
        n_up++;
    }
    for (;;) {
        size_t len, hl = 2;
        unsigned char *p = c->in;
        if (c->in_len < 2)
            return;
        len = p[1] & 0x7f;
        if (len == 126) {
            if (c->in_len < 4)
                return;
            len = (p[2] << 8) | p[3];
            hl = 4;
        } else if (len == 127 || (p[1] & 0x80)) {
            kill_conn(c, 1);
            return;
        }
        if (hl + len > sizeof c->in - 1) {
            kill_conn(c, 1);
            return;
        }
        if (c->in_len < hl + len)
            return;
        if ((p[0] & 0x0f) == 0x1 && len >= 16) {
            char ts[17];
            uint64_t sent, t;
            memcpy(ts, p + hl, 16);
            ts[16] = 0;
            sent = strtoull(ts, NULL, 16);
            t = now_us();
            if (phase2 && sent && t >= sent)
                record(t - sent);
        } else if ((p[0] & 0x0f) == 0x8) {
            kill_conn(c, 1);
            return;
        }
        c->in_len -= hl + len;
        memmove(c->in, c->in + hl + len, c->in_len);
    }
}

static void send_msg(struct conn *c)
{
    unsigned char f[256];
    static const unsigned char mask[4] = { 0x12, 0x34, 0x56, 0x78 };
    char payload[200];
    size_t i;

    snprintf(payload, sizeof payload, "%016llx", (unsigned long long)now_us());
    memset(payload + 16, 'x', msgsize - 16);
    f[0] = 0x81;
    f[1] = 0x80 | msgsize;
    memcpy(f + 2, mask, 4);
    for (i = 0; i < msgsize; i++)
        f[6 + i] = payload[i] ^ mask[i & 3];
    if (write(c->fd, f, 6 + msgsize) != (ssize_t)(6 + msgsize)) {
        n_sendfail++; /* a full send buffer means a stuck tunnel */
        return;
    }
    n_sent++;
}

static void poll_once(int timeout_ms)
{
    struct epoll_event evs[1024];
    int n = epoll_wait(ep, evs, 1024, timeout_ms), i;
    for (i = 0; i < n; i++) {
        struct conn *c = evs[i].data.ptr;
        if (c->state == C_CONNECTING) {
            int err = 0;
            socklen_t el = sizeof err;
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
            if (err || (evs[i].events & (EPOLLERR | EPOLLHUP))) {
                kill_conn(c, 0);
                continue;
            }
            if (evs[i].events & EPOLLOUT)
                send_handshake(c);
            continue;
        }
        if (c->state == C_HANDSHAKE || c->state == C_UP)
            on_read(c);
    }
}

int main(int argc, char **argv)
{
    int duration = 10, interval_ms = 1000, maxflight = 256, ctimeout = 60, opt, i, next = 0;
    uint64_t t0, t1, tend, s = 0;
    struct rlimit rl;

    while ((opt = getopt(argc, argv, "p:u:c:d:i:s:k:t:")) != -1) {
        switch (opt) {
        case 'p': port = atoi(optarg); break;
        case 'u': path = optarg; break;
        case 'c': nconns = atoi(optarg); break;
        case 'd': duration = atoi(optarg); break;
        case 'i': interval_ms = atoi(optarg); break;
        case 's': msgsize = atoi(optarg); break;
        case 'k': maxflight = atoi(optarg); break;
        case 't': ctimeout = atoi(optarg); break;
        default:
            fprintf(stderr, "usage: wsload -p PORT [-u PATH] [-c N] [-d S] [-i MS] [-s BYTES] [-k N] [-t S]\n");
            return 2;
        }
    }
    if (!port || nconns <= 0 || msgsize < 24 || msgsize > 125 || interval_ms <= 0) {
        fprintf(stderr, "wsload: need -p, -c > 0, 24 <= -s <= 125\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    conns = calloc(nconns, sizeof *conns);
    ep = epoll_create1(0);
    t0 = now_us();
    /* phase 1: connect and upgrade */
    while (now_us() - t0 < (uint64_t)ctimeout * 1000000) {
        while (next < nconns && in_flight < maxflight)
            start_conn(&conns[next++]);
        if (next == nconns && in_flight == 0)
            break;
        poll_once(10);
    }
    for (i = 0; i < nconns; i++)
        if (conns[i].state == C_CONNECTING || conns[i].state == C_HANDSHAKE)
            kill_conn(&conns[i], 0);
    t1 = now_us();
    printf("asked=%d\nestablished=%ld\nconnect_failed=%ld\nhandshake_failed=%ld\nconnect_s=%.2f\n",
           nconns, n_up, n_connfail, n_hsfail, (t1 - t0) / 1e6);
    fflush(stdout);
    /* phase 2: send n x per interval, spread evenly; send number s goes to
     * connection s % nconns at t1 + s * interval / nconns */
    phase2 = 1;
    tend = t1 + (uint64_t)duration * 1000000;
    for (;;) {
        uint64_t t = now_us(), due;
        if (t >= tend)
            break;
        for (;;) {
            due = t1 + s * (uint64_t)interval_ms * 1000 / nconns;
            if (due > t || due >= tend)
                break;
            if (conns[s % nconns].state == C_UP)
                send_msg(&conns[s % nconns]);
            s++;
        }
        due = t1 + s * (uint64_t)interval_ms * 1000 / nconns;
        poll_once(due > t ? (int)((due - t + 999) / 1000) : 0);
    }
    /* the last echoes */
    while (n_echoed < n_sent && now_us() < tend + 2000000)
        poll_once(10);
    {
        uint64_t cum = 0, p50 = 0, p99 = 0;
        int got50 = 0, got99 = 0;
        for (i = 0; i < HBUCKETS; i++) {
            cum += hist[i];
            if (!got50 && cum * 100 >= (uint64_t)n_echoed * 50 && n_echoed)
                p50 = (uint64_t)i * 10 + 10, got50 = 1;
            if (!got99 && cum * 100 >= (uint64_t)n_echoed * 99 && n_echoed)
                p99 = (uint64_t)i * 10 + 10, got99 = 1;
        }
        printf("duration_s=%d\nup_at_end=%ld\nclosed=%ld\nsent=%ld\nsend_failed=%ld\n"
               "echoed=%ld\nmsgs_per_s=%.1f\necho_pct=%.3f\np50_ms=%.3f\np99_ms=%.3f\nmax_ms=%.3f\n",
               duration, n_up, n_closed, n_sent, n_sendfail, n_echoed,
               (double)n_echoed / duration,
               n_sent ? 100.0 * n_echoed / n_sent : 0.0,
               p50 / 1000.0, p99 / 1000.0, lat_max / 1000.0);
    }
    return 0;
}
