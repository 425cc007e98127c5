/* The pass-through's status source: calls running and finished, bytes relayed. */
#include "passthrough.h"
#include "status.h"

static const struct config *cfg;

static void metrics(struct buf *b)
{
    status_metric_u(b, "tgbridge_passthrough_active", "gauge",
                    "Pass-through calls running (routes that carry no envelope, each on its own gateway connection).",
                    passthrough_active());
    status_metric_head(b, "tgbridge_passthrough_calls_total", "counter",
                       "Pass-through calls finished, by route and outcome (ok: the gateway's 1xx-3xx answer or a "
                       "socket that opened; gateway-error: its 4xx/5xx; failed: tgbridge could not relay; aborted: "
                       "the caller left; truncated: the gateway's body ended before its end).");
    for (int r = 0; r < PASS_ROUTE_N; r++)
        for (int o = 0; o < PASS_OUTCOME_N; o++)
            buf_printf(b, "tgbridge_passthrough_calls_total{route=\"%s\",outcome=\"%s\"} %llu\n",
                       pass_route_name((enum pass_route)r), pass_outcome_name((enum pass_outcome)o),
                       passthrough_count((enum pass_route)r, (enum pass_outcome)o));
    status_metric_head(b, "tgbridge_passthrough_bytes_total", "counter",
                       "Body and frame bytes relayed by pass-through calls: in = from callers to the gateway, "
                       "out = back.");
    buf_printf(b, "tgbridge_passthrough_bytes_total{direction=\"in\"} %llu\n", passthrough_bytes(true));
    buf_printf(b, "tgbridge_passthrough_bytes_total{direction=\"out\"} %llu\n", passthrough_bytes(false));
}

static void status(struct buf *b)
{
    buf_printf(b, "\"passthrough\":{\"active\":%zu,\"max\":%zu}", passthrough_active(), cfg->max_passthrough);
}

static const struct status_source source = {"passthrough", status, metrics, NULL};

void passthrough_status_register(const struct config *c)
{
    cfg = c;
    status_register(&source);
}
