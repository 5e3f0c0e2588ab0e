/* Licensed under the Apache License, Version 2.0 (the "License"); you may not
 * use this file except in compliance with the License.  You may obtain a copy
 * of the License at http://www.apache.org/licenses/LICENSE-2.0
 */

/* mod_asyncproxy.c — the module record: the directive table and the hook
 * registration. Nothing else lives here; the httpd-facing code is in
 * httpd/ (README: "Reading the code"), the engine in poller/ + include/.
 *
 * Threads: httpd calls the table and the registration once, at start-up,
 * single-threaded.
 */
#include "httpd.h"
#include "http_config.h"
#include "http_connection.h"
#include "http_protocol.h"
#include "http_request.h"
#include "ap_mpm.h"
#include "mpm_common.h"
#include "mod_status.h"

#include "httpd/conf.h"
#include "httpd/cache.h"
#include "httpd/child.h"
#include "httpd/conn.h"
#include "httpd/gate.h"
#include "httpd/handler.h"
#include "httpd/head.h"
#include "httpd/map.h"
#include "httpd/request.h"
#include "httpd/status.h"

module AP_MODULE_DECLARE_DATA asyncproxy_module;

static const command_rec asyncproxy_cmds[] = {
    AP_INIT_RAW_ARGS("AsyncProxyPass", apx_cmd_pass, NULL, RSRC_CONF | ACCESS_CONF,
                     "PATH URL|balancer://NAME/PATH [timeout= connecttimeout= streamtimeout= "
                     "tunneltimeout= upgrade= parkdelay= max= ttl= cache=] | PATH ! (in <Location>: URL [...] | !)"),
    AP_INIT_RAW_ARGS("<AsyncProxyBalancer", apx_cmd_balancer, NULL, RSRC_CONF,
                     "NAME>: a balancer group, used as AsyncProxyPass PATH "
                     "balancer://NAME/PATH; holds AsyncProxyMember and "
                     "AsyncProxyBalancerSet"),
    AP_INIT_RAW_ARGS("AsyncProxyMember", apx_cmd_member, NULL, RSRC_CONF,
                     "http://host[:port] [weight=N] [route=R] [max=N] "
                     "[ttl=D]: a member of the enclosing "
                     "<AsyncProxyBalancer>"),
    AP_INIT_RAW_ARGS("AsyncProxyBalancerSet", apx_cmd_balancer_set, NULL,
                     RSRC_CONF,
                     "[lbmethod=p2c-ewma|wrr|hash] [hashkey=cookie:NAME|"
                     "header:NAME|client] [stickysession=NAME] [failures=N] "
                     "[ejecttime=D] [maxeject=P%] [retrybudget=P%] "
                     "[slowstart=D] [failstatus=S,S...]: settings of the "
                     "enclosing <AsyncProxyBalancer>"),
    AP_INIT_RAW_ARGS("AsyncProxyHealthCheck", apx_cmd_health_check, NULL,
                     RSRC_CONF,
                     "METHOD PATH [interval=D] [timeout=D] [passes=N] "
                     "[fails=N] [expect=LO-HI] [host=NAME]: active health "
                     "checks of the members of the enclosing "
                     "<AsyncProxyBalancer>, one prober for all children"),
    AP_INIT_TAKE12("AsyncProxyPassReverse", apx_cmd_pass_reverse, NULL,
                   RSRC_CONF | ACCESS_CONF,
                   "PATH URL: rewrite Location, Content-Location and URI "
                   "response headers that start with URL"),
    AP_INIT_FLAG("AsyncProxyPreserveHost", apx_cmd_srv_flag, NULL, RSRC_CONF,
                 "On: send the client's Host header to the backend"),
    AP_INIT_FLAG("AsyncProxyAddHeaders", apx_cmd_srv_flag, NULL, RSRC_CONF,
                 "Off: do not add X-Forwarded-For/-Host/-Proto (default On)"),
    AP_INIT_FLAG("AsyncProxyAdoptSlowHeads", apx_cmd_srv_flag, NULL, RSRC_CONF,
                 "On (default): a connection whose request head is not "
                 "complete is taken from the MPM thread and its head awaited "
                 "in the poller, so no slow head holds a thread"),
    AP_INIT_TAKE1("AsyncProxyLaneThreads", apx_cmd_lane, NULL, RSRC_CONF,
                  "threads per child for other handlers' requests on "
                  "connections the module owns (default: ThreadsPerChild)"),
    AP_INIT_TAKE1("AsyncProxyLaneQueue", apx_cmd_lane, NULL, RSRC_CONF,
                  "such requests waiting for a lane thread per child; "
                  "beyond: 503 (default: 4 per lane thread)"),
    AP_INIT_ITERATE("AsyncProxyTrustedProxies", apx_cmd_trusted, NULL, RSRC_CONF,
                    "addresses or networks of proxies in front of this "
                    "server whose X-Forwarded-* are believed (default: "
                    "none; a client's are replaced by this hop's)"),
    AP_INIT_TAKE1("AsyncProxyTimeout", apx_cmd_srv_time, NULL, RSRC_CONF,
                  "backend response and I/O timeout (default: Timeout)"),
    AP_INIT_TAKE1("AsyncProxyConnectTimeout", apx_cmd_srv_time, NULL, RSRC_CONF,
                  "backend connect timeout (default 5s)"),
    AP_INIT_TAKE1("AsyncProxyStreamTimeout", apx_cmd_srv_time, NULL, RSRC_CONF,
                  "longest silence between two reads of a response body "
                  "without a length, e.g. SSE (default 300s)"),
    AP_INIT_TAKE1("AsyncProxyTunnelTimeout", apx_cmd_srv_time, NULL, RSRC_CONF,
                  "longest time an upgraded connection (WebSocket) may "
                  "move nothing either way (default 300s)"),
    AP_INIT_TAKE1("AsyncProxyParkDelay", apx_cmd_srv_time, NULL, RSRC_CONF,
                  "how long the first thread waits for a fast response "
                  "before parking the request (default 5ms)"),
    AP_INIT_TAKE1("AsyncProxyMaxParked", apx_cmd_max_parked, NULL, RSRC_CONF,
                  "parked requests per child; beyond it 503 with "
                  "Retry-After (default 10000)"),
    AP_INIT_TAKE1("AsyncProxyRetryAfter", apx_cmd_retry_after, NULL, RSRC_CONF,
                  "seconds sent in Retry-After with a 503 (default 1)"),
    AP_INIT_TAKE12("AsyncProxyWorkers", apx_cmd_workers, NULL, RSRC_CONF,
                   "MIN [MAX]: module worker threads per child (elastic "
                   "between MIN and MAX; default 2 8)"),
    AP_INIT_TAKE1("AsyncProxyStackSize", apx_cmd_stack_size, NULL, RSRC_CONF,
                  "coroutine stack size per in-flight request, e.g. 128K "
                  "(32K..8M; only touched pages are resident)"),
    AP_INIT_FLAG("AsyncProxyCache", apx_hc_cmd_flag, NULL,
                 RSRC_CONF | ACCESS_CONF,
                 "On: store cacheable responses of this scope in memory "
                 "(default Off)"),
    AP_INIT_FLAG("AsyncProxyCacheGzip", apx_hc_cmd_flag, NULL,
                 RSRC_CONF | ACCESS_CONF,
                 "Off: store compressible bodies as they came (default On: "
                 "one gzip copy, served decompressed where not accepted)"),
    AP_INIT_TAKE1("AsyncProxyCacheTTL", apx_hc_cmd_take1, NULL,
                  RSRC_CONF | ACCESS_CONF,
                  "lifetime of responses without explicit freshness, e.g. "
                  "500ms or 10s; off (default): such responses are not "
                  "stored"),
    AP_INIT_TAKE1("AsyncProxyCacheStaleOnError", apx_hc_cmd_take1, NULL,
                  RSRC_CONF | ACCESS_CONF,
                  "how long past its freshness a stored response is served "
                  "when the backend fails (5xx, timeout, refused, closed), "
                  "unless it forbids stale use; e.g. 30s; off; default "
                  "10m"),
    AP_INIT_TAKE1("AsyncProxyCacheSize", apx_hc_cmd_take1, NULL, RSRC_CONF,
                  "memory budget of the response cache per child, e.g. 64M "
                  "(default)"),
    AP_INIT_TAKE1("AsyncProxyCacheMaxObject", apx_hc_cmd_take1, NULL,
                  RSRC_CONF, "largest body stored, e.g. 1M (default)"),
    AP_INIT_TAKE1("AsyncProxyCacheWait", apx_hc_cmd_take1, NULL, RSRC_CONF,
                  "longest a request waits for another request's fetch of "
                  "the same object before going to the backend itself "
                  "(default 10s)"),
    { NULL }
};

