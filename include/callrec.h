/* One finished call, whatever front end carried it: written to the access log (one
 * line at info, --access-log) and counted in the latency histograms and byte counters
 * of /metrics.  The field names are the metric label names, on every front end. */
#ifndef TGB_CALLREC_H
#define TGB_CALLREC_H
#include <stdint.h>
#include "buf.h"
#include "config.h"

enum call_outcome {
    CALL_OK,            /* answered to the end (HTTP 1xx-3xx) */
    CALL_GATEWAY_ERROR, /* the gateway's own error (a 4xx/5xx it chose, an error frame) */
    CALL_FAILED,        /* tgbridge answered with an error of its own (timeout, down, bad input) */
    CALL_ABORTED,       /* the caller went away first */
    CALL_TRUNCATED,     /* the gateway's body ended before its end: so did the caller's */
    CALL_OUTCOMES
};

struct call_record {
    const char *frontend;    /* "rest", "line", "ws", "bulk" */
    const char *caller;      /* the caller's name under --policy, or NULL */
    const char *method;      /* HTTP method, or NULL */
    const char *route;       /* the request path (REST), or NULL */
    const char *service;     /* envelope service, or the pass-through route's name */
    const char *flow;        /* or NULL */
    int status;              /* HTTP status, or 0 */
    enum call_outcome outcome;
    const char *error;       /* the error type, when there was one */
    uint64_t bytes_in, bytes_out;
    double started;          /* now_mono() when the call came in */
    double first_part;       /* when its first streamed part went out; 0: none */
    const char *upstream_id; /* the envelope id the gateway logs, or NULL */
};

/* Also registers the "calls" status source (its histograms on /metrics). */
void callrec_init(const struct config *cfg);
void callrec_finish(const struct call_record *r);
const char *callrec_outcome_name(enum call_outcome o);
/* The histograms and counters, in the Prometheus text format. */
void callrec_metrics(struct buf *out);
#endif
