/* The pool's decisions (include/pool_policy.h): placement, overflow, idle, promotion
 * and the reconnect backoff, each rule checked on hand-made views. */
#include "unit_main.h"
#include "pool_policy.h"

#define WINDOW 15

#define VIEW(arr) ((struct pool_view){.slot = (arr), .n = sizeof(arr) / sizeof((arr)[0]), .window = WINDOW})
#define SERVING(u) {.used = (u), .serving = true, .persistent = false}
#define PERSISTENT(u) {.used = (u), .serving = true, .persistent = true}
#define CLOSING(u) {.used = (u), .serving = false, .persistent = false}

/* ---- placement ---- */

static void test_place_most_room(void **state)
{
    (void)state;
    const struct pool_slot s[] = {PERSISTENT(5), SERVING(2), SERVING(7)};
    struct pool_view v = VIEW(s);
    assert_int_equal(pool_place(&v), 1);
}

static void test_place_tie_prefers_persistent(void **state)
{
    (void)state;
    const struct pool_slot s[] = {SERVING(3), SERVING(3), PERSISTENT(3)};
    struct pool_view v = VIEW(s);
    assert_int_equal(pool_place(&v), 2);
}

static void test_place_tie_earliest_opened(void **state)
{
    (void)state;
    const struct pool_slot s[] = {PERSISTENT(9), SERVING(4), SERVING(4)};
    struct pool_view v = VIEW(s);
    assert_int_equal(pool_place(&v), 1);
}

static void test_place_skips_not_serving(void **state)
{
    (void)state;
    const struct pool_slot s[] = {PERSISTENT(6), CLOSING(0), SERVING(8)};
    struct pool_view v = VIEW(s);
    assert_int_equal(pool_place(&v), 0);
}

static void test_place_full_persistent_uses_overflow(void **state)
{
    (void)state;
    const struct pool_slot s[] = {PERSISTENT(WINDOW), SERVING(WINDOW - 1)};
    struct pool_view v = VIEW(s);
    assert_int_equal(pool_place(&v), 1);
}

static void test_place_all_full(void **state)
{
    (void)state;
    const struct pool_slot s[] = {PERSISTENT(WINDOW), SERVING(WINDOW), CLOSING(0)};
    struct pool_view v = VIEW(s);
    assert_int_equal(pool_place(&v), -1);
    struct pool_view empty = {.slot = NULL, .n = 0, .window = WINDOW};
    assert_int_equal(pool_place(&empty), -1);
}

/* ---- overflow ---- */

/* Every window full, requests waiting, room under the cap: open one. */
static struct pool_demand wanting(void)
{
    return (struct pool_demand){.requests_wait = true, .room = false, .have_persistent = true, .opening = false,
                                .open_conns = 1, .max_connections = 8, .now = 100.0, .not_before = 0.0};
}

static void test_overflow_when_full_and_waiting(void **state)
{
    (void)state;
    struct pool_demand d = wanting();
    assert_true(pool_should_open_overflow(&d));
    d.room = true;
    assert_false(pool_should_open_overflow(&d));
    d = wanting();
    d.requests_wait = false;
    assert_false(pool_should_open_overflow(&d));
}

static void test_overflow_one_opening_at_a_time(void **state)
{
    (void)state;
    struct pool_demand d = wanting();
    d.opening = true;
    assert_false(pool_should_open_overflow(&d));
}

static void test_overflow_max_connections_cap(void **state)
{
    (void)state;
    struct pool_demand d = wanting();
    d.open_conns = 7;
    assert_true(pool_should_open_overflow(&d));
    d.open_conns = 8;
    assert_false(pool_should_open_overflow(&d));
    d.max_connections = 1;
    d.open_conns = 1;
    assert_false(pool_should_open_overflow(&d));
}

static void test_overflow_needs_persistent(void **state)
{
    (void)state;
    struct pool_demand d = wanting();
    d.have_persistent = false;
    assert_false(pool_should_open_overflow(&d));
}

static void test_overflow_waits_out_backoff(void **state)
{
    (void)state;
    struct pool_demand d = wanting();
    d.not_before = 100.5;
    assert_false(pool_should_open_overflow(&d));
    d.now = 100.5;
    assert_true(pool_should_open_overflow(&d));
}

/* ---- idle ---- */

