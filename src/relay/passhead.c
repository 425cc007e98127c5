#include "passhead.h"
#include "redact.h"
#include <libwebsockets.h>
#include <stdlib.h>
#include <string.h>

/* The response headers relayed to the caller; the rest (hop-by-hop ones, Server,
 * Date, cookies) stay behind.  lws 4.1.6 reads headers by name only. */
static const struct {
    const char *name;
    enum lws_token_indexes token;
} relayed[] = {
    {"content-type", WSI_TOKEN_HTTP_CONTENT_TYPE},
    {"content-disposition", WSI_TOKEN_HTTP_CONTENT_DISPOSITION},
    {"content-encoding", WSI_TOKEN_HTTP_CONTENT_ENCODING},
    {"content-language", WSI_TOKEN_HTTP_CONTENT_LANGUAGE},
    {"content-range", WSI_TOKEN_HTTP_CONTENT_RANGE},
    {"accept-ranges", WSI_TOKEN_HTTP_ACCEPT_RANGES},
    {"cache-control", WSI_TOKEN_HTTP_CACHE_CONTROL},
    {"etag", WSI_TOKEN_HTTP_ETAG},
    {"last-modified", WSI_TOKEN_HTTP_LAST_MODIFIED},
    {"expires", WSI_TOKEN_HTTP_EXPIRES},
    {"vary", WSI_TOKEN_HTTP_VARY},
    {"location", WSI_TOKEN_HTTP_LOCATION},
    {"retry-after", WSI_TOKEN_HTTP_RETRY_AFTER},
    {"www-authenticate", WSI_TOKEN_HTTP_WWW_AUTHENTICATE},
    {"allow", WSI_TOKEN_HTTP_ALLOW},
};
/* One slot left for pass_head_own_body's Content-Type. */
_Static_assert(sizeof relayed / sizeof *relayed < PASS_HEAD_MAX, "room for the relayed headers");

void pass_head_read(struct pass_head *h, struct lws *wsi)
{
    h->status = (int)lws_http_client_http_response(wsi);
    for (size_t i = 0; i < sizeof relayed / sizeof *relayed; i++) {
        int n = lws_hdr_total_length(wsi, relayed[i].token);
        if (n <= 0)
            continue;
        char *v = malloc((size_t)n + 1);
        if (!v)
            abort();
        if (lws_hdr_copy(wsi, v, n + 1, relayed[i].token) < 0) {
            free(v);
            continue;
        }
        h->hdr[h->n].name = relayed[i].name;
        h->hdr[h->n++].value = redact_dup(v, strlen(v));
        free(v);
    }
    char te[16];
    /* lws decodes a body as chunked on exactly this value (client-http.c). */
    h->chunked = lws_hdr_copy(wsi, te, sizeof te, WSI_TOKEN_HTTP_TRANSFER_ENCODING) > 0 && !strcmp(te, "chunked");
    h->body_length = -1;
    char cl[32];
    if (lws_hdr_copy(wsi, cl, sizeof cl, WSI_TOKEN_HTTP_CONTENT_LENGTH) > 0) {
        char *e;
        long long n = strtoll(cl, &e, 10);
        if (!*e && n >= 0)
            h->body_length = n;
    }
}

void pass_head_free(struct pass_head *h)
{
    for (size_t i = 0; i < h->n; i++)
        free(h->hdr[i].value);
    h->n = 0;
}

bool pass_head_encoded(const struct pass_head *h)
{
    for (size_t i = 0; i < h->n; i++)
        if (!strcmp(h->hdr[i].name, "content-encoding") && strcmp(h->hdr[i].value, "identity"))
            return true;
    return false;
}

void pass_head_own_body(struct pass_head *h, size_t len)
{
    size_t kept = 0;
    for (size_t i = 0; i < h->n; i++) {
        if (!strncmp(h->hdr[i].name, "content-", 8))
            free(h->hdr[i].value);
        else
            h->hdr[kept++] = h->hdr[i];
    }
    h->n = kept;
    h->hdr[h->n].name = "content-type";
    h->hdr[h->n].value = strdup("application/json");
    if (!h->hdr[h->n++].value)
        abort();
    h->body_length = (long long)len;
}
