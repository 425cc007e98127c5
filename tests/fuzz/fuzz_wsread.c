/* The server's reader of client frames (wsread.c), on any bytes.
 *
 * Input: byte 0 is a piece size (0: the whole rest at once); the rest is the stream.
 *
 * Properties: the stream fed whole and fed in pieces gives the same messages, control
 * frames and error code; a message is handed out first-piece-first and ends once; a
 * text message handed out whole, and a close reason, is UTF-8 (the tests' own
 * checker); an error is 1002 or 1007, with a reason, and nothing follows it or the
 * close. */
#include "fuzz_common.h"
#include "wsread.h"

struct out {
    uint8_t *log, *msg;
    size_t n, cap, mn, mcap;
    bool in_msg, ended;
};

static void put(uint8_t **b, size_t *n, size_t *cap, const void *p, size_t len)
{
    if (*n + len > *cap) {
        *cap = (*n + len) * 2 + 64;
        *b = realloc(*b, *cap);
        if (!*b)
            abort();
    }
    if (len)
        memcpy(*b + *n, p, len);
    *n += len;
}

static void on_event(void *arg, const struct wsread_event *ev)
{
    struct out *o = arg;
    FUZZ_CHECK(!o->ended);
    if (ev->kind == WSREAD_DATA) {
        FUZZ_CHECK(ev->first == !o->in_msg);
        o->in_msg = !ev->last;
        put(&o->msg, &o->mn, &o->mcap, ev->p, ev->n);
        if (!ev->last)
            return;
        FUZZ_CHECK(!ev->text || utf8_valid((const char *)o->msg, o->mn));
        put(&o->log, &o->n, &o->cap, ev->text ? "T" : "B", 1);
        put(&o->log, &o->n, &o->cap, &o->mn, sizeof o->mn);
        put(&o->log, &o->n, &o->cap, o->msg, o->mn);
        o->mn = 0;
        return;
    }
    FUZZ_CHECK(ev->n <= 125);
    if (ev->kind == WSREAD_CLOSE) {
        FUZZ_CHECK(utf8_valid(ev->p, ev->n));
        o->ended = true;
    }
    char tag[2] = {(char)('0' + ev->kind), (char)ev->code};
    put(&o->log, &o->n, &o->cap, tag, 2);
    put(&o->log, &o->n, &o->cap, &ev->n, sizeof ev->n);
    put(&o->log, &o->n, &o->cap, ev->p, ev->n);
}

static int run(const uint8_t *data, size_t size, size_t step, struct out *o)
{
    uint8_t *copy = malloc(size ? size : 1);
    if (!copy)
        abort();
    memcpy(copy, data, size);
    struct wsread r;
    wsread_init(&r);
    int err = 0;
    for (size_t i = 0; i < size;) {
        size_t n = step && size - i > step ? step : size - i;
        err = wsread_feed(&r, copy + i, n, on_event, o);
        i += n;
        if (err) {
            FUZZ_CHECK(err == 1002 || err == 1007);
            FUZZ_CHECK(r.why && r.why[0]);
            FUZZ_CHECK(wsread_feed(&r, copy, size, on_event, o) == err); /* nothing more is read */
            break;
        }
    }
    free(copy);
    return err;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t step = data[0];
    struct out a = {0}, b = {0};
    int ea = run(data + 1, size - 1, 0, &a);
    int eb = run(data + 1, size - 1, step, &b);
    FUZZ_CHECK(ea == eb);
    FUZZ_CHECK(a.n == b.n && (!a.n || !memcmp(a.log, b.log, a.n)));
    free(a.log);
    free(a.msg);
    free(b.log);
    free(b.msg);
    return 0;
}
