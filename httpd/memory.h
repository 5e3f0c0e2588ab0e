/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* memory.h — what a connection that waits gives back (memory.c).
 *
 * Threads: the thread that owns the connection.
 */
#ifndef APX_HTTPD_MEMORY_H
#define APX_HTTPD_MEMORY_H

#include "common.h"

/* The free blocks c's allocator keeps (what the last request's pool and
 * buckets gave back) go back to the system. hold: the allocator keeps no
 * free blocks from now on either, until apx_mem_release(c) (for a
 * connection whose later frees come rarely: a tunnel); otherwise the MPM's
 * limit (MaxMemFree) applies again at once. */
void apx_mem_trim(conn_rec *c, int hold);
/* Ends a hold of apx_mem_trim(). */
void apx_mem_release(conn_rec *c);

#endif /* APX_HTTPD_MEMORY_H */
