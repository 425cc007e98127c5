/* The pool's decisions, pure (include/pool_policy.h). */
#include "pool_policy.h"

static bool has_room(const struct pool_view *v, const struct pool_slot *s)
{
    return s->used < v->window;
}

long pool_place(const struct pool_view *v)
{
    long best = -1;
    for (size_t i = 0; i < v->n; i++) {
        const struct pool_slot *s = &v->slot[i];
        if (!s->serving || !has_room(v, s))
            continue;
        const struct pool_slot *b = best < 0 ? NULL : &v->slot[best];
        if (!b || s->used < b->used || (s->used == b->used && s->persistent))
            best = (long)i;
    }
    return best;
}

bool pool_should_open_overflow(const struct pool_demand *d)
{
    return d->requests_wait && !d->room && d->have_persistent && !d->opening &&
           d->open_conns < d->max_connections && d->now >= d->not_before;
}

bool pool_idle(const struct pool_slot *s)
{
    return !s->persistent && s->serving && s->used == 0;
}

long pool_promote(const struct pool_view *v)
{
    long best = -1;
    for (size_t i = 0; i < v->n; i++) {
        const struct pool_slot *s = &v->slot[i];
        if (s->serving && (best < 0 || s->used < v->slot[best].used))
            best = (long)i;
    }
    return best;
}

size_t pool_backoff_table(double min_s, double max_s, uint32_t *ms, size_t cap)
{
    double d = min_s > 0 ? min_s : 0.05;
    size_t n = 0;
    while (n < cap) {
        bool capped = d >= max_s;
        double step = (capped ? max_s : d) * 1000.0;
        ms[n++] = step < 1 ? 1 : (uint32_t)step;
        if (capped)
            break;
        d *= 2;
    }
    return n;
}
