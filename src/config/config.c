#include "config.h"
#include "redact.h"
#include "util.h"
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/stat.h>
#include <strings.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef TGB_VERSION
#define TGB_VERSION "0.1.0"
#endif

enum opt_id {
    O_GATEWAY = 1, O_TOKEN, O_TOKEN_FILE, O_AUTH, O_LISTEN, O_MAX_BODY, O_REQUEST_TIMEOUT,
    O_QUEUE_TIMEOUT, O_HEARTBEAT, O_RECONNECT_MIN, O_RECONNECT_MAX, O_PING_INTERVAL,
    O_PING_TIMEOUT, O_CONNECT_TIMEOUT, O_DRAIN_TIMEOUT, O_MAX_INFLIGHT, O_MAX_QUEUE, O_WORKSPACE, O_CA_FILE, O_CA_ONLY, O_INSECURE, O_PROXY,
    O_LOG_LEVEL, O_LOG_FORMAT, O_ACCESS_LOG, O_MAX_CONNECTIONS, O_CONNECTION_IDLE, O_CLIENT_TIMEOUT, O_MAX_PENDING, O_CLIENT_TOKEN_FILE, O_MAX_WS_CLIENTS, O_MAX_PASSTHROUGH, O_ALLOW_ORIGIN, O_ALLOW_HOST, O_UNIX, O_UNIX_MODE, O_UNIX_GROUP, O_UNIX_ALLOW_UID, O_UNIX_ALLOW_GID, O_MAX_LINE,
    O_MAX_CLIENT_BUFFER, O_CONFIG, O_PRINT_CONFIG, O_CHECK_CONFIG, O_HELP, O_VERSION, O_LAST
};

struct opt_doc {
    enum opt_id id;
    const char *name, *arg, *env, *help;
};

/* One table drives getopt, the environment lookup and --help, so they cannot drift. */
static const struct opt_doc docs[] = {
    {O_GATEWAY, "gateway", "URL", "TRUSTGRAPH_URL",
     "gateway root: ws://, wss://, http:// or https://host[:port][/prefix]\n"
     "(default http://localhost:8088); /api/v1/socket is appended"},
    {O_TOKEN_FILE, "token-file", "PATH", "TGBRIDGE_TOKEN_FILE",
     "read the gateway token from PATH (preferred; re-read on every reconnect)"},
    {O_TOKEN, "token", "TOKEN", "TRUSTGRAPH_TOKEN",
     "gateway token (also GATEWAY_SECRET); visible to other users in ps until\n"
     "tgbridge scrubs it at start-up: prefer --token-file"},
    {O_AUTH, "auth", "MODE", "TGBRIDGE_AUTH",
     "auto (default) | query | header | first-frame: how the token is presented"},
    {O_LISTEN, "listen", "HOST:PORT", "TGBRIDGE_LISTEN",
     "REST listener (default 127.0.0.1:8089; port 0 picks a free port)"},
    {O_ALLOW_ORIGIN, "allow-origin", "LIST", "TGBRIDGE_ALLOW_ORIGIN",
     "web origins (https://app.example) whose pages may call tgbridge, comma-\n"
     "separated, or '*'; requests with any other Origin get 403 (default: none)"},
    {O_ALLOW_HOST, "allow-host", "LIST", "TGBRIDGE_ALLOW_HOST",
     "Host names accepted on TCP besides loopback ones and the listen address,\n"
     "comma-separated, or '*' (default: none)"},
    {O_UNIX, "unix", "PATH", "TGBRIDGE_UNIX",
     "Unix socket for line JSON and HTTP; 'none' disables (default\n"
     "$RUNTIME_DIRECTORY/tgbridge.sock, /run/tgbridge/tgbridge.sock as root,\n"
     "else $XDG_RUNTIME_DIR/tgbridge.sock)"},
    {O_UNIX_MODE, "unix-mode", "OCTAL", "TGBRIDGE_UNIX_MODE", "permissions of the Unix socket (default 0660)"},
    {O_UNIX_GROUP, "unix-group", "GROUP", "TGBRIDGE_UNIX_GROUP", "group owning the Unix socket"},
    {O_UNIX_ALLOW_UID, "unix-allow-uid", "LIST", "TGBRIDGE_UNIX_ALLOW_UID",
     "only these users (names or uids, comma-separated) may connect"},
    {O_UNIX_ALLOW_GID, "unix-allow-gid", "LIST", "TGBRIDGE_UNIX_ALLOW_GID",
     "... or peers whose primary group is one of these"},
    {O_MAX_LINE, "max-line", "BYTES", "TGBRIDGE_MAX_LINE", "longest line on the Unix socket (default 50m)"},
    {O_MAX_CLIENT_BUFFER, "max-client-buffer", "BYTES", "TGBRIDGE_MAX_CLIENT_BUFFER",
     "reply bytes that may wait for one caller that does not read them (REST,\n"
     "streams, the line protocol, the local WebSocket) before it is dropped (default 64m)"},
    {O_CLIENT_TIMEOUT, "client-timeout", "SECONDS", "TGBRIDGE_CLIENT_TIMEOUT",
     "a local connection must send a complete request head within this, and\n"
     "its body at least 1 MiB per this much more (default 30)"},
    {O_MAX_PENDING, "max-pending", "N", "TGBRIDGE_MAX_PENDING",
     "unfinished requests one local connection may have: a line client is not\n"
     "read past it, further WebSocket requests get an error (default 1024)"},
    {O_CLIENT_TOKEN_FILE, "client-token-file", "PATH", "TGBRIDGE_CLIENT_TOKEN_FILE",
     "local callers must present the token in PATH: REST as a Bearer header,\n"
     "the local WebSocket in its auth frame or ?token= (default: none needed)"},
    {O_MAX_WS_CLIENTS, "max-ws-clients", "N", "TGBRIDGE_MAX_WS_CLIENTS",
     "local WebSocket connections at once; more get 503 (default 1024)"},
    {O_MAX_PASSTHROUGH, "max-passthrough", "N", "TGBRIDGE_MAX_PASSTHROUGH",
     "pass-through calls (auth, metrics, document-stream, cores, import/export\n"
     "sockets) at once, each on its own gateway connection; more get 503 (default 64)"},
    {O_MAX_BODY, "max-body", "BYTES", "TGBRIDGE_MAX_BODY",
     "largest request body accepted (default 50m = the gateway's frame limit)"},
    {O_REQUEST_TIMEOUT, "request-timeout", "SECONDS", "TGBRIDGE_REQUEST_TIMEOUT",
     "give up on a request this long after it was sent upstream (default 600)"},
    {O_QUEUE_TIMEOUT, "queue-timeout", "SECONDS", "TGBRIDGE_QUEUE_TIMEOUT",
     "longest wait for the gateway or for window room before 503 (default 30)"},
    {O_HEARTBEAT, "heartbeat", "SECONDS", "TGBRIDGE_HEARTBEAT",
     "SSE keep-alive comment interval on idle streams (default 15)"},
    {O_RECONNECT_MIN, "reconnect-min", "SECONDS", "TGBRIDGE_RECONNECT_MIN",
     "first reconnect delay (default 0.5)"},
    {O_RECONNECT_MAX, "reconnect-max", "SECONDS", "TGBRIDGE_RECONNECT_MAX",
     "longest reconnect delay (default 30)"},
    {O_PING_INTERVAL, "ping-interval", "SECONDS", "TGBRIDGE_PING_INTERVAL",
     "ping the gateway after this much silence (default 20)"},
    {O_PING_TIMEOUT, "ping-timeout", "SECONDS", "TGBRIDGE_PING_TIMEOUT",
     "drop the connection this long after an unanswered ping (default 20)"},
    {O_CONNECT_TIMEOUT, "connect-timeout", "SECONDS", "TGBRIDGE_CONNECT_TIMEOUT",
     "bound on a whole gateway connection attempt: name lookup, TCP, proxy,\n"
     "TLS, upgrade and authentication (default 10)"},
    {O_DRAIN_TIMEOUT, "drain-timeout", "SECONDS", "TGBRIDGE_DRAIN_TIMEOUT",
     "how long live requests may finish on shutdown or on a rotated-out\n"
     "connection before they are failed (default 10)"},
    {O_MAX_INFLIGHT, "max-inflight", "N", "TGBRIDGE_MAX_INFLIGHT",
     "requests in the gateway's window at once (default 15, limit 16)"},
    {O_MAX_CONNECTIONS, "max-connections", "N", "TGBRIDGE_MAX_CONNECTIONS",
     "gateway connections at most: the persistent one, plus overflow ones\n"
     "while every window is full and requests wait (default 8)"},
    {O_CONNECTION_IDLE, "connection-idle", "SECONDS", "TGBRIDGE_CONNECTION_IDLE",
     "close an overflow connection after this long with nothing in flight\n"
     "(default 30)"},
    {O_MAX_QUEUE, "max-queue", "N", "TGBRIDGE_MAX_QUEUE",
     "requests waiting for the window before 503 (default 4096)"},
    {O_WORKSPACE, "workspace", "NAME", "TGBRIDGE_WORKSPACE",
     "envelope workspace for bodies without one (default: the gateway's)"},
    {O_CA_FILE, "ca-file", "PATH", "TGBRIDGE_CA_FILE",
     "extra CA certificates (PEM) for wss:// and https://"},
    {O_CA_ONLY, "ca-only", NULL, "TGBRIDGE_CA_ONLY",
     "trust only --ca-file, not the system's CA store"},
    {O_PROXY, "proxy", "URL", "TGBRIDGE_PROXY",
     "HTTP CONNECT proxy http://[user:pass@]host[:port], or 'none' (default:\n"
     "https_proxy / http_proxy, honouring no_proxy, never for loopback)"},
    {O_INSECURE, "insecure", NULL, "TGBRIDGE_INSECURE",
     "do not verify the gateway's TLS certificate (dangerous)"},
    {O_LOG_LEVEL, "log-level", "LEVEL", "TGBRIDGE_LOG_LEVEL",
     "error | warn | info (default) | debug"},
    {O_LOG_FORMAT, "log-format", "FORMAT", "TGBRIDGE_LOG_FORMAT",
     "text (default) | json: one JSON object per line, for log shippers"},
    {O_ACCESS_LOG, "access-log", "on|off", "TGBRIDGE_ACCESS_LOG",
     "one line per finished call at info: front end, route or service, outcome,\n"
     "bytes, duration, time to first part, upstream id (default on)"},
    {O_CONFIG, "config", "PATH", "TGBRIDGE_CONFIG",
     "read settings from PATH first: one 'option = value' per line, option\n"
     "names as above without '--'; the environment and flags override it"},
    {O_PRINT_CONFIG, "print-config", NULL, NULL,
     "print the effective configuration (file < environment < flags), each\n"
     "value with where it came from, secrets masked, and exit"},
    {O_CHECK_CONFIG, "check-config", NULL, NULL,
     "validate the configuration (token files included) and exit: 0 if good"},
    {O_HELP, "help", NULL, NULL, "show this help and exit"},
    {O_VERSION, "version", NULL, NULL, "show the version and exit"},
};
#define NDOCS (sizeof docs / sizeof docs[0])

