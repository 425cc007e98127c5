#include "mux.h"
#include "access.h"
#include "policy.h"
#include "log.h"
#include "timer.h"
#include "util.h"
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Every queued request has the same timeout and joins the queue's tail; every sent
 * one has the same timeout and joins `sent`'s tail.  So each list expires from its
 * head, and one timer per list does (O(1) per request, instead of one timer each
 * inserted into lws's sorted timer list). */
static struct {
    const struct config *cfg;
    const struct mux_sink *sink;
    struct reqtable rt;
    struct list sent;                    /* requests with a running request deadline */
    struct timer queue_timer, sent_timer;
    unsigned long long submitted, completed, failed, abandoned, bad_frames;
    struct { char type[40]; unsigned long long n; } by_type[MUX_FAILURE_TYPES];
} M;

static void count_failure(const char *type)
{
    size_t i = 0;
    while (i < MUX_FAILURE_TYPES - 1 && M.by_type[i].type[0] && strcmp(M.by_type[i].type, type))
        i++;
    if (!M.by_type[i].type[0])
        snprintf(M.by_type[i].type, sizeof M.by_type[i].type, "%s", i < MUX_FAILURE_TYPES - 1 ? type : "other");
    M.by_type[i].n++;
}

bool mux_failures(size_t i, const char **type, unsigned long long *n)
{
    if (i >= MUX_FAILURE_TYPES || !M.by_type[i].type[0])
        return false;
    *type = M.by_type[i].type;
    *n = M.by_type[i].n;
    return true;
}

void mux_init(const struct config *cfg, const struct mux_sink *sink)
{
    M.cfg = cfg;
    M.sink = sink;
    mux_status_register(cfg, sink);
    /* A per-boot nonce keeps ids distinct across restarts in the gateway's logs;
     * the counter keeps them distinct for the life of this process. */
    unsigned nonce = 0;
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd < 0 || read(fd, &nonce, sizeof nonce) != (ssize_t)sizeof nonce)
        nonce = (unsigned)time(NULL) ^ (unsigned)getpid();
    if (fd >= 0)
        close(fd);
    char prefix[24];
    snprintf(prefix, sizeof prefix, "tgb-%06x", nonce & 0xffffff);
    reqtable_init(&M.rt, prefix);
    list_init(&M.sent);
}

void mux_stop_timers(void)
{
    timer_cancel(&M.queue_timer);
    timer_cancel(&M.sent_timer);
}

void mux_shutdown(void)
{
    reqtable_destroy(&M.rt);
}

/* Owner callbacks may detach (and so try to free) the request: `busy` keeps it alive
 * until the callback returns.  Callers must not touch req after fail(). */
static void fail(struct request *req, int status, const char *type, const char *message)
{
    if (!req->answered) {
        req->answered = true;
        M.failed++;
        count_failure(type);
        if (req->owner && req->ops && req->ops->on_fail) {
            req->busy = true;
            req->ops->on_fail(req, status, type, message);
            req->busy = false;
        }
    }
    reqtable_release(&M.rt, req);
}

struct request *mux_alloc(const char *service, bool has_flow, const struct request_ops *ops, void *owner)
{
    struct request *req = reqtable_new(&M.rt);
    snprintf(req->service, sizeof req->service, "%s", service);
    req->has_flow = has_flow;
    req->ops = ops;
    req->owner = owner;
    return req;
}

struct request *mux_new(const char *service, const char *flow, const char *workspace,
                        const char *body, size_t body_len, const struct request_ops *ops, void *owner)
{
    struct request *req = mux_alloc(service, flow && *flow, ops, owner);
    envelope_build(&req->frame, req->id, service, flow, workspace, body, body_len);
    return req;
}

static void close_upstream(struct request *req);
static void queue_expired(struct timer *t);

static void arm_queue_timer(void)
{
    struct request *head = reqtable_oldest(&M.rt);
    if (head)
        timer_after(&M.queue_timer, head->enqueued_at + M.cfg->queue_timeout - now_mono(), queue_expired);
}

