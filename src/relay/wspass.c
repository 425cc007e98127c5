#include "wspass.h"
#include "access.h"
#include "buf.h"
#include "bulkpath.h"
#include "callrec.h"
#include "dial.h"
#include "frontend.h"
#include "guard.h"
#include "list.h"
#include "log.h"
#include "loop.h"
#include "passthrough.h"
#include "policy.h"
#include "redact.h"
#include "upstream.h"
#include "util.h"
#include "wsserver.h"
#include "wssock.h"
#include <libwebsockets.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

/* RFC 6455 §7.4.1's registry has it; lws 4.1.6's enum does not. */
#define CLOSE_TRY_AGAIN_LATER 1013

/* Bytes queued toward one side before the other side is no longer read. */
#define SIDE_BUF (256 * 1024)
#define RX_CHUNK (64 * 1024)

/* A piece of a message, relayed as one frame (intermediaries may refragment a
 * message, RFC 6455 §5.4; its bytes and its kind are what must survive). */
struct piece {
    struct list node;
    size_t len;
    bool binary, start, end;
    unsigned char data[]; /* LWS_PRE of headroom, then len bytes */
};

/* The gateway's side of a pair; the caller's is a wssock (written at once, read
 * while the gateway side can take more). */
struct side {
    struct lws *wsi;
    struct list queue;   /* pieces to write to this side */
    size_t queued;
    bool in_message;     /* receiving from this side: a message is under way */
    bool paused;         /* not read: the other side cannot take more yet */
    bool closing;        /* close it once its queue is written */
    bool close_sent;     /* our close frame is out: waiting for the peer's (--close-timeout) */
    int close_code;
    char close_reason[124];
};

struct wspass {
    struct wssock sock;  /* first: the local side's socket (wssock.h) */
    struct dial dial;    /* the gateway side's connection */
    struct side local, up;
    enum pass_route route;
    bool up_open, up_gone, local_gone;
    uint64_t bytes_in, bytes_out;
    struct hold preopen; /* bytes of the caller's frames held before the gateway side opened */
    double started;
    const char *who;     /* the caller's name under --policy, or NULL */
    unsigned long long serial;
    char what[64];       /* "import/triples" */
    struct list node;
};

static struct {
    const struct config *cfg;
    struct list all;
    unsigned long long serial;
    lws_retry_bo_t keepalive;
} WP;

static struct side *other(struct wspass *p, struct side *s)
{
    return s == &p->local ? &p->up : &p->local;
}

static void side_clear(struct side *s)
{
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &s->queue) {
        list_del(pos);
        free(list_entry(pos, struct piece, node));
    }
    s->queued = 0;
}

static void preopen_release(struct wspass *p);

static void maybe_free(struct wspass *p)
{
    if (!p->local_gone || !p->up_gone)
        return;
    enum pass_outcome o = p->up_open ? PASS_OK : PASS_FAILED;
    passthrough_slot_give(p->route, o, p->bytes_in, p->bytes_out);
    char route[96];
    snprintf(route, sizeof route, "/api/v1/flow/.../%s", p->what);
    struct call_record r = {
        .frontend = "bulk",
        .caller = p->who,
        .method = "GET",
        .route = route,
        .service = pass_route_name(p->route),
        .status = p->up_open ? 101 : 0,
        .outcome = p->up_open ? CALL_OK : CALL_FAILED,
        .bytes_in = p->bytes_in,
        .bytes_out = p->bytes_out,
        .started = p->started,
    };
    callrec_finish(&r);
    preopen_release(p);
    side_clear(&p->local);
    side_clear(&p->up);
    list_del(&p->node);
    free(p);
}

/* Closes side s with code and reason once what is queued for it is written. */
static void close_side(struct wspass *p, struct side *s, int code, const char *reason)
{
    if (s->closing || (s == &p->local && p->local_gone))
        return;
    s->closing = true;
    s->close_code = code;
    /* A close reason is at most 123 bytes of UTF-8: cut at a character boundary. */
    size_t n = reason ? strlen(reason) : 0;
    if (n >= sizeof s->close_reason) {
        n = sizeof s->close_reason - 1;
        while (n && ((unsigned char)reason[n] & 0xC0) == 0x80)
            n--;
    }
    if (n)
        memcpy(s->close_reason, reason, n);
    s->close_reason[n] = '\0';
    redact_str(s->close_reason, sizeof s->close_reason);
    if (s == &p->local)
        wssock_close(&p->sock, code, s->close_reason); /* after what is queued */
    else if (s->wsi)
        lws_callback_on_writable(s->wsi); /* the gateway side: once open (up_opened) */
}

