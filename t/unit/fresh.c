/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* Unit tests of the shared-cache rules: Cache-Control parsing (lists,
 * quoting, case, clamping, malformed and conflicting values), the storing
 * decision and its reasons, freshness lifetime and age on fake clocks,
 * stale serving windows, conditional requests and Vary keys. */
#include "../../poller/fresh.c"
#include "tap.h"

#include <stdlib.h>
#include <strings.h>

#define BASE ((apr_time_t)1700000000 * APR_USEC_PER_SEC)
#define T(s) (BASE + apr_time_from_sec(s))
#define MS(ms) ((apr_interval_time_t)(ms) * 1000)
#define SEC(s) apr_time_from_sec(s)
#define DMAX ((apr_int64_t)1 << 31)

static apx_cc cc_of(const char *s)
{
    apx_cc cc;

    apx_cc_init(&cc);
    apx_cc_parse(&cc, s, strlen(s));
    return cc;
}

static void req_init(apx_fresh_req *rq)
{
    memset(rq, 0, sizeof(*rq));
    rq->method_get = 1;
    apx_cc_init(&rq->cc);
}

/* A response sent at T(0) whose head arrived at T(0). */
static void resp_init(apx_fresh_resp *rs, int status, const char *cc)
{
    memset(rs, 0, sizeof(*rs));
    rs->status = status;
    apx_cc_init(&rs->cc);
    if (cc)
        apx_cc_parse(&rs->cc, cc, strlen(cc));
    rs->age = -1;
    rs->request_time = T(0);
    rs->response_time = T(0);
}

static const apx_fresh_policy no_default = { 0, 0, 0, 0 };

/* Storing decision for a GET without request directives. */
static int store_cc(int status, const char *cc, const apx_fresh_policy *pol,
                    apx_fresh_times *t)
{
    apx_fresh_req rq;
    apx_fresh_resp rs;

    req_init(&rq);
    resp_init(&rs, status, cc);
    return apx_fresh_storable(&rq, &rs, pol, t);
}

static void test_cc_init(void)
{
    apx_cc cc;

    memset(&cc, 0x5a, sizeof(cc));
    apx_cc_init(&cc);
    is_int(cc.flags, 0, "init: no flags");
    ok(cc.max_age == -1 && cc.s_maxage == -1 && cc.max_stale == -1
       && cc.min_fresh == -1 && cc.swr == -1 && cc.sie == -1,
       "init: every delta absent (-1)");
    apx_cc_parse(&cc, "", 0);
    is_int(cc.flags, 0, "empty value: nothing");
    apx_cc_parse(&cc, NULL, 0);
    is_int(cc.flags, 0, "NULL value: nothing");
    cc = cc_of(" , ,, \t,");
    ok(cc.flags == 0 && cc.max_age == -1, "only commas and whitespace: nothing");
}

static void test_cc_flags(void)
{
    static const struct { const char *s; unsigned flag; } one[] = {
        { "no-store", APX_CC_NO_STORE },
        { "no-cache", APX_CC_NO_CACHE },
        { "private", APX_CC_PRIVATE },
        { "public", APX_CC_PUBLIC },
        { "must-revalidate", APX_CC_MUST_REVALIDATE },
        { "proxy-revalidate", APX_CC_PROXY_REVALIDATE },
        { "no-transform", APX_CC_NO_TRANSFORM },
        { "only-if-cached", APX_CC_ONLY_IF_CACHED },
        { "must-understand", APX_CC_MUST_UNDERSTAND },
        { "immutable", APX_CC_IMMUTABLE },
        { "NO-STORE", APX_CC_NO_STORE },
        { "Must-Revalidate", APX_CC_MUST_REVALIDATE },
        { "PuBlIc", APX_CC_PUBLIC },
    };
    apx_cc cc;
    size_t i;

    for (i = 0; i < sizeof(one) / sizeof(one[0]); i++) {
        cc = cc_of(one[i].s);
        is_int(cc.flags, one[i].flag, one[i].s);
    }
    cc = cc_of("public,max-age=60,  no-transform ,\timmutable");
    is_int(cc.flags, APX_CC_PUBLIC | APX_CC_NO_TRANSFORM | APX_CC_IMMUTABLE,
           "list: flags with odd spacing");
    is_int(cc.max_age, 60, "list: max-age among flags");
    cc = cc_of(",,,no-store,,,private,,,");
    is_int(cc.flags, APX_CC_NO_STORE | APX_CC_PRIVATE, "list: empty elements skipped");
    cc = cc_of("no-storex, xno-store, no-stor, no_store");
    is_int(cc.flags, 0, "near-miss names are unknown, not prefixes");
    cc = cc_of("community=\"UCI\", foo, bar=baz, no-cache");
    is_int(cc.flags, APX_CC_NO_CACHE, "unknown directives ignored, known kept");
    ok(cc.max_age == -1, "unknown directives set no delta");
}

static void test_cc_field_lists(void)
{
    apx_cc cc;

    cc = cc_of("private=\"set-cookie\", max-age=30");
    is_int(cc.flags, APX_CC_PRIVATE, "private with a field name");
    is_int(cc.max_age, 30, "the comma after the quoted list separates");
    cc = cc_of("no-cache=\"x, y\", s-maxage=5");
    is_int(cc.flags, APX_CC_NO_CACHE, "no-cache with a quoted list holding a comma");
    is_int(cc.s_maxage, 5, "the comma inside quotes did not split");
    ok(!(cc.flags & APX_CC_INVALID), "no invalid flag from the list");
    cc = cc_of("no-cache=\"max-age=5, no-store\"");
    is_int(cc.flags, APX_CC_NO_CACHE, "directives inside a quoted value are not parsed");
    ok(cc.max_age == -1, "no max-age from inside quotes");
    cc = cc_of("no-cache=set-cookie, public");
    is_int(cc.flags, APX_CC_NO_CACHE | APX_CC_PUBLIC, "no-cache with a token field name");
    cc = cc_of("private=\"a\\\"b, c\", max-age=7");
    is_int(cc.flags, APX_CC_PRIVATE, "escaped quote inside a quoted value");
    is_int(cc.max_age, 7, "parsing resumes after the escaped quote");
    cc = cc_of("private=\"set-cookie");
    is_int(cc.flags, APX_CC_PRIVATE, "unterminated quote: the restrictive flag holds");
    cc = cc_of("private=\"x, max-age=5");
    ok(cc.max_age == -1, "unterminated quote swallows the rest of the field");
    cc = cc_of("no-cache = \"a\" , max-age = 9");
    is_int(cc.flags, APX_CC_NO_CACHE, "whitespace around '=' tolerated");
    is_int(cc.max_age, 9, "max-age = 9 read");
}

static void test_cc_deltas(void)
{
    apx_cc cc;

    cc = cc_of("max-age=0");
    is_int(cc.max_age, 0, "max-age=0");
    cc = cc_of("MAX-AGE=3600");
    is_int(cc.max_age, 3600, "directive name case-insensitive");
    cc = cc_of("max-age=\"120\"");
    is_int(cc.max_age, 120, "quoted delta accepted");
    ok(!(cc.flags & APX_CC_INVALID), "quoted delta is valid");
    cc = cc_of("max-age=\"1\\2\"");
    is_int(cc.max_age, 12, "backslash escapes removed in a quoted delta");
    cc = cc_of("max-age=0000000000000000000042");
    is_int(cc.max_age, 42, "leading zeros do not overflow");
    cc = cc_of("max-age=2147483647");
    is_int(cc.max_age, 2147483647, "2^31-1 kept");
    cc = cc_of("max-age=2147483648");
    is_int(cc.max_age, DMAX, "2^31 kept");
    cc = cc_of("max-age=2147483649");
    is_int(cc.max_age, DMAX, "2^31+1 clamped to 2^31");
    cc = cc_of("s-maxage=99999999999999999999999999999999999999");
    is_int(cc.s_maxage, DMAX, "huge s-maxage clamped to 2^31");
    ok(!(cc.flags & APX_CC_INVALID), "a clamped delta is not invalid");
    cc = cc_of("stale-while-revalidate=30, stale-if-error=86400");
    ok(cc.swr == 30 && cc.sie == 86400, "swr and sie read");
    cc = cc_of("max-stale");
    is_int(cc.max_stale, APX_CC_ANY, "max-stale without value: any");
    cc = cc_of("max-stale=10");
    is_int(cc.max_stale, 10, "max-stale=10");
    cc = cc_of("max-stale, max-stale=10");
    is_int(cc.max_stale, 10, "max-stale any then 10: the smaller");
    cc = cc_of("min-fresh=5, min-fresh=8");
    is_int(cc.min_fresh, 8, "duplicate min-fresh: the larger");
    cc = cc_of("stale-if-error=50, stale-if-error=20");
    is_int(cc.sie, 20, "duplicate sie: the smaller");
    cc = cc_of("stale-while-revalidate=abc");
    ok(cc.swr == -1 && !(cc.flags & APX_CC_INVALID), "malformed swr ignored");
    cc = cc_of("stale-if-error");
    ok(cc.sie == -1 && !(cc.flags & APX_CC_INVALID), "sie without value ignored");
    cc = cc_of("min-fresh=-3");
    ok(cc.min_fresh == -1, "negative min-fresh ignored");
}

