#include "policy.h"
#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The operations the gateway knows per global service (issue 17's lists; v1.9.4 has a
 * subset): an unknown name in a rule is a warning, never an error (a newer gateway may
 * know more). */
static const char *const ops_config[] = {"get", "list", "getvalues", "getvalues-all-ws", "config", "put", "delete",
                                         NULL};
static const char *const ops_flow[] = {"list-blueprints", "get-blueprint", "list-flows",  "get-flow",
                                       "put-blueprint",   "delete-blueprint", "start-flow", "stop-flow",
                                       "list-classes",    "get-class",        "put-class",  "delete-class", NULL};
static const char *const ops_librarian[] = {
    "get-document-metadata", "get-document-content", "stream-document", "list-documents", "list-processing",
    "get-upload-status", "list-uploads", "add-document", "remove-document", "update-document", "add-processing",
    "remove-processing", "begin-upload", "upload-chunk", "complete-upload", "abort-upload", NULL};
static const char *const ops_knowledge[] = {"get-kg-core", "list-kg-cores", "put-kg-core", "delete-kg-core",
                                            "load-kg-core", "unload-kg-core", "get-de-core", "list-de-cores",
                                            "put-de-core", "delete-de-core", "load-de-core", NULL};
static const char *const ops_collection[] = {"list-collections", "update-collection", "delete-collection", NULL};
static const char *const ops_iam[] = {
    "create-user", "list-users", "get-user", "update-user", "disable-user", "enable-user", "delete-user",
    "change-password", "reset-password", "create-api-key", "list-api-keys", "revoke-api-key", "create-workspace",
    "list-workspaces", "get-workspace", "update-workspace", "disable-workspace", "delete-workspace", "login",
    "get-signing-key-public", "rotate-signing-key", "whoami", "list-my-workspaces", NULL};
static const struct {
    const char *service;
    const char *const *ops;
} known_ops[] = {{"config", ops_config},       {"flow", ops_flow},
                 {"librarian", ops_librarian}, {"knowledge", ops_knowledge},
                 {"collection-management", ops_collection}, {"iam", ops_iam}};

static const char *const route_names[] = {"auth",        "i18n",        "metrics",     "document-stream", "import-core",
                                          "export-core", "flow-import", "flow-export", "status",          NULL};

/* Operations that reach past one workspace: never for a pinned caller. */
static const char *const cross_ws_ops[] = {"getvalues-all-ws", "list-workspaces", "create-workspace",
                                           "get-workspace",    "update-workspace", "disable-workspace",
                                           "delete-workspace", "list-my-workspaces", NULL};

static bool in_names(const char *const *names, const char *s)
{
    for (; *names; names++)
        if (!strcmp(*names, s))
            return true;
    return false;
}

bool policy_cross_workspace(const char *operation)
{
    return operation && in_names(cross_ws_ops, operation);
}

/* ---- parsing ---------------------------------------------------------------------- */

struct parse {
    const struct policy_env *env;
    char *err;
    size_t errlen;
    char at[160];   /* the member being read: "callers[2].match.uid[0]" */
};

