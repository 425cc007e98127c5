/* The option types: each parses a value into the row's field, formats the field back
 * as the config file spells it (--print-config), and releases what it allocated. */
#include "config_int.h"
#include "redact.h"
#include "util.h"
#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static void *field(struct config *cfg, size_t off)
{
    return (char *)cfg + off;
}

static const void *cfield(const struct config *cfg, size_t off)
{
    return (const char *)cfg + off;
}

/* Integer fields of any width (bool, enum, int, unsigned, size_t), through memcpy so
 * that no field is read through a type it does not have. */
static unsigned long long get_uint(const void *p, size_t size)
{
    uint8_t u8;
    uint16_t u16;
    uint32_t u32;
    uint64_t u64;
    switch (size) {
    case 1: memcpy(&u8, p, 1); return u8;
    case 2: memcpy(&u16, p, 2); return u16;
    case 4: memcpy(&u32, p, 4); return u32;
    default: memcpy(&u64, p, 8); return u64;
    }
}

static void put_uint(void *p, size_t size, unsigned long long v)
{
    uint8_t u8 = (uint8_t)v;
    uint16_t u16 = (uint16_t)v;
    uint32_t u32 = (uint32_t)v;
    uint64_t u64 = v;
    switch (size) {
    case 1: memcpy(p, &u8, 1); break;
    case 2: memcpy(p, &u16, 2); break;
    case 4: memcpy(p, &u32, 4); break;
    default: memcpy(p, &u64, 8); break;
    }
}

void set_str(char **dst, const char *v)
{
    free(*dst);
    *dst = v ? strdup(v) : NULL;
}

int parse_bool(const char *v)
{
    if (!strcasecmp(v, "true") || !strcasecmp(v, "yes") || !strcasecmp(v, "on") || !strcmp(v, "1"))
        return 1;
    if (!strcasecmp(v, "false") || !strcasecmp(v, "no") || !strcasecmp(v, "off") || !strcmp(v, "0"))
        return 0;
    return -1;
}

/* ---- strings ---------------------------------------------------------------------- */

static int parse_string(struct config *cfg, const struct opt *o, const char *v, char *err, size_t errlen)
{
    (void)err, (void)errlen;
    set_str(field(cfg, o->field), v);
    return 0;
}

static const char *str_of(const struct config *cfg, const struct opt *o)
{
    return *(char *const *)cfield(cfg, o->field);
}

static void format_string(const struct config *cfg, const struct opt *o, struct buf *b)
{
    const char *s = str_of(cfg, o);
    if (s)
        buf_puts(b, s);
}

static void format_secret(const struct config *cfg, const struct opt *o, struct buf *b)
{
    const char *s = str_of(cfg, o);
    if (s && *s)
        buf_puts(b, "***"); /* never shown */
}

/* Credentials in a URL: masked. */
static void format_cred_url(const struct config *cfg, const struct opt *o, struct buf *b)
{
    const char *url = str_of(cfg, o);
    if (!url || !*url)
        return;
    const char *start = strstr(url, "://");
    start = start ? start + 3 : url;
    const char *at = strrchr(start, '@');
    if (at && at > start)
        buf_printf(b, "%.*s***%s", (int)(start - url), url, at);
    else
        buf_puts(b, url);
}

static void release_string(struct config *cfg, const struct opt *o)
{
    char **p = field(cfg, o->field);
    if (*p && o->type == T_SECRET)
        explicit_bzero(*p, strlen(*p));
    free(*p);
    *p = NULL;
}

static int parse_socket(struct config *cfg, const struct opt *o, const char *v, char *err, size_t errlen)
{
    (void)err, (void)errlen;
    set_str(field(cfg, o->field), strcmp(v, "none") ? v : NULL);
    *(bool *)field(cfg, o->aux) = true;
    return 0;
}

static void format_socket(const struct config *cfg, const struct opt *o, struct buf *b)
{
    const char *s = str_of(cfg, o);
    buf_puts(b, s ? s : "none");
}

static int parse_gateway(struct config *cfg, const struct opt *o, const char *v, char *err, size_t errlen)
{
    set_str(field(cfg, o->field), v);
    return config_parse_gateway(v, field(cfg, o->aux), err, errlen);
}

/* ---- HOST:PORT -------------------------------------------------------------------- */

