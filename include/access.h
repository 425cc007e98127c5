/* Who may use tgbridge's door, decided in one place for every front end and every
 * upgrade: the peer's credentials (the Unix socket's --unix-allow-uid/gid), the
 * browser rules (Origin, Host: docs/security.md) and the optional local client token
 * (--client-token-file) as a Bearer header, a ?token= or the local WebSocket's auth
 * frame.  The answer is a verdict -- the caller's identity, or a refusal with its
 * status, error type and message -- which front ends only apply: REST answers the
 * status and a JSON error, the upgrades are turned down, the line protocol writes an
 * error line.  access_decide() is the pure core (no globals, no I/O, no logging), for
 * unit tests; access_admit() asks it with the daemon's configuration and logs. */
#ifndef TGB_ACCESS_H
#define TGB_ACCESS_H
#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>
#include "config.h"

/* A refusal: HTTP status, error type, message. */
struct refusal {
    unsigned status;
    const char *type;
    char message[300];
};

/* Who is at the other end of an accepted connection, as the kernel tells it. */
struct peer {
    struct sockaddr_storage addr;
    socklen_t addrlen;
    double accepted_at;   /* now_mono() at accept */
    bool unix_socket;     /* came over the Unix socket (no browser reaches it) */
    bool has_cred;        /* uid, gid, pid below are SO_PEERCRED's */
    unsigned uid, gid;
    int pid;
};

/* How a caller showed the local client token. */
enum token_kind {
    TOKEN_NOT_NEEDED,     /* no --client-token-file */
    TOKEN_BEARER,         /* Authorization: Bearer (or X-Tgbridge-Token on the auth routes) */
    TOKEN_QUERY,          /* ?token= */
    TOKEN_FRAME,          /* the local WebSocket's {"type":"auth"} frame */
    TOKEN_ABSENT,         /* none yet: admitted locked (the local WebSocket) */
    TOKEN_UNCHECKED,      /* not asked (ADMIT_OPEN, ADMIT_BROWSER) */
};

/* The caller's identity, as far as the door knows it. */
struct caller_id {
    bool unix_socket;
    bool has_cred;
    unsigned uid, gid;
    int pid;
    enum token_kind token;
    bool bearer_is_local; /* its Bearer was the local token (not the caller's own key) */
    const char *name;     /* the per-caller policy's name for it (issue 17); NULL today */
};

/* What a route asks of its callers: a property of the route, not of the front end. */
enum admit_rule {
    ADMIT_OPEN,           /* nothing: /healthz, /readyz, /metrics */
    ADMIT_BROWSER,        /* the browser rules only */
    ADMIT_BEARER,         /* browser rules, then the local token as a Bearer (REST) */
    ADMIT_OWN_CREDENTIAL, /* browser rules, then the local token as a Bearer or in X-Tgbridge-Token; a
                           * Bearer that is not it is the caller's own, for the gateway (auth routes) */
    ADMIT_UPGRADE,        /* browser rules, then the local token as a Bearer or ?token= (bulk sockets) */
    ADMIT_UPGRADE_LOCKED, /* the same, but with neither: admitted with TOKEN_ABSENT (local WebSocket) */
    ADMIT_PEER,           /* the peer's credentials only (the Unix socket, at accept) */
    ADMIT_ADMIN,          /* the admin listener's /status and /shutdown: a loopback peer, or the admin
                           * token as a Bearer; no browser rules */
};

/* What the front end knows of a request; NULL (and 0) for what it does not carry. */
struct admission_ask {
    enum admit_rule rule;
    const struct peer *peer;      /* NULL: not known (then unix_socket says where it came from) */
    bool unix_socket;
    const char *origin, *host;
    const char *authorization;    /* the Authorization header's value */
    size_t authorization_len;
    const char *query_token;      /* ?token=, as sent (not decoded) */
    size_t query_token_len;
    const char *alt_token;        /* X-Tgbridge-Token */
    size_t alt_token_len;
};

struct admission {
    bool admitted;
    struct caller_id caller;      /* when admitted */
    struct refusal refusal;       /* when not */
};

/* The configuration a decision reads (the daemon's: access_rules_now()). */
struct access_rules {
    const struct config *cfg;     /* allow_origin, allow_host, listen_host, allow_uid/gid */
    const char *token;            /* the local client token, or NULL */
    const char *admin_token;      /* --admin-token-file's token, or NULL */
};

/* Per-caller policy (issue 17) plugs in here: asked after the door's own rules have
 * admitted a caller, it may name the caller (who->name) or refuse.  None today. */
typedef bool (*access_policy_fn)(const struct admission_ask *ask, struct caller_id *who, struct refusal *no);
void access_set_policy(access_policy_fn fn);

int access_init(const struct config *cfg, char *err, size_t errlen);
/* SIGHUP or the file changing (why: which, for the log): --client-token-file and
 * --admin-token-file read again; a missing or empty file keeps the old token (logged);
 * it stays redacted. */
void access_reload(const char *why);

/* The verdict for ask under rules: pure. */
void access_decide(const struct access_rules *rules, const struct admission_ask *ask, struct admission *out);
/* The daemon's rules (valid until the next access_reload). */
struct access_rules access_rules_now(void);
/* access_decide with the daemon's rules, then the policy hook; a browser-rule
 * refusal is logged (once per origin or host, then rate-limited). */
void access_admit(const struct admission_ask *ask, struct admission *out);
/* access_admit for an upgrade whose request head listener.c read: Origin, Host,
 * Authorization and ?token= from h. */
struct http_head;
void access_admit_head(const struct http_head *h, const struct peer *peer, enum admit_rule rule,
                       struct admission *out);
/* A request head no front end may act on, whatever its route: a NUL byte in a header
 * (RFC 9110 §5.5), which libmicrohttpd would read as the end of the value -- a token
 * followed by NUL and anything would pass as the token.  True: refused (no). */
bool access_head_refused(const struct http_head *h, struct refusal *no);
/* The local WebSocket's auth frame: its token (NULL: absent or not a string) admits
 * who from then on (TOKEN_FRAME), or not (false; who unchanged). */
bool access_admit_frame(const char *token, size_t len, struct caller_id *who);

/* The peer is this machine: 127.0.0.0/8, ::1 (or v4-mapped 127/8), or a Unix socket: pure. */
bool access_peer_is_loopback(const struct peer *p);
/* The token of an "Authorization: Bearer <token>" value, or NULL. */
const char *access_bearer(const char *authorization, size_t len, size_t *tlen);
/* The token a client presented (NULL: none) is want (NULL: none configured, anything
 * goes), compared in constant time: pure. */
bool access_token_matches(const char *want, const char *token, size_t len);
/* ?token= compared as the gateway reads it (percent-decoded, '+' as a space, ref Q20)
 * and as sent (clients that put it there do not encode it). */
bool access_token_matches_encoded(const char *want, const char *p, size_t n);
#endif
