#include "listener.h"
#include "line_proto.h"
#include "log.h"
#include "util.h"
#include "loop.h"
#include "health.h"
#include "rest.h"
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct listener {
    int fd;
    struct watcher *watch;
    accept_cb cb;
    void *arg;
    /* Held in reserve so that, out of descriptors, we can still accept and close a
     * connection instead of spinning on a listen socket that stays readable. */
    int spare_fd;
};

/* A connection whose protocol is not known until its first byte arrives. */
struct sniff {
    int fd;
    unsigned uid;
    struct sockaddr_storage addr;
    socklen_t len;
    double accepted_at;
    struct watcher *watch; /* on a dup of fd: the loop closes what it watches */
    struct timer deadline; /* nothing said within --client-timeout: closed */
};

static const struct config *LC;

void listener_init(const struct config *cfg)
{
    LC = cfg;
}

static void sniff_readable(void *arg)
{
    struct sniff *s = arg;
    char first;
    ssize_t n = recv(s->fd, &first, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    loop_unwatch(s->watch);
    timer_cancel(&s->deadline);
    if (n <= 0) {
        close(s->fd); /* gone before saying anything */
    } else if (first >= 'A' && first <= 'Z') {
        rest_add_connection(s->fd, (struct sockaddr *)&s->addr, s->len, s->accepted_at);
    } else {
        /* '{', blanks, or anything else: the line protocol answers junk with an error. */
        line_client_adopt(s->fd, s->uid);
    }
    free(s);
}

static void sniff_overdue(struct timer *t)
{
    struct sniff *s = timer_owner(t, struct sniff, deadline);
    static struct log_limit limit;
    unsigned long held;
    if (log_limit_ok(&limit, 10, &held))
        log_warn("closing a Unix connection that said nothing within --client-timeout (%g s)%s",
                 LC->client_timeout, held ? "; more since the last report, see tgbridge_callers_dropped_total" : "");
    health_caller_dropped(DROP_CLIENT_TIMEOUT);
    loop_unwatch(s->watch);
    close(s->fd);
    free(s);
}

void listener_dispatch(int fd, const struct sockaddr *addr, socklen_t len, unsigned protos, unsigned uid)
{
    if (protos == PROTO_HTTP) {
        rest_add_connection(fd, addr, len, now_mono());
        return;
    }
    if (protos == PROTO_LINE) {
        line_client_adopt(fd, uid);
        return;
    }
    struct sniff *s = calloc(1, sizeof *s);
    int dupfd = s ? fcntl(fd, F_DUPFD_CLOEXEC, 0) : -1;
    if (dupfd < 0) {
        free(s);
        close(fd);
        log_warn("cannot serve a new connection: %s", strerror(errno));
        return;
    }
    s->fd = fd;
    s->uid = uid;
    s->accepted_at = now_mono();
    s->len = len < sizeof s->addr ? len : sizeof s->addr;
    memcpy(&s->addr, addr, s->len);
    s->watch = loop_watch_fd(dupfd, sniff_readable, s);
    if (!s->watch) {
        close(fd);
        free(s);
        return;
    }
    timer_after(&s->deadline, LC->client_timeout, sniff_overdue);
}

static void on_readable(void *arg)
{
    struct listener *l = arg;
    for (int i = 0; i < 64; i++) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        int fd = accept4(l->fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            l->cb(fd, (struct sockaddr *)&ss, len, l->arg);
            continue;
        }
        if (errno == EINTR || errno == ECONNABORTED)
            continue;
        if ((errno == EMFILE || errno == ENFILE) && l->spare_fd >= 0) {
            static struct log_limit limit;
            unsigned long held;
            if (log_limit_ok(&limit, 5, &held))
                log_warn("out of file descriptors: refusing a connection (%lu more refused since the last "
                         "report)", held);
            close(l->spare_fd);
            int c = accept(l->fd, NULL, NULL);
            if (c >= 0)
                close(c);
            l->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
            continue;
        }
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            log_warn("accept: %s", strerror(errno));
        return;
    }
}

struct listener *listener_start(int fd, accept_cb cb, void *arg)
{
    struct listener *l = calloc(1, sizeof *l);
    if (!l)
        return NULL;
    l->fd = fd;
    l->cb = cb;
    l->arg = arg;
    l->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    l->watch = loop_watch_fd(fd, on_readable, l);
    if (!l->watch) {
        if (l->spare_fd >= 0)
            close(l->spare_fd);
        free(l);
        return NULL;
    }
    return l;
}

static void serve_http(int fd, const struct sockaddr *addr, socklen_t len, void *arg)
{
    (void)arg;
    listener_dispatch(fd, addr, len, PROTO_HTTP, 0);
}

struct listener *listener_tcp(const char *host, int port, int *bound_port, char *err, size_t errlen)
{
    struct addrinfo hints, *ai = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    char ports[16];
    snprintf(ports, sizeof ports, "%d", port);
    int rc = getaddrinfo(*host ? host : NULL, ports, &hints, &ai);
    if (rc) {
        errorf(err, errlen, "cannot resolve listen address %s: %s", host, gai_strerror(rc));
        return NULL;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) ||
        bind(fd, ai->ai_addr, ai->ai_addrlen) || listen(fd, 511)) {
        errorf(err, errlen, "cannot listen on %s:%d: %s", host, port, strerror(errno));
        if (fd >= 0)
            close(fd);
        freeaddrinfo(ai);
        return NULL;
    }
    freeaddrinfo(ai);
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    getsockname(fd, (struct sockaddr *)&ss, &len);
    *bound_port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                 : ((struct sockaddr_in *)&ss)->sin_port);
    struct listener *l = listener_start(fd, serve_http, NULL);
    if (!l) {
        close(fd);
        errorf(err, errlen, "cannot add the listener to the event loop");
    }
    return l;
}

void listener_close(struct listener *l)
{
    if (!l)
        return;
    loop_unwatch_now(l->watch); /* closes l->fd: no connection is accepted after this */
    if (l->spare_fd >= 0)
        close(l->spare_fd);
    free(l);
}
