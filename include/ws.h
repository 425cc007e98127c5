/* The local /api/v1/socket: the gateway's WebSocket protocol (reference §2.4, §3,
 * §4, §5, §9.2-9.4) served to local clients -- the official CLI, Python API,
 * TypeScript client, MCP server -- and multiplexed onto tgbridge's upstream like every
 * other front end (session.c).  libwebsockets serves it in the one loop, on a server
 * vhost that listens on nothing and adopts the connections listener.c hands over. */
#ifndef TGB_WS_H
#define TGB_WS_H
#include <stdbool.h>
#include "config.h"
#include "frontend.h"

struct lws_context;
struct lws_protocols;
extern const struct lws_protocols ws_protocol;

int ws_init(struct lws_context *ctx, const struct config *cfg);
/* Its take serves fd, whose upgrade request is still unread on it, as a local
 * WebSocket -- unless the upgrade is refused (admission, --max-ws-clients). */
extern const struct frontend ws_frontend;
/* The server vhost local WebSockets are adopted on, the bulk sockets' (wspass.c)
 * too.  lws binds every upgrade without a subprotocol to the vhost's first protocol,
 * whatever the connection was adopted for, so ws.c's callback hands a connection
 * whose object starts with LOCAL_BULK on to wspass.c. */
struct lws_vhost *ws_local_vhost(void);
enum { LOCAL_SESSION = 0x5e55, LOCAL_BULK = 0xb0c5 };
#endif