void config_usage(FILE *out)
{
    fprintf(out,
            "Usage: tgbridge [OPTION]...\n"
            "Keep one authenticated WebSocket to a TrustGraph api-gateway and serve its\n"
            "REST API (with NDJSON/SSE streaming) locally.\n\nOptions (environment in brackets):\n");
    for (size_t i = 0; i < NDOCS; i++) {
        char left[64];
        snprintf(left, sizeof left, "--%s%s%s", docs[i].name, docs[i].arg ? " " : "",
                 docs[i].arg ? docs[i].arg : "");
        const char *h = docs[i].help;
        fprintf(out, "  %-26s ", left);
        for (const char *nl; (nl = strchr(h, '\n')); h = nl + 1)
            fprintf(out, "%.*s\n  %-26s ", (int)(nl - h), h, "");
        fprintf(out, "%s", h);
        if (docs[i].env)
            fprintf(out, " [%s]", docs[i].env);
        fputc('\n', out);
    }
    fprintf(out, "\nToken precedence: --token-file, --token, TRUSTGRAPH_TOKEN, GATEWAY_SECRET.\n"
                 "See README.md for routes, streaming format and error table.\n");
}

/* A host as lws and getaddrinfo() take it: an IPv6 literal's digits and colons (the
 * brackets stripped), or a name's letters, digits, dots, hyphens and underscores. */
static bool host_chars_ok(const char *h, size_t n, bool bracketed)
{
    if (!n)
        return false;
    bool colon = false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)h[i];
        if (bracketed ? !(isxdigit(c) || c == ':' || c == '.')
                      : !(isalnum(c) || c == '.' || c == '-' || c == '_'))
            return false;
        colon |= c == ':';
    }
    return !bracketed || colon;
}

