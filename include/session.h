/* One local client's requests over the mux, whatever carries them (the line protocol,
 * the local WebSocket): its envelopes checked as the gateway reads them and spliced
 * with an upstream id of ours, its own ids mapped back onto every reply, every reply
 * shaped as {"id":<its id>,...}, and all of it failed or let go when the client
 * leaves.  Transport-free: the transports keep only their framing and I/O. */
#ifndef TGB_SESSION_H
#define TGB_SESSION_H
#include <stdbool.h>
#include <stddef.h>
#include "config.h"
#include "envelope.h"
#include "list.h"
#include "reqtable.h"

struct session;

struct session_ops {
    /* One reply (a JSON object, no framing).  May close the session (a client that
     * reads too slowly): the session notices. */
    void (*send)(struct session *s, const char *msg, size_t len);
    /* A message with a "type" (ping, auth, ...): the transport's own business. */
    void (*control)(struct session *s, const struct client_msg_info *m);
    /* The number of unfinished requests changed (for flow control); may be NULL. */
    void (*pending_changed)(struct session *s);
};

/* What differs between transports. */
struct session_rules {
    const char *what;       /* what a message is called in errors: "line", "message" */
    bool duplicate_ids;     /* an id still in flight may be sent again, and each send is
                             * its own request (the TypeScript client re-sends) */
    bool nested_errors;     /* a service error nested in the response stays there, as
                             * the gateway sent it, instead of becoming a top-level error */
    size_t max_pending;     /* more unfinished requests are refused at once (0: no cap) */
    const char *frontend;   /* the front end's name, for the access log: "line", "ws" */
};

struct session {
    const struct session_ops *ops;
    const struct session_rules *rules;
    const struct config *cfg;
    void *owner;             /* the transport's connection */
    struct list reqs;        /* unfinished requests, in arrival order */
    size_t npending;
    unsigned long long next_auto_id;
    bool locked;             /* requests refused with auth-required (local client token) */
    struct caller caller;    /* this client, as the fair queue sees it */
    const char *who;         /* the caller's name under --policy (caller_id.name), or NULL */
    char *credential;        /* what it presented (a Bearer, ?token=, an auth frame's token): a
                              * forward caller's own gateway key (issue 17); NULL: none */
    size_t credential_len;
    bool closed;
};

void session_init(struct session *s, const struct session_rules *rules, const struct session_ops *ops,
                  const struct config *cfg, void *owner);
/* One message from the client: a request, a control message, or junk (answered). */
void session_message(struct session *s, const char *text, size_t len);
/* An error reply of the transport's own (a line too long, a message too big); cid is
 * the client's id as JSON text, or NULL. */
void session_error(struct session *s, const char *cid, const char *type, const char *message);
/* Every unfinished request gets its final error (shutdown). */
void session_fail_all(struct session *s, const char *type, const char *message);
/* The credential the client presented (kept, scrubbed when replaced or closed). */
void session_set_credential(struct session *s, const char *p, size_t n);
/* The client is gone: its requests are let go (their late frames dropped), nothing
 * more is sent.  Safe from inside ops->send. */
void session_close(struct session *s);

/* The error reply shape: {"id":<cid or null>,"error":{"type","message"},"complete":true}. */
void session_error_json(struct buf *b, const char *cid, const char *type, const char *message);
#endif
