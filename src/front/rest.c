#include "rest.h"
#include "access.h"
#include "buf.h"
#include "callrec.h"
#include "envelope.h"
#include "list.h"
#include "log.h"
#include "loop.h"
#include "frontend.h"
#include "health.h"
#include "mux.h"
#include "passthrough.h"
#include "redact.h"
#include "upstream.h"
#include "util.h"
#include <cjson/cJSON.h>
#include <errno.h>
#include <libwebsockets.h>
#include <malloc.h>
#include <microhttpd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define STREAM_BLOCK (64 * 1024)
#define PASS_POOL (512 * 1024)

enum route {
    R_NOT_FOUND, R_HEALTHZ, R_READYZ, R_STATUS, R_METRICS, R_KIND, R_FLOW_SERVICE, R_UNSUPPORTED, R_SOCKET,
    R_PASS,
};
enum fmt { FMT_JSON, FMT_NDJSON, FMT_SSE };
enum phase { PH_BODY, PH_WAITING, PH_STREAMING, PH_DONE };

/* An answer decided from the request head alone. */
struct reject {
    unsigned status;
    const char *type, *message, *allow;
};

struct call {
    struct MHD_Connection *conn;
    struct reject reject;      /* read and discard the body, then answer this */
    enum route route;
    char kind[256];
    char flow[256];
    struct buf body;
    bool too_large;
    enum phase phase;
    enum fmt fmt;
    struct request *req;
    bool suspended;
    bool client_gone;
    /* A whole reply decided before headers went out (unary, or an immediate error). */
    bool reply_ready;
    int reply_status;
    struct buf reply;
    /* Streaming: bytes not yet handed to MHD, and whether the last one is in. */
    bool stream_ready;
    struct buf out;
    bool done;
    double last_write;
    struct timer heartbeat; /* SSE heartbeat */
    struct conn_watch *watch;   /* its connection's hang-up watch */
    /* A pass-through call (passthrough.c): the gateway's answer relayed as it comes. */
    int pass_route;
    struct pass *pass;
    bool pass_failed;          /* cut short after the head */
    /* For the access log and the histograms (callrec.c). */
    double started, first_part;
    uint64_t bytes_in, bytes_out;
    char method[8];
    char *path;
    char upstream_id[48];
    char error[64];            /* the error type, if the call had one */
    bool own_error;            /* tgbridge answered with an error of its own */
    bool gateway_error;        /* the gateway answered with an error */
    struct list node;
};

static void note_error(struct call *call, bool own, const char *type)
{
    if (own)
        call->own_error = true;
    else
        call->gateway_error = true;
    if (!call->error[0] && type)
        snprintf(call->error, sizeof call->error, "%s", type);
}

static struct {
    const struct config *cfg;
    /* Two servers, the same handlers: one for calls (small pools, cheap per request),
     * one for the connections the listener routes to the pass-through routes, whose
     * bodies stream in pieces as large as the pool allows (BENCHMARKS.md). */
    struct MHD_Daemon *daemons[2];
    struct timer pump_timer;
    int hup_epfd;
    double accepted_at;  /* of the connection being added (rest_add_connection) */
    const struct refusal *first_refusal;
    size_t nconns;
    struct list calls;
    size_t ncalls, peak_calls;
} R;

struct conn_watch;
static void pump(void);
static void pump_timer(struct timer *t);

/* Every error body tgbridge writes; the message may quote the gateway. */
static void json_error_body(struct buf *b, const char *type, const char *message)
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

static enum MHD_Result queue_json(struct MHD_Connection *c, unsigned status, const char *body, size_t len,
                                  const char *allow)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    if (allow)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, allow);
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

/* 503s are temporary by definition: say when to come back.  The next connection
 * attempt is at most --reconnect-max away. */
