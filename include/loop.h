/* The one event loop: libwebsockets owns it; everything else (MHD's epoll fd, our
 * listening sockets, signals) joins it as an adopted raw descriptor. */
#ifndef TGB_LOOP_H
#define TGB_LOOP_H
#include "config.h"
#include "timer.h"
#include <stdbool.h>

struct lws_context;

struct watcher;
typedef void (*watch_cb)(void *arg);

int loop_init(const struct config *cfg);
struct lws_context *loop_ctx(void);
/* The OpenSSL SSL_CTX every client connection (the gateway's) is made from, or NULL
 * before lws made it or without TLS support. */
void *loop_client_tls_ctx(void);
/* Calls cb(arg) whenever fd is readable.  The loop owns fd from now on. */
struct watcher *loop_watch_fd(int fd, watch_cb cb, void *arg);
/* Stops watching and closes the fd (asynchronously, from the loop): safe from the
 * watcher's own callback. */
void loop_unwatch(struct watcher *w);
/* The same, closing the fd before returning; never from w's own callback. */
void loop_unwatch_now(struct watcher *w);

/* A caller's first part of a stream is waiting to be written: whoever is reading a
 * batch of frames (upstream.c) should let the loop write it before reading on, so
 * that its time to first part is not the time the rest of the batch takes. */
void loop_flush_soon(void);
/* True once after loop_flush_soon. */
bool loop_flush_wanted(void);
/* The reader paused for it: fn runs at the next loop_flush_done (a front end wrote to
 * a caller), so reading goes on as soon as the part is out, not a loop turn later. */
void loop_flush_paused(void (*fn)(void));
void loop_flush_done(void);

void loop_run(void);
void loop_stop(void);
void loop_destroy(void);
#endif
