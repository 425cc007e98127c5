/* The daemon's policy: --policy read at start, on SIGHUP and when the file changes;
 * the door's hook that names each caller at admission; the one per-call check every
 * front end makes (policy_check_call); the gateway key a caller's calls present
 * (policy_gateway_key); refusals counted by caller and service. */
#include "access.h"
#include "log.h"
#include "policy.h"
#include "redact.h"
#include "status.h"
#include "util.h"
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Refusals by caller and service: callers are bounded by the file (and its reloads),
 * services by the known list; past ROWS, "other". */
#define ROWS 256
static const char *const services[] = {
    "text-completion", "prompt", "agent", "graph-rag", "document-rag", "embeddings", "triples", "sparql",
    "graph-embeddings", "document-embeddings", "row-embeddings", "rows", "objects", "nlp-query",
    "structured-query", "structured-diag", "mcp-tool", "reranker", "image-to-text", "text-load",
    "document-load", "config", "flow", "librarian", "knowledge", "collection-management", "iam",
    "auth", "i18n", "metrics", "document-stream", "import-core", "export-core", "flow-import", "flow-export",
    "status", NULL};

static struct {
    const struct config *cfg;
    const char *(*era)(void);
    struct policy *policy;   /* NULL: no --policy */
    char **names;            /* every caller name ever loaded: caller_id.name points here */
    size_t nnames;
    struct refused {
        const char *caller, *service;
        unsigned long long n;
    } refused[ROWS];
    size_t nrefused;
} P;

/* Caller names outlive the policy that named them: a connection admitted under an old
 * policy keeps its name (and gets the new policy's rules for that name). */
static const char *intern(const char *name)
{
    for (size_t i = 0; i < P.nnames; i++)
        if (!strcmp(P.names[i], name))
            return P.names[i];
    char **v = realloc(P.names, (P.nnames + 1) * sizeof *v);
    if (!v || !(v[P.nnames] = strdup(name)))
        abort();
    P.names = v;
    return P.names[P.nnames++];
}

static int uid_of(const char *name, unsigned *out)
{
    struct passwd *pw = getpwnam(name);
    if (!pw)
        return -1;
    *out = (unsigned)pw->pw_uid;
    return 0;
}

static int gid_of(const char *name, unsigned *out)
{
    struct group *gr = getgrnam(name);
    if (!gr)
        return -1;
    *out = (unsigned)gr->gr_gid;
    return 0;
}

static char *read_token(const char *path, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
        return NULL;
    }
    char tok[4096];
    ssize_t n = read(fd, tok, sizeof tok - 1);
    close(fd);
    if (n < 0 || n == (ssize_t)sizeof tok - 1) {
        snprintf(err, errlen, "cannot read %s (or it is over 4 KiB)", path);
        return NULL;
    }
    while (n > 0 && (tok[n - 1] == '\n' || tok[n - 1] == '\r' || tok[n - 1] == ' ' || tok[n - 1] == '\t'))
        n--;
    tok[n] = '\0';
    char *out = NULL;
    if (!n || memchr(tok, '\0', (size_t)n))
        snprintf(err, errlen, "%s is empty (or holds a NUL byte)", path);
    else if (!config_check_token(P.cfg, tok, path, err, errlen) && (out = strdup(tok)))
        secret_add(out);
    explicit_bzero(tok, sizeof tok);
    return out;
}

static void warn_log(void *arg, const char *msg)
{
    (void)arg;
    log_warn("%s", msg);
}

static struct policy *load(char *err, size_t errlen)
{
    const char *path = P.cfg->policy;
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "cannot open --policy %s: %s", path, strerror(errno));
        return NULL;
    }
    static char text[1 << 20];
    size_t n = fread(text, 1, sizeof text, f);
    bool big = n == sizeof text;
    fclose(f);
    if (big) {
        snprintf(err, errlen, "--policy %s is over 1 MiB", path);
        return NULL;
    }
    static const struct policy_env env = {uid_of, gid_of, read_token, warn_log, NULL};
    return policy_parse(text, n, &env, err, errlen);
}

static bool upgrade_rule(enum admit_rule r)
{
    return r == ADMIT_UPGRADE || r == ADMIT_UPGRADE_LOCKED;
}

