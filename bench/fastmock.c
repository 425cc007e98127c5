/* fastmock — a fast mock TrustGraph api-gateway for the benchmarks (libwebsockets server).
 *
 * Just enough of the gateway's /api/v1/socket protocol (reference §3.2, §4, §5, §6.1):
 *   - the upgrade is accepted on /api/v1/socket only (any query string);
 *   - {"type":"auth",...} is answered {"type":"auth-ok","default_workspace":"default"};
 *   - a request envelope {"id":…,"request":{…}} is answered according to its payload:
 *       default        one final frame {"id":…,"response":{"response":<q or "ok">,
 *                      "end_of_stream":true},"complete":true}
 *       "parts":N      N partial frames ("complete":false), then the final one
 *       "size":BYTES   the final frame's "response" string is BYTES long
 *       "hold":true    never answered (it stays in the window, like a long agent call)
 *       "delay_ms":N   answered N ms after the request starts (enters the window), like
 *                      an LLM call that takes that long; it pins the window meanwhile
 *   - the gateway's window: at most 16 requests running per socket, counted from the
 *     oldest unfinished one; 11 more may wait (1 in the worker loop, 10 in its queue);
 *     beyond that the socket is not read any more (TCP back-pressure), exactly the stall
 *     the reference describes.  There is no artificial 10 ms start spacing: the mock must
 *     never be the bottleneck.
 *
 * Speed: requests are scanned, never parsed into a tree (json_members from src/wire/envelope.c); replies are built
 * straight into one output buffer, many WebSocket frames per send(2) (server frames are
 * unmasked, so they are framed here and written with LWS_WRITE_RAW); a huge reply is
 * streamed in 256 KiB slices without ever being materialised.
 *
 * Prints "PORT <n>" on stdout once listening; SIGTERM/SIGINT stop it and print counters
 * on stderr (conns = sockets accepted in all, conns_max = most open at once, delayed =
 * "delay_ms" requests started). */
#include "envelope.h" /* the daemon's own top-level scanner (json_members) */
#include <libwebsockets.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WINDOW 16        /* requests running at once, from the oldest unfinished (ref §6.1) */
#define READER_QUEUE 11  /* started-later requests the gateway still reads before stalling */
#define OUT_CHUNK (256 * 1024)
#define FRAME_HDR_MAX 10
#define RR_BUDGET 64     /* frames one streaming job may emit before the next job's turn */
#define LIT_MAX 200      /* longest id / echo literal kept verbatim */

enum jkind { J_AUTH, J_REPLY, J_HOLD };

struct job {
    enum jkind kind;
    bool done;
    struct job *next;  /* pending list */
    struct job *wnext; /* window ledger */
    struct job *anext; /* active (to be written) list */
    char id[LIT_MAX + 1];
    size_t idn;
    char echo[LIT_MAX + 1];
    size_t echon;
    long long parts_left;
    long long size;
    long long big_left;
    bool big_open;
    long long delay_ms;     /* "delay_ms": reply this long after the start */
    bool delaying;          /* its timer is armed */
    struct pss *owner;
    lws_sorted_usec_list_t sul;
};

struct pss {
    struct lws *wsi;
    char *rx;
    size_t rxlen, rxcap;
    struct job *pend_head, *pend_tail;
    size_t npend;
    struct job *win_head, *win_tail;
    size_t nwin;
    struct job *act_head, *act_tail;
    size_t nact;
    bool rx_paused;
    unsigned char *out; /* LWS_PRE + OUT_CHUNK */
};

static struct {
    unsigned long long conns, conns_open, conns_max, auths, requests, holds, delayed, frames, bytes_out, bytes_in,
        stalls;
} S;
static volatile sig_atomic_t stop_flag;
static struct lws_context *ctx;

static void on_signal(int sig)
{
    (void)sig;
    stop_flag = 1;
    if (ctx)
        lws_cancel_service(ctx);
}

/* ---- lists ------------------------------------------------------------------------ */

static void act_push(struct pss *s, struct job *j)
{
    j->anext = NULL;
    if (s->act_tail)
        s->act_tail->anext = j;
    else
        s->act_head = j;
    s->act_tail = j;
    s->nact++;
}

static struct job *act_pop(struct pss *s)
{
    struct job *j = s->act_head;
    if (j) {
        s->act_head = j->anext;
        if (!s->act_head)
            s->act_tail = NULL;
        s->nact--;
    }
    return j;
}

/* A delayed request's time is up: its reply goes out like any other. */
static void on_delay(lws_sorted_usec_list_t *sul)
{
    struct job *j = lws_container_of(sul, struct job, sul);
    j->delaying = false;
    act_push(j->owner, j);
    lws_callback_on_writable(j->owner->wsi);
}

