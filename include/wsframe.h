/* WebSocket frames (RFC 6455 §5.2), built by us so that a burst of small messages
 * leaves in one send instead of one lws_write — and, from a client, one mask-key read
 * from /dev/urandom — each (BENCHMARKS.md, "One send per burst"). */
#ifndef TGB_WSFRAME_H
#define TGB_WSFRAME_H
#include <stdbool.h>
#include <stddef.h>
#include "buf.h"

/* Bytes of header (with the 4-byte mask key) a frame of len payload bytes needs. */
size_t wsframe_header_len(size_t len);
/* Appends one complete (FIN) masked text frame holding payload to out. */
void wsframe_append_text(struct buf *out, const void *payload, size_t len);
/* The same from a server: unmasked (the local WebSocket's replies, written in
 * bursts for the same reason). */
void wsframe_append_server_text(struct buf *out, const void *payload, size_t len);

/* Opcodes (RFC 6455 §5.2). */
#define WSFRAME_CONT 0x0
#define WSFRAME_TEXT 0x1
#define WSFRAME_BINARY 0x2
#define WSFRAME_CLOSE 0x8
#define WSFRAME_PING 0x9
#define WSFRAME_PONG 0xA
/* One complete unmasked server frame of any opcode (a control frame's payload is at
 * most 125 bytes: the caller's to keep). */
void wsframe_append_server(struct buf *out, unsigned opcode, const void *payload, size_t len);
/* The same with FIN as asked: a piece of a fragmented message (opcode WSFRAME_CONT
 * after its first). */
void wsframe_append_server_piece(struct buf *out, unsigned opcode, bool fin, const void *payload, size_t len);
#endif
