/* Status sources (h2o's status handlers): each part of tgbridge that has something to
 * say on /status, /metrics or /readyz registers a source, and health.c renders them in
 * the order they were registered without knowing any of them. */
#ifndef TGB_STATUS_H
#define TGB_STATUS_H
#include <stdbool.h>
#include <stddef.h>
#include "buf.h"

struct status_source {
    const char *name;
    /* /status: appends its members of the top-level object, comma-separated, with no
     * comma before the first or after the last ("upstream":{...}).  May be NULL. */
    void (*status)(struct buf *out);
    /* /metrics: appends its families in the Prometheus text format 0.0.4.  May be NULL. */
    void (*metrics)(struct buf *out);
    /* /readyz: whether it is ready, appending members that say so or say why not
     * (comma-separated like status).  NULL: never stands in the way. */
    bool (*ready)(struct buf *out);
};

/* At start-up, before the loop runs; at most 16.  s must outlive the process. */
void status_register(const struct status_source *s);
/* The i-th registered source, or NULL past the last. */
const struct status_source *status_source_at(size_t i);

/* For sources: "# HELP name help" and "# TYPE name type" lines. */
void status_metric_head(struct buf *b, const char *name, const char *type, const char *help);
/* A family of one unlabelled sample. */
void status_metric_u(struct buf *b, const char *name, const char *type, const char *help, unsigned long long v);
/* A label value: backslash, double quote and newline escaped (exposition format). */
void status_label_value(struct buf *b, const char *v);
/* A JSON string literal of s. */
void status_json_str(struct buf *b, const char *s);
#endif
