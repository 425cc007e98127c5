#include "lineframe.h"
#include <string.h>

void lineframe_init(struct lineframe *f, size_t max)
{
    f->max = max;
    buf_init(&f->in, 0);
    f->discarding = false;
    f->partial = 0;
}

void lineframe_free(struct lineframe *f)
{
    buf_free(&f->in);
}

bool lineframe_feed(struct lineframe *f, const char *data, size_t len, lineframe_cb cb, void *arg)
{
    while (len) {
        const char *nl = memchr(data, '\n', len);
        size_t n = nl ? (size_t)(nl - data) : len;
        f->partial = nl ? 0 : f->partial + n;
        bool go = true;
        if (f->discarding) {
            f->discarding = !nl;
        } else if (f->in.len + n > f->max) {
            /* Its first max bytes go with the news: the caller may read an id there. */
            if (f->in.len)
                buf_append(&f->in, data, f->max - f->in.len);
            f->discarding = !nl;
            go = cb(arg, LINEFRAME_TOO_LONG, f->in.len ? buf_ptr(&f->in) : data, f->max);
            buf_free(&f->in);
        } else if (nl && !f->in.len) {
            go = cb(arg, LINEFRAME_LINE, data, n); /* the common case: no copy */
        } else {
            buf_append(&f->in, data, n);
            if (nl) {
                go = cb(arg, LINEFRAME_LINE, buf_ptr(&f->in), f->in.len);
                f->in.len = 0;
                if (f->in.cap > 1024 * 1024)
                    buf_free(&f->in);
            }
        }
        if (!go)
            return false;
        if (!nl)
            break;
        len -= n + 1;
        data = nl + 1;
    }
    return true;
}

void lineframe_skip(struct lineframe *f)
{
    if (!f->partial)
        return;
    buf_free(&f->in);
    f->discarding = true;
}

void lineframe_eof(struct lineframe *f, lineframe_cb cb, void *arg)
{
    f->partial = 0;
    if (f->in.len && !f->discarding)
        cb(arg, LINEFRAME_LINE, buf_ptr(&f->in), f->in.len);
    f->in.len = 0;
    f->discarding = false;
}
