/* systemd's service notification protocol (sd_notify(3)), spoken directly: one
 * datagram per state to $NOTIFY_SOCKET — no libsystemd needed.  Without
 * $NOTIFY_SOCKET (not under systemd, or Type=simple) every call does nothing. */
#ifndef TGB_SDNOTIFY_H
#define TGB_SDNOTIFY_H
#include <stdbool.h>

/* Reads and unsets $NOTIFY_SOCKET / $WATCHDOG_USEC / $WATCHDOG_PID. */
void sdnotify_init(void);
/* READY=1 with a STATUS= line; starts the watchdog keep-alive if systemd asked for one. */
void sdnotify_ready(const char *status);
/* STATUS=<text>, for `systemctl status`. */
void sdnotify_status(const char *status);
/* STOPPING=1 with a STATUS= line. */
void sdnotify_stopping(const char *status);
void sdnotify_close(void);
#endif
