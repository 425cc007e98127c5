#include "unit_main.h"
#include <stdio.h>
#include <string.h>

static void usage(const char *argv0)
{
    fprintf(stderr, "usage: %s [--list | TEST_NAME]\n", argv0);
}

int unit_main(int argc, char **argv, const char *group, const struct CMUnitTest *tests, size_t n)
{
    if (argc > 2) {
        usage(argv[0]);
        return 2;
    }
    if (argc == 2 && !strcmp(argv[1], "--list")) {
        for (size_t i = 0; i < n; i++)
            printf("%s\n", tests[i].name);
        return 0;
    }
    if (argc == 2) {
        size_t i = 0;
        while (i < n && strcmp(tests[i].name, argv[1]))
            i++;
        if (i == n || argv[1][0] == '-') {
            fprintf(stderr, "%s: no test named %s (--list names them)\n", argv[0], argv[1]);
            usage(argv[0]);
            return 2;
        }
        /* A glob: our names have no * or ?, so it matches this one test alone. */
        cmocka_set_test_filter(argv[1]);
    }
    const char *base = strrchr(group, '/');
    return _cmocka_run_group_tests(base ? base + 1 : group, tests, n, NULL, NULL) ? 1 : 0;
}

void unit_print_bytes(const char *p, size_t n, size_t max)
{
    if (!p) {
        print_message("(null)");
        return;
    }
    if (n == (size_t)-1)
        n = strlen(p);
    print_message("\"");
    for (size_t i = 0; i < n && i < max; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c == '"' || c == '\\')
            print_message("\\%c", c);
        else if (c == '\n')
            print_message("\\n");
        else if (c == '\t')
            print_message("\\t");
        else if (c < 0x20 || c >= 0x7f)
            print_message("\\x%02x", c);
        else
            print_message("%c", c);
    }
    print_message("\"");
    if (n > max)
        print_message("...(%zu bytes)", n);
}

static void show_pair(const char *what, const char *a, size_t na, const char *b, size_t nb,
                      const char *file, int line)
{
    print_message("%s:%d: %s failed: ", file, line, what);
    unit_print_bytes(a, na, 400);
    print_message(" vs ");
    unit_print_bytes(b, nb, 400);
    print_message("\n");
    _fail(file, line);
}

void unit_str_eq(const char *a, const char *b, bool want_equal, const char *sa, const char *sb,
                 const char *file, int line)
{
    bool eq = a && b ? !strcmp(a, b) : a == b;
    if (eq == want_equal)
        return;
    char what[512];
    snprintf(what, sizeof what, "%s %s %s", sa, want_equal ? "==" : "!=", sb);
    show_pair(what, a, (size_t)-1, b, (size_t)-1, file, line);
}

void unit_str_has(const char *h, const char *needle, bool want_found, const char *sh, const char *sn,
                  const char *file, int line)
{
    if (h && (strstr(h, needle) != NULL) == want_found)
        return;
    char what[512];
    snprintf(what, sizeof what, "%s %s %s", sh, want_found ? "contains" : "lacks", sn);
    show_pair(what, h, (size_t)-1, needle, (size_t)-1, file, line);
}

void unit_span_is(struct span s, const char *lit, const char *ss, const char *file, int line)
{
    if (s.p && s.n == strlen(lit) && !memcmp(s.p, lit, s.n))
        return;
    char what[512];
    snprintf(what, sizeof what, "%s == %s", ss, "literal");
    show_pair(what, s.p, s.n, lit, (size_t)-1, file, line);
}
