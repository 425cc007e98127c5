/* SIGHUP: the config file, then the token files, in that order so that a new
 * --allow-short-token applies to the tokens read with it. */
#include "reload.h"
#include "access.h"
#include "log.h"
#include "upstream.h"

static struct config *live;

void reload_init(struct config *cfg, int argc, char **argv)
{
    live = cfg;
    config_reload_init(cfg, argc, argv);
}

void reload_all(const char *why)
{
    log_info("%s: reloading", why);
    config_reload(live);
    access_reload();
    upstream_reload_token();
}
