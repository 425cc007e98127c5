/* Shared by the fuzz targets (tests/fuzz/fuzz_*.c): the property check and the
 * plainly written JSON oracles they compare tgbridge's parsers with.  Test code:
 * simple over fast, and independent of src/ (nothing here calls tgbridge).
 *
 * Every target defines LLVMFuzzerTestOneInput; it is built two ways (Makefile):
 * with libFuzzer (`make fuzz`, clang) and with tests/fuzz/replay.c (`make test`, the
 * normal compiler), which runs it over the checked-in corpus tests/fuzz/corpus/<t>. */
#ifndef TGB_FUZZ_COMMON_H
#define TGB_FUZZ_COMMON_H
#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../lib/utf8_valid.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A violated property: say which, then abort (libFuzzer saves the input as crash-*;
 * replay.c names the corpus file). */
#define FUZZ_CHECK(cond)                                                                 \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            fprintf(stderr, "%s:%d: property violated: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                                     \
        }                                                                                \
    } while (0)

/* An exact-size copy (ASan sees a read one past the end), NUL-terminated at n when
 * nul is true (then n + 1 bytes). */
static inline char *fz_copy(const uint8_t *data, size_t n, bool nul)
{
    char *p = malloc(nul ? n + 1 : n ? n : 1);
    if (!p)
        abort();
    if (n)
        memcpy(p, data, n);
    else
        p[0] = '\0'; /* the one byte of an empty copy: never read, but initialised */
    if (nul)
        p[n] = '\0';
    return p;
}

static inline bool fz_is_hex(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static inline unsigned fz_hex4(const unsigned char *p)
{
    unsigned v = 0;
    for (int k = 0; k < 4; k++)
        v = v * 16 + (unsigned)(p[k] <= '9' ? p[k] - '0' : (p[k] | 0x20) - 'a' + 10);
    return v;
}

static inline bool fz_is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

/* What a plain left-to-right scan of a text sees, token by token, without judging
 * its structure (cJSON does that).  Together with "cJSON parsed it whole" this is
 * RFC 8259 JSON as Python's json module writes and reads it. */
struct fz_lex {
    bool utf8_ok;      /* the whole text is RFC 3629 UTF-8 */
    bool strings_ok;   /* every string is closed, holds no raw control character and
                        * only RFC 8259 escapes (\u with four hex digits) */
    bool tokens_ok;    /* outside strings only JSON whitespace (space, \t, \n, \r),
                        * structural characters, true/false/null, RFC 8259 numbers and
                        * NaN/Infinity/-Infinity: no other control character (cJSON skips
                        * them all as whitespace), no byte-order mark (cJSON skips it),
                        * no leading zero, no "1." or "-.5" (cJSON's strtod takes them) */
    bool nonfinite;    /* a NaN, Infinity or -Infinity token: Python's json writes and
                        * reads them, cJSON refuses them */
    bool cjson_refuses_escape; /* a \u escape cJSON refuses although RFC 8259 allows it: a
                                * lone surrogate (Python's json takes those) */
    bool escaped_key;  /* an object key (a string followed by ':') holding a backslash
                        * that decodes to one of the names given to fz_lex_scan */
    size_t max_depth;  /* deepest nesting of brackets outside strings */
};

/* A number or literal must end at whitespace, a structural character or the end: in
 * "5Infinity" or "1true" the two tokens would run together. */
static inline void fz_lex_token_end(const unsigned char *p, size_t i, size_t len, struct fz_lex *o)
{
    if (i < len && (!p[i] || !strchr(" \t\n\r,:]}", p[i])))
        o->tokens_ok = false;
}

/* names: NULL-terminated list for escaped_key, or NULL. */
static inline void fz_lex_scan(const char *text, size_t len, const char *const *names, struct fz_lex *o)
{
    const unsigned char *p = (const unsigned char *)text;
    memset(o, 0, sizeof *o);
    o->utf8_ok = utf8_valid(text, len);
    o->strings_ok = o->tokens_ok = true;
    size_t depth = 0, i = 0;
    while (i < len) {
        unsigned char c = p[i];
        if (c == '"') {
            size_t start = i++;
            bool closed = false, backslash = false;
            while (i < len) {
                c = p[i];
                if (c == '"') {
                    closed = true;
                    i++;
                    break;
                }
                if (c < 0x20)
                    o->strings_ok = false;
                if (c != '\\') {
                    i++;
                    continue;
                }
                backslash = true;
                if (i + 1 >= len) {
                    o->strings_ok = false;
                    i++;
                    break;
                }
                unsigned char e = p[i + 1];
                if (e != 'u') {
                    if (!e || !strchr("\"\\/bfnrt", e))
                        o->strings_ok = false;
                    i += 2;
                    continue;
                }
                if (len - i < 6 || !fz_is_hex(p[i + 2]) || !fz_is_hex(p[i + 3]) || !fz_is_hex(p[i + 4]) ||
                    !fz_is_hex(p[i + 5])) {
                    o->strings_ok = false;
                    i += 2;
                    continue;
                }
                unsigned cp = fz_hex4(p + i + 2);
                if (cp >= 0xdc00 && cp <= 0xdfff) {
                    o->cjson_refuses_escape = true;
                } else if (cp >= 0xd800 && cp <= 0xdbff) {
                    if (len - i >= 12 && p[i + 6] == '\\' && p[i + 7] == 'u' && fz_is_hex(p[i + 8]) &&
                        fz_is_hex(p[i + 9]) && fz_is_hex(p[i + 10]) && fz_is_hex(p[i + 11])) {
                        unsigned lo = fz_hex4(p + i + 8);
                        if (lo >= 0xdc00 && lo <= 0xdfff) {
                            i += 12;
                            continue;
                        }
                    }
                    o->cjson_refuses_escape = true;
                }
                i += 6;
            }
            if (!closed) {
                o->strings_ok = false;
                continue;
            }
            if (backslash && names) {
                size_t j = i;
                while (j < len && (p[j] == ' ' || p[j] == '\t' || p[j] == '\n' || p[j] == '\r'))
                    j++;
                if (j < len && p[j] == ':') {
                    cJSON *k = cJSON_ParseWithLength(text + start, i - start);
                    if (cJSON_IsString(k))
                        for (const char *const *n = names; *n; n++)
                            if (!strcmp(k->valuestring, *n))
                                o->escaped_key = true;
                    cJSON_Delete(k);
                }
            }
            continue;
        }
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == ',' || c == ':') {
            i++;
        } else if (c == '{' || c == '[') {
            if (++depth > o->max_depth)
                o->max_depth = depth;
            i++;
        } else if (c == '}' || c == ']') {
            if (depth)
                depth--;
            i++;
        } else if (c == 't' || c == 'f' || c == 'n' || c == 'N' || c == 'I' ||
                   (c == '-' && i + 1 < len && p[i + 1] == 'I')) {
            static const char *const lits[] = {"true", "false", "null", "NaN", "Infinity", "-Infinity"};
            size_t k = 0;
            for (; k < 6; k++) {
                size_t n = strlen(lits[k]);
                if (len - i >= n && !memcmp(p + i, lits[k], n))
                    break;
            }
            if (k == 6) {
                o->tokens_ok = false;
                i++;
            } else {
                if (k >= 3)
                    o->nonfinite = true;
                i += strlen(lits[k]);
                fz_lex_token_end(p, i, len, o);
            }
        } else if (c == '-' || fz_is_digit(c)) {
            size_t j = i;
            bool ok = true;
            if (p[j] == '-')
                j++;
            if (j < len && p[j] == '0') {
                j++;
            } else if (j < len && fz_is_digit(p[j])) {
                while (j < len && fz_is_digit(p[j]))
                    j++;
            } else {
                ok = false;
            }
            if (ok && j < len && p[j] == '.') {
                j++;
                if (j >= len || !fz_is_digit(p[j]))
                    ok = false;
                while (j < len && fz_is_digit(p[j]))
                    j++;
            }
            if (ok && j < len && (p[j] == 'e' || p[j] == 'E')) {
                j++;
                if (j < len && (p[j] == '+' || p[j] == '-'))
                    j++;
                if (j >= len || !fz_is_digit(p[j]))
                    ok = false;
                while (j < len && fz_is_digit(p[j]))
                    j++;
            }
            /* "01", "1.", "1.e5", "-.5": one number to cJSON (strtod), not JSON. */
            if (j < len && strchr("0123456789+-.eE", p[j]) && p[j])
                ok = false;
            if (!ok) {
                o->tokens_ok = false;
                while (j < len && p[j] && strchr("0123456789+-.eE", p[j]))
                    j++;
            }
            i = j > i ? j : i + 1;
            fz_lex_token_end(p, i, len, o);
        } else {
            o->tokens_ok = false;
            i++;
        }
    }
}

