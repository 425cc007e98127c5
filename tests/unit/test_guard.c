/* guard.c: the client deadlines and the reply budget every front end applies, as
 * the pure functions guard_due and guard_over_budget, and the --max-assembling account. */
#include "unit_main.h"
#include "guard.h"
#include "stats.h"
#include <math.h>
#include <string.h>

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

/* --max-assembling: a request may grow while everything held stays within the budget,
 * and may always shrink (issue 16 item 3). */
static void test_assembling_budget(void **state)
{
    (void)state;
    assert_true(guard_hold_fits(1000, 0, 0, 1000));
    assert_true(!guard_hold_fits(1000, 0, 0, 1001));
    assert_true(guard_hold_fits(1000, 700, 0, 300));
    assert_true(!guard_hold_fits(1000, 700, 0, 301));
    assert_true(guard_hold_fits(1000, 700, 200, 500));  /* mine grows 200 -> 500 */
    assert_true(!guard_hold_fits(1000, 700, 200, 501));
    assert_true(guard_hold_fits(1000, 5000, 3000, 10)); /* shrinking always fits */
}

/* The process-wide account: hit the cap (refused, counted, nothing taken), free, then
 * the same request fits; released bytes never go negative or leak. */
static void test_assembling_account(void **state)
{
    (void)state;
    struct config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.client_timeout = 1;
    cfg.max_assembling = 1000;
    guard_init(&cfg);
    struct hold a = {0}, b = {0};
    unsigned long long before = stats_callers_dropped(DROP_MEMORY_BUDGET);
    assert_true(guard_hold(&a, 700));
    assert_true(!guard_hold(&b, 400));
    assert_int_equal(stats_callers_dropped(DROP_MEMORY_BUDGET), before + 1);
    assert_int_equal(b.bytes, 0);
    assert_int_equal(guard_assembling(), 700);
    guard_release(&b);
    assert_int_equal(guard_assembling(), 700);
    assert_true(guard_hold(&a, 100)); /* a line completed: a shrinks */
    assert_true(guard_hold(&b, 400));
    assert_int_equal(guard_assembling(), 500);
    guard_release(&a);
    guard_release(&a);
    guard_release(&b);
    assert_int_equal(guard_assembling(), 0);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_assembling_account),
    cmocka_unit_test(test_assembling_budget),
    cmocka_unit_test(test_guard_deadlines_and_budget),
};
UNIT_MAIN(tests)
