/* JSON scanning without a tree: byte spans of top-level members, validation, and the
 * checks a body must pass before it is spliced into an envelope.  Pure functions. */
#ifndef TGB_JSON_H
#define TGB_JSON_H
#include <stdbool.h>
#include <stddef.h>

struct span { const char *p; size_t n; };

/* Calls fn(key, value, arg) for each top-level member of the object in text (key
 * without its quotes, not unescaped).  Returns the offset just past the object's
 * closing brace, or -1 when the top level is not a well-formed object (members seen
 * before the fault have been reported).  Values are delimited, not validated:
 * callers own text they trust or have validated. */
typedef void (*json_member_fn)(struct span key, struct span value, void *arg);
long json_members(const char *text, size_t len, json_member_fn fn, void *arg);
bool span_is(struct span v, const char *lit);

/* Byte span of the value of `key` in the top-level object `text`; 0 on success. */
int json_top_value(const char *text, size_t len, const char *key, struct span *out);
/* Byte length of the JSON value starting at p (whitespace not skipped), 0 if malformed. */
size_t json_value_len(const char *p, size_t len);
/* Index of the first non-whitespace byte at or after i (len if none). */
size_t json_skip_ws(const char *p, size_t i, size_t len);

/* The JSON string value v (quotes included) decoded into out (at most cap bytes): its
 * decoded length, NUL bytes (\u0000) and all, or -1 when v is not one well-formed
 * string or does not fit.  Lone surrogate escapes come out as their 3-byte form. */
long json_string_decode(struct span v, char *out, size_t cap);

/* True when text is exactly one JSON value (surrounding whitespace allowed) as the
 * gateway's Python json module writes and its clients read it: RFC 8259, valid UTF-8
 * throughout, no raw control characters in strings, plus Python's NaN, Infinity and
 * -Infinity.  Nesting deeper than JSON_MAX_DEPTH is refused.  No allocation. */
#define JSON_MAX_DEPTH 4096
bool json_valid(const char *text, size_t len);
/* json_valid and json_members in one pass, for text that must be one JSON object: fn
 * gets each top-level member as json_members gives it, and the result is the offset
 * just past the object's closing brace, or -1 when text is not exactly one valid
 * object (surrounding whitespace allowed; members before the fault have been reported). */
long json_valid_members(const char *text, size_t len, json_member_fn fn, void *arg);
/* True when brackets outside strings open deeper than JSON_MAX_DEPTH somewhere in text
 * (which json_valid then refuses): a plain scan, nothing else judged. */
bool json_too_deep(const char *text, size_t len);

/* NULL if body is one JSON value the gateway will accept as it is; else why not, as
 * a phrase to put after a subject ("is not valid UTF-8").
 * Stricter than cJSON where the gateway is: the text must be valid UTF-8 (aiohttp
 * closes the whole socket on a text frame that is not), strings must not hold raw
 * control characters (Python's json rejects them), and nothing may follow the value.
 * Any of these would otherwise come back as an error without an id (ref §5.2 E3).
 * On success *root (if root is not NULL) gets the parsed value, which the caller frees. */
struct cJSON;
const char *json_body_check(const char *body, size_t len, struct cJSON **root);
#endif
