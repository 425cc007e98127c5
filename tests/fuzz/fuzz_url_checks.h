/* What a parsed gateway or proxy URL must look like (config.h), for fuzz_url and
 * fuzz_config. */
#ifndef TGB_FUZZ_URL_CHECKS_H
#define TGB_FUZZ_URL_CHECKS_H
#include "config.h"
#include "fuzz_common.h"

static inline bool fz_terminated(const char *s, size_t cap)
{
    return memchr(s, '\0', cap) != NULL;
}

/* A gateway URL config_parse_gateway accepted: a host lws can be given as it is (no
 * character that would end it or start a path, query, fragment or credentials), a
 * port, and a base path "" or "/prefix" without a trailing slash. */
static inline void fz_check_gateway(const struct gateway_url *gw)
{
    FUZZ_CHECK(fz_terminated(gw->host, sizeof gw->host));
    FUZZ_CHECK(fz_terminated(gw->base_path, sizeof gw->base_path));
    FUZZ_CHECK(gw->host[0] != '\0');
    FUZZ_CHECK(!strpbrk(gw->host, "/?#@"));
    FUZZ_CHECK(gw->port >= 1 && gw->port <= 65535);
    size_t n = strlen(gw->base_path);
    FUZZ_CHECK(n == 0 || (gw->base_path[0] == '/' && gw->base_path[n - 1] != '/'));
}

/* A proxy URL config_parse_proxy accepted. */
static inline void fz_check_proxy(const struct proxy_url *p)
{
    FUZZ_CHECK(fz_terminated(p->host, sizeof p->host));
    FUZZ_CHECK(p->host[0] != '\0');
    FUZZ_CHECK(p->port >= 1 && p->port <= 65535);
    FUZZ_CHECK(fz_terminated(p->userinfo, sizeof p->userinfo));
    FUZZ_CHECK(strlen(p->userinfo) < sizeof p->userinfo);
}
#endif
