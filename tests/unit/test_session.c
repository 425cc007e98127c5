/* session.c over the real mux, with the loop, the log, the upstream and the call
 * records replaced by stubs (stubs.h): what a line or WebSocket client sees.  Its ids
 * mapped both ways, every reply shaped {"id":<its id>,...}, refusals, a client gone
 * while its requests run, a client closed from inside a reply, deadlines, turns. */
#include "unit_main.h"
#include "stubs.h"
#include "redact.h"
#include "session.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct config cfg;
static struct window W;

/* One client: what its transport was asked to write. */
struct client {
    struct session s;
    char *msgs[32];
    size_t nmsgs;
    unsigned controls, pending_changes;
    char control_type[32];
    bool close_on_send; /* reads too slowly: the transport closes it on the next reply */
};
static struct client clients[2];

static void send_msg(struct session *s, const char *msg, size_t len)
{
    struct client *c = s->owner;
    assert_true(c->nmsgs < sizeof c->msgs / sizeof *c->msgs);
    c->msgs[c->nmsgs++] = strndup(msg, len);
    if (c->close_on_send)
        session_close(s);
}

static void control(struct session *s, const struct client_msg_info *m)
{
    struct client *c = s->owner;
    c->controls++;
    snprintf(c->control_type, sizeof c->control_type, "%s", m->type);
}

static void pending_changed(struct session *s)
{
    struct client *c = s->owner;
    c->pending_changes++;
}

static const struct session_ops ops = {send_msg, control, pending_changed};
static struct session_rules rules;

static struct client *client(size_t i)
{
    struct client *c = &clients[i];
    session_init(&c->s, &rules, &ops, &cfg, c);
    return c;
}

static void say(struct client *c, const char *text)
{
    session_message(&c->s, text, strlen(text));
}

static const char *last(const struct client *c)
{
    return c->nmsgs ? c->msgs[c->nmsgs - 1] : NULL;
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
    rules = (struct session_rules){.what = "line", .frontend = "line"};
    memset(clients, 0, sizeof clients);
    fake_clock_set(1000);
    fake_timers_reset();
    fake_log_reset();
    fake_upstream_reset();
    fake_ncalls = 0;
    fake_flush_requests = 0;
    mux_init(&cfg, &fake_sink);
    window_init(&W);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof clients / sizeof *clients; i++) {
        if (clients[i].s.ops)
            session_close(&clients[i].s);
        for (size_t j = 0; j < clients[i].nmsgs; j++)
            free(clients[i].msgs[j]);
    }
    mux_upstream_lost(&W, "the test is over");
    mux_stop_timers();
    mux_shutdown();
    fake_upstream_reset();
    return 0;
}

static void test_replies_carry_the_clients_id(void **state)
{
    (void)state;
    struct client *c = client(0);
    say(c, "{\"id\":7,\"service\":\"agent\",\"flow\":\"f\",\"request\":{\"q\":1}}");
    assert_int_equal(c->s.npending, 1);
    assert_int_equal(fake_send_all(&W), 1);
    char ours[96];
    snprintf(ours, sizeof ours, "{\"id\":\"%s\",", fake_up.sent_id[0]);
    assert_str_contains(fake_up.sent_text[0], ours); /* upstream sees our id only */
    assert_str_lacks(fake_up.sent_text[0], "\"id\":7");
    assert_str_contains(fake_up.sent_text[0], "\"request\":{\"q\":1}");
    fake_reply(&W, 0, "\"response\":{\"chunk\":\"a\"},\"complete\":false");
    assert_str_eq(last(c), "{\"id\":7,\"response\":{\"chunk\":\"a\"},\"complete\":false}");
    assert_int_equal(fake_flush_requests, 1); /* a first part goes out before the batch's rest */
    fake_reply(&W, 0, "\"response\":{\"chunk\":\"b\"},\"complete\":false");
    assert_int_equal(fake_flush_requests, 1);
    fake_reply(&W, 0, "\"response\":{\"chunk\":\"c\"},\"complete\":true");
    assert_str_eq(last(c), "{\"id\":7,\"response\":{\"chunk\":\"c\"},\"complete\":true}");
    assert_int_equal(c->nmsgs, 3);
    assert_int_equal(c->s.npending, 0);
    assert_int_equal(live(), 0);
    assert_int_equal(fake_ncalls, 1);
    assert_int_equal(fake_calls[0].outcome, CALL_OK);
    assert_str_eq(fake_calls[0].frontend, "line");
    assert_str_eq(fake_calls[0].service, "agent");
    assert_true(fake_calls[0].had_first_part);
}

