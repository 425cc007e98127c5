#include "envelope.h"
#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void envelope_build(struct buf *out, const char *id, const char *service, const char *flow,
                    const char *workspace, const char *body, size_t body_len)
{
    buf_reserve(out, body_len + 128);
    buf_puts(out, "{\"id\":");
    buf_json_string(out, id, strlen(id));
    buf_puts(out, ",\"service\":");
    buf_json_string(out, service, strlen(service));
    if (flow && *flow) {
        buf_puts(out, ",\"flow\":");
        buf_json_string(out, flow, strlen(flow));
    }
    if (workspace && *workspace) {
        buf_puts(out, ",\"workspace\":");
        buf_json_string(out, workspace, strlen(workspace));
    }
    buf_puts(out, ",\"request\":");
    buf_append(out, body, body_len);
    buf_puts(out, "}");
}

void envelope_rewrite(struct buf *out, const char *text, size_t len, const struct span *id_span,
                      const char *our_id, const char *workspace)
{
    struct buf extra;
    buf_init(&extra, 0);
    if (!id_span) {
        buf_puts(&extra, "\"id\":");
        buf_json_string(&extra, our_id, strlen(our_id));
        buf_puts(&extra, ",");
    }
    struct span ws;
    if (workspace && *workspace && json_top_value(text, len, "workspace", &ws) != 0) {
        buf_puts(&extra, "\"workspace\":");
        buf_json_string(&extra, workspace, strlen(workspace));
        buf_puts(&extra, ",");
    }
    buf_reserve(out, len + extra.len + strlen(our_id) + 8);
    size_t open = json_skip_ws(text, 0, len) + 1; /* just after '{' */
    /* "{}"-like objects have nothing after the insertion: drop the trailing comma. */
    bool empty = json_skip_ws(text, open, len) < len && text[json_skip_ws(text, open, len)] == '}';
    if (empty && extra.len)
        extra.len--;
    buf_append(out, text, open);
    buf_append(out, buf_ptr(&extra), extra.len);
    if (id_span) {
        size_t at = (size_t)(id_span->p - text);
        buf_append(out, text + open, at - open);
        buf_json_string(out, our_id, strlen(our_id));
        buf_append(out, text + at + id_span->n, len - at - id_span->n);
    } else {
        buf_append(out, text + open, len - open);
    }
    buf_free(&extra);
}

/* The first envelope key that occurs twice at the top level, or NULL.  cJSON keeps
 * repeated keys as separate members, decoded, so escaped spellings count too. */
static const char *repeated_key(const cJSON *root)
{
    static const char *const keys[] = {"id", "service", "flow", "request", "workspace", "type"};
    for (size_t k = 0; k < sizeof keys / sizeof *keys; k++) {
        int n = 0;
        for (const cJSON *m = root->child; m; m = m->next)
            if (m->string && !strcmp(m->string, keys[k]))
                n++;
        if (n > 1)
            return keys[k];
    }
    return NULL;
}

static void bad(struct client_msg_info *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void bad(struct client_msg_info *out, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    out->kind = CMSG_BAD;
    vsnprintf(out->error, sizeof out->error, fmt, ap);
    va_end(ap);
}

static bool copy_field(char *dst, size_t cap, const cJSON *s)
{
    if (!cJSON_IsString(s))
        return false;
    int n = snprintf(dst, cap, "%s", s->valuestring);
    return n < 0 || (size_t)n >= cap;
}

/* A request: its service and flow, and what the per-caller policy reads. */
static void request_fields(const cJSON *root, const cJSON *service, const cJSON *flow, const cJSON *request,
                           struct client_msg_info *out)
{
    out->kind = CMSG_REQUEST;
    snprintf(out->service, sizeof out->service, "%s", service->valuestring);
    out->has_flow = cJSON_IsString(flow) && flow->valuestring[0];
    const cJSON *op = cJSON_GetObjectItemCaseSensitive(request, "operation");
    out->has_operation = cJSON_IsString(op);
    /* Each one copied, whichever is too long. */
    bool flow_long = copy_field(out->flow, sizeof out->flow, cJSON_GetObjectItemCaseSensitive(root, "flow"));
    bool ws_long = copy_field(out->workspace, sizeof out->workspace, cJSON_GetObjectItemCaseSensitive(root, "workspace"));
    bool op_long = copy_field(out->operation, sizeof out->operation, op);
    out->too_long = flow_long || ws_long || op_long;
}

struct id_scan {
    const char *end;
    struct span id;
    bool seen;
};

static void id_member(struct span key, struct span value, void *arg)
{
    struct id_scan *t = arg;
    if (t->seen || !span_is(key, "id"))
        return;
    t->seen = true;
    /* Something must follow it: a number cut by the end of a prefix is not its value. */
    if (value.p + value.n < t->end && !span_is(value, "null") && json_valid(value.p, value.n))
        t->id = value;
}

bool client_msg_id(const char *text, size_t len, struct span *id)
{
    struct id_scan t = {text + len, {NULL, 0}, false};
    json_members(text, len, id_member, &t);
    *id = t.id;
    return t.id.p != NULL;
}

/* Refused before it could be read.  Too deep to read whole (cJSON and the gateway's
 * parser would refuse it too), its id may still come before the depth: the reply
 * carries it. */
static void unreadable(struct client_msg_info *out, const char *text, size_t len, const char *what, const char *why)
{
    bad(out, "%s %s", what, why);
    if (json_too_deep(text, len) && client_msg_id(text, len, &out->id)) {
        out->id_present = true;
        out->id_span = out->id;
    }
}

/* The keys we read as written (by json_top_value), refused when that would misread
 * them; out->id set.  False when out has been marked bad. */
static bool keys_as_written(const cJSON *root, const char *text, size_t len, struct client_msg_info *out)
{
    const char *dup = repeated_key(root);
    if (dup) {
        /* The gateway's parser keeps the last of repeated keys, we would read the
         * first: refuse rather than forward something we misread. */
        bad(out, "the key \"%s\" appears more than once", dup);
        return false;
    }
    out->id_present = json_top_value(text, len, "id", &out->id_span) == 0;
    if (!out->id_present && cJSON_GetObjectItemCaseSensitive(root, "id")) {
        bad(out, "write the \"id\" key without escapes");
        return false;
    }
    struct span ws;
    if (cJSON_GetObjectItemCaseSensitive(root, "workspace") && json_top_value(text, len, "workspace", &ws) != 0) {
        /* envelope_rewrite finds keys as written: it would add a second workspace. */
        bad(out, "write the \"workspace\" key without escapes");
        return false;
    }
    /* "id":null counts as no id. */
    if (out->id_present && !cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(root, "id")))
        out->id = out->id_span;
    return true;
}

