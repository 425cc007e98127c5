#include "passpath.h"
#include "util.h"
#include <stdlib.h>
#include <string.h>

/* The routes the gateway serves and the methods it serves them with: aiohttp's GET
 * routes answer HEAD too (reference §2.2). */
static const char GET[] = "GET, HEAD", POST[] = "POST";
static const struct {
    const char *path; /* exact, or a prefix when it ends in '/' */
    enum pass_route route;
    const char *allow;
} routes[] = {
    /* The official metrics client asks for the bare /api/metrics, which the gateway
     * itself 404s (ref §2.2): relayed all the same. */
    {"/api/metrics", PASS_METRICS, GET},
    {"/api/metrics/", PASS_METRICS, GET},
    {"/api/v1/i18n/packs/", PASS_I18N, GET},
    {"/api/v1/document-stream", PASS_DOCUMENT_STREAM, GET},
    {"/api/v1/export-core", PASS_EXPORT_CORE, GET},
    {"/api/v1/import-core", PASS_IMPORT_CORE, POST},
    {"/api/v1/auth/login", PASS_AUTH, POST},
    {"/api/v1/auth/bootstrap", PASS_AUTH, POST},
    {"/api/v1/auth/bootstrap-status", PASS_AUTH, POST},
    {"/api/v1/auth/change-password", PASS_AUTH, POST},
};

/* The pass-through space: a refused spelling of anything under these is bad-path,
 * not "no such route", whether it starts there or resolves there. */
static const char *const space[] = {
    "/api/metrics", "/api/v1/auth", "/api/v1/i18n", "/api/v1/document-stream", "/api/v1/import-core",
    "/api/v1/export-core",
};

static bool unreserved(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
           c == '_' || c == '~';
}

/* What may stand unescaped in a path segment (RFC 3986 §3.3 pchar). */
static bool pchar(unsigned char c)
{
    return unreserved(c) || (c && strchr("!$&'()*+,;=:@", c));
}

struct canon {
    char *out;            /* 3 bytes per input byte, plus the NUL */
    size_t len;
    size_t seg_len, seg_dots; /* the current segment's decoded bytes, and its dots */
    const char *bad;      /* the first reason to refuse, or NULL */
};

static void note(struct canon *c, const char *why)
{
    if (!c->bad)
        c->bad = why;
}

static void segment_end(struct canon *c)
{
    if (c->seg_len && c->seg_len <= 2 && c->seg_dots == c->seg_len)
        note(c, "a dot segment");
    c->seg_len = c->seg_dots = 0;
}

static void put_decoded(struct canon *c, unsigned char v)
{
    static const char hex[] = "0123456789ABCDEF";
    c->seg_len++;
    c->seg_dots += v == '.';
    if (unreserved(v)) {
        c->out[c->len++] = (char)v;
        return;
    }
    c->out[c->len++] = '%';
    c->out[c->len++] = hex[v >> 4];
    c->out[c->len++] = hex[v & 15];
}

/* One pass over the raw path: the canonical form, and whether it must be refused. */
static void canonicalise(struct span path, struct canon *c)
{
    for (size_t i = 0; i < path.n; i++) {
        unsigned char ch = (unsigned char)path.p[i];
        if (ch == '/') {
            segment_end(c);
            c->out[c->len++] = '/';
            continue;
        }
        if (ch == '%') {
            int h = i + 2 < path.n ? hex_value(path.p[i + 1]) : -1;
            int l = i + 2 < path.n ? hex_value(path.p[i + 2]) : -1;
            if (h < 0 || l < 0) {
                note(c, "a broken percent escape");
                put_decoded(c, '%');
                continue;
            }
            unsigned char v = (unsigned char)(h * 16 + l);
            i += 2;
            if (v == '/')
                note(c, "an escaped slash (%2F)");
            else if (v == '\\')
                note(c, "a backslash");
            else if (!v)
                note(c, "an escaped NUL");
            put_decoded(c, v);
            continue;
        }
        if (ch == '\\')
            note(c, "a backslash");
        else if (ch < 0x21 || ch == 0x7f)
            note(c, "a space or a control character");
        if (pchar(ch) && !unreserved(ch)) {
            c->seg_len++;
            c->out[c->len++] = (char)ch;
        } else {
            put_decoded(c, ch); /* as is when unreserved, else escaped */
        }
    }
    segment_end(c);
    c->out[c->len] = '\0';
}

