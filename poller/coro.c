/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* coro.c — stackful coroutines: the context switch, guarded stacks kept in a
 * pool, and the defer list.
 *
 * Threads: a coroutine runs on whichever thread resumes it. Nothing about the
 * resumer lives in thread-local storage across a switch: the resumer's stack
 * pointer is saved in the coroutine at every resume, and apx_coro_current()
 * is set and restored by the resumer around the switch, on its own thread.
 * The stack pool is shared by all threads and has its own mutex.
 *
 * Memory layout of one coroutine (one mmap per stack):
 *
 *   low                                                         high
 *   [ guard page, PROT_NONE ][ stack, grows down ... ][ struct apx_coro ]
 *
 * The struct sits in the top bytes of the mapping, so a create from the pool
 * costs no malloc, and the page holding it is the page the stack starts on.
 * A warm free stack keeps a `struct free_stack` link in the same place; a
 * cold one (its pages given back with madvise) is listed in an array
 * instead, so nothing faults its pages back in until it is used again.
 *
 * Invariants: a coroutine is running on at most one thread; only a coroutine
 * that is not running is resumed, trimmed or destroyed; defers run exactly
 * once (on return, inside the coroutine; or on destroy, on the destroyer's
 * thread), unless disarmed.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "apx_coro.h"

#if defined(APX_CORO_UCONTEXT) && APX_CORO_UCONTEXT
#define CORO_UCONTEXT 1
#elif defined(__x86_64__) || defined(__aarch64__)
#define CORO_UCONTEXT 0
#else
#define CORO_UCONTEXT 1         /* no assembly switch for this CPU */
#endif

#if CORO_UCONTEXT
#include <ucontext.h>
#endif

/* Sanitizers: GCC defines __SANITIZE_*__, clang answers __has_feature. */
#if defined(__SANITIZE_ADDRESS__)
#define CORO_ASAN 1
#endif
#if defined(__SANITIZE_THREAD__)
#define CORO_TSAN 1
#endif
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#undef CORO_ASAN
#define CORO_ASAN 1
#endif
#if __has_feature(thread_sanitizer)
#undef CORO_TSAN
#define CORO_TSAN 1
#endif
#endif

#ifdef CORO_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif
#ifdef CORO_TSAN
#include <sanitizer/tsan_interface.h>
#endif

#if defined(APX_DEBUG) && defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#define CORO_VALGRIND 1
#endif
#endif

/* Smallest stack a pool hands out: the struct, the entry frames and a few
 * libc calls. Real callers pass far more (httpd's logging alone puts 8 KB
 * buffers on the stack). */
#define CORO_MIN_STACK      (16 * 1024)

/* Stacks kept "cold" beyond the warm free list (see apx_stack_pool_create):
 * their pages are given back with madvise, so they cost no RSS, only two
 * VMAs each (vm.max_map_count is 65530 by default). Measured on the 1 s,
 * 1,000-connection benchmark: with only the warm list, 0.45 of every
 * request's stacks were mmap'd (mmap + mprotect + munmap, each taking the
 * process's mmap lock for writing); with 1,024 cold ones, none. */
#define CORO_DEFAULT_MAX_COLD 1024

/* Defers most coroutines register (a backend connection, a buffer, a timer)
 * fit inline; more spill into a heap array that doubles. */
#define CORO_INLINE_DEFERS  4

struct defer_entry {
    apx_defer_fn fn;            /* NULL: disarmed or fired (a tombstone) */
    void *arg;
};

/* Layout (x86-64/aarch64, assembly switch, no sanitizer): exactly 128 bytes,
 * two cache lines. The first line holds everything a resume/yield pair
 * touches (sp, caller_sp, value, running); the second the inline defers.
 *
 *    0 sp          8 caller_sp    16 value    24 fn    32 data    40 pool
 *   48 defers     56 ndefers/defer_cap (u16 each), finished, running (u8)
 *   64 inline_defers[4]
 */
