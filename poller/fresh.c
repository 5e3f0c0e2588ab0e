/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* fresh.c — the rules of a shared HTTP cache (RFC 9111, RFC 5861): parsing
 * Cache-Control, the storing decision, freshness lifetime and age, stale
 * serving, conditional requests and the Vary part of a cache key.
 *
 * Threads: any. Nothing here allocates, locks or keeps state; every input
 * is a (pointer, length) or a NUL-terminated string the caller owns, and
 * "now" is always a parameter.
 *
 * Invariants:
 *  - Parsers never read past the length they are given, and always make
 *    progress: garbage costs at most one list element, never the rest of
 *    the field.
 *  - Where a field is malformed the answer is the more restrictive one
 *    (not stored, stale, no 304, no key).
 *  - Times are clamped to ±2^62 µs and delta-seconds to 2^31 s before any
 *    arithmetic, so no sum or difference below can overflow.
 */
#include <string.h>
#include <apr_lib.h>
#include "apx_fresh.h"

/* RFC 9111 §1.2.2: a delta-seconds too large to represent is 2^31. */
#define FRESH_DELTA_MAX ((apr_int64_t)1 << 31)
#define FRESH_TIME_MAX  ((apr_int64_t)1 << 62)
/* Longest field name Vary may list; a longer one makes the key malformed
 * (no real field name comes close, and the name is copied to the stack to
 * be NUL-terminated for get()). */
#define FRESH_NAME_MAX  256

static int is_tchar(unsigned char c)
{
    /* RFC 9110 §5.6.2 */
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
        || (c >= '0' && c <= '9'))
        return 1;
    return c && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static int is_ows(char c)
{
    return c == ' ' || c == '\t';
}

static unsigned char lower(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32) : c;
}

static int eq_nocase(const char *a, size_t alen, const char *b)
{
    size_t i;

    for (i = 0; i < alen; i++)
        if (!b[i] || lower((unsigned char)a[i]) != lower((unsigned char)b[i]))
            return 0;
    return b[alen] == '\0';
}

/* Case-insensitive order of two names, as bytes once lowered. */
static int cmp_nocase(const char *a, size_t alen, const char *b, size_t blen)
{
    size_t i, n = alen < blen ? alen : blen;

    for (i = 0; i < n; i++) {
        unsigned char x = lower((unsigned char)a[i]);
        unsigned char y = lower((unsigned char)b[i]);

        if (x != y)
            return x < y ? -1 : 1;
    }
    return alen == blen ? 0 : (alen < blen ? -1 : 1);
}

static apr_int64_t clamp_time(apr_int64_t t)
{
    return t > FRESH_TIME_MAX ? FRESH_TIME_MAX
         : t < -FRESH_TIME_MAX ? -FRESH_TIME_MAX : t;
}

static apr_int64_t clamp_delta(apr_int64_t s)
{
    return s < 0 ? 0 : s > FRESH_DELTA_MAX ? FRESH_DELTA_MAX : s;
}

/* Moves *pp past a quoted-string whose opening quote it points at; an
 * unterminated one ends at `end`. Returns 0 when the closing quote is
 * missing. */
static int skip_quoted(const char **pp, const char *end)
{
    const char *p = *pp + 1;

    while (p < end && *p != '"') {
        if (*p == '\\' && p + 1 < end)
            p++;
        p++;
    }
    if (p >= end) {
        *pp = end;
        return 0;
    }
    *pp = p + 1;
    return 1;
}

/* ---------------------------------------------------------------------------
 * Cache-Control
 */

void apx_cc_init(apx_cc *cc)
{
    cc->flags = 0;
    cc->max_age = cc->s_maxage = -1;
    cc->max_stale = cc->min_fresh = -1;
    cc->swr = cc->sie = -1;
}

/* delta-seconds (1*DIGIT), possibly from a quoted-string (escapes removed),
 * clamped to 2^31; -1 when it is not one. */
static apr_int64_t parse_delta(const char *v, size_t len, int quoted)
{
    apr_int64_t n = 0;
    size_t i;

    if (!len)
        return -1;
    for (i = 0; i < len; i++) {
        char c = v[i];

        if (quoted && c == '\\' && i + 1 < len)
            c = v[++i];
        if (c < '0' || c > '9')
            return -1;
        if (n < FRESH_DELTA_MAX)
            n = n * 10 + (c - '0');
    }
    return n > FRESH_DELTA_MAX ? FRESH_DELTA_MAX : n;
}

enum {
    CC_FLAG,            /* a flag honoured even when malformed: it only
                         * restricts what the cache does */
    CC_FLAG_WELL_FORMED,/* a flag that widens what the cache does: only
                         * taken when the element parsed cleanly */
    CC_DELTA_STRICT,    /* max-age, s-maxage: malformed or conflicting
                         * means APX_CC_INVALID */
    CC_DELTA_MIN,       /* stale windows: malformed is ignored, duplicates
                         * keep the smaller */
    CC_DELTA_MAX        /* min-fresh: duplicates keep the larger */
};

