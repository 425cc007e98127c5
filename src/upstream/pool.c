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

size_t pool_count(const struct upool *P, bool serving_only)
{
    size_t n = 0;
    for (const struct list *p = P->conns.next; p != &P->conns; p = p->next) {
        const struct upconn *c = list_entry(p, struct upconn, node);
        n += !serving_only || !c->retiring;
    }
    return n;
}

static struct pool_slot slot_of(const struct upconn *c)
{
    return (struct pool_slot){.used = c->win.n, .serving = conn_serving(c), .persistent = c == c->pool->primary};
}

/* Every connection as pool_policy.h sees it, in U.slots (grown, never shrunk). */
static struct pool_view view(const struct upool *P)
{
    size_t n = 0;
    for (struct list *p = P->conns.next; p != &P->conns; p = p->next, n++) {
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

static void schedule_reconnect(struct upool *P)
{
    if (U.stopping || P->primary || P->opening)
        return;
    if (P->auth_rejected) {
        /* Hammering a gateway that refuses the token helps nobody: the backoff resets
         * only after a successful authentication. */
        timer_after(&P->retry_timer, U.cfg->reconnect_max, pool_connect_now);
        return;
    }
    char conceal;
    unsigned ms = lws_retry_get_delay_ms(U.ctx, &U.retry, &P->retry_count, &conceal);
    timer_after(&P->retry_timer, ms / 1000.0, pool_connect_now);
}

/* Logs a state change once, not once per retry. */
static void log_down(struct upool *P)
{
    if (strcmp(P->last_logged_reason, P->reason)) {
        if (P->key)
            log_warn("caller %s's gateway identity not ready: %s (retrying with backoff while its calls wait)",
                     P->caller, P->reason);
        else
            log_warn("upstream not ready: %s (retrying with backoff)", P->reason);
        snprintf(P->last_logged_reason, sizeof P->last_logged_reason, "%s", P->reason);
        if (U.on_change && !P->key)
            U.on_change(false, P->reason);
    } else {
        log_debug("upstream still not ready: %s", P->reason);
    }
}

/* ---- the gateway found by default (discover.h) ---- */

/* The candidate the next attempt dials becomes cfg's gateway: every dial reads it. */
static void discover_dial(void)
{
    const char *url = gateway_candidates[discover_next(&U.disc)];
    if (!U.cfg->gateway_discover || !strcmp(U.cfg->gateway, url))
        return;
    char err[256];
    if (config_parse_gateway(url, &U.cfg->gw, err, sizeof err))
        abort(); /* a candidate of our own that does not parse */
    free(U.cfg->gateway);
    U.cfg->gateway = strdup(url);
    if (!U.cfg->gateway)
        abort();
}

static void discover_found(const char *how)
{
    if (discover_upgraded(&U.disc))
        log_info("gateway found: %s (no --gateway given; the first of %s and %s %s)", U.cfg->gateway,
                 gateway_candidates[0], gateway_candidates[1], how);
}

/* c completed its upgrade: with no gateway given, its candidate is kept. */
void pool_upgraded(struct upconn *c)
{
    if (U.cfg->gateway_discover && c->why != FOR_OVERFLOW && !c->pool->key)
        discover_found("to accept the WebSocket upgrade");
}

/* The attempt readiness hung on failed: with no gateway given, true when the next
 * candidate is dialled at once; after a whole round, P->reason gives each one's failure. */
static bool discover_after_failure(struct upool *P)
{
    if (!U.cfg->gateway_discover || U.stopping || P->key)
        return false;
    if (!discover_has_choice(&U.disc) && P->auth_rejected) /* a gateway, refusing the token */
        discover_found("to answer, refusing the token");
    bool had = discover_has_choice(&U.disc);
    snprintf(U.disc_why[discover_next(&U.disc)], sizeof U.disc_why[0], "%.*s", (int)sizeof U.disc_why[0] - 1, P->reason);
    enum discover_then then = discover_failed(&U.disc, now_mono(), U.cfg->reconnect_max);
    if (had && !discover_has_choice(&U.disc))
        log_warn("the gateway found at %s has failed for --reconnect-max (%g s): trying %s and %s again",
                 U.cfg->gateway, U.cfg->reconnect_max, gateway_candidates[0], gateway_candidates[1]);
    if (then == DISCOVER_NOW) {
        timer_after(&P->retry_timer, 0, pool_connect_now);
        return true;
    }
    if (!had)
        snprintf(P->reason, sizeof P->reason, "no gateway found (none given, so %.40s and %.40s were tried): %.180s; %.180s",
                 gateway_candidates[0], gateway_candidates[1], U.disc_why[0], U.disc_why[1]);
    return false;
}

void pool_down(struct upool *P)
{
    if (discover_after_failure(P))
        return;
    log_down(P);
    schedule_reconnect(P);
}

bool pool_open(struct upool *P, enum opened_for why, char *whynot, size_t whylen)
{
    if (P->opening || U.stopping)
        return false;
    if (!P->key)
        discover_dial(); /* a caller's pool dials the gateway the own one found */
    P->opening = conn_start(P, why, whynot, whylen);
    if (!P->opening)
        return false;
    U.opened[why]++;
    return true;
}

void pool_connect(struct upool *P)
{
    if (U.stopping || P->primary || P->opening)
        return;
    if (P->key && (!mux_lane_queued(P->lane) || !pools_may_open(P)))
        return; /* a caller's pool opens for calls that wait, within the caps */
    if (!pool_open(P, P->ever_connected ? FOR_RECONNECT : FOR_STARTUP, P->reason, sizeof P->reason))
        pool_down(P);
}

void pool_connect_now(struct timer *t)
{
    pool_connect(t ? timer_owner(t, struct upool, retry_timer) : &U.own);
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
    pools_idle_check(c->pool);
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
bool pool_place_waiting(struct upool *P)
{
    struct pool_view v = view(P);
    for (size_t i = 0; i < v.n; i++) {
        struct upconn *c = U.slot_conn[i];
        if (v.slot[i].serving && (c->sending || c->auth_frame_due))
            conn_want_write(c);
    }
    if (!mux_lane_queued(P->lane))
        return true;
    long best = pool_place(&v);
    if (best < 0)
        return false;
    conn_want_write(U.slot_conn[best]);
    return true;
}

/* Every window is full and requests wait: one more connection, if the policy says so. */
void pool_overflow(struct upool *P)
{
    struct pool_demand d = {
        .requests_wait = mux_lane_queued(P->lane) > 0, .room = false, .have_persistent = P->primary != NULL,
        .opening = P->opening != NULL, .open_conns = pool_count(P, true),
        .max_connections = P->key ? P->max_connections : (size_t)U.cfg->max_connections, .now = now_mono(),
        .not_before = P->overflow_not_before,
    };
    if (!pool_should_open_overflow(&d) || !pools_may_open(P))
        return;
    char whynot[512];
    if (!pool_open(P, FOR_OVERFLOW, whynot, sizeof whynot))
        log_warn("cannot open an overflow connection: %s", whynot);
    else
        log_info("opening overflow connection #%u%s%s: every window is full and %zu requests wait",
                 P->opening->serial, P->key ? " for caller " : "", P->key ? P->caller : "",
                 mux_lane_queued(P->lane));
}

static void overflow_retry(struct timer *t)
{
    upstream_kick_pool(timer_owner(t, struct upool, overflow_timer));
}

/* c authenticated (or needs no authentication): it becomes the persistent connection,
 * replaces the one a rotation opened it for, or serves as an overflow one. */
static void take_in(struct upconn *c)
{
    struct upool *P = c->pool;
    struct upconn *replaced = c->why == FOR_ROTATION ? P->replacing : NULL;
    P->replacing = NULL;
    if (replaced) {
        if (replaced == P->primary)
            P->primary = c;
        replaced->rotated_out = true;
        pool_retire(replaced, "rotated out");
    } else if (!P->primary) {
        /* A rotation's replacement that finds the one it was to replace lost is what
         * brings the upstream back: a reconnect. */
        if (c->why == FOR_ROTATION)
            P->reconnects++;
        P->primary = c;
    }
}

void pool_ready(struct upconn *c, const char *era, const char *workspace)
{
    struct upool *P = c->pool;
    c->state = UP_READY;
    if (c == P->opening)
        P->opening = NULL;
    bool first = !P->primary;
    take_in(c);
    P->retry_count = 0;
    P->overflow_retry_count = 0;
    P->auth_rejected = false;
    dial_settled(&c->dial);
    bool era_changed = strcmp(P->era, era) != 0;
    snprintf(P->era, sizeof P->era, "%s", era);
    if (workspace)
        snprintf(P->default_ws, sizeof P->default_ws, "%s", workspace);
    P->last_logged_reason[0] = '\0';
    if (c == P->primary && P->key) {
        log_info("caller %s's gateway identity ready (connection #%u, era %s)", P->caller, c->serial, P->era);
    } else if (c == P->primary) {
        log_info("upstream ready (connection #%u): %s auth=%s era=%s%s%s%s", c->serial, U.cfg->gateway,
                 auth_mode_name(U.cfg->auth), P->era, P->default_ws[0] ? " default_workspace=" : "", P->default_ws,
                 era_changed ? "" : " (same era as before)");
        if (first && U.on_change)
            U.on_change(true, P->era);
    } else {
        log_info("overflow connection #%u ready (%zu connections; every window was full with requests waiting)",
                 c->serial, pool_count(P, true));
        pool_window_changed(c);
    }
}

/* c is going: out of the set, and what it was recorded in loss for pool_after_loss
 * (c is freed in between). */
void pool_unlink(struct upconn *c, struct conn_loss *loss)
{
    struct upool *P = c->pool;
    loss->was_primary = c == P->primary;
    loss->was_opening = c == P->opening;
    list_del(&c->node);
    if (loss->was_primary)
        P->primary = NULL;
    if (loss->was_opening)
        P->opening = NULL;
    if (c == P->replacing)
        P->replacing = NULL;
    /* What readiness hung on: the persistent connection, or an attempt made while
     * none serves.  An overflow connection failing never speaks for readiness. */
    bool counts = (loss->was_primary || (loss->was_opening && c->why != FOR_OVERFLOW)) && !U.stopping;
    if (counts) {
        snprintf(P->reason, sizeof P->reason, "%s", c->dial.reason);
        P->auth_rejected = c->auth_refused;
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
static void promote(struct upool *P, const struct conn_loss *loss)
{
    struct pool_view v = view(P);
    long i = pool_promote(&v);
    P->primary = i < 0 ? NULL : U.slot_conn[i];
    if (P->primary) {
        timer_cancel(&P->primary->idle_timer);
        log_warn("the persistent connection #%u was lost (%s); overflow connection #%u takes its place",
                 loss->serial, loss->reason, P->primary->serial);
    }
}

/* After a connection went (not while stopping): an overflow attempt that failed backs
 * off, a lost persistent one is replaced by promotion.  True when something serves or
 * is being opened (the caller kicks), false when a reconnect is due. */
bool pool_after_loss(struct upool *P, const struct conn_loss *loss)
{
    if (loss->was_opening && loss->why == FOR_OVERFLOW) {
        char conceal;
        unsigned ms = lws_retry_get_delay_ms(U.ctx, &U.retry, &P->overflow_retry_count, &conceal);
        P->overflow_not_before = now_mono() + ms / 1000.0;
        log_warn("could not open an overflow connection (#%u): %s; the others keep serving, retrying in %.1f s",
                 loss->serial, loss->reason, ms / 1000.0);
        timer_after(&P->overflow_timer, ms / 1000.0, overflow_retry);
    } else if (loss->ever_ready && !loss->was_primary && !(loss->was_opening && loss->why == FOR_ROTATION)) {
        log_info("%s connection #%u closed (%s)", loss->why == FOR_OVERFLOW ? "overflow" : "retired", loss->serial,
                 loss->as == CLOSED_IDLE ? "idle" : loss->as == CLOSED_ROTATED ? "rotated out" : loss->reason);
    }
    if (loss->was_primary)
        promote(P, loss);
    if (P->primary || P->opening) {
        if (!P->primary && P->opening)
            log_warn("upstream connection lost (%s); its replacement is being set up", P->reason);
        return true;
    }
    return false;
}
