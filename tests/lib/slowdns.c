/* LD_PRELOAD shim for the DNS tests (tests/test_dns.py): a resolver that takes its
 * time, without touching the machine's resolver configuration.
 *
 *   <anything>.slow.test  resolves to 127.0.0.1 after SLOWDNS_DELAY seconds (default 1)
 *   <anything>.fail.test  fails with EAI_NONAME after the same delay
 *   <anything>.two.test   resolves at once to 127.0.0.3 (nothing listens there) and then
 *                         127.0.0.1, in that order
 * Every other name goes to the real getaddrinfo(). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef int (*gai_fn)(const char *, const char *, const struct addrinfo *, struct addrinfo **);

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
}

static void delay(void)
{
    const char *d = getenv("SLOWDNS_DELAY");
    double s = d ? atof(d) : 1.0;
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints, struct addrinfo **res)
{
    gai_fn real = (gai_fn)dlsym(RTLD_NEXT, "getaddrinfo");
    if (!node)
        return real(node, service, hints, res);
    if (ends_with(node, ".slow.test")) {
        delay();
        return real("127.0.0.1", service, hints, res);
    }
    if (ends_with(node, ".fail.test")) {
        delay();
        return EAI_NONAME;
    }
    if (ends_with(node, ".two.test")) {
        /* glibc frees a result node by node, so two results can be chained. */
        struct addrinfo *a = NULL, *b = NULL;
        int e = real("127.0.0.3", service, hints, &a);
        if (e)
            return e;
        e = real("127.0.0.1", service, hints, &b);
        if (e) {
            freeaddrinfo(a);
            return e;
        }
        struct addrinfo *t = a;
        while (t->ai_next)
            t = t->ai_next;
        t->ai_next = b;
        *res = a;
        return 0;
    }
    return real(node, service, hints, res);
}
