/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* apx_fresh.h — the rules of a shared HTTP cache (RFC 9111) as pure
 * functions: Cache-Control parsing, whether a response may be stored, how
 * long it stays fresh, its age, how long it may be served stale, whether a
 * conditional request is answered 304, and the Vary part of a cache key.
 *
 * No httpd and no clock: the glue parses HTTP-dates (apr_date_parse_http)
 * and passes times in; "now" is always a parameter.
 *
 * Calling threads: any; nothing here keeps state.
 */
#ifndef APX_FRESH_H
#define APX_FRESH_H

#include "apx_common.h"

/* Cache-Control directives (RFC 9111 §5.2), of a request or a response. */
enum {
    APX_CC_NO_STORE         = 0x0001,
    APX_CC_NO_CACHE         = 0x0002,  /* with or without field names */
    APX_CC_PRIVATE          = 0x0004,  /* with or without field names */
    APX_CC_PUBLIC           = 0x0008,
    APX_CC_MUST_REVALIDATE  = 0x0010,
    APX_CC_PROXY_REVALIDATE = 0x0020,
    APX_CC_NO_TRANSFORM     = 0x0040,
    APX_CC_ONLY_IF_CACHED   = 0x0080,
    APX_CC_MUST_UNDERSTAND  = 0x0100,
    APX_CC_IMMUTABLE        = 0x0200,
    /* freshness information was malformed or repeated (max-age=abc,
     * s-maxage="", max-age twice): RFC 9111 §4.2.1, the response is stale
     * (a freshness lifetime of 0) */
    APX_CC_INVALID          = 0x8000
};

/* Seconds; -1 when the directive is absent. */
typedef struct apx_cc {
    unsigned flags;
    apr_int64_t max_age;
    apr_int64_t s_maxage;
    apr_int64_t max_stale;      /* request; APX_CC_ANY when given no value */
    apr_int64_t min_fresh;      /* request */
    apr_int64_t swr;            /* stale-while-revalidate (response) */
    apr_int64_t sie;            /* stale-if-error (request or response) */
} apx_cc;

#define APX_CC_ANY  ((apr_int64_t)1 << 62)

void apx_cc_init(apx_cc *cc);
/* Adds the directives of one Cache-Control field value (call once per
 * field line; lists may span lines). Unknown directives are ignored;
 * quoted values are accepted; delta-seconds beyond 2^31 are clamped to
 * 2^31 (RFC 9111 §1.2.2). */
void apx_cc_parse(apx_cc *cc, const char *value, size_t len);
/* A targeted cache-control field (RFC 9213: CDN-Cache-Control), all its
 * lines joined with ", ": a Structured Field Dictionary (RFC 8941). When
 * it parses, and is not empty, *cc is set from it alone (apx_cc_init'ed
 * first) and 1 is returned: the caller then ignores Cache-Control,
 * Expires and Pragma. 0 (cc untouched) when it does not: the field is
 * ignored as a whole. Keys are lowercase; a directive whose value has the
 * wrong type (a delta that is no non-negative Integer, a flag given a
 * value other than ?1) is ignored; of a key given twice the last counts;
 * parameters are ignored. */
int apx_cc_parse_targeted(apx_cc *cc, const char *value, size_t len);

/* What the glue knows of a response when deciding to store it. Times are
 * apr_time_t (µs); 0 means the field was absent. */
typedef struct apx_fresh_resp {
    int status;
    apx_cc cc;
    int has_expires;            /* an Expires field was present ... */
    apr_time_t expires;         /* ... and parsed to this (0: invalid, which
                                 * means "already expired") */
    apr_time_t date;            /* Date, 0: absent or invalid */
    apr_time_t last_modified;   /* Last-Modified, 0: absent */
    apr_int64_t age;            /* Age in seconds, -1: absent or invalid */
    int has_etag;
    int set_cookie;             /* the response sets cookies */
    int vary_star;              /* Vary: * */
    int pragma_no_cache;        /* Pragma: no-cache (honoured only when
                                 * Cache-Control holds no directive) */
    apr_time_t request_time;    /* when the request went to the backend */
    apr_time_t response_time;   /* when its head arrived */
} apx_fresh_resp;