static int fail(struct parse *ps, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(struct parse *ps, const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(ps->err, ps->errlen, "policy: %s: %s", ps->at[0] ? ps->at : "(top)", msg);
    return -1;
}

static void warn(struct parse *ps, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void warn(struct parse *ps, const char *fmt, ...)
{
    if (!ps->env->warn)
        return;
    char msg[400], line[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(line, sizeof line, "policy: %s: %s", ps->at, msg);
    ps->env->warn(ps->env->arg, line);
}

static char *xstrdup(const char *s)
{
    char *p = strdup(s);
    if (!p)
        abort();
    return p;
}

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size);
    if (!p)
        abort();
    return p;
}

/* A string or a list of strings (non-empty, no empty string). */
static int parse_list(struct parse *ps, const cJSON *j, const char *member, size_t base, struct policy_list *out,
                      bool star_ok)
{
    snprintf(ps->at + base, sizeof ps->at - base, ".%s", member);
    if (out->present)
        return fail(ps, "given twice");
    out->present = true;
    if (cJSON_IsString(j)) {
        out->v = xcalloc(1, sizeof *out->v);
        out->v[out->n++] = xstrdup(j->valuestring);
    } else if (cJSON_IsArray(j) && cJSON_GetArraySize(j) > 0) {
        out->v = xcalloc((size_t)cJSON_GetArraySize(j), sizeof *out->v);
        for (const cJSON *e = j->child; e; e = e->next) {
            if (!cJSON_IsString(e))
                return fail(ps, "must be a list of strings");
            out->v[out->n++] = xstrdup(e->valuestring);
        }
    } else {
        return fail(ps, "must be a string or a non-empty list of strings");
    }
    for (size_t i = 0; i < out->n; i++) {
        if (!out->v[i][0])
            return fail(ps, "an empty name");
        if (!strcmp(out->v[i], "*")) {
            if (!star_ok)
                return fail(ps, "\"*\" is allowed for service only");
            out->star = true;
        }
    }
    return 0;
}

static void warn_unknown_ops(struct parse *ps, const struct policy_rule *r)
{
    for (size_t i = 0; i < r->operation.n; i++) {
        const char *op = r->operation.v[i];
        bool known = false, any_global = false;
        for (size_t k = 0; k < sizeof known_ops / sizeof *known_ops; k++) {
            bool named = r->service.star;
            for (size_t s = 0; s < r->service.n && !named; s++)
                named = !strcmp(r->service.v[s], known_ops[k].service);
            any_global |= named;
            if (named && in_names(known_ops[k].ops, op))
                known = true;
        }
        if (!known && any_global)
            warn(ps, "operation \"%s\" is not one the gateway is known to have for these services", op);
        else if (!any_global)
            warn(ps, "operation \"%s\": none of these services takes an operation", op);
    }
}

static int parse_rule(struct parse *ps, const cJSON *j, size_t base, struct policy_rule *r)
{
    if (!cJSON_IsObject(j))
        return fail(ps, "a rule must be an object");
    for (const cJSON *m = j->child; m; m = m->next) {
        ps->at[base] = '\0';
        int rc;
        if (!strcmp(m->string, "service"))
            rc = parse_list(ps, m, "service", base, &r->service, true);
        else if (!strcmp(m->string, "flow"))
            rc = parse_list(ps, m, "flow", base, &r->flow, false);
        else if (!strcmp(m->string, "operation"))
            rc = parse_list(ps, m, "operation", base, &r->operation, false);
        else if (!strcmp(m->string, "route"))
            rc = parse_list(ps, m, "route", base, &r->route, false);
        else
            return fail(ps, "unknown member \"%s\" (service, flow, operation, route)", m->string);
        if (rc)
            return -1;
    }
    ps->at[base] = '\0';
    if (r->service.present == r->route.present)
        return fail(ps, "a rule names either \"service\" or \"route\"");
    if (r->route.present && (r->flow.present || r->operation.present))
        return fail(ps, "a \"route\" rule takes no flow or operation");
    for (size_t i = 0; i < r->route.n; i++)
        if (!in_names(route_names, r->route.v[i])) {
            snprintf(ps->at + base, sizeof ps->at - base, ".route[%zu]", i);
            return fail(ps, "no route \"%s\" (auth, i18n, metrics, document-stream, import-core, export-core, "
                            "flow-import, flow-export, status)", r->route.v[i]);
        }
    snprintf(ps->at + base, sizeof ps->at - base, ".operation");
    warn_unknown_ops(ps, r);
    ps->at[base] = '\0';
    return 0;
}

/* uid or gid: names or numbers, names resolved now. */
static int parse_ids(struct parse *ps, const cJSON *j, size_t base, const char *member,
                     int (*lookup)(const char *, unsigned *), unsigned **out, size_t *n)
{
    snprintf(ps->at + base, sizeof ps->at - base, ".%s", member);
    if (*out)
        return fail(ps, "given twice");
    if (!cJSON_IsArray(j) && !cJSON_IsString(j) && !cJSON_IsNumber(j))
        return fail(ps, "must be a name, a number or a list of them");
    size_t cap = cJSON_IsArray(j) ? (size_t)cJSON_GetArraySize(j) : 1;
    if (!cap)
        return fail(ps, "an empty list");
    *out = xcalloc(cap, sizeof **out);
    const cJSON *e = cJSON_IsArray(j) ? j->child : j;
    for (size_t i = 0; e && i < cap; e = e->next, i++) {
        snprintf(ps->at + base, sizeof ps->at - base, ".%s[%zu]", member, i);
        if (cJSON_IsNumber(e)) {
            if (e->valuedouble < 0 || e->valuedouble > 4294967294.0 || e->valuedouble != (double)(unsigned)e->valuedouble)
                return fail(ps, "not a valid id");
            (*out)[(*n)++] = (unsigned)e->valuedouble;
        } else if (cJSON_IsString(e) && e->valuestring[0]) {
            if (lookup(e->valuestring, &(*out)[*n]))
                return fail(ps, "no %s named \"%s\"", !strcmp(member, "uid") ? "user" : "group", e->valuestring);
            (*n)++;
        } else {
            return fail(ps, "must be a name or a number");
        }
    }
    return 0;
}

static int parse_match(struct parse *ps, const cJSON *j, size_t base, struct policy_caller *c)
{
    snprintf(ps->at + base, sizeof ps->at - base, ".match");
    if (!cJSON_IsObject(j) || !j->child)
        return fail(ps, "must be an object with uid, gid, token_file, forward or any");
    size_t mbase = strlen(ps->at);
    for (const cJSON *m = j->child; m; m = m->next) {
        ps->at[mbase] = '\0';
        int rc = 0;
        if (!strcmp(m->string, "uid")) {
            rc = parse_ids(ps, m, mbase, "uid", ps->env->uid_of, &c->uid, &c->nuid);
        } else if (!strcmp(m->string, "gid")) {
            rc = parse_ids(ps, m, mbase, "gid", ps->env->gid_of, &c->gid, &c->ngid);
        } else if (!strcmp(m->string, "token_file")) {
            snprintf(ps->at + mbase, sizeof ps->at - mbase, ".token_file");
            if (!cJSON_IsString(m) || !m->valuestring[0] || c->token_file)
                return fail(ps, "must be a file name (once)");
            c->token_file = xstrdup(m->valuestring);
            char why[300];
            c->token = ps->env->read_token(c->token_file, why, sizeof why);
            if (!c->token)
                return fail(ps, "%s", why);
        } else if (!strcmp(m->string, "forward") || !strcmp(m->string, "any")) {
            snprintf(ps->at + mbase, sizeof ps->at - mbase, ".%s", m->string);
            if (!cJSON_IsTrue(m))
                return fail(ps, "must be true (or left out)");
            *(m->string[0] == 'f' ? &c->forward : &c->any) = true;
        } else {
            return fail(ps, "unknown member \"%s\" (uid, gid, token_file, forward, any)", m->string);
        }
        if (rc)
            return -1;
    }
    return 0;
}

static bool good_name(const char *s)
{
    size_t n = strlen(s);
    if (!n || n > 64)
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') || *s == '-' ||
              *s == '_' || *s == '.'))
            return false;
    return true;
}

