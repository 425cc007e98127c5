/* jscan.h — a tiny, non-allocating scanner for the top-level keys of a JSON object.
 *
 * Used by the bench's fast mock gateway and its direct WebSocket client, so that neither
 * spends its time in a general JSON parser: both only need a few top-level fields
 * (id, type, request, complete, and a few payload knobs) from text they trust.  It finds
 * value spans; it does not validate.  Header-only (static functions) on purpose. */
#ifndef BENCH_JSCAN_H
#define BENCH_JSCAN_H
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

struct jspan {
    const char *p;
    size_t n;
};

static inline size_t js_ws(const char *p, size_t i, size_t len)
{
    while (i < len && (p[i] == ' ' || p[i] == '\t' || p[i] == '\n' || p[i] == '\r'))
        i++;
    return i;
}

/* Length of the string literal at p (p[0] == '"'), quotes included; 0 if unterminated. */
static inline size_t js_strlen(const char *p, size_t len)
{
    size_t i = 1;
    for (;;) {
        const char *q = memchr(p + i, '"', len - i);
        if (!q)
            return 0;
        size_t k = (size_t)(q - p);
        /* count the backslashes right before the quote */
        size_t bs = 0;
        while (k - bs > 0 && p[k - 1 - bs] == '\\')
            bs++;
        if (bs % 2 == 0)
            return k + 1;
        i = k + 1;
        if (i >= len)
            return 0;
    }
}

/* Length of the JSON value at p; 0 if it cannot be delimited. */
static inline size_t js_vallen(const char *p, size_t len)
{
    if (!len)
        return 0;
    if (p[0] == '"')
        return js_strlen(p, len);
    if (p[0] == '{' || p[0] == '[') {
        int depth = 0;
        for (size_t i = 0; i < len; i++) {
            char c = p[i];
            if (c == '"') {
                size_t s = js_strlen(p + i, len - i);
                if (!s)
                    return 0;
                i += s - 1;
            } else if (c == '{' || c == '[') {
                depth++;
            } else if (c == '}' || c == ']') {
                if (--depth == 0)
                    return i + 1;
            }
        }
        return 0;
    }
    size_t i = 0;
    while (i < len && !strchr(",}] \t\r\n", p[i]))
        i++;
    return i;
}

/* Calls fn(key, keylen, value, ctx) for every top-level member of the object in text.
 * Returns 0, or -1 when text is not an object it can walk. */
typedef void (*js_member_fn)(const char *key, size_t klen, struct jspan val, void *ctx);

static inline int js_members(const char *text, size_t len, js_member_fn fn, void *ctx)
{
    size_t i = js_ws(text, 0, len);
    if (i >= len || text[i] != '{')
        return -1;
    i = js_ws(text, i + 1, len);
    if (i < len && text[i] == '}')
        return 0;
    for (;;) {
        i = js_ws(text, i, len);
        if (i >= len || text[i] != '"')
            return -1;
        size_t kl = js_strlen(text + i, len - i);
        if (!kl)
            return -1;
        const char *key = text + i + 1;
        size_t klen = kl - 2;
        i = js_ws(text, i + kl, len);
        if (i >= len || text[i] != ':')
            return -1;
        i = js_ws(text, i + 1, len);
        size_t vl = js_vallen(text + i, len - i);
        if (!vl)
            return -1;
        struct jspan v = {text + i, vl};
        fn(key, klen, v, ctx);
        i = js_ws(text, i + vl, len);
        if (i >= len)
            return -1;
        if (text[i] == '}')
            return 0;
        if (text[i] != ',')
            return -1;
        i++;
    }
}

static inline bool js_key_is(const char *key, size_t klen, const char *want)
{
    size_t n = strlen(want);
    return klen == n && !memcmp(key, want, n);
}

static inline bool js_is_true(struct jspan v)
{
    return v.n == 4 && !memcmp(v.p, "true", 4);
}

static inline long long js_to_ll(struct jspan v)
{
    char tmp[32];
    size_t n = v.n < sizeof tmp - 1 ? v.n : sizeof tmp - 1;
    memcpy(tmp, v.p, n);
    tmp[n] = '\0';
    return strtoll(tmp, NULL, 10);
}
#endif
