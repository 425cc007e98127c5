/* direct — the "no bridge" baseline: a direct WebSocket client (libwebsockets) that talks
 * to the gateway (the bench's fastmock) exactly as tgbridge does upstream, with the same
 * request bodies, the same caller concurrency and the same window (at most --window
 * requests in the gateway's window, counted from the oldest unfinished one).
 *
 *   direct --port P [--host H] [--callers C] [--requests N] [--warmup W]
 *          [--parts N] [--size BYTES] [--pad BYTES] [--delay-ms MS] [--window 15]
 *          [--timeout S] [--per-frame]
 *          [--long-callers L --long-delay-ms MS] [--duration S [--warmup-s S]]
 *
 * C callers each keep one request outstanding; a caller's request waits in a local FIFO
 * until the window has room (as a request waits in tgbridge's queue).  Latency = from the
 * moment the caller issues the request to its final frame (local queueing included), the
 * same span the HTTP load generator measures from its side.  Time to first frame = from
 * the request's last byte handed to the kernel to its first reply frame.  Prints one JSON
 * line on stdout.
 *
 * Small envelopes waiting together are framed into one buffer and sent with one write,
 * as tgbridge does (src/wire/wsframe.c): the baseline stays the best a client can do.
 * --per-frame writes each with its own lws_write instead, as a naive client would.
 *
 * Mixed load (the bench's "mixed" scenario): --long-callers L more callers on the same
 * socket each loop a call the mock answers after --long-delay-ms; only the C short
 * callers' calls are counted in "lat_us" and "rps" (the long ones in "long_lat_us").
 * --duration S: the short callers loop for --warmup-s plus S seconds instead of a fixed
 * count; the calls issued in the S seconds after the warm-up are the measured ones,
 * "rps" is the short calls finished in those S seconds / S, and the run ends when the
 * last short call issued has finished (long calls still running are abandoned). */
#include "envelope.h" /* the daemon's own top-level scanner (json_members) */
#include "wsframe.h"   /* and its frame writer */
#include "stats.h"
#include <libwebsockets.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#define WRITE_CHUNK (64 * 1024)
/* The same limits as src/upstream/upstream.c. */
#define BURST_MAX_ENVELOPE (16 * 1024)
#define BURST_MAX_BYTES (60 * 1024)
#define BURST_MAX_COUNT 64
#define RING 256

struct rec {
    double t_issue, t_sent, t_first, t_done;
    long long frames;
    long long sidx; /* index among the short calls; -1 for a long call */
    bool done, error;
};

static struct {
    const char *host;
    int port;
    int callers, window;
    long long requests, warmup, parts, size, pad, delay_ms;
    double timeout;
    const char *service, *flow, *token;
    bool per_frame;
    int long_callers;
    long long long_delay_ms;
    double duration, warmup_s;
} O = {"127.0.0.1", 0, 1, 15, 1000, 100, 0, 0, 0, 0, 120.0, "text-completion", "default", "tg_bench", false,
       0, 2000, 0, 0};

static struct {
    struct lws_context *ctx;
    struct lws *wsi;
    struct rec *recs;
    long long cap; /* recs and fifo have room for this many */
    /* total: short calls to make (count mode); issued: calls of either kind so far (the
     * next seq); short_issued/completed: short calls only */
    long long total, issued, short_issued, completed, errors, long_completed;
    double t_start, m0, m1; /* duration mode: first issue, measured span [m0, m1) */
    bool stopping;          /* duration mode: past m1, nothing new is issued */
    bool measuring;         /* the first measured short call has been issued */
    /* local FIFO of issued, not yet sent requests */
    long long *fifo;
    long long fhead, ftail;
    /* window ledger: send order, pruned only from the front */
    long long ring[RING];
    unsigned rhead, rtail;
    /* the request being written (a large one takes several fragments) */
    long long cur;
    unsigned char *cur_buf;
    size_t cur_len, cur_off;
    struct buf burst;
    bool auth_due, started, finished, failed;
    char *body, *body_long;
    size_t body_len, body_long_len, body_max_len;
    char *rx;
    size_t rxlen, rxcap;
    double t0;
    long rss_start_kb;
    struct rusage ru0;
    unsigned long long bytes_rx, bytes_tx;
    lws_sorted_usec_list_t timeout_sul;
    char why[256];
} D;

static unsigned window_len(void) { return D.rtail - D.rhead; }

