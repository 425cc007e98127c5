/* logqueue.c: the log's bounded output queue — order, partial writes, the bound,
 * a reader that is gone. */
#include "unit_main.h"
#include "logqueue.h"
#include <string.h>

/* A reader that takes at most `room` bytes in all, then says "full" (0), or fails
 * (-1) when `gone`. */
struct reader {
    char got[4096];
    size_t len;
    size_t room;
    bool gone;
    int calls;
};

static ssize_t take(void *ctx, const char *p, size_t n)
{
    struct reader *r = ctx;
    r->calls++;
    if (r->gone)
        return -1;
    size_t k = n < r->room ? n : r->room;
    memcpy(r->got + r->len, p, k);
    r->len += k;
    r->room -= k;
    return (ssize_t)k;
}

static void add(struct logq *q, const char *line)
{
    assert_true(logq_add(q, line, strlen(line)));
}

static void test_partial_writes_keep_the_order(void **state)
{
    (void)state;
    struct logq q = {0};
    struct reader r = {.room = 5};
    add(&q, "one\n");
    add(&q, "two\n");
    logq_drain(&q, take, &r);
    assert_int_equal(r.len, 5); /* "one\nt": a line begun is finished later */
    assert_int_equal(logq_len(&q), 3);
    add(&q, "three\n");
    r.room = 100;
    r.calls = 0;
    logq_drain(&q, take, &r);
    assert_int_equal(r.calls, 1);
    assert_memory_equal(r.got, "one\ntwo\nthree\n", 14);
    assert_int_equal(r.len, 14);
    assert_int_equal(logq_len(&q), 0);
    assert_int_equal(q.dropped, 0);
    logq_free(&q);
}

static void test_a_full_reader_is_asked_once(void **state)
{
    (void)state;
    struct logq q = {0};
    struct reader r = {.room = 0};
    add(&q, "waiting\n");
    logq_drain(&q, take, &r);
    assert_int_equal(r.calls, 1);
    assert_int_equal(logq_len(&q), 8);
    logq_free(&q);
}

static void test_lines_past_the_bound_are_dropped_and_counted(void **state)
{
    (void)state;
    struct logq q = {.bound = 20};
    add(&q, "0123456789\n");           /* 11 */
    add(&q, "abcdefgh\n");             /* 20: exactly the bound */
    assert_false(logq_add(&q, "x\n", 2));
    assert_false(logq_add(&q, "y\n", 2));
    assert_int_equal(q.dropped, 2);
    assert_int_equal(logq_len(&q), 20);
    struct reader r = {.room = 100};
    logq_drain(&q, take, &r);
    assert_memory_equal(r.got, "0123456789\nabcdefgh\n", 20);
    /* An empty queue takes a line whatever its length. */
    const char *big = "a line longer than the bound of twenty\n";
    assert_true(logq_add(&q, big, strlen(big)));
    assert_false(logq_add(&q, "z\n", 2));
    assert_int_equal(q.dropped, 3);
    logq_free(&q);
}

static void test_the_default_bound_is_64_kib(void **state)
{
    (void)state;
    struct logq q = {0};
    char line[1024];
    memset(line, 'x', sizeof line - 1);
    line[sizeof line - 1] = '\n';
    for (int i = 0; i < 64; i++)
        assert_true(logq_add(&q, line, sizeof line));
    assert_false(logq_add(&q, "\n", 1));
    assert_int_equal(logq_len(&q), LOGQ_BOUND);
    logq_free(&q);
}

static void test_a_reader_that_is_gone_drops_what_waits(void **state)
{
    (void)state;
    struct logq q = {0};
    struct reader r = {.room = 2};
    add(&q, "abc\n");
    add(&q, "def\n");
    add(&q, "ghi\n");
    logq_drain(&q, take, &r); /* "ab": the first line's rest still counts as one */
    r.gone = true;
    logq_drain(&q, take, &r);
    assert_int_equal(logq_len(&q), 0);
    assert_int_equal(q.dropped, 3);
    add(&q, "after\n"); /* the queue goes on */
    assert_int_equal(logq_len(&q), 6);
    logq_free(&q);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_partial_writes_keep_the_order),
    cmocka_unit_test(test_a_full_reader_is_asked_once),
    cmocka_unit_test(test_lines_past_the_bound_are_dropped_and_counted),
    cmocka_unit_test(test_the_default_bound_is_64_kib),
    cmocka_unit_test(test_a_reader_that_is_gone_drops_what_waits),
};

UNIT_MAIN(tests)