static int parse_listen(struct config *cfg, const struct opt *o, const char *s, char *err, size_t errlen)
{
    if (o->def && !strcmp(o->def, "off") && !strcmp(s, "off")) { /* an optional listener: none */
        *(char *)field(cfg, o->field) = '\0';
        *(int *)field(cfg, o->aux) = -1;
        return 0;
    }
    const char *colon = strrchr(s, ':');
    const char *host = s, *port = s;
    size_t hlen = 0;
    if (colon) {
        port = colon + 1;
        hlen = (size_t)(colon - s);
        if (hlen >= 2 && host[0] == '[' && host[hlen - 1] == ']') {
            host++;
            hlen -= 2;
        }
    }
    char *e;
    long p = strtol(port, &e, 10);
    if (!*port || *e || p < 0 || p > 65535 || hlen >= o->size)
        return errorf(err, errlen, "--%s wants HOST:PORT, got '%s'", o->name, s);
    if (hlen) {
        char *h = field(cfg, o->field);
        memcpy(h, host, hlen);
        h[hlen] = '\0';
    }
    *(int *)field(cfg, o->aux) = (int)p;
    return 0;
}

static void format_listen(const struct config *cfg, const struct opt *o, struct buf *b)
{
    const char *host = cfield(cfg, o->field);
    bool v6 = strchr(host, ':') != NULL;
    if (*(const int *)cfield(cfg, o->aux) < 0) {
        buf_printf(b, "off");
        return;
    }
    buf_printf(b, "%s%s%s:%d", v6 ? "[" : "", host, v6 ? "]" : "", *(const int *)cfield(cfg, o->aux));
}

/* ---- booleans and names ------------------------------------------------------------ */

/* A switch: no value (the flag) is on; from the environment or the file, a boolean --
 * TGBRIDGE_INSECURE=false must never turn verification off. */
static int parse_switch(struct config *cfg, const struct opt *o, const char *v, char *err, size_t errlen)
{
    int b = v ? parse_bool(v) : 1;
    if (b < 0)
        return errorf(err, errlen, "--%s wants true or false (1/0, yes/no, on/off), got '%s'", o->name, v);
    put_uint(field(cfg, o->field), o->size, (unsigned)b);
    return 0;
}

static void format_switch(const struct config *cfg, const struct opt *o, struct buf *b)
{
    buf_puts(b, get_uint(cfield(cfg, o->field), o->size) ? "true" : "false");
}

static int parse_onoff(struct config *cfg, const struct opt *o, const char *v, char *err, size_t errlen)
{
    int b = parse_bool(v);
    if (b < 0)
        return errorf(err, errlen, "--%s must be on or off", o->name);
    put_uint(field(cfg, o->field), o->size, (unsigned)b);
    return 0;
}

static void format_onoff(const struct config *cfg, const struct opt *o, struct buf *b)
{
    buf_puts(b, get_uint(cfield(cfg, o->field), o->size) ? "on" : "off");
}

/* "--auth must be auto, query, header or first-frame" */
static int enum_refusal(const struct opt *o, char *err, size_t errlen)
{
    struct buf b;
    buf_init(&b, 0);
    for (size_t i = 0; o->names[i]; i++)
        buf_printf(&b, "%s%s", !i ? "" : o->names[i + 1] ? ", " : " or ", o->names[i]);
    errorf(err, errlen, "--%s must be %s", o->name, buf_ptr(&b));
    buf_free(&b);
    return -1;
}

static int parse_enum(struct config *cfg, const struct opt *o, const char *v, char *err, size_t errlen)
{
    for (size_t i = 0; o->names[i]; i++)
        if (!strcmp(v, o->names[i])) {
            put_uint(field(cfg, o->field), o->size, i);
            return 0;
        }
    return enum_refusal(o, err, errlen);
}

static int parse_log_level(struct config *cfg, const struct opt *o, const char *v, char *err, size_t errlen)
{
    enum log_level l;
    if (log_parse_level(v, &l))
        return enum_refusal(o, err, errlen);
    put_uint(field(cfg, o->field), o->size, (unsigned)l);
    return 0;
}

static void format_enum(const struct config *cfg, const struct opt *o, struct buf *b)
{
    buf_puts(b, o->names[get_uint(cfield(cfg, o->field), o->size)]);
}

/* ---- numbers ------------------------------------------------------------------------ */

