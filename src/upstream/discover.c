/* The gateway found by default: the decisions (include/discover.h).  Pure: no I/O,
 * no clock of its own, so tests/unit/test_discover.c drives every rule. */
#include "discover.h"

void discover_init(struct discover *d, size_t n)
{
    d->n = n;
    d->trying = 0;
    d->chosen = -1;
    d->lost_since = -1;
}

size_t discover_next(const struct discover *d)
{
    return d->chosen >= 0 ? (size_t)d->chosen : d->trying;
}

bool discover_has_choice(const struct discover *d)
{
    return d->chosen >= 0;
}

bool discover_upgraded(struct discover *d)
{
    bool fresh = d->chosen < 0;
    d->chosen = (long)discover_next(d);
    d->lost_since = -1;
    return fresh;
}

enum discover_then discover_failed(struct discover *d, double now, double give_up)
{
    if (d->chosen >= 0) {
        if (d->lost_since < 0)
            d->lost_since = now;
        if (now - d->lost_since < give_up)
            return DISCOVER_BACKOFF;
        /* Lost long enough: the gateway may have moved to the other port (an upgrade
         * to v2.8.6 or later), so all are tried again, from the first. */
        d->chosen = -1;
        d->trying = 0;
        d->lost_since = -1;
        return DISCOVER_NOW;
    }
    if (d->trying + 1 < d->n) {
        d->trying++;
        return DISCOVER_NOW;
    }
    d->trying = 0;
    return DISCOVER_BACKOFF;
}
