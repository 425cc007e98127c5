/* httpload — HTTP/1.1 keep-alive load generator (plain sockets + epoll) for tgbridge's REST
 * path, over TCP or a Unix socket; it also speaks tgbridge's Unix line protocol.
 *
 *   httpload (--port P [--host H] | --unix PATH) [--conns C] [--requests N] [--warmup W]
 *            [--parts N] [--size BYTES] [--pad BYTES] [--ndjson] [--line] [--hold]
 *            [--path /api/v1/flow/default/service/text-completion] [--timeout S]
 *            [--connect-rate PER_S] [--hold-seconds S] [--delay-ms MS]
 *            [--long-conns L --long-delay-ms MS] [--duration S [--warmup-s S]]
 *
 * Modes
 *   unary (default)  C connections, each with one request outstanding, re-used
 *                    (keep-alive); latency from the request's first byte written to its
 *                    response's last byte read.
 *   --ndjson         sends Accept: application/x-ndjson and reads the chunked NDJSON
 *                    stream: lines (= parts) and time to first line (from the request's
 *                    last byte written).
 *   --line           the Unix line protocol instead of HTTP: one envelope line per
 *                    request, reply lines until "complete":true.
 *   --hold           each of C connections sends one request that the mock never answers
 *                    ("hold":true), prints "HELD <n>" once all are written, then waits for
 *                    standard input to close (or --hold-seconds) and exits.
 *   --long-conns L   L more connections (opened first) each loop a call the mock answers
 *                    after --long-delay-ms, beside the C short-call connections; only
 *                    the short calls count in "lat_us" and "rps" (the long ones in
 *                    "long_lat_us").
 *   --duration S     the short calls loop for --warmup-s plus S seconds instead of a
 *                    fixed count: the calls issued in the S seconds after the warm-up are
 *                    measured, "rps" is the short calls finished in those S seconds / S,
 *                    and the run ends when the last short call issued has finished (long
 *                    calls still running are abandoned).
 *
 * The request bodies are the bytes direct.c puts in its envelopes (stats.h bench_body).
 * Prints one JSON line on stdout. */
#include "envelope.h" /* the daemon's own top-level scanner (json_members) */
#include "stats.h"
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

enum cstate { C_FREE, C_CONNECTING, C_SENDING, C_READING, C_IDLE };
enum rstate { R_HDR, R_BODY_CL, R_CHUNK_SIZE, R_CHUNK_DATA, R_CHUNK_CRLF, R_TRAILER, R_LINES };

struct conn {
    int fd;
    bool out_armed; /* EPOLLOUT in its epoll events */
    enum cstate st;
    /* request being written */
    const char *wbuf;
    size_t wlen, woff;
    char *own_wbuf; /* line mode: per-request envelope */
    long long seq;
    bool is_long; /* one of the --long-conns */
    double t_issue, t_sent, t_first;
    long long lines;
    /* response parser */
    enum rstate rs;
    char *hbuf; /* headers, chunk-size lines, protocol lines */
    size_t hlen, hcap;
    long long remaining;
    int status;
    bool chunked, close_after;
    char errbody[240];
    size_t errlen;
};

static struct {
    const char *host, *unix_path, *path, *service, *flow;
    int port, conns;
    long long requests, warmup, parts, size, pad, delay_ms;
    bool ndjson, line, hold;
    double timeout, connect_rate, hold_seconds;
    int long_conns;
    long long long_delay_ms;
    double duration, warmup_s;
} O = {"127.0.0.1", NULL, "/api/v1/flow/default/service/text-completion", "text-completion", "default",
       0, 1, 1000, 100, 0, 0, 0, 0, false, false, false, 120.0, 5000.0, 600.0, 0, 2000, 0, 0};

static struct {
    int ep;
    struct conn *c;
    long long total, issued, completed, errors, bad_status;
    long long held_written, held_replies, connect_errors, reconnects;
    int opened;
    char *req; /* HTTP mode: the whole request, shared by every connection */
    size_t req_len;
    char *body;
    size_t body_len;
    char *req_long, *body_long; /* the same for the long calls */
    size_t req_long_len, body_long_len;
    int nconns;                 /* O.long_conns + O.conns */
    long long long_issued, long_completed, done_in_span;
    double t_start, m0, m1; /* duration mode: first issue, measured span [m0, m1) */
    bool stopping, measuring;
    struct samples lat_long;
    double t0, t_end;
    struct rusage ru0;
    long rss_start_kb;
    unsigned long long bytes_rx, bytes_tx;
    struct samples lat, ttfb;
    long long frames;
    bool held_announced;
    char first_error[300];
    int status_hist[6];
} L;

