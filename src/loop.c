#include "loop.h"
#include "log.h"
#include "line_proto.h"
#include "upstream.h"
#include "util.h"
#include <libwebsockets.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

static struct lws_protocols protocols[4];

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
    protocols[0] = upstream_protocol;
    protocols[1] = (struct lws_protocols){"tgb-raw", raw_callback, 0, 0, 0, NULL, 0};
    protocols[2] = line_protocol;
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
    /* The proxy decision is ours (config_pick_proxy); lws would otherwise read
     * http_proxy by itself, even for wss:// and for loopback. */
    char proxy[600];
    if (cfg->via_proxy) {
        const struct proxy_url *p = cfg->via_proxy;
        bool v6 = strchr(p->host, ':') != NULL;
        snprintf(proxy, sizeof proxy, "%s%s%s%s%s:%d", p->userinfo, p->userinfo[0] ? "@" : "", v6 ? "[" : "",
                 p->host, v6 ? "]" : "", p->port);
        info.http_proxy_address = proxy;
    } else {
        unsetenv("http_proxy");
    }
    /* Room for a long JWT in the handshake headers (libraries.md b2). */
    info.pt_serv_buf_size = 32 * 1024;
    info.connect_timeout_secs = 10;
    ctx = lws_create_context(&info);
    explicit_bzero(proxy, sizeof proxy);
    if (!ctx) {
        log_error("cannot create the libwebsockets context");
        return -1;
    }
    return 0;
}

struct lws_context *loop_ctx(void) { return ctx; }

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

static void timer_fired(lws_sorted_usec_list_t *sul)
{
    struct timer *t = timer_owner(sul, struct timer, sul);
    t->cb(t);
}

void timer_after(struct timer *t, double seconds, timer_cb cb)
{
    t->cb = cb;
    lws_sul_schedule(ctx, 0, &t->sul, timer_fired, seconds_to_us(seconds));
}

void timer_cancel(struct timer *t)
{
    lws_sul_cancel(&t->sul);
}

bool timer_pending(const struct timer *t)
{
    return t->sul.list.owner != NULL;
}

void loop_run(void)
{
    running = true;
    while (!stop_requested)
        if (lws_service(ctx, 0) < 0)
            break;
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
}
