/* mux.c, with the loop, the log and the upstream replaced by stubs (stubs.h): the
 * test plays the gateway connection and moves the clock.  Ordering, callers' turns,
 * the gateway's window (reference §6.1), callers gone while their request runs,
 * detaching inside a callback, the queue and request deadlines. */
#include "unit_main.h"
#include "stubs.h"
#include "mux.h"
#include <stdio.h>
#include <string.h>

static struct config cfg;
static struct window W;

/* What one owner (a REST call, a session's request) heard. */
struct owner {
    struct request *req;
    unsigned parts, finals, fails;
    int status;
    char type[64], message[600], last_response[256];
    enum { KEEP, DETACH_ON_PART, DETACH_ON_FINAL, DETACH_ON_FAIL } detach;
};

static void on_frame(struct request *req, const struct frame *f, bool final)
{
    struct owner *o = req->owner;
    if (final)
        o->finals++;
    else
        o->parts++;
    snprintf(o->last_response, sizeof o->last_response, "%.*s", (int)f->response.n,
             f->response.p ? f->response.p : "");
    if (f->kind == FRAME_TOP_ERROR || f->kind == FRAME_FINAL_ERROR)
        snprintf(o->type, sizeof o->type, "%s", f->err_type);
    if ((o->detach == DETACH_ON_PART && !final) || (o->detach == DETACH_ON_FINAL && final)) {
        mux_detach(req);
        o->req = NULL;
    }
}

static void on_fail(struct request *req, int status, const char *type, const char *message)
{
    struct owner *o = req->owner;
    o->fails++;
    o->status = status;
    snprintf(o->type, sizeof o->type, "%s", type);
    snprintf(o->message, sizeof o->message, "%s", message);
    if (o->detach == DETACH_ON_FAIL) {
        mux_detach(req);
        o->req = NULL;
    }
}

static const struct request_ops ops = {on_frame, on_fail};

/* Owners outlive each test: the teardown lets go of what they still hold. */
static struct owner owners[32];
static size_t nowners;

static struct owner *new_owner(void)
{
    assert_true(nowners < sizeof owners / sizeof *owners);
    struct owner *o = &owners[nowners++];
    memset(o, 0, sizeof *o);
    return o;
}

/* The owner lets go (its caller left). */
static void detach(struct owner *o)
{
    mux_detach(o->req);
    o->req = NULL;
}

/* A request of caller c (NULL: none in particular), submitted. */
static struct owner *submit(struct caller *c, const char *service)
{
    struct owner *o = new_owner();
    o->req = mux_new(service, "default", "", "{}", 2, &ops, o);
    o->req->caller = c;
    mux_submit(o->req);
    return o;
}

static size_t live(void)
{
    struct mux_stats st;
    mux_get_stats(&st);
    return st.live;
}

static int setup(void **state)
{
    (void)state;
    memset(&cfg, 0, sizeof cfg);
    cfg.queue_timeout = 5;
    cfg.request_timeout = 30;
    cfg.max_queue = 100;
    cfg.max_inflight = 16;
    fake_clock_set(1000);
    fake_timers_reset();
    fake_log_reset();
    fake_upstream_reset();
    mux_init(&cfg, &fake_sink);
    window_init(&W);
    nowners = 0;
    return 0;
}

/* Whatever a test left: every owner lets go, as front ends do when they are done,
 * the connection goes, then the mux (as at shutdown). */
static int teardown(void **state)
{
    (void)state;
    for (size_t i = 0; i < nowners; i++)
        mux_detach(owners[i].req);
    mux_upstream_lost(&W, "the test is over");
    mux_stop_timers();
    mux_shutdown();
    fake_upstream_reset();
    return 0;
}

static void test_fifo_per_caller(void **state)
{
    (void)state;
    struct caller c;
    caller_init(&c);
    struct owner *o[4];
    for (int i = 0; i < 4; i++)
        o[i] = submit(&c, "agent");
    assert_int_equal(mux_queued(), 4);
    assert_int_equal(fake_send_all(&W), 4);
    for (int i = 0; i < 4; i++)
        assert_ptr_equal(fake_up.sent[i], o[i]->req);
    assert_true(mux_queue_empty());
    /* each envelope carries the request's own upstream id */
    for (int i = 0; i < 4; i++) {
        char want[160];
        snprintf(want, sizeof want, "{\"id\":\"%s\",\"service\":\"agent\",\"flow\":\"default\"", fake_up.sent_id[i]);
        assert_str_contains(fake_up.sent_text[i], want);
    }
    assert_str_ne(fake_up.sent_id[0], fake_up.sent_id[1]);
}

