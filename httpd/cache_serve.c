/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */


/* cache_serve.c — sending a stored object: its head onto r (Age, the
 * ETag of the copy served, a 304 for a matching conditional) and its body
 * slice by slice, by reference (a bucket that holds the object) or
 * inflated from the gzip copy for a client that does not take gzip.
 *
 * Threads: inside the request's coroutine; a body bucket is destroyed by
 * whichever thread writes the connection (its reference is atomic).
 * Invariant: an object is never freed while a response is written from
 * it: the request holds a reference until r->pool goes, and each body
 * bucket its own.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "httpd.h"
#include "http_config.h"
#include "http_core.h"
#include "http_log.h"
#include "http_protocol.h"
#include "http_request.h"
#include "apr_buckets.h"
#include "apr_lib.h"
#include "apr_strings.h"
#include "apr_uri.h"

#include "cache_int.h"

APLOG_USE_MODULE(asyncproxy);
extern module AP_MODULE_DECLARE_DATA asyncproxy_module;

/* ------------------------------------------------------------------ */
/* a body bucket that holds a reference on what its bytes live in       */

typedef struct hc_bucket {
    apr_bucket_refcount refcount;
    const char *base;
    void (*unref)(void *owner);
    void *owner;
} hc_bucket;

static apr_status_t hcb_read(apr_bucket *b, const char **str,
                             apr_size_t *len, apr_read_type_e block)
{
    hc_bucket *h = b->data;

    *str = h->base + b->start;
    *len = b->length;
    return APR_SUCCESS;
}

static void hcb_destroy(void *data)
{
    hc_bucket *h = data;

    if (apr_bucket_shared_destroy(h)) {
        h->unref(h->owner);
        apr_bucket_free(h);
    }
}

static const apr_bucket_type_t hc_bucket_type = {
    "ASYNCPROXY-CACHE", 5, APR_BUCKET_DATA,
    hcb_destroy,
    hcb_read,
    apr_bucket_setaside_noop,   /* the owner outlives the bucket */
    apr_bucket_shared_split,
    apr_bucket_shared_copy
};

apr_bucket *apx__hc_ref_bucket(const char *base, void (*unref)(void *),
                               void *owner, apr_size_t off, apr_size_t len,
                               apr_bucket_alloc_t *list)
{
    apr_bucket *b = apr_bucket_alloc(sizeof(*b), list);
    hc_bucket *h = apr_bucket_alloc(sizeof(*h), list);

    APR_BUCKET_INIT(b);
    b->free = apr_bucket_free;
    b->list = list;
    h->base = base;
    h->unref = unref;
    h->owner = owner;
    b = apr_bucket_shared_make(b, h, off, len);
    b->type = &hc_bucket_type;
    return b;
}

static void obj_unref(void *o)
{
    apx_cache_unref(apx__hc_store, &((hc_obj *)o)->ce);
}

/* ------------------------------------------------------------------ */
/* serving a stored object                                              */

static apr_status_t inflater_destroy(void *g)
{
    apx_gz_inflater_destroy(g);
    return APR_SUCCESS;
}

/* o is what r is served from: held until r->pool goes. */
void apx__hc_set_serving(apx_hcache *hc, hc_obj *o)
{
    apx__hc_hold_for_request(hc->r, o);
    hc->serving = o;
    hc->serve_off = 0;
}

/* The next slice of the gzip copy, inflated, for a client that does not
 * take gzip. */
static int serve_inflated(apx_hcache *hc, apr_bucket_brigade *bb)
{
    hc_obj *o = hc->serving;
    apr_status_t rv;
    apr_size_t got;
    char *buf;

    if (!hc->inflater) {
        if (apx_gz_inflater_create(&hc->inflater, o->body, o->body_len)
            != APR_SUCCESS)
            return -1;
        /* r->pool goes only after the coroutine, so this covers every
         * exit */
        apr_pool_cleanup_register(hc->r->pool, hc->inflater,
                                  inflater_destroy, apr_pool_cleanup_null);
    }
    buf = malloc(SERVE_SLICE);
    if (!buf)
        return -1;
    rv = apx_gz_inflater_read(hc->inflater, buf, SERVE_SLICE, &got);
    if (rv != APR_SUCCESS && rv != APR_EOF) {
        free(buf);
        ap_log_rerror(APLOG_MARK, APLOG_ERR, rv, hc->r, APXLOGNO(00123)
                      "stored gzip copy of %s does not inflate", hc->url);
        return -1;
    }
    if (got)
        APR_BRIGADE_INSERT_TAIL(bb, apr_bucket_heap_create(buf, got, free,
                                                           bb->bucket_alloc));
    else
        free(buf);
    return rv == APR_EOF ? APX_HCACHE_LAST : APX_HCACHE_MORE;
}