typedef struct cc_directive {
    const char *name;
    int kind;
    unsigned flag;
    size_t off;         /* of the apr_int64_t in apx_cc, for deltas */
    int bare_any;       /* given without a value means APX_CC_ANY */
} cc_directive;

#define CC_F(n, k, f)        { n, k, f, 0, 0 }
#define CC_D(n, k, m, a)     { n, k, 0, offsetof(apx_cc, m), a }

static const cc_directive cc_directives[] = {
    CC_D("max-age", CC_DELTA_STRICT, max_age, 0),
    CC_F("no-cache", CC_FLAG, APX_CC_NO_CACHE),
    CC_F("no-store", CC_FLAG, APX_CC_NO_STORE),
    CC_F("private", CC_FLAG, APX_CC_PRIVATE),
    CC_F("public", CC_FLAG_WELL_FORMED, APX_CC_PUBLIC),
    CC_D("s-maxage", CC_DELTA_STRICT, s_maxage, 0),
    CC_F("must-revalidate", CC_FLAG, APX_CC_MUST_REVALIDATE),
    CC_F("proxy-revalidate", CC_FLAG, APX_CC_PROXY_REVALIDATE),
    CC_F("no-transform", CC_FLAG, APX_CC_NO_TRANSFORM),
    CC_F("only-if-cached", CC_FLAG, APX_CC_ONLY_IF_CACHED),
    /* must-understand lifts no-store: it widens */
    CC_F("must-understand", CC_FLAG_WELL_FORMED, APX_CC_MUST_UNDERSTAND),
    CC_F("immutable", CC_FLAG_WELL_FORMED, APX_CC_IMMUTABLE),
    CC_D("max-stale", CC_DELTA_MIN, max_stale, 1),
    CC_D("min-fresh", CC_DELTA_MAX, min_fresh, 0),
    CC_D("stale-while-revalidate", CC_DELTA_MIN, swr, 0),
    CC_D("stale-if-error", CC_DELTA_MIN, sie, 0),
};

static void apply_directive(apx_cc *cc, const char *name, size_t nlen,
                            const char *val, size_t vlen, int has_val,
                            int quoted, int bad)
{
    const cc_directive *d = NULL;
    apr_int64_t *slot, v;
    size_t i;

    for (i = 0; i < sizeof(cc_directives) / sizeof(cc_directives[0]); i++)
        if (eq_nocase(name, nlen, cc_directives[i].name)) {
            d = &cc_directives[i];
            break;
        }
    if (!d)
        return;
    if (d->kind == CC_FLAG || (d->kind == CC_FLAG_WELL_FORMED && !bad)) {
        cc->flags |= d->flag;
        return;
    }
    if (d->kind == CC_FLAG_WELL_FORMED)
        return;

    slot = (apr_int64_t *)(void *)((char *)cc + d->off);
    if (!has_val && d->bare_any && !bad)
        v = APX_CC_ANY;
    else if (!has_val || bad || (v = parse_delta(val, vlen, quoted)) < 0) {
        if (d->kind == CC_DELTA_STRICT)
            cc->flags |= APX_CC_INVALID;
        return;
    }
    if (*slot < 0) {
        *slot = v;
    } else if (d->kind == CC_DELTA_MAX) {
        if (v > *slot)
            *slot = v;
    } else {
        /* RFC 9111 §4.2.1: with more than one value, use the first or
         * consider the response stale; we take the safe one, even for
         * equal values (one origin, two opinions). The smaller value is
         * kept for a caller that reads it. */
        if (d->kind == CC_DELTA_STRICT)
            cc->flags |= APX_CC_INVALID;
        if (v < *slot)
            *slot = v;
    }
}

void apx_cc_parse(apx_cc *cc, const char *value, size_t len)
{
    const char *p = value, *end = value + len;

    if (!value)
        return;
    while (p < end) {
        const char *name, *val = NULL;
        size_t nlen, vlen = 0;
        int has_val = 0, quoted = 0, bad = 0;

        while (p < end && (is_ows(*p) || *p == ','))
            p++;
        if (p == end)
            break;
        name = p;
        while (p < end && is_tchar((unsigned char)*p))
            p++;
        nlen = (size_t)(p - name);
        while (p < end && is_ows(*p))
            p++;
        if (p < end && *p == '=') {
            p++;
            has_val = 1;
            while (p < end && is_ows(*p))
                p++;
            if (p < end && *p == '"') {
                quoted = 1;
                val = p + 1;
                bad = !skip_quoted(&p, end);
                vlen = (size_t)(p - val) - !bad;
            } else {
                val = p;
                while (p < end && is_tchar((unsigned char)*p))
                    p++;
                vlen = (size_t)(p - val);
            }
            while (p < end && is_ows(*p))
                p++;
        }
        if (p < end && *p != ',') {
            /* garbage in this element: skip it, quotes and all */
            bad = 1;
            while (p < end && *p != ',') {
                if (*p == '"')
                    skip_quoted(&p, end);
                else
                    p++;
            }
        }
        if (nlen)
            apply_directive(cc, name, nlen, val, vlen, has_val, quoted, bad);
    }
}

