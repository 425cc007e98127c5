/* The REST front end's shared state, private to src/front/rest/:
 *   server.c  the two libmicrohttpd daemons and their pump, connections (hang-up
 *             watch, deadlines), the front-end objects;
 *   call.c    a call's life: its request, suspension, the mux's callbacks, its end;
 *   reply.c   replies: error bodies, the gateway's outcomes mapped to HTTP;
 *   route.c   what a request is (route, framing, admission ask, format): verdicts;
 *   relay.c   the HTTP pass-through adapter feeding passthrough.c.
 * route.c and reply.c are leaves: they decide and format, and call nothing in the
 * others.  call.c and relay.c drive calls; server.c owns connections and the pump. */
#ifndef TGB_REST_INT_H
#define TGB_REST_INT_H
#include "access.h"
#include "buf.h"
#include "config.h"
#include "envelope.h"
#include "guard.h"
#include "list.h"
#include "loop.h"
#include "mux.h"
#include <cjson/cJSON.h>
#include <microhttpd.h>
#include <stdbool.h>
#include <stdint.h>

#define STREAM_BLOCK (64 * 1024)
#define PASS_POOL (512 * 1024)

enum route {
    R_NOT_FOUND, R_HEALTHZ, R_READYZ, R_STATUS, R_METRICS, R_SHUTDOWN, R_KIND, R_FLOW_SERVICE, R_UNSUPPORTED, R_SOCKET,
    R_PASS,
    R_REFUSED, /* a pass-through request refused on its path or method (passpath.c): probe's reject */
};
enum fmt { FMT_JSON, FMT_NDJSON, FMT_SSE };
enum phase { PH_BODY, PH_WAITING, PH_STREAMING, PH_DONE };

/* An answer decided from the request head alone. */
struct reject {
    unsigned status;
    const char *type, *message, *allow;
};

struct conn_watch;

struct call {
    struct MHD_Connection *conn;
    struct reject reject;      /* read and discard the body, then answer this */
    enum route route;
    char kind[256];
    char flow[256];
    char why[160];             /* a 404's message naming what is wrong with a name */
    struct buf body;
    struct hold hold;          /* body's bytes, against --max-assembling */
    bool too_large;
    bool too_busy;             /* --max-assembling reached: read and discard the body, then 503 */
    enum phase phase;
    enum fmt fmt;
    struct request *req;
    bool suspended;
    bool client_gone;
    /* A whole reply decided before headers went out (unary, or an immediate error). */
    bool reply_ready;
    int reply_status;
    struct buf reply;
    /* Streaming: bytes not yet handed to MHD, and whether the last one is in. */
    bool stream_ready;
    struct buf out;
    bool done;
    double last_write;
    struct timer heartbeat; /* SSE heartbeat */
    struct conn_watch *watch;   /* its connection's hang-up watch */
    /* A pass-through call (passthrough.c): the gateway's answer relayed as it comes. */
    int pass_route;
    struct pass *pass;
    bool pass_failed;          /* cut short after the head */
    /* For the access log and the histograms (callrec.c). */
    double started, first_part;
    uint64_t bytes_in, bytes_out;
    char method[8];
    char *path;
    char upstream_id[48];
    const char *who;           /* the caller's name under --policy (caller_id.name), or NULL */
    char error[64];            /* the error type, if the call had one */
    bool own_error;            /* tgbridge answered with an error of its own */
    bool gateway_error;        /* the gateway answered with an error */
    struct list node;
};

/* A suspended connection is invisible to MHD, hang-ups included (libraries.md a3,
 * a7).  Each connection's socket sits in our own epoll set for EPOLLRDHUP instead —
 * added once per connection (not per call: that would be two more system calls per
 * keep-alive request), removed when MHD closes it: a caller that goes away is noticed
 * at once, and an idle one costs nothing. */
struct conn_watch {
    int fd;
    bool added;
    bool hung_up;        /* seen while no call was suspended on it */
    struct call *call;   /* the call being served on this connection, if any */
    /* Getting a request in has a deadline (guard.h): the head within --client-timeout
     * of the connection (or of the previous reply), the body at 1 MiB per timeout
     * after one of grace. */
    struct guard deadline;
    struct peer peer;             /* who is at the other end (listener.c) */
    bool admin;                   /* came to the admin listener: its route table (rest_admin_route_of) */
    struct refusal first_refusal; /* the listener's answer to its first request, if any */
    char *raw_uri;                /* the request target as sent (libmicrohttpd decodes its own copy) */
    struct caller caller;         /* this connection, as the fair queue sees it */
};

/* RFC 9112 §6: the body's length must be unambiguous, or a proxy in front and we
 * would disagree on where this request ends and the next begins. */
struct framing {
    int n_cl, n_te;
    bool cl_bad;
    unsigned long long cl;
    bool te_chunked;
};

