#include "reqtable.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t hash_id(const char *s)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

void caller_init(struct caller *c)
{
    list_init(&c->queue);
    list_init(&c->turn);
    c->lane = NULL;
}

void lane_init(struct lane *l, void *owner)
{
    list_init(&l->turns);
    caller_init(&l->nobody);
    l->nobody.lane = l;
    l->nqueued = 0;
    l->owner = owner;
}

struct lane *reqtable_lane(struct reqtable *rt, struct lane *l)
{
    return l ? l : &rt->own;
}

void reqtable_init(struct reqtable *rt, const char *prefix)
{
    memset(rt, 0, sizeof *rt);
    list_init(&rt->queue);
    lane_init(&rt->own, NULL);
    rt->nbuckets = 256;
    rt->buckets = calloc(rt->nbuckets, sizeof *rt->buckets);
    if (!rt->buckets)
        abort();
    snprintf(rt->prefix, sizeof rt->prefix, "%s", prefix);
}

static void unhash(struct reqtable *rt, struct request *req)
{
    if (!req->hashed)
        return;
    struct request **pp = &rt->buckets[hash_id(req->id) & (rt->nbuckets - 1)];
    while (*pp && *pp != req)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = req->hnext;
    req->hnext = NULL;
    req->hashed = false;
    rt->nhashed--;
}

static void rehash(struct reqtable *rt)
{
    size_t n = rt->nbuckets * 2;
    struct request **nb = calloc(n, sizeof *nb);
    if (!nb)
        return; /* keep the old, fuller table: lookups stay correct */
    for (size_t i = 0; i < rt->nbuckets; i++)
        for (struct request *r = rt->buckets[i], *next; r; r = next) {
            next = r->hnext;
            size_t b = hash_id(r->id) & (n - 1);
            r->hnext = nb[b];
            nb[b] = r;
        }
    free(rt->buckets);
    rt->buckets = nb;
    rt->nbuckets = n;
}

static void hash_in(struct reqtable *rt, struct request *req)
{
    if (rt->nhashed + 1 > rt->nbuckets)
        rehash(rt);
    size_t b = hash_id(req->id) & (rt->nbuckets - 1);
    req->hnext = rt->buckets[b];
    rt->buckets[b] = req;
    req->hashed = true;
    rt->nhashed++;
}

struct request *reqtable_new(struct reqtable *rt)
{
    struct request *req = calloc(1, sizeof *req);
    if (!req)
        abort();
    req->seq = ++rt->next_seq;
    snprintf(req->id, sizeof req->id, "%s-%llu", rt->prefix, (unsigned long long)req->seq);
    req->state = REQ_NEW;
    list_init(&req->qnode);
    list_init(&req->cnode);
    list_init(&req->wnode);
    list_init(&req->dnode);
    buf_init(&req->frame, FRAME_HEADROOM);
    rt->nlive++;
    return req;
}

static struct caller *caller_of(struct reqtable *rt, struct request *req)
{
    return req->caller ? req->caller : &reqtable_lane(rt, req->lane)->nobody;
}

void reqtable_enqueue(struct reqtable *rt, struct request *req)
{
    struct lane *l = reqtable_lane(rt, req->lane);
    req->lane = l;
    /* A caller's requests wait in one lane at a time; one for another identity while
     * some wait (a REST connection's next Bearer) takes the lane's common turn. */
    if (req->caller && !list_empty(&req->caller->queue) && req->caller->lane != l)
        req->caller = NULL;
    struct caller *c = caller_of(rt, req);
    req->state = REQ_QUEUED;
    list_add_tail(&rt->queue, &req->qnode);
    if (list_empty(&c->queue)) {
        c->lane = l;
        list_add_tail(&l->turns, &c->turn);
    }
    list_add_tail(&c->queue, &req->cnode);
    rt->nqueued++;
    l->nqueued++;
}

