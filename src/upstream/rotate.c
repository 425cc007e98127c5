/* Rotation (issue 5): the persistent connection replaced make-before-break, one
 * rotation at a time; and token reload (SIGHUP): a V2 gateway re-authenticates in-band,
 * otherwise connections are rotated or retired.  It opens and retires connections
 * through pool.c. */
#include "upstream_int.h"
#include "log.h"
#include "mux.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One make-before-break rotation at a time: a persistent connection it replaced is
 * still finishing its calls.  Retiring overflow connections do not count. */
bool rotate_draining(const struct upool *P)
{
    for (const struct list *p = P->conns.next; p != &P->conns; p = p->next)
        if (list_entry(p, struct upconn, node)->rotated_out)
            return true;
    return false;
}

static void retry_rotation(struct timer *t)
{
    rotate_done(timer_owner(t, struct upool, rotate_retry_timer));
}

static void retry_later(struct upool *P)
{
    snprintf(P->rotate_pending, sizeof P->rotate_pending, "retrying a failed rotation");
    timer_after(&P->rotate_retry_timer, U.cfg->reconnect_max, retry_rotation);
}

void upstream_rotate(const char *why)
{
    pool_rotate(&U.own, why);
}

void pool_rotate(struct upool *P, const char *why)
{
    if (U.stopping || !P->primary)
        return; /* nothing established to replace: the next attempt picks the new settings up */
    if (P->opening || rotate_draining(P)) {
        /* One rotation at a time (and one opening at a time); this one runs when the
         * current one is done. */
        snprintf(P->rotate_pending, sizeof P->rotate_pending, "%s", why);
        return;
    }
    P->rotate_pending[0] = '\0';
    timer_cancel(&P->rotate_retry_timer);
    P->rotations++;
    log_info("rotating the gateway connection (make-before-break): %s", why);
    char whynot[512];
    if (!pool_open(P, FOR_ROTATION, whynot, sizeof whynot)) {
        log_warn("rotation failed, keeping connection #%u: %s", P->primary->serial, whynot);
        retry_later(P);
        return;
    }
    P->replacing = P->primary;
}

/* Runs a rotation that was asked for while another was under way. */
void rotate_done(struct upool *P)
{
    if (P->rotate_pending[0] && !P->opening && !rotate_draining(P)) {
        char why[160];
        snprintf(why, sizeof why, "%s", P->rotate_pending);
        P->rotate_pending[0] = '\0';
        pool_rotate(P, why);
    }
}

/* A connection went: a failed rotation is retried later; a rotation that waited for
 * a retiring one to close runs now. */
void rotate_after_loss(struct upool *P, const struct conn_loss *loss)
{
    if (loss->was_opening && loss->why == FOR_ROTATION) {
        log_warn("rotation failed, keeping connection #%u: %s", P->primary ? P->primary->serial : 0, loss->reason);
        if (!P->rotate_pending[0])
            snprintf(P->rotate_pending, sizeof P->rotate_pending, "retrying a failed rotation");
        timer_after(&P->rotate_retry_timer, U.cfg->reconnect_max, retry_rotation);
    }
    if (loss->was_retiring && P->rotate_pending[0])
        timer_after(&P->rotate_retry_timer, 0, retry_rotation); /* one was waiting for this one */
}

/* Nothing serves and nothing is being opened: the fresh connection makes any rotation
 * moot. */
void rotate_forget(struct upool *P)
{
    P->rotate_pending[0] = '\0';
    timer_cancel(&P->rotate_retry_timer);
}

/* A window full of requests nobody waits for any more (timed out, caller gone) while
 * others wait: the gateway has no cancel, so only a new socket frees it (issue 5).
 * The persistent connection is replaced make-before-break; an overflow one retires. */
