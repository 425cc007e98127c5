/* The Unix socket's line protocol: one JSON envelope per line in, one reply per line
 * out (docs/protocols.md "Unix socket").  Each client's ids are its own; tgbridge maps them to
 * upstream ids and back. */
#ifndef TGB_LINE_PROTO_H
#define TGB_LINE_PROTO_H
#include <stddef.h>
#include "config.h"
#include "frontend.h"

/* Its lws protocol (raw sockets on the loop's vhost), with the loop: before
 * loop_init. */
void line_register_protocol(void);
void line_init(const struct config *cfg);
/* Its take serves fd (an accepted Unix connection) with the line protocol. */
extern const struct frontend line_frontend;
/* Writes one error line to a socket we are about to refuse, best effort. */
void line_refuse(int fd, const char *type, const char *message);
#endif