static char scratch[256 * 1024];

static void die(const char *what)
{
    fprintf(stderr, "httpload: %s: %s\n", what, strerror(errno));
    exit(1);
}

/* ---- connections ---------------------------------------------------------------------- */

static void open_conn(struct conn *c)
{
    int fd;
    int rc;
    if (O.unix_path) {
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
            die("socket");
        struct sockaddr_un sa;
        memset(&sa, 0, sizeof sa);
        sa.sun_family = AF_UNIX;
        snprintf(sa.sun_path, sizeof sa.sun_path, "%s", O.unix_path);
        rc = connect(fd, (struct sockaddr *)&sa, sizeof sa);
    } else {
        fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
            die("socket");
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct sockaddr_in sa;
        memset(&sa, 0, sizeof sa);
        sa.sin_family = AF_INET;
        sa.sin_port = htons((uint16_t)O.port);
        inet_pton(AF_INET, O.host, &sa.sin_addr);
        rc = connect(fd, (struct sockaddr *)&sa, sizeof sa);
    }
    if (rc < 0 && errno != EINPROGRESS && errno != EAGAIN) {
        L.connect_errors++;
        close(fd);
        c->fd = -1;
        c->st = C_FREE;
        return;
    }
    c->fd = fd;
    c->st = C_CONNECTING;
    c->rs = R_HDR;
    c->hlen = 0;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET | EPOLLRDHUP, .data.ptr = c};
    if (epoll_ctl(L.ep, EPOLL_CTL_ADD, fd, &ev))
        die("epoll_ctl");
    c->out_armed = true; /* for the connect's completion */
    L.opened++;
}

