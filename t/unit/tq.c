/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* t/unit/tq.c — timeout queues, driven by a fake clock (no sleeps). */
#include <limits.h>
#include <stdlib.h>
#include "tap.h"
#include "../../poller/tq.c"

typedef struct item {
    int id;
    apx_tq_link link;
} item;

#define ITEM(l) APX_CONTAINER_OF((l), item, link)

typedef struct collect {
    int ids[64];
    int n;
} collect;

static void on_expired(apx_tq_link *l, void *baton)
{
    collect *c = baton;

    ok(!apx_tq_link_is_linked(l), "expired link %d is unlinked before the callback",
       ITEM(l)->id);
    if (c->n < 64)
        c->ids[c->n] = ITEM(l)->id;
    c->n++;
}

/* Pops everything due in q at `now`, into ids. */
static int drain(apx_tq *q, apr_time_t now, int *ids, int max)
{
    apx_tq_link *l;
    int n = 0;

    while ((l = apx_tq_pop_expired(q, now)) != NULL) {
        if (n < max)
            ids[n] = ITEM(l)->id;
        n++;
    }
    return n;
}

static void test_order(void)
{
    apx_tq q;
    item it[4];
    int ids[8], i, n;

    apx_tq_init(&q, 100);
    for (i = 0; i < 4; i++) {
        it[i].id = i;
        apx_tq_link_init(&it[i].link);
        ok(!apx_tq_link_is_linked(&it[i].link), "fresh link %d unlinked", i);
        apx_tq_append(&q, &it[i].link, 1000 + i * 10);
    }
    is_int(q.count, 4, "four members");
    is_int(apx_tq_next_deadline(&q), 1100, "head deadline = append time + timeout");
    ok(apx_tq_pop_expired(&q, 1099) == NULL, "nothing expired 1 us before the head deadline");
    n = drain(&q, 1120, ids, 8);
    is_int(n, 3, "three due at 1120 (deadlines 1100, 1110, 1120)");
    ok(ids[0] == 0 && ids[1] == 1 && ids[2] == 2, "expired in append (FIFO) order");
    is_int(q.count, 1, "one left");
    is_int(apx_tq_next_deadline(&q), 1130, "the last member is now the head");
    n = drain(&q, 5000, ids, 8);
    is_int(n, 1, "last one expires later");
    is_int(apx_tq_next_deadline(&q), 0, "empty queue: next deadline 0");
    ok(apx_tq_pop_expired(&q, 1000000) == NULL, "empty queue pops nothing");
}

static void test_touch(void)
{
    apx_tq q;
    item it[3];
    int ids[8], i, n;

    apx_tq_init(&q, 50);
    for (i = 0; i < 3; i++) {
        it[i].id = i;
        apx_tq_link_init(&it[i].link);
        apx_tq_append(&q, &it[i].link, 0);
    }
    apx_tq_touch(&it[0].link, 20);     /* 0 moves behind 1 and 2 */
    is_int(it[0].link.deadline, 70, "touch gives a fresh deadline");
    is_int(q.count, 3, "touch keeps the count");
    ok(q.head.prev == &it[0].link, "touched link is the tail");
    n = drain(&q, 50, ids, 8);
    ok(n == 2 && ids[0] == 1 && ids[1] == 2, "untouched ones expire at the old deadline");
    ok(apx_tq_link_is_linked(&it[0].link), "touched one still waits");
    n = drain(&q, 70, ids, 8);
    ok(n == 1 && ids[0] == 0, "touched one expires at its new deadline");

    apx_tq_touch(&it[0].link, 100);    /* unlinked: nothing happens */
    ok(!apx_tq_link_is_linked(&it[0].link), "touching an unlinked link leaves it unlinked");
    is_int(q.count, 0, "and the queue empty");
}

