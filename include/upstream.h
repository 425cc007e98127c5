/* The WebSockets to the gateway: one persistent connection, plus overflow ones while
 * every window is full (docs/operations.md "Connections and flow control"); connect through
 * dial.c, authenticate the way the gateway's era expects (reference §1.1, §3), keep
 * alive, reconnect, send envelopes and hand every reply frame to the mux. */
#ifndef TGB_UPSTREAM_H
#define TGB_UPSTREAM_H
#include <stdbool.h>
#include <stddef.h>
#include "config.h"

struct lws_context;

enum upstream_state { UP_DOWN, UP_RESOLVING, UP_CONNECTING, UP_AUTHENTICATING, UP_READY };

/* Its lws protocol, with the loop: before loop_init. */
void upstream_register_protocol(void);
/* Also registers the "upstream" status source (upstream_status.c) and the before-poll
 * hook that resumes reading paused for a first part. */
int upstream_init(struct lws_context *ctx, struct config *cfg);
void upstream_status_register(const struct config *cfg);
void upstream_start(void);
/* Something became sendable (a queued request, window room) in lane l: the mux's
 * sink (NULL or the mux's own lane: tgbridge's own identity). */
struct lane;
void upstream_sendable(struct lane *l);
/* The lane of the pool presenting key k (issue 17: a caller's upstream_token_file key
 * or forwarded credential), opened on first use; NULL with a refusal: 503
 * too-many-identities past --max-caller-pools / --max-upstream-connections with none
 * idle, 401 auth-failed for a key the gateway rejected within 30 s. */
struct gateway_key;
struct refusal;
struct buf;
struct lane *upstream_lane_for(const struct gateway_key *k, struct refusal *no);
/* Why lane l's pool is not ready ("" when it is; NULL: tgbridge's own). */
const char *upstream_lane_reason(struct lane *l);
/* A new --policy applies: the pools of callers it no longer gives their key drain
 * like a rotated-out connection (--drain-timeout). */
void upstream_policy_changed(void);
/* /metrics: callers' pools open (closing ones included), and calls refused with
 * too-many-identities. */
size_t upstream_caller_pool_count(void);
unsigned long long upstream_identities_refused(void);
/* /status: callers' pools, by caller name (never a key). */
void upstream_caller_pools(struct buf *out);
bool upstream_ready(void);
enum upstream_state upstream_state(void);
/* False only while no gateway was given and none has been found yet (discover.h):
 * pass-through and bulk sockets dial only a gateway that is known. */
bool upstream_gateway_known(void);
/* Why the upstream is not ready, for 503 bodies and /readyz. */
const char *upstream_reason(void);
const char *upstream_era(void);
const char *upstream_default_workspace(void);
unsigned upstream_reconnects(void);
unsigned upstream_rotations(void);
size_t upstream_window_used(void);
bool upstream_draining(void);
/* "" before any refresh, "ok", or why the last in-band refresh failed. */
const char *upstream_reauth_status(void);
/* Replaces the connection make-before-break (issue 5): a new one is opened and
 * authenticated; the old one keeps receiving for its live requests, then closes. */
void upstream_rotate(const char *why);
/* SIGHUP or the file changing (why: which, for the log): re-read --token-file; V2:
 * re-authenticate in-band; otherwise rotate.  A missing or empty file keeps the
 * current token (logged). */
void upstream_reload_token(const char *why);
/* Called when the upstream becomes ready (what: the era) or, once per distinct
 * reason, not ready (what: the reason). */
typedef void (*upstream_change_fn)(bool ready, const char *what);
void upstream_on_change(upstream_change_fn fn);
/* Begins a clean close of every connection. */
void upstream_stop(void);
bool upstream_closed(void);
/* /status: every connection as a JSON array. */
struct buf;
void upstream_connections(struct buf *out);
size_t upstream_connection_count(void);
/* /metrics: connections opened (opened) or closed by why, i-th; false past the last. */
bool upstream_counter(size_t i, bool opened, const char **name, unsigned long long *n);
#endif
