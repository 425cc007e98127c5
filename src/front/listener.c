#include "listener.h"
#include "line_proto.h"
#include "log.h"
#include "util.h"
#include "httphead.h"
#include "loop.h"
#include "stats.h"
#include "rest.h"
#include "access.h"
#include "ws.h"
#include "wspass.h"
#include "passthrough.h"
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
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

/* A connection whose front end is not known until its request head (or first line)
 * is in.  It sits in an edge-triggered epoll set of its own, so bytes left in the
 * kernel while the head is incomplete cost nothing until more arrive; its head is
 * peeked, never read, so the front end it goes to reads it whole. */
struct pending {
    int fd;
    unsigned protos;
    unsigned uid;
    struct sockaddr_storage addr;
    socklen_t len;
    double accepted_at;
    struct timer deadline; /* no head within --client-timeout: closed */
};

/* Where requests go, by their head: a small table that the pass-through routes and
 * sockets handed over by systemd extend.  Anything not listed is libmicrohttpd's. */
enum frontend_kind { FE_HTTP, FE_HTTP_BULK, FE_LINE, FE_WS, FE_WSPASS };
static bool pass_head(const struct http_head *h);
static const struct route {
    const char *method, *path;   /* path NULL: match() decides */
    bool (*match)(const struct http_head *h);
    bool upgrade;          /* only as a WebSocket upgrade */
    enum frontend_kind fe;
} routes[] = {
    {"GET", "/api/v1/socket", NULL, true, FE_WS},
    {"GET", NULL, wspass_route, true, FE_WSPASS}, /* /api/v1/flow/{flow}/import|export/{kind} */
    {NULL, NULL, pass_head, false, FE_HTTP_BULK}, /* the HTTP pass-through routes, any method */
};

/* Longest head we wait for; longer ones go to libmicrohttpd to be refused (it has the
 * same room: its connection pool). */
#define HEAD_MAX (16 * 1024)

static struct {
    const struct config *cfg;
    struct loop_epoll *pending;
    size_t npending;
} LS = {NULL, NULL, 0};

static void on_pending_event(void *ptr, uint32_t events);

void listener_init(const struct config *cfg)
{
    LS.cfg = cfg;
    LS.pending = loop_epoll_new(on_pending_event);
    if (!LS.pending)
        log_error("cannot watch new connections: %s", strerror(errno));
}

static void pending_free(struct pending *p, bool close_fd)
{
    timer_cancel(&p->deadline);
    loop_epoll_del(LS.pending, p->fd);
    if (close_fd)
        close(p->fd);
    LS.npending--;
    free(p);
}

static bool span_eq(struct span s, const char *lit)
{
    return s.n == strlen(lit) && !memcmp(s.p, lit, s.n);
}

/* A pass-through HTTP route's path (passthrough.c), as sent. */
static bool pass_head(const struct http_head *h)
{
    char path[256];
    size_t n = h->path.n < sizeof path - 1 ? h->path.n : sizeof path - 1;
    memcpy(path, h->path.p, n);
    path[n] = '\0';
    return h->path.n < sizeof path && pass_http_route(path) >= 0;
}

static const struct route *route_of(const struct http_head *h)
{
    bool upgrade = http_list_has(h->upgrade, "websocket") && http_list_has(h->connection, "upgrade");
    for (size_t i = 0; i < sizeof routes / sizeof *routes; i++)
        if ((!routes[i].method || span_eq(h->method, routes[i].method)) &&
            (routes[i].path ? span_eq(h->path, routes[i].path) : routes[i].match(h)) &&
            (!routes[i].upgrade || upgrade) && !h->malformed)
            return &routes[i];
    return NULL;
}

/* Hands p's connection to the front end its head asks for. */
static void hand_over(struct pending *p, enum frontend_kind fe, const struct http_head *h)
{
    int fd = p->fd;
    struct sockaddr_storage addr = p->addr;
    socklen_t len = p->len;
    double at = p->accepted_at;
    unsigned uid = p->uid;
    bool unix_peer = p->protos & PROTO_LINE;
    pending_free(p, false);
    struct refusal no;
    if (fe == FE_LINE)
        line_client_adopt(fd, uid);
    else if ((fe != FE_WS || !ws_take(fd, h, unix_peer, &no)) && (fe != FE_WSPASS || !wspass_take(fd, h, unix_peer, &no)))
        /* libmicrohttpd answers, a turned-down upgrade included (with `no`). */
        rest_add_connection(fd, (struct sockaddr *)&addr, len, at, fe == FE_WS || fe == FE_WSPASS ? &no : NULL,
                            fe == FE_HTTP_BULK);
}

