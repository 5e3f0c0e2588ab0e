/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */


/* cache_fill.c — the response cache on and after the response head:
 * whether it may be stored (RFC 9111 via poller/fresh.c), the body
 * captured into memory, the stored object built (gzip copy when smaller),
 * a revalidation's 304 merged into the stored head (4.3.4), stale-if-error,
 * and the background refresh's part.
 *
 * Threads: inside the request's coroutine, on the thread that owns the
 * request.
 * Invariant: nothing of an object changes once it is published; a refresh
 * or a 304 publishes a new object.
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
/* fetching into the store                                              */

/* Where apx__hc_decide() reads a response's fields: first value, or all values of
 * a list field joined with ", "; NULL when absent. */
typedef const char *(*field_get_fn)(void *baton, const char *name, int list);

static const char *resp_field(void *baton, const char *name, int list)
{
    const apx_hcache_resp *rs = baton;

    return rs->field(rs->baton, name, list);
}

/* Whether a response with this status and these fields may be stored;
 * fills *t when it may. */
static int decide_fields(apx_hcache *hc, int status, field_get_fn get,
                         void *baton, apr_time_t req_time,
                         apr_time_t resp_time, apx_fresh_times *t)
{
    request_rec *r = hc->r;
    apx_fresh_req rq;
    apx_fresh_resp rs;
    apx_fresh_policy pol;
    const char *v;
    int why, targeted;

    memset(&rq, 0, sizeof(rq));
    memset(&rs, 0, sizeof(rs));
    memset(&pol, 0, sizeof(pol));
    rq.method_get = !r->header_only;
    rq.method_head = r->header_only;
    rq.authorization = apr_table_get(r->headers_in, "Authorization") != NULL;
    apx_cc_init(&rq.cc);
    if ((v = apr_table_get(r->headers_in, "Cache-Control")))
        apx_cc_parse(&rq.cc, v, strlen(v));

    rs.status = status;
    apx_cc_init(&rs.cc);
    /* RFC 9213: a valid CDN-Cache-Control is this cache's policy, and
     * Cache-Control, Expires and Pragma are then not looked at */
    targeted = (v = get(baton, "CDN-Cache-Control", 1))
               && apx_cc_parse_targeted(&rs.cc, v, strlen(v));
    if (!targeted && (v = get(baton, "Cache-Control", 1)))
        apx_cc_parse(&rs.cc, v, strlen(v));
    /* all Expires lines joined: two of them are no HTTP-date, so the
     * response is stale (RFC 9111 §4.2.1) */
    if (!targeted && (v = get(baton, "Expires", 1))) {
        rs.has_expires = 1;
        rs.expires = apx_fresh_parse_date(v, strlen(v), resp_time);
    }
    if ((v = get(baton, "Date", 0)))
        rs.date = apx_fresh_parse_date(v, strlen(v), resp_time);
    if ((v = get(baton, "Last-Modified", 0)))
        rs.last_modified = apx_fresh_parse_date(v, strlen(v), resp_time);
    rs.age = -1;
    if ((v = get(baton, "Age", 1)))
        rs.age = apx_fresh_parse_age(v, strlen(v));
    rs.has_etag = get(baton, "ETag", 0) != NULL;
    rs.set_cookie = get(baton, "Set-Cookie", 0) != NULL;
    /* Vary: *, or a list we cannot make a key of (not field names):
     * every request would be a variant of its own */
    if ((v = get(baton, "Vary", 1))
        && apx_fresh_vary_key(v, NULL, NULL, NULL, NULL, 0) == (size_t)-1)
        rs.vary_star = 1;
    if (!targeted && (v = get(baton, "Pragma", 1))
        && ap_find_token(r->pool, v, "no-cache"))
        rs.pragma_no_cache = 1;
    rs.request_time = req_time;
    rs.response_time = resp_time;
    pol.default_ttl = hc->set.ttl > 0 ? hc->set.ttl : 0;
    pol.keep = KEEP_STALE;
    pol.stale_on_error = hc->set.stale_on_error > 0 ? hc->set.stale_on_error
                                                    : 0;

    why = apx_fresh_storable(&rq, &rs, &pol, t);
    if (why != APX_STORE_OK)
        hc->reason = apx_fresh_reason(why);
    return why == APX_STORE_OK;
}

