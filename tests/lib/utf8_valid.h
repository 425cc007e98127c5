/* The tests' one UTF-8 checker (the fuzz oracles, the C unit tests): include it
 * as "../lib/utf8_valid.h" from tests/fuzz or tests/unit. */
#ifndef TESTS_LIB_UTF8_VALID_H
#define TESTS_LIB_UTF8_VALID_H

#include <stdbool.h>
#include <stddef.h>

/* RFC 3629 UTF-8, written plainly: no overlong forms, no surrogates, nothing past
 * U+10FFFF.  (cJSON does not check it; the gateway's aiohttp does.) */
static inline bool utf8_valid(const char *text, size_t n)
{
    const unsigned char *s = (const unsigned char *)text;
    for (size_t i = 0; i < n;) {
        unsigned c = s[i], cp, min;
        size_t k;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            k = 1, cp = c & 0x1f, min = 0x80;
        } else if ((c & 0xf0) == 0xe0) {
            k = 2, cp = c & 0x0f, min = 0x800;
        } else if ((c & 0xf8) == 0xf0) {
            k = 3, cp = c & 0x07, min = 0x10000;
        } else {
            return false;
        }
        if (n - i - 1 < k)
            return false;
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xc0) != 0x80)
                return false;
            cp = cp << 6 | (s[i + j] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += k + 1;
    }
    return true;
}

#endif
