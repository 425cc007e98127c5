#include "session.h"
#include "buf.h"
#include "callrec.h"
#include "firstpart.h"
#include "mux.h"
#include "policy.h"
#include "access.h"
#include "redact.h"
#include "util.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One request of a session: the client's id (as JSON text, echoed verbatim) and the
 * mux request carrying it upstream under our id. */
struct sreq {
    struct list node;
    struct session *s;
    struct request *req;
    char *cid;
    bool streaming;      /* a part has been sent */
    /* For the access log and the histograms (callrec.c). */
    double started, first_part;
    uint64_t bytes_in, bytes_out;
    char error[64];
    enum call_outcome outcome;
};

static void note(struct sreq *r, enum call_outcome o, const char *type)
{
    if (r->outcome == CALL_OK)
        r->outcome = o;
    if (!r->error[0] && type)
        snprintf(r->error, sizeof r->error, "%s", type);
}

void session_init(struct session *s, const struct session_rules *rules, const struct session_ops *ops,
                  const struct config *cfg, void *owner)
{
    memset(s, 0, sizeof *s);
    s->rules = rules;
    s->ops = ops;
    s->cfg = cfg;
    s->owner = owner;
    list_init(&s->reqs);
    caller_init(&s->caller);
}

void session_error_json(struct buf *b, const char *cid, const char *type, const char *message)
{
    buf_puts(b, "{\"id\":");
    buf_puts(b, cid ? cid : "null");
    buf_puts(b, ",\"error\":{\"type\":");
    buf_json_string(b, type, strlen(type));
    buf_puts(b, ",\"message\":");
    char *clean = redact_dup(message, strlen(message)); /* it may quote the gateway */
    buf_json_string(b, clean, strlen(clean));
    free(clean);
    buf_puts(b, "},\"complete\":true}");
}

void session_error(struct session *s, const char *cid, const char *type, const char *message)
{
    if (s->closed)
        return;
    struct buf b;
    buf_init(&b, 0);
    session_error_json(&b, cid, type, message);
    s->ops->send(s, buf_ptr(&b), b.len);
    buf_free(&b);
}

static void sreq_free(struct sreq *r)
{
    struct session *s = r->s;
    struct call_record rec = {
        .frontend = s->rules->frontend,
        .caller = s->who,
        .service = r->req ? r->req->service : NULL,
        .outcome = r->req && r->req->owner ? r->outcome : CALL_ABORTED,
        .error = r->error[0] ? r->error : NULL,
        .bytes_in = r->bytes_in,
        .bytes_out = r->bytes_out,
        .started = r->started,
        .first_part = r->first_part,
        .upstream_id = r->req ? r->req->id : NULL,
    };
    if (s->closed && r->outcome == CALL_OK)
        rec.outcome = CALL_ABORTED; /* the client went away before its answer */
    callrec_finish(&rec);
    list_del(&r->node);
    s->npending--;
    mux_detach(r->req);
    free(r->cid);
    free(r);
    if (!s->closed && s->ops->pending_changed)
        s->ops->pending_changed(s);
}

/* ---- replies ---------------------------------------------------------------------- */

static void on_frame(struct request *req, const struct frame *f, bool final)
{
    struct sreq *r = req->owner;
    struct session *s = r->s;
    struct buf b;
    buf_init(&b, 0);
    bool as_response = f->kind == FRAME_PART || f->kind == FRAME_FINAL ||
                       (f->kind == FRAME_FINAL_ERROR && s->rules->nested_errors);
    if (!as_response || f->kind == FRAME_FINAL_ERROR)
        note(r, CALL_GATEWAY_ERROR, f->err_type[0] ? f->err_type : "error");
    if (as_response) {
        buf_puts(&b, "{\"id\":");
        buf_puts(&b, r->cid);
        buf_puts(&b, ",\"response\":");
        buf_append(&b, f->response.p, f->response.n);
        buf_puts(&b, final ? ",\"complete\":true}" : ",\"complete\":false}");
    } else {
        /* Every error shape of every era, normalised to one (ref §5.2). */
        session_error_json(&b, r->cid, f->err_type[0] ? f->err_type : "error", f->err_message);
    }
    if (!final && !r->streaming) {
        r->streaming = true;
        r->first_part = now_mono();
        firstpart_queued(); /* its first part: out before the rest of the batch */
    }
    r->bytes_out += b.len;
    s->ops->send(s, buf_ptr(&b), b.len);
    buf_free(&b);
    if (s->closed)
        return; /* closed for reading too slowly: r is already gone */
    if (final)
        sreq_free(r);
}

static void on_fail(struct request *req, int status, const char *type, const char *message)
{
    (void)status;
    struct sreq *r = req->owner;
    struct session *s = r->s;
    note(r, CALL_FAILED, type);
    session_error(s, r->cid, type, message);
    if (!s->closed)
        sreq_free(r);
}

static const struct request_ops sreq_ops = {on_frame, on_fail};

/* ---- requests ----------------------------------------------------------------------- */