/* ---------------------------------------------------------------------------
 * Targeted fields (RFC 9213): a Structured Field Dictionary (RFC 8941)
 */

enum { SF_BAD = 0, SF_INT, SF_TRUE, SF_FALSE, SF_OTHER };

#define SF_MEMBERS 32

typedef struct sf_member {
    const char *key;
    size_t klen;
    int type;
    const char *num;            /* SF_INT: the digits */
    size_t nlen;
} sf_member;

static int is_lcalpha(char c) { return c >= 'a' && c <= 'z'; }
static int is_digit(char c) { return c >= '0' && c <= '9'; }

static int sf_key(const char **pp, const char *end)
{
    const char *p = *pp;

    if (p == end || !(is_lcalpha(*p) || *p == '*'))
        return 0;
    for (p++; p < end && (is_lcalpha(*p) || is_digit(*p) || *p == '_'
                          || *p == '-' || *p == '.' || *p == '*'); p++)
        ;
    *pp = p;
    return 1;
}

/* A bare item: its type (SF_BAD when malformed); an Integer's digits. */
static int sf_bare_item(const char **pp, const char *end, const char **num,
                        size_t *nlen)
{
    const char *p = *pp, *d;
    int neg = 0, n = 0, f = 0;

    if (p == end)
        return SF_BAD;
    if (*p == '-' || is_digit(*p) || *p == '@') {
        int date = *p == '@';       /* RFC 9651's Date: not a delta */

        if (date)
            p++;
        if (p < end && *p == '-') {
            neg = 1;
            p++;
        }
        for (d = p; p < end && is_digit(*p); p++)
            n++;
        if (!n || n > 15)
            return SF_BAD;
        if (!date && p < end && *p == '.') {
            if (n > 12)
                return SF_BAD;
            for (p++; p < end && is_digit(*p); p++)
                f++;
            if (!f || f > 3)
                return SF_BAD;
            *pp = p;
            return SF_OTHER;
        }
        *pp = p;
        if (neg || date)
            return SF_OTHER;
        *num = d;
        *nlen = (size_t)n;
        return SF_INT;
    }
    if (*p == '"') {
        for (p++; p < end && *p != '"'; p++) {
            if (*p == '\\') {
                if (++p == end || (*p != '"' && *p != '\\'))
                    return SF_BAD;
            }
            else if (*p < 0x20 || *p > 0x7e) {
                return SF_BAD;
            }
        }
        if (p == end)
            return SF_BAD;
        *pp = p + 1;
        return SF_OTHER;
    }
    if (*p == ':') {
        for (p++; p < end && *p != ':'; p++)
            if (!(apr_isalnum(*p) || *p == '+' || *p == '/' || *p == '='))
                return SF_BAD;
        if (p == end)
            return SF_BAD;
        *pp = p + 1;
        return SF_OTHER;
    }
    if (*p == '?') {
        if (p + 1 == end || (p[1] != '0' && p[1] != '1'))
            return SF_BAD;
        *pp = p + 2;
        return p[1] == '1' ? SF_TRUE : SF_FALSE;
    }
    if (apr_isalpha(*p) || *p == '*') {
        for (p++; p < end && (is_tchar((unsigned char)*p) || *p == ':'
                              || *p == '/'); p++)
            ;
        *pp = p;
        return SF_OTHER;
    }
    return SF_BAD;
}

/* *( ";" *SP key [ "=" bare-item ] ) */
static int sf_params(const char **pp, const char *end)
{
    const char *p = *pp, *num = "";
    size_t nlen;

    while (p < end && *p == ';') {
        for (p++; p < end && *p == ' '; p++)
            ;
        if (!sf_key(&p, end))
            return 0;
        if (p < end && *p == '=') {
            p++;
            if (sf_bare_item(&p, end, &num, &nlen) == SF_BAD)
                return 0;
        }
    }
    *pp = p;
    return 1;
}

