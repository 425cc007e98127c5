/* The limits every front end puts on its local callers, in one place (docs/operations.md
 * "Failure semantics"):
 *  - deadlines (--client-timeout): a request head, or the first line of a Unix client,
 *    within T of when it could start; a body or a line, once its first byte is in,
 *    within T plus T per MiB of it -- checked lazily, so an upload costs no timer work
 *    per chunk;
 *  - the reply budget (--max-client-buffer): a caller that lets more than that wait
 *    is dropped, never allowed to grow our memory or to slow the shared socket;
 *  - the assembling budget (--max-assembling): the bytes of every request still
 *    being received, all callers and front ends together (REST bodies, lines, local
 *    WebSocket messages, bulk frames waiting for their gateway socket); the caller
 *    whose bytes would pass it is refused, the others keep being served.
 * Every drop is counted (tgbridge_callers_dropped_total); the front end says why in
 * its own words and closes its connection.  Named guard.h: <limits.h> is libc's. */
#ifndef TGB_GUARD_H
#define TGB_GUARD_H
#include <stdbool.h>
#include <stddef.h>
#include "config.h"
#include "loop.h"

enum guard_kind {
    GUARD_IDLE,   /* no deadline running */
    GUARD_HEAD,   /* due at since + T */
    GUARD_BODY,   /* due at since + T * (1 + received / 1 MiB) */
};

struct guard;
typedef void (*guard_cb)(struct guard *g);

/* One caller's deadline; embedded in the front end's connection (guard_owner). */
struct guard {
    enum guard_kind kind;
    double since;
    size_t received;
    guard_cb overdue;
    struct timer timer;
};
#define guard_owner(ptr, type, member) ((type *)((char *)(ptr) - offsetof(type, member)))

void guard_init(const struct config *cfg);

/* Starts (or restarts) a deadline of this kind from since (now_mono()); body bytes
 * count from 0.  When it passes, the drop is counted and overdue(g) runs once, with
 * g->kind still telling which deadline it was. */
void guard_start(struct guard *g, enum guard_kind kind, double since, guard_cb overdue);
/* bytes more of the body arrived (GUARD_BODY). */
void guard_progress(struct guard *g, size_t bytes);
/* The body (the line under way) is now this long. */
void guard_received(struct guard *g, size_t total);
/* What was due is in: no deadline. */
void guard_stop(struct guard *g);
bool guard_running(const struct guard *g);
/* When a deadline of this kind is due: pure. */
double guard_due(enum guard_kind kind, double since, size_t received, double timeout);

/* One request's bytes still being received, counted against --max-assembling; zero
 * before use.  Embedded in what holds the bytes. */
struct hold {
    size_t bytes;
};
/* What h holds is now total bytes (more or fewer).  False: growing to total would
 * pass --max-assembling -- nothing more is taken, the drop is counted (memory-budget),
 * and the caller is to be refused (then guard_release). */
bool guard_hold(struct hold *h, size_t total);
/* The request is complete, refused or its caller gone: every byte h held is free. */
void guard_release(struct hold *h);
/* Bytes held by every request still being received. */
size_t guard_assembling(void);
/* The same decision against a given budget: pure.  held: all bytes held now, of
 * which mine are this request's. */
bool guard_hold_fits(size_t budget, size_t held, size_t mine, size_t total);

/* Replies: more bytes are about to be queued for a caller with waiting bytes unsent.
 * True: over --max-client-buffer, the caller must be dropped (counted).  A single
 * reply larger than the budget still goes to a caller that has nothing waiting,
 * unless strict (the line protocol: the budget bounds every line). */
bool guard_reply_queued(size_t waiting, size_t more, bool strict);
/* The same decision against a given budget: pure. */
bool guard_over_budget(size_t budget, size_t waiting, size_t more, bool strict);
#endif