/* The token a caller presents: the first of its Bearer, X-Tgbridge-Token (the auth
 * routes, where the Bearer is the caller's own key) or the auth frame's token, and
 * ?token= (as sent, or decoded) that is a local token.  None local: what a forward
 * caller shows as its own key -- its Bearer, else on an upgrade the auth frame's
 * token or ?token= decoded (ref section 3.2: the bulk sockets take the key there and
 * the official tg-load-* tools put it there; section 9.4: so does the TypeScript
 * client on the main socket) -- or none. */
static void presented_token(const struct admission_ask *ask, char *dec, size_t cap, struct policy_who *w)
{
    size_t blen = 0, n = 0;
    const char *bearer = access_bearer(ask->authorization, ask->authorization_len, &blen);
    if (ask->query_token)
        n = url_decode_form(ask->query_token, ask->query_token_len, dec, cap);
    const struct {
        const char *p;
        size_t n;
    } shown[] = {{bearer, blen},
                 {ask->alt_token, ask->alt_token_len},
                 {ask->query_token, ask->query_token_len},
                 {ask->query_token ? dec : NULL, n}};
    for (size_t i = 0; i < sizeof shown / sizeof *shown; i++)
        if (shown[i].p && policy_local_token(P.policy, shown[i].p, shown[i].n)) {
            w->token = shown[i].p;
            w->token_len = shown[i].n;
            return;
        }
    bool upgrade = upgrade_rule(ask->rule);
    for (size_t i = 0; i < sizeof shown / sizeof *shown; i++)
        if (shown[i].p && shown[i].n && i != 2 && (i == 0 || upgrade)) {
            w->token = shown[i].p;
            w->token_len = shown[i].n;
            return;
        }
}

/* The door's hook: who this caller is, by the first entry that matches. */
static bool name_caller(const struct admission_ask *ask, struct caller_id *who, struct refusal *no)
{
    (void)no;
    if (!P.policy)
        return true;
    struct policy_who w = {.has_cred = who->has_cred, .uid = who->uid, .gid = who->gid};
    char dec[4096];
    presented_token(ask, dec, sizeof dec, &w);
    /* a local token is never the caller's own credential (the auth routes send that on) */
    size_t blen = 0;
    const char *bearer = access_bearer(ask->authorization, ask->authorization_len, &blen);
    who->bearer_is_local |= policy_local_token(P.policy, bearer, blen);
    who->name = intern(policy_caller_name(policy_match(P.policy, &w)));
    explicit_bzero(dec, sizeof dec);
    return true;
}

static void metrics(struct buf *out)
{
    if (!P.policy && !P.nrefused)
        return;
    status_metric_head(out, "tgbridge_policy_refusals_total", "counter",
                       "Calls the --policy refused, by caller and service (or route).");
    for (size_t i = 0; i < P.nrefused; i++) {
        buf_puts(out, "tgbridge_policy_refusals_total{caller=\"");
        status_label_value(out, P.refused[i].caller);
        buf_puts(out, "\",service=\"");
        status_label_value(out, P.refused[i].service);
        buf_printf(out, "\"} %llu\n", P.refused[i].n);
    }
}

static void count_refusal(const char *caller, const char *service)
{
    const char *svc = "other";
    for (size_t i = 0; service && services[i]; i++)
        if (!strcmp(services[i], service))
            svc = services[i];
    if (P.nrefused == ROWS - 1)
        caller = "other";
    for (size_t i = 0; i < P.nrefused; i++)
        if (P.refused[i].caller == caller && P.refused[i].service == svc) {
            P.refused[i].n++;
            return;
        }
    if (P.nrefused < ROWS)
        P.refused[P.nrefused++] = (struct refused){caller, svc, 1};
}

void policy_set_era(const char *(*era)(void))
{
    P.era = era;
}

/* A v1 gateway reads no envelope workspace: the pin would be no pin at all. */
static bool pin_unservable(const struct policy_caller *c, struct refusal *no)
{
    const char *era = P.era ? P.era() : NULL;
    if (!c || !c->workspace || !era || strncmp(era, "v1", 2))
        return false;
    no->status = 403;
    no->type = "forbidden-by-policy";
    snprintf(no->message, sizeof no->message,
             "caller %s is pinned to the workspace %.100s, and this gateway (%s) has no workspaces", c->name,
             c->workspace, era);
    return true;
}

