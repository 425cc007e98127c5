/* "Watch these files, tell me when one may have changed": inotify on each file's
 * directory, so that a file replaced by rename and Kubernetes' atomic `..data` symlink
 * swap (the file is a symlink into `..data`, which is itself renamed over) are seen as
 * well as a write in place.  Bursts of events are gathered for a moment, and the
 * callback runs only when what the path reads has changed since it was last seen
 * (a file that vanished or became empty is a change: the callback decides to keep
 * the old value).  What to reload is the caller's business. */
#ifndef TGB_FILEWATCH_H
#define TGB_FILEWATCH_H
#include <stddef.h>

typedef void (*filewatch_cb)(const char *path, void *arg);

/* Watches path (copied) from now on; cb(path, arg) runs on the loop after a change.
 * 0, or -1 with why in err (inotify unavailable, the directory cannot be watched):
 * the caller logs it and goes on without the watch. */
int filewatch_add(const char *path, filewatch_cb cb, void *arg, char *err, size_t errlen);
/* Stops every watch and frees what they hold. */
void filewatch_stop(void);
#endif