int apx_hcache_serve_body(apx_hcache *hc, apr_bucket_brigade *bb)
{
    hc_obj *o = hc->serving;
    apr_size_t n;

    if (hc->serve_inflate)
        return serve_inflated(hc, bb);
    if (hc->serve_off >= o->body_len)
        return APX_HCACHE_LAST;
    n = o->body_len - hc->serve_off;
    if (n > SERVE_SLICE)
        n = SERVE_SLICE;
    apx_cache_ref(&o->ce);
    APR_BRIGADE_INSERT_TAIL(bb, apx__hc_ref_bucket(o->body, obj_unref, o,
                                                   hc->serve_off, n,
                                                   bb->bucket_alloc));
    hc->serve_off += n;
    return hc->serve_off < o->body_len ? APX_HCACHE_MORE : APX_HCACHE_LAST;
}

/* Puts the object being served on r (whose own head the request path took
 * off); 1 when a body follows. */
int apx_hcache_serve_head(apx_hcache *hc, const char *label)
{
    request_rec *r = hc->r;
    hc_obj *o = hc->serving;
    int gz_out = o->gz && hc->accept_gz;
    const char *etag = gz_out ? o->etag_gz : o->etag;
    const char *ims;
    apr_int64_t age;
    unsigned i;

    apx__hc_set_label(hc, label);
    r->status = o->status;
    r->status_line = o->status_line;
    r->content_type = NULL;
    r->content_encoding = NULL;
    for (i = 0; i < o->nfields; i++)
        apr_table_addn(r->headers_out, o->fields[i].name, o->fields[i].value);
    if (o->ctype)
        ap_set_content_type(r, o->ctype);
    if (etag)
        apr_table_setn(r->headers_out, "ETag", etag);
    if (o->gz || o->vary_ae) {
        const char *vary = apr_table_get(r->headers_out, "Vary");

        if (!vary || !ap_find_token(r->pool, vary, "Accept-Encoding"))
            apr_table_mergen(r->headers_out, "Vary", "Accept-Encoding");
    }
    if (gz_out)
        apr_table_setn(r->headers_out, "Content-Encoding", "gzip");
    age = apx_fresh_age(&o->ft, apr_time_now());
    if (age > 0 || strcmp(label, "MISS"))
        apr_table_setn(r->headers_out, "Age",
                       apr_psprintf(r->pool, "%" APR_INT64_T_FMT, age));

    /* RFC 9110 §13.1.3: an If-Modified-Since that is no HTTP-date is
     * ignored (parsed as 0) */
    ims = apr_table_get(r->headers_in, "If-Modified-Since");
    if (o->status == HTTP_OK
        && apx_fresh_not_modified(apr_table_get(r->headers_in,
                                                "If-None-Match"),
                                  ims ? apx_fresh_parse_date(ims, strlen(ims),
                                                             apr_time_now())
                                      : 0,
                                  etag, o->last_modified)) {
        apr_atomic_inc32(&apx_ch->n.cache_not_modified);
        r->status = HTTP_NOT_MODIFIED;
        r->status_line = NULL;
        return 0;
    }
    if (o->status == HTTP_NO_CONTENT || o->status == HTTP_NOT_MODIFIED)
        return 0;
    if (!o->unsized)
        ap_set_content_length(r, (apr_off_t)(o->gz && !gz_out
                                             ? o->plain_len : o->body_len));
    if (r->header_only)
        return 0;
    hc->serve_inflate = o->gz && !gz_out;
    return 1;
}
