/* Authentication and the gateway's era (reference §1.1, §3): the token, where it goes
 * (?token=, a Bearer header, or the first frame), and what the reply to the auth frame
 * says.  A leaf: it reads and words, and returns verdicts; conn.c acts on them. */
#include "upstream_int.h"
#include "log.h"
#include "util.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A caller's pool presents its key; the own pool --token (or --token-file's). */
const char *auth_token(const struct upool *P)
{
    if (P->key)
        return P->key;
    return U.cfg->token ? U.cfg->token : "";
}

/* --token-file read again; a new token bumps P->token_gen, so connections that
 * presented the old one are known to be stale whoever read the file first (a new
 * connection, SIGHUP or the watcher).  A file that is missing, unreadable or empty
 * (mid-rotation, or a Secret briefly without its key) keeps the token we had: -1 with why. */
int auth_reread_token(struct upool *P, char *err, size_t errlen)
{
    if (P->key)
        return 0; /* a caller's key changes with the policy: a new key is another pool */
    char *before = U.cfg->token ? strdup(U.cfg->token) : NULL;
    int rc = config_read_token_file(U.cfg, err, errlen);
    if (!rc && before && before[0] && !auth_token(P)[0]) {
        snprintf(err, errlen, "token file %s is empty", U.cfg->token_file);
        rc = -1;
    }
    if (rc && before) {
        free(U.cfg->token);
        U.cfg->token = before; /* still in the redaction list */
        return rc;
    }
    if (!rc && before && strcmp(before, auth_token(P)))
        P->token_gen++;
    if (before)
        explicit_bzero(before, strlen(before));
    free(before);
    return rc;
}

bool auth_sends_frame(void)
{
    return U.cfg->auth == AUTH_AUTO || U.cfg->auth == AUTH_FIRST_FRAME;
}

bool auth_refreshes_in_band(const struct upool *P)
{
    return auth_sends_frame() && !strncmp(P->era, "v2", 2);
}

int auth_path(const struct upool *P, char *path, size_t cap)
{
    struct buf p;
    buf_init(&p, 0);
    buf_printf(&p, "%s/api/v1/socket", U.cfg->gw.base_path);
    /* ?token= is how V1 gateways authenticate the socket (ref §3.1); V2 ignores it.
     * Percent-encoded, because the gateway URL-decodes it (ref Q20). */
    if ((U.cfg->auth == AUTH_QUERY || U.cfg->auth == AUTH_AUTO) && auth_token(P)[0]) {
        char *enc = url_encode(auth_token(P));
        buf_printf(&p, "?token=%s", enc ? enc : "");
        free(enc);
    }
    bool too_long = p.len >= cap;
    if (!too_long)
        memcpy(path, buf_ptr(&p), p.len + 1);
    explicit_bzero(p.data, p.cap);
    buf_free(&p);
    return too_long ? -1 : 0;
}

/* --auth header: the token as a Bearer header on the upgrade request. */
int auth_append_headers(struct dial *d, unsigned char **p, unsigned char *end)
{
    const struct upool *P = timer_owner(d, struct upconn, dial)->pool;
    if (U.cfg->auth != AUTH_HEADER || !auth_token(P)[0])
        return 0;
    struct buf v;
    buf_init(&v, 0);
    buf_printf(&v, "Bearer %s", auth_token(P));
    int bad = lws_add_http_header_by_name(d->wsi, (const unsigned char *)"authorization:",
                                          (const unsigned char *)buf_ptr(&v), (int)v.len, p, end);
    explicit_bzero(v.data, v.cap);
    buf_free(&v);
    return bad;
}

/* {"type":"auth","token":...}; -1 when lws did not take it whole. */
int auth_write_frame(const struct upool *P, struct lws *wsi)
{
    struct buf b;
    buf_init(&b, LWS_PRE);
    buf_puts(&b, "{\"type\":\"auth\",\"token\":");
    buf_json_string(&b, auth_token(P), strlen(auth_token(P)));
    buf_puts(&b, "}");
    size_t len = b.len;
    int n = lws_write(wsi, (unsigned char *)buf_ptr(&b), len, LWS_WRITE_TEXT);
    explicit_bzero(b.data, b.cap);
    buf_free(&b);
    return n < (int)len ? -1 : 0;
}

/* Why a connection that failed on the way up or was lost says so, in the upstream's
 * words (dial.c words it for every connection alike). */
void auth_word_reason(struct upconn *c)
{
    struct dial *d = &c->dial;
    int st = d->http_status;
    if (st == 401 || st == 403) {
        snprintf(d->reason, sizeof d->reason, "the gateway refused the WebSocket upgrade with HTTP %d (wrong or "
                 "missing token for a V1 gateway)", st);
        c->auth_refused = true;
    }
}

/* Reference §1.1: the reply to the auth frame tells the era (*era, on AUTH_READY);
 * AUTH_REFUSED is auth-failed, f->err_message says why. */
enum auth_verdict auth_reply(const struct frame *f, const char **era)
{
    switch (f->kind) {
    case FRAME_AUTH_OK:
        *era = f->auth_new_field ? "v2c/v2d" : "v2a/v2b";
        return AUTH_READY;
    case FRAME_AUTH_FAILED:
        return AUTH_REFUSED;
    case FRAME_ORPHAN_ERROR:
        /* A V1 gateway does not know in-band auth: it answers "Bad message". Having
         * got this far, the handshake (and any ?token=) was accepted. */
        if (U.cfg->auth == AUTH_FIRST_FRAME)
            log_warn("gateway does not understand first-frame auth (a V1 gateway); "
                     "it accepted the connection without a token");
        *era = f->error_is_string ? "v1a" : "v1b/v1c";
        return AUTH_READY;
    default:
        log_debug("ignoring frame before authentication");
        return AUTH_WAIT;
    }
}

/* Reply to an in-band refresh (ref §3.2): failure keeps the previous identity. */
void auth_refresh_reply(struct upconn *c, const struct frame *f)
{
    struct upool *P = c->pool;
    if (!c->reauthenticating) {
        log_debug("unexpected %s", f->kind == FRAME_AUTH_OK ? "auth-ok" : "auth-failed");
        return;
    }
    c->reauthenticating = false;
    timer_cancel(&c->reauth_timer);
    if (f->kind == FRAME_AUTH_OK) {
        if (f->workspace[0])
            snprintf(P->default_ws, sizeof P->default_ws, "%s", f->workspace);
        snprintf(P->reauth_status, sizeof P->reauth_status, "ok");
        log_info("re-authenticated in-band with the new token (auth-ok)");
    } else {
        snprintf(P->reauth_status, sizeof P->reauth_status, "rejected: %s", f->err_message);
        log_error("the gateway rejected the new token (auth-failed: %s); the open connection keeps its "
                  "previous identity, and the next connection will use the new token",
                  f->err_message);
    }
}
