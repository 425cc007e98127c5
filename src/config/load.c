/* The layers, lowest first: defaults < config file < environment < flags; then the
 * checks and decisions across options (the Unix socket's default, the proxy, the
 * token file) and the scrubbing of secrets from argv and the environment. */
#include "config_int.h"
#include "redact.h"
#include "util.h"
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Where each option's value came from, for --print-config ("" if nowhere), and from
 * which layer. */
static struct provenance start_prov, *prov = &start_prov;
/* A reload's load: see config_load_again. */
static bool again;

struct provenance *opt_provenance_use(struct provenance *p)
{
    struct provenance *old = prov;
    prov = p;
    return old;
}

void opt_note_source(enum opt_id id, enum opt_layer layer, const char *where)
{
    snprintf(prov->where[id], sizeof prov->where[id], "%s", where);
    prov->layer[id] = (unsigned char)layer;
}

const char *opt_source(enum opt_id id)
{
    return prov->where[id];
}

enum opt_layer opt_layer_of(enum opt_id id)
{
    return (enum opt_layer)prov->layer[id];
}

int config_check_token(const struct config *cfg, const char *tok, const char *what, char *err, size_t errlen)
{
    size_t n = tok ? strlen(tok) : 0;
    if (!n || n >= TOKEN_MIN_LEN || cfg->allow_short_token)
        return 0;
    return errorf(err, errlen, "%s is %zu character%s long: %d or more wanted (or --allow-short-token)", what, n,
                  n == 1 ? "" : "s", TOKEN_MIN_LEN);
}

/* Every row's default, or (allocating) only those that allocate. */
static void apply_defaults(struct config *cfg, bool allocating)
{
    for (size_t i = 0; i < config_noptions; i++) {
        const struct opt *o = &config_options[i];
        char err[256];
        if (o->def && opt_default_allocates(o) == allocating && opt_parse(cfg, o, o->def, err, sizeof err)) {
            fprintf(stderr, "tgbridge: the default of --%s: %s\n", o->name, err);
            abort(); /* the table is wrong */
        }
    }
}

void config_defaults(struct config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    apply_defaults(cfg, false);
}

/* --config / TGBRIDGE_CONFIG, found before anything else is applied: the file is the
 * lowest layer, under the environment and the flags. */
static const char *config_path(int argc, char **argv)
{
    const char *path = getenv("TGBRIDGE_CONFIG");
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--"))
            break;
        if (!strcmp(argv[i], "--config") && i + 1 < argc)
            path = argv[++i];
        else if (!strncmp(argv[i], "--config=", 9))
            path = argv[i] + 9;
    }
    return path && *path ? path : NULL;
}

static int apply_env(struct config *cfg, char *err, size_t errlen)
{
    for (size_t i = 0; i < config_noptions; i++) {
        const struct opt *o = &config_options[i];
        const char *v = o->env ? getenv(o->env) : NULL, *src = o->env;
        if ((!v || !*v) && o->env_alt) {
            v = getenv(o->env_alt);
            if (!getenv(o->env))
                src = o->env_alt;
        }
        if (!v || !*v)
            continue;
        char e2[256];
        if (opt_parse(cfg, o, v, e2, sizeof e2))
            return errorf(err, errlen, "%s: %s", o->env, e2);
        opt_note_source(o->id, L_ENV, src);
    }
    return 0;
}

/* One flag's value: applied, its source noted, and its secret scrubbed from the
 * process title (/proc/PID/cmdline shows argv's memory). */
static int apply_flag(struct config *cfg, const struct opt *o, char *v, char *err, size_t errlen)
{
    if (again && (o->type == T_SECRET || o->type == T_CRED_URL))
        return 0; /* scrubbed at start: the live value stands */
    if (opt_parse(cfg, o, v, err, errlen))
        return -1;
    opt_note_source(o->id, L_FLAG, "flag");
    if (o->type == T_SECRET && v) {
        secret_add(v);
        memset(v, 'x', strlen(v));
    }
    if (o->type == T_CRED_URL && v)
        proxy_scrub_userinfo(v);
    return 0;
}