static enum MHD_Result queue_503(struct MHD_Connection *c, const char *body, size_t len)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!r)
        return MHD_NO;
    char after[32];
    double secs = R.cfg->reconnect_max < 1 ? 1 : R.cfg->reconnect_max;
    snprintf(after, sizeof after, "%.0f", secs > 60 ? 60 : secs + 0.499);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, after);
    enum MHD_Result ret = MHD_queue_response(c, 503, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result queue_error(struct MHD_Connection *c, unsigned status, const char *type,
                                   const char *message, const char *allow)
{
    struct buf b;
    buf_init(&b, 0);
    json_error_body(&b, type, message);
    enum MHD_Result ret = queue_json(c, status, buf_ptr(&b), b.len, allow);
    buf_free(&b);
    return ret;
}

/* ---- routing ------------------------------------------------------------------ */

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

static enum route match_route(const char *url, struct call *out)
{
    if (!strcmp(url, "/healthz"))
        return R_HEALTHZ;
    if (!strcmp(url, "/readyz"))
        return R_READYZ;
    if (!strcmp(url, "/status"))
        return R_STATUS;
    if (!strcmp(url, "/metrics"))
        return R_METRICS;
    /* The gateway's routes that carry no envelope (reference §2.2, §8.4): relayed. */
    if ((out->pass_route = pass_http_route(url)) >= 0)
        return R_PASS;
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

/* ---- health and status ---------------------------------------------------------- */

static enum MHD_Result serve_status(struct MHD_Connection *c, enum route route)
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

/* ---- the reply mapping (reference §8.2, §11 "Reply mapping") --------------------- */

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
static void map_unary(struct call *call, const struct frame *f)
{
    const char *policy_body;
    int st;
    if (f->kind != FRAME_FINAL)
        note_error(call, false, f->kind == FRAME_FINAL_ERROR || !f->err_type[0] ? "error" : f->err_type);
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

static const char *error_type_of(const struct frame *f)
{
    return f->err_type[0] ? f->err_type : "error";
}

/* Streaming, error as the first frame: a real status (documented in README). */
static void map_stream_error(struct call *call, const struct frame *f)
{
    const char *unused;
    int st = 400;
    note_error(call, false, error_type_of(f));
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
    json_error_body(&call->reply, error_type_of(f), f->err_message);
}

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
    json_error_body(&b, type, message);
    append_event(call, buf_ptr(&b), b.len, true);
    buf_free(&b);
}

/* ---- suspension ------------------------------------------------------------------ */

static void wake(struct call *call)
{
    if (!call->suspended)
        return;
    call->suspended = false;
    MHD_resume_connection(call->conn);
    /* MHD must run after a resume (libraries.md a3).  Not from here: we may be inside
     * MHD's own callbacks; on the next loop turn instead (Taler's "trigger"). */
    timer_after(&R.pump_timer, 0, pump_timer);
}

/* A suspended connection is invisible to MHD, hang-ups included (libraries.md a3,
 * a7).  Each connection's socket sits in our own epoll set for EPOLLRDHUP instead —
 * added once per connection (not per call: that would be two more system calls per
 * keep-alive request), removed when MHD closes it: a caller that goes away is noticed
 * at once, and an idle one costs nothing. */
struct conn_watch {
    int fd;
    bool added;
    bool hung_up;        /* seen while no call was suspended on it */
    struct call *call;   /* the call being served on this connection, if any */
    /* Getting a request in has a deadline (--client-timeout): the head within T of the
     * connection (or of the previous reply), the body at 1 MiB per T after T of grace.
     * Checked lazily: the timer fires at the earliest possible expiry and the body's
     * pace is judged then, so an upload costs no timer work per chunk. */
    enum { CW_HEAD, CW_BODY, CW_SERVING } phase;
    double since;        /* head: when it could start; body: when it started */
    size_t received;     /* body bytes so far */
    struct timer deadline;
    struct refusal first_refusal; /* the listener's answer to its first request, if any */
    struct caller caller;         /* this connection, as the fair queue sees it */
};

static void caller_gone(struct call *call)
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
    wake(call); /* MHD then closes it (respond / stream_reader see client_gone) */
}

/* A caller that lets too much pile up is dropped rather than allowed to grow our
 * memory or to slow the shared socket (README "Failure semantics").  What counts is
 * what waits: a single part larger than the bound still goes to a caller that reads. */
static bool over_budget(struct call *call, size_t more)
{
    if (!call->out.len || call->out.len + more <= R.cfg->max_client_buffer)
        return false;
    log_warn("closing a REST caller that reads too slowly (%zu bytes of its reply waiting, "
             "--max-client-buffer %zu)", call->out.len + more, R.cfg->max_client_buffer);
    health_caller_dropped(DROP_SLOW_READER);
    if (call->watch && call->watch->fd >= 0)
        shutdown(call->watch->fd, SHUT_RDWR); /* MHD notices at once, suspended or not */
    buf_free(&call->out);
    caller_gone(call);
    return true;
}

static void watch_hangup(struct call *call)
{
    struct conn_watch *cw = call->watch;
    if (!cw)
        return;
    if (cw->hung_up) {
        caller_gone(call);
        return;
    }
    if (cw->added)
        return;
    struct epoll_event ev = {.events = EPOLLRDHUP | EPOLLET, .data.ptr = cw};
    if (!epoll_ctl(R.hup_epfd, EPOLL_CTL_ADD, cw->fd, &ev))
        cw->added = true;
}

static void on_hangups(void *arg)
{
    (void)arg;
    struct epoll_event evs[64];
    int n = epoll_wait(R.hup_epfd, evs, 64, 0);
    for (int i = 0; i < n; i++) {
        struct conn_watch *cw = evs[i].data.ptr;
        if (!(evs[i].events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)))
            continue;
        /* Edge-triggered: remember it for a call that suspends later. */
        cw->hung_up = true;
        /* A pass-through call is watched all along: its upload may be under way. */
        if (cw->call && (cw->call->suspended || cw->call->route == R_PASS))
            caller_gone(cw->call);
    }
}

