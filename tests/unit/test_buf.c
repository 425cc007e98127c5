/* buf.c: the growable buffer and its JSON string writer. */
#include "unit_main.h"
#include "buf.h"
#include <string.h>

static void test_buf_consume_then_append(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b, 8);
    for (int i = 0; i < 1000; i++)
        buf_printf(&b, "%04d", i);
    assert_int_equal(b.len, 4000);
    buf_consume(&b, 3990);
    assert_int_equal(b.len, 10);
    assert_memory_equal(buf_ptr(&b), "9709980999", 10);
    buf_puts(&b, "abc"); /* compacts: consumed space outweighs what is left */
    assert_int_equal(b.head, 8);
    assert_int_equal(b.len, 13);
    assert_str_eq(buf_ptr(&b), "9709980999abc");
    buf_consume(&b, 13);
    assert_int_equal(b.len, 0);
    assert_int_equal(b.head, 8);
    buf_free(&b);
}

static void test_json_escape_control_chars(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b, 0);
    buf_json_string(&b, "a\n\x01\\\"z", 6);
    assert_str_eq(buf_ptr(&b), "\"a\\n\\u0001\\\\\\\"z\"");
    buf_free(&b);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_buf_consume_then_append),
    cmocka_unit_test(test_json_escape_control_chars),
};

UNIT_MAIN(tests)