/* Room for `need` calls in recs and fifo. */
static void grow(long long need)
{
    if (need <= D.cap)
        return;
    long long cap = D.cap ? D.cap * 2 : 4096;
    if (cap < need)
        cap = need;
    struct rec *r = realloc(D.recs, (size_t)cap * sizeof *r);
    long long *f = realloc(D.fifo, (size_t)cap * sizeof *f);
    if (!r || !f) {
        fputs("out of memory\n", stderr);
        exit(1);
    }
    memset(r + D.cap, 0, (size_t)(cap - D.cap) * sizeof *r);
    D.recs = r;
    D.fifo = f;
    D.cap = cap;
}

/* A caller issues its next call (is_long: one of the --long-callers). */
static void issue(bool is_long)
{
    double t = now_s();
    if (O.duration > 0) {
        if (!D.t_start) {
            D.t_start = t;
            D.m0 = t + O.warmup_s;
            D.m1 = D.m0 + O.duration;
        }
        if (t >= D.m1)
            D.stopping = true;
        if (D.stopping)
            return;
    } else if (!is_long && D.short_issued >= D.total) {
        return;
    }
    grow(D.issued + 1);
    long long seq = D.issued++;
    struct rec *r = &D.recs[seq];
    r->t_issue = t;
    r->sidx = is_long ? -1 : D.short_issued++;
    if (!D.measuring && !is_long && (O.duration > 0 ? t >= D.m0 : r->sidx == O.warmup)) {
        D.measuring = true;
        D.t0 = t;
        D.rss_start_kb = proc_status_kb("VmRSS");
        getrusage(RUSAGE_SELF, &D.ru0);
    }
    D.fifo[D.ftail++] = seq;
}

static void prune_window(void)
{
    while (window_len() && D.recs[D.ring[D.rhead % RING]].done)
        D.rhead++;
}

static void finish(const char *why)
{
    if (why)
        snprintf(D.why, sizeof D.why, "%s", why);
    D.finished = true;
    lws_cancel_service(D.ctx);
}

static void on_timeout(lws_sorted_usec_list_t *sul)
{
    (void)sul;
    D.failed = true;
    finish("timeout");
}

/* ---- frames in ------------------------------------------------------------------------ */

struct fscan {
    struct span id, type;
    bool has_id, has_type, complete, error;
};

static void f_cb(struct span k, struct span v, void *ctx)
{
    struct fscan *f = ctx;
    if (span_is(k, "id")) {
        f->id = v;
        f->has_id = true;
    } else if (span_is(k, "complete")) {
        f->complete = span_is(v, "true");
    } else if (span_is(k, "error")) {
        f->error = true;
    } else if (span_is(k, "type")) {
        f->type = v;
        f->has_type = true;
    }
}

static void on_message(const char *text, size_t len)
{
    struct fscan f;
    memset(&f, 0, sizeof f);
    if (json_members(text, len, f_cb, &f) < 0) {
        D.errors++;
        return;
    }
    if (f.has_type) {
        if (f.type.n == 9 && !memcmp(f.type.p, "\"auth-ok\"", 9)) {
            D.started = true;
            for (int c = 0; c < O.long_callers; c++)
                issue(true);
            for (int c = 0; c < O.callers; c++)
                issue(false);
            lws_callback_on_writable(D.wsi);
        } else {
            D.failed = true;
            finish("authentication refused");
        }
        return;
    }
    if (!f.has_id || f.id.n < 4 || f.id.p[1] != 'd') {
        D.errors++;
        return;
    }
    long long seq = strtoll(f.id.p + 2, NULL, 10);
    if (seq < 0 || seq >= D.issued || D.recs[seq].done)
        return;
    struct rec *r = &D.recs[seq];
    double t = now_s();
    if (!r->frames)
        r->t_first = t;
    r->frames++;
    if (f.complete || f.error) {
        r->done = true;
        r->error = f.error;
        r->t_done = t;
        bool is_long = r->sidx < 0; /* r is not used past issue(), which may move it */
        if (is_long)
            D.long_completed++;
        else
            D.completed++;
        if (f.error)
            D.errors++;
        prune_window();
        if (O.duration <= 0 && D.completed == D.total) {
            finish(NULL);
            return;
        }
        issue(is_long); /* this caller's next request */
        if (O.duration > 0 && D.stopping && D.completed == D.short_issued) {
            finish(NULL);
            return;
        }
        lws_callback_on_writable(D.wsi);
    }
}

