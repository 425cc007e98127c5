/* config.c: the gateway and proxy URLs, allow lists, loopback names, flags over the
 * environment, the proxy choice. */
#include "unit_main.h"
#include "config.h"
#include "redact.h"
#include "unit_config.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void test_gateway_url_parsing(void **state)
{
    (void)state;
    struct gateway_url u;
    char err[256];
    assert_int_equal(config_parse_gateway("http://localhost:8088", &u, err, sizeof err), 0);
    assert_true(!u.tls);
    assert_str_eq(u.host, "localhost");
    assert_int_equal(u.port, 8088);
    assert_str_eq(u.base_path, "");
    assert_int_equal(config_parse_gateway("wss://gw.example.com/tg/", &u, err, sizeof err), 0);
    assert_true(u.tls);
    assert_int_equal(u.port, 443);
    assert_str_eq(u.base_path, "/tg");
    assert_int_equal(config_parse_gateway("ws://[::1]:8888/api/v1/socket", &u, err, sizeof err), 0);
    assert_str_eq(u.host, "::1");
    assert_int_equal(u.port, 8888);
    assert_str_eq(u.base_path, "");
    assert_int_equal(config_parse_gateway("https://h:9/x/api/v1/socket/", &u, err, sizeof err), 0);
    assert_str_eq(u.base_path, "/x");
    assert_int_not_equal(config_parse_gateway("ftp://h", &u, err, sizeof err), 0);
    assert_int_not_equal(config_parse_gateway("http://h:0", &u, err, sizeof err), 0);
    assert_int_not_equal(config_parse_gateway("http://h:70000", &u, err, sizeof err), 0);
    assert_int_not_equal(config_parse_gateway("http://h/?token=x", &u, err, sizeof err), 0);
    assert_int_not_equal(config_parse_gateway("http://user:pw@h", &u, err, sizeof err), 0);
    /* an IPv6 literal is digits and colons; "]" is looked for only in the authority */
    assert_int_not_equal(config_parse_gateway("http://[::1/x]:80", &u, err, sizeof err), 0);
    assert_int_not_equal(config_parse_gateway("wss://[::://1]:8443/", &u, err, sizeof err), 0);
    assert_int_not_equal(config_parse_gateway("http://[]:80", &u, err, sizeof err), 0);
    assert_int_not_equal(config_parse_gateway("http://gw example:80", &u, err, sizeof err), 0);
    assert_int_equal(config_parse_gateway("http://[::ffff:10.0.0.1]:80", &u, err, sizeof err), 0);
    assert_int_equal(config_parse_gateway("http://gw_1.example-x.com", &u, err, sizeof err), 0);
}

static void test_allow_lists_fail_closed(void **state)
{
    (void)state;
    struct config cfg;
    char err[256];
    assert_int_equal(config_line("unix-allow-uid = 0, 1000\n", &cfg, err, sizeof err), 0);
    assert_int_equal(cfg.n_allow_uid, 2);
    assert_int_equal((int)cfg.allow_uid[1], 1000);
    /* an empty list would mean "no restriction" */
    assert_int_not_equal(config_line("unix-allow-uid = ,\n", &cfg, err, sizeof err), 0);
    assert_int_not_equal(config_line("unix-allow-gid = \"\"\n", &cfg, err, sizeof err), 0);
    /* 2^32 must not wrap to uid 0 (root) */
    assert_int_not_equal(config_line("unix-allow-uid = 4294967296\n", &cfg, err, sizeof err), 0);
    assert_true(strstr(err, "out of range") != NULL);
    assert_int_not_equal(config_line("unix-allow-uid = 99999999999999999999\n", &cfg, err, sizeof err), 0);
    assert_int_not_equal(config_line("unix-allow-uid = 4294967295\n", &cfg, err, sizeof err), 0);
    assert_int_not_equal(config_line("unix-allow-uid = -1\n", &cfg, err, sizeof err), 0);
    /* the message names the offender (it was read after being freed) */
    assert_int_not_equal(config_line("unix-allow-uid = no-such-user-tgb\n", &cfg, err, sizeof err), 0);
    assert_true(strstr(err, "'no-such-user-tgb'") != NULL);
    char many[512] = "unix-allow-gid = ";
    for (int i = 0; i < 33; i++)
        snprintf(many + strlen(many), sizeof many - strlen(many), "%d,", i);
    strcat(many, "\n");
    assert_int_not_equal(config_line(many, &cfg, err, sizeof err), 0);
    assert_true(strstr(err, "more than 32") != NULL);
}