/* Bytes waiting to be written to side s. */
static size_t queued(struct wspass *p, struct side *s)
{
    return s == &p->local ? p->sock.out.len : s->queued;
}

/* Whether side s is read: while its close answer is awaited, and while the other
 * side can take what it sends -- the gateway side is open (until then a caller's
 * frames, and its close, wait unread: nothing is answered before the gateway is
 * there to hear it) and its queue is below SIDE_BUF (half of it to start again). */
static void side_flow(struct wspass *p, struct side *s)
{
    if (s == &p->local ? p->local_gone : !s->wsi)
        return;
    struct side *to = other(p, s);
    bool ready = to == &p->local || p->up_open || p->up_gone;
    bool want = s->close_sent || (ready && queued(p, to) < (s->paused ? SIDE_BUF / 2 : SIDE_BUF));
    if (want != s->paused)
        return;
    s->paused = !want;
    if (s == &p->local)
        wssock_read(&p->sock, want);
    else
        lws_rx_flow_control(s->wsi, want);
}

/* Frames a caller sends before the gateway socket is open wait unread in its socket
 * (side_flow); should any be read (its close answered, say), they are held for it,
 * within --max-client-buffer (guard.c's reply budget, the caller's one budget for
 * bytes held on its behalf).  True: over it. */
static bool preopen_over_budget(struct wspass *p, size_t more)
{
    if (guard_over_budget(WP.cfg->max_client_buffer, p->up.queued, more, false))
        return true;
    /* And the process-wide budget of requests still being received (--max-assembling). */
    return !guard_hold(&p->preopen, p->preopen.bytes + more);
}

/* The gateway side opened (the held frames flow under SIDE_BUF now) or is gone. */
static void preopen_release(struct wspass *p)
{
    guard_release(&p->preopen);
}

/* Bytes from side `from` (a piece of a message: its kind, and whether it ends it),
 * for the other one. */
static void relay(struct wspass *p, struct side *from, const void *in, size_t len, bool binary, bool end)
{
    struct side *to = other(p, from);
    if (to->closing || (to == &p->local ? p->local_gone : p->up_gone))
        return; /* the other side is closing or gone: nothing more goes to it */
    if (to == &p->up && !p->up_open && preopen_over_budget(p, len)) {
        char why[120];
        snprintf(why, sizeof why, "more than %zu bytes sent before the gateway socket opened",
                 WP.cfg->max_client_buffer);
        side_clear(&p->up); /* nothing of it goes upstream */
        close_side(p, &p->local, LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE, why);
        dial_abort(&p->dial, "%s", why);
        return;
    }
    if (to == &p->local) {
        wssock_send_piece(&p->sock, binary, !from->in_message, end, in, len);
        from->in_message = !end;
        p->bytes_out += len;
        side_flow(p, from);
        return;
    }
    struct piece *pc = malloc(sizeof *pc + LWS_PRE + len);
    if (!pc)
        abort();
    pc->len = len;
    pc->start = !from->in_message;
    pc->end = end;
    pc->binary = binary;
    from->in_message = !pc->end;
    if (len)
        memcpy(pc->data + LWS_PRE, in, len);
    list_add_tail(&to->queue, &pc->node);
    to->queued += len;
    p->bytes_in += len;
    side_flow(p, from);
    if (to->wsi && p->up_open)
        lws_callback_on_writable(to->wsi);
}

/* Our close frame to the gateway: its answer is awaited -- it ends the connection
 * (peer_closed) -- for --close-timeout at most (wsserver_send_close). */
static int send_close(struct wspass *p, struct side *s)
{
    if (wsserver_send_close(s->wsi, s->close_code, s->close_reason, strlen(s->close_reason), WP.cfg->close_timeout))
        return -1;
    s->close_sent = true;
    side_flow(p, s); /* its answer must be read */
    return 0;
}

/* One piece per WRITEABLE, then the close once the queue is empty. */
static int write_side(struct wspass *p, struct side *s)
{
    if (!list_empty(&s->queue)) {
        struct piece *pc = list_entry(s->queue.next, struct piece, node);
        int flags = lws_write_ws_flags(pc->binary ? LWS_WRITE_BINARY : LWS_WRITE_TEXT, pc->start, pc->end);
        if (lws_write(s->wsi, pc->data + LWS_PRE, pc->len, (enum lws_write_protocol)flags) < (int)pc->len)
            return -1;
        list_del(&pc->node);
        s->queued -= pc->len;
        free(pc);
        side_flow(p, other(p, s));
        if (!list_empty(&s->queue) || s->closing)
            lws_callback_on_writable(s->wsi);
        return 0;
    }
    if (s->closing && !s->close_sent)
        return send_close(p, s);
    return 0;
}

