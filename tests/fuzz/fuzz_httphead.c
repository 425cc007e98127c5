/* The request-head reader that routes every local connection (httphead.c
 * http_head_parse, http_list_has, http_query_param) against a reference written
 * plainly from httphead.h and RFC 9112's request line.
 *
 * Reference: the request line is METHOD (1-20 of A-Z) SP target (1+ bytes 0x21-0x7e)
 * SP "HTTP/1." DIGIT, then an optional CR, then LF.  Before its LF arrives, the bytes
 * are HEAD_INCOMPLETE while they can still become one, HEAD_NOT_HTTP from the first
 * byte that cannot.  After it, header lines (CR LF or LF) up to an empty one: until
 * that arrives, HEAD_INCOMPLETE; then HEAD_REQUEST, length just past the empty line.
 * A header line is "name: value" with name 1+ tchars (RFC 9110), value trimmed of
 * spaces and tabs (and trailing CRs); one starting with a space or tab (obsolete
 * folding) or without a valid name marks the head malformed.  Upgrade, Connection,
 * Origin, Host and Authorization are found case-insensitively, the first of each
 * kept, Host and Origin counted.  The target splits at its first '?' into path and
 * query.
 *
 * Properties: the same verdict as the reference, and for a request head every span
 * and count the same; bytes after the head change nothing; http_list_has and
 * http_query_param agree with plain splits of the parsed values. */
#include "fuzz_common.h"
#include "httphead.h"
#include <strings.h>