static void test_loopback_names_are_only_loopback(void **state)
{
    (void)state;
    assert_true(host_is_loopback("127.0.0.1"));
    assert_true(host_is_loopback("127.8.9.10"));
    assert_true(host_is_loopback("::1"));
    assert_true(host_is_loopback("localhost"));
    assert_true(host_is_loopback("app.localhost"));
    assert_true(host_is_loopback("::ffff:127.0.0.1"));
    /* a DNS name anyone can register and point at 127.0.0.1 (DNS rebinding) */
    assert_true(!host_is_loopback("127.evil.example"));
    assert_true(!host_is_loopback("127.0.0.1.evil.example"));
    assert_true(!host_is_loopback("localhost.evil.example"));
    assert_true(!host_is_loopback("128.0.0.1"));
    assert_true(!host_is_loopback("::2"));
}

static void test_proxy_url_parsing(void **state)
{
    (void)state;
    struct proxy_url p;
    char err[128];
    assert_int_equal(config_parse_proxy("http://u%40x:p%3Ass@proxy.example:3128/", &p, err, sizeof err), 0);
    assert_str_eq(p.host, "proxy.example");
    assert_int_equal(p.port, 3128);
    assert_str_eq(p.userinfo, "u@x:p:ss");
    assert_int_equal(config_parse_proxy("[::1]:8080", &p, err, sizeof err), 0);
    assert_str_eq(p.host, "::1");
    assert_int_equal(p.port, 8080);
    assert_str_eq(p.userinfo, "");
    assert_int_equal(config_parse_proxy("proxy", &p, err, sizeof err), 0);
    assert_int_equal(p.port, 1080);
    static const char *const bad[] = {"https://p:1", "socks5://p:1", "http://p:0", "http://p:65536", "http://p:x",
                                      "http://:1", "http://u:%zz@p:1", "http://p:1/path", "http://[::1:1",
                                      "http://p:1?q", "http://u%00@p:1"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        if (!config_parse_proxy(bad[i], &p, err, sizeof err))
            print_message("  accepted: %s\n", bad[i]);
        assert_int_equal(config_parse_proxy(bad[i], &p, err, sizeof err), -1);
    }
}

/* The environment is restored however the checks end (the teardown). */
static int set_config_env(void **state)
{
    (void)state;
    setenv("TGBRIDGE_LISTEN", "127.0.0.1:9000", 1);
    setenv("TRUSTGRAPH_URL", "http://gw:8888/", 1);
    return 0;
}

static int unset_config_env(void **state)
{
    (void)state;
    unsetenv("TGBRIDGE_LISTEN");
    unsetenv("TRUSTGRAPH_URL");
    secrets_clear();
    return 0;
}

static void test_config_flags_override_env(void **state)
{
    (void)state;
    struct config cfg;
    char err[256];
    char tok[] = "tg_secret_token";
    char *argv[] = {"tgbridge", "--listen", "[::1]:0", "--token", tok, "--request-timeout", "0.5", NULL};
    assert_int_equal(config_load(&cfg, 7, argv, err, sizeof err), 0);
    assert_str_eq(cfg.listen_host, "::1");
    assert_int_equal(cfg.listen_port, 0);
    assert_str_eq(cfg.gw.host, "gw");
    assert_int_equal(cfg.gw.port, 8888);
    assert_str_eq(cfg.token, "tg_secret_token");
    assert_str_lacks(tok, "secret"); /* argv scrubbed for /proc/PID/cmdline */
    assert_float_equal(cfg.request_timeout, 0.5, 1e-9);
    config_free(&cfg);
    char *bad[] = {"tgbridge", "--auth", "magic", NULL};
    assert_int_lt(config_load(&cfg, 3, bad, err, sizeof err), 0);
    assert_str_contains(err, "--auth");
    config_free(&cfg);
    char *inflight[] = {"tgbridge", "--max-inflight", "17", NULL};
    assert_int_lt(config_load(&cfg, 3, inflight, err, sizeof err), 0);
    config_free(&cfg);
}

