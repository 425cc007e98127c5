/* --ca-file read again (SIGHUP, or the file watched changing): the gateway's
 * connections made from then on verify with what it holds now; open ones were
 * verified at their handshake and stay.  A file that is missing, unreadable or holds
 * no certificate keeps the CAs as they were, and says so. */
#ifndef TGB_CASTORE_H
#define TGB_CASTORE_H
#include "config.h"

void castore_reload(const struct config *cfg, const char *why);
#endif
