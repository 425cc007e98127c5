#include "wsread.h"
#include <string.h>

#define OP_CONT 0
#define OP_TEXT 1
#define OP_BINARY 2
#define OP_CLOSE 8
#define OP_PING 9
#define OP_PONG 10

void wsread_init(struct wsread *r)
{
    memset(r, 0, sizeof *r);
}

static void fail(struct wsread *r, int code, const char *why)
{
    if (!r->error) {
        r->error = code;
        r->why = why;
    }
}

/* One byte more of UTF-8 (RFC 3629): no overlong forms, no surrogates, nothing past
 * U+10FFFF.  A sequence is judged when it completes; whether the text ends inside one
 * is the caller's to ask (need). */
static bool utf8_step(unsigned *need, uint32_t *cp, uint32_t *min, unsigned char c)
{
    if (!*need) {
        if (c < 0x80)
            return true;
        if (c >= 0xc2 && c <= 0xdf)
            *need = 1, *cp = c & 0x1f, *min = 0x80;
        else if (c >= 0xe0 && c <= 0xef)
            *need = 2, *cp = c & 0x0f, *min = 0x800;
        else if (c >= 0xf0 && c <= 0xf4)
            *need = 3, *cp = c & 0x07, *min = 0x10000;
        else
            return false;
        return true;
    }
    if ((c & 0xc0) != 0x80)
        return false;
    *cp = *cp << 6 | (c & 0x3f);
    if (--*need)
        return true;
    return *cp >= *min && !(*cp >= 0xd800 && *cp <= 0xdfff) && *cp <= 0x10ffff;
}

bool wsread_utf8(const char *p, size_t n)
{
    unsigned need = 0;
    uint32_t cp = 0, min = 0;
    for (size_t i = 0; i < n; i++)
        if (!utf8_step(&need, &cp, &min, (unsigned char)p[i]))
            return false;
    return !need;
}

static size_t head_need(const struct wsread *r)
{
    if (r->hlen < 2)
        return 2;
    unsigned n = r->head[1] & 0x7f;
    return 2 + (n == 126 ? 2 : n == 127 ? 8 : 0) + 4;
}

/* What the first two bytes of a frame can already tell (§5.2, §5.4, §5.5). */
static void check_start(struct wsread *r)
{
    unsigned op = r->head[0] & 0x0f;
    bool fin = r->head[0] & 0x80;
    if (r->head[0] & 0x70)
        fail(r, 1002, "a reserved bit set (no extension was negotiated)");
    else if (!(op <= OP_BINARY || (op >= OP_CLOSE && op <= OP_PONG)))
        fail(r, 1002, "an unknown opcode");
    else if (!(r->head[1] & 0x80))
        fail(r, 1002, "an unmasked frame (a client must mask every frame)");
    else if (op >= OP_CLOSE && !fin)
        fail(r, 1002, "a fragmented control frame");
    else if (op >= OP_CLOSE && (r->head[1] & 0x7f) > 125)
        fail(r, 1002, "a control frame over 125 bytes");
    else if (op == OP_CONT && !r->in_message)
        fail(r, 1002, "a continuation frame with no message under way");
    else if ((op == OP_TEXT || op == OP_BINARY) && r->in_message)
        fail(r, 1002, "a new message inside a fragmented one");
}

static void emit_data(struct wsread *r, const unsigned char *p, size_t n, bool last, wsread_cb cb, void *arg)
{
    struct wsread_event ev = {WSREAD_DATA, (const char *)p, n, !r->started, last, r->text, 0};
    r->started = true;
    if (last)
        r->in_message = false;
    cb(arg, &ev);
}

/* A close frame's payload: nothing, or a code an endpoint may send and a UTF-8 reason
 * (§5.5.1, §7.4). */
static void control_close(struct wsread *r, wsread_cb cb, void *arg)
{
    struct wsread_event ev = {WSREAD_CLOSE, "", 0, false, false, false, 1005};
    if (r->ctl_len == 1) {
        fail(r, 1002, "a close frame of one byte");
        return;
    }
    if (r->ctl_len >= 2) {
        int code = r->ctl[0] << 8 | r->ctl[1];
        if (!((code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) || (code >= 3000 && code <= 4999))) {
            fail(r, 1002, "a close frame with a code no endpoint may send");
            return;
        }
        if (!wsread_utf8((const char *)r->ctl + 2, r->ctl_len - 2)) {
            fail(r, 1007, "a close reason that is not UTF-8");
            return;
        }
        ev.code = code;
        ev.p = (const char *)r->ctl + 2;
        ev.n = r->ctl_len - 2;
    }
    r->closed = true;
    cb(arg, &ev);
}

