/* Callers' gateway identities (issue 17, docs/security.md "Policies"): a pool per key
 * -- a caller's upstream_token_file key or a forward caller's own credential -- with
 * connections of its own, era detection and authentication as tgbridge's own pool.
 * A pool opens on first use and closes after --connection-idle with nothing queued or
 * in flight.  Bounds: --max-caller-pools pools (past it the least recently used idle
 * one closes, else 503 too-many-identities), a caller's max_connections each, and
 * --max-upstream-connections over every identity.  A key the gateway rejects fails its
 * waiting calls with 401 auth-failed and is not tried again for REJECTED_KEY_PAUSE. */
#include "upstream_int.h"
#include "access.h"
#include "log.h"
#include "mux.h"
#include "policy.h"
#include "redact.h"
#include "util.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* No reconnect loop per bad key: its callers hear 401 at once for this long. */
#define REJECTED_KEY_PAUSE 30.0

void pools_init(void)
{
    list_init(&U.callers);
    U.own.lane = NULL; /* the mux's own lane */
}

bool pools_is_own(const struct upool *P)
{
    return P == &U.own;
}

struct upool *pools_next(const struct upool *P)
{
    const struct list *next = pools_is_own(P) ? U.callers.next : P->node.next;
    return next == &U.callers ? NULL : list_entry(next, struct upool, node);
}

bool pools_may_open(const struct upool *P)
{
    /* the own pool's persistent connection is never held back */
    if (pools_is_own(P) && !P->primary && !P->opening)
        return true;
    return upstream_connection_count() < (size_t)U.cfg->max_upstream_connections;
}

/* Nothing waits in its lane and nothing is live in its windows. */
static bool pool_idle_now(const struct upool *P)
{
    if (mux_lane_queued(P->lane))
        return false;
    for (const struct list *p = P->conns.next; p != &P->conns; p = p->next)
        if (mux_window_live(&list_entry(p, struct upconn, node)->win))
            return false;
    return true;
}

static void pool_free(struct upool *P)
{
    timer_cancel(&P->retry_timer);
    timer_cancel(&P->overflow_timer);
    timer_cancel(&P->rotate_timer);
    timer_cancel(&P->rotate_retry_timer);
    timer_cancel(&P->idle_timer);
    list_del(&P->node);
    U.ncallers--;
    secret_remove(P->key);
    explicit_bzero(P->key, P->key_len);
    free(P->key);
    free(P);
}

/* P takes nothing new: its connections close -- at once (drain false: nothing is in
 * flight) or once their calls are done, within --drain-timeout (pool_retire) -- and
 * the last one gone frees P; with none, P is freed now. */
static void pool_close(struct upool *P, const char *why, bool drain)
{
    P->closing = true;
    timer_cancel(&P->idle_timer);
    if (list_empty(&P->conns)) {
        log_debug("caller %s's gateway identity forgotten (%s)", P->caller, why);
        pool_free(P);
        return;
    }
    log_info("closing caller %s's gateway connections (%s)", P->caller, why);
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &P->conns) {
        struct upconn *c = list_entry(pos, struct upconn, node);
        if (c->state != UP_READY || !c->dial.wsi)
            dial_abort(&c->dial, "%s", why);
        else if (drain)
            pool_retire(c, why);
        else
            conn_goodbye(c, CLOSED_IDLE);
    }
}

static void idle_expired(struct timer *t)
{
    struct upool *P = timer_owner(t, struct upool, idle_timer);
    double now = now_mono();
    if (!pool_idle_now(P))
        return;
    if (P->refused_until > now) {
        timer_after(&P->idle_timer, P->refused_until - now, idle_expired);
        return;
    }
    char why[96];
    snprintf(why, sizeof why, "nothing in flight for %g s (--connection-idle)", U.cfg->connection_idle);
    pool_close(P, why, false);
}

void pools_idle_check(struct upool *P)
{
    if (pools_is_own(P) || P->closing)
        return;
    if (!pool_idle_now(P))
        timer_cancel(&P->idle_timer);
    else if (!timer_pending(&P->idle_timer))
        timer_after(&P->idle_timer, U.cfg->connection_idle, idle_expired);
}

