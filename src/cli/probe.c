/* tgbridge probe live|ready, tgbridge shutdown (probe.h): one blocking HTTP/1.1
 * request over a socket, bounded by one deadline kept with poll(). */
#include "probe.h"
#include "config.h"
#include "util.h"
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_TIMEOUT 0.8

/* Where the request goes. */
struct target {
    const char *what;     /* "admin listener", "TCP listener", "Unix socket" */
    char host[256];       /* TCP: where to connect (a wildcard becomes loopback) */
    int port;
    const char *path;     /* the Unix socket, or NULL */
    char shown[400];      /* for the line printed */
};

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The milliseconds left before deadline (0 when past it). */
static int left_ms(double deadline)
{
    double left = deadline - now();
    return left > 0 ? (int)(left * 1000) + 1 : 0;
}

static void tcp_target(struct target *t, const char *what, const char *host, int port)
{
    t->what = what;
    /* A wildcard listener answers on loopback too, where no token is ever needed. */
    const char *h = !*host || !strcmp(host, "0.0.0.0") ? "127.0.0.1" : !strcmp(host, "::") ? "::1" : host;
    snprintf(t->host, sizeof t->host, "%s", h);
    t->port = port;
    bool v6 = strchr(h, ':') != NULL;
    snprintf(t->shown, sizeof t->shown, "the %s %s%s%s:%d", what, v6 ? "[" : "", h, v6 ? "]" : "", port);
}

/* The admin listener, else the TCP listener (unless on port 0: unknowable), else the
 * Unix socket.  False: nothing to ask. */
static bool pick_target(const struct config *cfg, bool admin_only, struct target *t)
{
    memset(t, 0, sizeof *t);
    if (cfg->admin_port > 0) {
        tcp_target(t, "admin listener", cfg->admin_host, cfg->admin_port);
        return true;
    }
    if (admin_only)
        return false;
    if (cfg->listen_port > 0) {
        tcp_target(t, "TCP listener", cfg->listen_host, cfg->listen_port);
        return true;
    }
    if (!cfg->unix_path)
        return false;
    t->what = "Unix socket";
    t->path = cfg->unix_path;
    snprintf(t->shown, sizeof t->shown, "the Unix socket %s", t->path);
    return true;
}

/* Waits for fd to be ready for events; false (errno ETIMEDOUT) past the deadline. */
static bool wait_for(int fd, short events, double deadline)
{
    for (;;) {
        struct pollfd p = {fd, events, 0};
        int n = poll(&p, 1, left_ms(deadline));
        if (n > 0)
            return true;
        if (n == 0) {
            errno = ETIMEDOUT;
            return false;
        }
        if (errno != EINTR)
            return false;
    }
}

/* A connected socket (non-blocking), or -1 with errno. */
static int connect_addr(int family, const struct sockaddr *sa, socklen_t len, double deadline)
{
    int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (!connect(fd, sa, len))
        return fd;
    int soerr = errno;
    socklen_t sl = sizeof soerr;
    if (errno == EINPROGRESS && wait_for(fd, POLLOUT, deadline) &&
        !getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) && !soerr)
        return fd;
    if (errno != ETIMEDOUT)
        errno = soerr;
    int keep = errno;
    close(fd);
    errno = keep;
    return -1;
}

static int connect_target(const struct target *t, double deadline)
{
    if (t->path) {
        struct sockaddr_un sun = {.sun_family = AF_UNIX};
        if (strlen(t->path) >= sizeof sun.sun_path) {
            errno = ENAMETOOLONG;
            return -1;
        }
        memcpy(sun.sun_path, t->path, strlen(t->path) + 1);
        return connect_addr(AF_UNIX, (struct sockaddr *)&sun, sizeof sun, deadline);
    }
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV}, *ai = NULL;
    char port[16];
    snprintf(port, sizeof port, "%d", t->port);
    int rc = getaddrinfo(t->host, port, &hints, &ai);
    if (rc) {
        errno = EHOSTUNREACH;
        return -1;
    }
    int fd = -1;
    for (struct addrinfo *a = ai; a && fd < 0 && left_ms(deadline); a = a->ai_next)
        fd = connect_addr(a->ai_family, a->ai_addr, a->ai_addrlen, deadline);
    freeaddrinfo(ai);
    return fd;
}

