/* What tgbridge says about itself: /healthz, /readyz, /status (JSON) and /metrics
 * (Prometheus text format 0.0.4), rendered in one place from the upstream, the mux and
 * every registered front end, redacted like everything that leaves the process. */
#ifndef TGB_HEALTH_H
#define TGB_HEALTH_H
#include "buf.h"
#include "config.h"

enum health_page { HEALTH_LIVE, HEALTH_READY, HEALTH_STATUS, HEALTH_METRICS };

void health_init(const struct config *cfg);
/* Appends the page to out; returns its HTTP status and its Content-Type. */
unsigned health_render(enum health_page page, struct buf *out, const char **content_type);

/* Local callers tgbridge closed on its own, by why (counted for /metrics). */
enum drop_reason {
    DROP_SLOW_READER,     /* more than --max-client-buffer waiting for it */
    DROP_CLIENT_TIMEOUT,  /* no complete request within --client-timeout */
    DROP_MEMORY_BUDGET,   /* its request would take the bytes being received past --max-assembling */
    DROP_REASONS
};
void health_caller_dropped(enum drop_reason why);
#endif