/* Whether the head resp may be stored; fills *t when it may. */
int apx__hc_decide(apx_hcache *hc, const apx_hcache_resp *resp,
                  apr_time_t req_time, apr_time_t resp_time,
                  apx_fresh_times *t)
{
    if (!decide_fields(hc, resp->status, resp_field, (void *)resp, req_time,
                       resp_time, t))
        return 0;
    if (resp->content_length >= 0
        && (apr_uint64_t)resp->content_length
           > (apr_uint64_t)apx_gconf.cache_max_object) {
        hc->reason = "too-large";
        return 0;
    }
    return 1;
}

enum { CAP_TOO_BIG = 1 };

static int cap_append(apx_hcache *hc, apr_bucket_brigade *bb)
{
    apr_off_t len = 0;
    apr_size_t n;

    apr_brigade_length(bb, 1, &len);
    if (!len)
        return 0;
    if (hc->cap_len + (apr_size_t)len > apx_gconf.cache_max_object)
        return CAP_TOO_BIG;
    if (hc->cap_len + (apr_size_t)len > hc->cap_size) {
        apr_int64_t cl = hc->cap_hint;
        /* a known length is allocated once */
        apr_size_t size = hc->cap_size ? hc->cap_size * 2
                          : cl > 0 ? (apr_size_t)cl : 16 * 1024;
        char *nb;

        while (size < hc->cap_len + (apr_size_t)len)
            size *= 2;
        if (size > apx_gconf.cache_max_object)
            size = apx_gconf.cache_max_object;
        nb = realloc(hc->cap, size);
        if (!nb)
            return CAP_TOO_BIG;
        hc->cap = nb;
        hc->cap_size = size;
    }
    n = (apr_size_t)len;
    apr_brigade_flatten(bb, hc->cap + hc->cap_len, &n);
    hc->cap_len += n;
    apr_brigade_cleanup(bb);
    return 0;
}

static apr_status_t cap_cleanup(void *data)
{
    apx_hcache *hc = data;

    free(hc->cap);
    hc->cap = NULL;
    return APR_SUCCESS;
}

int apx_hcache_capture(apx_hcache *hc, apr_bucket_brigade *bb, int last)
{
    if (cap_append(hc, bb) == CAP_TOO_BIG) {
        /* what was read stays in hc->cap, then bb */
        if (hc->role != ROLE_REFRESH) {
            hc->reason = "too-large";
            apx__hc_mark_pass(hc);
            apx__hc_release_pending(hc, 0, NULL);
            apx__hc_set_label(hc, "BYPASS");
        }
        return APX_HCACHE_TOO_BIG;
    }
    return last ? APX_HCACHE_LAST : APX_HCACHE_MORE;
}

typedef struct field_list {
    apr_array_header_t *a;
    apr_size_t bytes;
} field_list;

static void collect_field(void *baton, const char *name, const char *value)
{
    field_list *fl = baton;
    hc_field *f;

    /* kept apart (the type is set through httpd, the ETag depends on the
     * copy served), or computed on every response (Age). Everything else,
     * Content-Encoding included, is stored exactly as it came. */
    if (!strcasecmp(name, "Content-Type") || !strcasecmp(name, "ETag")
        || !strcasecmp(name, "Age"))
        return;
    f = apr_array_push(fl->a);
    f->name = name;
    f->value = value;
    fl->bytes += strlen(name) + strlen(value) + 2;
}

/* One malloc()ed block holds the object and its strings. */
static char *put_str(char **pp, const char *s)
{
    char *d = *pp;
    apr_size_t n;

    if (!s)
        return NULL;
    n = strlen(s) + 1;
    memcpy(d, s, n);
    *pp += n;
    return d;
}

/* Builds the stored object from the head resp and a body: body (len
 * bytes) is taken over — freed, or, when chunk is set, a part of that
 * fill chunk, which the object then references. head_only: a streamed
 * fill's head object (len: the backend's length, (apr_size_t)-1 when
 * unknown). */
