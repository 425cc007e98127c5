/* The request table: upstream ids, the id → request map, the local queue and the
 * gateway-window ledger.  Pure bookkeeping (no I/O, no timers), so the window rules of
 * reference §6.1 can be unit-tested on their own. */
#ifndef TGB_REQTABLE_H
#define TGB_REQTABLE_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "buf.h"
#include "list.h"

struct request;
struct frame;

/* Bytes reserved before a request's envelope (its `frame` buffer) for the WebSocket
 * frame header the upstream writes there in place: lws's LWS_PRE, which the files
 * that hand the buffer to lws check with a static assertion. */
#define FRAME_HEADROOM 16

/* One local caller (a REST connection, a line or WebSocket client) as the queue sees
 * it: its waiting requests, and its turn.  Callers with waiting requests take turns,
 * one request each, so a newcomer waits for at most one request per other caller,
 * not for another caller's whole backlog.  Embedded in the front end's connection. */
struct lane;
struct caller {
    struct list queue;   /* its waiting requests, in arrival order */
    struct list turn;    /* its place in the turns while it has any */
    struct lane *lane;   /* the lane those wait in (see struct lane) */
};
void caller_init(struct caller *c);

/* The requests waiting for one gateway identity's connections (issue 17): tgbridge's
 * own (the table's `own`) or a caller's key (an upstream pool's).  Callers take turns
 * within a lane; a window draws only from its own lane. */
struct lane {
    struct list turns;    /* callers with waiting requests, the next one first */
    struct caller nobody; /* for requests of no caller in particular */
    size_t nqueued;
    void *owner;          /* the sending side's (its pool); NULL: tgbridge's own */
};
void lane_init(struct lane *l, void *owner);

/* How a request's owner (a REST call, later a Unix-socket client) hears about it.
 * Exactly one terminal callback (a final frame or on_fail) reaches an attached owner. */
struct request_ops {
    void (*on_frame)(struct request *req, const struct frame *f, bool final);
    void (*on_fail)(struct request *req, int status, const char *type, const char *message);
};

enum req_state {
    REQ_NEW,       /* built, not yet queued */
    REQ_QUEUED,    /* waiting in tgbridge's queue for the socket or window room */
    REQ_SENT,      /* (being) written upstream; counts in the gateway's window */
    REQ_CLOSED,    /* upstream is done with it: complete seen, or its socket is gone */
};

/* One connection's share of the gateway's window: requests in send order, pruned only
 * from the front, like the gateway (ref §6.1). */
struct window {
    struct list list;
    size_t n;
    struct lane *lane;    /* the lane it takes requests from; NULL: the table's own */
};

struct request {
    uint64_t seq;
    char id[48];
    enum req_state state;
    bool answered;        /* owner has had its terminal callback (or gave up) */
    bool got_frame;       /* at least one frame arrived for it */
    bool suspect;         /* may own an id-less error (mux.c on_orphan) */
    bool busy;            /* inside an owner callback: must not be freed yet */
    struct buf frame;     /* envelope, FRAME_HEADROOM headroom; released once written */
    size_t sent_off;      /* bytes of frame already written */
    char service[96];
    bool has_flow;
    double enqueued_at, sent_at;
    struct list qnode;    /* in the queue, in arrival order (queue deadlines) */
    struct list cnode;    /* in its caller's queue */
    struct caller *caller; /* whose turn it waits for (NULL: the lane's nobody) */
    struct lane *lane;    /* the lane it waits in (NULL: the table's own) */
    struct list wnode;    /* in its window */
    struct window *win;   /* the connection's window it was sent on */
    struct request *hnext;
    bool hashed;
    struct list dnode;    /* in mux.c's list of running request deadlines */
    const struct request_ops *ops;
    void *owner;          /* NULL once the owner has detached */
};

struct reqtable {
    struct list queue;    /* every waiting request, arrival order, whatever its lane */
    struct lane own;      /* the requests tgbridge's own identity carries */
    size_t nqueued, nlive;
    struct request **buckets;
    size_t nbuckets, nhashed;
    uint64_t next_seq;
    char prefix[24];
};

void reqtable_init(struct reqtable *rt, const char *prefix);
void reqtable_destroy(struct reqtable *rt);
/* A new request with a fresh id, unique for the life of the process. */
struct request *reqtable_new(struct reqtable *rt);
void reqtable_enqueue(struct reqtable *rt, struct request *req);
void reqtable_dequeue(struct reqtable *rt, struct request *req);
/* The next request to send: the first of the caller whose turn it is (in the table's
 * own lane; reqtable_lane_head: in lane l, NULL meaning the own lane). */
struct request *reqtable_queue_head(struct reqtable *rt);
struct request *reqtable_lane_head(struct reqtable *rt, struct lane *l);
/* The lane req waits in, or a window draws from. */
struct lane *reqtable_lane(struct reqtable *rt, struct lane *l);
/* The request that has waited longest (its queue deadline is the next). */
struct request *reqtable_oldest(struct reqtable *rt);
void window_init(struct window *w);
/* A window drawing from lane l (NULL: the own lane). */
void window_init_lane(struct window *w, struct lane *l);
/* True when one more request fits in a window of max entries. */
bool window_has_room(const struct window *w, int max);
/* Moves req from the queue into window w and the id map. */
void reqtable_mark_sent(struct reqtable *rt, struct request *req, struct window *w);
struct request *reqtable_lookup(struct reqtable *rt, const char *id);
/* Upstream finished with req: unmap it, and prune finished requests from the
 * front of the window (never from the middle — the gateway does not). */
void reqtable_close(struct reqtable *rt, struct request *req);
/* The socket is gone: every entry of w closes; returns them in send order in out. */
void reqtable_drop_window(struct reqtable *rt, struct window *w, struct list *out);
/* Frees req if nothing refers to it any more; true if freed. */
bool reqtable_release(struct reqtable *rt, struct request *req);
#endif