int config_parse_gateway(const char *url, struct gateway_url *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    const char *p;
    int defport;
    if (!strncmp(url, "ws://", 5)) { p = url + 5; defport = 80; }
    else if (!strncmp(url, "http://", 7)) { p = url + 7; defport = 80; }
    else if (!strncmp(url, "wss://", 6)) { p = url + 6; defport = 443; out->tls = true; }
    else if (!strncmp(url, "https://", 8)) { p = url + 8; defport = 443; out->tls = true; }
    else
        return errorf(err, errlen, "gateway URL must start with ws://, wss://, http:// or https://: %s", url);
    if (strpbrk(p, "?#@"))
        return errorf(err, errlen, "gateway URL must not carry credentials, a query or a fragment"
                                 " (use --token-file)");
    const char *hend;
    if (*p == '[') {
        hend = strchr(p, ']');
        if (!hend || !host_chars_ok(p + 1, (size_t)(hend - p - 1), true))
            return errorf(err, errlen, "bad IPv6 literal in gateway URL");
        if ((size_t)(hend - p - 1) >= sizeof out->host)
            return errorf(err, errlen, "gateway host too long");
        memcpy(out->host, p + 1, (size_t)(hend - p - 1));
        hend++;
    } else {
        hend = p + strcspn(p, ":/");
        if ((size_t)(hend - p) >= sizeof out->host)
            return errorf(err, errlen, "gateway host too long");
        if (hend > p && !host_chars_ok(p, (size_t)(hend - p), false))
            return errorf(err, errlen, "bad host name in gateway URL");
        memcpy(out->host, p, (size_t)(hend - p));
    }
    if (!out->host[0])
        return errorf(err, errlen, "gateway URL has no host");
    out->port = defport;
    const char *path = hend;
    if (*hend == ':') {
        char *e;
        long port = strtol(hend + 1, &e, 10);
        if (e == hend + 1 || port < 1 || port > 65535 || (*e && *e != '/'))
            return errorf(err, errlen, "bad port in gateway URL");
        out->port = (int)port;
        path = e;
    } else if (*hend && *hend != '/') {
        return errorf(err, errlen, "bad gateway URL");
    }
    size_t plen = strlen(path);
    while (plen && path[plen - 1] == '/')
        plen--;
    /* Accept the socket URL itself as well as the root the official CLI uses. */
    static const char sock[] = "/api/v1/socket";
    if (plen >= sizeof sock - 1 && !memcmp(path + plen - (sizeof sock - 1), sock, sizeof sock - 1))
        plen -= sizeof sock - 1;
    while (plen && path[plen - 1] == '/')
        plen--;
    if (plen >= sizeof out->base_path)
        return errorf(err, errlen, "gateway path too long");
    memcpy(out->base_path, path, plen);
    return 0;
}

static int parse_listen(struct config *cfg, const char *s, char *err, size_t errlen)
{
    const char *colon = strrchr(s, ':');
    const char *host = s, *port = s;
    size_t hlen = 0;
    if (colon) {
        port = colon + 1;
        hlen = (size_t)(colon - s);
        if (hlen >= 2 && host[0] == '[' && host[hlen - 1] == ']') {
            host++;
            hlen -= 2;
        }
    }
    char *e;
    long p = strtol(port, &e, 10);
    if (!*port || *e || p < 0 || p > 65535 || hlen >= sizeof cfg->listen_host)
        return errorf(err, errlen, "--listen wants HOST:PORT, got '%s'", s);
    if (hlen) {
        memcpy(cfg->listen_host, host, hlen);
        cfg->listen_host[hlen] = '\0';
    }
    cfg->listen_port = (int)p;
    return 0;
}

static void set_str(char **dst, const char *v)
{
    free(*dst);
    *dst = v ? strdup(v) : NULL;
}