/* The request side of the decision. */
typedef struct apx_fresh_req {
    int method_get;             /* GET ... */
    int method_head;            /* ... or HEAD: the only methods cached */
    int authorization;          /* the request carries Authorization */
    apx_cc cc;                  /* the request's Cache-Control */
} apx_fresh_req;

/* The administrator's settings. */
typedef struct apx_fresh_policy {
    /* lifetime of a storable response without explicit freshness
     * (no max-age, s-maxage nor Expires); 0: such responses are not
     * stored (the default; no heuristic freshness) */
    apr_interval_time_t default_ttl;
    /* upper bound of any lifetime, 0: none */
    apr_interval_time_t max_ttl;
    /* how long past its freshness a response with a validator (ETag or
     * Last-Modified) is kept to be revalidated (RFC 9111 §4.3), 0: not
     * kept */
    apr_interval_time_t keep;
    /* how long past its freshness a response may be served when the
     * backend fails (RFC 9111 §4.2.4: disconnected), for responses that
     * allow serving stale (no must-revalidate, proxy-revalidate, s-maxage,
     * no-cache); the response's own stale-if-error counts when longer;
     * 0: only stale-if-error */
    apr_interval_time_t stale_on_error;
} apx_fresh_policy;

/* Why a response is not stored (0: it may be). */
enum {
    APX_STORE_OK = 0,
    APX_STORE_METHOD,           /* not GET/HEAD */
    APX_STORE_STATUS,           /* not cacheable by default, no explicit
                                 * freshness (or a 206, 1xx, 304) */
    APX_STORE_NO_STORE,         /* request or response no-store */
    APX_STORE_PRIVATE,
    APX_STORE_NO_CACHE,         /* response no-cache or Pragma: no-cache
                                 * without a validator to revalidate every
                                 * use with (with one it is stored, stale
                                 * at once: revalidate is set) */
    APX_STORE_AUTH,             /* Authorization without public,
                                 * s-maxage or must-revalidate */
    APX_STORE_SET_COOKIE,
    APX_STORE_VARY_STAR,
    APX_STORE_NO_FRESHNESS,     /* nothing says how long, and no default */
    APX_STORE_EXPIRED,          /* already stale on arrival (lifetime <=
                                 * corrected_initial_age), even with
                                 * stale-while-revalidate */
    APX_STORE_INVALID,          /* malformed or repeated max-age /
                                 * s-maxage: stale on arrival, and no stale
                                 * window lets it be used */
    APX_STORE_MUST_UNDERSTAND   /* must-understand on a status we do not
                                 * know the semantics of */
};

/* An HTTP-date (RFC 9110 §5.6.7): IMF-fixdate, or the obsolete rfc850 and
 * asctime forms, case-sensitive, GMT only, a day that exists; surrounding
 * whitespace is ignored. Returns 0 for anything else (the caller decides
 * what invalid means: an Expires in the past, a Date or Last-Modified
 * absent, an If-Modified-Since ignored). now (µs) places rfc850's
 * two-digit year (more than 50 years ahead: the century before). */
apr_time_t apx_fresh_parse_date(const char *s, size_t len, apr_time_t now);
/* The Age field (RFC 9111 §5.1): the first member of a list; a value that
 * is not a non-negative integer is ignored (-1, as absent); clamped to
 * 2^31. s NULL: -1. */
apr_int64_t apx_fresh_parse_age(const char *s, size_t len);

