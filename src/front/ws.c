#include "ws.h"
#include "buf.h"
#include "firstpart.h"
#include "frontend.h"
#include "guard.h"
#include "json.h"
#include "list.h"
#include "log.h"
#include "loop.h"
#include "mux.h"
#include "policy.h"
#include "session.h"
#include "stats.h"
#include "util.h"
#include "wsframe.h"
#include "wsserver.h"
#include <libwebsockets.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

/* Bytes handed to lws per WRITEABLE: a burst of frames in one send, small enough that
 * lws keeps at most this much of it when the kernel does not take it all. */
#define WS_WRITE_CHUNK (64 * 1024)
/* Close code 1013, "Try Again Later" (IANA WebSocket close code registry; lws has no name for it). */
#define WS_CLOSE_TRY_AGAIN_LATER 1013
/* Of a message over --max-body, this much is kept to find its id for the error. */
#define ID_PREFIX (16 * 1024)

/* One local WebSocket client: its socket (lws's), its framing, and its session. */
struct wsconn {
    struct wsserver_conn ws; /* first: the callback that serves it (wsserver.h) */
    struct session session;
    struct caller_id caller; /* as admitted at the upgrade; an auth frame may unlock it */
    struct lws *wsi;
    unsigned long long serial;
    struct buf out;          /* frames (ours, unmasked) not yet handed to lws */
    struct buf in;           /* the message being received */
    bool oversize;           /* the message being received is over --max-body */
    bool receiving;          /* a message has begun and is not complete */
    struct guard deadline;   /* ... and must be complete by then (GUARD_BODY) */
    struct hold hold;        /* its bytes, against --max-assembling */
    int close_code;          /* nonzero: close with it once everything is written */
    char close_reason[100];
    bool close_sent;         /* our close frame is out: waiting for the client's */
    struct list node;
};

static struct {
    const struct config *cfg;
    struct list conns;
    size_t nconns;
    unsigned long long serial;
} W;

/* Ids allowed again while in flight (the TypeScript client re-sends a timed-out
 * request with the same id), errors nested in responses left where the gateway put
 * them (the official clients read them there), and a cap instead of back-pressure:
 * not reading the socket would also stop reading its pings and its close. */
static struct session_rules ws_rules = {"message", true, true, 0, "ws"};

/* ---- writing ----------------------------------------------------------------------- */

/* The message under way is done with: no deadline, its bytes free. */
static void message_end(struct wsconn *c)
{
    c->receiving = false;
    guard_stop(&c->deadline);
    guard_release(&c->hold);
}

/* reason, if any, goes in the close frame (RFC 6455 §5.5.1: at most 123 bytes). */
static void conn_drop(struct wsconn *c, int code, const char *why, const char *reason)
{
    if (c->close_code)
        return;
    if (why)
        log_warn("closing local WebSocket client #%llu: %s", c->serial, why);
    c->close_code = code;
    snprintf(c->close_reason, sizeof c->close_reason, "%s", reason ? reason : "");
    message_end(c);
    c->in.len = 0;
    buf_free(&c->in);
    session_close(&c->session);
    /* What it was sent before goes out whole (c->out holds whole frames; lws keeps the
     * tail of a slice the kernel did not take), then the close frame (on_writeable);
     * a client that never reads is cut off all the same after --close-timeout. */
    lws_callback_on_writable(c->wsi);
    double t = W.cfg->close_timeout;
    lws_set_timeout(c->wsi, PENDING_TIMEOUT_USER_OK, t < 1 ? 1 : t > 3600 ? 3600 : (int)(t + 0.999));
}

/* One message to the client.  What waits for a client that does not read is bounded
 * (--max-client-buffer): past it the client is closed with 1008, never allowed to
 * grow our memory or slow the shared socket.  A single message larger than the bound
 * still goes to a client that reads. */