static int parse_string_member(struct parse *ps, const cJSON *m, size_t base, char **out)
{
    snprintf(ps->at + base, sizeof ps->at - base, ".%s", m->string);
    if (!cJSON_IsString(m) || !m->valuestring[0] || *out)
        return fail(ps, "must be a non-empty string (once)");
    *out = xstrdup(m->valuestring);
    return 0;
}

/* The caller's own gateway key: read now, through the same reader as token_file (the
 * daemon's registers it as a secret, redacted wherever it might be shown). */
static int parse_upstream_key(struct parse *ps, const cJSON *m, size_t base, struct policy_caller *c)
{
    if (parse_string_member(ps, m, base, &c->upstream_token_file))
        return -1;
    char why[300];
    c->upstream_token = ps->env->read_token(c->upstream_token_file, why, sizeof why);
    return c->upstream_token ? 0 : fail(ps, "%s", why);
}

/* The gateway connections of this caller's pool (issue 17's caps). */
static int parse_max_connections(struct parse *ps, const cJSON *m, size_t base, struct policy_caller *c)
{
    snprintf(ps->at + base, sizeof ps->at - base, ".max_connections");
    if (c->max_connections || !cJSON_IsNumber(m) || !(m->valuedouble >= 1 && m->valuedouble <= 64) ||
        m->valuedouble != (double)(int)m->valuedouble)
        return fail(ps, "must be a whole number from 1 to 64 (once)");
    c->max_connections = (unsigned)m->valuedouble;
    return 0;
}

