#include "upstream.h"
#include "buf.h"
#include "dial.h"
#include "envelope.h"
#include "log.h"
#include "loop.h"
#include "mux.h"
#include "redact.h"
#include "util.h"
#include "wsframe.h"
#include <libwebsockets.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

/* Fragment size for large envelopes: big enough to be cheap, small enough that the
 * kernel nearly always takes it whole and pings can interleave (libraries.md b6). */
#define WRITE_CHUNK (64 * 1024)
/* Envelopes up to this size are framed by us and sent in bursts, one send each burst
 * (wsframe.h); a burst stays within what lws_issue_raw sends in one go for this
 * protocol (its rx_buffer_size), so nothing of it is copied into lws's buflist unless
 * the kernel itself is full.  Larger envelopes go alone, fragmented by lws. */
#define BURST_MAX_ENVELOPE (16 * 1024)
#define BURST_MAX_BYTES (60 * 1024)
#define BURST_MAX_COUNT 64
/* Replies have no size limit at the gateway (ref §2.4); cap what one frame may cost us. */
#define MAX_REPLY_FRAME (512u * 1024 * 1024)

/* One WebSocket to the gateway.  Normally there is one, `cur`.  A rotation is
 * make-before-break: the replacement connects and authenticates as `next` while
 * `cur` keeps serving; once `next` is ready it becomes `cur` and the previous one
 * drains as `old`, receiving replies for its live requests but sending nothing new. */
struct upconn {
    struct dial dial;        /* the connection itself: wsi, phase, deadline, reason */
    unsigned serial;
    enum upstream_state state; /* UP_AUTHENTICATING / UP_READY once open; before that the dial's phase */
    bool draining;
    bool auth_refused;       /* failed on credentials: the backoff stays at its longest */
    bool auth_frame_due;     /* an auth frame (first or refresh) still has to be written */
    bool reauthenticating;   /* a refresh frame was sent, its reply not yet seen */
    struct window win;       /* this socket's share of the gateway's window */
    struct request *sending; /* an envelope partly written */
    struct buf burst;        /* frames of small envelopes, written with one send */
    struct buf rx;
    bool rx_overflow;
    double last_heard;       /* for telling a dead peer from a closed one */
    struct timer reauth_timer; /* an in-band refresh unanswered */
    struct timer resume_rx;    /* reading paused so that a first part goes out first */
};

static struct {
    struct lws_context *ctx;
    struct config *cfg;
    struct upconn *cur, *next, *old;
    char rotate_pending[160]; /* a rotation asked for while another was under way */
    char reason[512];
    char era[48];
    char default_ws[256];
    char reauth_status[160];
    bool auth_rejected;      /* the last connection failed on credentials */
    bool stopping;
    struct timer retry_timer, drain_timer, rotate_timer, rotate_retry_timer;
    uint16_t retry_count;
    unsigned reconnects, rotations, serial;
    bool ever_connected;
    lws_retry_bo_t retry;
    uint32_t retry_table[16];
    char last_logged_reason[512];
    upstream_change_fn on_change;
} U;

/* Records why connection c is failing (the first reason given wins); it becomes the
 * upstream's reason when c goes, unless c was a rotation's replacement and the
 * current connection still serves. */
