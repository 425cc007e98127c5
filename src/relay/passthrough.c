#include "passthrough.h"
#include "passhead.h"
#include "dial.h"
#include "list.h"
#include "log.h"
#include "loop.h"
#include "redact.h"
#include "upstream.h"
#include "util.h"
#include <libwebsockets.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* What waits in either direction for one call, at most (plus one read's worth). */
#define PASS_BUF (256 * 1024)
#define READ_CHUNK (256 * 1024)
/* A non-2xx body is held until whole and redacted (a refusal may quote a credential
 * back); one longer than this is not relayed at all. */
#define HELD_MAX (64 * 1024)

static const char *const route_names[PASS_ROUTE_N] = {
    "auth", "i18n", "metrics", "document-stream", "import-core", "export-core", "import", "export"};
static const char *const outcome_names[PASS_OUTCOME_N] = {"ok", "gateway-error", "failed", "aborted", "truncated"};

struct pass {
    struct dial dial;
    enum pass_route route;
    const struct pass_ops *ops;
    void *owner;               /* NULL once the owner has ended the call */
    char method[8];
    long long upload_length;   /* -1: chunked */
    struct pass_header req_headers[8];
    size_t nreq_headers;
    char *authorization;
    struct buf up;             /* upload bytes for the gateway */
    bool up_end, up_done, owner_wants_room;
    struct buf down;           /* body bytes for the caller */
    bool rx_paused;
    struct pass_head head;     /* the answer's, as the caller gets it */
    bool head_seen, completed, failed, gone;
    bool holding;              /* a non-2xx answer: head and body held until whole */
    bool head_told;            /* the owner has been given the head */
    bool in_read;              /* inside lws_http_client_read (callback) */
    bool end_pending;          /* lws said "completed" during that read: decided after it */
    bool truncated;            /* the body ended before its end (last chunk, Content-Length) */
    struct timer deadline;     /* --request-timeout: for the head, then without progress */
    double started;
    uint64_t bytes_in, bytes_out;
    struct list node;
};

static struct {
    const struct config *cfg;
    struct list calls;
    size_t active;
    unsigned long long count[PASS_ROUTE_N][PASS_OUTCOME_N];
    unsigned long long bytes_in, bytes_out;
    unsigned long long serial;
} P;

const char *pass_route_name(enum pass_route r) { return r < PASS_ROUTE_N ? route_names[r] : "?"; }
const char *pass_outcome_name(enum pass_outcome o) { return o < PASS_OUTCOME_N ? outcome_names[o] : "?"; }
size_t passthrough_active(void) { return P.active; }
unsigned long long passthrough_count(enum pass_route r, enum pass_outcome o) { return P.count[r][o]; }
unsigned long long passthrough_bytes(bool in) { return in ? P.bytes_in : P.bytes_out; }

bool passthrough_slot_take(void)
{
    if (P.active >= P.cfg->max_passthrough)
        return false;
    P.active++;
    return true;
}

void passthrough_slot_give(enum pass_route r, enum pass_outcome o, uint64_t in, uint64_t out)
{
    P.active--;
    P.count[r][o]++;
    P.bytes_in += in;
    P.bytes_out += out;
}

/* ---- the end of a call ------------------------------------------------------------- */

static void pass_free(struct pass *p)
{
    timer_cancel(&p->deadline);
    list_del(&p->node);
    for (size_t i = 0; i < p->nreq_headers; i++)
        free(p->req_headers[i].value);
    pass_head_free(&p->head);
    if (p->authorization) {
        explicit_bzero(p->authorization, strlen(p->authorization));
        free(p->authorization);
    }
    buf_free(&p->up);
    buf_free(&p->down);
    free(p);
}

static enum pass_outcome outcome_of(const struct pass *p, bool caller_gone)
{
    if (p->truncated) /* first: the caller's connection was then broken off by us */
        return PASS_TRUNCATED;
    if (caller_gone && !(p->completed && !p->down.len))
        return PASS_ABORTED;
    if (p->failed || !p->head_seen)
        return PASS_FAILED;
    return p->head.status >= 400 ? PASS_GATEWAY_ERROR : PASS_OK;
}