static bool tchar(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

static bool same_span(struct span a, struct span b)
{
    return a.p == b.p && a.n == b.n;
}

/* Can p[0..n) (no LF in it) still become a request line? */
static bool line_prefix_ok(const char *p, size_t n)
{
    size_t i = 0, k;
    for (k = 0; i < n && p[i] >= 'A' && p[i] <= 'Z'; i++)
        k++;
    if (i == n)
        return k <= 20;
    if (k == 0 || k > 20 || p[i++] != ' ')
        return false;
    for (k = 0; i < n && (unsigned char)p[i] > 0x20 && (unsigned char)p[i] < 0x7f; i++)
        k++;
    if (i == n)
        return true;
    if (k == 0 || p[i++] != ' ')
        return false;
    static const char proto[] = "HTTP/1.";
    for (k = 0; i < n && k < 7; i++, k++)
        if (p[i] != proto[k])
            return false;
    if (i == n)
        return true;
    if (p[i] < '0' || p[i] > '9')
        return false;
    i++;
    return i == n || (p[i] == '\r' && i + 1 == n);
}

/* A complete request line p[0..n) (its LF excluded); fills the request-line spans. */
static bool line_ok(const char *p, size_t n, struct http_head *h)
{
    if (n && p[n - 1] == '\r')
        n--;
    size_t i = 0;
    while (i < n && p[i] >= 'A' && p[i] <= 'Z')
        i++;
    if (i == 0 || i > 20 || i == n || p[i] != ' ')
        return false;
    h->method = (struct span){p, i};
    size_t t = ++i;
    while (i < n && (unsigned char)p[i] > 0x20 && (unsigned char)p[i] < 0x7f)
        i++;
    if (i == t || i == n || p[i] != ' ')
        return false;
    h->target = (struct span){p + t, i - t};
    i++;
    if (n - i != 8 || memcmp(p + i, "HTTP/1.", 7) || p[i + 7] < '0' || p[i + 7] > '9')
        return false;
    const char *q = memchr(h->target.p, '?', h->target.n);
    h->path = (struct span){h->target.p, q ? (size_t)(q - h->target.p) : h->target.n};
    if (q)
        h->query = (struct span){q + 1, h->target.n - h->path.n - 1};
    return true;
}

static void ref_header(struct http_head *h, const char *p, size_t n)
{
    if (p[0] == ' ' || p[0] == '\t') {
        h->malformed = true;
        return;
    }
    const char *colon = memchr(p, ':', n);
    size_t nl = colon ? (size_t)(colon - p) : 0;
    bool ok = nl > 0;
    for (size_t i = 0; i < nl; i++)
        ok = ok && tchar((unsigned char)p[i]);
    if (!ok) {
        h->malformed = true;
        return;
    }
    const char *v = colon + 1, *e = p + n;
    while (v < e && (*v == ' ' || *v == '\t'))
        v++;
    while (e > v && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r'))
        e--;
    struct span val = {v, (size_t)(e - v)};
    static const char *const names[] = {"upgrade", "connection", "origin", "host", "authorization"};
    struct span *slots[] = {&h->upgrade, &h->connection, &h->origin, &h->host, &h->authorization};
    for (int k = 0; k < 5; k++) {
        if (strlen(names[k]) != nl || strncasecmp(p, names[k], nl))
            continue;
        if (k == 2)
            h->n_origin++;
        if (k == 3)
            h->n_host++;
        if (!slots[k]->p)
            *slots[k] = val;
    }
}

static enum head_verdict reference(const char *buf, size_t len, struct http_head *h)
{
    memset(h, 0, sizeof *h);
    const char *nl = memchr(buf, '\n', len);
    if (!nl)
        return line_prefix_ok(buf, len) ? HEAD_INCOMPLETE : HEAD_NOT_HTTP;
    if (!line_ok(buf, (size_t)(nl - buf), h)) {
        memset(h, 0, sizeof *h);
        return HEAD_NOT_HTTP;
    }
    for (size_t i = (size_t)(nl - buf) + 1; i < len;) {
        const char *e = memchr(buf + i, '\n', len - i);
        if (!e)
            break;
        size_t end = (size_t)(e - buf), n = end - i;
        if (n && buf[end - 1] == '\r')
            n--;
        if (n == 0) {
            h->length = end + 1;
            return HEAD_REQUEST;
        }
        ref_header(h, buf + i, n);
        i = end + 1;
    }
    return HEAD_INCOMPLETE;
}

static bool ref_list_has(struct span v, const char *token)
{
    size_t tl = strlen(token), i = 0;
    while (i < v.n) {
        size_t end = i;
        while (end < v.n && v.p[end] != ',')
            end++;
        size_t a = i, b = end;
        while (a < b && (v.p[a] == ' ' || v.p[a] == '\t'))
            a++;
        while (b > a && (v.p[b - 1] == ' ' || v.p[b - 1] == '\t' || v.p[b - 1] == '\r'))
            b--;
        if (b - a == tl && !strncasecmp(v.p + a, token, tl))
            return true;
        i = end + 1;
    }
    return false;
}

static bool ref_query_param(struct span q, const char *name, struct span *out)
{
    size_t nl = strlen(name), i = 0;
    while (i < q.n) {
        size_t end = i;
        while (end < q.n && q.p[end] != '&')
            end++;
        if (end - i >= nl && !memcmp(q.p + i, name, nl) && (end - i == nl || q.p[i + nl] == '=')) {
            *out = end - i == nl ? (struct span){q.p + end, 0} : (struct span){q.p + i + nl + 1, end - i - nl - 1};
            return true;
        }
        i = end + 1;
    }
    return false;
}

static void check_heads_equal(const struct http_head *a, const struct http_head *b)
{
    FUZZ_CHECK(same_span(a->method, b->method) && same_span(a->target, b->target));
    FUZZ_CHECK(same_span(a->path, b->path) && same_span(a->query, b->query));
    FUZZ_CHECK(a->length == b->length);
    FUZZ_CHECK(same_span(a->upgrade, b->upgrade) && same_span(a->connection, b->connection));
    FUZZ_CHECK(same_span(a->origin, b->origin) && same_span(a->host, b->host));
    FUZZ_CHECK(same_span(a->authorization, b->authorization));
    FUZZ_CHECK(a->n_host == b->n_host && a->n_origin == b->n_origin);
    FUZZ_CHECK(a->malformed == b->malformed);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *buf = fz_copy(data, size, false);
    struct http_head h, want;
    enum head_verdict v = http_head_parse(buf, size, &h);
    enum head_verdict w = reference(buf, size, &want);
    if (v != w)
        fprintf(stderr, "http_head_parse says %d, the reference %d\n", (int)v, (int)w);
    FUZZ_CHECK(v == w);
    if (v == HEAD_REQUEST) {
        check_heads_equal(&h, &want);
        FUZZ_CHECK(h.length > 0 && h.length <= size && buf[h.length - 1] == '\n');
        /* What follows the head is the body's, or the next request's. */
        struct http_head again;
        FUZZ_CHECK(http_head_parse(buf, h.length, &again) == HEAD_REQUEST);
        check_heads_equal(&again, &h);
        static const char *const tokens[] = {"upgrade", "websocket", "Keep-Alive", ""};
        const struct span vals[] = {h.upgrade, h.connection, h.origin, h.host, h.authorization};
        for (size_t t = 0; t < sizeof tokens / sizeof *tokens; t++)
            for (size_t k = 0; k < sizeof vals / sizeof *vals; k++)
                FUZZ_CHECK(http_list_has(vals[k], tokens[t]) == ref_list_has(vals[k], tokens[t]));
        static const char *const params[] = {"token", "a", ""};
        for (size_t k = 0; k < sizeof params / sizeof *params; k++) {
            struct span got = {NULL, 0}, exp = {NULL, 0};
            bool g = http_query_param(h.query, params[k], &got);
            FUZZ_CHECK(g == ref_query_param(h.query, params[k], &exp));
            if (g)
                FUZZ_CHECK(same_span(got, exp));
        }
    }
    free(buf);
    return 0;
}
