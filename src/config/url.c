/* The gateway URL: ws://, wss://, http:// or https://host[:port][/prefix]. */
#include "config_int.h"
#include "util.h"
#include <ctype.h>
#include <string.h>
#include <stdlib.h>

/* A host as lws and getaddrinfo() take it: an IPv6 literal's digits and colons (the
 * brackets stripped), or a name's letters, digits, dots, hyphens and underscores. */
const char *const gateway_candidates[GATEWAY_CANDIDATES] = {"http://localhost:8888", "http://localhost:8088"};

bool host_chars_ok(const char *h, size_t n, bool bracketed)
{
    if (!n)
        return false;
    bool colon = false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)h[i];
        if (bracketed ? !(isxdigit(c) || c == ':' || c == '.')
                      : !(isalnum(c) || c == '.' || c == '-' || c == '_'))
            return false;
        colon |= c == ':';
    }
    return !bracketed || colon;
}

int config_parse_gateway(const char *url, struct gateway_url *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    const char *p;
    int defport;
    if (!strncmp(url, "ws://", 5)) { p = url + 5; defport = 80; }
    else if (!strncmp(url, "http://", 7)) { p = url + 7; defport = 80; }
    else if (!strncmp(url, "wss://", 6)) { p = url + 6; defport = 443; out->tls = true; }
    else if (!strncmp(url, "https://", 8)) { p = url + 8; defport = 443; out->tls = true; }
    else
        return errorf(err, errlen, "gateway URL must start with ws://, wss://, http:// or https://: %s", url);
    if (strpbrk(p, "?#@"))
        return errorf(err, errlen, "gateway URL must not carry credentials, a query or a fragment"
                                 " (use --token-file)");
    const char *hend;
    if (*p == '[') {
        hend = strchr(p, ']');
        if (!hend || !host_chars_ok(p + 1, (size_t)(hend - p - 1), true))
            return errorf(err, errlen, "bad IPv6 literal in gateway URL");
        if ((size_t)(hend - p - 1) >= sizeof out->host)
            return errorf(err, errlen, "gateway host too long");
        memcpy(out->host, p + 1, (size_t)(hend - p - 1));
        hend++;
    } else {
        hend = p + strcspn(p, ":/");
        if ((size_t)(hend - p) >= sizeof out->host)
            return errorf(err, errlen, "gateway host too long");
        if (hend > p && !host_chars_ok(p, (size_t)(hend - p), false))
            return errorf(err, errlen, "bad host name in gateway URL");
        memcpy(out->host, p, (size_t)(hend - p));
    }
    if (!out->host[0])
        return errorf(err, errlen, "gateway URL has no host");
    out->port = defport;
    const char *path = hend;
    if (*hend == ':') {
        char *e;
        long port = strtol(hend + 1, &e, 10);
        if (e == hend + 1 || port < 1 || port > 65535 || (*e && *e != '/'))
            return errorf(err, errlen, "bad port in gateway URL");
        out->port = (int)port;
        path = e;
    } else if (*hend && *hend != '/') {
        return errorf(err, errlen, "bad gateway URL");
    }
    size_t plen = strlen(path);
    while (plen && path[plen - 1] == '/')
        plen--;
    /* Accept the socket URL itself as well as the root the official CLI uses. */
    static const char sock[] = "/api/v1/socket";
    if (plen >= sizeof sock - 1 && !memcmp(path + plen - (sizeof sock - 1), sock, sizeof sock - 1))
        plen -= sizeof sock - 1;
    while (plen && path[plen - 1] == '/')
        plen--;
    if (plen >= sizeof out->base_path)
        return errorf(err, errlen, "gateway path too long");
    memcpy(out->base_path, path, plen);
    return 0;
}
