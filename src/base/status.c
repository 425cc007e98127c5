#include "status.h"
#include <string.h>

#define MAX_SOURCES 16

static const struct status_source *sources[MAX_SOURCES];
static size_t nsources;

void status_register(const struct status_source *s)
{
    for (size_t i = 0; i < nsources; i++)
        if (sources[i] == s)
            return;
    if (nsources < MAX_SOURCES)
        sources[nsources++] = s;
}

const struct status_source *status_source_at(size_t i)
{
    return i < nsources ? sources[i] : NULL;
}

void status_metric_head(struct buf *b, const char *name, const char *type, const char *help)
{
    buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

void status_metric_u(struct buf *b, const char *name, const char *type, const char *help, unsigned long long v)
{
    status_metric_head(b, name, type, help);
    buf_printf(b, "%s %llu\n", name, v);
}

void status_label_value(struct buf *b, const char *v)
{
    for (; *v; v++) {
        if (*v == '\\' || *v == '"')
            buf_printf(b, "\\%c", *v);
        else if (*v == '\n')
            buf_puts(b, "\\n");
        else
            buf_append(b, v, 1);
    }
}

void status_json_str(struct buf *b, const char *s)
{
    buf_json_string(b, s, strlen(s));
}
