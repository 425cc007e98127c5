#include "metrics.h"
#include "line_proto.h"
#include "mux.h"
#include "upstream.h"
#include <string.h>

static unsigned long long dropped[DROP_REASONS];
static const char *const drop_names[DROP_REASONS] = {"slow-reader", "client-timeout"};

void metrics_caller_dropped(enum drop_reason why)
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

void metrics_render(struct buf *b, const struct config *cfg, double uptime, size_t rest_calls)
{
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
    metric_u(b, "tgbridge_rest_active_calls", "gauge", "REST calls waiting for or streaming a reply.",
             rest_calls);
    head(b, "tgbridge_callers_dropped_total", "counter",
         "Local connections tgbridge closed itself: slow-reader (more than --max-client-buffer waiting), "
         "client-timeout (no complete request within --client-timeout).");
    for (int i = 0; i < DROP_REASONS; i++)
        buf_printf(b, "tgbridge_callers_dropped_total{reason=\"%s\"} %llu\n", drop_names[i], dropped[i]);
    metric_u(b, "tgbridge_line_pending_requests", "gauge", "Line-protocol requests not yet finished.",
             line_pending_requests());
    head(b, "tgbridge_uptime_seconds", "gauge", "Seconds since tgbridge started.");
    buf_printf(b, "tgbridge_uptime_seconds %.3f\n", uptime);
}