static void free_list(struct str_list *l)
{
    for (int i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

/* "a, b,c" → {"a","b","c"}; empty entries are refused. */
static int parse_list(const char *v, struct str_list *out, char *err, size_t errlen)
{
    free_list(out);
    char *copy = strdup(v), *save = NULL;
    if (!copy)
        abort();
    for (char *t = strtok_r(copy, ", ", &save); t; t = strtok_r(NULL, ", ", &save)) {
        out->v = realloc(out->v, (size_t)(out->n + 1) * sizeof *out->v);
        if (!out->v)
            abort();
        out->v[out->n++] = strdup(t);
    }
    free(copy);
    if (!out->n)
        return errorf(err, errlen, "option wants a comma-separated list, got '%s'", v);
    return 0;
}

bool config_list_has(const struct str_list *l, const char *s)
{
    for (int i = 0; i < l->n; i++)
        if (!strcmp(l->v[i], "*") || !strcasecmp(l->v[i], s))
            return true;
    return false;
}

/* "alice,1001" → uids; group names for gids. */
static int parse_ids(const char *v, bool groups, unsigned *out, int *n, char *err, size_t errlen)
{
    const char *what = groups ? "group" : "user";
    char *copy = strdup(v), *save = NULL;
    int rc = 0;
    *n = 0;
    for (char *t = strtok_r(copy, ", ", &save); t && !rc; t = strtok_r(NULL, ", ", &save)) {
        char *e;
        errno = 0;
        unsigned long long id = strtoull(t, &e, 10);
        bool numeric = t[0] >= '0' && t[0] <= '9' && !*e;
        if (numeric && (errno == ERANGE || id >= (unsigned long long)(uid_t)-1)) {
            /* (uid_t)-1 is "no id"; anything above would wrap to a real one -- root */
            rc = errorf(err, errlen, "%s id '%s' is out of range", what, t);
        } else if (!numeric) {
            struct group *g = groups ? getgrnam(t) : NULL;
            struct passwd *pw = groups ? NULL : getpwnam(t);
            if (groups ? !g : !pw)
                rc = errorf(err, errlen, "unknown %s '%s'", what, t);
            else
                id = groups ? g->gr_gid : pw->pw_uid;
        }
        if (!rc && *n >= 32)
            rc = errorf(err, errlen, "more than 32 %ss in the list", what);
        if (!rc)
            out[(*n)++] = (unsigned)id;
    }
    free(copy);
    /* An empty list would mean "no restriction": refuse it rather than fail open. */
    if (!rc && *n == 0)
        rc = errorf(err, errlen, "the %s list is empty", what);
    return rc;
}

/* The issue's default: systemd's runtime directory, /run/tgbridge as root, else the
 * user's runtime directory; none when there is no such place. */
static void default_unix_path(struct config *cfg)
{
    const char *rd = getenv("RUNTIME_DIRECTORY");
    char path[4096];
    if (rd && *rd) {
        size_t n = strcspn(rd, ":"); /* several directories are colon-separated */
        snprintf(path, sizeof path, "%.*s/tgbridge.sock", (int)n, rd);
    } else if (geteuid() == 0) {
        snprintf(path, sizeof path, "/run/tgbridge/tgbridge.sock");
    } else if ((rd = getenv("XDG_RUNTIME_DIR")) && *rd) {
        snprintf(path, sizeof path, "%s/tgbridge.sock", rd);
    } else {
        return;
    }
    set_str(&cfg->unix_path, path);
}

const char *auth_mode_name(enum auth_mode m)
{
    switch (m) {
    case AUTH_QUERY: return "query";
    case AUTH_HEADER: return "header";
    case AUTH_FIRST_FRAME: return "first-frame";
    default: return "auto";
    }
}

static int parse_bool(const char *v)
{
    if (!strcasecmp(v, "true") || !strcasecmp(v, "yes") || !strcasecmp(v, "on") || !strcmp(v, "1"))
        return 1;
    if (!strcasecmp(v, "false") || !strcasecmp(v, "no") || !strcasecmp(v, "off") || !strcmp(v, "0"))
        return 0;
    return -1;
}

/* Where each option's value came from, for --print-config ("default" if nowhere). */
static char sources[O_LAST][300];

static void note_source(enum opt_id id, const char *where)
{
    snprintf(sources[id], sizeof sources[id], "%s", where);
}

static int apply(struct config *cfg, enum opt_id id, const char *v, char *err, size_t errlen)
{
    long n;
    char *e;
    switch (id) {
    case O_GATEWAY:
        set_str(&cfg->gateway, v);
        return config_parse_gateway(v, &cfg->gw, err, errlen);
    case O_TOKEN: set_str(&cfg->token, v); return 0;
    case O_TOKEN_FILE: set_str(&cfg->token_file, v); return 0;
    case O_AUTH:
        if (!strcmp(v, "auto")) cfg->auth = AUTH_AUTO;
        else if (!strcmp(v, "query")) cfg->auth = AUTH_QUERY;
        else if (!strcmp(v, "header")) cfg->auth = AUTH_HEADER;
        else if (!strcmp(v, "first-frame")) cfg->auth = AUTH_FIRST_FRAME;
        else return errorf(err, errlen, "--auth must be auto, query, header or first-frame");
        return 0;
    case O_LISTEN: return parse_listen(cfg, v, err, errlen);
    case O_MAX_BODY:
        if (parse_size(v, &cfg->max_body) || cfg->max_body == 0)
            return errorf(err, errlen, "--max-body wants a size such as 1048576 or 50m");
        return 0;
    case O_REQUEST_TIMEOUT: case O_QUEUE_TIMEOUT: case O_HEARTBEAT: case O_RECONNECT_MIN:
    case O_RECONNECT_MAX: case O_PING_INTERVAL: case O_PING_TIMEOUT: case O_DRAIN_TIMEOUT:
    case O_CONNECT_TIMEOUT: case O_CLIENT_TIMEOUT: case O_CONNECTION_IDLE: {
        double *dst = id == O_REQUEST_TIMEOUT ? &cfg->request_timeout
                    : id == O_QUEUE_TIMEOUT ? &cfg->queue_timeout
                    : id == O_HEARTBEAT ? &cfg->heartbeat
                    : id == O_RECONNECT_MIN ? &cfg->reconnect_min
                    : id == O_RECONNECT_MAX ? &cfg->reconnect_max
                    : id == O_PING_INTERVAL ? &cfg->ping_interval
                    : id == O_DRAIN_TIMEOUT ? &cfg->drain_timeout
                    : id == O_CONNECT_TIMEOUT ? &cfg->connect_timeout
                    : id == O_CLIENT_TIMEOUT ? &cfg->client_timeout
                    : id == O_CONNECTION_IDLE ? &cfg->connection_idle : &cfg->ping_timeout;
        if (parse_seconds(v, dst))
            return errorf(err, errlen, "option wants seconds (fractions allowed), got '%s'", v);
        if ((id == O_CONNECT_TIMEOUT || id == O_CLIENT_TIMEOUT) && *dst <= 0)
            return errorf(err, errlen, "--%s must be more than 0",
                          id == O_CONNECT_TIMEOUT ? "connect-timeout" : "client-timeout");
        return 0;
    }
    case O_MAX_INFLIGHT: case O_MAX_QUEUE: case O_MAX_PENDING: case O_MAX_WS_CLIENTS: case O_MAX_CONNECTIONS:
    case O_MAX_PASSTHROUGH:
        n = strtol(v, &e, 10);
        if (!*v || *e || n < 1 || n > 1000000)
            return errorf(err, errlen, "option wants a positive integer, got '%s'", v);
        if (id == O_MAX_INFLIGHT && n > 16)
            return errorf(err, errlen, "--max-inflight above 16 would stall the gateway's reader");
        if (id == O_MAX_CONNECTIONS && n > 64)
            return errorf(err, errlen, "--max-connections is at most 64");
        if (id == O_MAX_CONNECTIONS)
            cfg->max_connections = (int)n;
        else if (id == O_MAX_PENDING)
            cfg->max_pending = (size_t)n;
        else if (id == O_MAX_WS_CLIENTS)
            cfg->max_ws_clients = (size_t)n;
        else if (id == O_MAX_PASSTHROUGH)
            cfg->max_passthrough = (size_t)n;
        else
            *(id == O_MAX_INFLIGHT ? &cfg->max_inflight : &cfg->max_queue) = (int)n;
        return 0;
    case O_WORKSPACE: set_str(&cfg->workspace, v); return 0;
    case O_UNIX: set_str(&cfg->unix_path, strcmp(v, "none") ? v : NULL); cfg->unix_set = true; return 0;
    case O_UNIX_MODE:
        n = strtol(v, &e, 8);
        if (!*v || *e || n < 0 || n > 0777)
            return errorf(err, errlen, "--unix-mode wants octal permissions such as 0660");
        cfg->unix_mode = (unsigned)n;
        return 0;
    case O_UNIX_GROUP: set_str(&cfg->unix_group, v); return 0;
    case O_CLIENT_TOKEN_FILE: set_str(&cfg->client_token_file, v); return 0;
    case O_ALLOW_ORIGIN: return parse_list(v, &cfg->allow_origin, err, errlen);
    case O_ALLOW_HOST: return parse_list(v, &cfg->allow_host, err, errlen);
    case O_UNIX_ALLOW_UID: return parse_ids(v, false, cfg->allow_uid, &cfg->n_allow_uid, err, errlen);
    case O_UNIX_ALLOW_GID: return parse_ids(v, true, cfg->allow_gid, &cfg->n_allow_gid, err, errlen);
    case O_MAX_LINE: case O_MAX_CLIENT_BUFFER: {
        size_t *dst = id == O_MAX_LINE ? &cfg->max_line : &cfg->max_client_buffer;
        if (parse_size(v, dst) || *dst < 64)
            return errorf(err, errlen, "option wants a size such as 1048576 or 50m");
        return 0;
    }
    case O_CA_FILE: set_str(&cfg->ca_file, v); return 0;
    case O_INSECURE: case O_CA_ONLY: {
        /* A switch: no value (the flag) is on; from the environment or the file, a
         * boolean -- TGBRIDGE_INSECURE=false must never turn verification off. */
        int b = v ? parse_bool(v) : 1;
        if (b < 0)
            return errorf(err, errlen, "--%s wants true or false (1/0, yes/no, on/off), got '%s'",
                          id == O_INSECURE ? "insecure" : "ca-only", v);
        *(id == O_INSECURE ? &cfg->insecure : &cfg->ca_only) = b;
        return 0;
    }
    case O_PROXY: set_str(&cfg->proxy, v); return 0;
    case O_LOG_LEVEL:
        if (log_parse_level(v, &cfg->log_level))
            return errorf(err, errlen, "--log-level must be error, warn, info or debug");
        return 0;
    case O_LOG_FORMAT:
        if (strcmp(v, "text") && strcmp(v, "json"))
            return errorf(err, errlen, "--log-format must be text or json");
        cfg->log_json = !strcmp(v, "json");
        return 0;
    case O_ACCESS_LOG: {
        int b = parse_bool(v);
        if (b < 0)
            return errorf(err, errlen, "--access-log must be on or off");
        cfg->access_log = b;
        return 0;
    }
    default: return 0;
    }
}

void config_defaults(struct config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->auth = AUTH_AUTO;
    strcpy(cfg->listen_host, "127.0.0.1");
    cfg->listen_port = 8089;
    cfg->max_body = GATEWAY_MAX_FRAME;
    cfg->request_timeout = 600;
    cfg->queue_timeout = 30;
    cfg->heartbeat = 15;
    cfg->reconnect_min = 0.5;
    cfg->reconnect_max = 30;
    cfg->ping_interval = 20;
    cfg->ping_timeout = 20;
    cfg->drain_timeout = 10;
    cfg->connect_timeout = 10;
    cfg->client_timeout = 30;
    cfg->max_inflight = 15;
    cfg->max_queue = 4096;
    cfg->max_pending = 1024;
    cfg->max_connections = 8;
    cfg->connection_idle = 30;
    cfg->max_ws_clients = 1024;
    cfg->max_passthrough = 64;
    cfg->access_log = true;
    cfg->log_level = LOG_INFO;
    cfg->unix_mode = 0660;
    cfg->max_line = GATEWAY_MAX_FRAME;
    cfg->max_client_buffer = 64u * 1024 * 1024;
}

int config_read_token_file(struct config *cfg, char *err, size_t errlen)
{
    if (!cfg->token_file)
        return 0;
    int fd = open(cfg->token_file, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errorf(err, errlen, "cannot open token file %s: %s", cfg->token_file, strerror(errno));
    char tok[16384];
    ssize_t n = read(fd, tok, sizeof tok - 1);
    close(fd);
    if (n < 0)
        return errorf(err, errlen, "cannot read token file %s: %s", cfg->token_file, strerror(errno));
    if (n == (ssize_t)sizeof tok - 1)
        return errorf(err, errlen, "token file %s is larger than 16 KiB", cfg->token_file);
    tok[n] = '\0';
    /* Files written by editors and `echo` end in a newline that is not part of the token. */
    while (n > 0 && (tok[n - 1] == '\n' || tok[n - 1] == '\r' || tok[n - 1] == ' ' || tok[n - 1] == '\t'))
        tok[--n] = '\0';
    set_str(&cfg->token, tok);
    explicit_bzero(tok, sizeof tok);
    secret_add(cfg->token);
    return 0;
}

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1]))
        s[--n] = '\0';
    return s;
}

