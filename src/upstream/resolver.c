#include "resolver.h"
#include "log.h"
#include "loop.h"
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* A lookup belongs to its thread until the thread writes its pointer into the pipe;
 * from then on it belongs to the loop. */
struct lookup {
    unsigned ticket;
    char host[256];
    struct resolved r;
};

/* What the loop remembers of a lookup in flight (only the loop touches this).  It
 * stays listed until the answer arrives, even when cancelled, so that a lookup still
 * running at exit (or answered into a pipe nobody reads any more) is still reachable
 * memory, not a leak. */
struct pending {
    unsigned ticket;
    resolve_cb cb;
    void *arg;
    bool cancelled;
    struct lookup *lookup;
    struct pending *next;
};

static struct {
    int wfd;
    struct pending *pending;
    unsigned next_ticket;
} RS = {-1, NULL, 0};

static void *resolve_thread(void *p)
{
    struct lookup *l = p;
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    /* No AI_ADDRCONFIG: it hides loopback names in a namespace with only "lo" (a sidecar
     * without networking); unusable addresses are skipped at connect time instead. */
    l->r.err = getaddrinfo(l->host, NULL, &hints, &res);
    for (struct addrinfo *ai = res; ai && l->r.n < RESOLVER_MAX_ADDRS; ai = ai->ai_next) {
        const void *a = ai->ai_family == AF_INET ? (const void *)&((struct sockaddr_in *)ai->ai_addr)->sin_addr
                        : ai->ai_family == AF_INET6 ? (const void *)&((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr
                                                     : NULL;
        if (!a || !inet_ntop(ai->ai_family, a, l->r.addr[l->r.n], RESOLVER_ADDR_LEN))
            continue;
        bool dup = false; /* one per socket type asked, but some resolvers repeat */
        for (size_t i = 0; i < l->r.n && !dup; i++)
            dup = !strcmp(l->r.addr[i], l->r.addr[l->r.n]);
        if (!dup)
            l->r.n++;
    }
    if (res)
        freeaddrinfo(res);
    if (!l->r.err && !l->r.n)
        l->r.err = EAI_NODATA;
    /* A pointer is smaller than PIPE_BUF: the write is atomic, and the pipe is
     * never full (one lookup at a time per connection attempt). */
    ssize_t n;
    do
        n = write(RS.wfd, &l, sizeof l);
    while (n < 0 && errno == EINTR);
    if (n != (ssize_t)sizeof l)
        free(l); /* the loop is gone (shutdown): nobody waits for this answer */
    return NULL;
}

static struct pending *take_pending(unsigned ticket)
{
    for (struct pending **pp = &RS.pending; *pp; pp = &(*pp)->next)
        if ((*pp)->ticket == ticket) {
            struct pending *p = *pp;
            *pp = p->next;
            return p;
        }
    return NULL;
}

static void on_answer(void *arg)
{
    int rfd = (int)(intptr_t)arg;
    struct lookup *l;
    while (read(rfd, &l, sizeof l) == (ssize_t)sizeof l) {
        struct pending *p = take_pending(l->ticket);
        if (p && !p->cancelled)
            p->cb(l->ticket, &l->r, p->arg);
        free(p);
        free(l);
    }
}

int resolver_init(void)
{
    int fds[2];
    if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) < 0) {
        log_error("cannot create the resolver's pipe: %s", strerror(errno));
        return -1;
    }
    /* Threads write blocking; the loop reads non-blocking. */
    fcntl(fds[1], F_SETFL, fcntl(fds[1], F_GETFL) & ~O_NONBLOCK);
    if (!loop_watch_fd(fds[0], on_answer, (void *)(intptr_t)fds[0])) {
        close(fds[0]);
        close(fds[1]);
        log_error("cannot watch the resolver's pipe");
        return -1;
    }
    RS.wfd = fds[1];
    return 0;
}

bool resolver_is_numeric(const char *host)
{
    unsigned char a[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, host, a) == 1 || inet_pton(AF_INET6, host, a) == 1;
}

unsigned resolver_start(const char *host, resolve_cb cb, void *arg)
{
    struct lookup *l = calloc(1, sizeof *l);
    struct pending *p = calloc(1, sizeof *p);
    if (!l || !p || strlen(host) >= sizeof l->host) {
        free(l);
        free(p);
        return 0;
    }
    if (++RS.next_ticket == 0)
        ++RS.next_ticket;
    l->ticket = p->ticket = RS.next_ticket;
    snprintf(l->host, sizeof l->host, "%s", host);
    p->cb = cb;
    p->arg = arg;
    p->lookup = l;

    pthread_attr_t attr;
    pthread_t t;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256 * 1024); /* getaddrinfo needs little; the default is 8 MiB of address space */
    int e = pthread_create(&t, &attr, resolve_thread, l);
    pthread_attr_destroy(&attr);
    if (e) {
        log_error("cannot start a resolver thread: %s", strerror(e));
        free(l);
        free(p);
        return 0;
    }
    p->next = RS.pending;
    RS.pending = p;
    return p->ticket;
}

void resolver_cancel(unsigned ticket)
{
    for (struct pending *p = RS.pending; p; p = p->next)
        if (p->ticket == ticket)
            p->cancelled = true;
}