static void test_a_request_without_an_id_gets_one(void **state)
{
    (void)state;
    struct client *c = client(0);
    say(c, "{\"service\":\"config\",\"request\":{}}");
    say(c, "{\"id\":null,\"service\":\"config\",\"request\":{}}");
    fake_send_all(&W);
    fake_reply(&W, 0, "\"response\":{},\"complete\":true");
    assert_str_eq(last(c), "{\"id\":\"tgb-c1\",\"response\":{},\"complete\":true}");
    fake_reply(&W, 1, "\"response\":{},\"complete\":true");
    assert_str_eq(last(c), "{\"id\":\"tgb-c2\",\"response\":{},\"complete\":true}");
}

/* Every error shape of every era reaches the client as one (reference §5.2); a nested
 * service error stays nested when the transport's rules say so. */
static void test_errors_reach_the_client_in_one_shape(void **state)
{
    (void)state;
    struct client *c = client(0);
    say(c, "{\"id\":\"a\",\"service\":\"agent\",\"request\":{}}");
    say(c, "{\"id\":\"b\",\"service\":\"agent\",\"request\":{}}");
    fake_send_all(&W);
    fake_reply(&W, 0, "\"error\":{\"type\":\"workspace-not-found\",\"message\":\"no such\"},\"complete\":true");
    assert_str_eq(last(c), "{\"id\":\"a\",\"error\":{\"type\":\"workspace-not-found\",\"message\":\"no such\"},"
                           "\"complete\":true}");
    fake_reply(&W, 1, "\"response\":{\"error\":{\"type\":\"llm-error\",\"message\":\"boom\"}},\"complete\":true");
    assert_str_eq(last(c), "{\"id\":\"b\",\"error\":{\"type\":\"llm-error\",\"message\":\"boom\"},\"complete\":true}");
    assert_int_equal(fake_calls[0].outcome, CALL_GATEWAY_ERROR);
    assert_str_eq(fake_calls[0].error, "workspace-not-found");
    rules.nested_errors = true;
    say(c, "{\"id\":\"c\",\"service\":\"agent\",\"request\":{}}");
    fake_send_all(&W);
    fake_reply(&W, 2, "\"response\":{\"error\":{\"type\":\"llm-error\",\"message\":\"x\"}},\"complete\":true");
    assert_str_eq(last(c), "{\"id\":\"c\",\"response\":{\"error\":{\"type\":\"llm-error\",\"message\":\"x\"}},"
                           "\"complete\":true}");
    assert_int_equal(fake_calls[2].outcome, CALL_GATEWAY_ERROR);
}

static void test_refusals_never_reach_the_gateway(void **state)
{
    (void)state;
    rules.max_pending = 2;
    struct client *c = client(0);
    say(c, "{\"id\":1,");
    assert_str_eq(last(c), "{\"id\":null,\"error\":{\"type\":\"bad-request\",\"message\":\"line is not valid JSON\"},"
                           "\"complete\":true}");
    say(c, " \t");
    assert_int_equal(c->nmsgs, 1); /* blank lines are ignored */
    say(c, "{\"type\":\"ping\"}");
    assert_int_equal(c->controls, 1);
    assert_str_eq(c->control_type, "ping");
    say(c, "{\"id\":\"x\",\"service\":\"agent\",\"request\":{}}");
    say(c, "{\"id\":\"x\",\"service\":\"agent\",\"request\":{}}");
    assert_str_contains(last(c), "{\"id\":\"x\",\"error\":{\"type\":\"duplicate-id\"");
    say(c, "{\"id\":\"y\",\"service\":\"agent\",\"request\":{}}");
    say(c, "{\"id\":\"z\",\"service\":\"agent\",\"request\":{}}");
    assert_str_contains(last(c), "{\"id\":\"z\",\"error\":{\"type\":\"too-many-requests\"");
    assert_str_contains(last(c), "more than 2 requests");
    c->s.locked = true;
    fake_reply(&W, 0, "\"response\":{},\"complete\":true"); /* nothing was sent yet: dropped */
    say(c, "{\"id\":\"w\",\"service\":\"agent\",\"request\":{}}");
    assert_str_eq(last(c), "{\"id\":\"w\",\"error\":{\"type\":\"auth-required\",\"message\":\"auth failure\"},"
                           "\"complete\":true}");
    assert_int_equal(fake_send_all(&W), 2); /* x and y */
    assert_int_equal(c->s.npending, 2);
}