static void start_pending(struct pss *s)
{
    while (s->pend_head && s->nwin < WINDOW) {
        struct job *j = s->pend_head;
        s->pend_head = j->next;
        if (!s->pend_head)
            s->pend_tail = NULL;
        s->npend--;
        j->wnext = NULL;
        if (s->win_tail)
            s->win_tail->wnext = j;
        else
            s->win_head = j;
        s->win_tail = j;
        s->nwin++;
        if (j->kind == J_HOLD) {
            S.holds++;
        } else if (j->delay_ms > 0) {
            S.delayed++;
            j->owner = s;
            j->delaying = true;
            lws_sul_schedule(lws_get_context(s->wsi), 0, &j->sul, on_delay, (lws_usec_t)j->delay_ms * LWS_US_PER_MS);
        } else {
            act_push(s, j);
        }
    }
    if (s->act_head)
        lws_callback_on_writable(s->wsi);
    bool want_pause = s->npend >= READER_QUEUE;
    if (want_pause != s->rx_paused) {
        s->rx_paused = want_pause;
        if (want_pause)
            S.stalls++;
        lws_rx_flow_control(s->wsi, want_pause ? 0 : 1);
    }
}

/* A request finished: prune the ledger from its front only, like the gateway. */
static void finish_job(struct pss *s, struct job *j)
{
    j->done = true;
    while (s->win_head && s->win_head->done) {
        struct job *h = s->win_head;
        s->win_head = h->wnext;
        if (!s->win_head)
            s->win_tail = NULL;
        s->nwin--;
        free(h);
    }
    start_pending(s);
}

/* ---- reading ---------------------------------------------------------------------- */

struct top_scan {
    struct span id, type, request;
    bool has_id, has_type, has_request;
};

static void top_cb(struct span k, struct span v, void *ctxp)
{
    struct top_scan *t = ctxp;
    if (span_is(k, "id")) {
        t->id = v;
        t->has_id = true;
    } else if (span_is(k, "type")) {
        t->type = v;
        t->has_type = true;
    } else if (span_is(k, "request")) {
        t->request = v;
        t->has_request = true;
    }
}

static long long js_to_ll(struct span v)
{
    char tmp[32];
    size_t n = v.n < sizeof tmp - 1 ? v.n : sizeof tmp - 1;
    memcpy(tmp, v.p, n);
    tmp[n] = '\0';
    return strtoll(tmp, NULL, 10);
}

static void req_cb(struct span k, struct span v, void *ctxp)
{
    struct job *j = ctxp;
    if (span_is(k, "q") && v.n && v.p[0] == '"' && v.n <= LIT_MAX) {
        memcpy(j->echo, v.p, v.n);
        j->echon = v.n;
    } else if (span_is(k, "parts")) {
        j->parts_left = js_to_ll(v);
        if (j->parts_left < 0)
            j->parts_left = 0;
    } else if (span_is(k, "size")) {
        j->size = js_to_ll(v);
        if (j->size < 0)
            j->size = 0;
    } else if (span_is(k, "hold") && span_is(v, "true")) {
        j->kind = J_HOLD;
    } else if (span_is(k, "delay_ms")) {
        j->delay_ms = js_to_ll(v);
    }
}

static void on_message(struct pss *s, const char *text, size_t len)
{
    struct top_scan t;
    memset(&t, 0, sizeof t);
    if (json_members(text, len, top_cb, &t) < 0)
        return;
    if (t.has_type && t.type.n == 6 && !memcmp(t.type.p, "\"auth\"", 6)) {
        struct job *j = calloc(1, sizeof *j);
        if (!j)
            abort();
        j->kind = J_AUTH;
        S.auths++;
        act_push(s, j);
        lws_callback_on_writable(s->wsi);
        return;
    }
    if (!t.has_id || !t.has_request || t.id.n > LIT_MAX)
        return;
    struct job *j = calloc(1, sizeof *j);
    if (!j)
        abort();
    j->kind = J_REPLY;
    memcpy(j->id, t.id.p, t.id.n);
    j->idn = t.id.n;
    memcpy(j->echo, "\"ok\"", 4);
    j->echon = 4;
    json_members(t.request.p, t.request.n, req_cb, j);
    S.requests++;
    j->next = NULL;
    if (s->pend_tail)
        s->pend_tail->next = j;
    else
        s->pend_head = j;
    s->pend_tail = j;
    s->npend++;
    start_pending(s);
}

