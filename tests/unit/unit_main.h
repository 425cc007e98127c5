/* What every C unit-test binary shares: cmocka, a few assertions cmocka lacks, and
 * one command line (unit_main.c):
 *     test_<module>           runs every test
 *     test_<module> --list    prints one test name a line
 *     test_<module> NAME      runs only NAME; exit status 0 iff it passed
 * A test file ends with UNIT_MAIN(tests), tests being its CMUnitTest array. */
#ifndef TGB_UNIT_MAIN_H
#define TGB_UNIT_MAIN_H
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include "json.h"

int unit_main(int argc, char **argv, const char *group, const struct CMUnitTest *tests, size_t n);
#define UNIT_MAIN(tests) \
    int main(int argc, char **argv) { return unit_main(argc, argv, __FILE__, tests, sizeof tests / sizeof *tests); }

/* Each fails the test with both sides shown (as a quoted C literal). */
void unit_str_eq(const char *a, const char *b, bool want_equal, const char *sa, const char *sb,
                 const char *file, int line);
void unit_str_has(const char *h, const char *needle, bool want_found, const char *sh, const char *sn,
                  const char *file, int line);
void unit_span_is(struct span s, const char *lit, const char *ss, const char *file, int line);
/* Prints n bytes (or a NUL-terminated string when n is (size_t)-1) as a quoted C
 * literal, at most max of them, through cmocka's print_message. */
void unit_print_bytes(const char *p, size_t n, size_t max);

/* Strings, NULL-safe: NULL equals only NULL. */
#define assert_str_eq(a, b) unit_str_eq(a, b, true, #a, #b, __FILE__, __LINE__)
#define assert_str_ne(a, b) unit_str_eq(a, b, false, #a, #b, __FILE__, __LINE__)
/* strstr(h, needle) found or not; a NULL h fails. */
#define assert_str_contains(h, needle) unit_str_has(h, needle, true, #h, #needle, __FILE__, __LINE__)
#define assert_str_lacks(h, needle) unit_str_has(h, needle, false, #h, #needle, __FILE__, __LINE__)
#define assert_span_is(s, lit) unit_span_is(s, lit, #s, __FILE__, __LINE__)
/* Ordered comparisons, as long long (ints, enums) or unsigned long long (sizes). */
#define assert_cmp_(type, fmt, a, op, b)                                                     \
    do {                                                                                     \
        type a_ = (type)(a), b_ = (type)(b);                                                 \
        if (!(a_ op b_))                                                                     \
            fail_msg("%s %s %s: " fmt " vs " fmt, #a, #op, #b, a_, b_);                      \
    } while (0)
#define assert_int_lt(a, b) assert_cmp_(long long, "%lld", a, <, b)
#define assert_int_gt(a, b) assert_cmp_(long long, "%lld", a, >, b)
#define assert_size_le(a, b) assert_cmp_(unsigned long long, "%llu", a, <=, b)
#define assert_size_ge(a, b) assert_cmp_(unsigned long long, "%llu", a, >=, b)
#endif
