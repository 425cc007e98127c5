/* GET /metrics: the counters and gauges of /status in the Prometheus text format
 * (version 0.0.4), for scraping. */
#ifndef TGB_METRICS_H
#define TGB_METRICS_H
#include "buf.h"
#include "config.h"

void metrics_render(struct buf *out, const struct config *cfg, double uptime, size_t rest_calls);

/* Local callers tgbridge closed on its own, by why. */
enum drop_reason {
    DROP_SLOW_READER,     /* more than --max-client-buffer waiting for it */
    DROP_CLIENT_TIMEOUT,  /* no complete request within --client-timeout */
    DROP_REASONS
};
void metrics_caller_dropped(enum drop_reason why);
#endif
