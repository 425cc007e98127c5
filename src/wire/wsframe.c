#include "wsframe.h"
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

/* Mask keys must be unpredictable to the network (RFC 6455 §10.3); one getrandom()
 * fills enough of them for a thousand frames. */
static unsigned char key_pool[4096];
static size_t key_pos = sizeof key_pool;

static void next_mask_key(unsigned char key[4])
{
    if (key_pos + 4 > sizeof key_pool) {
        size_t got = 0;
        while (got < sizeof key_pool) {
            ssize_t n = getrandom(key_pool + got, sizeof key_pool - got, 0);
            if (n < 0 && errno != EINTR)
                abort(); /* no kernel randomness: nothing safe to mask with */
            if (n > 0)
                got += (size_t)n;
        }
        key_pos = 0;
    }
    memcpy(key, key_pool + key_pos, 4);
    key_pos += 4;
}

size_t wsframe_header_len(size_t len)
{
    return (len < 126 ? 2 : len < 65536 ? 4 : 10) + 4;
}

/* FIN (as asked) + the opcode, then the length in its shortest form; the mask bit as
 * asked. */
static size_t put_header(unsigned char *p, unsigned opcode, bool fin, size_t len, unsigned char mask_bit)
{
    size_t h = 0;
    p[h++] = (unsigned char)((fin ? 0x80 : 0) | opcode);
    if (len < 126) {
        p[h++] = (unsigned char)(mask_bit | len);
    } else if (len < 65536) {
        p[h++] = mask_bit | 126;
        p[h++] = (unsigned char)(len >> 8);
        p[h++] = (unsigned char)len;
    } else {
        p[h++] = mask_bit | 127;
        for (int shift = 56; shift >= 0; shift -= 8)
            p[h++] = (unsigned char)((uint64_t)len >> shift);
    }
    return h;
}

void wsframe_append_server_text(struct buf *out, const void *payload, size_t len)
{
    wsframe_append_server(out, WSFRAME_TEXT, payload, len);
}

void wsframe_append_server(struct buf *out, unsigned opcode, const void *payload, size_t len)
{
    wsframe_append_server_piece(out, opcode, true, payload, len);
}

void wsframe_append_server_piece(struct buf *out, unsigned opcode, bool fin, const void *payload, size_t len)
{
    buf_reserve(out, wsframe_header_len(len) + len);
    unsigned char *p = (unsigned char *)buf_ptr(out) + out->len;
    size_t h = put_header(p, opcode, fin, len, 0);
    if (len)
        memcpy(p + h, payload, len);
    out->len += h + len;
    out->data[out->head + out->len] = '\0'; /* buf's invariant */
}

void wsframe_append_text(struct buf *out, const void *payload, size_t len)
{
    buf_reserve(out, wsframe_header_len(len) + len);
    unsigned char *p = (unsigned char *)buf_ptr(out) + out->len;
    size_t h = put_header(p, WSFRAME_TEXT, true, len, 0x80);
    unsigned char key[4];
    next_mask_key(key);
    memcpy(p + h, key, 4);
    h += 4;

    /* Eight bytes at a time: the mask repeats every four, so a doubled key lines up. */
    const unsigned char *src = payload;
    unsigned char *dst = p + h;
    uint64_t k8;
    unsigned char kk[8] = {key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3]};
    memcpy(&k8, kk, 8);
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t v;
        memcpy(&v, src + i, 8);
        v ^= k8;
        memcpy(dst + i, &v, 8);
    }
    for (; i < len; i++)
        dst[i] = src[i] ^ key[i & 3];
    out->len += h + len;
    out->data[out->head + out->len] = '\0'; /* buf's invariant */
}
