#include "wssock.h"
#include "firstpart.h"
#include "log.h"
#include "loop.h"
#include "util.h"
#include "wsframe.h"
#include <errno.h>
#include <libwebsockets.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define READ_CHUNK (64 * 1024)

static struct {
    const struct config *cfg;
    struct list socks;
} K = {NULL, LIST_INIT(K.socks)};

static double clamp_secs(double t)
{
    return t < 0.001 ? 0.001 : t;
}

/* ---- the handshake ------------------------------------------------------------------ */

void wssock_accept(const char *key, size_t n, char out[29])
{
    static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    char text[64 + sizeof guid];
    n = n > 64 ? 64 : n; /* a key is 24 characters (wssock_key_ok) */
    memcpy(text, key, n);
    memcpy(text + n, guid, sizeof guid - 1);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    if (!EVP_Digest(text, n + sizeof guid - 1, md, &mdlen, EVP_sha1(), NULL) || mdlen != 20)
        abort(); /* SHA-1 is always there */
    EVP_EncodeBlock((unsigned char *)out, md, 20);
}

static bool key_ok(const struct http_head *h)
{
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    if (h->ws_key.n != 24 || memcmp(h->ws_key.p + 22, "==", 2))
        return false;
    for (size_t i = 0; i < 22; i++)
        if (!memchr(b64, h->ws_key.p[i], sizeof b64 - 1))
            return false;
    return true;
}

bool wssock_refused(const struct http_head *h, struct refusal *no)
{
    if (key_ok(h))
        return false;
    no->status = 400;
    no->type = "bad-request";
    snprintf(no->message, sizeof no->message,
             "a WebSocket upgrade needs a Sec-WebSocket-Key of 16 bytes in base64 (RFC 6455 section 4.1)");
    return true;
}

/* The request head was only peeked (listener.c): it is read off now, whole (it is in
 * the kernel already), so that what follows it is the client's first frame. */
