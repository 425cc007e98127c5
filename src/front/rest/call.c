#include "rest_int.h"
#include "callrec.h"
#include "firstpart.h"
#include "log.h"
#include "passpath.h"
#include "passthrough.h"
#include "policy.h"
#include "util.h"
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static enum MHD_Result respond(struct call *call);
static bool over_budget(struct call *call, size_t more);

static void append_event(struct call *call, const char *json, size_t n, bool is_error)
{
    if (call->client_gone || over_budget(call, n + 32))
        return;
    if (call->fmt == FMT_SSE)
        buf_puts(&call->out, is_error ? "event: error\ndata: " : "data: ");
    size_t start = call->out.len;
    buf_append(&call->out, json, n);
    /* JSON may hold raw newlines only as whitespace between tokens, where a space is
     * equivalent; one payload must stay one line / one data: field. */
    char *p = buf_ptr(&call->out);
    for (size_t i = start; i < call->out.len; i++)
        if (p[i] == '\n' || p[i] == '\r')
            p[i] = ' ';
    buf_puts(&call->out, call->fmt == FMT_SSE ? "\n\n" : "\n");
}

static void append_error_event(struct call *call, const char *type, const char *message)
{
    struct buf b;
    buf_init(&b, 0);
    rest_error_body(&b, type, message);
    append_event(call, buf_ptr(&b), b.len, true);
    buf_free(&b);
}

void rest_wake(struct call *call)
{
    if (!call->suspended)
        return;
    call->suspended = false;
    MHD_resume_connection(call->conn);
    /* MHD must run after a resume (libraries.md a3).  Not from here: we may be inside
     * MHD's own callbacks; on the next loop turn instead (Taler's "trigger"). */
    rest_pump_soon();
}

void rest_caller_gone(struct call *call)
{
    if (call->client_gone)
        return;
    log_debug("caller of %s hung up", call->req ? call->req->id : "(no request)");
    call->client_gone = true;
    mux_detach(call->req);
    call->req = NULL;
    if (call->pass) {
        /* The gateway sees its request go at once.  libmicrohttpd does not always
         * notice a peer that closes mid-upload while it is not suspended: make its
         * next read fail. */
        pass_end(call->pass, true);
        call->pass = NULL;
        if (call->watch && call->watch->fd >= 0)
            shutdown(call->watch->fd, SHUT_RDWR);
    }
    rest_wake(call); /* MHD then closes it (respond / stream_reader see client_gone) */
}

/* A caller that lets too much pile up is dropped rather than allowed to grow our
 * memory or to slow the shared socket (docs/operations.md "Failure semantics").  What counts is
 * what waits: a single part larger than the bound still goes to a caller that reads. */
static bool over_budget(struct call *call, size_t more)
{
    if (!guard_reply_queued(call->out.len, more, false))
        return false;
    log_warn("closing a REST caller that reads too slowly (%zu bytes of its reply waiting, "
             "--max-client-buffer %zu)", call->out.len + more, REST.cfg->max_client_buffer);
    if (call->watch && call->watch->fd >= 0)
        shutdown(call->watch->fd, SHUT_RDWR); /* MHD notices at once, suspended or not */
    buf_free(&call->out);
    rest_caller_gone(call);
    return true;
}

static void heartbeat_due(struct timer *t)
{
    struct call *call = timer_owner(t, struct call, heartbeat);
    if (!call->suspended)
        return;
    /* Keeps proxies from cutting an idle stream, and proves the caller alive. */
    buf_puts(&call->out, ": ping\n\n");
    rest_wake(call);
}

void rest_suspend(struct call *call)
{
    call->suspended = true;
    MHD_suspend_connection(call->conn);
    rest_watch_hangup(call);
    if (call->fmt == FMT_SSE && call->phase == PH_STREAMING && REST.cfg->heartbeat > 0) {
        double due = call->last_write + REST.cfg->heartbeat - now_mono();
        timer_after(&call->heartbeat, due > 0 ? due : 0, heartbeat_due);
    }
}

static void on_frame(struct request *req, const struct frame *f, bool final)
{
    struct call *call = req->owner;
    if (call->fmt == FMT_JSON) {
        if (!final)
            return;
        rest_map_unary(call, f);
        call->reply_ready = true;
        call->done = true;
    } else if (call->phase == PH_WAITING && !call->stream_ready && final &&
               (f->kind == FRAME_TOP_ERROR || f->kind == FRAME_FINAL_ERROR)) {
        rest_map_stream_error(call, f);
        call->reply_ready = true;
        call->done = true;
    } else {
        if (f->kind == FRAME_TOP_ERROR || f->kind == FRAME_FINAL_ERROR) {
            rest_note_error(call, false, rest_error_type_of(f));
            append_error_event(call, rest_error_type_of(f), f->err_message);
        } else {
            append_event(call, f->response.p, f->response.n, false);
        }
        if (call->client_gone)
            return; /* dropped for reading too slowly: req is no longer ours */
        if (!call->stream_ready)
            firstpart_queued(); /* its first part: out before the rest of the batch */
        call->stream_ready = true;
        call->done = final;
    }
    if (final) {
        mux_detach(req);
        call->req = NULL;
    }
    rest_wake(call);
}