static void test_idle_overflow_with_empty_window(void **state)
{
    (void)state;
    const struct pool_slot idle = SERVING(0), busy = SERVING(1), persistent = PERSISTENT(0), closing = CLOSING(0);
    assert_true(pool_idle(&idle));
    assert_false(pool_idle(&busy));
    assert_false(pool_idle(&persistent));
    assert_false(pool_idle(&closing));
}

/* ---- promotion ---- */

static void test_promote_most_room(void **state)
{
    (void)state;
    const struct pool_slot s[] = {SERVING(5), CLOSING(0), SERVING(2), SERVING(9)};
    struct pool_view v = VIEW(s);
    assert_int_equal(pool_promote(&v), 2);
}

static void test_promote_tie_earliest_and_full_ok(void **state)
{
    (void)state;
    const struct pool_slot s[] = {SERVING(WINDOW), SERVING(WINDOW)};
    struct pool_view v = VIEW(s);
    assert_int_equal(pool_promote(&v), 0); /* a full one still serves its window */
}

static void test_promote_none_serving(void **state)
{
    (void)state;
    const struct pool_slot s[] = {CLOSING(0), CLOSING(3)};
    struct pool_view v = VIEW(s);
    assert_int_equal(pool_promote(&v), -1);
}

/* ---- backoff ---- */

static void test_backoff_doubles_to_max(void **state)
{
    (void)state;
    uint32_t ms[16];
    size_t n = pool_backoff_table(0.1, 1.6, ms, 16);
    const uint32_t want[] = {100, 200, 400, 800, 1600};
    assert_int_equal(n, 5);
    assert_memory_equal(ms, want, sizeof want);
}

static void test_backoff_capped_at_max(void **state)
{
    (void)state;
    uint32_t ms[16];
    size_t n = pool_backoff_table(0.1, 0.5, ms, 16);
    const uint32_t want[] = {100, 200, 400, 500};
    assert_int_equal(n, 4);
    assert_memory_equal(ms, want, sizeof want);
}

static void test_backoff_default_min_and_floor(void **state)
{
    (void)state;
    uint32_t ms[16];
    size_t n = pool_backoff_table(0, 0.2, ms, 16);
    const uint32_t want[] = {50, 100, 200};
    assert_int_equal(n, 3);
    assert_memory_equal(ms, want, sizeof want);
    n = pool_backoff_table(0.0002, 0.0008, ms, 16);
    assert_int_equal(n, 3);
    assert_int_equal(ms[0], 1); /* 0.2 ms rounds up to the 1 ms floor */
    assert_int_equal(ms[2], 1);
}

static void test_backoff_step_limit(void **state)
{
    (void)state;
    uint32_t ms[16];
    size_t n = pool_backoff_table(0.001, 1e9, ms, 16);
    assert_int_equal(n, 16);
    assert_int_equal(ms[15], 32768); /* 1 ms doubled 15 times: the cap of steps came first */
    n = pool_backoff_table(5, 2, ms, 16);
    assert_int_equal(n, 1);
    assert_int_equal(ms[0], 2000); /* min above max: max at once */
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_place_most_room),
    cmocka_unit_test(test_place_tie_prefers_persistent),
    cmocka_unit_test(test_place_tie_earliest_opened),
    cmocka_unit_test(test_place_skips_not_serving),
    cmocka_unit_test(test_place_full_persistent_uses_overflow),
    cmocka_unit_test(test_place_all_full),
    cmocka_unit_test(test_overflow_when_full_and_waiting),
    cmocka_unit_test(test_overflow_one_opening_at_a_time),
    cmocka_unit_test(test_overflow_max_connections_cap),
    cmocka_unit_test(test_overflow_needs_persistent),
    cmocka_unit_test(test_overflow_waits_out_backoff),
    cmocka_unit_test(test_idle_overflow_with_empty_window),
    cmocka_unit_test(test_promote_most_room),
    cmocka_unit_test(test_promote_tie_earliest_and_full_ok),
    cmocka_unit_test(test_promote_none_serving),
    cmocka_unit_test(test_backoff_doubles_to_max),
    cmocka_unit_test(test_backoff_capped_at_max),
    cmocka_unit_test(test_backoff_default_min_and_floor),
    cmocka_unit_test(test_backoff_step_limit),
};

UNIT_MAIN(tests)
