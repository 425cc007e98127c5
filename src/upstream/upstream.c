/* The upstream's public face (include/upstream.h): start, stop, the kick that places
 * waiting requests, and what /status, /readyz and /metrics read.  The rest of
 * src/upstream/ is described in upstream_int.h. */
#include "upstream_int.h"
#include "log.h"
#include "mux.h"
#include "util.h"
#include <stdio.h>
#include <string.h>

struct upstream_shared U;

const char *const opened_names[OPENED_FOR_N] = {"startup", "reconnect", "overflow", "rotation"};
const char *const closed_names[CLOSED_FOR_N] = {"idle", "rotated", "lost", "failed", "shutdown"};

/* The public face speaks of tgbridge's own identity; callers' pools are pools.c's. */
#define OWN (&U.own)

bool upstream_ready(void) { return OWN->primary != NULL; }
enum upstream_state upstream_state(void)
{
    return OWN->primary ? UP_READY : OWN->opening ? conn_state(OWN->opening) : UP_DOWN;
}
const char *upstream_reason(void) { return upstream_ready() ? "" : OWN->reason; }
const char *upstream_era(void) { return OWN->era; }
const char *upstream_default_workspace(void) { return OWN->default_ws; }
unsigned upstream_reconnects(void) { return OWN->reconnects; }
unsigned upstream_rotations(void) { return OWN->rotations; }
const char *upstream_reauth_status(void) { return OWN->reauth_status; }
void upstream_on_change(upstream_change_fn fn) { U.on_change = fn; }

size_t upstream_window_used(void)
{
    size_t n = 0;
    for (const struct upool *P = OWN; P; P = pools_next(P))
        for (const struct list *p = P->conns.next; p != &P->conns; p = p->next)
            n += list_entry(p, struct upconn, node)->win.n;
    return n;
}

bool pool_draining(const struct upool *P)
{
    for (const struct list *p = P->conns.next; p != &P->conns; p = p->next)
        if (list_entry(p, struct upconn, node)->retiring)
            return true;
    return false;
}

bool upstream_draining(void)
{
    return pool_draining(OWN);
}

/* Placement (pool.c); when every window is full and requests wait, a window held by
 * abandoned requests is rotated away and one more connection may open
 * (docs/operations.md "Connections and flow control").  A caller's pool with nothing
 * open opens its first connection here (pools.c). */
void upstream_kick_pool(struct upool *P)
{
    if (U.stopping)
        return;
    if (pool_place_waiting(P)) {
        pools_idle_check(P);
        return;
    }
    timer_after(&P->rotate_timer, 0, rotate_check);
    pool_overflow(P);
    pools_kick(P);
}

void upstream_sendable(struct lane *l)
{
    upstream_kick_pool(l && l->owner ? l->owner : OWN);
}

void upstream_pool_init(struct upool *P)
{
    list_init(&P->conns);
    snprintf(P->reason, sizeof P->reason, "not connected yet");
    snprintf(P->era, sizeof P->era, "unknown");
}

int upstream_init(struct lws_context *ctx, struct config *cfg)
{
    memset(&U, 0, sizeof U);
    U.ctx = ctx;
    U.cfg = cfg;
    upstream_pool_init(OWN);
    pools_init();
    pool_build_retry_policy();
    discover_init(&U.disc, GATEWAY_CANDIDATES);
    upstream_status_register(cfg);
    return loop_before_poll(conn_resume_after_writes, NULL);
}

void upstream_start(void)
{
    pool_connect(OWN);
}

static void stop_pool(struct upool *P)
{
    timer_cancel(&P->retry_timer);
    timer_cancel(&P->overflow_timer);
    timer_cancel(&P->rotate_timer);
    timer_cancel(&P->rotate_retry_timer);
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &P->conns) {
        struct upconn *c = list_entry(pos, struct upconn, node);
        timer_cancel(&c->reauth_timer);
        if (c->dial.wsi && c->state >= UP_AUTHENTICATING)
            conn_want_write(c); /* sends a close frame, then closes */
        else
            dial_abort(&c->dial, "tgbridge is shutting down"); /* not open yet: nobody to say goodbye to */
    }
}

void upstream_stop(void)
{
    U.stopping = true;
    for (struct upool *P = OWN, *next; P; P = next) {
        next = pools_next(P); /* a dial_abort may free a caller's pool */
        stop_pool(P);
    }
    pools_stop();
}

bool upstream_closed(void)
{
    for (const struct upool *P = OWN; P; P = pools_next(P))
        if (!list_empty(&P->conns))
            return false;
    return true;
}

void upstream_pool_connections(const struct upool *P, struct buf *out)
{
    buf_puts(out, "[");
    double now = now_mono();
    bool firstc = true;
    for (const struct list *p = P->conns.next; p != &P->conns; p = p->next) {
        const struct upconn *c = list_entry(p, struct upconn, node);
        static const char *const states[] = {"down", "resolving", "connecting", "authenticating", "ready"};
        double oldest = c->win.n ? now - list_entry(c->win.list.next, struct request, wnode)->sent_at : 0;
        buf_printf(out, "%s{\"id\":%u,\"role\":\"%s\",\"state\":\"%s\",\"opened_for\":\"%s\",\"retiring\":%s,"
                   "\"window_used\":%zu,\"oldest_request_age_seconds\":%.3f,\"requests_carried\":%llu}",
                   firstc ? "" : ",", c->serial, c == P->primary ? "persistent" : c == P->opening ? "opening" : "overflow",
                   states[conn_state(c)], opened_names[c->why], c->retiring ? "true" : "false", c->win.n, oldest,
                   c->carried);
        firstc = false;
    }
    buf_puts(out, "]");
}

void upstream_connections(struct buf *out)
{
    upstream_pool_connections(OWN, out);
}

bool upstream_gateway_known(void)
{
    return !U.cfg->gateway_discover || discover_has_choice(&U.disc);
}

size_t upstream_connection_count(void)
{
    size_t n = 0;
    for (const struct upool *P = OWN; P; P = pools_next(P))
        n += pool_count(P, false);
    return n;
}

bool upstream_counter(size_t i, bool opened, const char **name, unsigned long long *n)
{
    if (opened ? i >= OPENED_FOR_N : i >= CLOSED_FOR_N)
        return false;
    *name = opened ? opened_names[i] : closed_names[i];
    *n = opened ? U.opened[i] : U.closed[i];
    return true;
}
