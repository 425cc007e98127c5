#include "listener.h"
#include "line_proto.h"
#include "log.h"
#include "util.h"
#include "httphead.h"
#include "loop.h"
#include "frontend.h"
#include "guard.h"
#include "rest.h"
#include "ws.h"
#include "wspass.h"
#include "passpath.h"
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
    struct peer peer;
    struct guard deadline; /* no head within --client-timeout: closed */
};

/* Where connections go, by their first request's head: a row per front end (the
 * bulk sockets, REST's pass-through flavour, ...); the last row takes the rest, and
 * answers over HTTP the upgrades the others turn down.  match returns the route the
 * front end is handed (>= 0), or -1. */
static int ws_head(const struct http_head *h);
static int bulk_head(const struct http_head *h);
static int pass_head(const struct http_head *h);
static int any_head(const struct http_head *h);
static const struct route {
    const char *method;    /* NULL: any */
    int (*match)(const struct http_head *h);
    bool upgrade;          /* only as a WebSocket upgrade */
    const struct frontend *fe;
} routes[] = {
    {"GET", ws_head, true, &ws_frontend},              /* /api/v1/socket */
    {"GET", bulk_head, true, &wspass_frontend},        /* /api/v1/flow/{flow}/import|export/{kind} */
    {NULL, pass_head, false, &rest_pass_frontend},     /* the HTTP pass-through routes */
    {NULL, any_head, false, &rest_frontend},           /* everything else: libmicrohttpd */
};
#define HTTP_ROUTE (&routes[sizeof routes / sizeof *routes - 1])

/* The admin listener's: everything to REST's admin flavour, which serves the health
 * routes, /status and /shutdown, and answers 404 to the rest (upgrades included). */
static const struct route admin_routes[] = {
    {NULL, any_head, false, &rest_admin_frontend},
};

/* The row that takes what no other row does, for a connection speaking protos. */
static const struct route *last_row(unsigned protos)
{
    return protos & PROTO_ADMIN ? admin_routes : HTTP_ROUTE;
}

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
    guard_stop(&p->deadline);
    loop_epoll_del(LS.pending, p->fd);
    if (close_fd)
        close(p->fd);
    LS.npending--;
    free(p);
}

static int ws_head(const struct http_head *h)
{
    return span_is(h->path, "/api/v1/socket") ? 0 : -1;
}

static int bulk_head(const struct http_head *h)
{
    return wspass_route(h) ? 0 : -1;
}

/* A pass-through HTTP route (passpath.c), decided on the path as sent: its enum
 * pass_route.  A refused path or method goes on to REST, which answers it. */
static int pass_head(const struct http_head *h)
{
    char method[16], path[PASSPATH_MAX];
    if (h->method.n >= sizeof method)
        return -1;
    memcpy(method, h->method.p, h->method.n);
    method[h->method.n] = '\0';
    struct passpath pp;
    return passpath_route(method, h->path, path, sizeof path, &pp) == PASSPATH_OK ? (int)pp.route : -1;
}

static int any_head(const struct http_head *h)
{
    (void)h;
    return -1;
}

static const struct route *route_of(const struct http_head *h, unsigned protos, int *arg)
{
    if (protos & PROTO_ADMIN) {
        *arg = -1;
        return last_row(protos);
    }
    bool upgrade = http_list_has(h->upgrade, "websocket") && http_list_has(h->connection, "upgrade");
    *arg = -1;
    if (h->malformed)
        return HTTP_ROUTE;
    for (const struct route *r = routes; r < HTTP_ROUTE; r++)
        if ((!r->method || span_is(h->method, r->method)) && (!r->upgrade || upgrade) && (*arg = r->match(h)) >= 0)
            return r;
    *arg = -1;
    return HTTP_ROUTE;
}

/* Hands p's connection to fe.  An upgrade fe turns down is answered over HTTP. */
static void hand_over(struct pending *p, const struct frontend *fe, const struct http_head *h, int arg)
{
    int fd = p->fd;
    unsigned p_protos = p->protos;
    struct peer peer = p->peer;
    pending_free(p, false);
    struct refusal no;
    struct handover in = {h, &peer, arg, NULL};
    if (fe->take(fd, &in, &no))
        return;
    struct handover again = {h, &peer, -1, &no};
    struct refusal unused;
    last_row(p_protos)->fe->take(fd, &again, &unused); /* libmicrohttpd answers it */
}

