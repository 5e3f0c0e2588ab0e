/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* conf.c — parsers for directive values. They run at
 * configuration time (pconf, single thread). Every error names the
 * directive and the offending value, so `apachectl configtest` points the
 * administrator at the line to fix. */
#include <errno.h>
#include <stdlib.h>
#include "apr_strings.h"
#include "apr_lib.h"
#include "conf.h"

APLOG_USE_MODULE(asyncproxy);

static const char *bad_value(cmd_parms *cmd, const char *arg, const char *why)
{
    return apr_psprintf(cmd->pool, "%s: invalid value '%s': %s",
                        cmd->cmd->name, arg, why);
}

const char *apx_parse_uint(cmd_parms *cmd, const char *arg, unsigned min,
                           unsigned max, unsigned *out)
{
    char *end;
    unsigned long v;

    errno = 0;
    if (!apr_isdigit(*arg))
        return bad_value(cmd, arg, "not a whole number");
    v = strtoul(arg, &end, 10);
    if (errno || *end)
        return bad_value(cmd, arg, "not a whole number");
    if (v < min || v > max)
        return apr_psprintf(cmd->pool, "%s: invalid value '%s': must be "
                            "between %u and %u", cmd->cmd->name, arg, min, max);
    *out = (unsigned)v;
    return NULL;
}

/* "65536", "64K", "64k", "8M": bytes. */
const char *apx_parse_size(cmd_parms *cmd, const char *arg, apr_size_t min,
                           apr_size_t max, apr_size_t *out)
{
    char *end;
    unsigned long long v;
    unsigned long long mult = 1;

    errno = 0;
    if (!apr_isdigit(*arg))
        return bad_value(cmd, arg, "not a size (e.g. 65536, 64K, 8M)");
    v = strtoull(arg, &end, 10);
    if (errno)
        return bad_value(cmd, arg, "too large");
    switch (*end) {
    case 'k': case 'K': mult = 1024; end++; break;
    case 'm': case 'M': mult = 1024 * 1024; end++; break;
    case 'g': case 'G': mult = 1024ULL * 1024 * 1024; end++; break;
    default: break;
    }
    if (*end)
        return bad_value(cmd, arg, "not a size (e.g. 65536, 64K, 8M)");
    if (v > (unsigned long long)max / mult + 1)
        v = (unsigned long long)max + 1;
    else
        v *= mult;
    if (v < min || v > max)
        return apr_psprintf(cmd->pool, "%s: invalid value '%s': must be "
                            "between %" APR_SIZE_T_FMT " and %" APR_SIZE_T_FMT
                            " bytes", cmd->cmd->name, arg, min, max);
    *out = (apr_size_t)v;
    return NULL;
}

/* "30" or "30s" seconds, "500ms" milliseconds, "2m" minutes. */
const char *apx_parse_duration(cmd_parms *cmd, const char *arg,
                               apr_interval_time_t min,
                               apr_interval_time_t max,
                               apr_interval_time_t *out)
{
    char *end;
    unsigned long long v;
    apr_interval_time_t t;

    errno = 0;
    if (!apr_isdigit(*arg))
        return bad_value(cmd, arg, "not a duration (e.g. 30, 30s, 500ms)");
    v = strtoull(arg, &end, 10);
    if (errno || v > 1000000000ULL)
        return bad_value(cmd, arg, "too large");
    if (!*end || !strcasecmp(end, "s"))
        t = apr_time_from_sec(v);
    else if (!strcasecmp(end, "ms"))
        t = (apr_interval_time_t)v * 1000;
    else if (!strcasecmp(end, "m") || !strcasecmp(end, "min"))
        t = apr_time_from_sec(v * 60);
    else
        return bad_value(cmd, arg, "not a duration (e.g. 30, 30s, 500ms)");
    if (t < min || t > max)
        return apr_psprintf(cmd->pool, "%s: invalid value '%s': must be "
                            "between %" APR_TIME_T_FMT "ms and %"
                            APR_TIME_T_FMT "ms", cmd->cmd->name, arg,
                            min / 1000, max / 1000);
    *out = t;
    return NULL;
}