static void test_remove(void)
{
    apx_tq q;
    item it[5];
    int ids[8], i, n;

    apx_tq_init(&q, 10);
    for (i = 0; i < 5; i++) {
        it[i].id = i;
        apx_tq_link_init(&it[i].link);
        apx_tq_append(&q, &it[i].link, i);
    }
    apx_tq_remove(&it[2].link);        /* middle */
    ok(!apx_tq_link_is_linked(&it[2].link) && it[2].link.queue == NULL,
       "removed middle is unlinked");
    apx_tq_remove(&it[0].link);        /* head */
    is_int(apx_tq_next_deadline(&q), 11, "removing the head exposes the next deadline");
    apx_tq_remove(&it[4].link);        /* tail */
    ok(q.head.prev == &it[3].link, "removing the tail makes the previous one the tail");
    apx_tq_remove(&it[4].link);        /* twice: harmless */
    is_int(q.count, 2, "two left");
    n = drain(&q, 1000, ids, 8);
    ok(n == 2 && ids[0] == 1 && ids[1] == 3, "only the survivors expire, in order");
    ok(q.head.next == &q.head && q.head.prev == &q.head, "sentinel points at itself when empty");

    /* the only member removed */
    apx_tq_append(&q, &it[0].link, 0);
    apx_tq_remove(&it[0].link);
    ok(q.head.next == &q.head && q.count == 0, "removing the only member empties the queue");
    /* re-append after remove works */
    apx_tq_append(&q, &it[0].link, 5);
    is_int(apx_tq_next_deadline(&q), 15, "re-appended after remove");
    apx_tq_remove(&it[0].link);
}

static void test_set(void)
{
    apx_tq_set *s;
    apx_tq *a, *b, *c;
    item it[6];
    collect col;
    unsigned n;
    int i;

    ok(apx_tq_set_create(&s) == APR_SUCCESS, "set created");
    is_int(apx_tq_set_wait_ms(s, 0), -1, "empty set: wait forever (-1)");
    is_int(apx_tq_set_next_deadline(s), 0, "empty set: no deadline");
    ok(apx_tq_set_get(s, 0) == NULL, "timeout 0 gives no queue");
    ok(apx_tq_set_get(s, -5) == NULL, "negative timeout gives no queue");
    a = apx_tq_set_get(s, 1000);
    b = apx_tq_set_get(s, 300);
    c = apx_tq_set_get(s, 1000);
    ok(a && b && a != b, "two distinct timeouts, two queues");
    ok(a == c, "same timeout, same queue");
    ok(apx_tq_set_first(s) == a && a->next_in_set == b && b->next_in_set == NULL,
       "set walk sees both queues");

    for (i = 0; i < 6; i++) {
        it[i].id = i;
        apx_tq_link_init(&it[i].link);
    }
    /* a (1000 us): 0 @0 -> 1000, 1 @100 -> 1100, 2 @900 -> 1900
     * b (300 us):  3 @500 -> 800, 4 @750 -> 1050, 5 @1000 -> 1300 */
    apx_tq_append(a, &it[0].link, 0);
    apx_tq_append(a, &it[1].link, 100);
    apx_tq_append(a, &it[2].link, 900);
    apx_tq_append(b, &it[3].link, 500);
    apx_tq_append(b, &it[4].link, 750);
    apx_tq_append(b, &it[5].link, 1000);
    is_int(apx_tq_set_count(s), 6, "set counts all members");
    is_int(apx_tq_set_next_deadline(s), 800, "earliest deadline over both queues");

    /* wait_ms edge cases */
    is_int(apx_tq_set_wait_ms(s, 800), 0, "deadline reached: 0 ms");
    is_int(apx_tq_set_wait_ms(s, 900), 0, "deadline passed: 0 ms");
    is_int(apx_tq_set_wait_ms(s, 799), 1, "1 us left rounds up to 1 ms");
    is_int(apx_tq_set_wait_ms(s, 0), 1, "800 us left rounds up to 1 ms");
    is_int(apx_tq_set_wait_ms(s, -200), 1, "exactly 1000 us left is 1 ms");
    is_int(apx_tq_set_wait_ms(s, -201), 2, "1001 us left rounds up to 2 ms");

    /* budget: 3 due at 1100 (800, 1000, 1050, 1100 are due: 4) */
    col.n = 0;
    n = apx_tq_set_expire(s, 1100, 3, on_expired, &col);
    is_int(n, 3, "budget 3 stops at 3");
    ok(col.ids[0] == 3 && col.ids[1] == 0 && col.ids[2] == 4,
       "oldest deadline first across queues (800, 1000, 1050)");
    is_int(apx_tq_set_wait_ms(s, 1100), 0, "one more is due: wait 0");
    col.n = 0;
    n = apx_tq_set_expire(s, 1100, 3, on_expired, &col);
    ok(n == 1 && col.ids[0] == 1, "next pass takes the remaining due one (1100)");
    col.n = 0;
    n = apx_tq_set_expire(s, 1100, 3, on_expired, &col);
    is_int(n, 0, "nothing due: nothing expires");
    is_int(apx_tq_set_count(s), 2, "two left in the set");
    is_int(apx_tq_set_next_deadline(s), 1300, "next is b's 1300");
    is_int(apx_tq_set_wait_ms(s, 1100), 1, "200 us rounds up to 1 ms");
    col.n = 0;
    n = apx_tq_set_expire(s, 10000, 0, on_expired, &col);
    is_int(n, 0, "budget 0 expires nothing");
    n = apx_tq_set_expire(s, 10000, 100, on_expired, &col);
    ok(n == 2 && col.ids[0] == 5 && col.ids[1] == 2, "rest expire in deadline order");
    is_int(apx_tq_set_wait_ms(s, 10000), -1, "all empty again: -1");

    /* huge timeout clamps instead of overflowing */
    apx_tq_append(apx_tq_set_get(s, (apr_interval_time_t)INT_MAX * 10000),
                  &it[0].link, 0);
    is_int(apx_tq_set_wait_ms(s, 0), INT_MAX, "very far deadline clamps to INT_MAX ms");
    apx_tq_remove(&it[0].link);
    apx_tq_set_destroy(s);
}

