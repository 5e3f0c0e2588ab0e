/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* compat.h — names that changed across httpd 2.4 releases,
 * chosen by module magic number so that the module builds on 2.4.52
 * (Ubuntu 22.04) through current 2.4.x.
 *
 * The glue uses APX_CS_* where httpd's name is not in every supported
 * release; `make compat-check` compiles the glue against the 2.4.52 view
 * (t/compat/httpd-2.4.52.h) and fails on any unguarded newer name.
 *
 * Threads: none (definitions only).
 */
#ifndef MOD_ASYNCPROXY_COMPAT_H
#define MOD_ASYNCPROXY_COMPAT_H

#include "ap_mmn.h"
#include "httpd.h"

/* 20120211.135 (2.4.63; the 2.4.x branch notes it as 2.4.59-dev) renamed
 * CONN_STATE_CHECK_REQUEST_LINE_READABLE to CONN_STATE_KEEPALIVE and
 * CONN_STATE_READ_REQUEST_LINE to CONN_STATE_PROCESSING, keeping the old
 * names as aliases of the same values; older headers have only the old
 * names. */
#if AP_MODULE_MAGIC_AT_LEAST(20120211, 135)
#define APX_CS_KEEPALIVE    CONN_STATE_KEEPALIVE
#define APX_CS_PROCESSING   CONN_STATE_PROCESSING
#else
#define APX_CS_KEEPALIVE    CONN_STATE_CHECK_REQUEST_LINE_READABLE
#define APX_CS_PROCESSING   CONN_STATE_READ_REQUEST_LINE
#endif

#endif /* MOD_ASYNCPROXY_COMPAT_H */
