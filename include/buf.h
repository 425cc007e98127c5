/* Growable byte buffer with optional reserved headroom (for lws's LWS_PRE). */
#ifndef TGB_BUF_H
#define TGB_BUF_H
#include <stddef.h>
#include <stdbool.h>

struct buf {
    char *data;      /* allocation; payload starts at data + head */
    size_t head;     /* bytes before the payload: the reserved headroom + consumed bytes */
    size_t pre;      /* the reserved headroom */
    size_t len;      /* payload length */
    size_t cap;      /* allocation size */
};

void buf_init(struct buf *b, size_t headroom);
void buf_free(struct buf *b);
/* All appenders abort on allocation failure (see buf.c for why). */
void buf_reserve(struct buf *b, size_t extra);
void buf_append(struct buf *b, const void *p, size_t n);
void buf_puts(struct buf *b, const char *s);
void buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends s as a JSON string literal, quotes included. */
void buf_json_string(struct buf *b, const char *s, size_t n);
static inline char *buf_ptr(const struct buf *b) { return b->data ? b->data + b->head : NULL; }
/* Drops the first n payload bytes (amortised O(n): no memmove per call). */
void buf_consume(struct buf *b, size_t n);
#endif
