/* Private to src/config: the option table and what its files share.
 *
 * options.c  the table (one row per option: names, type, field, default, reload, help)
 * types.c    one parse, format and release function per type, driven by a row
 * load.c     defaults < config file < environment < flags, the checks across options
 * file.c     the config file reader
 * url.c      the gateway URL
 * proxy.c    the proxy URL and the choice of proxy (a leaf: it knows no table)
 * print.c    --help and --print-config */
#ifndef TGB_CONFIG_INT_H
#define TGB_CONFIG_INT_H
#include "buf.h"
#include "config.h"
#include <stddef.h>

#ifndef TGB_VERSION
#define TGB_VERSION "0.1.0"
#endif

enum opt_id {
    O_GATEWAY = 1, O_TOKEN, O_TOKEN_FILE, O_AUTH, O_LISTEN, O_MAX_BODY, O_REQUEST_TIMEOUT,
    O_QUEUE_TIMEOUT, O_HEARTBEAT, O_RECONNECT_MIN, O_RECONNECT_MAX, O_PING_INTERVAL,
    O_PING_TIMEOUT, O_CONNECT_TIMEOUT, O_DRAIN_TIMEOUT, O_MAX_INFLIGHT, O_MAX_QUEUE, O_WORKSPACE,
    O_CA_FILE, O_CA_ONLY, O_INSECURE, O_PROXY, O_LOG_LEVEL, O_LOG_FORMAT, O_ACCESS_LOG,
    O_MAX_CONNECTIONS, O_MAX_CALLER_POOLS, O_MAX_UPSTREAM_CONNECTIONS, O_CONNECTION_IDLE, O_CLIENT_TIMEOUT, O_MAX_PENDING, O_CLIENT_TOKEN_FILE,
    O_MAX_WS_CLIENTS, O_MAX_PASSTHROUGH, O_ALLOW_ORIGIN, O_ALLOW_HOST, O_UNIX, O_UNIX_MODE,
    O_UNIX_GROUP, O_UNIX_ALLOW_UID, O_UNIX_ALLOW_GID, O_MAX_LINE, O_MAX_CLIENT_BUFFER, O_MAX_ASSEMBLING, O_ALLOW_SHORT_TOKEN,
    O_CLOSE_TIMEOUT, O_POLICY, O_CONFIG,
    O_PRINT_CONFIG, O_CHECK_CONFIG, O_HELP, O_VERSION, O_ADMIN_LISTEN, O_ADMIN_TOKEN_FILE, O_LAST
};

/* What a value is: each type has one parser, one formatter (the config-file spelling
 * --print-config shows) and one release (types.c). */
enum opt_type {
    T_ACTION,      /* a command (--help, --config, ...): no setting, not in the file */
    T_STRING,      /* char *, any text */
    T_PATH,        /* char *, a file name */
    T_SECRET,      /* char *, never shown; registered for redaction; scrubbed from argv */
    T_CRED_URL,    /* char *, a URL whose user:password@ is masked and scrubbed */
    T_SOCKET,      /* char *, a path or "none" (NULL); aux: bool, given explicitly */
    T_GATEWAY,     /* char *, as given; aux: struct gateway_url */
    T_LISTEN,      /* char[], the host; aux: int, the port */
    T_SWITCH,      /* bool: a flag without value; a boolean in the environment or file */
    T_ONOFF,       /* bool: on | off (any boolean spelling) */
    T_ENUM,        /* an integer: the index of the value in names[] */
    T_LOG_LEVEL,   /* enum log_level: names[] and log.c's aliases */
    T_SECONDS,     /* double, >= 0, fractions allowed */
    T_SECONDS_POS, /* double, > 0 */
    T_BYTES,       /* size_t: 1048576, 50m, 64KiB ...; at least min */
    T_COUNT,       /* int or size_t: 1..1000000; at most max if set */
    T_OCTAL,       /* unsigned: permission bits */
    T_LIST,        /* struct str_list: comma-separated words */
    T_UIDS,        /* unsigned[]: user names or ids; aux: int, how many */
    T_GIDS,        /* unsigned[]: group names or ids; aux: int, how many */
};