/* A control message (it has a type) or a request, or why it is neither. */
static void classify(const cJSON *root, const char *text, size_t len, struct client_msg_info *out)
{
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(root, "type");
    const cJSON *service = cJSON_GetObjectItemCaseSensitive(root, "service");
    const cJSON *flow = cJSON_GetObjectItemCaseSensitive(root, "flow");
    const cJSON *request = cJSON_GetObjectItemCaseSensitive(root, "request");
    if (type) {
        out->kind = CMSG_CONTROL;
        if (cJSON_IsString(type))
            snprintf(out->type, sizeof out->type, "%s", type->valuestring);
        json_top_value(text, len, "token", &out->token);
    } else if (!cJSON_IsString(service) || !service->valuestring[0]) {
        bad(out, "missing \"service\" (a string such as \"graph-rag\")");
    } else if (!cJSON_IsObject(request)) {
        bad(out, "\"request\" must be a JSON object");
    } else if (flow && !cJSON_IsNull(flow) && !cJSON_IsString(flow)) {
        bad(out, "\"flow\" must be a string");
    } else {
        request_fields(root, service, flow, request, out);
    }
}

void client_msg_parse(const char *text, size_t len, const char *what, struct client_msg_info *out)
{
    memset(out, 0, sizeof *out);
    size_t i = 0;
    while (i < len && (text[i] == ' ' || text[i] == '\t' || text[i] == '\r' || text[i] == '\n'))
        i++;
    if (i == len) {
        out->kind = CMSG_BLANK;
        return;
    }
    cJSON *root = NULL;
    const char *why = json_body_check(text, len, &root);
    if (why) {
        unreadable(out, text, len, what, why);
        return;
    }
    if (!cJSON_IsObject(root))
        bad(out, "a %s must be a JSON object", what);
    else if (keys_as_written(root, text, len, out))
        classify(root, text, len, out);
    cJSON_Delete(root);
}

static void copy_str(char *dst, size_t cap, const cJSON *s)
{
    dst[0] = '\0';
    if (cJSON_IsString(s) && s->valuestring) {
        size_t n = strlen(s->valuestring);
        if (n >= cap) {
            /* cut at a character boundary: the value goes into JSON and metric labels */
            n = cap - 1;
            while (n && ((unsigned char)s->valuestring[n] & 0xC0) == 0x80)
                n--;
        }
        memcpy(dst, s->valuestring, n);
        dst[n] = '\0';
    }
}

/* Fills err_type/err_message from an error value: a string (V1a) or {type,message}.
 * Errors are rare, so this one path may build a cJSON tree. */
static char no_message[1]; /* err_message of frames without an error: never NULL */

