/* What SIGHUP does, callable by anything that should do the same (a file watcher). */
#ifndef TGB_RELOAD_H
#define TGB_RELOAD_H
#include "config.h"

/* Remembers the live configuration and how it was loaded (argv is kept: a reload
 * loads again with the same flags and environment). */
void reload_init(struct config *cfg, int argc, char **argv);
/* Re-reads --config (reloadable options apply to new calls, others are reported as
 * needing a restart), then --client-token-file, --token-file and --ca-file.  why
 * names the trigger in the log ("SIGHUP"). */
void reload_all(const char *why);
/* Watches those files, and --admin-token-file (filewatch.h): a change does what SIGHUP does for that
 * file alone. */
void reload_watch_secrets(void);
#endif
