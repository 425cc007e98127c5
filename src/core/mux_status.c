/* The mux's status source: the requests it carries, on /status and /metrics. */
#include "mux.h"
#include "buf.h"
#include "status.h"

static const struct config *cfg;
static const struct mux_sink *sink;

static size_t window_used(void)
{
    return sink && sink->window_used ? sink->window_used() : 0;
}

static void metrics(struct buf *b)
{
    struct mux_stats ms;
    mux_get_stats(&ms);
    status_metric_u(b, "tgbridge_requests_submitted_total", "counter",
                    "Requests from local callers admitted for the gateway.", ms.submitted);
    status_metric_u(b, "tgbridge_requests_completed_total", "counter",
                    "Requests the gateway answered to the end (its own errors included).", ms.completed);
    status_metric_u(b, "tgbridge_requests_abandoned_total", "counter",
                    "Requests whose caller went away before the answer (submitted = completed + failed + abandoned "
                    "+ those still running).", ms.abandoned);
    status_metric_head(b, "tgbridge_requests_failed_total", "counter",
                       "Requests tgbridge answered with an error of its own, by error type.");
    const char *type;
    unsigned long long n;
    for (size_t i = 0; mux_failures(i, &type, &n); i++) {
        buf_puts(b, "tgbridge_requests_failed_total{type=\"");
        status_label_value(b, type);
        buf_printf(b, "\"} %llu\n", n);
    }
    status_metric_u(b, "tgbridge_gateway_bad_frames_total", "counter",
                    "Gateway frames that were not valid JSON, not UTF-8 or not an object (never forwarded).",
                    ms.bad_frames);
    status_metric_u(b, "tgbridge_requests_in_flight", "gauge",
                    "Requests sent to the gateway and not finished (abandoned ones included).", ms.live - ms.queued);
    status_metric_u(b, "tgbridge_requests_queued", "gauge", "Requests waiting in tgbridge's queue for the gateway.",
                    ms.queued);
    status_metric_u(b, "tgbridge_window_used", "gauge",
                    "Entries of the gateway's window the current connection holds.", window_used());
    status_metric_u(b, "tgbridge_window_max", "gauge", "--max-inflight: the window tgbridge allows itself.",
                    (unsigned long long)cfg->max_inflight);
}

static void status(struct buf *b)
{
    struct mux_stats ms;
    mux_get_stats(&ms);
    buf_printf(b,
               "\"requests\":{\"in_flight\":%zu,\"queued\":%zu,\"window_used\":%zu,"
               "\"window_max\":%d,\"submitted\":%llu,\"completed\":%llu,\"failed\":%llu,\"abandoned\":%llu}",
               ms.live - ms.queued, ms.queued, window_used(), cfg->max_inflight, ms.submitted, ms.completed,
               ms.failed, ms.abandoned);
}

static const struct status_source source = {"requests", status, metrics, NULL};

void mux_status_register(const struct config *c, const struct mux_sink *s)
{
    cfg = c;
    sink = s;
    status_register(&source);
}