void reqtable_dequeue(struct reqtable *rt, struct request *req)
{
    if (!list_linked(&req->qnode))
        return;
    struct caller *c = caller_of(rt, req);
    list_del(&req->qnode);
    list_del(&req->cnode);
    if (list_empty(&c->queue))
        list_del(&c->turn);
    rt->nqueued--;
    reqtable_lane(rt, req->lane)->nqueued--;
}

struct request *reqtable_lane_head(struct reqtable *rt, struct lane *l)
{
    l = reqtable_lane(rt, l);
    if (list_empty(&l->turns))
        return NULL;
    struct caller *c = list_entry(l->turns.next, struct caller, turn);
    return list_entry(c->queue.next, struct request, cnode);
}

struct request *reqtable_queue_head(struct reqtable *rt)
{
    return reqtable_lane_head(rt, NULL);
}

struct request *reqtable_oldest(struct reqtable *rt)
{
    return list_empty(&rt->queue) ? NULL : list_entry(rt->queue.next, struct request, qnode);
}

void window_init_lane(struct window *w, struct lane *l)
{
    list_init(&w->list);
    w->n = 0;
    w->lane = l;
}

void window_init(struct window *w)
{
    window_init_lane(w, NULL);
}

bool window_has_room(const struct window *w, int max)
{
    return w->n < (size_t)max;
}

void reqtable_mark_sent(struct reqtable *rt, struct request *req, struct window *w)
{
    struct caller *c = caller_of(rt, req);
    struct lane *l = reqtable_lane(rt, req->lane);
    reqtable_dequeue(rt, req);
    if (!list_empty(&c->queue) && c->turn.next != &l->turns) {
        list_del(&c->turn); /* its turn is over: to the back */
        list_add_tail(&l->turns, &c->turn);
    }
    req->state = REQ_SENT;
    req->win = w;
    list_add_tail(&w->list, &req->wnode);
    w->n++;
    hash_in(rt, req);
}

struct request *reqtable_lookup(struct reqtable *rt, const char *id)
{
    for (struct request *r = rt->buckets[hash_id(id) & (rt->nbuckets - 1)]; r; r = r->hnext)
        if (!strcmp(r->id, id))
            return r;
    return NULL;
}

static void prune_front(struct reqtable *rt, struct window *w)
{
    while (!list_empty(&w->list)) {
        struct request *head = list_entry(w->list.next, struct request, wnode);
        if (head->state != REQ_CLOSED)
            break;
        list_del(&head->wnode);
        head->win = NULL;
        w->n--;
        reqtable_release(rt, head);
    }
}

void reqtable_close(struct reqtable *rt, struct request *req)
{
    req->state = REQ_CLOSED;
    unhash(rt, req);
    if (req->win)
        prune_front(rt, req->win);
}

void reqtable_drop_window(struct reqtable *rt, struct window *w, struct list *out)
{
    list_init(out);
    while (!list_empty(&w->list)) {
        struct request *r = list_entry(w->list.next, struct request, wnode);
        list_del(&r->wnode);
        r->win = NULL;
        w->n--;
        unhash(rt, r);
        r->state = REQ_CLOSED;
        list_add_tail(out, &r->wnode);
    }
}

bool reqtable_release(struct reqtable *rt, struct request *req)
{
    if (req->busy || req->owner || list_linked(&req->qnode) || list_linked(&req->wnode) || req->hashed)
        return false;
    if (req->state == REQ_SENT)
        return false;
    list_del(&req->dnode);
    buf_free(&req->frame);
    rt->nlive--;
    free(req);
    return true;
}

/* Windows belong to connections, which drop them (reqtable_drop_window) first. */
void reqtable_destroy(struct reqtable *rt)
{
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &rt->queue) {
        struct request *r = list_entry(pos, struct request, qnode);
        reqtable_dequeue(rt, r);
        r->owner = NULL;
        reqtable_release(rt, r);
    }
    free(rt->buckets);
    rt->buckets = NULL;
}