static void close_conn(struct conn *c)
{
    if (c->fd >= 0) {
        epoll_ctl(L.ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    c->fd = -1;
    c->st = C_FREE;
    free(c->own_wbuf);
    c->own_wbuf = NULL;
}

/* ---- requests ------------------------------------------------------------------------- */

static void try_write(struct conn *c);

static void issue(struct conn *c)
{
    double t = now_s();
    if (O.duration > 0) {
        if (!L.t_start) {
            L.t_start = t;
            L.m0 = t + O.warmup_s;
            L.m1 = L.m0 + O.duration;
        }
        if (t >= L.m1)
            L.stopping = true;
        if (L.stopping) {
            c->st = C_IDLE;
            return;
        }
    } else if (!c->is_long && L.issued >= L.total) {
        c->st = C_IDLE;
        return;
    }
    c->seq = c->is_long ? L.long_issued++ : L.issued++;
    c->t_issue = t;
    c->t_first = 0;
    c->lines = 0;
    c->status = 0;
    c->chunked = c->close_after = false;
    c->rs = O.line ? R_LINES : R_HDR;
    c->hlen = 0;
    c->errlen = 0;
    if (!L.measuring && !c->is_long && (O.duration > 0 ? t >= L.m0 : c->seq == O.warmup)) {
        L.measuring = true;
        L.t0 = c->t_issue;
        getrusage(RUSAGE_SELF, &L.ru0);
        L.rss_start_kb = proc_status_kb("VmRSS");
    }
    if (O.line) {
        const char *body = c->is_long ? L.body_long : L.body;
        size_t body_len = c->is_long ? L.body_long_len : L.body_len;
        free(c->own_wbuf);
        size_t cap = body_len + 256;
        c->own_wbuf = malloc(cap);
        if (!c->own_wbuf)
            die("malloc");
        int n = snprintf(c->own_wbuf, cap, "{\"id\":\"%s%lld\",\"service\":\"%s\",\"flow\":\"%s\",\"request\":",
                         c->is_long ? "l" : "h", c->seq, O.service, O.flow);
        memcpy(c->own_wbuf + n, body, body_len);
        n += (int)body_len;
        c->own_wbuf[n++] = '}';
        c->own_wbuf[n++] = '\n';
        c->wbuf = c->own_wbuf;
        c->wlen = (size_t)n;
    } else {
        c->wbuf = c->is_long ? L.req_long : L.req;
        c->wlen = c->is_long ? L.req_long_len : L.req_len;
    }
    c->woff = 0;
    c->st = C_SENDING;
    try_write(c);
}

/* EPOLLOUT is armed only while a write waits for room: armed all the time, every
 * read the server makes from a Unix socket would wake this process, and the bench
 * would measure its own load generator (the issue's profile: ~15 % of tgbridge's CPU). */
static void want_out(struct conn *c, bool on)
{
    if (c->out_armed == on)
        return;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLET | EPOLLRDHUP | (on ? EPOLLOUT : 0), .data.ptr = c};
    if (!epoll_ctl(L.ep, EPOLL_CTL_MOD, c->fd, &ev))
        c->out_armed = on;
}

static void try_write(struct conn *c)
{
    while (c->st == C_SENDING && c->woff < c->wlen) {
        ssize_t n = send(c->fd, c->wbuf + c->woff, c->wlen - c->woff, MSG_NOSIGNAL);
        if (n > 0) {
            c->woff += (size_t)n;
            L.bytes_tx += (unsigned long long)n;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            want_out(c, true);
            return;
        }
        if (n < 0 && errno == EINTR)
            continue;
        L.errors++;
        if (!L.first_error[0])
            snprintf(L.first_error, sizeof L.first_error, "send: %s", strerror(errno));
        close_conn(c);
        return;
    }
    if (c->fd >= 0)
        want_out(c, false);
    if (c->st == C_SENDING) {
        c->t_sent = now_s();
        c->st = C_READING;
        if (O.hold) {
            L.held_written++;
        }
    }
}

static void finished_response(struct conn *c, bool ok)
{
    double t = now_s();
    if (!ok)
        L.errors++;
    if (c->is_long) {
        L.long_completed++;
        if (ok)
            samples_add(&L.lat_long, (t - c->t_issue) * 1e6);
        if (c->close_after) {
            close_conn(c);
            L.reconnects++;
            open_conn(c);
            return;
        }
        issue(c);
        return;
    }
    bool measured = O.duration > 0 ? c->t_issue >= L.m0 && c->t_issue < L.m1 : c->seq >= O.warmup;
    if (O.duration > 0 && t >= L.m0 && t <= L.m1)
        L.done_in_span++;
    if (measured) {
        if (ok) {
            samples_add(&L.lat, (t - c->t_issue) * 1e6);
            if (c->t_first > 0)
                samples_add(&L.ttfb, (c->t_first - c->t_sent) * 1e6);
        }
        L.frames += c->lines;
        if (t > L.t_end)
            L.t_end = t;
    }
    L.completed++;
    if (O.hold) {
        L.held_replies++;
        close_conn(c);
        return;
    }
    if (c->close_after) {
        close_conn(c);
        L.reconnects++;
        open_conn(c);
        return;
    }
    issue(c);
}

static bool hdr_has_token(const char *h, size_t n, const char *name, const char *val)
{
    /* case-insensitive "name: ...val..." search over the header block */
    size_t nl = strlen(name);
    for (size_t i = 0; i + nl < n; i++) {
        if ((i == 0 || h[i - 1] == '\n') && !strncasecmp(h + i, name, nl) && h[i + nl] == ':') {
            const char *e = memchr(h + i, '\n', n - i);
            size_t len = e ? (size_t)(e - (h + i)) : n - i;
            char tmp[256];
            if (len >= sizeof tmp)
                len = sizeof tmp - 1;
            memcpy(tmp, h + i, len);
            tmp[len] = '\0';
            if (!val)
                return true;
            if (strcasestr(tmp + nl + 1, val))
                return true;
        }
    }
    return false;
}

static long long hdr_value_ll(const char *h, size_t n, const char *name)
{
    size_t nl = strlen(name);
    for (size_t i = 0; i + nl < n; i++)
        if ((i == 0 || h[i - 1] == '\n') && !strncasecmp(h + i, name, nl) && h[i + nl] == ':')
            return strtoll(h + i + nl + 1, NULL, 10);
    return -1;
}

static void hbuf_append(struct conn *c, const char *p, size_t n)
{
    if (c->hlen + n + 1 > c->hcap) {
        size_t cap = c->hcap ? c->hcap : 4096;
        while (cap < c->hlen + n + 1)
            cap *= 2;
        c->hbuf = realloc(c->hbuf, cap);
        if (!c->hbuf)
            die("realloc");
        c->hcap = cap;
    }
    memcpy(c->hbuf + c->hlen, p, n);
    c->hlen += n;
    c->hbuf[c->hlen] = '\0';
}

/* Body bytes of the response (after de-chunking). */
static void body_bytes(struct conn *c, const char *p, size_t n)
{
    if (c->status != 200 && c->errlen < sizeof c->errbody - 1) {
        size_t k = n < sizeof c->errbody - 1 - c->errlen ? n : sizeof c->errbody - 1 - c->errlen;
        memcpy(c->errbody + c->errlen, p, k);
        c->errlen += k;
        c->errbody[c->errlen] = '\0';
    }
    if (!O.ndjson) {
        if (!c->t_first)
            c->t_first = now_s();
        return;
    }
    const char *e = p + n;
    for (const char *q = p; (q = memchr(q, '\n', (size_t)(e - q))); q++) {
        if (!c->lines)
            c->t_first = now_s();
        c->lines++;
    }
}

static void response_done(struct conn *c)
{
    bool ok = c->status == 200;
    int b = c->status / 100;
    if (b >= 1 && b <= 5)
        L.status_hist[b]++;
    if (!ok) {
        L.bad_status++;
        if (!L.first_error[0])
            snprintf(L.first_error, sizeof L.first_error, "HTTP %d %s", c->status, c->errbody);
    }
    finished_response(c, ok);
}

/* Line protocol: one reply line. */
struct lscan {
    bool complete, error;
};
static void l_cb(struct span k, struct span v, void *ctx)
{
    struct lscan *s = ctx;
    if (span_is(k, "complete"))
        s->complete = span_is(v, "true");
    else if (span_is(k, "error"))
        s->error = true;
}

static void consume(struct conn *c, const char *p, size_t n)
{
    while (n > 0 && (c->st == C_READING || c->st == C_SENDING)) {
        switch (c->rs) {
        case R_LINES: {
            const char *nl = memchr(p, '\n', n);
            size_t take = nl ? (size_t)(nl - p) + 1 : n;
            hbuf_append(c, p, take);
            p += take;
            n -= take;
            if (!nl)
                break;
            if (!c->lines)
                c->t_first = now_s();
            c->lines++;
            struct lscan s = {false, false};
            json_members(c->hbuf, c->hlen, l_cb, &s);
            if (s.error && !L.first_error[0])
                snprintf(L.first_error, sizeof L.first_error, "%.*s", (int)(c->hlen > 200 ? 200 : c->hlen), c->hbuf);
            c->hlen = 0;
            if (s.complete || s.error) {
                if (s.error)
                    L.bad_status++;
                finished_response(c, !s.error);
                return;
            }
            break;
        }
        case R_HDR: {
            size_t old = c->hlen;
            hbuf_append(c, p, n);
            size_t from = old >= 3 ? old - 3 : 0;
            char *end = memmem(c->hbuf + from, c->hlen - from, "\r\n\r\n", 4);
            if (!end) {
                p += n;
                n = 0;
                break;
            }
            size_t hdr_len = (size_t)(end - c->hbuf) + 4;
            size_t used = hdr_len - old;
            p += used;
            n -= used;
            c->status = c->hlen > 12 ? atoi(c->hbuf + 9) : 0;
            c->chunked = hdr_has_token(c->hbuf, hdr_len, "transfer-encoding", "chunked");
            c->close_after = hdr_has_token(c->hbuf, hdr_len, "connection", "close");
            long long cl = hdr_value_ll(c->hbuf, hdr_len, "content-length");
            c->hlen = 0;
            if (c->chunked) {
                c->rs = R_CHUNK_SIZE;
            } else if (cl > 0) {
                c->rs = R_BODY_CL;
                c->remaining = cl;
            } else {
                response_done(c);
                return;
            }
            break;
        }
        case R_BODY_CL: {
            size_t take = (unsigned long long)c->remaining < n ? (size_t)c->remaining : n;
            body_bytes(c, p, take);
            p += take;
            n -= take;
            c->remaining -= (long long)take;
            if (!c->remaining) {
                response_done(c);
                return;
            }
            break;
        }
        case R_CHUNK_SIZE:
        case R_TRAILER: {
            const char *nl = memchr(p, '\n', n);
            size_t take = nl ? (size_t)(nl - p) + 1 : n;
            hbuf_append(c, p, take);
            p += take;
            n -= take;
            if (!nl)
                break;
            if (c->rs == R_CHUNK_SIZE) {
                long long sz = strtoll(c->hbuf, NULL, 16);
                c->hlen = 0;
                if (sz == 0) {
                    c->rs = R_TRAILER;
                } else {
                    c->rs = R_CHUNK_DATA;
                    c->remaining = sz;
                }
            } else {
                bool empty = c->hlen <= 2;
                c->hlen = 0;
                if (empty) {
                    response_done(c);
                    return;
                }
            }
            break;
        }
        case R_CHUNK_DATA: {
            size_t take = (unsigned long long)c->remaining < n ? (size_t)c->remaining : n;
            body_bytes(c, p, take);
            p += take;
            n -= take;
            c->remaining -= (long long)take;
            if (!c->remaining) {
                c->rs = R_CHUNK_CRLF;
                c->remaining = 2;
            }
            break;
        }
        case R_CHUNK_CRLF: {
            size_t take = (unsigned long long)c->remaining < n ? (size_t)c->remaining : n;
            p += take;
            n -= take;
            c->remaining -= (long long)take;
            if (!c->remaining)
                c->rs = R_CHUNK_SIZE;
            break;
        }
        }
    }
}

static void on_event(struct conn *c, uint32_t ev)
{
    if (c->st == C_CONNECTING) {
        if (ev & (EPOLLERR | EPOLLHUP)) {
            L.connect_errors++;
            close_conn(c);
            return;
        }
        if (!(ev & EPOLLOUT))
            return;
        int err = 0;
        socklen_t el = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err) {
            L.connect_errors++;
            if (!L.first_error[0])
                snprintf(L.first_error, sizeof L.first_error, "connect: %s", strerror(err));
            close_conn(c);
            return;
        }
        issue(c);
        if (c->st == C_FREE)
            return;
    }
    if (c->st == C_SENDING && (ev & EPOLLOUT))
        try_write(c);
    if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
        for (;;) {
            if (c->fd < 0)
                return;
            ssize_t n = recv(c->fd, scratch, sizeof scratch, 0);
            if (n > 0) {
                L.bytes_rx += (unsigned long long)n;
                if (c->st == C_READING || c->st == C_SENDING) {
                    consume(c, scratch, (size_t)n);
                } else if (c->st == C_IDLE) {
                    /* unsolicited bytes on an idle keep-alive connection: ignore */
                }
                continue;
            }
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                break;
            if (n < 0 && errno == EINTR)
                continue;
            /* EOF or error */
            if (c->st == C_READING || c->st == C_SENDING) {
                L.errors++;
                if (!L.first_error[0])
                    snprintf(L.first_error, sizeof L.first_error, "connection closed by the server mid-request");
                if (O.hold)
                    L.held_replies++;
            }
            close_conn(c);
            return;
        }
    }
}

