/* Unit tests for the pure modules: envelope codec, request table, config parsing,
 * helpers.  Prints PASS/FAIL per test and ends with "N passed, N failed". */
#include "buf.h"
#include "config.h"
#include "envelope.h"
#include "log.h"
#include "reqtable.h"
#include "util.h"
#include "wsframe.h"
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int passed, failed, current_failed;

#define CHECK(cond)                                                                  \
    do {                                                                             \
        if (!(cond)) {                                                               \
            printf("  %s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);        \
            current_failed = 1;                                                      \
        }                                                                            \
    } while (0)

#define RUN(fn)                                  \
    do {                                         \
        current_failed = 0;                      \
        fn();                                    \
        printf("%s %s\n", current_failed ? "FAIL" : "PASS", #fn); \
        if (current_failed) failed++; else passed++; \
    } while (0)

static void test_envelope_splices_body_byte_exact(void)
{
    struct buf b;
    buf_init(&b, 16);
    const char *body = "{ \"n\": 12345678901234567890, \"f\": 1.10, \"s\": \"\\u00e9\" }";
    envelope_build(&b, "tgb-1", "graph-rag", "default", "ws\"1", body, strlen(body));
    const char *want = "{\"id\":\"tgb-1\",\"service\":\"graph-rag\",\"flow\":\"default\",\"workspace\":\"ws\\\"1\","
                       "\"request\":{ \"n\": 12345678901234567890, \"f\": 1.10, \"s\": \"\\u00e9\" }}";
    CHECK(!strcmp(buf_ptr(&b), want));
    CHECK(b.head == 16);
    cJSON *j = cJSON_Parse(buf_ptr(&b));
    CHECK(j != NULL);
    cJSON_Delete(j);
    buf_free(&b);
}

static void test_envelope_without_flow_or_workspace(void)
{
    struct buf b;
    buf_init(&b, 0);
    envelope_build(&b, "x", "config", NULL, "", "{}", 2);
    CHECK(!strcmp(buf_ptr(&b), "{\"id\":\"x\",\"service\":\"config\",\"request\":{}}"));
    buf_free(&b);
}

static void test_buf_consume_then_append(void)
{
    struct buf b;
    buf_init(&b, 8);
    for (int i = 0; i < 1000; i++)
        buf_printf(&b, "%04d", i);
    CHECK(b.len == 4000);
    buf_consume(&b, 3990);
    CHECK(b.len == 10 && !memcmp(buf_ptr(&b), "9709980999", 10));
    buf_puts(&b, "abc"); /* compacts: consumed space outweighs what is left */
    CHECK(b.head == 8 && b.len == 13 && !strcmp(buf_ptr(&b), "9709980999abc"));
    buf_consume(&b, 13);
    CHECK(b.len == 0 && b.head == 8);
    buf_free(&b);
}

static void test_envelope_rewrite_keeps_everything_but_the_id(void)
{
    const char *line = "{ \"id\" : 42, \"service\":\"agent\",\"request\":{\"n\":1.10}}";
    struct span id;
    CHECK(json_top_value(line, strlen(line), "id", &id) == 0);
    struct buf b;
    buf_init(&b, 0);
    envelope_rewrite(&b, line, strlen(line), &id, "tgb-x-1", NULL);
    CHECK(!strcmp(buf_ptr(&b), "{ \"id\" : \"tgb-x-1\", \"service\":\"agent\",\"request\":{\"n\":1.10}}"));
    buf_free(&b);
    const char *noid = " {\"service\":\"config\",\"request\":{}}";
    buf_init(&b, 0);
    envelope_rewrite(&b, noid, strlen(noid), NULL, "tgb-x-2", "ws1");
    CHECK(!strcmp(buf_ptr(&b), " {\"id\":\"tgb-x-2\",\"workspace\":\"ws1\",\"service\":\"config\",\"request\":{}}"));
    buf_free(&b);
    const char *hasws = "{\"workspace\":\"mine\",\"id\":\"a\"}";
    CHECK(json_top_value(hasws, strlen(hasws), "id", &id) == 0);
    buf_init(&b, 0);
    envelope_rewrite(&b, hasws, strlen(hasws), &id, "t", "ws1");
    CHECK(!strcmp(buf_ptr(&b), "{\"workspace\":\"mine\",\"id\":\"t\"}"));
    buf_free(&b);
}

static void test_json_escape_control_chars(void)
{
    struct buf b;
    buf_init(&b, 0);
    buf_json_string(&b, "a\n\x01\\\"z", 6);
    CHECK(!strcmp(buf_ptr(&b), "\"a\\n\\u0001\\\\\\\"z\""));
    buf_free(&b);
}

static void test_top_value_spans(void)
{
    const char *t = "{ \"id\" : \"r1\", \"response\" : {\"a\":[1,{\"b\":\"}\\\"\"}],\"c\":null} , \"complete\":true}";
    struct span s;
    CHECK(json_top_value(t, strlen(t), "response", &s) == 0);
    CHECK(span_is(s, "{\"a\":[1,{\"b\":\"}\\\"\"}],\"c\":null}"));
    CHECK(json_top_value(t, strlen(t), "complete", &s) == 0 && span_is(s, "true"));
    CHECK(json_top_value(t, strlen(t), "id", &s) == 0 && span_is(s, "\"r1\""));
    CHECK(json_top_value(t, strlen(t), "nope", &s) != 0);
}

static void parse(const char *t, struct frame *f)
{
    frame_parse(t, strlen(t), f);
}

static void test_frame_kinds(void)
{
    struct frame f;
    parse("{\"id\":\"a\",\"response\":{\"x\":1},\"complete\":false}", &f);
    CHECK(f.kind == FRAME_PART && f.has_id && !strcmp(f.id, "a") && span_is(f.response, "{\"x\":1}"));
    frame_free(&f);
    parse("{\"id\":\"a\",\"response\":{\"x\":1},\"complete\":null}", &f);
    CHECK(f.kind == FRAME_PART); /* v1.6–v1.7 null means not final (ref §5.1) */
    frame_free(&f);
    parse("{\"id\":\"a\",\"response\":{\"end_of_stream\":true},\"complete\":false}", &f);
    CHECK(f.kind == FRAME_PART); /* payload flags never end a request (ref §5.3) */
    frame_free(&f);
    parse("{\"complete\":true,\"response\":{\"x\":2},\"id\":\"a\"}", &f);
    CHECK(f.kind == FRAME_FINAL && span_is(f.response, "{\"x\":2}"));
    frame_free(&f);
}

static void test_frame_error_shapes(void)
{
    struct frame f;
    parse("{\"error\":\"Invalid flow\"}", &f); /* E1 */
    CHECK(f.kind == FRAME_ORPHAN_ERROR && f.error_is_string && !strcmp(f.err_message, "Invalid flow"));
    frame_free(&f);
    parse("{\"id\":\"r1\",\"error\":\"boom\"}", &f); /* E1' */
    CHECK(f.kind == FRAME_TOP_ERROR && f.error_is_string);
    frame_free(&f);
    parse("{\"id\":\"r4\",\"error\":{\"message\":\"Invalid flow default/x\",\"type\":\"error\"},\"complete\":true}", &f);
    CHECK(f.kind == FRAME_TOP_ERROR && !strcmp(f.err_type, "error") && !strcmp(f.err_message, "Invalid flow default/x"));
    frame_free(&f);
    parse("{\"error\":{\"message\":\"Bad message\",\"type\":\"error\"},\"complete\":true}", &f); /* E3 */
    CHECK(f.kind == FRAME_ORPHAN_ERROR && !f.error_is_string);
    frame_free(&f);
    parse("{\"id\":\"\",\"error\":{\"message\":\"m\",\"type\":\"error\"}}", &f); /* falsy id */
    CHECK(f.kind == FRAME_ORPHAN_ERROR);
    frame_free(&f);
    parse("{\"id\":\"r7\",\"error\":{\"message\":\"workspace not found\",\"type\":\"workspace-not-found\"},\"complete\":true}", &f);
    CHECK(f.kind == FRAME_TOP_ERROR && !strcmp(f.err_type, "workspace-not-found"));
    frame_free(&f);
    parse("{\"id\":\"r9\",\"response\":{\"error\":{\"type\":\"llm-error\",\"message\":\"boom\"}},\"complete\":true}", &f);
    CHECK(f.kind == FRAME_FINAL_ERROR && !strcmp(f.err_type, "llm-error") && !strcmp(f.err_message, "boom"));
    frame_free(&f);
    parse("{\"id\":\"r9\",\"response\":{\"error\":{\"type\":\"llm-error\",\"message\":\"x\"}},\"complete\":false}", &f);
    CHECK(f.kind == FRAME_FINAL_ERROR); /* nested error ends it even without complete */
    frame_free(&f);
    parse("{\"id\":\"r12\",\"response\":{\"error\":\"publish failed\"},\"complete\":true}", &f); /* E6 */
    CHECK(f.kind == FRAME_FINAL_ERROR && f.error_is_string && !strcmp(f.err_message, "publish failed"));
    frame_free(&f);
    parse("{\"id\":\"r9\",\"response\":{\"error\":null,\"x\":1},\"complete\":true}", &f);
    CHECK(f.kind == FRAME_FINAL);
    frame_free(&f);
}

static void test_frame_auth_and_invalid(void)
{
    struct frame f;
    parse("{\"type\":\"auth-ok\",\"default_workspace\":\"w1\"}", &f);
    CHECK(f.kind == FRAME_AUTH_OK && f.auth_new_field && !strcmp(f.workspace, "w1"));
    frame_free(&f);
    parse("{\"type\":\"auth-ok\",\"workspace\":\"w0\"}", &f);
    CHECK(f.kind == FRAME_AUTH_OK && !f.auth_new_field && !strcmp(f.workspace, "w0"));
    frame_free(&f);
    parse("{\"type\":\"auth-failed\",\"error\":\"auth failure\"}", &f);
    CHECK(f.kind == FRAME_AUTH_FAILED && !strcmp(f.err_message, "auth failure"));
    frame_free(&f);
    parse("[1,2]", &f);
    CHECK(f.kind == FRAME_INVALID);
    frame_free(&f);
    parse("{\"id\":\"a\",", &f);
    CHECK(f.kind == FRAME_INVALID);
    frame_free(&f);
}

static bool body_ok(const char *b)
{
    return json_body_check(b, strlen(b), NULL) == NULL;
}

static void test_body_check_matches_the_gateways_parser(void)
{
    CHECK(body_ok("{\"a\":1}"));
    CHECK(body_ok(" {\"a\":\"caf\xc3\xa9 \\n \\\" \\u00e9\"} \n"));
    CHECK(body_ok("[1,2]")); /* valid JSON; the REST layer decides it must be an object */
    CHECK(!body_ok(""));
    CHECK(!body_ok("{\"a\":1} trailing"));
    CHECK(!body_ok("{\"a\":1}{}"));
    CHECK(!body_ok("{\"a\":\"tab\there\"}"));    /* raw control char in a string */
    CHECK(!body_ok("{\"a\":\"\xc3\"}"));          /* truncated UTF-8 */
    CHECK(!body_ok("{\"a\":\"\xed\xa0\x80\"}"));  /* UTF-8-encoded surrogate */
    CHECK(!body_ok("{\"a\":\"\xc0\xaf\"}"));      /* overlong */
    CHECK(!body_ok("{\"a\":NaN}"));
    CHECK(!body_ok("{\"a\":\x01 1}"));             /* cJSON's whitespace, not JSON's */
    cJSON *root = NULL;
    const char *b = "{\"streaming\":true}";
    CHECK(json_body_check(b, strlen(b), &root) == NULL && cJSON_IsObject(root));
    cJSON_Delete(root);
}

/* The §5.3 rules written plainly with cJSON: the oracle for the one-pass scanner. */
static enum frame_kind oracle_kind(const cJSON *root)
{
    if (!cJSON_IsObject(root))
        return FRAME_INVALID;
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(root, "type");
    if (cJSON_IsString(type) && !strcmp(type->valuestring, "auth-ok"))
        return FRAME_AUTH_OK;
    if (cJSON_IsString(type) && !strcmp(type->valuestring, "auth-failed"))
        return FRAME_AUTH_FAILED;
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(root, "id");
    bool has_id = cJSON_IsString(id) && id->valuestring[0];
    if (cJSON_GetObjectItemCaseSensitive(root, "error"))
        return has_id ? FRAME_TOP_ERROR : FRAME_ORPHAN_ERROR;
    const cJSON *resp = cJSON_GetObjectItemCaseSensitive(root, "response");
    if (!resp || !has_id)
        return FRAME_OTHER;
    const cJSON *inner = cJSON_IsObject(resp) ? cJSON_GetObjectItemCaseSensitive(resp, "error") : NULL;
    if (inner && !cJSON_IsNull(inner))
        return FRAME_FINAL_ERROR;
    return cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "complete")) ? FRAME_FINAL : FRAME_PART;
}

static unsigned long long rng = 88172645463325252ULL;
static unsigned next_rand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (unsigned)rng;
}

/* Every truncation and thousands of byte mutations of real frames: the scanner never
 * reads out of bounds (ASan runs this too) and agrees with cJSON whenever cJSON
 * accepts the text. */
static void test_frame_scanner_agrees_with_cjson(void)
{
    static const char *const seeds[] = {
        "{\"id\":\"tgb-1\",\"response\":{\"response\":\"Paris \\\"x\\\" }\",\"end_of_stream\":false},\"complete\":false}",
        "{\"complete\": true, \"response\": {\"a\": [1, {\"b\": \"]}\"}], \"error\": null}, \"id\": \"r\"}",
        "{\"id\":\"r9\",\"response\":{\"error\":{\"type\":\"llm-error\",\"message\":\"boom\"}},\"complete\":true}",
        "{\"error\":{\"message\":\"Bad message\",\"type\":\"error\"},\"complete\":true}",
        "{\"id\":\"r4\",\"error\":\"Invalid flow\"}",
        "{\"type\":\"auth-ok\",\"default_workspace\":\"w\\u00e9\"}",
        " { \"type\" : \"auth-failed\" , \"error\" : \"auth failure\" } ",
        "{\"id\":\"\\u0074gb-2\",\"response\":[1,2.5e3,true,null],\"complete\":null}",
    };
    int compared = 0;
    for (size_t k = 0; k < sizeof seeds / sizeof *seeds; k++) {
        size_t n = strlen(seeds[k]);
        for (int round = 0; round < 3000; round++) {
            char buf[512];
            memcpy(buf, seeds[k], n + 1);
            size_t len = n;
            if (round < (int)n) {
                len = (size_t)round; /* every truncation */
            } else {
                int flips = 1 + (int)(next_rand() % 3);
                static const char alphabet[] = "{}[]\":,\\ 0aetrnul\xc3"; /* not \x01: cJSON takes every control character for whitespace */
                for (int j = 0; j < flips; j++)
                    buf[next_rand() % n] = alphabet[next_rand() % (sizeof alphabet - 1)];
            }
            char *text = malloc(len + 1); /* exact size: ASan sees any over-read */
            memcpy(text, buf, len);
            text[len] = '\0';
            struct frame f;
            frame_parse(text, len, &f);
            cJSON *root = cJSON_ParseWithLengthOpts(text, len, NULL, 0);
            const char *end = NULL;
            cJSON_Delete(root);
            root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
            bool whole = root && end && (size_t)(end - text) <= len;
            if (whole)
                for (const char *p = end; p < text + len; p++)
                    if (*p != ' ' && *p != '\t' && *p != '\r' && *p != '\n')
                        whole = false;
            if (whole && cJSON_IsObject(root)) {
                compared++;
                enum frame_kind want = oracle_kind(root);
                if (f.kind != want) {
                    printf("  kind %d != oracle %d for: %s\n", f.kind, want, text);
                    CHECK(f.kind == want);
                }
                if (want == FRAME_PART || want == FRAME_FINAL) {
                    cJSON *mine = cJSON_ParseWithLength(f.response.p, f.response.n);
                    CHECK(mine && cJSON_Compare(mine, cJSON_GetObjectItemCaseSensitive(root, "response"), 1));
                    cJSON_Delete(mine);
                }
            }
            cJSON_Delete(root);
            frame_free(&f);
            free(text);
        }
    }
    CHECK(compared > 1000);
}

static struct window W;

static struct request *sent(struct reqtable *rt)
{
    struct request *r = reqtable_new(rt);
    r->owner = rt; /* any non-NULL owner keeps it alive */
    reqtable_enqueue(rt, r);
    reqtable_mark_sent(rt, r, &W);
    return r;
}

static void drop_all(struct reqtable *rt)
{
    struct list dropped, *pos, *tmp;
    reqtable_drop_window(rt, &W, &dropped);
    list_for_each_safe(pos, tmp, &dropped) {
        struct request *r = list_entry(pos, struct request, wnode);
        list_del(pos);
        r->owner = NULL;
        reqtable_release(rt, r);
    }
}

static void test_reqtable_ids_unique_and_lookup(void)
{
    struct reqtable rt;
    reqtable_init(&rt, "tgb-t");
    window_init(&W);
    struct request *a = sent(&rt), *b = sent(&rt);
    CHECK(strcmp(a->id, b->id) != 0);
    CHECK(reqtable_lookup(&rt, a->id) == a && reqtable_lookup(&rt, b->id) == b);
    CHECK(reqtable_lookup(&rt, "tgb-t-99") == NULL);
    /* many more than the initial bucket count: rehash keeps lookups right */
    struct request *many[1000];
    for (int i = 0; i < 1000; i++)
        many[i] = sent(&rt);
    for (int i = 0; i < 1000; i++)
        CHECK(reqtable_lookup(&rt, many[i]->id) == many[i]);
    drop_all(&rt);
    CHECK(rt.nlive == 0);
    reqtable_destroy(&rt);
}

/* Reference §6.1: the window is anchored at the oldest unfinished request. */
static void test_reqtable_window_anchored_at_oldest(void)
{
    struct reqtable rt;
    reqtable_init(&rt, "w");
    window_init(&W);
    struct request *r[16];
    for (int i = 0; i < 15; i++)
        r[i] = sent(&rt);
    CHECK(window_has_room(&W, 16));
    r[15] = sent(&rt);
    CHECK(!window_has_room(&W, 16));
    /* finishing everything but the oldest frees nothing */
    for (int i = 1; i < 16; i++) {
        r[i]->owner = NULL;
        reqtable_close(&rt, r[i]);
    }
    CHECK(W.n == 16 && !window_has_room(&W, 16));
    CHECK(reqtable_lookup(&rt, r[5]->id) == NULL); /* late frames are dropped */
    /* the oldest finishing frees the whole run behind it */
    r[0]->owner = NULL;
    reqtable_close(&rt, r[0]);
    CHECK(W.n == 0 && rt.nlive == 0);
    reqtable_destroy(&rt);
}

static void test_reqtable_queue_fifo_and_drop(void)
{
    struct reqtable rt;
    reqtable_init(&rt, "q");
    window_init(&W);
    struct request *a = reqtable_new(&rt), *b = reqtable_new(&rt);
    a->owner = b->owner = &rt;
    reqtable_enqueue(&rt, a);
    reqtable_enqueue(&rt, b);
    CHECK(reqtable_queue_head(&rt) == a);
    reqtable_mark_sent(&rt, a, &W);
    CHECK(reqtable_queue_head(&rt) == b && rt.nqueued == 1 && W.n == 1 && a->win == &W);
    struct list dropped;
    reqtable_drop_window(&rt, &W, &dropped);
    CHECK(W.n == 0 && !list_empty(&dropped) && list_entry(dropped.next, struct request, wnode) == a);
    CHECK(reqtable_lookup(&rt, a->id) == NULL && a->state == REQ_CLOSED);
    list_del(&a->wnode);
    a->owner = NULL;
    CHECK(reqtable_release(&rt, a));
    b->owner = NULL;
    reqtable_destroy(&rt);
    CHECK(rt.nlive == 0);
}

static void test_gateway_url_parsing(void)
{
    struct gateway_url u;
    char err[256];
    CHECK(config_parse_gateway("http://localhost:8088", &u, err, sizeof err) == 0);
    CHECK(!u.tls && !strcmp(u.host, "localhost") && u.port == 8088 && !strcmp(u.base_path, ""));
    CHECK(config_parse_gateway("wss://gw.example.com/tg/", &u, err, sizeof err) == 0);
    CHECK(u.tls && u.port == 443 && !strcmp(u.base_path, "/tg"));
    CHECK(config_parse_gateway("ws://[::1]:8888/api/v1/socket", &u, err, sizeof err) == 0);
    CHECK(!strcmp(u.host, "::1") && u.port == 8888 && !strcmp(u.base_path, ""));
    CHECK(config_parse_gateway("https://h:9/x/api/v1/socket/", &u, err, sizeof err) == 0);
    CHECK(!strcmp(u.base_path, "/x"));
    CHECK(config_parse_gateway("ftp://h", &u, err, sizeof err) != 0);
    CHECK(config_parse_gateway("http://h:0", &u, err, sizeof err) != 0);
    CHECK(config_parse_gateway("http://h:70000", &u, err, sizeof err) != 0);
    CHECK(config_parse_gateway("http://h/?token=x", &u, err, sizeof err) != 0);
    CHECK(config_parse_gateway("http://user:pw@h", &u, err, sizeof err) != 0);
}

static void test_sizes_and_seconds(void)
{
    size_t n;
    double d;
    CHECK(parse_size("50m", &n) == 0 && n == 52428800);
    CHECK(parse_size("64KiB", &n) == 0 && n == 65536);
    CHECK(parse_size("123", &n) == 0 && n == 123);
    CHECK(parse_size("-1", &n) != 0 && parse_size("1x", &n) != 0 && parse_size("", &n) != 0);
    CHECK(parse_seconds("0.25", &d) == 0 && fabs(d - 0.25) < 1e-9);
    CHECK(parse_seconds("-1", &d) != 0 && parse_seconds("abc", &d) != 0 && parse_seconds("inf", &d) != 0);
    char *e = url_encode("a+b c&d%/é");
    CHECK(!strcmp(e, "a%2Bb%20c%26d%25%2F%C3%A9"));
    free(e);
}

static void test_config_flags_override_env(void)
{
    struct config cfg;
    char err[256];
    setenv("TGBRIDGE_LISTEN", "127.0.0.1:9000", 1);
    setenv("TRUSTGRAPH_URL", "http://gw:8888/", 1);
    char tok[] = "tg_secret_token";
    char *argv[] = {"tgbridge", "--listen", "[::1]:0", "--token", tok, "--request-timeout", "0.5", NULL};
    CHECK(config_load(&cfg, 7, argv, err, sizeof err) == 0);
    CHECK(!strcmp(cfg.listen_host, "::1") && cfg.listen_port == 0);
    CHECK(!strcmp(cfg.gw.host, "gw") && cfg.gw.port == 8888);
    CHECK(cfg.token && !strcmp(cfg.token, "tg_secret_token"));
    CHECK(strstr(tok, "secret") == NULL); /* argv scrubbed for /proc/PID/cmdline */
    CHECK(fabs(cfg.request_timeout - 0.5) < 1e-9);
    config_free(&cfg);
    char *bad[] = {"tgbridge", "--auth", "magic", NULL};
    CHECK(config_load(&cfg, 3, bad, err, sizeof err) < 0 && strstr(err, "--auth"));
    config_free(&cfg);
    char *inflight[] = {"tgbridge", "--max-inflight", "17", NULL};
    CHECK(config_load(&cfg, 3, inflight, err, sizeof err) < 0);
    config_free(&cfg);
    unsetenv("TGBRIDGE_LISTEN");
    unsetenv("TRUSTGRAPH_URL");
    log_clear_secrets();
}

static void test_proxy_choice(void)
{
    struct gateway_url gw;
    char err[128];
    unsetenv("https_proxy"); unsetenv("HTTPS_PROXY"); unsetenv("http_proxy"); unsetenv("HTTP_PROXY");
    unsetenv("no_proxy"); unsetenv("NO_PROXY");
    config_parse_gateway("wss://gw.example.com", &gw, err, sizeof err);
    CHECK(config_pick_proxy(&gw, NULL) == NULL);
    setenv("http_proxy", "http://plain:3128", 1);
    CHECK(config_pick_proxy(&gw, NULL) == NULL); /* wss uses https_proxy only */
    setenv("https_proxy", "http://u:p@proxy:3128/", 1);
    char *p = config_pick_proxy(&gw, NULL);
    CHECK(p && !strcmp(p, "u:p@proxy:3128"));
    free(p);
    CHECK(config_pick_proxy(&gw, "none") == NULL);
    p = config_pick_proxy(&gw, "http://other:8080");
    CHECK(p && !strcmp(p, "other:8080"));
    free(p);
    setenv("no_proxy", "localhost,.example.com", 1);
    CHECK(config_pick_proxy(&gw, NULL) == NULL);
    setenv("no_proxy", "example.org", 1);
    p = config_pick_proxy(&gw, NULL);
    CHECK(p != NULL);
    free(p);
    config_parse_gateway("http://127.0.0.1:8088", &gw, err, sizeof err);
    CHECK(config_pick_proxy(&gw, NULL) == NULL); /* the environment never proxies loopback */
    p = config_pick_proxy(&gw, "http://proxy:1"); /* ... an explicit --proxy does */
    CHECK(p && !strcmp(p, "proxy:1"));
    free(p);
    config_parse_gateway("http://localhost:8088", &gw, err, sizeof err);
    CHECK(config_pick_proxy(&gw, NULL) == NULL);
    config_parse_gateway("ws://gw.internal:8088", &gw, err, sizeof err);
    p = config_pick_proxy(&gw, NULL);
    CHECK(p && !strcmp(p, "plain:3128"));
    free(p);
    unsetenv("https_proxy"); unsetenv("http_proxy"); unsetenv("no_proxy");
}

/* Decodes one client frame as a server would (RFC 6455 §5.2); returns bytes used. */
static size_t unframe(const unsigned char *p, size_t avail, unsigned char *payload, size_t *len)
{
    CHECK(avail >= 6);
    CHECK(p[0] == 0x81);     /* FIN + text */
    CHECK(p[1] & 0x80);      /* masked */
    size_t h = 2, n = p[1] & 0x7f;
    if (n == 126) {
        n = (size_t)p[2] << 8 | p[3];
        h = 4;
    } else if (n == 127) {
        n = 0;
        for (int i = 0; i < 8; i++)
            n = n << 8 | p[2 + i];
        h = 10;
    }
    const unsigned char *key = p + h;
    h += 4;
    CHECK(h + n <= avail);
    for (size_t i = 0; i < n; i++)
        payload[i] = p[h + i] ^ key[i & 3];
    *len = n;
    return h + n;
}

static void test_wsframe_lengths_masking_and_bursts(void)
{
    /* Every length encoding, each side of its boundary, several frames in one buffer. */
    static const size_t lens[] = {0, 1, 7, 8, 9, 125, 126, 127, 65535, 65536, 70001};
    size_t nl = sizeof lens / sizeof *lens;
    unsigned char *src = malloc(70001), *got = malloc(70001);
    for (size_t i = 0; i < 70001; i++)
        src[i] = (unsigned char)("{\"abc\":123}"[i % 11] + i % 3);
    struct buf b;
    buf_init(&b, 16);
    size_t want_total = 0;
    for (size_t i = 0; i < nl; i++) {
        wsframe_append_text(&b, src, lens[i]);
        want_total += wsframe_header_len(lens[i]) + lens[i];
    }
    CHECK(b.len == want_total);
    CHECK(wsframe_header_len(125) == 6 && wsframe_header_len(126) == 8 && wsframe_header_len(65536) == 14);
    const unsigned char *p = (const unsigned char *)buf_ptr(&b);
    size_t off = 0;
    unsigned char keys[16][4];
    for (size_t i = 0; i < nl; i++) {
        size_t n = 0;
        size_t used = unframe(p + off, b.len - off, got, &n);
        CHECK(n == lens[i]);
        CHECK(!memcmp(got, src, n));
        memcpy(keys[i], p + off + wsframe_header_len(n) - 4, 4);
        off += used;
    }
    CHECK(off == b.len);
    /* Fresh keys per frame (a repeat among 11 random 32-bit keys is ~1e-8 likely). */
    for (size_t i = 0; i < nl; i++)
        for (size_t j = i + 1; j < nl; j++)
            CHECK(memcmp(keys[i], keys[j], 4) != 0);
    buf_free(&b);
    free(src);
    free(got);
}

int main(void)
{
    log_set_level(LOG_ERROR);
    RUN(test_envelope_splices_body_byte_exact);
    RUN(test_envelope_without_flow_or_workspace);
    RUN(test_buf_consume_then_append);
    RUN(test_json_escape_control_chars);
    RUN(test_envelope_rewrite_keeps_everything_but_the_id);
    RUN(test_top_value_spans);
    RUN(test_frame_kinds);
    RUN(test_frame_error_shapes);
    RUN(test_frame_auth_and_invalid);
    RUN(test_frame_scanner_agrees_with_cjson);
    RUN(test_body_check_matches_the_gateways_parser);
    RUN(test_reqtable_ids_unique_and_lookup);
    RUN(test_reqtable_window_anchored_at_oldest);
    RUN(test_reqtable_queue_fifo_and_drop);
    RUN(test_gateway_url_parsing);
    RUN(test_sizes_and_seconds);
    RUN(test_config_flags_override_env);
    RUN(test_proxy_choice);
    RUN(test_wsframe_lengths_masking_and_bursts);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
