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
void upstream_on_change(upstream_change_fn fn) { U.on_change = fn; }

size_t upstream_window_used(void)
{
    size_t n = 0;
    for (const struct list *p = U.conns.next; p != &U.conns; p = p->next)
        n += list_entry(p, struct upconn, node)->win.n;
    return n;
}

bool upstream_draining(void)
{
    for (const struct list *p = U.conns.next; p != &U.conns; p = p->next)
        if (list_entry(p, struct upconn, node)->retiring)
            return true;
    return false;
}

/* Placement (pool.c); when every window is full and requests wait, a window held by
 * abandoned requests is rotated away and one more connection may open
 * (docs/operations.md "Connections and flow control"). */
void upstream_kick(void)
{
    if (U.stopping || pool_place_waiting())
        return;
    timer_after(&U.rotate_timer, 0, rotate_check);
    pool_overflow();
}

int upstream_init(struct lws_context *ctx, struct config *cfg)
{
    memset(&U, 0, sizeof U);
    U.ctx = ctx;
    U.cfg = cfg;
    list_init(&U.conns);
    snprintf(U.reason, sizeof U.reason, "not connected yet");
    snprintf(U.era, sizeof U.era, "unknown");
    pool_build_retry_policy();
    upstream_status_register(cfg);
    return loop_before_poll(conn_resume_after_writes, NULL);
}

void upstream_start(void)
{
    pool_connect_now(NULL);
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
            conn_want_write(c); /* sends a close frame, then closes */
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
    return pool_count(false);
}

bool upstream_counter(size_t i, bool opened, const char **name, unsigned long long *n)
{
    if (opened ? i >= OPENED_FOR_N : i >= CLOSED_FOR_N)
        return false;
    *name = opened ? opened_names[i] : closed_names[i];
    *n = opened ? U.opened[i] : U.closed[i];
    return true;
}
