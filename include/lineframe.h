/* Newline framing of a byte stream (the Unix line protocol): complete lines out, a
 * line longer than the limit reported once and its rest skipped, no copy for lines
 * that arrive whole.  Pure: no I/O, no timers. */
#ifndef TGB_LINEFRAME_H
#define TGB_LINEFRAME_H
#include <stdbool.h>
#include <stddef.h>
#include "buf.h"

struct lineframe {
    size_t max;          /* longest line accepted, newline excluded */
    struct buf in;       /* a line under way */
    bool discarding;     /* the rest of an over-long line */
    size_t partial;      /* bytes of the line under way, discarded ones included */
};

enum lineframe_event { LINEFRAME_LINE, LINEFRAME_TOO_LONG };
/* A line (without its newline; a \r before it is the caller's to ignore), or the
 * news that one was too long, with its first max bytes (enough to find its id).
 * Return false to stop feeding (the client is closing). */
typedef bool (*lineframe_cb)(void *arg, enum lineframe_event ev, const char *line, size_t len);

void lineframe_init(struct lineframe *f, size_t max);
void lineframe_free(struct lineframe *f);
/* Feeds data; false if a callback stopped it. */
bool lineframe_feed(struct lineframe *f, const char *data, size_t len, lineframe_cb cb, void *arg);
/* The line under way is dropped: what is held of it is freed and the rest of it, up
 * to its newline, skipped (as for a line too long, without the news). */
void lineframe_skip(struct lineframe *f);
/* End of the stream: a last line without its newline is delivered. */
void lineframe_eof(struct lineframe *f, lineframe_cb cb, void *arg);
#endif
