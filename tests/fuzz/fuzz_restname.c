/* A REST path name read as the gateway routes it (restname.c) against a plain reading
 * of the rules.
 *
 * Input: byte 0's low bit says whether the name may hold slashes (a thru/ name); the
 * rest is the name as sent.
 *
 * Reference: each "%XY" with two hex digits is the byte 0xXY, any other byte itself;
 * the name is refused when it decodes to nothing, to more than the buffer holds, to a
 * byte below 0x20, 0x7f, '{' or '}', to '/' in a one-segment name, or to bytes that
 * are not UTF-8 (Python's strict decoder: no surrogates, nothing past U+10FFFF, no
 * overlongs); otherwise the output is exactly the decoded bytes, NUL-terminated, and
 * never written past its buffer. */
#include "fuzz_common.h"
#include "restname.h"

#define CAP 64

static int hexd(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c |= 0x20;
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Python's bytes.decode("utf-8") succeeds. */
static bool utf8_ok(const unsigned char *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = p[i], need, cp;
        if (c < 0x80) { i++; continue; }
        if ((c & 0xe0) == 0xc0) { need = 1; cp = c & 0x1f; }
        else if ((c & 0xf0) == 0xe0) { need = 2; cp = c & 0x0f; }
        else if ((c & 0xf8) == 0xf0) { need = 3; cp = c & 0x07; }
        else return false;
        if (i + need >= n)
            return false;
        for (unsigned k = 1; k <= need; k++) {
            if ((p[i + k] & 0xc0) != 0x80)
                return false;
            cp = (cp << 6) | (p[i + k] & 0x3f);
        }
        static const unsigned min[4] = {0, 0x80, 0x800, 0x10000};
        if (cp < min[need] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += need + 1;
    }
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    bool slashes = data[0] & 1;
    const unsigned char *raw = data + 1;
    size_t n = size - 1;
    unsigned char *want = malloc(n + 1);
    FUZZ_CHECK(want != NULL);
    size_t w = 0;
    bool bad = false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = raw[i];
        if (c == '%' && i + 2 < n && hexd(raw[i + 1]) >= 0 && hexd(raw[i + 2]) >= 0) {
            c = (unsigned char)(hexd(raw[i + 1]) * 16 + hexd(raw[i + 2]));
            i += 2;
        }
        if (c < 0x20 || c == 0x7f || c == '{' || c == '}' || (c == '/' && !slashes))
            bad = true;
        want[w++] = c;
    }
    bad = bad || w == 0 || w >= CAP || !utf8_ok(want, w);
    char *copy = fz_copy(raw, n, false);
    char out[CAP + 8], why[128];
    memset(out, 0x5a, sizeof out);
    why[0] = '\0';
    long got = rest_name_decode(copy, n, slashes, out, CAP, why, sizeof why);
    for (size_t i = CAP; i < sizeof out; i++)
        FUZZ_CHECK((unsigned char)out[i] == 0x5a);
    if (bad) {
        FUZZ_CHECK(got == -1 && why[0] != '\0');
    } else {
        FUZZ_CHECK(got == (long)w && !memcmp(out, want, w) && out[w] == '\0');
    }
    free(copy);
    free(want);
    return 0;
}