static void test_fair_turns_between_callers(void **state)
{
    (void)state;
    struct caller a, b, c;
    caller_init(&a);
    caller_init(&b);
    caller_init(&c);
    struct owner *oa[3], *ob[2], *oc[1], *on[1];
    for (int i = 0; i < 3; i++)
        oa[i] = submit(&a, "agent");
    for (int i = 0; i < 2; i++)
        ob[i] = submit(&b, "agent");
    oc[0] = submit(&c, "agent");
    on[0] = submit(NULL, "config");
    struct owner *want[] = {oa[0], ob[0], oc[0], on[0], oa[1], ob[1], oa[2]};
    assert_int_equal(fake_send_all(&W), 7);
    for (size_t i = 0; i < 7; i++) {
        if (fake_up.sent[i] != want[i]->req)
            print_message("  send %zu went to the wrong caller\n", i);
        assert_ptr_equal(fake_up.sent[i], want[i]->req);
    }
}

/* Reference §6.1: at most max_inflight requests from the oldest unfinished one on; a
 * request finishing behind a running one frees no room. */
static void test_window_anchored_at_the_oldest(void **state)
{
    (void)state;
    cfg.max_inflight = 4;
    struct owner *o[6];
    for (int i = 0; i < 6; i++)
        o[i] = submit(NULL, "agent");
    assert_int_equal(fake_send_all(&W), 4);
    assert_int_equal(W.n, 4);
    assert_int_equal(mux_queued(), 2);
    assert_false(mux_has_sendable(&W));
    assert_null(mux_peek_next(&W));
    for (size_t i = 1; i < 4; i++)
        fake_reply(&W, i, "\"response\":{\"n\":1},\"complete\":true");
    for (size_t i = 1; i < 4; i++)
        assert_int_equal(o[i]->finals, 1);
    assert_int_equal(W.n, 4); /* the oldest still runs: nothing left the window */
    assert_int_equal(mux_window_live(&W), 1);
    assert_int_equal(fake_send_all(&W), 0);
    unsigned before = fake_up.sendable_calls;
    fake_reply(&W, 0, "\"response\":{\"n\":0},\"complete\":true");
    assert_int_equal(o[0]->finals, 1);
    assert_int_equal(W.n, 0);
    assert_int_gt(fake_up.sendable_calls, before); /* the upstream hears there is room */
    assert_ptr_equal(mux_peek_next(&W), o[4]->req);
    assert_int_equal(fake_send_all(&W), 2);
    assert_int_equal(mux_window_live(&W), 2);
}

/* Every reply frame goes to the owner that asked, whatever order they come in; frames
 * for ids of another connection, or retired ones, go nowhere. */
static void test_frames_routed_by_id(void **state)
{
    (void)state;
    struct owner *a, *b;
    a = submit(NULL, "agent");
    b = submit(NULL, "agent");
    fake_send_all(&W);
    struct window other;
    window_init(&other);
    fake_reply(&other, 0, "\"response\":{\"x\":9},\"complete\":true");
    assert_int_equal(a->finals + a->parts, 0);
    fake_reply(&W, 1, "\"response\":{\"b\":1},\"complete\":false");
    fake_reply(&W, 0, "\"response\":{\"a\":1},\"complete\":true");
    assert_int_equal(b->parts, 1);
    assert_str_eq(b->last_response, "{\"b\":1}");
    assert_int_equal(a->finals, 1);
    assert_str_eq(a->last_response, "{\"a\":1}");
    fake_reply(&W, 0, "\"response\":{\"late\":1},\"complete\":true");
    assert_int_equal(a->finals, 1); /* a's id is retired */
    fake_reply(&W, 1, "\"response\":{\"b\":2},\"complete\":true");
    assert_int_equal(b->finals, 1);
    assert_int_equal(W.n, 0);
    assert_int_equal(live(), 2); /* answered; freed when their owners are done */
    detach(a);
    detach(b);
    assert_int_equal(live(), 0);
}

/* The caller goes away while its request runs at the gateway: it hears nothing more,
 * the request keeps its place in the window (the gateway has no cancel) until its
 * final frame, and then it is freed. */
