#include "loop.h"
#include "log.h"
#include "util.h"
#include <errno.h>
#include <fcntl.h>
#include <libwebsockets.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>

struct watcher {
    struct lws *wsi;
    watch_cb cb;
    void *arg;
};

static struct lws_context *ctx;
static volatile int stop_requested;

static int raw_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
    (void)user;
    (void)in;
    (void)len;
    struct watcher *w = lws_get_opaque_user_data(wsi);
    switch (reason) {
    case LWS_CALLBACK_RAW_RX_FILE:
        if (w && w->cb)
            w->cb(w->arg);
        break;
    case LWS_CALLBACK_RAW_CLOSE_FILE:
        if (w) {
            lws_set_opaque_user_data(wsi, NULL);
            free(w);
        }
        break;
    default:
        break;
    }
    return 0;
}

/* lws tells some things about a wsi only to the first protocol: its destruction
 * (LWS_CALLBACK_WSI_DESTROY, the last word on any connection) and the verdict on a
 * server certificate.  This one passes them on to the wsi's own protocol. */
static void *client_tls_ctx;

static int root_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
    if (reason == LWS_CALLBACK_OPENSSL_LOAD_EXTRA_CLIENT_VERIFY_CERTS)
        client_tls_ctx = user; /* the gateway connections' SSL_CTX, made once (castore.c) */
    bool forward = reason == LWS_CALLBACK_WSI_DESTROY || reason == LWS_CALLBACK_OPENSSL_PERFORM_SERVER_CERT_VERIFICATION;
    const struct lws_protocols *p = forward ? lws_get_protocol(wsi) : NULL;
    if (p && p->callback && p->callback != root_callback)
        return p->callback(wsi, reason, user, in, len);
    return 0;
}

/* The loop's two, every module's (loop_add_protocol), and the terminator. */
#define MAX_PROTOCOLS 16
static struct lws_protocols protocols[MAX_PROTOCOLS];
static size_t nprotocols = 2;

void loop_add_protocol(const struct lws_protocols *p)
{
    if (ctx || nprotocols + 1 >= MAX_PROTOCOLS) {
        log_error("lws protocol %s not added (%s)", p->name, ctx ? "after loop_init" : "too many");
        return;
    }
    protocols[nprotocols++] = *p;
}

static bool running;

/* lws reports every failed connection attempt at error level; tgbridge reports the
 * state change itself, once (upstream.c log_down), so after start-up lws's own
 * lines are debug detail. */
