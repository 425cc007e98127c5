/* The reply-frame classifier (envelope.c frame_parse) against the reference's §5.3
 * rules written plainly with cJSON -- the oracle of tests/unit/test_envelope.c
 * (test_frame_scanner_agrees_with_cjson, oracle_kind), copied here, widened to every
 * byte a fuzzer writes.
 *
 * frame_parse judges a frame as the gateway's Python json module writes it and its
 * clients read it (json_valid): stricter than cJSON, and it also takes NaN/Infinity.
 * So the oracle calls a text FRAME_INVALID when cJSON parses it whole but the gateway
 * could not have written it: not UTF-8, a malformed escape, a raw control character,
 * anything cJSON skips as whitespace (control characters, a byte-order mark), a number
 * only strtod reads ("01", "1.", "-.5").  NaN/Infinity tokens are compared too: with
 * each replaced by a 0 padded to the same length, cJSON reads the rest.
 *
 * Properties, for every text: no crash, no leak, NUL-terminated fields, spans inside
 * the text, err_message never NULL; and when the oracle can judge it, the same kind,
 * for parts and finals a response span that parses to the tree's "response", for
 * errors the message and type the tree holds (the type cut to err_type's size), and
 * UTF-8 in err_type and err_message. */
#include "envelope.h"
#include "fuzz_common.h"
#include "json.h"

/* The keys frame_parse reads; it reads them as written (ours and the gateway's never
 * need escapes), cJSON decodes them: a text spelling one with an escape is left out
 * of the comparison (json.dumps only escapes '"', '\\', control and non-ASCII
 * characters, so the gateway never writes one). */
static const char *const frame_keys[] = {"id", "type", "response", "error", "complete", "default_workspace",
                                         "workspace", NULL};

#define FRAME_ID_CAP 128 /* struct frame's id[]: a longer id cannot be ours */

/* The §5.3 rules with cJSON, for a text the gateway could have written. */
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
    bool has_id = cJSON_IsString(id) && id->valuestring[0] && strlen(id->valuestring) < FRAME_ID_CAP;
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

static bool terminated(const char *s, size_t cap)
{
    return memchr(s, '\0', cap) != NULL;
}

static bool span_inside(struct span s, const char *text, size_t len)
{
    return s.p >= text && s.p <= text + len && s.n <= (size_t)(text + len - s.p);
}

/* The error a frame carries (ev: the tree's), as read_error must have read it: a bare
 * string (E1, E1', E6, auth-failed), or {type, message}; what reaches a caller is
 * UTF-8 like the frame it came from. */
static void check_error(const struct frame *f, const cJSON *ev)
{
    if (cJSON_IsString(ev)) {
        FUZZ_CHECK(f->error_is_string && !strcmp(f->err_message, ev->valuestring) && !f->err_type[0]);
    } else if (cJSON_IsObject(ev)) {
        FUZZ_CHECK(!f->error_is_string);
        const char *type = fz_str(ev, "type"), *msg = fz_str(ev, "message");
        size_t tn = type ? strlen(type) : 0, cap = sizeof f->err_type - 1;
        /* all of it, or as much as fits cut at a character boundary (at most 3
         * bytes short) */
        size_t got = strlen(f->err_type);
        FUZZ_CHECK(tn <= cap ? got == tn : got <= cap && got + 3 >= cap);
        FUZZ_CHECK(!type || !strncmp(f->err_type, type, got));
        if (msg)
            FUZZ_CHECK(!strcmp(f->err_message, msg));
    }
    FUZZ_CHECK(utf8_valid(f->err_type, strlen(f->err_type)));
    FUZZ_CHECK(utf8_valid(f->err_message, strlen(f->err_message)));
}

/* text with every NaN, Infinity and -Infinity outside strings replaced by "0" and
 * spaces (same length, same offsets); text is known to be lexically clean. */
