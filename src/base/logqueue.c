#include "logqueue.h"
#include <string.h>

static size_t bound(const struct logq *q)
{
    return q->bound ? q->bound : LOGQ_BOUND;
}

bool logq_add(struct logq *q, const char *p, size_t n)
{
    if (q->b.len && q->b.len + n > bound(q)) {
        q->dropped++;
        return false;
    }
    buf_append(&q->b, p, n);
    return true;
}

static unsigned long long count_lines(const char *p, size_t n)
{
    unsigned long long lines = 0;
    for (const char *end = p + n; (p = memchr(p, '\n', (size_t)(end - p))); p++)
        lines++;
    return lines;
}

void logq_drain(struct logq *q, logq_write_fn write, void *ctx)
{
    while (q->b.len) {
        ssize_t w = write(ctx, buf_ptr(&q->b), q->b.len);
        if (w < 0) {
            q->dropped += count_lines(buf_ptr(&q->b), q->b.len);
            buf_consume(&q->b, q->b.len);
            return;
        }
        if (w == 0)
            return;
        buf_consume(&q->b, (size_t)w); /* emptied: the next line starts at the front */
    }
}

void logq_free(struct logq *q)
{
    buf_free(&q->b);
    q->b.len = 0;
}