static void lws_log_emit(int level, const char *line)
{
    size_t n = strlen(line);
    while (n && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        n--;
    log_msg(level == LLL_ERR && !running ? LOG_WARN : LOG_DEBUG, "lws: %.*s", (int)n, line);
}

int loop_init(const struct config *cfg)
{
    protocols[0] = (struct lws_protocols){"tgb-root", root_callback, 0, 0, 0, NULL, 0};
    protocols[1] = (struct lws_protocols){"tgb-raw", raw_callback, 0, 0, 0, NULL, 0};
    int lws_levels = LLL_ERR;
    if (log_get_level() >= LOG_DEBUG)
        lws_levels |= LLL_WARN | LLL_NOTICE;
    /* The only lines lws can emit are ours to route: redaction applies to them too. */
    lws_set_log_level(lws_levels, lws_log_emit);

    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.port = CONTEXT_PORT_NO_LISTEN;
    info.protocols = protocols;
    info.options = LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
    info.client_ssl_ca_filepath = cfg->ca_file;
    if (cfg->ca_only)
        info.options |= LWS_SERVER_OPTION_DISABLE_OS_CA_CERTS;
    /* The proxy decision is ours (config_pick_proxy), and dial.c sets it on the vhost
     * for each connection, as a number it looked up off the loop. */
    unsetenv("http_proxy");
    /* Room for a long JWT in the handshake headers (libraries.md b2), on the way out
     * and, for the local WebSocket's upgrades, on the way in (as much as listener.c
     * waits for). */
    info.pt_serv_buf_size = 256 * 1024;
    info.max_http_header_data = 16 * 1024;
    info.max_http_header_pool = 64;
    /* Every phase of a gateway connection has tgbridge's own deadline (dial.c), and a
     * pass-through request's wait for its answer and its body has the request's
     * (passthrough.c): lws's must never beat them to it. */
    double longest = cfg->connect_timeout > cfg->request_timeout ? cfg->connect_timeout : cfg->request_timeout;
    unsigned lws_timeout = (unsigned)longest + 5;
    info.timeout_secs = lws_timeout;
    info.connect_timeout_secs = lws_timeout;
    ctx = lws_create_context(&info);
    if (!ctx) {
        log_error("cannot create the libwebsockets context");
        return -1;
    }
    return 0;
}

struct lws_context *loop_ctx(void) { return ctx; }

void *loop_client_tls_ctx(void) { return client_tls_ctx; }

struct watcher *loop_watch_fd(int fd, watch_cb cb, void *arg)
{
    struct watcher *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    w->cb = cb;
    w->arg = arg;
    lws_adopt_desc_t d;
    memset(&d, 0, sizeof d);
    d.vh = lws_get_vhost_by_name(ctx, "default");
    d.type = LWS_ADOPT_RAW_FILE_DESC;
    d.fd.filefd = fd;
    d.vh_prot_name = "tgb-raw";
    d.opaque = w;
    w->wsi = lws_adopt_descriptor_vhost_via_info(&d);
    if (!w->wsi) {
        free(w);
        return NULL;
    }
    return w;
}

void loop_unwatch(struct watcher *w)
{
    if (!w)
        return;
    w->cb = NULL;
    lws_set_timeout(w->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
}

void loop_unwatch_now(struct watcher *w)
{
    if (!w)
        return;
    w->cb = NULL;
    lws_set_timeout(w->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_SYNC);
}

struct watcher *loop_watch_epoll(int epfd, watch_cb cb, void *arg)
{
    int fd = fcntl(epfd, F_DUPFD_CLOEXEC, 0);
    if (fd < 0)
        return NULL;
    return loop_watch_fd(fd, cb, arg); /* the loop's, even if this failed */
}

struct loop_epoll {
    int fd;                /* owned by its watcher: closed with the loop */
    loop_epoll_cb cb;
    struct loop_epoll *next;
};

static struct loop_epoll *epolls; /* freed with the loop */

static void epoll_ready(void *arg)
{
    struct loop_epoll *e = arg;
    struct epoll_event evs[64];
    int n = epoll_wait(e->fd, evs, 64, 0);
    for (int i = 0; i < n; i++)
        e->cb(evs[i].data.ptr, evs[i].events);
}

struct loop_epoll *loop_epoll_new(loop_epoll_cb cb)
{
    struct loop_epoll *e = calloc(1, sizeof *e);
    if (!e)
        return NULL;
    e->cb = cb;
    e->fd = epoll_create1(EPOLL_CLOEXEC);
    if (e->fd < 0 || !loop_watch_fd(e->fd, epoll_ready, e)) {
        free(e); /* the fd is the loop's, even if watching it failed */
        return NULL;
    }
    e->next = epolls;
    epolls = e;
    return e;
}

int loop_epoll_add(struct loop_epoll *e, int fd, uint32_t events, void *ptr)
{
    struct epoll_event ev = {.events = events, .data.ptr = ptr};
    return epoll_ctl(e->fd, EPOLL_CTL_ADD, fd, &ev);
}

void loop_epoll_del(struct loop_epoll *e, int fd)
{
    epoll_ctl(e->fd, EPOLL_CTL_DEL, fd, NULL);
}

#define MAX_HOOKS 8
static struct {
    void (*fn)(void *arg);
    void *arg;
} hooks[MAX_HOOKS];
static size_t nhooks;

int loop_before_poll(void (*fn)(void *arg), void *arg)
{
    if (nhooks == MAX_HOOKS)
        return -1;
    hooks[nhooks].fn = fn;
    hooks[nhooks].arg = arg;
    nhooks++;
    return 0;
}

/* lws_service runs its timers, then waits: a timer armed a microsecond ahead keeps
 * the wait to none (a timer already due would run among the others and be gone), so
 * lws_service returns and loop_run gets to the hooks.  Cancelled before them. */
static lws_sorted_usec_list_t wake_sul;

static void woken(lws_sorted_usec_list_t *sul)
{
    (void)sul;
}

void loop_wake(void)
{
    if (ctx)
        lws_sul_schedule(ctx, 0, &wake_sul, woken, 1);
}

static struct list rearms = LIST_INIT(rearms);

void loop_rearm_writable(struct loop_rearm *r, struct lws *wsi, const struct buf *out)
{
    r->wsi = wsi;
    r->out = out;
    if (!list_linked(&r->node))
        list_add_tail(&rearms, &r->node);
}

void loop_rearm_cancel(struct loop_rearm *r)
{
    list_del(&r->node);
}

static void rearm_writers(void)
{
    while (!list_empty(&rearms)) {
        struct loop_rearm *r = list_entry(rearms.next, struct loop_rearm, node);
        list_del(&r->node);
        if (r->out->len)
            lws_callback_on_writable(r->wsi);
    }
}

/* One lws_service call is one turn: due timers, one poll, its events. */
void loop_run(void)
{
    running = true;
    while (!stop_requested) {
        lws_sul_cancel(&wake_sul);
        rearm_writers();
        for (size_t i = 0; i < nhooks; i++)
            hooks[i].fn(hooks[i].arg);
        if (lws_service(ctx, 0) < 0)
            break;
    }
}

void loop_stop(void)
{
    stop_requested = 1;
    lws_cancel_service(ctx);
}

void loop_destroy(void)
{
    if (ctx)
        lws_context_destroy(ctx);
    ctx = NULL;
    while (epolls) {
        struct loop_epoll *e = epolls;
        epolls = e->next;
        free(e);
    }
}
