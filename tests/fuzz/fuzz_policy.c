/* The policy parser (policy.c): policy_parse of the input, with names and token files
 * resolved by fakes (user "alice" is 1001, group "staff" 50, "/tok/<x>" holds
 * "token-<x>"), then policy_match and policy_allows over a few callers and calls.
 *
 * Properties: no crash, leak or read past the input; and an accepted policy agrees
 * with a plainly written reading of the same JSON by cJSON (the oracle): the input is
 * an object whose "default" is "allow" or "deny" as compiled, with as many callers as
 * its "callers" list, each named as in the text, no name twice, its max_connections
 * as given (1..64) or 2, its upstream key read exactly when it names a file and never
 * for a forward caller; policy_match returns
 * one of the policy's entries or NULL; policy_allows returns a rule index of the
 * matched entry, POLICY_BY_DEFAULT only for no entry and a default of allow, or
 * POLICY_REFUSED with a reason that names the caller. */
#include "fuzz_common.h"
#include "policy.h"

static int uid_of(const char *name, unsigned *out)
{
    return strcmp(name, "alice") ? -1 : (*out = 1001, 0);
}

static int gid_of(const char *name, unsigned *out)
{
    return strcmp(name, "staff") ? -1 : (*out = 50, 0);
}

static char *read_token(const char *path, char *err, size_t errlen)
{
    if (strncmp(path, "/tok/", 5) || !path[5]) {
        snprintf(err, errlen, "cannot open %s", path);
        return NULL;
    }
    char *t = malloc(strlen(path) + 8);
    if (!t)
        abort();
    sprintf(t, "token-%s", path + 5);
    return t;
}

static void oracle(const char *text, size_t n, const struct policy *p)
{
    cJSON *root = cJSON_ParseWithLength(text, n);
    FUZZ_CHECK(cJSON_IsObject(root));
    const cJSON *def = cJSON_GetObjectItemCaseSensitive(root, "default");
    FUZZ_CHECK(cJSON_IsString(def));
    FUZZ_CHECK(p->allow_by_default == !strcmp(def->valuestring, "allow"));
    const cJSON *callers = cJSON_GetObjectItemCaseSensitive(root, "callers");
    FUZZ_CHECK(callers ? (size_t)cJSON_GetArraySize(callers) == p->ncallers : p->ncallers == 0);
    size_t i = 0;
    for (const cJSON *c = callers ? callers->child : NULL; c; c = c->next, i++) {
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(c, "name");
        FUZZ_CHECK(cJSON_IsString(name) && !strcmp(name->valuestring, p->callers[i].name));
        FUZZ_CHECK(strcmp(p->callers[i].name, "default") != 0);
        for (size_t k = 0; k < i; k++)
            FUZZ_CHECK(strcmp(p->callers[k].name, p->callers[i].name) != 0);
        /* the caps and the caller's own key, as the text has them */
        const struct policy_caller *pc = &p->callers[i];
        const cJSON *mc = cJSON_GetObjectItemCaseSensitive(c, "max_connections");
        FUZZ_CHECK(pc->max_connections == (mc ? (unsigned)mc->valuedouble : 2u));
        FUZZ_CHECK(pc->max_connections >= 1 && pc->max_connections <= 64);
        FUZZ_CHECK(!pc->upstream_token_file == !pc->upstream_token);
        FUZZ_CHECK(!(pc->forward && pc->upstream_token));
    }
    cJSON_Delete(root);
}

static void decide(const struct policy *p)
{
    static const struct policy_who whos[] = {
        {true, 1001, 1, NULL, 0}, {true, 7, 50, NULL, 0}, {false, 0, 0, "token-a", 7}, {false, 0, 0, "other", 5}};
    static const struct policy_call calls[] = {
        {"config", NULL, "get", NULL, NULL},       {"graph-rag", "default", NULL, "ws", NULL},
        {"iam", NULL, "create-workspace", NULL, NULL}, {.route = "document-stream"}, {.route = "status"}};
    for (size_t w = 0; w < sizeof whos / sizeof *whos; w++) {
        const struct policy_caller *c = policy_match(p, &whos[w]);
        FUZZ_CHECK(!c || (c >= p->callers && c < p->callers + p->ncallers));
        for (size_t k = 0; k < sizeof calls / sizeof *calls; k++) {
            char why[300] = "";
            int r = policy_allows(p, c, &calls[k], why, sizeof why);
            if (r == POLICY_BY_DEFAULT)
                FUZZ_CHECK(!c && p->allow_by_default);
            else if (r == POLICY_REFUSED)
                FUZZ_CHECK(!c || strstr(why, c->name));
            else
                FUZZ_CHECK(c && r >= 0 && (size_t)r < c->nrules);
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = fz_copy(data, size, false);
    static const struct policy_env env = {uid_of, gid_of, read_token, NULL, NULL};
    char err[600];
    struct policy *p = policy_parse(text, size, &env, err, sizeof err);
    if (p) {
        oracle(text, size, p);
        decide(p);
        policy_free(p);
    } else {
        FUZZ_CHECK(!strncmp(err, "policy: ", 8));
    }
    free(text);
    return 0;
}