/* An Item or an Inner List, after "=": its type. */
static int sf_member_value(const char **pp, const char *end,
                           const char **num, size_t *nlen)
{
    const char *p = *pp;
    int type;

    if (p < end && *p == '(') {
        p++;
        for (;;) {
            while (p < end && *p == ' ')
                p++;
            if (p == end)
                return SF_BAD;
            if (*p == ')') {
                p++;
                break;
            }
            if (sf_bare_item(&p, end, num, nlen) == SF_BAD
                || !sf_params(&p, end))
                return SF_BAD;
            if (p < end && *p != ' ' && *p != ')')
                return SF_BAD;
        }
        type = SF_OTHER;
    }
    else if ((type = sf_bare_item(&p, end, num, nlen)) == SF_BAD) {
        return SF_BAD;
    }
    if (!sf_params(&p, end))
        return SF_BAD;
    *pp = p;
    return type;
}

int apx_cc_parse_targeted(apx_cc *cc, const char *value, size_t len)
{
    sf_member m[SF_MEMBERS];
    const char *p = value, *end = value + len;
    apx_cc out;
    int n = 0, i, j;

    if (!value)
        return 0;
    while (p < end && *p == ' ')
        p++;
    while (end > p && end[-1] == ' ')
        end--;
    if (p == end)
        return 0;
    for (;;) {
        sf_member x;

        x.key = p;
        if (!sf_key(&p, end))
            return 0;
        x.klen = (size_t)(p - x.key);
        x.num = "";
        x.nlen = 0;
        if (p < end && *p == '=') {
            p++;
            if ((x.type = sf_member_value(&p, end, &x.num, &x.nlen))
                == SF_BAD)
                return 0;
        }
        else {
            x.type = SF_TRUE;
            if (!sf_params(&p, end))
                return 0;
        }
        /* a key given again replaces the first */
        for (j = 0; j < n; j++)
            if (m[j].klen == x.klen && !memcmp(m[j].key, x.key, x.klen))
                break;
        if (j < n)
            m[j] = x;
        else if (n < SF_MEMBERS)
            m[n++] = x;
        while (p < end && (*p == ' ' || *p == '\t'))
            p++;
        if (p == end)
            break;
        if (*p++ != ',')
            return 0;
        while (p < end && (*p == ' ' || *p == '\t'))
            p++;
        if (p == end)
            return 0;           /* a trailing comma */
    }
    apx_cc_init(&out);
    for (i = 0; i < n; i++) {
        const cc_directive *d = NULL;
        size_t k;

        for (k = 0; k < sizeof(cc_directives) / sizeof(cc_directives[0]);
             k++)
            if (eq_nocase(m[i].key, m[i].klen, cc_directives[k].name)) {
                d = &cc_directives[k];
                break;
            }
        if (!d)
            continue;
        if (d->kind == CC_FLAG || d->kind == CC_FLAG_WELL_FORMED) {
            if (m[i].type == SF_TRUE)
                apply_directive(&out, m[i].key, m[i].klen, NULL, 0, 0, 0, 0);
        }
        else if (m[i].type == SF_INT) {
            apply_directive(&out, m[i].key, m[i].klen, m[i].num, m[i].nlen,
                            1, 0, 0);
        }
        else if (m[i].type == SF_TRUE && d->bare_any) {
            apply_directive(&out, m[i].key, m[i].klen, NULL, 0, 0, 0, 0);
        }
    }
    *cc = out;
    return 1;
}

/* ---------------------------------------------------------------------------
 * HTTP-date and Age
 */

static const char *const day_short[] = {
    "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"
};
static const char *const day_long[] = {
    "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday",
    "Sunday"
};
static const char *const month_name[] = {
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct",
    "Nov", "Dec"
};

/* n digits at p as a number, -1 when one is not a digit. */
static int digits(const char *p, int n)
{
    int v = 0;

    while (n--) {
        if (*p < '0' || *p > '9')
            return -1;
        v = v * 10 + (*p++ - '0');
    }
    return v;
}

/* Index of the name (exactly len bytes, case-sensitive: RFC 9110 §5.6.7)
 * in names, or -1. */
static int name_index(const char *p, size_t len, const char *const *names,
                      int n)
{
    int i;

    for (i = 0; i < n; i++)
        if (strlen(names[i]) == len && !memcmp(p, names[i], len))
            return i;
    return -1;
}

static int is_leap(int y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

/* "HH:MM:SS" -> seconds of the day, -1 when malformed (a leap second 60
 * is allowed, as the grammar's comment says). */
static int time_of_day(const char *p)
{
    int h, m, sec;

    if (p[2] != ':' || p[5] != ':')
        return -1;
    h = digits(p, 2);
    m = digits(p + 3, 2);
    sec = digits(p + 6, 2);
    if (h < 0 || h > 23 || m < 0 || m > 59 || sec < 0 || sec > 60)
        return -1;
    return h * 3600 + m * 60 + sec;
}

/* Seconds since the epoch of a checked calendar date and time, or 0 when
 * the day does not exist in that month. */
static apr_time_t civil_time(int year, int mon, int day, int tod)
{
    static const int mdays[] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31,
                                 30, 31 };
    static const int before[] = { 0, 31, 59, 90, 120, 151, 181, 212, 243,
                                  273, 304, 334 };
    apr_int64_t days, y1;

    if (year < 1 || day < 1
        || day > mdays[mon] + (mon == 1 && is_leap(year)))
        return 0;
    /* leap days before 1 January of year, counted from year 1 */
    y1 = year - 1;
    days = (apr_int64_t)(year - 1970) * 365
           + (y1 / 4 - y1 / 100 + y1 / 400) - (1969 / 4 - 1969 / 100
                                                + 1969 / 400)
           + before[mon] + (mon > 1 && is_leap(year)) + day - 1;
    return apr_time_from_sec(days * 86400 + tod);
}