/* A close one side started (code 1005: none), relayed to the other; the side that
 * sent it is answered at once (lws for the gateway's, wssock for the caller's). */
static void relay_close(struct wspass *p, struct side *s, int code, const char *in, size_t n)
{
    char reason[124];
    if (n >= sizeof reason)
        n = sizeof reason - 1;
    if (n)
        memcpy(reason, in, n);
    reason[n] = '\0';
    /* 1005/1006/1015 must never be sent in a close frame (RFC 6455 §7.4.1). */
    if (code == 1005 || code == 1006 || code == 1015 || code < 1000)
        code = LWS_CLOSE_STATUS_NORMAL;
    close_side(p, other(p, s), code, reason);
}

/* The gateway's close frame: code (network order) and reason.  The answer to ours
 * ends the connection (nonzero: lws drops it without a second close frame). */
static int peer_closed(struct wspass *p, struct side *s, const unsigned char *in, size_t len)
{
    if (s->close_sent)
        return -1;
    relay_close(p, s, len >= 2 ? (in[0] << 8 | in[1]) : 1005, (const char *)in + 2 * (len >= 2),
                len > 2 ? len - 2 : 0);
    return 0;
}

/* ---- the local side ----------------------------------------------------------------- */

static void local_data(struct wssock *k, const struct wsread_event *ev)
{
    struct wspass *p = (struct wspass *)k;
    relay(p, &p->local, ev->p, ev->n, !ev->text, ev->last);
}

/* The caller's close -- the answer to ours, or relayed to the gateway -- or (code 0)
 * its protocol error: the gateway gets 1001 after what it was sent before. */
static void local_ending(struct wssock *k, int code, const char *reason, size_t n)
{
    struct wspass *p = (struct wspass *)k;
    if (!code)
        close_side(p, &p->up, LWS_CLOSE_STATUS_GOINGAWAY, "the local client broke the WebSocket protocol");
    else if (!p->local.closing)
        relay_close(p, &p->local, code, reason, n);
}

static void local_drained(struct wssock *k)
{
    struct wspass *p = (struct wspass *)k;
    side_flow(p, &p->up);
}

static void local_gone(struct wssock *k)
{
    struct wspass *p = (struct wspass *)k;
    p->local_gone = true;
    side_clear(&p->local);
    if (!p->up_gone) {
        /* What it sent before its close still goes to the gateway, then the close. */
        close_side(p, &p->up, LWS_CLOSE_STATUS_GOINGAWAY, "the local client went away");
        if (p->up_open) {
            side_flow(p, &p->up);
        } else if (list_empty(&p->up.queue) && p->up.close_code == LWS_CLOSE_STATUS_GOINGAWAY) {
            dial_abort(&p->dial, "the local client went away");
            return; /* p may be gone */
        }
    }
    maybe_free(p);
}

static const struct wssock_ops local_ops = {local_data, local_ending, local_drained, local_gone};

/* ---- the gateway side --------------------------------------------------------------- */

static void up_opened(struct dial *d)
{
    struct wspass *p = timer_owner(d, struct wspass, dial);
    p->up_open = true;
    p->up.wsi = d->wsi;
    dial_settled(d);
    log_debug("pass-through socket %s #%llu open", p->what, p->serial);
    preopen_release(p);
    side_flow(p, &p->local);
    side_flow(p, &p->up);
    if (!list_empty(&p->up.queue) || p->up.closing)
        lws_callback_on_writable(d->wsi);
}

static void up_gone(struct dial *d)
{
    struct wspass *p = timer_owner(d, struct wspass, dial);
    p->up_gone = true;
    p->up.wsi = NULL;
    side_clear(&p->up);
    if (!p->local_gone) {
        if (!p->up_open) {
            /* The gateway refused or was not reached: the local client hears why. */
            int code = d->http_status == 401 || d->http_status == 403 ? LWS_CLOSE_STATUS_POLICY_VIOLATION
                     : d->http_status == 503 || !d->http_status   ? CLOSE_TRY_AGAIN_LATER
                                                                  : LWS_CLOSE_STATUS_UNEXPECTED_CONDITION;
            close_side(p, &p->local, code, d->reason);
        } else {
            close_side(p, &p->local, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, "the gateway connection closed");
        }
        side_flow(p, &p->local);
    }
    preopen_release(p);
    maybe_free(p);
}