static void test_cc_invalid(void)
{
    static const char *const bad[] = {
        "max-age=abc", "max-age=", "max-age", "max-age=\"\"", "max-age=-1",
        "max-age=1.5", "max-age=5s", "max-age=5 6", "max-age=0x10",
        "max-age=\"12", "max-age=\"1 2\"", "max-age=+5", "s-maxage=",
        "s-maxage=ten", "S-MAXAGE=\"\"", "max-age=5;foo", "max-age==5",
        "max-age=10, max-age=20", "s-maxage=1,s-maxage=2",
    };
    apx_cc cc;
    size_t i;

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        cc = cc_of(bad[i]);
        ok(cc.flags & APX_CC_INVALID, "invalid: %s", bad[i]);
    }
    cc = cc_of("max-age=10, max-age=20");
    is_int(cc.max_age, 10, "conflicting duplicates keep the smaller");
    cc = cc_of("max-age=20, max-age=10");
    is_int(cc.max_age, 10, "... in either order");
    cc = cc_of("max-age=10, max-age=10");
    ok((cc.flags & APX_CC_INVALID) && cc.max_age == 10,
       "equal duplicates are duplicates too (RFC 9111 4.2.1: stale)");
    cc = cc_of("max-age=10, max-age=\"10\"");
    ok(cc.flags & APX_CC_INVALID, "... also in token and quoted forms");
    cc = cc_of("max-age=abc, no-store");
    ok((cc.flags & APX_CC_INVALID) && (cc.flags & APX_CC_NO_STORE),
       "garbage costs one element: the next one is still read");
    cc = cc_of("max-age=5 garbage, public");
    is_int(cc.flags, APX_CC_INVALID | APX_CC_PUBLIC, "garbage after a value");
    cc = cc_of("public garbage");
    is_int(cc.flags, 0, "a widening flag is not taken from a malformed element");
    cc = cc_of("no-store garbage");
    is_int(cc.flags, APX_CC_NO_STORE, "a restricting flag is taken even so");
    cc = cc_of("must-understand junk, no-store");
    is_int(cc.flags, APX_CC_NO_STORE, "malformed must-understand does not lift no-store");
    cc = cc_of("\"quoted\", max-age=3");
    is_int(cc.max_age, 3, "an element starting with a quote is skipped");
    cc = cc_of("=5, max-age=4");
    is_int(cc.max_age, 4, "an element without name is skipped");
    cc = cc_of("@#(, max-age=4");
    ok(cc.max_age == 4 && !(cc.flags & APX_CC_INVALID), "non-token bytes skipped");
    cc = cc_of("stale-if-error=abc, max-age=2");
    ok(!(cc.flags & APX_CC_INVALID), "malformed unused directive is not invalid");
    cc = cc_of("foo=\"unterminated, bar");
    is_int(cc.flags, 0, "unknown with unterminated quote: nothing");
}

static void test_cc_lines(void)
{
    apx_cc cc;
    char *buf;

    apx_cc_init(&cc);
    apx_cc_parse(&cc, "public", 6);
    apx_cc_parse(&cc, "max-age=60", 10);
    ok(cc.flags == APX_CC_PUBLIC && cc.max_age == 60, "two field lines add up");
    apx_cc_parse(&cc, "max-age=30", 10);
    ok((cc.flags & APX_CC_INVALID) && cc.max_age == 30,
       "a conflicting max-age on another line: invalid");
    apx_cc_init(&cc);
    apx_cc_parse(&cc, "max-age=123456", 9);
    is_int(cc.max_age, 1, "len bounds the parse (max-age=1)");
    apx_cc_init(&cc);
    apx_cc_parse(&cc, "no-storeXYZ", 8);
    is_int(cc.flags, APX_CC_NO_STORE, "len cuts a name");
    /* exact-size buffers: ASan catches any read past len */
    buf = malloc(9);
    memcpy(buf, "max-age=", 8);
    buf[8] = '7';
    apx_cc_init(&cc);
    apx_cc_parse(&cc, buf, 9);
    is_int(cc.max_age, 7, "unterminated buffer: value at the very end");
    memcpy(buf, "private=\"", 9);
    apx_cc_init(&cc);
    apx_cc_parse(&cc, buf, 9);
    is_int(cc.flags, APX_CC_PRIVATE, "unterminated buffer: open quote at the end");
    memcpy(buf, "a=\"x\\\\\\\\", 9);
    apx_cc_init(&cc);
    apx_cc_parse(&cc, buf, 9);
    is_int(cc.flags, 0, "unterminated buffer: escapes at the end");
    memcpy(buf, "a=\"xxxx\\", 9);
    apx_cc_init(&cc);
    apx_cc_parse(&cc, buf, 9);
    is_int(cc.flags, 0, "unterminated buffer: lone backslash at the end");
    free(buf);
    apx_cc_init(&cc);
    apx_cc_parse(&cc, "max-age=5\0, no-store", 20);
    ok((cc.flags & APX_CC_INVALID) && (cc.flags & APX_CC_NO_STORE),
       "a NUL inside the value is garbage, not an end");
}

static void test_store_basic(void)
{
    apx_fresh_req rq;
    apx_fresh_resp rs;
    apx_fresh_times t;
    apx_fresh_policy ttl10 = { SEC(10), 0, 0, 0 };

    memset(&t, 0, sizeof(t));
    is_int(store_cc(200, "max-age=60", &no_default, &t), APX_STORE_OK,
           "200 max-age=60 stored");
    is_int(t.lifetime, SEC(60), "lifetime 60 s");
    is_int(t.initial_age, 0, "no age");
    is_int(t.response_time, T(0), "response_time kept");
    is_int(t.fresh_until, T(60), "fresh until +60 s");
    ok(!t.revalidate && t.swr == 0 && t.sie == 0, "no stale windows");
    ok(store_cc(200, "max-age=60", &no_default, NULL) == APX_STORE_OK,
       "t may be NULL");

    req_init(&rq);
    resp_init(&rs, 200, "max-age=60");
    rq.method_get = 0;
    is_int(apx_fresh_storable(&rq, &rs, &no_default, &t), APX_STORE_METHOD,
           "POST not stored");
    rq.method_head = 1;
    is_int(apx_fresh_storable(&rq, &rs, &no_default, &t), APX_STORE_OK,
           "HEAD stored");

    is_int(store_cc(200, NULL, &no_default, &t), APX_STORE_NO_FRESHNESS,
           "200 without freshness, no default: not stored");
    memset(&t, 0, sizeof(t));
    is_int(store_cc(200, NULL, &ttl10, &t), APX_STORE_OK,
           "200 without freshness, default 10 s: stored");
    is_int(t.lifetime, SEC(10), "default ttl is the lifetime");
    is_int(store_cc(404, "", &ttl10, &t), APX_STORE_OK, "404 heuristically cacheable");
    is_int(store_cc(410, NULL, &ttl10, &t), APX_STORE_OK, "410 too");
    is_int(store_cc(501, NULL, &ttl10, &t), APX_STORE_OK, "501 too");
    is_int(store_cc(308, NULL, &ttl10, &t), APX_STORE_OK, "308 too");
    is_int(store_cc(302, NULL, &ttl10, &t), APX_STORE_STATUS,
           "302 without explicit freshness: status");
    is_int(store_cc(302, "max-age=5", &no_default, &t), APX_STORE_OK,
           "302 with max-age: stored");
    is_int(store_cc(500, "s-maxage=5", &no_default, &t), APX_STORE_OK,
           "500 with s-maxage: stored");
    is_int(store_cc(503, "public", &ttl10, &t), APX_STORE_OK,
           "503 public, default ttl: stored");
    is_int(store_cc(503, "public", &no_default, &t), APX_STORE_NO_FRESHNESS,
           "503 public, no default: no freshness");
    is_int(store_cc(206, "max-age=60", &no_default, &t), APX_STORE_STATUS,
           "206 never stored");
    is_int(store_cc(304, "max-age=60", &no_default, &t), APX_STORE_STATUS,
           "304 never stored");
    is_int(store_cc(100, "max-age=60", &no_default, &t), APX_STORE_STATUS,
           "1xx never stored");
    is_int(store_cc(0, "max-age=60", &no_default, &t), APX_STORE_STATUS,
           "status 0 not stored");
    is_int(store_cc(999, "max-age=60", &no_default, &t), APX_STORE_STATUS,
           "status 999 not stored");
}

static void test_store_directives(void)
{
    apx_fresh_req rq;
    apx_fresh_resp rs;
    apx_fresh_times t;

    is_int(store_cc(200, "max-age=60, no-store", &no_default, &t),
           APX_STORE_NO_STORE, "response no-store");
    is_int(store_cc(200, "max-age=60, private", &no_default, &t),
           APX_STORE_PRIVATE, "response private");
    is_int(store_cc(200, "max-age=60, private=\"set-cookie\"", &no_default, &t),
           APX_STORE_PRIVATE, "private with field names: not stored either");
    is_int(store_cc(200, "max-age=60, no-cache", &no_default, &t),
           APX_STORE_NO_CACHE, "response no-cache");
    is_int(store_cc(200, "max-age=60, no-cache=\"x-a, x-b\"", &no_default, &t),
           APX_STORE_NO_CACHE, "no-cache with field names");
    is_int(store_cc(200, "max-age=abc", &no_default, &t), APX_STORE_INVALID,
           "malformed max-age: invalid");
    is_int(store_cc(200, "max-age=10, max-age=20", &no_default, &t),
           APX_STORE_INVALID, "conflicting max-age: invalid");
    is_int(store_cc(200, "max-age=10, stale-if-error=x", &no_default, &t),
           APX_STORE_OK, "malformed sie does not block storing");
    is_int(store_cc(200, "public, max-age=60, immutable, no-transform",
                    &no_default, &t), APX_STORE_OK, "harmless flags");

    req_init(&rq);
    resp_init(&rs, 200, "max-age=60");
    apx_cc_parse(&rq.cc, "no-store", 8);
    is_int(apx_fresh_storable(&rq, &rs, &no_default, &t), APX_STORE_NO_STORE,
           "request no-store");
    req_init(&rq);
    apx_cc_parse(&rq.cc, "no-cache, max-age=0", 19);
    is_int(apx_fresh_storable(&rq, &rs, &no_default, &t), APX_STORE_OK,
           "request no-cache / max-age=0 do not prevent storing");
    req_init(&rq);
    apx_cc_parse(&rq.cc, "max-age=x", 9);
    is_int(apx_fresh_storable(&rq, &rs, &no_default, &t), APX_STORE_OK,
           "an invalid request Cache-Control does not prevent storing");

    /* Pragma: no-cache counts only where Cache-Control says nothing */
    req_init(&rq);
    resp_init(&rs, 200, NULL);
    rs.has_expires = 1;
    rs.expires = T(60);
    rs.pragma_no_cache = 1;
    is_int(apx_fresh_storable(&rq, &rs, &no_default, &t), APX_STORE_NO_CACHE,
           "Pragma: no-cache without Cache-Control");
    resp_init(&rs, 200, "max-age=60");
    rs.pragma_no_cache = 1;
    is_int(apx_fresh_storable(&rq, &rs, &no_default, &t), APX_STORE_OK,
           "Pragma: no-cache ignored beside Cache-Control");

    resp_init(&rs, 200, "max-age=60");
    rs.set_cookie = 1;
    is_int(apx_fresh_storable(&rq, &rs, &no_default, &t), APX_STORE_SET_COOKIE,
           "Set-Cookie not stored");
    resp_init(&rs, 200, "max-age=60, public");
    rs.set_cookie = 1;
    is_int(apx_fresh_storable(&rq, &rs, &no_default, &t), APX_STORE_SET_COOKIE,
           "Set-Cookie not stored even public");
    resp_init(&rs, 200, "max-age=60");
    rs.vary_star = 1;
    is_int(apx_fresh_storable(&rq, &rs, &no_default, &t), APX_STORE_VARY_STAR,
           "Vary: * not stored");
    resp_init(&rs, 200, "max-age=60");
    rs.has_etag = 1;
    rs.last_modified = T(-100);
    is_int(apx_fresh_storable(&rq, &rs, &no_default, &t), APX_STORE_OK,
           "validators do not matter for storing");
}

