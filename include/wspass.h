/* The gateway's bulk import and export sockets (/api/v1/flow/{flow}/import/{kind},
 * .../export/{kind}; reference §2.2, §3.2): not multiplexed, so each local socket gets
 * a WebSocket of its own to the gateway (through dial.c), authenticated as tgbridge
 * (?token=), and every frame is relayed both ways unchanged -- text or binary,
 * fragmented as it comes -- with close codes relayed and back-pressure end to end:
 * a side that does not read stops the other side's reading, of this pair alone. */
#ifndef TGB_WSPASS_H
#define TGB_WSPASS_H
#include <stdbool.h>
#include "config.h"
#include "frontend.h"

struct lws_context;
/* Its lws protocol for the gateway sides (on the loop's client vhost), with the loop:
 * before loop_init. */
void wspass_register_protocol(void);
int wspass_init(struct lws_context *ctx, const struct config *cfg);
/* A request head for one of the bulk sockets (path and upgrade checked). */
bool wspass_route(const struct http_head *h);
/* Its take serves fd, whose upgrade request is still unread on it, unless refused
 * (admission, a target too long, --max-passthrough). */
extern const struct frontend wspass_frontend;
#endif