static char *without_nonfinite(const char *text, size_t len)
{
    char *t = fz_copy((const uint8_t *)text, len, true);
    bool in_string = false;
    for (size_t i = 0; i < len; i++) {
        if (in_string) {
            if (t[i] == '\\')
                i++;
            else if (t[i] == '"')
                in_string = false;
            continue;
        }
        if (t[i] == '"') {
            in_string = true;
            continue;
        }
        static const char *const lits[] = {"-Infinity", "Infinity", "NaN"};
        for (int k = 0; k < 3; k++) {
            size_t n = strlen(lits[k]);
            if (len - i >= n && !memcmp(t + i, lits[k], n)) {
                memset(t + i, ' ', n);
                t[i] = '0';
                i += n - 1;
                break;
            }
        }
    }
    return t;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = fz_copy(data, size, true); /* frame_parse wants text[len] == '\0' */
    struct frame f;
    memset(&f, 0x5a, sizeof f);
    frame_parse(text, size, &f);
    FUZZ_CHECK(f.err_message != NULL);
    FUZZ_CHECK(terminated(f.id, sizeof f.id) && terminated(f.err_type, sizeof f.err_type));
    FUZZ_CHECK(terminated(f.workspace, sizeof f.workspace));
    FUZZ_CHECK(!f.has_id || f.id[0]);
    FUZZ_CHECK((unsigned)f.kind <= FRAME_OTHER);
    if (f.kind == FRAME_PART || f.kind == FRAME_FINAL || f.kind == FRAME_FINAL_ERROR)
        FUZZ_CHECK(f.response.p && span_inside(f.response, text, size) && f.has_id);
    if (f.kind == FRAME_TOP_ERROR || f.kind == FRAME_ORPHAN_ERROR)
        FUZZ_CHECK(f.error.p && span_inside(f.error, text, size) && f.has_id == (f.kind == FRAME_TOP_ERROR));

    struct fz_lex lex;
    fz_lex_scan(text, size, frame_keys, &lex);
    bool clean = lex.utf8_ok && lex.strings_ok && lex.tokens_ok; /* the gateway could have written it */
    /* With NaN/Infinity made 0 (clean texts only), cJSON can read what json_valid reads. */
    char *plain = clean && lex.nonfinite ? without_nonfinite(text, size) : text;
    cJSON *root = lex.escaped_key ? NULL : fz_cjson_whole(plain, size);
    if (root && cJSON_IsObject(root)) {
        enum frame_kind want = clean ? oracle_kind(root) : FRAME_INVALID;
        if (f.kind != want)
            fprintf(stderr, "frame_parse says kind %d, the oracle %d\n", (int)f.kind, (int)want);
        FUZZ_CHECK(f.kind == want);
        if (want == FRAME_PART || want == FRAME_FINAL) {
            /* The span's offsets, read in the NaN-free copy. */
            const char *p = plain + (f.response.p - text);
            cJSON *mine = cJSON_ParseWithLength(p, f.response.n);
            FUZZ_CHECK(mine != NULL);
            FUZZ_CHECK(fz_equal(mine, cJSON_GetObjectItemCaseSensitive(root, "response")));
            cJSON_Delete(mine);
        }
        if (want == FRAME_AUTH_OK) {
            const cJSON *dws = cJSON_GetObjectItemCaseSensitive(root, "default_workspace");
            const cJSON *ws = dws ? dws : cJSON_GetObjectItemCaseSensitive(root, "workspace");
            FUZZ_CHECK(f.auth_new_field == (dws != NULL));
            if (cJSON_IsString(ws) && strlen(ws->valuestring) < sizeof f.workspace)
                FUZZ_CHECK(!strcmp(f.workspace, ws->valuestring));
        }
        /* read_error parses the error's own bytes: with a NaN in them it keeps them raw. */
        if (!lex.nonfinite) {
            const cJSON *resp = cJSON_GetObjectItemCaseSensitive(root, "response");
            if (want == FRAME_TOP_ERROR || want == FRAME_ORPHAN_ERROR || want == FRAME_AUTH_FAILED)
                check_error(&f, cJSON_GetObjectItemCaseSensitive(root, "error"));
            if (want == FRAME_FINAL_ERROR)
                check_error(&f, cJSON_GetObjectItemCaseSensitive(resp, "error"));
        }
        if (want != FRAME_INVALID && want != FRAME_AUTH_OK && want != FRAME_AUTH_FAILED) {
            const cJSON *id = cJSON_GetObjectItemCaseSensitive(root, "id");
            if (f.has_id)
                FUZZ_CHECK(cJSON_IsString(id) && !strcmp(f.id, id->valuestring));
        }
    }
    cJSON_Delete(root);
    if (plain != text)
        free(plain);
    frame_free(&f);
    FUZZ_CHECK(f.err_message != NULL);
    free(text);
    return 0;
}