static void queue_expired(struct timer *t)
{
    (void)t;
    double now = now_mono();
    struct request *req;
    while ((req = reqtable_oldest(&M.rt)) && req->enqueued_at + M.cfg->queue_timeout <= now) {
        reqtable_dequeue(&M.rt, req);
        req->state = REQ_CLOSED;
        char msg[512];
        const char *why = M.sink->lane_reason ? M.sink->lane_reason(req->lane)
                          : M.sink->ready()   ? ""
                                              : M.sink->reason();
        if (!why[0])
            snprintf(msg, sizeof msg, "no room in the gateway's window within %.3g s", M.cfg->queue_timeout);
        else
            snprintf(msg, sizeof msg, "gateway not available within %.3g s: %s", M.cfg->queue_timeout, why);
        fail(req, 503, "gateway-unavailable", msg);
    }
    arm_queue_timer();
}

static void sent_expired(struct timer *t);

static void arm_sent_timer(void)
{
    if (list_empty(&M.sent))
        return;
    struct request *head = list_entry(M.sent.next, struct request, dnode);
    timer_after(&M.sent_timer, head->sent_at + M.cfg->request_timeout - now_mono(), sent_expired);
}

static void sent_expired(struct timer *t)
{
    (void)t;
    double now = now_mono();
    char msg[128];
    snprintf(msg, sizeof msg, "no complete reply within %.3g s", M.cfg->request_timeout);
    bool abandoned = false;
    struct lane *kicked = NULL;
    while (!list_empty(&M.sent)) {
        struct request *req = list_entry(M.sent.next, struct request, dnode);
        if (req->sent_at + M.cfg->request_timeout > now)
            break;
        list_del(&req->dnode);
        if (req->suspect) {
            close_upstream(req);
            continue;
        }
        /* The gateway has no cancel: the id stays in the window ledger until the
         * gateway completes it or the socket goes; late frames for it are dropped. */
        if (!req->answered && req->win && req->win->lane != kicked && req->win->lane) {
            kicked = req->win->lane; /* a caller's pool: it may need rotating too */
            M.sink->sendable(kicked);
        }
        abandoned = abandoned || !req->answered;
        fail(req, 504, "request-timeout", msg);
    }
    arm_sent_timer();
    if (abandoned)
        M.sink->sendable(NULL); /* an abandoned request may now pin the window: rotation? */
}

void mux_submit(struct request *req)
{
    M.submitted++;
    if (M.rt.nqueued >= (size_t)M.cfg->max_queue) {
        req->state = REQ_CLOSED;
        fail(req, 503, "queue-full", "too many requests waiting for the gateway");
        return;
    }
    if (req->frame.len >= GATEWAY_MAX_FRAME) {
        req->state = REQ_CLOSED;
        fail(req, 413, "payload-too-large",
             "the envelope would reach the gateway's 50 MiB frame limit and kill the socket");
        return;
    }
    req->enqueued_at = now_mono();
    bool was_empty = M.rt.nqueued == 0;
    reqtable_enqueue(&M.rt, req);
    if (was_empty)
        arm_queue_timer();
    M.sink->sendable(req->lane);
}

void mux_submit_as(struct request *req, const char *caller, const char *bearer, size_t blen)
{
    struct gateway_key k;
    if (caller && M.sink->lane_for && policy_gateway_key(caller, bearer, blen, &k)) {
        struct refusal no = {0};
        struct lane *l = M.sink->lane_for(&k, &no);
        if (!l) {
            M.submitted++;
            req->state = REQ_CLOSED;
            fail(req, (int)no.status, no.type, no.message);
            return;
        }
        req->lane = l;
    }
    mux_submit(req);
}

size_t mux_lane_queued(struct lane *l)
{
    return reqtable_lane(&M.rt, l)->nqueued;
}

void mux_fail_lane(struct lane *l, int status, const char *type, const char *why)
{
    l = reqtable_lane(&M.rt, l);
    struct request *req;
    while ((req = reqtable_lane_head(&M.rt, l))) {
        reqtable_dequeue(&M.rt, req);
        req->state = REQ_CLOSED;
        fail(req, status, type, why);
    }
    arm_queue_timer();
}

