/* Listening sockets.  Accepted connections go through listener_dispatch, the one place
 * that decides which protocol serves them — today every TCP connection is HTTP; the
 * Unix socket (line JSON or HTTP) and a local /api/v1/socket WebSocket will be told
 * apart here by their first bytes. */
#ifndef TGB_LISTENER_H
#define TGB_LISTENER_H
#include <stddef.h>

struct listener;

/* Binds and listens on host:port (port 0 = any); *bound_port gets the real port. */
struct listener *listener_tcp(const char *host, int port, int *bound_port, char *err, size_t errlen);
void listener_close(struct listener *l);
#endif