struct apx_coro {
#if CORO_UCONTEXT
    ucontext_t *caller;         /* the resumer's context, on its stack */
#else
    void *sp;                   /* coroutine's stack pointer while suspended */
    void *caller_sp;            /* resumer's stack pointer while running */
#endif
    intptr_t value;             /* carried across every switch, both ways */
    apx_coro_fn fn;
    void *data;
    apx_stack_pool *pool;
    struct defer_entry *defers; /* inline_defers until it outgrows them */
    uint16_t ndefers;
    uint16_t defer_cap;
    uint8_t finished;
    uint8_t running;
    struct defer_entry inline_defers[CORO_INLINE_DEFERS];
#if CORO_UCONTEXT
    ucontext_t ctx;
#endif
#ifdef CORO_ASAN
    void *asan_fake_stack;      /* the coroutine's, saved while it is out */
    const void *caller_stack;   /* the resumer's stack, as ASan knows it */
    size_t caller_stack_size;
#endif
#ifdef CORO_TSAN
    void *tsan_fiber;
    void *tsan_caller;
#endif
#ifdef CORO_VALGRIND
    unsigned vg_stack_id;
#endif
};

#if !CORO_UCONTEXT && !defined(CORO_ASAN) && !defined(CORO_TSAN) \
    && !defined(CORO_VALGRIND)
_Static_assert(sizeof(struct apx_coro) == 128,
               "struct apx_coro layout comment is stale");
_Static_assert(offsetof(struct apx_coro, running) < 64,
               "switch fields must share the first cache line");
#endif

/* Bytes reserved at the top of each mapping for the struct; a multiple of
 * 64 keeps the struct cache-line aligned and the stack top 16-aligned. */
#define CORO_HDR ((sizeof(struct apx_coro) + 63) & ~(size_t)63)

struct free_stack {
    struct free_stack *next;
};

struct apx_stack_pool {
    pthread_mutex_t lock;
    struct free_stack *free_list;   /* LIFO: the warmest stack first */
    unsigned free_count;
    unsigned in_use;
    unsigned max_free;
    /* Cold stacks: pages given back, so the link cannot live inside them
     * (writing it would fault a page back in); an array holds them. */
    void **cold;                    /* top-struct addresses, LIFO */
    unsigned ncold, cold_cap, max_cold;
    unsigned long maps;             /* stacks ever mapped (tests, bench) */
    unsigned long unmaps;           /* stacks ever unmapped (tests, bench) */
    size_t stack_size;              /* page multiple, excludes the guard */
    size_t page;
};

/* The growth hook is a variable so the unit test can make it fail. */
static void *(*defer_realloc)(void *, size_t) = realloc;

static __thread apx_coro *current_coro;

/* ------------------------------------------------------------------ */
/* The context switch.                                                 */

#if !CORO_UCONTEXT
/* switch_coro_stack(save, load): pushes the callee-saved registers (and on
 * x86-64 the MXCSR and x87 control words, which the ABI also makes
 * callee-saved) on the current stack, stores the stack pointer in *save,
 * loads `load` and pops the same frame from there. Only what the ABI
 * requires a call to preserve is switched: the compiler already treats
 * everything else as clobbered by the call.
 *
 * enter_coro_stub is where a new coroutine's first switch "returns" to: the
 * frame built by init_frame() puts the coroutine in a callee-saved register
 * and coro_main in another, and the stub calls coro_main(coro), which never
 * returns. Both symbols are local to this object (no .globl). */
static void coro_main(apx_coro *coro) __attribute__((noreturn, used));
void switch_coro_stack(void **save, void *load)
    __attribute__((visibility("hidden")));
void enter_coro_stub(void) __attribute__((visibility("hidden")));

