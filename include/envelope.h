/* The gateway's wire format: building request envelopes and classifying reply frames
 * (reference §4, §5).  Pure functions: no I/O, no global state. */
#ifndef TGB_ENVELOPE_H
#define TGB_ENVELOPE_H
#include <stdbool.h>
#include <stddef.h>
#include "buf.h"
#include "json.h"

/* Appends {"id":…,"service":…[,"flow":…][,"workspace":…],"request":<body>} to out.
 * The body is spliced byte-exact: payloads we do not own are never re-serialised. */
void envelope_build(struct buf *out, const char *id, const char *service, const char *flow,
                    const char *workspace, const char *body, size_t body_len);

/* Appends a caller's own envelope (a JSON object in text) with its "id" value replaced
 * by ours (or an "id" inserted when it has none) and, when workspace is given and the
 * envelope names none, a "workspace" added.  Everything else stays byte-identical. */
void envelope_rewrite(struct buf *out, const char *text, size_t len, const struct span *id_span,
                      const char *our_id, const char *workspace);

/* A local client's envelope -- a line of the line protocol, or a local WebSocket
 * message -- checked as the gateway would read it (ref §4), before envelope_rewrite
 * splices it.  Pure: the caller owns text, which must outlive out. */
enum client_msg {
    CMSG_BLANK,    /* nothing but whitespace: ignored */
    CMSG_BAD,      /* error says why; id is set when the reply can carry the client's id */
    CMSG_REQUEST,  /* service, has_flow, id (if any) */
    CMSG_CONTROL,  /* a "type" frame: type says which ("ping", "auth", ...) */
};

struct client_msg_info {
    enum client_msg kind;
    bool id_present;           /* an "id" key (then id_span is its value) */
    struct span id_span;
    struct span id;            /* the client's id as JSON text; .p NULL when absent or null */
    char service[96];
    bool has_flow;             /* a non-empty "flow" string */
    char type[32];             /* CMSG_CONTROL, when a string (else "") */
    struct span token;         /* CMSG_CONTROL: the raw "token" value, if any */
    /* CMSG_REQUEST, for the per-caller policy: "" when absent; too_long when one did
     * not fit (then no rule can be said to match it). */
    char flow[256], workspace[256], operation[96];
    bool has_operation, too_long;
    char error[160];           /* CMSG_BAD */
};

/* `what` names the text in errors ("line", "message").  A message refused because it
 * is nested too deep to be read still gets the id its top level
 * shows before the depth gets too deep (client_msg_id). */
void client_msg_parse(const char *text, size_t len, const char *what, struct client_msg_info *out);
/* The id of a message that cannot be read whole (too deep, too long: text may be its
 * first bytes only): the first top-level "id" member the scan reaches before the fault,
 * when its value is complete, valid JSON and not null.  False: none readable. */
bool client_msg_id(const char *text, size_t len, struct span *id);

enum frame_kind {
    FRAME_INVALID,      /* not valid JSON/UTF-8, or not an object: a gateway bug; never forwarded
                         * (has_id when the top-level scan could still read the id) */
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

#endif
