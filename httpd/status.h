/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */
/* status.h — the module's figures on its own status page and in
 * mod_status (status.c).
 *
 * Threads: registration at hook time.
 */
#ifndef APX_HTTPD_STATUS_H
#define APX_HTTPD_STATUS_H

#include "common.h"

/* mod_status' status_hook (optional hook), and the "asyncproxy-status"
 * handler. */
int apx_status_hook(request_rec *r, int flags);
int apx_status_handler(request_rec *r);

#endif /* APX_HTTPD_STATUS_H */