static void test_orphan_caller_gone_in_flight(void **state)
{
    (void)state;
    cfg.max_inflight = 2;
    struct mux_stats st0, st;
    mux_get_stats(&st0);
    struct owner *a, *b, *c;
    a = submit(NULL, "agent");
    b = submit(NULL, "agent");
    fake_send_all(&W);
    c = submit(NULL, "agent");
    assert_false(mux_window_blocked_by_abandoned(&W));
    detach(a);
    mux_get_stats(&st);
    assert_int_equal(st.abandoned, st0.abandoned + 1);
    assert_int_equal(W.n, 2);
    assert_int_equal(mux_window_live(&W), 1);
    assert_true(mux_window_blocked_by_abandoned(&W)); /* full, c waits, a holds a place */
    fake_reply(&W, 0, "\"response\":{},\"complete\":false");
    fake_reply(&W, 0, "\"response\":{},\"complete\":true");
    assert_int_equal(a->parts + a->finals + a->fails, 0);
    assert_int_equal(W.n, 1);
    assert_int_equal(live(), 2);
    assert_int_equal(fake_send_all(&W), 1);
    assert_ptr_equal(fake_up.sent[2], c->req);
    assert_int_equal(b->parts + b->finals + b->fails, 0);
    mux_get_stats(&st);
    assert_int_equal(st.completed, st0.completed); /* abandoned, not completed */
}

/* A request whose caller left before it was sent never reaches the gateway. */
static void test_orphan_caller_gone_while_queued(void **state)
{
    (void)state;
    struct owner *a, *b;
    a = submit(NULL, "agent");
    b = submit(NULL, "agent");
    detach(a);
    assert_int_equal(mux_queued(), 1);
    assert_int_equal(live(), 1);
    assert_int_equal(fake_send_all(&W), 1);
    assert_ptr_equal(fake_up.sent[0], b->req);
}

/* The gateway's id-less error (reference §5.3 rule 3): one plausible owner gets it;
 * several all fail as ambiguous and stay in the window until their final frame. */
static void test_orphan_error_without_an_id(void **state)
{
    (void)state;
    fake_frame(&W, "{\"error\":\"Bad message\"}"); /* nothing in flight: logged, dropped */
    assert_int_equal(fake_log_lines[LOG_WARN], 1);
    assert_str_contains(fake_log_last, "matching no request");
    struct owner *a, *b, *c;
    a = submit(NULL, "agent");
    b = submit(NULL, "graph-rag");
    fake_send_all(&W);
    fake_frame(&W, "{\"error\":\"'agent'\"}"); /* V1a names the failing kind */
    assert_int_equal(a->finals, 1);
    assert_int_equal(b->finals + b->fails, 0);
    assert_int_equal(W.n, 1);
    c = submit(NULL, "graph-rag");
    fake_send_all(&W);
    fake_frame(&W, "{\"error\":{\"message\":\"Bad message\",\"type\":\"error\"}}");
    assert_int_equal(b->fails, 1);
    assert_int_equal(c->fails, 1);
    assert_int_equal(b->status, 502);
    assert_str_eq(b->type, "upstream-ambiguous-error");
    assert_str_contains(b->message, "one of 2 requests");
    assert_int_equal(W.n, 2);
    assert_int_equal(fake_log_lines[LOG_WARN], 2);
    assert_str_contains(fake_log_last, "could belong to 2 requests");
    fake_frame(&W, "{\"error\":\"again\"}"); /* still theirs, but each is answered once */
    assert_int_equal(b->fails + c->fails, 2);
    fake_reply(&W, 2, "\"response\":{},\"complete\":true");
    assert_int_equal(c->fails, 1); /* answered once only */
    assert_int_equal(W.n, 2);      /* behind b, which may be the guilty one */
    fake_clock_advance(cfg.request_timeout); /* it never completes: retired at its deadline */
    assert_int_equal(b->fails, 1);
    assert_int_equal(W.n, 0);
}

/* A request that has had a frame already cannot own an id-less error. */
static void test_orphan_error_skips_requests_with_replies(void **state)
{
    (void)state;
    struct owner *z = submit(NULL, "agent"), *a = submit(NULL, "agent");
    fake_send_all(&W);
    fake_reply(&W, 0, "\"response\":{\"p\":1},\"complete\":false");
    fake_frame(&W, "{\"error\":\"'agent'\"}");
    assert_int_equal(a->finals, 1);
    assert_str_eq(a->type, "");  /* a bare string error: no type */
    assert_int_equal(z->parts, 1);
    assert_int_equal(z->finals + z->fails, 0);
    assert_int_equal(W.n, 2);    /* a finished behind z, which still runs */
}

