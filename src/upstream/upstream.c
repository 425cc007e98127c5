#include "upstream.h"
#include "buf.h"
#include "dial.h"
#include "envelope.h"
#include "firstpart.h"
#include "list.h"
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

/* Why a connection was opened, and why it closed (logs and /metrics). */
enum opened_for { FOR_STARTUP, FOR_RECONNECT, FOR_OVERFLOW, FOR_ROTATION, OPENED_FOR_N };
static const char *const opened_names[OPENED_FOR_N] = {"startup", "reconnect", "overflow", "rotation"};
enum closed_for { CLOSED_IDLE, CLOSED_ROTATED, CLOSED_LOST, CLOSED_FAILED, CLOSED_SHUTDOWN, CLOSED_FOR_N };
static const char *const closed_names[CLOSED_FOR_N] = {"idle", "rotated", "lost", "failed", "shutdown"};

/* The connections to the gateway (docs/operations.md "Connections and flow control").  One is
 * the persistent connection, `primary`, opened at start and kept.  When requests wait
 * and every ready connection's window is full, one more -- an overflow connection --
 * is opened, up to --max-connections, one at a time; an overflow connection idle for
 * --connection-idle is closed.  A rotation is make-before-break: the replacement
 * opens and authenticates while the replaced one keeps serving; then the replaced one
 * retires, receiving replies for its live requests but taking nothing new. */
struct upconn {
    struct dial dial;        /* the connection itself: wsi, phase, deadline, reason */
    unsigned serial;
    enum upstream_state state; /* UP_AUTHENTICATING / UP_READY once open; before that the dial's phase */
    enum opened_for why;
    bool retiring;           /* takes nothing new; closes once nothing live is left on it */
    bool rotated_out;        /* retiring because a rotation replaced it as the persistent one */
    unsigned token_gen;      /* which token (U.token_gen) it presented */
    bool goodbye;            /* close with a close frame from the next WRITEABLE */
    enum closed_for closed_as; /* what its end will be counted as */
    bool auth_refused;       /* failed on credentials: the backoff stays at its longest */
    bool auth_frame_due;     /* an auth frame (first or refresh) still has to be written */
    bool reauthenticating;   /* a refresh frame was sent, its reply not yet seen */
    struct window win;       /* this socket's share of the gateway's window */
    struct request *sending; /* an envelope partly written */
    struct buf burst;        /* frames of small envelopes, written with one send */
    struct buf rx;
    bool rx_overflow;
    double last_heard;       /* for telling a dead peer from a closed one */
    unsigned long long carried; /* requests sent on it */
    struct timer reauth_timer; /* an in-band refresh unanswered */
    struct timer resume_rx;    /* reading paused so that a first part goes out first */
    uint64_t resume_after;     /* ... until writes to callers pass this (firstpart.h) */
    struct timer idle_timer;   /* an overflow connection with nothing in flight */
    struct timer drain_timer;  /* a retiring one's live requests have --drain-timeout */
    struct list node;
};

static struct {
    struct lws_context *ctx;
    struct config *cfg;
    struct list conns;       /* every connection, opening ones included */
    struct upconn *primary;  /* the persistent connection, once ready (else NULL) */
    struct upconn *opening;  /* the one connection being opened, if any */
    struct upconn *replacing; /* what `opening` replaces, in a rotation */
    char rotate_pending[160]; /* a rotation asked for while another was under way */
    char reason[512];
    char era[48];
    char default_ws[256];
    char reauth_status[160];
    bool auth_rejected;      /* the last connection failed on credentials */
    bool stopping;
    struct timer retry_timer, overflow_timer, rotate_timer, rotate_retry_timer;
    uint16_t retry_count, overflow_retry_count;
    double overflow_not_before;
    unsigned reconnects, rotations, serial;
    unsigned token_gen;      /* bumped by each token change SIGHUP reads */
    unsigned long long opened[OPENED_FOR_N], closed[CLOSED_FOR_N];
    bool ever_connected;
    lws_retry_bo_t retry;
    uint32_t retry_table[16];
    char last_logged_reason[512];
    upstream_change_fn on_change;
} U;

/* Records why connection c is failing (the first reason given wins); it becomes the
 * upstream's reason when c goes, if c was what readiness hung on. */
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

