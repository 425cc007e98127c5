/* The head of a pass-through answer as the caller gets it (passthrough.c): the
 * gateway's status, its allow-listed response headers with every known secret
 * redacted (a header may quote a credential back: WWW-Authenticate, Location), the
 * body's length and framing. */
#ifndef TGB_PASSHEAD_H
#define TGB_PASSHEAD_H
#include <stdbool.h>
#include <stddef.h>
#include "passthrough.h"

#define PASS_HEAD_MAX 16

struct lws;

struct pass_head {
    int status;
    long long body_length;  /* Content-Length, or -1 */
    bool chunked;           /* the body comes chunked: only its last chunk ends it */
    struct pass_header hdr[PASS_HEAD_MAX];
    size_t n;
};

/* Reads the head lws parsed (status, relayed headers, framing) into h. */
void pass_head_read(struct pass_head *h, struct lws *wsi);
void pass_head_free(struct pass_head *h);
/* The body is encoded (Content-Encoding other than identity): not readable as text. */
bool pass_head_encoded(const struct pass_head *h);
/* tgbridge's own JSON body of len bytes instead of the gateway's: the gateway's
 * content-* headers dropped, Content-Type application/json, that length. */
void pass_head_own_body(struct pass_head *h, size_t len);
#endif
