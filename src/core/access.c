#include "access.h"
#include "httphead.h"
#include "log.h"
#include "redact.h"
#include "util.h"
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

static struct {
    const struct config *cfg;
    char *token; /* the local client token, or NULL */
    char *admin_token; /* --admin-token-file's, or NULL */
    access_policy_fn policy;
} A;

/* A token file's first line (trailing blanks dropped) into *dst, registered as a
 * secret; the old value, if any, stays redacted. */
static int read_token(const char *path, const char *option, char **dst, char *err, size_t errlen)
{
    if (!path)
        return 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "cannot open --%s %s: %s", option, path, strerror(errno));
        return -1;
    }
    char tok[4096];
    ssize_t n = read(fd, tok, sizeof tok - 1);
    close(fd);
    if (n < 0 || n == (ssize_t)sizeof tok - 1) {
        snprintf(err, errlen, "cannot read --%s %s (or it is over 4 KiB)", option, path);
        return -1;
    }
    while (n > 0 && (tok[n - 1] == '\n' || tok[n - 1] == '\r' || tok[n - 1] == ' ' || tok[n - 1] == '\t'))
        n--;
    tok[n] = '\0';
    if (!n) {
        snprintf(err, errlen, "--%s %s is empty", option, path);
        return -1;
    }
    char what[4200];
    snprintf(what, sizeof what, "the %s token in --%s %s", strncmp(option, "admin", 5) ? "client" : "admin", option,
             path);
    if (config_check_token(A.cfg, tok, what, err, errlen)) {
        explicit_bzero(tok, sizeof tok);
        return -1;
    }
    secret_add(tok);
    if (*dst)
        explicit_bzero(*dst, strlen(*dst));
    free(*dst);
    *dst = strdup(tok);
    explicit_bzero(tok, sizeof tok);
    return *dst ? 0 : -1;
}

int access_init(const struct config *cfg, char *err, size_t errlen)
{
    A.cfg = cfg;
    if (read_token(cfg->client_token_file, "client-token-file", &A.token, err, errlen))
        return -1;
    return read_token(cfg->admin_token_file, "admin-token-file", &A.admin_token, err, errlen);
}

void access_reload(const char *why)
{
    char err[300];
    if (read_token(A.cfg->client_token_file, "client-token-file", &A.token, err, sizeof err))
        log_error("%s: %s; keeping the client token as it was", why, err);
    else if (A.cfg->client_token_file)
        log_info("%s: the client token read again", why);
    if (read_token(A.cfg->admin_token_file, "admin-token-file", &A.admin_token, err, sizeof err))
        log_error("%s: %s; keeping the admin token as it was", why, err);
    else if (A.cfg->admin_token_file)
        log_info("%s: the admin token read again", why);
}

/* "[::1]:8089" -> "::1", "localhost:8089" -> "localhost". */
static void host_of(const char *v, char *out, size_t cap)
{
    size_t n;
    if (*v == '[') {
        v++;
        n = strcspn(v, "]");
    } else {
        const char *colon = strrchr(v, ':');
        n = colon && !strchr(colon + 1, ':') ? (size_t)(colon - v) : strlen(v);
    }
    snprintf(out, cap, "%.*s", (int)(n < cap ? n : cap - 1), v);
}

static bool is_wildcard(const char *host)
{
    return !*host || !strcmp(host, "0.0.0.0") || !strcmp(host, "::");
}

/* Logged once per origin or host (up to a few dozen), then at most every 10 s. */
static void log_refusal(const struct refusal *r)
{
    static char *seen[32];
    static struct log_limit limit;
    for (size_t i = 0; i < sizeof seen / sizeof *seen; i++) {
        if (seen[i] && !strcmp(seen[i], r->message))
            return;
        if (!seen[i]) {
            seen[i] = strdup(r->message);
            log_warn("refused (%s): %s", r->type, r->message);
            return;
        }
    }
    unsigned long held;
    if (log_limit_ok(&limit, 10, &held))
        log_warn("refused (%s): %s (%lu more since the last report)", r->type, r->message, held);
}

