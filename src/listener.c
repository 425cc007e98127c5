#include "listener.h"
#include "log.h"
#include "loop.h"
#include "rest.h"
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct listener {
    int fd;
    struct watcher *watch;
    /* Held in reserve so that, out of descriptors, we can still accept and close a
     * connection instead of spinning on a listen socket that stays readable. */
    int spare_fd;
};

/* The single place that picks a protocol for an accepted connection. */
static void listener_dispatch(int fd, const struct sockaddr *addr, socklen_t len)
{
    rest_add_connection(fd, addr, len);
}

static void on_readable(void *arg)
{
    struct listener *l = arg;
    for (int i = 0; i < 64; i++) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        int fd = accept4(l->fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            listener_dispatch(fd, (struct sockaddr *)&ss, len);
            continue;
        }
        if (errno == EINTR || errno == ECONNABORTED)
            continue;
        if ((errno == EMFILE || errno == ENFILE) && l->spare_fd >= 0) {
            log_warn("out of file descriptors: refusing a connection");
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

static void set_err(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
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
        set_err(err, errlen, "cannot resolve listen address %s: %s", host, gai_strerror(rc));
        return NULL;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) ||
        bind(fd, ai->ai_addr, ai->ai_addrlen) || listen(fd, 511)) {
        set_err(err, errlen, "cannot listen on %s:%d: %s", host, port, strerror(errno));
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
    struct listener *l = calloc(1, sizeof *l);
    if (!l) {
        close(fd);
        set_err(err, errlen, "out of memory");
        return NULL;
    }
    l->fd = fd;
    l->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    l->watch = loop_watch_fd(fd, on_readable, l);
    if (!l->watch) {
        close(fd);
        free(l);
        set_err(err, errlen, "cannot add the listener to the event loop");
        return NULL;
    }
    return l;
}

void listener_close(struct listener *l)
{
    if (!l)
        return;
    loop_unwatch(l->watch); /* closes l->fd */
    if (l->spare_fd >= 0)
        close(l->spare_fd);
    free(l);
}
