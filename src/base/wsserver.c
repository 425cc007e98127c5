#include "wsserver.h"
#include "log.h"
#include <string.h>

static struct {
    struct lws_vhost *vh;
    lws_retry_bo_t idle;
} S;

static int dispatch(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
    struct wsserver_conn *conn = lws_get_opaque_user_data(wsi);
    return conn ? conn->callback(wsi, reason, user, in, len) : 0;
}

static const struct lws_protocols protocols[2] = {
    {"tgb-local", dispatch, 0, 64 * 1024, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

static uint16_t secs(double s)
{
    return (uint16_t)(s < 1 ? 1 : s > 65000 ? 65000 : s + 0.999);
}

int wsserver_init(struct lws_context *ctx, const struct config *cfg)
{
    /* The official clients answer pings at once. */
    S.idle.secs_since_valid_ping = secs(cfg->ping_interval);
    S.idle.secs_since_valid_hangup = (uint16_t)(S.idle.secs_since_valid_ping + secs(cfg->ping_timeout));
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.vhost_name = "tgb-local";
    info.port = CONTEXT_PORT_NO_LISTEN_SERVER;
    info.protocols = protocols;
    info.retry_and_idle_policy = &S.idle;
    S.vh = lws_create_vhost(ctx, &info);
    if (!S.vh) {
        log_error("cannot create the local WebSocket server");
        return -1;
    }
    return 0;
}

/* lws's own write type for a close frame (LWS_WRITE_CLOSE, lib/roles/ws/private-lib-
 * roles-ws.h in 4.1.6), left out of its public enum. */
#define WRITE_CLOSE ((enum lws_write_protocol)4)

int wsserver_send_close(struct lws *wsi, int code, const char *reason, size_t n, double timeout)
{
    unsigned char frame[LWS_PRE + 125];
    if (n > 123)
        n = 123;
    frame[LWS_PRE] = (unsigned char)(code >> 8);
    frame[LWS_PRE + 1] = (unsigned char)code;
    if (n)
        memcpy(frame + LWS_PRE + 2, reason, n);
    if (lws_write(wsi, frame + LWS_PRE, n + 2, WRITE_CLOSE) < (int)(n + 2))
        return -1;
    lws_set_timeout(wsi, PENDING_TIMEOUT_USER_OK, timeout < 1 ? 1 : timeout > 3600 ? 3600 : (int)(timeout + 0.999));
    return 0;
}

struct lws *wsserver_adopt(int fd, struct wsserver_conn *conn)
{
    lws_adopt_desc_t d;
    memset(&d, 0, sizeof d);
    d.vh = S.vh;
    d.type = LWS_ADOPT_SOCKET | LWS_ADOPT_HTTP; /* lws reads the upgrade request itself */
    d.fd.sockfd = fd;
    d.vh_prot_name = protocols[0].name;
    d.opaque = conn;
    return lws_adopt_descriptor_vhost_via_info(&d);
}