/* What to remember with a stored response. */
typedef struct apx_fresh_times {
    apr_time_t response_time;
    apr_interval_time_t initial_age;  /* corrected_initial_age (§4.2.3) */
    apr_interval_time_t lifetime;     /* freshness_lifetime (§4.2.1) */
    apr_time_t fresh_until;           /* response_time + lifetime
                                       * - initial_age */
    /* how long past fresh_until the entry may still be used: */
    apr_interval_time_t swr;          /* while one request refreshes it */
    apr_interval_time_t sie;          /* when refreshing it fails */
    int revalidate;                   /* must-revalidate / proxy-revalidate /
                                       * s-maxage / no-cache: never served
                                       * stale (swr and sie are then 0) */
    apr_interval_time_t keep;         /* the policy's keep, when the
                                       * response has a validator */
} apx_fresh_times;

/* Decides whether a shared cache may store the response to the request
 * and, when it may (APX_STORE_OK), fills *t (t may be NULL). Status codes heuristically
 * cacheable (RFC 9110 §15.1: 200 203 204 206 300 301 308 404 405 410 414
 * 501) are stored when freshness is explicit or default_ttl > 0; any
 * other final status only with explicit freshness (max-age, s-maxage,
 * Expires) or public; 206 is never stored (no range support). */
int apx_fresh_storable(const apx_fresh_req *rq, const apx_fresh_resp *rs,
                       const apx_fresh_policy *pol, apx_fresh_times *t);
/* A short word for a reason ("no-store", "private", ...). */
const char *apx_fresh_reason(int why);

/* State of a stored response at `now`. */
enum {
    APX_FRESH = 0,
    APX_STALE_REVALIDATE,       /* within stale-while-revalidate */
    APX_STALE_IF_ERROR,         /* within stale-if-error only */
    APX_STALE                   /* unusable */
};
int apx_fresh_state(const apx_fresh_times *t, apr_time_t now);
/* current_age (§4.2.3) in whole seconds, for the Age field. */
apr_int64_t apx_fresh_age(const apx_fresh_times *t, apr_time_t now);
/* The last moment the entry can be of any use (fresh_until plus the larger
 * of swr, sie and keep): the cache core's expiry. */
apr_time_t apx_fresh_keep_until(const apx_fresh_times *t);

/* Conditional GET/HEAD on a stored response (RFC 9110 §13.2.2): 1 when the
 * answer is 304. If-None-Match (a list, "*", weak comparison) is used when
 * present (if_none_match != NULL), else If-Modified-Since (ims != 0)
 * against last_modified (a stored response without Last-Modified never
 * matches it). etag is the ETag of the variant being served, or NULL. */
int apx_fresh_not_modified(const char *if_none_match, apr_time_t ims,
                           const char *etag, apr_time_t last_modified);

/* The Vary part of a cache key. For each field name in the response's Vary
 * value (a comma list, case-insensitive, duplicates kept once, in sorted
 * order so "A, B" and "b,a" give the same key), appends
 * "name:value\n" to buf, with the request's value from get() (NULL: absent,
 * written as "name\n" with no colon, so absent and empty differ); values are
 * normalised by trimming whitespace around list members and collapsing
 * ", " to ",". Field names in `skip` (a NULL-terminated array, e.g.
 * {"accept-encoding", NULL} when the cache varies on it itself) are left
 * out. Returns the length the key needs (as snprintf does): when it is
 * >= cap, buf holds a truncated key and the caller retries with a bigger
 * buffer. Returns (size_t)-1 (and an empty buf) for Vary: *, a malformed
 * list, a name of 256 bytes or more, or a request value holding CR or LF
 * (it could forge the key's lines). vary NULL: no Vary, an empty key; get
 * NULL: every field absent. */
typedef const char *(*apx_fresh_get_fn)(void *baton, const char *name);
size_t apx_fresh_vary_key(const char *vary, const char *const *skip,
                          apx_fresh_get_fn get, void *baton,
                          char *buf, size_t cap);

#endif /* APX_FRESH_H */
