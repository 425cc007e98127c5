/* The set of connections (docs/operations.md "Connections and flow control"): the
 * persistent one and its reconnect backoff, placement, overflow connections opened one
 * at a time and closed when idle, promotion when the persistent one is lost, retiring
 * ones.  The decisions themselves are pool_policy.c's pure functions; this file feeds
 * them the connections and acts on the verdicts. */
#include "upstream_int.h"
#include "log.h"
#include "mux.h"
#include "util.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void pool_build_retry_policy(void)
{
    /* Exponential from --reconnect-min to --reconnect-max; lws adds 0–30 % jitter. */
    size_t n = pool_backoff_table(U.cfg->reconnect_min, U.cfg->reconnect_max, U.retry_table,
                                  sizeof U.retry_table / sizeof U.retry_table[0]);
    U.retry.retry_ms_table = U.retry_table;
    U.retry.retry_ms_table_count = (uint16_t)n;
    U.retry.conceal_count = LWS_RETRY_CONCEAL_ALWAYS;
    /* lws counts whole seconds; round up so a 0.5 s setting still pings. */
    double ping = U.cfg->ping_interval < 1 ? 1 : U.cfg->ping_interval;
    double hang = ping + (U.cfg->ping_timeout < 1 ? 1 : U.cfg->ping_timeout);
    U.retry.secs_since_valid_ping = (uint16_t)(ping > 65000 ? 65000 : ping + 0.999);
    U.retry.secs_since_valid_hangup = (uint16_t)(hang > 65000 ? 65000 : hang + 0.999);
    U.retry.jitter_percent = 30;
}

size_t pool_count(bool serving_only)
{
    size_t n = 0;
    for (const struct list *p = U.conns.next; p != &U.conns; p = p->next) {
        const struct upconn *c = list_entry(p, struct upconn, node);
        n += !serving_only || !c->retiring;
    }
    return n;
}

static struct pool_slot slot_of(const struct upconn *c)
{
    return (struct pool_slot){.used = c->win.n, .serving = conn_serving(c), .persistent = c == U.primary};
}

/* Every connection as pool_policy.h sees it, in U.slots (grown, never shrunk). */
static struct pool_view view(void)
{
    size_t n = 0;
    for (struct list *p = U.conns.next; p != &U.conns; p = p->next, n++) {
        if (n == U.slot_cap) {
            size_t cap = U.slot_cap ? 2 * U.slot_cap : 16;
            U.slots = realloc(U.slots, cap * sizeof *U.slots);
            U.slot_conn = realloc(U.slot_conn, cap * sizeof *U.slot_conn);
            if (!U.slots || !U.slot_conn)
                abort();
            U.slot_cap = cap;
        }
        U.slot_conn[n] = list_entry(p, struct upconn, node);
        U.slots[n] = slot_of(U.slot_conn[n]);
    }
    return (struct pool_view){.slot = U.slots, .n = n, .window = (size_t)U.cfg->max_inflight};
}

static void schedule_reconnect(void)
{
    if (U.stopping || U.primary || U.opening)
        return;
    if (U.auth_rejected) {
        /* Hammering a gateway that refuses the token helps nobody: the backoff resets
         * only after a successful authentication. */
        timer_after(&U.retry_timer, U.cfg->reconnect_max, pool_connect_now);
        return;
    }
    char conceal;
    unsigned ms = lws_retry_get_delay_ms(U.ctx, &U.retry, &U.retry_count, &conceal);
    timer_after(&U.retry_timer, ms / 1000.0, pool_connect_now);
}

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

void pool_down(void)
{
    log_down();
    schedule_reconnect();
}

bool pool_open(enum opened_for why, char *whynot, size_t whylen)
{
    if (U.opening || U.stopping)
        return false;
    U.opening = conn_start(why, whynot, whylen);
    if (!U.opening)
        return false;
    U.opened[why]++;
    return true;
}

void pool_connect_now(struct timer *t)
{
    (void)t;
    if (U.stopping || U.primary || U.opening)
        return;
    if (!pool_open(U.ever_connected ? FOR_RECONNECT : FOR_STARTUP, U.reason, sizeof U.reason))
        pool_down();
}

