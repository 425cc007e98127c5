#include "rest_int.h"
#include "passthrough.h"
#include "policy.h"
#include "restname.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

/* A name of the path, decoded as the gateway routes it (restname.h) into dst; false
 * with out->why naming what is wrong. */
static bool take_name(struct call *out, const char *what, char *dst, size_t cap, const char *raw, size_t n,
                      bool slashes)
{
    char why[96];
    if (rest_name_decode(raw, n, slashes, dst, cap, why, sizeof why) >= 0)
        return true;
    snprintf(out->why, sizeof out->why, "no such route: the %s holds %s", what, why);
    return false;
}

/* /api/v1/flow/{flow}/service/{kind}, raw: the path as sent (no query). */
static enum route flow_route(const char *raw, struct call *out)
{
    const char *f = raw + sizeof "/api/v1/flow/" - 1;
    const char *slash = strchr(f, '/');
    if (!slash)
        return R_NOT_FOUND;
    const char *rest = slash + 1;
    if (!strncmp(rest, "service/", 8)) {
        const char *k = rest + 8;
        /* thru/<name> is the only kind with slashes (v2.8.7+): .+ at the gateway. */
        bool thru = !strncmp(k, "thru/", 5);
        if (!strchr(k, '/') || thru) {
            if (!take_name(out, "flow id", out->flow, sizeof out->flow, f, (size_t)(slash - f), false) ||
                !take_name(out, "service name", out->kind, sizeof out->kind, k, strlen(k), thru))
                return R_NOT_FOUND;
            return thru && strlen(out->kind) <= 5 ? R_NOT_FOUND : R_FLOW_SERVICE;
        }
        return R_NOT_FOUND;
    }
    if (!strncmp(rest, "import/", 7) || !strncmp(rest, "export/", 7))
        return R_UNSUPPORTED;
    return R_NOT_FOUND;
}

/* The routes with names in them, from the path as sent (no query). */
static enum route names_route(const char *raw, struct call *out)
{
    static const char flowp[] = "/api/v1/flow/";
    /* "/api/v1/flow" alone is the flow-management kind, handled below. */
    if (!strncmp(raw, flowp, sizeof flowp - 1))
        return flow_route(raw, out);
    static const char kindp[] = "/api/v1/";
    if (!strncmp(raw, kindp, sizeof kindp - 1)) {
        const char *k = raw + sizeof kindp - 1;
        if (!strcmp(k, "socket"))
            return R_SOCKET;
        if (!strchr(k, '/') && take_name(out, "service name", out->kind, sizeof out->kind, k, strlen(k), false))
            return R_KIND;
    }
    return R_NOT_FOUND;
}

enum route rest_route_of(const char *url, const char *raw_target, struct call *out)
{
    if (!strcmp(url, "/healthz"))
        return R_HEALTHZ;
    if (!strcmp(url, "/readyz"))
        return R_READYZ;
    if (!strcmp(url, "/status"))
        return R_STATUS;
    if (!strcmp(url, "/metrics"))
        return R_METRICS;
    /* Names are read from the path as sent: libmicrohttpd's url has %2F and %00
     * decoded already, where they cannot be told from '/' and the end. */
    const char *t = raw_target ? raw_target : url;
    char *raw = strndup(t, strcspn(t, "?"));
    if (!raw)
        abort();
    enum route r = names_route(raw, out);
    free(raw);
    return r;
}

enum route rest_admin_route_of(const char *url)
{
    static const struct {
        const char *path;
        enum route route;
    } rows[] = {
        {"/healthz", R_HEALTHZ}, {"/readyz", R_READYZ}, {"/metrics", R_METRICS},
        {"/status", R_STATUS},   {"/shutdown", R_SHUTDOWN},
    };
    for (size_t i = 0; i < sizeof rows / sizeof *rows; i++)
        if (!strcmp(url, rows[i].path))
            return rows[i].route;
    return R_NOT_FOUND;
}

/* The probes ask nothing; what tells or changes more asks for this machine or the
 * admin token. */
enum admit_rule rest_admin_rule(enum route route)
{
    return route == R_STATUS || route == R_SHUTDOWN ? ADMIT_ADMIN : ADMIT_OPEN;
}

