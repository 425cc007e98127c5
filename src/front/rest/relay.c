#include "rest_int.h"
#include "passthrough.h"
#include "policy.h"
#include "util.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void pass_head(void *owner) { rest_wake(owner); }

static void pass_data(void *owner) { rest_wake(owner); }

static void pass_room(void *owner) { rest_wake(owner); }

static void pass_fail(void *owner, int status, const char *type, const char *message)
{
    struct call *call = owner;
    rest_note_error(call, true, type);
    if (status) {
        call->reply_status = status;
        rest_error_body(&call->reply, type, message);
        call->reply_ready = true;
    } else {
        call->pass_failed = true; /* the body is cut short: the caller sees it end early */
    }
    rest_wake(call);
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
    rest_suspend(call); /* never 0 without suspending (libraries.md a2) */
    return 0;
}

/* The gateway's status and relayed headers, and its body as it comes. */
static enum MHD_Result respond_pass(struct call *call)
{
    struct MHD_Connection *c = call->conn;
    if (call->client_gone)
        return MHD_NO;
    if (call->reply_ready)
        return rest_queue_reply(call);
    if (!pass_status(call->pass)) {
        rest_suspend(call);
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

static char *bearer_header(const char *key, size_t len)
{
    char *v = malloc(len + 8);
    if (!v)
        abort();
    memcpy(v, "Bearer ", 7);
    memcpy(v + 7, key, len);
    v[len + 7] = '\0';
    return v;
}

/* Whose credential goes to the gateway.  The auth routes act on the caller's own
 * identity (login, bootstrap, change-password): the caller's Authorization is sent,
 * never tgbridge's -- except a Bearer that is the local client token, which is
 * tgbridge's to check and not the gateway's business (admission tells).  Every
 * other route is called with the caller's gateway identity under --policy (its
 * upstream_token_file's key, or a forward caller's own Bearer: issue 17), else as
 * tgbridge. */
static char *pass_authorization(struct MHD_Connection *c, int route, const struct caller_id *who)
{
    const char *auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (route == PASS_AUTH)
        return auth && !who->bearer_is_local ? strdup(auth) : NULL;
    size_t blen = 0;
    const char *bearer = rest_bearer(c, &blen);
    struct gateway_key gk;
    if (policy_gateway_key(who->name, bearer, blen, &gk))
        return gk.len ? bearer_header(gk.key, gk.len) : NULL; /* none: the gateway's anonymous */
    const char *t = REST.cfg->token;
    return t && *t ? bearer_header(t, strlen(t)) : NULL;
}

/* The request as passthrough.c takes it: the canonical path (passpath.c), the query
 * encoded again, the headers it relays.  target and hdrs are the caller's, alive
 * while rq is used. */
static void pass_request_of(struct MHD_Connection *c, const char *path, const char *workspace, struct buf *target,
                            struct pass_header *hdrs, struct pass_request *rq)
{
    buf_puts(target, path);
    struct query_build q = {target, true};
    MHD_get_connection_values(c, MHD_GET_ARGUMENT_KIND, query_arg, &q);
    if (workspace && !MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "workspace")) {
        /* a caller pinned to a workspace (--policy) that named none */
        buf_puts(target, q.first ? "?workspace=" : "&workspace=");
        put_encoded(target, workspace, false);
    }
    size_t nh = 0;
    for (size_t i = 0; i < sizeof pass_request_headers / sizeof *pass_request_headers; i++) {
        const char *v = MHD_lookup_connection_value(c, MHD_HEADER_KIND, pass_request_headers[i]);
        if (v)
            hdrs[nh++] = (struct pass_header){pass_request_headers[i], (char *)v};
    }
    rq->target = buf_ptr(target);
    rq->headers = hdrs;
    rq->nheaders = nh;
}

enum MHD_Result rest_start_pass(struct MHD_Connection *c, struct conn_watch *cw, const char *url, const char *path,
                                const char *method, int pass_route, const struct framing *fr,
                                const struct caller_id *who, const char *workspace, void **con_cls)
{
    struct buf target;
    buf_init(&target, 0);
    struct pass_header hdrs[sizeof pass_request_headers / sizeof *pass_request_headers];
    char *authorization = pass_authorization(c, pass_route, who);
    struct pass_request rq = {
        .route = (enum pass_route)pass_route,
        .method = method,
        .content_length = fr->n_cl ? (long long)fr->cl : fr->te_chunked ? -1 : 0,
        .authorization = authorization,
    };
    pass_request_of(c, path, workspace, &target, hdrs, &rq);
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
        return rest_queue_error(c, (unsigned)status, type, msg, NULL);
    }
    rest_call_init(call, c, cw, url, method);
    call->who = who->name;
    call->route = R_PASS;
    call->pass_route = pass_route;
    call->phase = PH_BODY;
    *con_cls = call;
    rest_watch_hangup(call);
    return MHD_YES;
}

/* The upload goes on as the gateway takes it: what does not fit waits in MHD, with
 * the connection suspended, until there is room (pass_room). */
enum MHD_Result rest_pass_request_data(struct call *call, const char *data, size_t *size)
{
    if (call->client_gone)
        return MHD_NO; /* hung up while suspended (rest_watch_hangup): MHD closes it */
    if (*size) {
        size_t took = call->reply_ready ? *size : pass_put(call->pass, data, *size);
        *size -= took;
        call->bytes_in += took;
        if (*size)
            rest_suspend(call);
        return MHD_YES;
    }
    if (call->phase == PH_BODY) {
        pass_put_end(call->pass);
        call->phase = PH_WAITING;
    }
    return respond_pass(call);
}