static int parse_allow(struct parse *ps, const cJSON *m, size_t base, struct policy_caller *c)
{
    snprintf(ps->at + base, sizeof ps->at - base, ".allow");
    if (!cJSON_IsArray(m) || c->rules)
        return fail(ps, "must be a list of rules (once)");
    c->rules = xcalloc((size_t)cJSON_GetArraySize(m), sizeof *c->rules);
    for (const cJSON *r = m->child; r; r = r->next) {
        snprintf(ps->at + base, sizeof ps->at - base, ".allow[%zu]", c->nrules);
        if (parse_rule(ps, r, strlen(ps->at), &c->rules[c->nrules++]))
            return -1;
    }
    return 0;
}

static int parse_caller(struct parse *ps, const cJSON *j, size_t idx, struct policy_caller *c)
{
    snprintf(ps->at, sizeof ps->at, "callers[%zu]", idx);
    size_t base = strlen(ps->at);
    if (!cJSON_IsObject(j))
        return fail(ps, "must be an object");
    const cJSON *match = NULL;
    for (const cJSON *m = j->child; m; m = m->next) {
        ps->at[base] = '\0';
        int rc = 0;
        if (!strcmp(m->string, "name"))
            rc = parse_string_member(ps, m, base, &c->name);
        else if (!strcmp(m->string, "workspace"))
            rc = parse_string_member(ps, m, base, &c->workspace);
        else if (!strcmp(m->string, "upstream_token_file"))
            rc = parse_upstream_key(ps, m, base, c);
        else if (!strcmp(m->string, "allow"))
            rc = parse_allow(ps, m, base, c);
        else if (!strcmp(m->string, "match") && !match)
            match = m;
        else if (!strcmp(m->string, "max_connections"))
            rc = parse_max_connections(ps, m, base, c);
        else
            return fail(ps, "unknown member \"%s\"", m->string);
        if (rc)
            return -1;
    }
    ps->at[base] = '\0';
    if (!c->name)
        return fail(ps, "a caller needs a \"name\"");
    snprintf(ps->at + base, sizeof ps->at - base, ".name");
    if (!good_name(c->name) || !strcmp(c->name, "default"))
        return fail(ps, "\"%s\": 1 to 64 of A-Z a-z 0-9 . _ - (and not \"default\")", c->name);
    ps->at[base] = '\0';
    if (!match)
        return fail(ps, "a caller needs a \"match\"");
    if (!c->max_connections)
        c->max_connections = 2;
    if (parse_match(ps, match, base, c))
        return -1;
    snprintf(ps->at + base, sizeof ps->at - base, ".upstream_token_file");
    if (c->forward && c->upstream_token_file)
        return fail(ps, "a forward caller's calls use the key it presents: it takes no upstream_token_file");
    ps->at[base] = '\0';
    return 0;
}