apr_time_t apx_fresh_parse_date(const char *s, size_t len, apr_time_t now)
{
    const char *p, *comma;
    int day, mon, year, tod;

    if (!s)
        return 0;
    while (len && is_ows(*s)) {
        s++;
        len--;
    }
    while (len && is_ows(s[len - 1]))
        len--;

    if (len == 29 && s[3] == ',') {
        /* IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT */
        if (name_index(s, 3, day_short, 7) < 0 || s[4] != ' ' || s[7] != ' '
            || s[11] != ' ' || s[16] != ' ' || s[25] != ' '
            || memcmp(s + 26, "GMT", 3))
            return 0;
        day = digits(s + 5, 2);
        mon = name_index(s + 8, 3, month_name, 12);
        year = digits(s + 12, 4);
        tod = time_of_day(s + 17);
    }
    else if (len == 24 && s[3] == ' ') {
        /* asctime: Sun Nov  6 08:49:37 1994 */
        if (name_index(s, 3, day_short, 7) < 0 || s[7] != ' '
            || s[10] != ' ' || s[19] != ' ')
            return 0;
        mon = name_index(s + 4, 3, month_name, 12);
        day = s[8] == ' ' ? digits(s + 9, 1) : digits(s + 8, 2);
        tod = time_of_day(s + 11);
        year = digits(s + 20, 4);
    }
    else if ((comma = memchr(s, ',', len)) != NULL
             && s + len - comma == 24) {
        /* rfc850-date: Sunday, 06-Nov-94 08:49:37 GMT */
        int yy, ny;

        p = comma + 1;
        if (name_index(s, (size_t)(comma - s), day_long, 7) < 0
            || p[0] != ' ' || p[3] != '-' || p[7] != '-' || p[10] != ' '
            || p[19] != ' ' || memcmp(p + 20, "GMT", 3))
            return 0;
        day = digits(p + 1, 2);
        mon = name_index(p + 4, 3, month_name, 12);
        yy = digits(p + 8, 2);
        tod = time_of_day(p + 11);
        if (yy < 0)
            return 0;
        /* RFC 9110 §5.6.7: a two-digit year more than 50 years ahead of
         * now is the most recent past year with those digits */
        ny = 1970 + (int)(apr_time_sec(now > 0 ? now : 0) / 31556952);
        year = ny - ny % 100 + yy;
        if (year > ny + 50)
            year -= 100;
    }
    else {
        return 0;
    }
    if (day < 0 || mon < 0 || year < 0 || tod < 0)
        return 0;
    return civil_time(year, mon, day, tod);
}

apr_int64_t apx_fresh_parse_age(const char *s, size_t len)
{
    const char *p = s, *end = s + len, *m, *e;
    apr_int64_t n = 0;

    if (!s)
        return -1;
    /* RFC 9111 §5.1: of a list, the first member counts (empty list
     * elements are none, RFC 9110 §5.6.1) */
    for (;;) {
        while (p < end && (is_ows(*p) || *p == ','))
            p++;
        if (p == end)
            return -1;
        m = p;
        while (p < end && *p != ',')
            p++;
        e = p;
        while (e > m && is_ows(e[-1]))
            e--;
        if (e > m)
            break;
    }
    /* ... and anything but a non-negative integer is ignored */
    for (p = m; p < e; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        if (n < FRESH_DELTA_MAX)
            n = n * 10 + (*p - '0');
    }
    return n > FRESH_DELTA_MAX ? FRESH_DELTA_MAX : n;
}

/* ---------------------------------------------------------------------------
 * Storing, freshness, age
 */

/* RFC 9110 §15.1: cacheable by default. */
static int is_heuristic_status(int status)
{
    switch (status) {
    case 200: case 203: case 204: case 206: case 300: case 301: case 308:
    case 404: case 405: case 410: case 414: case 501:
        return 1;
    }
    return 0;
}

/* Status codes whose caching rules this cache implements, for
 * must-understand (§5.2.2.3): the cacheable-by-default ones, less 206
 * (no range support). */
static int is_understood_status(int status)
{
    return status != 206 && is_heuristic_status(status);
}

