/* A name in a REST path -- a flow id, a service kind, a thru/ name -- read as the
 * gateway routes it (aiohttp, v1.9.4 and HEAD): a {flow} or {kind} segment matches
 * [^{}/]+ on the path with every escape but %2F and %25 decoded, and is then decoded
 * whole (%2F to '/', %25 to '%'); a thru/ name matches .+.  tgbridge accepts the same
 * names, decoded, and refuses the ones it could not carry: NUL and other control
 * characters, bytes that are not UTF-8 (the name travels in a JSON envelope), and an
 * encoded slash in a one-segment name.  Pure: no I/O, no allocation. */
#ifndef TGB_RESTNAME_H
#define TGB_RESTNAME_H
#include <stdbool.h>
#include <stddef.h>

/* Decodes the n bytes of raw (as sent, not decoded) into out (cap bytes, NUL
 * added).  slashes: a thru/ name (raw '/' and %2F allowed).  Returns the decoded
 * length, or -1 with why set to what is wrong, naming the character
 * ("a NUL character (%00)", "the character '{'", ...). */
long rest_name_decode(const char *raw, size_t n, bool slashes, char *out, size_t cap, char *why, size_t whylen);
#endif