/* The config file: "name = value" lines, names from the option table.  Strict, like
 * the flags: an unknown name, a repeated one or a bad value stops the start with the
 * file and line, rather than running with a setting the operator did not mean. */
int config_load_stream(struct config *cfg, FILE *f, const char *path, char *err, size_t errlen)
{
    bool seen[NDOCS + 1];
    memset(seen, 0, sizeof seen);
    char *line = NULL;
    size_t cap = 0;
    int lineno = 0, rc = 0;
    bool has_token = false;
    while (!rc && getline(&line, &cap, f) >= 0) {
        lineno++;
        char *l = trim(line);
        if (!*l || *l == '#')
            continue;
        char *eq = strchr(l, '=');
        if (!eq) {
            rc = errorf(err, errlen, "%s:%d: expected 'option = value'", path, lineno);
            break;
        }
        *eq = '\0';
        char *name = trim(l), *value = trim(eq + 1);
        size_t vn = strlen(value);
        if (vn >= 2 && value[0] == '"' && value[vn - 1] == '"') { /* for values with edge spaces or '#' */
            value[vn - 1] = '\0';
            value++;
        }
        size_t i = 0;
        while (i < NDOCS && strcmp(docs[i].name, name))
            i++;
        if (i == NDOCS || docs[i].id == O_HELP || docs[i].id == O_VERSION || docs[i].id == O_CONFIG ||
            docs[i].id == O_PRINT_CONFIG || docs[i].id == O_CHECK_CONFIG) {
            rc = errorf(err, errlen, "%s:%d: unknown option '%s' (see --help)", path, lineno, name);
            break;
        }
        if (seen[i]) {
            rc = errorf(err, errlen, "%s:%d: '%s' is set twice", path, lineno, name);
            break;
        }
        seen[i] = true;
        char e2[256];
        if (!docs[i].arg) {
            int b = parse_bool(value);
            if (b < 0) {
                rc = errorf(err, errlen, "%s:%d: '%s' wants true or false", path, lineno, name);
                break;
            }
            value = b ? "1" : "0";
        }
        if (docs[i].id == O_TOKEN) {
            secret_add(value);
            has_token = true;
        }
        char where[300];
        snprintf(where, sizeof where, "%s:%d", path, lineno);
        if (apply(cfg, docs[i].id, value, e2, sizeof e2))
            rc = errorf(err, errlen, "%s:%d: %s", path, lineno, e2);
        else
            note_source(docs[i].id, where);
    }
    if (line) {
        explicit_bzero(line, cap); /* it may have held the token */
        free(line);
    }
    struct stat st;
    int fd = fileno(f);
    if (!rc && has_token && fd >= 0 && !fstat(fd, &st) && (st.st_mode & 077))
        log_warn("config file %s holds a token and is readable by group or others (mode %04o); "
                 "chmod 600 it, or use token-file",
                 path, (unsigned)(st.st_mode & 07777));
    return rc;
}

static int load_file(struct config *cfg, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return errorf(err, errlen, "cannot open config file %s: %s", path, strerror(errno));
    int rc = config_load_stream(cfg, f, path, err, errlen);
    fclose(f);
    return rc;
}

