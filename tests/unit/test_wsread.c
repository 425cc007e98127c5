/* wsread.c: a server's reader of client frames -- messages in any pieces, control
 * frames between fragments, and every protocol error with its close code. */
#include "unit_main.h"
#include "wsread.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* What the reader handed out, as text: "D<first><last><t|b>:<bytes>|", "P:<bytes>|",
 * "O:<bytes>|" (pong), "C<code>:<reason>|". */
struct log {
    char s[4096];
    size_t n;
};

static void on_event(void *arg, const struct wsread_event *ev)
{
    struct log *l = arg;
    char tag[32];
    if (ev->kind == WSREAD_DATA)
        snprintf(tag, sizeof tag, "D%d%d%c:", ev->first, ev->last, ev->text ? 't' : 'b');
    else if (ev->kind == WSREAD_CLOSE)
        snprintf(tag, sizeof tag, "C%d:", ev->code);
    else
        snprintf(tag, sizeof tag, "%c:", ev->kind == WSREAD_PING ? 'P' : 'O');
    size_t t = strlen(tag);
    assert_true(l->n + t + ev->n + 1 < sizeof l->s);
    memcpy(l->s + l->n, tag, t);
    l->n += t;
    if (ev->n)
        memcpy(l->s + l->n, ev->p, ev->n);
    l->n += ev->n;
    l->s[l->n++] = '|';
    l->s[l->n] = '\0';
}

/* A client frame: FIN as asked, opcode, the payload masked (or not). */
static size_t frame(unsigned char *out, bool fin, unsigned op, const char *payload, size_t n, bool masked)
{
    static const unsigned char key[4] = {0x37, 0xfa, 0x21, 0x3d};
    size_t h = 0;
    out[h++] = (unsigned char)((fin ? 0x80 : 0) | op);
    unsigned char m = masked ? 0x80 : 0;
    if (n < 126) {
        out[h++] = (unsigned char)(m | n);
    } else if (n < 65536) {
        out[h++] = m | 126;
        out[h++] = (unsigned char)(n >> 8);
        out[h++] = (unsigned char)n;
    } else {
        out[h++] = m | 127;
        for (int s = 56; s >= 0; s -= 8)
            out[h++] = (unsigned char)((unsigned long long)n >> s);
    }
    if (masked) {
        memcpy(out + h, key, 4);
        h += 4;
    }
    for (size_t i = 0; i < n; i++)
        out[h + i] = (unsigned char)payload[i] ^ (masked ? key[i & 3] : 0);
    return h + n;
}

/* Feeds stream in pieces of `step` bytes (0: whole); the log and the error. */
static int feed(const unsigned char *stream, size_t len, size_t step, struct log *l)
{
    struct wsread r;
    wsread_init(&r);
    unsigned char *copy = malloc(len ? len : 1);
    memcpy(copy, stream, len);
    memset(l, 0, sizeof *l);
    int err = 0;
    for (size_t i = 0; i < len && !err;) {
        size_t n = step && len - i > step ? step : len - i;
        err = wsread_feed(&r, copy + i, n, on_event, l);
        i += n;
    }
    free(copy);
    if (err)
        assert_non_null(r.why);
    return err;
}

/* Every split of the stream reads alike (the pieces of data aside). */
static int feed_all_ways(const unsigned char *stream, size_t len, struct log *whole)
{
    int err = feed(stream, len, 0, whole);
    struct log l;
    assert_int_equal(feed(stream, len, 1, &l), err);
    return err;
}

static void test_wsread_messages_whole_fragmented_and_controls_between(void **state)
{
    (void)state;
    unsigned char s[512];
    size_t n = 0;
    n += frame(s + n, true, 1, "hello", 5, true);
    n += frame(s + n, false, 2, "ab", 2, true);
    n += frame(s + n, true, 9, "pi", 2, true); /* a ping between fragments */
    n += frame(s + n, false, 0, "", 0, true);
    n += frame(s + n, true, 0, "cd", 2, true);
    n += frame(s + n, true, 1, "", 0, true);   /* an empty message */
    n += frame(s + n, true, 10, "po", 2, true);
    n += frame(s + n, true, 8, "\x03\xe8" "bye", 5, true);
    n += frame(s + n, true, 1, "after", 5, false); /* after the close: never read */
    struct log l;
    assert_int_equal(feed_all_ways(s, n, &l), 0);
    assert_str_eq(l.s, "D11t:hello|D10b:ab|P:pi|D01b:cd|D11t:|O:po|C1000:bye|");
}

/* Data bytes handed out, and messages ended. */
static void count(void *arg, const struct wsread_event *ev)
{
    size_t *c = arg;
    assert_int_equal(ev->kind, WSREAD_DATA);
    c[0] += ev->n;
    c[1] += ev->last;
}