static int cc_is_empty(const apx_cc *cc)
{
    return !cc->flags && cc->max_age < 0 && cc->s_maxage < 0
        && cc->max_stale < 0 && cc->min_fresh < 0 && cc->swr < 0
        && cc->sie < 0;
}

/* freshness_lifetime (§4.2.1), before the policy's cap; -1 when nothing
 * explicit says. */
static apr_interval_time_t explicit_lifetime(const apx_fresh_resp *rs)
{
    apr_time_t date;

    /* §4.2.1: invalid or repeated freshness information: stale */
    if (rs->cc.flags & APX_CC_INVALID)
        return 0;
    if (rs->cc.s_maxage >= 0)
        return apr_time_from_sec(clamp_delta(rs->cc.s_maxage));
    if (rs->cc.max_age >= 0)
        return apr_time_from_sec(clamp_delta(rs->cc.max_age));
    if (!rs->has_expires)
        return -1;
    if (!rs->expires)
        return 0;   /* §5.3: an invalid Expires is in the past */
    date = clamp_time(rs->date ? rs->date : rs->response_time);
    if (clamp_time(rs->expires) <= date)
        return 0;
    return clamp_time(rs->expires) - date;
}

/* corrected_initial_age (§4.2.3). A missing Date is the receiving time
 * (RFC 9110 §6.6.1), so it adds no apparent age; a missing request_time
 * adds no response delay. */
static apr_interval_time_t initial_age(const apx_fresh_resp *rs)
{
    apr_time_t resp = clamp_time(rs->response_time);
    apr_interval_time_t apparent = 0, delay = 0, corrected;

    if (rs->date && resp > clamp_time(rs->date))
        apparent = resp - clamp_time(rs->date);
    if (rs->request_time && resp > clamp_time(rs->request_time))
        delay = resp - clamp_time(rs->request_time);
    corrected = delay;
    if (rs->age > 0)
        corrected += apr_time_from_sec(clamp_delta(rs->age));
    corrected = clamp_time(corrected);
    return apparent > corrected ? apparent : corrected;
}

int apx_fresh_storable(const apx_fresh_req *rq, const apx_fresh_resp *rs,
                       const apx_fresh_policy *pol, apx_fresh_times *t)
{
    const apx_cc *cc = &rs->cc;
    apr_interval_time_t lifetime, age;
    int explicit_fresh, no_cache, validator;

    if (!rq->method_get && !rq->method_head)
        return APX_STORE_METHOD;
    if (rs->status < 200 || rs->status > 599 || rs->status == 206
        || rs->status == 304)
        return APX_STORE_STATUS;
    if (rq->cc.flags & APX_CC_NO_STORE)
        return APX_STORE_NO_STORE;
    if (cc->flags & APX_CC_MUST_UNDERSTAND) {
        /* §5.2.2.3: a cache that understands the status ignores no-store */
        if (!is_understood_status(rs->status))
            return APX_STORE_MUST_UNDERSTAND;
    } else if (cc->flags & APX_CC_NO_STORE) {
        return APX_STORE_NO_STORE;
    }
    if (cc->flags & APX_CC_PRIVATE)
        return APX_STORE_PRIVATE;
    /* §5.2.2.4: no-cache may be stored, but every use is revalidated
     * first: only worth it with a validator to revalidate with */
    validator = rs->has_etag || rs->last_modified;
    no_cache = (cc->flags & APX_CC_NO_CACHE)
               || (rs->pragma_no_cache && cc_is_empty(cc));
    if (no_cache && !validator)
        return APX_STORE_NO_CACHE;
    /* §3.5: proxy-revalidate is not among the directives that allow it */
    if (rq->authorization
        && !(cc->flags & (APX_CC_PUBLIC | APX_CC_MUST_REVALIDATE))
        && cc->s_maxage < 0)
        return APX_STORE_AUTH;
    if (rs->set_cookie)
        return APX_STORE_SET_COOKIE;
    if (rs->vary_star)
        return APX_STORE_VARY_STAR;

    lifetime = explicit_lifetime(rs);
    explicit_fresh = lifetime >= 0;
    if (!explicit_fresh && !is_heuristic_status(rs->status)
        && !(cc->flags & APX_CC_PUBLIC))
        return APX_STORE_STATUS;
    age = initial_age(rs);
    if (no_cache) {
        lifetime = 0;
    }
    else if (!explicit_fresh) {
        if (pol->default_ttl <= 0)
            return APX_STORE_NO_FRESHNESS;
        /* The administrator's TTL counts from arrival: a backend slower
         * than a micro-cache TTL must still be cached (explicit freshness
         * keeps RFC 9111's conservative age, response delay included). */
        lifetime = clamp_time(pol->default_ttl) + age;
    }
    if (pol->max_ttl > 0 && lifetime > pol->max_ttl)
        lifetime = pol->max_ttl;
    if (lifetime <= age && !no_cache) {
        /* Stale on arrival: still worth storing while a stale window
         * lets it be served (a slow backend's max-age=1 with
         * stale-while-revalidate=30). */
        int revalidate = (cc->flags & (APX_CC_MUST_REVALIDATE
                                       | APX_CC_PROXY_REVALIDATE))
                         || cc->s_maxage >= 0;
        apr_int64_t window = cc->swr > cc->sie ? cc->swr : cc->sie;

        if (revalidate || window <= 0
            || lifetime + apr_time_from_sec(clamp_delta(window)) <= age)
            return (cc->flags & APX_CC_INVALID) ? APX_STORE_INVALID
                                                : APX_STORE_EXPIRED;
    }

    if (t) {
        t->response_time = clamp_time(rs->response_time);
        t->initial_age = age;
        t->lifetime = lifetime;
        t->fresh_until = t->response_time + lifetime - age;
        t->revalidate = (cc->flags & (APX_CC_MUST_REVALIDATE
                                      | APX_CC_PROXY_REVALIDATE))
                        || cc->s_maxage >= 0 || no_cache;
        t->keep = validator && pol->keep > 0 ? pol->keep : 0;
        t->swr = t->sie = 0;
        if (!t->revalidate) {
            if (cc->swr > 0)
                t->swr = apr_time_from_sec(clamp_delta(cc->swr));
            if (cc->sie > 0)
                t->sie = apr_time_from_sec(clamp_delta(cc->sie));
            if (pol->stale_on_error > t->sie)
                t->sie = clamp_time(pol->stale_on_error);
        }
    }
    return APX_STORE_OK;
}

