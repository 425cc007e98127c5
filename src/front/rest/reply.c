#include "rest_int.h"
#include "callrec.h"
#include "health.h"
#include "redact.h"
#include "util.h"
#include <stdio.h>
#include <string.h>

void rest_note_error(struct call *call, bool own, const char *type)
{
    if (own)
        call->own_error = true;
    else
        call->gateway_error = true;
    if (!call->error[0] && type)
        snprintf(call->error, sizeof call->error, "%s", type);
}

/* Every error body tgbridge writes; the message may quote the gateway. */
void rest_error_body(struct buf *b, const char *type, const char *message)
{
    struct buf e;
    buf_init(&e, 0);
    buf_puts(&e, "{\"error\":{\"type\":");
    buf_json_string(&e, type, strlen(type));
    buf_puts(&e, ",\"message\":");
    buf_json_string(&e, message, strlen(message));
    buf_puts(&e, "}}");
    redact_buf(&e);
    buf_append(b, buf_ptr(&e), e.len);
    buf_free(&e);
}

enum MHD_Result rest_queue_json(struct MHD_Connection *c, unsigned status, const char *body, size_t len,
                                const char *allow)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    if (allow)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, allow);
    if (status == MHD_HTTP_UPGRADE_REQUIRED) /* only for a WebSocket version (access.c): name ours, RFC 6455 §4.4 */
        MHD_add_response_header(r, "Sec-WebSocket-Version", "13");
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

/* 503s are temporary by definition: say when to come back.  The next connection
 * attempt is at most --reconnect-max away. */
enum MHD_Result rest_queue_503(struct MHD_Connection *c, const char *body, size_t len)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!r)
        return MHD_NO;
    char after[32];
    double secs = REST.cfg->reconnect_max < 1 ? 1 : REST.cfg->reconnect_max;
    snprintf(after, sizeof after, "%.0f", secs > 60 ? 60 : secs + 0.499);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, after);
    enum MHD_Result ret = MHD_queue_response(c, 503, r);
    MHD_destroy_response(r);
    return ret;
}

enum MHD_Result rest_queue_error(struct MHD_Connection *c, unsigned status, const char *type,
                                 const char *message, const char *allow)
{
    struct buf b;
    buf_init(&b, 0);
    rest_error_body(&b, type, message);
    enum MHD_Result ret = rest_queue_json(c, status, buf_ptr(&b), b.len, allow);
    buf_free(&b);
    return ret;
}