/* One number (libmicrohttpd has already refused anything else in the first one). */
static bool parse_content_length(const char *v, unsigned long long *out)
{
    unsigned long long n = 0;
    if (*v < '0' || *v > '9')
        return false;
    for (; *v >= '0' && *v <= '9'; v++) {
        if (n > (~0ULL - 9) / 10)
            return false;
        n = n * 10 + (unsigned)(*v - '0');
    }
    *out = n;
    return !*v;
}

static enum MHD_Result framing_header(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
    (void)kind;
    struct framing *f = cls;
    if (!strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH)) {
        unsigned long long n;
        if (!value || !parse_content_length(value, &n) || (f->n_cl && n != f->cl))
            f->cl_bad = true;
        else
            f->cl = n;
        f->n_cl++;
    } else if (!strcasecmp(key, MHD_HTTP_HEADER_TRANSFER_ENCODING)) {
        const char *v = value ? value : "";
        while (*v == ' ' || *v == '\t')
            v++;
        size_t n = strlen(v);
        while (n && (v[n - 1] == ' ' || v[n - 1] == '\t'))
            n--;
        f->te_chunked = f->n_te == 0 && n == 7 && !strncasecmp(v, "chunked", 7);
        f->n_te++;
    }
    return MHD_YES;
}

/* The reject for a body whose framing is ambiguous or unsupported, or NULL. */
const struct reject *rest_framing_reject(struct MHD_Connection *c, struct framing *f)
{
    static const struct reject two_lengths = {400, "bad-request", "conflicting or malformed Content-Length", NULL};
    static const struct reject both = {400, "bad-request", "both Transfer-Encoding and Content-Length", NULL};
    static const struct reject coding = {501, "not-implemented",
                                         "the only Transfer-Encoding tgbridge accepts is \"chunked\"", NULL};
    memset(f, 0, sizeof *f);
    MHD_get_connection_values(c, MHD_HEADER_KIND, framing_header, f);
    if (f->cl_bad)
        return &two_lengths;
    if (f->n_te && f->n_cl)
        return &both;
    if (f->n_te && !f->te_chunked)
        return &coding;
    return NULL;
}

/* The auth routes carry the caller's own credential; the probes ask nothing. */
enum admit_rule rest_route_rule(enum route route, int pass_route)
{
    if (route == R_HEALTHZ || route == R_READYZ || route == R_METRICS)
        return ADMIT_OPEN;
    if (route == R_PASS && pass_route == PASS_AUTH)
        return ADMIT_OWN_CREDENTIAL;
    return ADMIT_BEARER;
}

const char *rest_bearer(struct MHD_Connection *c, size_t *len)
{
    const char *auth = NULL;
    size_t n = 0;
    if (MHD_lookup_connection_value_n(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION,
                                      strlen(MHD_HTTP_HEADER_AUTHORIZATION), &auth, &n) != MHD_YES)
        return NULL;
    return access_bearer(auth, n, len);
}

void rest_admit(struct MHD_Connection *c, const struct conn_watch *cw, enum admit_rule rule, struct admission *v)
{
    /* With their lengths: a NUL inside a header must not end a token early. */
    const char *auth = NULL, *alt = NULL;
    size_t auth_len = 0, alt_len = 0;
    if (MHD_lookup_connection_value_n(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION,
                                      strlen(MHD_HTTP_HEADER_AUTHORIZATION), &auth, &auth_len) != MHD_YES)
        auth = NULL;
    if (MHD_lookup_connection_value_n(c, MHD_HEADER_KIND, "X-Tgbridge-Token", 16, &alt, &alt_len) != MHD_YES)
        alt = NULL;
    struct admission_ask ask = {
        .rule = rule,
        .peer = cw ? &cw->peer : NULL,
        .origin = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Origin"),
        .host = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_HOST),
        .authorization = auth,
        .authorization_len = auth_len,
        .alt_token = alt,
        .alt_token_len = alt_len,
    };
    if (!cw) {
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        ask.unix_socket = ci && ci->client_addr && ci->client_addr->sa_family == AF_UNIX;
    }
    access_admit(&ask, v);
}

