/* The gateway's wire format: building request envelopes and classifying reply frames
 * (reference §4, §5).  Pure functions: no I/O, no global state. */
#ifndef TGB_ENVELOPE_H
#define TGB_ENVELOPE_H
#include <stdbool.h>
#include <stddef.h>
#include "buf.h"

struct span { const char *p; size_t n; };

/* Appends {"id":…,"service":…[,"flow":…][,"workspace":…],"request":<body>} to out.
 * The body is spliced byte-exact: payloads we do not own are never re-serialised. */
void envelope_build(struct buf *out, const char *id, const char *service, const char *flow,
                    const char *workspace, const char *body, size_t body_len);

/* Appends a caller's own envelope (a JSON object in text) with its "id" value replaced
 * by ours (or an "id" inserted when it has none) and, when workspace is given and the
 * envelope names none, a "workspace" added.  Everything else stays byte-identical. */
void envelope_rewrite(struct buf *out, const char *text, size_t len, const struct span *id_span,
                      const char *our_id, const char *workspace);

enum frame_kind {
    FRAME_INVALID,      /* not JSON, not an object: a gateway bug; logged and dropped */
    FRAME_AUTH_OK,      /* {"type":"auth-ok", "default_workspace"|"workspace": …} */
    FRAME_AUTH_FAILED,  /* {"type":"auth-failed", "error": …} */
    FRAME_PART,         /* response, complete false/null/absent */
    FRAME_FINAL,        /* response, complete true, no response.error */
    FRAME_FINAL_ERROR,  /* response.error (E5/E6): finished, failed */
    FRAME_TOP_ERROR,    /* top-level error with our id (E1', E2, E4) */
    FRAME_ORPHAN_ERROR, /* top-level error without an id (E1, E3): cannot be correlated */
    FRAME_OTHER,        /* anything else: ignored */
};


struct frame {
    enum frame_kind kind;
    bool has_id;
    char id[128];              /* only string ids: ours are strings */
    struct span response;      /* raw `response` value, byte-exact */
    struct span error;         /* raw top-level `error` value */
    bool error_is_string;      /* E1/E1' (V1a) or auth-failed */
    char err_type[64];         /* "" when the error is a bare string */
    char *err_message;         /* unescaped; malloc'd; never NULL after parse */
    char workspace[256];       /* auth-ok */
    bool auth_new_field;       /* auth-ok said default_workspace (v2.6.2+) */
};

/* text must be NUL-terminated at text[len].  Always fills f; free with frame_free. */
void frame_parse(const char *text, size_t len, struct frame *f);
void frame_free(struct frame *f);

/* NULL if body is one JSON value the gateway will accept as it is; else why not, as
 * a phrase to put after a subject ("is not valid UTF-8").
 * Stricter than cJSON where the gateway is: the text must be valid UTF-8 (aiohttp
 * closes the whole socket on a text frame that is not), strings must not hold raw
 * control characters (Python's json rejects them), and nothing may follow the value.
 * Any of these would otherwise come back as an error without an id (ref §5.2 E3).
 * On success *root (if root is not NULL) gets the parsed value, which the caller frees. */
struct cJSON;
const char *json_body_check(const char *body, size_t len, struct cJSON **root);

/* Calls fn(key, value, arg) for each top-level member of the object in text (key
 * without its quotes, not unescaped).  Returns the offset just past the object's
 * closing brace, or -1 when the top level is not a well-formed object.  Values are
 * delimited, not validated: callers own text they trust or have validated. */
typedef void (*json_member_fn)(struct span key, struct span value, void *arg);
long json_members(const char *text, size_t len, json_member_fn fn, void *arg);
bool span_is(struct span v, const char *lit);

/* Byte span of the value of `key` in the top-level object `text`; 0 on success. */
int json_top_value(const char *text, size_t len, const char *key, struct span *out);
/* Byte length of the JSON value starting at p (whitespace not skipped), 0 if malformed. */
size_t json_value_len(const char *p, size_t len);
#endif