static void test_wsread_lengths_16_and_64_bit(void **state)
{
    (void)state;
    size_t big = 70000;
    char *msg = malloc(big);
    memset(msg, 'x', big);
    unsigned char *s = malloc(2 * big + 64);
    size_t n = frame(s, true, 2, msg, 300, true);
    n += frame(s + n, true, 2, msg, big, true);
    struct wsread r;
    wsread_init(&r);
    size_t c[2] = {0, 0};
    /* header and first bytes, then the rest: pieces come as they come */
    assert_int_equal(wsread_feed(&r, s, 300 + 4 + 4, count, c), 0);
    assert_int_equal(r.in_frame, false);
    assert_int_equal(c[0], 300);
    assert_int_equal(wsread_feed(&r, s + 308, 20, count, c), 0); /* 14-byte header, 6 bytes */
    assert_true(r.in_frame);
    assert_int_equal(r.left, big - 6);
    assert_int_equal(wsread_feed(&r, s + 328, n - 328, count, c), 0);
    assert_false(r.in_message);
    assert_int_equal(c[0], 300 + big);
    assert_int_equal(c[1], 2);
    free(s);
    free(msg);
}

struct bad {
    const char *name;
    unsigned char bytes[16];
    size_t n;
    int code;
};

static void test_wsread_each_protocol_error_and_its_code(void **state)
{
    (void)state;
    static const struct bad bad[] = {
        {"unmasked", {0x81, 0x02, 'h', 'i'}, 4, 1002},
        {"rsv1", {0xc1, 0x80, 0, 0, 0, 0}, 6, 1002},
        {"rsv3", {0x91, 0x80, 0, 0, 0, 0}, 6, 1002},
        {"opcode 3", {0x83, 0x80, 0, 0, 0, 0}, 6, 1002},
        {"opcode 11", {0x8b, 0x80, 0, 0, 0, 0}, 6, 1002},
        {"fragmented ping", {0x09, 0x80, 0, 0, 0, 0}, 6, 1002},
        {"ping of 126", {0x89, 0xfe, 0, 126}, 4, 1002},
        {"continuation first", {0x80, 0x80, 0, 0, 0, 0}, 6, 1002},
        {"text inside a message", {0x01, 0x80, 0, 0, 0, 0, 0x81, 0x80, 0, 0, 0, 0}, 12, 1002},
        {"64-bit top bit", {0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4}, 14, 1002},
        {"close of one byte", {0x88, 0x81, 0, 0, 0, 0, 3}, 7, 1002},
        {"close code 1005", {0x88, 0x82, 0, 0, 0, 0, 0x03, 0xed}, 8, 1002},
        {"close code 999", {0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe7}, 8, 1002},
        {"close code 5000", {0x88, 0x82, 0, 0, 0, 0, 0x13, 0x88}, 8, 1002},
        {"close reason not UTF-8", {0x88, 0x83, 0, 0, 0, 0, 0x03, 0xe8, 0xff}, 9, 1007},
        {"text not UTF-8", {0x81, 0x82, 0, 0, 0, 0, 0xc3, 0x28}, 8, 1007},
        {"text ends mid-sequence", {0x81, 0x81, 0, 0, 0, 0, 0xc3}, 7, 1007},
        {"surrogate", {0x81, 0x83, 0, 0, 0, 0, 0xed, 0xa0, 0x80}, 9, 1007},
        {"overlong", {0x81, 0x82, 0, 0, 0, 0, 0xc0, 0xaf}, 8, 1007},
        {"past U+10FFFF", {0x81, 0x84, 0, 0, 0, 0, 0xf4, 0x90, 0x80, 0x80}, 10, 1007},
        {"empty last fragment after a cut sequence", {0x01, 0x81, 0, 0, 0, 0, 0xc3, 0x80, 0x80, 0, 0, 0, 0}, 13, 1007},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        struct log l;
        int got = feed_all_ways(bad[i].bytes, bad[i].n, &l);
        if (got != bad[i].code)
            fail_msg("%s: close code %d, want %d", bad[i].name, got, bad[i].code);
    }
}

static void test_wsread_valid_utf8_split_anywhere_and_binary_unchecked(void **state)
{
    (void)state;
    static const char text[] = "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xf4\x8f\xbf\xbf";
    unsigned char s[256];
    size_t n = 0;
    /* one fragment per byte: sequences cut across frames */
    for (size_t i = 0; i < sizeof text - 1; i++)
        n += frame(s + n, i == sizeof text - 2, i ? 0 : 1, text + i, 1, true);
    n += frame(s + n, true, 2, "\xff\xfe", 2, true);
    struct log l;
    assert_int_equal(feed_all_ways(s, n, &l), 0);
    assert_str_contains(l.s, "D11b:\xff\xfe|");
    assert_true(wsread_utf8(text, sizeof text - 1));
    assert_false(wsread_utf8("\xc3", 1));
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_wsread_messages_whole_fragmented_and_controls_between),
    cmocka_unit_test(test_wsread_lengths_16_and_64_bit),
    cmocka_unit_test(test_wsread_each_protocol_error_and_its_code),
    cmocka_unit_test(test_wsread_valid_utf8_split_anywhere_and_binary_unchecked),
};

UNIT_MAIN(tests)