#if defined(__x86_64__)
__asm__(
    ".pushsection .text\n"
    ".p2align 4\n"
    ".type switch_coro_stack, @function\n"
    "switch_coro_stack:\n"
    "    pushq %rbp\n"
    "    pushq %rbx\n"
    "    pushq %r12\n"
    "    pushq %r13\n"
    "    pushq %r14\n"
    "    pushq %r15\n"
    "    subq $8, %rsp\n"
    "    stmxcsr (%rsp)\n"
    "    fnstcw 4(%rsp)\n"
    "    movq %rsp, (%rdi)\n"
    "    movq %rsi, %rsp\n"
    "    ldmxcsr (%rsp)\n"
    "    fldcw 4(%rsp)\n"
    "    addq $8, %rsp\n"
    "    popq %r15\n"
    "    popq %r14\n"
    "    popq %r13\n"
    "    popq %r12\n"
    "    popq %rbx\n"
    "    popq %rbp\n"
    "    ret\n"
    ".size switch_coro_stack, .-switch_coro_stack\n"
    ".p2align 4\n"
    ".type enter_coro_stub, @function\n"
    "enter_coro_stub:\n"
    "    .cfi_startproc\n"
    "    .cfi_undefined rip\n"      /* unwinders stop here */
    "    movq %r12, %rdi\n"
    "    callq *%r13\n"
    "    ud2\n"
    "    .cfi_endproc\n"
    ".size enter_coro_stub, .-enter_coro_stub\n"
    ".popsection\n");

/* 8 bytes of control words + 6 registers + the return address. */
#define CORO_FRAME_WORDS 8

static void *init_frame(apx_coro *coro, char *top)
{
    uint64_t *sp = (uint64_t *)(void *)top;

    /* After the final `ret` the stub runs with rsp == top, 16-aligned, so
     * its call enters coro_main with rsp + 8 16-aligned, as the ABI wants. */
    *--sp = (uint64_t)(uintptr_t)enter_coro_stub;   /* ret */
    *--sp = 0;                                      /* rbp: ends frame chain */
    *--sp = 0;                                      /* rbx */
    *--sp = (uint64_t)(uintptr_t)coro;              /* r12 */
    *--sp = (uint64_t)(uintptr_t)coro_main;         /* r13 */
    *--sp = 0;                                      /* r14 */
    *--sp = 0;                                      /* r15 */
    /* MXCSR 0x1f80 (all exceptions masked, round to nearest) and x87 CW
     * 0x037f: the values a new thread starts with. */
    *--sp = (uint64_t)0x1f80 | ((uint64_t)0x037f << 32);
    return sp;
}

#elif defined(__aarch64__)
/* AAPCS64: x19-x28, x29 (fp), x30 (lr) and the low halves of v8-v15 are
 * callee-saved. 160 bytes keep sp 16-aligned. */
__asm__(
    ".pushsection .text\n"
    ".p2align 4\n"
    ".type switch_coro_stack, %function\n"
    "switch_coro_stack:\n"
    "    sub sp, sp, #160\n"
    "    stp x19, x20, [sp, #0]\n"
    "    stp x21, x22, [sp, #16]\n"
    "    stp x23, x24, [sp, #32]\n"
    "    stp x25, x26, [sp, #48]\n"
    "    stp x27, x28, [sp, #64]\n"
    "    stp x29, x30, [sp, #80]\n"
    "    stp d8, d9, [sp, #96]\n"
    "    stp d10, d11, [sp, #112]\n"
    "    stp d12, d13, [sp, #128]\n"
    "    stp d14, d15, [sp, #144]\n"
    "    mov x2, sp\n"
    "    str x2, [x0]\n"
    "    mov sp, x1\n"
    "    ldp x19, x20, [sp, #0]\n"
    "    ldp x21, x22, [sp, #16]\n"
    "    ldp x23, x24, [sp, #32]\n"
    "    ldp x25, x26, [sp, #48]\n"
    "    ldp x27, x28, [sp, #64]\n"
    "    ldp x29, x30, [sp, #80]\n"
    "    ldp d8, d9, [sp, #96]\n"
    "    ldp d10, d11, [sp, #112]\n"
    "    ldp d12, d13, [sp, #128]\n"
    "    ldp d14, d15, [sp, #144]\n"
    "    add sp, sp, #160\n"
    "    ret\n"
    ".size switch_coro_stack, .-switch_coro_stack\n"
    ".p2align 4\n"
    ".type enter_coro_stub, %function\n"
    "enter_coro_stub:\n"
    "    .cfi_startproc\n"
    "    .cfi_undefined x30\n"
    "    mov x0, x19\n"
    "    blr x20\n"
    "    brk #0\n"
    "    .cfi_endproc\n"
    ".size enter_coro_stub, .-enter_coro_stub\n"
    ".popsection\n");