void rotate_check(struct timer *t)
{
    struct upool *P = timer_owner(t, struct upool, rotate_timer);
    if (U.stopping || !mux_lane_queued(P->lane) || P->opening || pool_draining(P))
        return; /* one at a time: the replacement under way frees the window */
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &P->conns) {
        struct upconn *c = list_entry(pos, struct upconn, node);
        if (!conn_serving(c) || !mux_window_blocked_by_abandoned(&c->win))
            continue;
        if (c == P->primary)
            pool_rotate(P, "requests nobody waits for any more hold the gateway's window");
        else
            pool_retire(c, "requests nobody waits for any more hold its window");
    }
}

/* A connection that presented a token older than the current one: refreshed in-band
 * (V2), else replaced (the persistent one) or retired (an overflow one). */
void rotate_stale_token(struct upconn *c)
{
    struct upool *P = c->pool;
    if (auth_refreshes_in_band(P)) {
        c->auth_frame_due = true;
        conn_want_write(c);
    } else if (c == P->primary) {
        pool_rotate(P, "the token changed (the gateway checks it only at the handshake)");
    } else {
        pool_retire(c, "the token changed");
    }
}

/* The in-band refresh of an open connection went unanswered. */
void rotate_reauth_timed_out(struct timer *t)
{
    struct upconn *c = timer_owner(t, struct upconn, reauth_timer);
    struct upool *P = c->pool;
    if (c->reauthenticating) {
        c->reauthenticating = false;
        snprintf(P->reauth_status, sizeof P->reauth_status, "no reply to the re-authentication frame");
        log_warn("no reply to the re-authentication frame on #%u; rotating instead", c->serial);
        if (c == P->primary)
            pool_rotate(P, "re-authentication unanswered");
        else
            pool_retire(c, "re-authentication unanswered");
    }
}

/* A connection open, or opening, with a token older than the one read last. */
static bool stale_connections(const struct upool *P)
{
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &P->conns) {
        struct upconn *c = list_entry(pos, struct upconn, node);
        if (!c->retiring && c->token_gen != P->token_gen)
            return true;
    }
    return false;
}

/* Re-reads --token-file: true when some connection presents an older token than the
 * one read last (this read, or a new connection's, changed it). */
static bool token_changed(struct upool *P, const char *why)
{
    if (!U.cfg->token_file) {
        log_info("%s: no --token-file to re-read", why);
        return false;
    }
    unsigned gen = P->token_gen;
    char err[256];
    if (auth_reread_token(P, err, sizeof err)) {
        log_error("%s: %s; keeping the current token", why, err);
        return false;
    }
    if (gen == P->token_gen && !stale_connections(P)) {
        log_info("%s: token unchanged", why);
        return false;
    }
    return true;
}

void upstream_reload_token(const char *why)
{
    struct upool *P = &U.own;
    if (!token_changed(P, why))
        return;
    if (!P->primary) {
        log_info("%s: new token read; the next connection uses it", why);
        return;
    }
    struct list *pos, *tmp;
    if (auth_refreshes_in_band(P)) {
        /* Our windows never exceed the gateway's, so its readers are not stalled and
         * read the refresh at once (ref §3.2, §6.2). */
        log_info("%s: new token read; re-authenticating in-band on every connection", why);
        list_for_each_safe(pos, tmp, &P->conns) {
            struct upconn *c = list_entry(pos, struct upconn, node);
            if (c->state == UP_READY && !c->retiring && c->dial.wsi)
                rotate_stale_token(c);
        }
        return;
    }
    /* The persistent connection is replaced make-before-break; overflow ones carry
     * the old token, so they take nothing new and go when their calls are done
     * (new ones open on demand, with the new token). */
    list_for_each_safe(pos, tmp, &P->conns) {
        struct upconn *c = list_entry(pos, struct upconn, node);
        if (c != P->primary && c->state == UP_READY && !c->retiring)
            pool_retire(c, "the token changed");
    }
    pool_rotate(P, "the token changed (the gateway checks it only at the handshake)");
}
