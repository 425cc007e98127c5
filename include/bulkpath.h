/* The bulk import/export sockets' paths (reference §2.2: /api/v1/flow/{flow}/import/
 * {kind}, .../export/{kind}) and the gateway target a local one becomes (wspass.c):
 * pure string work on bytes a local caller sent, kept apart so it can be fuzzed. */
#ifndef TGB_BULKPATH_H
#define TGB_BULKPATH_H
#include <stdbool.h>
#include <stddef.h>
#include "json.h" /* struct span */

enum bulk_dir { BULK_NONE = -1, BULK_IMPORT, BULK_EXPORT };

/* Which bulk socket path is (as sent, undecoded), with "import/<kind>" or
 * "export/<kind>" in what; BULK_NONE if it is none. */
enum bulk_dir bulk_route(struct span path, char *what, size_t cap);

/* The gateway's target for a local bulk socket: base_path, the caller's path, then
 * ?token=<token, percent-encoded> and the caller's other query parameters as sent,
 * every caller "token" dropped, and &workspace=<encoded> when the caller names none
 * and workspace is given.  False (nothing written) if it does not fit cap. */
bool bulk_target(const char *base_path, struct span path, struct span query, const char *token,
                 const char *workspace, char *out, size_t cap);
#endif
