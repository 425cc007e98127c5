#include "health.h"
#include "callrec.h"
#include "frontend.h"
#include "mux.h"
#include "passthrough.h"
#include "redact.h"
#include "upstream.h"
#include "util.h"
#include <string.h>

static struct {
    const struct config *cfg;
    double started;
} H;

void health_init(const struct config *cfg)
{
    H.cfg = cfg;
    H.started = now_mono();
}

static unsigned long long dropped[DROP_REASONS];
static const char *const drop_names[DROP_REASONS] = {"slow-reader", "client-timeout", "memory-budget"};

void health_caller_dropped(enum drop_reason why)
{
    dropped[why]++;
}

static void head(struct buf *b, const char *name, const char *type, const char *help)
{
    buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void metric_u(struct buf *b, const char *name, const char *type, const char *help, unsigned long long v)
{
    head(b, name, type, help);
    buf_printf(b, "%s %llu\n", name, v);
}

/* Label values: backslash, double quote and newline escaped (exposition format). */
static void label_value(struct buf *b, const char *v)
{
    for (; *v; v++) {
        if (*v == '\\' || *v == '"')
            buf_printf(b, "\\%c", *v);
        else if (*v == '\n')
            buf_puts(b, "\\n");
        else
            buf_append(b, v, 1);
    }
}

static void render_metrics(struct buf *b)
{
    const struct config *cfg = H.cfg;
    double uptime = now_mono() - H.started;
    struct mux_stats ms;
    mux_get_stats(&ms);

    head(b, "tgbridge_info", "gauge", "Always 1; the labels say what tgbridge talks to and how.");
    buf_puts(b, "tgbridge_info{era=\"");
    label_value(b, upstream_era());
    buf_puts(b, "\",auth=\"");
    label_value(b, auth_mode_name(cfg->auth));
    buf_puts(b, "\"} 1\n");
    metric_u(b, "tgbridge_upstream_ready", "gauge",
             "1 while the gateway connection is open and authenticated, else 0.", upstream_ready());
    metric_u(b, "tgbridge_upstream_reconnects_total", "counter",
             "Gateway connections re-established after one was lost.", upstream_reconnects());
    metric_u(b, "tgbridge_upstream_rotations_total", "counter",
             "Make-before-break replacements of the gateway connection.", upstream_rotations());
    metric_u(b, "tgbridge_upstream_connections", "gauge",
             "Connections to the gateway: the persistent one, overflow ones, and one opening.",
             upstream_connection_count());
    for (int opened = 1; opened >= 0; opened--) {
        const char *name = opened ? "tgbridge_upstream_connections_opened_total"
                                  : "tgbridge_upstream_connections_closed_total";
        head(b, name, "counter", opened ? "Gateway connections opened, by why (startup, reconnect, overflow, rotation)."
                                        : "Gateway connections closed, by why (idle, rotated, lost, failed, shutdown).");
        const char *why;
        unsigned long long n;
        for (size_t i = 0; upstream_counter(i, opened, &why, &n); i++)
            buf_printf(b, "%s{reason=\"%s\"} %llu\n", name, why, n);
    }
    metric_u(b, "tgbridge_requests_submitted_total", "counter",
             "Requests from local callers admitted for the gateway.", ms.submitted);
    metric_u(b, "tgbridge_requests_completed_total", "counter",
             "Requests the gateway answered to the end (its own errors included).", ms.completed);
    metric_u(b, "tgbridge_requests_abandoned_total", "counter",
             "Requests whose caller went away before the answer (submitted = completed + failed + abandoned "
             "+ those still running).", ms.abandoned);
    head(b, "tgbridge_requests_failed_total", "counter",
         "Requests tgbridge answered with an error of its own, by error type.");
    const char *type;
    unsigned long long n;
    for (size_t i = 0; mux_failures(i, &type, &n); i++) {
        buf_puts(b, "tgbridge_requests_failed_total{type=\"");
        label_value(b, type);
        buf_printf(b, "\"} %llu\n", n);
    }
    metric_u(b, "tgbridge_gateway_bad_frames_total", "counter",
             "Gateway frames that were not valid JSON, not UTF-8 or not an object (never forwarded).",
             ms.bad_frames);
    metric_u(b, "tgbridge_requests_in_flight", "gauge",
             "Requests sent to the gateway and not finished (abandoned ones included).", ms.live - ms.queued);
    metric_u(b, "tgbridge_requests_queued", "gauge", "Requests waiting in tgbridge's queue for the gateway.",
             ms.queued);
    metric_u(b, "tgbridge_window_used", "gauge", "Entries of the gateway's window the current connection holds.",
             upstream_window_used());
    metric_u(b, "tgbridge_window_max", "gauge", "--max-inflight: the window tgbridge allows itself.",
             (unsigned long long)cfg->max_inflight);
    head(b, "tgbridge_connections", "gauge", "Local connections open, by front end.");
    for (size_t i = 0; frontend_at(i); i++) {
        struct frontend_stats fs = {0, 0, 0};
        frontend_at(i)->stats(&fs);
        buf_printf(b, "tgbridge_connections{frontend=\"%s\"} %zu\n", frontend_at(i)->name, fs.connections);
    }
    head(b, "tgbridge_active_calls", "gauge",
         "Requests not finished, by front end (REST: calls waiting for or streaming a reply).");
    for (size_t i = 0; frontend_at(i); i++) {
        struct frontend_stats fs = {0, 0, 0};
        frontend_at(i)->stats(&fs);
        buf_printf(b, "tgbridge_active_calls{frontend=\"%s\"} %zu\n", frontend_at(i)->name, fs.active);
    }
    head(b, "tgbridge_callers_dropped_total", "counter",
         "Local connections tgbridge closed itself: slow-reader (more than --max-client-buffer waiting), "
         "client-timeout (no complete request within --client-timeout).");
    for (int i = 0; i < DROP_REASONS; i++)
        buf_printf(b, "tgbridge_callers_dropped_total{reason=\"%s\"} %llu\n", drop_names[i], dropped[i]);

    metric_u(b, "tgbridge_passthrough_active", "gauge",
             "Pass-through calls running (routes that carry no envelope, each on its own gateway connection).",
             passthrough_active());
    head(b, "tgbridge_passthrough_calls_total", "counter",
         "Pass-through calls finished, by route and outcome (ok: the gateway's 1xx-3xx answer or a socket "
         "that opened; gateway-error: its 4xx/5xx; failed: tgbridge could not relay; aborted: the caller left).");
    for (int r = 0; r < PASS_ROUTE_N; r++)
        for (int o = 0; o < PASS_OUTCOME_N; o++)
            buf_printf(b, "tgbridge_passthrough_calls_total{route=\"%s\",outcome=\"%s\"} %llu\n",
                       pass_route_name((enum pass_route)r), pass_outcome_name((enum pass_outcome)o),
                       passthrough_count((enum pass_route)r, (enum pass_outcome)o));
    head(b, "tgbridge_passthrough_bytes_total", "counter",
         "Body and frame bytes relayed by pass-through calls: in = from callers to the gateway, out = back.");
    buf_printf(b, "tgbridge_passthrough_bytes_total{direction=\"in\"} %llu\n", passthrough_bytes(true));
    buf_printf(b, "tgbridge_passthrough_bytes_total{direction=\"out\"} %llu\n", passthrough_bytes(false));

    callrec_metrics(b);

    head(b, "tgbridge_uptime_seconds", "gauge", "Seconds since tgbridge started.");
    buf_printf(b, "tgbridge_uptime_seconds %.3f\n", uptime);
}

static const char *state_name(enum upstream_state s)
{
    switch (s) {
    case UP_RESOLVING: return "resolving";
    case UP_CONNECTING: return "connecting";
    case UP_AUTHENTICATING: return "authenticating";
    case UP_READY: return "ready";
    default: return "down";
    }
}

static void json_str(struct buf *b, const char *s)
{
    buf_json_string(b, s, strlen(s));
}

static unsigned render_ready(struct buf *b)
{
    if (upstream_ready()) {
        buf_puts(b, "{\"status\":\"ready\",\"era\":");
        json_str(b, upstream_era());
        buf_puts(b, "}");
        return 200;
    }
    buf_puts(b, "{\"status\":\"not-ready\",\"state\":");
    json_str(b, state_name(upstream_state()));
    buf_puts(b, ",\"reason\":");
    json_str(b, upstream_reason());
    buf_puts(b, "}");
    return 503;
}

static void render_status(struct buf *b)
{
    struct mux_stats ms;
    mux_get_stats(&ms);
    buf_puts(b, "{\"upstream\":{\"state\":");
    json_str(b, state_name(upstream_state()));
    buf_puts(b, ",\"reason\":");
    json_str(b, upstream_reason());
    buf_puts(b, ",\"gateway\":");
    json_str(b, H.cfg->gateway);
    buf_puts(b, ",\"era\":");
    json_str(b, upstream_era());
    buf_puts(b, ",\"auth\":");
    json_str(b, auth_mode_name(H.cfg->auth));
    buf_puts(b, ",\"default_workspace\":");
    if (upstream_default_workspace()[0])
        json_str(b, upstream_default_workspace());
    else
        buf_puts(b, "null");
    buf_puts(b, ",\"reauth\":");
    json_str(b, upstream_reauth_status());
    buf_printf(b, ",\"connections\":%zu,\"connection_list\":", upstream_connection_count());
    upstream_connections(b);
    buf_printf(b,
               ",\"reconnects\":%u,\"rotations\":%u,\"draining_old_connection\":%s},"
               "\"requests\":{\"in_flight\":%zu,\"queued\":%zu,\"window_used\":%zu,"
               "\"window_max\":%d,\"submitted\":%llu,\"completed\":%llu,\"failed\":%llu,\"abandoned\":%llu}",
               upstream_reconnects(), upstream_rotations(), upstream_draining() ? "true" : "false",
               ms.live - ms.queued, ms.queued, upstream_window_used(), H.cfg->max_inflight, ms.submitted,
               ms.completed, ms.failed, ms.abandoned);
    for (size_t i = 0; frontend_at(i); i++) {
        struct frontend_stats fs = {0, 0, 0};
        frontend_at(i)->stats(&fs);
        buf_printf(b, ",\"%s\":{\"connections\":%zu,\"active_calls\":%zu,\"unsent_bytes\":%zu}",
                   frontend_at(i)->name, fs.connections, fs.active, fs.unsent);
    }
    buf_printf(b, ",\"passthrough\":{\"active\":%zu,\"max\":%zu}", passthrough_active(), H.cfg->max_passthrough);
    buf_printf(b, ",\"uptime_seconds\":%.3f}", now_mono() - H.started);
}

unsigned health_render(enum health_page page, struct buf *out, const char **content_type)
{
    unsigned status = 200;
    *content_type = "application/json";
    switch (page) {
    case HEALTH_LIVE:
        buf_puts(out, "{\"status\":\"ok\"}");
        break;
    case HEALTH_READY:
        status = render_ready(out);
        break;
    case HEALTH_STATUS:
        render_status(out);
        break;
    case HEALTH_METRICS:
        *content_type = "text/plain; version=0.0.4; charset=utf-8";
        render_metrics(out);
        break;
    }
    redact_buf(out); /* reasons quote the gateway */
    return status;
}