static void test_store_auth(void)
{
    static const struct { const char *cc; int want; } cases[] = {
        { "max-age=60", APX_STORE_AUTH },
        { "max-age=60, public", APX_STORE_OK },
        { "max-age=60, must-revalidate", APX_STORE_OK },
        { "s-maxage=60", APX_STORE_OK },
        { "max-age=60, proxy-revalidate", APX_STORE_AUTH },
        { "max-age=60, no-transform, immutable", APX_STORE_AUTH },
        { "max-age=60, public garbage", APX_STORE_AUTH },
    };
    apx_fresh_req rq;
    apx_fresh_resp rs;
    apx_fresh_times t;
    size_t i;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        req_init(&rq);
        rq.authorization = 1;
        resp_init(&rs, 200, cases[i].cc);
        is_int(apx_fresh_storable(&rq, &rs, &no_default, &t), cases[i].want,
               cases[i].cc);
    }
    req_init(&rq);
    resp_init(&rs, 200, "max-age=60");
    is_int(apx_fresh_storable(&rq, &rs, &no_default, &t), APX_STORE_OK,
           "without Authorization the same response is stored");
}

static void test_store_must_understand(void)
{
    apx_fresh_times t;

    is_int(store_cc(200, "must-understand, no-store, max-age=60", &no_default, &t),
           APX_STORE_OK, "must-understand on 200 lifts no-store");
    is_int(store_cc(404, "no-store, must-understand, max-age=60", &no_default, &t),
           APX_STORE_OK, "on 404 too");
    is_int(store_cc(299, "must-understand, no-store, max-age=60", &no_default, &t),
           APX_STORE_MUST_UNDERSTAND, "unknown status with must-understand");
    is_int(store_cc(302, "must-understand, max-age=60", &no_default, &t),
           APX_STORE_MUST_UNDERSTAND, "302 is not understood");
    is_int(store_cc(206, "must-understand, max-age=60", &no_default, &t),
           APX_STORE_STATUS, "206 still a status refusal");
    is_int(store_cc(200, "must-understand, no-store, private, max-age=60",
                    &no_default, &t), APX_STORE_PRIVATE,
           "must-understand does not lift private");
    is_int(store_cc(200, "must-understand=1 x, no-store, max-age=60", &no_default, &t),
           APX_STORE_NO_STORE, "malformed must-understand does not lift no-store");
    is_int(store_cc(299, "no-store, max-age=60", &no_default, &t),
           APX_STORE_NO_STORE, "without must-understand no-store holds");
}

static void test_store_lifetime(void)
{
    apx_fresh_req rq;
    apx_fresh_resp rs;
    apx_fresh_times t;
    apx_fresh_policy ttl10 = { SEC(10), 0, 0, 0 };
    apx_fresh_policy cap30 = { SEC(10), SEC(30), 0, 0 };
    apx_fresh_policy subsec = { MS(250), 0, 0, 0 };

    req_init(&rq);
    resp_init(&rs, 200, "max-age=60, s-maxage=120");
    rs.has_expires = 1;
    rs.expires = T(600);
    rs.date = T(0);
    apx_fresh_storable(&rq, &rs, &no_default, &t);
    is_int(t.lifetime, SEC(120), "s-maxage first");
    resp_init(&rs, 200, "max-age=60");
    rs.has_expires = 1;
    rs.expires = T(600);
    rs.date = T(0);
    apx_fresh_storable(&rq, &rs, &no_default, &t);
    is_int(t.lifetime, SEC(60), "max-age over Expires");
    resp_init(&rs, 200, "max-age=0, s-maxage=60");
    is_int(apx_fresh_storable(&rq, &rs, &no_default, &t), APX_STORE_OK,
           "s-maxage=60 wins over max-age=0");
    resp_init(&rs, 200, "s-maxage=0, max-age=60");
    is_int(apx_fresh_storable(&rq, &rs, &no_default, &t), APX_STORE_EXPIRED,
           "s-maxage=0 wins over max-age=60");

    resp_init(&rs, 200, NULL);
    rs.has_expires = 1;
    rs.expires = T(600);
    rs.date = T(500);
    rs.response_time = T(520);
    rs.request_time = T(520);
    memset(&t, 0, sizeof(t));
    is_int(apx_fresh_storable(&rq, &rs, &no_default, &t), APX_STORE_OK,
           "Expires stored");
    is_int(t.lifetime, SEC(100), "Expires - Date, not Expires - now");
    is_int(t.initial_age, SEC(20), "apparent age from Date");
    is_int(t.fresh_until, T(600), "fresh until Expires (no skew)");

    resp_init(&rs, 200, NULL);
    rs.has_expires = 1;
    rs.expires = T(90);
    apx_fresh_storable(&rq, &rs, &no_default, &t);
    is_int(t.lifetime, SEC(90), "no Date: Expires - response_time");
    resp_init(&rs, 200, NULL);
    rs.has_expires = 1;
    rs.expires = 0;
    is_int(apx_fresh_storable(&rq, &rs, &ttl10, &t), APX_STORE_EXPIRED,
           "invalid Expires: already expired, default ttl not used");
    resp_init(&rs, 200, NULL);
    rs.has_expires = 1;
    rs.expires = T(-10);
    is_int(apx_fresh_storable(&rq, &rs, &ttl10, &t), APX_STORE_EXPIRED,
           "Expires in the past: expired");
    resp_init(&rs, 200, NULL);
    rs.has_expires = 1;
    rs.expires = T(0);
    rs.date = T(0);
    is_int(apx_fresh_storable(&rq, &rs, &ttl10, &t), APX_STORE_EXPIRED,
           "Expires == Date: expired");
    resp_init(&rs, 200, "max-age=60");
    rs.has_expires = 1;
    rs.expires = 0;
    is_int(apx_fresh_storable(&rq, &rs, &no_default, &t), APX_STORE_OK,
           "invalid Expires ignored beside max-age");
    resp_init(&rs, 302, NULL);
    rs.has_expires = 1;
    rs.expires = T(30);
    is_int(apx_fresh_storable(&rq, &rs, &no_default, &t), APX_STORE_OK,
           "Expires is explicit freshness for a 302");

    is_int(store_cc(200, "max-age=0", &ttl10, &t), APX_STORE_EXPIRED,
           "max-age=0: expired, default ttl not used");
    is_int(store_cc(200, "max-age=3600", &cap30, &t), APX_STORE_OK, "capped store");
    is_int(t.lifetime, SEC(30), "max_ttl caps max-age");
    store_cc(200, NULL, &cap30, &t);
    is_int(t.lifetime, SEC(10), "default below the cap unchanged");
    store_cc(200, "max-age=20", &cap30, &t);
    is_int(t.lifetime, SEC(20), "max-age below the cap unchanged");
    is_int(store_cc(200, "max-age=2147483648", &no_default, &t), APX_STORE_OK,
           "max-age 2^31 stored");
    is_int(t.lifetime, SEC(DMAX), "2^31 s lifetime, no overflow");
    is_int(t.fresh_until, T(0) + SEC(DMAX), "fresh_until far away");
    memset(&t, 0, sizeof(t));
    is_int(store_cc(200, NULL, &subsec, &t), APX_STORE_OK, "sub-second default");
    is_int(t.fresh_until, T(0) + MS(250), "fresh for 250 ms");
}

