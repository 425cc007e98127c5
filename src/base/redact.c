#include "redact.h"
#include "util.h"
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Every form of every secret, longest first, so that a form containing another one
 * is replaced whole. */
static struct form {
    char *p;
    size_t n;
    unsigned refs;   /* secrets having this form */
} *forms;
static size_t nforms, capforms, nsecrets;

static void add_form(const char *p, size_t n)
{
    if (!n)
        return;
    for (size_t i = 0; i < nforms; i++)
        if (forms[i].n == n && !memcmp(forms[i].p, p, n)) {
            forms[i].refs++;
            return;
        }
    if (nforms == capforms) {
        capforms = capforms ? capforms * 2 : 16;
        forms = realloc(forms, capforms * sizeof *forms);
        if (!forms)
            abort();
    }
    size_t at = 0;
    while (at < nforms && forms[at].n >= n)
        at++;
    memmove(forms + at + 1, forms + at, (nforms - at) * sizeof *forms);
    forms[at].p = malloc(n);
    if (!forms[at].p)
        abort();
    memcpy(forms[at].p, p, n);
    forms[at].n = n;
    forms[at].refs = 1;
    nforms++;
}

static void remove_form(const char *p, size_t n)
{
    for (size_t i = 0; i < nforms; i++)
        if (forms[i].n == n && !memcmp(forms[i].p, p, n)) {
            if (--forms[i].refs)
                return;
            explicit_bzero(forms[i].p, forms[i].n);
            free(forms[i].p);
            memmove(forms + i, forms + i + 1, (nforms - i - 1) * sizeof *forms);
            nforms--;
            return;
        }
}

/* Decodes one UTF-8 sequence at s (at most len bytes); returns its length, 0 if invalid. */
static size_t utf8_decode(const unsigned char *s, size_t len, uint32_t *cp)
{
    size_t n = s[0] < 0x80 ? 1 : s[0] >= 0xf0 ? 4 : s[0] >= 0xe0 ? 3 : s[0] >= 0xc0 ? 2 : 0;
    if (!n || n > len)
        return 0;
    uint32_t v = n == 1 ? s[0] : (uint32_t)(s[0] & (0xff >> (n + 1)));
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        v = (v << 6) | (s[i] & 0x3f);
    }
    *cp = v;
    return n;
}

/* A string as Python's json.dumps writes it (quotes left off): short escapes for
 * \b \f \n \r \t, \u00XX for other control characters and, with ascii, \uXXXX
 * (surrogate pairs above U+FFFF) for everything that is not ASCII. */
static void python_json_form(struct buf *out, const char *s, bool ascii)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t len = strlen(s);
    for (size_t i = 0; i < len;) {
        unsigned char c = p[i];
        const char *esc = c == '"' ? "\\\"" : c == '\\' ? "\\\\" : c == '\n' ? "\\n" : c == '\r' ? "\\r"
                        : c == '\t' ? "\\t" : c == '\b' ? "\\b" : c == '\f' ? "\\f" : NULL;
        if (esc) {
            buf_puts(out, esc);
            i++;
        } else if (c < 0x20) {
            buf_printf(out, "\\u%04x", c);
            i++;
        } else if (c < 0x80 || !ascii) {
            buf_append(out, p + i, 1);
            i++;
        } else {
            uint32_t cp;
            size_t n = utf8_decode(p + i, len - i, &cp);
            if (!n) { /* not UTF-8: Python could not have read it as text either */
                buf_append(out, p + i, 1);
                i++;
                continue;
            }
            if (cp >= 0x10000) {
                cp -= 0x10000;
                buf_printf(out, "\\u%04x\\u%04x", 0xd800 + (cp >> 10), 0xdc00 + (cp & 0x3ff));
            } else {
                buf_printf(out, "\\u%04x", cp);
            }
            i += n;
        }
    }
}

