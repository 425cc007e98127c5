/* The log's output queue: whole lines waiting for standard error, bounded.  Pure
 * (no descriptor, no loop): log.c says what a write is; the queue keeps the order,
 * the bound and the count of what it had to drop. */
#ifndef TGB_LOGQUEUE_H
#define TGB_LOGQUEUE_H
#include "buf.h"
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* What waits when the reader does not keep up, and what a crash can lose. */
#define LOGQ_BOUND (64 * 1024)

struct logq {
    struct buf b;                /* the bytes not written yet, lines in order */
    size_t bound;                /* 0: LOGQ_BOUND; a test's own */
    unsigned long long dropped;  /* lines refused for want of room, or lost to a write error */
};

/* A zeroed logq is an empty one with bound LOGQ_BOUND.
 *
 * Queues the line p[0..n) (its newline included) whole, or counts it dropped: a line
 * fits while the queue stays within the bound, and into an empty queue whatever its
 * length (the line a write began is always finished).  True if queued. */
bool logq_add(struct logq *q, const char *p, size_t n);
/* Hands the queue to write(ctx, p, n) until it is empty or a write takes nothing:
 * write returns the bytes taken, 0 for "full, later", or -1 for a reader that is gone
 * (every queued line is then dropped and counted).  The bytes left stay queued. */
typedef ssize_t (*logq_write_fn)(void *ctx, const char *p, size_t n);
void logq_drain(struct logq *q, logq_write_fn write, void *ctx);
static inline size_t logq_len(const struct logq *q) { return q->b.len; }
void logq_free(struct logq *q);
#endif
