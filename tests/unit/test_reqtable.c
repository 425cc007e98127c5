/* reqtable.c: upstream ids and the id map, the local queue (first in, first out per
 * caller, callers taking turns) and the gateway-window ledger (reference §6.1). */
#include "unit_main.h"
#include "reqtable.h"
#include <stdio.h>
#include <string.h>

static struct window W;

static struct request *sent(struct reqtable *rt)
{
    struct request *r = reqtable_new(rt);
    r->owner = rt; /* any non-NULL owner keeps it alive */
    reqtable_enqueue(rt, r);
    reqtable_mark_sent(rt, r, &W);
    return r;
}

static void drop_all(struct reqtable *rt)
{
    struct list dropped, *pos, *tmp;
    reqtable_drop_window(rt, &W, &dropped);
    list_for_each_safe(pos, tmp, &dropped) {
        struct request *r = list_entry(pos, struct request, wnode);
        list_del(pos);
        r->owner = NULL;
        reqtable_release(rt, r);
    }
}

static void test_reqtable_ids_unique_and_lookup(void **state)
{
    (void)state;
    struct reqtable rt;
    reqtable_init(&rt, "tgb-t");
    window_init(&W);
    struct request *a = sent(&rt), *b = sent(&rt);
    assert_str_ne(a->id, b->id);
    assert_ptr_equal(reqtable_lookup(&rt, a->id), a);
    assert_ptr_equal(reqtable_lookup(&rt, b->id), b);
    assert_ptr_equal(reqtable_lookup(&rt, "tgb-t-99"), NULL);
    /* many more than the initial bucket count: rehash keeps lookups right */
    struct request *many[1000];
    for (int i = 0; i < 1000; i++)
        many[i] = sent(&rt);
    for (int i = 0; i < 1000; i++) {
        struct request *got = reqtable_lookup(&rt, many[i]->id);
        if (got != many[i])
            print_message("  request %d of 1000 (id %s):\n", i, many[i]->id);
        assert_ptr_equal(got, many[i]);
    }
    drop_all(&rt);
    assert_int_equal(rt.nlive, 0);
    reqtable_destroy(&rt);
}

/* Reference §6.1: the window is anchored at the oldest unfinished request. */
static void test_reqtable_window_anchored_at_oldest(void **state)
{
    (void)state;
    struct reqtable rt;
    reqtable_init(&rt, "w");
    window_init(&W);
    struct request *r[16];
    for (int i = 0; i < 15; i++)
        r[i] = sent(&rt);
    assert_true(window_has_room(&W, 16));
    r[15] = sent(&rt);
    assert_true(!window_has_room(&W, 16));
    /* finishing everything but the oldest frees nothing */
    for (int i = 1; i < 16; i++) {
        r[i]->owner = NULL;
        reqtable_close(&rt, r[i]);
    }
    assert_int_equal(W.n, 16);
    assert_true(!window_has_room(&W, 16));
    assert_ptr_equal(reqtable_lookup(&rt, r[5]->id), NULL); /* late frames are dropped */
    /* the oldest finishing frees the whole run behind it */
    r[0]->owner = NULL;
    reqtable_close(&rt, r[0]);
    assert_int_equal(W.n, 0);
    assert_int_equal(rt.nlive, 0);
    reqtable_destroy(&rt);
}

static void test_reqtable_queue_fifo_and_drop(void **state)
{
    (void)state;
    struct reqtable rt;
    reqtable_init(&rt, "q");
    window_init(&W);
    struct request *a = reqtable_new(&rt), *b = reqtable_new(&rt);
    a->owner = b->owner = &rt;
    reqtable_enqueue(&rt, a);
    reqtable_enqueue(&rt, b);
    assert_ptr_equal(reqtable_queue_head(&rt), a);
    reqtable_mark_sent(&rt, a, &W);
    assert_ptr_equal(reqtable_queue_head(&rt), b);
    assert_int_equal(rt.nqueued, 1);
    assert_int_equal(W.n, 1);
    assert_ptr_equal(a->win, &W);
    struct list dropped;
    reqtable_drop_window(&rt, &W, &dropped);
    assert_int_equal(W.n, 0);
    assert_true(!list_empty(&dropped));
    assert_ptr_equal(list_entry(dropped.next, struct request, wnode), a);
    assert_ptr_equal(reqtable_lookup(&rt, a->id), NULL);
    assert_int_equal(a->state, REQ_CLOSED);
    list_del(&a->wnode);
    a->owner = NULL;
    assert_true(reqtable_release(&rt, a));
    b->owner = NULL;
    reqtable_destroy(&rt);
    assert_int_equal(rt.nlive, 0);
}

/* A request of caller c (NULL: no caller in particular), queued. */
static struct request *queued(struct reqtable *rt, struct caller *c)
{
    struct request *r = reqtable_new(rt);
    r->owner = rt;
    r->caller = c;
    reqtable_enqueue(rt, r);
    return r;
}