static void on_fail(struct request *req, int status, const char *type, const char *message)
{
    struct call *call = req->owner;
    rest_note_error(call, true, type);
    if (call->phase == PH_STREAMING || call->stream_ready) {
        append_error_event(call, type, message);
        if (call->client_gone)
            return; /* dropped for reading too slowly: req is no longer ours */
        call->stream_ready = true;
    } else {
        call->reply_status = status;
        rest_error_body(&call->reply, type, message);
        call->reply_ready = true;
    }
    call->done = true;
    mux_detach(req);
    call->req = NULL;
    rest_wake(call);
}

static const struct request_ops call_ops = {on_frame, on_fail};

static ssize_t stream_reader(void *cls, uint64_t pos, char *out, size_t max)
{
    (void)pos;
    struct call *call = cls;
    if (call->out.len) {
        size_t n = call->out.len < max ? call->out.len : max;
        memcpy(out, buf_ptr(&call->out), n);
        buf_consume(&call->out, n);
        if (!call->out.len && call->out.cap > 1024 * 1024)
            buf_free(&call->out);
        call->last_write = now_mono();
        if (!call->first_part)
            call->first_part = call->last_write;
        call->bytes_out += n;
        firstpart_wrote();
        return (ssize_t)n;
    }
    if (call->client_gone)
        return MHD_CONTENT_READER_END_WITH_ERROR;
    if (call->done)
        return MHD_CONTENT_READER_END_OF_STREAM;
    /* Never return 0 without suspending: MHD would spin (libraries.md a2). */
    rest_suspend(call);
    return 0;
}

static enum MHD_Result respond(struct call *call)
{
    struct MHD_Connection *c = call->conn;
    if (call->client_gone)
        return MHD_NO;
    if (call->reply_ready) {
        call->bytes_out = call->reply.len;
        return rest_queue_reply(call);
    }
    if (call->stream_ready) {
        struct MHD_Response *r =
            MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, STREAM_BLOCK, stream_reader, call, NULL);
        if (!r)
            return MHD_NO;
        if (call->fmt == FMT_SSE) {
            MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
            MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
        } else {
            MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "application/x-ndjson");
        }
        MHD_add_response_header(r, "X-Accel-Buffering", "no");
        call->phase = PH_STREAMING;
        call->last_write = now_mono();
        enum MHD_Result ret = MHD_queue_response(c, MHD_HTTP_OK, r);
        MHD_destroy_response(r);
        return ret;
    }
    rest_suspend(call); /* woken without news: wait again */
    return MHD_YES;
}

/* The object body with "workspace":ws as its first member. */
static void with_workspace(struct buf *out, const char *body, size_t len, const char *ws)
{
    size_t open = json_skip_ws(body, 0, len) + 1; /* past '{': the body is an object */
    bool empty = json_skip_ws(body, open, len) < len && body[json_skip_ws(body, open, len)] == '}';
    buf_append(out, body, open);
    buf_puts(out, "\"workspace\":");
    buf_json_string(out, ws, strlen(ws));
    if (!empty)
        buf_puts(out, ",");
    buf_append(out, body + open, len - open);
}

/* The per-caller policy: the call's service, flow, operation and workspace (a pinned
 * caller's replaces *workspace). */
static bool call_refused(const struct call *call, const cJSON *root, const char **workspace, struct refusal *no)
{
    const cJSON *op = rest_last_member(root, "operation"), *ws = rest_last_member(root, "workspace");
    struct policy_call pc = {call->kind, call->route == R_FLOW_SERVICE ? call->flow : NULL,
                             cJSON_IsString(op) ? op->valuestring : NULL, cJSON_IsString(ws) ? ws->valuestring : NULL,
                             NULL};
    return !policy_check_call(call->who, &pc, workspace, no);
}