static bool serving(const struct upconn *c)
{
    return c->state == UP_READY && !c->retiring && !c->goodbye && c->dial.wsi;
}

bool upstream_ready(void) { return U.primary != NULL; }
enum upstream_state upstream_state(void)
{
    return U.primary ? UP_READY : U.opening ? conn_state(U.opening) : UP_DOWN;
}
const char *upstream_reason(void) { return upstream_ready() ? "" : U.reason; }
const char *upstream_era(void) { return U.era; }
const char *upstream_default_workspace(void) { return U.default_ws; }
unsigned upstream_reconnects(void) { return U.reconnects; }
unsigned upstream_rotations(void) { return U.rotations; }
const char *upstream_reauth_status(void) { return U.reauth_status; }

size_t upstream_window_used(void)
{
    size_t n = 0;
    for (const struct list *p = U.conns.next; p != &U.conns; p = p->next)
        n += list_entry(p, struct upconn, node)->win.n;
    return n;
}

/* One make-before-break rotation at a time: a persistent connection it replaced is
 * still finishing its calls.  Retiring overflow connections do not count. */
static bool rotation_draining(void)
{
    for (const struct list *p = U.conns.next; p != &U.conns; p = p->next)
        if (list_entry(p, struct upconn, node)->rotated_out)
            return true;
    return false;
}

bool upstream_draining(void)
{
    for (const struct list *p = U.conns.next; p != &U.conns; p = p->next)
        if (list_entry(p, struct upconn, node)->retiring)
            return true;
    return false;
}

static size_t count_conns(bool serving_only)
{
    size_t n = 0;
    for (const struct list *p = U.conns.next; p != &U.conns; p = p->next) {
        const struct upconn *c = list_entry(p, struct upconn, node);
        n += !serving_only || !c->retiring;
    }
    return n;
}

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
    if (U.stopping || U.primary || U.opening)
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

static struct upconn *start_connection(enum opened_for why, char *whynot, size_t whylen);
static void retry_rotation(struct timer *t);
static void rotation_done(void);

/* Takes nothing new; it goes once nothing live is left on it (check_retiring), or at
 * --drain-timeout. */
static void drain_expired(struct timer *t);
static void check_retiring(struct upconn *c);

static void retire(struct upconn *c, const char *why)
{
    if (c->retiring)
        return;
    c->retiring = true;
    c->closed_as = CLOSED_ROTATED;
    timer_cancel(&c->idle_timer);
    log_info("connection #%u takes no new requests (%s); it closes once its live ones are done", c->serial, why);
    timer_after(&c->drain_timer, U.cfg->drain_timeout, drain_expired);
    check_retiring(c);
}

static void drain_expired(struct timer *t)
{
    struct upconn *c = timer_owner(t, struct upconn, drain_timer);
    char msg[200];
    snprintf(msg, sizeof msg, "the gateway connection was rotated and the request did not finish within "
                              "--drain-timeout (%.3g s)", U.cfg->drain_timeout);
    mux_fail_window(&c->win, 502, "upstream-disconnected", msg);
    dial_close(&c->dial);
}

static void check_retiring(struct upconn *c)
{
    if (c->retiring && !c->dial.closing && mux_window_live(&c->win) == 0) {
        log_info("closing connection #%u (nothing left to wait for)", c->serial);
        dial_close(&c->dial);
    }
}

/* The serving connection with the most room takes over from a persistent one that
 * is gone; overflow ones are kept, so the loss costs no gap in service. */
static struct upconn *best_serving(void)
{
    struct upconn *best = NULL;
    for (struct list *p = U.conns.next; p != &U.conns; p = p->next) {
        struct upconn *c = list_entry(p, struct upconn, node);
        if (serving(c) && (!best || c->win.n < best->win.n))
            best = c;
    }
    return best;
}

static void idle_expired(struct timer *t);

/* An overflow connection with an empty window is closed after --connection-idle. */
static void window_changed(struct upconn *c)
{
    if (c->retiring) {
        check_retiring(c);
        return;
    }
    if (c != U.primary && serving(c) && c->win.n == 0 && !timer_pending(&c->idle_timer))
        timer_after(&c->idle_timer, U.cfg->connection_idle, idle_expired);
}

