/* The head of an HTTP/1.x request, read just far enough to route the connection it
 * arrived on (listener.c): the request line and the few headers routing and
 * admission look at.  libmicrohttpd and libwebsockets parse it again, properly, once
 * the connection is theirs (the local WebSocket's upgrade is answered from it).  Pure: no I/O, no allocation. */
#ifndef TGB_HTTPHEAD_H
#define TGB_HTTPHEAD_H
#include <stdbool.h>
#include <stddef.h>
#include "json.h" /* struct span */

enum head_verdict {
    HEAD_INCOMPLETE,  /* could still become a request head: wait for more bytes */
    HEAD_REQUEST,     /* a complete request head */
    HEAD_NOT_HTTP,    /* cannot be one (the line protocol, or junk) */
};

struct http_head {
    struct span method, target, path, query; /* path and query split the target at '?' */
    int minor;                                 /* HTTP/1.<minor> */
    size_t length;                             /* bytes of the head, blank line included */
    /* Headers by name, case-insensitively; a repeated one keeps its first value and
     * counts (n_*). */
    struct span upgrade, connection, origin, host, authorization, ws_version; /* Sec-WebSocket-Version */
    struct span ws_key;                        /* Sec-WebSocket-Key: answered by ws.c itself */
    int n_host, n_origin;
    bool malformed;                            /* a header line that is not one: HTTP's to refuse */
    bool nul;                                  /* a NUL byte in a header line (access_head_refused) */
};

enum head_verdict http_head_parse(const char *buf, size_t len, struct http_head *out);
/* The header value holds token (case-insensitively) in its comma-separated list. */
bool http_list_has(struct span value, const char *token);
/* The value of name=... in a query string (not decoded), or false. */
bool http_query_param(struct span query, const char *name, struct span *out);
#endif
