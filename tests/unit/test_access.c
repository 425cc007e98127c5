/* access.c: the one admission decision (browser rules, the local token in each of
 * its places, the caller's own credential on the auth routes, the Unix socket's
 * allow lists), as the pure function access_decide. */
#include "unit_main.h"
#include "access.h"
#include "config.h"
#include "httphead.h"
#include "unit_config.h"
#include <string.h>

static void decide(const struct config *cfg, const char *token, const struct admission_ask *ask,
                   struct admission *out)
{
    struct access_rules rules = {cfg, token};
    access_decide(&rules, ask, out);
}

static void test_admission_browser_rules(void **state)
{
    (void)state;
    struct config cfg;
    char err[256];
    assert_int_equal(config_line("allow-origin = https://ok.example\n", &cfg, err, sizeof err), 0);
    struct admission v;
    struct admission_ask ask = {.rule = ADMIT_BEARER, .origin = "https://evil.example", .host = "127.0.0.1:8089"};
    decide(&cfg, NULL, &ask, &v);
    assert_true(!v.admitted);
    assert_int_equal(v.refusal.status, 403);
    assert_str_eq(v.refusal.type, "forbidden-origin");
    assert_true(strstr(v.refusal.message, "https://evil.example") != NULL);
    ask.origin = "https://ok.example";
    decide(&cfg, NULL, &ask, &v);
    assert_true(v.admitted);
    assert_int_equal(v.caller.token, TOKEN_NOT_NEEDED);
    /* DNS rebinding: a name that is not this machine's, over TCP */
    ask.origin = NULL;
    ask.host = "rebind.example:8089";
    decide(&cfg, NULL, &ask, &v);
    assert_true(!v.admitted);
    assert_str_eq(v.refusal.type, "forbidden-host");
    /* no browser reaches the Unix socket: Host is not looked at */
    ask.unix_socket = true;
    decide(&cfg, NULL, &ask, &v);
    assert_true(v.admitted);
    assert_true(v.caller.unix_socket);
    /* the probes ask nothing */
    ask = (struct admission_ask){.rule = ADMIT_OPEN, .origin = "https://evil.example", .host = "x.example"};
    decide(&cfg, "secret", &ask, &v);
    assert_true(v.admitted);
    assert_int_equal(v.caller.token, TOKEN_UNCHECKED);
    config_free(&cfg);
}

static void test_admission_local_token(void **state)
{
    (void)state;
    struct config cfg;
    config_defaults(&cfg);
    struct admission v;
    static const char good[] = "Bearer s3cret", bad[] = "Bearer nope";
    struct admission_ask ask = {.rule = ADMIT_BEARER, .host = "localhost"};
    decide(&cfg, "s3cret", &ask, &v);
    assert_true(!v.admitted);
    assert_int_equal(v.refusal.status, 401);
    assert_str_eq(v.refusal.type, "auth-required");
    assert_str_eq(v.refusal.message, "auth failure");
    ask.authorization = good;
    ask.authorization_len = strlen(good);
    decide(&cfg, "s3cret", &ask, &v);
    assert_true(v.admitted);
    assert_int_equal(v.caller.token, TOKEN_BEARER);
    assert_true(v.caller.bearer_is_local);
    /* REST takes no ?token= */
    ask = (struct admission_ask){.rule = ADMIT_BEARER, .query_token = "s3cret", .query_token_len = 6};
    decide(&cfg, "s3cret", &ask, &v);
    assert_true(!v.admitted);
    /* the upgrades do, decoded as the gateway decodes it or as sent */
    ask.rule = ADMIT_UPGRADE;
    ask.query_token = "s3%63ret";
    ask.query_token_len = strlen(ask.query_token);
    decide(&cfg, "s3cret", &ask, &v);
    assert_true(v.admitted);
    assert_int_equal(v.caller.token, TOKEN_QUERY);
    /* a Bearer, when there is one, is what counts */
    ask.authorization = bad;
    ask.authorization_len = strlen(bad);
    decide(&cfg, "s3cret", &ask, &v);
    assert_true(!v.admitted);
    /* the bulk sockets refuse a caller with neither; the local WebSocket locks it */
    ask = (struct admission_ask){.rule = ADMIT_UPGRADE};
    decide(&cfg, "s3cret", &ask, &v);
    assert_true(!v.admitted);
    ask.rule = ADMIT_UPGRADE_LOCKED;
    decide(&cfg, "s3cret", &ask, &v);
    assert_true(v.admitted);
    assert_int_equal(v.caller.token, TOKEN_ABSENT);
    config_free(&cfg);
}