static void session_send(struct session *s, const char *msg, size_t len)
{
    struct wsconn *c = s->owner;
    if (c->close_code)
        return;
    if (guard_reply_queued(c->out.len, len, false)) {
        char why[160];
        snprintf(why, sizeof why, "it reads too slowly (%zu bytes of replies waiting, --max-client-buffer %zu)",
                 c->out.len + len, W.cfg->max_client_buffer);
        conn_drop(c, LWS_CLOSE_STATUS_POLICY_VIOLATION, why, NULL);
        return;
    }
    wsframe_append_server_text(&c->out, msg, len);
    lws_callback_on_writable(c->wsi);
}

static int on_writeable(struct wsconn *c)
{
    if (c->out.len) {
        size_t n = c->out.len < WS_WRITE_CHUNK ? c->out.len : WS_WRITE_CHUNK;
        if (lws_write(c->wsi, (unsigned char *)buf_ptr(&c->out), n, LWS_WRITE_RAW) < 0)
            return -1;
        buf_consume(&c->out, n);
        firstpart_wrote();
        if (!c->out.len && c->out.cap > 1024 * 1024)
            buf_free(&c->out);
    }
    if (c->out.len) {
        lws_callback_on_writable(c->wsi);
        return 0;
    }
    if (c->close_code && !c->close_sent) { /* everything owed is written: say goodbye */
        if (lws_partial_buffered(c->wsi)) { /* the last slice is not all out yet */
            lws_callback_on_writable(c->wsi);
            return 0;
        }
        if (wsserver_send_close(c->wsi, c->close_code, c->close_reason, strlen(c->close_reason),
                                W.cfg->close_timeout))
            return -1;
        c->close_sent = true;
    }
    return 0;
}

/* ---- the session's side ------------------------------------------------------------ */

/* {"type":"auth","token":...} is answered here, whatever era the gateway is, and never
 * forwarded: it would change the identity of the socket every caller shares. */
static void session_control(struct session *s, const struct client_msg_info *m)
{
    struct wsconn *c = s->owner;
    if (strcmp(m->type, "auth")) {
        char *cid = m->id.p ? strndup(m->id.p, m->id.n) : NULL;
        session_error(s, cid, "bad-request", "the only control message is {\"type\":\"auth\",\"token\":...}");
        free(cid);
        return;
    }
    /* Decoded with its length: a \u0000 inside must not end the token early. */
    char tok[4096];
    long tlen = m->token.p ? json_string_decode(m->token, tok, sizeof tok) : -1;
    bool ok = access_admit_frame(tlen >= 0 ? tok : NULL, tlen >= 0 ? (size_t)tlen : 0, &c->caller);
    if (ok)
        session_set_credential(s, tok, tlen > 0 ? (size_t)tlen : 0); /* a forward caller's key, for later requests */
    explicit_bzero(tok, sizeof tok);
    if (!ok) {
        /* The gateway's own refusal; the socket stays open and keeps what it had. */
        static const char failed[] = "{\"type\":\"auth-failed\",\"error\":\"auth failure\"}";
        session_send(s, failed, sizeof failed - 1);
        log_info("local WebSocket client #%llu: auth frame with a wrong token", c->serial);
        return;
    }
    s->locked = false;
    s->who = c->caller.name; /* for later requests only */
    /* Both names: gateways before v2.6.2 said "workspace", later ones "default_workspace". */
    const char *ws = mux_default_workspace();
    if (!ws[0])
        ws = W.cfg->workspace && W.cfg->workspace[0] ? W.cfg->workspace : "default";
    struct buf b;
    buf_init(&b, 0);
    buf_puts(&b, "{\"type\":\"auth-ok\",\"default_workspace\":");
    buf_json_string(&b, ws, strlen(ws));
    buf_puts(&b, ",\"workspace\":");
    buf_json_string(&b, ws, strlen(ws));
    buf_puts(&b, "}");
    session_send(s, buf_ptr(&b), b.len);
    buf_free(&b);
}

static const struct session_ops ws_session_ops = {session_send, session_control, NULL};

