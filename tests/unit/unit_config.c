#include "unit_config.h"
#include <stdio.h>
#include <string.h>

int config_line(const char *line, struct config *cfg, char *err, size_t errlen)
{
    config_defaults(cfg);
    FILE *f = fmemopen((void *)line, strlen(line), "r");
    int rc = config_load_stream(cfg, f, "t.conf", err, errlen);
    fclose(f);
    return rc;
}
