/* The monotonic clock (util.h), in a file of its own so that unit tests can put a
 * fake clock in its place at link time (tests/unit/stubs_loop.c). */
#include "util.h"
#include <time.h>

double now_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}
