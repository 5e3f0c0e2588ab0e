/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* shed.h — closing idle adopted connections under pressure (shed.c).
 *
 * Threads: see each function.
 */
#ifndef APX_HTTPD_SHED_H
#define APX_HTTPD_SHED_H

#include "common.h"

/* child_init (main thread), once the engine runs: the scoreboard slot, the
 * fd limit and the MPM's connection limit (ThreadsPerChild `threads`,
 * AsyncRequestWorkerFactor `factor`) the check compares with. */
void apx_shed_child_init(server_rec *s, double factor, unsigned threads);
/* An adopted connection parks idle (between requests or awaiting a head;
 * the caller counted nothing yet): counts it in IdleNow and starts the
 * check if it was off. Any thread. */
void apx_shed_idle_inc(void);

#endif /* APX_HTTPD_SHED_H */
