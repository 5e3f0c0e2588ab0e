/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* handler.h — our handlers (handler.c), registered by mod_asyncproxy.c.
 *
 * Threads: see handler.c.
 */
#ifndef APX_HTTPD_HANDLER_H
#define APX_HTTPD_HANDLER_H

#include "common.h"

/* The "asyncproxy" handler (hook FIRST). */
int apx_handler_run(request_rec *r);
/* Runs first of all handlers (REALLY_FIRST): on a module worker, another
 * handler's request of an adopted connection goes to the lane. */
int apx_handler_lane(request_rec *r);

#endif /* APX_HTTPD_HANDLER_H */