/* Names, token files and tokens are each one caller's. */
static int check_unique(struct parse *ps, const struct policy *p)
{
    for (size_t i = 0; i < p->ncallers; i++)
        for (size_t k = 0; k < i; k++) {
            const struct policy_caller *a = &p->callers[k], *b = &p->callers[i];
            snprintf(ps->at, sizeof ps->at, "callers[%zu]", i);
            if (!strcmp(a->name, b->name))
                return fail(ps, "the name \"%s\" is callers[%zu]'s already", b->name, k);
            snprintf(ps->at, sizeof ps->at, "callers[%zu].match.token_file", i);
            if (a->token && b->token && !strcmp(a->token, b->token))
                return fail(ps, "the same token as callers[%zu] (%s): each caller has its own", k, a->name);
        }
    return 0;
}

static int parse_top(struct parse *ps, const cJSON *root, struct policy *p)
{
    if (!cJSON_IsObject(root))
        return fail(ps, "the policy must be a JSON object");
    const cJSON *callers = NULL;
    bool has_default = false;
    for (const cJSON *m = root->child; m; m = m->next) {
        snprintf(ps->at, sizeof ps->at, "%s", m->string);
        if (!strcmp(m->string, "default")) {
            if (has_default)
                return fail(ps, "given twice");
            has_default = true;
            if (!cJSON_IsString(m) || (strcmp(m->valuestring, "allow") && strcmp(m->valuestring, "deny")))
                return fail(ps, "must be \"allow\" or \"deny\"");
            p->allow_by_default = !strcmp(m->valuestring, "allow");
        } else if (!strcmp(m->string, "callers")) {
            if (!cJSON_IsArray(m) || callers)
                return fail(ps, "must be a list (once)");
            callers = m;
        } else {
            return fail(ps, "unknown member (default, callers)");
        }
    }
    ps->at[0] = '\0';
    if (!has_default)
        return fail(ps, "\"default\" (\"allow\" or \"deny\") is required");
    if (!callers)
        return 0;
    p->callers = xcalloc((size_t)cJSON_GetArraySize(callers), sizeof *p->callers);
    for (const cJSON *c = callers->child; c; c = c->next) {
        size_t i = p->ncallers++;
        if (parse_caller(ps, c, i, &p->callers[i]))
            return -1;
    }
    return check_unique(ps, p);
}

struct policy *policy_parse(const char *text, size_t len, const struct policy_env *env, char *err, size_t errlen)
{
    struct parse ps = {.env = env, .err = err, .errlen = errlen};
    cJSON *root = cJSON_ParseWithLength(text, len);
    if (!root) {
        snprintf(err, errlen, "policy: not valid JSON");
        return NULL;
    }
    struct policy *p = xcalloc(1, sizeof *p);
    int rc = parse_top(&ps, root, p);
    cJSON_Delete(root);
    if (rc) {
        policy_free(p);
        return NULL;
    }
    return p;
}

static void list_free(struct policy_list *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
}

void policy_free(struct policy *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->ncallers; i++) {
        struct policy_caller *c = &p->callers[i];
        for (size_t r = 0; r < c->nrules; r++) {
            list_free(&c->rules[r].service);
            list_free(&c->rules[r].flow);
            list_free(&c->rules[r].operation);
            list_free(&c->rules[r].route);
        }
        free(c->rules);
        free(c->name);
        free(c->uid);
        free(c->gid);
        free(c->token_file);
        if (c->token) {
            memset(c->token, 0, strlen(c->token));
            free(c->token);
        }
        free(c->workspace);
        free(c->upstream_token_file);
        if (c->upstream_token) {
            memset(c->upstream_token, 0, strlen(c->upstream_token));
            free(c->upstream_token);
        }
    }
    free(p->callers);
    free(p);
}

/* ---- deciding ----------------------------------------------------------------------- */

/* Constant time in the tokens' content; compared at the length shown, so a token with
 * a NUL inside is never one (no token file holds one). */
