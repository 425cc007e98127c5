/* One-shot timers, run by the event loop (src/base/timer.c, on the loop's own timer
 * list).  The modules that keep deadlines (the mux, the front ends, the upstream) use
 * only this: they need not know what runs the loop, and their unit tests replace it
 * at link time with a fake clock (tests/unit/stubs_loop.c).
 *
 * Embed a timer in its owner (find the owner with timer_owner) and cancel it before
 * the owner is freed.  A zeroed timer is a timer that is not pending.  Arming one that
 * is pending just moves it; neither call allocates or fails. */
#ifndef TGB_TIMER_H
#define TGB_TIMER_H
#include <stdbool.h>
#include <stddef.h>

struct timer;
typedef void (*timer_cb)(struct timer *t);

/* The members are the implementation's (timer.c checks that its list entry fits). */
struct timer {
    union { void *p; long long ll; double d; } impl[6];
    timer_cb cb;
};

#define timer_owner(ptr, type, member) ((type *)((char *)(ptr) - offsetof(type, member)))
/* Runs cb(t) once, `seconds` from now (0 or less: on the next loop turn). */
void timer_after(struct timer *t, double seconds, timer_cb cb);
void timer_cancel(struct timer *t);
bool timer_pending(const struct timer *t);
#endif