struct rest_state {
    const struct config *cfg;
    /* Two servers, the same handlers: one for calls (small pools, cheap per request),
     * one for the connections the listener routes to the pass-through routes, whose
     * bodies stream in pieces as large as the pool allows (BENCHMARKS.md). */
    struct MHD_Daemon *daemons[2];
    struct timer pump_timer;
    struct loop_epoll *hup;
    const struct handover *handing; /* the connection being added (on_connection reads it) */
    bool handing_admin;             /* ... to the admin listener */
    void (*on_shutdown)(void);      /* POST /shutdown (rest_on_shutdown) */
    size_t nconns;
    struct list calls;
    size_t ncalls, peak_calls;
};
extern struct rest_state REST;

/* server.c */
void rest_pump_soon(void);
struct conn_watch *rest_conn_watch_of(struct MHD_Connection *c);
void rest_watch_hangup(struct call *call);
void rest_await_head(struct conn_watch *cw, double since);
void rest_await_body(struct conn_watch *cw);
void rest_request_in(struct conn_watch *cw);

/* call.c */
enum MHD_Result rest_on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                const char *version, const char *upload_data, size_t *upload_data_size,
                                void **con_cls);
void rest_on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe);
void rest_wake(struct call *call);
void rest_suspend(struct call *call);
void rest_caller_gone(struct call *call);
/* A new (zeroed) call on c, listed and tied to its connection; the caller fills the rest. */
void rest_call_init(struct call *call, struct MHD_Connection *c, struct conn_watch *cw, const char *url,
                    const char *method);

/* reply.c */
void rest_note_error(struct call *call, bool own, const char *type);
void rest_error_body(struct buf *b, const char *type, const char *message);
enum MHD_Result rest_queue_json(struct MHD_Connection *c, unsigned status, const char *body, size_t len,
                                const char *allow);
enum MHD_Result rest_queue_503(struct MHD_Connection *c, const char *body, size_t len);
/* 503 too-busy: --max-assembling reached; memory frees as other uploads complete. */
enum MHD_Result rest_queue_too_busy(struct MHD_Connection *c);
enum MHD_Result rest_queue_error(struct MHD_Connection *c, unsigned status, const char *type, const char *message,
                                 const char *allow);
/* The answer to a request admission refused. */
enum MHD_Result rest_queue_refusal(struct MHD_Connection *c, const struct refusal *no);
/* The call's whole reply, decided before headers went out. */
enum MHD_Result rest_queue_reply(struct call *call);
enum MHD_Result rest_serve_status(struct MHD_Connection *c, enum route route);
enum MHD_Result rest_serve_shutdown(struct MHD_Connection *c);
void rest_map_unary(struct call *call, const struct frame *f);
void rest_map_stream_error(struct call *call, const struct frame *f);
const char *rest_error_type_of(const struct frame *f);

/* route.c */
/* Which route a (decoded) URL is; fills out's kind, flow, pass_route. */
/* raw: the request target as sent (its query is not read), or NULL. */
enum route rest_route_of(const char *url, const char *raw, struct call *out);
/* What admission a route asks for (health routes: none). */
enum admit_rule rest_route_rule(enum route route, int pass_route);
/* How the request on this route is served. */
/* The admin listener's route table: the health routes, /status, /shutdown; else R_NOT_FOUND. */
enum route rest_admin_route_of(const char *url);
enum admit_rule rest_admin_rule(enum route route);
enum route_plan { PLAN_CALL, PLAN_PASS, PLAN_STATUS, PLAN_SHUTDOWN };
/* The plan for route under method; *route may become another (POST /api/v1/socket is
 * the kind "socket"), and rj what to answer once the body is read (status 0: none). */
enum route_plan rest_route_plan(enum route *route, const char *method, struct call *probe, struct reject *rj);
/* The per-caller policy for a route (a pass-through, /status): true when refused, with
 * v->refusal; *pinned: a pinned caller's workspace for the routes that take one. */
struct conn_watch;
bool rest_route_refused(struct MHD_Connection *c, const struct conn_watch *cw, enum route_plan plan,
                        enum route route, int pass_route, struct admission *v, const char **pinned);
/* A request answered at its head (framing, the door, the policy) gets its access-log
 * line, like every call. */
void rest_log_refusal(const char *method, const char *url, const char *caller, unsigned status, const char *type);
const struct reject *rest_framing_reject(struct MHD_Connection *c, struct framing *f);
/* Admission (access.c) for this request. */
/* The request's Authorization Bearer token (length *len), or NULL. */
const char *rest_bearer(struct MHD_Connection *c, size_t *len);
void rest_admit(struct MHD_Connection *c, const struct conn_watch *cw, enum admit_rule rule, struct admission *v);
/* The reply's format, from Accept and the body's "streaming". */
enum fmt rest_format_of(const char *accept, const cJSON *body);
const cJSON *rest_last_member(const cJSON *obj, const char *name);

/* relay.c */
/* url: as libmicrohttpd decoded it (for the access log); path: the canonical one
 * passpath.c matched, forwarded as is. */
enum MHD_Result rest_start_pass(struct MHD_Connection *c, struct conn_watch *cw, const char *url, const char *path,
                                const char *method, int pass_route, const struct framing *fr,
                                const struct caller_id *who, const char *workspace, void **con_cls);
enum MHD_Result rest_pass_request_data(struct call *call, const char *data, size_t *size);
#endif
