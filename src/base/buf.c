#include "buf.h"
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A daemon that cannot allocate a few KiB cannot answer anyone honestly either;
 * failing loudly beats corrupting a reply, and keeps every caller of buf simple. */
static void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q) {
        fputs("tgbridge: out of memory\n", stderr);
        abort();
    }
    return q;
}

void buf_init(struct buf *b, size_t headroom)
{
    b->data = NULL;
    b->head = b->pre = headroom;
    b->len = 0;
    b->cap = 0;
}

void buf_free(struct buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
    b->head = b->pre;
}

void buf_reserve(struct buf *b, size_t extra)
{
    /* Reclaim consumed space once it outweighs what is left to read. */
    if (b->head > b->pre && b->head - b->pre >= b->len) {
        if (b->len)
            memmove(b->data + b->pre, b->data + b->head, b->len);
        b->head = b->pre;
    }
    size_t need = b->head + b->len + extra + 1; /* +1 keeps room for a NUL */
    if (need <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap *= 2;
    b->data = xrealloc(b->data, cap);
    b->cap = cap;
}

void buf_append(struct buf *b, const void *p, size_t n)
{
    buf_reserve(b, n);
    if (n)
        memcpy(b->data + b->head + b->len, p, n);
    b->len += n;
    b->data[b->head + b->len] = '\0';
}

void buf_puts(struct buf *b, const char *s)
{
    buf_append(b, s, strlen(s));
}

void buf_printf(struct buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    buf_reserve(b, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(b->data + b->head + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void buf_json_string(struct buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    buf_reserve(b, n + 2);
    buf_append(b, "\"", 1);
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        buf_append(b, s + run, i - run);
        run = i + 1;
        char esc[7] = {'\\', 0};
        switch (c) {
        case '"': esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        default:
            memcpy(esc, "\\u00", 4);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            buf_append(b, esc, 6);
            continue;
        }
        buf_append(b, esc, 2);
    }
    buf_append(b, s + run, n - run);
    buf_append(b, "\"", 1);
}

void buf_consume(struct buf *b, size_t n)
{
    if (n >= b->len) {
        b->len = 0;
        b->head = b->pre;
    } else {
        b->head += n;
        b->len -= n;
    }
    if (b->data)
        b->data[b->head + b->len] = '\0';
}