static hc_obj *build_obj(apx_hcache *hc, const apx_hcache_resp *resp,
                         const apx_fresh_times *t, int head_only,
                         char *body, apr_size_t len, hc_chunk *chunk)
{
    request_rec *r = hc->r;
    field_list fl;
    const char *ctype = resp->field(resp->baton, "Content-Type", 0);
    const char *cenc = resp->field(resp->baton, "Content-Encoding", 0);
    const char *etag = resp->field(resp->baton, "ETag", 0);
    const char *lm = resp->field(resp->baton, "Last-Modified", 0);
    const char *status_line;
    char etag_gz[512];
    const char *etg = NULL;
    apr_size_t bytes;
    hc_obj *o;
    char *p;
    unsigned i;
    int compressible;

    fl.a = apr_array_make(r->pool, (int)resp->nfields + 2,
                          sizeof(hc_field));
    fl.bytes = 0;
    resp->each(resp->baton, collect_field, &fl);
    collect_field(&fl, "Via", resp->via);
    status_line = resp->reason_len
                  ? apr_psprintf(r->pool, "%d %.*s", resp->status,
                                 (int)resp->reason_len, resp->reason)
                  : NULL;
    bytes = sizeof(*o) + fl.a->nelts * sizeof(hc_field) + fl.bytes
            + (ctype ? strlen(ctype) + 1 : 0) + (etag ? strlen(etag) + 1 : 0)
            + (status_line ? strlen(status_line) + 1 : 0)
            + sizeof(etag_gz);
    o = calloc(1, bytes);
    if (!o)
        return NULL;
    o->kind = OBJ_READY;
    o->fields = (hc_field *)(o + 1);
    p = (char *)(o->fields + fl.a->nelts);
    for (i = 0; i < (unsigned)fl.a->nelts; i++) {
        hc_field *f = &APR_ARRAY_IDX(fl.a, i, hc_field);

        o->fields[i].name = put_str(&p, f->name);
        o->fields[i].value = put_str(&p, f->value);
    }
    o->nfields = (unsigned)fl.a->nelts;
    o->ctype = put_str(&p, ctype);
    o->etag = put_str(&p, etag);
    o->status_line = put_str(&p, status_line);
    o->status = resp->status;
    o->last_modified = lm ? apx_fresh_parse_date(lm, strlen(lm),
                                                 apr_time_now()) : 0;
    o->ft = *t;
    o->ce.refs = 1;
    compressible = hc->set.gzip && !cenc
                   && apx_gz_type_is_compressible(ctype);
    if (head_only) {
        /* a head to serve while the body streams: identity, as fetched */
        o->unsized = len == (apr_size_t)-1;
        o->body_len = o->plain_len = o->unsized ? 0 : len;
        o->vary_ae = compressible && (o->unsized || len >= GZIP_MIN);
        o->etag_gz = NULL;
        o->ce.size = bytes;
        return o;
    }

    o->body = body;
    o->body_len = o->plain_len = len;
    if (compressible && o->body_len >= GZIP_MIN) {
        void *z;
        size_t zlen;

        if (apx_gz_compress(o->body, o->body_len, GZIP_LEVEL, &z, &zlen)
            == APR_SUCCESS) {
            if (!chunk)
                free(o->body);
            chunk = NULL;
            o->body = z;
            o->body_len = zlen;
            o->gz = 1;
            if (etag && apx_gz_etag(etag, etag_gz, sizeof(etag_gz))
                        != (size_t)-1)
                etg = etag_gz;
        }
    }
    if (chunk) {
        __atomic_add_fetch(&chunk->refs, 1, __ATOMIC_RELAXED);
        o->body_chunk = chunk;
    }
    o->etag_gz = put_str(&p, etg);
    o->ce.size = bytes + o->body_len;
    o->ce.expires = apx_fresh_keep_until(t);
    return o;
}

hc_obj *apx__hc_build_obj(apx_hcache *hc, const apx_hcache_resp *resp,
                          const apx_fresh_times *t, char *body,
                          apr_size_t len, hc_chunk *chunk)
{
    return build_obj(hc, resp, t, 0, body, len, chunk);
}

hc_obj *apx__hc_build_head(apx_hcache *hc, const apx_hcache_resp *resp,
                           const apx_fresh_times *t, apr_int64_t len)
{
    return build_obj(hc, resp, t, 1, NULL,
                     len < 0 ? (apr_size_t)-1 : (apr_size_t)len, NULL);
}

/* A usable stale object when the backend failed (stale-if-error). */
static int stale_usable(apx_hcache *hc)
{
    int st;

    if (!hc->stale)
        return 0;
    st = apx_fresh_state(&hc->stale->ft, apr_time_now());
    return st == APX_STALE_REVALIDATE || st == APX_STALE_IF_ERROR
           || st == APX_FRESH;
}