enum MHD_Result rest_serve_status(struct MHD_Connection *c, enum route route)
{
    enum health_page page = route == R_HEALTHZ ? HEALTH_LIVE : route == R_READYZ ? HEALTH_READY
                          : route == R_STATUS ? HEALTH_STATUS : HEALTH_METRICS;
    struct buf b;
    buf_init(&b, 0);
    const char *type;
    unsigned status = health_render(page, &b, &type);
    struct MHD_Response *r = MHD_create_response_from_buffer(b.len, buf_ptr(&b), MHD_RESPMEM_MUST_COPY);
    buf_free(&b);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

/* POST /shutdown: answered, then the drain begins (main.c, as on SIGTERM) once this
 * answer has had its loop turn to leave. */
enum MHD_Result rest_serve_shutdown(struct MHD_Connection *c)
{
    static const char body[] = "{\"status\":\"shutting down\"}";
    enum MHD_Result ret = rest_queue_json(c, 202, body, sizeof body - 1, NULL);
    if (REST.on_shutdown)
        REST.on_shutdown();
    return ret;
}

/* Statuses for the gateway's policy errors (E4), as its own REST routes answer them. */
static int policy_status(const char *type, enum route route, const char **body)
{
    if (!strcmp(type, "auth-required")) { *body = "{\"error\":\"auth failure\"}"; return 401; }
    if (!strcmp(type, "access-denied")) { *body = "{\"error\":\"access denied\"}"; return 403; }
    if (!strcmp(type, "workspace-not-found")) { *body = "{\"error\":\"workspace not found\"}"; return 404; }
    if (!strcmp(type, "unknown-service")) {
        if (route == R_FLOW_SERVICE) { *body = "{\"error\":\"unknown kind\"}"; return 404; }
        *body = "{\"error\":\"unknown operation\"}";
        return 400;
    }
    return 0;
}

/* Non-streaming: what the gateway's REST route would have answered. */
void rest_map_unary(struct call *call, const struct frame *f)
{
    const char *policy_body;
    int st;
    if (f->kind != FRAME_FINAL)
        rest_note_error(call, false, f->kind == FRAME_FINAL_ERROR || !f->err_type[0] ? "error" : f->err_type);
    if (f->kind == FRAME_FINAL || f->kind == FRAME_FINAL_ERROR) {
        call->reply_status = 200;
        buf_append(&call->reply, f->response.p, f->response.n);
    } else if (!f->error_is_string && (st = policy_status(f->err_type, call->route, &policy_body))) {
        call->reply_status = st;
        buf_puts(&call->reply, policy_body);
    } else if (f->error_is_string || !strcmp(f->err_type, "error")) {
        call->reply_status = 200;
        buf_puts(&call->reply, "{\"error\":");
        buf_json_string(&call->reply, f->err_message, strlen(f->err_message));
        buf_puts(&call->reply, "}");
    } else {
        call->reply_status = 200;
        buf_puts(&call->reply, "{\"error\":");
        buf_append(&call->reply, f->error.p, f->error.n);
        buf_puts(&call->reply, "}");
        redact_buf(&call->reply); /* the gateway's own words, as they came */
    }
}

const char *rest_error_type_of(const struct frame *f)
{
    return f->err_type[0] ? f->err_type : "error";
}

enum MHD_Result rest_queue_too_busy(struct MHD_Connection *c)
{
    struct buf b;
    buf_init(&b, 0);
    char msg[160];
    snprintf(msg, sizeof msg, "the requests being received already hold --max-assembling (%zu bytes); try again",
             REST.cfg->max_assembling);
    rest_error_body(&b, "too-busy", msg);
    enum MHD_Result ret = MHD_NO;
    struct MHD_Response *r = MHD_create_response_from_buffer(b.len, buf_ptr(&b), MHD_RESPMEM_MUST_COPY);
    if (r) {
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
        MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, "1");
        ret = MHD_queue_response(c, 503, r);
        MHD_destroy_response(r);
    }
    buf_free(&b);
    return ret;
}

/* Streaming, error as the first frame: a real status (documented in docs/protocols.md). */
void rest_map_stream_error(struct call *call, const struct frame *f)
{
    const char *unused;
    int st = 400;
    rest_note_error(call, false, rest_error_type_of(f));
    if (f->kind == FRAME_FINAL_ERROR) {
        bool timeout = !strcmp(f->err_type, "gateway-error") &&
                       (!f->err_message[0] || !strcmp(f->err_message, "Timeout"));
        st = timeout ? 504 : 502;
    } else if (!f->error_is_string && (st = policy_status(f->err_type, call->route, &unused))) {
        /* st set */
    } else {
        st = 400;
    }
    call->reply_status = st;
    rest_error_body(&call->reply, rest_error_type_of(f), f->err_message);
}


void rest_log_refusal(const char *method, const char *url, const char *caller, unsigned status, const char *type)
{
    struct call_record r = {.frontend = "rest", .caller = caller, .method = method, .route = url,
                            .status = (int)status, .outcome = CALL_FAILED, .error = type, .started = now_mono()};
    callrec_finish(&r);
}

enum MHD_Result rest_queue_refusal(struct MHD_Connection *c, const struct refusal *no)
{
    static const char auth_failure[] = "{\"error\":\"auth failure\"}";
    if (no->status == 401) /* the gateway's own answer (ref §3.2) */
        return rest_queue_json(c, 401, auth_failure, sizeof auth_failure - 1, NULL);
    return rest_queue_error(c, no->status, no->type, no->message, NULL);
}

enum MHD_Result rest_queue_reply(struct call *call)
{
    call->phase = PH_DONE;
    if (call->reply_status == 503)
        return rest_queue_503(call->conn, buf_ptr(&call->reply), call->reply.len);
    return rest_queue_json(call->conn, (unsigned)call->reply_status, buf_ptr(&call->reply), call->reply.len, NULL);
}
