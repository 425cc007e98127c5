#include "log.h"
#include "buf.h"
#include "logqueue.h"
#include "redact.h"
#include "util.h"
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
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

/* ---- Standard error, never waited for ----
 *
 * Every line goes through one bounded queue (logqueue.h), so lines keep their order
 * whoever writes them, and a reader that does not keep up costs lines (counted), never
 * the loop's time.  stderr's own open file description may be shared (a terminal, the
 * shell's pipe), so it is never made O_NONBLOCK; instead, per kind of descriptor:
 * a socket (the journal's stream) takes send(MSG_DONTWAIT); a pipe is opened again
 * through /proc/self/fd/2, which gives a description of our own that may be
 * non-blocking (failing that, a write of at most PIPE_BUF bytes after poll() said
 * there is room cannot block); anything else (a file, /dev/null, a terminal) is
 * written as it is. */
enum out_kind { OUT_UNKNOWN, OUT_PLAIN, OUT_SOCKET, OUT_PIPE, OUT_PIPE_POLL };
static enum out_kind out_kind;
static int out_fd = STDERR_FILENO;
static struct logq queue;
static void (*pending_hook)(void);

static void out_open(void)
{
    struct stat st;
    out_kind = OUT_PLAIN;
    if (fstat(STDERR_FILENO, &st))
        return;
    if (S_ISSOCK(st.st_mode)) {
        out_kind = OUT_SOCKET;
    } else if (S_ISFIFO(st.st_mode)) {
        int fd = open("/proc/self/fd/2", O_WRONLY | O_NONBLOCK | O_CLOEXEC);
        out_kind = fd >= 0 ? OUT_PIPE : OUT_PIPE_POLL;
        if (fd >= 0)
            out_fd = fd;
    }
}

/* logq_write_fn: the bytes taken, 0 for "full", -1 for a reader that is gone. */
static ssize_t out_write(void *ctx, const char *p, size_t n)
{
    (void)ctx;
    for (;;) {
        ssize_t w;
        if (out_kind == OUT_SOCKET) {
            w = send(out_fd, p, n, MSG_DONTWAIT | MSG_NOSIGNAL);
        } else if (out_kind == OUT_PIPE_POLL) {
            struct pollfd pfd = {.fd = out_fd, .events = POLLOUT};
            if (poll(&pfd, 1, 0) <= 0)
                return 0; /* no room (or no answer): later */
            w = write(out_fd, p, n < PIPE_BUF ? n : PIPE_BUF);
        } else {
            w = write(out_fd, p, n);
        }
        if (w >= 0)
            return w;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        if (out_kind == OUT_SOCKET && errno == ENOTSOCK) {
            out_kind = OUT_PLAIN;
            continue;
        }
        return -1;
    }
}

/* Lines are redacted in the queue, just before they are written: a batch of access
 * lines is one pass per secret form, not one per line (BENCHMARKS.md, "A buffered
 * access log").  Bytes before `clean` were redacted already.  A form could only
 * match across two lines if the secret held a newline, and then it is redacted too. */
static size_t clean;

void log_flush(void)
{
    if (!queue.b.len)
        return;
    if (out_kind == OUT_UNKNOWN)
        out_open();
    redact_buf_from(&queue.b, clean);
    logq_drain(&queue, out_write, NULL);
    clean = queue.b.len;
}

/* At exit, whatever way main() ends: what is queued gets up to a second more. */
static void flush_at_exit(void)
{
    log_flush_wait(1.0);
}

void log_flush_wait(double seconds)
{
    double until = now_mono() + seconds;
    log_flush();
    while (queue.b.len) {
        int ms = (int)((until - now_mono()) * 1000);
        struct pollfd pfd = {.fd = out_fd, .events = POLLOUT};
        if (ms <= 0 || poll(&pfd, 1, ms) <= 0)
            return;
        log_flush();
    }
}

/* A line goes into the queue; one that is not an access line takes the queue out with
 * it at once.  An access line waits for the end of the loop turn (logpump.c), or for
 * LOGQ_BOUND to be reached. */
