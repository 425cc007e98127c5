/* SIGHUP's re-reading of the config file: a fresh struct config is loaded with the
 * same argv and environment, compared option by option with what was loaded last,
 * and each change is applied to the live struct config or reported.
 *
 * What was loaded is remembered as each option's config-file spelling (opt_format),
 * not as the live struct: main.c writes a few live fields once the listeners are up
 * (an adopted socket's address and path), and those are not changes to report. */
#include "config_int.h"
#include "log.h"
#include "redact.h"
#include <stdlib.h>
#include <string.h>

static struct {
    int argc;
    char **argv;
    char *loaded[O_LAST]; /* each option's value as last loaded (NULL: unset) */
} RL;

/* The value as text; a secret's own text (format_secret masks it), wiped when freed. */
static char *value_text(const struct config *cfg, const struct opt *o)
{
    if (o->type == T_SECRET) {
        const char *s = *(char *const *)((const char *)cfg + o->field);
        return s ? strdup(s) : NULL;
    }
    struct buf b;
    buf_init(&b, 0);
    opt_format(cfg, o, &b);
    char *t = b.len ? strndup(buf_ptr(&b), b.len) : NULL;
    buf_free(&b);
    return t;
}

static void forget(char **t)
{
    if (*t)
        explicit_bzero(*t, strlen(*t));
    free(*t);
    *t = NULL;
}

static bool same_text(const char *a, const char *b)
{
    return (!a && !b) || (a && b && !strcmp(a, b));
}

void config_reload_init(const struct config *live, int argc, char **argv)
{
    RL.argc = argc;
    RL.argv = argv;
    for (size_t i = 0; i < config_noptions; i++) {
        const struct opt *o = &config_options[i];
        forget(&RL.loaded[o->id]);
        if (o->type != T_ACTION)
            RL.loaded[o->id] = value_text(live, o);
    }
}

/* The bytes of o's field (and of its count, for the id lists) exchanged: live takes the
 * fresh value and fresh the old one, which config_free releases with fresh. */
static void swap_field(struct config *live, struct config *fresh, const struct opt *o)
{
    unsigned char tmp[sizeof live->allow_uid];
    _Static_assert(sizeof live->allow_uid >= sizeof(struct str_list), "swap room");
    char *a = (char *)live + o->field, *b = (char *)fresh + o->field;
    if (o->size > sizeof tmp)
        abort(); /* a reloadable field wider than any the table has */
    memcpy(tmp, a, o->size);
    memcpy(a, b, o->size);
    memcpy(b, tmp, o->size);
    if (o->type == T_UIDS || o->type == T_GIDS) {
        int *na = (int *)((char *)live + o->aux), *nb = (int *)((char *)fresh + o->aux);
        int n = *na;
        *na = *nb;
        *nb = n;
    }
}

/* What a change to o is called in the log: the value, or *** for a secret. */
static const char *shown(const struct opt *o, const char *t)
{
    return o->type == T_SECRET && t ? "***" : t ? t : "unset";
}

/* One option: 1 applied, 2 needs a restart, 0 unchanged or not the file's to change. */
static int reload_one(struct config *live, struct config *fresh, const struct opt *o, struct provenance *start,
                      const struct provenance *now)
{
    if (o->type == T_ACTION || start->layer[o->id] >= L_ENV)
        return 0; /* set by the environment or a flag: precedence as at start */
    const struct opt *from = o->from ? opt_by_id(o->from) : NULL;
    if (from && *(char *const *)((const char *)live + from->field))
        return 0; /* the token comes from --token-file: upstream_reload_token's */
    char *t = value_text(fresh, o);
    if (same_text(t, RL.loaded[o->id])) {
        forget(&t);
        return 0;
    }
    if (o->reload != RELOAD_APPLY) {
        log_warn("reload: %s changed in the config file (%s, was %s): it needs a restart; keeping %s", o->name,
                 shown(o, t), shown(o, RL.loaded[o->id]), shown(o, RL.loaded[o->id]));
        forget(&t);
        return 2;
    }
    log_info("reload: %s = %s (was %s)", o->name, shown(o, t), shown(o, RL.loaded[o->id]));
    swap_field(live, fresh, o);
    forget(&RL.loaded[o->id]);
    RL.loaded[o->id] = t;
    memcpy(start->where[o->id], now->where[o->id], sizeof start->where[o->id]);
    start->layer[o->id] = now->layer[o->id];
    return 1;
}

/* 0: read (applied what may be applied); -1: the file or a value is bad: nothing changed. */
int config_reload(struct config *live)
{
    if (!live->config_file)
        return 0;
    static struct provenance now; /* the fresh load's sources */
    struct config fresh;
    char err[512];
    struct provenance *start = opt_provenance_use(&now);
    int rc = config_load_again(&fresh, RL.argc, RL.argv, err, sizeof err);
    opt_provenance_use(start);
    if (rc) {
        log_error("reload: %s; nothing changed", rc < 0 ? err : "unexpected --help or --version");
        config_free(&fresh);
        return -1;
    }
    int applied = 0, restart = 0;
    for (size_t i = 0; i < config_noptions; i++) {
        int r = reload_one(live, &fresh, &config_options[i], start, &now);
        applied += r == 1;
        restart += r == 2;
    }
    config_free(&fresh);
    /* Before the summary, so that it is logged as the new level and format say. */
    log_set_level(live->log_level);
    log_set_json(live->log_json);
    log_info("reload: %s read: %d change%s applied, %d need%s a restart", live->config_file, applied,
             applied == 1 ? "" : "s", restart, restart == 1 ? "s" : "");
    return 0;
}
