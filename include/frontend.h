/* A front end: what serves a connection once listener.c has told what it speaks
 * (REST, its pass-through flavour, the line protocol, the local WebSocket, the bulk
 * sockets), and what it offers the rest of the daemon, so that the listener, drain,
 * /status and /metrics iterate front ends instead of naming them.  A front end
 * registers itself (for stats and shutdown) when it starts; the listener's route rows
 * point at these objects. */
#ifndef TGB_FRONTEND_H
#define TGB_FRONTEND_H
#include <stdbool.h>
#include <stddef.h>
#include "access.h"
#include "httphead.h"

struct frontend_stats {
    size_t connections;   /* local connections open */
    size_t active;        /* requests not finished (REST: calls being answered) */
    size_t unsent;        /* reply bytes not yet written to callers */
};

/* What the listener learned of a connection before handing it over. */
struct handover {
    const struct http_head *head; /* its first request's head, still unread on fd; NULL: none (the line
                                   * protocol, or a head that never completed) */
    const struct peer *peer;
    int route;                    /* what the route row's match returned (REST's pass-through: the
                                   * enum pass_route); -1: no row matched */
    const struct refusal *first;  /* an upgrade another front end turned down: the answer to its first
                                   * request (NULL: none) */
};

struct frontend {
    const char *name;     /* "rest", "line", "ws": the /status key and metric label */
    /* Serves fd.  True: fd is the front end's from now on (closed by it, on failure
     * too).  False: refused before anything was read -- why in no -- and fd is still
     * the caller's, to be answered over HTTP (listener.c).  May be NULL for a front end
     * the listener never routes to. */
    bool (*take)(int fd, const struct handover *in, struct refusal *no);
    /* May be NULL for a flavour that shares another's connections (REST's pass-through). */
    void (*stats)(struct frontend_stats *out);
    /* Shutdown: every unfinished request gets its final error, of this type. */
    void (*fail_all)(const char *type, const char *message);
    /* After the drain: close what is left politely (may be NULL). */
    void (*close_all)(void);
};

void frontend_register(const struct frontend *fe);
/* The i-th registered front end, or NULL past the last. */
const struct frontend *frontend_at(size_t i);
/* Registers the front ends' /status and /metrics source (frontend_status.c). */
void frontend_status_register(void);
/* Sums over every front end. */
void frontend_totals(struct frontend_stats *out);
#endif
