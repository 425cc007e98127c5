/* The close frame that waits for the peer's answer, on a WebSocket lws serves (the
 * bulk sockets' gateway side; the local WebSockets are tgbridge's own, wssock.h).
 * Named for the vhost it once owned. */
#ifndef TGB_WSSERVER_H
#define TGB_WSSERVER_H
#include <libwebsockets.h>
#include <stddef.h>

/* Writes a close frame (code, and reason's n bytes, at most 123) on a WebSocket wsi
 * and gives the peer timeout seconds to answer it.  lws's own close (lws_close_reason,
 * then -1) drops TCP right after its frame; after this one the connection stays until
 * the peer's close arrives -- then the callback returns nonzero from
 * LWS_CALLBACK_WS_PEER_INITIATED_CLOSE, so lws ends it without a second close frame --
 * or the timeout passes (RFC 6455 §7.1.1).  -1: the write failed. */
int wsserver_send_close(struct lws *wsi, int code, const char *reason, size_t n, double timeout);
#endif
