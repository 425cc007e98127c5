/* util.c: sizes, seconds, the percent-encoder. */
#include "unit_main.h"
#include "util.h"
#include <stdlib.h>
#include <string.h>

static void test_sizes_and_seconds(void **state)
{
    (void)state;
    size_t n;
    double d;
    assert_int_equal(parse_size("50m", &n), 0);
    assert_int_equal(n, 52428800);
    assert_int_equal(parse_size("64KiB", &n), 0);
    assert_int_equal(n, 65536);
    assert_int_equal(parse_size("123", &n), 0);
    assert_int_equal(n, 123);
    assert_int_not_equal(parse_size("-1", &n), 0);
    assert_int_not_equal(parse_size("1x", &n), 0);
    assert_int_not_equal(parse_size("", &n), 0);
    assert_int_equal(parse_seconds("0.25", &d), 0);
    assert_float_equal(d, 0.25, 1e-9);
    assert_int_not_equal(parse_seconds("-1", &d), 0);
    assert_int_not_equal(parse_seconds("abc", &d), 0);
    assert_int_not_equal(parse_seconds("inf", &d), 0);
    char *e = url_encode("a+b c&d%/é");
    assert_str_eq(e, "a%2Bb%20c%26d%25%2F%C3%A9");
    free(e);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_sizes_and_seconds),
};

UNIT_MAIN(tests)