void mux_detach(struct request *req)
{
    if (!req)
        return;
    req->owner = NULL;
    if (!req->answered)
        M.abandoned++; /* the caller left first: neither completed nor failed */
    req->answered = true;
    if (req->state == REQ_QUEUED) {
        reqtable_dequeue(&M.rt, req);
        req->state = REQ_CLOSED;
    }
    if (req->state != REQ_SENT) {
        reqtable_release(&M.rt, req);
    } else {
        M.sink->sendable(req->win ? req->win->lane : NULL); /* it may pin the window now that nobody waits for it */
    }
}

const char *mux_default_workspace(void)
{
    return M.sink->default_workspace();
}

size_t mux_queued(void)
{
    return M.rt.nqueued;
}

bool mux_queue_empty(void)
{
    return M.rt.nqueued == 0;
}

bool mux_has_sendable(const struct window *w)
{
    return reqtable_lane(&M.rt, w->lane)->nqueued && window_has_room(w, M.cfg->max_inflight);
}

const struct request *mux_peek_next(const struct window *w)
{
    return mux_has_sendable(w) ? reqtable_lane_head(&M.rt, w->lane) : NULL;
}

struct request *mux_next_to_send(struct window *w)
{
    if (!mux_has_sendable(w))
        return NULL;
    struct request *req = reqtable_lane_head(&M.rt, w->lane);
    reqtable_mark_sent(&M.rt, req, w);
    return req;
}

size_t mux_window_live(const struct window *w)
{
    size_t n = 0;
    for (const struct list *p = w->list.next; p != &w->list; p = p->next) {
        const struct request *r = list_entry(p, struct request, wnode);
        if (r->state == REQ_SENT && !r->answered)
            n++;
    }
    return n;
}

bool mux_window_blocked_by_abandoned(const struct window *w)
{
    if (!reqtable_lane(&M.rt, w->lane)->nqueued || window_has_room(w, M.cfg->max_inflight))
        return false;
    for (const struct list *p = w->list.next; p != &w->list; p = p->next) {
        const struct request *r = list_entry(p, struct request, wnode);
        if (r->state == REQ_SENT && r->answered)
            return true;
    }
    return false;
}

void mux_fail_window(struct window *w, int status, const char *type, const char *why)
{
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &w->list) {
        struct request *r = list_entry(pos, struct request, wnode);
        if (r->state == REQ_SENT && !r->answered)
            fail(r, status, type, why);
    }
}

void mux_sent(struct request *req)
{
    req->sent_at = now_mono();
    buf_free(&req->frame);
    if (req->answered || req->state != REQ_SENT)
        return;
    bool was_empty = list_empty(&M.sent);
    list_add_tail(&M.sent, &req->dnode);
    if (was_empty)
        arm_sent_timer();
}

/* The gateway is done with req; it may be freed here (when its owner has gone). */
static void close_upstream(struct request *req)
{
    struct lane *l = req->win ? req->win->lane : NULL;
    list_del(&req->dnode);
    reqtable_close(&M.rt, req);
    M.sink->sendable(l); /* the window may have room now */
}

static void deliver(struct request *req, const struct frame *f)
{
    bool final = f->kind != FRAME_PART;
    req->got_frame = true;
    if (!req->answered) {
        if (final) {
            req->answered = true;
            M.completed++;
        }
        if (req->owner && req->ops && req->ops->on_frame) {
            req->busy = true;
            req->ops->on_frame(req, f, final);
            req->busy = false;
        }
    }
    if (final)
        close_upstream(req);
}

/* Does an id-less error plausibly belong to req?  V1a names the failing kind in
 * KeyError text ("'agent'"); flow errors can only come from flow requests. */
