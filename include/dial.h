/* Client connections to the gateway: the one connect path for every connection
 * tgbridge opens (the upstream socket today; pass-through and extra connections
 * later).  A dial looks the gateway's host name up off the loop -- or, through a
 * proxy, the proxy's: the proxy resolves the gateway's -- tries each address in turn
 * as lws does with names it resolves itself, bounds the whole attempt with one
 * deadline (--connect-timeout) owned by tgbridge rather than lws's context-wide
 * timeouts, knows which phase the attempt is in, and says why it failed. */
#ifndef TGB_DIAL_H
#define TGB_DIAL_H
#include <stdbool.h>
#include <stddef.h>
#include "config.h"
#include "loop.h"
#include "resolver.h"
#include <libwebsockets.h>

enum dial_phase {
    DIAL_IDLE,
    DIAL_RESOLVING,   /* the gateway's (or the proxy's) host name */
    DIAL_CONNECTING,  /* TCP, proxy CONNECT, TLS, the upgrade request and its reply */
    DIAL_OPEN,        /* upgraded; the owner's own phase (e.g. authentication) runs */
    DIAL_SETTLED,     /* the owner said it is done: no deadline any more */
};

struct dial;
struct dial_ops {
    /* The WebSocket upgrade succeeded (CLIENT_ESTABLISHED) -- or, for an HTTP request
     * (method set), the response head arrived (ESTABLISHED_CLIENT_HTTP; the headers
     * can be read only now). */
    void (*opened)(struct dial *d);
    /* The attempt failed, or the connection closed: d->reason says why and d->wsi is
     * NULL.  Exactly once per successful dial_start, last thing the dial does (the
     * owner may free d in it), and never from inside dial_start itself. */
    void (*gone)(struct dial *d);
    /* Optional: extra headers for the upgrade request; nonzero fails the attempt. */
    int (*append_headers)(struct dial *d, unsigned char **p, unsigned char *end);
};

struct dial {
    /* Set by the owner before dial_start. */
    const struct dial_ops *ops;
    const char *local_protocol;      /* the lws protocol the connection is bound to */
    const char *method;              /* NULL: a WebSocket upgrade; else an HTTP request */
    lws_retry_bo_t *retry;           /* keep-alive (validity ping) policy */
    char path[4096];                 /* request path; may hold ?token=, wiped by dial_release */
    /* What the owner's phase waits for, once open ("reply to the authentication
     * frame"), for the deadline's reason. */
    const char *awaiting;

    /* State, read-only for the owner. */
    struct lws *wsi;
    enum dial_phase phase;
    char reason[512];                /* why it failed or closed; the first reason given wins */
    int http_status;                 /* the upgrade's reply status when it was not 101 */
    bool deadline_hit;
    bool closing;                    /* dial_close was called */

    /* Private. */
    bool tcp_up, request_sent, tls_seen, in_connect, failed_in_connect;
    char tls_error[200];
    char host_header[300];
    struct timer deadline, later;
    unsigned lookup;
    struct resolved *addrs;
    size_t addr_idx;
};

void dial_init(struct lws_context *ctx, const struct config *cfg);
/* Starts the attempt.  0: under way (gone will follow, eventually); -1: could not
 * start, d->reason says why, nothing to release. */
int dial_start(struct dial *d);
/* Every lws callback for a dial's wsi goes here first: 1 when it was the dial's own
 * (connection phases, closes, the kill after dial_close), 0 when it is the owner's. */
int dial_event(struct dial *d, struct lws *wsi, int reason, void *user, void *in, size_t len);
/* The owner's own phase after opening is over: the deadline stops. */
void dial_settled(struct dial *d);
/* Records why the connection is failing (unless a reason is already set). */
void dial_reason(struct dial *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Ends the attempt or connection at once, from anywhere but d's own callbacks: gone
 * runs before this returns.  For a connection that should say goodbye use dial_close. */
void dial_abort(struct dial *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Aborts the TCP connection of an open one (no close handshake: a gateway whose reader
 * is stalled would never answer it, ref §2.4); gone follows from the loop. */
void dial_close(struct dial *d);
/* What the attempt is doing, for /status: "resolving", "connecting", "open", "". */
const char *dial_phase_name(const struct dial *d);
#endif