static bool id_in_flight(const struct session *s, const char *cid)
{
    for (const struct list *p = s->reqs.next; p != &s->reqs; p = p->next)
        if (!strcmp(list_entry(p, struct sreq, node)->cid, cid))
            return true;
    return false;
}

static char *span_dup(struct span v)
{
    char *p = malloc(v.n + 1);
    if (!p)
        abort();
    memcpy(p, v.p, v.n);
    p[v.n] = '\0';
    return p;
}

/* The per-caller policy (policy_live.c): refused here, nothing goes upstream. */
static bool refused_by_policy(struct session *s, const struct client_msg_info *m, const char *cid, size_t len,
                              const char **workspace)
{
    struct policy_call call = {m->service, m->flow, m->has_operation ? m->operation : NULL, m->workspace, NULL};
    struct refusal no;
    if (!m->too_long && policy_check_call(s->who, &call, workspace, &no))
        return false;
    if (m->too_long) {
        no.type = "forbidden-by-policy";
        snprintf(no.message, sizeof no.message, "caller %s: a flow, workspace or operation name too long to check",
                 s->who ? s->who : "default");
    }
    double now = now_mono();
    struct call_record rec = {.frontend = s->rules->frontend, .caller = s->who, .service = m->service,
                              .flow = m->flow[0] ? m->flow : NULL, .outcome = CALL_FAILED, .error = no.type,
                              .bytes_in = len, .started = now};
    callrec_finish(&rec);
    session_error(s, cid, no.type, no.message);
    return true;
}

static void submit(struct session *s, const struct client_msg_info *m, const char *text, size_t len, char *cid)
{
    const char *workspace = s->cfg->workspace;
    if (policy_active() && refused_by_policy(s, m, cid, len, &workspace)) {
        free(cid);
        return;
    }
    if (!cid) {
        char tmp[48];
        snprintf(tmp, sizeof tmp, "\"tgb-c%llu\"", ++s->next_auto_id);
        cid = strdup(tmp);
        if (!cid)
            abort();
    }
    struct sreq *r = calloc(1, sizeof *r);
    if (!r)
        abort();
    r->s = s;
    r->cid = cid;
    r->started = now_mono();
    r->bytes_in = len;
    list_add_tail(&s->reqs, &r->node);
    s->npending++;
    r->req = mux_alloc(m->service, m->has_flow, &sreq_ops, r);
    r->req->caller = &s->caller;
    envelope_rewrite(&r->req->frame, text, len, m->id_present ? &m->id_span : NULL, r->req->id, workspace);
    if (s->ops->pending_changed)
        s->ops->pending_changed(s);
    mux_submit_as(r->req, s->who, s->credential, s->credential_len); /* may answer at once (and free r) */
}

void session_message(struct session *s, const char *text, size_t len)
{
    if (s->closed)
        return;
    struct client_msg_info m;
    client_msg_parse(text, len, s->rules->what, &m);
    if (m.kind == CMSG_BLANK)
        return; /* blank lines are allowed and ignored */
    if (m.kind == CMSG_CONTROL) {
        s->ops->control(s, &m);
        return;
    }
    char *cid = m.id.p ? span_dup(m.id) : NULL;
    if (m.kind == CMSG_BAD) {
        session_error(s, cid, "bad-request", m.error);
    } else if (s->locked) {
        /* The gateway's own answer to a request before a good auth frame (ref §3.2). */
        session_error(s, cid, "auth-required", "auth failure");
    } else if (cid && !s->rules->duplicate_ids && id_in_flight(s, cid)) {
        session_error(s, cid, "duplicate-id", "this id is already in flight on this connection");
    } else if (s->rules->max_pending && s->npending >= s->rules->max_pending) {
        char msg[128];
        snprintf(msg, sizeof msg, "more than %zu requests of this connection are unfinished (--max-pending)",
                 s->rules->max_pending);
        session_error(s, cid, "too-many-requests", msg);
    } else {
        submit(s, &m, text, len, cid);
        return; /* cid is the request's now */
    }
    free(cid);
}

void session_fail_all(struct session *s, const char *type, const char *message)
{
    while (!s->closed && !list_empty(&s->reqs)) {
        struct sreq *r = list_entry(s->reqs.next, struct sreq, node);
        note(r, CALL_FAILED, type);
        session_error(s, r->cid, type, message);
        if (!s->closed)
            sreq_free(r);
    }
}

void session_set_credential(struct session *s, const char *p, size_t n)
{
    if (s->credential) {
        explicit_bzero(s->credential, s->credential_len);
        free(s->credential);
        s->credential = NULL;
        s->credential_len = 0;
    }
    if (!p || !n)
        return;
    if (!(s->credential = malloc(n + 1)))
        abort();
    memcpy(s->credential, p, n);
    s->credential[n] = '\0';
    s->credential_len = n;
}

void session_close(struct session *s)
{
    session_set_credential(s, NULL, 0);
    s->closed = true;
    while (!list_empty(&s->reqs))
        sreq_free(list_entry(s->reqs.next, struct sreq, node));
}
