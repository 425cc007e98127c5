/* Listening sockets, and the one place that decides which protocol serves an
 * accepted connection (listener_dispatch). */
#ifndef TGB_LISTENER_H
#define TGB_LISTENER_H
#include <stddef.h>
#include <sys/socket.h>
#include "access.h"
#include "config.h"

struct listener;
typedef void (*accept_cb)(int fd, const struct sockaddr *addr, socklen_t len, void *arg);

/* What a listener speaks: HTTP (REST, the local WebSocket, told apart by the request
 * head), and on the Unix socket the line protocol too (told apart by the first bytes). */
enum { PROTO_HTTP = 1, PROTO_LINE = 2, PROTO_ADMIN = 4 /* the admin listener: its own route table */ };

void listener_init(const struct config *cfg);
/* Watches a listening fd; cb gets every accepted (non-blocking, close-on-exec) fd. */
struct listener *listener_start(int fd, accept_cb cb, void *arg);
/* Binds and listens on host:port (port 0 = any); *bound_port gets the real port. */
struct listener *listener_tcp(const char *host, int port, int *bound_port, char *err, size_t errlen);
/* A listening TCP socket handed over by systemd (activation.c): its address goes to
 * host (numeric) and bound_port.  It is never re-bound. */
struct listener *listener_tcp_adopt(int fd, char *host, size_t hostlen, int *bound_port, char *err, size_t errlen);
/* The admin listener (--admin-listen, or systemd's socket named "admin" when
 * adopted_fd >= 0: its address goes to cfg): the health routes, /status and
 * /shutdown, by a route table of its own.  NULL with err empty: none configured. */
struct listener *listener_admin(struct config *cfg, int adopted_fd, char *err, size_t errlen);
void listener_close(struct listener *l);
/* Serves fd with the front end its first bytes ask for, among protos, within
 * --client-timeout of peer->accepted_at: the line protocol, or by the request head's
 * route row (listener.c), each a struct frontend. */
void listener_dispatch(int fd, const struct peer *peer, unsigned protos);
#endif
