/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* request.h — the request path as the connection code sees it: the
 * coroutine that proxies one request, and the NOFLUSH filter it uses.
 *
 * Threads: apx_request_run() inside the request's coroutine, on the thread
 * that owns the request; apx_request_body_left() by that thread after the
 * coroutine; apx_stream_register_filter() at register_hooks.
 */
#ifndef APX_HTTPD_REQUEST_H
#define APX_HTTPD_REQUEST_H

#include "drive.h"

/* The request path, run as a coroutine (rq: the apx_req). */
intptr_t apx_request_run(apx_coro *coro, void *rq);
/* 1 when the request body is not read to its end: the connection must
 * then close rather than have httpd read the rest. */
int apx_request_body_left(const apx_req *rq);
/* The connection filter that streams use (NOFLUSH). */
void apx_stream_register_filter(apr_pool_t *p);

#endif /* APX_HTTPD_REQUEST_H */