static void test_admission_own_credential_and_peer(void **state)
{
    (void)state;
    struct config cfg;
    char err[256];
    assert_int_equal(config_line("unix-allow-uid = 1000\n", &cfg, err, sizeof err), 0);
    struct admission v;
    /* the auth routes: the caller's own key goes on, the local token comes apart */
    static const char own[] = "Bearer users-own-key";
    struct admission_ask ask = {.rule = ADMIT_OWN_CREDENTIAL, .authorization = own, .authorization_len = strlen(own)};
    decide(&cfg, "s3cret", &ask, &v);
    assert_true(!v.admitted);
    assert_int_equal(v.refusal.status, 401);
    ask.alt_token = "s3cret";
    ask.alt_token_len = 6;
    decide(&cfg, "s3cret", &ask, &v);
    assert_true(v.admitted);
    assert_true(!v.caller.bearer_is_local);
    /* the Unix socket's allow lists */
    struct peer p = {.unix_socket = true, .has_cred = true, .uid = 1000, .gid = 1000, .pid = 42};
    ask = (struct admission_ask){.rule = ADMIT_PEER, .peer = &p};
    decide(&cfg, NULL, &ask, &v);
    assert_true(v.admitted);
    assert_int_equal(v.caller.uid, 1000);
    assert_int_equal(v.caller.pid, 42);
    p.uid = 1001;
    p.gid = 7;
    decide(&cfg, NULL, &ask, &v);
    assert_true(!v.admitted);
    assert_str_eq(v.refusal.type, "forbidden");
    assert_str_eq(v.refusal.message, "uid 1001 / gid 7 is not allowed to use this socket");
    config_free(&cfg);
}

/* A token is compared at the length shown: a NUL inside is never the token's end
 * (issue 16 item 7), in a Bearer, a ?token= (%00), an X-Tgbridge-Token, or alone. */
static void test_token_with_a_nul_is_refused(void **state)
{
    (void)state;
    struct config cfg;
    config_defaults(&cfg);
    struct admission v;
    static const char bearer_nul[] = "Bearer s3cret\0", bearer_nul_more[] = "Bearer s3cret\0xx";
    struct admission_ask ask = {.rule = ADMIT_BEARER, .host = "localhost", .authorization = bearer_nul,
                                .authorization_len = sizeof bearer_nul - 1};
    decide(&cfg, "s3cret", &ask, &v);
    assert_true(!v.admitted);
    ask.authorization = bearer_nul_more;
    ask.authorization_len = sizeof bearer_nul_more - 1;
    decide(&cfg, "s3cret", &ask, &v);
    assert_true(!v.admitted);
    ask = (struct admission_ask){.rule = ADMIT_UPGRADE, .query_token = "s3cret%00", .query_token_len = 9};
    decide(&cfg, "s3cret", &ask, &v);
    assert_true(!v.admitted);
    ask = (struct admission_ask){.rule = ADMIT_OWN_CREDENTIAL, .alt_token = "s3cret\0", .alt_token_len = 7};
    decide(&cfg, "s3cret", &ask, &v);
    assert_true(!v.admitted);
    ask.alt_token_len = 6;
    decide(&cfg, "s3cret", &ask, &v);
    assert_true(v.admitted);
    assert_true(access_token_matches("s3cret", "s3cret", 6));
    assert_true(!access_token_matches("s3cret", "s3cret\0", 7));
    assert_true(!access_token_matches("s3cret", "s3c\0ret", 7));
    assert_true(!access_token_matches("s3cret", "s3cre", 5));
    config_free(&cfg);
}

/* A head with a NUL in a header is refused whatever its route. */
static void test_head_with_a_nul_is_refused(void **state)
{
    (void)state;
    static const char ok[] = "GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n\r\n";
    static const char nul[] = "GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\0\r\n\r\n";
    struct http_head h;
    struct refusal no;
    assert_int_equal(http_head_parse(ok, sizeof ok - 1, &h), HEAD_REQUEST);
    assert_true(!access_head_refused(&h, &no));
    assert_int_equal(http_head_parse(nul, sizeof nul - 1, &h), HEAD_REQUEST);
    assert_true(access_head_refused(&h, &no));
    assert_int_equal(no.status, 400);
    assert_str_eq(no.type, "bad-request");
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_token_with_a_nul_is_refused),
    cmocka_unit_test(test_head_with_a_nul_is_refused),
    cmocka_unit_test(test_admission_browser_rules),
    cmocka_unit_test(test_admission_local_token),
    cmocka_unit_test(test_admission_own_credential_and_peer),
};
UNIT_MAIN(tests)
