/* wsecho: epoll WebSocket echo backend for the benchmark (RFC 6455).
 * Usage: wsecho PORT
 * Answers the upgrade handshake of any GET carrying Sec-WebSocket-Key,
 * echoes text/binary frames unmasked, answers ping with pong and close with
 * close. One thread, level-triggered epoll, fixed per-connection buffers
 * (the benchmark's frames are small). Raises RLIMIT_NOFILE to the hard limit. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/sha.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF 8192

struct conn {
    int fd;
    int upgraded;
    size_t in_len, out_len;
    unsigned char in[BUF];
    unsigned char out[BUF];
};

static int ep;

static void b64(const unsigned char *s, size_t n, char *d)
{
    static const char t[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t i;
    for (i = 0; i + 2 < n; i += 3) {
        *d++ = t[s[i] >> 2];
        *d++ = t[((s[i] & 3) << 4) | (s[i + 1] >> 4)];
        *d++ = t[((s[i + 1] & 15) << 2) | (s[i + 2] >> 6)];
        *d++ = t[s[i + 2] & 63];
    }
    if (n - i == 1) {
        *d++ = t[s[i] >> 2];
        *d++ = t[(s[i] & 3) << 4];
        *d++ = '=';
        *d++ = '=';
    } else if (n - i == 2) {
        *d++ = t[s[i] >> 2];
        *d++ = t[((s[i] & 3) << 4) | (s[i + 1] >> 4)];
        *d++ = t[(s[i + 1] & 15) << 2];
        *d++ = '=';
    }
    *d = 0;
}

static void drop(struct conn *c)
{
    close(c->fd);
    free(c);
}

static void want_out(struct conn *c, int on)
{
    struct epoll_event ev = { .events = EPOLLIN | (on ? EPOLLOUT : 0),
                              .data.ptr = c };
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

/* Writes what is queued; 0 ok, -1 connection gone. */
static int flush_out(struct conn *c)
{
    while (c->out_len) {
        ssize_t n = write(c->fd, c->out, c->out_len);
        if (n < 0) {
            if (errno == EAGAIN) {
                want_out(c, 1);
                return 0;
            }
            if (errno == EINTR)
                continue;
            return -1;
        }
        memmove(c->out, c->out + n, c->out_len - n);
        c->out_len -= n;
    }
    want_out(c, 0);
    return 0;
}

static int queue(struct conn *c, const void *p, size_t n)
{
    if (c->out_len + n > BUF)
        return -1; /* the peer does not read: give up on it */
    memcpy(c->out + c->out_len, p, n);
    c->out_len += n;
    return 0;
}

static int handshake(struct conn *c)
{
    char *end, *k, *e, acc[64], resp[256];
    unsigned char sha[SHA_DIGEST_LENGTH], kb[128];
    size_t kl;
    int n;

    c->in[c->in_len] = 0;
    end = strstr((char *)c->in, "\r\n\r\n");
    if (!end)
        return c->in_len >= BUF - 1 ? -1 : 0;
    k = strcasestr((char *)c->in, "\r\nSec-WebSocket-Key:");
    if (!k || k > end)
        return -1;
    k += 20;
    while (*k == ' ' || *k == '\t')
        k++;
    e = k;
    while (*e && *e != '\r' && *e != ' ')
        e++;
    kl = e - k;
    if (kl == 0 || kl > 64)
        return -1;
    memcpy(kb, k, kl);
    memcpy(kb + kl, "258EAFA5-E914-47DA-95CA-C5AB0DC85B11", 36);
    SHA1(kb, kl + 36, sha);
    b64(sha, sizeof sha, acc);
    n = snprintf(resp, sizeof resp,
                 "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                 "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n", acc);
    end += 4;
    c->in_len -= (unsigned char *)end - c->in;
    memmove(c->in, end, c->in_len);
    c->upgraded = 1;
    return queue(c, resp, n);
}

/* Parses complete frames of c->in; 0 ok, -1 close the connection. */
static int frames(struct conn *c)
{
    for (;;) {
        unsigned char *p = c->in, hdr[10];
        size_t have = c->in_len, hl = 2, len, i, h;
        int op, masked, fin;
        unsigned char mask[4] = { 0 };

        if (have < 2)
            return 0;
        fin = p[0] & 0x80;
        op = p[0] & 0x0f;
        masked = p[1] & 0x80;
        len = p[1] & 0x7f;
        if (len == 126) {
            if (have < 4)
                return 0;
            len = (p[2] << 8) | p[3];
            hl = 4;
        } else if (len == 127) {
            return -1; /* not for this benchmark */
        }
        if (masked) {
            if (have < hl + 4)
                return 0;
            memcpy(mask, p + hl, 4);
            hl += 4;
        }
        if (hl + len > BUF - 16)
            return -1;
        if (have < hl + len)
            return 0;
        for (i = 0; i < len; i++)
            p[hl + i] ^= mask[i & 3];
        /* the echo: same fin and opcode, unmasked (server to client) */
        h = 0;
        if (op == 0x9)
            hdr[h++] = 0x8A; /* pong */
        else
            hdr[h++] = (fin ? 0x80 : 0) | op;
        if (len < 126) {
            hdr[h++] = len;
        } else {
            hdr[h++] = 126;
            hdr[h++] = len >> 8;
            hdr[h++] = len & 0xff;
        }
        if (op != 0xA) { /* unsolicited pong: ignored */
            if (queue(c, hdr, h) || queue(c, p + hl, len))
                return -1;
        }
        c->in_len -= hl + len;
        memmove(c->in, c->in + hl + len, c->in_len);
        if (op == 0x8) {
            flush_out(c);
            return -1;
        }
    }
}

int main(int argc, char **argv)
{
    struct sockaddr_in a = { .sin_family = AF_INET };
    struct epoll_event ev, evs[512];
    struct rlimit rl;
    int ls, one = 1;

    if (argc != 2) {
        fprintf(stderr, "usage: wsecho PORT\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    a.sin_port = htons(atoi(argv[1]));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 4096)) {
        perror("wsecho: bind/listen");
        return 1;
    }
    ep = epoll_create1(0);
    ev.events = EPOLLIN;
    ev.data.ptr = NULL;
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    printf("wsecho listening on 127.0.0.1:%s\n", argv[1]);
    fflush(stdout);
    for (;;) {
        int n = epoll_wait(ep, evs, 512, -1), i;
        for (i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (!c) {
                int fd;
                while ((fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    c = calloc(1, sizeof *c);
                    if (!c) {
                        close(fd);
                        continue;
                    }
                    c->fd = fd;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    ev.events = EPOLLIN;
                    ev.data.ptr = c;
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
                }
                continue;
            }
            if (evs[i].events & EPOLLOUT) {
                if (flush_out(c)) {
                    drop(c);
                    continue;
                }
            }
            if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                ssize_t r = read(c->fd, c->in + c->in_len, BUF - 1 - c->in_len);
                if (r <= 0) {
                    if (r < 0 && (errno == EAGAIN || errno == EINTR))
                        continue;
                    drop(c);
                    continue;
                }
                c->in_len += r;
                if (!c->upgraded && handshake(c)) {
                    drop(c);
                    continue;
                }
                if (c->upgraded && frames(c)) {
                    drop(c);
                    continue;
                }
                if (c->out_len && flush_out(c)) {
                    drop(c);
                    continue;
                }
            }
        }
    }
}