static bool same_token(const char *want, const char *tok, size_t len)
{
    size_t wlen = strlen(want), n = len > wlen ? len : wlen;
    unsigned char diff = (unsigned char)(len != wlen);
    for (size_t i = 0; i < n; i++)
        diff |= (unsigned char)((i < len ? tok[i] : 0) ^ (i < wlen ? want[i] : 0));
    return diff == 0;
}

static bool has_id(const unsigned *v, size_t n, unsigned id)
{
    for (size_t i = 0; i < n; i++)
        if (v[i] == id)
            return true;
    return false;
}

bool policy_local_token(const struct policy *p, const char *tok, size_t len)
{
    bool any = false;
    for (size_t i = 0; tok && i < p->ncallers; i++)
        any |= p->callers[i].token && same_token(p->callers[i].token, tok, len);
    return any;
}

static bool matches(const struct policy *p, const struct policy_caller *c, const struct policy_who *who)
{
    if (c->any)
        return true;
    if (who->has_cred && (has_id(c->uid, c->nuid, who->uid) || has_id(c->gid, c->ngid, who->gid)))
        return true;
    if (who->token && c->token && same_token(c->token, who->token, who->token_len))
        return true;
    return c->forward && who->token && who->token_len && !policy_local_token(p, who->token, who->token_len);
}

const struct policy_caller *policy_match(const struct policy *p, const struct policy_who *who)
{
    for (size_t i = 0; i < p->ncallers; i++)
        if (matches(p, &p->callers[i], who))
            return &p->callers[i];
    return NULL;
}

const struct policy_caller *policy_caller_named(const struct policy *p, const char *name)
{
    for (size_t i = 0; name && i < p->ncallers; i++)
        if (!strcmp(p->callers[i].name, name))
            return &p->callers[i];
    return NULL;
}

const char *policy_caller_name(const struct policy_caller *c)
{
    return c ? c->name : "default";
}

static bool listed(const struct policy_list *l, const char *s)
{
    if (!l->present || l->star)
        return true;
    for (size_t i = 0; s && i < l->n; i++)
        if (!strcmp(l->v[i], s))
            return true;
    return false;
}

static bool rule_allows(const struct policy_rule *r, const struct policy_call *call)
{
    if (call->route)
        return r->route.present && listed(&r->route, call->route);
    if (!r->service.present || !listed(&r->service, call->service))
        return false;
    if (call->flow && call->flow[0] && !listed(&r->flow, call->flow))
        return false;
    if (!call->operation)
        return !r->operation.present;
    return listed(&r->operation, call->operation);
}

int policy_allows(const struct policy *p, const struct policy_caller *c, const struct policy_call *call, char *why,
                  size_t cap)
{
    const char *name = policy_caller_name(c);
    if (!c) {
        if (p->allow_by_default)
            return POLICY_BY_DEFAULT;
        snprintf(why, cap, "the caller matches no entry of the policy and \"default\" is \"deny\"");
        return POLICY_REFUSED;
    }
    if (c->workspace) {
        if (call->workspace && call->workspace[0] && strcmp(call->workspace, c->workspace)) {
            snprintf(why, cap, "caller %s may use the workspace %.100s only, not %.100s", name, c->workspace,
                     call->workspace);
            return POLICY_REFUSED;
        }
        if (policy_cross_workspace(call->operation)) {
            snprintf(why, cap, "caller %s is pinned to the workspace %.100s: %.60s spans workspaces", name,
                     c->workspace, call->operation);
            return POLICY_REFUSED;
        }
    }
    for (size_t i = 0; i < c->nrules; i++)
        if (rule_allows(&c->rules[i], call))
            return (int)i;
    if (call->route)
        snprintf(why, cap, "no rule of caller %s allows the route %.60s", name, call->route);
    else
        snprintf(why, cap, "no rule of caller %s allows service %.60s%s%.60s%s%.60s", name, call->service,
                 call->flow && call->flow[0] ? " flow " : "", call->flow && call->flow[0] ? call->flow : "",
                 call->operation ? " operation " : "", call->operation ? call->operation : "");
    return POLICY_REFUSED;
}
