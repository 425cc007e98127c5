/* The upstream's status source: its connections to the gateway (the pool) on /status
 * and /metrics, and whether tgbridge is ready on /readyz. */
#include "upstream.h"
#include "buf.h"
#include "status.h"

static const struct config *cfg;

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

static void counters(struct buf *b)
{
    for (int opened = 1; opened >= 0; opened--) {
        const char *name = opened ? "tgbridge_upstream_connections_opened_total"
                                  : "tgbridge_upstream_connections_closed_total";
        status_metric_head(b, name, "counter",
                           opened ? "Gateway connections opened, by why (startup, reconnect, overflow, rotation)."
                                  : "Gateway connections closed, by why (idle, rotated, lost, failed, shutdown).");
        const char *why;
        unsigned long long n;
        for (size_t i = 0; upstream_counter(i, opened, &why, &n); i++)
            buf_printf(b, "%s{reason=\"%s\"} %llu\n", name, why, n);
    }
}

static void metrics(struct buf *b)
{
    status_metric_head(b, "tgbridge_info", "gauge", "Always 1; the labels say what tgbridge talks to and how.");
    buf_puts(b, "tgbridge_info{era=\"");
    status_label_value(b, upstream_era());
    buf_puts(b, "\",auth=\"");
    status_label_value(b, auth_mode_name(cfg->auth));
    buf_puts(b, "\"} 1\n");
    status_metric_u(b, "tgbridge_upstream_ready", "gauge",
                    "1 while the gateway connection is open and authenticated, else 0.", upstream_ready());
    status_metric_u(b, "tgbridge_upstream_reconnects_total", "counter",
                    "Gateway connections re-established after one was lost.", upstream_reconnects());
    status_metric_u(b, "tgbridge_upstream_rotations_total", "counter",
                    "Make-before-break replacements of the gateway connection.", upstream_rotations());
    status_metric_u(b, "tgbridge_upstream_connections", "gauge",
                    "Connections to the gateway: the persistent one, overflow ones, and one opening.",
                    upstream_connection_count());
    status_metric_u(b, "tgbridge_upstream_caller_pools", "gauge",
                    "Callers' own gateway identities (--policy) with a pool of connections.",
                    upstream_caller_pool_count());
    status_metric_u(b, "tgbridge_upstream_identities_refused_total", "counter",
                    "Calls refused with too-many-identities (--max-caller-pools, --max-upstream-connections).",
                    upstream_identities_refused());
    counters(b);
}

/* With no gateway given: the candidates, and the one kept (null while none is; then
 * "gateway" is the one being tried). */
static void discovery(struct buf *b)
{
    buf_puts(b, ",\"gateway_discovered\":");
    if (!cfg->gateway_discover) {
        buf_puts(b, "null");
        return;
    }
    buf_puts(b, "{\"candidates\":[");
    for (size_t i = 0; i < GATEWAY_CANDIDATES; i++) {
        buf_puts(b, i ? "," : "");
        status_json_str(b, gateway_candidates[i]);
    }
    buf_puts(b, "],\"chosen\":");
    if (upstream_gateway_known())
        status_json_str(b, cfg->gateway);
    else
        buf_puts(b, "null");
    buf_puts(b, "}");
}

static void status(struct buf *b)
{
    buf_puts(b, "\"upstream\":{\"state\":");
    status_json_str(b, state_name(upstream_state()));
    buf_puts(b, ",\"reason\":");
    status_json_str(b, upstream_reason());
    buf_puts(b, ",\"gateway\":");
    status_json_str(b, cfg->gateway);
    discovery(b);
    buf_puts(b, ",\"era\":");
    status_json_str(b, upstream_era());
    buf_puts(b, ",\"auth\":");
    status_json_str(b, auth_mode_name(cfg->auth));
    buf_puts(b, ",\"default_workspace\":");
    if (upstream_default_workspace()[0])
        status_json_str(b, upstream_default_workspace());
    else
        buf_puts(b, "null");
    buf_puts(b, ",\"reauth\":");
    status_json_str(b, upstream_reauth_status());
    buf_printf(b, ",\"connections\":%zu,\"connection_list\":", upstream_connection_count());
    upstream_connections(b);
    buf_printf(b, ",\"reconnects\":%u,\"rotations\":%u,\"draining_old_connection\":%s", upstream_reconnects(),
               upstream_rotations(), upstream_draining() ? "true" : "false");
    buf_puts(b, ",\"caller_pools\":"); /* --policy: callers' own gateway identities, by name */
    upstream_caller_pools(b);
    buf_puts(b, "}");
}

static bool ready(struct buf *b)
{
    if (upstream_ready()) {
        buf_puts(b, "\"era\":");
        status_json_str(b, upstream_era());
        return true;
    }
    buf_puts(b, "\"state\":");
    status_json_str(b, state_name(upstream_state()));
    buf_puts(b, ",\"reason\":");
    status_json_str(b, upstream_reason());
    return false;
}

static const struct status_source source = {"upstream", status, metrics, ready};

void upstream_status_register(const struct config *c)
{
    cfg = c;
    status_register(&source);
}
