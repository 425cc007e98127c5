#include "access.h"
#include "log.h"
#include "redact.h"
#include "util.h"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

static struct {
    const struct config *cfg;
    char *token; /* the local client token, or NULL */
} A;

static int read_token(char *err, size_t errlen)
{
    if (!A.cfg->client_token_file)
        return 0;
    int fd = open(A.cfg->client_token_file, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "cannot open --client-token-file %s: %s", A.cfg->client_token_file, strerror(errno));
        return -1;
    }
    char tok[4096];
    ssize_t n = read(fd, tok, sizeof tok - 1);
    close(fd);
    if (n < 0 || n == (ssize_t)sizeof tok - 1) {
        snprintf(err, errlen, "cannot read --client-token-file %s (or it is over 4 KiB)", A.cfg->client_token_file);
        return -1;
    }
    while (n > 0 && (tok[n - 1] == '\n' || tok[n - 1] == '\r' || tok[n - 1] == ' ' || tok[n - 1] == '\t'))
        n--;
    tok[n] = '\0';
    if (!n) {
        snprintf(err, errlen, "--client-token-file %s is empty", A.cfg->client_token_file);
        return -1;
    }
    char what[4200];
    snprintf(what, sizeof what, "the client token in --client-token-file %s", A.cfg->client_token_file);
    if (config_check_token(A.cfg, tok, what, err, errlen)) {
        explicit_bzero(tok, sizeof tok);
        return -1;
    }
    secret_add(tok);
    if (A.token)
        explicit_bzero(A.token, strlen(A.token));
    free(A.token);
    A.token = strdup(tok);
    explicit_bzero(tok, sizeof tok);
    return A.token ? 0 : -1;
}

int access_init(const struct config *cfg, char *err, size_t errlen)
{
    A.cfg = cfg;
    return read_token(err, errlen);
}

void access_reload(void)
{
    char err[300];
    if (A.cfg->client_token_file && read_token(err, sizeof err))
        log_error("SIGHUP: %s; keeping the client token as it was", err);
}

/* "[::1]:8089" -> "::1", "localhost:8089" -> "localhost". */
static void host_of(const char *v, char *out, size_t cap)
{
    size_t n;
    if (*v == '[') {
        v++;
        n = strcspn(v, "]");
    } else {
        const char *colon = strrchr(v, ':');
        n = colon && !strchr(colon + 1, ':') ? (size_t)(colon - v) : strlen(v);
    }
    snprintf(out, cap, "%.*s", (int)(n < cap ? n : cap - 1), v);
}

static bool is_wildcard(const char *host)
{
    return !*host || !strcmp(host, "0.0.0.0") || !strcmp(host, "::");
}

/* Logged once per origin or host (up to a few dozen), then at most every 10 s. */
static void log_refusal(const struct refusal *r)
{
    static char *seen[32];
    static struct log_limit limit;
    for (size_t i = 0; i < sizeof seen / sizeof *seen; i++) {
        if (seen[i] && !strcmp(seen[i], r->message))
            return;
        if (!seen[i]) {
            seen[i] = strdup(r->message);
            log_warn("refused (%s): %s", r->type, r->message);
            return;
        }
    }
    unsigned long held;
    if (log_limit_ok(&limit, 10, &held))
        log_warn("refused (%s): %s (%lu more since the last report)", r->type, r->message, held);
}

/* A browser page on any site can send requests to a loopback port, and with DNS
 * rebinding read the answers (README "Security"): requests from web origins not
 * allowed, and Host names that are not this machine's, are refused. */
bool access_browser_refused(const char *origin, const char *host, bool unix_peer, struct refusal *r)
{
    if (origin && !config_list_has(&A.cfg->allow_origin, origin)) {
        r->status = 403;
        r->type = "forbidden-origin";
        snprintf(r->message, sizeof r->message,
                 "requests from the web origin %.200s are refused (not in --allow-origin)", origin);
        log_refusal(r);
        return true;
    }
    if (unix_peer || !host) /* no browser reaches a Unix socket; HTTP/1.0 may omit Host */
        return false;
    char name[256];
    host_of(host, name, sizeof name);
    if (host_is_loopback(name) || (!is_wildcard(A.cfg->listen_host) && !strcasecmp(name, A.cfg->listen_host)) ||
        config_list_has(&A.cfg->allow_host, name))
        return false;
    r->status = 403;
    r->type = "forbidden-host";
    snprintf(r->message, sizeof r->message, "the Host %.200s is not this machine's name (see --allow-host)", host);
    log_refusal(r);
    return true;
}

bool access_token_required(void)
{
    return A.token != NULL;
}

bool access_token_ok(const char *token, size_t len)
{
    if (!A.token)
        return true;
    if (!token)
        return false;
    /* Constant time in the token's content: every byte of the longer one is looked at. */
    size_t want = strlen(A.token), n = len > want ? len : want;
    unsigned char diff = (unsigned char)(len != want);
    for (size_t i = 0; i < n; i++)
        diff |= (unsigned char)((i < len ? token[i] : 0) ^ (i < want ? A.token[i] : 0));
    return diff == 0;
}

const char *access_bearer(const char *authorization, size_t len, size_t *tlen)
{
    if (!authorization || len < 7 || strncasecmp(authorization, "Bearer ", 7))
        return NULL;
    *tlen = len - 7;
    return authorization + 7;
}

/* ?token= as the gateway reads it (decoded, '+' as a space: ref Q20), or as sent (the
 * clients that put it there do not encode it). */
bool access_token_ok_encoded(const char *p, size_t n)
{
    if (access_token_ok(p, n))
        return true;
    char dec[4096];
    size_t o = 0;
    for (size_t i = 0; i < n && o + 1 < sizeof dec; i++) {
        int hi, lo;
        if (p[i] == '%' && i + 2 < n && (hi = hex_value(p[i + 1])) >= 0 && (lo = hex_value(p[i + 2])) >= 0) {
            dec[o++] = (char)(hi * 16 + lo);
            i += 2;
        } else {
            dec[o++] = p[i] == '+' ? ' ' : p[i];
        }
    }
    bool ok = access_token_ok(dec, o);
    explicit_bzero(dec, sizeof dec);
    return ok;
}