/* ------------------------------------------------------------------ */
/* revalidation (RFC 9111 section 4.3)                                  */

/* For a revalidation of hc->reval, the cache's conditionals in place of
 * the client's (which serve_head() answers later, from the outcome). Each
 * validator the object has goes: the entity-tag, and the Last-Modified
 * date (4.3.1). */
int apx_hcache_conditionals(apx_hcache *hc, int on)
{
    request_rec *r = hc->r;
    hc_obj *old = hc->reval;

    if (!old)
        return 0;
    if (on) {
        hc->inm = apr_table_get(r->headers_in, "If-None-Match");
        hc->ims = apr_table_get(r->headers_in, "If-Modified-Since");
        apr_table_unset(r->headers_in, "If-None-Match");
        apr_table_unset(r->headers_in, "If-Modified-Since");
        if (old->etag)
            apr_table_setn(r->headers_in, "If-None-Match", old->etag);
        if (old->last_modified) {
            char *d = apr_palloc(r->pool, APR_RFC822_DATE_LEN);

            apr_rfc822_date(d, old->last_modified);
            apr_table_setn(r->headers_in, "If-Modified-Since", d);
        }
        hc->cond = 1;
        return 1;
    }
    hc->cond = 0;
    apr_table_unset(r->headers_in, "If-None-Match");
    apr_table_unset(r->headers_in, "If-Modified-Since");
    if (hc->inm)
        apr_table_setn(r->headers_in, "If-None-Match", hc->inm);
    if (hc->ims)
        apr_table_setn(r->headers_in, "If-Modified-Since", hc->ims);
    return 1;
}

/* Fields a 304 does not replace in the stored response (RFC 9111 3.2):
 * the ones describing the stored body as we keep it (its length, coding,
 * type, the entity-tag our gzip copy's is made from), and those computed
 * on every response. */
static int keeps_stored(const char *name)
{
    static const char *const kept[] = {
        "Content-Length", "Content-Encoding", "Content-Type", "ETag",
        "Content-Range", "Age", "Via", "Transfer-Encoding", NULL
    };
    int i;

    for (i = 0; kept[i]; i++)
        if (!strcasecmp(name, kept[i]))
            return 1;
    return 0;
}

typedef struct merged_head {
    apr_array_header_t *a;          /* hc_field */
    apr_size_t bytes;               /* of the names and values */
    const hc_obj *old;
    apr_pool_t *p;
} merged_head;

static void collect_304(void *baton, const char *name, const char *value)
{
    merged_head *mh = baton;
    hc_field *f;

    if (keeps_stored(name))
        return;
    f = apr_array_push(mh->a);
    f->name = name;
    f->value = value;
}

/* apx__hc_decide()'s view of the merged head (ETag and Content-Type are kept
 * apart in the object). */
static const char *merged_field(void *baton, const char *name, int list)
{
    merged_head *mh = baton;
    const char *all = NULL;
    int i;

    if (!strcasecmp(name, "ETag"))
        return mh->old->etag;
    if (!strcasecmp(name, "Content-Type"))
        return mh->old->ctype;
    for (i = 0; i < mh->a->nelts; i++) {
        const hc_field *f = &APR_ARRAY_IDX(mh->a, i, hc_field);

        if (strcasecmp(f->name, name))
            continue;
        if (!list)
            return f->value;
        all = all ? apr_pstrcat(mh->p, all, ", ", f->value, NULL) : f->value;
    }
    return all;
}

/* The stored head of old updated with the 304's fields (4.3.4): each
 * field the 304 carries replaces all of old's of that name. */