/* The line protocol's clients may re-send an id still in flight: each is a request. */
static void test_duplicate_ids_when_the_rules_allow(void **state)
{
    (void)state;
    rules.duplicate_ids = true;
    struct client *c = client(0);
    say(c, "{\"id\":\"x\",\"service\":\"agent\",\"request\":{}}");
    say(c, "{\"id\":\"x\",\"service\":\"agent\",\"request\":{}}");
    assert_int_equal(fake_send_all(&W), 2);
    assert_str_ne(fake_up.sent_id[0], fake_up.sent_id[1]);
    fake_reply(&W, 1, "\"response\":{\"n\":2},\"complete\":true");
    assert_str_eq(last(c), "{\"id\":\"x\",\"response\":{\"n\":2},\"complete\":true}");
    assert_int_equal(c->s.npending, 1);
}

/* The client goes away while its requests run: nothing more is written to it, its
 * calls are recorded as aborted, and the gateway's late frames are dropped. */
static void test_client_gone_while_its_requests_run(void **state)
{
    (void)state;
    struct mux_stats st0, st;
    mux_get_stats(&st0);
    struct client *c = client(0);
    say(c, "{\"id\":1,\"service\":\"agent\",\"request\":{}}");
    say(c, "{\"id\":2,\"service\":\"agent\",\"request\":{}}");
    say(c, "{\"id\":3,\"service\":\"agent\",\"request\":{}}");
    assert_int_equal(fake_send_all(&W), 3);
    fake_reply(&W, 0, "\"response\":{},\"complete\":false");
    assert_int_equal(c->nmsgs, 1);
    say(c, "{\"id\":4,\"service\":\"agent\",\"request\":{}}"); /* still queued */
    session_close(&c->s);
    assert_int_equal(c->s.npending, 0);
    assert_int_equal(mux_queued(), 0);
    mux_get_stats(&st);
    assert_int_equal(st.abandoned, st0.abandoned + 4);
    assert_int_equal(fake_ncalls, 4);
    for (size_t i = 0; i < 4; i++)
        assert_int_equal(fake_calls[i].outcome, CALL_ABORTED);
    assert_int_equal(W.n, 3); /* the gateway still runs them */
    fake_reply(&W, 0, "\"response\":{},\"complete\":true");
    fake_reply(&W, 2, "\"response\":{},\"complete\":true");
    fake_reply(&W, 1, "\"error\":{\"type\":\"e\",\"message\":\"m\"}");
    assert_int_equal(c->nmsgs, 1);
    assert_int_equal(W.n, 0);
    assert_int_equal(live(), 0);
    say(c, "{\"id\":5,\"service\":\"agent\",\"request\":{}}");
    assert_int_equal(mux_queued(), 0); /* a closed session takes nothing more */
}

/* The transport closes the client from inside a reply (it reads too slowly): the
 * session and its requests let go inside the mux's callback, nothing is used after
 * it is freed (ASan and valgrind watch), and later frames are dropped. */
static void test_client_closed_inside_a_reply(void **state)
{
    (void)state;
    struct client *c = client(0);
    say(c, "{\"id\":1,\"service\":\"agent\",\"request\":{}}");
    say(c, "{\"id\":2,\"service\":\"agent\",\"request\":{}}");
    fake_send_all(&W);
    unsigned changes = c->pending_changes;
    c->close_on_send = true;
    fake_reply(&W, 0, "\"response\":{\"p\":1},\"complete\":false");
    assert_true(c->s.closed);
    assert_int_equal(c->nmsgs, 1);
    assert_int_equal(c->s.npending, 0);
    assert_int_equal(c->pending_changes, changes); /* nobody to tell any more */
    fake_reply(&W, 0, "\"response\":{\"p\":2},\"complete\":false");
    fake_reply(&W, 1, "\"response\":{},\"complete\":true");
    fake_reply(&W, 0, "\"response\":{},\"complete\":true");
    assert_int_equal(c->nmsgs, 1);
    assert_int_equal(live(), 0);
    assert_int_equal(W.n, 0);
}

/* Closed by its last reply: the request is let go once, not twice. */
static void test_client_closed_by_a_final_reply(void **state)
{
    (void)state;
    struct client *c = client(0);
    say(c, "{\"id\":1,\"service\":\"agent\",\"request\":{}}");
    fake_send_all(&W);
    c->close_on_send = true;
    fake_reply(&W, 0, "\"response\":{},\"complete\":true");
    assert_true(c->s.closed);
    assert_int_equal(c->nmsgs, 1);
    assert_int_equal(fake_ncalls, 1);
    assert_int_equal(live(), 0);
}