static void read_error(struct frame *f, struct span v)
{
    f->err_message = NULL;
    cJSON *err = cJSON_ParseWithLength(v.p, v.n);
    if (cJSON_IsString(err)) {
        f->error_is_string = true;
        f->err_message = strdup(err->valuestring ? err->valuestring : "");
    } else if (cJSON_IsObject(err)) {
        copy_str(f->err_type, sizeof f->err_type, cJSON_GetObjectItemCaseSensitive(err, "type"));
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(err, "message");
        if (cJSON_IsString(m))
            f->err_message = strdup(m->valuestring);
    }
    if (!f->err_message) {
        /* Neither shape: say what it was rather than nothing. */
        f->err_message = malloc(v.n + 1);
        if (!f->err_message)
            abort();
        memcpy(f->err_message, v.p, v.n);
        f->err_message[v.n] = '\0';
    }
    cJSON_Delete(err);
}

/* Copies a JSON string value into out (unescaped); false if v is not a string or
 * does not fit. */
static bool string_value(struct span v, char *out, size_t cap)
{
    if (v.n < 2 || v.p[0] != '"')
        return false;
    if (!memchr(v.p, '\\', v.n)) {
        if (v.n - 2 >= cap)
            return false;
        memcpy(out, v.p + 1, v.n - 2);
        out[v.n - 2] = '\0';
        return true;
    }
    cJSON *j = cJSON_ParseWithLength(v.p, v.n);
    bool ok = cJSON_IsString(j) && strlen(j->valuestring) < cap;
    if (ok)
        strcpy(out, j->valuestring);
    cJSON_Delete(j);
    return ok;
}

struct frame_members {
    struct span id, type, resp, err, complete, dws, ws;
};

static void collect_member(struct span key, struct span v, void *arg)
{
    struct frame_members *m = arg;
    struct span *slot = span_is(key, "id") ? &m->id : span_is(key, "type") ? &m->type
                      : span_is(key, "response") ? &m->resp : span_is(key, "error") ? &m->err
                      : span_is(key, "complete") ? &m->complete
                      : span_is(key, "default_workspace") ? &m->dws : span_is(key, "workspace") ? &m->ws : NULL;
    if (slot && !slot->p) /* the first of repeated keys wins, as with cJSON */
        *slot = v;
}

/* One pass over the frame, no allocation: every reply frame goes through here, and
 * the response payload is forwarded as the bytes it arrived as (libraries.md c3).  The
 * pass validates the whole frame as it collects the top-level members
 * (json_valid_members): a frame that is not JSON, not UTF-8 or not an object is
 * FRAME_INVALID and none of it is ever forwarded. */
void frame_parse(const char *text, size_t len, struct frame *f)
{
    memset(f, 0, sizeof *f);
    f->kind = FRAME_INVALID;
    f->err_message = no_message;
    struct frame_members m;
    memset(&m, 0, sizeof m);
    bool valid = json_valid_members(text, len, collect_member, &m) >= 0;
    if (!valid) { /* its id, if a plain scan finds one: its request fails */
        memset(&m, 0, sizeof m);
        json_members(text, len, collect_member, &m);
    }
    struct span id = m.id, type = m.type, resp = m.resp, err = m.err, complete = m.complete, dws = m.dws,
                ws = m.ws;
    /* Falsy ids are dropped from the gateway's own error frames (ref §4); ours never are. */
    if (id.p && string_value(id, f->id, sizeof f->id) && f->id[0])
        f->has_id = true;
    if (!valid)
        return; /* FRAME_INVALID, with the id if the scan got that far: its request fails */
    f->kind = FRAME_OTHER;
    char tbuf[16];
    if (type.p && string_value(type, tbuf, sizeof tbuf)) {
        if (!strcmp(tbuf, "auth-ok")) {
            f->kind = FRAME_AUTH_OK;
            f->auth_new_field = dws.p != NULL;
            string_value(dws.p ? dws : ws, f->workspace, sizeof f->workspace);
            return;
        }
        if (!strcmp(tbuf, "auth-failed")) {
            f->kind = FRAME_AUTH_FAILED;
            if (err.p)
                read_error(f, err);
            return;
        }
    }
    if (err.p) {
        read_error(f, err);
        f->error = err;
        f->kind = f->has_id ? FRAME_TOP_ERROR : FRAME_ORPHAN_ERROR;
        return;
    }
    if (resp.p && f->has_id) {
        f->response = resp;
        struct span inner;
        /* json_top_value reads keys as written, so without the bytes "error" there is
         * no such member: most parts are spared the scan. */
        if (resp.p[0] == '{' && memmem(resp.p, resp.n, "\"error\"", 7) &&
            json_top_value(resp.p, resp.n, "error", &inner) == 0 && !span_is(inner, "null")) {
            /* A nested error ends the request even without complete (ref §5.3 rule 2). */
            read_error(f, inner);
            f->kind = FRAME_FINAL_ERROR;
        } else {
            f->kind = span_is(complete, "true") ? FRAME_FINAL : FRAME_PART;
        }
    }
}

void frame_free(struct frame *f)
{
    if (f->err_message != no_message)
        free(f->err_message);
    f->err_message = no_message;
}
