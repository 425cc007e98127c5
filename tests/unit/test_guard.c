/* guard.c: the client deadlines and the reply budget every front end applies, as
 * the pure functions guard_due and guard_over_budget. */
#include "unit_main.h"
#include "guard.h"
#include <math.h>

static void test_guard_deadlines_and_budget(void **state)
{
    (void)state;
    /* a head: T; a body: T, and T more per MiB received */
    assert_true(fabs(guard_due(GUARD_HEAD, 100.0, 5 << 20, 10.0) - 110.0) < 1e-9);
    assert_true(fabs(guard_due(GUARD_BODY, 100.0, 0, 10.0) - 110.0) < 1e-9);
    assert_true(fabs(guard_due(GUARD_BODY, 100.0, 3 << 20, 10.0) - 140.0) < 1e-9);
    /* what waits is bounded; one reply larger than the bound goes to a caller that reads */
    assert_true(!guard_over_budget(1000, 0, 5000, false));
    assert_true(guard_over_budget(1000, 1, 1000, false));
    assert_true(!guard_over_budget(1000, 500, 500, false));
    /* ... except on the line protocol, where every line counts */
    assert_true(guard_over_budget(1000, 0, 5000, true));
    assert_true(!guard_over_budget(1000, 0, 1000, true));
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_guard_deadlines_and_budget),
};
UNIT_MAIN(tests)