static void request_overdue(struct timer *t)
{
    struct conn_watch *cw = timer_owner(t, struct conn_watch, deadline);
    double T = R.cfg->client_timeout;
    if (cw->phase == CW_BODY) {
        double due = cw->since + T * (1.0 + (double)cw->received / (1024.0 * 1024.0));
        if (now_mono() < due) {
            timer_after(&cw->deadline, due - now_mono(), request_overdue);
            return;
        }
    }
    static struct log_limit limit;
    unsigned long held;
    if (log_limit_ok(&limit, 10, &held))
        log_warn("closing an HTTP connection that sent no complete request %s within --client-timeout (%g s)%s",
                 cw->phase == CW_BODY ? "body (1 MiB per timeout, after one of grace)" : "head", T,
                 held ? "; more since the last report, see tgbridge_callers_dropped_total" : "");
    health_caller_dropped(DROP_CLIENT_TIMEOUT);
    if (cw->fd >= 0)
        shutdown(cw->fd, SHUT_RDWR); /* MHD sees the hang-up and closes it */
}

static void await_head(struct conn_watch *cw, double since)
{
    cw->phase = CW_HEAD;
    cw->since = since;
    timer_after(&cw->deadline, since + R.cfg->client_timeout - now_mono(), request_overdue);
}

static struct conn_watch *conn_watch_of(struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *sc = MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return sc ? sc->socket_context : NULL;
}

/* The head is in; a body may follow. */
static void await_body(struct conn_watch *cw)
{
    if (!cw)
        return;
    cw->phase = CW_BODY;
    cw->since = now_mono();
    cw->received = 0;
    timer_after(&cw->deadline, R.cfg->client_timeout, request_overdue);
}

/* The whole request is in: what follows is ours to answer. */
static void request_in(struct conn_watch *cw)
{
    if (cw && cw->phase != CW_SERVING) {
        cw->phase = CW_SERVING;
        timer_cancel(&cw->deadline);
    }
}

static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    (void)cls;
    struct conn_watch *cw = *socket_context;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        cw = calloc(1, sizeof *cw);
        R.nconns++;
        if (cw) {
            cw->fd = ci ? ci->connect_fd : -1;
            caller_init(&cw->caller);
            await_head(cw, R.accepted_at > 0 ? R.accepted_at : now_mono());
            if (R.first_refusal)
                cw->first_refusal = *R.first_refusal;
        }
        *socket_context = cw;
        return;
    }
    R.nconns--;
    if (!cw)
        return;
    timer_cancel(&cw->deadline);
    if (cw->added)
        epoll_ctl(R.hup_epfd, EPOLL_CTL_DEL, cw->fd, NULL);
    if (cw->call)
        cw->call->watch = NULL;
    free(cw);
    *socket_context = NULL;
}

static void heartbeat_due(struct timer *t)
{
    struct call *call = timer_owner(t, struct call, heartbeat);
    if (!call->suspended)
        return;
    /* Keeps proxies from cutting an idle stream, and proves the caller alive. */
    buf_puts(&call->out, ": ping\n\n");
    wake(call);
}

static void suspend(struct call *call)
{
    call->suspended = true;
    MHD_suspend_connection(call->conn);
    watch_hangup(call);
    if (call->fmt == FMT_SSE && call->phase == PH_STREAMING && R.cfg->heartbeat > 0) {
        double due = call->last_write + R.cfg->heartbeat - now_mono();
        timer_after(&call->heartbeat, due > 0 ? due : 0, heartbeat_due);
    }
}

/* ---- request callbacks from the mux ---------------------------------------------- */

static void on_frame(struct request *req, const struct frame *f, bool final)
{
    struct call *call = req->owner;
    if (call->fmt == FMT_JSON) {
        if (!final)
            return;
        map_unary(call, f);
        call->reply_ready = true;
        call->done = true;
    } else if (call->phase == PH_WAITING && !call->stream_ready && final &&
               (f->kind == FRAME_TOP_ERROR || f->kind == FRAME_FINAL_ERROR)) {
        map_stream_error(call, f);
        call->reply_ready = true;
        call->done = true;
    } else {
        if (f->kind == FRAME_TOP_ERROR || f->kind == FRAME_FINAL_ERROR) {
            note_error(call, false, error_type_of(f));
            append_error_event(call, error_type_of(f), f->err_message);
        } else {
            append_event(call, f->response.p, f->response.n, false);
        }
        if (call->client_gone)
            return; /* dropped for reading too slowly: req is no longer ours */
        if (!call->stream_ready)
            loop_flush_soon(); /* its first part: out before the rest of the batch */
        call->stream_ready = true;
        call->done = final;
    }
    if (final) {
        mux_detach(req);
        call->req = NULL;
    }
    wake(call);
}

