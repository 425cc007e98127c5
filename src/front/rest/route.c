#include "rest_int.h"
#include "passthrough.h"
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

static bool valid_name(const char *s, size_t n, bool allow_slash)
{
    if (!n)
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '-' ||
              ch == '_' || ch == '.' || (allow_slash && ch == '/')))
            return false;
    }
    return !allow_slash || (s[n - 1] != '/' && !strstr(s, "//"));
}

static bool copy_name(char *dst, size_t cap, const char *s, size_t n)
{
    if (n >= cap)
        return false;
    memcpy(dst, s, n);
    dst[n] = '\0';
    return true;
}

enum route rest_route_of(const char *url, struct call *out)
{
    if (!strcmp(url, "/healthz"))
        return R_HEALTHZ;
    if (!strcmp(url, "/readyz"))
        return R_READYZ;
    if (!strcmp(url, "/status"))
        return R_STATUS;
    if (!strcmp(url, "/metrics"))
        return R_METRICS;
    static const char flowp[] = "/api/v1/flow/";
    if (!strncmp(url, flowp, sizeof flowp - 1)) {
        const char *f = url + sizeof flowp - 1;
        const char *slash = strchr(f, '/');
        if (slash) {
            const char *rest = slash + 1;
            if (!strncmp(rest, "service/", 8)) {
                const char *k = rest + 8;
                size_t kn = strlen(k);
                /* thru/<name> is the only kind with a slash (v2.8.7+). */
                bool thru = !strncmp(k, "thru/", 5);
                if (valid_name(f, (size_t)(slash - f), false) && valid_name(k, kn, thru) &&
                    copy_name(out->flow, sizeof out->flow, f, (size_t)(slash - f)) &&
                    copy_name(out->kind, sizeof out->kind, k, kn))
                    return R_FLOW_SERVICE;
                return R_NOT_FOUND;
            }
            if (!strncmp(rest, "import/", 7) || !strncmp(rest, "export/", 7))
                return R_UNSUPPORTED;
        }
        /* "/api/v1/flow" alone is the flow-management kind, handled below. */
    }
    static const char kindp[] = "/api/v1/";
    if (!strncmp(url, kindp, sizeof kindp - 1)) {
        const char *k = url + sizeof kindp - 1;
        size_t kn = strlen(k);
        if (!strcmp(k, "socket"))
            return R_SOCKET;
        if (valid_name(k, kn, false) && copy_name(out->kind, sizeof out->kind, k, kn))
            return R_KIND;
    }
    return R_NOT_FOUND;
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

void rest_admit(struct MHD_Connection *c, const struct conn_watch *cw, enum admit_rule rule, struct admission *v)
{
    const char *auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    struct admission_ask ask = {
        .rule = rule,
        .peer = cw ? &cw->peer : NULL,
        .origin = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Origin"),
        .host = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_HOST),
        .authorization = auth,
        .authorization_len = auth ? strlen(auth) : 0,
        .alt_token = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Tgbridge-Token"),
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
        *rj = (struct reject){404, "not-found", "no such route", NULL};
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
