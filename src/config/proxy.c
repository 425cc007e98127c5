/* The HTTP CONNECT proxy: its URL, the credentials in it (secrets), and the choice
 * between --proxy, the environment's and none.  A leaf: it knows no option table. */
#include "config_int.h"
#include "redact.h"
#include "util.h"
#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* The user:password before the '@' at, percent-decoded. */
static int parse_userinfo(const char *p, const char *at, struct proxy_url *out, char *err, size_t errlen)
{
    size_t o = 0;
    for (const char *q = p; q < at; q++) {
        char ch = *q;
        if (ch == '%') {
            int hi = q + 2 < at ? hex_value(q[1]) : -1, lo = hi >= 0 ? hex_value(q[2]) : -1;
            if (lo < 0)
                return errorf(err, errlen, "bad percent-encoding in the proxy credentials");
            ch = (char)(hi * 16 + lo);
            q += 2;
        }
        if (!ch || o + 1 >= sizeof out->userinfo)
            return errorf(err, errlen, "proxy credentials too long or holding a NUL");
        out->userinfo[o++] = ch;
    }
    out->userinfo[o] = '\0';
    return 0;
}

/* host[:port] between p and end; port 1080 if none. */
static int parse_host_port(const char *p, const char *end, struct proxy_url *out, char *err, size_t errlen)
{
    const char *hend;
    if (*p == '[') {
        hend = memchr(p, ']', (size_t)(end - p));
        if (!hend || (size_t)(hend - p - 1) >= sizeof out->host || !host_chars_ok(p + 1, (size_t)(hend - p - 1), true))
            return errorf(err, errlen, "bad IPv6 literal in the proxy URL");
        memcpy(out->host, p + 1, (size_t)(hend - p - 1));
        hend++;
    } else {
        hend = p;
        while (hend < end && *hend != ':')
            hend++;
        if (hend == p || (size_t)(hend - p) >= sizeof out->host)
            return errorf(err, errlen, "the proxy URL has no host (or one too long)");
        if (!host_chars_ok(p, (size_t)(hend - p), false))
            return errorf(err, errlen, "bad host name in the proxy URL");
        memcpy(out->host, p, (size_t)(hend - p));
    }
    out->port = 1080;
    if (hend < end) {
        if (*hend != ':' || hend + 1 == end)
            return errorf(err, errlen, "bad port in the proxy URL");
        long port = 0;
        for (const char *q = hend + 1; q < end; q++) {
            if (*q < '0' || *q > '9' || (port = port * 10 + (*q - '0')) > 65535)
                return errorf(err, errlen, "bad port in the proxy URL");
        }
        if (port < 1)
            return errorf(err, errlen, "bad port in the proxy URL");
        out->port = (int)port;
    }
    return 0;
}

int config_parse_proxy(const char *url, struct proxy_url *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    const char *p = url;
    const char *scheme_end = strstr(p, "://");
    if (scheme_end) {
        if (scheme_end - p != 4 || strncasecmp(p, "http", 4))
            return errorf(err, errlen, "only http:// proxies are supported (HTTP CONNECT)");
        p = scheme_end + 3;
    }
    size_t n = strcspn(p, "/?#");
    if (p[n] && strspn(p + n, "/") != strlen(p + n))
        return errorf(err, errlen, "a proxy URL has no path, query or fragment");
    const char *end = p + n, *at = NULL;
    for (const char *q = p; q < end; q++)
        if (*q == '@')
            at = q;
    if (at) {
        if (parse_userinfo(p, at, out, err, errlen))
            return -1;
        p = at + 1;
    }
    return parse_host_port(p, end, out, err, errlen);
}

/* Names that can only mean this machine: an address literal in 127/8 or ::1 (a name
 * merely starting with "127." can be anyone's DNS name), or localhost (RFC 6761). */
