/* tgbridge: one authenticated WebSocket to a TrustGraph gateway, served locally as
 * REST with streaming.  main() wires the modules together; see docs/design.md. */
#include "access.h"
#include "callrec.h"
#include "activation.h"
#include "config.h"
#include "dial.h"
#include "filewatch.h"
#include "frontend.h"
#include "health.h"
#include "line_proto.h"
#include "listener.h"
#include "log.h"
#include "loop.h"
#include "logpump.h"
#include "mux.h"
#include "passthrough.h"
#include "policy.h"
#include "probe.h"
#include "redact.h"
#include "reload.h"
#include "resolver.h"
#include "rest.h"
#include "sdnotify.h"
#include "unix_listener.h"
#include "guard.h"
#include "upstream.h"
#include "util.h"
#include "ws.h"
#include "wssock.h"
#include "wspass.h"
#include <libwebsockets.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

static struct config cfg;
static struct listener *rest_listener;
static struct listener *admin_listener;
static struct unix_listener *unix_listener;
static bool draining;
static double drain_deadline;
static struct timer drain_timer;

static struct timer close_timer;
static double close_deadline;

static size_t active_calls(void)
{
    struct frontend_stats all;
    frontend_totals(&all);
    return all.active;
}

/* Waits (briefly) for the upstream close handshake before leaving the loop. */
static void close_check(struct timer *t)
{
    (void)t;
    /* The calls just failed still need their answers written. */
    struct frontend_stats all;
    frontend_totals(&all);
    bool flushed = all.active == 0 && all.unsent == 0;
    if ((upstream_closed() && flushed) || now_mono() >= close_deadline) {
        loop_stop();
        return;
    }
    timer_after(&close_timer, 0.02, close_check);
}

static void finish(void)
{
    for (size_t i = 0; frontend_at(i); i++)
        frontend_at(i)->fail_all("shutting-down", "tgbridge is shutting down");
    for (size_t i = 0; frontend_at(i); i++)
        if (frontend_at(i)->close_all)
            frontend_at(i)->close_all();
    upstream_stop();
    close_deadline = now_mono() + 1.0;
    close_check(NULL);
}

static void drain_check(struct timer *t)
{
    (void)t;
    if (active_calls() == 0 || now_mono() >= drain_deadline) {
        finish();
        return;
    }
    timer_after(&drain_timer, 0.05, drain_check);
}

static void begin_shutdown(const char *why)
{
    if (draining) {
        log_info("second signal: stopping now");
        finish();
        return;
    }
    draining = true;
    char status[160];
    snprintf(status, sizeof status, "%s: draining %zu call(s)", why, active_calls());
    sdnotify_stopping(status);
    listener_close(rest_listener);
    rest_listener = NULL;
    listener_close(admin_listener);
    admin_listener = NULL;
    unix_listener_close(unix_listener);
    unix_listener = NULL;
    log_info("%s: no longer accepting; waiting up to %.3g s for %zu call(s) to finish", why, cfg.drain_timeout,
             active_calls());
    drain_deadline = now_mono() + cfg.drain_timeout;
    drain_check(NULL);
}

static void on_signal(void *arg)
{
    int fd = *(int *)arg;
    struct signalfd_siginfo si;
    while (read(fd, &si, sizeof si) == (ssize_t)sizeof si) {
        switch (si.ssi_signo) {
        case SIGTERM: case SIGINT:
            begin_shutdown(si.ssi_signo == SIGINT ? "SIGINT" : "SIGTERM");
            break;
        case SIGHUP:
            reload_all("SIGHUP");
            break;
        default:
            break;
        }
    }
}

/* POST /shutdown on the admin listener: after its answer has left, as SIGTERM. */
static struct timer shutdown_timer;
static void shutdown_now(struct timer *t)
{
    (void)t;
    begin_shutdown("POST /shutdown");
}

