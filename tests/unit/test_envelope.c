/* envelope.c: envelopes built and rewritten byte-exact, reply frames classified
 * (reference §5.3), local clients' messages checked. */
#include "unit_main.h"
#include "../lib/utf8_valid.h"
#include "envelope.h"
#include "buf.h"
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

static const char *kind_name(long long k)
{
    switch (k) {
#define KIND_(x) case x: return #x
    KIND_(FRAME_INVALID); KIND_(FRAME_AUTH_OK); KIND_(FRAME_AUTH_FAILED); KIND_(FRAME_PART);
    KIND_(FRAME_FINAL); KIND_(FRAME_FINAL_ERROR); KIND_(FRAME_TOP_ERROR);
    KIND_(FRAME_ORPHAN_ERROR); KIND_(FRAME_OTHER);
#undef KIND_
    }
    return "?";
}

/* Frame kinds, by name. */
#define assert_kind_eq(a, b)                                                                 \
    do {                                                                                     \
        long long a_ = (long long)(a), b_ = (long long)(b);                                  \
        if (a_ != b_)                                                                        \
            fail_msg("%s == %s: %s (%lld) vs %s (%lld)", #a, #b, kind_name(a_), a_, kind_name(b_), b_); \
    } while (0)

static void test_envelope_splices_body_byte_exact(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b, 16);
    const char *body = "{ \"n\": 12345678901234567890, \"f\": 1.10, \"s\": \"\\u00e9\" }";
    envelope_build(&b, "tgb-1", "graph-rag", "default", "ws\"1", body, strlen(body));
    const char *want = "{\"id\":\"tgb-1\",\"service\":\"graph-rag\",\"flow\":\"default\",\"workspace\":\"ws\\\"1\","
                       "\"request\":{ \"n\": 12345678901234567890, \"f\": 1.10, \"s\": \"\\u00e9\" }}";
    assert_str_eq(buf_ptr(&b), want);
    assert_int_equal(b.head, 16);
    cJSON *j = cJSON_Parse(buf_ptr(&b));
    assert_ptr_not_equal(j, NULL);
    cJSON_Delete(j);
    buf_free(&b);
}

static void test_envelope_without_flow_or_workspace(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b, 0);
    envelope_build(&b, "x", "config", NULL, "", "{}", 2);
    assert_str_eq(buf_ptr(&b), "{\"id\":\"x\",\"service\":\"config\",\"request\":{}}");
    buf_free(&b);
}

static void test_envelope_rewrite_keeps_everything_but_the_id(void **state)
{
    (void)state;
    const char *line = "{ \"id\" : 42, \"service\":\"agent\",\"request\":{\"n\":1.10}}";
    struct span id;
    assert_int_equal(json_top_value(line, strlen(line), "id", &id), 0);
    struct buf b;
    buf_init(&b, 0);
    envelope_rewrite(&b, line, strlen(line), &id, "tgb-x-1", NULL);
    assert_str_eq(buf_ptr(&b), "{ \"id\" : \"tgb-x-1\", \"service\":\"agent\",\"request\":{\"n\":1.10}}");
    buf_free(&b);
    const char *noid = " {\"service\":\"config\",\"request\":{}}";
    buf_init(&b, 0);
    envelope_rewrite(&b, noid, strlen(noid), NULL, "tgb-x-2", "ws1");
    assert_str_eq(buf_ptr(&b), " {\"id\":\"tgb-x-2\",\"workspace\":\"ws1\",\"service\":\"config\",\"request\":{}}");
    buf_free(&b);
    const char *hasws = "{\"workspace\":\"mine\",\"id\":\"a\"}";
    assert_int_equal(json_top_value(hasws, strlen(hasws), "id", &id), 0);
    buf_init(&b, 0);
    envelope_rewrite(&b, hasws, strlen(hasws), &id, "t", "ws1");
    assert_str_eq(buf_ptr(&b), "{\"workspace\":\"mine\",\"id\":\"t\"}");
    buf_free(&b);
}

