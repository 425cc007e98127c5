/* Leveled logging to stderr (journald-friendly), with secrets redacted by construction.
 * Only the loop's thread logs (one line buffer, one queue). */
#ifndef TGB_LOG_H
#define TGB_LOG_H
#include <stdbool.h>
#include <stddef.h>

enum log_level { LOG_ERROR = 0, LOG_WARN, LOG_INFO, LOG_DEBUG };

void log_set_level(enum log_level level);
enum log_level log_get_level(void);
int log_parse_level(const char *name, enum log_level *out);
/* Every line is redacted (redact.h) before it is written. */
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* --log-format: text (the default) or json (one object per line: ts, level, pid, msg,
 * and a record's fields, for log shippers). */
void log_set_json(bool json);
/* A line with named fields (the access log): text "msg key=value ..." (values with
 * spaces or quotes quoted), or the JSON object's members. */
enum log_kv_kind { KV_STR, KV_INT, KV_NUM };
struct log_kv {
    const char *key;
    enum log_kv_kind kind;
    const char *s;       /* KV_STR (NULL: the field is left out) */
    long long i;         /* KV_INT */
    double d;            /* KV_NUM */
};
void log_record(enum log_level level, const char *msg, const struct log_kv *kv, size_t n);
/* The same for the access log's lines, which are gathered: written together at the
 * end of the loop turn (logpump.c), or when LOGQ_BOUND bytes wait.  Any other line
 * writes what waits, then itself, so the order holds. */
void log_access(enum log_level level, const char *msg, const struct log_kv *kv, size_t n);

/* Standard error is never waited for: what the reader does not take now stays queued
 * (at most LOGQ_BOUND bytes, logqueue.h; lines past that are dropped and counted).
 * log_flush writes what it can without blocking; log_flush_wait waits up to `seconds`
 * for the reader (at exit: main's return and exit() do it by themselves, for a
 * second).  log_out_fd is the descriptor to watch for room while something is
 * pending; log_on_pending(fn): fn() whenever the queue stops being empty. */
void log_flush(void);
void log_flush_wait(double seconds);
size_t log_pending(void);
unsigned long long log_dropped(void);
int log_out_fd(void);
void log_on_pending(void (*fn)(void));

/* For events that can repeat at the peer's pace (a bad frame per reply, a refused
 * connection per accept): log_limit_ok is true at most once per `interval` seconds
 * and then tells how many were held back since the last time. */
struct log_limit {
    double next;
    unsigned long held;
};
bool log_limit_ok(struct log_limit *l, double interval, unsigned long *held_back);

#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)
#endif
