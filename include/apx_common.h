/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* apx_common.h — types and helpers every engine component shares.
 *
 * The engine (poller/, include/) uses APR, libc and zlib only: never an httpd
 * header, so the unit tests link it without httpd.
 *
 * Calling threads:
 *   apx_log_set()   once, before any engine thread starts (child_init)
 *   apx_log()       any thread
 */
#ifndef APX_COMMON_H
#define APX_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <apr.h>
#include <apr_errno.h>
#include <apr_time.h>

#define APX_LIKELY(x)   __builtin_expect(!!(x), 1)
#define APX_UNLIKELY(x) __builtin_expect(!!(x), 0)

/* Engine symbols are hidden by -fvisibility=hidden; nothing needs exporting
 * beyond the module record, which lives in mod_asyncproxy.c. */
#define APX_PRIVATE __attribute__((visibility("hidden")))

#define APX_CONTAINER_OF(ptr, type, member) \
    ((type *)(void *)((char *)(ptr) - offsetof(type, member)))

/* Log levels, numerically equal to httpd's APLOG_* so the glue passes them
 * straight through. */
enum {
    APX_LOG_CRIT   = 2,
    APX_LOG_ERR    = 3,
    APX_LOG_WARNING = 4,
    APX_LOG_NOTICE = 5,
    APX_LOG_INFO   = 6,
    APX_LOG_DEBUG  = 7,
    APX_LOG_TRACE1 = 8
};

/* The glue installs a sink that forwards to ap_log_error(); with none
 * installed (unit tests) messages at WARNING or above go to stderr. */
typedef void (*apx_log_fn)(int level, apr_status_t status, const char *msg,
                           void *baton);
void apx_log_set(apx_log_fn fn, void *baton, int max_level);
void apx_log(int level, apr_status_t status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Cheap check before formatting a per-event message. */
int apx_log_is_enabled(int level);

#endif /* APX_COMMON_H */