/* Takes nothing new; it goes once nothing live is left on it (pool_check_retiring), or
 * at --drain-timeout. */
static void drain_expired(struct timer *t)
{
    struct upconn *c = timer_owner(t, struct upconn, drain_timer);
    char msg[200];
    snprintf(msg, sizeof msg, "the gateway connection was rotated and the request did not finish within "
                              "--drain-timeout (%.3g s)", U.cfg->drain_timeout);
    mux_fail_window(&c->win, 502, "upstream-disconnected", msg);
    dial_close(&c->dial);
}

void pool_retire(struct upconn *c, const char *why)
{
    if (c->retiring)
        return;
    c->retiring = true;
    c->closed_as = CLOSED_ROTATED;
    timer_cancel(&c->idle_timer);
    log_info("connection #%u takes no new requests (%s); it closes once its live ones are done", c->serial, why);
    timer_after(&c->drain_timer, U.cfg->drain_timeout, drain_expired);
    pool_check_retiring(c);
}

void pool_check_retiring(struct upconn *c)
{
    if (c->retiring && !c->dial.closing && mux_window_live(&c->win) == 0) {
        log_info("closing connection #%u (nothing left to wait for)", c->serial);
        dial_close(&c->dial);
    }
}

static void idle_expired(struct timer *t)
{
    struct upconn *c = timer_owner(t, struct upconn, idle_timer);
    struct pool_slot s = slot_of(c);
    if (!pool_idle(&s))
        return;
    log_info("closing overflow connection #%u: nothing in flight for %g s (--connection-idle)", c->serial,
             U.cfg->connection_idle);
    conn_goodbye(c, CLOSED_IDLE);
}

/* An overflow connection with an empty window is closed after --connection-idle. */
void pool_window_changed(struct upconn *c)
{
    if (c->retiring) {
        pool_check_retiring(c);
        return;
    }
    struct pool_slot s = slot_of(c);
    if (pool_idle(&s) && !timer_pending(&c->idle_timer))
        timer_after(&c->idle_timer, U.cfg->connection_idle, idle_expired);
}

void pool_sent_on(struct upconn *c, struct request *req)
{
    c->carried++;
    timer_cancel(&c->idle_timer);
    mux_sent(req);
}

/* Placement: a waiting request goes to the serving connection with the most room in
 * its window (pool_place), which can start it soonest.  Every serving connection with
 * something half-written or an auth frame due is asked to write, too.  False when
 * requests wait and every window is full. */
bool pool_place_waiting(void)
{
    struct pool_view v = view();
    for (size_t i = 0; i < v.n; i++) {
        struct upconn *c = U.slot_conn[i];
        if (v.slot[i].serving && (c->sending || c->auth_frame_due))
            conn_want_write(c);
    }
    if (mux_queue_empty())
        return true;
    long best = pool_place(&v);
    if (best < 0)
        return false;
    conn_want_write(U.slot_conn[best]);
    return true;
}

/* Every window is full and requests wait: one more connection, if the policy says so. */
void pool_overflow(void)
{
    struct pool_demand d = {
        .requests_wait = !mux_queue_empty(), .room = false, .have_persistent = U.primary != NULL,
        .opening = U.opening != NULL, .open_conns = pool_count(true),
        .max_connections = (size_t)U.cfg->max_connections, .now = now_mono(), .not_before = U.overflow_not_before,
    };
    if (!pool_should_open_overflow(&d))
        return;
    char whynot[512];
    if (!pool_open(FOR_OVERFLOW, whynot, sizeof whynot))
        log_warn("cannot open an overflow connection: %s", whynot);
    else
        log_info("opening overflow connection #%u: every window is full and %zu requests wait", U.opening->serial,
                 mux_queued());
}

static void overflow_retry(struct timer *t)
{
    (void)t;
    upstream_kick();
}

/* c authenticated (or needs no authentication): it becomes the persistent connection,
 * replaces the one a rotation opened it for, or serves as an overflow one. */