static void merge_head(apx_hcache *hc, const hc_obj *old,
                       const apx_hcache_resp *resp, merged_head *mh)
{
    apr_array_header_t *fresh = apr_array_make(hc->r->pool, 16,
                                               sizeof(hc_field));
    merged_head m304;
    unsigned i;
    int j;

    m304.a = fresh;
    resp->each(resp->baton, collect_304, &m304);
    mh->a = apr_array_make(hc->r->pool, (int)old->nfields + fresh->nelts,
                           sizeof(hc_field));
    mh->old = old;
    mh->p = hc->r->pool;
    mh->bytes = 0;
    for (i = 0; i < old->nfields; i++) {
        int replaced = 0;

        for (j = 0; j < fresh->nelts && !replaced; j++)
            replaced = !strcasecmp(old->fields[i].name,
                                   APR_ARRAY_IDX(fresh, j, hc_field).name);
        if (!replaced)
            *(hc_field *)apr_array_push(mh->a) = old->fields[i];
    }
    for (j = 0; j < fresh->nelts; j++)
        *(hc_field *)apr_array_push(mh->a) = APR_ARRAY_IDX(fresh, j,
                                                           hc_field);
    for (j = 0; j < mh->a->nelts; j++) {
        const hc_field *f = &APR_ARRAY_IDX(mh->a, j, hc_field);

        mh->bytes += strlen(f->name) + strlen(f->value) + 2;
    }
}

/* A new object: old's status, body (shared, not copied) and coding with
 * the merged head and new freshness. */
static hc_obj *build_updated(apx_hcache *hc, const hc_obj *old,
                             const merged_head *mh, const apx_fresh_times *t)
{
    const char *lm = merged_field((void *)mh, "Last-Modified", 0);
    apr_size_t bytes;
    hc_obj *o, *owner;
    char *p;
    int i;

    bytes = sizeof(*o) + mh->a->nelts * sizeof(hc_field) + mh->bytes
            + (old->ctype ? strlen(old->ctype) + 1 : 0)
            + (old->etag ? strlen(old->etag) + 1 : 0)
            + (old->etag_gz ? strlen(old->etag_gz) + 1 : 0)
            + (old->status_line ? strlen(old->status_line) + 1 : 0);
    o = calloc(1, bytes);
    if (!o)
        return NULL;
    o->kind = OBJ_READY;
    o->fields = (hc_field *)(o + 1);
    p = (char *)(o->fields + mh->a->nelts);
    for (i = 0; i < mh->a->nelts; i++) {
        const hc_field *f = &APR_ARRAY_IDX(mh->a, i, hc_field);

        o->fields[i].name = put_str(&p, f->name);
        o->fields[i].value = put_str(&p, f->value);
    }
    o->nfields = (unsigned)mh->a->nelts;
    o->ctype = put_str(&p, old->ctype);
    o->etag = put_str(&p, old->etag);
    o->etag_gz = put_str(&p, old->etag_gz);
    o->status_line = put_str(&p, old->status_line);
    o->status = old->status;
    o->last_modified = lm ? apx_fresh_parse_date(lm, strlen(lm),
                                                 apr_time_now()) : 0;
    o->ft = *t;
    owner = old->body_owner ? old->body_owner : (hc_obj *)old;
    apx_cache_ref(&owner->ce);
    o->body_owner = owner;
    o->body = owner->body;
    o->body_len = old->body_len;
    o->plain_len = old->plain_len;
    o->gz = old->gz;
    /* the body counts here: the entry that held it is no longer linked
     * once this one replaces it */
    o->ce.size = bytes + o->body_len;
    o->ce.expires = apx_fresh_keep_until(t);
    o->ce.refs = 1;
    return o;
}

/* After NOT_MODIFIED (the 304's empty body read): the updated object, or
 * 0 when the 304 names another representation than the stored one (4.3.4:
 * it then updates nothing, and the request path asks again without
 * conditionals). */
int apx_hcache_revalidated(apx_hcache *hc, const apx_hcache_resp *resp,
                           apr_time_t req_time)
{
    hc_obj *old = hc->reval, *o;
    const char *etag = resp->field(resp->baton, "ETag", 0);
    merged_head mh;
    apx_fresh_times t;
    int ok, stored = 0;

    if (etag && (!old->etag || !apx_fresh_not_modified(etag, 0, old->etag,
                                                        0))) {
        hc->reval = NULL;
        return 0;
    }
    merge_head(hc, old, resp, &mh);
    ok = decide_fields(hc, old->status, merged_field, &mh, req_time,
                       apr_time_now(), &t);
    if (!ok) {
        /* still good for this request, which it validated: served once,
         * as fresh as it is now */
        memset(&t, 0, sizeof(t));
        t.response_time = apr_time_now();
    }
    o = build_updated(hc, old, &mh, &t);
    if (!o) {
        hc->reval = NULL;
        return 0;
    }
    if (ok)
        stored = apx__hc_publish(hc, o, merged_field(&mh, "Vary", 1));
    if (hc->role != ROLE_REFRESH) {
        apx__hc_release_pending(hc, stored, stored && hc->share ? o : NULL);
        apx__hc_set_serving(hc, o);
    }
    apx_cache_unref(apx__hc_store, &o->ce);
    return 1;
}