/* Each option once, as in the config file: a second value would silently win, and a
 * list given twice is not two lists joined.  -v is --log-level debug. */
static bool given_twice(bool *seen, int c)
{
    if (c == 'v')
        c = O_LOG_LEVEL;
    if (c <= 0 || c >= O_LAST)
        return false;
    bool twice = seen[c];
    seen[c] = true;
    return twice;
}

/* 0: go on; 1: help or version printed; -1: err filled. */
static int apply_flags(struct config *cfg, int argc, char **argv, char *err, size_t errlen)
{
    struct option longopts[O_LAST];
    for (size_t i = 0; i < config_noptions; i++) {
        const struct opt *o = &config_options[i];
        longopts[i] = (struct option){o->name, o->arg ? required_argument : no_argument, NULL, (int)o->id};
    }
    longopts[config_noptions] = (struct option){0, 0, 0, 0};
    opterr = 0;
    optind = 1;
    int c;
    bool seen[O_LAST] = {false};
    while ((c = getopt_long(argc, argv, ":hVv", longopts, NULL)) != -1) {
        if (given_twice(seen, c))
            return errorf(err, errlen, "option '%s%s' is given twice (%s)", c == 'v' ? "-v" : "--",
                          c == 'v' ? "" : opt_by_id((enum opt_id)c)->name,
                          c == 'v' || c == O_LOG_LEVEL ? "-v counts as --log-level"
                                                       : "each option once; a list goes comma-separated");
        if (c == 'h' || c == O_HELP) {
            config_usage(stdout);
            return 1;
        }
        if (c == 'V' || c == O_VERSION) {
            printf("tgbridge %s\n", TGB_VERSION);
            return 1;
        }
        if (c == 'v') {
            cfg->log_level = LOG_DEBUG;
            opt_note_source(O_LOG_LEVEL, L_FLAG, "-v");
        } else if (c == O_PRINT_CONFIG || c == O_CHECK_CONFIG) {
            *(c == O_PRINT_CONFIG ? &cfg->print_config : &cfg->check_config) = true;
        } else if (c == '?') {
            return errorf(err, errlen, "unknown option '%s' (see --help)", argv[optind - 1]);
        } else if (c == ':') {
            return errorf(err, errlen, "option '%s' needs a value", argv[optind - 1]);
        } else if (apply_flag(cfg, opt_by_id((enum opt_id)c), optarg, err, errlen)) {
            return -1;
        }
    }
    if (optind < argc)
        return errorf(err, errlen, "unexpected argument '%s' (see --help)", argv[optind]);
    return 0;
}

/* The variables a secret may come in.  Once read, each is overwritten where it lies
 * (the bytes /proc/PID/environ shows: unsetenv alone leaves them there) and removed,
 * as NOTIFY_SOCKET is (sdnotify.c). */
static const char *const secret_env[] = {"TRUSTGRAPH_TOKEN", "GATEWAY_SECRET"};
static const char *const proxy_env[] = {"TGBRIDGE_PROXY", "https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"};

static void scrub_env(const char *name)
{
    char *v = getenv(name);
    if (!v)
        return;
    explicit_bzero(v, strlen(v));
    unsetenv(name);
}

static void scrub_secret_env(void)
{
    for (size_t i = 0; i < sizeof secret_env / sizeof *secret_env; i++) {
        secret_add(getenv(secret_env[i]));
        scrub_env(secret_env[i]);
    }
    for (size_t i = 0; i < sizeof proxy_env / sizeof *proxy_env; i++) {
        const char *v = getenv(proxy_env[i]);
        if (v && strchr(v, '@')) {
            proxy_add_secrets(v);
            scrub_env(proxy_env[i]);
        }
    }
}

/* The default: systemd's runtime directory, /run/tgbridge as root, else the
 * user's runtime directory; none when there is no such place. */
