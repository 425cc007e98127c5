#include "callrec.h"
#include "log.h"
#include "status.h"
#include "util.h"
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

/* Services that get a label of their own; any other counts as "other", so that a
 * caller cannot grow /metrics by inventing service names. */
static const char *const known[] = {
    "text-completion", "prompt", "agent", "graph-rag", "document-rag", "embeddings", "triples", "sparql",
    "graph-embeddings", "document-embeddings", "row-embeddings", "rows", "objects", "nlp-query",
    "structured-query", "structured-diag", "mcp-tool", "reranker", "image-to-text", "text-load",
    "document-load", "config", "flow", "librarian", "knowledge", "collection-management", "iam", "socket",
    "auth", "i18n", "metrics", "document-stream", "import-core", "export-core", "import", "export", "other",
};
#define NSERVICES (sizeof known / sizeof *known)
#define OTHER (NSERVICES - 1)

/* 1 ms to 10 min (Prometheus' convention: upper bounds, seconds, +Inf implied). */
static const double bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60, 600};
#define NBOUNDS (sizeof bounds / sizeof *bounds)

struct histogram {
    unsigned long long bucket[NBOUNDS]; /* not cumulative; summed when rendered */
    unsigned long long count;
    double sum;
};

static const char *const outcome_names[CALL_OUTCOMES] = {"ok", "gateway-error", "failed", "aborted", "truncated"};
static const char *const frontends[] = {"rest", "line", "ws", "bulk"};
#define NFRONTENDS (sizeof frontends / sizeof *frontends)

static struct {
    const struct config *cfg;
    struct histogram duration[NSERVICES][CALL_OUTCOMES];
    struct histogram first_part[NSERVICES][CALL_OUTCOMES];
    unsigned long long bytes[NFRONTENDS][2];
} C;

static const struct status_source source = {"calls", NULL, callrec_metrics, NULL};

void callrec_init(const struct config *cfg)
{
    C.cfg = cfg;
    status_register(&source);
}

const char *callrec_outcome_name(enum call_outcome o)
{
    return o < CALL_OUTCOMES ? outcome_names[o] : "?";
}

static size_t service_index(const char *s)
{
    for (size_t i = 0; s && i < OTHER; i++)
        if (!strcmp(known[i], s))
            return i;
    if (s && !strncmp(s, "thru/", 5))
        return OTHER;
    return OTHER;
}

static void observe(struct histogram *h, double v)
{
    size_t i = 0;
    while (i < NBOUNDS && v > bounds[i])
        i++;
    if (i < NBOUNDS)
        h->bucket[i]++;
    h->count++;
    h->sum += v;
}

void callrec_finish(const struct call_record *r)
{
    double now = now_mono();
    double took = now - r->started;
    size_t s = service_index(r->service);
    enum call_outcome o = r->outcome < CALL_OUTCOMES ? r->outcome : CALL_FAILED;
    observe(&C.duration[s][o], took);
    if (r->first_part > 0)
        observe(&C.first_part[s][o], r->first_part - r->started);
    for (size_t f = 0; f < NFRONTENDS; f++)
        if (!strcmp(frontends[f], r->frontend)) {
            C.bytes[f][0] += r->bytes_in;
            C.bytes[f][1] += r->bytes_out;
        }
    if (!C.cfg->access_log)
        return;
    /* Never a body, never a credential: what, how it ended, how big, how long. */
    struct log_kv kv[] = {
        {"frontend", KV_STR, r->frontend, 0, 0},
        {"caller", KV_STR, r->caller, 0, 0},
        {"method", KV_STR, r->method, 0, 0},
        {"route", KV_STR, r->route, 0, 0},
        {"service", KV_STR, r->service, 0, 0},
        {"flow", KV_STR, r->flow, 0, 0},
        {"status", r->status ? KV_INT : KV_STR, NULL, r->status, 0},
        {"outcome", KV_STR, outcome_names[o], 0, 0},
        {"error", KV_STR, r->error, 0, 0},
        {"bytes_in", KV_INT, NULL, (long long)r->bytes_in, 0},
        {"bytes_out", KV_INT, NULL, (long long)r->bytes_out, 0},
        {"duration_s", KV_NUM, NULL, 0, took},
        {"first_part_s", r->first_part > 0 ? KV_NUM : KV_STR, NULL, 0, r->first_part - r->started},
        {"upstream_id", KV_STR, r->upstream_id, 0, 0},
    };
    log_access(LOG_INFO, "access", kv, sizeof kv / sizeof *kv);
}

static void render(struct buf *out, const char *name, const char *help, struct histogram (*h)[CALL_OUTCOMES])
{
    buf_printf(out, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    for (size_t s = 0; s < NSERVICES; s++)
        for (int o = 0; o < CALL_OUTCOMES; o++) {
            const struct histogram *x = &h[s][o];
            if (!x->count)
                continue; /* series appear with their first observation */
            unsigned long long cum = 0;
            for (size_t i = 0; i < NBOUNDS; i++) {
                cum += x->bucket[i];
                buf_printf(out, "%s_bucket{service=\"%s\",outcome=\"%s\",le=\"%g\"} %llu\n", name, known[s],
                           outcome_names[o], bounds[i], cum);
            }
            buf_printf(out, "%s_bucket{service=\"%s\",outcome=\"%s\",le=\"+Inf\"} %llu\n", name, known[s],
                       outcome_names[o], x->count);
            buf_printf(out, "%s_sum{service=\"%s\",outcome=\"%s\"} %.6f\n", name, known[s], outcome_names[o], x->sum);
            buf_printf(out, "%s_count{service=\"%s\",outcome=\"%s\"} %llu\n", name, known[s], outcome_names[o],
                       x->count);
        }
}

void callrec_metrics(struct buf *out)
{
    render(out, "tgbridge_call_duration_seconds",
           "Calls from arrival to their last byte, by service (or pass-through route) and outcome.", C.duration);
    render(out, "tgbridge_call_first_part_seconds",
           "Streamed calls from arrival to their first part, by service and outcome.", C.first_part);
    buf_puts(out, "# HELP tgbridge_call_bytes_total Request and reply bytes of finished calls, by front end "
                  "(in: from callers, out: to them).\n# TYPE tgbridge_call_bytes_total counter\n");
    for (size_t f = 0; f < NFRONTENDS; f++)
        for (int d = 0; d < 2; d++)
            buf_printf(out, "tgbridge_call_bytes_total{frontend=\"%s\",direction=\"%s\"} %llu\n", frontends[f],
                       d ? "out" : "in", C.bytes[f][d]);
}
