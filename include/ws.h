/* The local /api/v1/socket: the gateway's WebSocket protocol (reference §2.4, §3,
 * §4, §5, §9.2-9.4) served to local clients -- the official CLI, Python API,
 * TypeScript client, MCP server -- and multiplexed onto tgbridge's upstream like every
 * other front end (session.c).  Its sockets are tgbridge's own (wssock.h: the
 * handshake, the frames and the closing handshake), polled by lws in the one loop. */
#ifndef TGB_WS_H
#define TGB_WS_H
#include <stdbool.h>
#include "config.h"
#include "frontend.h"

struct lws_context;

int ws_init(struct lws_context *ctx, const struct config *cfg);
/* Its take serves fd, whose upgrade request is still unread on it, as a local
 * WebSocket -- unless the upgrade is refused (admission, --max-ws-clients). */
extern const struct frontend ws_frontend;
#endif
