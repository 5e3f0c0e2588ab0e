/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* apx_coro.h — stackful coroutines with a defer list (after Lwan's lwan-coro).
 *
 * One coroutine runs one proxied request. It is written as straight-line code
 * and yields at every would-block point; whichever module worker pops the
 * parked request resumes it, so a coroutine may be resumed on a different
 * thread each time (the caller's context is saved in the coroutine at every
 * resume, never in thread-local storage).
 *
 * Stacks come from mmap with a PROT_NONE guard page below them, so an
 * overflow faults instead of corrupting memory; they are kept in a stack
 * pool's free list for reuse.
 *
 * Calling threads:
 *   apx_stack_pool_*()        any thread (the pool has its own lock)
 *   apx_coro_create()         any thread
 *   apx_coro_resume*()        the thread that currently owns the request;
 *                             never from inside the same coroutine
 *   apx_coro_yield(), apx_coro_defer*(), apx_coro_current()
 *                             inside the coroutine only
 *   apx_coro_destroy()        the owner, while the coroutine is not running
 *
 * Thread-local storage across a yield: a coroutine may come back on another
 * thread, but the compiler may keep a thread-local address computed before
 * apx_coro_yield() (glibc declares __errno_location() and pthread_self()
 * const). Read errno right after the call that set it, before any yield;
 * call apx_coro_current() (never inlined) rather than caching it.
 *
 * Build switches: APX_CORO_UCONTEXT=1 selects the ucontext fallback instead
 * of the assembly switch (x86-64, aarch64). Under ASan the switches carry
 * fiber annotations, under TSan fiber switches, and with APX_DEBUG Valgrind
 * stack registration.
 */
#ifndef APX_CORO_H
#define APX_CORO_H

#include "apx_common.h"

typedef struct apx_coro apx_coro;
typedef struct apx_stack_pool apx_stack_pool;
typedef struct apx_defer apx_defer;

/* The coroutine body. Its return value is what the final apx_coro_resume()
 * returns; apx_coro_is_finished() is then 1. */
typedef intptr_t (*apx_coro_fn)(apx_coro *coro, void *data);
typedef void (*apx_defer_fn)(void *arg);

/* stack_size is rounded up to whole pages (16 KB at least) and excludes the
 * guard page; the coroutine struct lives in its top bytes (no malloc per
 * coroutine).
 * Destroyed coroutines' stacks are kept for reuse: the last max_free ones
 * "warm" (as they are), up to max_cold more (1,024 unless set) "cold" --
 * their pages given back to the kernel (madvise), so they cost no RSS, only
 * their mapping; the rest are unmapped. A cold stack saves the next
 * coroutine an mmap + mprotect, and this one a munmap. */
apr_status_t apx_stack_pool_create(apx_stack_pool **pp, size_t stack_size,
                                   unsigned max_free);
/* Changes the cold cap; surplus cold stacks are unmapped at once. 0 gives
 * the behaviour of a warm list only. */
void apx_stack_pool_set_max_cold(apx_stack_pool *pool, unsigned max_cold);
/* Every coroutine made from the pool must be destroyed first. */
void apx_stack_pool_destroy(apx_stack_pool *pool);
size_t apx_stack_pool_stack_size(const apx_stack_pool *pool);
/* Figures for the status page and the benchmarks. */
void apx_stack_pool_stats(apx_stack_pool *pool, unsigned *in_use,
                          unsigned *free_count);
/* Cold stacks kept (not counted in free_count above). */
unsigned apx_stack_pool_cold(apx_stack_pool *pool);

/* Makes a suspended coroutine; nothing runs until the first resume. */
apr_status_t apx_coro_create(apx_coro **pcoro, apx_stack_pool *pool,
                             apx_coro_fn fn, void *data);

/* Runs the coroutine until it yields or returns. Returns the value passed to
 * apx_coro_yield() or returned by fn. */
intptr_t apx_coro_resume(apx_coro *coro);
/* The same, and apx_coro_yield() returns `value` inside the coroutine. */
intptr_t apx_coro_resume_value(apx_coro *coro, intptr_t value);

/* Inside the coroutine: switch back to whoever resumed it. Returns the value
 * given to apx_coro_resume_value() (0 for apx_coro_resume()). */
intptr_t apx_coro_yield(apx_coro *coro, intptr_t value);

int apx_coro_is_finished(const apx_coro *coro);
/* The coroutine running on this thread, or NULL. */
apx_coro *apx_coro_current(void);
void *apx_coro_data(const apx_coro *coro);

/* Registers fn(arg) to run when the coroutine returns or is destroyed while
 * suspended; defers run in reverse order of registration. Returns a handle
 * for apx_coro_defer_disarm(), or NULL when out of memory (fn is then run
 * at once, so the resource is never leaked). A handle is valid until its
 * defer ran, was disarmed or fired; the first few defers need no malloc. */
apx_defer *apx_coro_defer(apx_coro *coro, apx_defer_fn fn, void *arg);
/* The normal path released the resource itself: the defer will not run. */
void apx_coro_defer_disarm(apx_coro *coro, apx_defer *defer);
/* Runs (and removes) the defer now. */
void apx_coro_defer_fire(apx_coro *coro, apx_defer *defer);

/* Runs pending defers (if the coroutine did not finish) and returns the
 * stack to its pool. */
void apx_coro_destroy(apx_coro *coro);

/* Bytes of the coroutine's stack that are resident (mincore), for the
 * "resident stack per parked request" figure. */
size_t apx_coro_stack_resident(const apx_coro *coro);
/* Gives back to the kernel the stack pages below the current stack pointer
 * of a suspended coroutine (madvise DONTNEED), keeping `keep` bytes. */
void apx_coro_stack_trim(apx_coro *coro, size_t keep);

#endif /* APX_CORO_H */