/* The owner lets go inside its own callback (a REST call whose client hung up while
 * being written to): no later callback, no use after free (ASan and valgrind watch). */
static void test_detach_inside_a_part_callback(void **state)
{
    (void)state;
    struct owner *a;
    a = submit(NULL, "agent");
    a->detach = DETACH_ON_PART;
    fake_send_all(&W);
    fake_reply(&W, 0, "\"response\":{\"p\":1},\"complete\":false");
    assert_int_equal(a->parts, 1);
    assert_null(a->req);
    assert_int_equal(live(), 1); /* still counted by the gateway */
    fake_reply(&W, 0, "\"response\":{\"p\":2},\"complete\":false");
    fake_reply(&W, 0, "\"response\":{},\"complete\":true");
    assert_int_equal(a->parts, 1);
    assert_int_equal(a->finals, 0);
    assert_int_equal(live(), 0);
    assert_int_equal(W.n, 0);
}

static void test_detach_inside_final_and_fail_callbacks(void **state)
{
    (void)state;
    struct owner *a, *b;
    a = submit(NULL, "agent");
    b = submit(NULL, "agent");
    a->detach = DETACH_ON_FINAL;
    b->detach = DETACH_ON_FAIL;
    fake_send_all(&W);
    fake_reply(&W, 0, "\"response\":{},\"complete\":true");
    assert_int_equal(a->finals, 1);
    assert_int_equal(live(), 1);
    fake_clock_advance(cfg.request_timeout);
    assert_int_equal(b->fails, 1);
    assert_null(b->req);
    assert_int_equal(live(), 1); /* b still holds its place in the window */
    fake_reply(&W, 1, "\"response\":{},\"complete\":true");
    assert_int_equal(b->finals, 0);
    assert_int_equal(live(), 0);
}

/* Refused at once (the queue is full) or failed while queued (its deadline, the
 * connection lost before it was sent), by an owner that lets go in the callback. */
static void test_detach_inside_the_fail_of_a_request_never_sent(void **state)
{
    (void)state;
    cfg.max_queue = 1;
    struct owner *a = submit(NULL, "agent");
    a->detach = DETACH_ON_FAIL;
    struct owner *b = new_owner();
    b->detach = DETACH_ON_FAIL;
    b->req = mux_new("agent", NULL, "", "{}", 2, &ops, b);
    mux_submit(b->req);
    assert_int_equal(b->fails, 1);
    assert_null(b->req);
    assert_int_equal(live(), 1);
    fake_clock_advance(cfg.queue_timeout);
    assert_int_equal(a->fails, 1);
    assert_null(a->req);
    assert_int_equal(live(), 0);
}

/* A request that cannot be sent within --queue-timeout fails with 503, saying why;
 * each queued request has its own deadline. */
static void test_queue_deadline(void **state)
{
    (void)state;
    fake_up.ready = false;
    struct owner *a, *b;
    a = submit(NULL, "agent");
    fake_clock_advance(2);
    b = submit(NULL, "agent");
    fake_clock_advance(2.999);
    assert_int_equal(a->fails, 0);
    fake_clock_advance(0.001);
    assert_int_equal(a->fails, 1);
    assert_int_equal(a->status, 503);
    assert_str_eq(a->type, "gateway-unavailable");
    assert_str_contains(a->message, "gateway not available within 5 s: connecting to the gateway");
    assert_int_equal(b->fails, 0);
    assert_int_equal(mux_queued(), 1);
    fake_up.ready = true; /* up, but the window is full */
    fake_clock_advance(2);
    assert_int_equal(b->fails, 1);
    assert_str_contains(b->message, "no room in the gateway's window within 5 s");
    assert_int_equal(mux_queued(), 0);
    assert_int_equal(fake_timers_armed(), 0);
    detach(a);
    detach(b);
    assert_int_equal(live(), 0);
}

/* A sent request without its final frame within --request-timeout fails with 504; it
 * stays in the window (the gateway has no cancel) and its late frames are dropped. */
