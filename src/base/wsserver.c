#include "wsserver.h"
#include <string.h>

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
