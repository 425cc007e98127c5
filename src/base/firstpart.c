#include "firstpart.h"
#include "loop.h"
#include <stdbool.h>

static struct {
    uint64_t queued, writes;
    bool awaited;
} F;

void firstpart_queued(void)
{
    F.queued++;
}

void firstpart_wrote(void)
{
    F.writes++;
    if (F.awaited) {
        F.awaited = false;
        loop_wake();
    }
}

uint64_t firstpart_queued_total(void)
{
    return F.queued;
}

uint64_t firstpart_writes_total(void)
{
    return F.writes;
}

uint64_t firstpart_await(void)
{
    F.awaited = true;
    return F.writes;
}