enum route_plan rest_route_plan(enum route *route, const char *method, struct call *probe, struct reject *rj)
{
    bool get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
    memset(rj, 0, sizeof *rj);
    switch (*route) {
    case R_NOT_FOUND:
        *rj = (struct reject){404, "not-found", probe->why[0] ? probe->why : "no such route", NULL};
        return PLAN_CALL;
    case R_UNSUPPORTED:
        *rj = (struct reject){400, "bad-request",
                              "the bulk import and export routes are WebSocket upgrades, as the first "
                              "request of their connection", NULL};
        return PLAN_CALL;
    case R_PASS:
        return PLAN_PASS;
    case R_REFUSED:
        *rj = probe->reject;
        return PLAN_CALL;
    case R_SOCKET:
        if (get) {
            *rj = (struct reject){400, "bad-request",
                                  "GET /api/v1/socket is a WebSocket upgrade, as the first request of its "
                                  "connection", NULL};
            return PLAN_CALL;
        }
        /* POST /api/v1/socket is the kind "socket" at the gateway too (ref §2.2). */
        *route = R_KIND;
        snprintf(probe->kind, sizeof probe->kind, "socket");
        break;
    case R_SHUTDOWN:
        if (!strcmp(method, "POST"))
            return PLAN_SHUTDOWN;
        *rj = (struct reject){405, "method-not-allowed", "use POST", "POST"};
        return PLAN_CALL;
    case R_HEALTHZ: case R_READYZ: case R_STATUS: case R_METRICS:
        if (get)
            return PLAN_STATUS;
        *rj = (struct reject){405, "method-not-allowed", "use GET", "GET, HEAD"};
        return PLAN_CALL;
    default:
        break;
    }
    if (strcmp(method, "POST"))
        *rj = (struct reject){405, "method-not-allowed", "use POST", "POST"};
    return PLAN_CALL;
}

static bool accept_has(const char *accept, const char *type)
{
    return accept && strcasestr(accept, type) != NULL;
}

/* Exactly application/json (parameters allowed): the caller wants the mirror's reply. */
static bool accept_only_json(const char *accept)
{
    if (!accept)
        return false;
    while (*accept == ' ')
        accept++;
    if (strncasecmp(accept, "application/json", 16))
        return false;
    return !strchr(accept + 16, ',');
}

/* The gateway parses bodies with Python's json, where a repeated key's last value
 * wins; cJSON's lookup returns the first.  Agree with the gateway. */
const cJSON *rest_last_member(const cJSON *obj, const char *name)
{
    const cJSON *found = NULL, *it;
    cJSON_ArrayForEach(it, obj)
        if (it->string && !strcmp(it->string, name))
            found = it;
    return found;
}


enum fmt rest_format_of(const char *accept, const cJSON *body)
{
    if (accept_has(accept, "text/event-stream"))
        return FMT_SSE;
    if (accept_has(accept, "application/x-ndjson"))
        return FMT_NDJSON;
    if (cJSON_IsTrue(rest_last_member(body, "streaming")) && !accept_only_json(accept))
        return FMT_NDJSON;
    return FMT_JSON;
}

/* The per-caller policy for a route: a pass-through (those that take ?workspace= with
 * a pinned caller's workspace, *pinned) or /status -- the admin listener's keeps its
 * own rule (loopback, --admin-token-file). */
bool rest_route_refused(struct MHD_Connection *c, const struct conn_watch *cw, enum route_plan plan,
                          enum route route, int pass_route, struct admission *v, const char **pinned)
{
    struct policy_call pc = {0};
    bool takes_ws = false;
    if (plan == PLAN_PASS) {
        pc.route = pass_route_name((enum pass_route)pass_route);
        takes_ws = pass_route == PASS_DOCUMENT_STREAM || pass_route == PASS_IMPORT_CORE ||
                   pass_route == PASS_EXPORT_CORE;
        if (takes_ws)
            pc.workspace = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "workspace");
    } else if (plan == PLAN_STATUS && route == R_STATUS && !(cw && cw->admin)) {
        pc.route = "status";
    }
    return pc.route && !policy_check_call(v->caller.name, &pc, takes_ws ? pinned : NULL, &v->refusal);
}