static void out_line(const char *p, size_t n, bool deferred)
{
    static bool at_exit;
    if (!at_exit)
        at_exit = !atexit(flush_at_exit);
    bool was_empty = !queue.b.len;
    if (deferred && queue.b.len + n > LOGQ_BOUND)
        log_flush();
    logq_add(&queue, p, n);
    if (!deferred)
        log_flush();
    if (was_empty && queue.b.len && pending_hook)
        pending_hook();
}

size_t log_pending(void) { return queue.b.len; }
unsigned long long log_dropped(void) { return queue.dropped; }
void log_on_pending(void (*fn)(void)) { pending_hook = fn; }

int log_out_fd(void)
{
    if (out_kind == OUT_UNKNOWN)
        out_open();
    return out_fd;
}

/* ---- Formatting, without printf for what an access line holds ----
 *
 * An access line is about thirty appends: each checks for room inline, and a string
 * is scanned once for its length and for what would need quoting or escaping (a
 * call, a reserve and a NUL per append, or strlen then strpbrk, were most of a line's
 * cost). */

static inline void put(struct buf *b, const char *p, size_t n)
{
    if (b->head + b->len + n >= b->cap)
        buf_reserve(b, n);
    memcpy(b->data + b->head + b->len, p, n);
    b->len += n;
}

static void put_uint(struct buf *b, unsigned long long v)
{
    char t[24], *e = t + sizeof t, *p = e;
    do
        *--p = (char)('0' + v % 10);
    while (v /= 10);
    put(b, p, (size_t)(e - p));
}

static void put_int(struct buf *b, long long v)
{
    if (v < 0) {
        put(b, "-", 1);
        put_uint(b, 0 - (unsigned long long)v);
    } else {
        put_uint(b, (unsigned long long)v);
    }
}

/* "%.6f" for the values a log holds (durations); printf for the rest. */
static void put_num(struct buf *b, double d)
{
    if (!(fabs(d) < 1e12)) {
        buf_printf(b, "%.6f", d);
        return;
    }
    unsigned long long v = (unsigned long long)llround(fabs(d) * 1e6);
    if (d < 0 && v)
        put(b, "-", 1);
    put_uint(b, v / 1000000);
    char t[7] = {'.'};
    unsigned long long frac = v % 1000000;
    for (int i = 6; i >= 1; i--, frac /= 10)
        t[i] = (char)('0' + frac % 10);
    put(b, t, sizeof t);
}

static void put_str(struct buf *b, const char *s)
{
    put(b, s, strlen(s));
}

/* What a byte asks of a value: 1 quoting in a text line (a space, a quote, an equals
 * sign, a newline), 2 escaping in JSON (a control character, a quote, a backslash). */
static unsigned char special[256];

static void special_init(void)
{
    for (int c = 0; c < 0x20; c++)
        special[c] = 2;
    special[' '] = special['='] = 1;
    special['"'] = 3;
    special['\n'] = 3;
    special['\\'] = 2;
}

/* The length of s; *needs: the special bits of its bytes ORed (1 too if empty). */
static size_t scan(const char *s, unsigned *needs)
{
    unsigned acc = 0;
    const unsigned char *p = (const unsigned char *)s;
    while (*p)
        acc |= special[*p++];
    *needs = p == (const unsigned char *)s ? 1 : acc;
    return (size_t)(p - (const unsigned char *)s);
}

static void put_json_str(struct buf *b, const char *s, size_t n, unsigned needs)
{
    if (needs & 2) {
        buf_json_string(b, s, n);
        return;
    }
    put(b, "\"", 1);
    put(b, s, n);
    put(b, "\"", 1);
}

/* The line's start: the journal's priority prefix, or a timestamp; or the JSON
 * object's fixed members.  At tens of thousands of access lines a second, the
 * second's text, our pid and the journal flag are worth keeping (BENCHMARKS.md, the
 * access-log scenario). */
