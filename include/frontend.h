/* What every front end (REST, the line protocol, the local WebSocket, ...) offers the
 * rest of the daemon, so that drain, /status and /metrics iterate front ends instead
 * of naming them.  A front end registers itself when it starts. */
#ifndef TGB_FRONTEND_H
#define TGB_FRONTEND_H
#include <stddef.h>

struct frontend_stats {
    size_t connections;   /* local connections open */
    size_t active;        /* requests not finished (REST: calls being answered) */
    size_t unsent;        /* reply bytes not yet written to callers */
};

struct frontend {
    const char *name;     /* "rest", "line", "ws": the /status key and metric label */
    void (*stats)(struct frontend_stats *out);
    /* Shutdown: every unfinished request gets its final error, of this type. */
    void (*fail_all)(const char *type, const char *message);
    /* After the drain: close what is left politely (may be NULL). */
    void (*close_all)(void);
};

void frontend_register(const struct frontend *fe);
/* The i-th registered front end, or NULL past the last. */
const struct frontend *frontend_at(size_t i);
/* Sums over every front end. */
void frontend_totals(struct frontend_stats *out);
#endif