static void shutdown_requested(void)
{
    if (!draining)
        timer_after(&shutdown_timer, 0, shutdown_now);
}

/* A watched secret changed: what SIGHUP does for that file (docs/operations.md). */
static void upstream_changed(bool ready, const char *what)
{
    char status[700];
    snprintf(status, sizeof status, ready ? "gateway connected (era %s)" : "gateway not ready: %s", what);
    sdnotify_status(status);
}

static int setup_signals(void)
{
    signal(SIGPIPE, SIG_IGN);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    if (sigprocmask(SIG_BLOCK, &set, NULL))
        return -1;
    static int sfd;
    sfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (sfd < 0 || !loop_watch_fd(sfd, on_signal, &sfd))
        return -1;
    return 0;
}

/* Every module, in the order that matters: the lws protocols before the loop's
 * context is made with them; the status sources in the order /status and /metrics
 * show them (the upstream, the requests, the front ends, the pass-through, the
 * calls).  0, or the exit code. */
static int start_modules(void)
{
    upstream_register_protocol();
    line_register_protocol();
    wssock_register_protocol();
    passthrough_register_protocol();
    wspass_register_protocol();
    if (loop_init(&cfg) || setup_signals() || resolver_init()) {
        log_error("cannot set up the event loop");
        return 1;
    }
    sdnotify_init();
    if (upstream_init(loop_ctx(), &cfg))
        return 1;
    static const struct mux_sink upstream_sink = {
        .sendable = upstream_sendable, .lane_for = upstream_lane_for, .lane_reason = upstream_lane_reason, .ready = upstream_ready,
        .reason = upstream_reason, .default_workspace = upstream_default_workspace,
        .window_used = upstream_window_used};
    mux_init(&cfg, &upstream_sink);
    guard_init(&cfg);
    health_init();
    frontend_status_register();
    passthrough_init(loop_ctx(), &cfg);
    callrec_init(&cfg);
    line_init(&cfg);
    listener_init(&cfg);
    dial_init(loop_ctx(), &cfg);
    if (rest_init(&cfg) || ws_init(loop_ctx(), &cfg) ||
        wspass_init(loop_ctx(), &cfg))
        return 1;
    if (logpump_init()) {
        log_error("cannot hook the log onto the event loop");
        return 1;
    }
    return 0;
}

/* The admin listener, if configured or handed over by systemd.  0, or the exit code. */
static int open_admin(int adopted_fd)
{
    char err[512];
    admin_listener = listener_admin(&cfg, adopted_fd, err, sizeof err);
    if (!admin_listener && err[0]) {
        log_error("%s", err);
        return 1;
    }
    rest_on_shutdown(shutdown_requested);
    bool v6 = strchr(cfg.admin_host, ':') != NULL;
    if (admin_listener)
        log_info("admin listener on %s%s%s:%d%s", v6 ? "[" : "", cfg.admin_host, v6 ? "]" : "", cfg.admin_port,
                 adopted_fd >= 0 ? " (from systemd)" : "");
    return 0;
}

/* The REST listener and the Unix socket, systemd's if it handed them over.  0, or
 * the exit code. */