static void refuse(struct admission *out, unsigned status, const char *type)
{
    out->admitted = false;
    out->refusal.status = status;
    out->refusal.type = type;
}

/* A browser page on any site can send requests to a loopback port, and with DNS
 * rebinding read the answers (docs/security.md): requests from web origins not
 * allowed, and Host names that are not this machine's, are refused. */
static bool browser_refused(const struct config *cfg, const struct admission_ask *ask, struct admission *out)
{
    if (ask->origin && !config_list_has(&cfg->allow_origin, ask->origin)) {
        refuse(out, 403, "forbidden-origin");
        snprintf(out->refusal.message, sizeof out->refusal.message,
                 "requests from the web origin %.200s are refused (not in --allow-origin)", ask->origin);
        return true;
    }
    if (ask->unix_socket || !ask->host) /* no browser reaches a Unix socket; HTTP/1.0 may omit Host */
        return false;
    char name[256];
    host_of(ask->host, name, sizeof name);
    if (host_is_loopback(name) || (!is_wildcard(cfg->listen_host) && !strcasecmp(name, cfg->listen_host)) ||
        config_list_has(&cfg->allow_host, name))
        return false;
    refuse(out, 403, "forbidden-host");
    snprintf(out->refusal.message, sizeof out->refusal.message,
             "the Host %.200s is not this machine's name (see --allow-host)", ask->host);
    return true;
}

/* The Unix socket's --unix-allow-uid / --unix-allow-gid (either list admits). */
static bool peer_refused(const struct config *cfg, const struct peer *p, struct admission *out)
{
    if (!cfg->n_allow_uid && !cfg->n_allow_gid)
        return false;
    for (int i = 0; i < cfg->n_allow_uid; i++)
        if (cfg->allow_uid[i] == p->uid)
            return false;
    for (int i = 0; i < cfg->n_allow_gid; i++)
        if (cfg->allow_gid[i] == p->gid)
            return false;
    refuse(out, 403, "forbidden");
    snprintf(out->refusal.message, sizeof out->refusal.message, "uid %u / gid %u is not allowed to use this socket",
             p->uid, p->gid);
    return true;
}

/* The local token, as the rule wants it shown; TOKEN_ABSENT when it was not shown and
 * the rule admits that (locked). */
static bool token_refused(const char *want, const struct admission_ask *ask, struct admission *out)
{
    struct caller_id *who = &out->caller;
    size_t blen = 0;
    const char *bearer = access_bearer(ask->authorization, ask->authorization_len, &blen);
    who->bearer_is_local = want && bearer && access_token_matches(want, bearer, blen);
    if (!want) {
        who->token = TOKEN_NOT_NEEDED;
        return false;
    }
    bool ok = false;
    switch (ask->rule) {
    case ADMIT_BEARER:
        ok = who->bearer_is_local;
        who->token = TOKEN_BEARER;
        break;
    case ADMIT_OWN_CREDENTIAL:
        ok = who->bearer_is_local ||
             (ask->alt_token && access_token_matches(want, ask->alt_token, ask->alt_token_len));
        who->token = TOKEN_BEARER;
        break;
    case ADMIT_UPGRADE:
    case ADMIT_UPGRADE_LOCKED:
        if (!bearer && !ask->query_token && ask->rule == ADMIT_UPGRADE_LOCKED) {
            who->token = TOKEN_ABSENT; /* locked until a good auth frame */
            return false;
        }
        ok = bearer ? who->bearer_is_local
                    : ask->query_token && access_token_matches_encoded(want, ask->query_token, ask->query_token_len);
        who->token = bearer ? TOKEN_BEARER : TOKEN_QUERY;
        break;
    default:
        who->token = TOKEN_UNCHECKED;
        return false;
    }
    if (ok)
        return false;
    refuse(out, 401, "auth-required");
    snprintf(out->refusal.message, sizeof out->refusal.message, "auth failure");
    return true;
}