static void conn_reason(struct upconn *c, bool auth, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void conn_reason(struct upconn *c, bool auth, const char *fmt, ...)
{
    char why[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    dial_reason(&c->dial, "%s", why);
    c->auth_refused = c->auth_refused || auth;
}

static enum upstream_state conn_state(const struct upconn *c)
{
    if (c->state >= UP_AUTHENTICATING)
        return c->state;
    return c->dial.phase == DIAL_RESOLVING ? UP_RESOLVING : c->dial.phase == DIAL_IDLE ? UP_DOWN : UP_CONNECTING;
}

bool upstream_ready(void) { return U.cur && U.cur->state == UP_READY; }
enum upstream_state upstream_state(void) { return U.cur ? conn_state(U.cur) : UP_DOWN; }
const char *upstream_reason(void) { return upstream_ready() ? "" : U.reason; }
const char *upstream_era(void) { return U.era; }
const char *upstream_default_workspace(void) { return U.default_ws; }
unsigned upstream_reconnects(void) { return U.reconnects; }
unsigned upstream_rotations(void) { return U.rotations; }
const char *upstream_reauth_status(void) { return U.reauth_status; }
size_t upstream_window_used(void) { return U.cur ? U.cur->win.n : 0; }
bool upstream_draining(void) { return U.old != NULL; }

static const char *token(void)
{
    return U.cfg->token ? U.cfg->token : "";
}

static bool sends_auth_frame(void)
{
    return U.cfg->auth == AUTH_AUTO || U.cfg->auth == AUTH_FIRST_FRAME;
}

static void build_retry_policy(void)
{
    /* Exponential from --reconnect-min to --reconnect-max; lws adds 0–30 % jitter. */
    double d = U.cfg->reconnect_min > 0 ? U.cfg->reconnect_min : 0.05;
    uint16_t n = 0;
    while (n < 16) {
        double ms = d * 1000.0;
        if (d >= U.cfg->reconnect_max)
            ms = U.cfg->reconnect_max * 1000.0;
        U.retry_table[n++] = ms < 1 ? 1 : (uint32_t)ms;
        if (d >= U.cfg->reconnect_max)
            break;
        d *= 2;
    }
    U.retry.retry_ms_table = U.retry_table;
    U.retry.retry_ms_table_count = n;
    U.retry.conceal_count = LWS_RETRY_CONCEAL_ALWAYS;
    /* lws counts whole seconds; round up so a 0.5 s setting still pings. */
    double ping = U.cfg->ping_interval < 1 ? 1 : U.cfg->ping_interval;
    double hang = ping + (U.cfg->ping_timeout < 1 ? 1 : U.cfg->ping_timeout);
    U.retry.secs_since_valid_ping = (uint16_t)(ping > 65000 ? 65000 : ping + 0.999);
    U.retry.secs_since_valid_hangup = (uint16_t)(hang > 65000 ? 65000 : hang + 0.999);
    U.retry.jitter_percent = 30;
}

static void connect_now(struct timer *t);

static void schedule_reconnect(void)
{
    if (U.stopping || U.cur)
        return;
    if (U.auth_rejected) {
        /* Hammering a gateway that refuses the token helps nobody: the backoff resets
         * only after a successful authentication. */
        timer_after(&U.retry_timer, U.cfg->reconnect_max, connect_now);
        return;
    }
    char conceal;
    unsigned ms = lws_retry_get_delay_ms(U.ctx, &U.retry, &U.retry_count, &conceal);
    timer_after(&U.retry_timer, ms / 1000.0, connect_now);
}

void upstream_on_change(upstream_change_fn fn) { U.on_change = fn; }

/* Logs a state change once, not once per retry. */
static void log_down(void)
{
    if (strcmp(U.last_logged_reason, U.reason)) {
        log_warn("upstream not ready: %s (retrying with backoff)", U.reason);
        snprintf(U.last_logged_reason, sizeof U.last_logged_reason, "%s", U.reason);
        if (U.on_change)
            U.on_change(false, U.reason);
    } else {
        log_debug("upstream still not ready: %s", U.reason);
    }
}

static void check_old(void);
static void drain_expired(struct timer *t);

static void retry_rotation(struct timer *t);

/* Why a connection that failed on the way up or was lost says so, in the upstream's
 * words (dial.c words it for every connection alike). */
static void word_reason(struct upconn *c)
{
    struct dial *d = &c->dial;
    int st = d->http_status;
    if (st == 401 || st == 403) {
        snprintf(d->reason, sizeof d->reason, "the gateway refused the WebSocket upgrade with HTTP %d (wrong or "
                 "missing token for a V1 gateway)", st);
        c->auth_refused = true;
    }
}

/* dial.c's gone: the connection failed or closed; nothing of it is left in lws. */
static void conn_gone(struct dial *d)
{
    struct upconn *c = timer_owner(d, struct upconn, dial);
    word_reason(c);
    bool counts = c == U.cur || (c == U.next && !U.cur);
    if (counts && !U.stopping) {
        snprintf(U.reason, sizeof U.reason, "%s", c->dial.reason);
        U.auth_rejected = c->auth_refused;
    }
    const char *why = U.stopping ? "tgbridge is shutting down"
                      : c->draining ? "the rotated-out gateway connection closed" : c->dial.reason;
    mux_upstream_lost(&c->win, why);
    timer_cancel(&c->reauth_timer);
    timer_cancel(&c->resume_rx);
    buf_free(&c->rx);
    buf_free(&c->burst);
    bool was_cur = c == U.cur, was_next = c == U.next;
    if (c == U.old) {
        U.old = NULL;
        timer_cancel(&U.drain_timer);
        log_info("rotated-out connection #%u closed", c->serial);
        if (U.rotate_pending[0] && !U.stopping)
            timer_after(&U.rotate_retry_timer, 0, retry_rotation);
    } else if (was_next) {
        /* Make-before-break: the current connection keeps serving -- if there still
         * is one; if it was lost meanwhile, this was the only way back up. */
        U.next = NULL;
        if (!U.stopping && U.cur) {
            log_warn("rotation failed, keeping connection #%u: %s", U.cur ? U.cur->serial : 0, c->dial.reason);
            if (!U.rotate_pending[0])
                snprintf(U.rotate_pending, sizeof U.rotate_pending, "retrying a failed rotation");
            timer_after(&U.rotate_retry_timer, U.cfg->reconnect_max, retry_rotation);
        }
    } else if (was_cur) {
        U.cur = NULL;
    }
    free(c);
    if (U.stopping || !(was_cur || was_next) || U.cur)
        return;
    if (U.next) {
        /* The replacement is already on its way: it becomes current when ready. */
        log_warn("upstream connection lost (%s); its replacement is being set up", U.reason);
        return;
    }
    /* Nothing serves and nothing is on its way: a fresh connection replaces both,
     * and whatever a rotation was wanted for is moot on it. */
    U.rotate_pending[0] = '\0';
    timer_cancel(&U.rotate_retry_timer);
    log_down();
    schedule_reconnect();
}

static void rotate_check(struct timer *t);

static void rotation_done(void);

static void became_ready(struct upconn *c, const char *era, const char *workspace)
{
    c->state = UP_READY;
    if (c == U.next) {
        if (U.cur) {
            U.old = U.cur;
            U.old->draining = true;
            timer_after(&U.drain_timer, U.cfg->drain_timeout, drain_expired);
        }
        U.cur = c;
        U.next = NULL;
    }
    U.retry_count = 0;
    U.auth_rejected = false;
    dial_settled(&c->dial);
    bool era_changed = strcmp(U.era, era) != 0;
    snprintf(U.era, sizeof U.era, "%s", era);
    if (workspace)
        snprintf(U.default_ws, sizeof U.default_ws, "%s", workspace);
    U.last_logged_reason[0] = '\0';
    log_info("upstream ready (connection #%u): %s auth=%s era=%s%s%s%s", c->serial, U.cfg->gateway,
             auth_mode_name(U.cfg->auth), U.era, U.default_ws[0] ? " default_workspace=" : "", U.default_ws,
             era_changed ? "" : " (same era as before)");
    if (U.on_change)
        U.on_change(true, U.era);
    check_old();
    upstream_kick();
    rotation_done();
}

/* The first authentication is under the connection's deadline (dial.c); this is the
 * in-band refresh of an open one. */
static void reauth_timed_out(struct timer *t)
{
    struct upconn *c = timer_owner(t, struct upconn, reauth_timer);
    if (c->reauthenticating) {
        c->reauthenticating = false;
        snprintf(U.reauth_status, sizeof U.reauth_status, "no reply to the re-authentication frame");
        log_warn("no reply to the re-authentication frame; rotating the connection instead");
        upstream_rotate("re-authentication unanswered");
    }
}

static struct upconn *start_connection(char *why, size_t whylen);

static void connect_now(struct timer *t)
{
    (void)t;
    if (U.stopping || U.cur || U.next)
        return;
    U.cur = start_connection(U.reason, sizeof U.reason);
    if (!U.cur) {
        log_down();
        schedule_reconnect();
    }
}

static void on_opened(struct dial *d);
static int append_headers(struct dial *d, unsigned char **p, unsigned char *end);
static const struct dial_ops conn_ops = {on_opened, conn_gone, append_headers};

/* Opens a connection through dial.c (re-reading the token file first).  NULL if it
 * could not start, with why. */
static struct upconn *start_connection(char *why, size_t whylen)
{
    char err[256];
    if (config_read_token_file(U.cfg, err, sizeof err)) {
        /* Keep the last token we had; a file mid-rotation must not take us down. */
        log_warn("%s", err);
    }
    struct upconn *c = calloc(1, sizeof *c);
    if (!c)
        abort();
    c->serial = ++U.serial;
    window_init(&c->win);
    buf_init(&c->rx, 0);
    buf_init(&c->burst, LWS_PRE);
    c->dial.ops = &conn_ops;
    c->dial.local_protocol = "tgb-upstream";
    c->dial.retry = &U.retry;
    struct buf path;
    buf_init(&path, 0);
    buf_printf(&path, "%s/api/v1/socket", U.cfg->gw.base_path);
    /* ?token= is how V1 gateways authenticate the socket (ref §3.1); V2 ignores it.
     * Percent-encoded, because the gateway URL-decodes it (ref Q20). */
    if ((U.cfg->auth == AUTH_QUERY || U.cfg->auth == AUTH_AUTO) && token()[0]) {
        char *enc = url_encode(token());
        buf_printf(&path, "?token=%s", enc ? enc : "");
        free(enc);
    }
    bool too_long = path.len >= sizeof c->dial.path;
    if (!too_long)
        memcpy(c->dial.path, buf_ptr(&path), path.len + 1);
    explicit_bzero(path.data, path.cap);
    buf_free(&path);
    if (too_long || dial_start(&c->dial)) {
        snprintf(why, whylen, "%s", too_long ? "gateway path plus token is too long" : c->dial.reason);
        explicit_bzero(c->dial.path, sizeof c->dial.path);
        buf_free(&c->burst);
        free(c);
        return NULL;
    }
    log_debug("connection #%u: %s %s", c->serial, dial_phase_name(&c->dial),
              U.cfg->via_proxy ? U.cfg->via_proxy->host : U.cfg->gw.host);
    return c;
}

/* Rotation: abandoned requests (timed out, caller gone) still count in the gateway's
 * window until the gateway's own timeout — only a new socket frees it (issue 5). */
static void rotate_check(struct timer *t)
{
    (void)t;
    if (!U.old && !U.next && upstream_ready() && mux_window_blocked_by_abandoned(&U.cur->win))
        upstream_rotate("requests nobody waits for any more hold the gateway's window");
}

void upstream_kick(void)
{
    struct upconn *c = U.cur;
    if (!c || c->state != UP_READY || !c->dial.wsi)
        return;
    if (c->sending || mux_has_sendable(&c->win) || c->auth_frame_due)
        lws_callback_on_writable(c->dial.wsi);
    else if (!U.old && !U.next && !mux_queue_empty())
        timer_after(&U.rotate_timer, 0, rotate_check);
}

static void drain_expired(struct timer *t)
{
    (void)t;
    struct upconn *o = U.old;
    if (!o)
        return;
    char msg[200];
    snprintf(msg, sizeof msg, "the gateway connection was rotated and the request did not finish within "
                              "--drain-timeout (%.3g s)", U.cfg->drain_timeout);
    mux_fail_window(&o->win, 502, "upstream-disconnected", msg);
    dial_close(&o->dial);
}

/* The old socket closes once the new one is ready and nobody waits on the old one. */
static void check_old(void)
{
    struct upconn *o = U.old;
    if (!o || o->dial.closing)
        return;
    if (upstream_ready() && mux_window_live(&o->win) == 0) {
        log_info("closing rotated-out connection #%u (nothing left to wait for)", o->serial);
        dial_close(&o->dial);
    }
}

void upstream_rotate(const char *why)
{
    if (U.stopping)
        return;
    if (!U.cur || U.cur->state != UP_READY) {
        /* Nothing established to replace: the next connection attempt picks the new
         * settings up anyway. */
        return;
    }
    if (U.next || U.old) {
        /* One rotation at a time; this one runs when the current one is done. */
        snprintf(U.rotate_pending, sizeof U.rotate_pending, "%s", why);
        return;
    }
    U.rotate_pending[0] = '\0';
    timer_cancel(&U.rotate_retry_timer);
    U.rotations++;
    log_info("rotating the gateway connection (make-before-break): %s", why);
    char why_not[512];
    U.next = start_connection(why_not, sizeof why_not);
    if (!U.next) {
        log_warn("rotation failed, keeping connection #%u: %s", U.cur->serial, why_not);
        snprintf(U.rotate_pending, sizeof U.rotate_pending, "retrying a failed rotation");
        timer_after(&U.rotate_retry_timer, U.cfg->reconnect_max, retry_rotation);
    }
}

static void retry_rotation(struct timer *t)
{
    (void)t;
    rotation_done();
}

/* Runs a rotation that was asked for while another was under way. */
static void rotation_done(void)
{
    if (U.rotate_pending[0] && !U.next && !U.old) {
        char why[160];
        snprintf(why, sizeof why, "%s", U.rotate_pending);
        U.rotate_pending[0] = '\0';
        upstream_rotate(why);
    }
}

static void on_opened(struct dial *d)
{
    struct upconn *c = timer_owner(d, struct upconn, dial);
    c->last_heard = now_mono();
    if (U.ever_connected && c != U.next)
        U.reconnects++; /* a rotation is not a reconnect */
    U.ever_connected = true;
    if (!sends_auth_frame()) {
        became_ready(c, U.cfg->auth == AUTH_QUERY ? "not probed (--auth query)" : "not probed (--auth header)",
                     NULL);
        return;
    }
    c->state = UP_AUTHENTICATING;
    c->auth_frame_due = true;
    d->awaiting = "reply to the authentication frame"; /* still under the attempt's deadline */
    lws_callback_on_writable(d->wsi);
}

/* Reference §1.1: the reply to the auth frame tells the era. */
static int on_auth_reply(struct upconn *c, const struct frame *f)
{
    switch (f->kind) {
    case FRAME_AUTH_OK:
        became_ready(c, f->auth_new_field ? "v2c/v2d" : "v2a/v2b", f->workspace);
        return 0;
    case FRAME_AUTH_FAILED:
        conn_reason(c, true, "the gateway rejected the token (auth-failed: %s)", f->err_message);
        return -1;
    case FRAME_ORPHAN_ERROR:
        /* A V1 gateway does not know in-band auth: it answers "Bad message". Having
         * got this far, the handshake (and any ?token=) was accepted. */
        if (U.cfg->auth == AUTH_FIRST_FRAME)
            log_warn("gateway does not understand first-frame auth (a V1 gateway); "
                     "it accepted the connection without a token");
        became_ready(c, f->error_is_string ? "v1a" : "v1b/v1c", NULL);
        return 0;
    default:
        log_debug("ignoring frame before authentication");
        return 0;
    }
}

/* Reply to an in-band refresh (ref §3.2): failure keeps the previous identity. */
static void on_reauth_reply(struct upconn *c, const struct frame *f)
{
    if (!c->reauthenticating) {
        log_debug("unexpected %s", f->kind == FRAME_AUTH_OK ? "auth-ok" : "auth-failed");
        return;
    }
    c->reauthenticating = false;
    timer_cancel(&c->reauth_timer);
    if (f->kind == FRAME_AUTH_OK) {
        if (f->workspace[0])
            snprintf(U.default_ws, sizeof U.default_ws, "%s", f->workspace);
        snprintf(U.reauth_status, sizeof U.reauth_status, "ok");
        log_info("re-authenticated in-band with the new token (auth-ok)");
    } else {
        snprintf(U.reauth_status, sizeof U.reauth_status, "rejected: %s", f->err_message);
        log_error("the gateway rejected the new token (auth-failed: %s); the open connection keeps its "
                  "previous identity, and the next connection will use the new token",
                  f->err_message);
    }
}

static int on_message(struct upconn *c, const char *text, size_t len)
{
    struct frame f;
    frame_parse(text, len, &f);
    if (f.err_message[0] && secret_count()) {
        /* Error texts become tgbridge's own words (reasons, error bodies and lines):
         * a gateway quoting the token in one must not pass it on. */
        char *clean = redact_dup(f.err_message, strlen(f.err_message));
        frame_free(&f);
        f.err_message = clean;
    }
    int rc = 0;
    if (f.kind == FRAME_INVALID) {
        static struct log_limit limit;
        unsigned long held;
        if (log_limit_ok(&limit, 10, &held))
            log_warn("dropped a gateway frame that is not valid JSON, not UTF-8 or not an object (%zu bytes%s%s)%s",
                     len, f.has_id ? ", for " : "", f.has_id ? f.id : "",
                     held ? "; more since the last report, see tgbridge_gateway_bad_frames_total" : "");
        if (c->state == UP_READY)
            mux_on_frame(&f, &c->win);
    } else if (c->state == UP_AUTHENTICATING) {
        rc = on_auth_reply(c, &f);
    } else if (f.kind == FRAME_AUTH_OK || f.kind == FRAME_AUTH_FAILED) {
        on_reauth_reply(c, &f);
    } else {
        mux_on_frame(&f, &c->win);
        if (c->draining)
            check_old();
    }
    frame_free(&f);
    return rc;
}

static void resume_reading(struct timer *t)
{
    struct upconn *c = timer_owner(t, struct upconn, resume_rx);
    if (c->dial.wsi)
        lws_rx_flow_control(c->dial.wsi, 1);
}

static int on_receive(struct upconn *c, const char *in, size_t len)
{
    lws_validity_confirmed(c->dial.wsi);
    c->last_heard = now_mono();
    if (!c->rx_overflow) {
        if (c->rx.len + len > MAX_REPLY_FRAME) {
            c->rx_overflow = true;
            buf_free(&c->rx);
        } else {
            buf_append(&c->rx, in, len);
        }
    }
    if (!lws_is_final_fragment(c->dial.wsi) || lws_remaining_packet_payload(c->dial.wsi))
        return 0;
    int rc = 0;
    if (c->rx_overflow) {
        /* Its id is unknowable without parsing it; its caller's deadline answers it. */
        log_error("dropped a gateway frame larger than %u bytes", MAX_REPLY_FRAME);
    } else if (c->rx.len) {
        rc = on_message(c, buf_ptr(&c->rx), c->rx.len);
    }
    if (!rc && loop_flush_wanted()) {
        /* The rest of this read waits (lws keeps it) until the loop has written the
         * first part a caller was waiting for. */
        lws_rx_flow_control(c->dial.wsi, 0);
        timer_after(&c->resume_rx, 0, resume_reading);
    }
    c->rx.len = 0;
    c->rx_overflow = false;
    if (c->rx.cap > 1024 * 1024)
        buf_free(&c->rx); /* don't keep a multi-MB buffer for small frames */
    return rc;
}

static int write_auth_frame(struct upconn *c)
{
    struct buf b;
    buf_init(&b, LWS_PRE);
    buf_puts(&b, "{\"type\":\"auth\",\"token\":");
    buf_json_string(&b, token(), strlen(token()));
    buf_puts(&b, "}");
    size_t len = b.len;
    int n = lws_write(c->dial.wsi, (unsigned char *)buf_ptr(&b), len, LWS_WRITE_TEXT);
    explicit_bzero(b.data, b.cap);
    buf_free(&b);
    c->auth_frame_due = false;
    if (c->state == UP_READY) {
        c->reauthenticating = true;
        double t = U.cfg->ping_timeout > 5 ? U.cfg->ping_timeout : 5;
        timer_after(&c->reauth_timer, t, reauth_timed_out);
    }
    if (c->sending || mux_has_sendable(&c->win))
        lws_callback_on_writable(c->dial.wsi);
    return n < (int)len ? -1 : 0;
}

static bool burstable(const struct request *req)
{
    return req && req->frame.len <= BURST_MAX_ENVELOPE;
}

/* Frames the small envelopes at the head of the queue, first included, into one
 * buffer and writes it with one send.  lws keeps whatever the kernel does not take
 * and flushes it before the next WRITEABLE, ahead of its own pings and close. */
static int write_burst(struct upconn *c, struct request *first)
{
    struct request *batch[BURST_MAX_COUNT];
    size_t n = 0;
    c->burst.len = 0;
    for (struct request *req = first;;) {
        wsframe_append_text(&c->burst, buf_ptr(&req->frame), req->frame.len);
        batch[n++] = req;
        const struct request *next = mux_peek_next(&c->win);
        if (n == BURST_MAX_COUNT || !burstable(next) ||
            c->burst.len + wsframe_header_len(next->frame.len) + next->frame.len > BURST_MAX_BYTES)
            break;
        req = mux_next_to_send(&c->win);
    }
    /* The buffer is kept for the next burst: it never outgrows BURST_MAX_BYTES + one envelope. */
    int rc = lws_write(c->dial.wsi, (unsigned char *)buf_ptr(&c->burst), c->burst.len, LWS_WRITE_RAW);
    if (rc < 0)
        return -1; /* the batch is in the window: it fails with the connection */
    for (size_t i = 0; i < n; i++) {
        log_debug("sent %s (%zu bytes) service=%s on #%u", batch[i]->id, batch[i]->frame.len, batch[i]->service,
                  c->serial);
        mux_sent(batch[i]);
    }
    return 0;
}

/* Writes what is waiting: small envelopes a burst at a time, a large one in
 * WRITE_CHUNK fragments so pings can interleave (libraries.md b6). */
static int write_next(struct upconn *c)
{
    for (int n = 0; n < 32; n++) {
        if (!c->sending && !c->draining) {
            struct request *req = mux_next_to_send(&c->win);
            if (!req)
                break;
            if (burstable(req)) {
                if (write_burst(c, req))
                    return -1;
                if (lws_send_pipe_choked(c->dial.wsi))
                    break;
                continue;
            }
            c->sending = req;
        }
        struct request *req = c->sending;
        if (!req)
            break;
        size_t total = req->frame.len, off = req->sent_off;
        size_t chunk = total - off > WRITE_CHUNK ? WRITE_CHUNK : total - off;
        int flags = lws_write_ws_flags(LWS_WRITE_TEXT, off == 0, off + chunk == total);
        /* For later fragments the LWS_PRE bytes before p were already sent; lws may use them. */
        unsigned char *p = (unsigned char *)buf_ptr(&req->frame) + off;
        if (lws_write(c->dial.wsi, p, chunk, (enum lws_write_protocol)flags) < 0)
            return -1;
        req->sent_off += chunk;
        if (req->sent_off == total) {
            c->sending = NULL;
            log_debug("sent %s (%zu bytes) service=%s on #%u", req->id, total, req->service, c->serial);
            mux_sent(req);
        }
        if (lws_send_pipe_choked(c->dial.wsi))
            break;
    }
    if (c->sending || (!c->draining && mux_has_sendable(&c->win)))
        lws_callback_on_writable(c->dial.wsi);
    else if (!U.old && !U.next && !mux_queue_empty())
        timer_after(&U.rotate_timer, 0, rotate_check);
    return 0;
}

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
    (void)user;
    struct upconn *c = lws_get_opaque_user_data(wsi);
    if (!c)
        return 0;
    switch (reason) {
    case LWS_CALLBACK_CLIENT_RECEIVE:
        return on_receive(c, in, len);
    case LWS_CALLBACK_CLIENT_RECEIVE_PONG:
        lws_validity_confirmed(wsi);
        c->last_heard = now_mono();
        return 0;
    case LWS_CALLBACK_CLIENT_WRITEABLE:
        if (c->dial.closing || U.stopping) {
            lws_close_reason(wsi, LWS_CLOSE_STATUS_GOINGAWAY, NULL, 0);
            return -1;
        }
        if (c->auth_frame_due)
            return write_auth_frame(c);
        if (c->state == UP_READY)
            return write_next(c);
        return 0;
    case LWS_CALLBACK_CLIENT_CLOSED:
        if (c->state >= UP_AUTHENTICATING && !c->dial.closing) {
            /* lws hangs up after an unanswered ping (the retry policy's validity). */
            double silent = now_mono() - c->last_heard;
            if (silent >= U.retry.secs_since_valid_hangup - 0.5)
                conn_reason(c, false, "the gateway stopped answering (nothing heard for %.1f s, ping unanswered)",
                            silent);
            else
                conn_reason(c, false, "the gateway closed the connection");
        }
        break;
    default:
        break;
    }
    /* Connection phases and every way of closing: dial.c (which may free c). */
    return dial_event(&c->dial, wsi, (int)reason, user, in, len) < 0 ? -1 : 0;
}

/* --auth header: the token as a Bearer header on the upgrade request. */
static int append_headers(struct dial *d, unsigned char **p, unsigned char *end)
{
    if (U.cfg->auth != AUTH_HEADER || !token()[0])
        return 0;
    struct buf v;
    buf_init(&v, 0);
    buf_printf(&v, "Bearer %s", token());
    int bad = lws_add_http_header_by_name(d->wsi, (const unsigned char *)"authorization:",
                                          (const unsigned char *)buf_ptr(&v), (int)v.len, p, end);
    explicit_bzero(v.data, v.cap);
    buf_free(&v);
    return bad;
}

const struct lws_protocols upstream_protocol = {"tgb-upstream", callback, 0, 64 * 1024, 0, NULL, 0};

int upstream_init(struct lws_context *ctx, struct config *cfg)
{
    memset(&U, 0, sizeof U);
    U.ctx = ctx;
    U.cfg = cfg;
    snprintf(U.reason, sizeof U.reason, "not connected yet");
    snprintf(U.era, sizeof U.era, "unknown");
    build_retry_policy();
    return 0;
}

void upstream_start(void)
{
    connect_now(NULL);
}

void upstream_reload_token(void)
{
    if (!U.cfg->token_file) {
        log_info("SIGHUP: no --token-file to re-read");
        return;
    }
    char *before = U.cfg->token ? strdup(U.cfg->token) : NULL;
    char err[256];
    if (config_read_token_file(U.cfg, err, sizeof err)) {
        log_error("SIGHUP: %s; keeping the current token", err);
        free(before);
        return;
    }
    bool changed = !before || strcmp(before, token());
    if (before)
        explicit_bzero(before, strlen(before));
    free(before);
    if (!changed) {
        log_info("SIGHUP: token unchanged");
        return;
    }
    struct upconn *c = U.cur;
    if (!c || c->state != UP_READY) {
        log_info("SIGHUP: new token read; the next connection uses it");
        return;
    }
    if (sends_auth_frame() && !strncmp(U.era, "v2", 2)) {
        /* Our window never exceeds the gateway's, so its reader is not stalled and
         * reads the refresh at once (ref §3.2, §6.2). */
        log_info("SIGHUP: new token read; re-authenticating in-band");
        c->auth_frame_due = true;
        lws_callback_on_writable(c->dial.wsi);
    } else {
        upstream_rotate("the token changed (the gateway checks it only at the handshake)");
    }
}

void upstream_stop(void)
{
    U.stopping = true;
    timer_cancel(&U.retry_timer);
    timer_cancel(&U.drain_timer);
    timer_cancel(&U.rotate_timer);
    timer_cancel(&U.rotate_retry_timer);
    struct upconn *all[3] = {U.cur, U.next, U.old};
    for (int i = 0; i < 3; i++) {
        struct upconn *c = all[i];
        if (!c)
            continue;
        timer_cancel(&c->reauth_timer);
        if (c->dial.wsi && c->state >= UP_AUTHENTICATING)
            lws_callback_on_writable(c->dial.wsi); /* sends a close frame, then closes */
        else
            dial_abort(&c->dial, "tgbridge is shutting down"); /* not open yet: nobody to say goodbye to */
    }
}

bool upstream_closed(void)
{
    return !U.cur && !U.next && !U.old;
}