/* Sends req and reads the whole answer (Connection: close) into resp, NUL-ended. */
static int exchange(int fd, const char *req, char *resp, size_t cap, double deadline)
{
    size_t sent = 0, len = strlen(req), got = 0;
    while (sent < len) {
        ssize_t n = send(fd, req + sent, len - sent, MSG_NOSIGNAL);
        if (n > 0)
            sent += (size_t)n;
        else if (n < 0 && errno != EAGAIN && errno != EINTR)
            return -1;
        else if (n < 0 && !wait_for(fd, POLLOUT, deadline))
            return -1;
    }
    for (;;) {
        if (!wait_for(fd, POLLIN, deadline))
            return got ? 0 : -1; /* a partial answer is judged as it is */
        ssize_t n = recv(fd, resp + got, cap - 1 - got, 0);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
        resp[got] = '\0';
        if (got == cap - 1)
            break;
    }
    resp[got] = '\0';
    return 0;
}

/* The answer's status, and in why what its JSON body says (reason, else status). */
static int status_of(const char *resp, char *why, size_t cap)
{
    int status = 0;
    why[0] = '\0';
    if (sscanf(resp, "HTTP/1.%*d %d", &status) != 1)
        return 0;
    const char *body = strstr(resp, "\r\n\r\n");
    cJSON *j = body ? cJSON_Parse(body + 4) : NULL;
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(j, "reason");
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(j, "status");
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "error"), "message");
    const cJSON *pick = cJSON_IsString(r) && *r->valuestring ? r : cJSON_IsString(m) ? m : s;
    if (cJSON_IsString(pick))
        snprintf(why, cap, "%s", pick->valuestring);
    cJSON_Delete(j);
    return status;
}

/* One request; its status (0: no answer, why says so). */
static int ask(const struct target *t, const char *req, double timeout, char *why, size_t cap)
{
    double deadline = now() + timeout;
    int fd = connect_target(t, deadline);
    if (fd < 0) {
        if (errno == ETIMEDOUT)
            snprintf(why, cap, "no connection to %s within %g s", t->shown, timeout);
        else
            snprintf(why, cap, "cannot connect to %s: %s", t->shown, strerror(errno));
        return 0;
    }
    static char resp[64 * 1024];
    int rc = exchange(fd, req, resp, sizeof resp, deadline);
    close(fd);
    if (rc) {
        if (errno == ETIMEDOUT)
            snprintf(why, cap, "no answer from %s within %g s", t->shown, timeout);
        else
            snprintf(why, cap, "%s: %s", t->shown, strerror(errno));
        return 0;
    }
    int status = status_of(resp, why, cap);
    if (!status)
        snprintf(why, cap, "%s sent no HTTP answer", t->shown);
    return status;
}

static int usage(const char *cmd, const char *msg)
{
    if (msg)
        fprintf(stderr, "tgbridge %s: %s\n", cmd, msg);
    fprintf(msg ? stderr : stdout,
            "Usage: tgbridge probe live|ready [--timeout SECONDS] [OPTION]...\n"
            "       tgbridge shutdown [--timeout SECONDS] [OPTION]...\n"
            "probe: GET /healthz (live) or /readyz (ready) of a running tgbridge: its admin\n"
            "listener if --admin-listen is set, else its --listen (unless port 0), else its\n"
            "--unix socket, from the same options, environment and --config as the daemon.\n"
            "shutdown: POST /shutdown to its admin listener (it drains as on SIGTERM).\n"
            "Exit 0: yes; 1: no, or no answer within --timeout (default %g s); 2: usage or\n"
            "configuration error.  The probe reads no token file.\n",
            DEFAULT_TIMEOUT);
    return msg ? 2 : 0;
}

/* Takes --timeout out of args (what is left goes to config_load_client). */
static int take_timeout(int *argc, char **argv, double *timeout, const char *cmd)
{
    int out = 1;
    for (int i = 1; i < *argc; i++) {
        const char *v = NULL;
        if (!strcmp(argv[i], "--timeout") && i + 1 < *argc)
            v = argv[++i];
        else if (!strncmp(argv[i], "--timeout=", 10))
            v = argv[i] + 10;
        else if (!strcmp(argv[i], "--timeout"))
            return usage(cmd, "--timeout needs a value");
        if (!v) {
            argv[out++] = argv[i];
            continue;
        }
        char *e;
        *timeout = strtod(v, &e);
        if (e == v || *e || !(*timeout > 0) || *timeout > 3600)
            return usage(cmd, "--timeout wants seconds, such as 0.8");
    }
    *argc = out;
    return 0;
}