static bool read_off_head(int fd, size_t len)
{
    char sink[4096];
    while (len) {
        ssize_t n = recv(fd, sink, len < sizeof sink ? len : sizeof sink, MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return false;
        len -= (size_t)n;
    }
    return true;
}

/* ---- writing ------------------------------------------------------------------------ */

static void want_write(struct wssock *s)
{
    lws_callback_on_writable(s->wsi);
}

/* From a timer: the connection ends now, whether or not its socket would take a
 * write (a client that does not read never makes it writable). */
static void kill_now(struct wssock *s)
{
    s->dead = true;
    lws_set_timeout(s->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
}

static void close_overdue(struct timer *t)
{
    struct wssock *s = timer_owner(t, struct wssock, closer);
    log_debug("%s #%llu: closing handshake not done within --close-timeout", s->what, s->serial);
    kill_now(s);
}

void wssock_close(struct wssock *s, int code, const char *reason)
{
    if (s->close_sent)
        return;
    unsigned char p[125];
    size_t n = 0;
    if (code != 1005) { /* 1005: the client's close had no code, nor has our answer */
        size_t r = reason ? strlen(reason) : 0;
        r = r > 123 ? 123 : r;
        p[0] = (unsigned char)(code >> 8);
        p[1] = (unsigned char)code;
        if (r)
            memcpy(p + 2, reason, r);
        n = 2 + r;
    }
    wsframe_append_server(&s->out, WSFRAME_CLOSE, p, n);
    s->close_sent = true;
    wssock_read(s, true); /* for the answer */
    timer_after(&s->closer, clamp_secs(K.cfg->close_timeout), close_overdue);
    want_write(s);
}

void wssock_send(struct wssock *s, const char *msg, size_t len)
{
    if (s->close_sent)
        return;
    wsframe_append_server_text(&s->out, msg, len);
    want_write(s);
}

void wssock_send_piece(struct wssock *s, bool binary, bool start, bool end, const void *p, size_t n)
{
    if (s->close_sent)
        return;
    wsframe_append_server_piece(&s->out, start ? (binary ? WSFRAME_BINARY : WSFRAME_TEXT) : WSFRAME_CONT, end, p, n);
    want_write(s);
}

void wssock_read(struct wssock *s, bool on)
{
    on = on || s->close_sent;
    if (on != s->reading) {
        s->reading = on;
        lws_rx_flow_control(s->wsi, on);
    }
}

/* As much of out as the kernel takes.  False: the connection is broken. */
static bool flush(struct wssock *s)
{
    while (s->out.len) {
        ssize_t n = send(s->fd, buf_ptr(&s->out), s->out.len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                break;
            log_debug("%s #%llu: write failed: %s", s->what, s->serial, strerror(errno));
            return false;
        }
        buf_consume(&s->out, (size_t)n);
        firstpart_wrote();
    }
    if (!s->out.len && s->out.cap > 1024 * 1024)
        buf_free(&s->out);
    return true;
}

/* After our close frame is out: the connection ends when the client's answer is in;
 * one that broke the protocol gets our FIN at once, and its bytes are read and
 * dropped until its own FIN, so that our close frame is not lost to a reset. */
static int on_writeable(struct wssock *s)
{
    if (s->dead || !flush(s))
        return -1;
    if (s->out.len) {
        want_write(s);
        loop_rearm_writable(&s->rearm, s->wsi, &s->out);
        return 0;
    }
    if (s->ops->drained)
        s->ops->drained(s);
    if (!s->close_sent)
        return 0;
    if (!s->close_out && !s->peer_closed) {
        timer_after(&s->closer, clamp_secs(K.cfg->close_timeout), close_overdue);
        if (s->failed)
            shutdown(s->fd, SHUT_WR);
    }
    s->close_out = true;
    return s->peer_closed ? -1 : 0;
}

/* ---- reading ------------------------------------------------------------------------ */

/* Silent for --ping-interval: pinged; no answer --ping-timeout later: closed (what
 * lws's idle policy did for the local WebSocket). */
static void idle_check(struct timer *t)
{
    struct wssock *s = timer_owner(t, struct wssock, idle);
    double silent = now_mono() - s->last_rx;
    if (s->close_sent)
        return; /* the closer decides now */
    if (s->ping_out) {
        log_info("%s #%llu did not answer a ping within --ping-timeout: closed", s->what, s->serial);
        kill_now(s);
        return;
    }
    if (silent < K.cfg->ping_interval) {
        timer_after(&s->idle, clamp_secs(K.cfg->ping_interval - silent), idle_check);
        return;
    }
    wsframe_append_server(&s->out, WSFRAME_PING, NULL, 0);
    s->ping_out = true;
    want_write(s);
    timer_after(&s->idle, clamp_secs(K.cfg->ping_timeout), idle_check);
}

static void on_frame(void *arg, const struct wsread_event *ev)
{
    struct wssock *s = arg;
    switch (ev->kind) {
    case WSREAD_DATA:
        if (!s->close_sent)
            s->ops->data(s, ev);
        break;
    case WSREAD_PING:
        if (!s->close_sent) {
            wsframe_append_server(&s->out, WSFRAME_PONG, ev->p, ev->n);
            want_write(s);
        }
        break;
    case WSREAD_PONG:
        break;
    case WSREAD_CLOSE: /* answered with its own code (RFC 6455 §5.5.1), unless ours is out */
        s->peer_closed = true;
        if (s->ops->ending)
            s->ops->ending(s, ev->code, ev->p, ev->n);
        if (!s->close_sent) {
            char reason[124];
            snprintf(reason, sizeof reason, "%.*s", (int)ev->n, ev->p);
            wssock_close(s, ev->code, reason);
        }
        want_write(s);
        break;
    }
}

static void take(struct wssock *s, unsigned char *data, size_t n)
{
    int code = wsread_feed(&s->rd, data, n, on_frame, s);
    if (!code)
        return;
    log_warn("closing %s #%llu with %d: %s", s->what, s->serial, code, s->rd.why);
    s->failed = true;
    if (s->ops->ending)
        s->ops->ending(s, 0, NULL, 0);
    wssock_close(s, code, s->rd.why);
}

static int on_readable(struct wssock *s)
{
    unsigned char data[READ_CHUNK];
    for (int i = 0; i < 16; i++) {
        ssize_t n = recv(s->fd, data, sizeof data, MSG_DONTWAIT);
        if (n > 0) {
            s->last_rx = now_mono();
            s->ping_out = false;
            if (!s->failed && !s->peer_closed)
                take(s, data, (size_t)n);
            if ((size_t)n < sizeof data)
                break; /* drained: lws polls level-triggered */
            continue;
        }
        if (n == 0 && s->peer_closed && s->out.len) {
            /* It sent its close and shut its side: our answer still goes out. */
            s->reading = false;
            lws_rx_flow_control(s->wsi, 0);
            return 0;
        }
        if (n == 0)
            return -1; /* gone, or the answer to our FIN */
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            break;
        return -1;
    }
    return 0;
}

/* ---- the connection ----------------------------------------------------------------- */

static void sock_gone(struct wssock *s)
{
    timer_cancel(&s->idle);
    timer_cancel(&s->closer);
    loop_rearm_cancel(&s->rearm);
    list_del(&s->node);
    buf_free(&s->out);
    s->ops->gone(s);
}

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
    (void)user;
    (void)in;
    (void)len;
    struct wssock *s = lws_get_opaque_user_data(wsi);
    if (!s)
        return 0;
    switch (reason) {
    case LWS_CALLBACK_RAW_RX_FILE:
        return on_readable(s);
    case LWS_CALLBACK_RAW_WRITEABLE_FILE:
        return on_writeable(s);
    case LWS_CALLBACK_RAW_CLOSE_FILE:
        lws_set_opaque_user_data(wsi, NULL);
        sock_gone(s);
        return 0;
    default:
        return 0;
    }
}

static const struct lws_protocols wssock_protocol = {"tgb-wssock", callback, 0, READ_CHUNK, 0, NULL, 0};

void wssock_register_protocol(void)
{
    loop_add_protocol(&wssock_protocol);
}

void wssock_init(const struct config *cfg)
{
    K.cfg = cfg;
}

bool wssock_start(struct wssock *s, int fd, const struct http_head *h, const struct wssock_ops *ops, bool reading)
{
    if (!read_off_head(fd, h->length)) {
        close(fd);
        return false;
    }
    s->ops = ops;
    s->fd = fd;
    wsread_init(&s->rd);
    buf_init(&s->out, 0);
    char accept[29];
    wssock_accept(h->ws_key.p, h->ws_key.n, accept);
    buf_puts(&s->out, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      "Sec-WebSocket-Accept: ");
    buf_puts(&s->out, accept);
    buf_puts(&s->out, "\r\n\r\n");
    lws_adopt_desc_t d;
    memset(&d, 0, sizeof d);
    d.vh = lws_get_vhost_by_name(loop_ctx(), "default");
    d.type = LWS_ADOPT_RAW_FILE_DESC; /* we do the reads and writes */
    d.fd.filefd = fd;
    d.vh_prot_name = wssock_protocol.name;
    d.opaque = s;
    s->wsi = lws_adopt_descriptor_vhost_via_info(&d);
    if (!s->wsi) { /* lws closed fd */
        buf_free(&s->out);
        return false;
    }
    list_add_tail(&K.socks, &s->node);
    s->reading = true;
    wssock_read(s, reading);
    s->last_rx = now_mono();
    timer_after(&s->idle, clamp_secs(K.cfg->ping_interval), idle_check);
    want_write(s);
    return true;
}