const char *apx_fresh_reason(int why)
{
    static const char *const words[] = {
        "ok", "method", "status", "no-store", "private", "no-cache",
        "authorization", "set-cookie", "vary-star", "no-freshness",
        "expired", "invalid-cache-control", "must-understand"
    };

    if (why < 0 || (size_t)why >= sizeof(words) / sizeof(words[0]))
        return "unknown";
    return words[why];
}

int apx_fresh_state(const apx_fresh_times *t, apr_time_t now)
{
    apr_interval_time_t late = clamp_time(now) - clamp_time(t->fresh_until);

    if (late < 0)
        return APX_FRESH;
    if (t->revalidate)
        return APX_STALE;
    if (late < t->swr)
        return APX_STALE_REVALIDATE;
    if (late < t->sie)
        return APX_STALE_IF_ERROR;
    return APX_STALE;
}

apr_int64_t apx_fresh_age(const apx_fresh_times *t, apr_time_t now)
{
    apr_interval_time_t resident = clamp_time(now) - t->response_time;
    apr_interval_time_t age = t->initial_age + (resident > 0 ? resident : 0);

    return clamp_delta(apr_time_sec(age));
}

apr_time_t apx_fresh_keep_until(const apx_fresh_times *t)
{
    apr_interval_time_t extra = t->swr > t->sie ? t->swr : t->sie;

    if (t->revalidate || extra < 0)
        extra = 0;
    if (t->keep > extra)
        extra = t->keep;
    return t->fresh_until + extra;
}

/* ---------------------------------------------------------------------------
 * Conditional requests
 */

/* The opaque-tag of an entity-tag, without W/ and surrounding OWS. */
static void strip_weak(const char **s, size_t *len)
{
    const char *p = *s, *e = *s + *len;

    while (p < e && is_ows(*p))
        p++;
    while (e > p && is_ows(e[-1]))
        e--;
    if (e - p >= 2 && p[0] == 'W' && p[1] == '/')
        p += 2;
    *s = p;
    *len = (size_t)(e - p);
}

static int etag_list_matches(const char *list, const char *etag)
{
    const char *p = list, *end = list + strlen(list), *tag = etag;
    size_t tlen = etag ? strlen(etag) : 0;

    if (etag)
        strip_weak(&tag, &tlen);
    while (p < end) {
        const char *m;
        size_t mlen;

        while (p < end && (is_ows(*p) || *p == ','))
            p++;
        if (p == end)
            break;
        m = p;
        if (end - p >= 2 && p[0] == 'W' && p[1] == '/')
            p += 2;
        if (p < end && *p == '"') {
            skip_quoted(&p, end);
        } else {
            /* not an entity-tag: "*", or an unquoted tag some clients
             * send, compared as it is */
            while (p < end && *p != ',' && !is_ows(*p))
                p++;
        }
        mlen = (size_t)(p - m);
        if (mlen == 1 && *m == '*')
            return 1;   /* RFC 9110 §13.1.2: a current representation exists */
        strip_weak(&m, &mlen);
        if (etag && tlen && mlen == tlen && !memcmp(m, tag, tlen))
            return 1;
        /* anything else up to the next comma is garbage */
        while (p < end && *p != ',') {
            if (*p == '"')
                skip_quoted(&p, end);
            else
                p++;
        }
    }
    return 0;
}