/* "Authorization: Bearer ...\r\n" from --admin-token-file, for an admin listener not
 * on loopback; "" without one. */
static int admin_auth(const struct config *cfg, char *out, size_t cap)
{
    out[0] = '\0';
    if (!cfg->admin_token_file)
        return 0;
    FILE *f = fopen(cfg->admin_token_file, "re");
    char tok[4096];
    if (!f || !fgets(tok, sizeof tok, f)) {
        fprintf(stderr, "tgbridge shutdown: cannot read --admin-token-file %s\n", cfg->admin_token_file);
        if (f)
            fclose(f);
        return -1;
    }
    fclose(f);
    tok[strcspn(tok, "\r\n")] = '\0';
    snprintf(out, cap, "Authorization: Bearer %s\r\n", tok);
    explicit_bzero(tok, sizeof tok);
    return 0;
}

static int run(const char *cmd, const char *which, const struct config *cfg, double timeout)
{
    bool shutdown = !strcmp(cmd, "shutdown");
    struct target t;
    if (!pick_target(cfg, shutdown, &t))
        return usage(cmd, shutdown ? "nothing to ask: tgbridge shutdown needs --admin-listen (with a port)"
                                   : "nothing to ask: no --admin-listen, --listen on port 0 and no --unix");
    static char req[4600];
    char auth[4200] = "";
    if (shutdown && admin_auth(cfg, auth, sizeof auth))
        return 2;
    snprintf(req, sizeof req,
             "%s %s HTTP/1.1\r\nHost: localhost\r\nUser-Agent: tgbridge-%s\r\n%sConnection: close\r\n%s\r\n",
             shutdown ? "POST" : "GET", shutdown ? "/shutdown" : !strcmp(which, "live") ? "/healthz" : "/readyz", cmd,
             auth, shutdown ? "Content-Length: 0\r\n" : "");
    explicit_bzero(auth, sizeof auth);
    char why[512];
    int status = ask(&t, req, timeout, why, sizeof why);
    explicit_bzero(req, sizeof req);
    bool yes = shutdown ? status == 202 || status == 200 : status == 200;
    if (!status)
        printf("%s: %s\n", which, why);
    else if (yes)
        printf("%s: %s (%d from %s)\n", which, shutdown ? "shutting down" : !strcmp(which, "live") ? "alive" : "ready",
               status, t.shown);
    else
        printf("%s: %s (%d from %s)%s%s\n", which, shutdown ? "refused" : !strcmp(which, "live") ? "not alive" : "not ready",
               status, t.shown, why[0] ? ": " : "", why);
    return yes ? 0 : 1;
}

int probe_main(int argc, char **argv)
{
    const char *cmd = argv[1];
    int first = 2;
    const char *which = cmd;
    if (!strcmp(cmd, "probe")) {
        if (argc < 3 || !strcmp(argv[2], "--help") || !strcmp(argv[2], "-h"))
            return usage(cmd, argc < 3 ? "which probe? live or ready" : NULL);
        which = argv[2];
        if (strcmp(which, "live") && strcmp(which, "ready"))
            return usage(cmd, "the probes are live and ready");
        first = 3;
    } else if (argc > 2 && (!strcmp(argv[2], "--help") || !strcmp(argv[2], "-h"))) {
        return usage(cmd, NULL);
    }
    /* The options after the subcommand, as the daemon's argv. */
    int n = argc - first + 1;
    char **args = calloc((size_t)n + 1, sizeof *args);
    if (!args)
        return 2;
    args[0] = argv[0];
    for (int i = first; i < argc; i++)
        args[i - first + 1] = argv[i];
    double timeout = DEFAULT_TIMEOUT;
    int rc = take_timeout(&n, args, &timeout, cmd);
    if (rc) {
        free(args);
        return rc;
    }
    struct config cfg;
    char err[512];
    int loaded = config_load_client(&cfg, n, args, err, sizeof err);
    if (loaded < 0)
        fprintf(stderr, "tgbridge %s: %s\n", cmd, err);
    else if (loaded == 0)
        rc = run(cmd, which, &cfg, timeout);
    config_free(&cfg);
    free(args);
    return loaded < 0 ? 2 : rc;
}
