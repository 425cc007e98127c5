#include "logpump.h"
#include "log.h"
#include "loop.h"
#include "status.h"
#include "timer.h"
#include <stdbool.h>
#include <sys/epoll.h>

static struct loop_epoll *room;  /* the output descriptor, while the reader has no room */
static int watched = -1;         /* the descriptor in it, or -1 */
static struct timer retry;       /* when the descriptor cannot be watched */

static void retry_now(struct timer *t);

/* After a write: a reader that left something unwritten is watched for room, and
 * only then (EPOLLOUT on a descriptor with room would wake every turn). */
static void settle(void)
{
    if (!loop_ctx())
        return; /* the loop is gone (after loop_destroy): exit's flush has the rest */
    bool blocked = log_pending() > 0;
    if (blocked == (watched >= 0))
        return;
    if (!blocked) {
        loop_epoll_del(room, watched);
        watched = -1;
        return;
    }
    int fd = log_out_fd();
    if (room && !loop_epoll_add(room, fd, EPOLLOUT, NULL))
        watched = fd;
    else
        timer_after(&retry, 1.0, retry_now); /* cannot be watched: try again in a second */
}

static void write_now(void)
{
    log_flush();
    settle();
}

static void retry_now(struct timer *t)
{
    (void)t;
    write_now();
}

/* The turn's lines, in one write; while the reader has no room, the watch writes. */
static void before_poll(void *arg)
{
    (void)arg;
    if (log_pending() && watched < 0)
        write_now();
}

static void has_room(void *ptr, uint32_t events)
{
    (void)ptr;
    (void)events;
    write_now();
}

/* The queue stopped being empty.  A line logged among the turn's events goes out
 * with the hooks that follow them; one logged by a timer (a call that timed out), which
 * lws runs after the hooks, must not wait for the next event: the loop comes back to
 * the hooks before it waits (loop_wake). */
static void pending(void)
{
    loop_wake();
}

static void metrics(struct buf *out)
{
    status_metric_u(out, "tgbridge_log_lines_dropped_total", "counter",
                    "Log lines dropped because standard error's reader left no room for them "
                    "(the log keeps at most 64 KiB waiting).",
                    log_dropped());
}

static const struct status_source source = {"log", NULL, metrics, NULL};

int logpump_init(void)
{
    status_register(&source);
    room = loop_epoll_new(has_room);
    log_on_pending(pending);
    return loop_before_poll(before_poll, NULL);
}
