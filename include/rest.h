/* The local REST mirror (libmicrohttpd in external-epoll mode inside the lws loop):
 * the gateway's own routes, answered from the one upstream socket, with optional
 * NDJSON / SSE streaming, plus /healthz, /readyz, /status and /metrics. */
#ifndef TGB_REST_H
#define TGB_REST_H
#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>
#include "config.h"
#include "frontend.h"

int rest_init(const struct config *cfg);
/* Their take serves an accepted connection (fd closed on failure); its first request
 * head is due within --client-timeout of the peer's accept.  in->first: the answer to
 * its first request, an upgrade another front end turned down.  rest_pass_frontend:
 * the first request is for the pass-through route in->route (enum pass_route),
 * served with larger buffers. */
extern const struct frontend rest_frontend, rest_pass_frontend;
/* The admin listener's connections: the health routes, /status and POST /shutdown
 * (route.c's admin table, admitted by ADMIT_OPEN / ADMIT_ADMIN), 404 for the rest. */
extern const struct frontend rest_admin_frontend;
/* fn runs when POST /shutdown has been answered (admitted): main.c drains as on SIGTERM. */
void rest_on_shutdown(void (*fn)(void));
/* Fails every call still waiting or streaming with a final error (shutdown). */
void rest_fail_all(int status, const char *type, const char *message);
void rest_shutdown(void);
#endif