/* Sends the queue's head into W; returns it. */
static struct request *send_head(struct reqtable *rt)
{
    struct request *r = reqtable_queue_head(rt);
    assert_non_null(r);
    reqtable_mark_sent(rt, r, &W);
    return r;
}

static void test_reqtable_fifo_within_a_caller(void **state)
{
    (void)state;
    struct reqtable rt;
    reqtable_init(&rt, "f");
    window_init(&W);
    struct caller c;
    caller_init(&c);
    struct request *r[5];
    for (int i = 0; i < 5; i++)
        r[i] = queued(&rt, &c);
    for (int i = 0; i < 5; i++) {
        assert_ptr_equal(reqtable_oldest(&rt), r[i]);
        assert_ptr_equal(send_head(&rt), r[i]);
    }
    assert_null(reqtable_queue_head(&rt));
    assert_int_equal(rt.nqueued, 0);
    drop_all(&rt);
    assert_int_equal(rt.nlive, 0);
    reqtable_destroy(&rt);
}

/* Callers with waiting requests take turns, one request each; the requests of no
 * caller in particular share one turn; the oldest request stays the arrival order's. */
static void test_reqtable_callers_take_turns(void **state)
{
    (void)state;
    struct reqtable rt;
    reqtable_init(&rt, "t");
    window_init(&W);
    struct caller a, b, c;
    caller_init(&a);
    caller_init(&b);
    caller_init(&c);
    struct request *a1 = queued(&rt, &a), *a2 = queued(&rt, &a), *a3 = queued(&rt, &a);
    struct request *b1 = queued(&rt, &b), *b2 = queued(&rt, &b);
    struct request *c1 = queued(&rt, &c), *n1 = queued(&rt, NULL);
    struct request *want[] = {a1, b1, c1, n1, a2, b2, a3};
    for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
        struct request *got = send_head(&rt);
        if (got != want[i])
            print_message("  turn %zu went to %s, not %s\n", i, got->id, want[i]->id);
        assert_ptr_equal(got, want[i]);
        if (i == 0)
            assert_ptr_equal(reqtable_oldest(&rt), a2); /* deadlines follow arrival, not turns */
    }
    assert_null(reqtable_queue_head(&rt));
    assert_true(list_empty(&rt.own.turns));
    drop_all(&rt);
    assert_int_equal(rt.nlive, 0);
    reqtable_destroy(&rt);
}

/* A newcomer waits for at most one request of each other caller, not for another
 * caller's whole backlog. */
static void test_reqtable_newcomer_waits_one_turn(void **state)
{
    (void)state;
    struct reqtable rt;
    reqtable_init(&rt, "n");
    window_init(&W);
    struct caller a, b;
    caller_init(&a);
    caller_init(&b);
    struct request *ar[5];
    for (int i = 0; i < 5; i++)
        ar[i] = queued(&rt, &a);
    assert_ptr_equal(send_head(&rt), ar[0]);
    struct request *b1 = queued(&rt, &b);
    assert_ptr_equal(send_head(&rt), ar[1]); /* a's turn had not ended: nobody else waited */
    assert_ptr_equal(send_head(&rt), b1);
    for (int i = 2; i < 5; i++)
        assert_ptr_equal(send_head(&rt), ar[i]);
    drop_all(&rt);
    reqtable_destroy(&rt);
    assert_int_equal(rt.nlive, 0);
}

/* A caller whose last waiting request leaves the queue gives up its turn; coming back,
 * it queues behind the callers already waiting. */
static void test_reqtable_dequeue_gives_up_the_turn(void **state)
{
    (void)state;
    struct reqtable rt;
    reqtable_init(&rt, "d");
    window_init(&W);
    struct caller a, b;
    caller_init(&a);
    caller_init(&b);
    struct request *a1 = queued(&rt, &a), *b1 = queued(&rt, &b);
    reqtable_dequeue(&rt, a1);
    assert_int_equal(rt.nqueued, 1);
    assert_false(list_linked(&a.turn));
    assert_ptr_equal(reqtable_queue_head(&rt), b1);
    assert_ptr_equal(reqtable_oldest(&rt), b1);
    reqtable_dequeue(&rt, a1); /* twice is harmless */
    assert_int_equal(rt.nqueued, 1);
    struct request *a2 = queued(&rt, &a);
    assert_ptr_equal(send_head(&rt), b1);
    assert_ptr_equal(send_head(&rt), a2);
    a1->owner = NULL;
    assert_true(reqtable_release(&rt, a1));
    drop_all(&rt);
    reqtable_destroy(&rt);
    assert_int_equal(rt.nlive, 0);
}

/* Reference §6.1: finished requests leave the window only from its front, whatever
 * order they finish in. */