static void put_head(struct buf *line, enum log_level level)
{
    static time_t last_sec = -1;
    static char when[40];
    static int pid;
    static int journal = -1; /* set by systemd for the process's life */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (ts.tv_sec != last_sec) {
        struct tm tm;
        gmtime_r(&ts.tv_sec, &tm);
        strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
        last_sec = ts.tv_sec;
    }
    if (!pid)
        pid = (int)getpid();
    if (journal < 0)
        journal = getenv("JOURNAL_STREAM") != NULL;
    if (!json_lines && journal) {
        put_str(line, prio[level]);
        put_str(line, names[level]);
        put(line, ": ", 2);
        return;
    }
    int ms = (int)(ts.tv_nsec / 1000000L);
    char frac[5] = {'.', (char)('0' + ms / 100), (char)('0' + ms / 10 % 10), (char)('0' + ms % 10), 'Z'};
    if (json_lines)
        put(line, "{\"ts\":\"", 7);
    put_str(line, when);
    put(line, frac, sizeof frac);
    put(line, json_lines ? "\",\"level\":\"" : " tgbridge[", json_lines ? 11 : 10);
    if (json_lines) {
        put_str(line, names[level]);
        put(line, "\",\"pid\":", 8);
        put_int(line, pid);
        put(line, ",\"msg\":", 7);
    } else {
        put_int(line, pid);
        put(line, "] ", 2);
        put_str(line, names[level]);
        put(line, ": ", 2);
    }
}

/* A record's fields: text "key=value" (a value that is empty or holds a space, a
 * quote, an equals sign or a newline is quoted), or JSON members. */
static void put_fields(struct buf *line, const struct log_kv *kv, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (kv[i].kind == KV_STR && !kv[i].s)
            continue;
        if (json_lines) {
            put(line, ",\"", 2);
            put_str(line, kv[i].key);
            put(line, "\":", 2);
        } else {
            put(line, " ", 1);
            put_str(line, kv[i].key);
            put(line, "=", 1);
        }
        unsigned needs;
        size_t len;
        if (kv[i].kind == KV_INT) {
            put_int(line, kv[i].i);
        } else if (kv[i].kind == KV_NUM) {
            put_num(line, kv[i].d);
        } else {
            len = scan(kv[i].s, &needs);
            if (json_lines || (needs & 1))
                put_json_str(line, kv[i].s, len, needs);
            else
                put(line, kv[i].s, len);
        }
    }
}

/* The whole line around an already formatted message, queued (and redacted there,
 * log_flush): one buffer for every line (logging is the loop thread's alone). */
static void emit(enum log_level level, const char *msg, size_t len, const struct log_kv *kv, size_t n,
                 bool deferred)
{
    static struct buf line;
    line.len = 0;
    if (!special['\n'])
        special_init();
    put_head(&line, level);
    if (json_lines)
        buf_json_string(&line, msg, len);
    else
        put(&line, msg, len);
    put_fields(&line, kv, n);
    if (json_lines)
        put(&line, "}", 1);
    put(&line, "\n", 1);
    out_line(buf_ptr(&line), line.len, deferred);
}

void log_msg(enum log_level level, const char *fmt, ...)
{
    if (level > current)
        return;
    va_list ap;
    va_start(ap, fmt);
    char tmp[1024];
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n < sizeof tmp) {
        emit(level, tmp, (size_t)n, NULL, 0, false); /* the whole line is redacted */
        return;
    }
    char *big = malloc((size_t)n + 1);
    if (!big)
        return;
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    emit(level, big, (size_t)n, NULL, 0, false);
    free(big);
}

void log_record(enum log_level level, const char *msg, const struct log_kv *kv, size_t n)
{
    if (level <= current)
        emit(level, msg, strlen(msg), kv, n, false); /* the whole line is redacted */
}

void log_access(enum log_level level, const char *msg, const struct log_kv *kv, size_t n)
{
    if (level <= current)
        emit(level, msg, strlen(msg), kv, n, true);
}