/* ---- main ----------------------------------------------------------------------------- */

static void usage(void)
{
    fprintf(stderr, "usage: httpload (--port P [--host H] | --unix PATH) [--conns C] [--requests N] [--warmup W]\n"
                    "                [--parts N] [--size BYTES] [--pad BYTES] [--ndjson] [--line] [--hold]\n"
                    "                [--path P] [--timeout S] [--connect-rate N] [--hold-seconds S] [--delay-ms MS]\n"
                    "                [--long-conns L --long-delay-ms MS] [--duration S [--warmup-s S]]\n");
    exit(2);
}

static void print_result(bool ok, const char *why)
{
    if (!L.measuring)
        getrusage(RUSAGE_SELF, &L.ru0);
    struct rusage ru1;
    getrusage(RUSAGE_SELF, &ru1);
    double cpu = (double)(ru1.ru_utime.tv_sec - L.ru0.ru_utime.tv_sec) +
                 (double)(ru1.ru_utime.tv_usec - L.ru0.ru_utime.tv_usec) * 1e-6 +
                 (double)(ru1.ru_stime.tv_sec - L.ru0.ru_stime.tv_sec) +
                 (double)(ru1.ru_stime.tv_usec - L.ru0.ru_stime.tv_usec) * 1e-6;
    double el = L.t_end > L.t0 ? L.t_end - L.t0 : 0;
    long long measured = (long long)L.lat.n;
    double rps = el > 0 ? (double)measured / el : 0.0;
    if (O.duration > 0) {
        el = O.duration;
        rps = (double)L.done_in_span / O.duration;
    }
    char fe[300];
    size_t k = 0;
    for (const char *s = L.first_error; *s && k < sizeof fe - 2; s++)
        fe[k++] = (*s == '"' || *s == '\\') ? '\'' : ((unsigned char)*s < 0x20 ? ' ' : *s);
    fe[k] = '\0';
    printf("{\"tool\":\"httpload\",\"ok\":%s,\"why\":\"%s\",\"transport\":\"%s\",\"protocol\":\"%s\",\"conns\":%d,"
           "\"requests\":%lld,\"errors\":%lld,\"bad_status\":%lld,\"connect_errors\":%lld,\"reconnects\":%lld,"
           "\"held\":%lld,\"held_replies\":%lld,"
           "\"elapsed_s\":%.6f,\"rps\":%.1f,\"frames\":%lld,\"frames_per_s\":%.1f,\"bytes_rx\":%llu,\"bytes_tx\":%llu,"
           "\"cpu_s\":%.6f,\"rss_start_kb\":%ld,\"hwm_kb\":%ld,\"status_2xx\":%d,\"status_4xx\":%d,\"status_5xx\":%d,"
           "\"first_error\":\"%s\",\"long_conns\":%d,\"long_completed\":%lld,",
           ok ? "true" : "false", why, O.unix_path ? "unix" : "tcp", O.line ? "line" : (O.ndjson ? "ndjson" : "http"),
           O.conns, measured, L.errors, L.bad_status, L.connect_errors, L.reconnects, L.held_written, L.held_replies,
           el, rps, L.frames, el > 0 ? (double)L.frames / el : 0.0, L.bytes_rx,
           L.bytes_tx, cpu, L.rss_start_kb, proc_status_kb("VmHWM"), L.status_hist[2], L.status_hist[4],
           L.status_hist[5], fe, O.long_conns, L.long_completed);
    samples_json(stdout, "lat_us", &L.lat);
    printf(",");
    samples_json(stdout, "ttfb_us", &L.ttfb);
    printf(",");
    samples_json(stdout, "long_lat_us", &L.lat_long);
    printf("}\n");
    fflush(stdout);
}