bool access_peer_is_loopback(const struct peer *p)
{
    if (!p)
        return false;
    if (p->unix_socket || p->addr.ss_family == AF_UNIX)
        return true;
    if (p->addr.ss_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)&p->addr)->sin_addr.s_addr) >> 24) == 127;
    if (p->addr.ss_family != AF_INET6)
        return false;
    const struct in6_addr *a = &((const struct sockaddr_in6 *)&p->addr)->sin6_addr;
    return IN6_IS_ADDR_LOOPBACK(a) || (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
}

/* The admin listener's /status and /shutdown: this machine's callers, or the admin
 * token as a Bearer.  No browser rules: probes and scrapers use the pod address. */
static void admin_refused(const struct access_rules *rules, const struct admission_ask *ask, struct admission *out)
{
    if (access_peer_is_loopback(ask->peer))
        return;
    size_t blen = 0;
    const char *bearer = access_bearer(ask->authorization, ask->authorization_len, &blen);
    if (rules->admin_token && bearer && access_token_matches(rules->admin_token, bearer, blen)) {
        out->caller.token = TOKEN_BEARER;
        return;
    }
    refuse(out, rules->admin_token ? 401 : 403, rules->admin_token ? "auth-required" : "forbidden");
    snprintf(out->refusal.message, sizeof out->refusal.message, "%s",
             rules->admin_token ? "auth failure"
                                : "this admin route answers callers on loopback only (see --admin-token-file)");
}

void access_decide(const struct access_rules *rules, const struct admission_ask *ask, struct admission *out)
{
    memset(out, 0, sizeof *out);
    out->admitted = true;
    struct caller_id *who = &out->caller;
    who->unix_socket = ask->peer ? ask->peer->unix_socket : ask->unix_socket;
    if (ask->peer && ask->peer->has_cred) {
        who->has_cred = true;
        who->uid = ask->peer->uid;
        who->gid = ask->peer->gid;
        who->pid = ask->peer->pid;
    }
    who->token = TOKEN_UNCHECKED;
    if (ask->rule == ADMIT_OPEN)
        return;
    if (ask->rule == ADMIT_ADMIN) {
        admin_refused(rules, ask, out);
        return;
    }
    if (ask->rule == ADMIT_PEER) {
        if (ask->peer && ask->peer->has_cred)
            peer_refused(rules->cfg, ask->peer, out);
        return;
    }
    struct admission_ask a = *ask;
    a.unix_socket = who->unix_socket;
    if (browser_refused(rules->cfg, &a, out))
        return;
    token_refused(rules->token, &a, out);
}

struct access_rules access_rules_now(void)
{
    return (struct access_rules){A.cfg, A.token, A.admin_token};
}

void access_set_policy(access_policy_fn fn)
{
    A.policy = fn;
}

void access_admit(const struct admission_ask *ask, struct admission *out)
{
    struct access_rules rules = access_rules_now();
    access_decide(&rules, ask, out);
    if (!out->admitted) {
        if (!strncmp(out->refusal.type, "forbidden-", 10))
            log_refusal(&out->refusal);
        return;
    }
    if (A.policy && ask->rule != ADMIT_OPEN && ask->rule != ADMIT_ADMIN && !A.policy(ask, &out->caller, &out->refusal))
        out->admitted = false;
}

static bool span_cstr(struct span s, char *out, size_t cap)
{
    if (!s.p || s.n >= cap)
        return false;
    memcpy(out, s.p, s.n);
    out[s.n] = '\0';
    return true;
}

/* What RFC 6455 §4.1-4.2 asks of an opening handshake before anything else: HTTP/1.1
 * or later, and the one version there is (§4.4: 426 names it). */
