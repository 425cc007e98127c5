/* lineframe.c: lines from pieces cut every way, with the length limit. */
#include "unit_main.h"
#include "lineframe.h"
#include <stdio.h>
#include <string.h>

struct frames_seen {
    char got[512];
    size_t n;
};

static bool collect_line(void *arg, enum lineframe_event ev, const char *line, size_t len)
{
    struct frames_seen *s = arg;
    s->n += (size_t)snprintf(s->got + s->n, sizeof s->got - s->n, "%s", ev == LINEFRAME_TOO_LONG ? "<long>" : "");
    s->n += (size_t)snprintf(s->got + s->n, sizeof s->got - s->n, "[%.*s]", (int)len, line);
    return true;
}

static void test_lineframe_pieces_and_limits(void **state)
{
    (void)state;
    const char *in = "ab\ncd\n0123456789ABC\nlast\npart";
    for (size_t step = 1; step <= strlen(in); step++) { /* every way of cutting it up */
        struct lineframe f;
        lineframe_init(&f, 10);
        struct frames_seen s = {{0}, 0};
        for (size_t i = 0; i < strlen(in); i += step) {
            size_t n = strlen(in) - i < step ? strlen(in) - i : step;
            assert_true(lineframe_feed(&f, in + i, n, collect_line, &s));
        }
        assert_int_equal(f.partial, 4);
        lineframe_eof(&f, collect_line, &s);
        assert_str_eq(s.got, "[ab][cd]<long>[0123456789][last][part]");
        lineframe_free(&f);
    }
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_lineframe_pieces_and_limits),
};

UNIT_MAIN(tests)