/* The variables a secret may come in.  Once read, each is overwritten where it lies
 * (the bytes /proc/PID/environ shows: unsetenv alone leaves them there) and removed,
 * as NOTIFY_SOCKET is (sdnotify.c). */
static const char *const secret_env[] = {"TRUSTGRAPH_TOKEN", "GATEWAY_SECRET"};
static const char *const proxy_env[] = {"TGBRIDGE_PROXY", "https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"};

static void scrub_env(const char *name)
{
    char *v = getenv(name);
    if (!v)
        return;
    explicit_bzero(v, strlen(v));
    unsetenv(name);
}

/* The user:password@ of a URL, overwritten in place (argv, the environment). */
static void scrub_userinfo(char *url)
{
    char *start = strstr(url, "://");
    start = start ? start + 3 : url;
    char *at = strrchr(start, '@');
    if (at && at > start)
        memset(start, 'x', (size_t)(at - start));
}

static void add_proxy_secrets(const char *url)
{
    const char *start = strstr(url, "://");
    start = start ? start + 3 : url;
    const char *at = strrchr(start, '@');
    if (!at || at == start)
        return;
    char given[512];
    snprintf(given, sizeof given, "%.*s", (int)(at - start), start);
    secret_add_userinfo(given); /* as written (percent-encoded) */
    struct proxy_url p;
    if (!config_parse_proxy(url, &p, NULL, 0))
        secret_add_userinfo(p.userinfo); /* as sent */
    explicit_bzero(given, sizeof given);
    explicit_bzero(&p, sizeof p);
}

static void scrub_secret_env(void)
{
    for (size_t i = 0; i < sizeof secret_env / sizeof *secret_env; i++) {
        secret_add(getenv(secret_env[i]));
        scrub_env(secret_env[i]);
    }
    for (size_t i = 0; i < sizeof proxy_env / sizeof *proxy_env; i++) {
        const char *v = getenv(proxy_env[i]);
        if (v && strchr(v, '@')) {
            add_proxy_secrets(v);
            scrub_env(proxy_env[i]);
        }
    }
}

static int pick_proxy(struct config *cfg, char *err, size_t errlen)
{
    if (cfg->proxy)
        add_proxy_secrets(cfg->proxy);
    char *url = config_pick_proxy(&cfg->gw, cfg->proxy);
    if (!url)
        return 0;
    cfg->via_proxy = calloc(1, sizeof *cfg->via_proxy);
    if (!cfg->via_proxy)
        abort();
    char e2[256];
    int rc = config_parse_proxy(url, cfg->via_proxy, e2, sizeof e2);
    explicit_bzero(url, strlen(url));
    free(url);
    if (rc) {
        free(cfg->via_proxy);
        cfg->via_proxy = NULL;
        return errorf(err, errlen, "%s proxy: %s", cfg->proxy ? "--proxy" : "the environment's", e2);
    }
    return 0;
}

/* --config / TGBRIDGE_CONFIG, found before anything else is applied: the file is the
 * lowest layer, under the environment and the flags. */
static const char *config_path(int argc, char **argv)
{
    const char *path = getenv("TGBRIDGE_CONFIG");
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--"))
            break;
        if (!strcmp(argv[i], "--config") && i + 1 < argc)
            path = argv[++i];
        else if (!strncmp(argv[i], "--config=", 9))
            path = argv[i] + 9;
    }
    return path && *path ? path : NULL;
}

int config_load(struct config *cfg, int argc, char **argv, char *err, size_t errlen)
{
    config_defaults(cfg);
    memset(sources, 0, sizeof sources);
    if (apply(cfg, O_GATEWAY, "http://localhost:8088", err, errlen))
        return -1;
    const char *file = config_path(argc, argv);
    if (file)
        set_str(&cfg->config_file, file);
    if (file && load_file(cfg, file, err, errlen))
        return -1;
    /* Environment first, so that flags override it. */
    for (size_t i = 0; i < NDOCS; i++) {
        const char *v = docs[i].env ? getenv(docs[i].env) : NULL;
        if (docs[i].id == O_TOKEN && (!v || !*v))
            v = getenv("GATEWAY_SECRET");
        if (!v || !*v)
            continue;
        char e2[256];
        if (apply(cfg, docs[i].id, v, e2, sizeof e2))
            return errorf(err, errlen, "%s: %s", docs[i].env, e2);
        note_source(docs[i].id, docs[i].id == O_TOKEN && !getenv("TRUSTGRAPH_TOKEN") ? "GATEWAY_SECRET"
                                                                                   : docs[i].env);
    }
    struct option longopts[NDOCS + 1];
    for (size_t i = 0; i < NDOCS; i++)
        longopts[i] = (struct option){docs[i].name, docs[i].arg ? required_argument : no_argument, NULL,
                                      (int)docs[i].id};
    longopts[NDOCS] = (struct option){0, 0, 0, 0};
    opterr = 0;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, ":hVv", longopts, NULL)) != -1) {
        if (c == 'h' || c == O_HELP) {
            config_usage(stdout);
            return 1;
        }
        if (c == 'V' || c == O_VERSION) {
            printf("tgbridge %s\n", TGB_VERSION);
            return 1;
        }
        if (c == 'v') {
            cfg->log_level = LOG_DEBUG;
            note_source(O_LOG_LEVEL, "-v");
            continue;
        }
        if (c == O_PRINT_CONFIG || c == O_CHECK_CONFIG) {
            *(c == O_PRINT_CONFIG ? &cfg->print_config : &cfg->check_config) = true;
            continue;
        }
        if (c == '?')
            return errorf(err, errlen, "unknown option '%s' (see --help)", argv[optind - 1]);
        if (c == ':')
            return errorf(err, errlen, "option '%s' needs a value", argv[optind - 1]);
        if (apply(cfg, (enum opt_id)c, optarg, err, errlen))
            return -1;
        note_source((enum opt_id)c, "flag");
        /* Scrub the process title: /proc/PID/cmdline shows argv's memory. */
        if (c == O_TOKEN && optarg) {
            secret_add(optarg);
            memset(optarg, 'x', strlen(optarg));
        }
        if (c == O_PROXY && optarg)
            scrub_userinfo(optarg);
        if (c == O_INSECURE)
            cfg->insecure = true;
        if (c == O_CA_ONLY)
            cfg->ca_only = true;
    }
    if (optind < argc)
        return errorf(err, errlen, "unexpected argument '%s' (see --help)", argv[optind]);
    if (!cfg->unix_set)
        default_unix_path(cfg);
    if (cfg->reconnect_max < cfg->reconnect_min)
        cfg->reconnect_max = cfg->reconnect_min;
    if (cfg->token)
        secret_add(cfg->token);
    if (cfg->ca_only && !cfg->ca_file)
        return errorf(err, errlen, "--ca-only needs --ca-file");
    int rc = pick_proxy(cfg, err, errlen);
    scrub_secret_env();
    if (rc || config_read_token_file(cfg, err, errlen))
        return -1;
    return 0;
}

