/* redact.c: every form of every secret, however many. */
#include "unit_main.h"
#include "redact.h"
#include "buf.h"
#include <stdio.h>
#include <string.h>

static void test_redaction_every_form_no_cap(void **state)
{
    (void)state;
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
    assert_str_lacks(out, "sec");
    assert_str_lacks(out, "dGdfInNlY1xyZXQvw6kgeA==");
    assert_str_lacks(out, "tg_rotated");
    assert_str_lacks(out, "cHJveHl1c2Vy");
    assert_str_lacks(out, "p@ss");
    assert_str_contains(out, "raw ");
    assert_str_contains(out, " | b64 ");
    assert_size_ge(secret_count(), 43);
    buf_free(&b);
    char small[8] = "a*b";
    redact_str(small, sizeof small); /* "*" -> "***": longer, cut to fit */
    assert_str_eq(small, "a***b");
    secrets_clear();
}

/* The log's queue redacts only what was appended since its last pass. */
static void test_redaction_from_an_offset(void **state)
{
    (void)state;
    secrets_clear();
    secret_add("tg_secret_token");
    struct buf b;
    buf_init(&b, 0);
    buf_puts(&b, "kept tg_secret_token\nnew tg_secret_token and dGdfc2VjcmV0X3Rva2Vu\n");
    redact_buf_from(&b, 21);
    assert_str_eq(buf_ptr(&b), "kept tg_secret_token\nnew *** and ***\n");
    redact_buf_from(&b, b.len); /* nothing new: nothing to do */
    assert_int_equal(b.len, 37);
    buf_free(&b);
    secrets_clear();
}

/* A forwarded caller key is forgotten with its pool; a form another secret shares
 * (the same key added twice, by two callers) stays until the last one goes. */
static void test_redaction_remove_counts_references(void **state)
{
    (void)state;
    secrets_clear();
    secret_add("tg_gateway_own");
    secret_add("tg_forwarded_key");
    secret_add("tg_forwarded_key");
    char line[96];
    secret_remove("tg_forwarded_key");
    snprintf(line, sizeof line, "tg_forwarded_key tg_gateway_own");
    redact_str(line, sizeof line);
    assert_str_eq(line, "*** ***");
    secret_remove("tg_forwarded_key");
    snprintf(line, sizeof line, "tg_forwarded_key tg_gateway_own dGdfZm9yd2FyZGVkX2tleQ==");
    redact_str(line, sizeof line);
    assert_str_eq(line, "tg_forwarded_key *** dGdfZm9yd2FyZGVkX2tleQ==");
    assert_size_ge(secret_count(), 1);
    secret_remove("never-added");
    secrets_clear();
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_redaction_every_form_no_cap),
    cmocka_unit_test(test_redaction_from_an_offset),
    cmocka_unit_test(test_redaction_remove_counts_references),
};

UNIT_MAIN(tests)