static void on_fail(struct request *req, int status, const char *type, const char *message)
{
    struct call *call = req->owner;
    note_error(call, true, type);
    if (call->phase == PH_STREAMING || call->stream_ready) {
        append_error_event(call, type, message);
        if (call->client_gone)
            return; /* dropped for reading too slowly: req is no longer ours */
        call->stream_ready = true;
    } else {
        call->reply_status = status;
        json_error_body(&call->reply, type, message);
        call->reply_ready = true;
    }
    call->done = true;
    mux_detach(req);
    call->req = NULL;
    wake(call);
}

static const struct request_ops call_ops = {on_frame, on_fail};

/* ---- MHD glue -------------------------------------------------------------------- */

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
        loop_flush_done();
        return (ssize_t)n;
    }
    if (call->client_gone)
        return MHD_CONTENT_READER_END_WITH_ERROR;
    if (call->done)
        return MHD_CONTENT_READER_END_OF_STREAM;
    /* Never return 0 without suspending: MHD would spin (libraries.md a2). */
    suspend(call);
    return 0;
}

static enum MHD_Result respond(struct call *call)
{
    struct MHD_Connection *c = call->conn;
    if (call->client_gone)
        return MHD_NO;
    if (call->reply_ready) {
        call->phase = PH_DONE;
        call->bytes_out = call->reply.len;
        if (call->reply_status == 503)
            return queue_503(c, buf_ptr(&call->reply), call->reply.len);
        return queue_json(c, (unsigned)call->reply_status, buf_ptr(&call->reply), call->reply.len, NULL);
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
    suspend(call); /* woken without news: wait again */
    return MHD_YES;
}

/* ---- what a request must be before anything else looks at it ------------------- */

/* RFC 9112 §6: the body's length must be unambiguous, or a proxy in front and we
 * would disagree on where this request ends and the next begins. */
struct framing {
    int n_cl, n_te;
    bool cl_bad;
    unsigned long long cl;
    bool te_chunked;
};

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
static const struct reject *framing_reject(struct MHD_Connection *c, struct framing *f)
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

/* The browser rules and the local client token (access.c), for this request. */
static bool refused(struct MHD_Connection *c, bool check_token, struct refusal *r)
{
    const char *origin = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Origin");
    const char *host = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_HOST);
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    bool unix_peer = ci && ci->client_addr && ci->client_addr->sa_family == AF_UNIX;
    if (access_browser_refused(origin, host, unix_peer, r))
        return true;
    if (!check_token || !access_token_required())
        return false;
    const char *auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    size_t tlen = 0;
    const char *tok = auth ? access_bearer(auth, strlen(auth), &tlen) : NULL;
    if (access_token_ok(tok, tok ? tlen : 0))
        return false;
    r->status = 401;
    r->type = "auth-required";
    snprintf(r->message, sizeof r->message, "auth failure");
    return true;
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
static const cJSON *last_member(const cJSON *obj, const char *name)
{
    const cJSON *found = NULL, *it;
    cJSON_ArrayForEach(it, obj)
        if (it->string && !strcmp(it->string, name))
            found = it;
    return found;
}

static enum MHD_Result start_call(struct call *call)
{
    struct MHD_Connection *c = call->conn;
    if (call->too_large) {
        char msg[128];
        snprintf(msg, sizeof msg, "request body is larger than --max-body (%zu bytes)", R.cfg->max_body);
        note_error(call, true, "payload-too-large");
        return queue_error(c, 413, "payload-too-large", msg, NULL);
    }
    const char *body = call->body.len ? buf_ptr(&call->body) : "";
    cJSON *root = NULL;
    const char *why = json_body_check(body, call->body.len, &root);
    if (why) {
        char msg[128];
        snprintf(msg, sizeof msg, "request body %s", why);
        note_error(call, true, "bad-request");
        return queue_error(c, 400, "bad-request", msg, NULL);
    }
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        note_error(call, true, "bad-request");
        return queue_error(c, 400, "bad-request", "request body must be a JSON object", NULL);
    }
    const char *accept = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_ACCEPT);
    if (accept_has(accept, "text/event-stream"))
        call->fmt = FMT_SSE;
    else if (accept_has(accept, "application/x-ndjson"))
        call->fmt = FMT_NDJSON;
    else if (cJSON_IsTrue(last_member(root, "streaming")) && !accept_only_json(accept))
        call->fmt = FMT_NDJSON;
    const cJSON *ws = last_member(root, "workspace");
    const char *workspace = cJSON_IsString(ws) ? ws->valuestring : R.cfg->workspace ? R.cfg->workspace : "";

    call->phase = PH_WAITING;
    call->req = mux_new(call->kind, call->route == R_FLOW_SERVICE ? call->flow : NULL, workspace, body,
                        call->body.len, &call_ops, call);
    call->req->caller = call->watch ? &call->watch->caller : NULL;
    snprintf(call->upstream_id, sizeof call->upstream_id, "%s", call->req->id);
    cJSON_Delete(root);
    buf_free(&call->body);
    mux_submit(call->req);
    return respond(call);
}

/* ---- pass-through calls (passthrough.c) ------------------------------------------ */

