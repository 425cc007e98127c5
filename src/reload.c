/* SIGHUP: the config file, then the token files and the CA file, in that order so that a new
 * --allow-short-token applies to the tokens read with it. */
#include "reload.h"
#include "access.h"
#include "castore.h"
#include "filewatch.h"
#include "log.h"
#include "policy.h"
#include "upstream.h"
#include <stdio.h>
#include <string.h>

static struct config *live;

/* path is one of the live policy's token files. */
static bool policy_names_file(const char *path)
{
    const char *files[256];
    size_t n = policy_files(files, sizeof files / sizeof *files);
    for (size_t i = 0; i < n; i++)
        if (!strcmp(files[i], path))
            return true;
    return false;
}

void reload_init(struct config *cfg, int argc, char **argv)
{
    live = cfg;
    config_reload_init(cfg, argc, argv);
}

static void secret_changed(const char *path, void *arg);

/* A new policy applies to new calls; callers' gateway identities it no longer gives
 * drain (upstream.h), and the token files it names are watched. */
static void reload_policy(const char *why)
{
    if (!policy_reload(why))
        return;
    upstream_policy_changed();
    const char *files[256];
    size_t n = policy_files(files, sizeof files / sizeof *files);
    char err[600];
    for (size_t i = 0; i < n; i++)
        if (filewatch_add(files[i], secret_changed, NULL, err, sizeof err))
            log_warn("%s; it is read again on SIGHUP only", err);
}

void reload_all(const char *why)
{
    log_info("%s: reloading", why);
    config_reload(live);
    access_reload(why);
    reload_policy(why);
    upstream_reload_token(why);
    castore_reload(live, why);
}

/* One watched file changed: what SIGHUP does for that file alone. */
static void secret_changed(const char *path, void *arg)
{
    (void)arg;
    char why[600];
    snprintf(why, sizeof why, "%s changed", path);
    if ((live->client_token_file && !strcmp(path, live->client_token_file)) ||
        (live->admin_token_file && !strcmp(path, live->admin_token_file)))
        access_reload(why);
    if (live->policy && (!strcmp(path, live->policy) || policy_names_file(path)))
        reload_policy(why);
    if (live->token_file && !strcmp(path, live->token_file))
        upstream_reload_token(why);
    if (live->ca_file && !strcmp(path, live->ca_file))
        castore_reload(live, why);
}

void reload_watch_secrets(void)
{
    const char *paths[] = {live->token_file, live->client_token_file, live->admin_token_file, live->ca_file,
                           live->policy};
    char err[600];
    for (size_t i = 0; i < sizeof paths / sizeof *paths; i++)
        if (paths[i] && filewatch_add(paths[i], secret_changed, NULL, err, sizeof err))
            log_warn("%s; it is read again on SIGHUP only", err);
    const char *files[256];
    size_t n = policy_files(files, sizeof files / sizeof *files);
    for (size_t i = 0; i < n; i++)
        if (filewatch_add(files[i], secret_changed, NULL, err, sizeof err))
            log_warn("%s; it is read again on SIGHUP only", err);
}
