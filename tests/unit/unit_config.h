/* For the unit tests that need a configuration: one config-file line applied to
 * fresh defaults (unit_config.c). */
#ifndef TGB_UNIT_CONFIG_H
#define TGB_UNIT_CONFIG_H
#include <stddef.h>
#include "config.h"

/* config_load_stream's return, and its error in err. */
int config_line(const char *line, struct config *cfg, char *err, size_t errlen);
#endif
