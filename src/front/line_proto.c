#include "line_proto.h"
#include "buf.h"
#include "firstpart.h"
#include "frontend.h"
#include "guard.h"
#include "lineframe.h"
#include "list.h"
#include "log.h"
#include "loop.h"
#include "session.h"
#include "stats.h"
#include "util.h"
#include <errno.h>
#include <libwebsockets.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define WRITE_CHUNK (64 * 1024)

/* One line client: its socket, its framing, and its session (session.c), which does
 * everything that is not bytes on this socket. */
struct lclient {
    struct session session;
    struct lws *wsi;
    int fd;
    bool eof;                /* the client shut its writing side: answer, then close */
    bool reading;            /* POLLIN wanted (lws rx flow control) */
    unsigned long long serial;
    unsigned uid;
    struct lineframe frame;
    struct guard partial;    /* a line under way must finish within --client-timeout */
    struct hold hold;        /* its bytes held, against --max-assembling */
    struct buf out;
    bool closing;
    bool paused;             /* --max-pending unanswered: not read until half are answered */
    struct loop_rearm rearm; /* bytes left after a write: POLLOUT asked again (loop.h) */
    struct list node;
};

static struct {
    const struct config *cfg;
    struct list clients;
    unsigned long long serial;
} L;

/* Duplicate ids refused, as docs/protocols.md's contract has it; errors in one shape; the
 * pending cap is back-pressure on the client's socket alone (libraries.md b8). */
static const struct session_rules line_rules = {"line", false, false, 0, "line"};


static void line_fail_all(const char *type, const char *message);
static void line_stats(struct frontend_stats *out);
static bool line_take(int fd, const struct handover *in, struct refusal *no);
const struct frontend line_frontend = {"line", line_take, line_stats, line_fail_all, NULL};

void line_init(const struct config *cfg)
{
    L.cfg = cfg;
    list_init(&L.clients);
    frontend_register(&line_frontend);
}

static void line_stats(struct frontend_stats *out)
{
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &L.clients) {
        const struct lclient *c = list_entry(pos, struct lclient, node);
        out->connections++;
        out->active += c->session.npending;
        if (!c->closing)
            out->unsent += c->out.len;
    }
}

void line_refuse(int fd, const char *type, const char *message)
{
    struct buf b;
    buf_init(&b, 0);
    session_error_json(&b, NULL, type, message);
    buf_puts(&b, "\n");
    ssize_t n = write(fd, buf_ptr(&b), b.len);
    (void)n;
    buf_free(&b);
}

static void kill_client(struct lclient *c, const char *why);

/* Queues bytes for the client; a client that lets too much pile up is closed rather
 * than allowed to grow our memory (redis's client-output-buffer-limit). */
static void send_bytes(struct lclient *c, const char *p, size_t n)
{
    if (c->closing)
        return;
    if (guard_reply_queued(c->out.len, n, true)) {
        char why[160];
        snprintf(why, sizeof why, "it reads too slowly (%zu bytes of replies waiting, limit %zu)",
                 c->out.len + n, L.cfg->max_client_buffer);
        kill_client(c, why);
        return;
    }
    buf_append(&c->out, p, n);
    lws_callback_on_writable(c->wsi);
}

static void update_flow_control(struct lclient *c)
{
    size_t n = c->session.npending, max = L.cfg->max_pending;
    if (c->paused && n <= max / 2)
        c->paused = false;
    else if (!c->paused && n >= max)
        c->paused = true;
    bool want = !c->paused && !c->eof;
    if (want != c->reading) {
        c->reading = want;
        lws_rx_flow_control(c->wsi, want);
    }
    /* A half-closed client is closed once everything it asked for is written. */
    if (c->eof && !n && !c->out.len)
        lws_callback_on_writable(c->wsi);
}

/* ---- the session's side ------------------------------------------------------------ */

/* A reply becomes one line: raw CR/LF in a validated JSON text can only be whitespace
 * between tokens, where a space is the same. */
static void session_send(struct session *s, const char *msg, size_t len)
{
    struct lclient *c = s->owner;
    if (c->closing)
        return;
    struct buf b;
    buf_init(&b, 0);
    buf_append(&b, msg, len);
    char *p = buf_ptr(&b);
    for (size_t i = 0; i < b.len; i++)
        if (p[i] == '\n' || p[i] == '\r')
            p[i] = ' ';
    buf_puts(&b, "\n");
    send_bytes(c, buf_ptr(&b), b.len);
    buf_free(&b);
}