/* Closed from inside an error reply: the same, from the mux's failure callback. */
static void test_client_closed_inside_an_error(void **state)
{
    (void)state;
    struct client *c = client(0);
    say(c, "{\"id\":1,\"service\":\"agent\",\"request\":{}}");
    say(c, "{\"id\":2,\"service\":\"agent\",\"request\":{}}");
    fake_send_all(&W);
    c->close_on_send = true;
    mux_upstream_lost(&W, "reset");
    assert_int_equal(c->nmsgs, 1);
    assert_str_contains(last(c), "\"type\":\"upstream-disconnected\"");
    assert_int_equal(live(), 0);
}

static void test_fail_all(void **state)
{
    (void)state;
    struct client *c = client(0);
    say(c, "{\"id\":1,\"service\":\"agent\",\"request\":{}}");
    say(c, "{\"id\":2,\"service\":\"agent\",\"request\":{}}");
    fake_send_all(&W);
    session_fail_all(&c->s, "shutting-down", "tgbridge is stopping");
    assert_int_equal(c->nmsgs, 2);
    assert_str_eq(c->msgs[0], "{\"id\":1,\"error\":{\"type\":\"shutting-down\",\"message\":\"tgbridge is stopping\"},"
                              "\"complete\":true}");
    assert_str_contains(c->msgs[1], "{\"id\":2,");
    assert_int_equal(fake_calls[0].outcome, CALL_FAILED);
    assert_str_eq(fake_calls[0].error, "shutting-down");
    fake_reply(&W, 0, "\"response\":{},\"complete\":true");
    assert_int_equal(c->nmsgs, 2);
}

/* The request deadline, by the fake clock, reaches the client with its own id. */
static void test_request_deadline_reaches_the_client(void **state)
{
    (void)state;
    struct client *c = client(0);
    say(c, "{\"id\":\"slow\",\"service\":\"agent\",\"request\":{}}");
    fake_send_all(&W);
    fake_clock_advance(29.9);
    assert_int_equal(c->nmsgs, 0);
    fake_clock_advance(0.1);
    assert_str_eq(last(c), "{\"id\":\"slow\",\"error\":{\"type\":\"request-timeout\","
                           "\"message\":\"no complete reply within 30 s\"},\"complete\":true}");
    assert_int_equal(fake_calls[0].outcome, CALL_FAILED);
    assert_int_equal(c->s.npending, 0);
    assert_int_equal(W.n, 1);
}

/* Two clients take turns on the one socket, whoever queued more. */
static void test_clients_take_turns(void **state)
{
    (void)state;
    struct client *a = client(0), *b = client(1);
    say(a, "{\"id\":\"a1\",\"service\":\"agent\",\"request\":{}}");
    say(a, "{\"id\":\"a2\",\"service\":\"agent\",\"request\":{}}");
    say(a, "{\"id\":\"a3\",\"service\":\"agent\",\"request\":{}}");
    say(b, "{\"id\":\"b1\",\"service\":\"agent\",\"request\":{}}");
    assert_int_equal(fake_send_all(&W), 4);
    const char *want[] = {"a1", "b1", "a2", "a3"};
    for (size_t i = 0; i < 4; i++) {
        fake_reply(&W, i, "\"response\":{},\"complete\":true");
        struct client *to = want[i][0] == 'a' ? a : b;
        char reply[64];
        snprintf(reply, sizeof reply, "{\"id\":\"%s\",", want[i]);
        assert_str_contains(last(to), reply);
    }
}

/* Error messages may quote the gateway, which may quote a secret. */
static void test_error_json_is_redacted(void **state)
{
    (void)state;
    secret_add("tg_very_secret");
    struct buf b;
    buf_init(&b, 0);
    session_error_json(&b, "\"i\"", "error", "bad token tg_very_secret here");
    assert_str_lacks(buf_ptr(&b), "very_secret");
    assert_str_contains(buf_ptr(&b), "{\"id\":\"i\",\"error\":{\"type\":\"error\",\"message\":\"bad token ");
    buf_free(&b);
    secrets_clear();
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
static const struct CMUnitTest tests[] = {
    T(test_replies_carry_the_clients_id),
    T(test_a_request_without_an_id_gets_one),
    T(test_errors_reach_the_client_in_one_shape),
    T(test_refusals_never_reach_the_gateway),
    T(test_duplicate_ids_when_the_rules_allow),
    T(test_client_gone_while_its_requests_run),
    T(test_client_closed_inside_a_reply),
    T(test_client_closed_by_a_final_reply),
    T(test_client_closed_inside_an_error),
    T(test_fail_all),
    T(test_request_deadline_reaches_the_client),
    T(test_clients_take_turns),
    T(test_error_json_is_redacted),
};

UNIT_MAIN(tests)
