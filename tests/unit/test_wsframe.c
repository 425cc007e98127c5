/* wsframe.c: client frames of every length encoding, masked with fresh keys. */
#include "unit_main.h"
#include "wsframe.h"
#include "buf.h"
#include <stdlib.h>
#include <string.h>

/* Decodes one client frame as a server would (RFC 6455 §5.2) into payload (room for
 * cap bytes): *len gets the payload length, *used the bytes the frame took. */
static void unframe(const unsigned char *p, size_t avail, unsigned char *payload, size_t cap,
                    size_t *len, size_t *used)
{
    assert_size_ge(avail, 6);
    assert_int_equal(p[0], 0x81);  /* FIN + text */
    assert_true(p[1] & 0x80);        /* masked */
    size_t h = 2, n = p[1] & 0x7f;
    if (n == 126)
        h = 4;
    else if (n == 127)
        h = 10;
    assert_size_ge(avail, h + 4); /* the extended length and the key are there */
    if (n == 126) {
        n = (size_t)p[2] << 8 | p[3];
    } else if (n == 127) {
        n = 0;
        for (int i = 0; i < 8; i++)
            n = n << 8 | p[2 + i];
    }
    const unsigned char *key = p + h;
    h += 4;
    assert_size_le(n, avail - h);
    assert_size_le(n, cap);
    for (size_t i = 0; i < n; i++)
        payload[i] = p[h + i] ^ key[i & 3];
    *len = n;
    *used = h + n;
}

static void test_wsframe_lengths_masking_and_bursts(void **state)
{
    (void)state;
    /* Every length encoding, each side of its boundary, several frames in one buffer. */
    static const size_t lens[] = {0, 1, 7, 8, 9, 125, 126, 127, 65535, 65536, 70001};
    size_t nl = sizeof lens / sizeof *lens;
    unsigned char *src = malloc(70001), *got = malloc(70001);
    for (size_t i = 0; i < 70001; i++)
        src[i] = (unsigned char)("{\"abc\":123}"[i % 11] + i % 3);
    struct buf b;
    buf_init(&b, 16);
    size_t want_total = 0;
    for (size_t i = 0; i < nl; i++) {
        wsframe_append_text(&b, src, lens[i]);
        want_total += wsframe_header_len(lens[i]) + lens[i];
    }
    assert_int_equal(b.len, want_total);
    assert_int_equal(wsframe_header_len(125), 6);
    assert_int_equal(wsframe_header_len(126), 8);
    assert_int_equal(wsframe_header_len(65536), 14);
    const unsigned char *p = (const unsigned char *)buf_ptr(&b);
    size_t off = 0;
    unsigned char keys[16][4];
    for (size_t i = 0; i < nl; i++) {
        size_t n = 0, used = 0;
        unframe(p + off, b.len - off, got, 70001, &n, &used);
        assert_int_equal(n, lens[i]);
        assert_memory_equal(got, src, n);
        memcpy(keys[i], p + off + wsframe_header_len(n) - 4, 4);
        off += used;
    }
    assert_int_equal(off, b.len);
    /* Fresh keys per frame (a repeat among 11 random 32-bit keys is ~1e-8 likely). */
    for (size_t i = 0; i < nl; i++)
        for (size_t j = i + 1; j < nl; j++)
            assert_memory_not_equal(keys[i], keys[j], 4);
    buf_free(&b);
    free(src);
    free(got);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_wsframe_lengths_masking_and_bursts),
};

UNIT_MAIN(tests)
