/* The upstream's shared state, private to src/upstream/.  The files, each one concern:
 *   upstream.c  the public face: start, stop, what /status and /metrics read
 *   conn.c      a connection's life: dial, lws callbacks, frame I/O
 *   auth.c      authentication and the gateway's era (a leaf: it returns verdicts)
 *   pool.c      one pool's connections: placement, overflow, idle, promotion, backoff
 *   rotate.c    make-before-break rotation and token reload
 *   pools.c     callers' pools, one per gateway key (issue 17): caps, idle close,
 *               rejected keys, withdrawal on a new policy
 *   pool_policy.c  the pool's decisions as pure functions (include/pool_policy.h)
 * pool.c and rotate.c act on one pool (struct upool) at a time: tgbridge's own (U.own)
 * or a caller's.  conn.c is what lws and dial.c call; it hands events to pool.c,
 * rotate.c and pools.c, which call down into conn.c only to open or close a
 * connection. */
#ifndef TGB_UPSTREAM_INT_H
#define TGB_UPSTREAM_INT_H
#include "upstream.h"
#include "buf.h"
#include "dial.h"
#include "discover.h"
#include "envelope.h"
#include "list.h"
#include "loop.h"
#include "pool_policy.h"
#include "reqtable.h"
#include <libwebsockets.h>

/* Why a connection was opened, and why it closed (logs and /metrics). */
enum opened_for { FOR_STARTUP, FOR_RECONNECT, FOR_OVERFLOW, FOR_ROTATION, OPENED_FOR_N };
enum closed_for { CLOSED_IDLE, CLOSED_ROTATED, CLOSED_LOST, CLOSED_FAILED, CLOSED_SHUTDOWN, CLOSED_FOR_N };
extern const char *const opened_names[OPENED_FOR_N];
extern const char *const closed_names[CLOSED_FOR_N];

/* The connections to the gateway (docs/operations.md "Connections and flow control").
 * One is the persistent connection, `primary`, opened at start and kept.  When requests
 * wait and every ready connection's window is full, one more -- an overflow connection
 * -- is opened, up to --max-connections, one at a time; an overflow connection idle for
 * --connection-idle is closed.  A rotation is make-before-break: the replacement opens
 * and authenticates while the replaced one keeps serving; then the replaced one
 * retires, receiving replies for its live requests but taking nothing new. */
struct upool;
struct upconn {
    struct dial dial;        /* first: lws's opaque user data is the dial (dial.c) */
    struct upool *pool;      /* the identity it presents */
    unsigned serial;
    enum upstream_state state; /* UP_AUTHENTICATING / UP_READY once open; before that the dial's phase */
    enum opened_for why;
    bool retiring;           /* takes nothing new; closes once nothing live is left on it */
    bool rotated_out;        /* retiring because a rotation replaced it as the persistent one */
    unsigned token_gen;      /* which token (pool's token_gen) it presented */
    bool goodbye;            /* close with a close frame from the next WRITEABLE */
    enum closed_for closed_as; /* what its end will be counted as */
    bool auth_refused;       /* failed on credentials: the backoff stays at its longest */
    bool auth_frame_due;     /* an auth frame (first or refresh) still has to be written */
    bool reauthenticating;   /* a refresh frame was sent, its reply not yet seen */
    struct window win;       /* this socket's share of the gateway's window */
    struct request *sending; /* an envelope partly written */
    struct buf burst;        /* frames of small envelopes, written with one send */
    struct buf rx;
    bool rx_overflow;
    double last_heard;       /* for telling a dead peer from a closed one */
    unsigned long long carried; /* requests sent on it */
    struct timer reauth_timer; /* an in-band refresh unanswered */
    struct timer resume_rx;    /* reading paused so that a first part goes out first */
    uint64_t resume_after;     /* ... until writes to callers pass this (firstpart.h) */
    struct timer idle_timer;   /* an overflow connection with nothing in flight */
    struct timer drain_timer;  /* a retiring one's live requests have --drain-timeout */
    struct list node;
};

/* A pool: the connections that present one gateway identity.  tgbridge's own (U.own)
 * is opened at start and kept; a caller's (issue 17, pools.c: an upstream_token_file
 * key or a forward caller's own) is opened on first use, closes when idle, and is
 * bounded by --max-caller-pools and --max-upstream-connections. */
struct upool {
    struct list conns;       /* every connection, opening ones included */
    struct upconn *primary;  /* the persistent connection, once ready (else NULL) */
    struct upconn *opening;  /* the one connection being opened, if any */
    struct upconn *replacing; /* what `opening` replaces, in a rotation */
    struct lane *lane;       /* the mux's queue for this identity (NULL: the own one) */
    char rotate_pending[160]; /* a rotation asked for while another was under way */
    char reason[512];
    char era[48];
    char default_ws[256];
    char reauth_status[160];
    bool auth_rejected;      /* the last connection failed on credentials */
    struct timer retry_timer, overflow_timer, rotate_timer, rotate_retry_timer;
    uint16_t retry_count, overflow_retry_count;
    double overflow_not_before;
    unsigned reconnects, rotations;
    unsigned token_gen;      /* bumped by each token change SIGHUP reads */
    bool ever_connected;
    char last_logged_reason[512];
    /* A caller's pool only (pools.c); the own pool has key NULL and uses --token. */
    char *key;
    size_t key_len;
    char caller[64];
    unsigned max_connections;
    double last_used, refused_until;
    bool closing;            /* idle or evicted: its connections are saying goodbye */
    struct lane own_lane;    /* what lane points at for a caller's pool */
    struct timer idle_timer; /* nothing queued or in flight for --connection-idle */
    struct list node;        /* in U.callers */
};

