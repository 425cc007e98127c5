/* The line framer (lineframe.c) against a reference splitter over the whole stream.
 *
 * Input: byte 0 gives max (0..63), byte 1 the number k (0..7) of piece lengths that
 * follow, then k bytes of piece lengths (used in turn; a 0 feeds an empty piece),
 * byte 2+k the number of events after which the callback asks to stop (0 = never);
 * the rest is the stream.  So the split points are fuzzed with the bytes.
 *
 * Reference (lineframe.h): each line ended by '\n' whose length is at most max is one
 * LINEFRAME_LINE with exactly its bytes; a longer one is one LINEFRAME_TOO_LONG with
 * its first max bytes, reported when its accumulated length first exceeds max, and the rest of it up to its
 * newline is skipped; at the end of the stream, lineframe_eof delivers a last line
 * without a newline if it is non-empty and within max.  The events do not depend on
 * how the stream is cut.  After each piece: lineframe_feed is true unless the
 * callback stopped it, `partial` counts the bytes of the line under way (skipped ones
 * included), and no more than max bytes are held. */
#include "fuzz_common.h"
#include "lineframe.h"

struct event {
    enum lineframe_event ev;
    const char *p; /* into the stream */
    size_t n;
};

struct run {
    const struct event *want;
    size_t nwant, got, stop_after;
    bool stopped;
};

static bool on_event(void *arg, enum lineframe_event ev, const char *line, size_t len)
{
    struct run *r = arg;
    FUZZ_CHECK(!r->stopped);
    FUZZ_CHECK(r->got < r->nwant);
    const struct event *w = &r->want[r->got++];
    FUZZ_CHECK(ev == w->ev);
    FUZZ_CHECK(len == w->n && (len == 0 || (line && !memcmp(line, w->p, len))));
    if (r->stop_after && r->got == r->stop_after) {
        r->stopped = true;
        return false;
    }
    return true;
}

/* The reference splitter: every event, in order, for the whole stream. */
static size_t reference(const char *s, size_t n, size_t max, struct event *out)
{
    size_t k = 0, start = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i < n && s[i] != '\n')
            continue;
        size_t len = i - start;
        if (len > max)
            out[k++] = (struct event){LINEFRAME_TOO_LONG, s + start, max};
        else if (i < n || len > 0) /* the last line, without its newline: eof's */
            out[k++] = (struct event){LINEFRAME_LINE, s + start, len};
        start = i + 1;
    }
    return k;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3)
        return 0;
    size_t max = data[0] % 64, k = data[1] % 8;
    if (size < 3 + k)
        return 0;
    const uint8_t *pieces = data + 2;
    size_t stop_after = data[2 + k];
    size_t n = size - 3 - k;
    char *s = fz_copy(data + 3 + k, n, false);

    struct event *want = malloc((n + 1) * sizeof *want);
    FUZZ_CHECK(want != NULL);
    struct run r = {want, reference(s, n, max, want), 0, stop_after, false};

    struct lineframe f;
    lineframe_init(&f, max);
    size_t off = 0, turn = 0, zeros = 0, line_start = 0;
    while (off < n && !r.stopped) {
        size_t len = k ? pieces[turn++ % k] : n - off;
        if (len > n - off)
            len = n - off;
        if (len == 0 && ++zeros > 16) /* only empty pieces: the rest at once */
            len = n - off;
        bool go = lineframe_feed(&f, s + off, len, on_event, &r);
        FUZZ_CHECK(go == !r.stopped);
        if (!go)
            break;
        for (size_t i = off; i < off + len; i++)
            if (s[i] == '\n')
                line_start = i + 1;
        off += len;
        FUZZ_CHECK(f.partial == off - line_start);
        FUZZ_CHECK(f.in.len <= max);
    }
    if (!r.stopped) {
        lineframe_eof(&f, on_event, &r);
        FUZZ_CHECK(f.partial == 0 && f.in.len == 0 && !f.discarding);
        FUZZ_CHECK(r.got == r.nwant || r.stopped);
    } else {
        FUZZ_CHECK(r.got == stop_after);
    }
    lineframe_free(&f);
    free(want);
    free(s);
    return 0;
}