static int on_receive(const void *in, size_t len)
{
    D.bytes_rx += len;
    size_t need = D.rxlen + len + lws_remaining_packet_payload(D.wsi) + 1;
    if (need > D.rxcap) {
        /* lws tells how much of this frame is still to come: reserve it exactly. */
        size_t cap = need < 65536 ? 65536 : need;
        char *n = realloc(D.rx, cap);
        if (!n)
            return -1;
        D.rx = n;
        D.rxcap = cap;
    }
    memcpy(D.rx + D.rxlen, in, len);
    D.rxlen += len;
    if (!lws_is_final_fragment(D.wsi) || lws_remaining_packet_payload(D.wsi))
        return 0;
    on_message(D.rx, D.rxlen);
    D.rxlen = 0;
    if (D.rxcap > 1024 * 1024) {
        free(D.rx);
        D.rx = NULL;
        D.rxcap = 0;
    }
    return 0;
}

/* ---- frames out ----------------------------------------------------------------------- */

static void build_envelope(long long seq)
{
    char head[256];
    int hn = snprintf(head, sizeof head, "{\"id\":\"d%lld\",\"service\":\"%s\",\"flow\":\"%s\",\"request\":", seq,
                      O.service, O.flow);
    bool is_long = D.recs[seq].sidx < 0;
    const char *body = is_long ? D.body_long : D.body;
    size_t body_len = is_long ? D.body_long_len : D.body_len;
    size_t len = (size_t)hn + body_len + 1;
    unsigned char *b = malloc(LWS_PRE + len);
    if (!b) {
        fputs("out of memory\n", stderr);
        exit(1);
    }
    memcpy(b + LWS_PRE, head, (size_t)hn);
    memcpy(b + LWS_PRE + hn, body, body_len);
    b[LWS_PRE + len - 1] = '}';
    D.cur = seq;
    D.cur_buf = b;
    D.cur_len = len;
    D.cur_off = 0;
}

static void sent_current(void)
{
    D.recs[D.cur].t_sent = now_s();
    free(D.cur_buf);
    D.cur_buf = NULL;
    D.cur = -1;
}

/* The envelope just built, and those behind it that fit, in one write. */
static int write_burst(void)
{
    long long batch[BURST_MAX_COUNT];
    size_t n = 0;
    D.burst.len = 0;
    for (;;) {
        wsframe_append_text(&D.burst, D.cur_buf + LWS_PRE, D.cur_len);
        batch[n++] = D.cur;
        free(D.cur_buf);
        D.cur_buf = NULL;
        D.cur = -1;
        if (n == BURST_MAX_COUNT || D.fhead == D.ftail || window_len() >= (unsigned)O.window ||
            D.burst.len + 14 + D.body_max_len + 256 > BURST_MAX_BYTES || D.body_max_len + 256 > BURST_MAX_ENVELOPE)
            break;
        long long seq = D.fifo[D.fhead++];
        D.ring[D.rtail++ % RING] = seq;
        build_envelope(seq);
    }
    /* lws buffers what the kernel does not take; a short count is not an error */
    if (lws_write(D.wsi, (unsigned char *)buf_ptr(&D.burst), D.burst.len, LWS_WRITE_RAW) < 0)
        return -1;
    D.bytes_tx += D.burst.len;
    double t = now_s();
    for (size_t i = 0; i < n; i++)
        D.recs[batch[i]].t_sent = t;
    return 0;
}

