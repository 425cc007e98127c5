/* The option table: one row per option drives getopt, the environment, the config
 * file, the defaults, --help and --print-config, so none of them can drift. */
#include "config_int.h"
#include <string.h>

static const char *const auth_names[] = {"auto", "query", "header", "first-frame", NULL};
static const char *const log_level_names[] = {"error", "warn", "info", "debug", NULL};
static const char *const log_format_names[] = {"text", "json", NULL};

/* Columns (config_int.h, struct opt): id, name, the value's placeholder, the
 * environment variable; the type, the field it sets, the default as text, whether
 * SIGHUP may apply it (RELOAD_RESTART unless marked), limits and refusals; the help text. */
const struct opt config_options[] = {
    {O_GATEWAY, "gateway", "URL", "TRUSTGRAPH_URL",
     T_GATEWAY, F(gateway), AUX(gw),
     .help = "gateway root: ws://, wss://, http:// or https://host[:port][/prefix];\n"
             "/api/v1/socket is appended (default: discovered, the first of\n"
             "http://localhost:8888 and http://localhost:8088 to accept the upgrade)"},
    {O_TOKEN_FILE, "token-file", "PATH", "TGBRIDGE_TOKEN_FILE",
     T_PATH, F(token_file), .reload = RELOAD_FILE,
     .help = "read the gateway token from PATH (preferred; re-read on every reconnect)"},
    {O_TOKEN, "token", "TOKEN", "TRUSTGRAPH_TOKEN",
     T_SECRET, F(token), .env_alt = "GATEWAY_SECRET", .from = O_TOKEN_FILE,
     .help = "gateway token (also GATEWAY_SECRET); visible to other users in ps until\n"
             "tgbridge scrubs it at start-up: prefer --token-file"},
    {O_AUTH, "auth", "MODE", "TGBRIDGE_AUTH",
     T_ENUM, F(auth), .def = "auto", .names = auth_names,
     .help = "auto (default) | query | header | first-frame: how the token is presented"},
    {O_LISTEN, "listen", "HOST:PORT", "TGBRIDGE_LISTEN",
     T_LISTEN, F(listen_host), AUX(listen_port), .def = "127.0.0.1:8089",
     .help = "REST listener (default 127.0.0.1:8089; port 0 picks a free port)"},
    {O_ADMIN_LISTEN, "admin-listen", "HOST:PORT", "TGBRIDGE_ADMIN_LISTEN",
     T_LISTEN, F(admin_host), AUX(admin_port), .def = "off",
     .help = "a listener of its own for /healthz, /readyz, /metrics, /status and\n"
             "POST /shutdown: no data routes, no Host/Origin checks; e.g. the pod\n"
             "address, for probes and scrapers; not --listen's (default off)"},
    {O_ADMIN_TOKEN_FILE, "admin-token-file", "PATH", "TGBRIDGE_ADMIN_TOKEN_FILE",
     T_PATH, F(admin_token_file), .reload = RELOAD_FILE,
     .help = "callers not on loopback may use the admin listener's /status and\n"
             "/shutdown with the token in PATH as a Bearer (default: loopback only)"},
    {O_ALLOW_ORIGIN, "allow-origin", "LIST", "TGBRIDGE_ALLOW_ORIGIN",
     T_LIST, F(allow_origin), .reload = RELOAD_APPLY,
     .help = "web origins (https://app.example) whose pages may call tgbridge, comma-\n"
             "separated, or '*'; requests with any other Origin get 403 (default: none)"},
    {O_ALLOW_HOST, "allow-host", "LIST", "TGBRIDGE_ALLOW_HOST",
     T_LIST, F(allow_host), .reload = RELOAD_APPLY,
     .help = "Host names accepted on TCP besides loopback ones and the listen address,\n"
             "comma-separated, or '*' (default: none)"},
    {O_UNIX, "unix", "PATH", "TGBRIDGE_UNIX",
     T_SOCKET, F(unix_path), AUX(unix_set),
     .help = "Unix socket for line JSON and HTTP; 'none' disables (default\n"
             "$RUNTIME_DIRECTORY/tgbridge.sock, /run/tgbridge/tgbridge.sock as root,\n"
             "else $XDG_RUNTIME_DIR/tgbridge.sock)"},
    {O_UNIX_MODE, "unix-mode", "OCTAL", "TGBRIDGE_UNIX_MODE",
     T_OCTAL, F(unix_mode), .def = "0660",
     .help = "permissions of the Unix socket (default 0660)"},
    {O_UNIX_GROUP, "unix-group", "GROUP", "TGBRIDGE_UNIX_GROUP",
     T_STRING, F(unix_group),
     .help = "group owning the Unix socket"},
    {O_UNIX_ALLOW_UID, "unix-allow-uid", "LIST", "TGBRIDGE_UNIX_ALLOW_UID",
     T_UIDS, F(allow_uid), AUX(n_allow_uid), .reload = RELOAD_APPLY,
     .help = "only these users (names or uids, comma-separated) may connect"},
    {O_UNIX_ALLOW_GID, "unix-allow-gid", "LIST", "TGBRIDGE_UNIX_ALLOW_GID",
     T_GIDS, F(allow_gid), AUX(n_allow_gid), .reload = RELOAD_APPLY,
     .help = "... or peers whose primary group is one of these"},
    {O_MAX_LINE, "max-line", "BYTES", "TGBRIDGE_MAX_LINE",
     T_BYTES, F(max_line), .def = "50m", .min = 64, .reload = RELOAD_APPLY,
     .help = "longest line on the Unix socket (default 50m)"},
    {O_MAX_CLIENT_BUFFER, "max-client-buffer", "BYTES", "TGBRIDGE_MAX_CLIENT_BUFFER",
     T_BYTES, F(max_client_buffer), .def = "64m", .min = 64, .reload = RELOAD_APPLY,
     .help = "reply bytes that may wait for one caller that does not read them (REST,\n"
             "streams, the line protocol, the local WebSocket) before it is dropped (default 64m)"},
    {O_MAX_ASSEMBLING, "max-assembling", "BYTES", "TGBRIDGE_MAX_ASSEMBLING",
     T_BYTES, F(max_assembling), .def = "256m", .min = 64, .reload = RELOAD_APPLY,
     .help = "bytes of all requests still being received (REST bodies, lines, local\n"
             "WebSocket messages) together; the caller past it is refused (default 256m)"},
    {O_CLIENT_TIMEOUT, "client-timeout", "SECONDS", "TGBRIDGE_CLIENT_TIMEOUT",
     T_SECONDS_POS, F(client_timeout), .def = "30", .reload = RELOAD_APPLY,
     .help = "a local connection must send a complete request head within this, and\n"
             "its body at least 1 MiB per this much more (default 30)"},
    {O_CLOSE_TIMEOUT, "close-timeout", "SECONDS", "TGBRIDGE_CLOSE_TIMEOUT",
     T_SECONDS_POS, F(close_timeout), .def = "5", .reload = RELOAD_APPLY,
     .help = "after sending a WebSocket close (local, bulk or gateway side), wait this\n"
             "long for the peer's close before dropping the connection (default 5)"},
    {O_MAX_PENDING, "max-pending", "N", "TGBRIDGE_MAX_PENDING",
     T_COUNT, F(max_pending), .def = "1024",
     .help = "unfinished requests one local connection may have: a line client is not\n"
             "read past it, further WebSocket requests get an error (default 1024)"},
    {O_CLIENT_TOKEN_FILE, "client-token-file", "PATH", "TGBRIDGE_CLIENT_TOKEN_FILE",
     T_PATH, F(client_token_file), .reload = RELOAD_FILE,
     .help = "local callers must present the token in PATH: REST as a Bearer header,\n"
             "the local WebSocket in its auth frame or ?token= (default: none needed)"},
    {O_POLICY, "policy", "PATH", "TGBRIDGE_POLICY",
     T_PATH, F(policy), .reload = RELOAD_FILE,
     .help = "per-caller policy (JSON): who may call which services, flows, operations\n"
             "and routes, in which workspace, with which gateway key (docs/security.md\n"
             "\"Policies\"; default: none)"},
    {O_ALLOW_SHORT_TOKEN, "allow-short-token", NULL, "TGBRIDGE_ALLOW_SHORT_TOKEN",
     T_SWITCH, F(allow_short_token), .def = "false", .reload = RELOAD_APPLY,
     .help = "accept a gateway or client token shorter than 8 characters (refused\n"
             "otherwise: a guessable token, and its redaction would mangle every log line)"},
    {O_MAX_WS_CLIENTS, "max-ws-clients", "N", "TGBRIDGE_MAX_WS_CLIENTS",
     T_COUNT, F(max_ws_clients), .def = "1024", .reload = RELOAD_APPLY,
     .help = "local WebSocket connections at once; more get 503 (default 1024)"},
    {O_MAX_PASSTHROUGH, "max-passthrough", "N", "TGBRIDGE_MAX_PASSTHROUGH",
     T_COUNT, F(max_passthrough), .def = "64", .reload = RELOAD_APPLY,
     .help = "pass-through calls (auth, metrics, document-stream, cores, import/export\n"
             "sockets) at once, each on its own gateway connection; more get 503 (default 64)"},
    {O_MAX_BODY, "max-body", "BYTES", "TGBRIDGE_MAX_BODY",
     T_BYTES, F(max_body), .def = "50m", .min = 1, .reload = RELOAD_APPLY,
     .bad = "--max-body wants a size such as 1048576 or 50m",
     .help = "largest request body accepted (default 50m = the gateway's frame limit)"},
    {O_REQUEST_TIMEOUT, "request-timeout", "SECONDS", "TGBRIDGE_REQUEST_TIMEOUT",
     T_SECONDS, F(request_timeout), .def = "600",
     .help = "give up on a request this long after it was sent upstream (default 600)"},
    {O_QUEUE_TIMEOUT, "queue-timeout", "SECONDS", "TGBRIDGE_QUEUE_TIMEOUT",
     T_SECONDS, F(queue_timeout), .def = "30", .reload = RELOAD_APPLY,
     .help = "longest wait for the gateway or for window room before 503 (default 30)"},
    {O_HEARTBEAT, "heartbeat", "SECONDS", "TGBRIDGE_HEARTBEAT",
     T_SECONDS, F(heartbeat), .def = "15", .reload = RELOAD_APPLY,
     .help = "SSE keep-alive comment interval on idle streams (default 15)"},
    {O_RECONNECT_MIN, "reconnect-min", "SECONDS", "TGBRIDGE_RECONNECT_MIN",
     T_SECONDS, F(reconnect_min), .def = "0.5",
     .help = "first reconnect delay (default 0.5)"},
    {O_RECONNECT_MAX, "reconnect-max", "SECONDS", "TGBRIDGE_RECONNECT_MAX",
     T_SECONDS, F(reconnect_max), .def = "30",
     .help = "longest reconnect delay (default 30)"},
    {O_PING_INTERVAL, "ping-interval", "SECONDS", "TGBRIDGE_PING_INTERVAL",
     T_SECONDS, F(ping_interval), .def = "20",
     .help = "ping the gateway after this much silence (default 20)"},
    {O_PING_TIMEOUT, "ping-timeout", "SECONDS", "TGBRIDGE_PING_TIMEOUT",
     T_SECONDS, F(ping_timeout), .def = "20",
     .help = "drop the connection this long after an unanswered ping (default 20)"},
    {O_CONNECT_TIMEOUT, "connect-timeout", "SECONDS", "TGBRIDGE_CONNECT_TIMEOUT",
     T_SECONDS_POS, F(connect_timeout), .def = "10",
     .help = "bound on a whole gateway connection attempt: name lookup, TCP, proxy,\n"
             "TLS, upgrade and authentication (default 10)"},
    {O_DRAIN_TIMEOUT, "drain-timeout", "SECONDS", "TGBRIDGE_DRAIN_TIMEOUT",
     T_SECONDS, F(drain_timeout), .def = "10", .reload = RELOAD_APPLY,
     .help = "how long live requests may finish on shutdown or on a rotated-out\n"
             "connection before they are failed (default 10)"},
    {O_MAX_INFLIGHT, "max-inflight", "N", "TGBRIDGE_MAX_INFLIGHT",
     T_COUNT, F(max_inflight), .def = "15", .max = 16, .reload = RELOAD_APPLY,
     .bad = "--max-inflight above 16 would stall the gateway's reader",
     .help = "requests in the gateway's window at once (default 15, limit 16)"},
    {O_MAX_CONNECTIONS, "max-connections", "N", "TGBRIDGE_MAX_CONNECTIONS",
     T_COUNT, F(max_connections), .def = "8", .max = 64, .reload = RELOAD_APPLY,
     .bad = "--max-connections is at most 64",
     .help = "gateway connections at most: the persistent one, plus overflow ones\n"
             "while every window is full and requests wait (default 8)"},
    {O_MAX_CALLER_POOLS, "max-caller-pools", "N", "TGBRIDGE_MAX_CALLER_POOLS",
     T_COUNT, F(max_caller_pools), .def = "32", .max = 1024, .reload = RELOAD_APPLY,
     .bad = "--max-caller-pools is at most 1024",
     .help = "--policy: gateway identities of callers (upstream_token_file keys,\n"
             "forwarded ones) with connections at once, besides tgbridge's own;\n"
             "past it the least recently used idle one closes, else 503\n"
             "too-many-identities (default 32)"},
    {O_MAX_UPSTREAM_CONNECTIONS, "max-upstream-connections", "N", "TGBRIDGE_MAX_UPSTREAM_CONNECTIONS",
     T_COUNT, F(max_upstream_connections), .def = "64", .max = 4096, .reload = RELOAD_APPLY,
     .bad = "--max-upstream-connections is at most 4096",
     .help = "gateway connections at most, every identity's together (default 64)"},
    {O_CONNECTION_IDLE, "connection-idle", "SECONDS", "TGBRIDGE_CONNECTION_IDLE",
     T_SECONDS, F(connection_idle), .def = "30", .reload = RELOAD_APPLY,
     .help = "close an overflow connection after this long with nothing in flight\n"
             "(default 30)"},
    {O_MAX_QUEUE, "max-queue", "N", "TGBRIDGE_MAX_QUEUE",
     T_COUNT, F(max_queue), .def = "4096", .reload = RELOAD_APPLY,
     .help = "requests waiting for the window before 503 (default 4096)"},
    {O_WORKSPACE, "workspace", "NAME", "TGBRIDGE_WORKSPACE",
     T_STRING, F(workspace), .reload = RELOAD_APPLY,
     .help = "envelope workspace for bodies without one (default: the gateway's)"},
    {O_CA_FILE, "ca-file", "PATH", "TGBRIDGE_CA_FILE",
     T_PATH, F(ca_file),
     .help = "extra CA certificates (PEM) for wss:// and https://"},
    {O_CA_ONLY, "ca-only", NULL, "TGBRIDGE_CA_ONLY",
     T_SWITCH, F(ca_only), .def = "false",
     .help = "trust only --ca-file, not the system's CA store"},
    {O_PROXY, "proxy", "URL", "TGBRIDGE_PROXY",
     T_CRED_URL, F(proxy),
     .help = "HTTP CONNECT proxy http://[user:pass@]host[:port], or 'none' (default:\n"
             "https_proxy / http_proxy, honouring no_proxy, never for loopback)"},
    {O_INSECURE, "insecure", NULL, "TGBRIDGE_INSECURE",
     T_SWITCH, F(insecure), .def = "false",
     .help = "do not verify the gateway's TLS certificate (dangerous)"},
    {O_LOG_LEVEL, "log-level", "LEVEL", "TGBRIDGE_LOG_LEVEL",
     T_LOG_LEVEL, F(log_level), .def = "info", .names = log_level_names, .reload = RELOAD_APPLY,
     .help = "error | warn | info (default) | debug"},
    {O_LOG_FORMAT, "log-format", "FORMAT", "TGBRIDGE_LOG_FORMAT",
     T_ENUM, F(log_json), .def = "text", .names = log_format_names, .reload = RELOAD_APPLY,
     .help = "text (default) | json: one JSON object per line, for log shippers"},
    {O_ACCESS_LOG, "access-log", "on|off", "TGBRIDGE_ACCESS_LOG",
     T_ONOFF, F(access_log), .def = "on", .reload = RELOAD_APPLY,
     .help = "one line per finished call at info: front end, route or service, outcome,\n"
             "bytes, duration, time to first part, upstream id (default on)"},
    {O_CONFIG, "config", "PATH", "TGBRIDGE_CONFIG",
     T_ACTION,
     .help = "read settings from PATH first: one 'option = value' per line, option\n"
             "names as above without '--'; the environment and flags override it"},
    {O_PRINT_CONFIG, "print-config", NULL, NULL,
     T_ACTION,
     .help = "print the effective configuration (file < environment < flags), each\n"
             "value with where it came from, secrets masked, and exit"},
    {O_CHECK_CONFIG, "check-config", NULL, NULL,
     T_ACTION,
     .help = "validate the configuration (token files included) and exit: 0 if good"},
    {O_HELP, "help", NULL, NULL,
     T_ACTION,
     .help = "show this help and exit"},
    {O_VERSION, "version", NULL, NULL,
     T_ACTION,
     .help = "show the version and exit"},
};
const size_t config_noptions = sizeof config_options / sizeof config_options[0];

const struct opt *opt_by_id(enum opt_id id)
{
    for (size_t i = 0; i < config_noptions; i++)
        if (config_options[i].id == id)
            return &config_options[i];
    return NULL;
}

const struct opt *opt_by_name(const char *name)
{
    for (size_t i = 0; i < config_noptions; i++)
        if (!strcmp(config_options[i].name, name))
            return &config_options[i];
    return NULL;
}

const char *auth_mode_name(enum auth_mode m)
{
    return (size_t)m < sizeof auth_names / sizeof *auth_names - 1 ? auth_names[m] : "auto";
}