static int on_receive(struct pss *s, const void *in, size_t len)
{
    S.bytes_in += len;
    if (s->rxlen + len + 1 > s->rxcap) {
        size_t cap = s->rxcap ? s->rxcap : 65536;
        while (cap < s->rxlen + len + 1)
            cap *= 2;
        char *n = realloc(s->rx, cap);
        if (!n)
            return -1;
        s->rx = n;
        s->rxcap = cap;
    }
    memcpy(s->rx + s->rxlen, in, len);
    s->rxlen += len;
    if (!lws_is_final_fragment(s->wsi) || lws_remaining_packet_payload(s->wsi))
        return 0;
    s->rx[s->rxlen] = '\0';
    on_message(s, s->rx, s->rxlen);
    s->rxlen = 0;
    if (s->rxcap > 4 * 1024 * 1024) {
        free(s->rx);
        s->rx = NULL;
        s->rxcap = 0;
    }
    return 0;
}

/* ---- writing ---------------------------------------------------------------------- */

static size_t frame_header(unsigned char *p, uint64_t len)
{
    p[0] = 0x81; /* FIN, text */
    if (len < 126) {
        p[1] = (unsigned char)len;
        return 2;
    }
    if (len <= 0xffff) {
        p[1] = 126;
        p[2] = (unsigned char)(len >> 8);
        p[3] = (unsigned char)len;
        return 4;
    }
    p[1] = 127;
    for (int i = 0; i < 8; i++)
        p[2 + i] = (unsigned char)(len >> (56 - 8 * i));
    return 10;
}

/* Appends a whole small frame made of up to five pieces, if it fits. */
static bool put_frame(unsigned char *base, size_t *used, const char *a, size_t an, const char *b, size_t bn,
                      const char *c, size_t cn, const char *d, size_t dn, const char *e, size_t en)
{
    size_t plen = an + bn + cn + dn + en;
    if (*used + FRAME_HDR_MAX + plen > OUT_CHUNK)
        return false;
    unsigned char *p = base + *used;
    size_t h = frame_header(p, plen);
    p += h;
    memcpy(p, a, an), p += an;
    memcpy(p, b, bn), p += bn;
    memcpy(p, c, cn), p += cn;
    memcpy(p, d, dn), p += dn;
    memcpy(p, e, en);
    *used += h + plen;
    S.frames++;
    return true;
}

#define LIT(s) s, sizeof s - 1
static const char auth_ok[] = "{\"type\":\"auth-ok\",\"default_workspace\":\"default\"}";
static const char pre_id[] = "{\"id\":";
static const char part_tail[] = ",\"response\":{\"response\":\"t\",\"end_of_stream\":false},\"complete\":false}";
static const char final_mid[] = ",\"response\":{\"response\":";
static const char final_tail[] = ",\"end_of_stream\":true},\"complete\":true}";

/* Emits frames of j into the buffer; true when j has been written completely. */
static bool emit(struct job *j, unsigned char *base, size_t *used, int budget)
{
    if (j->kind == J_AUTH)
        return put_frame(base, used, LIT(auth_ok), "", 0, "", 0, "", 0, "", 0);
    while (budget-- > 0) {
        if (j->parts_left > 0) {
            if (!put_frame(base, used, LIT(pre_id), j->id, j->idn, LIT(part_tail), "", 0, "", 0))
                return false;
            j->parts_left--;
            continue;
        }
        if (j->size > 0) {
            if (!j->big_open) {
                size_t pre = sizeof pre_id - 1 + j->idn + sizeof final_mid - 1 + 1;
                uint64_t total = pre + (uint64_t)j->size + 1 + sizeof final_tail - 1;
                if (*used + FRAME_HDR_MAX + pre > OUT_CHUNK)
                    return false;
                unsigned char *p = base + *used;
                size_t h = frame_header(p, total);
                p += h;
                memcpy(p, pre_id, sizeof pre_id - 1), p += sizeof pre_id - 1;
                memcpy(p, j->id, j->idn), p += j->idn;
                memcpy(p, final_mid, sizeof final_mid - 1), p += sizeof final_mid - 1;
                *p = '"';
                *used += h + pre;
                j->big_open = true;
                j->big_left = j->size;
            }
            size_t room = OUT_CHUNK - *used;
            size_t n = (uint64_t)j->big_left < room ? (size_t)j->big_left : room;
            memset(base + *used, 'x', n);
            *used += n;
            j->big_left -= (long long)n;
            if (j->big_left > 0)
                return false;
            if (*used + 1 + sizeof final_tail - 1 > OUT_CHUNK)
                return false; /* the closing bytes go out next turn (big_left == 0 keeps state) */
            base[(*used)++] = '"';
            memcpy(base + *used, final_tail, sizeof final_tail - 1);
            *used += sizeof final_tail - 1;
            S.frames++;
            return true;
        }
        return put_frame(base, used, LIT(pre_id), j->id, j->idn, LIT(final_mid), j->echo, j->echon, LIT(final_tail));
    }
    return false;
}

