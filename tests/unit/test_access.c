/* access.c: the one admission decision (browser rules, the local token in each of
 * its places, the caller's own credential on the auth routes, the Unix socket's
 * allow lists), as the pure function access_decide. */
#include "unit_main.h"
#include "access.h"
#include "config.h"
#include "httphead.h"
#include "unit_config.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

static void decide(const struct config *cfg, const char *token, const struct admission_ask *ask,
                   struct admission *out)
{
    struct access_rules rules = {cfg, token, NULL};
    access_decide(&rules, ask, out);
}

static struct peer peer_at(const char *addr)
{
    struct peer p;
    memset(&p, 0, sizeof p);
    if (strchr(addr, ':')) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&p.addr;
        a->sin6_family = AF_INET6;
        assert_int_equal(inet_pton(AF_INET6, addr, &a->sin6_addr), 1);
        p.addrlen = sizeof *a;
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&p.addr;
        a->sin_family = AF_INET;
        assert_int_equal(inet_pton(AF_INET, addr, &a->sin_addr), 1);
        p.addrlen = sizeof *a;
    }
    return p;
}

/* The admin listener's /status and /shutdown: loopback peers, or the admin token as a
 * Bearer; never the browser rules, never the client token. */
static void test_admission_admin(void **state)
{
    (void)state;
    struct config cfg;
    config_defaults(&cfg);
    struct admission v;
    static const char *const local[] = {"127.0.0.1", "127.9.8.7", "::1", "::ffff:127.0.0.2"};
    static const char *const remote[] = {"10.0.0.1", "192.0.2.2", "128.0.0.1", "::2", "::ffff:10.0.0.1", "fe80::1"};
    struct access_rules none = {&cfg, "client-tok", NULL}, with = {&cfg, "client-tok", "admin-tok"};
    for (size_t i = 0; i < sizeof local / sizeof *local; i++) {
        struct peer p = peer_at(local[i]);
        assert_true(access_peer_is_loopback(&p));
        struct admission_ask ask = {.rule = ADMIT_ADMIN, .peer = &p, .origin = "https://evil.example",
                                    .host = "evil.example"};
        access_decide(&none, &ask, &v);
        assert_true(v.admitted);
    }
    for (size_t i = 0; i < sizeof remote / sizeof *remote; i++) {
        struct peer p = peer_at(remote[i]);
        assert_false(access_peer_is_loopback(&p));
        struct admission_ask ask = {.rule = ADMIT_ADMIN, .peer = &p, .host = "localhost"};
        access_decide(&none, &ask, &v); /* no admin token configured: loopback only */
        assert_false(v.admitted);
        assert_int_equal(v.refusal.status, 403);
        assert_str_eq(v.refusal.type, "forbidden");
        access_decide(&with, &ask, &v);
        assert_false(v.admitted);
        assert_int_equal(v.refusal.status, 401);
        ask.authorization = "Bearer client-tok"; /* the client token is not the admin token */
        ask.authorization_len = strlen(ask.authorization);
        access_decide(&with, &ask, &v);
        assert_false(v.admitted);
        ask.authorization = "Bearer admin-tok";
        ask.authorization_len = strlen(ask.authorization);
        access_decide(&with, &ask, &v);
        assert_true(v.admitted);
        access_decide(&none, &ask, &v);
        assert_false(v.admitted);
    }
    /* no peer known: not loopback */
    struct admission_ask ask = {.rule = ADMIT_ADMIN};
    access_decide(&none, &ask, &v);
    assert_false(v.admitted);
    config_free(&cfg);
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
    cmocka_unit_test(test_admission_admin),
};
UNIT_MAIN(tests)