static int parse_secs(struct config *cfg, const struct opt *o, const char *v, char *err, size_t errlen)
{
    double *d = field(cfg, o->field);
    if (parse_seconds(v, d))
        return errorf(err, errlen, "option wants seconds (fractions allowed), got '%s'", v);
    if (o->type == T_SECONDS_POS && *d <= 0)
        return errorf(err, errlen, "--%s must be more than 0", o->name);
    return 0;
}

static void format_secs(const struct config *cfg, const struct opt *o, struct buf *b)
{
    buf_printf(b, "%g", *(const double *)cfield(cfg, o->field));
}

static int parse_bytes(struct config *cfg, const struct opt *o, const char *v, char *err, size_t errlen)
{
    size_t *n = field(cfg, o->field);
    if (parse_size(v, n) || *n < (size_t)o->min)
        return errorf(err, errlen, "%s", o->bad ? o->bad : "option wants a size such as 1048576 or 50m");
    return 0;
}

static void format_bytes(const struct config *cfg, const struct opt *o, struct buf *b)
{
    buf_printf(b, "%zu", *(const size_t *)cfield(cfg, o->field));
}

static int parse_count(struct config *cfg, const struct opt *o, const char *v, char *err, size_t errlen)
{
    char *e;
    long n = strtol(v, &e, 10);
    if (!*v || *e || n < 1 || n > 1000000)
        return errorf(err, errlen, "option wants a positive integer, got '%s'", v);
    if (o->max && n > o->max)
        return errorf(err, errlen, "%s", o->bad);
    put_uint(field(cfg, o->field), o->size, (unsigned long long)n);
    return 0;
}

static void format_count(const struct config *cfg, const struct opt *o, struct buf *b)
{
    buf_printf(b, "%llu", get_uint(cfield(cfg, o->field), o->size));
}

static int parse_octal(struct config *cfg, const struct opt *o, const char *v, char *err, size_t errlen)
{
    char *e;
    long n = strtol(v, &e, 8);
    if (!*v || *e || n < 0 || n > 0777)
        return errorf(err, errlen, "--%s wants octal permissions such as 0660", o->name);
    put_uint(field(cfg, o->field), o->size, (unsigned long long)n);
    return 0;
}

static void format_octal(const struct config *cfg, const struct opt *o, struct buf *b)
{
    buf_printf(b, "%04llo", get_uint(cfield(cfg, o->field), o->size));
}

/* ---- lists -------------------------------------------------------------------------- */

