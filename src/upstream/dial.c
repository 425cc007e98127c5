#include "dial.h"
#include "log.h"
#include "redact.h"
#include "util.h"
#include <libwebsockets.h>
#include <netdb.h>
#include <openssl/x509.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static struct {
    struct lws_context *ctx;
    const struct config *cfg;
} D;

void dial_init(struct lws_context *ctx, const struct config *cfg)
{
    D.ctx = ctx;
    D.cfg = cfg;
}

static void set_reason(struct dial *d, bool force, const char *fmt, va_list ap)
{
    if (d->reason[0] && !force)
        return;
    vsnprintf(d->reason, sizeof d->reason, fmt, ap);
    /* Reasons quote peers, which may quote the token back. */
    redact_str(d->reason, sizeof d->reason);
}

void dial_reason(struct dial *d, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    set_reason(d, false, fmt, ap);
    va_end(ap);
}

static void force_reason(struct dial *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void force_reason(struct dial *d, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    set_reason(d, true, fmt, ap);
    va_end(ap);
}

const char *dial_phase_name(const struct dial *d)
{
    switch (d->phase) {
    case DIAL_RESOLVING: return "resolving";
    case DIAL_CONNECTING: return "connecting";
    case DIAL_OPEN: case DIAL_SETTLED: return "open";
    default: return "";
    }
}

static const char *target_host(void)
{
    return D.cfg->via_proxy ? D.cfg->via_proxy->host : D.cfg->gw.host;
}

/* The end of an attempt or connection: everything the dial holds is released, then
 * the owner hears of it -- last, because it may free d. */
static void finish(struct dial *d)
{
    if (d->wsi) {
        lws_set_opaque_user_data(d->wsi, NULL);
        d->wsi = NULL;
    }
    timer_cancel(&d->deadline);
    timer_cancel(&d->later);
    if (d->lookup)
        resolver_cancel(d->lookup);
    d->lookup = 0;
    free(d->addrs);
    d->addrs = NULL;
    explicit_bzero(d->path, sizeof d->path);
    d->phase = DIAL_IDLE;
    if (!d->reason[0])
        snprintf(d->reason, sizeof d->reason, "the connection to the gateway closed");
    d->ops->gone(d);
}

static void finish_later(struct timer *t)
{
    finish(timer_owner(t, struct dial, later));
}

/* Which step of the attempt is still waiting, told by the markers lws gives: it has
 * no callback for "TCP connected" but LWS_CALLBACK_WSI_CREATE comes right after the
 * connect completes (to the gateway or the proxy); none for "the proxy answered",
 * but the TLS object exists only after that reply (lws_get_ssl), and the upgrade
 * request is only built (LWS_CALLBACK_CLIENT_APPEND_HANDSHAKE_HEADER) once both the
 * proxy and TLS are done; the upgrade reply is complete at
 * LWS_CALLBACK_CLIENT_FILTER_PRE_ESTABLISH, just before CLIENT_ESTABLISHED. */
static void deadline_reason(struct dial *d)
{
    double s = D.cfg->connect_timeout;
    const struct proxy_url *px = D.cfg->via_proxy;
    bool tls_started = D.cfg->gw.tls && d->wsi && (d->tls_seen || lws_get_ssl(d->wsi));
    if (d->phase == DIAL_RESOLVING)
        force_reason(d, "cannot resolve %s host name %s within %g s", px ? "the proxy's" : "the gateway's",
                     target_host(), s);
    else if (d->phase >= DIAL_OPEN)
        force_reason(d, "no %s from the gateway within %g s", d->awaiting ? d->awaiting : "reply", s);
    else if (!d->tcp_up && px)
        force_reason(d, "no TCP connection to the proxy %s:%d within %g s", px->host, px->port, s);
    else if (!d->tcp_up)
        force_reason(d, "no TCP connection to %s:%d within %g s",
                     d->addrs ? d->addrs->addr[d->addr_idx] : D.cfg->gw.host, D.cfg->gw.port, s);
    else if (!d->request_sent && tls_started)
        force_reason(d, "no TLS handshake with the gateway within %g s", s);
    else if (!d->request_sent && px)
        force_reason(d, "no reply from the proxy %s:%d to CONNECT within %g s", px->host, px->port, s);
    else
        force_reason(d, "no upgrade reply from the gateway within %g s", s);
}

static void deadline_expired(struct timer *t)
{
    struct dial *d = timer_owner(t, struct dial, deadline);
    d->deadline_hit = true;
    deadline_reason(d);
    if (d->wsi) /* closed from the loop; nothing of it reaches us any more */
        lws_set_timeout(d->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
    finish(d);
}

static void connect_next(struct dial *d);

static void connect_later(struct timer *t)
{
    connect_next(timer_owner(t, struct dial, later));
}

/* The vhost's proxy at addr, the proxy's own address.  Numeric, so lws's own lookup
 * of the proxy (in the loop) returns at once. */
static int set_proxy(struct lws_vhost *vh, const struct proxy_url *px, const char *addr)
{
    char spec[600];
    bool v6 = strchr(addr, ':') != NULL;
    snprintf(spec, sizeof spec, "%s%s%s%s%s:%d", px->userinfo, px->userinfo[0] ? "@" : "", v6 ? "[" : "", addr,
             v6 ? "]" : "", px->port);
    int rc = lws_set_proxy(vh, spec);
    explicit_bzero(spec, sizeof spec);
    return rc;
}

/* One address of the target: the gateway's own, or the proxy's (lws connects to the
 * vhost's proxy, which it then asks to CONNECT to the gateway by name). */
static void connect_next(struct dial *d)
{
    const char *addr = d->addrs->addr[d->addr_idx];
    const struct proxy_url *px = D.cfg->via_proxy;
    struct lws_vhost *vh = lws_get_vhost_by_name(D.ctx, "default");
    if (px && set_proxy(vh, px, addr)) {
        dial_reason(d, "the proxy's credentials are too long for libwebsockets (95 bytes at most)");
        finish(d);
        return;
    }
    struct lws_client_connect_info i;
    memset(&i, 0, sizeof i);
    i.context = D.ctx;
    i.vhost = vh;
    i.address = px ? D.cfg->gw.host : addr;
    i.port = D.cfg->gw.port;
    i.path = d->path;
    i.host = d->host_header; /* also what TLS sends as SNI and checks the certificate against */
    i.origin = NULL;
    i.protocol = NULL;
    i.local_protocol_name = d->local_protocol;
    if (d->method) {
        i.method = d->method;
        /* A redirect is the caller's to follow, like any other answer. */
        i.ssl_connection |= LCCSCF_HTTP_NO_FOLLOW_REDIRECT;
    }
    i.retry_and_idle_policy = d->retry;
    i.opaque_user_data = d;
    i.pwsi = &d->wsi;
    if (D.cfg->gw.tls) {
        i.ssl_connection |= LCCSCF_USE_SSL;
        if (D.cfg->insecure)
            i.ssl_connection |= LCCSCF_ALLOW_SELFSIGNED | LCCSCF_SKIP_SERVER_CERT_HOSTNAME_CHECK |
                                LCCSCF_ALLOW_EXPIRED | LCCSCF_ALLOW_INSECURE;
        i.alpn = "http/1.1";
    }
    d->phase = DIAL_CONNECTING;
    d->tcp_up = d->request_sent = d->tls_seen = false;
    d->http_status = 0;
    d->tls_error[0] = '\0';
    d->reason[0] = '\0';
    log_debug("connecting to %s at %s%s", D.cfg->gateway, addr, px ? " (the proxy)" : "");
    d->in_connect = true;
    d->failed_in_connect = false;
    struct lws *w = lws_client_connect_via_info(&i);
    d->in_connect = false;
    if (d->failed_in_connect || !w) {
        /* A CONNECTION_ERROR already ran for it (or lws refused to start one): the
         * next address, or the end, is taken from the loop, never from in here. */
        d->wsi = NULL;
        dial_reason(d, "cannot start a connection to %s", D.cfg->gateway);
        if (d->addrs && d->addr_idx + 1 < d->addrs->n && !d->http_status && !d->tls_error[0]) {
            d->addr_idx++;
            timer_after(&d->later, 0, connect_later);
        } else {
            timer_after(&d->later, 0, finish_later);
        }
    }
}

static void on_resolved(unsigned lookup, const struct resolved *r, void *arg)
{
    struct dial *d = arg;
    if (d->lookup != lookup)
        return;
    d->lookup = 0;
    if (r->err) {
        dial_reason(d, "cannot resolve %s host name %s: %s", D.cfg->via_proxy ? "the proxy's" : "the gateway's",
                    target_host(), gai_strerror(r->err));
        finish(d);
        return;
    }
    d->addrs = malloc(sizeof *d->addrs);
    if (!d->addrs)
        abort();
    *d->addrs = *r;
    d->addr_idx = 0;
    connect_next(d);
}

int dial_start(struct dial *d)
{
    d->wsi = NULL;
    d->reason[0] = '\0';
    d->deadline_hit = false;
    d->closing = false;
    d->addrs = NULL;
    d->lookup = 0;
    bool v6 = strchr(D.cfg->gw.host, ':') != NULL;
    snprintf(d->host_header, sizeof d->host_header, "%s%s%s:%d", v6 ? "[" : "", D.cfg->gw.host, v6 ? "]" : "",
             D.cfg->gw.port);
    const char *host = target_host();
    timer_after(&d->deadline, D.cfg->connect_timeout, deadline_expired);
    if (resolver_is_numeric(host)) {
        d->addrs = calloc(1, sizeof *d->addrs);
        if (!d->addrs)
            abort();
        d->addrs->n = 1;
        size_t n = strlen(host); /* numeric, so it fits */
        memcpy(d->addrs->addr[0], host, n < RESOLVER_ADDR_LEN ? n : RESOLVER_ADDR_LEN - 1);
        d->phase = DIAL_CONNECTING;
        timer_after(&d->later, 0, connect_later); /* gone must not run inside dial_start */
        return 0;
    }
    d->phase = DIAL_RESOLVING;
    d->lookup = resolver_start(host, on_resolved, d);
    if (!d->lookup) {
        timer_cancel(&d->deadline);
        d->phase = DIAL_IDLE;
        dial_reason(d, "cannot start a DNS lookup for %s", host);
        return -1;
    }
    log_debug("resolving %s", host);
    return 0;
}

void dial_settled(struct dial *d)
{
    d->phase = DIAL_SETTLED;
    timer_cancel(&d->deadline);
}

void dial_abort(struct dial *d, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    set_reason(d, false, fmt, ap);
    va_end(ap);
    if (d->wsi)
        lws_set_timeout(d->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
    finish(d);
}

void dial_close(struct dial *d)
{
    if (!d->wsi)
        return;
    d->closing = true;
    int fd = (int)lws_get_socket_fd(d->wsi);
    if (fd >= 0)
        shutdown(fd, SHUT_RDWR);
    lws_set_timeout(d->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
}

/* A refused or unreachable address of a name with several: the next one is tried at
 * once, within the same attempt and deadline, from the loop rather than from inside
 * the failing connection's callback.  Not after an answer from the gateway itself
 * (an HTTP status, a certificate): another address would say the same. */
static bool try_next_address(struct dial *d)
{
    if (d->http_status || d->tls_error[0] || !d->addrs || d->addr_idx + 1 >= d->addrs->n)
        return false;
    log_debug("%s (at %s); trying the next address, %s", d->reason, d->addrs->addr[d->addr_idx],
              d->addrs->addr[d->addr_idx + 1]);
    d->addr_idx++;
    timer_after(&d->later, 0, connect_later);
    return true;
}

static void connection_error(struct dial *d, struct lws *wsi, const char *in)
{
    int status = (int)lws_http_client_http_response(wsi);
    d->http_status = status >= 200 ? status : 0;
    if (d->http_status)
        dial_reason(d, "the gateway answered the %s with HTTP %d", d->method ? "request" : "WebSocket upgrade",
                    d->http_status);
    else if (d->tls_error[0])
        dial_reason(d, "cannot connect to %s: %s", D.cfg->gateway, d->tls_error);
    else
        dial_reason(d, "cannot connect to %s: %s", D.cfg->gateway, in ? in : "unknown error");
    lws_set_opaque_user_data(wsi, NULL);
    d->wsi = NULL;
    if (d->in_connect) {
        d->failed_in_connect = true; /* connect_next takes it from here */
        return;
    }
    if (!try_next_address(d))
        finish(d);
}

int dial_event(struct dial *d, struct lws *wsi, int reason, void *user, void *in, size_t len)
{
    switch (reason) {
    case LWS_CALLBACK_WSI_CREATE:
        d->tcp_up = true; /* marker: the TCP connect (to the gateway or the proxy) completed */
        return 1;
    case LWS_CALLBACK_OPENSSL_PERFORM_SERVER_CERT_VERIFICATION:
        /* Only to say *why* verification failed; OpenSSL and lws decide. */
        d->tls_seen = true;
        if (!len && user) {
            int e = X509_STORE_CTX_get_error((X509_STORE_CTX *)user);
            snprintf(d->tls_error, sizeof d->tls_error, "TLS certificate verification failed: %s",
                     X509_verify_cert_error_string(e));
        }
        return 1;
    case LWS_CALLBACK_CLIENT_APPEND_HANDSHAKE_HEADER:
        d->request_sent = true; /* marker: proxy and TLS are done; the upgrade request goes out */
        if (d->ops->append_headers) {
            unsigned char **p = (unsigned char **)in;
            if (d->ops->append_headers(d, p, *p + len))
                return -1;
        }
        if (d->method)
            timer_cancel(&d->deadline); /* connected; the wait for the answer is the owner's */
        return 1;
    case LWS_CALLBACK_ESTABLISHED_CLIENT_HTTP:
        if (!d->method)
            return 0; /* a WebSocket's upgrade reply: CLIENT_ESTABLISHED follows */
        /* fall through */
    case LWS_CALLBACK_CLIENT_ESTABLISHED:
        d->phase = DIAL_OPEN;
        if (d->ops->opened)
            d->ops->opened(d);
        return 1;
    case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
        connection_error(d, wsi, in);
        return 1;
    case LWS_CALLBACK_CLIENT_CLOSED:
    case LWS_CALLBACK_CLOSED_CLIENT_HTTP: /* closed while still in the HTTP role: mid-upgrade */
    case LWS_CALLBACK_WSI_DESTROY:        /* the last word on any wsi, whatever came before */
        if (d->phase < DIAL_OPEN)
            dial_reason(d, d->method ? "the gateway closed the connection before answering"
                                     : "the gateway closed the connection before the WebSocket upgrade completed");
        finish(d);
        return 1;
    default:
        return 0;
    }
}