static enum MHD_Result start_call(struct call *call)
{
    struct MHD_Connection *c = call->conn;
    guard_release(&call->hold); /* the body is in: no longer being received */
    if (call->too_busy) {
        rest_note_error(call, true, "too-busy");
        return rest_queue_too_busy(c);
    }
    if (call->too_large) {
        char msg[128];
        snprintf(msg, sizeof msg, "request body is larger than --max-body (%zu bytes)", REST.cfg->max_body);
        rest_note_error(call, true, "payload-too-large");
        return rest_queue_error(c, 413, "payload-too-large", msg, NULL);
    }
    const char *body = call->body.len ? buf_ptr(&call->body) : "";
    cJSON *root = NULL;
    const char *why = json_body_check(body, call->body.len, &root);
    if (why) {
        char msg[128];
        snprintf(msg, sizeof msg, "request body %s", why);
        rest_note_error(call, true, "bad-request");
        return rest_queue_error(c, 400, "bad-request", msg, NULL);
    }
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        rest_note_error(call, true, "bad-request");
        return rest_queue_error(c, 400, "bad-request", "request body must be a JSON object", NULL);
    }
    call->fmt = rest_format_of(MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_ACCEPT), root);
    const cJSON *ws = rest_last_member(root, "workspace");
    const char *workspace = cJSON_IsString(ws) ? ws->valuestring : REST.cfg->workspace ? REST.cfg->workspace : "";
    struct refusal no;
    if (call_refused(call, root, &workspace, &no)) {
        cJSON_Delete(root);
        rest_note_error(call, true, no.type);
        return rest_queue_error(c, no.status, no.type, no.message, NULL);
    }

    call->phase = PH_WAITING;
    /* /api/v1/{kind} (iam aside): the HEAD gateway writes the resolved workspace into
     * the body it forwards (registry_endpoint.py); the backend sees the same here. */
    struct buf filled;
    buf_init(&filled, 0);
    if (call->route == R_KIND && strcmp(call->kind, "iam") && workspace[0] && !rest_last_member(root, "workspace")) {
        with_workspace(&filled, body, call->body.len, workspace);
        body = buf_ptr(&filled);
    }
    call->req = mux_new(call->kind, call->route == R_FLOW_SERVICE ? call->flow : NULL, workspace, body,
                        filled.len ? filled.len : call->body.len, &call_ops, call);
    buf_free(&filled);
    call->req->caller = call->watch ? &call->watch->caller : NULL;
    snprintf(call->upstream_id, sizeof call->upstream_id, "%s", call->req->id);
    cJSON_Delete(root);
    buf_free(&call->body);
    size_t blen = 0; /* a forward caller's gateway identity is its Bearer (--policy) */
    const char *bearer = call->who ? rest_bearer(c, &blen) : NULL;
    mux_submit_as(call->req, call->who, bearer, blen);
    return respond(call);
}

/* The first request of a connection is for the route the listener decided; later
 * ones (kept alive) are mapped here. */
/* The pass-through routes are decided on the path as sent (passpath.c), for every
 * request of a connection: in the decoded url, %2F cannot be told from '/' nor
 * %2e%2e from "..".  (The listener decided a first request the same way.) */
static enum route route_of_request(struct conn_watch *cw, const char *url, const char *method, struct call *probe,
                                   char *path, size_t cap)
{
    if (cw && cw->admin)
        return rest_admin_route_of(url);
    const char *raw = cw && cw->raw_uri ? cw->raw_uri : url;
    const char *q = strchr(raw, '?');
    struct passpath pp;
    switch (passpath_route(method, (struct span){raw, q ? (size_t)(q - raw) : strlen(raw)}, path, cap, &pp)) {
    case PASSPATH_OK:
        probe->pass_route = (int)pp.route;
        return R_PASS;
    case PASSPATH_BAD_PATH:
        probe->reject = (struct reject){400, "bad-path", pp.why, NULL};
        return R_REFUSED;
    case PASSPATH_BAD_METHOD:
        probe->reject = (struct reject){405, "method-not-allowed",
                                        pp.allow[0] == 'P' ? "use POST" : "use GET or HEAD", pp.allow};
        return R_REFUSED;
    case PASSPATH_TOO_LONG:
        probe->reject = (struct reject){414, "uri-too-long", "the request target is too long", NULL};
        return R_REFUSED;
    default:
        return rest_route_of(url, raw, probe);
    }
}

void rest_call_init(struct call *call, struct MHD_Connection *c, struct conn_watch *cw, const char *url,
                    const char *method)
{
    call->conn = c;
    call->started = now_mono();
    snprintf(call->method, sizeof call->method, "%s", method);
    call->path = strdup(url);
    buf_init(&call->body, 0);
    buf_init(&call->reply, 0);
    buf_init(&call->out, 0);
    call->watch = cw;
    if (cw)
        cw->call = call;
    list_add_tail(&REST.calls, &call->node);
    REST.ncalls++;
    if (REST.ncalls > REST.peak_calls)
        REST.peak_calls = REST.ncalls;
}

