/* A local client's envelope (a line of the line protocol, a local WebSocket message):
 * client_msg_parse, then for a request envelope_rewrite putting our id (and a default
 * workspace) into the client's own bytes -- what line_proto.c sends upstream.
 *
 * Properties:
 *  - every outcome leaves NUL-terminated strings; a refusal says why; spans (id, a
 *    control message's token) point into the text;
 *  - CMSG_BLANK exactly for whitespace-only text;
 *  - for CMSG_REQUEST: info.service is the envelope's service (truncated to 95 bytes),
 *    has_flow tells a non-empty flow string; the rewritten envelope parses (cJSON),
 *    has "id":"tgb-x-1", the input's workspace or else "ws", every other member of the
 *    input unchanged, nothing else, and no envelope key twice (the gateway keeps the
 *    last of repeated keys; we read the first); when the input was valid JSON to the
 *    gateway (json_valid), so is the output. */
#include "buf.h"
#include "envelope.h"
#include "fuzz_common.h"
#include "json.h"

static bool terminated(const char *s, size_t cap)
{
    return memchr(s, '\0', cap) != NULL;
}

static bool span_inside(struct span s, const char *text, size_t len)
{
    return s.p >= text && s.p <= text + len && s.n <= (size_t)(text + len - s.p);
}

static void check_request(const char *text, size_t len, const struct client_msg_info *info)
{
    cJSON *in = fz_cjson_whole(text, len);
    FUZZ_CHECK(cJSON_IsObject(in));
    const char *service = fz_str(in, "service");
    FUZZ_CHECK(service && service[0]);
    FUZZ_CHECK(strlen(info->service) == (strlen(service) < 95 ? strlen(service) : 95));
    FUZZ_CHECK(!strncmp(info->service, service, 95));
    const char *flow = fz_str(in, "flow");
    FUZZ_CHECK(info->has_flow == (flow && flow[0]));
    FUZZ_CHECK(cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(in, "request")));

    struct buf out;
    buf_init(&out, 0);
    envelope_rewrite(&out, text, len, info->id_present ? &info->id_span : NULL, "tgb-x-1", "ws");
    char *o = fz_copy((const uint8_t *)buf_ptr(&out), out.len, true);
    if (json_valid(text, len))
        FUZZ_CHECK(json_valid(o, out.len));
    {
        /* The same nesting as the input, which cJSON read: no depth limit to mind. */
        cJSON *got = fz_cjson_whole(o, out.len);
        FUZZ_CHECK(cJSON_IsObject(got));
        static const char *const keys[] = {"id", "service", "flow", "request", "workspace", "type"};
        for (size_t k = 0; k < sizeof keys / sizeof *keys; k++)
            FUZZ_CHECK(fz_name_count(got, keys[k]) <= 1);
        const char *id = fz_str(got, "id");
        FUZZ_CHECK(id && !strcmp(id, "tgb-x-1"));
        const cJSON *in_ws = cJSON_GetObjectItemCaseSensitive(in, "workspace");
        const cJSON *out_ws = cJSON_GetObjectItemCaseSensitive(got, "workspace");
        if (in_ws) {
            FUZZ_CHECK(fz_equal(in_ws, out_ws));
        } else {
            FUZZ_CHECK(cJSON_IsString(out_ws) && !strcmp(out_ws->valuestring, "ws"));
        }
        /* Every member but id, in order, unchanged; then only what was added. */
        size_t want = fz_child_count(in) + (cJSON_GetObjectItemCaseSensitive(in, "id") ? 0 : 1) + (in_ws ? 0 : 1);
        FUZZ_CHECK(fz_child_count(got) == want);
        const cJSON *g = got->child;
        for (const cJSON *m = in->child; m; m = m->next) {
            if (!strcmp(m->string, "id"))
                continue;
            while (g && (!strcmp(g->string, "id") || (!in_ws && !strcmp(g->string, "workspace"))))
                g = g->next;
            FUZZ_CHECK(g != NULL);
            FUZZ_CHECK(!strcmp(g->string, m->string));
            FUZZ_CHECK(fz_equal(g, m));
            g = g->next;
        }
        cJSON_Delete(got);
    }
    free(o);
    buf_free(&out);
    cJSON_Delete(in);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = fz_copy(data, size, false);
    struct client_msg_info info;
    memset(&info, 0x5a, sizeof info);
    client_msg_parse(text, size, "line", &info);
    FUZZ_CHECK(terminated(info.service, sizeof info.service));
    FUZZ_CHECK(terminated(info.type, sizeof info.type));
    FUZZ_CHECK(terminated(info.error, sizeof info.error));
    if (info.id_present)
        FUZZ_CHECK(span_inside(info.id_span, text, size) && info.id_span.n > 0);
    if (info.id.p)
        FUZZ_CHECK(info.id_present && info.id.p == info.id_span.p && info.id.n == info.id_span.n);
    if (info.token.p)
        FUZZ_CHECK(info.kind == CMSG_CONTROL && span_inside(info.token, text, size) && info.token.n > 0);
    size_t i = 0;
    while (i < size && (text[i] == ' ' || text[i] == '\t' || text[i] == '\r' || text[i] == '\n'))
        i++;
    FUZZ_CHECK((info.kind == CMSG_BLANK) == (i == size));
    switch (info.kind) {
    case CMSG_BLANK:
        break;
    case CMSG_BAD:
        FUZZ_CHECK(info.error[0] != '\0');
        break;
    case CMSG_CONTROL: {
        cJSON *in = fz_cjson_whole(text, size);
        FUZZ_CHECK(cJSON_IsObject(in) && cJSON_GetObjectItemCaseSensitive(in, "type"));
        const char *type = fz_str(in, "type");
        if (type) {
            size_t n = strlen(type) < sizeof info.type - 1 ? strlen(type) : sizeof info.type - 1;
            FUZZ_CHECK(strlen(info.type) == n && !strncmp(info.type, type, n));
        }
        else
            FUZZ_CHECK(info.type[0] == '\0');
        cJSON_Delete(in);
        break;
    }
    case CMSG_REQUEST:
        check_request(text, size, &info);
        break;
    default:
        FUZZ_CHECK(!"unknown client_msg kind");
    }
    free(text);
    return 0;
}
