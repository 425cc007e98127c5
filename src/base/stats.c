#include "stats.h"

static unsigned long long dropped[DROP_REASONS];
static const char *const drop_names[DROP_REASONS] = {"slow-reader", "client-timeout", "memory-budget"};

void stats_caller_dropped(enum drop_reason why)
{
    dropped[why]++;
}

unsigned long long stats_callers_dropped(enum drop_reason why)
{
    return dropped[why];
}

const char *stats_drop_reason_name(enum drop_reason why)
{
    return drop_names[why];
}