static const struct dial_ops up_ops = {up_opened, up_gone, NULL};

static int up_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
    struct dial *d = lws_get_opaque_user_data(wsi);
    if (!d)
        return 0;
    struct wspass *p = timer_owner(d, struct wspass, dial);
    if (dial_event(d, wsi, (int)reason, user, in, len))
        return 0;
    switch (reason) {
    case LWS_CALLBACK_CLIENT_RECEIVE:
        relay(p, &p->up, in, len, lws_frame_is_binary(wsi), lws_is_final_fragment(wsi) &&
              !lws_remaining_packet_payload(wsi));
        return 0;
    case LWS_CALLBACK_CLIENT_WRITEABLE:
        return write_side(p, &p->up);
    case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
        return peer_closed(p, &p->up, in, len);
    default:
        return 0;
    }
}

static const struct lws_protocols wspass_upstream_protocol = {"tgb-wspass-up", up_callback, 0, RX_CHUNK, 0, NULL,
                                                              0};

void wspass_register_protocol(void)
{
    loop_add_protocol(&wspass_upstream_protocol);
}

/* ---- taking a connection ------------------------------------------------------------- */

bool wspass_route(const struct http_head *h)
{
    char what[64];
    return span_is(h->method, "GET") && bulk_route(h->path, what, sizeof what) != BULK_NONE;
}

/* The gateway's target: the caller's path and query, its ?token= replaced by the
 * caller's gateway identity under --policy (its upstream_token_file's key, or a
 * forward caller's own: its Bearer, else its ?token= as the gateway reads it -- issue
 * 17), else tgbridge's credential (ref section 3.2: these sockets still authenticate
 * by ?token=, and refuse an empty one even without auth, so a placeholder stands in
 * for none), and --workspace when the caller names none. */
static bool build_target(const struct http_head *h, const char *caller, const char *workspace, char *out,
                         size_t cap)
{
    const char *t = WP.cfg->token && *WP.cfg->token ? WP.cfg->token : "tg_anonymous";
    char shown[4096], key[4096];
    struct span qt = {NULL, 0};
    (void)http_query_param(h->query, "token", &qt);
    size_t n = policy_upgrade_credential(h->authorization.p, h->authorization.n, qt.p, qt.n, shown, sizeof shown);
    struct gateway_key gk;
    bool ok = true;
    if (policy_gateway_key(caller, shown, n, &gk)) {
        ok = gk.len < sizeof key;
        snprintf(key, sizeof key, "%.*s", ok ? (int)gk.len : 0, gk.key);
        t = key;
    }
    ok = ok && bulk_target(WP.cfg->gw.base_path, h->path, h->query, t, workspace, out, cap);
    explicit_bzero(shown, sizeof shown);
    explicit_bzero(key, sizeof key);
    return ok;
}

/* The per-caller policy: the route, and the workspace the caller names (as sent) or is
 * pinned to (then the one used when it names none). */
static bool policy_refused(const struct http_head *h, enum bulk_dir dir, const struct admission *v,
                           const char **workspace, struct refusal *no)
{
    char ws[256] = "";
    struct span q;
    if (http_query_param(h->query, "workspace", &q) && q.p)
        snprintf(ws, sizeof ws, "%.*s", (int)(q.n < sizeof ws ? q.n : sizeof ws - 1), q.p);
    struct policy_call pc = {.route = dir == BULK_IMPORT ? "flow-import" : "flow-export", .workspace = ws};
    return !policy_check_call(v->caller.name, &pc, workspace, no);
}

/* The local side: upgraded at once, and not read until the gateway side is open. */
static bool adopt_local(struct wspass *p, int fd, const struct http_head *h, bool unix_peer)
{
    if (!unix_peer) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    p->sock.serial = p->serial;
    p->sock.what = "local bulk socket";
    p->local.paused = true;
    if (!wssock_start(&p->sock, fd, h, &local_ops, false)) { /* fd is closed */
        log_warn("cannot serve a local bulk socket");
        p->local_gone = p->up_gone = true;
        explicit_bzero(p->dial.path, sizeof p->dial.path);
        maybe_free(p);
        return false;
    }
    return true;
}

