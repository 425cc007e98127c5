/* The link-time stand-ins of the C unit tests (mosquitto's test/unit/<module>_stubs.c are the
 * model): what lies beyond the module under test, replaced by something a test can
 * drive and inspect.  stubs_loop.c: the clock and the timers; stubs_log.c: the log;
 * stubs_upstream.c: the side the mux sends to; stubs_callrec.c: the call records. */
#ifndef TGB_UNIT_STUBS_H
#define TGB_UNIT_STUBS_H
#include <stdbool.h>
#include <stddef.h>
#include "callrec.h"
#include "log.h"
#include "mux.h"
#include "timer.h"

/* ---- stubs_loop.c: now_mono() is this clock; timers fire only when it moves ---- */
void fake_clock_set(double now);
/* Moves the clock by `seconds` (0: one loop turn), firing every timer that falls due
 * on the way in due order, each at its own time (callbacks may arm timers again). */
void fake_clock_advance(double seconds);
size_t fake_timers_armed(void);
/* When t fires, or a negative number if it is not armed. */
double fake_timer_due(const struct timer *t);
/* Forgets every armed timer (between tests). */
void fake_timers_reset(void);
/* How many times firstpart_queued was called. */
extern unsigned fake_flush_requests;

/* ---- stubs_log.c: lines are kept, not written ---- */
extern unsigned fake_log_lines[LOG_DEBUG + 1];
extern char fake_log_last[1024];
void fake_log_reset(void);

/* ---- stubs_upstream.c: the mux's sink, and an upstream connection a test plays ---- */
extern const struct mux_sink fake_sink;
struct fake_upstream {
    bool ready;
    char reason[128];
    char workspace[64];
    unsigned sendable_calls;   /* mux -> sink: something may be sendable */
    struct request *sent[256]; /* what was written, in order (may be freed since) */
    char *sent_text[256];      /* each one's envelope as written */
    char sent_id[256][48];
    size_t nsent;
};
extern struct fake_upstream fake_up;
void fake_upstream_reset(void);
/* Writes every request the mux lets the connection owning w send, in order, as the
 * upstream does (mux_next_to_send, then mux_sent); returns how many. */
size_t fake_send_all(struct window *w);
/* A frame from the gateway on the connection owning w, as text. */
void fake_frame(struct window *w, const char *text);
/* The same for the i-th request sent: {"id":<its id>,<rest>}. */
void fake_reply(struct window *w, size_t i, const char *rest);

/* ---- stubs_callrec.c: finished calls, kept ---- */
struct fake_call {
    enum call_outcome outcome;
    char frontend[16], service[96], error[64];
    bool had_first_part;
};
extern struct fake_call fake_calls[64];
extern size_t fake_ncalls;
#endif