static void default_unix_path(struct config *cfg)
{
    const char *rd = getenv("RUNTIME_DIRECTORY");
    char path[4096];
    if (rd && *rd) {
        size_t n = strcspn(rd, ":"); /* several directories are colon-separated */
        snprintf(path, sizeof path, "%.*s/tgbridge.sock", (int)n, rd);
    } else if (geteuid() == 0) {
        snprintf(path, sizeof path, "/run/tgbridge/tgbridge.sock");
    } else if ((rd = getenv("XDG_RUNTIME_DIR")) && *rd) {
        snprintf(path, sizeof path, "%s/tgbridge.sock", rd);
    } else {
        return;
    }
    set_str(&cfg->unix_path, path);
}

static bool wildcard(const char *h)
{
    return !*h || !strcmp(h, "0.0.0.0") || !strcmp(h, "::");
}

/* The same port on the same address (or on a wildcard covering it); port 0 picks its own. */
static bool admin_clashes(const struct config *cfg)
{
    return cfg->admin_port > 0 && cfg->admin_port == cfg->listen_port &&
           (!strcmp(cfg->admin_host, cfg->listen_host) || wildcard(cfg->admin_host) || wildcard(cfg->listen_host));
}

/* What no single option decides: defaults that depend on others, the proxy, the
 * token file. */
static int finish(struct config *cfg, bool read_files, char *err, size_t errlen)
{
    if (!cfg->unix_set)
        default_unix_path(cfg);
    if (cfg->reconnect_max < cfg->reconnect_min)
        cfg->reconnect_max = cfg->reconnect_min;
    if (cfg->token)
        secret_add(cfg->token);
    if (cfg->ca_only && !cfg->ca_file)
        return errorf(err, errlen, "--ca-only needs --ca-file");
    if (admin_clashes(cfg))
        return errorf(err, errlen, "--admin-listen must differ from --listen (the admin listener serves no data routes)");
    if (!cfg->token_file && cfg->token) {
        char what[340];
        const char *src = opt_source(O_TOKEN);
        snprintf(what, sizeof what, "the gateway token (from %s)", src[0] ? src : "--token");
        if (config_check_token(cfg, cfg->token, what, err, errlen))
            return -1;
    }
    if (again)
        return 0;
    int rc = proxy_decide(cfg, err, errlen);
    scrub_secret_env();
    if (rc || (read_files && config_read_token_file(cfg, err, errlen)))
        return -1;
    return 0;
}

static int load(struct config *cfg, int argc, char **argv, bool read_files, char *err, size_t errlen)
{
    config_defaults(cfg);
    memset(prov, 0, sizeof *prov);
    apply_defaults(cfg, true);
    const char *file = config_path(argc, argv);
    if (file)
        set_str(&cfg->config_file, file);
    if (file && config_load_file(cfg, file, err, errlen))
        return -1;
    /* Environment first, so that flags override it. */
    if (apply_env(cfg, err, errlen))
        return -1;
    int rc = apply_flags(cfg, argc, argv, err, errlen);
    if (rc)
        return rc;
    return finish(cfg, read_files, err, errlen) ? -1 : 0;
}

int config_load(struct config *cfg, int argc, char **argv, char *err, size_t errlen)
{
    return load(cfg, argc, argv, true, err, errlen);
}

int config_load_client(struct config *cfg, int argc, char **argv, char *err, size_t errlen)
{
    return load(cfg, argc, argv, false, err, errlen);
}

int config_load_again(struct config *cfg, int argc, char **argv, char *err, size_t errlen)
{
    again = true;
    int rc = config_load(cfg, argc, argv, err, errlen);
    again = false;
    return rc;
}

void config_free(struct config *cfg)
{
    for (size_t i = 0; i < config_noptions; i++)
        opt_release(cfg, &config_options[i]);
    free(cfg->config_file);
    if (cfg->via_proxy)
        explicit_bzero(cfg->via_proxy, sizeof *cfg->via_proxy);
    free(cfg->via_proxy);
    memset(cfg, 0, sizeof *cfg);
}