static void take_in(struct upconn *c)
{
    struct upconn *replaced = c->why == FOR_ROTATION ? U.replacing : NULL;
    U.replacing = NULL;
    if (replaced) {
        if (replaced == U.primary)
            U.primary = c;
        replaced->rotated_out = true;
        pool_retire(replaced, "rotated out");
    } else if (!U.primary) {
        /* A rotation's replacement that finds the one it was to replace lost is what
         * brings the upstream back: a reconnect. */
        if (c->why == FOR_ROTATION)
            U.reconnects++;
        U.primary = c;
    }
}

void pool_ready(struct upconn *c, const char *era, const char *workspace)
{
    c->state = UP_READY;
    if (c == U.opening)
        U.opening = NULL;
    bool first = !U.primary;
    take_in(c);
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
                 c->serial, pool_count(true));
        pool_window_changed(c);
    }
}

/* c is going: out of the set, and what it was recorded in loss for pool_after_loss
 * (c is freed in between). */
void pool_unlink(struct upconn *c, struct conn_loss *loss)
{
    loss->was_primary = c == U.primary;
    loss->was_opening = c == U.opening;
    list_del(&c->node);
    if (loss->was_primary)
        U.primary = NULL;
    if (loss->was_opening)
        U.opening = NULL;
    if (c == U.replacing)
        U.replacing = NULL;
    /* What readiness hung on: the persistent connection, or an attempt made while
     * none serves.  An overflow connection failing never speaks for readiness. */
    bool counts = (loss->was_primary || (loss->was_opening && c->why != FOR_OVERFLOW)) && !U.stopping;
    if (counts) {
        snprintf(U.reason, sizeof U.reason, "%s", c->dial.reason);
        U.auth_rejected = c->auth_refused;
    }
    loss->as = U.stopping ? CLOSED_SHUTDOWN : c->state < UP_READY ? CLOSED_FAILED
             : c->closed_as == CLOSED_IDLE || c->closed_as == CLOSED_ROTATED ? c->closed_as : CLOSED_LOST;
    U.closed[loss->as]++;
    loss->why = c->why;
    loss->was_retiring = c->retiring;
    loss->serial = c->serial;
    loss->ever_ready = c->state == UP_READY;
    snprintf(loss->reason, sizeof loss->reason, "%s", c->dial.reason);
}

/* The serving connection with the most room takes over from a persistent one that
 * is gone; overflow ones are kept, so the loss costs no gap in service. */
static void promote(const struct conn_loss *loss)
{
    struct pool_view v = view();
    long i = pool_promote(&v);
    U.primary = i < 0 ? NULL : U.slot_conn[i];
    if (U.primary) {
        timer_cancel(&U.primary->idle_timer);
        log_warn("the persistent connection #%u was lost (%s); overflow connection #%u takes its place",
                 loss->serial, loss->reason, U.primary->serial);
    }
}

/* After a connection went (not while stopping): an overflow attempt that failed backs
 * off, a lost persistent one is replaced by promotion.  True when something serves or
 * is being opened (the caller kicks), false when a reconnect is due. */
bool pool_after_loss(const struct conn_loss *loss)
{
    if (loss->was_opening && loss->why == FOR_OVERFLOW) {
        char conceal;
        unsigned ms = lws_retry_get_delay_ms(U.ctx, &U.retry, &U.overflow_retry_count, &conceal);
        U.overflow_not_before = now_mono() + ms / 1000.0;
        log_warn("could not open an overflow connection (#%u): %s; the others keep serving, retrying in %.1f s",
                 loss->serial, loss->reason, ms / 1000.0);
        timer_after(&U.overflow_timer, ms / 1000.0, overflow_retry);
    } else if (loss->ever_ready && !loss->was_primary && !(loss->was_opening && loss->why == FOR_ROTATION)) {
        log_info("%s connection #%u closed (%s)", loss->why == FOR_OVERFLOW ? "overflow" : "retired", loss->serial,
                 loss->as == CLOSED_IDLE ? "idle" : loss->as == CLOSED_ROTATED ? "rotated out" : loss->reason);
    }
    if (loss->was_primary)
        promote(loss);
    if (U.primary || U.opening) {
        if (!U.primary && U.opening)
            log_warn("upstream connection lost (%s); its replacement is being set up", U.reason);
        return true;
    }
    return false;
}