/* A head the door refuses whatever its route: libmicrohttpd answers it. */
static void refuse_over(struct pending *p, const struct http_head *h, const struct refusal *no)
{
    int fd = p->fd;
    struct peer peer = p->peer;
    pending_free(p, false);
    struct handover in = {h, &peer, -1, no};
    struct refusal unused;
    HTTP_ROUTE->fe->take(fd, &in, &unused);
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
        hand_over(p, &line_frontend, NULL, -1);
        return;
    }
    struct http_head h;
    enum head_verdict v = http_head_parse(head, (size_t)n, &h);
    if (v == HEAD_INCOMPLETE && peer_done) {
        /* No more is coming: a half-closed line client, or a cut-off request. */
        hand_over(p, line_ok ? &line_frontend : last_row(p->protos)->fe, NULL, -1);
        return;
    }
    if (v == HEAD_INCOMPLETE && (size_t)n < sizeof head)
        return;
    if (v == HEAD_NOT_HTTP && line_ok) {
        hand_over(p, &line_frontend, NULL, -1);
        return;
    }
    struct refusal no;
    if (v == HEAD_REQUEST && access_head_refused(&h, &no)) {
        refuse_over(p, &h, &no);
        return;
    }
    int arg = -1;
    const struct route *r = v == HEAD_REQUEST ? route_of(&h, p->protos, &arg) : last_row(p->protos);
    hand_over(p, r->fe, v == HEAD_REQUEST ? &h : NULL, arg);
}

static void on_pending_event(void *ptr, uint32_t events)
{
    classify(ptr, events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR));
}

static void pending_overdue(struct guard *g)
{
    struct pending *p = guard_owner(g, struct pending, deadline);
    static struct log_limit limit;
    unsigned long held;
    if (log_limit_ok(&limit, 10, &held))
        log_warn("closing a connection that sent no complete request head within --client-timeout (%g s)%s",
                 LS.cfg->client_timeout, held ? "; more since the last report, see tgbridge_callers_dropped_total" : "");
    pending_free(p, true);
}

void listener_dispatch(int fd, const struct peer *peer, unsigned protos)
{
    struct pending *p = calloc(1, sizeof *p);
    if (!p) {
        close(fd);
        return;
    }
    p->fd = fd;
    p->protos = protos;
    p->peer = *peer;
    LS.npending++;
    if (!LS.pending || loop_epoll_add(LS.pending, fd, EPOLLIN | EPOLLRDHUP | EPOLLET, p)) {
        log_warn("cannot serve a new connection: %s", strerror(errno));
        LS.npending--;
        close(fd);
        free(p);
        return;
    }
    guard_start(&p->deadline, GUARD_HEAD, p->peer.accepted_at, pending_overdue);
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

/* arg: NULL for the data listener, non-NULL for the admin listener. */
static void serve_tcp(int fd, const struct sockaddr *addr, socklen_t len, void *arg)
{
    struct peer peer;
    memset(&peer, 0, sizeof peer);
    peer.addrlen = len < sizeof peer.addr ? len : sizeof peer.addr;
    memcpy(&peer.addr, addr, peer.addrlen);
    peer.accepted_at = now_mono();
    listener_dispatch(fd, &peer, arg ? PROTO_HTTP | PROTO_ADMIN : PROTO_HTTP);
}

static struct listener *tcp_open(const char *host, int port, int *bound_port, void *arg, char *err, size_t errlen)
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
    struct listener *l = listener_start(fd, serve_tcp, arg);
    if (!l) {
        close(fd);
        errorf(err, errlen, "cannot add the listener to the event loop");
    }
    return l;
}

static struct listener *tcp_adopt(int fd, char *host, size_t hostlen, int *bound_port, void *arg, char *err,
                                  size_t errlen)
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
    struct listener *l = listener_start(fd, serve_tcp, arg);
    if (!l)
        errorf(err, errlen, "cannot add the listener to the event loop");
    return l;
}

struct listener *listener_tcp(const char *host, int port, int *bound_port, char *err, size_t errlen)
{
    return tcp_open(host, port, bound_port, NULL, err, errlen);
}

struct listener *listener_tcp_adopt(int fd, char *host, size_t hostlen, int *bound_port, char *err, size_t errlen)
{
    return tcp_adopt(fd, host, hostlen, bound_port, NULL, err, errlen);
}

struct listener *listener_admin(struct config *cfg, int adopted_fd, char *err, size_t errlen)
{
    static char admin; /* serve_tcp's mark for the admin listener */
    err[0] = '\0';
    if (adopted_fd >= 0)
        return tcp_adopt(adopted_fd, cfg->admin_host, sizeof cfg->admin_host, &cfg->admin_port, &admin, err, errlen);
    if (cfg->admin_port < 0)
        return NULL;
    return tcp_open(cfg->admin_host, cfg->admin_port, &cfg->admin_port, &admin, err, errlen);
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
