#include "restname.h"
#include <stdio.h>
#include <string.h>

static int hex(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10
         : -1;
}

/* Length of the UTF-8 sequence at p (RFC 3629), or 0. */
static size_t utf8_len(const unsigned char *p, size_t n)
{
    unsigned c = p[0], cp, min;
    size_t k;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) { k = 2; cp = c & 0x1f; min = 0x80; }
    else if (c >= 0xe0 && c <= 0xef) { k = 3; cp = c & 0x0f; min = 0x800; }
    else if (c >= 0xf0 && c <= 0xf4) { k = 4; cp = c & 0x07; min = 0x10000; }
    else return 0;
    if (n < k)
        return 0;
    for (size_t i = 1; i < k; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    return cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff) ? 0 : k;
}

/* Whether byte c (escaped: it came as %XX) is refused, and why. */
static bool refused(unsigned char c, bool escaped, bool slashes, char *why, size_t whylen)
{
    if (c == 0)
        snprintf(why, whylen, "a NUL character (%%00)");
    else if (c < 0x20 || c == 0x7f)
        snprintf(why, whylen, "a control character (%%%02X)", c);
    else if (c == '{' || c == '}')
        snprintf(why, whylen, "the character '%c'", c);
    else if (c == '/' && !slashes)
        snprintf(why, whylen, escaped ? "an encoded slash (%%2F)" : "a slash");
    else
        return false;
    return true;
}

long rest_name_decode(const char *raw, size_t n, bool slashes, char *out, size_t cap, char *why, size_t whylen)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)raw[i];
        bool escaped = false;
        int hi, lo;
        if (c == '%' && i + 2 < n && (hi = hex(raw[i + 1])) >= 0 && (lo = hex(raw[i + 2])) >= 0) {
            c = (unsigned char)(hi * 16 + lo);
            escaped = true;
            i += 2;
        }
        if (refused(c, escaped, slashes, why, whylen))
            return -1;
        if (o + 1 >= cap) {
            snprintf(why, whylen, "more than %zu bytes", cap - 1);
            return -1;
        }
        out[o++] = (char)c;
    }
    if (!o) {
        snprintf(why, whylen, "an empty name");
        return -1;
    }
    out[o] = '\0';
    for (size_t i = 0; i < o;) {
        size_t k = utf8_len((const unsigned char *)out + i, o - i);
        if (!k) {
            snprintf(why, whylen, "bytes that are not UTF-8");
            return -1;
        }
        i += k;
    }
    return (long)o;
}
