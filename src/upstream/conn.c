/* A connection's life: opened through dial.c, the lws callbacks, reading reply frames
 * and writing envelopes.  What a connection's events mean for the set of connections
 * is pool.c's and rotate.c's; what the auth reply means is auth.c's. */
#include "upstream_int.h"
#include "firstpart.h"
#include "log.h"
#include "mux.h"
#include "redact.h"
#include "util.h"
#include "wsframe.h"
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(FRAME_HEADROOM >= LWS_PRE,
               "a request's envelope goes to lws_write in place, after FRAME_HEADROOM bytes");

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

/* Records why connection c is failing (the first reason given wins); it becomes the
 * upstream's reason when c goes, if c was what readiness hung on. */
void conn_reason(struct upconn *c, bool auth, const char *fmt, ...)
{
    char why[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    dial_reason(&c->dial, "%s", why);
    c->auth_refused = c->auth_refused || auth;
}

enum upstream_state conn_state(const struct upconn *c)
{
    if (c->state >= UP_AUTHENTICATING)
        return c->state;
    return c->dial.phase == DIAL_RESOLVING ? UP_RESOLVING : c->dial.phase == DIAL_IDLE ? UP_DOWN : UP_CONNECTING;
}

bool conn_serving(const struct upconn *c)
{
    return c->state == UP_READY && !c->retiring && !c->goodbye && c->dial.wsi;
}

void conn_want_write(struct upconn *c)
{
    lws_callback_on_writable(c->dial.wsi);
}

void conn_goodbye(struct upconn *c, enum closed_for as)
{
    c->goodbye = true;
    c->closed_as = as;
    lws_callback_on_writable(c->dial.wsi);
}

/* Ready: the pool takes it in; a token read while it was dialled is presented anew;
 * a rotation waiting for this one runs. */
static void conn_ready(struct upconn *c, const char *era, const char *workspace)
{
    struct upool *P = c->pool;
    pool_ready(c, era, workspace);
    if (c->token_gen != P->token_gen)
        rotate_stale_token(c); /* it was dialled before SIGHUP read the new token */
    upstream_kick_pool(P);
    rotate_done(P);
}

static void on_opened(struct dial *d)
{
    struct upconn *c = timer_owner(d, struct upconn, dial);
    struct upool *P = c->pool;
    c->last_heard = now_mono();
    pool_upgraded(c);
    if (c->why == FOR_RECONNECT)
        P->reconnects++; /* a rotation or an overflow connection is not a reconnect */
    P->ever_connected = true;
    if (!auth_sends_frame()) {
        conn_ready(c, U.cfg->auth == AUTH_QUERY ? "not probed (--auth query)" : "not probed (--auth header)", NULL);
        return;
    }
    c->state = UP_AUTHENTICATING;
    c->auth_frame_due = true;
    d->awaiting = "reply to the authentication frame"; /* still under the attempt's deadline */
    lws_callback_on_writable(d->wsi);
}

/* What c held: its requests fail (never replayed), its timers and buffers go. */
static void conn_free(struct upconn *c)
{
    const char *why = U.stopping ? "tgbridge is shutting down"
                      : c->retiring ? "the rotated-out gateway connection closed" : c->dial.reason;
    mux_upstream_lost(&c->win, why);
    timer_cancel(&c->reauth_timer);
    timer_cancel(&c->resume_rx);
    timer_cancel(&c->idle_timer);
    timer_cancel(&c->drain_timer);
    buf_free(&c->rx);
    buf_free(&c->burst);
    free(c);
}

/* dial.c's gone: the connection failed or closed; nothing of it is left in lws. */
static void conn_gone(struct dial *d)
{
    struct upconn *c = timer_owner(d, struct upconn, dial);
    struct upool *P = c->pool;
    auth_word_reason(c);
    struct conn_loss loss;
    pool_unlink(c, &loss);
    conn_free(c);
    if (U.stopping || !pools_is_own(P)) {
        pools_after_loss(P, &loss); /* a caller's pool has rules of its own (may free P) */
        return;
    }
    rotate_after_loss(P, &loss);
    if (pool_after_loss(P, &loss)) {
        upstream_kick_pool(P);
        return;
    }
    /* Nothing serves and nothing is on its way: a fresh connection replaces them,
     * and whatever a rotation was wanted for is moot on it. */
    rotate_forget(P);
    pool_down(P);
}

static const struct dial_ops conn_ops = {on_opened, conn_gone, auth_append_headers};

/* Opens a connection through dial.c (re-reading the token file first).  NULL if it
 * could not start, with why. */
struct upconn *conn_start(struct upool *P, enum opened_for why, char *whynot, size_t whylen)
{
    char err[256];
    if (auth_reread_token(P, err, sizeof err)) {
        /* Keep the last token we had; a file mid-rotation must not take us down. */
        log_warn("%s", err);
    }
    struct upconn *c = calloc(1, sizeof *c);
    if (!c)
        abort();
    c->pool = P;
    c->serial = ++U.serial;
    c->why = why;
    window_init_lane(&c->win, P->lane);
    buf_init(&c->rx, 0);
    buf_init(&c->burst, LWS_PRE);
    c->dial.ops = &conn_ops;
    c->dial.local_protocol = "tgb-upstream";
    c->dial.retry = &U.retry;
    c->token_gen = P->token_gen;
    bool too_long = auth_path(P, c->dial.path, sizeof c->dial.path) < 0;
    list_add_tail(&P->conns, &c->node);
    if (too_long || dial_start(&c->dial)) {
        snprintf(whynot, whylen, "%s", too_long ? "gateway path plus token is too long" : c->dial.reason);
        list_del(&c->node);
        explicit_bzero(c->dial.path, sizeof c->dial.path);
        buf_free(&c->burst);
        free(c);
        return NULL;
    }
    log_debug("connection #%u (%s%s%s): %s %s", c->serial, opened_names[why], P->key ? ", caller " : "",
              P->key ? P->caller : "", dial_phase_name(&c->dial),
              U.cfg->via_proxy ? U.cfg->via_proxy->host : U.cfg->gw.host);
    return c;
}

static int on_auth_frame(struct upconn *c, const struct frame *f)
{
    const char *era = NULL;
    switch (auth_reply(f, &era)) {
    case AUTH_READY:
        conn_ready(c, era, f->kind == FRAME_AUTH_OK ? f->workspace : NULL);
        return 0;
    case AUTH_REFUSED:
        conn_reason(c, true, "the gateway rejected the token (auth-failed: %s)", f->err_message);
        return -1;
    case AUTH_WAIT:
        break;
    }
    return 0;
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
        rc = on_auth_frame(c, &f);
    } else if (f.kind == FRAME_AUTH_OK || f.kind == FRAME_AUTH_FAILED) {
        auth_refresh_reply(c, &f);
    } else {
        mux_on_frame(&f, &c->win);
        pool_window_changed(c);
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

/* Before the loop waits: a connection paused for a first part reads on as soon as a
 * front end has written since. */
void conn_resume_after_writes(void *arg)
{
    (void)arg;
    uint64_t writes = firstpart_writes_total();
    for (struct upool *P = &U.own; P; P = pools_next(P))
        for (struct list *p = P->conns.next; p != &P->conns; p = p->next) {
            struct upconn *c = list_entry(p, struct upconn, node);
            if (timer_pending(&c->resume_rx) && writes != c->resume_after) {
                timer_cancel(&c->resume_rx);
                if (c->dial.wsi)
                    lws_rx_flow_control(c->dial.wsi, 1);
            }
        }
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
    uint64_t first_parts = firstpart_queued_total();
    if (c->rx_overflow) {
        /* Its id is unknowable without parsing it; its caller's deadline answers it. */
        log_error("dropped a gateway frame larger than %u bytes", MAX_REPLY_FRAME);
    } else if (c->rx.len) {
        rc = on_message(c, buf_ptr(&c->rx), c->rx.len);
    }
    if (!rc && firstpart_queued_total() != first_parts) {
        /* The rest of this read waits (lws keeps it) until the loop has written the
         * first part a caller was waiting for (conn_resume_after_writes). */
        lws_rx_flow_control(c->dial.wsi, 0);
        c->resume_after = firstpart_await();
        /* ... and at the latest after 2 ms, whatever the caller does. */
        timer_after(&c->resume_rx, 0.002, resume_reading);
    }
    c->rx.len = 0;
    c->rx_overflow = false;
    if (c->rx.cap > 1024 * 1024)
        buf_free(&c->rx); /* don't keep a multi-MB buffer for small frames */
    return rc;
}

/* The first auth frame, or an in-band refresh of an open connection (the first is
 * under the connection's deadline, dial.c; a refresh has its own). */
static int write_auth(struct upconn *c)
{
    c->token_gen = c->pool->token_gen;
    int rc = auth_write_frame(c->pool, c->dial.wsi);
    c->auth_frame_due = false;
    if (c->state == UP_READY) {
        c->reauthenticating = true;
        double t = U.cfg->ping_timeout > 5 ? U.cfg->ping_timeout : 5;
        timer_after(&c->reauth_timer, t, rotate_reauth_timed_out);
    }
    if (c->sending || mux_has_sendable(&c->win))
        lws_callback_on_writable(c->dial.wsi);
    return rc;
}

static bool burstable(const struct request *req)
{
    return req && req->frame.len <= BURST_MAX_ENVELOPE;
}

static void sent(struct upconn *c, struct request *req)
{
    log_debug("sent %s (%zu bytes) service=%s on #%u", req->id, req->frame.len, req->service, c->serial);
    pool_sent_on(c, req);
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
    for (size_t i = 0; i < n; i++)
        sent(c, batch[i]);
    return 0;
}

/* One WRITE_CHUNK fragment of the large envelope c->sending. */
static int write_fragment(struct upconn *c)
{
    struct request *req = c->sending;
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
        sent(c, req);
    }
    return 0;
}

/* Writes what is waiting: small envelopes a burst at a time, a large one in
 * WRITE_CHUNK fragments so pings can interleave (libraries.md b6). */
static int write_next(struct upconn *c)
{
    for (int n = 0; n < 32; n++) {
        if (!c->sending && !c->retiring) {
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
        if (!c->sending)
            break;
        if (write_fragment(c))
            return -1;
        if (lws_send_pipe_choked(c->dial.wsi))
            break;
    }
    if (c->sending || (!c->retiring && mux_has_sendable(&c->win)))
        lws_callback_on_writable(c->dial.wsi);
    else if (mux_lane_queued(c->pool->lane))
        upstream_kick_pool(c->pool); /* its window is full: another connection, or one more */
    return 0;
}

static int on_writeable(struct upconn *c, struct lws *wsi)
{
    if (c->dial.closing || U.stopping || c->goodbye) {
        lws_close_reason(wsi, c->goodbye && !U.stopping ? LWS_CLOSE_STATUS_NORMAL : LWS_CLOSE_STATUS_GOINGAWAY,
                         NULL, 0);
        return -1;
    }
    if (c->auth_frame_due)
        return write_auth(c);
    if (c->state == UP_READY)
        return write_next(c);
    return 0;
}

static void on_closed(struct upconn *c)
{
    if (c->state >= UP_AUTHENTICATING && !c->dial.closing && !c->goodbye) {
        /* lws hangs up after an unanswered ping (the retry policy's validity). */
        double silent = now_mono() - c->last_heard;
        if (silent >= U.retry.secs_since_valid_hangup - 0.5)
            conn_reason(c, false, "the gateway stopped answering (nothing heard for %.1f s, ping unanswered)",
                        silent);
        else
            conn_reason(c, false, "the gateway closed the connection");
    }
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
        return on_writeable(c, wsi);
    case LWS_CALLBACK_CLIENT_CLOSED:
        on_closed(c);
        break;
    default:
        break;
    }
    /* Connection phases and every way of closing: dial.c (which may free c). */
    return dial_event(&c->dial, wsi, (int)reason, user, in, len) < 0 ? -1 : 0;
}

static const struct lws_protocols upstream_protocol = {"tgb-upstream", callback, 0, 64 * 1024, 0, NULL, 0};

void upstream_register_protocol(void)
{
    loop_add_protocol(&upstream_protocol);
}