#define CORO_FRAME_WORDS 20

static void *init_frame(apx_coro *coro, char *top)
{
    uint64_t *sp = (uint64_t *)(void *)top - CORO_FRAME_WORDS;

    memset(sp, 0, CORO_FRAME_WORDS * sizeof(*sp));  /* x29 = 0 ends chain */
    sp[0] = (uint64_t)(uintptr_t)coro;              /* x19 */
    sp[1] = (uint64_t)(uintptr_t)coro_main;         /* x20 */
    sp[11] = (uint64_t)(uintptr_t)enter_coro_stub;  /* x30 */
    return sp;
}
#endif /* __aarch64__ */

#else /* CORO_UCONTEXT */

static void coro_main(apx_coro *coro) __attribute__((noreturn));

/* makecontext() passes int arguments only: the pointer travels in halves. */
static void ucontext_entry(unsigned hi, unsigned lo)
{
    coro_main((apx_coro *)(uintptr_t)(((uint64_t)hi << 32) | lo));
}
#endif

static APR_INLINE char *stack_lo(const apx_coro *coro)
{
    /* The struct is at the top of a mapping of page + stack_size bytes. */
    return (char *)coro + CORO_HDR - coro->pool->stack_size;
}

static APR_INLINE size_t stack_bytes(const apx_coro *coro)
{
    return coro->pool->stack_size - CORO_HDR;
}

/* The resumer's half of a switch into the coroutine. */
static APR_INLINE void switch_in(apx_coro *coro)
{
#ifdef CORO_ASAN
    void *fake_stack = NULL;

    __sanitizer_start_switch_fiber(&fake_stack, stack_lo(coro),
                                   stack_bytes(coro));
#endif
#ifdef CORO_TSAN
    coro->tsan_caller = __tsan_get_current_fiber();
    __tsan_switch_to_fiber(coro->tsan_fiber, 0);
#endif
#if CORO_UCONTEXT
    {
        ucontext_t here;

        coro->caller = &here;
        swapcontext(&here, &coro->ctx);
    }
#else
    switch_coro_stack(&coro->caller_sp, coro->sp);
#endif
#ifdef CORO_ASAN
    __sanitizer_finish_switch_fiber(fake_stack, NULL, NULL);
#endif
}

/* The coroutine's half of a switch back to its resumer. `final` when it will
 * never run again (ASan then frees its fake stack). */
static APR_INLINE void switch_out(apx_coro *coro, int final)
{
#ifdef CORO_ASAN
    __sanitizer_start_switch_fiber(final ? NULL : &coro->asan_fake_stack,
                                   coro->caller_stack,
                                   coro->caller_stack_size);
#endif
#ifdef CORO_TSAN
    __tsan_switch_to_fiber(coro->tsan_caller, 0);
#endif
#if CORO_UCONTEXT
    swapcontext(&coro->ctx, coro->caller);
#else
    switch_coro_stack(&coro->sp, coro->caller_sp);
#endif
    /* Resumed, possibly on another thread. */
#ifdef CORO_ASAN
    __sanitizer_finish_switch_fiber(coro->asan_fake_stack,
                                    &coro->caller_stack,
                                    &coro->caller_stack_size);
#endif
    (void)final;
}

static void run_defers(apx_coro *coro)
{
    /* Pop before calling, so a defer may use the defer API itself. */
    while (coro->ndefers) {
        struct defer_entry e = coro->defers[--coro->ndefers];

        if (e.fn)
            e.fn(e.arg);
    }
}