static void test_reqtable_window_prunes_only_from_the_front(void **state)
{
    (void)state;
    struct reqtable rt;
    reqtable_init(&rt, "p");
    window_init(&W);
    struct request *r0 = sent(&rt), *r1 = sent(&rt), *r2 = sent(&rt);
    r0->owner = r1->owner = r2->owner = NULL;
    reqtable_close(&rt, r2);
    assert_int_equal(W.n, 3);
    assert_int_equal(rt.nlive, 3);
    reqtable_close(&rt, r0); /* frees r0 alone: r1 still runs */
    assert_int_equal(W.n, 2);
    assert_int_equal(rt.nlive, 2);
    assert_ptr_equal(reqtable_lookup(&rt, r1->id), r1);
    reqtable_close(&rt, r1);
    assert_int_equal(W.n, 0);
    assert_int_equal(rt.nlive, 0);
    reqtable_destroy(&rt);
}

/* A request is freed only when nothing refers to it: no owner, not inside a callback,
 * not queued, not in a window, not in the id map, not still counted as sent. */
static void test_reqtable_release_waits_for_every_reference(void **state)
{
    (void)state;
    struct reqtable rt;
    reqtable_init(&rt, "r");
    window_init(&W);
    struct request *r = sent(&rt);
    assert_false(reqtable_release(&rt, r)); /* owned, in the window, mapped */
    r->owner = NULL;
    assert_false(reqtable_release(&rt, r)); /* still in the window */
    struct request *q = queued(&rt, NULL);
    q->owner = NULL;
    assert_false(reqtable_release(&rt, q)); /* queued */
    reqtable_dequeue(&rt, q);
    q->busy = true;
    assert_false(reqtable_release(&rt, q)); /* inside an owner callback */
    q->busy = false;
    assert_true(reqtable_release(&rt, q));
    assert_int_equal(rt.nlive, 1);
    r->busy = true;
    reqtable_close(&rt, r); /* the window lets go of it, but the callback still runs */
    assert_int_equal(W.n, 0);
    assert_int_equal(rt.nlive, 1);
    r->busy = false;
    assert_true(reqtable_release(&rt, r));
    assert_int_equal(rt.nlive, 0);
    reqtable_destroy(&rt);
}

/* Issue 17: each gateway identity's requests wait in a lane of their own; a window
 * draws only from its lane, and one identity's backlog never holds another's up. */
static void test_reqtable_lanes_keep_identities_apart(void **state)
{
    (void)state;
    struct reqtable rt;
    reqtable_init(&rt, "l");
    struct lane other;
    lane_init(&other, &rt);
    struct window Wo;
    window_init(&W);
    window_init_lane(&Wo, &other);
    struct caller a;
    caller_init(&a);
    struct request *own1 = queued(&rt, &a), *own2 = queued(&rt, &a);
    struct request *x = reqtable_new(&rt);
    x->owner = &rt;
    x->caller = &a; /* a caller whose requests wait in the own lane: x takes the lane's common turn */
    x->lane = &other;
    reqtable_enqueue(&rt, x);
    assert_int_equal(rt.nqueued, 3);
    assert_int_equal(rt.own.nqueued, 2);
    assert_int_equal(other.nqueued, 1);
    assert_null(x->caller);
    assert_ptr_equal(reqtable_lane_head(&rt, &other), x);
    assert_ptr_equal(reqtable_lane_head(&rt, NULL), own1);
    reqtable_mark_sent(&rt, x, &Wo);
    assert_null(reqtable_lane_head(&rt, &other));
    assert_int_equal(other.nqueued, 0);
    assert_int_equal(Wo.n, 1);
    assert_ptr_equal(send_head(&rt), own1);
    assert_ptr_equal(send_head(&rt), own2);
    assert_true(list_empty(&rt.own.turns) && list_empty(&other.turns));
    struct list dropped;
    reqtable_drop_window(&rt, &Wo, &dropped);
    list_del(&x->wnode);
    x->owner = NULL;
    assert_true(reqtable_release(&rt, x));
    drop_all(&rt);
    reqtable_destroy(&rt);
    assert_int_equal(rt.nlive, 0);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_reqtable_ids_unique_and_lookup),
    cmocka_unit_test(test_reqtable_window_anchored_at_oldest),
    cmocka_unit_test(test_reqtable_queue_fifo_and_drop),
    cmocka_unit_test(test_reqtable_fifo_within_a_caller),
    cmocka_unit_test(test_reqtable_callers_take_turns),
    cmocka_unit_test(test_reqtable_newcomer_waits_one_turn),
    cmocka_unit_test(test_reqtable_dequeue_gives_up_the_turn),
    cmocka_unit_test(test_reqtable_window_prunes_only_from_the_front),
    cmocka_unit_test(test_reqtable_lanes_keep_identities_apart),
    cmocka_unit_test(test_reqtable_release_waits_for_every_reference),
};

UNIT_MAIN(tests)