/* ---- reading ----------------------------------------------------------------------- */

static void message_done(struct wsconn *c)
{
    if (c->oversize) {
        /* Its id, if the part kept shows one, so that the client can tell which. */
        struct span id;
        char *cid = client_msg_id(buf_ptr(&c->in), c->in.len, &id) ? strndup(id.p, id.n) : NULL;
        char msg[128];
        snprintf(msg, sizeof msg, "message larger than --max-body (%zu bytes)", W.cfg->max_body);
        session_error(&c->session, cid, "payload-too-large", msg);
        free(cid);
    } else {
        session_message(&c->session, buf_ptr(&c->in), c->in.len);
    }
    c->oversize = false;
    c->in.len = 0;
    if (c->in.cap > 1024 * 1024)
        buf_free(&c->in);
}

/* A message must be complete within --client-timeout of its first fragment, plus as
 * much again per MiB of it, as a REST body (guard.h); pings do not count. */
static void message_overdue(struct guard *g)
{
    struct wsconn *c = guard_owner(g, struct wsconn, deadline);
    char why[160];
    snprintf(why, sizeof why, "%zu bytes of a message and not the rest within --client-timeout (%g s)",
             c->deadline.received, W.cfg->client_timeout);
    conn_drop(c, LWS_CLOSE_STATUS_POLICY_VIOLATION, why, "message not complete within --client-timeout");
}

/* A message arrives in pieces (lws hands at most rx_buffer_size at a time); text and
 * binary alike, as the gateway takes both (ref Q30). */
static void on_receive(struct wsconn *c, const char *in, size_t len)
{
    if (!c->receiving) {
        c->receiving = true;
        guard_start(&c->deadline, GUARD_BODY, now_mono(), message_overdue);
    }
    guard_progress(&c->deadline, len);
    if (!c->oversize && c->in.len + len > W.cfg->max_body)
        c->oversize = true;
    size_t keep = !c->oversize ? len : c->in.len < ID_PREFIX ? (len < ID_PREFIX - c->in.len ? len : ID_PREFIX - c->in.len)
                : 0;
    if (keep && !guard_hold(&c->hold, c->in.len + keep)) {
        char why[160];
        snprintf(why, sizeof why, "its message would take the bytes being received past --max-assembling (%zu)",
                 W.cfg->max_assembling);
        conn_drop(c, WS_CLOSE_TRY_AGAIN_LATER, why, "too busy: --max-assembling reached, try again later");
        return;
    }
    buf_append(&c->in, in, keep);
    if (lws_is_final_fragment(c->wsi) && !lws_remaining_packet_payload(c->wsi)) {
        message_end(c);
        message_done(c);
    }
}

/* ---- connections ------------------------------------------------------------------- */

static void conn_free(struct wsconn *c)
{
    message_end(c);
    session_close(&c->session);
    list_del(&c->node);
    W.nconns--;
    buf_free(&c->out);
    buf_free(&c->in);
    free(c);
}

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
    (void)user;
    struct wsconn *c = lws_get_opaque_user_data(wsi);
    if (!c)
        return 0;
    switch (reason) {
    case LWS_CALLBACK_ESTABLISHED:
        log_debug("local WebSocket client #%llu connected", c->serial);
        return 0;
    case LWS_CALLBACK_RECEIVE:
        if (!c->close_code)
            on_receive(c, in, len);
        return 0;
    case LWS_CALLBACK_SERVER_WRITEABLE:
        return on_writeable(c);
    case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
        return c->close_sent ? -1 : 0; /* the answer to ours ends it; lws answers the client's own */
    case LWS_CALLBACK_HTTP:
        return -1; /* not an upgrade: the listener never sends those here */
    case LWS_CALLBACK_CLOSED:
    case LWS_CALLBACK_CLOSED_HTTP:
    case LWS_CALLBACK_WSI_DESTROY:
        log_debug("local WebSocket client #%llu gone", c->serial);
        lws_set_opaque_user_data(wsi, NULL);
        conn_free(c);
        return 0;
    default:
        return 0;
    }
}

