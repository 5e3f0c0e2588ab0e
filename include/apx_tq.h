/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* apx_tq.h — timeout queues: the design card's "death queue" (Lwan renamed
 * its own death queue to timeout queue; so do we).
 *
 * One intrusive doubly-linked FIFO per distinct timeout value: every member
 * of a queue has the same timeout, so appending at the tail keeps the queue
 * sorted by deadline, and append / touch / remove / expire-from-head are all
 * O(1). A set holds the queues of one poller (backend response, keep-alive,
 * linger, header read, pool idle, ...), finds the earliest deadline for the
 * poller's epoll_wait and expires with a budget per pass.
 *
 * Time is always passed in ("now", apr_time_t microseconds): tests drive a
 * fake clock.
 *
 * Calling threads: a queue or set is owned by one thread (the poller); no
 * function here locks.
 */
#ifndef APX_TQ_H
#define APX_TQ_H

#include "apx_common.h"

typedef struct apx_tq_link apx_tq_link;
typedef struct apx_tq apx_tq;
typedef struct apx_tq_set apx_tq_set;

/* Embedded in the record that is timed. Unlinked when prev == NULL. */
struct apx_tq_link {
    apx_tq_link *prev, *next;
    apx_tq *queue;          /* the queue it is on, NULL when unlinked */
    apr_time_t deadline;
};

struct apx_tq {
    apx_tq_link head;       /* sentinel: head.next is the oldest member */
    apr_interval_time_t timeout;
    unsigned count;
    apx_tq *next_in_set;
};

void apx_tq_init(apx_tq *q, apr_interval_time_t timeout);
void apx_tq_link_init(apx_tq_link *l);
int apx_tq_link_is_linked(const apx_tq_link *l);

/* deadline = now + q->timeout; l must be unlinked. */
void apx_tq_append(apx_tq *q, apx_tq_link *l, apr_time_t now);
/* Moves l to the tail with a fresh deadline (activity seen); harmless when
 * unlinked. */
void apx_tq_touch(apx_tq_link *l, apr_time_t now);
/* Unlinks l from whatever queue holds it; harmless when unlinked. */
void apx_tq_remove(apx_tq_link *l);
/* Unlinks and returns the head if its deadline is <= now, else NULL. */
apx_tq_link *apx_tq_pop_expired(apx_tq *q, apr_time_t now);
/* Deadline of the head, or 0 when empty. */
apr_time_t apx_tq_next_deadline(const apx_tq *q);

/* A set of queues, one per distinct timeout, created on demand. */
apr_status_t apx_tq_set_create(apx_tq_set **ps);
void apx_tq_set_destroy(apx_tq_set *s);
/* The queue for `timeout` (created when first asked); NULL only when out of
 * memory. timeout <= 0 means "never expires": returns NULL, and the caller
 * does not link the record at all. */
apx_tq *apx_tq_set_get(apx_tq_set *s, apr_interval_time_t timeout);
/* Earliest deadline over all queues, 0 when nothing is timed. */
apr_time_t apx_tq_set_next_deadline(const apx_tq_set *s);
/* Milliseconds to pass to epoll_wait: -1 when nothing is timed, 0 when
 * something has already expired, else rounded up so we never wake early. */
int apx_tq_set_wait_ms(const apx_tq_set *s, apr_time_t now);
/* Pops up to `budget` expired links (oldest deadlines of each queue first),
 * calling expired(link, baton) for each after unlinking it. Returns how many
 * expired; when that equals budget more may be waiting. */
typedef void (*apx_tq_expire_fn)(apx_tq_link *link, void *baton);
unsigned apx_tq_set_expire(apx_tq_set *s, apr_time_t now, unsigned budget,
                           apx_tq_expire_fn expired, void *baton);
unsigned apx_tq_set_count(const apx_tq_set *s);
/* The set's first queue (NULL when none yet); walk on with q->next_in_set
 * and a queue's members from q->head.next until &q->head. For sweeps such
 * as "dispatch every idle record": read l->next before unlinking l. */
apx_tq *apx_tq_set_first(const apx_tq_set *s);

#endif /* APX_TQ_H */