static int on_writeable(void)
{
    if (D.auth_due) {
        unsigned char b[LWS_PRE + 128];
        int n = snprintf((char *)b + LWS_PRE, 128, "{\"type\":\"auth\",\"token\":\"%s\"}", O.token);
        D.auth_due = false;
        return lws_write(D.wsi, b + LWS_PRE, (size_t)n, LWS_WRITE_TEXT) < n ? -1 : 0;
    }
    if (!D.started)
        return 0;
    for (;;) {
        if (D.cur < 0) {
            if (D.fhead == D.ftail || window_len() >= (unsigned)O.window)
                break;
            long long seq = D.fifo[D.fhead++];
            D.ring[D.rtail++ % RING] = seq;
            build_envelope(seq);
            if (!O.per_frame && D.cur_len <= BURST_MAX_ENVELOPE) {
                if (write_burst() < 0)
                    return -1;
                if (lws_send_pipe_choked(D.wsi))
                    break;
                continue;
            }
        }
        size_t left = D.cur_len - D.cur_off;
        size_t chunk = left > WRITE_CHUNK ? WRITE_CHUNK : left;
        int flags = lws_write_ws_flags(LWS_WRITE_TEXT, D.cur_off == 0, D.cur_off + chunk == D.cur_len);
        if (lws_write(D.wsi, D.cur_buf + LWS_PRE + D.cur_off, chunk, (enum lws_write_protocol)flags) < (int)chunk)
            return -1;
        D.bytes_tx += chunk;
        D.cur_off += chunk;
        if (D.cur_off == D.cur_len)
            sent_current();
        if (lws_send_pipe_choked(D.wsi))
            break;
    }
    if (D.cur >= 0 || (D.fhead != D.ftail && window_len() < (unsigned)O.window))
        lws_callback_on_writable(D.wsi);
    return 0;
}

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
    (void)user;
    switch (reason) {
    case LWS_CALLBACK_CLIENT_ESTABLISHED:
        D.auth_due = true;
        lws_callback_on_writable(wsi);
        break;
    case LWS_CALLBACK_CLIENT_RECEIVE:
        return on_receive(in, len);
    case LWS_CALLBACK_CLIENT_WRITEABLE:
        return on_writeable();
    case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
        D.failed = true;
        D.wsi = NULL;
        finish(in ? (const char *)in : "connection error");
        break;
    case LWS_CALLBACK_CLIENT_CLOSED:
        D.wsi = NULL;
        if (!D.finished) {
            D.failed = true;
            finish("connection closed");
        }
        break;
    default:
        break;
    }
    return 0;
}

