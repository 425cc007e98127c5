#include "health.h"
#include "redact.h"
#include "status.h"
#include "util.h"

static struct {
    double started;
} H;

void health_init(void)
{
    H.started = now_mono();
}

/* ---- the pages ------------------------------------------------------------------- */

/* Appends fn's members, after a comma unless they are the object's first (the object
 * opened at `open`); nothing when fn has none. */
static void members(struct buf *b, size_t open, void (*fn)(struct buf *))
{
    size_t mark = b->len;
    if (b->len > open)
        buf_puts(b, ",");
    size_t start = b->len;
    fn(b);
    if (b->len == start)
        b->len = mark;
}

static void render_metrics(struct buf *b)
{
    for (size_t i = 0; status_source_at(i); i++)
        if (status_source_at(i)->metrics)
            status_source_at(i)->metrics(b);
    status_metric_head(b, "tgbridge_uptime_seconds", "gauge", "Seconds since tgbridge started.");
    buf_printf(b, "tgbridge_uptime_seconds %.3f\n", now_mono() - H.started);
}

static void render_status(struct buf *b)
{
    buf_puts(b, "{");
    size_t open = b->len;
    for (size_t i = 0; status_source_at(i); i++)
        if (status_source_at(i)->status)
            members(b, open, status_source_at(i)->status);
    buf_printf(b, "%s\"uptime_seconds\":%.3f}", b->len > open ? "," : "", now_mono() - H.started);
}

/* Ready when every source is.  The members say why not (those of the sources that
 * are not ready), or, when all are, what they are ready with. */
static unsigned render_ready(struct buf *b)
{
    bool all = true;
    struct buf said[2]; /* [0]: by sources not ready, [1]: by ready ones */
    buf_init(&said[0], 0);
    buf_init(&said[1], 0);
    for (size_t i = 0; status_source_at(i); i++) {
        const struct status_source *s = status_source_at(i);
        if (!s->ready)
            continue;
        struct buf one;
        buf_init(&one, 0);
        bool ok = s->ready(&one);
        all = all && ok;
        if (one.len) {
            buf_puts(&said[ok], ",");
            buf_append(&said[ok], buf_ptr(&one), one.len);
        }
        buf_free(&one);
    }
    buf_puts(b, all ? "{\"status\":\"ready\"" : "{\"status\":\"not-ready\"");
    if (said[all].len)
        buf_append(b, buf_ptr(&said[all]), said[all].len);
    buf_puts(b, "}");
    buf_free(&said[0]);
    buf_free(&said[1]);
    return all ? 200 : 503;
}

unsigned health_render(enum health_page page, struct buf *out, const char **content_type)
{
    unsigned status = 200;
    *content_type = "application/json";
    switch (page) {
    case HEALTH_LIVE:
        buf_puts(out, "{\"status\":\"ok\"}");
        break;
    case HEALTH_READY:
        status = render_ready(out);
        break;
    case HEALTH_STATUS:
        render_status(out);
        break;
    case HEALTH_METRICS:
        *content_type = "text/plain; version=0.0.4; charset=utf-8";
        render_metrics(out);
        break;
    }
    redact_buf(out); /* reasons quote the gateway */
    return status;
}
