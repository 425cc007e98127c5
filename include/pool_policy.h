/* The pool's decisions (docs/operations.md "Connections and flow control") as pure
 * functions: which connection takes the next request, when one more is opened, when an
 * overflow one is idle, which one takes over from a lost persistent one, and the
 * reconnect backoff.  No I/O, no clock, no globals: the upstream describes its
 * connections in a pool_view and acts on the verdict (src/upstream/pool.c);
 * tests/unit/test_pool_policy.c checks each rule. */
#ifndef TGB_POOL_POLICY_H
#define TGB_POOL_POLICY_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* One connection as the pool sees it. */
struct pool_slot {
    size_t used;       /* requests in its window */
    bool serving;      /* ready and taking new requests (not retiring, not closing) */
    bool persistent;   /* the persistent connection */
};

/* Every connection, in the order they were opened. */
struct pool_view {
    const struct pool_slot *slot;
    size_t n;
    size_t window;     /* each connection's window (--max-inflight) */
};

/* The serving connection with the most room in its window, which can start the next
 * request soonest; the persistent one when they tie, else the earliest opened.  -1
 * when every window is full (or nothing serves). */
long pool_place(const struct pool_view *v);

/* Whether to open one more connection now. */
struct pool_demand {
    bool requests_wait;     /* requests are queued */
    bool room;              /* some serving window has room (pool_place found one) */
    bool have_persistent;   /* overflow only extends a working upstream */
    bool opening;           /* one connection is opened at a time */
    size_t open_conns;      /* connections not retiring, the opening one included */
    size_t max_connections; /* --max-connections */
    double now, not_before; /* a failed overflow attempt backs off until not_before */
};
bool pool_should_open_overflow(const struct pool_demand *d);

/* An overflow connection that serves with an empty window is idle: it is closed after
 * --connection-idle.  The persistent one never is. */
bool pool_idle(const struct pool_slot *s);

/* Who takes over when the persistent connection is lost: the serving one with the
 * most room (the earliest opened when they tie); -1 when none serves. */
long pool_promote(const struct pool_view *v);

/* The reconnect backoff in milliseconds (lws adds its jitter and walks the table):
 * from min_s doubling, capped at and ending on max_s, unless cap steps come first; a
 * step is never below 1 ms; min_s <= 0 means 50 ms.  Returns the steps written. */
size_t pool_backoff_table(double min_s, double max_s, uint32_t *ms, size_t cap);
#endif
