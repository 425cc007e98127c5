/* passpath.c: the pass-through routes decided on the raw path (issue 16 item 5). */
#include "unit_main.h"
#include "passpath.h"
#include <string.h>

static enum passpath_verdict route(const char *method, const char *path, char *out, size_t cap, struct passpath *pp)
{
    return passpath_route(method, (struct span){path, strlen(path)}, out, cap, pp);
}

static void test_routes_and_their_methods(void **state)
{
    (void)state;
    static const struct {
        const char *method, *path, *allow;
        enum pass_route route;
    } ok[] = {
        {"GET", "/api/metrics", "GET, HEAD", PASS_METRICS},
        {"HEAD", "/api/metrics/query", "GET, HEAD", PASS_METRICS},
        {"GET", "/api/v1/i18n/packs/zh-cn", "GET, HEAD", PASS_I18N},
        {"GET", "/api/v1/document-stream", "GET, HEAD", PASS_DOCUMENT_STREAM},
        {"GET", "/api/v1/export-core", "GET, HEAD", PASS_EXPORT_CORE},
        {"POST", "/api/v1/import-core", "POST", PASS_IMPORT_CORE},
        {"POST", "/api/v1/auth/login", "POST", PASS_AUTH},
        {"POST", "/api/v1/auth/bootstrap", "POST", PASS_AUTH},
        {"POST", "/api/v1/auth/bootstrap-status", "POST", PASS_AUTH},
        {"POST", "/api/v1/auth/change-password", "POST", PASS_AUTH},
    };
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
        char out[256];
        struct passpath pp;
        assert_int_equal(route(ok[i].method, ok[i].path, out, sizeof out, &pp), PASSPATH_OK);
        assert_int_equal(pp.route, ok[i].route);
        assert_str_eq(pp.allow, ok[i].allow);
        assert_str_eq(out, ok[i].path);
        const char *other = !strcmp(ok[i].allow, "POST") ? "GET" : "POST";
        assert_int_equal(route(other, ok[i].path, out, sizeof out, &pp), PASSPATH_BAD_METHOD);
        assert_str_eq(pp.allow, ok[i].allow);
        assert_int_equal(route("DELETE", ok[i].path, out, sizeof out, &pp), PASSPATH_BAD_METHOD);
    }
    /* what the gateway has no route for, and what is not a pass-through route */
    static const char *const none[] = {"/api/v1/auth/whoami", "/api/v1/i18n/packs/", "/api/v1/i18n/x",
                                       "/api/v1/auth/login/", "/api/v1/flow/default/service/agent",
                                       "/api/v1/flow/a%2Fb/service/agent", "/healthz", "api/metrics", ""};
    for (size_t i = 0; i < sizeof none / sizeof *none; i++) {
        char out[64];
        struct passpath pp;
        assert_int_equal(route("POST", none[i], out, sizeof out, &pp), PASSPATH_NONE);
    }
}

static void test_refused_spellings(void **state)
{
    (void)state;
    static const struct {
        const char *path, *why;
    } bad[] = {
        {"/api/metrics/x/../../v1/auth/change-password", "a dot segment"},
        {"/api/metrics/%2e%2e/%2E%2E/v1/auth/login", "a dot segment"},
        {"/api/metrics/.%2e/x", "a dot segment"},
        {"/api/metrics/%2E", "a dot segment"},
        {"/api/v1/i18n/packs/..", "a dot segment"},
        {"/api/v1/flow/x/../../auth/login", "a dot segment"},
        {"/api/metrics/a%2Fb", "an escaped slash (%2F)"},
        {"/api/metrics/a%2fb", "an escaped slash (%2F)"},
        {"/api%2Fv1/export-core", "an escaped slash (%2F)"},
        {"/api%2Fmetrics/../x", "an escaped slash (%2F)"},
        {"/api/metrics/a\\b", "a backslash"},
        {"/api/metrics/a%5cb", "a backslash"},
        {"/api/metrics/%00", "an escaped NUL"},
        {"/api/metrics/%zz", "a broken percent escape"},
        {"/api/metrics/%4", "a broken percent escape"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char out[256];
        struct passpath pp;
        assert_int_equal(route("GET", bad[i].path, out, sizeof out, &pp), PASSPATH_BAD_PATH);
        assert_str_eq(pp.why, bad[i].why);
    }
}

static void test_canonical_form(void **state)
{
    (void)state;
    char out[256];
    struct passpath pp;
    /* unreserved escapes decoded, the rest upper case, the rest of the bytes escaped */
    assert_int_equal(route("GET", "/api/metrics/%71uery%2d1%3a%7b%7E%20x\"\xc3\xa9", out, sizeof out, &pp),
                     PASSPATH_OK);
    assert_str_eq(out, "/api/metrics/query-1%3A%7B~%20x%22%C3%A9");
    assert_int_equal(route("POST", "/api/v1/auth/%6cogin", out, sizeof out, &pp), PASSPATH_OK);
    assert_str_eq(out, "/api/v1/auth/login");
    assert_int_equal(pp.route, PASS_AUTH);
    /* sub-delims, ':' and '@' stay as they are */
    assert_int_equal(route("GET", "/api/metrics/a;b=c,d!$&'()*+:@", out, sizeof out, &pp), PASSPATH_OK);
    assert_str_eq(out, "/api/metrics/a;b=c,d!$&'()*+:@");
    /* what does not fit */
    assert_int_equal(route("GET", "/api/metrics/query", out, 18, &pp), PASSPATH_TOO_LONG);
    assert_int_equal(route("GET", "/api/metrics/query", out, 19, &pp), PASSPATH_OK);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_routes_and_their_methods),
    cmocka_unit_test(test_refused_spellings),
    cmocka_unit_test(test_canonical_form),
};

UNIT_MAIN(tests)
