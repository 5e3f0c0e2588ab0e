/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* log.c — the engine's logging sink. The glue installs a callback at
 * child_init before any engine thread exists; afterwards the pointers are
 * read-only, so any thread may log without a lock. */
#include <stdarg.h>
#include <stdio.h>
#include "apx_common.h"

static apx_log_fn log_fn;
static void *log_baton;
static int log_max_level = APX_LOG_WARNING;

void apx_log_set(apx_log_fn fn, void *baton, int max_level)
{
    log_fn = fn;
    log_baton = baton;
    log_max_level = max_level;
}

int apx_log_is_enabled(int level)
{
    return level <= log_max_level;
}

void apx_log(int level, apr_status_t status, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;

    if (level > log_max_level)
        return;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (log_fn)
        log_fn(level, status, buf, log_baton);
    else
        fprintf(stderr, "apx[%d]: %s (status %d)\n", level, buf, status);
}
