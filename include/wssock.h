/* A server WebSocket on a socket tgbridge reads and writes itself (RFC 6455): the
 * opening handshake answered from the head the listener peeked, the client's frames
 * read with wsread.c -- a protocol error fails the connection with its close code
 * (1002, 1007), which libwebsockets 4.1.6's ws role cannot do: it never looks at a
 * client's mask bit, nor tells its user --, frames written with wsframe.c in bursts,
 * pings answered and idle clients pinged, and both closing handshakes.  lws only
 * polls the descriptor (adopted as a raw one, as the line protocol's are). */
#ifndef TGB_WSSOCK_H
#define TGB_WSSOCK_H
#include <stdbool.h>
#include <stddef.h>
#include "buf.h"
#include "config.h"
#include "httphead.h"
#include "list.h"
#include "timer.h"
#include "wsread.h"

struct wssock;
struct wssock_ops {
    /* A piece of a message (a WSREAD_DATA event); none once our close is queued. */
    void (*data)(struct wssock *s, const struct wsread_event *ev);
    /* No more messages will come: the client closed, or failed the protocol. */
    void (*ending)(struct wssock *s);
    /* The connection is closed; s is its owner's to free. */
    void (*gone)(struct wssock *s);
};

/* Embedded in its owner; the members are wssock.c's. */
struct wssock {
    const struct wssock_ops *ops;
    unsigned long long serial;   /* the owner's, for the log */
    struct lws *wsi;
    int fd;
    struct wsread rd;
    struct buf out;              /* frames (whole, ours) not yet written */
    bool close_sent;             /* our close frame is queued: nothing after it */
    bool close_out;              /* ... and written */
    bool peer_closed;            /* the client's close was read */
    bool failed;                 /* the client broke the protocol: FIN after our close */
    bool dead;                   /* to be closed at once */
    bool ping_out;               /* our ping is unanswered */
    bool rearm;                  /* bytes left after a write: POLLOUT asked again */
    double last_rx;
    struct timer idle, closer;
    struct list node;
};

/* Before loop_init: the lws protocol its descriptors are polled with. */
void wssock_register_protocol(void);
/* After loop_init. */
void wssock_init(const struct config *cfg);
/* The handshake can be answered: a Sec-WebSocket-Key of 16 bytes (RFC 6455 §4.1). */
bool wssock_key_ok(const struct http_head *h);
/* Serves fd, whose upgrade request h is still unread on it: reads the request off,
 * answers 101 and starts.  False: it could not (fd is closed; s was never linked). */
bool wssock_start(struct wssock *s, int fd, const struct http_head *h, const struct wssock_ops *ops);
/* Queues one text message. */
void wssock_send(struct wssock *s, const char *msg, size_t len);
/* Queues our close frame after everything queued (reason at most 123 bytes), then
 * waits --close-timeout for it to be written and as long again for the client's
 * answer.  Once only. */
void wssock_close(struct wssock *s, int code, const char *reason);
/* The client's Sec-WebSocket-Accept for key (RFC 6455 §4.2.2): 28 characters and a NUL. */
void wssock_accept(const char *key, size_t n, char out[29]);
#endif
