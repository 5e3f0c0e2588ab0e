/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */
/* map.h — which requests the module proxies, and to which backend target
 * (map.c).
 *
 * Threads: any request thread; the mappings are read-only configuration.
 */
#ifndef APX_HTTPD_MAP_H
#define APX_HTTPD_MAP_H

#include "conf.h"

/* The mapping that proxies r, or NULL (not ours, or excluded with "!"). */
const apx_mapping *apx_map_match(request_rec *r);
/* The backend request target for r under mapping m (in r->pool). */
const char *apx_map_target(request_rec *r, const apx_mapping *m);
/* Hooks (FIRST): translate_name claims the requests a mapping proxies,
 * map_to_storage keeps them off the file system; fixups (MIDDLE) sets
 * the handler. */
int apx_map_translate(request_rec *r);
int apx_map_to_storage(request_rec *r);
int apx_map_fixups(request_rec *r);

#endif /* APX_HTTPD_MAP_H */
