/* The loop and the clock, for unit tests: a clock that moves only when the test says,
 * and timers kept in a list the test fires by moving it (stubs.h). */
#include "stubs.h"
#include "firstpart.h"
#include "loop.h"
#include "util.h"
#include <stdlib.h>

static double clock_now = 1000.0;
static struct armed {
    struct timer *t;
    double due;
    unsigned long long order; /* ties fire in arming order, as lws's sorted list does */
} armed[256];
static size_t narmed;
static unsigned long long next_order;
unsigned fake_flush_requests;

double now_mono(void)
{
    return clock_now;
}

void fake_clock_set(double now)
{
    clock_now = now;
}

static size_t find(const struct timer *t)
{
    size_t i = 0;
    while (i < narmed && armed[i].t != t)
        i++;
    return i;
}

void timer_cancel(struct timer *t)
{
    size_t i = find(t);
    if (i < narmed)
        armed[i] = armed[--narmed];
}

void timer_after(struct timer *t, double seconds, timer_cb cb)
{
    timer_cancel(t);
    if (narmed == sizeof armed / sizeof *armed)
        abort(); /* a test arming hundreds of timers is broken */
    t->cb = cb;
    armed[narmed++] = (struct armed){t, clock_now + (seconds > 0 ? seconds : 0), next_order++};
}

bool timer_pending(const struct timer *t)
{
    return find(t) < narmed;
}

double fake_timer_due(const struct timer *t)
{
    size_t i = find(t);
    return i < narmed ? armed[i].due : -1;
}

size_t fake_timers_armed(void)
{
    return narmed;
}

void fake_timers_reset(void)
{
    narmed = 0;
}

/* The armed timer due first at or before `until`, or narmed. */
static size_t next_due(double until)
{
    size_t best = narmed;
    for (size_t i = 0; i < narmed; i++)
        if (armed[i].due <= until &&
            (best == narmed || armed[i].due < armed[best].due ||
             (armed[i].due == armed[best].due && armed[i].order < armed[best].order)))
            best = i;
    return best;
}

void fake_clock_advance(double seconds)
{
    double until = clock_now + seconds;
    size_t i;
    while ((i = next_due(until)) < narmed) {
        struct timer *t = armed[i].t;
        if (armed[i].due > clock_now)
            clock_now = armed[i].due;
        armed[i] = armed[--narmed];
        t->cb(t);
    }
    clock_now = until;
}

void firstpart_queued(void)
{
    fake_flush_requests++;
}