static void test_store_age(void)
{
    apx_fresh_req rq;
    apx_fresh_resp rs;
    apx_fresh_times t;

    req_init(&rq);
    /* Age: 10 from upstream, 2 s on the way */
    resp_init(&rs, 200, "max-age=60");
    rs.request_time = T(0);
    rs.response_time = T(2);
    rs.date = T(1);
    rs.age = 10;
    apx_fresh_storable(&rq, &rs, &no_default, &t);
    is_int(t.initial_age, SEC(12), "corrected_age_value = age + response_delay");
    is_int(t.fresh_until, T(2) + SEC(48), "fresh_until = rt + lifetime - age");

    /* Date far behind our clock, no Age */
    resp_init(&rs, 200, "max-age=60");
    rs.request_time = T(99);
    rs.response_time = T(100);
    rs.date = T(70);
    apx_fresh_storable(&rq, &rs, &no_default, &t);
    is_int(t.initial_age, SEC(30), "apparent_age wins when larger");

    /* Date ahead of our clock: apparent age 0, not negative */
    resp_init(&rs, 200, "max-age=60");
    rs.request_time = T(100);
    rs.response_time = T(100) + MS(300);
    rs.date = T(200);
    apx_fresh_storable(&rq, &rs, &no_default, &t);
    is_int(t.initial_age, MS(300), "Date in the future: response delay only");

    /* response before request (clock step): no negative delay */
    resp_init(&rs, 200, "max-age=60");
    rs.request_time = T(5);
    rs.response_time = T(4);
    apx_fresh_storable(&rq, &rs, &no_default, &t);
    is_int(t.initial_age, 0, "negative response delay counts as 0");
    resp_init(&rs, 200, "max-age=60");
    rs.request_time = 0;
    rs.response_time = T(4);
    apx_fresh_storable(&rq, &rs, &no_default, &t);
    is_int(t.initial_age, 0, "unknown request time counts as 0");

    resp_init(&rs, 200, "max-age=60");
    rs.age = 60;
    is_int(apx_fresh_storable(&rq, &rs, &no_default, &t), APX_STORE_EXPIRED,
           "Age == max-age: stale on arrival");
    resp_init(&rs, 200, "max-age=60");
    rs.age = 59;
    is_int(apx_fresh_storable(&rq, &rs, &no_default, &t), APX_STORE_OK,
           "Age just below max-age: stored");
    is_int(t.fresh_until, T(1), "for one more second");
    resp_init(&rs, 200, "max-age=60");
    rs.age = (apr_int64_t)1 << 40;
    is_int(apx_fresh_storable(&rq, &rs, &no_default, &t), APX_STORE_EXPIRED,
           "huge Age: expired, no overflow");
    resp_init(&rs, 200, "max-age=1");
    rs.request_time = T(0);
    rs.response_time = T(2);
    is_int(apx_fresh_storable(&rq, &rs, &no_default, &t), APX_STORE_EXPIRED,
           "slower backend than max-age: expired");
    resp_init(&rs, 200, "max-age=60");
    rs.date = (apr_time_t)1 << 62;
    rs.response_time = -((apr_time_t)1 << 62);
    rs.request_time = 0;
    is_int(apx_fresh_storable(&rq, &rs, &no_default, &t), APX_STORE_OK,
           "absurd times do not overflow");
}

static void test_store_stale_windows(void)
{
    apx_fresh_times t;

    store_cc(200, "max-age=60, stale-while-revalidate=30, stale-if-error=600",
             &no_default, &t);
    ok(t.swr == SEC(30) && t.sie == SEC(600) && !t.revalidate,
       "swr and sie kept from the response");
    store_cc(200, "max-age=60, stale-while-revalidate=30, must-revalidate",
             &no_default, &t);
    ok(t.revalidate && t.swr == 0 && t.sie == 0, "must-revalidate: no stale");
    store_cc(200, "max-age=60, stale-if-error=30, proxy-revalidate",
             &no_default, &t);
    ok(t.revalidate && t.sie == 0, "proxy-revalidate: no stale");
    store_cc(200, "s-maxage=60, stale-while-revalidate=30", &no_default, &t);
    ok(t.revalidate && t.swr == 0, "s-maxage: no stale");
    store_cc(200, "max-age=60, stale-while-revalidate=0", &no_default, &t);
    ok(t.swr == 0 && !t.revalidate, "swr=0");
    store_cc(200, "max-age=60, stale-if-error=99999999999", &no_default, &t);
    is_int(t.sie, SEC(DMAX), "huge sie clamped");
    store_cc(200, "max-age=60, max-stale=100, min-fresh=5", &no_default, &t);
    ok(t.swr == 0 && t.sie == 0, "request-only directives in a response: no effect");
    /* stale on arrival, but a stale window makes it worth storing */
    is_int(store_cc(200, "max-age=0, stale-while-revalidate=60", &no_default, &t),
           APX_STORE_OK, "stale on arrival with swr: stored");
    is_int(apx_fresh_state(&t, t.response_time), APX_STALE_REVALIDATE,
           "... and served stale while revalidating at once");
    is_int(store_cc(200, "max-age=0, stale-if-error=60", &no_default, &t),
           APX_STORE_OK, "stale on arrival with sie: stored");
    is_int(store_cc(200, "max-age=0, must-revalidate, stale-while-revalidate=60",
                    &no_default, &t),
           APX_STORE_EXPIRED, "stale on arrival, must-revalidate: expired");
    is_int(store_cc(200, "max-age=0", &no_default, &t),
           APX_STORE_EXPIRED, "stale on arrival without a window: expired");
    {
        apx_fresh_req rq2;
        apx_fresh_resp rs2;

        req_init(&rq2);
        resp_init(&rs2, 200, "max-age=1, stale-while-revalidate=2");
        rs2.age = 5;
        is_int(apx_fresh_storable(&rq2, &rs2, &no_default, &t),
               APX_STORE_EXPIRED, "age beyond max-age + swr: expired");
    }
}

static void test_state(void)
{
    apx_fresh_times t;

    memset(&t, 0, sizeof(t));
    t.response_time = T(0);
    t.lifetime = SEC(60);
    t.fresh_until = T(60);
    t.swr = SEC(10);
    t.sie = SEC(100);
    is_int(apx_fresh_state(&t, T(0)), APX_FRESH, "fresh at arrival");
    is_int(apx_fresh_state(&t, T(60) - 1), APX_FRESH, "fresh 1 us before");
    is_int(apx_fresh_state(&t, T(60)), APX_STALE_REVALIDATE,
           "stale-while-revalidate at fresh_until");
    is_int(apx_fresh_state(&t, T(70) - 1), APX_STALE_REVALIDATE, "swr last us");
    is_int(apx_fresh_state(&t, T(70)), APX_STALE_IF_ERROR, "then stale-if-error");
    is_int(apx_fresh_state(&t, T(160) - 1), APX_STALE_IF_ERROR, "sie last us");
    is_int(apx_fresh_state(&t, T(160)), APX_STALE, "then stale");
    is_int(apx_fresh_state(&t, T(-5)), APX_FRESH, "clock before arrival: fresh");
    is_int(apx_fresh_keep_until(&t), T(160), "kept until the larger window ends");

    t.swr = SEC(200);
    is_int(apx_fresh_state(&t, T(100)), APX_STALE_REVALIDATE,
           "swr larger than sie: revalidate first");
    is_int(apx_fresh_state(&t, T(260)), APX_STALE, "stale after swr");
    is_int(apx_fresh_keep_until(&t), T(260), "kept until swr ends");

    t.swr = 0;
    t.sie = 0;
    is_int(apx_fresh_state(&t, T(60)), APX_STALE, "no windows: stale at fresh_until");
    is_int(apx_fresh_keep_until(&t), T(60), "kept until fresh_until");

    t.swr = SEC(10);
    t.sie = SEC(10);
    t.revalidate = 1;
    is_int(apx_fresh_state(&t, T(59)), APX_FRESH, "revalidate: fresh while fresh");
    is_int(apx_fresh_state(&t, T(61)), APX_STALE, "revalidate: never served stale");
    is_int(apx_fresh_keep_until(&t), T(60), "revalidate: kept until fresh_until");
}

static void test_age(void)
{
    apx_fresh_req rq;
    apx_fresh_resp rs;
    apx_fresh_times t;

    req_init(&rq);
    resp_init(&rs, 200, "max-age=600");
    rs.age = 10;
    rs.request_time = T(0);
    rs.response_time = T(0) + MS(500);
    apx_fresh_storable(&rq, &rs, &no_default, &t);
    is_int(apx_fresh_age(&t, T(0) + MS(500)), 10, "age at arrival: whole seconds (10.5)");
    is_int(apx_fresh_age(&t, T(1)), 11, "0.5 s later: 11");
    is_int(apx_fresh_age(&t, T(100)), 110, "age grows with residence");
    is_int(apx_fresh_age(&t, T(-100)), 10, "clock before arrival: initial age");

    resp_init(&rs, 200, "max-age=600");
    apx_fresh_storable(&rq, &rs, &no_default, &t);
    is_int(apx_fresh_age(&t, T(0)), 0, "no Age, no delay: 0");
    is_int(apx_fresh_age(&t, T(1) - 1), 0, "rounds down");
    is_int(apx_fresh_age(&t, T(1)), 1, "one second");
    is_int(apx_fresh_age(&t, T(0) + SEC(DMAX) + SEC(DMAX)), DMAX,
           "age clamped to 2^31");
}

typedef struct hdrs {
    const char *const *kv;     /* name, value (NULL: absent), ..., NULL */
    char asked[512];           /* names get() was called with, ';'-joined */
} hdrs;

static const char *get_hdr(void *baton, const char *name)
{
    hdrs *h = baton;
    const char *const *p;

    strncat(h->asked, name, sizeof(h->asked) - strlen(h->asked) - 2);
    strcat(h->asked, ";");
    for (p = h->kv; p && *p; p += 2)
        if (!strcasecmp(*p, name))
            return p[1];
    return NULL;
}

static size_t vkey(const char *vary, const char *const *skip,
                   const char *const *kv, char *buf, size_t cap, hdrs *h)
{
    memset(h, 0, sizeof(*h));
    h->kv = kv;
    return apx_fresh_vary_key(vary, skip, get_hdr, h, buf, cap);
}

#define VKEY_IS(vary, skip, kv, want, name)                                   \
    do {                                                                      \
        char b_[512];                                                         \
        hdrs h_;                                                              \
        size_t n_ = vkey((vary), (skip), (kv), b_, sizeof(b_), &h_);          \
        if (!ok(n_ == strlen(want) && !strcmp(b_, (want)), "%s", (name)))     \
            diag("got [%s] (%zu), expected [%s]", b_, n_, (want));            \
    } while (0)

