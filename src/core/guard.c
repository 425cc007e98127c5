#include "guard.h"
#include "stats.h"
#include "util.h"

/* The live configuration, read at each use: SIGHUP may change --client-timeout,
 * --max-client-buffer and --max-assembling (src/config/reload.c). */
static struct {
    const struct config *cfg;
    size_t assembling;  /* bytes held by every struct hold */
} G;

void guard_init(const struct config *cfg)
{
    G.cfg = cfg;
}

double guard_due(enum guard_kind kind, double since, size_t received, double timeout)
{
    if (kind == GUARD_BODY)
        return since + timeout * (1.0 + (double)received / (1024.0 * 1024.0));
    return since + timeout;
}

static void expired(struct timer *t)
{
    struct guard *g = guard_owner(t, struct guard, timer);
    double due = guard_due(g->kind, g->since, g->received, G.cfg->client_timeout);
    if (now_mono() < due) { /* the body came on meanwhile: judged again when it could be late */
        timer_after(&g->timer, due - now_mono(), expired);
        return;
    }
    stats_caller_dropped(DROP_CLIENT_TIMEOUT);
    g->overdue(g);
}

void guard_start(struct guard *g, enum guard_kind kind, double since, guard_cb overdue)
{
    g->kind = kind;
    g->since = since;
    g->received = 0;
    g->overdue = overdue;
    timer_after(&g->timer, guard_due(kind, since, 0, G.cfg->client_timeout) - now_mono(), expired);
}

void guard_progress(struct guard *g, size_t bytes)
{
    g->received += bytes;
}

void guard_received(struct guard *g, size_t total)
{
    g->received = total;
}

void guard_stop(struct guard *g)
{
    g->kind = GUARD_IDLE;
    timer_cancel(&g->timer);
}

bool guard_running(const struct guard *g)
{
    return timer_pending(&g->timer);
}

bool guard_over_budget(size_t budget, size_t waiting, size_t more, bool strict)
{
    return (strict || waiting) && waiting + more > budget;
}

bool guard_reply_queued(size_t waiting, size_t more, bool strict)
{
    if (!guard_over_budget(G.cfg->max_client_buffer, waiting, more, strict))
        return false;
    stats_caller_dropped(DROP_SLOW_READER);
    return true;
}

bool guard_hold_fits(size_t budget, size_t held, size_t mine, size_t total)
{
    return total <= mine || held - mine + total <= budget;
}

bool guard_hold(struct hold *h, size_t total)
{
    if (!guard_hold_fits(G.cfg->max_assembling, G.assembling, h->bytes, total)) {
        stats_caller_dropped(DROP_MEMORY_BUDGET);
        return false;
    }
    G.assembling = G.assembling - h->bytes + total;
    h->bytes = total;
    return true;
}

void guard_release(struct hold *h)
{
    G.assembling -= h->bytes;
    h->bytes = 0;
}

size_t guard_assembling(void)
{
    return G.assembling;
}
