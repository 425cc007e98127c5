#include "log.h"
#include "buf.h"
#include "redact.h"
#include "util.h"
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static enum log_level current = LOG_INFO;
static const char *names[] = {"error", "warn", "info", "debug"};
/* sd-daemon(3) priority prefixes, used when stderr is the journal. */
static const char *prio[] = {"<3>", "<4>", "<6>", "<7>"};

void log_set_level(enum log_level level) { current = level; }
enum log_level log_get_level(void) { return current; }

int log_parse_level(const char *name, enum log_level *out)
{
    for (int i = 0; i < 4; i++)
        if (!strcmp(name, names[i])) {
            *out = (enum log_level)i;
            return 0;
        }
    if (!strcmp(name, "warning")) {
        *out = LOG_WARN;
        return 0;
    }
    return -1;
}

bool log_limit_ok(struct log_limit *l, double interval, unsigned long *held_back)
{
    double now = now_mono();
    if (now < l->next) {
        l->held++;
        return false;
    }
    *held_back = l->held;
    l->held = 0;
    l->next = now + interval;
    return true;
}

void log_msg(enum log_level level, const char *fmt, ...)
{
    if (level > current)
        return;
    struct buf b;
    buf_init(&b, 0);
    va_list ap;
    va_start(ap, fmt);
    char tmp[1024];
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n < sizeof tmp) {
        buf_append(&b, tmp, (size_t)n);
    } else {
        char *big = malloc((size_t)n + 1);
        if (!big)
            return;
        va_start(ap, fmt);
        vsnprintf(big, (size_t)n + 1, fmt, ap);
        va_end(ap);
        buf_append(&b, big, (size_t)n);
        free(big);
    }
    redact_buf(&b);
    /* One write(2) per line so concurrent writers never interleave mid-line. */
    struct buf line;
    buf_init(&line, 0);
    if (getenv("JOURNAL_STREAM")) {
        buf_printf(&line, "%s%s: %s\n", prio[level], names[level], buf_ptr(&b));
    } else {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        struct tm tm;
        gmtime_r(&ts.tv_sec, &tm);
        char when[32];
        strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
        buf_printf(&line, "%s.%03ldZ tgbridge[%d] %s: %s\n", when, ts.tv_nsec / 1000000L,
                   (int)getpid(), names[level], buf_ptr(&b));
    }
    ssize_t w = write(STDERR_FILENO, buf_ptr(&line), line.len);
    (void)w;
    buf_free(&line);
    buf_free(&b);
}