static void pass_head(void *owner) { wake(owner); }
static void pass_data(void *owner) { wake(owner); }
static void pass_room(void *owner) { wake(owner); }

static void pass_fail(void *owner, int status, const char *type, const char *message)
{
    struct call *call = owner;
    note_error(call, true, type);
    if (status) {
        call->reply_status = status;
        json_error_body(&call->reply, type, message);
        call->reply_ready = true;
    } else {
        call->pass_failed = true; /* the body is cut short: the caller sees it end early */
    }
    wake(call);
}

static const struct pass_ops pass_call_ops = {pass_head, pass_data, pass_room, pass_fail};

static ssize_t pass_reader(void *cls, uint64_t pos, char *out, size_t max)
{
    (void)pos;
    struct call *call = cls;
    size_t n = call->pass ? pass_take(call->pass, out, max) : 0;
    if (n) {
        call->bytes_out += n;
        return (ssize_t)n;
    }
    if (call->client_gone || call->pass_failed || !call->pass)
        return MHD_CONTENT_READER_END_WITH_ERROR;
    if (pass_done(call->pass))
        return MHD_CONTENT_READER_END_OF_STREAM;
    suspend(call); /* never 0 without suspending (libraries.md a2) */
    return 0;
}

/* The gateway's status and relayed headers, and its body as it comes. */
static enum MHD_Result respond_pass(struct call *call)
{
    struct MHD_Connection *c = call->conn;
    if (call->client_gone)
        return MHD_NO;
    if (call->reply_ready) {
        call->phase = PH_DONE;
        if (call->reply_status == 503)
            return queue_503(c, buf_ptr(&call->reply), call->reply.len);
        return queue_json(c, (unsigned)call->reply_status, buf_ptr(&call->reply), call->reply.len, NULL);
    }
    if (!pass_status(call->pass)) {
        suspend(call);
        return MHD_YES;
    }
    long long len = pass_body_length(call->pass);
    struct MHD_Response *r = MHD_create_response_from_callback(len >= 0 ? (uint64_t)len : MHD_SIZE_UNKNOWN,
                                                               STREAM_BLOCK, pass_reader, call, NULL);
    if (!r)
        return MHD_NO;
    const char *name, *value;
    for (size_t i = 0; pass_response_header(call->pass, i, &name, &value); i++)
        MHD_add_response_header(r, name, value);
    call->phase = PH_STREAMING;
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)pass_status(call->pass), r);
    MHD_destroy_response(r);
    return ret;
}

struct query_build {
    struct buf *out;
    bool first;
};

/* MHD hands the path and query decoded: encoded again (the gateway decodes what it
 * reads, so this is the same request). */
static void put_encoded(struct buf *b, const char *s, bool keep_slash)
{
    char *e = keep_slash ? url_encode_path(s) : url_encode(s);
    if (!e)
        abort();
    buf_puts(b, e);
    free(e);
}

static enum MHD_Result query_arg(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
    (void)kind;
    struct query_build *q = cls;
    buf_puts(q->out, q->first ? "?" : "&");
    q->first = false;
    put_encoded(q->out, key, false);
    if (value) {
        buf_puts(q->out, "=");
        put_encoded(q->out, value, false);
    }
    return MHD_YES;
}

/* The request headers a pass-through relays: what describes the body and what the
 * caller accepts; never hop-by-hop ones, cookies, or the caller's credentials. */
static const char *const pass_request_headers[] = {
    "content-type", "accept", "accept-language", "if-none-match", "if-modified-since", "range", "if-range",
};

/* Whose credential goes to the gateway.  The auth routes act on the caller's own
 * identity (login, bootstrap, change-password): the caller's Authorization is sent,
 * never tgbridge's -- except a Bearer that is the local client token, which is
 * tgbridge's to check and not the gateway's business.  Every other route is called
 * as tgbridge. */
static char *pass_authorization(struct MHD_Connection *c, int route, bool *local_ok)
{
    const char *auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    size_t tlen = 0;
    const char *tok = auth ? access_bearer(auth, strlen(auth), &tlen) : NULL;
    bool bearer_is_local = access_token_required() && access_token_ok(tok, tok ? tlen : 0);
    const char *alt = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Tgbridge-Token");
    *local_ok = !access_token_required() || bearer_is_local || (alt && access_token_ok(alt, strlen(alt)));
    if (route == PASS_AUTH)
        return auth && !bearer_is_local ? strdup(auth) : NULL;
    const char *t = R.cfg->token;
    if (!t || !*t)
        return NULL;
    size_t n = strlen(t) + 8;
    char *v = malloc(n);
    if (!v)
        abort();
    snprintf(v, n, "Bearer %s", t);
    return v;
}

