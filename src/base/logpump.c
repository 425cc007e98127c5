#include "logpump.h"
#include "log.h"
#include "loop.h"
#include "status.h"
#include "timer.h"
#include <stdbool.h>
#include <sys/epoll.h>

static struct loop_epoll *room;  /* the output descriptor, while something is pending */
static int watched = -1;         /* the descriptor in it, or -1 */
static struct timer retry;       /* when it cannot be watched (none that can block) */

static void pump(void *arg);

static void retry_due(struct timer *t)
{
    (void)t;
    pump(NULL);
}

/* Writes what it can; watches for room while something is left, and only then (a
 * level-triggered EPOLLOUT on a descriptor with room would wake every turn). */
static void pump(void *arg)
{
    (void)arg;
    log_flush();
    bool want = log_pending() > 0;
    if (want == (watched >= 0))
        return;
    if (!want) {
        loop_epoll_del(room, watched);
        watched = -1;
        return;
    }
    int fd = log_out_fd();
    if (room && !loop_epoll_add(room, fd, EPOLLOUT, NULL))
        watched = fd;
    else
        timer_after(&retry, 1.0, retry_due); /* a regular file: epoll refuses it */
}

static void has_room(void *ptr, uint32_t events)
{
    (void)ptr;
    (void)events;
    pump(NULL);
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
    log_on_pending(loop_wake);
    return loop_before_poll(pump, NULL);
}