static void session_control(struct session *s, const struct client_msg_info *m)
{
    if (!strcmp(m->type, "ping")) {
        static const char pong[] = "{\"type\":\"pong\"}";
        session_send(s, pong, sizeof pong - 1);
        return;
    }
    char *cid = NULL;
    if (m->id.p) {
        cid = strndup(m->id.p, m->id.n);
        if (!cid)
            abort();
    }
    session_error(s, cid, "bad-request",
                  "unknown control line (tgbridge authenticates upstream itself; only "
                  "{\"type\":\"ping\"} is a control line)");
    free(cid);
}

static void session_pending_changed(struct session *s)
{
    update_flow_control(s->owner);
}

static const struct session_ops line_session_ops = {session_send, session_control, session_pending_changed};

/* Its id, if its first bytes show one, so that the client can tell which. */
static void too_long(struct lclient *c, const char *prefix, size_t len)
{
    char msg[128];
    snprintf(msg, sizeof msg, "line longer than --max-line (%zu bytes); the rest of it is discarded", L.cfg->max_line);
    struct span id;
    char *cid = client_msg_id(prefix, len, &id) ? strndup(id.p, id.n) : NULL;
    session_error(&c->session, cid, "line-too-long", msg);
    free(cid);
}

/* A line must arrive whole within --client-timeout of its first byte, plus as much
 * again per MiB of it; a client idle between lines is not limited. */
static void partial_overdue(struct guard *g)
{
    struct lclient *c = guard_owner(g, struct lclient, partial);
    static struct log_limit limit;
    unsigned long held;
    if (log_limit_ok(&limit, 10, &held))
        log_warn("closing Unix client #%llu (uid %u): it sent %zu bytes of a line and not the rest within "
                 "--client-timeout (%g s)%s", c->serial, c->uid, c->frame.partial, L.cfg->client_timeout,
                 held ? "; more since the last report, see tgbridge_callers_dropped_total" : "");
    kill_client(c, NULL);
}

static bool on_line(void *arg, enum lineframe_event ev, const char *line, size_t len)
{
    struct lclient *c = arg;
    if (ev == LINEFRAME_TOO_LONG)
        too_long(c, line, len);
    else
        session_message(&c->session, line, len);
    return !c->closing;
}

/* The line under way would take the bytes being received past --max-assembling: it
 * is refused (with its id, if its first bytes show it) and the rest of it skipped;
 * the connection stays. */
static void too_busy(struct lclient *c)
{
    char msg[160];
    snprintf(msg, sizeof msg, "the requests being received already hold --max-assembling (%zu bytes); "
             "the rest of this line is discarded, try again", L.cfg->max_assembling);
    struct span id;
    char *cid = client_msg_id(buf_ptr(&c->frame.in), c->frame.in.len, &id) ? strndup(id.p, id.n) : NULL;
    lineframe_skip(&c->frame);
    guard_release(&c->hold);
    session_error(&c->session, cid, "too-busy", msg);
    free(cid);
}

static void on_rx(struct lclient *c, const char *data, size_t len)
{
    if (!lineframe_feed(&c->frame, data, len, on_line, c))
        return;
    if (c->closing)
        return;
    /* Checked per read: a line under way holds at most one read more than allowed. */
    if (!guard_hold(&c->hold, c->frame.in.len))
        too_busy(c);
    if (!c->frame.partial)
        guard_stop(&c->partial);
    else if (!guard_running(&c->partial))
        guard_start(&c->partial, GUARD_BODY, now_mono(), partial_overdue);
    guard_received(&c->partial, c->frame.partial);
}

static int on_writeable(struct lclient *c)
{
    if (c->closing)
        return -1;
    while (c->out.len) {
        ssize_t n = send(c->fd, buf_ptr(&c->out), c->out.len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                break;
            log_debug("Unix client #%llu: write failed: %s", c->serial, strerror(errno));
            return -1;
        }
        buf_consume(&c->out, (size_t)n);
        firstpart_wrote();
    }
    if (c->out.len) {
        lws_callback_on_writable(c->wsi);
        loop_rearm_writable(&c->rearm, c->wsi, &c->out);
        return 0;
    }
    if (c->out.cap > 1024 * 1024)
        buf_free(&c->out);
    if (c->eof && !c->session.npending)
        return -1; /* said all it wanted and got every answer */
    return 0;
}

