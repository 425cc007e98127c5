/* GET /metrics: the counters and gauges of /status in the Prometheus text format
 * (version 0.0.4), for scraping. */
#ifndef TGB_METRICS_H
#define TGB_METRICS_H
#include "buf.h"
#include "config.h"

void metrics_render(struct buf *out, const struct config *cfg, double uptime, size_t rest_calls);
#endif