static enum MHD_Result start_pass(struct MHD_Connection *c, struct conn_watch *cw, const char *url,
                                  const char *method, const struct call *probe, const struct framing *fr,
                                  void **con_cls)
{
    bool local_ok;
    char *authorization = pass_authorization(c, probe->pass_route, &local_ok);
    if (!local_ok) {
        free(authorization);
        return queue_json(c, 401, "{\"error\":\"auth failure\"}", strlen("{\"error\":\"auth failure\"}"), NULL);
    }
    struct buf target;
    buf_init(&target, 0);
    put_encoded(&target, url, true);
    struct query_build q = {&target, true};
    MHD_get_connection_values(c, MHD_GET_ARGUMENT_KIND, query_arg, &q);
    struct pass_header hdrs[sizeof pass_request_headers / sizeof *pass_request_headers];
    size_t nh = 0;
    for (size_t i = 0; i < sizeof pass_request_headers / sizeof *pass_request_headers; i++) {
        const char *v = MHD_lookup_connection_value(c, MHD_HEADER_KIND, pass_request_headers[i]);
        if (v)
            hdrs[nh++] = (struct pass_header){pass_request_headers[i], (char *)v};
    }
    struct pass_request rq = {
        .route = (enum pass_route)probe->pass_route,
        .method = method,
        .target = buf_ptr(&target),
        .content_length = fr->n_cl ? (long long)fr->cl : fr->te_chunked ? -1 : 0,
        .headers = hdrs,
        .nheaders = nh,
        .authorization = authorization,
    };
    struct call *call = calloc(1, sizeof *call);
    if (!call)
        abort();
    int status = 0;
    const char *type = NULL;
    char msg[300];
    call->pass = pass_start(&rq, &pass_call_ops, call, &status, &type, msg, sizeof msg);
    if (authorization) {
        explicit_bzero(authorization, strlen(authorization));
        free(authorization);
    }
    buf_free(&target);
    if (!call->pass) {
        free(call);
        return status == 503 ? queue_error(c, 503, type, msg, NULL) : queue_error(c, (unsigned)status, type, msg, NULL);
    }
    call->route = R_PASS;
    call->pass_route = probe->pass_route;
    call->conn = c;
    call->started = now_mono();
    snprintf(call->method, sizeof call->method, "%s", method);
    call->path = strdup(url);
    call->phase = PH_BODY;
    buf_init(&call->body, 0);
    buf_init(&call->reply, 0);
    buf_init(&call->out, 0);
    call->watch = cw;
    if (cw)
        cw->call = call;
    list_add_tail(&R.calls, &call->node);
    R.ncalls++;
    if (R.ncalls > R.peak_calls)
        R.peak_calls = R.ncalls;
    *con_cls = call;
    watch_hangup(call);
    return MHD_YES;
}

/* The upload goes on as the gateway takes it: what does not fit waits in MHD, with
 * the connection suspended, until there is room (pass_room). */