static void test_vary(void)
{
    static const char *const h1[] = {
        "Accept-Encoding", "gzip, br",
        "Accept-Language", "en",
        "Accept", "text/html",
        "X-Empty", "",
        "X-Space", "   ",
        NULL
    };
    static const char *const h2[] = {
        "accept", "text/html ,  application/json;q=0.9 ,text/plain",
        NULL
    };
    static const char *const h3[] = {
        "accept", "text/html,application/json;q=0.9,text/plain",
        NULL
    };
    static const char *const h4[] = {
        "x-q", " \"a, b\" ,  c ,, ,d\t",
        "x-inner", "foo  bar , baz",
        "x-uq", "\"a, b\"x, \"unterminated, y",
        NULL
    };
    static const char *const skip_ae[] = { "Accept-Encoding", NULL };
    static const char *const skip_two[] = { "accept-language", "ACCEPT", NULL };
    char b[512];
    hdrs h;
    size_t n;

    VKEY_IS(NULL, NULL, h1, "", "no Vary: empty key");
    VKEY_IS("", NULL, h1, "", "empty Vary: empty key");
    VKEY_IS(" , ,", NULL, h1, "", "Vary of empty members: empty key");
    VKEY_IS("Accept-Language", NULL, h1, "accept-language:en\n", "one name");
    VKEY_IS("Accept-Language, Accept", NULL, h1,
            "accept:text/html\naccept-language:en\n", "two names sorted");
    VKEY_IS("accept,ACCEPT-LANGUAGE", NULL, h1,
            "accept:text/html\naccept-language:en\n", "case and order do not matter");
    VKEY_IS(" Accept ,\tAccept-Language\t, accept , ACCEPT", NULL, h1,
            "accept:text/html\naccept-language:en\n", "duplicates kept once");
    VKEY_IS("X-Absent", NULL, h1, "x-absent\n", "absent: name without colon");
    VKEY_IS("X-Empty", NULL, h1, "x-empty:\n", "empty: name with colon");
    VKEY_IS("X-Space", NULL, h1, "x-space:\n",
            "whitespace-only value is empty");
    VKEY_IS("Accept-Encoding, Accept", skip_ae, h1, "accept:text/html\n",
            "skip list leaves a name out");
    VKEY_IS("accept-encoding", skip_ae, h1, "", "skip list: only skipped name");
    VKEY_IS("Accept, Accept-Language, Accept-Encoding", skip_two, h1,
            "accept-encoding:gzip,br\n", "skip list compares case-insensitively");
    VKEY_IS("Accept-Encoding", NULL, h1, "accept-encoding:gzip,br\n",
            "\", \" collapsed to \",\"");
    VKEY_IS("accept", NULL, h2, "accept:text/html,application/json;q=0.9,text/plain\n",
            "list members trimmed");
    VKEY_IS("x-q", NULL, h4, "x-q:\"a, b\",c,d\n",
            "quoted string kept whole, empty members dropped");
    VKEY_IS("x-inner", NULL, h4, "x-inner:foo  bar,baz\n",
            "inner whitespace of a member kept");
    VKEY_IS("x-uq", NULL, h4, "x-uq:\"a, b\"x,\"unterminated, y\n",
            "unterminated quote kept verbatim");
    {
        char k2[256], k3[256];
        hdrs ha, hb;

        vkey("Accept", NULL, h2, k2, sizeof(k2), &ha);
        vkey("accept", NULL, h3, k3, sizeof(k3), &hb);
        ok(!strcmp(k2, k3), "differently spaced lists give one key");
    }
    {
        char ka[256], kb[256];
        hdrs ha, hb;
        static const char *const va[] = { "x-a", "1", "x-b", NULL, NULL };
        static const char *const vb[] = { "x-a", NULL, "x-b", "1", NULL };
        static const char *const vc[] = { "x-a", "", NULL };

        vkey("X-A, X-B", NULL, va, ka, sizeof(ka), &ha);
        vkey("X-A, X-B", NULL, vb, kb, sizeof(kb), &hb);
        ok(strcmp(ka, kb) != 0, "value moved to the other field: another key");
        vkey("X-A", NULL, vc, ka, sizeof(ka), &ha);
        vkey("X-A", NULL, NULL, kb, sizeof(kb), &hb);
        ok(strcmp(ka, kb) != 0, "absent and empty give different keys");
    }

    n = vkey("Accept-Encoding, Accept", skip_ae, h1, b, sizeof(b), &h);
    is_int(strcmp(h.asked, "accept;"), 0, "get() asked lowercase names, skipped ones not");
    n = vkey("B, a, C, a", NULL, NULL, b, sizeof(b), &h);
    is_int(strcmp(h.asked, "a;b;c;"), 0, "get() asked once per name, in order");
    is_int(n, 6, "three absent names: 6 bytes");

    is_int(vkey("*", NULL, h1, b, sizeof(b), &h), (size_t)-1, "Vary: *");
    is_int(vkey("Accept, *", NULL, h1, b, sizeof(b), &h), (size_t)-1,
           "* among names");
    is_int(vkey(" * ", NULL, h1, b, sizeof(b), &h), (size_t)-1, "* with spaces");
    is_int(vkey("Accept Language", NULL, h1, b, sizeof(b), &h), (size_t)-1,
           "a space inside a name: malformed");
    is_int(vkey("Accept;q=1", NULL, h1, b, sizeof(b), &h), (size_t)-1,
           "a ';' in a name: malformed");
    is_int(vkey("\"Accept\"", NULL, h1, b, sizeof(b), &h), (size_t)-1,
           "a quoted name: malformed");
    ok(h.asked[0] == '\0', "malformed Vary asks nothing");
    ok(b[0] == '\0', "malformed Vary leaves an empty buffer");
    {
        char big[400];

        memset(big, 'a', sizeof(big) - 1);
        big[sizeof(big) - 1] = '\0';
        is_int(vkey(big, NULL, NULL, b, sizeof(b), &h), (size_t)-1,
               "a 399-byte name: malformed");
        big[255] = '\0';
        is_int(vkey(big, NULL, NULL, b, sizeof(b), &h), 256,
               "a 255-byte name: fine");
    }
    {
        static const char *const crlf[] = { "x-a", "v\r\nx-b:1", NULL };
        static const char *const lf[] = { "x-a", "v\n", NULL };
        static const char *const cr[] = { "x-a", "a\rb", NULL };

        is_int(vkey("X-A", NULL, crlf, b, sizeof(b), &h), (size_t)-1,
               "CR LF in a request value: no key");
        is_int(vkey("X-A", NULL, lf, b, sizeof(b), &h), (size_t)-1,
               "LF in a request value: no key");
        is_int(vkey("X-A", NULL, cr, b, sizeof(b), &h), (size_t)-1,
               "a lone CR in a request value: no key");
    }
    VKEY_IS("Accept", NULL, NULL, "accept\n", "no headers at all");
    n = apx_fresh_vary_key("Accept", NULL, NULL, NULL, b, sizeof(b));
    ok(n == 7 && !strcmp(b, "accept\n"), "get may be NULL: every field absent");
}

static void test_vary_truncation(void)
{
    static const char *const h1[] = {
        "accept", "text/html", "accept-language", "en", NULL
    };
    const char *want = "accept:text/html\naccept-language:en\n";
    size_t full = strlen(want), cap, n;
    char *b;
    hdrs h;
    int good = 1;

    is_int(vkey("Accept, Accept-Language", NULL, h1, NULL, 0, &h), full,
           "cap 0, NULL buffer: the needed length");
    for (cap = 1; cap <= full + 1; cap++) {
        /* exact-size heap buffers: ASan catches any write past cap */
        b = malloc(cap);
        memset(b, '#', cap);
        n = vkey("Accept, Accept-Language", NULL, h1, b, cap, &h);
        if (n != full || strlen(b) != (cap > full ? full : cap - 1)
            || strncmp(b, want, strlen(b)) != 0) {
            good = 0;
            diag("cap %zu: n %zu, [%s]", cap, n, b);
        }
        free(b);
    }
    ok(good, "every cap from 1 to len+1: snprintf-like length and prefix");
    b = malloc(full + 1);
    n = vkey("Accept, Accept-Language", NULL, h1, b, full + 1, &h);
    ok(n < full + 1 && !strcmp(b, want), "retry with len+1 gives the whole key");
    free(b);
    b = malloc(4);
    n = vkey("Accept, *", NULL, h1, b, 4, &h);
    ok(n == (size_t)-1 && b[0] == '\0', "Vary: * with a small buffer");
    free(b);
}

