/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* outcome.h — how a proxied request ends (outcome.c).
 *
 * Threads: the thread that owns the request.
 */
#ifndef APX_HTTPD_OUTCOME_H
#define APX_HTTPD_OUTCOME_H

#include "drive.h"

/* A request's coroutine was made: counts it in flight and registers the
 * release of the coroutine with r->pool. */
void apx_outcome_track(apx_req *rq);
/* Ends the coroutine and turns the outcome into what httpd needs: the
 * handler's return value (OK, or an error status for ap_die()). Nothing of
 * rq is used afterwards. */
int apx_outcome_end(apx_req *rq);

#endif /* APX_HTTPD_OUTCOME_H */
