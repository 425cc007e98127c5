#include "upstream.h"
#include "buf.h"
#include "envelope.h"
#include "log.h"
#include "mux.h"
#include "util.h"
#include <libwebsockets.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Fragment size for large envelopes: big enough to be cheap, small enough that the
 * kernel nearly always takes it whole and pings can interleave (libraries.md b6). */
#define WRITE_CHUNK (64 * 1024)
/* Replies have no size limit at the gateway (ref §2.4); cap what one frame may cost us. */
#define MAX_REPLY_FRAME (512u * 1024 * 1024)

static struct {
    struct lws_context *ctx;
    struct config *cfg;
    struct lws *wsi;
    enum upstream_state state;
    char reason[512];
    char era[48];
    char default_ws[256];
    bool auth_frame_due;     /* the first-frame auth still has to be written */
    bool kill;               /* close from the next WRITEABLE */
    bool auth_rejected;      /* the last connection failed on credentials */
    bool stopping;
    struct request *sending; /* an envelope partly written */
    struct buf rx;
    bool rx_overflow;
    lws_sorted_usec_list_t retry_sul, auth_sul;
    uint16_t retry_count;
    unsigned reconnects;
    bool ever_connected;
    lws_retry_bo_t retry;
    uint32_t retry_table[16];
    char path[4096];
    char host_header[300];
    char last_logged_reason[512];
} U;

