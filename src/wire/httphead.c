#include "httphead.h"
#include <string.h>
#include <strings.h>

static bool is_tchar(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* The end of the line starting at i (the index of its '\n'), or len if none yet. */
static size_t line_end(const char *buf, size_t i, size_t len)
{
    const char *nl = memchr(buf + i, '\n', len - i);
    return nl ? (size_t)(nl - buf) : len;
}

static struct span trimmed(const char *p, size_t n)
{
    while (n && (*p == ' ' || *p == '\t')) {
        p++;
        n--;
    }
    while (n && (p[n - 1] == ' ' || p[n - 1] == '\t' || p[n - 1] == '\r'))
        n--;
    return (struct span){p, n};
}

static bool name_is(const char *p, size_t n, const char *name)
{
    return strlen(name) == n && !strncasecmp(p, name, n);
}

static void header(struct http_head *h, const char *p, size_t n)
{
    if (memchr(p, '\0', n))
        h->nul = true;
    const char *colon = memchr(p, ':', n);
    size_t nlen = colon ? (size_t)(colon - p) : 0;
    for (size_t i = 0; i < nlen; i++)
        if (!is_tchar((unsigned char)p[i]))
            nlen = 0;
    if (!nlen) {
        h->malformed = true;
        return;
    }
    struct span v = trimmed(colon + 1, n - nlen - 1);
    struct span *slot = name_is(p, nlen, "upgrade") ? &h->upgrade
                      : name_is(p, nlen, "connection") ? &h->connection
                      : name_is(p, nlen, "origin") ? &h->origin
                      : name_is(p, nlen, "host") ? &h->host
                      : name_is(p, nlen, "authorization") ? &h->authorization
                      : name_is(p, nlen, "sec-websocket-version") ? &h->ws_version
                      : name_is(p, nlen, "sec-websocket-key") ? &h->ws_key : NULL;
    if (slot == &h->host)
        h->n_host++;
    if (slot == &h->origin)
        h->n_origin++;
    if (slot && !slot->p)
        *slot = v;
}

/* METHOD SP target SP HTTP/1.d, as far as buf goes: -1 not a request line, 0 could
 * still be one, 1 complete (and h filled). */
static int request_line(const char *buf, size_t n, bool whole, struct http_head *h)
{
    size_t i = 0;
    while (i < n && buf[i] >= 'A' && buf[i] <= 'Z')
        i++;
    if (i > 20 || (i < n && (i == 0 || buf[i] != ' ')))
        return -1;
    if (i == n)
        return whole ? -1 : 0;
    h->method = (struct span){buf, i};
    size_t t = ++i;
    while (i < n && (unsigned char)buf[i] > 0x20 && (unsigned char)buf[i] < 0x7f)
        i++;
    if (i < n && (i == t || buf[i] != ' '))
        return -1;
    if (i == n)
        return whole ? -1 : 0;
    h->target = (struct span){buf + t, i - t};
    static const char proto[] = "HTTP/1.";
    size_t v = ++i, k = 0;
    while (i < n && k < sizeof proto - 1) {
        if (buf[i++] != proto[k++])
            return -1;
    }
    if (i < n && (buf[i] < '0' || buf[i] > '9'))
        return -1;
    if (i < n)
        h->minor = buf[i++] - '0';
    if (i < n && !(buf[i] == '\r' && i + 1 == n))
        return -1;
    if (!whole)
        return 0;
    if (i - v != sizeof proto)
        return -1;
    const char *q = memchr(h->target.p, '?', h->target.n);
    size_t plen = q ? (size_t)(q - h->target.p) : h->target.n;
    h->path = (struct span){h->target.p, plen};
    h->query = q ? (struct span){q + 1, h->target.n - plen - 1} : (struct span){NULL, 0};
    return 1;
}

enum head_verdict http_head_parse(const char *buf, size_t len, struct http_head *out)
{
    memset(out, 0, sizeof *out);
    size_t e = line_end(buf, 0, len);
    int rl = request_line(buf, e, e < len, out);
    if (rl < 0)
        return HEAD_NOT_HTTP;
    if (rl == 0)
        return HEAD_INCOMPLETE;
    for (size_t i = e + 1; i < len;) {
        size_t end = line_end(buf, i, len);
        if (end == len)
            return HEAD_INCOMPLETE;
        size_t n = end - i;
        if (n && buf[end - 1] == '\r')
            n--;
        if (!n) {
            out->length = end + 1;
            return HEAD_REQUEST;
        }
        if (buf[i] == ' ' || buf[i] == '\t')
            out->malformed = true; /* obsolete line folding (RFC 9112 §5.2) */
        else
            header(out, buf + i, n);
        i = end + 1;
    }
    return HEAD_INCOMPLETE;
}

bool http_list_has(struct span value, const char *token)
{
    size_t tl = strlen(token);
    for (size_t i = 0; i < value.n;) {
        const char *comma = memchr(value.p + i, ',', value.n - i);
        size_t end = comma ? (size_t)(comma - value.p) : value.n;
        struct span t = trimmed(value.p + i, end - i);
        if (t.n == tl && !strncasecmp(t.p, token, tl))
            return true;
        i = end + 1;
    }
    return false;
}

bool http_query_param(struct span query, const char *name, struct span *out)
{
    size_t nl = strlen(name);
    for (size_t i = 0; i < query.n;) {
        const char *amp = memchr(query.p + i, '&', query.n - i);
        size_t end = amp ? (size_t)(amp - query.p) : query.n;
        if (end - i > nl && query.p[i + nl] == '=' && !memcmp(query.p + i, name, nl)) {
            *out = (struct span){query.p + i + nl + 1, end - i - nl - 1};
            return true;
        }
        if (end - i == nl && !memcmp(query.p + i, name, nl)) {
            *out = (struct span){query.p + end, 0};
            return true;
        }
        i = end + 1;
    }
    return false;
}