static void idle_expired(struct timer *t)
{
    struct upconn *c = timer_owner(t, struct upconn, idle_timer);
    if (c == U.primary || !serving(c) || c->win.n)
        return;
    log_info("closing overflow connection #%u: nothing in flight for %g s (--connection-idle)", c->serial,
             U.cfg->connection_idle);
    c->goodbye = true;
    c->closed_as = CLOSED_IDLE;
    lws_callback_on_writable(c->dial.wsi);
}

static void sent_on(struct upconn *c, struct request *req)
{
    c->carried++;
    timer_cancel(&c->idle_timer);
    mux_sent(req);
}

static void overflow_retry(struct timer *t)
{
    (void)t;
    upstream_kick();
}

/* dial.c's gone: the connection failed or closed; nothing of it is left in lws. */
static void conn_gone(struct dial *d)
{
    struct upconn *c = timer_owner(d, struct upconn, dial);
    word_reason(c);
    bool was_primary = c == U.primary, was_opening = c == U.opening;
    list_del(&c->node);
    if (was_primary)
        U.primary = NULL;
    if (was_opening)
        U.opening = NULL;
    if (c == U.replacing)
        U.replacing = NULL;
    /* What readiness hung on: the persistent connection, or an attempt made while
     * none serves.  An overflow connection failing never speaks for readiness. */
    bool counts = (was_primary || (was_opening && c->why != FOR_OVERFLOW)) && !U.stopping;
    if (counts) {
        snprintf(U.reason, sizeof U.reason, "%s", c->dial.reason);
        U.auth_rejected = c->auth_refused;
    }
    const char *why = U.stopping ? "tgbridge is shutting down"
                      : c->retiring ? "the rotated-out gateway connection closed" : c->dial.reason;
    mux_upstream_lost(&c->win, why);
    timer_cancel(&c->reauth_timer);
    timer_cancel(&c->resume_rx);
    timer_cancel(&c->idle_timer);
    timer_cancel(&c->drain_timer);
    buf_free(&c->rx);
    buf_free(&c->burst);
    enum closed_for as = U.stopping ? CLOSED_SHUTDOWN : c->state < UP_READY ? CLOSED_FAILED
                       : c->closed_as == CLOSED_IDLE || c->closed_as == CLOSED_ROTATED ? c->closed_as : CLOSED_LOST;
    U.closed[as]++;
    enum opened_for was_for = c->why;
    bool was_retiring = c->retiring;
    unsigned serial = c->serial;
    bool ever_ready = c->state == UP_READY;
    char reason[512];
    snprintf(reason, sizeof reason, "%s", c->dial.reason);
    free(c);
    if (U.stopping)
        return;
    if (was_opening && was_for == FOR_ROTATION) {
        log_warn("rotation failed, keeping connection #%u: %s", U.primary ? U.primary->serial : 0, reason);
        if (!U.rotate_pending[0])
            snprintf(U.rotate_pending, sizeof U.rotate_pending, "retrying a failed rotation");
        timer_after(&U.rotate_retry_timer, U.cfg->reconnect_max, retry_rotation);
    } else if (was_opening && was_for == FOR_OVERFLOW) {
        char conceal;
        unsigned ms = lws_retry_get_delay_ms(U.ctx, &U.retry, &U.overflow_retry_count, &conceal);
        U.overflow_not_before = now_mono() + ms / 1000.0;
        log_warn("could not open an overflow connection (#%u): %s; the others keep serving, retrying in %.1f s",
                 serial, reason, ms / 1000.0);
        timer_after(&U.overflow_timer, ms / 1000.0, overflow_retry);
    } else if (ever_ready && !was_primary) {
        log_info("%s connection #%u closed (%s)", was_for == FOR_OVERFLOW ? "overflow" : "retired", serial,
                 as == CLOSED_IDLE ? "idle" : as == CLOSED_ROTATED ? "rotated out" : reason);
    }
    if (was_retiring && U.rotate_pending[0])
        timer_after(&U.rotate_retry_timer, 0, retry_rotation); /* one was waiting for this one */
    if (was_primary) {
        U.primary = best_serving();
        if (U.primary) {
            timer_cancel(&U.primary->idle_timer);
            log_warn("the persistent connection #%u was lost (%s); overflow connection #%u takes its place",
                     serial, reason, U.primary->serial);
        }
    }
    if (U.primary || U.opening) {
        if (!U.primary && U.opening)
            log_warn("upstream connection lost (%s); its replacement is being set up", U.reason);
        upstream_kick();
        return;
    }
    /* Nothing serves and nothing is on its way: a fresh connection replaces them,
     * and whatever a rotation was wanted for is moot on it. */
    U.rotate_pending[0] = '\0';
    timer_cancel(&U.rotate_retry_timer);
    log_down();
    schedule_reconnect();
}