static void parse(const char *t, struct frame *f)
{
    frame_parse(t, strlen(t), f);
}

static void test_frame_kinds(void **state)
{
    (void)state;
    struct frame f;
    parse("{\"id\":\"a\",\"response\":{\"x\":1},\"complete\":false}", &f);
    assert_kind_eq(f.kind, FRAME_PART);
    assert_true(f.has_id);
    assert_str_eq(f.id, "a");
    assert_span_is(f.response, "{\"x\":1}");
    frame_free(&f);
    parse("{\"id\":\"a\",\"response\":{\"x\":1},\"complete\":null}", &f);
    assert_kind_eq(f.kind, FRAME_PART); /* v1.6–v1.7 null means not final (ref §5.1) */
    frame_free(&f);
    parse("{\"id\":\"a\",\"response\":{\"end_of_stream\":true},\"complete\":false}", &f);
    assert_kind_eq(f.kind, FRAME_PART); /* payload flags never end a request (ref §5.3) */
    frame_free(&f);
    parse("{\"complete\":true,\"response\":{\"x\":2},\"id\":\"a\"}", &f);
    assert_kind_eq(f.kind, FRAME_FINAL);
    assert_span_is(f.response, "{\"x\":2}");
    frame_free(&f);
}

static void test_frame_error_shapes(void **state)
{
    (void)state;
    struct frame f;
    parse("{\"error\":\"Invalid flow\"}", &f); /* E1 */
    assert_kind_eq(f.kind, FRAME_ORPHAN_ERROR);
    assert_true(f.error_is_string);
    assert_str_eq(f.err_message, "Invalid flow");
    frame_free(&f);
    parse("{\"id\":\"r1\",\"error\":\"boom\"}", &f); /* E1' */
    assert_kind_eq(f.kind, FRAME_TOP_ERROR);
    assert_true(f.error_is_string);
    frame_free(&f);
    parse("{\"id\":\"r4\",\"error\":{\"message\":\"Invalid flow default/x\",\"type\":\"error\"},\"complete\":true}", &f);
    assert_kind_eq(f.kind, FRAME_TOP_ERROR);
    assert_str_eq(f.err_type, "error");
    assert_str_eq(f.err_message, "Invalid flow default/x");
    frame_free(&f);
    parse("{\"error\":{\"message\":\"Bad message\",\"type\":\"error\"},\"complete\":true}", &f); /* E3 */
    assert_kind_eq(f.kind, FRAME_ORPHAN_ERROR);
    assert_true(!f.error_is_string);
    frame_free(&f);
    parse("{\"id\":\"\",\"error\":{\"message\":\"m\",\"type\":\"error\"}}", &f); /* falsy id */
    assert_kind_eq(f.kind, FRAME_ORPHAN_ERROR);
    frame_free(&f);
    parse("{\"id\":\"r7\",\"error\":{\"message\":\"workspace not found\",\"type\":\"workspace-not-found\"},\"complete\":true}", &f);
    assert_kind_eq(f.kind, FRAME_TOP_ERROR);
    assert_str_eq(f.err_type, "workspace-not-found");
    frame_free(&f);
    parse("{\"id\":\"r9\",\"response\":{\"error\":{\"type\":\"llm-error\",\"message\":\"boom\"}},\"complete\":true}", &f);
    assert_kind_eq(f.kind, FRAME_FINAL_ERROR);
    assert_str_eq(f.err_type, "llm-error");
    assert_str_eq(f.err_message, "boom");
    frame_free(&f);
    parse("{\"id\":\"r9\",\"response\":{\"error\":{\"type\":\"llm-error\",\"message\":\"x\"}},\"complete\":false}", &f);
    assert_kind_eq(f.kind, FRAME_FINAL_ERROR); /* nested error ends it even without complete */
    frame_free(&f);
    parse("{\"id\":\"r12\",\"response\":{\"error\":\"publish failed\"},\"complete\":true}", &f); /* E6 */
    assert_kind_eq(f.kind, FRAME_FINAL_ERROR);
    assert_true(f.error_is_string);
    assert_str_eq(f.err_message, "publish failed");
    frame_free(&f);
    parse("{\"id\":\"r9\",\"response\":{\"error\":null,\"x\":1},\"complete\":true}", &f);
    assert_kind_eq(f.kind, FRAME_FINAL);
    frame_free(&f);
}

