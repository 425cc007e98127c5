/* The drop counter a front end's guard reports to: counted here, by reason. */
#include "stubs.h"

unsigned fake_drops[DROP_REASONS];

void health_caller_dropped(enum drop_reason why)
{
    fake_drops[why]++;
}