static void account(struct pass *p, enum pass_outcome o)
{
    passthrough_slot_give(p->route, o, p->bytes_in, p->bytes_out);
    char status[24] = "";
    if (p->head_seen)
        snprintf(status, sizeof status, ", status %d", p->head.status);
    /* The caller's access-log line is the front end's (callrec.c); this is the detail. */
    log_debug("pass-through %s %s: %s%s, %llu bytes in, %llu out, %.3f s", route_names[p->route], p->method,
             outcome_names[o], status, (unsigned long long)p->bytes_in, (unsigned long long)p->bytes_out,
             now_mono() - p->started);
}

/* The call failed on our side: the owner hears it once, then the connection goes. */
static void fail(struct pass *p, int status, const char *type, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void fail(struct pass *p, int status, const char *type, const char *fmt, ...)
{
    if (p->failed || p->completed)
        return;
    p->failed = true;
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    redact_str(msg, sizeof msg);
    timer_cancel(&p->deadline);
    if (p->owner)
        p->ops->fail(p->owner, p->head_told ? 0 : status, type, msg);
    if (p->dial.wsi)
        dial_close(&p->dial);
}

/* The gateway's body ended before its end (its connection closed before the last
 * chunk or the Content-Length): the caller's transfer is broken off the same way --
 * no last chunk, the connection closed -- never made to look whole. */
static void truncate_body(struct pass *p)
{
    if (p->failed || p->completed)
        return;
    if (!p->head_told) {
        fail(p, 502, "upstream-disconnected", "the gateway closed the connection before the end of its %d answer",
             p->head.status);
        return;
    }
    p->truncated = true;
    fail(p, 0, "upstream-disconnected", "the gateway closed the connection before the end of its body");
}

void pass_end(struct pass *p, bool caller_gone)
{
    if (!p)
        return;
    account(p, outcome_of(p, caller_gone));
    p->owner = NULL;
    if (p->gone) {
        pass_free(p);
        return;
    }
    /* Still talking to the gateway: the request is aborted (the gateway sees the
     * connection go, as with any client that leaves); freed when dial.c is done. */
    if (p->dial.wsi)
        dial_close(&p->dial);
    else
        dial_abort(&p->dial, "the caller is gone");
}

/* ---- deadlines ---------------------------------------------------------------------- */

static void overdue(struct timer *t)
{
    struct pass *p = timer_owner(t, struct pass, deadline);
    double s = P.cfg->request_timeout;
    if (!p->head_told)
        fail(p, 504, "request-timeout", "the gateway did not answer within --request-timeout (%g s)", s);
    else
        fail(p, 0, "request-timeout", "nothing moved either way for --request-timeout (%g s)", s);
}

static void progressed(struct pass *p)
{
    if (!p->failed && !p->completed)
        timer_after(&p->deadline, P.cfg->request_timeout, overdue);
}

/* ---- dial.c's callbacks ----------------------------------------------------------- */

static void tell_head(struct pass *p)
{
    p->head_told = true;
    if (p->owner)
        p->ops->head(p->owner);
}

/* A held answer that cannot be relayed safely: tgbridge's own gateway-error body, with
 * the gateway's status, instead of the gateway's body and content headers. */
static void replace_held(struct pass *p, const char *why)
{
    p->holding = false;
    p->completed = true;
    timer_cancel(&p->deadline);
    if (p->dial.wsi)
        dial_close(&p->dial);
    buf_free(&p->down);
    buf_init(&p->down, 0);
    buf_printf(&p->down, "{\"error\":{\"type\":\"gateway-error\",\"message\":\"the gateway answered %d with %s; "
                         "not relayed\"}}", p->head.status, why);
    pass_head_own_body(&p->head, p->down.len);
    tell_head(p);
    if (p->owner)
        p->ops->data(p->owner);
}

/* A held answer is whole: relayed with every secret in it redacted. */
static void release_held(struct pass *p)
{
    if (pass_head_encoded(&p->head)) {
        replace_held(p, "an encoded body");
        return;
    }
    p->holding = false;
    redact_buf(&p->down);
    p->head.body_length = (long long)p->down.len;
    tell_head(p);
}

static void on_head(struct dial *d)
{
    struct pass *p = timer_owner(d, struct pass, dial);
    pass_head_read(&p->head, d->wsi);
    p->head_seen = true;
    dial_settled(d);
    progressed(p);
    int st = p->head.status;
    bool bodiless = st / 100 == 1 || st == 204 || st == 304; /* RFC 9110 §6.4.1 */
    if (bodiless)
        p->head.body_length = 0;
    if (bodiless || !strcmp(p->method, "HEAD")) {
        /* No body follows, whatever Content-Length says (lws 4.1.6 would wait for one
         * until the gateway closed). */
        p->completed = true;
        timer_cancel(&p->deadline);
        dial_close(d);
    }
    /* A refusal may quote tgbridge's credential back: a non-2xx body is held until
     * whole and redacted.  A 2xx body streams as it comes, unchanged. */
    p->holding = !p->completed && st / 100 != 2;
    if (!p->holding)
        tell_head(p);
}

static void on_gone(struct dial *d)
{
    struct pass *p = timer_owner(d, struct pass, dial);
    p->gone = true;
    if (!p->owner) {
        pass_free(p);
        return;
    }
    if (!p->completed && !p->failed) {
        if (!p->head_seen)
            fail(p, 502, "gateway-unreachable", "%s", d->reason);
        else
            truncate_body(p);
    }
}

/* --auth-header style: the request's own headers, the body's framing, and the
 * credential the caller decided on. */
static int append_headers(struct dial *d, unsigned char **pp, unsigned char *end)
{
    struct pass *p = timer_owner(d, struct pass, dial);
    for (size_t i = 0; i < p->nreq_headers; i++) {
        char name[64];
        snprintf(name, sizeof name, "%s:", p->req_headers[i].name);
        if (lws_add_http_header_by_name(d->wsi, (const unsigned char *)name,
                                        (const unsigned char *)p->req_headers[i].value,
                                        (int)strlen(p->req_headers[i].value), pp, end))
            return -1;
    }
    if (p->authorization &&
        lws_add_http_header_by_name(d->wsi, (const unsigned char *)"authorization:",
                                    (const unsigned char *)p->authorization, (int)strlen(p->authorization), pp,
                                    end))
        return -1;
    if (p->upload_length) {
        char v[32];
        const char *name = p->upload_length > 0 ? "content-length:" : "transfer-encoding:";
        if (p->upload_length > 0)
            snprintf(v, sizeof v, "%lld", p->upload_length);
        else
            snprintf(v, sizeof v, "chunked");
        if (lws_add_http_header_by_name(d->wsi, (const unsigned char *)name, (const unsigned char *)v,
                                        (int)strlen(v), pp, end))
            return -1;
        lws_client_http_body_pending(d->wsi, 1);
        lws_callback_on_writable(d->wsi);
    }
    return 0;
}

static const struct dial_ops pass_dial_ops = {on_head, on_gone, append_headers};

/* ---- the body, both ways ---------------------------------------------------------- */

static int write_upload(struct pass *p, struct lws *wsi)
{
    /* lws counts this phase against its own timeout; ours is --request-timeout. */
    lws_set_timeout(wsi, NO_PENDING_TIMEOUT, 0);
    size_t n = p->up.len < READ_CHUNK ? p->up.len : READ_CHUNK;
    bool last = p->up_end && n == p->up.len;
    if (!n && !last)
        return 0;
    bool chunked = p->upload_length < 0;
    struct buf b;
    buf_init(&b, LWS_PRE);
    if (chunked && n)
        buf_printf(&b, "%zx\r\n", n);
    buf_append(&b, buf_ptr(&p->up), n);
    if (chunked)
        buf_puts(&b, n ? (last ? "\r\n0\r\n\r\n" : "\r\n") : "0\r\n\r\n");
    int w = lws_write(wsi, (unsigned char *)buf_ptr(&b), b.len, last ? LWS_WRITE_HTTP_FINAL : LWS_WRITE_HTTP);
    buf_free(&b);
    if (w < 0)
        return -1;
    buf_consume(&p->up, n);
    p->bytes_in += n;
    if (n)
        progressed(p);
    if (last) {
        p->up_done = true;
        lws_client_http_body_pending(wsi, 0);
        buf_free(&p->up);
    } else if (p->up.len || p->up_end) {
        lws_callback_on_writable(wsi);
    }
    if (p->owner_wants_room && p->up.len < PASS_BUF / 2) {
        p->owner_wants_room = false;
        if (p->owner)
            p->ops->room(p->owner);
    }
    return 0;
}

static void received(struct pass *p, struct lws *wsi, const void *in, size_t len)
{
    if (p->completed)
        return; /* a held answer replaced: the rest is not read */
    buf_append(&p->down, in, len);
    p->bytes_out += len;
    progressed(p);
    if (p->holding) {
        if (p->down.len > HELD_MAX)
            replace_held(p, "a body over 64 KiB");
        return;
    }
    if (p->down.len >= PASS_BUF && !p->rx_paused) {
        p->rx_paused = true; /* the caller reads slowly: so does this request, alone */
        lws_rx_flow_control(wsi, 0);
    }
    if (p->owner)
        p->ops->data(p->owner);
}

/* One request per connection: whole or not, the gateway connection closes (-1). */
static int body_ended(struct pass *p, bool whole)
{
    p->end_pending = false;
    if (!whole) {
        truncate_body(p);
        return -1;
    }
    if (p->completed)
        return -1; /* a held answer replaced */
    p->completed = true;
    timer_cancel(&p->deadline);
    if (p->holding)
        release_held(p);
    if (p->owner)
        p->ops->data(p->owner);
    return -1;
}

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
    struct dial *d = lws_get_opaque_user_data(wsi);
    if (!d)
        return 0;
    struct pass *p = timer_owner(d, struct pass, dial);
    if (dial_event(d, wsi, (int)reason, user, in, len))
        return 0;
    switch (reason) {
    case LWS_CALLBACK_CLIENT_HTTP_WRITEABLE:
        return p->failed ? -1 : write_upload(p, wsi);
    case LWS_CALLBACK_RECEIVE_CLIENT_HTTP: {
        static char buffer[LWS_PRE + READ_CHUNK];
        char *px = buffer + LWS_PRE;
        int lenx = READ_CHUNK;
        p->in_read = true;
        int r = lws_http_client_read(wsi, &px, &lenx);
        p->in_read = false;
        if (p->end_pending)
            return body_ended(p, r >= 0);
        return r < 0 ? -1 : 0;
    }
    case LWS_CALLBACK_RECEIVE_CLIENT_HTTP_READ:
        received(p, wsi, in, len);
        return 0;
    case LWS_CALLBACK_COMPLETED_CLIENT_HTTP:
        /* lws 4.1.6 says "completed" after a chunked body's last chunk, and also when
         * the gateway closes a body without Content-Length, chunked or not
         * (lws_http_client_read, client-http.c): after a close that read returns -1
         * whatever we answer here, after the last chunk it goes on.  So a chunked end
         * is decided once the read is over. */
        if (p->in_read && p->head.chunked) {
            p->end_pending = true;
            return 0;
        }
        return body_ended(p, true);
    default:
        return 0;
    }
}