static void test_frame_auth_and_invalid(void **state)
{
    (void)state;
    struct frame f;
    parse("{\"type\":\"auth-ok\",\"default_workspace\":\"w1\"}", &f);
    assert_kind_eq(f.kind, FRAME_AUTH_OK);
    assert_true(f.auth_new_field);
    assert_str_eq(f.workspace, "w1");
    frame_free(&f);
    parse("{\"type\":\"auth-ok\",\"workspace\":\"w0\"}", &f);
    assert_kind_eq(f.kind, FRAME_AUTH_OK);
    assert_true(!f.auth_new_field);
    assert_str_eq(f.workspace, "w0");
    frame_free(&f);
    parse("{\"type\":\"auth-failed\",\"error\":\"auth failure\"}", &f);
    assert_kind_eq(f.kind, FRAME_AUTH_FAILED);
    assert_str_eq(f.err_message, "auth failure");
    frame_free(&f);
    parse("[1,2]", &f);
    assert_kind_eq(f.kind, FRAME_INVALID);
    frame_free(&f);
    parse("{\"id\":\"a\",", &f);
    assert_kind_eq(f.kind, FRAME_INVALID);
    frame_free(&f);
}


/* Every backslash escape in the strings of a text cJSON parsed whole is one of
 * RFC 8259's: \" \\ \/ \b \f \n \r \t or \u and four hex digits.  (cJSON lets some
 * malformed \u escapes through; Python's json, the gateway's, does not.) */
static bool escapes_valid(const char *t, size_t n)
{
    bool in_string = false;
    for (size_t i = 0; i < n; i++) {
        if (!in_string) {
            in_string = t[i] == '"';
        } else if (t[i] == '"') {
            in_string = false;
        } else if (t[i] == '\\') {
            if (++i == n || !t[i] || !strchr("\"\\/bfnrtu", t[i]))
                return false;
            if (t[i] == 'u')
                for (int k = 0; k < 4; k++)
                    if (++i == n || !t[i] || !strchr("0123456789abcdefABCDEF", t[i]))
                        return false;
        }
    }
    return true;
}

/* The §5.3 rules written plainly with cJSON: the oracle for the one-pass scanner, for
 * a text cJSON parsed whole.  A frame the gateway's JSON could not have written (not
 * UTF-8, a malformed escape: where cJSON is laxer) is FRAME_INVALID, never forwarded
 * (see envelope.h), whatever cJSON made of it. */
