/* A REST request body becoming an envelope (rest.c → mux.c): json_body_check, then,
 * for an object it accepts, envelope_build splicing it byte-exact.
 *
 * Properties:
 *  - a refused body leaves *root alone and says why (a non-empty phrase);
 *  - an accepted body is a value the gateway reads as it is: json_valid holds for it
 *    (json.h: "NULL if body is one JSON value the gateway will accept as it is");
 *  - the envelope built around an accepted object is valid (json_valid) and cJSON reads
 *    it back as exactly {id, service, flow, workspace, request} with request equal to
 *    the tree json_body_check returned (fz_equal: cJSON_Compare's lookup by name cannot
 *    compare objects with repeated keys, which bodies may have). */
#include "buf.h"
#include "envelope.h"
#include "fuzz_common.h"
#include "json.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *body = fz_copy(data, size, false);
    cJSON *root = NULL;
    const char *why = json_body_check(body, size, &root);
    if (why) {
        FUZZ_CHECK(root == NULL);
        FUZZ_CHECK(why[0] != '\0');
        free(body);
        return 0;
    }
    FUZZ_CHECK(root != NULL);
    FUZZ_CHECK(json_valid(body, size));
    if (cJSON_IsObject(root)) {
        struct buf b;
        buf_init(&b, 0);
        envelope_build(&b, "tgb-1", "graph-rag", "default", "ws", body, size);
        FUZZ_CHECK(json_valid(buf_ptr(&b), b.len));
        struct fz_lex lex;
        fz_lex_scan(body, size, NULL, &lex);
        /* cJSON nests 1000 deep at most; the envelope adds one level. */
        if (lex.max_depth < 999) {
            char *text = fz_copy((const uint8_t *)buf_ptr(&b), b.len, true);
            cJSON *env = fz_cjson_whole(text, b.len);
            FUZZ_CHECK(cJSON_IsObject(env));
            FUZZ_CHECK(fz_child_count(env) == 5);
            const char *id = fz_str(env, "id"), *service = fz_str(env, "service");
            const char *flow = fz_str(env, "flow"), *ws = fz_str(env, "workspace");
            FUZZ_CHECK(id && !strcmp(id, "tgb-1"));
            FUZZ_CHECK(service && !strcmp(service, "graph-rag"));
            FUZZ_CHECK(flow && !strcmp(flow, "default"));
            FUZZ_CHECK(ws && !strcmp(ws, "ws"));
            FUZZ_CHECK(fz_equal(cJSON_GetObjectItemCaseSensitive(env, "request"), root));
            cJSON_Delete(env);
            free(text);
        }
        buf_free(&b);
    }
    cJSON_Delete(root);
    free(body);
    return 0;
}