static const struct lws_protocols passthrough_protocol = {"tgb-pass", callback, 0, READ_CHUNK, 0, NULL, 0};

void passthrough_register_protocol(void)
{
    loop_add_protocol(&passthrough_protocol);
}

/* ---- the owner's side ----------------------------------------------------------- */

struct pass *pass_start(const struct pass_request *rq, const struct pass_ops *ops, void *owner, int *status,
                        const char **type, char *msg, size_t msglen)
{
    size_t plen = strlen(P.cfg->gw.base_path) + strlen(rq->target);
    if (plen >= sizeof ((struct dial *)0)->path) {
        *status = 414;
        *type = "uri-too-long";
        snprintf(msg, msglen, "the request target is too long");
        return NULL;
    }
    if (!upstream_gateway_known()) {
        *status = 502;
        *type = "gateway-unreachable";
        snprintf(msg, msglen, "%s", upstream_reason());
        return NULL;
    }
    if (!passthrough_slot_take()) {
        *status = 503;
        *type = "too-many-calls";
        snprintf(msg, msglen, "%zu pass-through calls are running already (--max-passthrough)",
                 P.cfg->max_passthrough);
        return NULL;
    }
    struct pass *p = calloc(1, sizeof *p);
    if (!p)
        abort();
    p->route = rq->route;
    p->ops = ops;
    p->owner = owner;
    snprintf(p->method, sizeof p->method, "%s", rq->method);
    p->upload_length = rq->content_length;
    for (size_t i = 0; i < rq->nheaders && p->nreq_headers < sizeof p->req_headers / sizeof *p->req_headers; i++) {
        p->req_headers[p->nreq_headers].name = rq->headers[i].name;
        p->req_headers[p->nreq_headers++].value = strdup(rq->headers[i].value);
    }
    p->authorization = rq->authorization ? strdup(rq->authorization) : NULL;
    buf_init(&p->up, 0);
    buf_init(&p->down, 0);
    p->started = now_mono();
    list_add_tail(&P.calls, &p->node);
    snprintf(p->dial.path, sizeof p->dial.path, "%s%s", P.cfg->gw.base_path, rq->target);
    p->dial.ops = &pass_dial_ops;
    p->dial.local_protocol = passthrough_protocol.name;
    p->dial.method = p->method;
    progressed(p);
    if (dial_start(&p->dial)) {
        *status = 502;
        *type = "gateway-unreachable";
        snprintf(msg, msglen, "%s", p->dial.reason);
        p->gone = true;
        p->owner = NULL;
        account(p, PASS_FAILED);
        pass_free(p);
        return NULL;
    }
    log_debug("pass-through %s %s%s", p->method, P.cfg->gw.base_path, route_names[p->route]);
    return p;
}

