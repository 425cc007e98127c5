/* The local REST mirror (libmicrohttpd in external-epoll mode inside the lws loop):
 * the gateway's own routes, answered from the one upstream socket, with optional
 * NDJSON / SSE streaming, plus /healthz, /readyz, /status and /metrics. */
#ifndef TGB_REST_H
#define TGB_REST_H
#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>
#include "config.h"

int rest_init(const struct config *cfg);
/* Serves an accepted connection; takes ownership of fd (closed on failure).  Its
 * first request head is due within --client-timeout of accepted_at (now_mono()).
 * first: the answer to its first request when that is a WebSocket upgrade the
 * listener turned down (NULL: none).  bulk: its first request is for a pass-through
 * route (served with larger buffers). */
struct refusal;
int rest_add_connection(int fd, const struct sockaddr *addr, socklen_t addrlen, double accepted_at,
                        const struct refusal *first, bool bulk);
/* Fails every call still waiting or streaming with a final error (shutdown). */
void rest_fail_all(int status, const char *type, const char *message);
void rest_shutdown(void);
#endif
