/* Leveled logging to stderr (journald-friendly), with secrets redacted by construction. */
#ifndef TGB_LOG_H
#define TGB_LOG_H

enum log_level { LOG_ERROR = 0, LOG_WARN, LOG_INFO, LOG_DEBUG };

void log_set_level(enum log_level level);
enum log_level log_get_level(void);
int log_parse_level(const char *name, enum log_level *out);
/* Every later message has each occurrence of `secret` (and its percent-encoded
 * form) replaced by "***".  Call for every credential the daemon learns. */
void log_add_secret(const char *secret);
void log_clear_secrets(void);
void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)
#endif
