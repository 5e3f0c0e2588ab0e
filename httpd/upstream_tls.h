/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* upstream_tls.h — TLS to backends (https:// origins): the settings of an
 * origin (tlsca=, tlsname=, tlsverify=), its client SSL_CTX, the last TLS
 * session per child, and the non-blocking steps (handshake, read, write)
 * that backend.c maps onto its waits (upstream_tls.c). No function here
 * waits: a step that cannot go on says which readiness it needs.
 *
 * Threads:
 *   apx_tls_option(), apx_tls_origin_create()  configuration (parent)
 *   apx_tls_origin_child_init()                child_init
 *   everything else                            any request thread, one
 *       thread per SSL object at a time (a parked connection changes
 *       owner with its request, an idle one lives in a pool ring)
 */
#ifndef APX_HTTPD_UPSTREAM_TLS_H
#define APX_HTTPD_UPSTREAM_TLS_H

#include <sys/types.h>

#include "common.h"

struct ssl_st;                      /* OpenSSL's SSL */

/* The TLS options of a mapping or a member; part of its origin's key. */
typedef struct apx_tls_conf {
    const char *ca_file;            /* tlsca=: trust only these CAs; NULL:
                                     * the system store */
    const char *name;               /* tlsname=: expected name and SNI;
                                     * NULL: the URL's host */
    int verify;                     /* tlsverify=on|off; -1: unset (on) */
} apx_tls_conf;

typedef struct apx_tls_origin apx_tls_origin;

/* Configuration time. A key among tlsca, tlsname, tlsverify: parses val
 * into tc and returns 1 (*err set when val is bad); else returns 0. */
int apx_tls_option(cmd_parms *cmd, apx_tls_conf *tc, const char *key,
                   const char *val, const char **err);
/* 1 when a and b would make the same origin. */
int apx_tls_conf_equal(const apx_tls_conf *a, const apx_tls_conf *b);
/* Configuration time: the client context of an https:// origin whose URL
 * host is `host`, with tc's settings (CA file read now: an unreadable one
 * fails the configuration). Freed with pconf. Returns an error message or
 * NULL. */
const char *apx_tls_origin_create(apr_pool_t *pconf, const apx_tls_conf *tc,
                                  const char *host, apx_tls_origin **pto);
/* child_init: the lock of the origin's session slot. */
void apx_tls_origin_child_init(apx_tls_origin *to, apr_pool_t *pchild);

/* A client SSL object on the connected socket fd: SNI, the name checked,
 * this child's last session of the origin offered. NULL: no memory. */
struct ssl_st *apx_tls_new(apx_tls_origin *to, int fd);
/* The steps. Each returns what recv()/send() would: the handshake 0 when
 * done; read/write a byte count > 0, read 0 at the end of the stream
 * (close_notify, or a close without one); -1 when the step cannot go on:
 * then *want is APX_EV_IN or APX_EV_OUT (wait for that, then call again
 * with the same arguments), or 0 on an error (errno set: ECONNRESET for a
 * reset or a close, EPROTO for a TLS failure, whose text
 * apx_tls_failure() gives). */
int apx_tls_handshake(struct ssl_st *ssl, unsigned *want);
ssize_t apx_tls_read(struct ssl_st *ssl, char *buf, size_t len,
                     unsigned *want);
ssize_t apx_tls_write(struct ssl_st *ssl, const char *buf, size_t len,
                      unsigned *want);
/* Bytes waiting in ssl, decrypted or read ahead (readable without a
 * wait: epoll does not see them). */
int apx_tls_pending(struct ssl_st *ssl);
/* After a failed handshake: 1 when the certificate was refused, with
 * OpenSSL's reason in *why; else 0 and the error text in *why (p). Reads
 * and clears this thread's OpenSSL error queue. */
int apx_tls_failure(struct ssl_st *ssl, apr_pool_t *p, const char **why);
/* 1 when the handshake resumed a session. */
int apx_tls_resumed(struct ssl_st *ssl);
/* An idle pooled connection whose socket has bytes: processes the TLS
 * records there (session tickets, a close_notify) without waiting.
 * Returns 1 when the connection is still usable: nothing delivered, the
 * stream open. */
int apx_tls_idle_usable(struct ssl_st *ssl);
/* Frees ssl; with notify, first sends a close_notify if the socket takes
 * it now (an orderly end of a connection that worked). The fd is the
 * caller's to close. */
void apx_tls_close(struct ssl_st *ssl, int notify);

#endif /* APX_HTTPD_UPSTREAM_TLS_H */