bool host_is_loopback(const char *host)
{
    size_t n = strlen(host);
    if (!strcasecmp(host, "localhost") || (n > 10 && !strcasecmp(host + n - 10, ".localhost")))
        return true;
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, host, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    if (inet_pton(AF_INET6, host, &a6) == 1)
        return IN6_IS_ADDR_LOOPBACK(&a6) ||
               (IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127);
    return false;
}

/* curl's no_proxy rules, simplified: "*" matches everything; an entry matches the
 * host itself and, for names, any subdomain ("example.com" and ".example.com"). */
static bool no_proxy_matches(const char *host, const char *list)
{
    if (!list || !*list)
        return false;
    char *copy = strdup(list), *save = NULL;
    bool hit = false;
    for (char *t = strtok_r(copy, ", ", &save); t && !hit; t = strtok_r(NULL, ", ", &save)) {
        if (!strcmp(t, "*")) {
            hit = true;
            break;
        }
        while (*t == '.')
            t++;
        size_t hl = strlen(host), tl = strlen(t);
        if (!strcasecmp(host, t))
            hit = true;
        else if (hl > tl && host[hl - tl - 1] == '.' && !strcasecmp(host + hl - tl, t))
            hit = true;
    }
    free(copy);
    return hit;
}

char *config_pick_proxy(const struct gateway_url *gw, const char *flag)
{
    const char *p = flag;
    if (p && (!strcmp(p, "none") || !*p))
        return NULL;
    if (!p) {
        p = gw->tls ? getenv("https_proxy") : getenv("http_proxy");
        if (!p || !*p)
            p = gw->tls ? getenv("HTTPS_PROXY") : getenv("HTTP_PROXY");
    }
    if (!p || !*p)
        return NULL;
    /* A proxy from the environment never captures loopback (a sidecar's gateway, the
     * tests' mock); an explicit --proxy is the operator's word and applies. */
    if (!flag && host_is_loopback(gw->host))
        return NULL;
    const char *np = getenv("no_proxy");
    if (!np || !*np)
        np = getenv("NO_PROXY");
    if (no_proxy_matches(gw->host, np))
        return NULL;
    if (!strncmp(p, "http://", 7))
        p += 7;
    char *out = strdup(p);
    size_t n = strlen(out);
    while (n && out[n - 1] == '/')
        out[--n] = '\0';
    return out;
}

void proxy_scrub_userinfo(char *url)
{
    char *start = strstr(url, "://");
    start = start ? start + 3 : url;
    char *at = strrchr(start, '@');
    if (at && at > start)
        memset(start, 'x', (size_t)(at - start));
}

void proxy_add_secrets(const char *url)
{
    const char *start = strstr(url, "://");
    start = start ? start + 3 : url;
    const char *at = strrchr(start, '@');
    if (!at || at == start)
        return;
    char given[512];
    snprintf(given, sizeof given, "%.*s", (int)(at - start), start);
    secret_add_userinfo(given); /* as written (percent-encoded) */
    struct proxy_url p;
    if (!config_parse_proxy(url, &p, NULL, 0))
        secret_add_userinfo(p.userinfo); /* as sent */
    explicit_bzero(given, sizeof given);
    explicit_bzero(&p, sizeof p);
}

int proxy_decide(struct config *cfg, char *err, size_t errlen)
{
    if (cfg->proxy)
        proxy_add_secrets(cfg->proxy);
    char *url = config_pick_proxy(&cfg->gw, cfg->proxy);
    if (!url)
        return 0;
    cfg->via_proxy = calloc(1, sizeof *cfg->via_proxy);
    if (!cfg->via_proxy)
        abort();
    char e2[256];
    int rc = config_parse_proxy(url, cfg->via_proxy, e2, sizeof e2);
    explicit_bzero(url, strlen(url));
    free(url);
    if (rc) {
        free(cfg->via_proxy);
        cfg->via_proxy = NULL;
        return errorf(err, errlen, "%s proxy: %s", cfg->proxy ? "--proxy" : "the environment's", e2);
    }
    return 0;
}