/* What the first bytes say.  Line protocol clients start with '{' or blanks (or junk,
 * which gets an error line); an HTTP request starts with an upper-case method name,
 * and is routed by its whole head, not by its first byte. */
static void classify(struct pending *p, bool peer_done)
{
    char head[HEAD_MAX];
    ssize_t n = recv(p->fd, head, sizeof head, MSG_PEEK | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return; /* the next edge brings more */
    if (n <= 0) {
        pending_free(p, true); /* gone before saying anything */
        return;
    }
    bool line_ok = p->protos & PROTO_LINE;
    if (line_ok && !(head[0] >= 'A' && head[0] <= 'Z')) {
        hand_over(p, FE_LINE, NULL);
        return;
    }
    struct http_head h;
    enum head_verdict v = http_head_parse(head, (size_t)n, &h);
    if (v == HEAD_INCOMPLETE && peer_done) {
        /* No more is coming: a half-closed line client, or a cut-off request. */
        hand_over(p, line_ok ? FE_LINE : FE_HTTP, NULL);
        return;
    }
    if (v == HEAD_INCOMPLETE && (size_t)n < sizeof head)
        return;
    if (v == HEAD_NOT_HTTP && line_ok) {
        hand_over(p, FE_LINE, NULL);
        return;
    }
    const struct route *r = v == HEAD_REQUEST ? route_of(&h) : NULL;
    hand_over(p, r ? r->fe : FE_HTTP, &h);
}

static void on_pending_event(void *ptr, uint32_t events)
{
    classify(ptr, events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR));
}

static void pending_overdue(struct timer *t)
{
    struct pending *p = timer_owner(t, struct pending, deadline);
    static struct log_limit limit;
    unsigned long held;
    if (log_limit_ok(&limit, 10, &held))
        log_warn("closing a connection that sent no complete request head within --client-timeout (%g s)%s",
                 LS.cfg->client_timeout, held ? "; more since the last report, see tgbridge_callers_dropped_total" : "");
    stats_caller_dropped(DROP_CLIENT_TIMEOUT);
    pending_free(p, true);
}

void listener_dispatch(int fd, const struct sockaddr *addr, socklen_t len, unsigned protos, unsigned uid)
{
    struct pending *p = calloc(1, sizeof *p);
    if (!p) {
        close(fd);
        return;
    }
    p->fd = fd;
    p->protos = protos;
    p->uid = uid;
    p->accepted_at = now_mono();
    p->len = len < sizeof p->addr ? len : sizeof p->addr;
    memcpy(&p->addr, addr, p->len);
    LS.npending++;
    if (!LS.pending || loop_epoll_add(LS.pending, fd, EPOLLIN | EPOLLRDHUP | EPOLLET, p)) {
        log_warn("cannot serve a new connection: %s", strerror(errno));
        LS.npending--;
        close(fd);
        free(p);
        return;
    }
    timer_after(&p->deadline, LS.cfg->client_timeout, pending_overdue);
    /* Bytes that came with the connection were reported by the ADD (it checks
     * readiness), so the first classify runs from the loop like any other. */
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

static void serve_tcp(int fd, const struct sockaddr *addr, socklen_t len, void *arg)
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
    struct listener *l = listener_start(fd, serve_tcp, NULL);
    if (!l) {
        close(fd);
        errorf(err, errlen, "cannot add the listener to the event loop");
    }
    return l;
}

struct listener *listener_tcp_adopt(int fd, char *host, size_t hostlen, int *bound_port, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &len)) {
        errorf(err, errlen, "socket activation: %s", strerror(errno));
        return NULL;
    }
    bool v6 = ss.ss_family == AF_INET6;
    const void *a = v6 ? (const void *)&((struct sockaddr_in6 *)&ss)->sin6_addr
                       : (const void *)&((struct sockaddr_in *)&ss)->sin_addr;
    if (!inet_ntop(ss.ss_family, a, host, (socklen_t)hostlen))
        snprintf(host, hostlen, "?");
    *bound_port = ntohs(v6 ? ((struct sockaddr_in6 *)&ss)->sin6_port : ((struct sockaddr_in *)&ss)->sin_port);
    struct listener *l = listener_start(fd, serve_tcp, NULL);
    if (!l)
        errorf(err, errlen, "cannot add the listener to the event loop");
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