struct upstream_shared {
    struct lws_context *ctx;
    struct config *cfg;
    bool stopping;
    struct upool own;        /* tgbridge's own identity */
    struct list callers;     /* callers' pools (pools.c), least recently used first */
    size_t ncallers;
    unsigned serial;
    unsigned long long opened[OPENED_FOR_N], closed[CLOSED_FOR_N];
    unsigned long long identities_refused; /* 503 too-many-identities */
    lws_retry_bo_t retry;
    uint32_t retry_table[16];
    upstream_change_fn on_change;
    /* No gateway given (discover.h): which candidate is kept or tried, and why each
     * failed last, for the reason a round that found none gives. */
    struct discover disc;
    char disc_why[GATEWAY_CANDIDATES][240];
    /* The pool's view of conns for pool_policy.h, rebuilt in place (pool.c). */
    struct pool_slot *slots;
    struct upconn **slot_conn;
    size_t slot_cap;
};
extern struct upstream_shared U;

/* What a lost connection was, for what follows once it is freed (conn.c's gone). */
struct conn_loss {
    enum opened_for why;
    enum closed_for as;
    unsigned serial;
    bool was_primary, was_opening, was_retiring, ever_ready;
    char reason[512];
};

/* conn.c */
enum upstream_state conn_state(const struct upconn *c);
bool conn_serving(const struct upconn *c);
struct upconn *conn_start(struct upool *P, enum opened_for why, char *whynot, size_t whylen);
void conn_reason(struct upconn *c, bool auth, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Closes c with a close frame from its next WRITEABLE, counted as `as`. */
void conn_goodbye(struct upconn *c, enum closed_for as);
void conn_want_write(struct upconn *c);
/* The before-poll hook (loop_before_poll): reading paused for a first part resumes. */
void conn_resume_after_writes(void *arg);

/* auth.c: the era, the credentials, the auth frame; nothing here opens or closes. */
const char *auth_token(const struct upool *P);
int auth_reread_token(struct upool *P, char *err, size_t errlen); /* -1: kept the token we had, err says why */
bool auth_sends_frame(void);
bool auth_refreshes_in_band(const struct upool *P); /* a token change is presented on open connections */
int auth_path(const struct upool *P, char *path, size_t cap); /* the socket path, ?token= when wanted; -1: too long */
int auth_append_headers(struct dial *d, unsigned char **p, unsigned char *end);
int auth_write_frame(const struct upool *P, struct lws *wsi);
void auth_word_reason(struct upconn *c);
enum auth_verdict { AUTH_WAIT, AUTH_READY, AUTH_REFUSED };
enum auth_verdict auth_reply(const struct frame *f, const char **era);
void auth_refresh_reply(struct upconn *c, const struct frame *f);

/* pool.c */
void pool_build_retry_policy(void);
size_t pool_count(const struct upool *P, bool serving_only);
bool pool_open(struct upool *P, enum opened_for why, char *whynot, size_t whylen);
bool pool_place_waiting(struct upool *P);
void pool_overflow(struct upool *P);
void pool_connect_now(struct timer *t);
void pool_connect(struct upool *P);
void pool_upgraded(struct upconn *c);
void pool_ready(struct upconn *c, const char *era, const char *workspace);
void pool_unlink(struct upconn *c, struct conn_loss *loss);
bool pool_after_loss(struct upool *P, const struct conn_loss *loss);
void pool_down(struct upool *P);
void pool_window_changed(struct upconn *c);
void pool_sent_on(struct upconn *c, struct request *req);
void pool_retire(struct upconn *c, const char *why);
void pool_check_retiring(struct upconn *c);

/* rotate.c */
void pool_rotate(struct upool *P, const char *why);
bool rotate_draining(const struct upool *P);
bool pool_draining(const struct upool *P); /* some connection of P retires */
void rotate_check(struct timer *t);
void rotate_done(struct upool *P);
void rotate_after_loss(struct upool *P, const struct conn_loss *loss);
void rotate_forget(struct upool *P);
void rotate_stale_token(struct upconn *c);
void rotate_reauth_timed_out(struct timer *t);
/* pools.c: callers' pools */
void pools_init(void);
void pools_kick(struct upool *P);       /* its lane has requests, or room appeared */
void pools_after_loss(struct upool *P, const struct conn_loss *loss);
void pools_idle_check(struct upool *P); /* nothing queued or live: its idle clock runs */
void pools_stop(void);
bool pools_is_own(const struct upool *P);
/* One more connection for P stays within --max-upstream-connections. */
bool pools_may_open(const struct upool *P);
/* The pool after P: the own one first, then the callers'; NULL after the last. */
struct upool *pools_next(const struct upool *P);
void upstream_kick_pool(struct upool *P);
void upstream_pool_init(struct upool *P);
void upstream_pool_connections(const struct upool *P, struct buf *out);
#endif
