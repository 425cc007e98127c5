/* json.c: the top-level scanner, the body check (the gateway's parser) and the
 * validator (Python's json). */
#include "unit_main.h"
#include "json.h"
#include <stdio.h>
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

static void test_top_value_spans(void **state)
{
    (void)state;
    const char *t = "{ \"id\" : \"r1\", \"response\" : {\"a\":[1,{\"b\":\"}\\\"\"}],\"c\":null} , \"complete\":true}";
    struct span s;
    assert_int_equal(json_top_value(t, strlen(t), "response", &s), 0);
    assert_span_is(s, "{\"a\":[1,{\"b\":\"}\\\"\"}],\"c\":null}");
    assert_int_equal(json_top_value(t, strlen(t), "complete", &s), 0);
    assert_span_is(s, "true");
    assert_int_equal(json_top_value(t, strlen(t), "id", &s), 0);
    assert_span_is(s, "\"r1\"");
    assert_int_not_equal(json_top_value(t, strlen(t), "nope", &s), 0);
}

/* Why the gateway would refuse body b, or NULL if it would take it. */
static const char *body_error(const char *b)
{
    return json_body_check(b, strlen(b), NULL);
}

static void test_body_check_matches_the_gateways_parser(void **state)
{
    (void)state;
    assert_str_eq(body_error("{\"a\":1}"), NULL);
    assert_str_eq(body_error(" {\"a\":\"caf\xc3\xa9 \\n \\\" \\u00e9\"} \n"), NULL);
    assert_str_eq(body_error("[1,2]"), NULL); /* valid JSON; the REST layer decides it must be an object */
    assert_str_ne(body_error(""), NULL);
    assert_str_ne(body_error("{\"a\":1} trailing"), NULL);
    assert_str_ne(body_error("{\"a\":1}{}"), NULL);
    assert_str_ne(body_error("{\"a\":\"tab\there\"}"), NULL);    /* raw control char in a string */
    assert_str_ne(body_error("{\"a\":\"\xc3\"}"), NULL);          /* truncated UTF-8 */
    assert_str_ne(body_error("{\"a\":\"\xed\xa0\x80\"}"), NULL);  /* UTF-8-encoded surrogate */
    assert_str_ne(body_error("{\"a\":\"\xc0\xaf\"}"), NULL);      /* overlong */
    assert_str_ne(body_error("{\"a\":NaN}"), NULL);
    assert_str_ne(body_error("{\"a\":\x01 1}"), NULL);             /* cJSON's whitespace, not JSON's */
    cJSON *root = NULL;
    const char *b = "{\"streaming\":true}";
    assert_str_eq(json_body_check(b, strlen(b), &root), NULL);
    assert_true(cJSON_IsObject(root));
    cJSON_Delete(root);
}

static void test_json_valid_is_pythons_json(void **state)
{
    (void)state;
    static const char *const good[] = {
        "{}", "[]", " {\"a\": [1, -2.5e+3, true, false, null, \"\\u00e9\\n\"]} ", "\"x\"", "0", "-0.0",
        "NaN", "[Infinity, -Infinity]", "{\"\xc3\xa9\": \"\xf0\x9f\x98\x80\"}", "[[[[]]]]",
    };
    static const char *const bad[] = {
        "", " ", "{", "{\"a\":}", "{\"a\" 1}", "[1,]", "{\"a\":1,}", "01", "1.", ".5", "1e", "+1", "-", "tru",
        "\"\\ux\"", "\"\\u12\"", "\"\\q\"", "\"a\x01\"", "\"\xff\"", "\"\xc3\"", "\"\xed\xa0\x80\"", "[1] 2",
        "{'a':1}", "nan", "-NaN", "[1}", "{\"a\":1]", "\"abc",
    };
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        if (!json_valid(good[i], strlen(good[i])))
            print_message("  refused: %s\n", good[i]);
        assert_true(json_valid(good[i], strlen(good[i])));
    }
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        if (json_valid(bad[i], strlen(bad[i])))
            print_message("  accepted: %s\n", bad[i]);
        assert_true(!json_valid(bad[i], strlen(bad[i])));
    }
    /* deep nesting is refused without using the C stack */
    size_t n = JSON_MAX_DEPTH + 1;
    char *deep = malloc(2 * n);
    memset(deep, '[', n);
    memset(deep + n, ']', n);
    assert_true(!json_valid(deep, 2 * n));
    assert_true(json_valid(deep + 1, 2 * n - 2));
    free(deep);
}

