/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* common.h — what every httpd-facing file includes: httpd's base headers,
 * the names newer httpd releases added (compat.h) and the module's log tag.
 *
 * Threads: nothing here has state.
 */
#ifndef APX_HTTPD_COMMON_H
#define APX_HTTPD_COMMON_H

#include "httpd.h"
#include "http_config.h"
#include "http_log.h"
#include "apr_atomic.h"

#include "compat.h"

/* Our own log tags (never httpd's AH numbers): one per call site, never
 * reused; the next free number is kept in README.md. */
#define APXLOGNO(n) "APX" #n ": "

#endif /* APX_HTTPD_COMMON_H */
