/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* tq.c — timeout queues (the design card's "death queue").
 *
 * Calling threads: one owner per set (the poller); nothing here locks.
 *
 * Invariants:
 *   - a queue is a circular list through its sentinel `head`; an empty queue
 *     has head.next == head.prev == &head;
 *   - every member of a queue has the same timeout and was appended (or
 *     touched) at a "now" no earlier than the member before it, so the queue
 *     is sorted by deadline and only its head can be the next to expire;
 *   - a link is on a queue iff link->prev != NULL (and then link->queue is
 *     that queue).
 * Time only comes in as a parameter: nothing here reads a clock.
 */
#include <limits.h>
#include <stdlib.h>
#include "apx_tq.h"

struct apx_tq_set {
    apx_tq *first;          /* queues, in creation order */
    unsigned nqueues;
};

void apx_tq_init(apx_tq *q, apr_interval_time_t timeout)
{
    q->head.prev = q->head.next = &q->head;
    q->head.queue = q;
    q->head.deadline = 0;
    q->timeout = timeout;
    q->count = 0;
    q->next_in_set = NULL;
}

void apx_tq_link_init(apx_tq_link *l)
{
    l->prev = l->next = NULL;
    l->queue = NULL;
    l->deadline = 0;
}

int apx_tq_link_is_linked(const apx_tq_link *l)
{
    return l->prev != NULL;
}

static void link_tail(apx_tq *q, apx_tq_link *l)
{
    l->prev = q->head.prev;
    l->next = &q->head;
    q->head.prev->next = l;
    q->head.prev = l;
    l->queue = q;
    q->count++;
}

static void unlink_link(apx_tq_link *l)
{
    l->prev->next = l->next;
    l->next->prev = l->prev;
    l->queue->count--;
    l->prev = l->next = NULL;
    l->queue = NULL;
}

void apx_tq_append(apx_tq *q, apx_tq_link *l, apr_time_t now)
{
    l->deadline = now + q->timeout;
    link_tail(q, l);
}

void apx_tq_touch(apx_tq_link *l, apr_time_t now)
{
    apx_tq *q = l->queue;

    if (!q)
        return;
    unlink_link(l);
    apx_tq_append(q, l, now);
}

void apx_tq_remove(apx_tq_link *l)
{
    if (l->prev)
        unlink_link(l);
}

apx_tq_link *apx_tq_pop_expired(apx_tq *q, apr_time_t now)
{
    apx_tq_link *l = q->head.next;

    if (l == &q->head || l->deadline > now)
        return NULL;
    unlink_link(l);
    return l;
}

apr_time_t apx_tq_next_deadline(const apx_tq *q)
{
    return q->head.next == &q->head ? 0 : q->head.next->deadline;
}

apr_status_t apx_tq_set_create(apx_tq_set **ps)
{
    apx_tq_set *s = calloc(1, sizeof(*s));

    if (!s)
        return APR_ENOMEM;
    *ps = s;
    return APR_SUCCESS;
}

/* Members still linked are left as they are (their links then point at freed
 * memory): the owner empties the set first when it cares. */
void apx_tq_set_destroy(apx_tq_set *s)
{
    apx_tq *q, *next;

    if (!s)
        return;
    for (q = s->first; q; q = next) {
        next = q->next_in_set;
        free(q);
    }
    free(s);
}

/* A linear search: a set holds a handful of distinct timeouts (one per
 * directive), and the poller caches nothing across calls. */
apx_tq *apx_tq_set_get(apx_tq_set *s, apr_interval_time_t timeout)
{
    apx_tq *q, **tail = &s->first;

    if (timeout <= 0)
        return NULL;
    for (q = s->first; q; q = q->next_in_set) {
        if (q->timeout == timeout)
            return q;
        tail = &q->next_in_set;
    }
    q = malloc(sizeof(*q));
    if (!q)
        return NULL;
    apx_tq_init(q, timeout);
    *tail = q;
    s->nqueues++;
    return q;
}

apx_tq *apx_tq_set_first(const apx_tq_set *s)
{
    return s->first;
}

apr_time_t apx_tq_set_next_deadline(const apx_tq_set *s)
{
    apr_time_t best = 0, d;
    const apx_tq *q;

    for (q = s->first; q; q = q->next_in_set) {
        d = apx_tq_next_deadline(q);
        if (d && (!best || d < best))
            best = d;
    }
    return best;
}

int apx_tq_set_wait_ms(const apx_tq_set *s, apr_time_t now)
{
    apr_time_t d = apx_tq_set_next_deadline(s);
    apr_interval_time_t left;

    if (!d)
        return -1;
    if (d <= now)
        return 0;
    left = d - now;
    /* Round up: epoll_wait's unit is the millisecond, and waking before the
     * deadline would find nothing expired and spin on a 0 ms wait. */
    if (left > (apr_interval_time_t)INT_MAX * 1000 - 999)
        return INT_MAX;
    return (int)((left + 999) / 1000);
}

/* The head with the smallest deadline that is due, over all queues. */
static apx_tq *oldest_due(const apx_tq_set *s, apr_time_t now)
{
    apx_tq *q, *best = NULL;
    apr_time_t d;

    for (q = s->first; q; q = q->next_in_set) {
        d = apx_tq_next_deadline(q);
        if (d && d <= now && (!best || d < best->head.next->deadline))
            best = q;
    }
    return best;
}

unsigned apx_tq_set_expire(apx_tq_set *s, apr_time_t now, unsigned budget,
                           apx_tq_expire_fn expired, void *baton)
{
    unsigned n = 0;
    apx_tq *q;
    apx_tq_link *l;

    /* The queues are searched again after every callback: it may link or
     * unlink members (even of another queue). */
    while (n < budget && (q = oldest_due(s, now)) != NULL) {
        l = q->head.next;
        unlink_link(l);
        n++;
        expired(l, baton);
    }
    return n;
}

unsigned apx_tq_set_count(const apx_tq_set *s)
{
    unsigned n = 0;
    const apx_tq *q;

    for (q = s->first; q; q = q->next_in_set)
        n += q->count;
    return n;
}