static void control_done(struct wsread *r, wsread_cb cb, void *arg)
{
    if (r->opcode == OP_CLOSE) {
        control_close(r, cb, arg);
        return;
    }
    struct wsread_event ev = {r->opcode == OP_PING ? WSREAD_PING : WSREAD_PONG, (const char *)r->ctl, r->ctl_len,
                              false, false, false, 0};
    cb(arg, &ev);
}

/* The header is in: the frame's length and key; an empty frame is done at once. */
static void header_done(struct wsread *r, wsread_cb cb, void *arg)
{
    unsigned n7 = r->head[1] & 0x7f;
    size_t at = 2;
    uint64_t len = n7;
    if (n7 >= 126) {
        size_t k = n7 == 126 ? 2 : 8;
        len = 0;
        for (size_t i = 0; i < k; i++)
            len = len << 8 | r->head[at + i];
        at += k;
    }
    r->hlen = 0;
    if (len >> 63) {
        fail(r, 1002, "a 64-bit length with its top bit set");
        return;
    }
    memcpy(r->key, r->head + at, 4);
    r->kpos = 0;
    r->opcode = r->head[0] & 0x0f;
    r->fin = r->head[0] & 0x80;
    r->left = len;
    r->ctl_len = 0;
    r->in_frame = true;
    if (r->opcode == OP_TEXT || r->opcode == OP_BINARY) {
        r->in_message = true;
        r->started = false;
        r->text = r->opcode == OP_TEXT;
        r->utf8_need = 0;
    }
    if (len)
        return;
    r->in_frame = false;
    if (r->opcode >= OP_CLOSE)
        control_done(r, cb, arg);
    else if (r->fin && r->text && r->utf8_need)
        fail(r, 1007, "a text message that is not UTF-8");
    else if (r->fin || !r->started)
        emit_data(r, NULL, 0, r->fin, cb, arg);
}

static size_t header_bytes(struct wsread *r, const unsigned char *d, size_t len, wsread_cb cb, void *arg)
{
    size_t i = 0;
    while (i < len && r->hlen < head_need(r)) {
        r->head[r->hlen++] = d[i++];
        if (r->hlen == 2) {
            check_start(r);
            if (r->error)
                return i;
        }
    }
    if (r->hlen >= 2 && r->hlen == head_need(r))
        header_done(r, cb, arg);
    return i;
}

static size_t payload_bytes(struct wsread *r, unsigned char *d, size_t len, wsread_cb cb, void *arg)
{
    size_t n = r->left < len ? (size_t)r->left : len;
    for (size_t i = 0; i < n; i++)
        d[i] ^= r->key[r->kpos++ & 3];
    r->left -= n;
    bool done = !r->left;
    if (done)
        r->in_frame = false;
    if (r->opcode >= OP_CLOSE) {
        memcpy(r->ctl + r->ctl_len, d, n);
        r->ctl_len += n;
        if (done)
            control_done(r, cb, arg);
        return n;
    }
    if (r->text) {
        for (size_t i = 0; i < n; i++)
            if (!utf8_step(&r->utf8_need, &r->utf8_cp, &r->utf8_min, d[i])) {
                fail(r, 1007, "a text message that is not UTF-8");
                return n;
            }
        if (done && r->fin && r->utf8_need) {
            fail(r, 1007, "a text message that is not UTF-8");
            return n;
        }
    }
    emit_data(r, d, n, done && r->fin, cb, arg);
    return n;
}

int wsread_feed(struct wsread *r, unsigned char *data, size_t len, wsread_cb cb, void *arg)
{
    size_t i = 0;
    while (i < len && !r->error && !r->closed) {
        if (r->in_frame)
            i += payload_bytes(r, data + i, len - i, cb, arg);
        else
            i += header_bytes(r, data + i, len - i, cb, arg);
    }
    return r->error;
}
