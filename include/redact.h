/* Secrets and their redaction.  Every credential the daemon learns (the gateway token,
 * each token it has rotated through, proxy credentials, local client tokens) is
 * registered here once, with every spelling it may take on the way out: as is,
 * percent-encoded, JSON-escaped (both of Python's json.dumps forms) and base64 (a
 * Basic/Proxy-Authorization header).  Every string that leaves the process -- log
 * lines, tgbridge's own JSON (status, readiness, errors), systemd's STATUS= -- passes
 * through redact_buf, so a secret quoted back by a peer is never shown either.
 * A secret stays redacted for the life of the process, but for a forwarded caller key,
 * which is forgotten with its pool (secret_remove). */
#ifndef TGB_REDACT_H
#define TGB_REDACT_H
#include <stdbool.h>
#include <stddef.h>
#include "buf.h"

/* What replaces a secret. */
#define REDACTED "***"

void secret_add(const char *secret);
/* Forgets a secret added as many times as it was added (a caller's forwarded key
 * whose pool closed: forwarded keys are many, and each costs every log line a scan). */
void secret_remove(const char *secret);
/* Proxy credentials "user:password" (already percent-decoded): the pair and the
 * password alone. */
void secret_add_userinfo(const char *userinfo);
size_t secret_count(void);
void secrets_clear(void);

/* Replaces every known secret form in b's payload by REDACTED. */
void redact_buf(struct buf *b);
/* The same for the payload from byte `start` on (what precedes it is left as it is):
 * for text appended to what was already redacted. */
void redact_buf_from(struct buf *b, size_t start);
/* The same for a NUL-terminated string in a fixed array of cap bytes (cut short
 * if redaction made it longer: only a secret shorter than REDACTED does that). */
void redact_str(char *s, size_t cap);
/* A malloc'd redacted copy of s[0..n). */
char *redact_dup(const char *s, size_t n);
#endif