/* What it presented at the upgrade: a forward caller's own gateway key (issue 17) for
 * the requests that follow. */
static void presented_credential(struct session *s, const struct http_head *h)
{
    struct span q = {0};
    http_query_param(h->query, "token", &q);
    char cred[4096];
    size_t n = policy_upgrade_credential(h->authorization.p, h->authorization.n, q.p, q.n, cred, sizeof cred);
    session_set_credential(s, cred, n);
    explicit_bzero(cred, sizeof cred);
}

static bool ws_take(int fd, const struct handover *in, struct refusal *no)
{
    bool unix_peer = in->peer->unix_socket;
    /* A token in the URL (v1 clients, the TypeScript client) or a Bearer header is
     * checked now, as a v1 gateway checks ?token=: a wrong one is refused at the
     * handshake.  Without either, the socket opens locked until a good auth frame. */
    struct admission v;
    access_admit_head(in->head, in->peer, ADMIT_UPGRADE_LOCKED, &v);
    if (!v.admitted) {
        *no = v.refusal;
        return false;
    }
    if (W.nconns >= W.cfg->max_ws_clients) {
        no->status = 503;
        no->type = "too-many-clients";
        snprintf(no->message, sizeof no->message, "%zu local WebSocket clients already (--max-ws-clients)",
                 W.cfg->max_ws_clients);
        return false;
    }
    if (!unix_peer) {
        /* Replies go out in bursts of whole frames: a tail segment must not wait for
         * the client's delayed ACK (Nagle), which would cap a stream at a few frames
         * per round trip. */
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    struct wsconn *c = calloc(1, sizeof *c);
    if (!c)
        abort();
    c->ws.callback = callback;
    c->serial = ++W.serial;
    buf_init(&c->out, 0);
    buf_init(&c->in, 0);
    session_init(&c->session, &ws_rules, &ws_session_ops, W.cfg, c);
    c->caller = v.caller;
    c->session.who = v.caller.name;
    presented_credential(&c->session, in->head);
    c->session.locked = v.caller.token == TOKEN_ABSENT;
    list_add_tail(&W.conns, &c->node);
    W.nconns++;
    c->wsi = wsserver_adopt(fd, &c->ws);
    if (!c->wsi) { /* lws closed fd */
        log_warn("cannot serve a local WebSocket client");
        conn_free(c);
        return true;
    }
    log_debug("local WebSocket client #%llu (%s)%s", c->serial, unix_peer ? "Unix socket" : "TCP",
              c->session.locked ? ", locked until a good auth frame" : "");
    return true;
}

/* ---- the front end ------------------------------------------------------------------ */

static void ws_stats(struct frontend_stats *out)
{
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &W.conns) {
        const struct wsconn *c = list_entry(pos, struct wsconn, node);
        out->connections++;
        out->active += c->session.npending;
        out->unsent += c->out.len;
    }
}

static void ws_fail_all(const char *type, const char *message)
{
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &W.conns)
        session_fail_all(&list_entry(pos, struct wsconn, node)->session, type, message);
}

/* After the drain: 1001, once what is owed is written. */
static void ws_close_all(void)
{
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &W.conns) {
        struct wsconn *c = list_entry(pos, struct wsconn, node);
        if (!c->close_code) {
            c->close_code = LWS_CLOSE_STATUS_GOINGAWAY;
            lws_callback_on_writable(c->wsi);
        }
    }
}

const struct frontend ws_frontend = {"ws", ws_take, ws_stats, ws_fail_all, ws_close_all};

int ws_init(struct lws_context *ctx, const struct config *cfg)
{
    (void)ctx; /* served on wsserver.c's vhost */
    W.cfg = cfg;
    list_init(&W.conns);
    ws_rules.max_pending = cfg->max_pending;
    frontend_register(&ws_frontend);
    return 0;
}
