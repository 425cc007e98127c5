/* What the table prints: --help, and --print-config (every option as a config-file
 * line with its effective value and where it came from, secrets masked). */
#include "config_int.h"
#include "redact.h"
#include <string.h>

void config_usage(FILE *out)
{
    fprintf(out,
            "Usage: tgbridge [OPTION]...\n"
            "Keep one authenticated WebSocket to a TrustGraph api-gateway and serve its\n"
            "REST API (with NDJSON/SSE streaming) locally.\n\nOptions (environment in brackets):\n");
    for (size_t i = 0; i < config_noptions; i++) {
        const struct opt *o = &config_options[i];
        char left[64];
        snprintf(left, sizeof left, "--%s%s%s", o->name, o->arg ? " " : "", o->arg ? o->arg : "");
        const char *h = o->help;
        fprintf(out, "  %-26s ", left);
        for (const char *nl; (nl = strchr(h, '\n')); h = nl + 1)
            fprintf(out, "%.*s\n  %-26s ", (int)(nl - h), h, "");
        fprintf(out, "%s", h);
        if (o->env)
            fprintf(out, " [%s]", o->env);
        fputc('\n', out);
    }
    fprintf(out, "\nShort options:\n"
                 "  -h                         --help\n"
                 "  -V                         --version\n"
                 "  -v                         --log-level debug\n"
                 "\nEach option at most once (a list comma-separated), as in the config file.\n"
                 "On SIGHUP, --config is read again: the options marked so by --print-config\n"
                 "apply to new calls, the others need a restart.\n");
    fprintf(out, "\nCommands for a running tgbridge, found from the same options, environment and\n"
                 "--config (exit 0: yes; 1: no, or no answer within --timeout, default 0.8 s; 2: usage):\n"
                 "  tgbridge probe live|ready [--timeout SECONDS] [OPTION]...\n"
                 "      GET /healthz or /readyz of its admin listener, else its --listen (not\n"
                 "      port 0), else its --unix socket; reads no token file, so any user may run it\n"
                 "  tgbridge shutdown [--timeout SECONDS] [OPTION]...\n"
                 "      POST /shutdown to its admin listener: it drains as on SIGTERM and exits 0\n");
    fprintf(out, "\nToken precedence: --token-file, --token, TRUSTGRAPH_TOKEN, GATEWAY_SECRET.\n"
                 "See README.md for routes, streaming format and error table.\n");
}

/* Where o's value came from: a layer, or the option whose file supplied it. */
static const char *source_of(const struct config *cfg, const struct opt *o, const struct buf *v)
{
    const char *src = opt_source(o->id);
    if (src[0])
        return src;
    const struct opt *from = o->from ? opt_by_id(o->from) : NULL;
    if (from && v->len && *(char *const *)((const char *)cfg + from->field))
        return from->name;
    return "default";
}

/* What SIGHUP does with a changed value (config_int.h, enum opt_reload). */
static const char *reload_note(const struct opt *o)
{
    switch (o->reload) {
    case RELOAD_APPLY: return "reload: applies to new calls";
    case RELOAD_FILE: return "reload: the file is re-read, a new name needs a restart";
    default: return "reload: needs a restart";
    }
}

void config_print(const struct config *cfg, FILE *out)
{
    fprintf(out, "# tgbridge %s: the effective configuration%s%s\n", TGB_VERSION,
            cfg->config_file ? ", over the file " : "", cfg->config_file ? cfg->config_file : "");
    fprintf(out, "# precedence: default < config file < environment < flags; secrets shown as ***;\n"
                 "# before each value, where it came from and what SIGHUP does with a change to it\n");
    for (size_t i = 0; i < config_noptions; i++) {
        const struct opt *o = &config_options[i];
        if (o->type == T_ACTION)
            continue;
        struct buf v;
        buf_init(&v, 0);
        opt_format(cfg, o, &v);
        const char *src = source_of(cfg, o, &v);
        redact_buf(&v); /* any secret that got into a value */
        /* The source on a comment line of its own: the output is a config file
         * tgbridge reads back (values have no trailing comments there). */
        bool quote = v.len && (strchr(buf_ptr(&v), '#') || buf_ptr(&v)[0] == ' ' || buf_ptr(&v)[v.len - 1] == ' ');
        if (!v.len)
            fprintf(out, "# %s: unset (%s); %s\n", o->name, src, reload_note(o));
        else
            fprintf(out, "# %s: %s; %s\n%s = %s%.*s%s\n", o->name, src, reload_note(o), o->name,
                    quote ? "\"" : "", (int)v.len, buf_ptr(&v), quote ? "\"" : "");
        buf_free(&v);
    }
}
