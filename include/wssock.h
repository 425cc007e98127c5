/* A local WebSocket -- /api/v1/socket (ws.c) and the bulk sockets' local side
 * (wspass.c) -- on a socket tgbridge reads and writes itself (RFC 6455): the
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
#include "access.h"
#include "buf.h"
#include "config.h"
#include "httphead.h"
#include "list.h"
#include "loop.h"
#include "timer.h"
#include "wsread.h"

struct wssock;
struct wssock_ops {
    /* A piece of a message (a WSREAD_DATA event); none once our close is queued. */
    void (*data)(struct wssock *s, const struct wsread_event *ev);
    /* No more messages will come: the client closed (code and reason of its close
     * frame, 1005 if none) or failed the protocol (code 0).  Its close is answered
     * with its own code unless ours is queued already.  May be NULL. */
    void (*ending)(struct wssock *s, int code, const char *reason, size_t n);
    /* Everything queued is written (back-pressure for a relay).  May be NULL. */
    void (*drained)(struct wssock *s);
    /* The connection is closed; s is its owner's to free. */
    void (*gone)(struct wssock *s);
};

/* Embedded in its owner; the members are wssock.c's. */
struct wssock {
    const struct wssock_ops *ops;
    unsigned long long serial;   /* the owner's, for the log */
    const char *what;            /* the owner's name for it, for the log */
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
    struct loop_rearm rearm;     /* bytes left after a write: POLLOUT asked again (loop.h) */
    bool reading;                /* POLLIN wanted (wssock_read) */
    double last_rx;
    struct timer idle, closer;
    struct list node;
};

/* Before loop_init: the lws protocol its descriptors are polled with. */
void wssock_register_protocol(void);
/* After loop_init. */
void wssock_init(const struct config *cfg);
/* Whether the handshake cannot be answered: no Sec-WebSocket-Key of 16 bytes in
 * base64 (RFC 6455 §4.1) -- then 400, why in no. */
bool wssock_refused(const struct http_head *h, struct refusal *no);
/* Serves fd, whose upgrade request h is still unread on it: reads the request off,
 * answers 101 and starts -- reading the client's frames or not yet (wssock_read).
 * False: it could not (fd is closed; s was never linked). */
bool wssock_start(struct wssock *s, int fd, const struct http_head *h, const struct wssock_ops *ops, bool reading);
/* Whether the client's frames are read (back-pressure); always once our close is
 * queued, for its answer. */
void wssock_read(struct wssock *s, bool on);
/* Queues one text message. */
void wssock_send(struct wssock *s, const char *msg, size_t len);
/* Queues a piece of a message as one frame (relayed: a message's pieces may be
 * framed anew, RFC 6455 §5.4). */
void wssock_send_piece(struct wssock *s, bool binary, bool start, bool end, const void *p, size_t n);
/* Queues our close frame after everything queued (reason at most 123 bytes), then
 * waits --close-timeout for it to be written and as long again for the client's
 * answer.  Once only. */
void wssock_close(struct wssock *s, int code, const char *reason);
/* The client's Sec-WebSocket-Accept for key (RFC 6455 §4.2.2): 28 characters and a NUL. */
void wssock_accept(const char *key, size_t n, char out[29]);
#endif