static void test_not_modified(void)
{
    /* If-None-Match */
    ok(apx_fresh_not_modified("\"abc\"", 0, "\"abc\"", 0), "strong match");
    ok(!apx_fresh_not_modified("\"abc\"", 0, "\"abd\"", 0), "different tag");
    ok(apx_fresh_not_modified("W/\"abc\"", 0, "\"abc\"", 0), "weak in request");
    ok(apx_fresh_not_modified("\"abc\"", 0, "W/\"abc\"", 0), "weak stored");
    ok(apx_fresh_not_modified("W/\"abc\"", 0, "W/\"abc\"", 0), "weak both");
    ok(apx_fresh_not_modified("\"x\", \"y\" ,W/\"abc\"", 0, "\"abc\"", 0),
       "match later in a list");
    ok(apx_fresh_not_modified("\"x\",\"abc\"", 0, "\"abc\"", 0), "list without spaces");
    ok(!apx_fresh_not_modified("\"x\", \"y\"", 0, "\"abc\"", 0), "no member matches");
    ok(apx_fresh_not_modified("\"a,b\"", 0, "\"a,b\"", 0), "comma inside an entity-tag");
    ok(!apx_fresh_not_modified("\"a,b\"", 0, "\"a\"", 0),
       "a comma inside quotes does not split");
    ok(!apx_fresh_not_modified("\"ABC\"", 0, "\"abc\"", 0), "tags are case-sensitive");
    ok(!apx_fresh_not_modified("w/\"abc\"", 0, "\"abc\"", 0),
       "lowercase w/ is not a weak prefix");
    ok(!apx_fresh_not_modified("\"abc\"", 0, "abc", 0),
       "quoted does not match an unquoted stored tag");
    ok(apx_fresh_not_modified("abc", 0, "abc", 0), "unquoted tags compared as is");
    ok(apx_fresh_not_modified("*", 0, "\"abc\"", 0), "* matches");
    ok(apx_fresh_not_modified(" * ", 0, NULL, 0), "* matches without an ETag");
    ok(!apx_fresh_not_modified("\"abc\"", 0, NULL, 0), "tag vs no ETag: no match");
    ok(!apx_fresh_not_modified("\"\"", 0, "", 0), "empty stored ETag never matches");
    ok(apx_fresh_not_modified("\"\"", 0, "\"\"", 0), "empty opaque tag matches itself");
    ok(!apx_fresh_not_modified("", T(100), "\"abc\"", T(0)),
       "empty If-None-Match: no match, IMS ignored");
    ok(!apx_fresh_not_modified("\"x\"", T(100), "\"abc\"", T(0)),
       "If-None-Match present: IMS ignored even when it would match");
    ok(!apx_fresh_not_modified("garbage\"abc\"", 0, "\"abc\"", 0),
       "garbage before a tag");
    ok(apx_fresh_not_modified("@@, \"abc\"", 0, "\"abc\"", 0),
       "garbage member skipped");
    ok(!apx_fresh_not_modified("\"abc", 0, "\"abc\"", 0),
       "an unterminated tag does not match the terminated one");
    ok(!apx_fresh_not_modified("\"unterminated, \"abc\"", 0, "\"abc\"", 0),
       "an open quote swallows the rest");

    /* If-Modified-Since */
    ok(apx_fresh_not_modified(NULL, T(100), NULL, T(100)), "IMS == Last-Modified");
    ok(apx_fresh_not_modified(NULL, T(100), NULL, T(50)), "modified earlier");
    ok(!apx_fresh_not_modified(NULL, T(100), NULL, T(101)), "modified later");
    ok(apx_fresh_not_modified(NULL, T(100), NULL, T(100) + MS(999)),
       "sub-second difference ignored (whole seconds)");
    ok(!apx_fresh_not_modified(NULL, T(100) + MS(999), NULL, T(101)),
       "whole seconds both ways");
    ok(!apx_fresh_not_modified(NULL, T(100), NULL, 0), "no Last-Modified: no 304");
    ok(!apx_fresh_not_modified(NULL, 0, NULL, T(100)), "no IMS: no 304");
    ok(!apx_fresh_not_modified(NULL, 0, "\"abc\"", T(100)), "nothing conditional");
    ok(apx_fresh_not_modified(NULL, T(100), "\"abc\"", T(10)),
       "IMS used when If-None-Match absent even with an ETag");
}

static void test_reason(void)
{
    int i, distinct = 1, j;

    ok(!strcmp(apx_fresh_reason(APX_STORE_OK), "ok"), "reason ok");
    ok(!strcmp(apx_fresh_reason(APX_STORE_NO_STORE), "no-store"), "reason no-store");
    ok(!strcmp(apx_fresh_reason(APX_STORE_PRIVATE), "private"), "reason private");
    ok(!strcmp(apx_fresh_reason(APX_STORE_MUST_UNDERSTAND), "must-understand"),
       "reason must-understand (last)");
    ok(!strcmp(apx_fresh_reason(-1), "unknown"), "negative: unknown");
    ok(!strcmp(apx_fresh_reason(APX_STORE_MUST_UNDERSTAND + 1), "unknown"),
       "past the end: unknown");
    for (i = APX_STORE_OK; i <= APX_STORE_MUST_UNDERSTAND; i++)
        for (j = i + 1; j <= APX_STORE_MUST_UNDERSTAND; j++)
            if (!strcmp(apx_fresh_reason(i), apx_fresh_reason(j)))
                distinct = 0;
    ok(distinct, "every reason has its own word");
}

/* The administrator's TTL (micro-caching of slow backends) counts from
 * the response's arrival, not from the request: a backend slower than the
 * TTL is still cached for the whole TTL. Explicit max-age keeps the
 * response delay in the age (RFC 9111 section 4.2.3). */
static void test_default_ttl_from_arrival(void)
{
    apx_fresh_policy ttl500 = { apr_time_from_msec(500), 0, 0, 0 };
    apx_fresh_req rq;
    apx_fresh_resp rs;
    apx_fresh_times t;

    req_init(&rq);
    resp_init(&rs, 200, NULL);
    rs.request_time = T(0);
    rs.response_time = T(1);          /* a 1 s backend */
    is_int(apx_fresh_storable(&rq, &rs, &ttl500, &t), APX_STORE_OK,
           "500 ms TTL, 1 s backend: stored");
    ok(t.fresh_until == T(1) + apr_time_from_msec(500),
       "fresh for 500 ms after arrival");
    is_int(apx_fresh_state(&t, T(1) + apr_time_from_msec(499)), APX_FRESH,
           "fresh 499 ms after arrival");
    is_int(apx_fresh_state(&t, T(1) + apr_time_from_msec(500)), APX_STALE,
           "stale 500 ms after arrival");
    resp_init(&rs, 200, "max-age=1");
    rs.request_time = T(0);
    rs.response_time = T(1);
    is_int(apx_fresh_storable(&rq, &rs, &ttl500, &t), APX_STORE_EXPIRED,
           "max-age=1 after a 1 s response delay: already expired");
}

/* ---------------------------------------------------------------------------
 * RFC 9111 parsing: HTTP-dates (Expires, Date), Age, invalid freshness
 */

#define NOW_2026 ((apr_time_t)1796342400 * APR_USEC_PER_SEC)   /* 2026-12-04 */

static void test_parse_date(void)
{
    static const struct {
        const char *in;
        apr_int64_t want;       /* seconds; 0: invalid */
        const char *why;
    } cases[] = {
        { "Sun, 06 Nov 1994 08:49:37 GMT", 784111777, "IMF-fixdate" },
        { "Sunday, 06-Nov-94 08:49:37 GMT", 784111777, "rfc850" },
        { "Sun Nov  6 08:49:37 1994", 784111777, "asctime, one-digit day" },
        { "Sun Nov 06 08:49:37 1994", 784111777, "asctime, two-digit day" },
        { "Tue, 15 Nov 2022 08:12:31 GMT", 1668499951, "IMF-fixdate 2022" },
        { " Sun, 06 Nov 1994 08:49:37 GMT\t", 784111777,
          "surrounding whitespace ignored" },
        { "Mon, 06 Nov 1994 08:49:37 GMT", 784111777,
          "a wrong weekday is not checked (the date is)" },
        { "Thu, 29 Feb 1996 00:00:00 GMT", 825552000, "29 February, leap year" },
        { "Tue, 29 Feb 2000 12:00:00 GMT", 951825600, "29 February 2000 (400)" },
        { "Sun, 06 Nov 1994 08:49:60 GMT", 784111800, "a leap second" },
        { "Fri, 31 Dec 9999 23:59:59 GMT", 253402300799LL, "year 9999" },
        { "Mon, 01 Jan 1900 00:00:00 GMT", -2208988800LL,
          "before 1970: a valid date (Expires: in the past)" },
        { "Thu, 01 Jan 1970 00:00:00 GMT", 0,
          "the epoch itself is 0, which callers read as invalid: in the past "
          "either way" },
        { "Thursday, 01-Jan-70 00:00:00 GMT", 3155760000LL,
          "rfc850 year 70 in 2026: 2070 (44 years ahead)" },
        { "Tuesday, 01-Jan-80 00:00:00 GMT", 315532800,
          "rfc850 year 80 in 2026: 1980 (2080 is > 50 years ahead)" },
        /* invalid: every other form */
        { "Sun, 06 Nov 1994 08:49:37 PST", 0, "a zone other than GMT" },
        { "Sun, 06 Nov 1994 08:49:37 UTC", 0, "UTC is not GMT" },
        { "Sun, 06 Nov 1994 08:49:37 +0000", 0, "a numeric zone" },
        { "Sun, 06 Nov 1994 08:49:37", 0, "no zone" },
        { "Sun 06 Nov 1994 08:49:37 GMT", 0, "missing comma" },
        { "Sun,06 Nov 1994 08:49:37 GMT", 0, "missing space after the comma" },
        { "Sun, 6 Nov 1994 08:49:37 GMT", 0, "one-digit day in IMF-fixdate" },
        { "Sun, 06 Nov 94 08:49:37 GMT", 0, "two-digit year in IMF-fixdate" },
        { "06 Nov 1994 08:49:37 GMT", 0, "no weekday" },
        { "sun, 06 Nov 1994 08:49:37 GMT", 0, "lower-case weekday" },
        { "Sun, 06 nov 1994 08:49:37 GMT", 0, "lower-case month" },
        { "Sun, 06 Nov 1994 08:49:37 gmt", 0, "lower-case GMT" },
        { "Sun, 06 Nov 1994 08:49:37 GMTX", 0, "trailing bytes" },
        { "Sun, 06 Nov 1994 08:49:37 GMT, Mon, 07 Nov 1994 08:49:37 GMT", 0,
          "two values (two Expires lines joined)" },
        { "Sun, 31 Feb 1994 08:49:37 GMT", 0, "31 February" },
        { "Mon, 29 Feb 1900 00:00:00 GMT", 0, "29 February 1900 (no leap year)" },
        { "Sun, 00 Nov 1994 08:49:37 GMT", 0, "day 0" },
        { "Sun, 06 Nov 1994 24:00:00 GMT", 0, "hour 24" },
        { "Sun, 06 Nov 1994 08:60:00 GMT", 0, "minute 60" },
        { "Sun, 06 Nov 1994 08:49:61 GMT", 0, "second 61" },
        { "Sun, 06 Nov 1994 8:49:37 GMT ", 0, "one-digit hour" },
        { "Sun, 06 Nov 1994 08-49-37 GMT", 0, "wrong time separators" },
        { "Sun, 06 Nov 1994 08:49:3x GMT", 0, "a letter in the time" },
        { "Sun, 06 Xyz 1994 08:49:37 GMT", 0, "no such month" },
        { "Sunday, 06-Nov-1994 08:49:37 GMT", 0, "rfc850 with a 4-digit year" },
        { "Sun, 06-Nov-94 08:49:37 GMT", 0, "rfc850 with a short weekday" },
        { "Sunday, 06 Nov 94 08:49:37 GMT", 0, "rfc850 without dashes" },
        { "Sun Nov 6 08:49:37 1994", 0, "asctime with one space" },
        { "Sun Nov  6 08:49:37 94", 0, "asctime with a 2-digit year" },
        { "0", 0, "\"0\"" },
        { "-1", 0, "\"-1\"" },
        { "", 0, "empty" },
        { "1994-11-06T08:49:37Z", 0, "ISO 8601" },
    };
    size_t i;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        apr_time_t got = apx_fresh_parse_date(cases[i].in, strlen(cases[i].in),
                                              NOW_2026);

        if (!tap_ok(got == apr_time_from_sec(cases[i].want), "date: %s",
                    cases[i].why))
            printf("#   '%s': got %lld s, expected %lld\n", cases[i].in,
                   (long long)apr_time_sec(got), (long long)cases[i].want);
    }
    is_int(apx_fresh_parse_date(NULL, 0, NOW_2026), 0, "date: NULL");
    is_int(apx_fresh_parse_date("Sun, 06 Nov 1994 08:49:37 GMTxxxx", 29,
                                NOW_2026), apr_time_from_sec(784111777),
           "date: len bounds the parse");
    is_int(apx_fresh_parse_date("Tuesday, 01-Jan-80 00:00:00 GMT", 31,
                                apr_time_from_sec(0)),
           apr_time_from_sec(315532800),
           "date: rfc850 year 80 seen in 1970: 1980");
}