bool policy_check_call(const char *caller, const struct policy_call *call, const char **workspace,
                       struct refusal *no)
{
    if (!P.policy)
        return true;
    const struct policy_caller *c = policy_caller_named(P.policy, caller);
    char why[sizeof no->message];
    if (pin_unservable(c, no)) {
        count_refusal(intern(c->name), call->route ? call->route : call->service);
        return false;
    }
    if (policy_allows(P.policy, c, call, why, sizeof why) == POLICY_REFUSED) {
        no->status = 403;
        no->type = "forbidden-by-policy";
        snprintf(no->message, sizeof no->message, "%s", why);
        count_refusal(intern(policy_caller_name(c)), call->route ? call->route : call->service);
        log_debug("policy: refused: %s", why);
        return false;
    }
    if (c && c->workspace && workspace)
        *workspace = c->workspace;
    return true;
}

bool policy_gateway_key(const char *caller, const char *bearer, size_t blen, struct gateway_key *out)
{
    const struct policy_caller *c = P.policy ? policy_caller_named(P.policy, caller) : NULL;
    if (!c || (!c->upstream_token && !c->forward))
        return false;
    /* a forward caller's name kept from an older policy may come with a local token
     * now: that is never sent upstream (nor is tgbridge's key in its stead) */
    bool own = bearer && blen && !policy_local_token(P.policy, bearer, blen);
    *out = (struct gateway_key){
        .key = c->upstream_token ? c->upstream_token : own ? bearer : "",
        .len = c->upstream_token ? strlen(c->upstream_token) : own ? blen : 0,
        .max_connections = c->max_connections,
        .caller = intern(c->name),
    };
    return true;
}

size_t policy_upgrade_credential(const char *authorization, size_t alen, const char *query_token, size_t qlen,
                                 char *out, size_t cap)
{
    size_t n = 0;
    const char *bearer = access_bearer(authorization, alen, &n);
    if (!cap)
        return 0;
    if (bearer && n) /* as presented_token reads it: an empty Bearer is none */
        n = n < cap ? (memcpy(out, bearer, n), n) : 0;
    else
        n = query_token && qlen < cap ? url_decode_form(query_token, qlen, out, cap) : 0;
    if (memchr(out, '\0', n))
        n = 0;
    out[n] = '\0';
    return n;
}

bool policy_active(void)
{
    return P.policy != NULL;
}

static const struct status_source source = {"policy", NULL, metrics, NULL};

int policy_init(const struct config *cfg, char *err, size_t errlen)
{
    P.cfg = cfg;
    if (!cfg->policy)
        return 0;
    if (cfg->client_token_file) {
        snprintf(err, errlen,
                 "--client-token-file cannot be used with --policy: move the token into a caller's "
                 "\"match\": {\"token_file\": ...}");
        return -1;
    }
    if (!(P.policy = load(err, errlen)))
        return -1;
    access_set_policy(name_caller);
    status_register(&source);
    log_info("policy %s: %zu callers, default %s", cfg->policy, P.policy->ncallers,
             P.policy->allow_by_default ? "allow" : "deny");
    return 0;
}

bool policy_reload(const char *why)
{
    if (!P.cfg || !P.cfg->policy || !P.policy)
        return false;
    char err[600];
    struct policy *p = load(err, sizeof err);
    if (!p) {
        log_error("%s: %s; keeping the policy as it was", why, err);
        return false;
    }
    policy_free(P.policy); /* nothing holds on to it: calls keep names, not entries */
    P.policy = p;
    log_info("%s: policy %s read again: %zu callers, default %s", why, P.cfg->policy, p->ncallers,
             p->allow_by_default ? "allow" : "deny");
    return true;
}

size_t policy_files(const char **out, size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; P.policy && i < P.policy->ncallers; i++) {
        const struct policy_caller *c = &P.policy->callers[i];
        if (c->token_file && n < cap)
            out[n++] = c->token_file;
        if (c->upstream_token_file && n < cap)
            out[n++] = c->upstream_token_file;
    }
    return n;
}
