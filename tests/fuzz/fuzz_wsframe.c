/* The WebSocket framers (wsframe.c): the client's masked frames and the local
 * WebSocket's unmasked server frames, against a plain RFC 6455 §5.2 reader.
 *
 * Input: byte 0's low bit picks the side (1 = client, masked); its other bits, when
 * not zero, stretch every message by repetition to at least 126 bytes (bit 1), or
 * the first one to at least 65536 (bit 2), so both extended length forms are reached; byte 1 is the number of
 * messages (1..8) the rest is cut into.  All messages are appended to one buffer, as
 * a burst is.
 *
 * Reference: each frame is FIN, no RSV bits, opcode 1 (text); the mask bit says
 * the side; the length uses the shortest form (7 bits up to 125, 16 up to 65535,
 * else 64 with the top bit clear); the client's header is wsframe_header_len(n)
 * bytes; the payload, unmasked with its key, is the message byte for byte; the
 * frames fill the buffer exactly. */
#include "buf.h"
#include "fuzz_common.h"
#include "wsframe.h"

struct msg {
    const uint8_t *p;
    size_t n;
};

/* Reads one frame at b[*at]; returns its payload (malloc'ed, unmasked) and size. */
static uint8_t *read_frame(const uint8_t *b, size_t len, size_t *at, bool masked, size_t *out_n)
{
    size_t i = *at;
    FUZZ_CHECK(len - i >= 2);
    FUZZ_CHECK(b[i] == 0x81); /* FIN, RSV 0, text */
    FUZZ_CHECK(!!(b[i + 1] & 0x80) == masked);
    uint64_t n = b[i + 1] & 0x7f;
    i += 2;
    if (n == 126) {
        FUZZ_CHECK(len - i >= 2);
        n = (uint64_t)b[i] << 8 | b[i + 1];
        FUZZ_CHECK(n >= 126);
        i += 2;
    } else if (n == 127) {
        FUZZ_CHECK(len - i >= 8);
        n = 0;
        for (int k = 0; k < 8; k++)
            n = n << 8 | b[i + k];
        FUZZ_CHECK(n > 65535 && !(n >> 63));
        i += 8;
    }
    uint8_t key[4] = {0, 0, 0, 0};
    if (masked) {
        FUZZ_CHECK(len - i >= 4);
        memcpy(key, b + i, 4);
        i += 4;
        FUZZ_CHECK(i - *at == wsframe_header_len((size_t)n));
    }
    FUZZ_CHECK(len - i >= n);
    uint8_t *payload = malloc(n ? n : 1);
    if (!payload)
        abort();
    for (size_t k = 0; k < n; k++)
        payload[k] = b[i + k] ^ key[k & 3];
    *at = i + n;
    *out_n = n;
    return payload;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    bool masked = data[0] & 1;
    size_t stretch = data[0] & 4 ? 65536 + 7 : data[0] & 2 ? 126 + 3 : 0;
    size_t nmsg = 1 + data[1] % 8;
    const uint8_t *rest = data + 2;
    size_t rlen = size - 2;
    struct msg msgs[8];
    uint8_t *owned[8] = {0};
    for (size_t m = 0; m < nmsg; m++) {
        size_t from = rlen * m / nmsg, to = rlen * (m + 1) / nmsg;
        msgs[m].p = rest + from;
        msgs[m].n = to - from;
        if (stretch && msgs[m].n && (m == 0 || stretch < 65536)) {
            /* the message repeated until it is at least `stretch` long */
            size_t n = msgs[m].n * ((stretch + msgs[m].n - 1) / msgs[m].n);
            owned[m] = malloc(n);
            if (!owned[m])
                abort();
            for (size_t k = 0; k < n; k++)
                owned[m][k] = msgs[m].p[k % msgs[m].n];
            msgs[m].p = owned[m];
            msgs[m].n = n;
        }
    }
    struct buf out;
    buf_init(&out, 0);
    for (size_t m = 0; m < nmsg; m++) {
        if (masked)
            wsframe_append_text(&out, msgs[m].p, msgs[m].n);
        else
            wsframe_append_server_text(&out, msgs[m].p, msgs[m].n);
    }
    const uint8_t *b = (const uint8_t *)buf_ptr(&out);
    size_t at = 0;
    for (size_t m = 0; m < nmsg; m++) {
        size_t n;
        uint8_t *payload = read_frame(b, out.len, &at, masked, &n);
        FUZZ_CHECK(n == msgs[m].n && (n == 0 || !memcmp(payload, msgs[m].p, n)));
        free(payload);
    }
    FUZZ_CHECK(at == out.len);
    buf_free(&out);
    for (size_t m = 0; m < nmsg; m++)
        free(owned[m]);
    return 0;
}