static void coro_main(apx_coro *coro)
{
    intptr_t rv;

#ifdef CORO_ASAN
    __sanitizer_finish_switch_fiber(NULL, &coro->caller_stack,
                                    &coro->caller_stack_size);
#endif
    rv = coro->fn(coro, coro->data);
    /* Defers run here, inside the coroutine, so they may still call
     * apx_coro_current(); the final resume returns after them. */
    run_defers(coro);
    coro->value = rv;
    coro->finished = 1;
    switch_out(coro, 1);
    abort();                    /* a finished coroutine is never resumed */
}

/* ------------------------------------------------------------------ */
/* The stack pool.                                                     */

static void stack_unmap(apx_stack_pool *pool, void *top_struct)
{
    char *base = (char *)top_struct + CORO_HDR - pool->stack_size - pool->page;

    munmap(base, pool->page + pool->stack_size);
}

apr_status_t apx_stack_pool_create(apx_stack_pool **pp, size_t stack_size,
                                   unsigned max_free)
{
    apx_stack_pool *pool;
    long page = sysconf(_SC_PAGESIZE);

    *pp = NULL;
    if (page <= 0)
        page = 4096;
    if (stack_size < CORO_MIN_STACK)
        stack_size = CORO_MIN_STACK;
    stack_size = (stack_size + (size_t)page - 1) & ~((size_t)page - 1);
    if (stack_size < CORO_HDR + 2 * (size_t)page)
        return APR_EINVAL;
    pool = calloc(1, sizeof(*pool));
    if (!pool)
        return APR_ENOMEM;
    if (pthread_mutex_init(&pool->lock, NULL) != 0) {
        free(pool);
        return APR_ENOMEM;
    }
    pool->stack_size = stack_size;
    pool->page = (size_t)page;
    pool->max_free = max_free;
    pool->max_cold = CORO_DEFAULT_MAX_COLD;
    *pp = pool;
    return APR_SUCCESS;
}

void apx_stack_pool_set_max_cold(apx_stack_pool *pool, unsigned max_cold)
{
    void **drop = NULL;
    unsigned n = 0, i;

    pthread_mutex_lock(&pool->lock);
    pool->max_cold = max_cold;
    if (pool->ncold > max_cold) {
        /* the surplus is unmapped outside the lock, from a copy */
        n = pool->ncold - max_cold;
        drop = malloc(n * sizeof(*drop));
        if (drop) {
            memcpy(drop, pool->cold + max_cold, n * sizeof(*drop));
            pool->ncold = max_cold;
            pool->unmaps += n;
        }
        else {
            n = 0;
        }
    }
    pthread_mutex_unlock(&pool->lock);
    for (i = 0; i < n; i++)
        stack_unmap(pool, drop[i]);
    free(drop);
}

void apx_stack_pool_destroy(apx_stack_pool *pool)
{
    struct free_stack *node, *next;

    if (!pool)
        return;
    if (pool->in_use) {
        /* Coroutines still point at the pool: leaking it is the only safe
         * answer to this bug. */
        apx_log(APX_LOG_CRIT, APR_EBUSY, "coro: stack pool destroyed with "
                "%u coroutines in use; leaking it", pool->in_use);
        return;
    }
    for (node = pool->free_list; node; node = next) {
        next = node->next;
        stack_unmap(pool, node);
    }
    while (pool->ncold)
        stack_unmap(pool, pool->cold[--pool->ncold]);
    free(pool->cold);
    pthread_mutex_destroy(&pool->lock);
    free(pool);
}

size_t apx_stack_pool_stack_size(const apx_stack_pool *pool)
{
    return pool->stack_size;
}

void apx_stack_pool_stats(apx_stack_pool *pool, unsigned *in_use,
                          unsigned *free_count)
{
    pthread_mutex_lock(&pool->lock);
    if (in_use)
        *in_use = pool->in_use;
    if (free_count)
        *free_count = pool->free_count;
    pthread_mutex_unlock(&pool->lock);
}

unsigned apx_stack_pool_cold(apx_stack_pool *pool)
{
    unsigned n;

    pthread_mutex_lock(&pool->lock);
    n = pool->ncold;
    pthread_mutex_unlock(&pool->lock);
    return n;
}

