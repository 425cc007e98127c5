/* The one event loop: libwebsockets owns it; everything else (MHD's epoll fd, our
 * listening sockets, signals) joins it as an adopted raw descriptor. */
#ifndef TGB_LOOP_H
#define TGB_LOOP_H
#include "config.h"

struct lws_context;
struct watcher;
typedef void (*watch_cb)(void *arg);

int loop_init(const struct config *cfg);
struct lws_context *loop_ctx(void);
/* Calls cb(arg) whenever fd is readable.  The loop owns fd from now on. */
struct watcher *loop_watch_fd(int fd, watch_cb cb, void *arg);
/* Stops watching and closes the fd (asynchronously, from the loop): safe from the
 * watcher's own callback. */
void loop_unwatch(struct watcher *w);
/* The same, closing the fd before returning; never from w's own callback. */
void loop_unwatch_now(struct watcher *w);
void loop_run(void);
void loop_stop(void);
void loop_destroy(void);
#endif
