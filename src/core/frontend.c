#include "frontend.h"
#include <string.h>

#define MAX_FRONTENDS 8

static const struct frontend *registered[MAX_FRONTENDS];
static size_t nregistered;

void frontend_register(const struct frontend *fe)
{
    for (size_t i = 0; i < nregistered; i++)
        if (registered[i] == fe)
            return;
    if (nregistered < MAX_FRONTENDS)
        registered[nregistered++] = fe;
}

const struct frontend *frontend_at(size_t i)
{
    return i < nregistered ? registered[i] : NULL;
}

void frontend_totals(struct frontend_stats *out)
{
    memset(out, 0, sizeof *out);
    for (size_t i = 0; i < nregistered; i++) {
        struct frontend_stats s;
        memset(&s, 0, sizeof s);
        registered[i]->stats(&s);
        out->connections += s.connections;
        out->active += s.active;
        out->unsent += s.unsent;
    }
}
