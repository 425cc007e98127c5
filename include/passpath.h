/* The pass-through HTTP routes' paths (reference §2.2-2.3, §8.4), decided on the path
 * as the caller sent it -- before any percent-decoding, the query kept apart -- since
 * a decoded path cannot tell %2F from '/' (libmicrohttpd hands on_request one).  Pure
 * string work on a caller's bytes, kept apart so it can be fuzzed.
 *
 * The canonical form of a path: every escape of an unreserved character (RFC 3986
 * §2.3: ALPHA DIGIT - . _ ~) decoded, every other escape in upper case, every byte
 * outside pchar / '/' escaped.  Two spellings of one path have one canonical form, the
 * one routed and forwarded to the gateway.  A path in the pass-through space (as
 * written, or once its dot segments are resolved) with a dot segment ("." or "..",
 * also escaped, in any case), an escaped slash (%2F), a backslash (raw or %5C), an
 * escaped NUL, a raw space or control character or a broken escape is refused: a
 * gateway or an ingress in front of it that resolves them would route it elsewhere,
 * with tgbridge's credential. */
#ifndef TGB_PASSPATH_H
#define TGB_PASSPATH_H
#include <stdbool.h>
#include <stddef.h>
#include "json.h" /* struct span */
#include "passthrough.h"

/* Room for a canonical path that a gateway request line can carry (dial.h). */
#define PASSPATH_MAX 4096

enum passpath_verdict {
    PASSPATH_NONE,       /* not a pass-through route: other routes decide */
    PASSPATH_OK,         /* route and canonical path set */
    PASSPATH_BAD_PATH,   /* 400 bad-path; why set */
    PASSPATH_BAD_METHOD, /* 405; route, canonical path and allow set */
    PASSPATH_TOO_LONG,   /* 414: the canonical path does not fit */
};

struct passpath {
    enum pass_route route;
    const char *allow; /* the Allow value of the route's methods */
    const char *why;   /* what is wrong with a refused path */
};

/* Decides a request: its method and raw path (no query).  The canonical path goes to
 * out (NUL-terminated, at most cap bytes with the NUL) on OK and BAD_METHOD. */
enum passpath_verdict passpath_route(const char *method, struct span path, char *out, size_t cap,
                                     struct passpath *pp);
#endif