/* No gateway anywhere: the first candidate stands in and discovery is on; given one
 * (TRUSTGRAPH_URL here), discovery is off. */
static void test_no_gateway_given_discovers(void **state)
{
    (void)state;
    struct config cfg;
    char err[256];
    char *argv[] = {"tgbridge", "--unix", "none", NULL};
    unsetenv("TRUSTGRAPH_URL");
    assert_int_equal(config_load(&cfg, 3, argv, err, sizeof err), 0);
    assert_true(cfg.gateway_discover);
    assert_str_eq(cfg.gateway, gateway_candidates[0]);
    assert_str_eq(cfg.gw.host, "localhost");
    assert_int_equal(cfg.gw.port, 8888);
    config_free(&cfg);
    setenv("TRUSTGRAPH_URL", "http://localhost:8888", 1);
    assert_int_equal(config_load(&cfg, 3, argv, err, sizeof err), 0);
    assert_false(cfg.gateway_discover);
    config_free(&cfg);
    unsetenv("TRUSTGRAPH_URL");
    assert_str_eq(gateway_candidates[1], "http://localhost:8088");
}

static void unset_proxy_env(void)
{
    unsetenv("https_proxy"); unsetenv("HTTPS_PROXY"); unsetenv("http_proxy"); unsetenv("HTTP_PROXY");
    unsetenv("no_proxy"); unsetenv("NO_PROXY");
}

static int no_proxy_env(void **state)
{
    (void)state;
    unset_proxy_env();
    return 0;
}

/* The environment is restored however the checks end (setup and teardown). */
static void test_proxy_choice(void **state)
{
    (void)state;
    struct gateway_url gw;
    char err[128];
    config_parse_gateway("wss://gw.example.com", &gw, err, sizeof err);
    assert_str_eq(config_pick_proxy(&gw, NULL), NULL);
    setenv("http_proxy", "http://plain:3128", 1);
    assert_str_eq(config_pick_proxy(&gw, NULL), NULL); /* wss uses https_proxy only */
    setenv("https_proxy", "http://u:p@proxy:3128/", 1);
    char *p = config_pick_proxy(&gw, NULL);
    assert_str_eq(p, "u:p@proxy:3128");
    free(p);
    assert_str_eq(config_pick_proxy(&gw, "none"), NULL);
    p = config_pick_proxy(&gw, "http://other:8080");
    assert_str_eq(p, "other:8080");
    free(p);
    setenv("no_proxy", "localhost,.example.com", 1);
    assert_str_eq(config_pick_proxy(&gw, NULL), NULL);
    setenv("no_proxy", "example.org", 1);
    p = config_pick_proxy(&gw, NULL);
    assert_str_ne(p, NULL);
    free(p);
    config_parse_gateway("http://127.0.0.1:8088", &gw, err, sizeof err);
    assert_str_eq(config_pick_proxy(&gw, NULL), NULL); /* the environment never proxies loopback */
    p = config_pick_proxy(&gw, "http://proxy:1"); /* ... an explicit --proxy does */
    assert_str_eq(p, "proxy:1");
    free(p);
    config_parse_gateway("http://localhost:8088", &gw, err, sizeof err);
    assert_str_eq(config_pick_proxy(&gw, NULL), NULL);
    config_parse_gateway("ws://gw.internal:8088", &gw, err, sizeof err);
    p = config_pick_proxy(&gw, NULL);
    assert_str_eq(p, "plain:3128");
    free(p);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_gateway_url_parsing),
    cmocka_unit_test(test_allow_lists_fail_closed),
    cmocka_unit_test(test_loopback_names_are_only_loopback),
    cmocka_unit_test_setup_teardown(test_config_flags_override_env, set_config_env, unset_config_env),
    cmocka_unit_test_setup_teardown(test_proxy_choice, no_proxy_env, no_proxy_env),
    cmocka_unit_test(test_proxy_url_parsing),
    cmocka_unit_test_teardown(test_no_gateway_given_discovers, unset_config_env),
};

UNIT_MAIN(tests)