static void test_parse_age(void)
{
    static const struct {
        const char *in;
        apr_int64_t want;
        const char *why;
    } cases[] = {
        { "60", 60, "a number" },
        { "0", 0, "zero" },
        { " 60\t", 60, "surrounding whitespace" },
        { "60, 70", 60, "a list: the first member" },
        { "60,abc", 60, "a list: later garbage discarded" },
        { ", ,5", 5, "empty list elements are none" },
        { "2147483648", DMAX, "2^31" },
        { "99999999999999999999", DMAX, "huge: clamped to 2^31" },
        { "abc", -1, "not a number: ignored" },
        { "abc, 5", -1, "the first member invalid: ignored" },
        { "-5", -1, "negative" },
        { "+5", -1, "a sign" },
        { "5s", -1, "a unit" },
        { "1.5", -1, "a fraction" },
        { "5 6", -1, "two numbers" },
        { "\"5\"", -1, "quoted" },
        { "0x10", -1, "hex" },
        { "", -1, "empty" },
        { " , ", -1, "only separators" },
    };
    size_t i;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        apr_int64_t got = apx_fresh_parse_age(cases[i].in, strlen(cases[i].in));

        if (!tap_ok(got == cases[i].want, "age: %s", cases[i].why))
            printf("#   '%s': got %lld, expected %lld\n", cases[i].in,
                   (long long)got, (long long)cases[i].want);
    }
    is_int(apx_fresh_parse_age(NULL, 0), -1, "age: NULL");
    is_int(apx_fresh_parse_age("123", 2), 12, "age: len bounds the parse");
}

/* Invalid or repeated freshness information makes the response stale
 * (RFC 9111 §4.2.1): stored only where a stale window lets it be used. */
static void test_invalid_freshness(void)
{
    static const struct {
        const char *cc;
        int expires;            /* 0: none, 1: valid (T+600), -1: invalid */
        int want;
        const char *why;
    } cases[] = {
        { "max-age=60", 0, APX_STORE_OK, "valid max-age: stored" },
        { "max-age=abc", 0, APX_STORE_INVALID, "junk max-age: stale" },
        { "max-age=60abc", 0, APX_STORE_INVALID, "max-age with trailing junk" },
        { "max-age=", 0, APX_STORE_INVALID, "empty max-age" },
        { "max-age", 0, APX_STORE_INVALID, "max-age without value" },
        { "max-age=-1", 0, APX_STORE_INVALID, "negative max-age" },
        { "max-age=60, max-age=60", 0, APX_STORE_INVALID,
          "duplicate max-age, equal" },
        { "max-age=60, max-age=30", 0, APX_STORE_INVALID,
          "duplicate max-age, different" },
        { "s-maxage=60, s-maxage=60", 0, APX_STORE_INVALID, "duplicate s-maxage" },
        { "s-maxage=x, max-age=60", 0, APX_STORE_INVALID,
          "junk s-maxage beside a valid max-age" },
        { "max-age=abc", 1, APX_STORE_INVALID,
          "junk max-age beside a valid Expires: still stale" },
        { NULL, 1, APX_STORE_OK, "valid Expires: stored" },
        { NULL, -1, APX_STORE_EXPIRED, "invalid Expires: already expired" },
        { "max-age=60", -1, APX_STORE_OK, "invalid Expires beside max-age: max-age" },
        { "max-age=abc, stale-while-revalidate=30", 0, APX_STORE_OK,
          "junk max-age with stale-while-revalidate: stored stale" },
        { "max-age=1, max-age=1, stale-if-error=30", 0, APX_STORE_OK,
          "duplicate max-age with stale-if-error: stored stale" },
        { "max-age=abc, must-revalidate, stale-if-error=30", 0, APX_STORE_INVALID,
          "junk max-age with must-revalidate: never stale-served" },
    };
    apx_fresh_req rq;
    apx_fresh_resp rs;
    apx_fresh_times t;
    size_t i;

    req_init(&rq);
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int got;

        resp_init(&rs, 200, cases[i].cc);
        if (cases[i].expires) {
            rs.has_expires = 1;
            rs.expires = cases[i].expires > 0 ? T(600) : 0;
            rs.date = T(0);
        }
        memset(&t, 0, sizeof(t));
        got = apx_fresh_storable(&rq, &rs, &no_default, &t);
        is_int(got, cases[i].want, cases[i].why);
        if (got == APX_STORE_OK && rs.cc.flags & APX_CC_INVALID) {
            is_int(t.lifetime, 0, "... with a lifetime of 0");
            ok(apx_fresh_state(&t, T(0)) != APX_FRESH, "... never fresh");
        }
    }
    resp_init(&rs, 200, "max-age=abc, stale-while-revalidate=30");
    apx_fresh_storable(&rq, &rs, &no_default, &t);
    is_int(apx_fresh_state(&t, T(1)), APX_STALE_REVALIDATE,
           "junk max-age + swr: served stale while refreshed");
    is_int(apx_fresh_state(&t, T(31)), APX_STALE, "... until the window ends");
    ok(!strcmp(apx_fresh_reason(APX_STORE_INVALID), "invalid-cache-control"),
       "its reason word: invalid-cache-control");
}

/* The date and Age parsers on mutated inputs in exact-size buffers (ASan
 * catches a read past len; the unit-asan build runs this too): whatever
 * they accept is a real time that formats back to a string they parse to
 * the same value. Deterministic (a fixed LCG), no clock. */
static void test_parse_mutations(void)
{
    static const char *const seeds[] = {
        "Sun, 06 Nov 1994 08:49:37 GMT", "Sunday, 06-Nov-94 08:49:37 GMT",
        "Sun Nov  6 08:49:37 1994", "Tue, 29 Feb 2000 23:59:60 GMT",
        "60, 70", "2147483648"
    };
    static const char alphabet[] = "0123456789 ,:-GMTSunNovFebday\t\"";
    unsigned x = 12345, i, bad = 0, roundtrip_bad = 0, accepted = 0;

    for (i = 0; i < 50000; i++) {
        const char *seed = seeds[i % (sizeof(seeds) / sizeof(seeds[0]))];
        size_t len = strlen(seed), k, edits;
        char *buf, fmt[APR_RFC822_DATE_LEN];
        apr_time_t t;
        apr_int64_t age;

        x = x * 1103515245 + 12345;
        if ((x >> 16) % 8 == 0 && len)
            len = (x >> 8) % len;       /* truncated */
        buf = malloc(len ? len : 1);
        memcpy(buf, seed, len);
        edits = (x >> 20) % 4;
        for (k = 0; k < edits && len; k++) {
            x = x * 1103515245 + 12345;
            buf[(x >> 16) % len] = alphabet[(x >> 8) % (sizeof(alphabet) - 1)];
        }
        t = apx_fresh_parse_date(buf, len, NOW_2026);
        age = apx_fresh_parse_age(buf, len);
        if (age < -1 || age > DMAX)
            bad++;
        if (t) {
            accepted++;
            /* 0001-01-01 .. 9999-12-31 */
            if (t < apr_time_from_sec(-62135596800LL)
                || t > apr_time_from_sec(253402300800LL))
                bad++;
            if (t > 0) {
                /* APR formats no time before 1970 */
                apr_rfc822_date(fmt, t);
                if (apx_fresh_parse_date(fmt, strlen(fmt), NOW_2026) != t)
                    roundtrip_bad++;
            }
        }
        free(buf);
    }
    is_int(bad, 0, "mutated dates and ages: results always in range");
    is_int(roundtrip_bad, 0, "every accepted date formats back to itself");
    ok(accepted > 1000, "mutations still accept valid dates (%u)", accepted);
}

/* no-cache with a validator is stored to be revalidated on every use;
 * a response with a validator is kept `keep` past its freshness. */
