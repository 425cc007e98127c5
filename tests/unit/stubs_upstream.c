/* The upstream side of the mux, for unit tests: the sink the mux reports to, and one
 * connection's writes and reads played by the test (stubs.h). */
#include "stubs.h"
#include "envelope.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct fake_upstream fake_up;

static void sendable(struct lane *l)
{
    (void)l;
    fake_up.sendable_calls++;
}

static bool ready(void)
{
    return fake_up.ready;
}

static const char *reason(void)
{
    return fake_up.reason;
}

static const char *default_workspace(void)
{
    return fake_up.workspace;
}

static size_t window_used(void)
{
    return 0;
}

const struct mux_sink fake_sink = {.sendable = sendable, .ready = ready, .reason = reason,
                                   .default_workspace = default_workspace, .window_used = window_used};

void fake_upstream_reset(void)
{
    for (size_t i = 0; i < fake_up.nsent; i++)
        free(fake_up.sent_text[i]);
    memset(&fake_up, 0, sizeof fake_up);
    fake_up.ready = true;
    snprintf(fake_up.reason, sizeof fake_up.reason, "%s", "connecting to the gateway");
}

size_t fake_send_all(struct window *w)
{
    size_t n = 0;
    struct request *req;
    while ((req = mux_next_to_send(w))) {
        if (fake_up.nsent == sizeof fake_up.sent / sizeof *fake_up.sent)
            abort();
        size_t i = fake_up.nsent++;
        fake_up.sent[i] = req;
        fake_up.sent_text[i] = strndup(buf_ptr(&req->frame) ? buf_ptr(&req->frame) : "", req->frame.len);
        snprintf(fake_up.sent_id[i], sizeof fake_up.sent_id[i], "%s", req->id);
        mux_sent(req);
        n++;
    }
    return n;
}

void fake_frame(struct window *w, const char *text)
{
    struct frame f;
    frame_parse(text, strlen(text), &f);
    mux_on_frame(&f, w);
    frame_free(&f);
}

void fake_reply(struct window *w, size_t i, const char *rest)
{
    char text[2048];
    snprintf(text, sizeof text, "{\"id\":\"%s\",%s}", fake_up.sent_id[i], rest);
    fake_frame(w, text);
}
