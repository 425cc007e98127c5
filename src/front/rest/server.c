#include "rest.h"
#include "rest_int.h"
#include "frontend.h"
#include "log.h"
#include "util.h"
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

struct rest_state REST;

static void pump(void);
static void pump_timer(struct timer *t);

void rest_watch_hangup(struct call *call)
{
    struct conn_watch *cw = call->watch;
    if (!cw)
        return;
    if (cw->hung_up) {
        rest_caller_gone(call);
        return;
    }
    if (cw->added)
        return;
    if (!loop_epoll_add(REST.hup, cw->fd, EPOLLRDHUP | EPOLLET, cw))
        cw->added = true;
}

static void on_hangup(void *ptr, uint32_t events)
{
    struct conn_watch *cw = ptr;
    if (!(events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)))
        return;
    /* Edge-triggered: remember it for a call that suspends later. */
    cw->hung_up = true;
    /* A pass-through call is watched all along: its upload may be under way. */
    if (cw->call && (cw->call->suspended || cw->call->route == R_PASS))
        rest_caller_gone(cw->call);
}

static void request_overdue(struct guard *g)
{
    struct conn_watch *cw = guard_owner(g, struct conn_watch, deadline);
    static struct log_limit limit;
    unsigned long held;
    if (log_limit_ok(&limit, 10, &held))
        log_warn("closing an HTTP connection that sent no complete request %s within --client-timeout (%g s)%s",
                 g->kind == GUARD_BODY ? "body (1 MiB per timeout, after one of grace)" : "head",
                 REST.cfg->client_timeout,
                 held ? "; more since the last report, see tgbridge_callers_dropped_total" : "");
    if (cw->fd >= 0)
        shutdown(cw->fd, SHUT_RDWR); /* MHD sees the hang-up and closes it */
}

void rest_await_head(struct conn_watch *cw, double since)
{
    guard_start(&cw->deadline, GUARD_HEAD, since, request_overdue);
}

struct conn_watch *rest_conn_watch_of(struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *sc = MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return sc ? sc->socket_context : NULL;
}

/* The head is in; a body may follow. */
void rest_await_body(struct conn_watch *cw)
{
    if (cw)
        guard_start(&cw->deadline, GUARD_BODY, now_mono(), request_overdue);
}

/* The whole request is in: what follows is ours to answer. */
void rest_request_in(struct conn_watch *cw)
{
    if (cw && cw->deadline.kind != GUARD_IDLE)
        guard_stop(&cw->deadline);
}

/* libmicrohttpd's URI log callback: the request target as sent, before it decodes
 * its own copy (connection.c, "log callback before we modify URI").  Kept on the
 * connection; the call's context stays NULL. */
static void *on_uri(void *cls, const char *uri, struct MHD_Connection *c)
{
    (void)cls;
    struct conn_watch *cw = rest_conn_watch_of(c);
    if (cw) {
        free(cw->raw_uri);
        cw->raw_uri = strdup(uri);
    }
    return NULL;
}

static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    (void)cls;
    struct conn_watch *cw = *socket_context;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        cw = calloc(1, sizeof *cw);
        REST.nconns++;
        if (cw) {
            const struct handover *in = REST.handing;
            cw->fd = ci ? ci->connect_fd : -1;
            caller_init(&cw->caller);
            cw->admin = REST.handing_admin;
            if (in && in->peer)
                cw->peer = *in->peer;
            rest_await_head(cw, in && in->peer && in->peer->accepted_at > 0 ? in->peer->accepted_at : now_mono());
            if (in && in->first)
                cw->first_refusal = *in->first;
        }
        *socket_context = cw;
        return;
    }
    REST.nconns--;
    if (!cw)
        return;
    guard_stop(&cw->deadline);
    if (cw->added)
        loop_epoll_del(REST.hup, cw->fd);
    if (cw->call)
        cw->call->watch = NULL;
    free(cw->raw_uri);
    free(cw);
    *socket_context = NULL;
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char line[512];
    vsnprintf(line, sizeof line, fmt, ap);
    size_t n = strlen(line);
    while (n && line[n - 1] == '\n')
        line[--n] = '\0';
    log_debug("mhd: %s", line);
}

static void pump_timer(struct timer *t)
{
    (void)t;
    pump();
}

void rest_pump_soon(void)
{
    timer_after(&REST.pump_timer, 0, pump_timer);
}

static void pump(void)
{
    bool due = false;
    MHD_UNSIGNED_LONG_LONG soonest = 0;
    for (int i = 0; i < 2; i++) {
        if (!REST.daemons[i])
            continue;
        /* "More to do at once" (a resumed call's response queued, now to be sent) is
         * done now, a few rounds at most, rather than after the rest of the loop's
         * work -- which may be a whole batch of frames read meanwhile. */
        MHD_UNSIGNED_LONG_LONG ms = 0;
        bool has = false;
        for (int round = 0; round < 4; round++) {
            MHD_run(REST.daemons[i]);
            has = MHD_get_timeout(REST.daemons[i], &ms) == MHD_YES;
            if (!has || ms > 0)
                break;
        }
        if (has && (!due || ms < soonest)) {
            due = true;
            soonest = ms;
        }
    }
    if (due)
        timer_after(&REST.pump_timer, (double)soonest / 1000, pump_timer);
    else
        timer_cancel(&REST.pump_timer);
}

