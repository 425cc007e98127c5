/* The config file parser (src/config/file.c config_load_stream) on the input as a file, read
 * through fmemopen over what config_defaults set.
 *
 * Properties: no crash, no leak (config_free, then secrets_clear: redact.c keeps
 * every secret for the life of the process, and a token line registers one); the
 * result is 0 or -1; a failure leaves a NUL-terminated message naming the file; a
 * success leaves every setting within the bounds its option enforces, numeric uid
 * and gid lists kept exactly, and a non-empty token registered as a secret.
 *
 * unix-allow-uid / unix-allow-gid look names up in the user database (getpwnam,
 * getgrnam): inputs setting them are still parsed, but only with numeric lists, so a
 * run never waits on NSS (see numeric_ids). */
#include "config.h"
#include "fuzz_common.h"
#include "fuzz_url_checks.h"
#include "redact.h"
#include <ctype.h>
#include <errno.h>
#include <math.h>

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1]))
        s[--n] = '\0';
    return s;
}

/* Calls fn(name, value, arg) for each "name = value" line as config_load_stream reads
 * it (cut at a NUL, trimmed, one pair of quotes dropped) until fn returns false. */
static bool each_setting(const char *s, size_t n, bool (*fn)(const char *, const char *, void *), void *arg)
{
    char *buf = malloc(n + 1);
    FUZZ_CHECK(buf != NULL);
    bool go = true;
    for (size_t i = 0; go && i < n;) {
        const char *nl = memchr(s + i, '\n', n - i);
        size_t end = nl ? (size_t)(nl - s) : n;
        memcpy(buf, s + i, end - i);
        buf[end - i] = '\0';
        i = end + 1;
        char *l = trim(buf), *eq = strchr(l, '=');
        if (!*l || *l == '#' || !eq)
            continue;
        *eq = '\0';
        char *name = trim(l), *value = trim(eq + 1);
        size_t vn = strlen(value);
        if (vn >= 2 && value[0] == '"' && value[vn - 1] == '"') {
            value[vn - 1] = '\0';
            value++;
        }
        go = fn(name, value, arg);
    }
    free(buf);
    return go;
}

static bool is_id_option(const char *name)
{
    return !strcmp(name, "unix-allow-uid") || !strcmp(name, "unix-allow-gid");
}

/* False for a unix-allow-uid/gid value holding anything but digits, commas and
 * spaces: that would go to getpwnam/getgrnam. */
static bool numeric_ids(const char *name, const char *value, void *arg)
{
    (void)arg;
    return !is_id_option(name) || strspn(value, "0123456789, ") == strlen(value);
}

struct id_list {
    const char *opt;
    char value[4096];
    bool found;
};

static bool find_ids(const char *name, const char *value, void *arg)
{
    struct id_list *l = arg;
    if (strcmp(name, l->opt))
        return true;
    l->found = strlen(value) < sizeof l->value;
    if (l->found)
        strcpy(l->value, value);
    return false; /* the first is the one applied: a second fails the load */
}

/* A numeric uid/gid list that was accepted is kept number for number: an id past
 * 2^32 - 1 is refused, not truncated (4294967296 must not become 0, root). */
static void check_ids(const char *s, size_t n, const char *opt, const unsigned *ids, int nids)
{
    struct id_list l = {opt, "", false};
    each_setting(s, n, find_ids, &l);
    if (!l.found)
        return;
    int k = 0;
    char *save = NULL;
    for (char *t = strtok_r(l.value, ", ", &save); t; t = strtok_r(NULL, ", ", &save), k++) {
        FUZZ_CHECK(k < nids);
        errno = 0;
        unsigned long long want = strtoull(t, NULL, 10);
        FUZZ_CHECK(errno == 0 && want <= 0xffffffffull && ids[k] == want);
    }
    FUZZ_CHECK(k == nids);
}

static bool timeout_ok(double s)
{
    return isfinite(s) && s >= 0;
}

static void check_list(const struct str_list *l)
{
    FUZZ_CHECK(l->n >= 0 && (l->n == 0 || l->v));
    for (int i = 0; i < l->n; i++)
        FUZZ_CHECK(l->v[i] && l->v[i][0] && !strpbrk(l->v[i], ", "));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0 || !each_setting((const char *)data, size, numeric_ids, NULL))
        return 0;
    char *copy = fz_copy(data, size, false);
    FILE *f = fmemopen(copy, size, "r");
    FUZZ_CHECK(f != NULL);
    struct config cfg;
    config_defaults(&cfg);
    char err[512];
    memset(err, 'x', sizeof err);
    int rc = config_load_stream(&cfg, f, "fuzz.conf", err, sizeof err);
    fclose(f);
    FUZZ_CHECK(rc == 0 || rc == -1);
    if (rc) {
        FUZZ_CHECK(fz_terminated(err, sizeof err));
        FUZZ_CHECK(!strncmp(err, "fuzz.conf:", 10));
    } else {
        if (cfg.gateway)
            fz_check_gateway(&cfg.gw);
        FUZZ_CHECK(cfg.auth == AUTH_AUTO || cfg.auth == AUTH_QUERY || cfg.auth == AUTH_HEADER ||
                   cfg.auth == AUTH_FIRST_FRAME);
        FUZZ_CHECK(fz_terminated(cfg.listen_host, sizeof cfg.listen_host));
        FUZZ_CHECK(cfg.listen_port >= 0 && cfg.listen_port <= 65535);
        FUZZ_CHECK(cfg.max_body > 0);
        FUZZ_CHECK(timeout_ok(cfg.request_timeout) && timeout_ok(cfg.queue_timeout) && timeout_ok(cfg.heartbeat));
        FUZZ_CHECK(timeout_ok(cfg.reconnect_min) && timeout_ok(cfg.reconnect_max));
        FUZZ_CHECK(timeout_ok(cfg.ping_interval) && timeout_ok(cfg.ping_timeout) && timeout_ok(cfg.drain_timeout));
        FUZZ_CHECK(timeout_ok(cfg.connect_timeout) && cfg.connect_timeout > 0);
        FUZZ_CHECK(timeout_ok(cfg.client_timeout) && cfg.client_timeout > 0);
        FUZZ_CHECK(cfg.max_inflight >= 1 && cfg.max_inflight <= 16);
        FUZZ_CHECK(cfg.max_queue >= 1 && cfg.max_queue <= 1000000);
        FUZZ_CHECK(cfg.log_level >= LOG_ERROR && cfg.log_level <= LOG_DEBUG);
        FUZZ_CHECK(cfg.unix_mode <= 0777);
        FUZZ_CHECK(cfg.n_allow_uid >= 0 && cfg.n_allow_uid <= 32 && cfg.n_allow_gid >= 0 && cfg.n_allow_gid <= 32);
        check_ids((const char *)data, size, "unix-allow-uid", cfg.allow_uid, cfg.n_allow_uid);
        check_ids((const char *)data, size, "unix-allow-gid", cfg.allow_gid, cfg.n_allow_gid);
        FUZZ_CHECK(cfg.max_line >= 64 && cfg.max_client_buffer >= 64);
        check_list(&cfg.allow_origin);
        check_list(&cfg.allow_host);
        if (cfg.token && cfg.token[0])
            FUZZ_CHECK(secret_count() > 0);
        FUZZ_CHECK(cfg.via_proxy == NULL); /* only config_load decides that */
    }
    config_free(&cfg);
    secrets_clear();
    free(copy);
    return 0;
}
