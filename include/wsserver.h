/* The one lws server vhost for local WebSockets served by lws: the bulk sockets'
 * (wspass.c; the local /api/v1/socket reads its frames itself, wssock.h).  lws moves an upgraded connection on an adopted
 * socket to the first protocol of the first listen-less server vhost, whatever it
 * was adopted for and on (lws_select_vhost), so there is exactly one such vhost, and
 * its protocol hands each connection's callbacks to the handler its object names. */
#ifndef TGB_WSSERVER_H
#define TGB_WSSERVER_H
#include <libwebsockets.h>
#include "config.h"

/* The first member of every object adopted here (the wsi's opaque user data): the
 * callback that serves it. */
struct wsserver_conn {
    lws_callback_function *callback;
};

/* After loop_init: the vhost, pinging clients silent for --ping-interval and
 * dropping those that have not answered --ping-timeout later. */
int wsserver_init(struct lws_context *ctx, const struct config *cfg);
/* Serves fd, whose upgrade request is still unread on it, with conn->callback; the
 * wsi, or NULL (lws closed fd). */
struct lws *wsserver_adopt(int fd, struct wsserver_conn *conn);

/* Writes a close frame (code, and reason's n bytes, at most 123) on any WebSocket wsi,
 * ours or a client's, and gives the peer timeout seconds to answer it.  lws's own
 * close (lws_close_reason, then -1) drops TCP right after its frame; after this one
 * the connection stays until the peer's close arrives -- then the callback returns
 * nonzero from LWS_CALLBACK_WS_PEER_INITIATED_CLOSE, so lws ends it without a second
 * close frame -- or the timeout passes (RFC 6455 §7.1.1).  -1: the write failed. */
int wsserver_send_close(struct lws *wsi, int code, const char *reason, size_t n, double timeout);
#endif
