/* Frames from a WebSocket client, read by the server (RFC 6455 §5): fed the bytes as
 * they come off the socket, in any pieces, it hands out the messages' payload bytes
 * (unmasked, in place) and the control frames, and finds the protocol errors that
 * fail the connection -- with the close code to send (§7.4.1):
 *   1002: an unmasked frame (§5.1), a reserved bit set (no extension is ever
 *         negotiated), an unknown opcode, a control frame fragmented or over 125
 *         bytes, a continuation with no message under way, a new message inside a
 *         fragmented one, a 64-bit length with its top bit set, a close frame of one
 *         byte or with a code no endpoint may send;
 *   1007: a text message, or a close reason, that is not UTF-8 (§8.1).
 * The size of a message is its user's to limit (the local WebSocket answers an
 * oversized one with an error frame and stays open).  Pure: no I/O, no allocation. */
#ifndef TGB_WSREAD_H
#define TGB_WSREAD_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum wsread_kind {
    WSREAD_DATA,  /* a piece of a text or binary message */
    WSREAD_PING,
    WSREAD_PONG,
    WSREAD_CLOSE, /* the client's close: nothing after it is read */
};

struct wsread_event {
    enum wsread_kind kind;
    const char *p;    /* DATA: this piece; PING, PONG: the payload; CLOSE: the reason */
    size_t n;
    bool first, last; /* DATA: the message's first piece, its last (either may be empty) */
    bool text;        /* DATA: a text message (opcode 1), else binary */
    int code;         /* CLOSE: its status code; 1005 when it had none (§7.1.5) */
};

struct wsread {
    unsigned char head[14];  /* the frame header being read */
    size_t hlen;
    bool in_frame;           /* its header is in: its payload is being read */
    unsigned opcode;
    bool fin;
    uint64_t left;           /* payload bytes of the frame still to come */
    unsigned char key[4];
    unsigned kpos;           /* where in the key the next payload byte is */
    bool in_message;         /* a fragmented data message is under way */
    bool text, started;      /* ... of text; its first piece was handed out */
    unsigned utf8_need;      /* UTF-8 of the text message: continuation bytes owed */
    uint32_t utf8_cp, utf8_min;
    unsigned char ctl[125];  /* a control frame's payload, handed out whole */
    size_t ctl_len;
    int error;               /* nonzero: the close code the connection failed with */
    const char *why;         /* ... and why, for a log and the close reason */
    bool closed;             /* the client's close frame was read */
};

typedef void (*wsread_cb)(void *arg, const struct wsread_event *ev);

void wsread_init(struct wsread *r);
/* Reads len bytes of the stream (unmasked in place), calling cb for each event.  0, or
 * the close code of a protocol error (r->why says which), after which nothing more is
 * read; bytes after the client's close frame are ignored. */
int wsread_feed(struct wsread *r, unsigned char *data, size_t len, wsread_cb cb, void *arg);
/* Whether p holds n bytes of UTF-8 (RFC 3629): what a text message must be. */
bool wsread_utf8(const char *p, size_t n);
#endif
