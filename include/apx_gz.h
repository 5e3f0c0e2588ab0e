/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* apx_gz.h — the one compressed copy of a cached body (after Lwan's
 * precompressed cache entries): compress a whole body once with zlib into
 * a gzip member, and inflate it again, in bounded slices, for clients that
 * do not accept gzip. Plus the small HTTP rules around it: which types are
 * worth compressing, whether a client accepts gzip, the variant's ETag.
 *
 * Calling threads: any; an apx_gz_inflater belongs to one request at a
 * time (it may move between threads with it).
 */
#ifndef APX_GZ_H
#define APX_GZ_H

#include "apx_common.h"

/* 1 for media types worth compressing: text/ (any subtype),
 * application/json, application/javascript, application/xml,
 * application/x-javascript, application/ld+json, image/svg+xml, any
 * "+json"/"+xml" suffix, application/wasm (parameters after ';' ignored,
 * case-insensitive).
 * 0 for everything else, and for NULL. */
int apx_gz_type_is_compressible(const char *content_type);

/* 1 when an Accept-Encoding value accepts gzip: "gzip" or "x-gzip" with
 * q > 0, or "*" with q > 0 when gzip is not listed; q=0 refuses; NULL or
 * empty accepts nothing (identity only). Malformed members are skipped. */
int apx_gz_accepts(const char *accept_encoding);

/* Compresses in[0..len) into one gzip member (RFC 1952; mtime 0, OS 255)
 * at `level` (1..9). On APR_SUCCESS *out is malloc()ed (the caller free()s
 * it) and holds *outlen bytes. APR_EGENERAL when the result would not be
 * smaller than len - len/16 (not worth it: nothing is returned), APR_ENOMEM
 * when memory or zlib fails. */
apr_status_t apx_gz_compress(const void *in, size_t len, int level,
                             void **out, size_t *outlen);

/* Inflates a gzip member held in memory, a slice at a time. */
typedef struct apx_gz_inflater apx_gz_inflater;

/* *pg is malloc()ed; the input must stay valid until destroy. */
apr_status_t apx_gz_inflater_create(apx_gz_inflater **pg, const void *in,
                                    size_t len);
/* Writes up to cap bytes of the decompressed body to buf, *got of them.
 * APR_SUCCESS: more may follow; APR_EOF: the body ended (*got may be > 0);
 * APR_EGENERAL: corrupt data (never expected for our own copies). */
apr_status_t apx_gz_inflater_read(apx_gz_inflater *g, void *buf, size_t cap,
                                  size_t *got);
void apx_gz_inflater_destroy(apx_gz_inflater *g);

/* The ETag of the gzip variant of an entity with ETag `etag`: the same
 * tag with "-gzip" inserted before the closing quote ("abc" -> "abc-gzip",
 * W/"abc" -> W/"abc-gzip"), as mod_deflate does, so the two variants
 * never share a strong validator. Writes into buf (cap bytes, NUL
 * terminated); returns the length, or (size_t)-1 when etag is not a
 * quoted entity-tag or buf is too small. */
size_t apx_gz_etag(const char *etag, char *buf, size_t cap);

#endif /* APX_GZ_H */