static void set_reason(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void set_reason(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(U.reason, sizeof U.reason, fmt, ap);
    va_end(ap);
}

bool upstream_ready(void) { return U.state == UP_READY; }
enum upstream_state upstream_state(void) { return U.state; }
const char *upstream_reason(void) { return U.state == UP_READY ? "" : U.reason; }
const char *upstream_era(void) { return U.era; }
const char *upstream_default_workspace(void) { return U.default_ws; }
unsigned upstream_reconnects(void) { return U.reconnects; }

static const char *token(void)
{
    return U.cfg->token ? U.cfg->token : "";
}

static bool sends_auth_frame(void)
{
    return U.cfg->auth == AUTH_AUTO || U.cfg->auth == AUTH_FIRST_FRAME;
}

static void build_retry_policy(void)
{
    /* Exponential from --reconnect-min to --reconnect-max; lws adds 0–30 % jitter. */
    double d = U.cfg->reconnect_min > 0 ? U.cfg->reconnect_min : 0.05;
    uint16_t n = 0;
    while (n < 16) {
        double ms = d * 1000.0;
        if (d >= U.cfg->reconnect_max)
            ms = U.cfg->reconnect_max * 1000.0;
        U.retry_table[n++] = ms < 1 ? 1 : (uint32_t)ms;
        if (d >= U.cfg->reconnect_max)
            break;
        d *= 2;
    }
    U.retry.retry_ms_table = U.retry_table;
    U.retry.retry_ms_table_count = n;
    U.retry.conceal_count = LWS_RETRY_CONCEAL_ALWAYS;
    double ping = U.cfg->ping_interval < 1 ? 1 : U.cfg->ping_interval;
    double hang = ping + (U.cfg->ping_timeout < 1 ? 1 : U.cfg->ping_timeout);
    U.retry.secs_since_valid_ping = (uint16_t)(ping > 65000 ? 65000 : ping + 0.999);
    U.retry.secs_since_valid_hangup = (uint16_t)(hang > 65000 ? 65000 : hang + 0.999);
    U.retry.jitter_percent = 30;
}

static void connect_now(lws_sorted_usec_list_t *sul);

static void schedule_reconnect(void)
{
    if (U.stopping)
        return;
    if (U.auth_rejected) {
        /* Hammering a gateway that refuses the token helps nobody (issue: backoff resets
         * only after a successful authentication). */
        lws_sul_schedule(U.ctx, 0, &U.retry_sul, connect_now, seconds_to_us(U.cfg->reconnect_max));
        return;
    }
    lws_retry_sul_schedule(U.ctx, 0, &U.retry_sul, &U.retry, connect_now, &U.retry_count);
}

/* Logs a state change once, not once per retry. */
static void log_down(void)
{
    if (strcmp(U.last_logged_reason, U.reason)) {
        log_warn("upstream not ready: %s (retrying with backoff)", U.reason);
        snprintf(U.last_logged_reason, sizeof U.last_logged_reason, "%s", U.reason);
    } else {
        log_debug("upstream still not ready: %s", U.reason);
    }
}

static void went_down(void)
{
    bool was_connected = U.state == UP_READY || U.state == UP_AUTHENTICATING;
    U.wsi = NULL;
    U.state = UP_DOWN;
    U.sending = NULL;
    U.kill = false;
    U.auth_frame_due = false;
    buf_free(&U.rx);
    U.rx_overflow = false;
    lws_sul_cancel(&U.auth_sul);
    if (was_connected || U.ever_connected)
        mux_upstream_lost(U.stopping ? "tgbridge is shutting down" : U.reason);
    if (U.stopping)
        return;
    log_down();
    schedule_reconnect();
}

static void became_ready(const char *era, const char *workspace)
{
    U.state = UP_READY;
    U.retry_count = 0;
    U.auth_rejected = false;
    lws_sul_cancel(&U.auth_sul);
    bool era_changed = strcmp(U.era, era) != 0;
    snprintf(U.era, sizeof U.era, "%s", era);
    if (workspace)
        snprintf(U.default_ws, sizeof U.default_ws, "%s", workspace);
    U.last_logged_reason[0] = '\0';
    log_info("upstream ready: %s auth=%s era=%s%s%s%s", U.cfg->gateway, auth_mode_name(U.cfg->auth), U.era,
             U.default_ws[0] ? " default_workspace=" : "", U.default_ws, era_changed ? "" : " (reconnected)");
    mux_upstream_ready();
}

static void auth_timed_out(lws_sorted_usec_list_t *sul)
{
    (void)sul;
    set_reason("no reply to the authentication frame");
    U.kill = true;
    if (U.wsi)
        lws_callback_on_writable(U.wsi);
}

static void connect_now(lws_sorted_usec_list_t *sul)
{
    (void)sul;
    if (U.stopping || U.wsi)
        return;
    char err[256];
    if (config_read_token_file(U.cfg, err, sizeof err)) {
        /* Keep the last token we had; a file mid-rotation must not take us down. */
        log_warn("%s", err);
    }
    struct buf path;
    buf_init(&path, 0);
    buf_printf(&path, "%s/api/v1/socket", U.cfg->gw.base_path);
    /* ?token= is how V1 gateways authenticate the socket (ref §3.1); V2 ignores it.
     * Percent-encoded, because the gateway URL-decodes it (ref Q20). */
    if ((U.cfg->auth == AUTH_QUERY || U.cfg->auth == AUTH_AUTO) && token()[0]) {
        char *enc = url_encode(token());
        buf_printf(&path, "?token=%s", enc ? enc : "");
        free(enc);
    }
    if (path.len >= sizeof U.path) {
        set_reason("gateway path plus token is too long");
        buf_free(&path);
        schedule_reconnect();
        return;
    }
    memcpy(U.path, buf_ptr(&path), path.len + 1);
    explicit_bzero(buf_ptr(&path), path.len);
    buf_free(&path);
    bool v6 = strchr(U.cfg->gw.host, ':') != NULL;
    snprintf(U.host_header, sizeof U.host_header, "%s%s%s:%d", v6 ? "[" : "", U.cfg->gw.host, v6 ? "]" : "",
             U.cfg->gw.port);

    struct lws_client_connect_info i;
    memset(&i, 0, sizeof i);
    i.context = U.ctx;
    i.address = U.cfg->gw.host;
    i.port = U.cfg->gw.port;
    i.path = U.path;
    i.host = U.host_header;
    i.origin = NULL;
    i.protocol = NULL;
    i.local_protocol_name = "tgb-upstream";
    i.retry_and_idle_policy = &U.retry;
    i.pwsi = &U.wsi;
    if (U.cfg->gw.tls) {
        i.ssl_connection = LCCSCF_USE_SSL;
        if (U.cfg->insecure)
            i.ssl_connection |= LCCSCF_ALLOW_SELFSIGNED | LCCSCF_SKIP_SERVER_CERT_HOSTNAME_CHECK |
                                LCCSCF_ALLOW_EXPIRED | LCCSCF_ALLOW_INSECURE;
        i.alpn = "http/1.1";
    }
    U.state = UP_CONNECTING;
    log_debug("connecting to %s", U.cfg->gateway);
    if (!lws_client_connect_via_info(&i)) {
        /* A CONNECTION_ERROR callback may already have run and scheduled the retry. */
        if (U.state == UP_CONNECTING) {
            set_reason("cannot start a connection to %s", U.cfg->gateway);
            U.wsi = NULL;
            U.state = UP_DOWN;
            log_down();
            schedule_reconnect();
        }
    }
}

void upstream_kick(void)
{
    if (U.wsi && U.state == UP_READY && (U.sending || mux_has_sendable()))
        lws_callback_on_writable(U.wsi);
}

static void on_established(struct lws *wsi)
{
    if (U.ever_connected)
        U.reconnects++;
    U.ever_connected = true;
    if (!sends_auth_frame()) {
        became_ready(U.cfg->auth == AUTH_QUERY ? "not probed (--auth query)" : "not probed (--auth header)", NULL);
        return;
    }
    U.state = UP_AUTHENTICATING;
    U.auth_frame_due = true;
    double t = U.cfg->ping_timeout > 5 ? U.cfg->ping_timeout : 5;
    lws_sul_schedule(U.ctx, 0, &U.auth_sul, auth_timed_out, seconds_to_us(t));
    lws_callback_on_writable(wsi);
}

/* Reference §1.1: the reply to the auth frame tells the era. */
static int on_auth_reply(const struct frame *f)
{
    switch (f->kind) {
    case FRAME_AUTH_OK:
        became_ready(f->auth_new_field ? "v2c/v2d" : "v2a/v2b", f->workspace);
        return 0;
    case FRAME_AUTH_FAILED:
        set_reason("the gateway rejected the token (auth-failed: %s)", f->err_message);
        U.auth_rejected = true;
        return -1;
    case FRAME_ORPHAN_ERROR:
        /* A V1 gateway does not know in-band auth: it answers "Bad message". Having
         * got this far, the handshake (and any ?token=) was accepted. */
        if (U.cfg->auth == AUTH_FIRST_FRAME)
            log_warn("gateway does not understand first-frame auth (a V1 gateway); "
                     "it accepted the connection without a token");
        became_ready(f->error_is_string ? "v1a" : "v1b/v1c", NULL);
        return 0;
    default:
        log_debug("ignoring frame before authentication");
        return 0;
    }
}

static int on_message(const char *text, size_t len)
{
    struct frame f;
    frame_parse(text, len, &f);
    int rc = 0;
    if (f.kind == FRAME_INVALID) {
        log_warn("dropping a gateway frame that is not a JSON object (%zu bytes)", len);
    } else if (U.state == UP_AUTHENTICATING) {
        rc = on_auth_reply(&f);
    } else if (f.kind == FRAME_AUTH_OK || f.kind == FRAME_AUTH_FAILED) {
        log_info("re-authentication reply: %s", f.kind == FRAME_AUTH_OK ? "auth-ok" : "auth-failed");
    } else {
        mux_on_frame(&f);
    }
    frame_free(&f);
    return rc;
}

static int on_receive(struct lws *wsi, const char *in, size_t len)
{
    lws_validity_confirmed(wsi);
    if (!U.rx_overflow) {
        if (U.rx.len + len > MAX_REPLY_FRAME) {
            U.rx_overflow = true;
            buf_free(&U.rx);
        } else {
            buf_append(&U.rx, in, len);
        }
    }
    if (!lws_is_final_fragment(wsi) || lws_remaining_packet_payload(wsi))
        return 0;
    int rc = 0;
    if (U.rx_overflow) {
        /* Its id is unknowable without parsing it; its caller's deadline answers it. */
        log_error("dropped a gateway frame larger than %u bytes", MAX_REPLY_FRAME);
    } else if (U.rx.len) {
        rc = on_message(buf_ptr(&U.rx), U.rx.len);
    }
    U.rx.len = 0;
    U.rx_overflow = false;
    if (U.rx.cap > 1024 * 1024)
        buf_free(&U.rx); /* don't keep a multi-MB buffer for small frames */
    return rc;
}

static int write_auth_frame(struct lws *wsi)
{
    struct buf b;
    buf_init(&b, LWS_PRE);
    buf_puts(&b, "{\"type\":\"auth\",\"token\":");
    buf_json_string(&b, token(), strlen(token()));
    buf_puts(&b, "}");
    size_t len = b.len;
    int n = lws_write(wsi, (unsigned char *)buf_ptr(&b), len, LWS_WRITE_TEXT);
    explicit_bzero(b.data, b.cap);
    buf_free(&b);
    U.auth_frame_due = false;
    return n < (int)len ? -1 : 0;
}

static int write_next(struct lws *wsi)
{
    if (!U.sending)
        U.sending = mux_next_to_send();
    struct request *req = U.sending;
    if (!req)
        return 0;
    size_t total = req->frame.len, off = req->sent_off;
    size_t chunk = total - off > WRITE_CHUNK ? WRITE_CHUNK : total - off;
    int flags = lws_write_ws_flags(LWS_WRITE_TEXT, off == 0, off + chunk == total);
    /* For later fragments the LWS_PRE bytes before p were already sent; lws may use them. */
    unsigned char *p = (unsigned char *)buf_ptr(&req->frame) + off;
    if (lws_write(wsi, p, chunk, (enum lws_write_protocol)flags) < 0)
        return -1;
    req->sent_off += chunk;
    if (req->sent_off == total) {
        U.sending = NULL;
        log_debug("sent %s (%zu bytes) service=%s", req->id, total, req->service);
        mux_sent(req);
    }
    if (U.sending || mux_has_sendable())
        lws_callback_on_writable(wsi);
    return 0;
}

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
    (void)user;
    switch (reason) {
    case LWS_CALLBACK_CLIENT_APPEND_HANDSHAKE_HEADER:
        if (U.cfg->auth == AUTH_HEADER && token()[0]) {
            unsigned char **p = (unsigned char **)in, *end = *p + len;
            struct buf v;
            buf_init(&v, 0);
            buf_printf(&v, "Bearer %s", token());
            int bad = lws_add_http_header_by_name(wsi, (const unsigned char *)"authorization:",
                                                  (const unsigned char *)buf_ptr(&v), (int)v.len, p, end);
            explicit_bzero(v.data, v.cap);
            buf_free(&v);
            if (bad)
                return -1;
        }
        break;
    case LWS_CALLBACK_CLIENT_ESTABLISHED:
        on_established(wsi);
        break;
    case LWS_CALLBACK_CLIENT_RECEIVE:
        return on_receive(wsi, in, len);
    case LWS_CALLBACK_CLIENT_RECEIVE_PONG:
        lws_validity_confirmed(wsi);
        break;
    case LWS_CALLBACK_CLIENT_WRITEABLE:
        if (U.kill || U.stopping) {
            lws_close_reason(wsi, LWS_CLOSE_STATUS_GOINGAWAY, NULL, 0);
            return -1;
        }
        if (U.state == UP_AUTHENTICATING && U.auth_frame_due)
            return write_auth_frame(wsi);
        if (U.state == UP_READY)
            return write_next(wsi);
        break;
    case LWS_CALLBACK_CLIENT_CONNECTION_ERROR: {
        int status = wsi ? (int)lws_http_client_http_response(wsi) : 0;
        if (status == 401 || status == 403) {
            set_reason("the gateway refused the WebSocket upgrade with HTTP %d (wrong or missing token "
                       "for a V1 gateway)", status);
            U.auth_rejected = true;
        } else if (status) {
            set_reason("the gateway answered the WebSocket upgrade with HTTP %d", status);
        } else {
            set_reason("cannot connect to %s: %s", U.cfg->gateway, in ? (const char *)in : "unknown error");
        }
        went_down();
        break;
    }
    case LWS_CALLBACK_CLIENT_CLOSED:
        if (U.state == UP_READY || U.state == UP_AUTHENTICATING) {
            if (!U.auth_rejected && !U.kill)
                set_reason("the gateway closed the connection");
        }
        went_down();
        break;
    default:
        break;
    }
    return 0;
}

const struct lws_protocols upstream_protocol = {"tgb-upstream", callback, 0, 64 * 1024, 0, NULL, 0};

int upstream_init(struct lws_context *ctx, struct config *cfg)
{
    memset(&U, 0, sizeof U);
    U.ctx = ctx;
    U.cfg = cfg;
    U.state = UP_DOWN;
    buf_init(&U.rx, 0);
    set_reason("not connected yet");
    snprintf(U.era, sizeof U.era, "unknown");
    build_retry_policy();
    return 0;
}

void upstream_start(void)
{
    connect_now(NULL);
}

void upstream_stop(void)
{
    U.stopping = true;
    lws_sul_cancel(&U.retry_sul);
    lws_sul_cancel(&U.auth_sul);
    if (U.wsi)
        lws_callback_on_writable(U.wsi);
}
