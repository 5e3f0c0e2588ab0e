/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */
/* cache.h — the response cache's configuration, per-child store and
 * figures (cache.c); its request-path part is in request.h.
 *
 * Threads: directives in pconf; child_init once; figures from any thread.
 */
#ifndef APX_HTTPD_CACHE_H
#define APX_HTTPD_CACHE_H

#include "conf.h"

const char *apx_hc_cmd_flag(cmd_parms *cmd, void *dconf, int on);
const char *apx_hc_cmd_take1(cmd_parms *cmd, void *dconf, const char *arg);
void apx_hc_set_init(apx_cache_set *cs);
void apx_hc_set_merge(apx_cache_set *to, const apx_cache_set *base,
                      const apx_cache_set *add);
void apx_hc_child_init(apr_pool_t *pchild, server_rec *s);
/* For the status page: entries, bytes, evictions of this child's cache. */
void apx_hc_figures(apr_uint64_t *entries, apr_uint64_t *bytes,
                    apr_uint64_t *evictions);

#endif /* APX_HTTPD_CACHE_H */
