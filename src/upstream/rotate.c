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
bool rotate_draining(void)
{
    for (const struct list *p = U.conns.next; p != &U.conns; p = p->next)
        if (list_entry(p, struct upconn, node)->rotated_out)
            return true;
    return false;
}

static void retry_rotation(struct timer *t)
{
    (void)t;
    rotate_done();
}

static void retry_later(void)
{
    snprintf(U.rotate_pending, sizeof U.rotate_pending, "retrying a failed rotation");
    timer_after(&U.rotate_retry_timer, U.cfg->reconnect_max, retry_rotation);
}

void upstream_rotate(const char *why)
{
    if (U.stopping || !U.primary)
        return; /* nothing established to replace: the next attempt picks the new settings up */
    if (U.opening || rotate_draining()) {
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
    if (!pool_open(FOR_ROTATION, whynot, sizeof whynot)) {
        log_warn("rotation failed, keeping connection #%u: %s", U.primary->serial, whynot);
        retry_later();
        return;
    }
    U.replacing = U.primary;
}

/* Runs a rotation that was asked for while another was under way. */
void rotate_done(void)
{
    if (U.rotate_pending[0] && !U.opening && !rotate_draining()) {
        char why[160];
        snprintf(why, sizeof why, "%s", U.rotate_pending);
        U.rotate_pending[0] = '\0';
        upstream_rotate(why);
    }
}

/* A connection went: a failed rotation is retried later; a rotation that waited for
 * a retiring one to close runs now. */
void rotate_after_loss(const struct conn_loss *loss)
{
    if (loss->was_opening && loss->why == FOR_ROTATION) {
        log_warn("rotation failed, keeping connection #%u: %s", U.primary ? U.primary->serial : 0, loss->reason);
        if (!U.rotate_pending[0])
            snprintf(U.rotate_pending, sizeof U.rotate_pending, "retrying a failed rotation");
        timer_after(&U.rotate_retry_timer, U.cfg->reconnect_max, retry_rotation);
    }
    if (loss->was_retiring && U.rotate_pending[0])
        timer_after(&U.rotate_retry_timer, 0, retry_rotation); /* one was waiting for this one */
}

/* Nothing serves and nothing is being opened: the fresh connection makes any rotation
 * moot. */
void rotate_forget(void)
{
    U.rotate_pending[0] = '\0';
    timer_cancel(&U.rotate_retry_timer);
}

/* A window full of requests nobody waits for any more (timed out, caller gone) while
 * others wait: the gateway has no cancel, so only a new socket frees it (issue 5).
 * The persistent connection is replaced make-before-break; an overflow one retires. */
void rotate_check(struct timer *t)
{
    (void)t;
    if (U.stopping || mux_queue_empty() || U.opening || upstream_draining())
        return; /* one at a time: the replacement under way frees the window */
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &U.conns) {
        struct upconn *c = list_entry(pos, struct upconn, node);
        if (!conn_serving(c) || !mux_window_blocked_by_abandoned(&c->win))
            continue;
        if (c == U.primary)
            upstream_rotate("requests nobody waits for any more hold the gateway's window");
        else
            pool_retire(c, "requests nobody waits for any more hold its window");
    }
}

/* A connection that presented a token older than the current one: refreshed in-band
 * (V2), else replaced (the persistent one) or retired (an overflow one). */
void rotate_stale_token(struct upconn *c)
{
    if (auth_refreshes_in_band()) {
        c->auth_frame_due = true;
        conn_want_write(c);
    } else if (c == U.primary) {
        upstream_rotate("the token changed (the gateway checks it only at the handshake)");
    } else {
        pool_retire(c, "the token changed");
    }
}

/* The in-band refresh of an open connection went unanswered. */
void rotate_reauth_timed_out(struct timer *t)
{
    struct upconn *c = timer_owner(t, struct upconn, reauth_timer);
    if (c->reauthenticating) {
        c->reauthenticating = false;
        snprintf(U.reauth_status, sizeof U.reauth_status, "no reply to the re-authentication frame");
        log_warn("no reply to the re-authentication frame on #%u; rotating instead", c->serial);
        if (c == U.primary)
            upstream_rotate("re-authentication unanswered");
        else
            pool_retire(c, "re-authentication unanswered");
    }
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

/* Re-reads --token-file: true when some connection presents an older token than the
 * one read last (this read, or a new connection's, changed it). */
static bool token_changed(const char *why)
{
    if (!U.cfg->token_file) {
        log_info("%s: no --token-file to re-read", why);
        return false;
    }
    unsigned gen = U.token_gen;
    char err[256];
    if (auth_reread_token(err, sizeof err)) {
        log_error("%s: %s; keeping the current token", why, err);
        return false;
    }
    if (gen == U.token_gen && !stale_connections()) {
        log_info("%s: token unchanged", why);
        return false;
    }
    return true;
}

void upstream_reload_token(const char *why)
{
    if (!token_changed(why))
        return;
    if (!U.primary) {
        log_info("%s: new token read; the next connection uses it", why);
        return;
    }
    struct list *pos, *tmp;
    if (auth_refreshes_in_band()) {
        /* Our windows never exceed the gateway's, so its readers are not stalled and
         * read the refresh at once (ref §3.2, §6.2). */
        log_info("%s: new token read; re-authenticating in-band on every connection", why);
        list_for_each_safe(pos, tmp, &U.conns) {
            struct upconn *c = list_entry(pos, struct upconn, node);
            if (c->state == UP_READY && !c->retiring && c->dial.wsi)
                rotate_stale_token(c);
        }
        return;
    }
    /* The persistent connection is replaced make-before-break; overflow ones carry
     * the old token, so they take nothing new and go when their calls are done
     * (new ones open on demand, with the new token). */
    list_for_each_safe(pos, tmp, &U.conns) {
        struct upconn *c = list_entry(pos, struct upconn, node);
        if (c != U.primary && c->state == UP_READY && !c->retiring)
            pool_retire(c, "the token changed");
    }
    upstream_rotate("the token changed (the gateway checks it only at the handshake)");
}