/* Whether SIGHUP may apply a change.  RELOAD_RESTART is the zero value, so an option
 * is not reloadable until its row says so.  RELOAD_FILE: SIGHUP re-reads the file the
 * option names (reload.c: access_reload, upstream_reload_token); a changed name still
 * needs a restart.  RELOAD_APPLY: config_reload copies a changed value into the live
 * struct config, and every module reads that field where a new call, connection or
 * timer uses it (none keeps a copy made at start). */
enum opt_reload { RELOAD_RESTART = 0, RELOAD_FILE, RELOAD_APPLY };

struct opt {
    enum opt_id id;
    const char *name;     /* --name, and the config file's key */
    const char *arg;      /* the value's placeholder in --help; NULL: a switch or action */
    const char *env;      /* the environment variable, if any */
    enum opt_type type;
    size_t field, size;   /* offset and width of the setting in struct config */
    size_t aux;           /* offset of the second field some types fill */
    const char *def;      /* the default, spelled as a value; NULL: unset */
    enum opt_reload reload;
    long long min, max;   /* T_BYTES: the least; T_COUNT: the most (0: no own limit) */
    const char *bad;      /* the refusal when min or max is not met, if not the type's */
    const char *const *names; /* T_ENUM, T_LOG_LEVEL: the values, by number */
    const char *env_alt;  /* a second variable read when env is unset or empty */
    enum opt_id from;     /* set nowhere yet holding a value: it came from the file this
                           * (string) option names; 0: none */
    const char *help;
};

#define F(x) .field = offsetof(struct config, x), .size = sizeof(((struct config *)0)->x)
#define AUX(x) .aux = offsetof(struct config, x)

/* options.c */
extern const struct opt config_options[];
extern const size_t config_noptions;
const struct opt *opt_by_id(enum opt_id id);
const struct opt *opt_by_name(const char *name);

/* types.c */
int opt_parse(struct config *cfg, const struct opt *o, const char *v, char *err, size_t errlen);
void opt_format(const struct config *cfg, const struct opt *o, struct buf *b);
void opt_release(struct config *cfg, const struct opt *o);
/* The type's default allocates (a string): config_defaults leaves those to config_load,
 * so that a struct it filled holds nothing to free. */
bool opt_default_allocates(const struct opt *o);
int parse_bool(const char *v);
void set_str(char **dst, const char *v);

/* file.c */
int config_load_file(struct config *cfg, const char *path, char *err, size_t errlen);

/* load.c: where each option's value came from ("" = the default), for --print-config,
 * and from which layer, for a reload (an option set by the environment or a flag keeps
 * that value).  One provenance per load: a reload fills its own and merges what it
 * applies into the first's. */
enum opt_layer { L_DEFAULT = 0, L_FILE, L_ENV, L_FLAG };
struct provenance {
    char where[O_LAST][300];
    unsigned char layer[O_LAST];
};
const char *opt_source(enum opt_id id);
enum opt_layer opt_layer_of(enum opt_id id);
void opt_note_source(enum opt_id id, enum opt_layer layer, const char *where);
/* Makes p the provenance loads write to; returns the one used until now. */
struct provenance *opt_provenance_use(struct provenance *p);
/* config_load again for a reload: the same layers, but the secrets already scrubbed from
 * argv and the environment are not read back (their options keep their live values), the
 * proxy is not decided again and the token file is left to upstream_reload_token. */
int config_load_again(struct config *cfg, int argc, char **argv, char *err, size_t errlen);

/* url.c: a host as lws and getaddrinfo() take it. */
bool host_chars_ok(const char *h, size_t n, bool bracketed);

/* proxy.c */
/* Registers the credentials in a proxy URL, as written and as sent, as secrets. */
void proxy_add_secrets(const char *url);
/* The decision for cfg->via_proxy from --proxy (cfg->proxy) and the environment. */
int proxy_decide(struct config *cfg, char *err, size_t errlen);
/* The user:password@ of a URL, overwritten in place (argv, the environment). */
void proxy_scrub_userinfo(char *url);
#endif