/* in_space for a span. */
static bool span_in_space(struct span p)
{
    for (size_t i = 0; i < sizeof space / sizeof *space; i++) {
        size_t n = strlen(space[i]);
        if (p.n >= n && !memcmp(p.p, space[i], n) && (p.n == n || p.p[n] == '/'))
            return true;
    }
    return false;
}

/* Nothing to decode, no backslash, nothing that could be a dot segment: the path
 * reads the same to every reader (raw spaces and control characters are refused only
 * inside the space; a NUL would end the path for a C reader), so it is in the
 * pass-through space exactly when it starts there.
 * Every REST request's path is looked at here first, and almost all are like this. */
static bool plain_outside_space(struct span p)
{
    if (memchr(p.p, '%', p.n) || memchr(p.p, '\\', p.n) || memchr(p.p, '\0', p.n) || memmem(p.p, p.n, "/.", 2))
        return false;
    return !span_in_space(p);
}

static bool in_space(const char *s)
{
    for (size_t i = 0; i < sizeof space / sizeof *space; i++) {
        size_t n = strlen(space[i]);
        if (!strncmp(s, space[i], n) && (s[n] == '\0' || s[n] == '/'))
            return true;
    }
    return false;
}

/* The path as a gateway that decodes every escape (and takes a backslash for a slash)
 * would see it, before and after resolving its dot segments: in the pass-through
 * space or not. */
static bool resolves_into_space(struct span path)
{
    char *d = malloc(path.n + 2);
    if (!d)
        abort();
    size_t n = 0;
    for (size_t i = 0; i < path.n; i++) {
        int h = path.p[i] == '%' && i + 2 < path.n ? hex_value(path.p[i + 1]) : -1;
        int l = h >= 0 ? hex_value(path.p[i + 2]) : -1;
        char ch = l >= 0 ? (char)(h * 16 + l) : path.p[i];
        i += l >= 0 ? 2 : 0;
        d[n++] = ch == '\\' ? '/' : ch;
    }
    d[n] = '\0';
    if (in_space(d)) {
        free(d);
        return true;
    }
    /* RFC 3986 §5.2.4, segment by segment, in place: w is where the output ends. */
    size_t w = 0, r = 0;
    while (r < n) {
        size_t s = r + 1, e = s;
        while (e < n && d[e] != '/')
            e++;
        size_t len = e - s;
        bool last = e >= n;
        if (len == 1 && d[s] == '.') {
            if (last)
                d[w++] = '/';
        } else if (len == 2 && d[s] == '.' && d[s + 1] == '.') {
            while (w > 0 && d[--w] != '/')
                ;
            if (last)
                d[w++] = '/';
        } else {
            memmove(d + w, d + r, e - r);
            w += e - r;
        }
        r = e;
    }
    d[w] = '\0';
    bool in = in_space(d);
    free(d);
    return in;
}

static int match(const char *s)
{
    for (size_t i = 0; i < sizeof routes / sizeof *routes; i++) {
        size_t n = strlen(routes[i].path);
        if (routes[i].path[n - 1] != '/' ? !strcmp(s, routes[i].path)
                                         : !strncmp(s, routes[i].path, n) &&
                                               (routes[i].route == PASS_METRICS || (s[n] && !strchr(s + n, '/'))))
            return (int)i;
    }
    return -1;
}

enum passpath_verdict passpath_route(const char *method, struct span path, char *out, size_t cap,
                                     struct passpath *pp)
{
    pp->allow = pp->why = NULL;
    if (!path.p || !path.n || path.p[0] != '/' || plain_outside_space(path))
        return PASSPATH_NONE;
    struct canon c = {.out = malloc(path.n * 3 + 1)};
    if (!c.out)
        abort();
    canonicalise(path, &c);
    enum passpath_verdict v = PASSPATH_NONE;
    int i = c.bad ? -1 : match(c.out);
    if (c.bad) {
        if (in_space(c.out) || resolves_into_space(path)) {
            pp->why = c.bad;
            v = PASSPATH_BAD_PATH;
        }
    } else if (i >= 0 && c.len >= cap) {
        v = PASSPATH_TOO_LONG;
    } else if (i >= 0) {
        memcpy(out, c.out, c.len + 1);
        pp->route = routes[i].route;
        pp->allow = routes[i].allow;
        bool get = routes[i].allow == GET;
        bool ok = get ? !strcmp(method, "GET") || !strcmp(method, "HEAD") : !strcmp(method, "POST");
        v = ok ? PASSPATH_OK : PASSPATH_BAD_METHOD;
    }
    free(c.out);
    return v;
}