/* We read the socket ourselves (lws's raw-socket role would close on a half-close,
 * losing the replies to a client that wrote its lines and then shut down). */
static int on_readable(struct lclient *c)
{
    char data[WRITE_CHUNK];
    for (int i = 0; i < 16 && !c->closing && !c->eof; i++) {
        ssize_t n = recv(c->fd, data, sizeof data, MSG_DONTWAIT);
        if (n > 0) {
            on_rx(c, data, (size_t)n);
            if ((size_t)n < sizeof data)
                break; /* drained: lws polls level-triggered, so no read just to see EAGAIN */
            continue;
        }
        if (n == 0) {
            c->eof = true;
            guard_stop(&c->partial);
            lineframe_eof(&c->frame, on_line, c); /* a last line without its newline */
            guard_release(&c->hold);
            update_flow_control(c);
            break;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            break;
        return -1;
    }
    return 0;
}

/* why == NULL: the caller logged it. */
static void kill_client(struct lclient *c, const char *why)
{
    if (c->closing)
        return;
    if (why)
        log_warn("closing Unix client #%llu (uid %u): %s", c->serial, c->uid, why);
    c->closing = true;
    guard_stop(&c->partial);
    guard_release(&c->hold);
    session_close(&c->session);
    buf_free(&c->out);
    lws_callback_on_writable(c->wsi); /* returns -1 there, which closes it */
}

static void client_free(struct lclient *c)
{
    c->closing = true;
    guard_stop(&c->partial);
    guard_release(&c->hold);
    session_close(&c->session);
    loop_rearm_cancel(&c->rearm);
    list_del(&c->node);
    lineframe_free(&c->frame);
    buf_free(&c->out);
    free(c);
}

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
    (void)user;
    (void)in;
    (void)len;
    struct lclient *c = lws_get_opaque_user_data(wsi);
    switch (reason) {
    case LWS_CALLBACK_RAW_RX_FILE:
        if (c)
            return on_readable(c);
        break;
    case LWS_CALLBACK_RAW_WRITEABLE_FILE:
        if (c)
            return on_writeable(c);
        break;
    case LWS_CALLBACK_RAW_CLOSE_FILE:
        if (c) {
            log_debug("Unix client #%llu gone", c->serial);
            lws_set_opaque_user_data(wsi, NULL);
            client_free(c);
        }
        break;
    default:
        break;
    }
    return 0;
}

static const struct lws_protocols line_protocol = {"tgb-line", callback, 0, 64 * 1024, 0, NULL, 0};

void line_register_protocol(void)
{
    loop_add_protocol(&line_protocol);
}

static bool line_take(int fd, const struct handover *in, struct refusal *no)
{
    (void)no;
    unsigned uid = in->peer->uid;
    struct lclient *c = calloc(1, sizeof *c);
    if (!c) {
        close(fd);
        return true;
    }
    c->serial = ++L.serial;
    c->uid = uid;
    c->fd = fd;
    c->reading = true;
    lineframe_init(&c->frame, L.cfg->max_line);
    buf_init(&c->out, 0);
    session_init(&c->session, &line_rules, &line_session_ops, L.cfg, c);
    struct admission v; /* admitted at accept (unix_listener.c); this names the caller */
    access_admit(&(struct admission_ask){.rule = ADMIT_PEER, .peer = in->peer}, &v);
    c->session.who = v.caller.name;
    list_add_tail(&L.clients, &c->node);
    lws_adopt_desc_t d;
    memset(&d, 0, sizeof d);
    d.vh = lws_get_vhost_by_name(loop_ctx(), "default");
    d.type = LWS_ADOPT_RAW_FILE_DESC; /* we do the reads and writes (see on_readable) */
    d.fd.filefd = fd;
    d.vh_prot_name = "tgb-line";
    d.opaque = c;
    c->wsi = lws_adopt_descriptor_vhost_via_info(&d);
    if (!c->wsi) {
        list_del(&c->node);
        free(c); /* lws closed fd */
        log_warn("cannot serve a Unix client");
        return true;
    }
    log_debug("Unix client #%llu (uid %u) speaks the line protocol", c->serial, uid);
    return true;
}

static void line_fail_all(const char *type, const char *message)
{
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &L.clients)
        session_fail_all(&list_entry(pos, struct lclient, node)->session, type, message);
}
