#include "logpump.h"
#include "log.h"
#include "loop.h"
#include "status.h"
#include "timer.h"
#include <stdbool.h>
#include <sys/epoll.h>

/* A loop turn ends with a write when this much waits (about sixty access lines);
 * less waits for the timer, at most LOGPUMP_DELAY: a loop woken by one call at a time
 * would otherwise write one line a write (BENCHMARKS.md, "A buffered access log"). */
#define LOGPUMP_BATCH (16 * 1024)
#define LOGPUMP_DELAY 0.2

static struct loop_epoll *room;  /* the output descriptor, while the reader has no room */
static int watched = -1;         /* the descriptor in it, or -1 */
static struct timer due;

static void due_now(struct timer *t);

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
        timer_after(&due, 1.0, due_now); /* cannot be watched: try again in a second */
}

static void write_now(void)
{
    log_flush();
    settle();
}

static void due_now(struct timer *t)
{
    (void)t;
    write_now();
}

static void before_poll(void *arg)
{
    (void)arg;
    if (log_pending() >= LOGPUMP_BATCH)
        write_now();
}

static void has_room(void *ptr, uint32_t events)
{
    (void)ptr;
    (void)events;
    write_now();
}

/* The queue stopped being empty: its first line goes out LOGPUMP_DELAY from now at
 * the latest. */
static void pending(void)
{
    if (loop_ctx())
        timer_after(&due, LOGPUMP_DELAY, due_now);
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