/* A connection that presented a token older than the current one: refreshed in-band
 * (V2), else replaced (the persistent one) or retired (an overflow one). */
static void stale_token(struct upconn *c)
{
    if (sends_auth_frame() && !strncmp(U.era, "v2", 2)) {
        c->auth_frame_due = true;
        lws_callback_on_writable(c->dial.wsi);
    } else if (c == U.primary) {
        upstream_rotate("the token changed (the gateway checks it only at the handshake)");
    } else {
        retire(c, "the token changed");
    }
}

static void became_ready(struct upconn *c, const char *era, const char *workspace)
{
    c->state = UP_READY;
    if (c == U.opening)
        U.opening = NULL;
    struct upconn *replaced = c->why == FOR_ROTATION ? U.replacing : NULL;
    U.replacing = NULL;
    bool first = !U.primary;
    if (replaced) {
        if (replaced == U.primary)
            U.primary = c;
        replaced->rotated_out = true;
        retire(replaced, "rotated out");
    } else if (!U.primary) {
        /* A rotation's replacement that finds the one it was to replace lost is what
         * brings the upstream back: a reconnect. */
        if (c->why == FOR_ROTATION)
            U.reconnects++;
        U.primary = c;
    }
    U.retry_count = 0;
    U.overflow_retry_count = 0;
    U.auth_rejected = false;
    dial_settled(&c->dial);
    bool era_changed = strcmp(U.era, era) != 0;
    snprintf(U.era, sizeof U.era, "%s", era);
    if (workspace)
        snprintf(U.default_ws, sizeof U.default_ws, "%s", workspace);
    U.last_logged_reason[0] = '\0';
    if (c == U.primary) {
        log_info("upstream ready (connection #%u): %s auth=%s era=%s%s%s%s", c->serial, U.cfg->gateway,
                 auth_mode_name(U.cfg->auth), U.era, U.default_ws[0] ? " default_workspace=" : "", U.default_ws,
                 era_changed ? "" : " (same era as before)");
        if (first && U.on_change)
            U.on_change(true, U.era);
    } else {
        log_info("overflow connection #%u ready (%zu connections; every window was full with requests waiting)",
                 c->serial, count_conns(true));
        window_changed(c);
    }
    if (c->token_gen != U.token_gen)
        stale_token(c); /* it was dialled before SIGHUP read the new token */
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
        log_warn("no reply to the re-authentication frame on #%u; rotating instead", c->serial);
        if (c == U.primary)
            upstream_rotate("re-authentication unanswered");
        else
            retire(c, "re-authentication unanswered");
    }
}

static bool open_connection(enum opened_for why, char *whynot, size_t whylen)
{
    if (U.opening || U.stopping)
        return false;
    U.opening = start_connection(why, whynot, whylen);
    if (!U.opening)
        return false;
    U.opened[why]++;
    return true;
}

static void connect_now(struct timer *t)
{
    (void)t;
    if (U.stopping || U.primary || U.opening)
        return;
    if (!open_connection(U.ever_connected ? FOR_RECONNECT : FOR_STARTUP, U.reason, sizeof U.reason)) {
        log_down();
        schedule_reconnect();
    }
}

/* --token-file read again; a new token bumps U.token_gen, so connections that
 * presented the old one are known to be stale whoever read the file first (a new
 * connection, SIGHUP or the watcher).  A file that is missing, unreadable or empty
 * (mid-rotation, or a Secret briefly without its key) keeps the token we had: -1 with why. */
