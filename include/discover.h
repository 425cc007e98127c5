/* The gateway found by default (issue 18, item 5; docs/configuration.md "--gateway"):
 * with no gateway given, the candidates (config.h, gateway_candidates) are tried in
 * order, and the first whose WebSocket upgrade completes is kept -- even if it then
 * refuses the token: that is reported, not skipped.  Once the kept one has been lost
 * for --reconnect-max (every reconnect failing that long), all are tried again.  An
 * explicit gateway never comes here.
 *
 * These are the decisions alone, as pure functions of the state below and the time;
 * src/upstream/pool.c feeds them the connection attempts' outcomes and dials what
 * they say. */
#ifndef TGB_DISCOVER_H
#define TGB_DISCOVER_H
#include <stdbool.h>
#include <stddef.h>

struct discover {
    size_t n;          /* candidates, tried in index order */
    size_t trying;     /* while none is kept: the one the next attempt dials */
    long chosen;       /* the one kept, or -1 */
    double lost_since; /* when the kept one was last seen failing after it served; < 0: not lost */
};

/* n candidates, none kept yet: the first is tried first. */
void discover_init(struct discover *d, size_t n);
/* The candidate the next connection attempt dials: the kept one, else the one in turn. */
size_t discover_next(const struct discover *d);
/* The attempt at discover_next completed the upgrade: that candidate is kept (true
 * when this is a new choice, to be logged). */
bool discover_upgraded(struct discover *d);
enum discover_then {
    DISCOVER_BACKOFF,  /* wait the usual reconnect backoff before the next attempt */
    DISCOVER_NOW,      /* dial discover_next at once: the next candidate's turn */
};
/* An attempt failed before its upgrade completed, or the kept one was lost; at `now`,
 * with --reconnect-max give_up.  While none is kept, the next candidate is tried at
 * once, and after the last the round starts again after the backoff.  The kept one is
 * let go once it has been failing for give_up: every candidate is tried again. */
enum discover_then discover_failed(struct discover *d, double now, double give_up);
/* Whether a candidate is kept (pass-through and bulk sockets wait for one). */
bool discover_has_choice(const struct discover *d);
#endif
