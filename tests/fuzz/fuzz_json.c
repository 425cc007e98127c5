/* The validator json_valid (json.c: RFC 8259 JSON as Python's json module writes and
 * reads it -- valid UTF-8, no raw control characters in strings, plus NaN, Infinity and
 * -Infinity, at most JSON_MAX_DEPTH deep) against cJSON and a plain token scan
 * (fuzz_common.h), and the member scanner json_members that frame_parse relies on.
 *
 * Properties (comparisons with cJSON skipped past 900 levels: cJSON stops at 1000):
 *  - cJSON reads the text whole and the scan finds it clean (UTF-8, strings, tokens:
 *    see struct fz_lex) → json_valid;
 *  - json_valid → the scan finds it clean and at most JSON_MAX_DEPTH deep, and cJSON reads it whole unless it holds a
 *    NaN/Infinity token or a lone surrogate escape (both Python's, not cJSON's);
 *  - json_valid on an object cJSON reads → json_members reports cJSON's members, in
 *    order: the key as written, a value span that parses to the same value, and the
 *    end of the object;
 *  - json_valid_members (one pass) gives what json_valid and json_members give
 *    together: -1 unless the text is one valid object, else json_members' end and its
 *    members, span for span;
 *  - json_string_decode never writes past its buffer, and when the text is one
 *    string cJSON reads whole with no \u0000 and no lone surrogate, it decodes to
 *    cJSON's bytes (surrogate escapes aside). */
#include "fuzz_common.h"
#include "json.h"

struct members {
    const cJSON *next; /* cJSON's member expected next */
    bool ok;
    size_t seen;
};

static void member(struct span key, struct span value, void *arg)
{
    struct members *m = arg;
    m->seen++;
    if (!m->ok)
        return;
    const cJSON *want = m->next;
    if (!want) {
        m->ok = false;
        return;
    }
    m->next = want->next;
    if (!memchr(key.p, '\\', key.n) && (strlen(want->string) != key.n || memcmp(want->string, key.p, key.n)))
        m->ok = false;
    const char *end = NULL;
    cJSON *v = cJSON_ParseWithLengthOpts(value.p, value.n, &end, 0);
    if (!v || end != value.p + value.n || !fz_equal(v, want))
        m->ok = false;
    cJSON_Delete(v);
}

/* Up to 64 members, as spans, for comparing two walks. */
struct spans {
    struct span kv[128];
    size_t n;
};

static void keep(struct span key, struct span value, void *arg)
{
    struct spans *s = arg;
    if (s->n + 2 <= sizeof s->kv / sizeof s->kv[0]) {
        s->kv[s->n++] = key;
        s->kv[s->n++] = value;
    }
}

static void check_one_pass(const char *text, size_t size, bool valid)
{
    static struct spans a, b;
    a.n = b.n = 0;
    long one = json_valid_members(text, size, keep, &a);
    size_t i = json_skip_ws(text, 0, size);
    bool object = valid && i < size && text[i] == '{';
    if (!object) {
        FUZZ_CHECK(one == -1);
        return;
    }
    long end = json_members(text, size, keep, &b);
    FUZZ_CHECK(one == end && a.n == b.n);
    for (size_t k = 0; k < a.n; k++)
        FUZZ_CHECK(a.kv[k].p == b.kv[k].p && a.kv[k].n == b.kv[k].n);
}

static void check_string_decode(const char *text, size_t size)
{
    char out[256 + 8];
    memset(out + 256, 0x5a, 8);
    long n = json_string_decode((struct span){text, size}, out, 256);
    for (int i = 0; i < 8; i++)
        FUZZ_CHECK((unsigned char)out[256 + i] == 0x5a);
    if (n < 0)
        return;
    FUZZ_CHECK(n <= 256);
    cJSON *s = fz_cjson_whole(text, size);
    if (cJSON_IsString(s) && !memchr(out, '\0', (size_t)n) && !memmem(text, size, "\\ud", 3) &&
        !memmem(text, size, "\\uD", 3))
        FUZZ_CHECK(strlen(s->valuestring) == (size_t)n && !memcmp(s->valuestring, out, (size_t)n));
    cJSON_Delete(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = fz_copy(data, size, false);
    bool valid = json_valid(text, size);
    struct fz_lex lex;
    fz_lex_scan(text, size, NULL, &lex);
    bool clean = lex.utf8_ok && lex.strings_ok && lex.tokens_ok;
    if (valid)
        FUZZ_CHECK(clean && lex.max_depth <= JSON_MAX_DEPTH);
    if (lex.max_depth <= 900) {
        cJSON *root = fz_cjson_whole(text, size);
        if (root && clean)
            FUZZ_CHECK(valid);
        if (valid && !lex.nonfinite && !lex.cjson_refuses_escape)
            FUZZ_CHECK(root != NULL);
        if (valid && cJSON_IsObject(root)) {
            struct members m = {root->child, true, 0};
            long end = json_members(text, size, member, &m);
            FUZZ_CHECK(m.ok);
            FUZZ_CHECK(m.next == NULL && m.seen == fz_child_count(root));
            FUZZ_CHECK(end > 0 && (size_t)end <= size && text[end - 1] == '}');
            FUZZ_CHECK(json_skip_ws(text, (size_t)end, size) == size);
        }
        cJSON_Delete(root);
    }
    check_one_pass(text, size, valid);
    check_string_decode(text, size);
    free(text);
    return 0;
}