/* The callback may re-link the expired member (as a poller re-arming would):
 * expiry must not loop on it nor lose the others. */
typedef struct relink_ctx {
    apx_tq *into;
    apr_time_t now;
    int calls;
} relink_ctx;

static void relink(apx_tq_link *l, void *baton)
{
    relink_ctx *r = baton;

    r->calls++;
    apx_tq_append(r->into, l, r->now);
}

static void test_relink_in_callback(void)
{
    apx_tq_set *s;
    apx_tq *q;
    item it[3];
    relink_ctx r;
    int i;
    unsigned n;

    apx_tq_set_create(&s);
    q = apx_tq_set_get(s, 100);
    for (i = 0; i < 3; i++) {
        apx_tq_link_init(&it[i].link);
        apx_tq_append(q, &it[i].link, 0);
    }
    r.into = q;
    r.now = 200;
    r.calls = 0;
    n = apx_tq_set_expire(s, 200, 100, relink, &r);
    ok(n == 3 && r.calls == 3, "each due member expires once even when re-linked");
    is_int(apx_tq_set_count(s), 3, "re-linked members are back");
    is_int(apx_tq_set_next_deadline(s), 300, "with fresh deadlines");
    for (i = 0; i < 3; i++)
        apx_tq_remove(&it[i].link);
    apx_tq_set_destroy(s);
}

static void test_many(void)
{
    enum { N = 10000 };
    apx_tq q;
    item *it = calloc(N, sizeof(*it));
    apx_tq_link *l;
    int i, n, in_order = 1, last = -1;

    apx_tq_init(&q, 1000);
    for (i = 0; i < N; i++) {
        it[i].id = i;
        apx_tq_link_init(&it[i].link);
        apx_tq_append(&q, &it[i].link, i);
    }
    is_int(q.count, N, "10000 linked");
    /* remove every third, touch every fifth (at a later time) */
    for (i = 0; i < N; i += 3)
        apx_tq_remove(&it[i].link);
    for (i = 1; i < N; i += 5)
        if (apx_tq_link_is_linked(&it[i].link))
            apx_tq_touch(&it[i].link, N + i);
    n = 0;
    while ((l = apx_tq_pop_expired(&q, N + 1000 - 1)) != NULL) {
        /* everything untouched expires now, in id order */
        if (ITEM(l)->id <= last || ITEM(l)->id % 3 == 0 || ITEM(l)->id % 5 == 1)
            in_order = 0;
        last = ITEM(l)->id;
        n++;
    }
    ok(in_order, "untouched survivors expire in order, no removed or touched one among them");
    {
        int want = 0;
        for (i = 0; i < N; i++)
            if (i % 3 != 0 && i % 5 != 1)
                want++;
        is_int(n, want, "exactly the untouched survivors expired");
    }
    n = 0;
    last = -1;
    while ((l = apx_tq_pop_expired(&q, 3 * N)) != NULL) {
        if (ITEM(l)->id <= last || ITEM(l)->id % 5 != 1 || ITEM(l)->id % 3 == 0)
            in_order = 0;
        last = ITEM(l)->id;
        n++;
    }
    ok(in_order, "touched ones expire afterwards, in touch order");
    {
        int want = 0;
        for (i = 1; i < N; i += 5)
            if (i % 3 != 0)
                want++;
        is_int(n, want, "every touched survivor expired once");
    }
    is_int(q.count, 0, "queue empty at the end");
    free(it);
}

int main(void)
{
    test_order();
    test_touch();
    test_remove();
    test_set();
    test_relink_in_callback();
    test_many();
    return done_testing();
}