static void test_request_deadline(void **state)
{
    (void)state;
    struct owner *a, *b;
    a = submit(NULL, "agent");
    fake_send_all(&W);
    fake_clock_advance(10);
    b = submit(NULL, "agent");
    fake_send_all(&W);
    fake_reply(&W, 0, "\"response\":{},\"complete\":false"); /* a part does not extend it */
    fake_clock_advance(19.999);
    assert_int_equal(a->fails, 0);
    fake_clock_advance(0.001);
    assert_int_equal(a->fails, 1);
    assert_int_equal(a->status, 504);
    assert_str_eq(a->type, "request-timeout");
    assert_str_eq(a->message, "no complete reply within 30 s");
    assert_int_equal(b->fails, 0);
    assert_int_equal(W.n, 2);
    fake_reply(&W, 0, "\"response\":{},\"complete\":true");
    assert_int_equal(a->finals, 0);
    assert_int_equal(W.n, 1);
    fake_clock_advance(10);
    assert_int_equal(b->fails, 1);
    struct mux_stats st;
    mux_get_stats(&st);
    const char *type;
    unsigned long long n = 0;
    for (size_t i = 0; mux_failures(i, &type, &n); i++)
        if (!strcmp(type, "request-timeout"))
            break;
    assert_true(n >= 2);
}

static void test_queue_full_and_frame_too_large(void **state)
{
    (void)state;
    cfg.max_queue = 2;
    struct owner *a, *b, *c, *d;
    a = submit(NULL, "agent");
    b = submit(NULL, "agent");
    c = submit(NULL, "agent"); /* answered at once */
    assert_int_equal(c->fails, 1);
    assert_int_equal(c->status, 503);
    assert_str_eq(c->type, "queue-full");
    assert_int_equal(mux_queued(), 2);
    assert_int_equal(a->fails + b->fails, 0);
    fake_send_all(&W);
    d = new_owner();
    d->req = mux_alloc("agent", false, &ops, d);
    buf_reserve(&d->req->frame, GATEWAY_MAX_FRAME);
    d->req->frame.len = GATEWAY_MAX_FRAME; /* contents do not matter: it is refused unread */
    mux_submit(d->req);
    assert_int_equal(d->fails, 1);
    assert_int_equal(d->status, 413);
    assert_str_eq(d->type, "payload-too-large");
    detach(c);
    detach(d);
    assert_int_equal(live(), 2);
    assert_int_equal(W.n, 2);
}

/* The connection is lost: what it carried fails (never replayed); the queue waits. */
static void test_upstream_lost(void **state)
{
    (void)state;
    cfg.max_inflight = 1;
    struct owner *a, *b;
    a = submit(NULL, "agent");
    fake_send_all(&W);
    b = submit(NULL, "agent");
    mux_upstream_lost(&W, "reset by peer");
    assert_int_equal(a->fails, 1);
    assert_int_equal(a->status, 502);
    assert_str_eq(a->type, "upstream-disconnected");
    assert_str_contains(a->message, "(reset by peer)");
    assert_int_equal(W.n, 0);
    assert_int_equal(b->fails, 0);
    assert_int_equal(mux_queued(), 1);
    assert_int_equal(fake_send_all(&W), 1);
}

/* A reply that is not JSON fails its request (when its id can be read) but leaves it
 * in the window: whether it was the last frame is unknowable. */
static void test_bad_frame(void **state)
{
    (void)state;
    struct owner *a;
    a = submit(NULL, "agent");
    fake_send_all(&W);
    char text[128];
    snprintf(text, sizeof text, "{\"id\":\"%s\",\"response\":{\"x\":\xff}}", fake_up.sent_id[0]);
    fake_frame(&W, text);
    assert_int_equal(a->fails, 1);
    assert_str_eq(a->type, "bad-gateway-frame");
    assert_int_equal(W.n, 1);
    struct mux_stats st;
    mux_get_stats(&st);
    assert_int_equal(st.bad_frames, 1);
    fake_reply(&W, 0, "\"response\":{},\"complete\":true");
    assert_int_equal(a->finals, 0);
    assert_int_equal(W.n, 0);
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
static const struct CMUnitTest tests[] = {
    T(test_fifo_per_caller),
    T(test_fair_turns_between_callers),
    T(test_window_anchored_at_the_oldest),
    T(test_frames_routed_by_id),
    T(test_orphan_caller_gone_in_flight),
    T(test_orphan_caller_gone_while_queued),
    T(test_orphan_error_without_an_id),
    T(test_orphan_error_skips_requests_with_replies),
    T(test_detach_inside_a_part_callback),
    T(test_detach_inside_final_and_fail_callbacks),
    T(test_detach_inside_the_fail_of_a_request_never_sent),
    T(test_queue_deadline),
    T(test_request_deadline),
    T(test_queue_full_and_frame_too_large),
    T(test_upstream_lost),
    T(test_bad_frame),
};

UNIT_MAIN(tests)
