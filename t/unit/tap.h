/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* tap.h — a minimal TAP producer for the engine's unit tests (run by prove).
 * Header-only; the counters are file statics because every test is one
 * program. ok() is thread-safe so threaded tests may report from workers. */
#ifndef APX_TAP_H
#define APX_TAP_H

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

static int tap_run, tap_failed;
static pthread_mutex_t tap_mtx = PTHREAD_MUTEX_INITIALIZER;

__attribute__((format(printf, 2, 3), unused))
static int tap_ok(int cond, const char *fmt, ...)
{
    va_list ap;

    pthread_mutex_lock(&tap_mtx);
    tap_run++;
    if (!cond)
        tap_failed++;
    printf("%sok %d - ", cond ? "" : "not ", tap_run);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
    pthread_mutex_unlock(&tap_mtx);
    return cond;
}

#define ok(cond, ...) tap_ok(!!(cond), __VA_ARGS__)
#define is_int(got, want, name)                                              \
    do {                                                                     \
        long long g_ = (long long)(got), w_ = (long long)(want);             \
        if (!tap_ok(g_ == w_, "%s", (name)))                                 \
            printf("#   got %lld, expected %lld\n", g_, w_);                 \
    } while (0)

__attribute__((format(printf, 1, 2), unused))
static void diag(const char *fmt, ...)
{
    va_list ap;

    printf("# ");
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
}

/* Ends the program: prints the plan and exits non-zero on any failure. */
__attribute__((unused))
static int done_testing(void)
{
    printf("1..%d\n", tap_run);
    return tap_failed ? 1 : 0;
}

#endif /* APX_TAP_H */