static const struct lws_protocols protocols[] = {
    {"direct", callback, 0, 256 * 1024, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

static void usage(void)
{
    fprintf(stderr, "usage: direct --port P [--host H] [--callers C] [--requests N] [--warmup W] [--parts N]\n"
                    "              [--size BYTES] [--pad BYTES] [--delay-ms MS] [--window N] [--timeout S]\n"
                    "              [--per-frame] [--long-callers L --long-delay-ms MS]\n"
                    "              [--duration S [--warmup-s S]]\n");
    exit(2);
}

static void print_result(void)
{
    struct samples lat = {0}, ttfb = {0}, lat_long = {0};
    long long frames = 0, measured = 0, done_in_span = 0;
    double t_end = D.t0;
    for (long long i = 0; i < D.issued; i++) {
        struct rec *r = &D.recs[i];
        if (!r->done)
            continue;
        if (r->sidx < 0) {
            samples_add(&lat_long, (r->t_done - r->t_issue) * 1e6);
            continue;
        }
        if (O.duration > 0 && r->t_done >= D.m0 && r->t_done <= D.m1)
            done_in_span++;
        if (O.duration > 0 ? (r->t_issue < D.m0 || r->t_issue >= D.m1) : r->sidx < O.warmup)
            continue;
        measured++;
        frames += r->frames;
        samples_add(&lat, (r->t_done - r->t_issue) * 1e6);
        if (r->frames && r->t_sent > 0)
            samples_add(&ttfb, (r->t_first - r->t_sent) * 1e6);
        if (r->t_done > t_end)
            t_end = r->t_done;
    }
    struct rusage ru1;
    getrusage(RUSAGE_SELF, &ru1);
    double cpu = (double)(ru1.ru_utime.tv_sec - D.ru0.ru_utime.tv_sec) +
                 (double)(ru1.ru_utime.tv_usec - D.ru0.ru_utime.tv_usec) * 1e-6 +
                 (double)(ru1.ru_stime.tv_sec - D.ru0.ru_stime.tv_sec) +
                 (double)(ru1.ru_stime.tv_usec - D.ru0.ru_stime.tv_usec) * 1e-6;
    double el = t_end - D.t0;
    double rps = el > 0 ? (double)measured / el : 0.0;
    if (O.duration > 0) {
        el = O.duration;
        rps = (double)done_in_span / O.duration;
    }
    printf("{\"tool\":\"direct\",\"ok\":%s,\"why\":\"%s\",\"callers\":%d,\"requests\":%lld,\"errors\":%lld,"
           "\"elapsed_s\":%.6f,\"rps\":%.1f,\"frames\":%lld,\"frames_per_s\":%.1f,\"bytes_rx\":%llu,\"bytes_tx\":%llu,"
           "\"cpu_s\":%.6f,\"rss_start_kb\":%ld,\"hwm_kb\":%ld,\"long_callers\":%d,\"long_completed\":%lld,",
           D.failed ? "false" : "true", D.why, O.callers, measured, D.errors, el, rps, frames,
           el > 0 ? (double)frames / el : 0.0, D.bytes_rx, D.bytes_tx, cpu, D.rss_start_kb, proc_status_kb("VmHWM"),
           O.long_callers, D.long_completed);
    samples_json(stdout, "lat_us", &lat);
    printf(",");
    samples_json(stdout, "ttfb_us", &ttfb);
    printf(",");
    samples_json(stdout, "long_lat_us", &lat_long);
    printf("}\n");
    free(lat.v);
    free(ttfb.v);
    free(lat_long.v);
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--per-frame")) {
            O.per_frame = true;
            continue;
        }
        if (i + 1 >= argc)
            usage();
        const char *v = argv[++i];
        if (!strcmp(a, "--host")) O.host = v;
        else if (!strcmp(a, "--port")) O.port = atoi(v);
        else if (!strcmp(a, "--callers")) O.callers = atoi(v);
        else if (!strcmp(a, "--requests")) O.requests = atoll(v);
        else if (!strcmp(a, "--warmup")) O.warmup = atoll(v);
        else if (!strcmp(a, "--parts")) O.parts = atoll(v);
        else if (!strcmp(a, "--size")) O.size = atoll(v);
        else if (!strcmp(a, "--pad")) O.pad = atoll(v);
        else if (!strcmp(a, "--delay-ms")) O.delay_ms = atoll(v);
        else if (!strcmp(a, "--long-callers")) O.long_callers = atoi(v);
        else if (!strcmp(a, "--long-delay-ms")) O.long_delay_ms = atoll(v);
        else if (!strcmp(a, "--duration")) O.duration = atof(v);
        else if (!strcmp(a, "--warmup-s")) O.warmup_s = atof(v);
        else if (!strcmp(a, "--window")) O.window = atoi(v);
        else if (!strcmp(a, "--timeout")) O.timeout = atof(v);
        else if (!strcmp(a, "--service")) O.service = v;
        else if (!strcmp(a, "--flow")) O.flow = v;
        else if (!strcmp(a, "--token")) O.token = v;
        else usage();
    }
    if (!O.port || O.callers < 1 || O.requests < 1 || O.window < 1 || O.window > 16 || O.long_callers < 0 ||
        O.duration < 0 || O.warmup_s < 0)
        usage();
    signal(SIGPIPE, SIG_IGN);
    D.total = O.warmup + O.requests;
    grow(O.duration > 0 ? 4096 : D.total + O.long_callers + 16);
    D.cur = -1;
    buf_init(&D.burst, LWS_PRE);
    D.body = bench_body(O.parts, O.size, 0, O.pad, O.delay_ms, &D.body_len);
    D.body_long = bench_body(0, 0, 0, 0, O.long_delay_ms, &D.body_long_len);
    D.body_max_len = D.body_len > D.body_long_len ? D.body_len : D.body_long_len;

    lws_set_log_level(LLL_ERR, NULL);
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.port = CONTEXT_PORT_NO_LISTEN;
    info.protocols = protocols;
    info.pt_serv_buf_size = 256 * 1024;
    D.ctx = lws_create_context(&info);
    if (!D.ctx)
        return 1;
    char host[128];
    snprintf(host, sizeof host, "%s:%d", O.host, O.port);
    struct lws_client_connect_info ci;
    memset(&ci, 0, sizeof ci);
    ci.context = D.ctx;
    ci.address = O.host;
    ci.port = O.port;
    ci.path = "/api/v1/socket";
    ci.host = host;
    ci.local_protocol_name = "direct";
    ci.pwsi = &D.wsi;
    if (!lws_client_connect_via_info(&ci)) {
        fprintf(stderr, "direct: cannot connect\n");
        return 1;
    }
    lws_sul_schedule(D.ctx, 0, &D.timeout_sul, on_timeout, (lws_usec_t)(O.timeout * 1e6));
    while (!D.finished)
        if (lws_service(D.ctx, 0) < 0)
            break;
    print_result();
    lws_sul_cancel(&D.timeout_sul);
    lws_context_destroy(D.ctx);
    return D.failed ? 1 : 0;
}