/* cJSON's parse of the whole text: the value, when only JSON whitespace follows it
 * (NULL otherwise).  cJSON skips a leading byte-order mark and any leading bytes up to
 * 0x20; fz_lex_scan's tokens_ok tells whether those were there. */
static inline cJSON *fz_cjson_whole(const char *text, size_t len)
{
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!root)
        return NULL;
    if (!end || end < text || (size_t)(end - text) > len) {
        cJSON_Delete(root);
        return NULL;
    }
    for (const char *q = end; q < text + len; q++)
        if (*q != ' ' && *q != '\t' && *q != '\r' && *q != '\n') {
            cJSON_Delete(root);
            return NULL;
        }
    return root;
}

static inline size_t fz_child_count(const cJSON *o)
{
    size_t n = 0;
    for (const cJSON *c = o ? o->child : NULL; c; c = c->next)
        n++;
    return n;
}

static inline size_t fz_name_count(const cJSON *o, const char *name)
{
    size_t n = 0;
    for (const cJSON *c = o ? o->child : NULL; c; c = c->next)
        if (c->string && !strcmp(c->string, name))
            n++;
    return n;
}

/* Same type, same value, and for arrays and objects the same members in the same
 * order (names included).  Not cJSON_Compare: that looks object members up by name, so
 * {"a":1,"a":2} differs from itself.  Both sides here come from the same bytes. */
static inline bool fz_equal(const cJSON *a, const cJSON *b)
{
    if (!a || !b)
        return a == b;
    if ((a->type & 0xff) != (b->type & 0xff))
        return false;
    if (cJSON_IsNumber(a))
        return a->valuedouble == b->valuedouble;
    if (cJSON_IsString(a))
        return !strcmp(a->valuestring, b->valuestring);
    if (!cJSON_IsArray(a) && !cJSON_IsObject(a))
        return true;
    const cJSON *x = a->child, *y = b->child;
    for (; x && y; x = x->next, y = y->next) {
        if (cJSON_IsObject(a) && (!x->string || !y->string || strcmp(x->string, y->string)))
            return false;
        if (!fz_equal(x, y))
            return false;
    }
    return !x && !y;
}

/* The string value of member `name` of o, or NULL. */
static inline const char *fz_str(const cJSON *o, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}
#endif
