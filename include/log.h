/* Leveled logging to stderr (journald-friendly), with secrets redacted by construction. */
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