int config_parse_proxy(const char *url, struct proxy_url *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    const char *p = url;
    const char *scheme_end = strstr(p, "://");
    if (scheme_end) {
        if (scheme_end - p != 4 || strncasecmp(p, "http", 4))
            return errorf(err, errlen, "only http:// proxies are supported (HTTP CONNECT)");
        p = scheme_end + 3;
    }
    size_t n = strcspn(p, "/?#");
    if (p[n] && strspn(p + n, "/") != strlen(p + n))
        return errorf(err, errlen, "a proxy URL has no path, query or fragment");
    const char *end = p + n, *at = NULL;
    for (const char *q = p; q < end; q++)
        if (*q == '@')
            at = q;
    if (at) {
        size_t o = 0;
        for (const char *q = p; q < at; q++) {
            char ch = *q;
            if (ch == '%') {
                int hi = q + 2 < at ? hex_value(q[1]) : -1, lo = hi >= 0 ? hex_value(q[2]) : -1;
                if (lo < 0)
                    return errorf(err, errlen, "bad percent-encoding in the proxy credentials");
                ch = (char)(hi * 16 + lo);
                q += 2;
            }
            if (!ch || o + 1 >= sizeof out->userinfo)
                return errorf(err, errlen, "proxy credentials too long or holding a NUL");
            out->userinfo[o++] = ch;
        }
        out->userinfo[o] = '\0';
        p = at + 1;
    }
    const char *hend;
    if (*p == '[') {
        hend = memchr(p, ']', (size_t)(end - p));
        if (!hend || (size_t)(hend - p - 1) >= sizeof out->host || !host_chars_ok(p + 1, (size_t)(hend - p - 1), true))
            return errorf(err, errlen, "bad IPv6 literal in the proxy URL");
        memcpy(out->host, p + 1, (size_t)(hend - p - 1));
        hend++;
    } else {
        hend = p;
        while (hend < end && *hend != ':')
            hend++;
        if (hend == p || (size_t)(hend - p) >= sizeof out->host)
            return errorf(err, errlen, "the proxy URL has no host (or one too long)");
        if (!host_chars_ok(p, (size_t)(hend - p), false))
            return errorf(err, errlen, "bad host name in the proxy URL");
        memcpy(out->host, p, (size_t)(hend - p));
    }
    out->port = 1080;
    if (hend < end) {
        if (*hend != ':' || hend + 1 == end)
            return errorf(err, errlen, "bad port in the proxy URL");
        long port = 0;
        for (const char *q = hend + 1; q < end; q++) {
            if (*q < '0' || *q > '9' || (port = port * 10 + (*q - '0')) > 65535)
                return errorf(err, errlen, "bad port in the proxy URL");
        }
        if (port < 1)
            return errorf(err, errlen, "bad port in the proxy URL");
        out->port = (int)port;
    }
    return 0;
}

/* Names that can only mean this machine: an address literal in 127/8 or ::1 (a name
 * merely starting with "127." can be anyone's DNS name), or localhost (RFC 6761). */
bool host_is_loopback(const char *host)
{
    size_t n = strlen(host);
    if (!strcasecmp(host, "localhost") || (n > 10 && !strcasecmp(host + n - 10, ".localhost")))
        return true;
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, host, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    if (inet_pton(AF_INET6, host, &a6) == 1)
        return IN6_IS_ADDR_LOOPBACK(&a6) ||
               (IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127);
    return false;
}

/* curl's no_proxy rules, simplified: "*" matches everything; an entry matches the
 * host itself and, for names, any subdomain ("example.com" and ".example.com"). */
static bool no_proxy_matches(const char *host, const char *list)
{
    if (!list || !*list)
        return false;
    char *copy = strdup(list), *save = NULL;
    bool hit = false;
    for (char *t = strtok_r(copy, ", ", &save); t && !hit; t = strtok_r(NULL, ", ", &save)) {
        if (!strcmp(t, "*")) {
            hit = true;
            break;
        }
        while (*t == '.')
            t++;
        size_t hl = strlen(host), tl = strlen(t);
        if (!strcasecmp(host, t))
            hit = true;
        else if (hl > tl && host[hl - tl - 1] == '.' && !strcasecmp(host + hl - tl, t))
            hit = true;
    }
    free(copy);
    return hit;
}

char *config_pick_proxy(const struct gateway_url *gw, const char *flag)
{
    const char *p = flag;
    if (p && (!strcmp(p, "none") || !*p))
        return NULL;
    if (!p) {
        p = gw->tls ? getenv("https_proxy") : getenv("http_proxy");
        if (!p || !*p)
            p = gw->tls ? getenv("HTTPS_PROXY") : getenv("HTTP_PROXY");
    }
    if (!p || !*p)
        return NULL;
    /* A proxy from the environment never captures loopback (a sidecar's gateway, the
     * tests' mock); an explicit --proxy is the operator's word and applies. */
    if (!flag && host_is_loopback(gw->host))
        return NULL;
    const char *np = getenv("no_proxy");
    if (!np || !*np)
        np = getenv("NO_PROXY");
    if (no_proxy_matches(gw->host, np))
        return NULL;
    if (!strncmp(p, "http://", 7))
        p += 7;
    char *out = strdup(p);
    size_t n = strlen(out);
    while (n && out[n - 1] == '/')
        out[--n] = '\0';
    return out;
}

void config_free(struct config *cfg)
{
    free(cfg->gateway);
    if (cfg->token)
        explicit_bzero(cfg->token, strlen(cfg->token));
    free(cfg->token);
    free(cfg->token_file);
    free(cfg->config_file);
    free(cfg->client_token_file);
    free(cfg->workspace);
    free(cfg->ca_file);
    free(cfg->unix_path);
    free(cfg->proxy);
    if (cfg->via_proxy)
        explicit_bzero(cfg->via_proxy, sizeof *cfg->via_proxy);
    free(cfg->via_proxy);
    free(cfg->unix_group);
    free_list(&cfg->allow_origin);
    free_list(&cfg->allow_host);
    memset(cfg, 0, sizeof *cfg);
}

/* ---- --print-config ------------------------------------------------------------ */

static void print_list(struct buf *b, const struct str_list *l)
{
    for (int i = 0; i < l->n; i++)
        buf_printf(b, "%s%s", i ? "," : "", l->v[i]);
}

