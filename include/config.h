/* Command line + environment configuration. */
#ifndef TGB_CONFIG_H
#define TGB_CONFIG_H
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include "log.h"

enum auth_mode { AUTH_AUTO, AUTH_QUERY, AUTH_HEADER, AUTH_FIRST_FRAME };

/* The gateway's per-message limit: one larger frame closes the socket (ref §2.4). */
#define GATEWAY_MAX_FRAME 52428800u

struct gateway_url {
    bool tls;
    char host[256];      /* without brackets for IPv6 literals */
    int port;
    char base_path[1024]; /* "" or "/prefix" without trailing slash */
};

/* An HTTP CONNECT proxy: http://[user:password@]host[:port] (port 1080 if none, as
 * curl has it). */
struct proxy_url {
    char host[256];      /* without brackets for IPv6 literals */
    int port;
    char userinfo[256];  /* "user:password", percent-decoded; "" = none */
};

struct str_list {
    char **v;
    int n;
};

/* No gateway given: these are tried, the gateway's own listener default first (8888
 * since its v2.8.6), then the older one; the first that completes the upgrade is kept
 * (src/upstream/discover.c). */
#define GATEWAY_CANDIDATES 2
extern const char *const gateway_candidates[GATEWAY_CANDIDATES];

struct config {
    char *gateway;             /* as given, for logs (never contains the token); while
                                * discovering, the candidate kept or being tried */
    struct gateway_url gw;     /* likewise: what every dial goes to */
    bool gateway_discover;     /* none given: discover.c writes gateway and gw */
    char *token;               /* NULL = none configured */
    char *token_file;
    enum auth_mode auth;
    char listen_host[256];
    int listen_port;
    char admin_host[256];      /* --admin-listen: health, metrics, status, shutdown only */
    int admin_port;            /* -1: no admin listener */
    char *admin_token_file;    /* lets non-loopback callers use /status and /shutdown there */
    size_t max_body;
    double request_timeout;
    double queue_timeout;
    double heartbeat;
    double reconnect_min, reconnect_max;
    double ping_interval, ping_timeout;
    double drain_timeout;
    double connect_timeout;     /* a whole gateway connection attempt */
    double client_timeout;      /* a local caller's request head (and body pace) */
    double close_timeout;       /* a WebSocket closing handshake, after our close frame */
    int max_inflight;
    int max_queue;
    int max_connections;       /* gateway connections: the persistent one + overflow */
    int max_caller_pools;      /* callers' gateway identities with connections (issue 17) */
    int max_upstream_connections; /* gateway connections of every identity together */
    double connection_idle;    /* an idle overflow connection closes after this */
    size_t max_pending;        /* unfinished requests per local connection */
    size_t max_ws_clients;     /* local WebSocket connections */
    size_t max_passthrough;    /* pass-through calls at once */
    char *policy;              /* --policy: the per-caller policy file; NULL = none */
    char *client_token_file;   /* local callers must present this token; NULL = none */
    char *workspace;           /* envelope workspace when the body names none */
    char *ca_file;
    bool ca_only;              /* trust --ca-file alone, not the system store */
    bool insecure;
    char *proxy;               /* --proxy as given; "none" = never */
    struct proxy_url *via_proxy; /* the decision (config_pick_proxy), or NULL: direct */
    enum log_level log_level;
    bool log_json;             /* --log-format json */
    bool access_log;           /* --access-log: a line per finished call */
    /* Unix-domain socket (line JSON and HTTP) */
    char *unix_path;           /* NULL = disabled */
    bool unix_set;             /* given explicitly (even as none) */
    unsigned unix_mode;
    char *unix_group;
    unsigned allow_uid[32], allow_gid[32];
    int n_allow_uid, n_allow_gid;
    struct str_list allow_origin; /* web origins that may call; "*" = any */
    struct str_list allow_host;   /* Host names accepted besides loopback and the listen address */
    size_t max_line;
    size_t max_client_buffer;
    size_t max_assembling;     /* bytes of all requests still being received (guard.c) */
    bool allow_short_token;    /* tokens under TOKEN_MIN_LEN characters accepted */
    bool print_config, check_config; /* --print-config, --check-config: then exit */
    char *config_file;         /* the file read, if any */
};

void config_defaults(struct config *cfg);
/* The config file's lines from f (path names it in errors), over what cfg holds. */
int config_load_stream(struct config *cfg, FILE *f, const char *path, char *err, size_t errlen);
/* 0: run; 1: exit 0 (help/version printed); -1: exit 2 (err filled). */
int config_load(struct config *cfg, int argc, char **argv, char *err, size_t errlen);
/* config_load for the client commands (tgbridge probe, shutdown): reads no token file. */
int config_load_client(struct config *cfg, int argc, char **argv, char *err, size_t errlen);
void config_free(struct config *cfg);
int config_parse_gateway(const char *url, struct gateway_url *out, char *err, size_t errlen);
/* The shortest token accepted without --allow-short-token: a shorter one is guessable,
 * and redacting it would mangle every log line. */
#define TOKEN_MIN_LEN 8
/* tok (what names it in err: "the gateway token in --token-file /x") refused when
 * non-empty and shorter than TOKEN_MIN_LEN, unless cfg->allow_short_token. */
int config_check_token(const struct config *cfg, const char *tok, const char *what, char *err, size_t errlen);
/* SIGHUP's re-reading of the config file into live: see src/config/reload.c. */
void config_reload_init(const struct config *live, int argc, char **argv);
int config_reload(struct config *live);
/* Re-reads --token-file (if any) into cfg->token. */
int config_read_token_file(struct config *cfg, char *err, size_t errlen);
const char *auth_mode_name(enum auth_mode m);
/* The HTTP CONNECT proxy for the gateway, or NULL: --proxy, else https_proxy (wss/https)
 * or http_proxy (ws/http) from the environment; no_proxy and loopback excluded.
 * Returns "[user:pass@]host:port" (malloc'd). */
char *config_pick_proxy(const struct gateway_url *gw, const char *flag);
int config_parse_proxy(const char *url, struct proxy_url *out, char *err, size_t errlen);
bool host_is_loopback(const char *host);
/* s is in l (case-insensitively), or l holds "*". */
bool config_list_has(const struct str_list *l, const char *s);
void config_usage(FILE *out);
/* --print-config: every option as a config-file line with its effective value and
 * where it came from; secrets masked. */
void config_print(const struct config *cfg, FILE *out);
#endif