/* json_string_decode: the decoded bytes and their length, NUL escapes included. */
static void test_string_decode(void **state)
{
    (void)state;
    char out[16];
    struct { const char *in; long want; const char *bytes; } cases[] = {
        {"\"abc\"", 3, "abc"},
        {"\"a\\u0000\"", 2, "a\0"},
        {"\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"", 8, "\"\\/\b\f\n\r\t"},
        {"\"\\u00e9\\ud83d\\ude00\"", 6, "\xc3\xa9\xf0\x9f\x98\x80"},
        {"\"\\ud83d\"", 3, "\xed\xa0\xbd"},
        {"\"abc", -1, NULL}, {"abc", -1, NULL}, {"\"a\\\"", -1, NULL}, {"\"\\x\"", -1, NULL},
        {"\"\\u12\"", -1, NULL}, {"\"a\nb\"", -1, NULL}, {"\"a\"b\"", -1, NULL},
        {"\"0123456789abcdefg\"", -1, NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        struct span v = {cases[i].in, strlen(cases[i].in)};
        long n = json_string_decode(v, out, sizeof out);
        if (n != cases[i].want)
            print_message("  %s: %ld\n", cases[i].in, n);
        assert_int_equal(n, cases[i].want);
        if (n > 0)
            assert_memory_equal(out, cases[i].bytes, (size_t)n);
    }
}

struct seen {
    char keys[8][16];
    char values[8][48];
    size_t n;
};

static void note(struct span key, struct span value, void *arg)
{
    struct seen *s = arg;
    if (s->n < 8) {
        snprintf(s->keys[s->n], sizeof s->keys[0], "%.*s", (int)key.n, key.p);
        snprintf(s->values[s->n], sizeof s->values[0], "%.*s", (int)value.n, value.p);
        s->n++;
    }
}

/* json_valid_members: a reply frame validated and its top-level members found in one
 * pass -- nested values whole, the end past the closing brace; -1 for anything that
 * is not exactly one valid object, with the members before the fault reported. */
static void test_valid_members_one_pass(void **state)
{
    (void)state;
    static const char frame[] = " {\"id\":\"tgb-1\",\"response\":{\"a\":[1,{}],\"b\":\"\\u00e9\"},\"e\":{},"
                                "\"complete\":true} ";
    struct seen s = {0};
    long end = json_valid_members(frame, strlen(frame), note, &s);
    assert_int_equal(end, (long)strlen(frame) - 1);
    assert_int_equal(s.n, 4);
    assert_string_equal(s.keys[0], "id");
    assert_string_equal(s.values[0], "\"tgb-1\"");
    assert_string_equal(s.values[1], "{\"a\":[1,{}],\"b\":\"\\u00e9\"}");
    assert_string_equal(s.keys[2], "e");
    assert_string_equal(s.values[2], "{}");
    assert_string_equal(s.values[3], "true");
    static const char *const bad[] = {
        "{\"id\":\"x\",\"r\":\"\xff\"}", "{\"id\":\"x\"} {}", "[1]", "{\"id\":\"x\",}", "{\"id\":01}", "",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        memset(&s, 0, sizeof s);
        assert_int_equal(json_valid_members(bad[i], strlen(bad[i]), note, &s), -1);
    }
    memset(&s, 0, sizeof s);
    json_valid_members(bad[0], strlen(bad[0]), note, &s);
    assert_int_equal(s.n, 1); /* the id, read before the fault */
    memset(&s, 0, sizeof s);
    assert_int_equal(json_valid_members("{}", 2, note, &s), 2);
    assert_int_equal(s.n, 0);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_string_decode),
    cmocka_unit_test(test_top_value_spans),
    cmocka_unit_test(test_body_check_matches_the_gateways_parser),
    cmocka_unit_test(test_json_valid_is_pythons_json),
    cmocka_unit_test(test_valid_members_one_pass),
};

UNIT_MAIN(tests)