static void test_revalidation(void)
{
    static const struct {
        const char *cc;
        int etag, lm, pragma;
        int want;
        const char *why;
    } cases[] = {
        { "no-cache", 0, 0, 0, APX_STORE_NO_CACHE, "no-cache, no validator: not stored" },
        { "no-cache", 1, 0, 0, APX_STORE_OK, "no-cache with an ETag: stored" },
        { "no-cache", 0, 1, 0, APX_STORE_OK, "no-cache with a Last-Modified: stored" },
        { "no-cache=\"x-a\"", 1, 0, 0, APX_STORE_OK, "no-cache with field names and an ETag" },
        { "no-cache, max-age=60", 1, 0, 0, APX_STORE_OK, "no-cache beside max-age=60" },
        { "no-cache, no-store", 1, 0, 0, APX_STORE_NO_STORE, "no-store wins" },
        { "no-cache, private", 1, 0, 0, APX_STORE_PRIVATE, "private wins" },
        { NULL, 1, 0, 1, APX_STORE_OK, "Pragma: no-cache with an ETag: stored" },
        { NULL, 0, 0, 1, APX_STORE_NO_CACHE, "Pragma: no-cache without one: not" },
    };
    apx_fresh_policy keep = { 0, 0, SEC(600), 0 };
    apx_fresh_req rq;
    apx_fresh_resp rs;
    apx_fresh_times t;
    size_t i;

    req_init(&rq);
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int got;

        resp_init(&rs, 200, cases[i].cc);
        rs.has_etag = cases[i].etag;
        rs.last_modified = cases[i].lm ? T(-1000) : 0;
        rs.pragma_no_cache = cases[i].pragma;
        memset(&t, 0, sizeof(t));
        got = apx_fresh_storable(&rq, &rs, &keep, &t);
        is_int(got, cases[i].want, cases[i].why);
        if (got == APX_STORE_OK) {
            is_int(apx_fresh_state(&t, T(0)), APX_STALE, "... stale at once: revalidated before use");
            ok(t.revalidate && !t.swr && !t.sie, "... never served stale");
            is_int(apx_fresh_keep_until(&t), t.fresh_until + SEC(600), "... kept 600 s for it");
        }
    }
    resp_init(&rs, 500, "no-cache");
    rs.has_etag = 1;
    is_int(apx_fresh_storable(&rq, &rs, &keep, &t), APX_STORE_STATUS,
           "no-cache does not make a 500 storable");
    resp_init(&rs, 200, "no-cache, stale-while-revalidate=30");
    rs.has_etag = 1;
    apx_fresh_storable(&rq, &rs, &keep, &t);
    is_int(apx_fresh_state(&t, T(1)), APX_STALE, "no-cache ignores stale-while-revalidate");

    resp_init(&rs, 200, "max-age=60");
    rs.has_etag = 1;
    apx_fresh_storable(&rq, &rs, &keep, &t);
    is_int(apx_fresh_keep_until(&t), T(660), "max-age=60 with an ETag: kept until 60 + 600 s");
    resp_init(&rs, 200, "max-age=60, stale-if-error=900");
    rs.has_etag = 1;
    apx_fresh_storable(&rq, &rs, &keep, &t);
    is_int(apx_fresh_keep_until(&t), T(960), "... or the longer stale-if-error window");
    resp_init(&rs, 200, "max-age=60");
    apx_fresh_storable(&rq, &rs, &keep, &t);
    is_int(apx_fresh_keep_until(&t), T(60), "no validator: not kept past freshness");
    resp_init(&rs, 200, "max-age=60, must-revalidate");
    rs.last_modified = T(-5);
    apx_fresh_storable(&rq, &rs, &keep, &t);
    is_int(apx_fresh_keep_until(&t), T(660), "must-revalidate with a validator: kept to be revalidated");
    is_int(apx_fresh_state(&t, T(61)), APX_STALE, "... and never served stale");
    resp_init(&rs, 200, "max-age=1");
    rs.has_etag = 1;
    rs.age = 5;
    is_int(apx_fresh_storable(&rq, &rs, &keep, &t), APX_STORE_EXPIRED,
           "stale on arrival is still not stored, validator or not");
}

/* RFC 9213 targeted fields: a Structured Field Dictionary or nothing. */
static void test_targeted(void)
{
    static const struct {
        const char *v;
        int valid;
        apr_int64_t max_age, s_maxage;
        unsigned flags;
    } t[] = {
        { "max-age=3600", 1, 3600, -1, 0 },
        { "  max-age=3600  ", 1, 3600, -1, 0 },
        { "max-age=2147483648", 1, DMAX, -1, 0 },
        { "max-age=99999999999", 1, DMAX, -1, 0 },
        { "max-age=0", 1, 0, -1, 0 },
        { "foobar, max-age=3600", 1, 3600, -1, 0 },
        { "max-age=10, max-age=20", 1, 20, -1, 0 },   /* the last counts */
        { "private", 1, -1, -1, APX_CC_PRIVATE },
        { "no-store", 1, -1, -1, APX_CC_NO_STORE },
        { "no-cache;x=1, s-maxage=5;y", 1, -1, 5, APX_CC_NO_CACHE },
        { "no-store=?0", 1, -1, -1, 0 },                /* false: absent */
        { "no-store=?1", 1, -1, -1, APX_CC_NO_STORE },
        { "max-age=\"10000\"", 1, -1, -1, 0 },          /* wrong type */
        { "max-age=-5", 1, -1, -1, 0 },
        { "max-age=1.5", 1, -1, -1, 0 },
        { "max-age=@1700000000", 1, -1, -1, 0 },
        { "max-age=tok, private", 1, -1, -1, APX_CC_PRIVATE },
        { "a=(1 2 \"x\");p, max-age=7", 1, 7, -1, 0 },
        { "b=:AAEC:, max-age=7", 1, 7, -1, 0 },
        { "max-age=10000, &&&&&", 0, -1, -1, 0 },
        { "MaX-aGe=3600", 0, -1, -1, 0 },               /* keys: lowercase */
        { "max-age =100", 0, -1, -1, 0 },
        { "max-age= 100", 0, -1, -1, 0 },
        { "max-age=100,", 0, -1, -1, 0 },
        { ",max-age=100", 0, -1, -1, 0 },
        { "max-age=1234567890123456", 0, -1, -1, 0 },   /* 16 digits */
        { "a=\"unterminated", 0, -1, -1, 0 },
        { "a=(1 2", 0, -1, -1, 0 },
        { "a=?2", 0, -1, -1, 0 },
        { "", 0, -1, -1, 0 },
        { "   ", 0, -1, -1, 0 },
    };
    size_t i;

    for (i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        apx_cc cc;
        int got;

        apx_cc_init(&cc);
        cc.flags = APX_CC_PUBLIC;       /* untouched when invalid */
        got = apx_cc_parse_targeted(&cc, t[i].v, strlen(t[i].v));
        is_int(got, t[i].valid, t[i].v);
        if (!t[i].valid) {
            ok(cc.flags == APX_CC_PUBLIC && cc.max_age == -1,
               "... an invalid field leaves cc as it was");
            continue;
        }
        ok(cc.max_age == t[i].max_age && cc.s_maxage == t[i].s_maxage
           && cc.flags == t[i].flags,
           "... max-age %" APR_INT64_T_FMT " s-maxage %" APR_INT64_T_FMT
           " flags %x", cc.max_age, cc.s_maxage, cc.flags);
    }
    ok(!apx_cc_parse_targeted(NULL, NULL, 0), "NULL is no field");
}

/* The policy's stale_on_error: a stale-if-error window of its own for
 * responses that allow stale use; the response's longer one wins. */
static void test_stale_on_error(void)
{
    apx_fresh_policy soe = { 0, 0, 0, SEC(600) };
    apx_fresh_times t;

    ok(store_cc(200, "max-age=60", &soe, &t) == APX_STORE_OK
       && t.sie == SEC(600), "max-age=60: sie from the policy (600 s)");
    is_int(apx_fresh_state(&t, T(60) + SEC(599)), APX_STALE_IF_ERROR,
           "... usable on error 599 s after it went stale");
    is_int(apx_fresh_state(&t, T(60) + SEC(601)), APX_STALE,
           "... not 601 s after");
    ok(apx_fresh_keep_until(&t) == T(660), "... kept until then");
    ok(store_cc(200, "max-age=60, stale-if-error=900", &soe, &t)
       == APX_STORE_OK && t.sie == SEC(900),
       "the response's longer stale-if-error wins");
    ok(store_cc(200, "max-age=60, must-revalidate", &soe, &t) == APX_STORE_OK
       && t.sie == 0 && t.revalidate, "must-revalidate: never stale");
    ok(store_cc(200, "max-age=60, proxy-revalidate", &soe, &t)
       == APX_STORE_OK && t.sie == 0, "proxy-revalidate: never stale");
    ok(store_cc(200, "s-maxage=60", &soe, &t) == APX_STORE_OK && t.sie == 0,
       "s-maxage: never stale");
    ok(store_cc(200, "max-age=60", &no_default, &t) == APX_STORE_OK
       && t.sie == 0, "policy 0: no window");
    is_int(store_cc(200, "max-age=0", &soe, &t), APX_STORE_EXPIRED,
           "stale on arrival is still not stored for it");
}

int main(void)
{
    test_cc_init();
    test_cc_flags();
    test_cc_field_lists();
    test_cc_deltas();
    test_cc_invalid();
    test_cc_lines();
    test_store_basic();
    test_store_directives();
    test_store_auth();
    test_store_must_understand();
    test_store_lifetime();
    test_store_age();
    test_store_stale_windows();
    test_state();
    test_age();
    test_vary();
    test_vary_truncation();
    test_not_modified();
    test_reason();
    test_default_ttl_from_arrival();
    test_parse_date();
    test_parse_age();
    test_invalid_freshness();
    test_revalidation();
    test_parse_mutations();
    test_targeted();
    test_stale_on_error();
    return done_testing();
}