int apx_fresh_not_modified(const char *if_none_match, apr_time_t ims,
                           const char *etag, apr_time_t last_modified)
{
    if (if_none_match)
        return etag_list_matches(if_none_match, etag);
    if (!ims || !last_modified)
        return 0;
    /* HTTP-dates have whole seconds */
    return apr_time_sec(last_modified) <= apr_time_sec(ims);
}

/* ---------------------------------------------------------------------------
 * Vary
 */

/* Next member of a comma list of tokens, trimmed; 0 at the end. */
static int next_name(const char **pp, const char *end, const char **name,
                     size_t *nlen)
{
    const char *p = *pp, *e;

    while (p < end && (is_ows(*p) || *p == ','))
        p++;
    *pp = p;
    if (p == end)
        return 0;
    *name = p;
    while (p < end && *p != ',')
        p++;
    e = p;
    while (e > *name && is_ows(e[-1]))
        e--;
    *nlen = (size_t)(e - *name);
    *pp = p;
    return 1;
}

static int check_vary(const char *vary, const char *end)
{
    const char *p = vary, *name;
    size_t nlen, i;

    while (next_name(&p, end, &name, &nlen)) {
        if (nlen == 1 && *name == '*')
            return 0;
        if (nlen >= FRESH_NAME_MAX)
            return 0;
        for (i = 0; i < nlen; i++)
            if (!is_tchar((unsigned char)name[i]))
                return 0;
    }
    return 1;
}

static void put_bytes(char *buf, size_t cap, size_t *n, const char *s,
                      size_t len)
{
    if (*n < cap) {
        size_t room = cap - *n;

        memcpy(buf + *n, s, len < room ? len : room);
    }
    *n += len;
}

/* Appends a field value with the members of its comma list trimmed, empty
 * members dropped and ", " collapsed; quoted strings are kept whole. */
static int put_value(char *buf, size_t cap, size_t *n, const char *v)
{
    const char *p = v, *end = v + strlen(v);
    int first = 1;

    if (memchr(v, '\r', (size_t)(end - v)) || memchr(v, '\n', (size_t)(end - v)))
        return 0;   /* could forge the key's own line structure */
    while (p < end) {
        const char *m, *e;

        while (p < end && is_ows(*p))
            p++;
        m = p;
        while (p < end && *p != ',') {
            if (*p == '"')
                skip_quoted(&p, end);
            else
                p++;
        }
        e = p;
        while (e > m && is_ows(e[-1]))
            e--;
        if (e > m) {
            if (!first)
                put_bytes(buf, cap, n, ",", 1);
            put_bytes(buf, cap, n, m, (size_t)(e - m));
            first = 0;
        }
        if (p < end)
            p++;    /* the comma */
    }
    return 1;
}

static int is_skipped(const char *const *skip, const char *name, size_t nlen)
{
    for (; skip && *skip; skip++)
        if (eq_nocase(name, nlen, *skip))
            return 1;
    return 0;
}

size_t apx_fresh_vary_key(const char *vary, const char *const *skip,
                          apx_fresh_get_fn get, void *baton,
                          char *buf, size_t cap)
{
    const char *end = vary ? vary + strlen(vary) : NULL;
    char prev[FRESH_NAME_MAX];
    size_t plen = 0, n = 0;
    int have_prev = 0;

    if (cap)
        buf[0] = '\0';
    if (vary && !check_vary(vary, end))
        return (size_t)-1;
    /* Sorted without allocating: each round picks the smallest name above
     * the previous one, which also drops duplicates. Vary lists are short;
     * check_vary bounded each name. */
    while (vary) {
        const char *p = vary, *name, *best = NULL;
        size_t nlen, blen = 0, i;
        const char *v;

        while (next_name(&p, end, &name, &nlen)) {
            if (have_prev && cmp_nocase(name, nlen, prev, plen) <= 0)
                continue;
            if (!best || cmp_nocase(name, nlen, best, blen) < 0) {
                best = name;
                blen = nlen;
            }
        }
        if (!best)
            break;
        for (i = 0; i < blen; i++)
            prev[i] = (char)lower((unsigned char)best[i]);
        prev[blen] = '\0';
        plen = blen;
        have_prev = 1;
        if (is_skipped(skip, prev, plen))
            continue;
        put_bytes(buf, cap, &n, prev, plen);
        v = get ? get(baton, prev) : NULL;
        if (v) {
            put_bytes(buf, cap, &n, ":", 1);
            if (!put_value(buf, cap, &n, v)) {
                if (cap)
                    buf[0] = '\0';
                return (size_t)-1;
            }
        }
        put_bytes(buf, cap, &n, "\n", 1);
    }
    if (cap)
        buf[n < cap ? n : cap - 1] = '\0';
    return n;
}