static enum frame_kind oracle_kind(const cJSON *root, const char *text, size_t len)
{
    if (!cJSON_IsObject(root) || !utf8_valid(text, len) || !escapes_valid(text, len))
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

/* Context for a check about to fail: the input it was about. */
static void show_input(const char *text, size_t len)
{
    print_message("  input: ");
    unit_print_bytes(text, len, 600);
    print_message("\n");
}

/* The scanner's verdict on text (exactly len bytes: ASan sees any over-read) against
 * the oracle's, when cJSON parses it whole into an object; true if they were compared. */
static bool agrees_with_cjson(const char *text, size_t len)
{
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
    bool compared = whole && cJSON_IsObject(root);
    if (compared) {
        enum frame_kind want = oracle_kind(root, text, len);
        if (f.kind != want)
            show_input(text, len);
        assert_kind_eq(f.kind, want);
        if (want == FRAME_PART || want == FRAME_FINAL) {
            cJSON *mine = cJSON_ParseWithLength(f.response.p, f.response.n);
            if (!mine)
                show_input(text, len);
            assert_ptr_not_equal(mine, NULL);
            bool same = cJSON_Compare(mine, cJSON_GetObjectItemCaseSensitive(root, "response"), 1);
            if (!same) {
                show_input(text, len);
                print_message("  scanner's response: ");
                unit_print_bytes(f.response.p, f.response.n, 600);
                print_message("\n");
            }
            assert_true(same);
            cJSON_Delete(mine);
        }
    }
    cJSON_Delete(root);
    frame_free(&f);
    return compared;
}

/* Every truncation and thousands of byte mutations of real frames: the scanner never
 * reads out of bounds (ASan runs this too) and agrees with cJSON whenever cJSON
 * accepts the text. */
static void test_frame_scanner_agrees_with_cjson(void **state)
{
    (void)state;
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
            compared += agrees_with_cjson(text, len);
            free(text);
        }
    }
    assert_int_gt(compared, 1000);
}

static void test_client_messages(void **state)
{
    (void)state;
    struct client_msg_info m;
    const char *req = "{\"id\":7,\"service\":\"agent\",\"flow\":\"f\",\"request\":{}}";
    client_msg_parse(req, strlen(req), "line", &m);
    assert_int_equal(m.kind, CMSG_REQUEST);
    assert_span_is(m.id, "7");
    assert_str_eq(m.service, "agent");
    assert_true(m.has_flow);
    const char *null_id = "{\"id\":null,\"service\":\"config\",\"request\":{}}";
    client_msg_parse(null_id, strlen(null_id), "line", &m);
    assert_int_equal(m.kind, CMSG_REQUEST);
    assert_true(m.id_present && !m.id.p && !m.has_flow);
    const char *ping = " {\"type\":\"ping\"}\r";
    client_msg_parse(ping, strlen(ping), "line", &m);
    assert_int_equal(m.kind, CMSG_CONTROL);
    assert_str_eq(m.type, "ping");
    client_msg_parse(" \t\r", 3, "line", &m);
    assert_int_equal(m.kind, CMSG_BLANK);
    struct { const char *text, *error; bool with_id; } bad[] = {
        {"{\"id\":1,", "line is not valid JSON", false},
        {"[1]", "a message must be a JSON object", false},
        {"{\"id\":1,\"id\":2,\"service\":\"x\",\"request\":{}}", "the key \"id\" appears more than once", false},
        {"{\"\\u0069d\":1,\"service\":\"x\",\"request\":{}}", "write the \"id\" key without escapes", false},
        {"{\"id\":\"a\",\"request\":{}}", "missing \"service\" (a string such as \"graph-rag\")", true},
        {"{\"id\":\"a\",\"service\":\"x\",\"request\":[]}", "\"request\" must be a JSON object", true},
        {"{\"id\":\"a\",\"service\":\"x\",\"flow\":1,\"request\":{}}", "\"flow\" must be a string", true},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        client_msg_parse(bad[i].text, strlen(bad[i].text), i == 1 ? "message" : "line", &m);
        assert_int_equal(m.kind, CMSG_BAD);
        assert_str_eq(m.error, bad[i].error);
        assert_int_equal(m.id.p != NULL, bad[i].with_id);
    }
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_envelope_splices_body_byte_exact),
    cmocka_unit_test(test_envelope_without_flow_or_workspace),
    cmocka_unit_test(test_envelope_rewrite_keeps_everything_but_the_id),
    cmocka_unit_test(test_frame_kinds),
    cmocka_unit_test(test_frame_error_shapes),
    cmocka_unit_test(test_frame_auth_and_invalid),
    cmocka_unit_test(test_frame_scanner_agrees_with_cjson),
    cmocka_unit_test(test_client_messages),
};

UNIT_MAIN(tests)
