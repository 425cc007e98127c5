/* Host names resolved off the event loop.  getaddrinfo() blocks for as long as the
 * system's resolver takes — seconds per attempt when a nameserver does not answer — and
 * libwebsockets 4.1.6 as Debian builds it (no async DNS) calls it inside the loop, which
 * would freeze every local caller, /healthz included.  A short-lived thread per lookup
 * resolves instead; its answer comes back to the loop through a pipe, so nothing is
 * shared and nothing is locked. */
#ifndef TGB_RESOLVER_H
#define TGB_RESOLVER_H
#include <stdbool.h>
#include <stddef.h>

#define RESOLVER_MAX_ADDRS 8
#define RESOLVER_ADDR_LEN 46 /* INET6_ADDRSTRLEN */

struct resolved {
    int err;                                   /* 0, or a getaddrinfo() EAI_* code */
    size_t n;                                  /* numeric addresses, in resolver order */
    char addr[RESOLVER_MAX_ADDRS][RESOLVER_ADDR_LEN];
};

/* Runs on the loop with the answer to a lookup that was not cancelled. */
typedef void (*resolve_cb)(unsigned ticket, const struct resolved *r, void *arg);

int resolver_init(void);
/* True when host is already a numeric IPv4/IPv6 address (nothing to look up). */
bool resolver_is_numeric(const char *host);
/* Starts looking host up; returns its ticket (never 0), or 0 if no thread could start. */
unsigned resolver_start(const char *host, resolve_cb cb, void *arg);
/* The answer, when it comes, is dropped. */
void resolver_cancel(unsigned ticket);
#endif