static int on_writeable(struct pss *s)
{
    unsigned char *base = s->out + LWS_PRE;
    size_t used = 0;
    size_t turns = s->nact * 4 + 4; /* bounded: every job gets several turns at most */
    while (s->act_head && used + FRAME_HDR_MAX + 256 < OUT_CHUNK && turns--) {
        struct job *j = s->act_head;
        size_t before = used;
        bool fin = emit(j, base, &used, RR_BUDGET);
        if (fin) {
            act_pop(s);
            if (j->kind == J_AUTH)
                free(j);
            else
                finish_job(s, j);
            continue;
        }
        if (used == before)
            break; /* buffer full */
        if (s->nact > 1) {
            act_pop(s);
            act_push(s, j); /* round robin between concurrent streams */
        }
    }
    if (used) {
        S.bytes_out += used;
        if (lws_write(s->wsi, base, used, LWS_WRITE_RAW) < (int)used)
            return -1;
    }
    if (s->act_head)
        lws_callback_on_writable(s->wsi);
    return 0;
}

/* ---- lws glue --------------------------------------------------------------------- */

static void free_all(struct pss *s)
{
    for (struct job *j = s->pend_head, *n; j; j = n) {
        n = j->next;
        free(j);
    }
    for (struct job *j = s->act_head, *n; j; j = n) {
        n = j->anext;
        if (j->kind == J_AUTH)
            free(j); /* reply jobs are also in the ledger, freed below */
    }
    for (struct job *j = s->win_head, *n; j; j = n) {
        n = j->wnext;
        if (j->delaying)
            lws_sul_cancel(&j->sul);
        free(j);
    }
    free(s->rx);
    free(s->out);
    memset(s, 0, sizeof *s);
}

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
    struct pss *s = user;
    switch (reason) {
    case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION: {
        char uri[256];
        if (lws_hdr_copy(wsi, uri, sizeof uri, WSI_TOKEN_GET_URI) <= 0 || strcmp(uri, "/api/v1/socket"))
            return 1;
        return 0;
    }
    case LWS_CALLBACK_ESTABLISHED:
        memset(s, 0, sizeof *s);
        s->wsi = wsi;
        s->out = malloc(LWS_PRE + OUT_CHUNK);
        if (!s->out)
            return -1;
        S.conns++;
        if (++S.conns_open > S.conns_max)
            S.conns_max = S.conns_open;
        break;
    case LWS_CALLBACK_RECEIVE:
        return on_receive(s, in, len);
    case LWS_CALLBACK_SERVER_WRITEABLE:
        return on_writeable(s);
    case LWS_CALLBACK_CLOSED:
        if (s->out)
            S.conns_open--;
        free_all(s);
        break;
    default:
        return lws_callback_http_dummy(wsi, reason, user, in, len);
    }
    return 0;
}

static const struct lws_protocols protocols[] = {
    {"tg-socket", callback, sizeof(struct pss), 256 * 1024, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

static void report(void)
{
    fprintf(stderr,
            "fastmock: conns=%llu conns_open=%llu conns_max=%llu auths=%llu requests=%llu holds=%llu delayed=%llu "
            "frames=%llu bytes_in=%llu bytes_out=%llu reader_stalls=%llu\n",
            S.conns, S.conns_open, S.conns_max, S.auths, S.requests, S.holds, S.delayed, S.frames, S.bytes_in,
            S.bytes_out, S.stalls);
    fflush(stderr);
}

int main(int argc, char **argv)
{
    int port = 0;
    const char *iface = "127.0.0.1";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--port") && i + 1 < argc)
            port = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--iface") && i + 1 < argc)
            iface = argv[++i];
        else {
            fprintf(stderr, "usage: fastmock [--port N] [--iface ADDR]\n");
            return 2;
        }
    }
    lws_set_log_level(LLL_ERR, NULL);
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.port = port;
    info.iface = iface;
    info.protocols = protocols;
    info.pt_serv_buf_size = 256 * 1024;
    info.options = LWS_SERVER_OPTION_DISABLE_IPV6;
    ctx = lws_create_context(&info);
    if (!ctx) {
        fprintf(stderr, "fastmock: cannot create the lws context\n");
        return 1;
    }
    struct lws_vhost *vh = lws_get_vhost_by_name(ctx, "default");
    int bound = vh ? lws_get_vhost_listen_port(vh) : -1;
    if (bound <= 0) {
        fprintf(stderr, "fastmock: cannot find the listening port\n");
        return 1;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    printf("PORT %d\n", bound);
    fflush(stdout);
    while (!stop_flag)
        if (lws_service(ctx, 0) < 0)
            break;
    report();
    lws_context_destroy(ctx);
    return 0;
}
