/* The multiplexer: admits local requests onto the one upstream socket, keeps each
 * one's deadline, routes every reply frame to the owner that asked, and decides the
 * fate of requests when the socket goes away.  Front ends (rest.c, later the Unix
 * socket) only call mux_new / mux_submit / mux_detach. */
#ifndef TGB_MUX_H
#define TGB_MUX_H
#include "config.h"
#include "envelope.h"
#include "reqtable.h"

/* What the mux needs of the side that sends, given at mux_init so that the mux never
 * names it: data flows front end -> mux -> upstream, and back through callbacks. */
struct gateway_key;
struct refusal;
struct mux_sink {
    /* a request is queued in lane l, or room appeared in a window of l (NULL, or a lane
     * with no owner: the own lane) */
    void (*sendable)(struct lane *l);
    /* the lane of the connections that present key k (issue 17), opened on first use;
     * NULL with a refusal (too many identities, a key the gateway rejected lately) */
    struct lane *(*lane_for)(const struct gateway_key *k, struct refusal *no);
    /* why the connections of lane l (NULL: the own) are not ready; "" when they are.
     * May be NULL (then ready/reason speak for every lane). */
    const char *(*lane_reason)(struct lane *l);
    bool (*ready)(void);           /* connected and authenticated */
    const char *(*reason)(void);   /* why not, for error messages */
    const char *(*default_workspace)(void); /* the identity's, from auth-ok ("" if unknown) */
    size_t (*window_used)(void);   /* entries of the gateway's window held, for /status */
};
void mux_init(const struct config *cfg, const struct mux_sink *sink);
/* The "requests" status source (mux_status.c), registered by mux_init. */
void mux_status_register(const struct config *cfg, const struct mux_sink *sink);
bool mux_queue_empty(void);
size_t mux_queued(void);
/* Requests waiting in lane l (NULL: the own lane). */
size_t mux_lane_queued(struct lane *l);
/* Every request waiting in l fails (its identity's key was rejected). */
void mux_fail_lane(struct lane *l, int status, const char *type, const char *why);
/* The upstream identity's default workspace ("" when the gateway did not say). */
const char *mux_default_workspace(void);
/* Before the loop is destroyed (timers live in it), then mux_shutdown after. */
void mux_stop_timers(void);
void mux_shutdown(void);

/* A request for `service` (flow may be NULL); the envelope is built from body. */
struct request *mux_new(const char *service, const char *flow, const char *workspace,
                        const char *body, size_t body_len, const struct request_ops *ops, void *owner);
/* A request whose envelope the caller writes into req->frame itself (the Unix line
 * protocol rewrites the client's own envelope); req->id is the upstream id to use. */
struct request *mux_alloc(const char *service, bool has_flow, const struct request_ops *ops, void *owner);
/* Queues req for sending.  May call req->ops->on_fail synchronously (queue full). */
void mux_submit(struct request *req);
/* mux_submit for the admitted caller named caller (caller_id.name), carried by the
 * gateway identity its policy gives it (policy_gateway_key; bearer: the credential it
 * presented with this call, for a forward caller), else tgbridge's own.  A refusal of
 * the identity fails req synchronously, like a full queue. */
void mux_submit_as(struct request *req, const char *caller, const char *bearer, size_t blen);
/* The owner is gone (or done): no callbacks after this; req is freed when the
 * gateway no longer counts it. */
void mux_detach(struct request *req);

/* --- for upstream.c: each connection owns a struct window --- */
/* The next request to write on the connection owning w, if w has room (marks it sent). */
struct request *mux_next_to_send(struct window *w);
/* What mux_next_to_send would return, without taking it. */
const struct request *mux_peek_next(const struct window *w);
bool mux_has_sendable(const struct window *w);
void mux_sent(struct request *req);   /* last byte written: start its deadline */
/* A frame that arrived on the connection owning w. */
void mux_on_frame(const struct frame *f, struct window *w);
/* That connection is gone: its unfinished requests fail (never replayed). */
void mux_upstream_lost(struct window *w, const char *why);
/* Requests in w whose callers still wait for them. */
size_t mux_window_live(const struct window *w);
/* w is full, requests wait, and some of w is held by requests nobody waits for any more
 * (timed out, caller gone): only a new socket frees the gateway's window (issue 5). */
bool mux_window_blocked_by_abandoned(const struct window *w);
/* Fails the live requests of w (rotation gave up waiting for them). */
void mux_fail_window(struct window *w, int status, const char *type, const char *why);

struct mux_stats {
    size_t queued, live;
    unsigned long long submitted, completed, failed;
    unsigned long long abandoned;  /* the caller went away before the answer */
    unsigned long long bad_frames; /* gateway frames that were not valid JSON/UTF-8 */
};
void mux_get_stats(struct mux_stats *out);
/* Failed requests by error type (request-timeout, gateway-unavailable, ...), in first-seen
 * order; false past the last.  Past MUX_FAILURE_TYPES - 1 types the rest count as "other". */
#define MUX_FAILURE_TYPES 16
bool mux_failures(size_t i, const char **type, unsigned long long *n);
#endif