/* Hooks in the order of a connection's and a request's life. Where two
 * hooks share a phase and an order, their registration order below is the
 * order they run in. */
static void asyncproxy_register_hooks(apr_pool_t *p)
{
    /* mod_ssl's process_connection runs the TLS handshake with a blocking
     * read; ours comes first and reads without blocking. */
    static const char *const before_ssl[] = { "mod_ssl.c", NULL };

    /* configuration (conf.c) */
    ap_hook_pre_config(apx_conf_pre_config, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_check_config(apx_conf_check_config, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_post_config(apx_conf_post_config, NULL, NULL, APR_HOOK_MIDDLE);

    /* the child: adopted-connection list first, then the engine (child.c) */
    ap_hook_child_init(apx_conn_child_init, NULL, NULL, APR_HOOK_FIRST);
    ap_hook_child_init(apx_child_init, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_child_stopping(apx_child_stopping, NULL, NULL, APR_HOOK_MIDDLE);

    /* a connection (conn.c; the gate's sequence bumps, gate.c) */
    ap_hook_pre_connection(apx_gate_pre_connection, NULL, NULL,
                           APR_HOOK_REALLY_FIRST);
    /* after mod_reqtimeout's (FIRST) has put its filters on */
    ap_hook_process_connection(apx_conn_process, NULL, before_ssl,
                               APR_HOOK_MIDDLE);
    ap_hook_suspend_connection(apx_conn_suspend, NULL, NULL,
                               APR_HOOK_MIDDLE);
    ap_hook_resume_connection(apx_gate_resume_connection, NULL, NULL,
                              APR_HOOK_MIDDLE);

    /* a request: its head (gate.c, conn.c), its mapping (map.c), its
     * handler (handler.c, status.c) */
    ap_hook_create_request(apx_gate_create_request, NULL, NULL,
                           APR_HOOK_REALLY_FIRST);
    ap_hook_post_read_request(apx_conn_drop_h2c, NULL, NULL,
                              APR_HOOK_REALLY_FIRST);
    ap_hook_translate_name(apx_map_translate, NULL, NULL, APR_HOOK_FIRST);
    ap_hook_map_to_storage(apx_map_to_storage, NULL, NULL, APR_HOOK_FIRST);
    ap_hook_fixups(apx_map_fixups, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_handler(apx_handler_lane, NULL, NULL, APR_HOOK_REALLY_FIRST);
    ap_hook_handler(apx_handler_run, NULL, NULL, APR_HOOK_FIRST);
    ap_hook_handler(apx_status_handler, NULL, NULL, APR_HOOK_MIDDLE);
    APR_OPTIONAL_HOOK(ap, status_hook, apx_status_hook, NULL, NULL,
                      APR_HOOK_MIDDLE);

    /* filters: the head read ahead (head.c), the streams' NOFLUSH switch
     * (request.c) */
    apx_head_register_filter(p);
    apx_stream_register_filter(p);
}

AP_DECLARE_MODULE(asyncproxy) = {
    STANDARD20_MODULE_STUFF,
    apx_conf_create_dir,        /* per-directory config creator */
    apx_conf_merge_dir,         /* dir config merger */
    apx_conf_create_srv,        /* server config creator */
    apx_conf_merge_srv,         /* server config merger */
    asyncproxy_cmds,            /* command table */
    asyncproxy_register_hooks,  /* hooks */
    AP_MODULE_FLAG_NONE         /* flags */
};