static void on_epoll_readable(void *arg)
{
    (void)arg;
    pump();
}

static void rest_stats(struct frontend_stats *out)
{
    out->connections = REST.nconns;
    out->active = REST.ncalls;
    size_t unsent = 0;
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &REST.calls)
        unsent += list_entry(pos, struct call, node)->out.len;
    out->unsent = unsent;
}

static void rest_fail_all_frontend(const char *type, const char *message)
{
    rest_fail_all(503, type, message);
}

/* Serves fd on the small daemon, or (bulk) on the pass-through one. */
static bool take(int fd, const struct handover *in, bool bulk)
{
    /* read by on_connection, which MHD_add_connection calls */
    REST.handing = in;
    enum MHD_Result ok = MHD_add_connection(REST.daemons[bulk], fd, (const struct sockaddr *)&in->peer->addr,
                                            in->peer->addrlen);
    REST.handing = NULL;
    if (ok != MHD_YES) {
        log_warn("cannot serve a new connection: %s", strerror(errno));
        return true;
    }
    pump();
    return true;
}

static bool rest_take(int fd, const struct handover *in, struct refusal *no)
{
    (void)no;
    struct handover plain = *in;
    plain.route = -1; /* the route of its requests is REST's to find (route.c) */
    return take(fd, &plain, false);
}

static bool rest_pass_take(int fd, const struct handover *in, struct refusal *no)
{
    (void)no;
    return take(fd, in, true);
}

/* The admin listener's connections: REST with the admin route table (route.c). */
static bool rest_admin_take(int fd, const struct handover *in, struct refusal *no)
{
    (void)no;
    struct handover plain = *in;
    plain.route = -1;
    plain.first = NULL; /* an upgrade there is just a route it does not have: 404 */
    REST.handing_admin = true;
    bool ok = take(fd, &plain, false);
    REST.handing_admin = false;
    return ok;
}

void rest_on_shutdown(void (*fn)(void))
{
    REST.on_shutdown = fn;
}

const struct frontend rest_frontend = {"rest", rest_take, rest_stats, rest_fail_all_frontend, NULL};
/* Not registered: its connections are counted in rest_frontend's stats. */
const struct frontend rest_pass_frontend = {"rest", rest_pass_take, NULL, NULL, NULL};
/* Not registered either: counted in rest_frontend's stats. */
const struct frontend rest_admin_frontend = {"rest", rest_admin_take, NULL, NULL, NULL};

int rest_init(const struct config *cfg)
{
    REST.cfg = cfg;
    frontend_register(&rest_frontend);
    list_init(&REST.calls);
    if (MHD_is_feature_supported(MHD_FEATURE_EPOLL) != MHD_YES) {
        log_error("this libmicrohttpd has no epoll support");
        return -1;
    }
    /* 16 KiB per connection: MHD zeroes the whole pool for every request, so a larger
     * one costs CPU per call (bench: 256 KiB was a quarter of all cycles, and 32 KiB
     * about 1 µs a request in memsets) and memory per open stream.  16 KiB still holds
     * a head with a long bearer token -- as much as listener.c waits for -- and chunks
     * of a stream are at most this. */
    /* The pass-through server's pools are larger: a body goes out in pieces of what
     * its pool leaves free, and each piece is a send and a loop turn. */
    static const size_t pools[2] = {16 * 1024, PASS_POOL};
    for (int i = 0; i < 2; i++) {
        REST.daemons[i] = MHD_start_daemon(
            MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_NO_LISTEN_SOCKET | MHD_USE_ERROR_LOG, 0, NULL, NULL,
            rest_on_request, NULL, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL, MHD_OPTION_NOTIFY_COMPLETED, rest_on_completed,
            NULL, MHD_OPTION_NOTIFY_CONNECTION, on_connection, NULL, MHD_OPTION_URI_LOG_CALLBACK, on_uri, NULL, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120,
            MHD_OPTION_CONNECTION_MEMORY_LIMIT, pools[i], MHD_OPTION_CONNECTION_LIMIT, (unsigned)60000,
            MHD_OPTION_END);
        if (!REST.daemons[i]) {
            log_error("cannot start the HTTP server");
            return -1;
        }
        const union MHD_DaemonInfo *di = MHD_get_daemon_info(REST.daemons[i], MHD_DAEMON_INFO_EPOLL_FD);
        if (!di || !loop_watch_epoll(di->epoll_fd, on_epoll_readable, NULL)) {
            log_error("cannot watch the HTTP server's epoll fd");
            return -1;
        }
    }
    REST.hup = loop_epoll_new(on_hangup);
    if (!REST.hup) {
        log_error("cannot create the hang-up watcher");
        return -1;
    }
    return 0;
}

void rest_shutdown(void)
{
    if (!REST.daemons[0])
        return;
    /* MHD_stop_daemon with suspended connections is undefined (libraries.md a3). */
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &REST.calls) {
        struct call *call = list_entry(pos, struct call, node);
        call->client_gone = true;
        rest_wake(call);
    }
    for (int i = 0; i < 2; i++) {
        MHD_run(REST.daemons[i]);
        MHD_stop_daemon(REST.daemons[i]);
        REST.daemons[i] = NULL;
    }
    timer_cancel(&REST.pump_timer);
}

