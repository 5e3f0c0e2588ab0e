/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* httpd-2.4.52.h — the httpd 2.4.52 view of the installed (newer) httpd
 * headers, force-included (-include) by `make compat-check` before every
 * glue file. It
 *   1. sets the module magic number to 2.4.52's (20120211.121), so every
 *      AP_MODULE_MAGIC_AT_LEAST() guard takes its old-httpd branch;
 *   2. poisons the identifiers that the installed headers declare but
 *      2.4.52's do not, so a use that no guard keeps away fails the build.
 *
 * Where the list comes from: the identifiers of httpd's include/ headers
 * (*.h) at tag 2.4.52 diffed against those of Debian's /usr/include/apache2
 * (2.4.71, 20120211.142), over the 43 headers both have. Of what only the newer headers
 * have, these are the ones a module could use: connection states, MPM
 * queries, hooks, functions, macros. Not listed: new struct fields (such
 * as process_score.wait_io: poisoning a plain word would also hit our own
 * names) and mod_proxy.h's additions (not a core header; we do not use it).
 * Of these, the glue used only CONN_STATE_KEEPALIVE and
 * CONN_STATE_PROCESSING (now APX_CS_*, httpd/compat.h); the rest
 * are here so that a future use fails the same way.
 * Written by us from that diff; no httpd header is copied here.
 */
#ifndef APX_COMPAT_HTTPD_2_4_52_H
#define APX_COMPAT_HTTPD_2_4_52_H

/* ap_mmn.h defines MINOR unconditionally: include it first, then replace
 * both numbers (AP_MODULE_MAGIC_AT_LEAST reads them where it is used). */
#include "ap_mmn.h"
#undef MODULE_MAGIC_NUMBER_MAJOR
#undef MODULE_MAGIC_NUMBER_MINOR
#define MODULE_MAGIC_NUMBER_MAJOR 20120211
#define MODULE_MAGIC_NUMBER_MINOR 121

/* Every header that mentions a name below, read before the poison (a
 * poisoned name may not appear even in a declaration afterwards). */
#include "httpd.h"
#include "http_config.h"
#include "http_connection.h"
#include "http_core.h"
#include "http_log.h"
#include "http_protocol.h"
#include "http_request.h"
#include "ap_expr.h"
#include "ap_listen.h"
#include "ap_mpm.h"
#include "ap_regex.h"
#include "mpm_common.h"
#include "scoreboard.h"
#include "util_script.h"
#include "util_time.h"

/* connection states (20120211.135) */
#pragma GCC poison CONN_STATE_KEEPALIVE CONN_STATE_PROCESSING
#pragma GCC poison CONN_STATE_ASYNC_WAITIO
/* hooks and functions */
#pragma GCC poison ap_get_pollfd_from_conn ap_hook_get_pollfd_from_conn
#pragma GCC poison ap_run_get_pollfd_from_conn
#pragma GCC poison ap_set_content_type_ex ap_set_time_process_request
#pragma GCC poison ap_escape_url ap_filepath_merge ap_stat_check
#pragma GCC poison ap_memeq_timingsafe ap_streq_timingsafe
#pragma GCC poison ap_strneq_timingsafe
#pragma GCC poison ap_thread_create ap_thread_current ap_thread_main_create
#pragma GCC poison ap_thread_current_create ap_thread_current_after_fork
#pragma GCC poison ap_pcre_version_string ap_find_systemd_socket
#pragma GCC poison ap_systemd_listen_fds ap_trust_cgilike_cl
/* macros: GCC will not poison a defined macro, so undefine each first
 * (the installed headers' own macros that use them were expanded already
 * or are not used by us) */
#undef AP_MPMQ_CAN_WAITIO
#undef HTTP_EARLY_HINTS
#undef AP_REQUEST_TRUSTED_CT
#undef AP_REQUEST_IS_TRUSTED_CT
#undef AP_THREAD_LOCAL
#undef AP_HAS_THREAD_LOCAL
#undef AP_IS_SLASH
#undef AP_SLASHES
#undef AP_CTIME_OPTION_MSEC
#undef AP_CTIME_OPTION_GMTOFF
#undef AP_TRUST_CGILIKE_CL_ENVVAR
#undef AP_EXPR_FLAG_RESTRICTED_FILE_FUNC
#pragma GCC poison AP_MPMQ_CAN_WAITIO HTTP_EARLY_HINTS
#pragma GCC poison AP_REQUEST_TRUSTED_CT AP_REQUEST_IS_TRUSTED_CT
#pragma GCC poison AP_THREAD_LOCAL AP_HAS_THREAD_LOCAL
#pragma GCC poison AP_IS_SLASH AP_SLASHES
#pragma GCC poison AP_CTIME_OPTION_MSEC AP_CTIME_OPTION_GMTOFF
#pragma GCC poison AP_TRUST_CGILIKE_CL_ENVVAR
#pragma GCC poison AP_EXPR_FLAG_RESTRICTED_FILE_FUNC

#endif /* APX_COMPAT_HTTPD_2_4_52_H */
