/* Per-caller policy (issue 17, docs/security.md "Policies"): who a caller is -- by the
 * kernel's word on the Unix socket (uid, primary gid), by a local token it presents,
 * by a Bearer that is no local token (forward), or anyone -- and what each caller may
 * call: services, flows, operations, pass-through routes and bulk sockets, and the one
 * workspace it may use; and the gateway key its calls present (its own
 * upstream_token_file's, a forward caller's own, or tgbridge's).
 *
 * This half is pure (no globals, no I/O but through struct policy_env, no logging):
 * policy_parse compiles the JSON text; policy_match finds a caller's entry;
 * policy_allows decides one call.  The daemon's live policy is policy_live.c's
 * (below the line). */
#ifndef TGB_POLICY_H
#define TGB_POLICY_H
#include <stdbool.h>
#include <stddef.h>

struct policy_list {
    char **v;
    size_t n;
    bool present;   /* the member was given */
    bool star;      /* "*" (service only) */
};

struct policy_rule {
    struct policy_list service, flow, operation, route;
};

struct policy_caller {
    char *name;
    unsigned *uid, *gid;
    size_t nuid, ngid;
    char *token_file, *token;      /* token: the file's content, read at parse */
    bool any, forward;
    struct policy_rule *rules;
    size_t nrules;
    char *workspace;               /* NULL: not pinned */
    char *upstream_token_file;     /* NULL: tgbridge's own key (or, forward, the caller's) */
    char *upstream_token;          /* the file's content, read at parse (a secret) */
    unsigned max_connections;      /* gateway connections of its pool: 1..64, default 2 */
};

struct policy {
    bool allow_by_default;
    struct policy_caller *callers;
    size_t ncallers;
};

/* What parsing needs of the world: name lookups and token files (the fuzz target and
 * the unit tests give their own). */
struct policy_env {
    int (*uid_of)(const char *name, unsigned *out);             /* 0: found */
    int (*gid_of)(const char *name, unsigned *out);
    /* A malloc'd token (trimmed), or NULL with why in err. */
    char *(*read_token)(const char *path, char *err, size_t errlen);
    void (*warn)(void *arg, const char *msg);                    /* may be NULL */
    void *arg;
};

/* The compiled policy, or NULL with the member at fault named in err. */
struct policy *policy_parse(const char *text, size_t len, const struct policy_env *env, char *err, size_t errlen);
void policy_free(struct policy *p);

/* Who is asking, as the door knows it. */
struct policy_who {
    bool has_cred;
    unsigned uid, gid;
    const char *token;   /* presented (Bearer, ?token= decoded, auth frame); NULL: none */
    size_t token_len;
};
/* The first entry that matches, or NULL (the default applies). */
const struct policy_caller *policy_match(const struct policy *p, const struct policy_who *who);
const struct policy_caller *policy_caller_named(const struct policy *p, const char *name);
/* tok[0..len) is some caller's token_file token (constant time in the tokens). */
bool policy_local_token(const struct policy *p, const char *tok, size_t len);

/* One call: an envelope (service, flow, operation, workspace) or a route. */
struct policy_call {
    const char *service, *flow, *operation, *workspace;
    const char *route;   /* a pass-through route or bulk socket name, or "status"; NULL: an envelope */
};
#define POLICY_BY_DEFAULT (-1)
#define POLICY_REFUSED (-2)
/* The index of the rule of c that allows call, POLICY_BY_DEFAULT (c NULL and the
 * default allows), or POLICY_REFUSED with why in why (it names the caller). */
int policy_allows(const struct policy *p, const struct policy_caller *c, const struct policy_call *call, char *why,
                  size_t cap);
/* The name calls of c are logged and counted under ("default": matched none). */
const char *policy_caller_name(const struct policy_caller *c);
/* The operation is one that spans workspaces (refused to a pinned caller). */
bool policy_cross_workspace(const char *operation);

/* ---- the daemon's policy (policy_live.c) ---------------------------------------- */
struct config;
struct refusal;
/* Reads --policy (if any) and installs the door's hook.  -1 with why in err. */
int policy_init(const struct config *cfg, char *err, size_t errlen);
/* SIGHUP or the file changing: a good file applies to new calls; a bad one keeps the
 * old policy (why logged). */
bool policy_reload(const char *why); /* true: a new policy applies */
/* The token files of the live policy's callers (token_file, upstream_token_file), at
 * most cap of them: watched like the policy file itself.  Valid until a reload. */
size_t policy_files(const char **out, size_t cap);
bool policy_active(void);
/* Where the gateway's era comes from (main.c gives upstream_era): a caller pinned to a
 * workspace is refused against a v1 gateway, which has none (known at first connect). */
void policy_set_era(const char *(*era)(void));
/* The one per-call check every front end makes before anything goes upstream:
 * caller is the admission's caller name (caller_id.name).  True: allowed, and
 * *workspace (if not NULL) is replaced by the caller's pinned workspace when it has
 * one.  False: no is a 403 forbidden-by-policy naming the caller and why. */
bool policy_check_call(const char *caller, const struct policy_call *call, const char **workspace,
                       struct refusal *no);

/* The gateway identity calls of `caller` (caller_id.name) present upstream (issue 17):
 * its upstream_token_file's key, or -- a forward caller -- the credential it presented
 * (bearer[0..blen), which is no local token).  False: tgbridge's own (out untouched).
 * out->key may point into bearer or into the live policy: copy it to keep it. */
struct gateway_key {
    const char *key;
    size_t len;
    unsigned max_connections;   /* the caller's max_connections (default 2) */
    const char *caller;         /* the caller's name */
};
bool policy_gateway_key(const char *caller, const char *bearer, size_t blen, struct gateway_key *out);
/* (A forward caller that presented nothing, or a local token -- a name kept from an
 * older policy -- gets true with an empty key: the gateway's anonymous, never
 * tgbridge's key.  out->caller outlives reloads.) */

/* The credential a caller presents on an upgrade (bulk sockets, the local WebSocket),
 * as policy matching reads it for a forward caller: its Bearer, else its ?token= as
 * the gateway reads it (percent-decoded, '+' a space; ref section 3.2: the bulk
 * sockets take the key there).  Copied NUL-terminated into out; 0: none, or it holds
 * a NUL, or it does not fit cap. */
size_t policy_upgrade_credential(const char *authorization, size_t alen, const char *query_token, size_t qlen,
                                 char *out, size_t cap);
#endif
