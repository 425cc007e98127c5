/* Pass-through: the gateway's routes that carry no envelope (the auth routes, i18n,
 * metrics, document-stream, import-core, export-core; reference §2.2-2.3, §8.4),
 * each local request relayed as one HTTP request of its own to the gateway through
 * dial.c (so TLS, proxies, name lookups and the connect deadline are the main
 * socket's).  Bodies stream both ways through two bounded buffers: a front end that
 * reads slowly slows this one upstream request (lws rx flow control), never the
 * shared socket, and memory stays flat for any size.  Transport-free: the front end
 * (src/front/rest/relay.c) feeds the upload, takes the download, and hears of
 * progress through pass_ops. */
#ifndef TGB_PASSTHROUGH_H
#define TGB_PASSTHROUGH_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "buf.h"
#include "config.h"

struct lws_context;
/* Its lws protocol (the gateway side of each call), with the loop: before loop_init. */
void passthrough_register_protocol(void);

/* Which route a pass-through call is, for logs and metric labels. */
enum pass_route {
    PASS_AUTH, PASS_I18N, PASS_METRICS, PASS_DOCUMENT_STREAM, PASS_IMPORT_CORE, PASS_EXPORT_CORE,
    PASS_IMPORT_SOCKET, PASS_EXPORT_SOCKET, PASS_ROUTE_N
};
const char *pass_route_name(enum pass_route r);
/* The HTTP routes: which one a local request is, is passpath.c's to say. */

/* How a call ended, for the metric label (truncated: the gateway's body ended before
 * its end, and so did the caller's). */
enum pass_outcome { PASS_OK, PASS_GATEWAY_ERROR, PASS_FAILED, PASS_ABORTED, PASS_TRUNCATED, PASS_OUTCOME_N };

struct pass_header {
    const char *name;   /* lower case, e.g. "content-type" */
    char *value;
};

struct pass_request {
    enum pass_route route;
    const char *method;
    const char *target;             /* path and query below the gateway's prefix, encoded */
    long long content_length;       /* -1: a body of unknown length (sent chunked); 0: none */
    const struct pass_header *headers; /* the request headers to relay (allow-listed by the caller) */
    size_t nheaders;
    const char *authorization;      /* the Authorization value to send, or NULL */
};

struct pass;
struct pass_ops {
    /* The response head: pass_status / pass_response_header / pass_body_length. */
    void (*head)(void *owner);
    /* Body bytes to take (pass_take), or the end of the body (pass_done). */
    void (*data)(void *owner);
    /* Room again for upload bytes (pass_put took less than offered before). */
    void (*room)(void *owner);
    /* The call failed: before the head, with the status and error the caller should
     * get; after it, the body is cut short (status 0).  No callback follows. */
    void (*fail)(void *owner, int status, const char *type, const char *message);
};

int passthrough_init(struct lws_context *ctx, const struct config *cfg);
/* The "passthrough" status source (passthrough_status.c), registered by passthrough_init. */
void passthrough_status_register(const struct config *cfg);
/* Starts the call; NULL with a status and message when it cannot (too many, bad). */
struct pass *pass_start(const struct pass_request *rq, const struct pass_ops *ops, void *owner, int *status,
                        const char **type, char *msg, size_t msglen);
/* Upload: takes what fits of data (returns how much); pass_put_end after the last. */
size_t pass_put(struct pass *p, const void *data, size_t n);
void pass_put_end(struct pass *p);
/* The gateway's status once the head is the owner's (pass_ops.head), else 0.  A 2xx
 * head comes at once and its body streams unchanged; any other is held until its
 * body is whole, then given with every known secret redacted from the body (as from
 * every relayed header), or, past 64 KiB or encoded, with tgbridge's own
 * gateway-error body instead. */
int pass_status(const struct pass *p);
/* The i-th response header relayed (allow-listed), false past the last. */
bool pass_response_header(const struct pass *p, size_t i, const char **name, const char **value);
/* The body's length when the gateway gave one, else -1. */
long long pass_body_length(const struct pass *p);
/* Takes up to max body bytes; 0 when none are waiting. */
size_t pass_take(struct pass *p, void *out, size_t max);
/* The whole body has been taken. */
bool pass_done(const struct pass *p);
/* The gateway's body ended before its end (the caller's was broken off: pass_ops.fail
 * with status 0). */
bool pass_truncated(const struct pass *p);
/* The caller is gone, or has been answered: the upstream request is aborted if it is
 * still running and p is freed; no callback follows. */
void pass_end(struct pass *p, bool caller_gone);

/* Pass-through calls running, by route, and totals by route and outcome. */
size_t passthrough_active(void);
unsigned long long passthrough_count(enum pass_route r, enum pass_outcome o);
const char *pass_outcome_name(enum pass_outcome o);
unsigned long long passthrough_bytes(bool in);
/* Accounting for the WebSocket pass-through (wspass.c), which shares the limit. */
bool passthrough_slot_take(void);
void passthrough_slot_give(enum pass_route r, enum pass_outcome o, uint64_t in, uint64_t out);
#endif
