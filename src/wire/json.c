#include "json.h"
#include <cjson/cJSON.h>
#include <string.h>

size_t json_skip_ws(const char *p, size_t i, size_t len)
{
    while (i < len && (p[i] == ' ' || p[i] == '\t' || p[i] == '\n' || p[i] == '\r'))
        i++;
    return i;
}

static size_t string_len(const char *p, size_t len)
{
    for (size_t i = 1; i < len; i++) {
        if (p[i] == '\\')
            i++;
        else if (p[i] == '"')
            return i + 1;
    }
    return 0;
}

/* Callers have validated the text with cJSON, so this only has to find the end
 * of a value, not judge it. */
size_t json_value_len(const char *p, size_t len)
{
    if (!len)
        return 0;
    if (p[0] == '"')
        return string_len(p, len);
    if (p[0] == '{' || p[0] == '[') {
        int depth = 0;
        for (size_t i = 0; i < len; i++) {
            char c = p[i];
            if (c == '"') {
                size_t s = string_len(p + i, len - i);
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

long json_members(const char *text, size_t len, json_member_fn fn, void *arg)
{
    size_t i = json_skip_ws(text, 0, len);
    if (i >= len || text[i] != '{')
        return -1;
    i = json_skip_ws(text, i + 1, len);
    if (i < len && text[i] == '}')
        return (long)i + 1;
    for (;;) {
        if (i >= len || text[i] != '"')
            return -1;
        size_t kl = string_len(text + i, len - i);
        if (!kl)
            return -1;
        struct span key = {text + i + 1, kl - 2};
        i = json_skip_ws(text, i + kl, len);
        if (i >= len || text[i] != ':')
            return -1;
        i = json_skip_ws(text, i + 1, len);
        size_t vl = json_value_len(text + i, len - i);
        if (!vl)
            return -1;
        fn(key, (struct span){text + i, vl}, arg);
        i = json_skip_ws(text, i + vl, len);
        if (i < len && text[i] == '}')
            return (long)i + 1;
        if (i >= len || text[i] != ',')
            return -1;
        i = json_skip_ws(text, i + 1, len);
    }
}

bool span_is(struct span v, const char *lit)
{
    return v.p && v.n == strlen(lit) && !memcmp(v.p, lit, v.n);
}

struct top_find {
    const char *key;
    struct span *out;
    bool found;
};

static void find_member(struct span key, struct span value, void *arg)
{
    struct top_find *t = arg;
    /* Our keys never need escapes; an escaped key simply won't match. */
    if (!t->found && span_is(key, t->key)) {
        *t->out = value;
        t->found = true;
    }
}

int json_top_value(const char *text, size_t len, const char *key, struct span *out)
{
    struct top_find t = {key, out, false};
    return json_members(text, len, find_member, &t) >= 0 && t.found ? 0 : -1;
}

static size_t put_utf8(char *o, unsigned cp)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xc0 | cp >> 6);
        o[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xe0 | cp >> 12);
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        o[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (char)(0xf0 | cp >> 18);
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    o[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* The four hex digits at p (n bytes left), or -1. */
static long hex4(const char *p, size_t n)
{
    if (n < 4)
        return -1;
    long v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        int h = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
              : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (h < 0)
            return -1;
        v = v * 16 + h;
    }
    return v;
}

/* One escape after the backslash at p[i]: the code point, and i moved past it. */
static long unescape(const char *p, size_t *i, size_t end)
{
    static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
    char e = p[*i + 1];
    const char *k = *i + 1 < end && e ? strchr(from, e) : NULL;
    if (k) {
        *i += 2;
        return (unsigned char)to[k - from];
    }
    long cp = e == 'u' ? hex4(p + *i + 2, end - *i - 2) : -1;
    if (cp < 0)
        return -1;
    *i += 6;
    if (cp >= 0xd800 && cp <= 0xdbff && *i + 1 < end && p[*i] == '\\' && p[*i + 1] == 'u') {
        long lo = hex4(p + *i + 2, end - *i - 2);
        if (lo >= 0xdc00 && lo <= 0xdfff) {
            *i += 6;
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
        }
    }
    return cp;
}

long json_string_decode(struct span v, char *out, size_t cap)
{
    if (!v.p || v.n < 2 || v.p[0] != '"' || v.p[v.n - 1] != '"')
        return -1;
    size_t i = 1, end = v.n - 1, o = 0;
    while (i < end) {
        unsigned cp;
        if (v.p[i] == '\\') {
            long c = unescape(v.p, &i, end);
            if (c < 0)
                return -1;
            cp = (unsigned)c;
        } else if (v.p[i] == '"' || (unsigned char)v.p[i] < 0x20) {
            return -1;
        } else {
            if (o >= cap)
                return -1;
            out[o++] = v.p[i++];
            continue;
        }
        char u[4];
        size_t n = put_utf8(u, cp);
        if (o + n > cap)
            return -1;
        memcpy(out + o, u, n);
        o += n;
    }
    return i == end ? (long)o : -1;
}

/* Length of the valid UTF-8 sequence at p (RFC 3629: no overlongs, no surrogates,
 * nothing above U+10FFFF), or 0. */
static size_t utf8_seq_len(const unsigned char *p, size_t len)
{
    unsigned char c = p[0];
    size_t n;
    unsigned min;
    unsigned cp;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) { n = 2; cp = c & 0x1f; min = 0x80; }
    else if (c >= 0xe0 && c <= 0xef) { n = 3; cp = c & 0x0f; min = 0x800; }
    else if (c >= 0xf0 && c <= 0xf4) { n = 4; cp = c & 0x07; min = 0x10000; }
    else return 0;
    if (len < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return n;
}

/* The validator walks the text once with an explicit stack of open containers (one
 * bit each: object or array), so a hostile nesting depth costs no C stack. */
struct jv {
    const unsigned char *p;
    size_t i, len;
};

static bool jv_lit(struct jv *v, const char *lit)
{
    size_t n = strlen(lit);
    if (v->len - v->i < n || memcmp(v->p + v->i, lit, n))
        return false;
    v->i += n;
    return true;
}

static bool is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

static bool jv_number(struct jv *v)
{
    if (v->i < v->len && v->p[v->i] == '-') {
        v->i++;
        if (v->i < v->len && v->p[v->i] == 'I')
            return jv_lit(v, "Infinity");
    }
    if (v->i >= v->len)
        return false;
    if (v->p[v->i] == '0') {
        v->i++;
    } else if (is_digit(v->p[v->i])) {
        while (v->i < v->len && is_digit(v->p[v->i]))
            v->i++;
    } else {
        return false;
    }
    if (v->i < v->len && v->p[v->i] == '.') {
        v->i++;
        if (v->i >= v->len || !is_digit(v->p[v->i]))
            return false;
        while (v->i < v->len && is_digit(v->p[v->i]))
            v->i++;
    }
    if (v->i < v->len && (v->p[v->i] == 'e' || v->p[v->i] == 'E')) {
        v->i++;
        if (v->i < v->len && (v->p[v->i] == '+' || v->p[v->i] == '-'))
            v->i++;
        if (v->i >= v->len || !is_digit(v->p[v->i]))
            return false;
        while (v->i < v->len && is_digit(v->p[v->i]))
            v->i++;
    }
    return true;
}

static bool is_hex(unsigned char c)
{
    return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static bool jv_string(struct jv *v)
{
    v->i++; /* the opening quote */
    while (v->i < v->len) {
        unsigned char c = v->p[v->i];
        if (c == '"') {
            v->i++;
            return true;
        }
        if (c < 0x20)
            return false;
        if (c == '\\') {
            if (++v->i >= v->len)
                return false;
            c = v->p[v->i];
            if (c == 'u') {
                if (v->len - v->i < 5)
                    return false;
                for (int k = 1; k <= 4; k++)
                    if (!is_hex(v->p[v->i + (size_t)k]))
                        return false;
                v->i += 5;
            } else if (strchr("\"\\/bfnrt", c) && c) {
                v->i++;
            } else {
                return false;
            }
            continue;
        }
        if (c < 0x80) {
            v->i++;
            continue;
        }
        size_t n = utf8_seq_len(v->p + v->i, v->len - v->i);
        if (!n)
            return false;
        v->i += n;
    }
    return false;
}

/* A scalar value (anything but an object or array) at v->i. */
static bool jv_scalar(struct jv *v)
{
    switch (v->p[v->i]) {
    case '"': return jv_string(v);
    case 't': return jv_lit(v, "true");
    case 'f': return jv_lit(v, "false");
    case 'n': return jv_lit(v, "null");
    case 'N': return jv_lit(v, "NaN");
    case 'I': return jv_lit(v, "Infinity");
    default: return jv_number(v);
    }
}

bool json_too_deep(const char *text, size_t len)
{
    size_t depth = 0;
    bool in_string = false;
    for (size_t i = 0; i < len; i++) {
        char c = text[i];
        if (in_string) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_string = false;
        } else if (c == '"') {
            in_string = true;
        } else if (c == '{' || c == '[') {
            if (++depth > JSON_MAX_DEPTH)
                return true;
        } else if ((c == '}' || c == ']') && depth) {
            depth--;
        }
    }
    return false;
}

/* Where json_valid is in a text: before a value, before an object member's key,
 * after a value; or done. */
enum jv_next { JV_VALUE, JV_KEY, JV_AFTER, JV_VALID, JV_INVALID };

/* The containers open around the current position, a bit each: object or array. */
struct jv_stack {
    unsigned char is_object[JSON_MAX_DEPTH / 8];
    size_t depth;
};

static bool jv_in_object(const struct jv_stack *s)
{
    return s->is_object[(s->depth - 1) / 8] & (1u << ((s->depth - 1) % 8));
}

/* At '{' or '[': opened, or closed at once when empty. */
static enum jv_next jv_open(struct jv *v, struct jv_stack *s, const char *text)
{
    unsigned char c = v->p[v->i];
    if (s->depth == JSON_MAX_DEPTH)
        return JV_INVALID;
    if (c == '{')
        s->is_object[s->depth / 8] |= (unsigned char)(1u << (s->depth % 8));
    else
        s->is_object[s->depth / 8] &= (unsigned char)~(1u << (s->depth % 8));
    s->depth++;
    v->i = json_skip_ws(text, v->i + 1, v->len);
    if (v->i < v->len && v->p[v->i] == (c == '{' ? '}' : ']')) {
        v->i++;
        s->depth--;
        return JV_AFTER;
    }
    return c == '{' ? JV_KEY : JV_VALUE;
}

static enum jv_next jv_value(struct jv *v, struct jv_stack *s, const char *text)
{
    v->i = json_skip_ws(text, v->i, v->len);
    if (v->i >= v->len)
        return JV_INVALID;
    if (v->p[v->i] == '{' || v->p[v->i] == '[')
        return jv_open(v, s, text);
    return jv_scalar(v) ? JV_AFTER : JV_INVALID;
}

/* After a value inside a container: ',' (then a key or a value), or the container's
 * closer (then after a value again, one level out); at the top: the end.  One step
 * at a time, so that a walker sees each level it returns to. */
static enum jv_next jv_after(struct jv *v, struct jv_stack *s, const char *text)
{
    v->i = json_skip_ws(text, v->i, v->len);
    if (!s->depth)
        return v->i == v->len ? JV_VALID : JV_INVALID;
    bool in_object = jv_in_object(s);
    if (v->i >= v->len)
        return JV_INVALID;
    unsigned char c = v->p[v->i];
    if (c == (in_object ? '}' : ']')) {
        v->i++;
        s->depth--;
        return JV_AFTER;
    }
    if (c != ',')
        return JV_INVALID;
    v->i++;
    return in_object ? JV_KEY : JV_VALUE;
}

/* An object member's key and its ':'; *key (if not NULL) gets the key's bytes, quotes
 * excluded. */
static enum jv_next jv_key(struct jv *v, const char *text, struct span *key)
{
    v->i = json_skip_ws(text, v->i, v->len);
    size_t at = v->i;
    if (v->i >= v->len || v->p[v->i] != '"' || !jv_string(v))
        return JV_INVALID;
    if (key)
        *key = (struct span){text + at + 1, v->i - at - 2};
    v->i = json_skip_ws(text, v->i, v->len);
    if (v->i >= v->len || v->p[v->i] != ':')
        return JV_INVALID;
    v->i++;
    return JV_VALUE;
}

bool json_valid(const char *text, size_t len)
{
    struct jv v = {(const unsigned char *)text, 0, len};
    struct jv_stack s;
    s.depth = 0;
    enum jv_next next = JV_VALUE;
    for (;;) {
        switch (next) {
        case JV_VALUE:
            next = jv_value(&v, &s, text);
            break;
        case JV_KEY:
            next = jv_key(&v, text, NULL);
            break;
        case JV_AFTER:
            next = jv_after(&v, &s, text);
            break;
        case JV_VALID:
            return true;
        default:
            return false;
        }
    }
}

/* The top-level member being read: its key, where its value starts. */
struct jv_member {
    struct span key;
    size_t value_at;
    bool open;
};

/* json_valid's walk, telling fn each member of the top-level object as its value ends
 * (depth 1 again, nothing past the value read yet). */
long json_valid_members(const char *text, size_t len, json_member_fn fn, void *arg)
{
    struct jv v = {(const unsigned char *)text, json_skip_ws(text, 0, len), len};
    struct jv_stack s;
    s.depth = 0;
    if (v.i >= len || text[v.i] != '{')
        return -1;
    struct jv_member m = {{NULL, 0}, 0, false};
    long end = -1;
    enum jv_next next = jv_open(&v, &s, text);
    for (;;) {
        switch (next) {
        case JV_KEY:
            next = jv_key(&v, text, s.depth == 1 ? &m.key : NULL);
            if (s.depth == 1) {
                m.value_at = json_skip_ws(text, v.i, len);
                m.open = true;
            }
            break;
        case JV_VALUE:
            next = jv_value(&v, &s, text);
            break;
        case JV_AFTER:
            if (m.open && s.depth == 1) {
                fn(m.key, (struct span){text + m.value_at, v.i - m.value_at}, arg);
                m.open = false;
            }
            if (!s.depth && end < 0)
                end = (long)v.i;
            next = jv_after(&v, &s, text);
            break;
        case JV_VALID:
            return end;
        default:
            return -1;
        }
    }
}

const char *json_body_check(const char *body, size_t len, struct cJSON **rootp)
{
    const unsigned char *p = (const unsigned char *)body;
    bool in_string = false;
    for (size_t i = 0; i < len;) {
        unsigned char c = p[i];
        if (c >= 0x80) {
            size_t n = utf8_seq_len(p + i, len - i);
            if (!n)
                return "is not valid UTF-8";
            i += n;
            continue;
        }
        if (in_string) {
            if (c < 0x20)
                return "has a raw control character inside a JSON string";
            if (c == '\\')
                i++;
            else if (c == '"')
                in_string = false;
        } else if (c == '"') {
            in_string = true;
        } else if (c < 0x20 && c != '\t' && c != '\n' && c != '\r') {
            /* cJSON skips any control character as whitespace; Python's json does not. */
            return "has a control character outside a string";
        }
        i++;
    }
    /* cJSON is laxer than the gateway's parser (leading zeros, "1.", a byte-order mark,
     * bad \u escapes): what the gateway would refuse is refused here, with a 400,
     * rather than answered upstream with an error frame that names no request. */
    if (!json_valid(body, len))
        return "is not valid JSON";
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(body, len, &end, 0);
    if (!root)
        return "is not valid JSON";
    size_t off = end ? (size_t)(end - body) : len;
    off = json_skip_ws(body, off, len);
    if (off != len) {
        cJSON_Delete(root);
        return "has data after the JSON value";
    }
    if (rootp)
        *rootp = root;
    else
        cJSON_Delete(root);
    return NULL;
}