/* The stale object goes out instead of the backend's failure. */
static int stale_instead(apx_hcache *hc)
{
    hc->reason = "stale-if-error";
    apx__hc_set_serving(hc, hc->stale);
    return APX_HCACHE_STALE_ON_ERROR;
}

static int start_capture(apx_hcache *hc, const apx_hcache_resp *resp)
{
    hc->cap_hint = resp->content_length;
    apr_pool_cleanup_register(hc->r->pool, hc, cap_cleanup,
                              apr_pool_cleanup_null);
    return APX_HCACHE_STORE;
}

int apx_hcache_on_head(apx_hcache *hc, const apx_hcache_resp *resp,
                       apr_time_t req_time)
{
    if (hc->reval && resp->status == HTTP_NOT_MODIFIED)
        return APX_HCACHE_NOT_MODIFIED;
    if (hc->role == ROLE_REFRESH)
        return apx__hc_decide(hc, resp, req_time, apr_time_now(), &hc->ft)
               ? start_capture(hc, resp) : APX_HCACHE_PASS;
    if (resp->status >= 500 && stale_usable(hc)) {
        apx__hc_release_pending(hc, 0, NULL);
        return stale_instead(hc);
    }
    if (hc->role == ROLE_FETCH
        || !apx__hc_decide(hc, resp, req_time, apr_time_now(), &hc->ft)) {
        if (hc->role != ROLE_FETCH && hc->reason)
            apx__hc_mark_pass(hc);
        apx__hc_release_pending(hc, 0, NULL);
        apx__hc_set_label(hc, hc->role == ROLE_FETCH && !hc->reason ? "MISS"
                                                           : "BYPASS");
        return APX_HCACHE_PASS;
    }
    /* storable: the whole body first, then one object for everyone */
    return start_capture(hc, resp);
}

int apx_hcache_failed(apx_hcache *hc, int status)
{
    apx__hc_release_pending(hc, 0, NULL);
    if (status >= 500 && stale_usable(hc))
        return stale_instead(hc);
    apx__hc_set_label(hc, hc->role == ROLE_FETCH ? "BYPASS" : "MISS");
    return APX_HCACHE_PASS;
}

void apx_hcache_abandon(apx_hcache *hc)
{
    apx__hc_release_pending(hc, 0, NULL);
}

int apx_hcache_store(apx_hcache *hc, const apx_hcache_resp *resp)
{
    hc_obj *o = apx__hc_build_obj(hc, resp, &hc->ft, hc->cap, hc->cap_len,
                                  NULL);
    int stored;

    if (o) {
        hc->cap = NULL;
        hc->cap_len = hc->cap_size = 0;
    }

    if (!o) {
        if (hc->role != ROLE_REFRESH) {
            apx__hc_release_pending(hc, 0, NULL);
            hc->reason = "out-of-memory";
            apx__hc_set_label(hc, "BYPASS");
        }
        return 0;
    }
    stored = apx__hc_publish(hc, o, resp->field(resp->baton, "Vary", 1));
    if (hc->role != ROLE_REFRESH) {
        apx__hc_release_pending(hc, stored, hc->share ? o : NULL);
        apx__hc_set_serving(hc, o);
    }
    apx_cache_unref(apx__hc_store, &o->ce);
    return 1;
}

/* After a stale response went out whole, the request that claimed the
 * object fetches a new copy for the store; nothing of it reaches the
 * client. */
int apx_hcache_refresh_begin(apx_hcache *hc)
{
    hc_obj *old = hc->refreshed;

    if (!old)
        return 0;
    hc->role = ROLE_REFRESH;
    hc->strip = 1;
    hc->reason = NULL;
    hc->reval = old->etag || old->last_modified ? old : NULL;
    return 1;
}

void apx_hcache_refresh_end(apx_hcache *hc)
{
    if (hc->refreshed)
        apr_atomic_set32(&hc->refreshed->refreshing, 0);
    hc->refreshed = NULL;
}