static int reread_token(char *err, size_t errlen)
{
    char *before = U.cfg->token ? strdup(U.cfg->token) : NULL;
    int rc = config_read_token_file(U.cfg, err, errlen);
    if (!rc && before && before[0] && !token()[0]) {
        snprintf(err, errlen, "token file %s is empty", U.cfg->token_file);
        rc = -1;
    }
    if (rc && before) {
        free(U.cfg->token);
        U.cfg->token = before; /* still in the redaction list */
        return rc;
    }
    if (!rc && before && strcmp(before, token()))
        U.token_gen++;
    if (before)
        explicit_bzero(before, strlen(before));
    free(before);
    return rc;
}

static void on_opened(struct dial *d);
static int append_headers(struct dial *d, unsigned char **p, unsigned char *end);
static const struct dial_ops conn_ops = {on_opened, conn_gone, append_headers};

/* Opens a connection through dial.c (re-reading the token file first).  NULL if it
 * could not start, with why. */
static struct upconn *start_connection(enum opened_for why, char *whynot, size_t whylen)
{
    char err[256];
    if (reread_token(err, sizeof err)) {
        /* Keep the last token we had; a file mid-rotation must not take us down. */
        log_warn("%s", err);
    }
    struct upconn *c = calloc(1, sizeof *c);
    if (!c)
        abort();
    c->serial = ++U.serial;
    c->why = why;
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
    c->token_gen = U.token_gen;
    bool too_long = path.len >= sizeof c->dial.path;
    if (!too_long)
        memcpy(c->dial.path, buf_ptr(&path), path.len + 1);
    explicit_bzero(path.data, path.cap);
    buf_free(&path);
    list_add_tail(&U.conns, &c->node);
    if (too_long || dial_start(&c->dial)) {
        snprintf(whynot, whylen, "%s", too_long ? "gateway path plus token is too long" : c->dial.reason);
        list_del(&c->node);
        explicit_bzero(c->dial.path, sizeof c->dial.path);
        buf_free(&c->burst);
        free(c);
        return NULL;
    }
    log_debug("connection #%u (%s): %s %s", c->serial, opened_names[why], dial_phase_name(&c->dial),
              U.cfg->via_proxy ? U.cfg->via_proxy->host : U.cfg->gw.host);
    return c;
}

/* A window full of requests nobody waits for any more (timed out, caller gone) while
 * others wait: the gateway has no cancel, so only a new socket frees it (issue 5).
 * The persistent connection is replaced make-before-break; an overflow one retires. */
static void rotate_check(struct timer *t)
{
    (void)t;
    if (U.stopping || mux_queue_empty() || U.opening || upstream_draining())
        return; /* one at a time: the replacement under way frees the window */
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &U.conns) {
        struct upconn *c = list_entry(pos, struct upconn, node);
        if (!serving(c) || !mux_window_blocked_by_abandoned(&c->win))
            continue;
        if (c == U.primary)
            upstream_rotate("requests nobody waits for any more hold the gateway's window");
        else
            retire(c, "requests nobody waits for any more hold its window");
    }
}

/* Placement: a waiting request goes to the serving connection with the most room in
 * its window (the persistent one when they tie), which can start it soonest; when
 * every window is full, one more connection is opened (docs/operations.md "Connections and flow control"). */
void upstream_kick(void)
{
    if (U.stopping)
        return;
    struct upconn *best = NULL;
    for (struct list *p = U.conns.next; p != &U.conns; p = p->next) {
        struct upconn *c = list_entry(p, struct upconn, node);
        if (!serving(c))
            continue;
        if (c->sending || c->auth_frame_due)
            lws_callback_on_writable(c->dial.wsi);
        if (!window_has_room(&c->win, U.cfg->max_inflight))
            continue;
        if (!best || c->win.n < best->win.n || (c->win.n == best->win.n && c == U.primary))
            best = c;
    }
    if (mux_queue_empty())
        return;
    if (best) {
        lws_callback_on_writable(best->dial.wsi);
        return;
    }
    /* Every window is full and requests wait. */
    timer_after(&U.rotate_timer, 0, rotate_check);
    if (U.primary && !U.opening && count_conns(true) < (size_t)U.cfg->max_connections &&
        now_mono() >= U.overflow_not_before) {
        char whynot[512];
        if (!open_connection(FOR_OVERFLOW, whynot, sizeof whynot))
            log_warn("cannot open an overflow connection: %s", whynot);
        else
            log_info("opening overflow connection #%u: every window is full and %zu requests wait",
                     U.opening->serial, mux_queued());
    }
}

