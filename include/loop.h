/* The one event loop: libwebsockets owns it; everything else (MHD's epoll fd, our
 * listening sockets, signals) joins it as an adopted raw descriptor.  The loop knows
 * no module above it: each brings its own lws protocols (loop_add_protocol) or vhost,
 * and its own work before the loop waits (loop_before_poll). */
#ifndef TGB_LOOP_H
#define TGB_LOOP_H
#include "buf.h"
#include "config.h"
#include "list.h"
#include "timer.h"
#include <stdbool.h>
#include <stdint.h>

struct lws;
struct lws_context;
struct lws_protocols;

struct watcher;
typedef void (*watch_cb)(void *arg);

/* Adds p to the protocols of the loop's default vhost (dial.c's client connections
 * and raw sockets are bound there by name); before loop_init.  p must outlive the
 * loop. */
void loop_add_protocol(const struct lws_protocols *p);
int loop_init(const struct config *cfg);
struct lws_context *loop_ctx(void);
/* The OpenSSL SSL_CTX every client connection (the gateway's) is made from, or NULL
 * before lws made it or without TLS support. */
void *loop_client_tls_ctx(void);
/* Calls cb(arg) whenever fd is readable.  The loop owns fd from now on. */
struct watcher *loop_watch_fd(int fd, watch_cb cb, void *arg);
/* The same for an epoll set someone else owns and closes (libmicrohttpd's): the loop
 * watches a duplicate of epfd. */
struct watcher *loop_watch_epoll(int epfd, watch_cb cb, void *arg);

/* An epoll set of our own nested in the loop, for descriptors we want to hear about
 * without reading them (connections whose front end is not known yet, REST's
 * hang-up watch): cb(ptr, events) for each one ready, at most 64 a loop turn (the
 * rest on the next).  It lives as long as the loop; NULL if it cannot be made. */
struct loop_epoll;
typedef void (*loop_epoll_cb)(void *ptr, uint32_t events);
struct loop_epoll *loop_epoll_new(loop_epoll_cb cb);
/* EPOLL_CTL_ADD of fd with events (EPOLLIN, EPOLLRDHUP, EPOLLET, ...): 0, or -1 with
 * errno. */
int loop_epoll_add(struct loop_epoll *e, int fd, uint32_t events, void *ptr);
void loop_epoll_del(struct loop_epoll *e, int fd);
/* Stops watching and closes the fd (asynchronously, from the loop): safe from the
 * watcher's own callback. */
void loop_unwatch(struct watcher *w);
/* The same, closing the fd before returning; never from w's own callback. */
void loop_unwatch_now(struct watcher *w);

/* The before-poll phase (redis's beforeSleep, libuv's prepare): fn(arg) runs once
 * every loop turn, after the turn's events, before the loop waits for the next.
 * Hooks run in the order they were added; at most 8. */
int loop_before_poll(void (*fn)(void *arg), void *arg);
/* Something a hook looks at changed inside lws's timers, which run after the hooks:
 * the loop does not wait before it has run them again. */
void loop_wake(void);

/* libwebsockets before 4.4 (Debian 12 ships 4.1) clears POLLOUT after a raw
 * descriptor's writeable callback returns, undoing the callback's own request for
 * more: what is left beyond the socket buffer would never be written.  A raw
 * descriptor's writer that leaves bytes in out asks here; the request is made again
 * before the next poll, if out still holds bytes then.  Cancel before out or wsi go. */
struct loop_rearm {
    struct list node;
    struct lws *wsi;
    const struct buf *out;
};
void loop_rearm_writable(struct loop_rearm *r, struct lws *wsi, const struct buf *out);
void loop_rearm_cancel(struct loop_rearm *r);

void loop_run(void);
void loop_stop(void);
void loop_destroy(void);
#endif