/* After the head: what is answered at once, or the call whose body is read next. */
static enum MHD_Result call_begins(struct MHD_Connection *c, struct conn_watch *cw, const char *url,
                                   const char *method, struct call *probe, const struct framing *fr,
                                   const struct reject *rj, void **con_cls)
{
    unsigned long long clen = fr->n_cl ? fr->cl : 0;
    if (clen > REST.cfg->max_body) {
        char msg[128];
        snprintf(msg, sizeof msg, "request body is larger than --max-body (%zu bytes)", REST.cfg->max_body);
        rest_request_in(cw);
        return rest_queue_error(c, 413, "payload-too-large", msg, NULL);
    }
    bool has_body = clen > 0 || fr->te_chunked;
    /* Answering before a body is read closes the connection under a client that is
     * still writing it (EPIPE instead of our status): read small bodies first. */
    if (rj->status && !has_body) {
        rest_request_in(cw);
        return rest_queue_error(c, rj->status, rj->type, rj->message, rj->allow);
    }
    rest_await_body(cw);
    struct call *call = calloc(1, sizeof *call);
    if (!call)
        return MHD_NO;
    rest_call_init(call, c, cw, url, method);
    call->route = probe->route;
    call->pass_route = probe->pass_route;
    memcpy(call->kind, probe->kind, sizeof call->kind);
    memcpy(call->flow, probe->flow, sizeof call->flow);
    call->who = probe->who;
    call->reject = *rj;
    if (rj->message == probe->why) { /* probe is the caller's: keep the message with the call */
        memcpy(call->why, probe->why, sizeof call->why);
        call->reject.message = call->why;
    }
    *con_cls = call;
    return MHD_YES;
}

/* A request's head: framing, admission, route. */
static enum MHD_Result first_part(struct MHD_Connection *c, const char *url, const char *method, void **con_cls)
{
    struct conn_watch *cw = rest_conn_watch_of(c);
    struct refusal first = {0, NULL, ""};
    if (cw) { /* for the first request alone */
        first = cw->first_refusal;
        cw->first_refusal.status = 0;
    }
    struct call probe;
    memset(&probe, 0, sizeof probe);
    char path[PASSPATH_MAX];
    enum route route = route_of_request(cw, url, method, &probe, path, sizeof path);
    struct framing fr;
    const struct reject *bad = rest_framing_reject(c, &fr);
    if (bad) { /* where the body ends is unknowable: answer, and MHD closes */
        rest_request_in(cw);
        rest_log_refusal(method, url, NULL, bad->status, bad->type);
        return rest_queue_error(c, bad->status, bad->type, bad->message, NULL);
    }
    struct admission v;
    rest_admit(c, cw, cw && cw->admin ? rest_admin_rule(route) : rest_route_rule(route, probe.pass_route), &v);
    if (!v.admitted) {
        rest_request_in(cw);
        rest_log_refusal(method, url, NULL, v.refusal.status, v.refusal.type);
        return rest_queue_refusal(c, &v.refusal);
    }
    if (first.status) {
        /* The door's answer to this connection's first request (listener.c): a WebSocket
         * upgrade turned down (ws.c), a head refused (access_head_refused) */
        rest_request_in(cw);
        rest_log_refusal(method, url, v.caller.name, first.status, first.type);
        return rest_queue_error(c, first.status, first.type, first.message, NULL);
    }
    struct reject rj;
    enum route_plan plan = rest_route_plan(&route, method, &probe, &rj);
    const char *pinned = NULL;
    if (rest_route_refused(c, cw, plan, route, probe.pass_route, &v, &pinned)) {
        rest_request_in(cw);
        rest_log_refusal(method, url, v.caller.name, v.refusal.status, v.refusal.type);
        return rest_queue_refusal(c, &v.refusal);
    }
    switch (plan) {
    case PLAN_PASS:
        rest_request_in(cw); /* the upload is paced by the gateway, bounded by the call's deadline */
        return rest_start_pass(c, cw, url, path, method, probe.pass_route, &fr, &v.caller, pinned, con_cls);
    case PLAN_STATUS:
        rest_request_in(cw);
        return rest_serve_status(c, route);
    case PLAN_SHUTDOWN:
        rest_request_in(cw);
        return rest_serve_shutdown(c);
    default:
        probe.who = v.caller.name;
        probe.route = route;
        return call_begins(c, cw, url, method, &probe, &fr, &rj, con_cls);
    }
}

