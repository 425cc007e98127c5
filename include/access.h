/* Who may use tgbridge's door, decided the same way for every front end: the browser
 * rules (Origin, Host: README "Security") and the optional local client token
 * (--client-token-file).  Inputs are header values as strings, so REST (from
 * libmicrohttpd) and the WebSocket upgrade (from listener.c's head) ask alike. */
#ifndef TGB_ACCESS_H
#define TGB_ACCESS_H
#include <stdbool.h>
#include <stddef.h>
#include "config.h"

/* A refusal: HTTP status, error type, message. */
struct refusal {
    unsigned status;
    const char *type;
    char message[300];
};

int access_init(const struct config *cfg, char *err, size_t errlen);
/* SIGHUP or the file changing (why: which, for the log): --client-token-file read
 * again; a missing or empty file keeps the old token (logged); it stays redacted. */
void access_reload(const char *why);

/* Origin and Host (either may be NULL: absent).  unix_peer: the request came over the
 * Unix socket, which no browser reaches.  True when refused (r filled, logged once). */
bool access_browser_refused(const char *origin, const char *host, bool unix_peer, struct refusal *r);

/* Is a local client token configured? */
bool access_token_required(void);
/* The token a client presented (NULL: none) is the configured one (constant time). */
bool access_token_ok(const char *token, size_t len);
/* The same for a token as it appears in a query string (?token=): compared as the
 * gateway reads it (percent-decoded, '+' as a space, ref Q20) and as sent (clients
 * that put it there do not encode it). */
bool access_token_ok_encoded(const char *p, size_t n);
/* The token of an "Authorization: Bearer <token>" value, or NULL. */
const char *access_bearer(const char *authorization, size_t len, size_t *tlen);
#endif