/* The whole HTTP request for a body (shared by every connection that sends it). */
static char *http_request(const char *body, size_t body_len, size_t *len_out)
{
    size_t cap = body_len + 512;
    char *req = malloc(cap);
    if (!req)
        die("malloc");
    int n = snprintf(req, cap,
                     "POST %s HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n%s"
                     "Content-Length: %zu\r\n\r\n",
                     O.path, O.ndjson || O.hold ? "Accept: application/x-ndjson\r\n" : "Accept: application/json\r\n",
                     body_len);
    memcpy(req + n, body, body_len);
    *len_out = (size_t)n + body_len;
    return req;
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--ndjson")) { O.ndjson = true; continue; }
        if (!strcmp(a, "--line")) { O.line = true; continue; }
        if (!strcmp(a, "--hold")) { O.hold = true; continue; }
        if (i + 1 >= argc)
            usage();
        const char *v = argv[++i];
        if (!strcmp(a, "--host")) O.host = v;
        else if (!strcmp(a, "--port")) O.port = atoi(v);
        else if (!strcmp(a, "--unix")) O.unix_path = v;
        else if (!strcmp(a, "--conns")) O.conns = atoi(v);
        else if (!strcmp(a, "--requests")) O.requests = atoll(v);
        else if (!strcmp(a, "--warmup")) O.warmup = atoll(v);
        else if (!strcmp(a, "--parts")) O.parts = atoll(v);
        else if (!strcmp(a, "--size")) O.size = atoll(v);
        else if (!strcmp(a, "--pad")) O.pad = atoll(v);
        else if (!strcmp(a, "--path")) O.path = v;
        else if (!strcmp(a, "--timeout")) O.timeout = atof(v);
        else if (!strcmp(a, "--connect-rate")) O.connect_rate = atof(v);
        else if (!strcmp(a, "--hold-seconds")) O.hold_seconds = atof(v);
        else if (!strcmp(a, "--delay-ms")) O.delay_ms = atoll(v);
        else if (!strcmp(a, "--long-conns")) O.long_conns = atoi(v);
        else if (!strcmp(a, "--long-delay-ms")) O.long_delay_ms = atoll(v);
        else if (!strcmp(a, "--duration")) O.duration = atof(v);
        else if (!strcmp(a, "--warmup-s")) O.warmup_s = atof(v);
        else usage();
    }
    if ((!O.port && !O.unix_path) || O.conns < 1 || O.requests < 1 || O.long_conns < 0 || O.duration < 0 ||
        O.warmup_s < 0 || (O.hold && (O.long_conns || O.duration > 0)))
        usage();
    if (O.line && !O.unix_path) {
        fprintf(stderr, "httpload: --line needs --unix\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    if (O.hold) {
        O.warmup = 0;
        O.requests = O.conns;
    }
    L.total = O.warmup + O.requests;
    L.body = bench_body(O.parts, O.size, O.hold, O.pad, O.delay_ms, &L.body_len);
    L.body_long = bench_body(0, 0, 0, 0, O.long_delay_ms, &L.body_long_len);
    if (!O.line) {
        L.req = http_request(L.body, L.body_len, &L.req_len);
        L.req_long = http_request(L.body_long, L.body_long_len, &L.req_long_len);
    }
    if (O.hold)
        O.ndjson = true;
    L.ep = epoll_create1(EPOLL_CLOEXEC);
    if (L.ep < 0)
        die("epoll_create1");
    L.nconns = O.long_conns + O.conns;
    L.c = calloc((size_t)L.nconns, sizeof *L.c);
    if (!L.c)
        die("calloc");
    for (int i = 0; i < L.nconns; i++) {
        L.c[i].fd = -1;
        L.c[i].is_long = i < O.long_conns; /* opened first */
    }
    if (O.hold) {
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
        epoll_ctl(L.ep, EPOLL_CTL_ADD, 0, &ev); /* stdin: closing it ends the hold */
    }
    double start = now_s();
    double deadline = start + O.timeout;
    int next_open = 0;
    double hold_until = 0;
    struct epoll_event evs[512];
    bool ok = true;
    const char *why = "";
    for (;;) {
        double t = now_s();
        /* open connections, paced (10,000 at once would overflow the listen backlog) */
        if (next_open < L.nconns) {
            long long allowed = O.connect_rate > 0 ? (long long)((t - start) * O.connect_rate) + 64 : L.nconns;
            while (next_open < L.nconns && next_open < allowed)
                open_conn(&L.c[next_open++]);
        }
        if (O.duration > 0 && L.t_start && t >= L.m1)
            L.stopping = true;
        if (O.hold) {
            if (!L.held_announced && next_open == O.conns && L.held_written + L.held_replies + L.connect_errors >= O.conns) {
                printf("HELD %lld\n", L.held_written);
                fflush(stdout);
                L.held_announced = true;
                hold_until = now_s() + O.hold_seconds;
            }
            if (L.held_announced && now_s() >= hold_until)
                break;
        } else if (O.duration > 0 ? L.stopping && L.completed >= L.issued : L.completed >= L.total) {
            break;
        } else if (next_open == L.nconns) {
            bool any = false;
            for (int i = 0; i < L.nconns && !any; i++)
                any = L.c[i].st != C_FREE && L.c[i].st != C_IDLE;
            if (!any) {
                ok = false;
                why = "every connection failed";
                break;
            }
        }
        if (t > deadline && !(O.hold && L.held_announced)) {
            ok = false;
            why = "timeout";
            break;
        }
        int timeout_ms = next_open < L.nconns ? 5 : 100;
        int n = epoll_wait(L.ep, evs, 512, timeout_ms);
        if (n < 0 && errno != EINTR)
            die("epoll_wait");
        for (int i = 0; i < n; i++) {
            if (!evs[i].data.ptr) {
                char b[256];
                ssize_t r = read(0, b, sizeof b);
                if (r <= 0) {
                    epoll_ctl(L.ep, EPOLL_CTL_DEL, 0, NULL);
                    if (L.held_announced)
                        hold_until = 0;
                    else
                        O.hold_seconds = 0;
                }
                continue;
            }
            on_event(evs[i].data.ptr, evs[i].events);
        }
    }
    if (O.hold) {
        L.t0 = start;
        L.t_end = now_s();
    }
    print_result(ok && (O.hold || O.duration > 0 || L.completed >= L.total), why);
    for (int i = 0; i < L.nconns; i++)
        close_conn(&L.c[i]);
    return ok ? 0 : 1;
}