void upstream_rotate(const char *why)
{
    if (U.stopping || !U.primary)
        return; /* nothing established to replace: the next attempt picks the new settings up */
    if (U.opening || rotation_draining()) {
        /* One rotation at a time (and one opening at a time); this one runs when the
         * current one is done. */
        snprintf(U.rotate_pending, sizeof U.rotate_pending, "%s", why);
        return;
    }
    U.rotate_pending[0] = '\0';
    timer_cancel(&U.rotate_retry_timer);
    U.rotations++;
    log_info("rotating the gateway connection (make-before-break): %s", why);
    char whynot[512];
    if (!open_connection(FOR_ROTATION, whynot, sizeof whynot)) {
        log_warn("rotation failed, keeping connection #%u: %s", U.primary->serial, whynot);
        snprintf(U.rotate_pending, sizeof U.rotate_pending, "retrying a failed rotation");
        timer_after(&U.rotate_retry_timer, U.cfg->reconnect_max, retry_rotation);
        return;
    }
    U.replacing = U.primary;
}

static void retry_rotation(struct timer *t)
{
    (void)t;
    rotation_done();
}

/* Runs a rotation that was asked for while another was under way. */
static void rotation_done(void)
{
    if (U.rotate_pending[0] && !U.opening && !rotation_draining()) {
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
    if (c->why == FOR_RECONNECT)
        U.reconnects++; /* a rotation or an overflow connection is not a reconnect */
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
        window_changed(c);
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
static void resume_after_writes(void *arg)
{
    (void)arg;
    uint64_t writes = firstpart_writes_total();
    for (struct list *p = U.conns.next; p != &U.conns; p = p->next) {
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
         * first part a caller was waiting for (resume_after_writes). */
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

static int write_auth_frame(struct upconn *c)
{
    struct buf b;
    buf_init(&b, LWS_PRE);
    buf_puts(&b, "{\"type\":\"auth\",\"token\":");
    buf_json_string(&b, token(), strlen(token()));
    c->token_gen = U.token_gen;
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
        sent_on(c, batch[i]);
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
            sent_on(c, req);
        }
        if (lws_send_pipe_choked(c->dial.wsi))
            break;
    }
    if (c->sending || (!c->retiring && mux_has_sendable(&c->win)))
        lws_callback_on_writable(c->dial.wsi);
    else if (!mux_queue_empty())
        upstream_kick(); /* its window is full: another connection, or one more */
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
        if (c->dial.closing || U.stopping || c->goodbye) {
            lws_close_reason(wsi, c->goodbye && !U.stopping ? LWS_CLOSE_STATUS_NORMAL : LWS_CLOSE_STATUS_GOINGAWAY,
                             NULL, 0);
            return -1;
        }
        if (c->auth_frame_due)
            return write_auth_frame(c);
        if (c->state == UP_READY)
            return write_next(c);
        return 0;
    case LWS_CALLBACK_CLIENT_CLOSED:
        if (c->state >= UP_AUTHENTICATING && !c->dial.closing && !c->goodbye) {
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

static const struct lws_protocols upstream_protocol = {"tgb-upstream", callback, 0, 64 * 1024, 0, NULL, 0};

void upstream_register_protocol(void)
{
    loop_add_protocol(&upstream_protocol);
}

int upstream_init(struct lws_context *ctx, struct config *cfg)
{
    memset(&U, 0, sizeof U);
    U.ctx = ctx;
    U.cfg = cfg;
    list_init(&U.conns);
    snprintf(U.reason, sizeof U.reason, "not connected yet");
    snprintf(U.era, sizeof U.era, "unknown");
    build_retry_policy();
    upstream_status_register(cfg);
    return loop_before_poll(resume_after_writes, NULL);
}

void upstream_start(void)
{
    connect_now(NULL);
}

/* A connection open, or opening, with a token older than the one read last. */
static bool stale_connections(void)
{
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &U.conns) {
        struct upconn *c = list_entry(pos, struct upconn, node);
        if (!c->retiring && c->token_gen != U.token_gen)
            return true;
    }
    return false;
}

void upstream_reload_token(const char *why)
{
    if (!U.cfg->token_file) {
        log_info("%s: no --token-file to re-read", why);
        return;
    }
    unsigned gen = U.token_gen;
    char err[256];
    if (reread_token(err, sizeof err)) {
        log_error("%s: %s; keeping the current token", why, err);
        return;
    }
    if (gen == U.token_gen && !stale_connections()) {
        log_info("%s: token unchanged", why);
        return;
    }
    if (!U.primary) {
        log_info("%s: new token read; the next connection uses it", why);
        return;
    }
    if (sends_auth_frame() && !strncmp(U.era, "v2", 2)) {
        /* Our windows never exceed the gateway's, so its readers are not stalled and
         * read the refresh at once (ref §3.2, §6.2). */
        log_info("%s: new token read; re-authenticating in-band on every connection", why);
        struct list *pos, *tmp;
        list_for_each_safe(pos, tmp, &U.conns) {
            struct upconn *c = list_entry(pos, struct upconn, node);
            if (c->state == UP_READY && !c->retiring && c->dial.wsi)
                stale_token(c);
        }
    } else {
        /* The persistent connection is replaced make-before-break; overflow ones carry
         * the old token, so they take nothing new and go when their calls are done
         * (new ones open on demand, with the new token). */
        struct list *pos, *tmp;
        list_for_each_safe(pos, tmp, &U.conns) {
            struct upconn *c = list_entry(pos, struct upconn, node);
            if (c != U.primary && c->state == UP_READY && !c->retiring)
                retire(c, "the token changed");
        }
        upstream_rotate("the token changed (the gateway checks it only at the handshake)");
    }
}

void upstream_stop(void)
{
    U.stopping = true;
    timer_cancel(&U.retry_timer);
    timer_cancel(&U.overflow_timer);
    timer_cancel(&U.rotate_timer);
    timer_cancel(&U.rotate_retry_timer);
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &U.conns) {
        struct upconn *c = list_entry(pos, struct upconn, node);
        timer_cancel(&c->reauth_timer);
        if (c->dial.wsi && c->state >= UP_AUTHENTICATING)
            lws_callback_on_writable(c->dial.wsi); /* sends a close frame, then closes */
        else
            dial_abort(&c->dial, "tgbridge is shutting down"); /* not open yet: nobody to say goodbye to */
    }
}

bool upstream_closed(void)
{
    return list_empty(&U.conns);
}

void upstream_connections(struct buf *out)
{
    buf_puts(out, "[");
    double now = now_mono();
    bool firstc = true;
    for (const struct list *p = U.conns.next; p != &U.conns; p = p->next) {
        const struct upconn *c = list_entry(p, struct upconn, node);
        static const char *const states[] = {"down", "resolving", "connecting", "authenticating", "ready"};
        double oldest = c->win.n ? now - list_entry(c->win.list.next, struct request, wnode)->sent_at : 0;
        buf_printf(out, "%s{\"id\":%u,\"role\":\"%s\",\"state\":\"%s\",\"opened_for\":\"%s\",\"retiring\":%s,"
                   "\"window_used\":%zu,\"oldest_request_age_seconds\":%.3f,\"requests_carried\":%llu}",
                   firstc ? "" : ",", c->serial, c == U.primary ? "persistent" : c == U.opening ? "opening" : "overflow",
                   states[conn_state(c)], opened_names[c->why], c->retiring ? "true" : "false", c->win.n, oldest,
                   c->carried);
        firstc = false;
    }
    buf_puts(out, "]");
}

size_t upstream_connection_count(void)
{
    return count_conns(false);
}

bool upstream_counter(size_t i, bool opened, const char **name, unsigned long long *n)
{
    if (opened ? i >= OPENED_FOR_N : i >= CLOSED_FOR_N)
        return false;
    *name = opened ? opened_names[i] : closed_names[i];
    *n = opened ? U.opened[i] : U.closed[i];
    return true;
}