static bool orphan_matches(const struct request *req, const char *msg)
{
    size_t n = strlen(msg);
    if (n >= 2 && msg[0] == '\'' && msg[n - 1] == '\'')
        return n - 2 == strlen(req->service) && !strncmp(msg + 1, req->service, n - 2);
    if (!strncmp(msg, "Invalid flow", 12) || strstr(msg, "not supported by flow"))
        return req->has_flow;
    return true;
}

/* Reference §5.3 rule 3: an error without an id (E1 in V1a, E3) cannot be correlated.
 * Only a request that has had no frame yet can be its owner.  One candidate gets the
 * error; several all get an honest "ambiguous" failure instead of a guess, so no
 * caller waits for a reply that will never come and none gets someone else's. */
static void on_orphan(const struct frame *f, struct window *w)
{
    struct request *cands[64];
    size_t n = 0;
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &w->list) {
        struct request *r = list_entry(pos, struct request, wnode);
        if (r->state == REQ_SENT && !r->got_frame && orphan_matches(r, f->err_message) &&
            n < sizeof cands / sizeof cands[0])
            cands[n++] = r;
    }
    if (n == 0) {
        log_warn("gateway error without a request id, matching no request: %s", f->err_message);
        return;
    }
    if (n == 1) {
        struct frame as_top = *f;
        as_top.kind = FRAME_TOP_ERROR;
        deliver(cands[0], &as_top);
        return;
    }
    log_warn("gateway error without a request id could belong to %zu requests; failing them: %s", n,
             f->err_message);
    char msg[600];
    snprintf(msg, sizeof msg,
             "the gateway reported an error without a request id (\"%.400s\"); it belongs to one of "
             "%zu requests in flight, this one included",
             f->err_message, n);
    for (size_t i = 0; i < n; i++) {
        /* The innocent ones still run at the gateway and still count in its window, so
         * they stay in the ledger until their complete frame; the guilty one never
         * completes and is retired at its request deadline instead. */
        cands[i]->suspect = true;
        fail(cands[i], 502, "upstream-ambiguous-error", msg);
    }
}

/* A frame that is not valid JSON (or UTF-8) is never forwarded.  Its request, when the
 * id could be read, fails now; whether the bad frame was its last one is unknowable,
 * so it stays in the window ledger until a valid final frame or its deadline. */
static void on_bad_frame(const struct frame *f, struct window *w)
{
    M.bad_frames++;
    struct request *req = f->has_id ? reqtable_lookup(&M.rt, f->id) : NULL;
    if (!req || req->win != w || req->answered)
        return;
    req->suspect = true;
    req->got_frame = true;
    fail(req, 502, "bad-gateway-frame",
         "the gateway sent a reply frame for this request that is not valid JSON (or not valid UTF-8)");
}

void mux_on_frame(const struct frame *f, struct window *w)
{
    if (f->kind == FRAME_INVALID) {
        on_bad_frame(f, w);
        return;
    }
    if (f->kind == FRAME_ORPHAN_ERROR) {
        on_orphan(f, w);
        return;
    }
    if (!f->has_id)
        return;
    struct request *req = reqtable_lookup(&M.rt, f->id);
    if (!req || req->win != w) {
        log_debug("dropping frame for retired id %s", f->id);
        return;
    }
    deliver(req, f);
}

void mux_upstream_lost(struct window *w, const char *why)
{
    struct list dropped, *pos, *tmp;
    reqtable_drop_window(&M.rt, w, &dropped);
    char msg[512];
    snprintf(msg, sizeof msg, "the gateway connection was lost before the reply completed (%s); "
                              "the request was not retried", why);
    list_for_each_safe(pos, tmp, &dropped) {
        struct request *r = list_entry(pos, struct request, wnode);
        list_del(pos);
        list_del(&r->dnode);
        fail(r, 502, "upstream-disconnected", msg);
    }
}

void mux_get_stats(struct mux_stats *out)
{
    out->queued = M.rt.nqueued;
    out->live = M.rt.nlive;
    out->submitted = M.submitted;
    out->completed = M.completed;
    out->failed = M.failed;
    out->abandoned = M.abandoned;
    out->bad_frames = M.bad_frames;
}
