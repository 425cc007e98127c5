/* Small helpers shared by several modules. */
#ifndef TGB_UTIL_H
#define TGB_UTIL_H
#include <stddef.h>

/* Monotonic clock in seconds. */
double now_mono(void);
/* Percent-encodes everything but RFC 3986 unreserved characters; caller frees. */
char *url_encode(const char *s);
/* The same for a path: '/' stays too. */
char *url_encode_path(const char *s);
/* The value of a hexadecimal digit, or -1. */
int hex_value(char c);
/* "1.5" → 1.5 seconds; rejects negatives, junk and non-finite values. */
int parse_seconds(const char *s, double *out);
/* "50m", "1048576", "64k" → bytes (k/m/g are powers of 1024). */
int parse_size(const char *s, size_t *out);
/* Formats an error message into err (when not NULL) and returns -1. */
int errorf(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Seconds → lws_sul microseconds, saturating. */
long long seconds_to_us(double s);
/* p[0..n) of a query string decoded as a form value (percent escapes, '+' a space),
 * into out (cut at cap - 1 bytes, NUL-terminated); returns the bytes written. */
size_t url_decode_form(const char *p, size_t n, char *out, size_t cap);
#endif