/* A piece of a call's body. */
static void body_part(struct call *call, const char *data, size_t size)
{
    call->bytes_in += size;
    if (call->watch)
        guard_progress(&call->watch->deadline, size);
    if (call->too_large || call->too_busy || call->reject.status)
        return;
    if (call->body.len + size > REST.cfg->max_body) {
        call->too_large = true; /* keep reading, answer 413 at the end */
        buf_free(&call->body);
        guard_release(&call->hold);
    } else if (!guard_hold(&call->hold, call->body.len + size)) {
        call->too_busy = true; /* the same, 503 */
        buf_free(&call->body);
        guard_release(&call->hold);
    } else {
        buf_append(&call->body, data, size);
    }
}

enum MHD_Result rest_on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                const char *version, const char *upload_data, size_t *upload_data_size,
                                void **con_cls)
{
    (void)cls;
    (void)version;
    struct call *call = *con_cls;
    if (!call)
        return first_part(c, url, method, con_cls);
    if (call->route == R_PASS)
        return rest_pass_request_data(call, upload_data, upload_data_size);
    if (*upload_data_size) {
        body_part(call, upload_data, *upload_data_size);
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (call->phase == PH_BODY)
        rest_request_in(call->watch);
    if (call->phase == PH_BODY && call->reject.status) {
        call->phase = PH_DONE;
        rest_note_error(call, true, call->reject.type);
        return rest_queue_error(c, call->reject.status, call->reject.type, call->reject.message,
                                call->reject.allow);
    }
    if (call->phase == PH_BODY)
        return start_call(call);
    return respond(call);
}

/* The call's line in the access log, and its observation in the histograms. */
static void finish_record(struct MHD_Connection *c, const struct call *call, enum MHD_RequestTerminationCode toe)
{
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_HTTP_STATUS);
    int status = ci ? (int)ci->http_status : 0;
    bool aborted = toe != MHD_REQUEST_TERMINATED_COMPLETED_OK || call->client_gone || call->pass_failed;
    enum call_outcome o = aborted && !call->pass_failed ? CALL_ABORTED
                        : call->pass_failed && pass_truncated(call->pass) ? CALL_TRUNCATED
                        : call->own_error || call->pass_failed ? CALL_FAILED
                        : call->gateway_error || status >= 400 ? CALL_GATEWAY_ERROR : CALL_OK;
    const char *service = call->route == R_PASS ? pass_route_name((enum pass_route)call->pass_route)
                        : call->kind[0] ? call->kind : NULL;
    struct call_record r = {
        .frontend = "rest",
        .caller = call->who,
        .method = call->method,
        .route = call->path,
        .service = service,
        .flow = call->route == R_FLOW_SERVICE ? call->flow : NULL,
        .status = status,
        .outcome = o,
        .error = call->error[0] ? call->error : NULL,
        .bytes_in = call->bytes_in,
        .bytes_out = call->bytes_out,
        .started = call->started,
        .first_part = call->fmt != FMT_JSON && call->route != R_PASS ? call->first_part : 0,
        .upstream_id = call->upstream_id[0] ? call->upstream_id : NULL,
    };
    callrec_finish(&r);
}

void rest_on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    struct conn_watch *cw = rest_conn_watch_of(c);
    if (cw && toe == MHD_REQUEST_TERMINATED_COMPLETED_OK)
        rest_await_head(cw, now_mono()); /* kept alive: the next head has the same deadline */
    struct call *call = *con_cls;
    if (!call)
        return;
    if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK)
        log_debug("call ended early (MHD code %d)", (int)toe);
    finish_record(c, call, toe);
    pass_end(call->pass, toe != MHD_REQUEST_TERMINATED_COMPLETED_OK || call->client_gone);
    timer_cancel(&call->heartbeat);
    if (call->watch)
        call->watch->call = NULL;
    mux_detach(call->req);
    list_del(&call->node);
    REST.ncalls--;
    if (!REST.ncalls && REST.peak_calls >= 256) {
        /* Connection pools are small heap blocks (16 KiB, see rest_init): after a burst
         * of thousands of calls, hand the freed heap back to the system. */
        REST.peak_calls = 0;
        malloc_trim(0);
    }
    guard_release(&call->hold);
    buf_free(&call->body);
    buf_free(&call->reply);
    buf_free(&call->out);
    free(call->path);
    free(call);
    *con_cls = NULL;
}

void rest_fail_all(int status, const char *type, const char *message)
{
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &REST.calls) {
        struct call *call = list_entry(pos, struct call, node);
        if (call->req && call->req->owner == call)
            on_fail(call->req, status, type, message);
    }
}