static bool wspass_take(int fd, const struct handover *in, struct refusal *no)
{
    const struct http_head *h = in->head;
    bool unix_peer = in->peer->unix_socket;
    char what[64];
    enum bulk_dir dir = bulk_route(h->path, what, sizeof what);
    struct admission v;
    access_admit_head(h, in->peer, ADMIT_UPGRADE, &v);
    const char *workspace = WP.cfg->workspace;
    if (!v.admitted || policy_refused(h, dir, &v, &workspace, &v.refusal) || wssock_refused(h, &v.refusal)) {
        *no = v.refusal;
        return false;
    }
    struct wspass *p = calloc(1, sizeof *p);
    if (!p)
        abort();
    if (!build_target(h, v.caller.name, workspace, p->dial.path, sizeof p->dial.path)) {
        free(p);
        no->status = 414;
        no->type = "uri-too-long";
        snprintf(no->message, sizeof no->message, "the request target is too long");
        return false;
    }
    if (!passthrough_slot_take()) {
        explicit_bzero(p->dial.path, sizeof p->dial.path);
        free(p);
        no->status = 503;
        no->type = "too-many-calls";
        snprintf(no->message, sizeof no->message, "%zu pass-through calls are running already (--max-passthrough)",
                 WP.cfg->max_passthrough);
        return false;
    }
    p->route = dir == BULK_IMPORT ? PASS_IMPORT_SOCKET : PASS_EXPORT_SOCKET;
    p->who = v.caller.name;
    snprintf(p->what, sizeof p->what, "%s", what);
    p->serial = ++WP.serial;
    p->started = now_mono();
    list_init(&p->local.queue);
    list_init(&p->up.queue);
    list_add_tail(&WP.all, &p->node);
    if (!adopt_local(p, fd, h, unix_peer))
        return true; /* lws closed fd */
    p->dial.ops = &up_ops;
    p->dial.local_protocol = wspass_upstream_protocol.name;
    p->dial.retry = &WP.keepalive;
    if (!upstream_gateway_known()) { /* none found yet: the upstream's reason says why */
        p->up_gone = true;
        close_side(p, &p->local, CLOSE_TRY_AGAIN_LATER, upstream_reason());
    } else if (dial_start(&p->dial)) {
        p->up_gone = true;
        close_side(p, &p->local, CLOSE_TRY_AGAIN_LATER, p->dial.reason);
    }
    log_debug("pass-through socket %s #%llu (%s)", what, p->serial, unix_peer ? "Unix socket" : "TCP");
    return true;
}

/* ---- the front end ------------------------------------------------------------------ */

static void bulk_stats(struct frontend_stats *out)
{
    for (struct list *pos = WP.all.next; pos != &WP.all; pos = pos->next) {
        const struct wspass *p = list_entry(pos, struct wspass, node);
        out->connections++;
        out->active++;
        out->unsent += p->sock.out.len;
    }
}

static void bulk_fail_all(const char *type, const char *message)
{
    (void)type;
    (void)message; /* a stream of frames has no final answer to give: close_all ends it */
}

/* After the drain: both sides of every pair closed with 1001. */
static void bulk_close_all(void)
{
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &WP.all) {
        struct wspass *p = list_entry(pos, struct wspass, node);
        close_side(p, &p->local, LWS_CLOSE_STATUS_GOINGAWAY, "tgbridge is shutting down");
        if (p->up_open)
            close_side(p, &p->up, LWS_CLOSE_STATUS_GOINGAWAY, "tgbridge is shutting down");
        else if (!p->up_gone)
            dial_abort(&p->dial, "tgbridge is shutting down");
    }
}

const struct frontend wspass_frontend = {"bulk", wspass_take, bulk_stats, bulk_fail_all, bulk_close_all};

int wspass_init(struct lws_context *ctx, const struct config *cfg)
{
    frontend_register(&wspass_frontend);
    (void)ctx; /* the local sides are raw descriptors (wssock.c) */
    WP.cfg = cfg;
    list_init(&WP.all);
    /* Pinged after --ping-interval of silence, dropped after --ping-timeout more, as
     * the main socket is. */
    WP.keepalive.secs_since_valid_ping = (uint16_t)(cfg->ping_interval < 1 ? 1 : cfg->ping_interval > 65000 ? 65000
                                                    : cfg->ping_interval + 0.999);
    WP.keepalive.secs_since_valid_hangup =
        (uint16_t)(WP.keepalive.secs_since_valid_ping +
                   (cfg->ping_timeout < 1 ? 1 : cfg->ping_timeout > 65000 ? 65000 : cfg->ping_timeout + 0.999));
    return 0;
}
