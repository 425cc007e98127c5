#include "ws.h"
#include "buf.h"
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
#include "wssock.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

/* Close codes (RFC 6455 §7.4.1; 1013 "Try Again Later" from the IANA registry). */
#define WS_CLOSE_GOING_AWAY 1001
#define WS_CLOSE_POLICY_VIOLATION 1008
#define WS_CLOSE_TRY_AGAIN_LATER 1013
/* Of a message over --max-body, this much is kept to find its id for the error. */
#define ID_PREFIX (16 * 1024)

/* One local WebSocket client: its socket and framing (wssock.c), and its session. */
struct wsconn {
    struct wssock sock;
    struct session session;
    struct caller_id caller; /* as admitted at the upgrade; an auth frame may unlock it */
    unsigned long long serial;
    struct buf in;           /* the message being received */
    bool oversize;           /* the message being received is over --max-body */
    bool receiving;          /* a message has begun and is not complete */
    struct guard deadline;   /* ... and must be complete by then (GUARD_BODY) */
    struct hold hold;        /* its bytes, against --max-assembling */
    bool closing;            /* our close is queued: nothing more is sent or read */
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
    if (c->closing)
        return;
    if (why)
        log_warn("closing local WebSocket client #%llu: %s", c->serial, why);
    c->closing = true;
    message_end(c);
    c->in.len = 0;
    buf_free(&c->in);
    session_close(&c->session);
    /* What it was sent before goes out whole, then the close frame; a client that
     * never reads is cut off all the same after --close-timeout (wssock.c). */
    wssock_close(&c->sock, code, reason);
}

/* One message to the client.  What waits for a client that does not read is bounded
 * (--max-client-buffer): past it the client is closed with 1008, never allowed to
 * grow our memory or slow the shared socket.  A single message larger than the bound
 * still goes to a client that reads. */
static void session_send(struct session *s, const char *msg, size_t len)
{
    struct wsconn *c = s->owner;
    if (c->closing)
        return;
    if (guard_reply_queued(c->sock.out.len, len, false)) {
        char why[160];
        snprintf(why, sizeof why, "it reads too slowly (%zu bytes of replies waiting, --max-client-buffer %zu)",
                 c->sock.out.len + len, W.cfg->max_client_buffer);
        conn_drop(c, WS_CLOSE_POLICY_VIOLATION, why, NULL);
        return;
    }
    wssock_send(&c->sock, msg, len);
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
    conn_drop(c, WS_CLOSE_POLICY_VIOLATION, why, "message not complete within --client-timeout");
}

/* A message arrives in pieces (wsread.c hands out what each read brought); text and
 * binary alike, as the gateway takes both (ref Q30). */
static void on_data(struct wssock *s, const struct wsread_event *ev)
{
    struct wsconn *c = (struct wsconn *)s;
    const char *in = ev->p;
    size_t len = ev->n;
    if (c->closing)
        return;
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
    if (ev->last) {
        message_end(c);
        message_done(c);
    }
}

/* ---- connections ------------------------------------------------------------------- */

/* The client closed, or broke the protocol: its requests are freed like a REST
 * hang-up's. */
static void on_ending(struct wssock *s, int code, const char *reason, size_t n)
{
    (void)code;
    (void)reason;
    (void)n;
    struct wsconn *c = (struct wsconn *)s;
    c->closing = true;
    message_end(c);
    session_close(&c->session);
}

static void conn_free(struct wsconn *c)
{
    message_end(c);
    session_close(&c->session);
    list_del(&c->node);
    W.nconns--;
    buf_free(&c->in);
    free(c);
}

static void on_gone(struct wssock *s)
{
    struct wsconn *c = (struct wsconn *)s;
    log_debug("local WebSocket client #%llu gone", c->serial);
    conn_free(c);
}

static const struct wssock_ops ws_sock_ops = {on_data, on_ending, NULL, on_gone};

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
    if (wssock_refused(in->head, no))
        return false;
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
    c->serial = c->sock.serial = ++W.serial;
    c->sock.what = "local WebSocket client";
    buf_init(&c->in, 0);
    session_init(&c->session, &ws_rules, &ws_session_ops, W.cfg, c);
    c->caller = v.caller;
    c->session.who = v.caller.name;
    presented_credential(&c->session, in->head);
    c->session.locked = v.caller.token == TOKEN_ABSENT;
    list_add_tail(&W.conns, &c->node);
    W.nconns++;
    if (!wssock_start(&c->sock, fd, in->head, &ws_sock_ops, true)) { /* fd is closed */
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
        out->unsent += c->sock.out.len;
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
        if (!c->closing) {
            c->closing = true;
            wssock_close(&c->sock, WS_CLOSE_GOING_AWAY, NULL);
        }
    }
}

const struct frontend ws_frontend = {"ws", ws_take, ws_stats, ws_fail_all, ws_close_all};

int ws_init(struct lws_context *ctx, const struct config *cfg)
{
    (void)ctx; /* served on the loop's default vhost, as raw descriptors (wssock.c) */
    W.cfg = cfg;
    wssock_init(cfg);
    list_init(&W.conns);
    ws_rules.max_pending = cfg->max_pending;
    frontend_register(&ws_frontend);
    return 0;
}
