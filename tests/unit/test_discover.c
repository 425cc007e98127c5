/* The gateway found by default (include/discover.h): the order candidates are tried
 * in, what is kept, and when a kept one is let go. */
#include "unit_main.h"
#include "discover.h"

#define GIVE_UP 30.0

static void test_first_candidate_first(void **state)
{
    (void)state;
    struct discover d;
    discover_init(&d, 2);
    assert_int_equal(discover_next(&d), 0);
    assert_false(discover_has_choice(&d));
}

static void test_failure_tries_the_next_at_once_then_backs_off(void **state)
{
    (void)state;
    struct discover d;
    discover_init(&d, 2);
    assert_int_equal(discover_failed(&d, 1, GIVE_UP), DISCOVER_NOW);
    assert_int_equal(discover_next(&d), 1);
    assert_int_equal(discover_failed(&d, 2, GIVE_UP), DISCOVER_BACKOFF);
    assert_int_equal(discover_next(&d), 0); /* the next round starts from the first */
    assert_false(discover_has_choice(&d));
}

static void test_upgrade_keeps_the_candidate_tried(void **state)
{
    (void)state;
    struct discover d;
    discover_init(&d, 2);
    discover_failed(&d, 1, GIVE_UP);
    assert_true(discover_upgraded(&d));
    assert_true(discover_has_choice(&d));
    assert_int_equal(discover_next(&d), 1);
    assert_false(discover_upgraded(&d)); /* the same one again: not a new choice */
}

static void test_first_upgrading_wins(void **state)
{
    (void)state;
    struct discover d;
    discover_init(&d, 2);
    assert_true(discover_upgraded(&d));
    assert_int_equal(discover_next(&d), 0);
}

static void test_kept_one_retried_until_lost_for_give_up(void **state)
{
    (void)state;
    struct discover d;
    discover_init(&d, 2);
    discover_failed(&d, 0, GIVE_UP);
    discover_upgraded(&d); /* 1 kept */
    assert_int_equal(discover_failed(&d, 100, GIVE_UP), DISCOVER_BACKOFF);
    assert_int_equal(discover_next(&d), 1);
    assert_int_equal(discover_failed(&d, 129.9, GIVE_UP), DISCOVER_BACKOFF);
    assert_int_equal(discover_next(&d), 1);
    assert_int_equal(discover_failed(&d, 130, GIVE_UP), DISCOVER_NOW);
    assert_false(discover_has_choice(&d));
    assert_int_equal(discover_next(&d), 0); /* every candidate again, from the first */
}

static void test_an_upgrade_resets_the_loss(void **state)
{
    (void)state;
    struct discover d;
    discover_init(&d, 2);
    discover_upgraded(&d);
    discover_failed(&d, 100, GIVE_UP);
    discover_upgraded(&d); /* it came back (and, say, refused the token) */
    assert_int_equal(discover_failed(&d, 125, GIVE_UP), DISCOVER_BACKOFF);
    assert_int_equal(discover_failed(&d, 150, GIVE_UP), DISCOVER_BACKOFF); /* lost since 125 only */
    assert_int_equal(discover_failed(&d, 155, GIVE_UP), DISCOVER_NOW);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_first_candidate_first),
    cmocka_unit_test(test_failure_tries_the_next_at_once_then_backs_off),
    cmocka_unit_test(test_upgrade_keeps_the_candidate_tried),
    cmocka_unit_test(test_first_upgrading_wins),
    cmocka_unit_test(test_kept_one_retried_until_lost_for_give_up),
    cmocka_unit_test(test_an_upgrade_resets_the_loss),
};

UNIT_MAIN(tests)