void pools_kick(struct upool *P)
{
    if (!pools_is_own(P) && !P->closing && !timer_pending(&P->retry_timer))
        pool_connect(P);
}

/* A connection that presented no identity of ours any more is gone: one waiting for
 * room under --max-upstream-connections may open now. */
static void kick_waiting(void)
{
    for (struct upool *P = pools_next(&U.own); P; P = pools_next(P))
        if (!P->primary && !P->opening && !P->closing && mux_lane_queued(P->lane)) {
            pools_kick(P);
            if (!pools_may_open(P))
                return;
        }
}

/* The gateway refused the key: its waiting calls hear so, and it rests. */
static void key_rejected(struct upool *P)
{
    P->refused_until = now_mono() + REJECTED_KEY_PAUSE;
    char msg[700];
    snprintf(msg, sizeof msg, "the gateway rejected caller %s's key (%s); it is not tried again for %g s",
             P->caller, P->reason, REJECTED_KEY_PAUSE);
    log_warn("%s", msg);
    mux_fail_lane(P->lane, 401, "auth-failed", msg);
    timer_cancel(&P->retry_timer);
    timer_cancel(&P->idle_timer);
    timer_after(&P->idle_timer, REJECTED_KEY_PAUSE, idle_expired);
}

void pools_after_loss(struct upool *P, const struct conn_loss *loss)
{
    if (U.stopping || P->closing) {
        if (!pools_is_own(P) && list_empty(&P->conns))
            pool_free(P);
        if (!U.stopping)
            kick_waiting();
        return;
    }
    rotate_after_loss(P, loss);
    if (pool_after_loss(P, loss)) {
        upstream_kick_pool(P);
    } else if (P->auth_rejected) {
        rotate_forget(P);
        key_rejected(P);
    } else {
        rotate_forget(P);
        if (mux_lane_queued(P->lane))
            pool_down(P); /* back off, and try again while its calls wait */
        pools_idle_check(P);
    }
    kick_waiting();
}

/* The policy no longer gives P's caller this key: what waits for it is refused, and
 * its calls in flight have --drain-timeout. */
static void withdraw(struct upool *P)
{
    char msg[200];
    snprintf(msg, sizeof msg, "the policy no longer gives caller %s this gateway identity", P->caller);
    mux_fail_lane(P->lane, 403, "forbidden-by-policy", msg);
    pool_close(P, msg, true);
}

void upstream_policy_changed(void)
{
    for (struct upool *P = pools_next(&U.own), *next; P; P = next) {
        next = pools_next(P);
        struct gateway_key k;
        if (P->closing)
            continue;
        if (policy_gateway_key(P->caller, P->key, P->key_len, &k) && k.len == P->key_len &&
            (!k.len || access_token_matches(P->key, k.key, k.len))) {
            P->max_connections = k.max_connections ? k.max_connections : 2;
            continue;
        }
        withdraw(P);
    }
}

void pools_stop(void)
{
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &U.callers) {
        struct upool *P = list_entry(pos, struct upool, node);
        if (list_empty(&P->conns))
            pool_free(P);
    }
}

/* ---- finding a key's pool ---- */

static struct upool *find(const struct gateway_key *k)
{
    for (struct upool *P = pools_next(&U.own); P; P = pools_next(P))
        if (!P->closing && P->key_len == k->len && (!k->len || access_token_matches(P->key, k->key, k->len)))
            return P;
    return NULL;
}

/* A pool that only remembers a rejected key: no connection, 401 at once for a while. */
static bool only_a_rejection(const struct upool *P, double now)
{
    return P->refused_until > now && list_empty(&P->conns);
}

/* Room for one more pool: the least recently used idle one closes if need be.  A
 * rejected key holds no slot (garbage keys must not lock the others out); at most as
 * many are remembered as there are slots, the oldest forgotten first. */
