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

static bool json_lines;

void log_set_json(bool json) { json_lines = json; }

/* The line around an already formatted (and redacted) message b: the journal's
 * priority prefix, or a timestamp; or a JSON object.  One write(2) per line so that
 * concurrent writers never interleave mid-line. */
static void emit(enum log_level level, const struct buf *b, const struct log_kv *kv, size_t n)
{
    struct buf line;
    buf_init(&line, 0);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    /* At tens of thousands of access lines a second, the second's text and our pid
     * are worth keeping (BENCHMARKS.md, the access-log scenario). */
    static time_t last_sec = -1;
    static char when[40];
    static int pid;
    if (ts.tv_sec != last_sec) {
        struct tm tm;
        gmtime_r(&ts.tv_sec, &tm);
        strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
        last_sec = ts.tv_sec;
    }
    if (!pid)
        pid = (int)getpid();
    if (json_lines) {
        buf_printf(&line, "{\"ts\":\"%s.%03ldZ\",\"level\":\"%s\",\"pid\":%d,\"msg\":", when,
                   ts.tv_nsec / 1000000L, names[level], pid);
        buf_json_string(&line, buf_ptr(b), b->len);
        for (size_t i = 0; i < n; i++) {
            if (kv[i].kind == KV_STR && !kv[i].s)
                continue;
            buf_printf(&line, ",\"%s\":", kv[i].key);
            if (kv[i].kind == KV_STR)
                buf_json_string(&line, kv[i].s, strlen(kv[i].s));
            else if (kv[i].kind == KV_INT)
                buf_printf(&line, "%lld", kv[i].i);
            else
                buf_printf(&line, "%.6f", kv[i].d);
        }
        buf_puts(&line, "}");
        redact_buf(&line);
        buf_puts(&line, "\n");
    } else {
        static int journal = -1; /* set by systemd for the process's life */
        if (journal < 0)
            journal = getenv("JOURNAL_STREAM") != NULL;
        if (journal)
            buf_printf(&line, "%s%s: ", prio[level], names[level]);
        else
            buf_printf(&line, "%s.%03ldZ tgbridge[%d] %s: ", when, ts.tv_nsec / 1000000L, pid, names[level]);
        buf_append(&line, buf_ptr(b), b->len);
        for (size_t i = 0; i < n; i++) {
            if (kv[i].kind == KV_STR && !kv[i].s)
                continue;
            buf_printf(&line, " %s=", kv[i].key);
            if (kv[i].kind == KV_STR) {
                if (!*kv[i].s || strpbrk(kv[i].s, " \"=\n"))
                    buf_json_string(&line, kv[i].s, strlen(kv[i].s));
                else
                    buf_puts(&line, kv[i].s);
            } else if (kv[i].kind == KV_INT) {
                buf_printf(&line, "%lld", kv[i].i);
            } else {
                buf_printf(&line, "%.6f", kv[i].d);
            }
        }
        redact_buf(&line);
        buf_puts(&line, "\n");
    }
    ssize_t w = write(STDERR_FILENO, buf_ptr(&line), line.len);
    (void)w;
    buf_free(&line);
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
    emit(level, &b, NULL, 0); /* redacts the whole line */
    buf_free(&b);
}

void log_record(enum log_level level, const char *msg, const struct log_kv *kv, size_t n)
{
    if (level > current)
        return;
    struct buf b;
    buf_init(&b, 0);
    buf_puts(&b, msg);
    emit(level, &b, kv, n); /* redacts the whole line */
    buf_free(&b);
}
