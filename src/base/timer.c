/* The timers of timer.h on lws's sorted timer list (a sul), in the loop's context. */
#include "timer.h"
#include "loop.h"
#include "util.h"
#include <libwebsockets.h>

_Static_assert(sizeof(((struct timer *)0)->impl) >= sizeof(lws_sorted_usec_list_t),
               "struct timer's storage must hold lws's sorted timer list entry");
_Static_assert(_Alignof(struct timer) >= _Alignof(lws_sorted_usec_list_t),
               "struct timer must be aligned for lws's sorted timer list entry");
_Static_assert(offsetof(struct timer, impl) == 0, "the sul is at the start of struct timer");

static lws_sorted_usec_list_t *sul_of(const struct timer *t)
{
    return (lws_sorted_usec_list_t *)(void *)t->impl;
}

static void timer_fired(lws_sorted_usec_list_t *sul)
{
    struct timer *t = (struct timer *)(void *)sul;
    t->cb(t);
}

void timer_after(struct timer *t, double seconds, timer_cb cb)
{
    t->cb = cb;
    lws_sul_schedule(loop_ctx(), 0, sul_of(t), timer_fired, seconds_to_us(seconds));
}

void timer_cancel(struct timer *t)
{
    lws_sul_cancel(sul_of(t));
}

bool timer_pending(const struct timer *t)
{
    return sul_of(t)->list.owner != NULL;
}
