/* The front ends' status source: every registered front end's connections, calls
 * and unsent bytes, and the callers tgbridge dropped (health.c renders it without
 * knowing it). */
#include "frontend.h"
#include "stats.h"
#include "status.h"

static void frontends_metrics(struct buf *b)
{
    status_metric_head(b, "tgbridge_connections", "gauge", "Local connections open, by front end.");
    for (size_t i = 0; frontend_at(i); i++) {
        struct frontend_stats fs = {0, 0, 0};
        frontend_at(i)->stats(&fs);
        buf_printf(b, "tgbridge_connections{frontend=\"%s\"} %zu\n", frontend_at(i)->name, fs.connections);
    }
    status_metric_head(b, "tgbridge_active_calls", "gauge",
                       "Requests not finished, by front end (REST: calls waiting for or streaming a reply).");
    for (size_t i = 0; frontend_at(i); i++) {
        struct frontend_stats fs = {0, 0, 0};
        frontend_at(i)->stats(&fs);
        buf_printf(b, "tgbridge_active_calls{frontend=\"%s\"} %zu\n", frontend_at(i)->name, fs.active);
    }
    status_metric_head(b, "tgbridge_callers_dropped_total", "counter",
                       "Local connections tgbridge closed itself: slow-reader (more than --max-client-buffer "
                       "waiting), client-timeout (no complete request within --client-timeout).");
    for (int i = 0; i < DROP_REASONS; i++)
        buf_printf(b, "tgbridge_callers_dropped_total{reason=\"%s\"} %llu\n",
                   stats_drop_reason_name((enum drop_reason)i), stats_callers_dropped((enum drop_reason)i));
}

static void frontends_status(struct buf *b)
{
    for (size_t i = 0; frontend_at(i); i++) {
        struct frontend_stats fs = {0, 0, 0};
        frontend_at(i)->stats(&fs);
        buf_printf(b, "%s\"%s\":{\"connections\":%zu,\"active_calls\":%zu,\"unsent_bytes\":%zu}", i ? "," : "",
                   frontend_at(i)->name, fs.connections, fs.active, fs.unsent);
    }
}

static const struct status_source frontends_source = {"frontends", frontends_status, frontends_metrics, NULL};

void frontend_status_register(void)
{
    status_register(&frontends_source);
}
