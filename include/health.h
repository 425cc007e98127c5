/* What tgbridge says about itself: /healthz, /readyz, /status (JSON) and /metrics
 * (Prometheus text format 0.0.4), rendered in one place from the status sources the
 * parts of tgbridge registered (status.h), the front ends and the ground-floor
 * counters (stats.h), redacted like everything that leaves the process. */
#ifndef TGB_HEALTH_H
#define TGB_HEALTH_H
#include "buf.h"

enum health_page { HEALTH_LIVE, HEALTH_READY, HEALTH_STATUS, HEALTH_METRICS };

/* Registers the front ends' status source: /status and /metrics show the sources in
 * the order they were registered (main.c). */
void health_init(void);
/* Appends the page to out; returns its HTTP status and its Content-Type. */
unsigned health_render(enum health_page page, struct buf *out, const char **content_type);
#endif