static bool upgrade_refused(const struct http_head *h, struct admission *out)
{
    if (h->minor < 1) {
        refuse(out, 400, "bad-request");
        snprintf(out->refusal.message, sizeof out->refusal.message,
                 "a WebSocket upgrade needs HTTP/1.1 (RFC 6455 section 4.1)");
        return true;
    }
    if (!(h->ws_version.n == 2 && !memcmp(h->ws_version.p, "13", 2))) {
        refuse(out, 426, "upgrade-required");
        snprintf(out->refusal.message, sizeof out->refusal.message,
                 "Sec-WebSocket-Version 13 is the only version served (RFC 6455 section 4.4)");
        return true;
    }
    return false;
}

void access_admit_head(const struct http_head *h, const struct peer *peer, enum admit_rule rule,
                       struct admission *out)
{
    if ((rule == ADMIT_UPGRADE || rule == ADMIT_UPGRADE_LOCKED) && upgrade_refused(h, out))
        return;
    char origin[512], host[512];
    struct span qt;
    struct admission_ask ask = {
        .rule = rule,
        .peer = peer,
        .origin = span_cstr(h->origin, origin, sizeof origin) ? origin : NULL,
        .host = span_cstr(h->host, host, sizeof host) ? host : NULL,
        .authorization = h->authorization.p,
        .authorization_len = h->authorization.n,
    };
    if (http_query_param(h->query, "token", &qt)) {
        ask.query_token = qt.p ? qt.p : "";
        ask.query_token_len = qt.n;
    }
    access_admit(&ask, out);
}

bool access_head_refused(const struct http_head *h, struct refusal *no)
{
    if (!h->nul)
        return false;
    memset(no, 0, sizeof *no);
    no->status = 400;
    no->type = "bad-request";
    snprintf(no->message, sizeof no->message, "a header holds a NUL byte");
    return true;
}

bool access_admit_frame(const char *token, size_t len, struct caller_id *who)
{
    if (A.token && !(token && access_token_matches(A.token, token, len)))
        return false;
    who->token = A.token ? TOKEN_FRAME : TOKEN_NOT_NEEDED;
    if (A.policy) {
        /* The frame's token names the caller of later requests (issue 17). */
        struct refusal no;
        struct admission_ask ask = {.rule = ADMIT_UPGRADE, .unix_socket = who->unix_socket, .alt_token = token,
                                    .alt_token_len = len};
        return A.policy(&ask, who, &no);
    }
    return true;
}

bool access_token_matches(const char *want, const char *token, size_t len)
{
    if (!want)
        return true;
    /* Compared at the length shown, so a NUL inside differs from the token's end; and
     * refused outright: no token file holds one, and nothing may read it as shorter. */
    if (!token || memchr(token, '\0', len))
        return false;
    /* Constant time in the token's content: every byte of the longer one is looked at. */
    size_t wlen = strlen(want), n = len > wlen ? len : wlen;
    unsigned char diff = (unsigned char)(len != wlen);
    for (size_t i = 0; i < n; i++)
        diff |= (unsigned char)((i < len ? token[i] : 0) ^ (i < wlen ? want[i] : 0));
    return diff == 0;
}

const char *access_bearer(const char *authorization, size_t len, size_t *tlen)
{
    if (!authorization || len < 7 || strncasecmp(authorization, "Bearer ", 7))
        return NULL;
    *tlen = len - 7;
    return authorization + 7;
}

/* ?token= as the gateway reads it (decoded, '+' as a space: ref Q20), or as sent (the
 * clients that put it there do not encode it). */
bool access_token_matches_encoded(const char *want, const char *p, size_t n)
{
    if (access_token_matches(want, p, n))
        return true;
    char dec[4096];
    size_t o = 0;
    for (size_t i = 0; i < n && o + 1 < sizeof dec; i++) {
        int hi, lo;
        if (p[i] == '%' && i + 2 < n && (hi = hex_value(p[i + 1])) >= 0 && (lo = hex_value(p[i + 2])) >= 0) {
            dec[o++] = (char)(hi * 16 + lo);
            i += 2;
        } else {
            dec[o++] = p[i] == '+' ? ' ' : p[i];
        }
    }
    bool ok = access_token_matches(want, dec, o);
    explicit_bzero(dec, sizeof dec);
    return ok;
}