static void base64_form(struct buf *out, const char *s)
{
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s);
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0) | (i + 2 < n ? p[i + 2] : 0);
        char q[4] = {tbl[v >> 18 & 63], tbl[v >> 12 & 63], i + 1 < n ? tbl[v >> 6 & 63] : '=',
                     i + 2 < n ? tbl[v & 63] : '='};
        buf_append(out, q, 4);
    }
}

/* Every spelling of secret, each given to op. */
static void each_form(const char *secret, void (*op)(const char *, size_t))
{
    op(secret, strlen(secret));
    char *enc = url_encode(secret);
    if (enc)
        op(enc, strlen(enc));
    free(enc);
    struct buf b;
    buf_init(&b, 0);
    for (int k = 0; k < 4; k++) {
        b.len = 0;
        if (k == 0)
            python_json_form(&b, secret, false);
        else if (k == 1)
            python_json_form(&b, secret, true);
        else if (k == 2) { /* tgbridge's own escaping (buf_json_string), quotes dropped */
            buf_json_string(&b, secret, strlen(secret));
            buf_consume(&b, 1);
            b.len--;
        } else
            base64_form(&b, secret);
        op(buf_ptr(&b), b.len);
    }
    if (b.data)
        explicit_bzero(b.data, b.cap);
    buf_free(&b);
}

void secret_add(const char *secret)
{
    if (!secret || !*secret)
        return;
    size_t before = nforms;
    each_form(secret, add_form);
    if (nforms > before)
        nsecrets++;
}

void secret_remove(const char *secret)
{
    if (!secret || !*secret)
        return;
    size_t before = nforms;
    each_form(secret, remove_form);
    if (nforms < before && nsecrets)
        nsecrets--;
}

void secret_add_userinfo(const char *userinfo)
{
    secret_add(userinfo);
    const char *colon = userinfo ? strchr(userinfo, ':') : NULL;
    if (colon)
        secret_add(colon + 1);
}

size_t secret_count(void)
{
    return nsecrets;
}

void secrets_clear(void)
{
    for (size_t i = 0; i < nforms; i++) {
        explicit_bzero(forms[i].p, forms[i].n);
        free(forms[i].p);
    }
    free(forms);
    forms = NULL;
    nforms = capforms = nsecrets = 0;
}

/* One pass per form, resuming after each replacement: a form that REDACTED itself
 * contains (a secret "*") cannot make it loop. */
static bool redact_once(struct buf *b, const struct form *f, size_t start)
{
    const char *hit = b->len - start >= f->n ? memmem(buf_ptr(b) + start, b->len - start, f->p, f->n) : NULL;
    if (!hit)
        return false;
    struct buf out;
    buf_init(&out, b->pre);
    size_t from = 0;
    while (hit) {
        size_t at = (size_t)(hit - buf_ptr(b));
        buf_append(&out, buf_ptr(b) + from, at - from);
        buf_puts(&out, REDACTED);
        from = at + f->n;
        hit = b->len - from >= f->n ? memmem(buf_ptr(b) + from, b->len - from, f->p, f->n) : NULL;
    }
    buf_append(&out, buf_ptr(b) + from, b->len - from);
    explicit_bzero(b->data, b->cap);
    buf_free(b);
    *b = out;
    return true;
}

void redact_buf(struct buf *b)
{
    redact_buf_from(b, 0);
}

void redact_buf_from(struct buf *b, size_t start)
{
    if (start >= b->len)
        return;
    for (size_t i = 0; i < nforms; i++)
        redact_once(b, &forms[i], start);
}

char *redact_dup(const char *s, size_t n)
{
    struct buf b;
    buf_init(&b, 0);
    buf_append(&b, s, n);
    redact_buf(&b);
    char *out = strdup(buf_ptr(&b));
    buf_free(&b);
    if (!out)
        abort();
    return out;
}

void redact_str(char *s, size_t cap)
{
    if (!nforms || !cap)
        return;
    char *r = redact_dup(s, strlen(s));
    snprintf(s, cap, "%s", r);
    free(r);
}
