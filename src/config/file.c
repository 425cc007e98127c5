/* The files the configuration reads: the config file (the lowest layer) and the
 * token file (read at start and again on SIGHUP or a reconnect). */
#include "config_int.h"
#include "redact.h"
#include "util.h"
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int config_read_token_file(struct config *cfg, char *err, size_t errlen)
{
    if (!cfg->token_file)
        return 0;
    int fd = open(cfg->token_file, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errorf(err, errlen, "cannot open token file %s: %s", cfg->token_file, strerror(errno));
    char tok[16384];
    ssize_t n = read(fd, tok, sizeof tok - 1);
    close(fd);
    if (n < 0)
        return errorf(err, errlen, "cannot read token file %s: %s", cfg->token_file, strerror(errno));
    if (n == (ssize_t)sizeof tok - 1)
        return errorf(err, errlen, "token file %s is larger than 16 KiB", cfg->token_file);
    tok[n] = '\0';
    /* Files written by editors and `echo` end in a newline that is not part of the token. */
    while (n > 0 && (tok[n - 1] == '\n' || tok[n - 1] == '\r' || tok[n - 1] == ' ' || tok[n - 1] == '\t'))
        tok[--n] = '\0';
    char what[4200];
    snprintf(what, sizeof what, "the gateway token in --token-file %s", cfg->token_file);
    if (config_check_token(cfg, tok, what, err, errlen)) {
        explicit_bzero(tok, sizeof tok);
        return -1;
    }
    set_str(&cfg->token, tok);
    explicit_bzero(tok, sizeof tok);
    secret_add(cfg->token);
    return 0;
}

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1]))
        s[--n] = '\0';
    return s;
}

struct reading {
    const char *path;
    int lineno;
    bool seen[O_LAST];
    bool has_token;
};

/* One "name = value" line (trimmed, not blank, not a comment). */
static int setting(struct config *cfg, struct reading *r, char *l, char *err, size_t errlen)
{
    char *eq = strchr(l, '=');
    if (!eq)
        return errorf(err, errlen, "%s:%d: expected 'option = value'", r->path, r->lineno);
    *eq = '\0';
    char *name = trim(l), *value = trim(eq + 1);
    size_t vn = strlen(value);
    if (vn >= 2 && value[0] == '"' && value[vn - 1] == '"') { /* for values with edge spaces or '#' */
        value[vn - 1] = '\0';
        value++;
    }
    const struct opt *o = opt_by_name(name);
    if (!o || o->type == T_ACTION)
        return errorf(err, errlen, "%s:%d: unknown option '%s' (see --help)", r->path, r->lineno, name);
    if (r->seen[o->id])
        return errorf(err, errlen, "%s:%d: '%s' is set twice", r->path, r->lineno, name);
    r->seen[o->id] = true;
    if (o->type == T_SWITCH) {
        int b = parse_bool(value);
        if (b < 0)
            return errorf(err, errlen, "%s:%d: '%s' wants true or false", r->path, r->lineno, name);
        value = b ? "1" : "0";
    }
    if (o->type == T_SECRET) {
        secret_add(value);
        r->has_token = true;
    }
    char e2[256];
    if (opt_parse(cfg, o, value, e2, sizeof e2))
        return errorf(err, errlen, "%s:%d: %s", r->path, r->lineno, e2);
    char where[300];
    snprintf(where, sizeof where, "%s:%d", r->path, r->lineno);
    opt_note_source(o->id, L_FILE, where);
    return 0;
}

/* The config file: "name = value" lines, names from the option table.  Strict, like
 * the flags: an unknown name, a repeated one or a bad value stops the start with the
 * file and line, rather than running with a setting the operator did not mean. */
int config_load_stream(struct config *cfg, FILE *f, const char *path, char *err, size_t errlen)
{
    struct reading r = {.path = path};
    char *line = NULL;
    size_t cap = 0;
    int rc = 0;
    while (!rc && getline(&line, &cap, f) >= 0) {
        r.lineno++;
        char *l = trim(line);
        if (*l && *l != '#')
            rc = setting(cfg, &r, l, err, errlen);
    }
    if (line) {
        explicit_bzero(line, cap); /* it may have held the token */
        free(line);
    }
    struct stat st;
    int fd = fileno(f);
    if (!rc && r.has_token && fd >= 0 && !fstat(fd, &st) && (st.st_mode & 077))
        log_warn("config file %s holds a token and is readable by group or others (mode %04o); "
                 "chmod 600 it, or use token-file",
                 path, (unsigned)(st.st_mode & 07777));
    return rc;
}

int config_load_file(struct config *cfg, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return errorf(err, errlen, "cannot open config file %s: %s", path, strerror(errno));
    int rc = config_load_stream(cfg, f, path, err, errlen);
    fclose(f);
    return rc;
}