static void free_list(struct str_list *l)
{
    for (int i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

/* "a, b,c" → {"a","b","c"}; empty entries are refused. */
static int parse_list(struct config *cfg, const struct opt *o, const char *v, char *err, size_t errlen)
{
    struct str_list *out = field(cfg, o->field);
    free_list(out);
    char *copy = strdup(v), *save = NULL;
    if (!copy)
        abort();
    for (char *t = strtok_r(copy, ", ", &save); t; t = strtok_r(NULL, ", ", &save)) {
        out->v = realloc(out->v, (size_t)(out->n + 1) * sizeof *out->v);
        if (!out->v)
            abort();
        out->v[out->n++] = strdup(t);
    }
    free(copy);
    if (!out->n)
        return errorf(err, errlen, "option wants a comma-separated list, got '%s'", v);
    return 0;
}

static void format_list(const struct config *cfg, const struct opt *o, struct buf *b)
{
    const struct str_list *l = cfield(cfg, o->field);
    for (int i = 0; i < l->n; i++)
        buf_printf(b, "%s%s", i ? "," : "", l->v[i]);
}

bool config_list_has(const struct str_list *l, const char *s)
{
    for (int i = 0; i < l->n; i++)
        if (!strcmp(l->v[i], "*") || !strcasecmp(l->v[i], s))
            return true;
    return false;
}

static void release_list(struct config *cfg, const struct opt *o)
{
    free_list(field(cfg, o->field));
}

/* One user or group, by number or by name, into *id. */
static int parse_id(const char *t, bool groups, unsigned long long *id, char *err, size_t errlen)
{
    const char *what = groups ? "group" : "user";
    char *e;
    errno = 0;
    *id = strtoull(t, &e, 10);
    bool numeric = t[0] >= '0' && t[0] <= '9' && !*e;
    if (numeric && (errno == ERANGE || *id >= (unsigned long long)(uid_t)-1)) {
        /* (uid_t)-1 is "no id"; anything above would wrap to a real one -- root */
        return errorf(err, errlen, "%s id '%s' is out of range", what, t);
    } else if (!numeric) {
        struct group *g = groups ? getgrnam(t) : NULL;
        struct passwd *pw = groups ? NULL : getpwnam(t);
        if (groups ? !g : !pw)
            return errorf(err, errlen, "unknown %s '%s'", what, t);
        *id = groups ? g->gr_gid : pw->pw_uid;
    }
    return 0;
}

/* "alice,1001" → uids; group names for gids. */
static int parse_ids(struct config *cfg, const struct opt *o, const char *v, char *err, size_t errlen)
{
    bool groups = o->type == T_GIDS;
    const char *what = groups ? "group" : "user";
    unsigned *out = field(cfg, o->field);
    int *n = field(cfg, o->aux), cap = (int)(o->size / sizeof *out);
    char *copy = strdup(v), *save = NULL;
    int rc = 0;
    *n = 0;
    for (char *t = strtok_r(copy, ", ", &save); t && !rc; t = strtok_r(NULL, ", ", &save)) {
        unsigned long long id;
        rc = parse_id(t, groups, &id, err, errlen);
        if (!rc && *n >= cap)
            rc = errorf(err, errlen, "more than %d %ss in the list", cap, what);
        if (!rc)
            out[(*n)++] = (unsigned)id;
    }
    free(copy);
    /* An empty list would mean "no restriction": refuse it rather than fail open. */
    if (!rc && *n == 0)
        rc = errorf(err, errlen, "the %s list is empty", what);
    return rc;
}

static void format_ids(const struct config *cfg, const struct opt *o, struct buf *b)
{
    const unsigned *ids = cfield(cfg, o->field);
    int n = *(const int *)cfield(cfg, o->aux);
    for (int i = 0; i < n; i++)
        buf_printf(b, "%s%u", i ? "," : "", ids[i]);
}

/* ---- the types ---------------------------------------------------------------------- */

typedef int parse_fn(struct config *, const struct opt *, const char *, char *, size_t);
typedef void format_fn(const struct config *, const struct opt *, struct buf *);
typedef void release_fn(struct config *, const struct opt *);

static const struct {
    parse_fn *parse;
    format_fn *format;
    release_fn *release;
} types[] = {
    [T_ACTION] = {NULL, NULL, NULL},
    [T_STRING] = {parse_string, format_string, release_string},
    [T_PATH] = {parse_string, format_string, release_string},
    [T_SECRET] = {parse_string, format_secret, release_string},
    [T_CRED_URL] = {parse_string, format_cred_url, release_string},
    [T_SOCKET] = {parse_socket, format_socket, release_string},
    [T_GATEWAY] = {parse_gateway, format_string, release_string},
    [T_LISTEN] = {parse_listen, format_listen, NULL},
    [T_SWITCH] = {parse_switch, format_switch, NULL},
    [T_ONOFF] = {parse_onoff, format_onoff, NULL},
    [T_ENUM] = {parse_enum, format_enum, NULL},
    [T_LOG_LEVEL] = {parse_log_level, format_enum, NULL},
    [T_SECONDS] = {parse_secs, format_secs, NULL},
    [T_SECONDS_POS] = {parse_secs, format_secs, NULL},
    [T_BYTES] = {parse_bytes, format_bytes, NULL},
    [T_COUNT] = {parse_count, format_count, NULL},
    [T_OCTAL] = {parse_octal, format_octal, NULL},
    [T_LIST] = {parse_list, format_list, release_list},
    [T_UIDS] = {parse_ids, format_ids, NULL},
    [T_GIDS] = {parse_ids, format_ids, NULL},
};

int opt_parse(struct config *cfg, const struct opt *o, const char *v, char *err, size_t errlen)
{
    return types[o->type].parse ? types[o->type].parse(cfg, o, v, err, errlen) : 0;
}

void opt_format(const struct config *cfg, const struct opt *o, struct buf *b)
{
    if (types[o->type].format)
        types[o->type].format(cfg, o, b);
}

void opt_release(struct config *cfg, const struct opt *o)
{
    if (types[o->type].release)
        types[o->type].release(cfg, o);
}

bool opt_default_allocates(const struct opt *o)
{
    return types[o->type].release != NULL;
}
