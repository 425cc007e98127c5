/* Unit tests for the pure modules: envelope codec, request table, config parsing,
 * helpers.  Prints PASS/FAIL per test and ends with "N passed, N failed". */
#include "buf.h"
#include "config.h"
#include "envelope.h"
#include "health.h"
#include "lineframe.h"
#include "log.h"
#include "redact.h"
#include "reqtable.h"
#include "status.h"
#include "util.h"
#include "wsframe.h"
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int passed, failed, current_failed;

/* Every check that fails prints where and why, marks the test failed and returns from
 * the function it is in: a test stops at its first failed check, so nothing after it
 * runs on a broken assumption (an index out of bounds, a NULL).  Helpers that check
 * are void functions called through CHECK_CALL, which stops their caller too.  A
 * failing test may leak what it had allocated. */
#define FAIL_RETURN()        \
    do {                     \
        fflush(stdout);      \
        current_failed = 1;  \
        return;              \
    } while (0)

#define CHECK(cond)                                                                  \
    do {                                                                             \
        if (!(cond)) {                                                               \
            printf("  %s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);        \
            FAIL_RETURN();                                                           \
        }                                                                            \
    } while (0)

/* Integer comparisons: each operand is evaluated once, as long long (CHECK_*_INT:
 * ints, enums, return codes) or unsigned long long (CHECK_*_SIZE: size_t). */
#define CHECK_CMP_(type, fmt, a, op, b, sa, sb)                                      \
    do {                                                                             \
        type a_ = (type)(a), b_ = (type)(b);                                         \
        if (!(a_ op b_)) {                                                           \
            printf("  %s:%d: %s %s %s failed: " fmt " vs " fmt "\n", __FILE__,       \
                   __LINE__, sa, #op, sb, a_, b_);                                   \
            FAIL_RETURN();                                                           \
        }                                                                            \
    } while (0)
#define CHECK_EQ_INT(a, b) CHECK_CMP_(long long, "%lld", a, ==, b, #a, #b)
#define CHECK_NE_INT(a, b) CHECK_CMP_(long long, "%lld", a, !=, b, #a, #b)
#define CHECK_LT_INT(a, b) CHECK_CMP_(long long, "%lld", a, <, b, #a, #b)
#define CHECK_GT_INT(a, b) CHECK_CMP_(long long, "%lld", a, >, b, #a, #b)
#define CHECK_EQ_SIZE(a, b) CHECK_CMP_(unsigned long long, "%llu", a, ==, b, #a, #b)
#define CHECK_LE_SIZE(a, b) CHECK_CMP_(unsigned long long, "%llu", a, <=, b, #a, #b)
#define CHECK_GE_SIZE(a, b) CHECK_CMP_(unsigned long long, "%llu", a, >=, b, #a, #b)

#define CHECK_PTR_(a, op, b, sa, sb)                                                 \
    do {                                                                             \
        const void *a_ = (a), *b_ = (b);                                             \
        if (!(a_ op b_)) {                                                           \
            printf("  %s:%d: %s %s %s failed: %p vs %p\n", __FILE__, __LINE__, sa,   \
                   #op, sb, a_, b_);                                                 \
            FAIL_RETURN();                                                           \
        }                                                                            \
    } while (0)
#define CHECK_EQ_PTR(a, b) CHECK_PTR_(a, ==, b, #a, #b)
#define CHECK_NE_PTR(a, b) CHECK_PTR_(a, !=, b, #a, #b)

/* Prints n bytes (or a NUL-terminated string when n is (size_t)-1) as a quoted C
 * literal, at most `max` bytes of it; "(null)" for NULL. */
static void print_bytes(const char *p, size_t n, size_t max)
{
    if (!p) {
        fputs("(null)", stdout);
        return;
    }
    if (n == (size_t)-1)
        n = strlen(p);
    putchar('"');
    for (size_t i = 0; i < n && i < max; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c == '\n')
            fputs("\\n", stdout);
        else if (c == '\t')
            fputs("\\t", stdout);
        else if (c < 0x20 || c >= 0x7f)
            printf("\\x%02x", c);
        else
            putchar(c);
    }
    putchar('"');
    if (n > max)
        printf("...(%zu bytes)", n);
}

static bool str_eq(const char *a, const char *b)
{
    return a && b ? !strcmp(a, b) : a == b;
}

/* Strings; NULL-safe: NULL equals only NULL. */
#define CHECK_STR_(a, want_equal, b, sa, sb)                                         \
    do {                                                                             \
        const char *a_ = (a), *b_ = (b);                                             \
        if (str_eq(a_, b_) != (want_equal)) {                                        \
            printf("  %s:%d: %s %s %s failed: ", __FILE__, __LINE__, sa,             \
                   (want_equal) ? "==" : "!=", sb);                                  \
            print_bytes(a_, (size_t)-1, 400);                                        \
            fputs(" vs ", stdout);                                                   \
            print_bytes(b_, (size_t)-1, 400);                                        \
            putchar('\n');                                                           \
            FAIL_RETURN();                                                           \
        }                                                                            \
    } while (0)
#define CHECK_EQ_STR(a, b) CHECK_STR_(a, true, b, #a, #b)
#define CHECK_NE_STR(a, b) CHECK_STR_(a, false, b, #a, #b)

/* strstr(haystack, needle) found (CONTAINS) or not (LACKS); a NULL haystack fails. */
#define CHECK_STR_HAS_(h, want_found, needle, sh, sn)                                \
    do {                                                                             \
        const char *h_ = (h), *n_ = (needle);                                        \
        if (!h_ || (strstr(h_, n_) != NULL) != (want_found)) {                       \
            printf("  %s:%d: %s %s %s failed: ", __FILE__, __LINE__, sh,             \
                   (want_found) ? "contains" : "lacks", sn);                         \
            print_bytes(h_, (size_t)-1, 400);                                        \
            fputs(" vs ", stdout);                                                   \
            print_bytes(n_, (size_t)-1, 400);                                        \
            putchar('\n');                                                           \
            FAIL_RETURN();                                                           \
        }                                                                            \
    } while (0)
#define CHECK_STR_CONTAINS(h, needle) CHECK_STR_HAS_(h, true, needle, #h, #needle)
#define CHECK_STR_LACKS(h, needle) CHECK_STR_HAS_(h, false, needle, #h, #needle)

/* The first n bytes of a and b; shows both from a little before the first difference. */
#define CHECK_MEM_(a, want_equal, b, n, sa, sb)                                      \
    do {                                                                             \
        const char *a_ = (const char *)(a), *b_ = (const char *)(b);                 \
        size_t n_ = (n);                                                             \
        if ((memcmp(a_, b_, n_) == 0) != (want_equal)) {                             \
            size_t d_ = 0;                                                           \
            while (d_ < n_ && a_[d_] == b_[d_])                                      \
                d_++;                                                                \
            size_t from_ = d_ > 16 ? d_ - 16 : 0;                                    \
            printf("  %s:%d: %s %s %s (%zu bytes) failed: ", __FILE__, __LINE__, sa, \
                   (want_equal) ? "==" : "!=", sb, n_);                              \
            if (from_)                                                               \
                printf("[from byte %zu] ", from_);                                   \
            print_bytes(a_ + from_, n_ - from_, 48);                                 \
            fputs(" vs ", stdout);                                                   \
            print_bytes(b_ + from_, n_ - from_, 48);                                 \
            if (d_ < n_)                                                             \
                printf(" (first difference at byte %zu)", d_);                       \
            putchar('\n');                                                           \
            FAIL_RETURN();                                                           \
        }                                                                            \
    } while (0)
#define CHECK_EQ_MEM(a, b, n) CHECK_MEM_(a, true, b, n, #a, #b)
#define CHECK_NE_MEM(a, b, n) CHECK_MEM_(a, false, b, n, #a, #b)

/* span_is(s, lit), showing the span's bytes. */
#define CHECK_SPAN_IS(s, lit)                                                        \
    do {                                                                             \
        struct span s_ = (s);                                                        \
        const char *l_ = (lit);                                                      \
        if (!span_is(s_, l_)) {                                                      \
            printf("  %s:%d: %s == %s failed: ", __FILE__, __LINE__, #s, #lit);      \
            print_bytes(s_.p, s_.n, 400);                                            \
            fputs(" vs ", stdout);                                                   \
            print_bytes(l_, (size_t)-1, 400);                                        \
            putchar('\n');                                                           \
            FAIL_RETURN();                                                           \
        }                                                                            \
    } while (0)

/* |a - b| < eps, as doubles. */
#define CHECK_NEAR(a, b, eps)                                                        \
    do {                                                                             \
        double a_ = (a), b_ = (b), e_ = (eps);                                       \
        if (!(fabs(a_ - b_) < e_)) {                                                 \
            printf("  %s:%d: %s == %s (within %g) failed: %.17g vs %.17g\n",         \
                   __FILE__, __LINE__, #a, #b, e_, a_, b_);                          \
            FAIL_RETURN();                                                           \
        }                                                                            \
    } while (0)

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
#define CHECK_EQ_KIND(a, b)                                                          \
    do {                                                                             \
        long long a_ = (long long)(a), b_ = (long long)(b);                          \
        if (a_ != b_) {                                                              \
            printf("  %s:%d: %s == %s failed: %s (%lld) vs %s (%lld)\n", __FILE__,   \
                   __LINE__, #a, #b, kind_name(a_), a_, kind_name(b_), b_);          \
            FAIL_RETURN();                                                           \
        }                                                                            \
    } while (0)

/* Calls a void helper that uses the checks above; stops this test too if one failed. */
#define CHECK_CALL(call)                                                             \
    do {                                                                             \
        call;                                                                        \
        if (current_failed) {                                                        \
            printf("  %s:%d: ... in %s\n", __FILE__, __LINE__, #call);               \
            FAIL_RETURN();                                                           \
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
    CHECK_EQ_STR(buf_ptr(&b), want);
    CHECK_EQ_SIZE(b.head, 16);
    cJSON *j = cJSON_Parse(buf_ptr(&b));
    CHECK_NE_PTR(j, NULL);
    cJSON_Delete(j);
    buf_free(&b);
}

static void test_envelope_without_flow_or_workspace(void)
{
    struct buf b;
    buf_init(&b, 0);
    envelope_build(&b, "x", "config", NULL, "", "{}", 2);
    CHECK_EQ_STR(buf_ptr(&b), "{\"id\":\"x\",\"service\":\"config\",\"request\":{}}");
    buf_free(&b);
}

static void test_buf_consume_then_append(void)
{
    struct buf b;
    buf_init(&b, 8);
    for (int i = 0; i < 1000; i++)
        buf_printf(&b, "%04d", i);
    CHECK_EQ_SIZE(b.len, 4000);
    buf_consume(&b, 3990);
    CHECK_EQ_SIZE(b.len, 10);
    CHECK_EQ_MEM(buf_ptr(&b), "9709980999", 10);
    buf_puts(&b, "abc"); /* compacts: consumed space outweighs what is left */
    CHECK_EQ_SIZE(b.head, 8);
    CHECK_EQ_SIZE(b.len, 13);
    CHECK_EQ_STR(buf_ptr(&b), "9709980999abc");
    buf_consume(&b, 13);
    CHECK_EQ_SIZE(b.len, 0);
    CHECK_EQ_SIZE(b.head, 8);
    buf_free(&b);
}

static void test_envelope_rewrite_keeps_everything_but_the_id(void)
{
    const char *line = "{ \"id\" : 42, \"service\":\"agent\",\"request\":{\"n\":1.10}}";
    struct span id;
    CHECK_EQ_INT(json_top_value(line, strlen(line), "id", &id), 0);
    struct buf b;
    buf_init(&b, 0);
    envelope_rewrite(&b, line, strlen(line), &id, "tgb-x-1", NULL);
    CHECK_EQ_STR(buf_ptr(&b), "{ \"id\" : \"tgb-x-1\", \"service\":\"agent\",\"request\":{\"n\":1.10}}");
    buf_free(&b);
    const char *noid = " {\"service\":\"config\",\"request\":{}}";
    buf_init(&b, 0);
    envelope_rewrite(&b, noid, strlen(noid), NULL, "tgb-x-2", "ws1");
    CHECK_EQ_STR(buf_ptr(&b), " {\"id\":\"tgb-x-2\",\"workspace\":\"ws1\",\"service\":\"config\",\"request\":{}}");
    buf_free(&b);
    const char *hasws = "{\"workspace\":\"mine\",\"id\":\"a\"}";
    CHECK_EQ_INT(json_top_value(hasws, strlen(hasws), "id", &id), 0);
    buf_init(&b, 0);
    envelope_rewrite(&b, hasws, strlen(hasws), &id, "t", "ws1");
    CHECK_EQ_STR(buf_ptr(&b), "{\"workspace\":\"mine\",\"id\":\"t\"}");
    buf_free(&b);
}

static void test_json_escape_control_chars(void)
{
    struct buf b;
    buf_init(&b, 0);
    buf_json_string(&b, "a\n\x01\\\"z", 6);
    CHECK_EQ_STR(buf_ptr(&b), "\"a\\n\\u0001\\\\\\\"z\"");
    buf_free(&b);
}

static void test_top_value_spans(void)
{
    const char *t = "{ \"id\" : \"r1\", \"response\" : {\"a\":[1,{\"b\":\"}\\\"\"}],\"c\":null} , \"complete\":true}";
    struct span s;
    CHECK_EQ_INT(json_top_value(t, strlen(t), "response", &s), 0);
    CHECK_SPAN_IS(s, "{\"a\":[1,{\"b\":\"}\\\"\"}],\"c\":null}");
    CHECK_EQ_INT(json_top_value(t, strlen(t), "complete", &s), 0);
    CHECK_SPAN_IS(s, "true");
    CHECK_EQ_INT(json_top_value(t, strlen(t), "id", &s), 0);
    CHECK_SPAN_IS(s, "\"r1\"");
    CHECK_NE_INT(json_top_value(t, strlen(t), "nope", &s), 0);
}

static void parse(const char *t, struct frame *f)
{
    frame_parse(t, strlen(t), f);
}

static void test_frame_kinds(void)
{
    struct frame f;
    parse("{\"id\":\"a\",\"response\":{\"x\":1},\"complete\":false}", &f);
    CHECK_EQ_KIND(f.kind, FRAME_PART);
    CHECK(f.has_id);
    CHECK_EQ_STR(f.id, "a");
    CHECK_SPAN_IS(f.response, "{\"x\":1}");
    frame_free(&f);
    parse("{\"id\":\"a\",\"response\":{\"x\":1},\"complete\":null}", &f);
    CHECK_EQ_KIND(f.kind, FRAME_PART); /* v1.6–v1.7 null means not final (ref §5.1) */
    frame_free(&f);
    parse("{\"id\":\"a\",\"response\":{\"end_of_stream\":true},\"complete\":false}", &f);
    CHECK_EQ_KIND(f.kind, FRAME_PART); /* payload flags never end a request (ref §5.3) */
    frame_free(&f);
    parse("{\"complete\":true,\"response\":{\"x\":2},\"id\":\"a\"}", &f);
    CHECK_EQ_KIND(f.kind, FRAME_FINAL);
    CHECK_SPAN_IS(f.response, "{\"x\":2}");
    frame_free(&f);
}

static void test_frame_error_shapes(void)
{
    struct frame f;
    parse("{\"error\":\"Invalid flow\"}", &f); /* E1 */
    CHECK_EQ_KIND(f.kind, FRAME_ORPHAN_ERROR);
    CHECK(f.error_is_string);
    CHECK_EQ_STR(f.err_message, "Invalid flow");
    frame_free(&f);
    parse("{\"id\":\"r1\",\"error\":\"boom\"}", &f); /* E1' */
    CHECK_EQ_KIND(f.kind, FRAME_TOP_ERROR);
    CHECK(f.error_is_string);
    frame_free(&f);
    parse("{\"id\":\"r4\",\"error\":{\"message\":\"Invalid flow default/x\",\"type\":\"error\"},\"complete\":true}", &f);
    CHECK_EQ_KIND(f.kind, FRAME_TOP_ERROR);
    CHECK_EQ_STR(f.err_type, "error");
    CHECK_EQ_STR(f.err_message, "Invalid flow default/x");
    frame_free(&f);
    parse("{\"error\":{\"message\":\"Bad message\",\"type\":\"error\"},\"complete\":true}", &f); /* E3 */
    CHECK_EQ_KIND(f.kind, FRAME_ORPHAN_ERROR);
    CHECK(!f.error_is_string);
    frame_free(&f);
    parse("{\"id\":\"\",\"error\":{\"message\":\"m\",\"type\":\"error\"}}", &f); /* falsy id */
    CHECK_EQ_KIND(f.kind, FRAME_ORPHAN_ERROR);
    frame_free(&f);
    parse("{\"id\":\"r7\",\"error\":{\"message\":\"workspace not found\",\"type\":\"workspace-not-found\"},\"complete\":true}", &f);
    CHECK_EQ_KIND(f.kind, FRAME_TOP_ERROR);
    CHECK_EQ_STR(f.err_type, "workspace-not-found");
    frame_free(&f);
    parse("{\"id\":\"r9\",\"response\":{\"error\":{\"type\":\"llm-error\",\"message\":\"boom\"}},\"complete\":true}", &f);
    CHECK_EQ_KIND(f.kind, FRAME_FINAL_ERROR);
    CHECK_EQ_STR(f.err_type, "llm-error");
    CHECK_EQ_STR(f.err_message, "boom");
    frame_free(&f);
    parse("{\"id\":\"r9\",\"response\":{\"error\":{\"type\":\"llm-error\",\"message\":\"x\"}},\"complete\":false}", &f);
    CHECK_EQ_KIND(f.kind, FRAME_FINAL_ERROR); /* nested error ends it even without complete */
    frame_free(&f);
    parse("{\"id\":\"r12\",\"response\":{\"error\":\"publish failed\"},\"complete\":true}", &f); /* E6 */
    CHECK_EQ_KIND(f.kind, FRAME_FINAL_ERROR);
    CHECK(f.error_is_string);
    CHECK_EQ_STR(f.err_message, "publish failed");
    frame_free(&f);
    parse("{\"id\":\"r9\",\"response\":{\"error\":null,\"x\":1},\"complete\":true}", &f);
    CHECK_EQ_KIND(f.kind, FRAME_FINAL);
    frame_free(&f);
}

static void test_frame_auth_and_invalid(void)
{
    struct frame f;
    parse("{\"type\":\"auth-ok\",\"default_workspace\":\"w1\"}", &f);
    CHECK_EQ_KIND(f.kind, FRAME_AUTH_OK);
    CHECK(f.auth_new_field);
    CHECK_EQ_STR(f.workspace, "w1");
    frame_free(&f);
    parse("{\"type\":\"auth-ok\",\"workspace\":\"w0\"}", &f);
    CHECK_EQ_KIND(f.kind, FRAME_AUTH_OK);
    CHECK(!f.auth_new_field);
    CHECK_EQ_STR(f.workspace, "w0");
    frame_free(&f);
    parse("{\"type\":\"auth-failed\",\"error\":\"auth failure\"}", &f);
    CHECK_EQ_KIND(f.kind, FRAME_AUTH_FAILED);
    CHECK_EQ_STR(f.err_message, "auth failure");
    frame_free(&f);
    parse("[1,2]", &f);
    CHECK_EQ_KIND(f.kind, FRAME_INVALID);
    frame_free(&f);
    parse("{\"id\":\"a\",", &f);
    CHECK_EQ_KIND(f.kind, FRAME_INVALID);
    frame_free(&f);
}

/* Why the gateway would refuse body b, or NULL if it would take it. */
static const char *body_error(const char *b)
{
    return json_body_check(b, strlen(b), NULL);
}

static void test_body_check_matches_the_gateways_parser(void)
{
    CHECK_EQ_STR(body_error("{\"a\":1}"), NULL);
    CHECK_EQ_STR(body_error(" {\"a\":\"caf\xc3\xa9 \\n \\\" \\u00e9\"} \n"), NULL);
    CHECK_EQ_STR(body_error("[1,2]"), NULL); /* valid JSON; the REST layer decides it must be an object */
    CHECK_NE_STR(body_error(""), NULL);
    CHECK_NE_STR(body_error("{\"a\":1} trailing"), NULL);
    CHECK_NE_STR(body_error("{\"a\":1}{}"), NULL);
    CHECK_NE_STR(body_error("{\"a\":\"tab\there\"}"), NULL);    /* raw control char in a string */
    CHECK_NE_STR(body_error("{\"a\":\"\xc3\"}"), NULL);          /* truncated UTF-8 */
    CHECK_NE_STR(body_error("{\"a\":\"\xed\xa0\x80\"}"), NULL);  /* UTF-8-encoded surrogate */
    CHECK_NE_STR(body_error("{\"a\":\"\xc0\xaf\"}"), NULL);      /* overlong */
    CHECK_NE_STR(body_error("{\"a\":NaN}"), NULL);
    CHECK_NE_STR(body_error("{\"a\":\x01 1}"), NULL);             /* cJSON's whitespace, not JSON's */
    cJSON *root = NULL;
    const char *b = "{\"streaming\":true}";
    CHECK_EQ_STR(json_body_check(b, strlen(b), &root), NULL);
    CHECK(cJSON_IsObject(root));
    cJSON_Delete(root);
}

/* RFC 3629 UTF-8, written plainly: no overlong forms, no surrogates, nothing past
 * U+10FFFF.  (cJSON does not check it; the gateway's aiohttp does.) */
static bool utf8_valid(const char *text, size_t n)
{
    const unsigned char *s = (const unsigned char *)text;
    for (size_t i = 0; i < n;) {
        unsigned c = s[i], cp, min;
        size_t k;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            k = 1, cp = c & 0x1f, min = 0x80;
        } else if ((c & 0xf0) == 0xe0) {
            k = 2, cp = c & 0x0f, min = 0x800;
        } else if ((c & 0xf8) == 0xf0) {
            k = 3, cp = c & 0x07, min = 0x10000;
        } else {
            return false;
        }
        if (n - i - 1 < k)
            return false;
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xc0) != 0x80)
                return false;
            cp = cp << 6 | (s[i + j] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += k + 1;
    }
    return true;
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
    fputs("  input: ", stdout);
    print_bytes(text, len, 600);
    putchar('\n');
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
                enum frame_kind want = oracle_kind(root, text, len);
                if (f.kind != want)
                    show_input(text, len);
                CHECK_EQ_KIND(f.kind, want);
                if (want == FRAME_PART || want == FRAME_FINAL) {
                    cJSON *mine = cJSON_ParseWithLength(f.response.p, f.response.n);
                    if (!mine)
                        show_input(text, len);
                    CHECK_NE_PTR(mine, NULL);
                    bool same = cJSON_Compare(mine, cJSON_GetObjectItemCaseSensitive(root, "response"), 1);
                    if (!same) {
                        show_input(text, len);
                        fputs("  scanner's response: ", stdout);
                        print_bytes(f.response.p, f.response.n, 600);
                        putchar('\n');
                    }
                    CHECK(same);
                    cJSON_Delete(mine);
                }
            }
            cJSON_Delete(root);
            frame_free(&f);
            free(text);
        }
    }
    CHECK_GT_INT(compared, 1000);
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
    CHECK_NE_STR(a->id, b->id);
    CHECK_EQ_PTR(reqtable_lookup(&rt, a->id), a);
    CHECK_EQ_PTR(reqtable_lookup(&rt, b->id), b);
    CHECK_EQ_PTR(reqtable_lookup(&rt, "tgb-t-99"), NULL);
    /* many more than the initial bucket count: rehash keeps lookups right */
    struct request *many[1000];
    for (int i = 0; i < 1000; i++)
        many[i] = sent(&rt);
    for (int i = 0; i < 1000; i++) {
        struct request *got = reqtable_lookup(&rt, many[i]->id);
        if (got != many[i])
            printf("  request %d of 1000 (id %s):\n", i, many[i]->id);
        CHECK_EQ_PTR(got, many[i]);
    }
    drop_all(&rt);
    CHECK_EQ_SIZE(rt.nlive, 0);
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
    CHECK_EQ_SIZE(W.n, 16);
    CHECK(!window_has_room(&W, 16));
    CHECK_EQ_PTR(reqtable_lookup(&rt, r[5]->id), NULL); /* late frames are dropped */
    /* the oldest finishing frees the whole run behind it */
    r[0]->owner = NULL;
    reqtable_close(&rt, r[0]);
    CHECK_EQ_SIZE(W.n, 0);
    CHECK_EQ_SIZE(rt.nlive, 0);
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
    CHECK_EQ_PTR(reqtable_queue_head(&rt), a);
    reqtable_mark_sent(&rt, a, &W);
    CHECK_EQ_PTR(reqtable_queue_head(&rt), b);
    CHECK_EQ_SIZE(rt.nqueued, 1);
    CHECK_EQ_SIZE(W.n, 1);
    CHECK_EQ_PTR(a->win, &W);
    struct list dropped;
    reqtable_drop_window(&rt, &W, &dropped);
    CHECK_EQ_SIZE(W.n, 0);
    CHECK(!list_empty(&dropped));
    CHECK_EQ_PTR(list_entry(dropped.next, struct request, wnode), a);
    CHECK_EQ_PTR(reqtable_lookup(&rt, a->id), NULL);
    CHECK_EQ_INT(a->state, REQ_CLOSED);
    list_del(&a->wnode);
    a->owner = NULL;
    CHECK(reqtable_release(&rt, a));
    b->owner = NULL;
    reqtable_destroy(&rt);
    CHECK_EQ_SIZE(rt.nlive, 0);
}

static void test_gateway_url_parsing(void)
{
    struct gateway_url u;
    char err[256];
    CHECK_EQ_INT(config_parse_gateway("http://localhost:8088", &u, err, sizeof err), 0);
    CHECK(!u.tls);
    CHECK_EQ_STR(u.host, "localhost");
    CHECK_EQ_INT(u.port, 8088);
    CHECK_EQ_STR(u.base_path, "");
    CHECK_EQ_INT(config_parse_gateway("wss://gw.example.com/tg/", &u, err, sizeof err), 0);
    CHECK(u.tls);
    CHECK_EQ_INT(u.port, 443);
    CHECK_EQ_STR(u.base_path, "/tg");
    CHECK_EQ_INT(config_parse_gateway("ws://[::1]:8888/api/v1/socket", &u, err, sizeof err), 0);
    CHECK_EQ_STR(u.host, "::1");
    CHECK_EQ_INT(u.port, 8888);
    CHECK_EQ_STR(u.base_path, "");
    CHECK_EQ_INT(config_parse_gateway("https://h:9/x/api/v1/socket/", &u, err, sizeof err), 0);
    CHECK_EQ_STR(u.base_path, "/x");
    CHECK_NE_INT(config_parse_gateway("ftp://h", &u, err, sizeof err), 0);
    CHECK_NE_INT(config_parse_gateway("http://h:0", &u, err, sizeof err), 0);
    CHECK_NE_INT(config_parse_gateway("http://h:70000", &u, err, sizeof err), 0);
    CHECK_NE_INT(config_parse_gateway("http://h/?token=x", &u, err, sizeof err), 0);
    CHECK_NE_INT(config_parse_gateway("http://user:pw@h", &u, err, sizeof err), 0);
    /* an IPv6 literal is digits and colons; "]" is looked for only in the authority */
    CHECK_NE_INT(config_parse_gateway("http://[::1/x]:80", &u, err, sizeof err), 0);
    CHECK_NE_INT(config_parse_gateway("wss://[::://1]:8443/", &u, err, sizeof err), 0);
    CHECK_NE_INT(config_parse_gateway("http://[]:80", &u, err, sizeof err), 0);
    CHECK_NE_INT(config_parse_gateway("http://gw example:80", &u, err, sizeof err), 0);
    CHECK_EQ_INT(config_parse_gateway("http://[::ffff:10.0.0.1]:80", &u, err, sizeof err), 0);
    CHECK_EQ_INT(config_parse_gateway("http://gw_1.example-x.com", &u, err, sizeof err), 0);
}

/* One config-file line, applied to fresh defaults: its return and error. */
static int config_line(const char *line, struct config *cfg, char *err, size_t errlen)
{
    config_defaults(cfg);
    FILE *f = fmemopen((void *)line, strlen(line), "r");
    int rc = config_load_stream(cfg, f, "t.conf", err, errlen);
    fclose(f);
    return rc;
}

static void test_allow_lists_fail_closed(void)
{
    struct config cfg;
    char err[256];
    CHECK_EQ_INT(config_line("unix-allow-uid = 0, 1000\n", &cfg, err, sizeof err), 0);
    CHECK_EQ_INT(cfg.n_allow_uid, 2);
    CHECK_EQ_INT((int)cfg.allow_uid[1], 1000);
    /* an empty list would mean "no restriction" */
    CHECK_NE_INT(config_line("unix-allow-uid = ,\n", &cfg, err, sizeof err), 0);
    CHECK_NE_INT(config_line("unix-allow-gid = \"\"\n", &cfg, err, sizeof err), 0);
    /* 2^32 must not wrap to uid 0 (root) */
    CHECK_NE_INT(config_line("unix-allow-uid = 4294967296\n", &cfg, err, sizeof err), 0);
    CHECK(strstr(err, "out of range") != NULL);
    CHECK_NE_INT(config_line("unix-allow-uid = 99999999999999999999\n", &cfg, err, sizeof err), 0);
    CHECK_NE_INT(config_line("unix-allow-uid = 4294967295\n", &cfg, err, sizeof err), 0);
    CHECK_NE_INT(config_line("unix-allow-uid = -1\n", &cfg, err, sizeof err), 0);
    /* the message names the offender (it was read after being freed) */
    CHECK_NE_INT(config_line("unix-allow-uid = no-such-user-tgb\n", &cfg, err, sizeof err), 0);
    CHECK(strstr(err, "'no-such-user-tgb'") != NULL);
    char many[512] = "unix-allow-gid = ";
    for (int i = 0; i < 33; i++)
        snprintf(many + strlen(many), sizeof many - strlen(many), "%d,", i);
    strcat(many, "\n");
    CHECK_NE_INT(config_line(many, &cfg, err, sizeof err), 0);
    CHECK(strstr(err, "more than 32") != NULL);
}

static void test_loopback_names_are_only_loopback(void)
{
    CHECK(host_is_loopback("127.0.0.1"));
    CHECK(host_is_loopback("127.8.9.10"));
    CHECK(host_is_loopback("::1"));
    CHECK(host_is_loopback("localhost"));
    CHECK(host_is_loopback("app.localhost"));
    CHECK(host_is_loopback("::ffff:127.0.0.1"));
    /* a DNS name anyone can register and point at 127.0.0.1 (DNS rebinding) */
    CHECK(!host_is_loopback("127.evil.example"));
    CHECK(!host_is_loopback("127.0.0.1.evil.example"));
    CHECK(!host_is_loopback("localhost.evil.example"));
    CHECK(!host_is_loopback("128.0.0.1"));
    CHECK(!host_is_loopback("::2"));
}

static void test_sizes_and_seconds(void)
{
    size_t n;
    double d;
    CHECK_EQ_INT(parse_size("50m", &n), 0);
    CHECK_EQ_SIZE(n, 52428800);
    CHECK_EQ_INT(parse_size("64KiB", &n), 0);
    CHECK_EQ_SIZE(n, 65536);
    CHECK_EQ_INT(parse_size("123", &n), 0);
    CHECK_EQ_SIZE(n, 123);
    CHECK_NE_INT(parse_size("-1", &n), 0);
    CHECK_NE_INT(parse_size("1x", &n), 0);
    CHECK_NE_INT(parse_size("", &n), 0);
    CHECK_EQ_INT(parse_seconds("0.25", &d), 0);
    CHECK_NEAR(d, 0.25, 1e-9);
    CHECK_NE_INT(parse_seconds("-1", &d), 0);
    CHECK_NE_INT(parse_seconds("abc", &d), 0);
    CHECK_NE_INT(parse_seconds("inf", &d), 0);
    char *e = url_encode("a+b c&d%/é");
    CHECK_EQ_STR(e, "a%2Bb%20c%26d%25%2F%C3%A9");
    free(e);
}

static void config_flags_override_env(void)
{
    struct config cfg;
    char err[256];
    char tok[] = "tg_secret_token";
    char *argv[] = {"tgbridge", "--listen", "[::1]:0", "--token", tok, "--request-timeout", "0.5", NULL};
    CHECK_EQ_INT(config_load(&cfg, 7, argv, err, sizeof err), 0);
    CHECK_EQ_STR(cfg.listen_host, "::1");
    CHECK_EQ_INT(cfg.listen_port, 0);
    CHECK_EQ_STR(cfg.gw.host, "gw");
    CHECK_EQ_INT(cfg.gw.port, 8888);
    CHECK_EQ_STR(cfg.token, "tg_secret_token");
    CHECK_STR_LACKS(tok, "secret"); /* argv scrubbed for /proc/PID/cmdline */
    CHECK_NEAR(cfg.request_timeout, 0.5, 1e-9);
    config_free(&cfg);
    char *bad[] = {"tgbridge", "--auth", "magic", NULL};
    CHECK_LT_INT(config_load(&cfg, 3, bad, err, sizeof err), 0);
    CHECK_STR_CONTAINS(err, "--auth");
    config_free(&cfg);
    char *inflight[] = {"tgbridge", "--max-inflight", "17", NULL};
    CHECK_LT_INT(config_load(&cfg, 3, inflight, err, sizeof err), 0);
    config_free(&cfg);
}

/* The environment is restored however the checks end. */
static void test_config_flags_override_env(void)
{
    setenv("TGBRIDGE_LISTEN", "127.0.0.1:9000", 1);
    setenv("TRUSTGRAPH_URL", "http://gw:8888/", 1);
    config_flags_override_env();
    unsetenv("TGBRIDGE_LISTEN");
    unsetenv("TRUSTGRAPH_URL");
    secrets_clear();
}

static void unset_proxy_env(void)
{
    unsetenv("https_proxy"); unsetenv("HTTPS_PROXY"); unsetenv("http_proxy"); unsetenv("HTTP_PROXY");
    unsetenv("no_proxy"); unsetenv("NO_PROXY");
}

static void proxy_choice(void)
{
    struct gateway_url gw;
    char err[128];
    config_parse_gateway("wss://gw.example.com", &gw, err, sizeof err);
    CHECK_EQ_STR(config_pick_proxy(&gw, NULL), NULL);
    setenv("http_proxy", "http://plain:3128", 1);
    CHECK_EQ_STR(config_pick_proxy(&gw, NULL), NULL); /* wss uses https_proxy only */
    setenv("https_proxy", "http://u:p@proxy:3128/", 1);
    char *p = config_pick_proxy(&gw, NULL);
    CHECK_EQ_STR(p, "u:p@proxy:3128");
    free(p);
    CHECK_EQ_STR(config_pick_proxy(&gw, "none"), NULL);
    p = config_pick_proxy(&gw, "http://other:8080");
    CHECK_EQ_STR(p, "other:8080");
    free(p);
    setenv("no_proxy", "localhost,.example.com", 1);
    CHECK_EQ_STR(config_pick_proxy(&gw, NULL), NULL);
    setenv("no_proxy", "example.org", 1);
    p = config_pick_proxy(&gw, NULL);
    CHECK_NE_STR(p, NULL);
    free(p);
    config_parse_gateway("http://127.0.0.1:8088", &gw, err, sizeof err);
    CHECK_EQ_STR(config_pick_proxy(&gw, NULL), NULL); /* the environment never proxies loopback */
    p = config_pick_proxy(&gw, "http://proxy:1"); /* ... an explicit --proxy does */
    CHECK_EQ_STR(p, "proxy:1");
    free(p);
    config_parse_gateway("http://localhost:8088", &gw, err, sizeof err);
    CHECK_EQ_STR(config_pick_proxy(&gw, NULL), NULL);
    config_parse_gateway("ws://gw.internal:8088", &gw, err, sizeof err);
    p = config_pick_proxy(&gw, NULL);
    CHECK_EQ_STR(p, "plain:3128");
    free(p);
}

/* The environment is restored however the checks end. */
static void test_proxy_choice(void)
{
    unset_proxy_env();
    proxy_choice();
    unset_proxy_env();
}

/* Decodes one client frame as a server would (RFC 6455 §5.2) into payload (room for
 * cap bytes): *len gets the payload length, *used the bytes the frame took. */
static void unframe(const unsigned char *p, size_t avail, unsigned char *payload, size_t cap,
                    size_t *len, size_t *used)
{
    CHECK_GE_SIZE(avail, 6);
    CHECK_EQ_INT(p[0], 0x81);  /* FIN + text */
    CHECK(p[1] & 0x80);        /* masked */
    size_t h = 2, n = p[1] & 0x7f;
    if (n == 126)
        h = 4;
    else if (n == 127)
        h = 10;
    CHECK_GE_SIZE(avail, h + 4); /* the extended length and the key are there */
    if (n == 126) {
        n = (size_t)p[2] << 8 | p[3];
    } else if (n == 127) {
        n = 0;
        for (int i = 0; i < 8; i++)
            n = n << 8 | p[2 + i];
    }
    const unsigned char *key = p + h;
    h += 4;
    CHECK_LE_SIZE(n, avail - h);
    CHECK_LE_SIZE(n, cap);
    for (size_t i = 0; i < n; i++)
        payload[i] = p[h + i] ^ key[i & 3];
    *len = n;
    *used = h + n;
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
    CHECK_EQ_SIZE(b.len, want_total);
    CHECK_EQ_SIZE(wsframe_header_len(125), 6);
    CHECK_EQ_SIZE(wsframe_header_len(126), 8);
    CHECK_EQ_SIZE(wsframe_header_len(65536), 14);
    const unsigned char *p = (const unsigned char *)buf_ptr(&b);
    size_t off = 0;
    unsigned char keys[16][4];
    for (size_t i = 0; i < nl; i++) {
        size_t n = 0, used = 0;
        CHECK_CALL(unframe(p + off, b.len - off, got, 70001, &n, &used));
        CHECK_EQ_SIZE(n, lens[i]);
        CHECK_EQ_MEM(got, src, n);
        memcpy(keys[i], p + off + wsframe_header_len(n) - 4, 4);
        off += used;
    }
    CHECK_EQ_SIZE(off, b.len);
    /* Fresh keys per frame (a repeat among 11 random 32-bit keys is ~1e-8 likely). */
    for (size_t i = 0; i < nl; i++)
        for (size_t j = i + 1; j < nl; j++)
            CHECK_NE_MEM(keys[i], keys[j], 4);
    buf_free(&b);
    free(src);
    free(got);
}

static void test_json_valid_is_pythons_json(void)
{
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
            printf("  refused: %s\n", good[i]);
        CHECK(json_valid(good[i], strlen(good[i])));
    }
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        if (json_valid(bad[i], strlen(bad[i])))
            printf("  accepted: %s\n", bad[i]);
        CHECK(!json_valid(bad[i], strlen(bad[i])));
    }
    /* deep nesting is refused without using the C stack */
    size_t n = JSON_MAX_DEPTH + 1;
    char *deep = malloc(2 * n);
    memset(deep, '[', n);
    memset(deep + n, ']', n);
    CHECK(!json_valid(deep, 2 * n));
    CHECK(json_valid(deep + 1, 2 * n - 2));
    free(deep);
}

static void test_redaction_every_form_no_cap(void)
{
    secrets_clear();
    secret_add("tg_\"sec\\ret/\xc3\xa9 x");
    for (int i = 0; i < 40; i++) { /* far past the old fixed cap of 16 */
        char t[32];
        snprintf(t, sizeof t, "tg_rotated_%02d", i);
        secret_add(t);
    }
    secret_add_userinfo("proxyuser:p@ss\"word");
    secret_add("*"); /* a form inside the replacement itself must not loop */
    struct buf b;
    buf_init(&b, 0);
    buf_puts(&b, "raw tg_\"sec\\ret/\xc3\xa9 x | pct tg_%22sec%5Cret%2F%C3%A9%20x | json tg_\\\"sec\\\\ret/\\u00e9 x"
                 " | json8 tg_\\\"sec\\\\ret/\xc3\xa9 x | b64 dGdfInNlY1xyZXQvw6kgeA== | old tg_rotated_00 tg_rotated_39"
                 " | basic cHJveHl1c2VyOnBAc3Mid29yZA== | pass p@ss\"word |");
    redact_buf(&b);
    const char *out = buf_ptr(&b);
    CHECK_STR_LACKS(out, "sec");
    CHECK_STR_LACKS(out, "dGdfInNlY1xyZXQvw6kgeA==");
    CHECK_STR_LACKS(out, "tg_rotated");
    CHECK_STR_LACKS(out, "cHJveHl1c2Vy");
    CHECK_STR_LACKS(out, "p@ss");
    CHECK_STR_CONTAINS(out, "raw ");
    CHECK_STR_CONTAINS(out, " | b64 ");
    CHECK_GE_SIZE(secret_count(), 43);
    buf_free(&b);
    char small[8] = "a*b";
    redact_str(small, sizeof small); /* "*" -> "***": longer, cut to fit */
    CHECK_EQ_STR(small, "a***b");
    secrets_clear();
}

static void test_proxy_url_parsing(void)
{
    struct proxy_url p;
    char err[128];
    CHECK_EQ_INT(config_parse_proxy("http://u%40x:p%3Ass@proxy.example:3128/", &p, err, sizeof err), 0);
    CHECK_EQ_STR(p.host, "proxy.example");
    CHECK_EQ_INT(p.port, 3128);
    CHECK_EQ_STR(p.userinfo, "u@x:p:ss");
    CHECK_EQ_INT(config_parse_proxy("[::1]:8080", &p, err, sizeof err), 0);
    CHECK_EQ_STR(p.host, "::1");
    CHECK_EQ_INT(p.port, 8080);
    CHECK_EQ_STR(p.userinfo, "");
    CHECK_EQ_INT(config_parse_proxy("proxy", &p, err, sizeof err), 0);
    CHECK_EQ_INT(p.port, 1080);
    static const char *const bad[] = {"https://p:1", "socks5://p:1", "http://p:0", "http://p:65536", "http://p:x",
                                      "http://:1", "http://u:%zz@p:1", "http://p:1/path", "http://[::1:1",
                                      "http://p:1?q", "http://u%00@p:1"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        if (!config_parse_proxy(bad[i], &p, err, sizeof err))
            printf("  accepted: %s\n", bad[i]);
        CHECK_EQ_INT(config_parse_proxy(bad[i], &p, err, sizeof err), -1);
    }
}

static void test_client_messages(void)
{
    struct client_msg_info m;
    const char *req = "{\"id\":7,\"service\":\"agent\",\"flow\":\"f\",\"request\":{}}";
    client_msg_parse(req, strlen(req), "line", &m);
    CHECK_EQ_INT(m.kind, CMSG_REQUEST);
    CHECK_SPAN_IS(m.id, "7");
    CHECK_EQ_STR(m.service, "agent");
    CHECK(m.has_flow);
    const char *null_id = "{\"id\":null,\"service\":\"config\",\"request\":{}}";
    client_msg_parse(null_id, strlen(null_id), "line", &m);
    CHECK_EQ_INT(m.kind, CMSG_REQUEST);
    CHECK(m.id_present && !m.id.p && !m.has_flow);
    const char *ping = " {\"type\":\"ping\"}\r";
    client_msg_parse(ping, strlen(ping), "line", &m);
    CHECK_EQ_INT(m.kind, CMSG_CONTROL);
    CHECK_EQ_STR(m.type, "ping");
    client_msg_parse(" \t\r", 3, "line", &m);
    CHECK_EQ_INT(m.kind, CMSG_BLANK);
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
        CHECK_EQ_INT(m.kind, CMSG_BAD);
        CHECK_EQ_STR(m.error, bad[i].error);
        CHECK_EQ_INT(m.id.p != NULL, bad[i].with_id);
    }
}

struct frames_seen {
    char got[512];
    size_t n;
};

static bool collect_line(void *arg, enum lineframe_event ev, const char *line, size_t len)
{
    struct frames_seen *s = arg;
    s->n += (size_t)snprintf(s->got + s->n, sizeof s->got - s->n, "%s", ev == LINEFRAME_TOO_LONG ? "<long>" : "");
    if (ev == LINEFRAME_LINE)
        s->n += (size_t)snprintf(s->got + s->n, sizeof s->got - s->n, "[%.*s]", (int)len, line);
    return true;
}

static void test_lineframe_pieces_and_limits(void)
{
    const char *in = "ab\ncd\n0123456789ABC\nlast\npart";
    for (size_t step = 1; step <= strlen(in); step++) { /* every way of cutting it up */
        struct lineframe f;
        lineframe_init(&f, 10);
        struct frames_seen s = {{0}, 0};
        for (size_t i = 0; i < strlen(in); i += step) {
            size_t n = strlen(in) - i < step ? strlen(in) - i : step;
            CHECK(lineframe_feed(&f, in + i, n, collect_line, &s));
        }
        CHECK_EQ_SIZE(f.partial, 4);
        lineframe_eof(&f, collect_line, &s);
        CHECK_EQ_STR(s.got, "[ab][cd]<long>[last][part]");
        lineframe_free(&f);
    }
}

/* ---- health.c renders status sources it does not know ---------------------------- */

static bool fake_ready = true;
static void fake_a_status(struct buf *b) { buf_puts(b, "\"a\":1"); }
static void fake_silent(struct buf *b) { (void)b; }
static void fake_b_status(struct buf *b) { buf_puts(b, "\"b\":{\"c\":2},\"d\":3"); }
static void fake_a_metrics(struct buf *b) { status_metric_u(b, "fake_a", "gauge", "A.", 1); }
static void fake_b_metrics(struct buf *b) { status_metric_u(b, "fake_b", "counter", "B.", 2); }
static bool fake_a_ready(struct buf *b) { buf_puts(b, "\"era\":\"x\""); return true; }
static bool fake_b_ready(struct buf *b)
{
    if (!fake_ready)
        buf_puts(b, "\"why\":\"down\"");
    return fake_ready;
}
static bool fake_c_ready(struct buf *b) { (void)b; return true; }

static const struct status_source fake_sources[] = {
    {"first-silent", fake_silent, NULL, NULL},
    {"a", fake_a_status, fake_a_metrics, fake_a_ready},
    {"middle-silent", fake_silent, NULL, fake_c_ready},
    {"b", fake_b_status, fake_b_metrics, fake_b_ready},
    {"none", NULL, NULL, NULL},
};

static void render(enum health_page page, struct buf *out, unsigned want_status)
{
    const char *type;
    buf_init(out, 0);
    CHECK_EQ_INT(health_render(page, out, &type), want_status);
    buf_append(out, "", 1);
}

static void test_health_renders_registered_sources(void)
{
    for (size_t i = 0; i < sizeof fake_sources / sizeof *fake_sources; i++)
        status_register(&fake_sources[i]);
    struct buf b;
    /* Members joined by single commas, whatever sources say nothing; uptime last. */
    CHECK_CALL(render(HEALTH_STATUS, &b, 200));
    static const char status_head[] = "{\"a\":1,\"b\":{\"c\":2},\"d\":3,\"uptime_seconds\":";
    CHECK_EQ_MEM(buf_ptr(&b), status_head, strlen(status_head));
    buf_free(&b);
    CHECK_CALL(render(HEALTH_METRICS, &b, 200));
    static const char metrics_head[] = "# HELP fake_a A.\n# TYPE fake_a gauge\nfake_a 1\n"
                                       "# HELP fake_b B.\n# TYPE fake_b counter\nfake_b 2\n"
                                       "# HELP tgbridge_uptime_seconds ";
    CHECK_EQ_MEM(buf_ptr(&b), metrics_head, strlen(metrics_head));
    buf_free(&b);
    /* Ready when all are, with what the ready ones said ... */
    fake_ready = true;
    CHECK_CALL(render(HEALTH_READY, &b, 200));
    CHECK_EQ_STR(buf_ptr(&b), "{\"status\":\"ready\",\"era\":\"x\"}");
    buf_free(&b);
    /* ... and otherwise not, with only why not. */
    fake_ready = false;
    CHECK_CALL(render(HEALTH_READY, &b, 503));
    CHECK_EQ_STR(buf_ptr(&b), "{\"status\":\"not-ready\",\"why\":\"down\"}");
    buf_free(&b);
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
    RUN(test_allow_lists_fail_closed);
    RUN(test_loopback_names_are_only_loopback);
    RUN(test_sizes_and_seconds);
    RUN(test_config_flags_override_env);
    RUN(test_proxy_choice);
    RUN(test_wsframe_lengths_masking_and_bursts);
    RUN(test_json_valid_is_pythons_json);
    RUN(test_redaction_every_form_no_cap);
    RUN(test_proxy_url_parsing);
    RUN(test_client_messages);
    RUN(test_lineframe_pieces_and_limits);
    RUN(test_health_renders_registered_sources);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