/* Returns where the struct goes: the top CORO_HDR bytes of a stack. */
static void *stack_get(apx_stack_pool *pool, apr_status_t *status)
{
    struct free_stack *node;
    char *base;
    size_t len = pool->page + pool->stack_size;

    pthread_mutex_lock(&pool->lock);
    node = pool->free_list;
    if (node) {
        pool->free_list = node->next;
        pool->free_count--;
    }
    else if (pool->ncold) {
        /* no page of it is resident: the caller's first write faults the
         * top page in, as with a fresh mapping, but without the syscalls */
        node = pool->cold[--pool->ncold];
    }
    else {
        pool->maps++;
    }
    pool->in_use++;
    pthread_mutex_unlock(&pool->lock);
    if (node)
        return node;

    /* MAP_STACK is a hint only; the guard is what matters. Two VMAs per
     * stack: vm.max_map_count bounds how many coroutines a process has. */
    base = mmap(NULL, len, PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (base != MAP_FAILED && mprotect(base, pool->page, PROT_NONE) != 0) {
        int err = errno;

        munmap(base, len);
        errno = err;
        base = MAP_FAILED;
    }
    if (base == MAP_FAILED) {
        *status = APR_FROM_OS_ERROR(errno);
        pthread_mutex_lock(&pool->lock);
        pool->in_use--;
        pool->maps--;
        pthread_mutex_unlock(&pool->lock);
        return NULL;
    }
    return base + len - CORO_HDR;
}

/* Makes room for one more cold stack; called with the lock held. The array
 * grows by doubling, so this rarely allocates. */
static int cold_reserve(apx_stack_pool *pool)
{
    unsigned cap;
    void **a;

    if (pool->ncold < pool->cold_cap)
        return 1;
    cap = pool->cold_cap ? pool->cold_cap * 2 : 64;
    if (cap > pool->max_cold)
        cap = pool->max_cold;
    if (cap <= pool->ncold)
        return 0;
    a = realloc(pool->cold, cap * sizeof(*a));
    if (!a)
        return 0;
    pool->cold = a;
    pool->cold_cap = cap;
    return 1;
}

static void stack_put(apx_stack_pool *pool, void *top_struct)
{
    struct free_stack *node = top_struct;
    char *lo;

    pthread_mutex_lock(&pool->lock);
    pool->in_use--;
    if (pool->free_count < pool->max_free) {
        node->next = pool->free_list;
        pool->free_list = node;
        pool->free_count++;
        pthread_mutex_unlock(&pool->lock);
        return;
    }
    if (pool->ncold >= pool->max_cold) {
        /* Over both caps: give the memory back rather than hoard a burst. */
        pool->unmaps++;
        pthread_mutex_unlock(&pool->lock);
        stack_unmap(pool, node);
        return;
    }
    pthread_mutex_unlock(&pool->lock);

    /* Over the warm cap: keep the mapping, not its pages. One madvise
     * instead of munmap now and mmap + mprotect for the next coroutine;
     * it takes the mmap lock for reading only. Done before the stack is
     * published, so no other thread uses it meanwhile. */
    lo = (char *)node + CORO_HDR - pool->stack_size;
    madvise(lo, pool->stack_size, MADV_DONTNEED);

    pthread_mutex_lock(&pool->lock);
    if (pool->ncold < pool->max_cold && cold_reserve(pool)) {
        pool->cold[pool->ncold++] = node;
        node = NULL;
    }
    else {
        pool->unmaps++;
    }
    pthread_mutex_unlock(&pool->lock);
    if (node)
        stack_unmap(pool, node);
}

/* ------------------------------------------------------------------ */
/* Coroutines.                                                         */

#if CORO_UCONTEXT
/* Apart from apx_coro_create() so getcontext(), which "returns twice" for
 * the compiler, clobbers no variable of the caller. */
static __attribute__((noinline)) apr_status_t init_ucontext(apx_coro *coro)
{
    if (getcontext(&coro->ctx) != 0)
        return APR_FROM_OS_ERROR(errno);
    coro->ctx.uc_link = NULL;
    coro->ctx.uc_stack.ss_sp = stack_lo(coro);
    coro->ctx.uc_stack.ss_size = stack_bytes(coro);
    makecontext(&coro->ctx, (void (*)(void))ucontext_entry, 2,
                (unsigned)((uint64_t)(uintptr_t)coro >> 32),
                (unsigned)(uintptr_t)coro);
    return APR_SUCCESS;
}
#endif

apr_status_t apx_coro_create(apx_coro **pcoro, apx_stack_pool *pool,
                             apx_coro_fn fn, void *data)
{
    apx_coro *coro;
    apr_status_t status = APR_ENOMEM;

    *pcoro = NULL;
    coro = stack_get(pool, &status);
    if (!coro)
        return status;
    memset(coro, 0, sizeof(*coro));
    coro->fn = fn;
    coro->data = data;
    coro->pool = pool;
    coro->defers = coro->inline_defers;
    coro->defer_cap = CORO_INLINE_DEFERS;
#if CORO_UCONTEXT
    status = init_ucontext(coro);
    if (status != APR_SUCCESS) {
        stack_put(pool, coro);
        return status;
    }
#else
    coro->sp = init_frame(coro, (char *)coro);
#endif
#ifdef CORO_TSAN
    coro->tsan_fiber = __tsan_create_fiber(0);
#endif
#ifdef CORO_VALGRIND
    coro->vg_stack_id = VALGRIND_STACK_REGISTER(stack_lo(coro), (char *)coro);
#endif
    *pcoro = coro;
    return APR_SUCCESS;
}

intptr_t apx_coro_resume_value(apx_coro *coro, intptr_t value)
{
    apx_coro *prev;

    if (APX_UNLIKELY(coro->finished))
        return coro->value;
    /* current_coro's address is computed and used on this thread only: the
     * resumer's stack never migrates. */
    prev = current_coro;
    current_coro = coro;
    coro->value = value;
    coro->running = 1;
    switch_in(coro);
    coro->running = 0;
    current_coro = prev;
    return coro->value;
}

intptr_t apx_coro_resume(apx_coro *coro)
{
    return apx_coro_resume_value(coro, 0);
}

intptr_t apx_coro_yield(apx_coro *coro, intptr_t value)
{
    coro->value = value;
    switch_out(coro, 0);
    return coro->value;
}

int apx_coro_is_finished(const apx_coro *coro)
{
    return coro->finished;
}

/* noinline: inlined into a coroutine body, the thread-pointer-relative
 * address could be computed once and reused after a yield that moved the
 * coroutine to another thread. */
__attribute__((noinline))
apx_coro *apx_coro_current(void)
{
    return current_coro;
}

void *apx_coro_data(const apx_coro *coro)
{
    return coro->data;
}

/* Handles are index + 1, not pointers: the array moves when it grows. */
static APR_INLINE apx_defer *defer_handle(unsigned idx)
{
    return (apx_defer *)(uintptr_t)(idx + 1);
}

static APR_INLINE int defer_index(const apx_coro *coro, const apx_defer *d,
                                  unsigned *idx)
{
    uintptr_t h = (uintptr_t)d;

    if (h == 0 || h > coro->ndefers)
        return 0;
    *idx = (unsigned)(h - 1);
    return 1;
}

static int defers_grow(apx_coro *coro)
{
    unsigned cap = coro->defer_cap * 2u;
    struct defer_entry *d;

    if (cap > UINT16_MAX)
        return 0;
    d = defer_realloc(coro->defers == coro->inline_defers ? NULL
                      : coro->defers, cap * sizeof(*d));
    if (!d)
        return 0;
    if (coro->defers == coro->inline_defers)
        memcpy(d, coro->inline_defers, sizeof(coro->inline_defers));
    coro->defers = d;
    coro->defer_cap = (uint16_t)cap;
    return 1;
}

apx_defer *apx_coro_defer(apx_coro *coro, apx_defer_fn fn, void *arg)
{
    unsigned idx;

    if (APX_UNLIKELY(coro->ndefers == coro->defer_cap)
        && !defers_grow(coro)) {
        fn(arg);
        return NULL;
    }
    idx = coro->ndefers++;
    coro->defers[idx].fn = fn;
    coro->defers[idx].arg = arg;
    return defer_handle(idx);
}

/* A disarmed or fired entry becomes a tombstone; tombstones on top are
 * dropped, so the usual register/release-in-LIFO-order pattern of a
 * long-lived coroutine (one defer per request on a kept-alive connection)
 * does not grow the list. */
static void defer_remove(apx_coro *coro, unsigned idx)
{
    coro->defers[idx].fn = NULL;
    while (coro->ndefers && !coro->defers[coro->ndefers - 1].fn)
        coro->ndefers--;
}

void apx_coro_defer_disarm(apx_coro *coro, apx_defer *defer)
{
    unsigned idx;

    if (defer_index(coro, defer, &idx))
        defer_remove(coro, idx);
}

void apx_coro_defer_fire(apx_coro *coro, apx_defer *defer)
{
    unsigned idx;
    struct defer_entry e;

    if (!defer_index(coro, defer, &idx) || !coro->defers[idx].fn)
        return;
    e = coro->defers[idx];
    defer_remove(coro, idx);
    e.fn(e.arg);
}

void apx_coro_destroy(apx_coro *coro)
{
    if (!coro)
        return;
    /* Destroyed while suspended: its frames are abandoned, its defers are
     * the cleanup. Run on this thread, outside the coroutine. */
    run_defers(coro);
    if (coro->defers != coro->inline_defers)
        free(coro->defers);
#ifdef CORO_TSAN
    __tsan_destroy_fiber(coro->tsan_fiber);
#endif
#ifdef CORO_VALGRIND
    VALGRIND_STACK_DEREGISTER(coro->vg_stack_id);
#endif
#ifdef CORO_ASAN
    /* Frames that never returned leave poisoned redzones behind; the next
     * coroutine on this stack must not trip over them. */
    ASAN_UNPOISON_MEMORY_REGION(stack_lo(coro), stack_bytes(coro));
#endif
    stack_put(coro->pool, coro);
}

size_t apx_coro_stack_resident(const apx_coro *coro)
{
    size_t page = coro->pool->page;
    char *lo = stack_lo(coro);
    size_t npages = coro->pool->stack_size / page, done = 0, resident = 0;
    unsigned char vec[256];

    while (done < npages) {
        size_t n = npages - done, i;

        if (n > sizeof(vec))
            n = sizeof(vec);
        if (mincore(lo + done * page, n * page, vec) != 0)
            break;
        for (i = 0; i < n; i++)
            resident += vec[i] & 1;
        done += n;
    }
    return resident * page;
}

/* The lowest live byte of a suspended coroutine's stack. */
static char *saved_sp(const apx_coro *coro)
{
#if !CORO_UCONTEXT
    return coro->sp;
#elif defined(__x86_64__)
    return (char *)(uintptr_t)coro->ctx.uc_mcontext.gregs[REG_RSP];
#elif defined(__aarch64__)
    return (char *)(uintptr_t)coro->ctx.uc_mcontext.sp;
#else
    return NULL;                /* unknown layout: never trim */
#endif
}

void apx_coro_stack_trim(apx_coro *coro, size_t keep)
{
    char *lo = stack_lo(coro), *sp = saved_sp(coro);
    uintptr_t end;

    if (coro->running || !sp || sp < lo || (size_t)(sp - lo) <= keep)
        return;
    /* Everything below the saved stack pointer is dead (no red zone is live
     * across the switch call); keep `keep` bytes of it warm anyway. */
    end = ((uintptr_t)sp - keep) & ~(uintptr_t)(coro->pool->page - 1);
    if (end > (uintptr_t)lo)
        madvise(lo, end - (uintptr_t)lo, MADV_DONTNEED);
}
