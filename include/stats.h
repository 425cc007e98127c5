/* Counters any part of tgbridge bumps and /metrics reads (health.c): the ground floor,
 * so that counting something names no module above the one that counts. */
#ifndef TGB_STATS_H
#define TGB_STATS_H

/* Local callers tgbridge closed on its own, by why. */
enum drop_reason {
    DROP_SLOW_READER,     /* more than --max-client-buffer waiting for it */
    DROP_CLIENT_TIMEOUT,  /* no complete request within --client-timeout */
    DROP_MEMORY_BUDGET,   /* its request would take the bytes being received past --max-assembling */
    DROP_REASONS
};
void stats_caller_dropped(enum drop_reason why);
unsigned long long stats_callers_dropped(enum drop_reason why);
/* The metric label: "slow-reader", "client-timeout", "memory-budget". */
const char *stats_drop_reason_name(enum drop_reason why);
#endif