size_t pass_put(struct pass *p, const void *data, size_t n)
{
    if (p->failed || p->up_done || p->head_seen) {
        /* Nobody will read it any more (an early answer, or a failure): discarded. */
        return n;
    }
    size_t room = p->up.len < PASS_BUF ? PASS_BUF - p->up.len : 0;
    size_t take = n < room ? n : room;
    buf_append(&p->up, data, take);
    if (take < n)
        p->owner_wants_room = true;
    if (take && p->dial.wsi && p->dial.request_sent)
        lws_callback_on_writable(p->dial.wsi);
    return take;
}

void pass_put_end(struct pass *p)
{
    p->up_end = true;
    if (p->upload_length && p->dial.wsi && p->dial.request_sent && !p->up_done)
        lws_callback_on_writable(p->dial.wsi);
}

int pass_status(const struct pass *p) { return p->head_told ? p->head.status : 0; }
long long pass_body_length(const struct pass *p) { return p->head.body_length; }

bool pass_response_header(const struct pass *p, size_t i, const char **name, const char **value)
{
    if (i >= p->head.n)
        return false;
    *name = p->head.hdr[i].name;
    *value = p->head.hdr[i].value;
    return true;
}

size_t pass_take(struct pass *p, void *out, size_t max)
{
    size_t n = p->down.len < max ? p->down.len : max;
    if (!n)
        return 0;
    memcpy(out, buf_ptr(&p->down), n);
    buf_consume(&p->down, n);
    if (!p->down.len)
        buf_free(&p->down); /* idle calls hold no buffer */
    if (p->rx_paused && p->down.len < PASS_BUF / 2 && p->dial.wsi) {
        p->rx_paused = false;
        lws_rx_flow_control(p->dial.wsi, 1);
    }
    return n;
}

bool pass_done(const struct pass *p)
{
    return p->completed && !p->down.len;
}

bool pass_truncated(const struct pass *p) { return p->truncated; }

int passthrough_init(struct lws_context *ctx, const struct config *cfg)
{
    (void)ctx;
    P.cfg = cfg;
    passthrough_status_register(cfg);
    list_init(&P.calls);
    return 0;
}
