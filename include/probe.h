/* The client commands of the tgbridge binary, each a short-lived process of its own
 * (never the daemon's loop): "tgbridge probe live|ready" asks /healthz or /readyz of a
 * running tgbridge -- its admin listener if one is configured, else its TCP listener,
 * else its Unix socket, found from the same flags, environment and config file as the
 * daemon -- and "tgbridge shutdown" sends POST /shutdown to its admin listener.  Both
 * print one line and exit 0 (yes), 1 (no, or no answer within --timeout) or 2 (a
 * usage or configuration error).  The probe reads no token file and creates no
 * socket, so any user may run it. */
#ifndef TGB_PROBE_H
#define TGB_PROBE_H

/* argv[1] is "probe" or "shutdown"; the exit status. */
int probe_main(int argc, char **argv);
#endif