static bool make_room(void)
{
    double now = now_mono();
    size_t open = 0, rejected = 0;
    struct upool *oldest_rejected = NULL;
    for (struct upool *P = pools_next(&U.own); P; P = pools_next(P)) {
        if (P->closing)
            continue;
        if (only_a_rejection(P, now)) {
            rejected++;
            oldest_rejected = oldest_rejected ? oldest_rejected : P;
        } else {
            open++;
        }
    }
    if (rejected >= (size_t)U.cfg->max_caller_pools && oldest_rejected)
        pool_free(oldest_rejected);
    if (open < (size_t)U.cfg->max_caller_pools && upstream_connection_count() < (size_t)U.cfg->max_upstream_connections)
        return true;
    for (struct upool *P = pools_next(&U.own); P; P = pools_next(P))
        if (!P->closing && !only_a_rejection(P, now) && pool_idle_now(P)) {
            pool_close(P, "the least recently used idle identity, making room for another", false);
            return true;
        }
    return false;
}

static struct upool *pool_new(const struct gateway_key *k)
{
    struct upool *P = calloc(1, sizeof *P);
    if (!P || !(P->key = malloc(k->len + 1)))
        abort();
    if (k->len) /* none: a forward caller that presented none calls as the gateway's anonymous */
        memcpy(P->key, k->key, k->len);
    P->key[k->len] = '\0';
    P->key_len = k->len;
    secret_add(P->key);
    snprintf(P->caller, sizeof P->caller, "%s", k->caller ? k->caller : "?");
    P->max_connections = k->max_connections ? k->max_connections : 2;
    lane_init(&P->own_lane, P);
    P->lane = &P->own_lane;
    upstream_pool_init(P);
    list_add_tail(&U.callers, &P->node);
    U.ncallers++;
    log_info("caller %s: a gateway identity of its own (%zu in use)", P->caller, U.ncallers);
    return P;
}

static struct lane *refuse(struct refusal *no, unsigned status, const char *type)
{
    no->status = status;
    no->type = type;
    return NULL;
}

struct lane *upstream_lane_for(const struct gateway_key *k, struct refusal *no)
{
    double now = now_mono();
    struct upool *P = find(k);
    if (P && P->refused_until > now) {
        snprintf(no->message, sizeof no->message, "the gateway rejected caller %s's key; it is tried again in %.0f s",
                 P->caller, P->refused_until - now);
        return refuse(no, 401, "auth-failed");
    }
    if (!P) {
        if (!make_room()) {
            U.identities_refused++;
            snprintf(no->message, sizeof no->message,
                     "caller %s: no room for another gateway identity (--max-caller-pools %d, "
                     "--max-upstream-connections %d), and none is idle", k->caller, U.cfg->max_caller_pools,
                     U.cfg->max_upstream_connections);
            return refuse(no, 503, "too-many-identities");
        }
        P = pool_new(k);
    }
    P->last_used = now;
    list_del(&P->node); /* most recently used last */
    list_add_tail(&U.callers, &P->node);
    return P->lane;
}

void upstream_caller_pools(struct buf *out)
{
    buf_puts(out, "[");
    double now = now_mono();
    for (struct upool *P = pools_next(&U.own); P; P = pools_next(P)) {
        buf_puts(out, P == pools_next(&U.own) ? "{\"caller\":" : ",{\"caller\":");
        buf_json_string(out, P->caller, strlen(P->caller));
        buf_printf(out, ",\"state\":\"%s\",\"era\":", P->closing ? "closing" : P->primary ? "ready"
                   : P->refused_until > now ? "key-rejected" : P->opening ? "opening" : "idle");
        buf_json_string(out, P->era, strlen(P->era));
        buf_printf(out, ",\"queued\":%zu,\"idle_seconds\":%.1f,\"connection_list\":", mux_lane_queued(P->lane),
                   now - P->last_used);
        upstream_pool_connections(P, out);
        buf_puts(out, "}");
    }
    buf_puts(out, "]");
}

size_t upstream_caller_pool_count(void)
{
    return U.ncallers;
}

unsigned long long upstream_identities_refused(void)
{
    return U.identities_refused;
}

const char *upstream_lane_reason(struct lane *l)
{
    const struct upool *P = l && l->owner ? l->owner : &U.own;
    return P->primary ? "" : P->reason;
}