static enum MHD_Result pass_request_data(struct call *call, const char *data, size_t *size)
{
    if (call->client_gone)
        return MHD_NO; /* hung up while suspended (watch_hangup): MHD closes it */
    if (*size) {
        size_t took = call->reply_ready ? *size : pass_put(call->pass, data, *size);
        *size -= took;
        call->bytes_in += took;
        if (*size)
            suspend(call);
        return MHD_YES;
    }
    if (call->phase == PH_BODY) {
        pass_put_end(call->pass);
        call->phase = PH_WAITING;
    }
    return respond_pass(call);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
    (void)cls;
    (void)version;
    struct call *call = *con_cls;
    if (!call) {
        struct conn_watch *cw = conn_watch_of(c);
        struct call probe;
        memset(&probe, 0, sizeof probe);
        enum route route = match_route(url, &probe);
        bool get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
        struct framing fr;
        const struct reject *bad = framing_reject(c, &fr);
        if (bad) { /* where the body ends is unknowable: answer, and MHD closes */
            request_in(cw);
            return queue_error(c, bad->status, bad->type, bad->message, NULL);
        }
        bool probe_route = route == R_HEALTHZ || route == R_READYZ || route == R_METRICS;
        struct refusal no;
        /* The auth routes carry the caller's own credential: start_pass checks the
         * local token there. */
        bool own_credential = route == R_PASS && probe.pass_route == PASS_AUTH;
        if (!probe_route && refused(c, !own_credential, &no)) {
            request_in(cw);
            if (no.status == 401) /* the gateway's own answer (ref §3.2) */
                return queue_json(c, 401, "{\"error\":\"auth failure\"}", strlen("{\"error\":\"auth failure\"}"), NULL);
            return queue_error(c, no.status, no.type, no.message, NULL);
        }
        if ((route == R_SOCKET || route == R_UNSUPPORTED) && get && cw && cw->first_refusal.status) {
            /* A WebSocket upgrade the listener turned down (listener.c, ws.c) */
            request_in(cw);
            return queue_error(c, cw->first_refusal.status, cw->first_refusal.type, cw->first_refusal.message, NULL);
        }
        struct reject rj = {0};
        switch (route) {
        case R_NOT_FOUND:
            rj = (struct reject){404, "not-found", "no such route", NULL};
            break;
        case R_UNSUPPORTED:
            rj = (struct reject){400, "bad-request",
                                 "the bulk import and export routes are WebSocket upgrades, as the first "
                                 "request of their connection", NULL};
            break;
        case R_PASS:
            request_in(cw); /* the upload is paced by the gateway, bounded by the call's deadline */
            return start_pass(c, cw, url, method, &probe, &fr, con_cls);
        case R_SOCKET:
            if (get) {
                rj = (struct reject){400, "bad-request",
                                     "GET /api/v1/socket is a WebSocket upgrade, as the first request of its "
                                     "connection", NULL};
                break;
            }
            /* POST /api/v1/socket is the kind "socket" at the gateway too (ref §2.2). */
            route = R_KIND;
            snprintf(probe.kind, sizeof probe.kind, "socket");
            break;
        case R_HEALTHZ: case R_READYZ: case R_STATUS: case R_METRICS:
            if (get) {
                request_in(cw);
                return serve_status(c, route);
            }
            rj = (struct reject){405, "method-not-allowed", "use GET", "GET, HEAD"};
            break;
        default:
            break;
        }
        if (!rj.status && strcmp(method, "POST"))
            rj = (struct reject){405, "method-not-allowed", "use POST", "POST"};
        unsigned long long clen = fr.n_cl ? fr.cl : 0;
        if (clen > R.cfg->max_body) {
            char msg[128];
            snprintf(msg, sizeof msg, "request body is larger than --max-body (%zu bytes)", R.cfg->max_body);
            request_in(cw);
            return queue_error(c, 413, "payload-too-large", msg, NULL);
        }
        bool has_body = clen > 0 || fr.te_chunked;
        /* Answering before a body is read closes the connection under a client that is
         * still writing it (EPIPE instead of our status): read small bodies first. */
        if (rj.status && !has_body) {
            request_in(cw);
            return queue_error(c, rj.status, rj.type, rj.message, rj.allow);
        }
        await_body(cw);
        call = calloc(1, sizeof *call);
        if (!call)
            return MHD_NO;
        *call = probe;
        call->route = route;
        call->reject = rj;
        call->conn = c;
        call->started = now_mono();
        snprintf(call->method, sizeof call->method, "%s", method);
        call->path = strdup(url);
        buf_init(&call->body, 0);
        buf_init(&call->reply, 0);
        buf_init(&call->out, 0);
        call->watch = cw;
        if (call->watch)
            call->watch->call = call;
        list_add_tail(&R.calls, &call->node);
        R.ncalls++;
        if (R.ncalls > R.peak_calls)
            R.peak_calls = R.ncalls;
        *con_cls = call;
        return MHD_YES;
    }
    if (call->route == R_PASS)
        return pass_request_data(call, upload_data, upload_data_size);
    if (*upload_data_size) {
        call->bytes_in += *upload_data_size;
        if (call->watch)
            call->watch->received += *upload_data_size;
        if (!call->too_large && !call->reject.status) {
            if (call->body.len + *upload_data_size > R.cfg->max_body) {
                call->too_large = true; /* keep reading, answer 413 at the end */
                buf_free(&call->body);
            } else {
                buf_append(&call->body, upload_data, *upload_data_size);
            }
        }
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (call->phase == PH_BODY)
        request_in(call->watch);
    if (call->phase == PH_BODY && call->reject.status) {
        call->phase = PH_DONE;
        note_error(call, true, call->reject.type);
        return queue_error(c, call->reject.status, call->reject.type, call->reject.message, call->reject.allow);
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

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    struct conn_watch *cw = conn_watch_of(c);
    if (cw && toe == MHD_REQUEST_TERMINATED_COMPLETED_OK)
        await_head(cw, now_mono()); /* kept alive: the next head has the same deadline */
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
    R.ncalls--;
    if (!R.ncalls && R.peak_calls >= 256) {
        /* Connection pools are small heap blocks (16 KiB, see rest_init): after a burst
         * of thousands of calls, hand the freed heap back to the system. */
        R.peak_calls = 0;
        malloc_trim(0);
    }
    buf_free(&call->body);
    buf_free(&call->reply);
    buf_free(&call->out);
    free(call->path);
    free(call);
    *con_cls = NULL;
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char line[512];
    vsnprintf(line, sizeof line, fmt, ap);
    size_t n = strlen(line);
    while (n && line[n - 1] == '\n')
        line[--n] = '\0';
    log_debug("mhd: %s", line);
}

static void pump_timer(struct timer *t)
{
    (void)t;
    pump();
}

static void pump(void)
{
    bool due = false;
    MHD_UNSIGNED_LONG_LONG soonest = 0;
    for (int i = 0; i < 2; i++) {
        if (!R.daemons[i])
            continue;
        /* "More to do at once" (a resumed call's response queued, now to be sent) is
         * done now, a few rounds at most, rather than after the rest of the loop's
         * work -- which may be a whole batch of frames read meanwhile. */
        MHD_UNSIGNED_LONG_LONG ms = 0;
        bool has = false;
        for (int round = 0; round < 4; round++) {
            MHD_run(R.daemons[i]);
            has = MHD_get_timeout(R.daemons[i], &ms) == MHD_YES;
            if (!has || ms > 0)
                break;
        }
        if (has && (!due || ms < soonest)) {
            due = true;
            soonest = ms;
        }
    }
    if (due)
        timer_after(&R.pump_timer, (double)soonest / 1000, pump_timer);
    else
        timer_cancel(&R.pump_timer);
}

static void on_epoll_readable(void *arg)
{
    (void)arg;
    pump();
}

static void rest_stats(struct frontend_stats *out)
{
    out->connections = R.nconns;
    out->active = R.ncalls;
    size_t unsent = 0;
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &R.calls)
        unsent += list_entry(pos, struct call, node)->out.len;
    out->unsent = unsent;
}

static void rest_fail_all_frontend(const char *type, const char *message)
{
    rest_fail_all(503, type, message);
}

static const struct frontend rest_frontend = {"rest", rest_stats, rest_fail_all_frontend, NULL};

int rest_init(const struct config *cfg)
{
    R.cfg = cfg;
    frontend_register(&rest_frontend);
    list_init(&R.calls);
    if (MHD_is_feature_supported(MHD_FEATURE_EPOLL) != MHD_YES) {
        log_error("this libmicrohttpd has no epoll support");
        return -1;
    }
    /* 16 KiB per connection: MHD zeroes the whole pool for every request, so a larger
     * one costs CPU per call (bench: 256 KiB was a quarter of all cycles, and 32 KiB
     * about 1 µs a request in memsets) and memory per open stream.  16 KiB still holds
     * a head with a long bearer token -- as much as listener.c waits for -- and chunks
     * of a stream are at most this. */
    /* The pass-through server's pools are larger: a body goes out in pieces of what
     * its pool leaves free, and each piece is a send and a loop turn. */
    static const size_t pools[2] = {16 * 1024, PASS_POOL};
    for (int i = 0; i < 2; i++) {
        R.daemons[i] = MHD_start_daemon(
            MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_NO_LISTEN_SOCKET | MHD_USE_ERROR_LOG, 0, NULL, NULL,
            on_request, NULL, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL, MHD_OPTION_NOTIFY_COMPLETED, on_completed,
            NULL, MHD_OPTION_NOTIFY_CONNECTION, on_connection, NULL, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120,
            MHD_OPTION_CONNECTION_MEMORY_LIMIT, pools[i], MHD_OPTION_CONNECTION_LIMIT, (unsigned)60000,
            MHD_OPTION_END);
        if (!R.daemons[i]) {
            log_error("cannot start the HTTP server");
            return -1;
        }
        const union MHD_DaemonInfo *di = MHD_get_daemon_info(R.daemons[i], MHD_DAEMON_INFO_EPOLL_FD);
        int fd = di ? dup(di->epoll_fd) : -1;
        if (fd < 0 || !loop_watch_fd(fd, on_epoll_readable, NULL)) {
            log_error("cannot watch the HTTP server's epoll fd");
            return -1;
        }
    }
    R.hup_epfd = epoll_create1(EPOLL_CLOEXEC);
    if (R.hup_epfd < 0 || !loop_watch_fd(R.hup_epfd, on_hangups, NULL)) {
        log_error("cannot create the hang-up watcher");
        return -1;
    }
    return 0;
}

int rest_add_connection(int fd, const struct sockaddr *addr, socklen_t addrlen, double accepted_at,
                        const struct refusal *first, bool bulk)
{
    /* read by on_connection, which MHD_add_connection calls */
    R.accepted_at = accepted_at;
    R.first_refusal = first;
    enum MHD_Result ok = MHD_add_connection(R.daemons[bulk], fd, addr, addrlen);
    R.accepted_at = 0;
    R.first_refusal = NULL;
    if (ok != MHD_YES) {
        log_warn("cannot serve a new connection: %s", strerror(errno));
        return -1;
    }
    pump();
    return 0;
}



void rest_fail_all(int status, const char *type, const char *message)
{
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &R.calls) {
        struct call *call = list_entry(pos, struct call, node);
        if (call->req && call->req->owner == call)
            on_fail(call->req, status, type, message);
    }
}

void rest_shutdown(void)
{
    if (!R.daemons[0])
        return;
    /* MHD_stop_daemon with suspended connections is undefined (libraries.md a3). */
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &R.calls) {
        struct call *call = list_entry(pos, struct call, node);
        call->client_gone = true;
        wake(call);
    }
    for (int i = 0; i < 2; i++) {
        MHD_run(R.daemons[i]);
        MHD_stop_daemon(R.daemons[i]);
        R.daemons[i] = NULL;
    }
    timer_cancel(&R.pump_timer);
}