static void print_ids(struct buf *b, const unsigned *ids, int n)
{
    for (int i = 0; i < n; i++)
        buf_printf(b, "%s%u", i ? "," : "", ids[i]);
}

/* The effective value of option id as the config file would spell it ("" = unset). */
static void effective_value(const struct config *cfg, enum opt_id id, struct buf *b)
{
    const char *s = NULL;
    switch (id) {
    case O_GATEWAY: s = cfg->gateway; break;
    case O_TOKEN: s = cfg->token && *cfg->token ? "***" : NULL; break; /* never shown */
    case O_TOKEN_FILE: s = cfg->token_file; break;
    case O_AUTH: s = auth_mode_name(cfg->auth); break;
    case O_LISTEN: {
        bool v6 = strchr(cfg->listen_host, ':') != NULL;
        buf_printf(b, "%s%s%s:%d", v6 ? "[" : "", cfg->listen_host, v6 ? "]" : "", cfg->listen_port);
        return;
    }
    case O_ALLOW_ORIGIN: print_list(b, &cfg->allow_origin); return;
    case O_ALLOW_HOST: print_list(b, &cfg->allow_host); return;
    case O_UNIX: s = cfg->unix_path ? cfg->unix_path : "none"; break;
    case O_UNIX_MODE: buf_printf(b, "%04o", cfg->unix_mode); return;
    case O_UNIX_GROUP: s = cfg->unix_group; break;
    case O_UNIX_ALLOW_UID: print_ids(b, cfg->allow_uid, cfg->n_allow_uid); return;
    case O_UNIX_ALLOW_GID: print_ids(b, cfg->allow_gid, cfg->n_allow_gid); return;
    case O_MAX_LINE: buf_printf(b, "%zu", cfg->max_line); return;
    case O_MAX_CLIENT_BUFFER: buf_printf(b, "%zu", cfg->max_client_buffer); return;
    case O_MAX_BODY: buf_printf(b, "%zu", cfg->max_body); return;
    case O_CLIENT_TIMEOUT: buf_printf(b, "%g", cfg->client_timeout); return;
    case O_MAX_PENDING: buf_printf(b, "%zu", cfg->max_pending); return;
    case O_CLIENT_TOKEN_FILE: s = cfg->client_token_file; break;
    case O_MAX_WS_CLIENTS: buf_printf(b, "%zu", cfg->max_ws_clients); return;
    case O_MAX_PASSTHROUGH: buf_printf(b, "%zu", cfg->max_passthrough); return;
    case O_REQUEST_TIMEOUT: buf_printf(b, "%g", cfg->request_timeout); return;
    case O_QUEUE_TIMEOUT: buf_printf(b, "%g", cfg->queue_timeout); return;
    case O_HEARTBEAT: buf_printf(b, "%g", cfg->heartbeat); return;
    case O_RECONNECT_MIN: buf_printf(b, "%g", cfg->reconnect_min); return;
    case O_RECONNECT_MAX: buf_printf(b, "%g", cfg->reconnect_max); return;
    case O_PING_INTERVAL: buf_printf(b, "%g", cfg->ping_interval); return;
    case O_PING_TIMEOUT: buf_printf(b, "%g", cfg->ping_timeout); return;
    case O_CONNECT_TIMEOUT: buf_printf(b, "%g", cfg->connect_timeout); return;
    case O_DRAIN_TIMEOUT: buf_printf(b, "%g", cfg->drain_timeout); return;
    case O_MAX_INFLIGHT: buf_printf(b, "%d", cfg->max_inflight); return;
    case O_MAX_CONNECTIONS: buf_printf(b, "%d", cfg->max_connections); return;
    case O_CONNECTION_IDLE: buf_printf(b, "%g", cfg->connection_idle); return;
    case O_MAX_QUEUE: buf_printf(b, "%d", cfg->max_queue); return;
    case O_WORKSPACE: s = cfg->workspace; break;
    case O_CA_FILE: s = cfg->ca_file; break;
    case O_CA_ONLY: s = cfg->ca_only ? "true" : "false"; break;
    case O_INSECURE: s = cfg->insecure ? "true" : "false"; break;
    case O_PROXY: s = cfg->proxy; break;
    case O_LOG_LEVEL: {
        static const char *const names[] = {"error", "warn", "info", "debug"};
        s = names[cfg->log_level];
        break;
    }
    case O_LOG_FORMAT: s = cfg->log_json ? "json" : "text"; break;
    case O_ACCESS_LOG: s = cfg->access_log ? "on" : "off"; break;
    default: break;
    }
    if (s)
        buf_puts(b, s);
}

void config_print(const struct config *cfg, FILE *out)
{
    fprintf(out, "# tgbridge %s: the effective configuration%s%s\n", TGB_VERSION,
            cfg->config_file ? ", over the file " : "", cfg->config_file ? cfg->config_file : "");
    fprintf(out, "# precedence: default < config file < environment < flags; secrets shown as ***;\n"
                 "# before each value, where it came from\n");
    for (size_t i = 0; i < NDOCS; i++) {
        enum opt_id id = docs[i].id;
        if (id == O_HELP || id == O_VERSION || id == O_CONFIG || id == O_PRINT_CONFIG || id == O_CHECK_CONFIG)
            continue;
        struct buf v;
        buf_init(&v, 0);
        effective_value(cfg, id, &v);
        if (id == O_PROXY && v.len) { /* credentials in a proxy URL: masked */
            char *url = strdup(buf_ptr(&v));
            if (!url)
                abort();
            char *start = strstr(url, "://");
            start = start ? start + 3 : url;
            char *at = strrchr(start, '@');
            if (at && at > start) {
                v.len = 0;
                buf_printf(&v, "%.*s***%s", (int)(start - url), url, at);
            }
            explicit_bzero(url, strlen(url));
            free(url);
        }
        redact_buf(&v); /* any secret that got into a value */
        const char *src = sources[id][0] ? sources[id] : "default";
        if (id == O_TOKEN && cfg->token && *cfg->token && !sources[id][0] && cfg->token_file)
            src = "token-file";
        /* The source on a comment line of its own: the output is a config file
         * tgbridge reads back (values have no trailing comments there). */
        bool quote = v.len && (strchr(buf_ptr(&v), '#') || buf_ptr(&v)[0] == ' ' || buf_ptr(&v)[v.len - 1] == ' ');
        if (!v.len)
            fprintf(out, "# %s: unset (%s)\n", docs[i].name, src);
        else
            fprintf(out, "# %s: %s\n%s = %s%.*s%s\n", docs[i].name, src, docs[i].name, quote ? "\"" : "",
                    (int)v.len, buf_ptr(&v), quote ? "\"" : "");
        buf_free(&v);
    }
}
