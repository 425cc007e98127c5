/* The Unix-domain socket: created with the configured mode and group, never stolen
 * from a live daemon, removed on clean exit; peers optionally checked with
 * SO_PEERCRED.  Connections speak the line protocol or HTTP (listener_dispatch). */
#ifndef TGB_UNIX_LISTENER_H
#define TGB_UNIX_LISTENER_H
#include <stddef.h>
#include "config.h"

struct unix_listener;

/* NULL with err set on failure; NULL with err empty when disabled (--unix none). */
struct unix_listener *unix_listener_open(const struct config *cfg, char *err, size_t errlen);
/* The Unix socket systemd handed over (activation.c): served as ours, peers checked
 * alike, but never unlinked, re-created or re-moded -- the socket unit owns it.  Its
 * path goes to path (for logs). */
struct unix_listener *unix_listener_adopt(const struct config *cfg, int fd, char *path, size_t pathlen, char *err,
                                          size_t errlen);
/* Stops accepting and removes the socket file if it is still ours. */
void unix_listener_close(struct unix_listener *u);
#endif