static int open_listeners(int *port)
{
    char err[512];
    struct activation act;
    if (activation_take(&act, err, sizeof err)) {
        log_error("%s", err);
        return 1;
    }
    if (act.rest_fd >= 0) {
        /* systemd's socket: its address is the listen address (the Host rules use it). */
        rest_listener = listener_tcp_adopt(act.rest_fd, cfg.listen_host, sizeof cfg.listen_host, port, err,
                                           sizeof err);
        cfg.listen_port = *port;
    } else {
        rest_listener = listener_tcp(cfg.listen_host, cfg.listen_port, port, err, sizeof err);
    }
    if (!rest_listener) {
        log_error("%s", err);
        return 1;
    }
    static char adopted_path[108];
    if (act.unix_fd >= 0) {
        unix_listener = unix_listener_adopt(&cfg, act.unix_fd, adopted_path, sizeof adopted_path, err, sizeof err);
        if (unix_listener) {
            free(cfg.unix_path);
            cfg.unix_path = strdup(adopted_path);
        }
    } else {
        unix_listener = unix_listener_open(&cfg, err, sizeof err);
    }
    if (!unix_listener && err[0]) {
        log_error("%s", err);
        return 1;
    }
    if (open_admin(act.admin_fd))
        return 1;
    if (act.rest_fd >= 0 || act.unix_fd >= 0)
        log_info("socket activation: took over %s%s%s from systemd", act.rest_fd >= 0 ? "the REST listener" : "",
                 act.rest_fd >= 0 && act.unix_fd >= 0 ? " and " : "", act.unix_fd >= 0 ? "the Unix socket" : "");
    return 0;
}

/* Serves until a signal stops the loop, then takes everything down. */
static void serve(int port)
{
    bool v6 = strchr(cfg.listen_host, ':') != NULL;
    char gw[80]; /* none given: the candidates (upstream logs the one found) */
    snprintf(gw, sizeof gw, "(discover: %s, %s)", gateway_candidates[0], gateway_candidates[1]);
    log_info("listening rest=%s%s%s:%d unix=%s gateway=%s auth=%s", v6 ? "[" : "", cfg.listen_host, v6 ? "]" : "",
             port, cfg.unix_path ? cfg.unix_path : "none", cfg.gateway_discover ? gw : cfg.gateway,
             auth_mode_name(cfg.auth));
    upstream_on_change(upstream_changed);
    char status[300];
    snprintf(status, sizeof status, "listening on %s%s%s:%d; connecting to the gateway", v6 ? "[" : "",
             cfg.listen_host, v6 ? "]" : "", port);
    /* Ready means serving: callers get answers (503s included) from now on; whether the
     * gateway is there is /readyz's business, and STATUS= follows it. */
    sdnotify_ready(status);
    upstream_start();
    reload_watch_secrets();
    loop_run();
    filewatch_stop();
    sdnotify_close();
    unix_listener_close(unix_listener);
    rest_shutdown();
    mux_stop_timers();
    loop_destroy();
    mux_shutdown();
    log_info("stopped");
}

int main(int argc, char **argv)
{
    if (argc > 1 && (!strcmp(argv[1], "probe") || !strcmp(argv[1], "shutdown")))
        return probe_main(argc, argv);
    char err[512];
    int rc = config_load(&cfg, argc, argv, err, sizeof err);
    if (rc > 0)
        return 0;
    if (rc < 0) {
        fprintf(stderr, "tgbridge: %s\n", err);
        return 2;
    }
    log_set_level(cfg.log_level);
    log_set_json(cfg.log_json);
    reload_init(&cfg, argc, argv);
    if (access_init(&cfg, err, sizeof err) || policy_init(&cfg, err, sizeof err)) {
        fprintf(stderr, "tgbridge: %s\n", err);
        return 2;
    }
    policy_set_era(upstream_era);
    if (cfg.print_config) {
        config_print(&cfg, stdout);
        return 0;
    }
    if (cfg.check_config) {
        printf("tgbridge: the configuration is valid\n");
        return 0;
    }
    if (cfg.insecure)
        log_warn("--insecure: the gateway's TLS certificate is NOT verified; anyone on the path can "
                 "read the token and every request");
    if (cfg.via_proxy)
        log_info("connecting to the gateway through the HTTP proxy %s:%d%s", cfg.via_proxy->host,
                 cfg.via_proxy->port, cfg.via_proxy->userinfo[0] ? " (with credentials)" : "");
    int port = 0;
    rc = start_modules();
    if (!rc)
        rc = open_listeners(&port);
    if (rc)
        return rc;
    serve(port);
    secrets_clear();
    config_free(&cfg);
    return 0;
}
