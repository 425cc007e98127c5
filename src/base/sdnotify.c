#include "sdnotify.h"
#include "loop.h"
#include "log.h"
#include "redact.h"
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static struct {
    int fd;
    struct sockaddr_un addr;
    socklen_t addrlen;
    unsigned long long watchdog_usec;
    struct timer watchdog_timer;
} N = {.fd = -1};

static void send_state(const char *msg)
{
    if (N.fd < 0)
        return;
    if (sendto(N.fd, msg, strlen(msg), MSG_NOSIGNAL, (struct sockaddr *)&N.addr, N.addrlen) < 0)
        log_debug("cannot notify systemd (%s): %s", msg, strerror(errno));
}

/* Status texts come from our own reasons; a newline would start another assignment. */
static void send_with_status(const char *head, const char *status)
{
    char msg[700];
    int n = snprintf(msg, sizeof msg, "%sSTATUS=", head);
    size_t i = n > 0 ? (size_t)n : 0;
    for (const char *p = status; *p && i + 1 < sizeof msg; p++)
        msg[i++] = *p == '\n' ? ' ' : *p;
    msg[i] = '\0';
    /* `systemctl status` shows this line to any user. */
    redact_str(msg, sizeof msg);
    send_state(msg);
}

void sdnotify_init(void)
{
    const char *path = getenv("NOTIFY_SOCKET");
    const char *wd = getenv("WATCHDOG_USEC");
    const char *wpid = getenv("WATCHDOG_PID");
    if (wd && (!wpid || strtol(wpid, NULL, 10) == (long)getpid()))
        N.watchdog_usec = strtoull(wd, NULL, 10);
    size_t len = path ? strlen(path) : 0;
    /* An absolute path, or '@' for the abstract namespace (sd_notify(3)). */
    if (len >= 2 && (path[0] == '/' || path[0] == '@') && len < sizeof N.addr.sun_path) {
        N.addr.sun_family = AF_UNIX;
        memcpy(N.addr.sun_path, path, len);
        if (path[0] == '@')
            N.addr.sun_path[0] = '\0';
        N.addrlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + (path[0] == '/'));
        N.fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (N.fd < 0)
            log_warn("cannot open a socket to notify systemd: %s", strerror(errno));
    } else if (path) {
        log_warn("ignoring NOTIFY_SOCKET=%s (not an absolute path or an @abstract name)", path);
    }
    /* Nothing we start should talk to systemd on our behalf. */
    unsetenv("NOTIFY_SOCKET");
    unsetenv("WATCHDOG_USEC");
    unsetenv("WATCHDOG_PID");
}

static void watchdog_tick(struct timer *t)
{
    (void)t;
    send_state("WATCHDOG=1");
    /* Twice per interval, as sd_watchdog_enabled(3) advises: the loop is alive if this runs. */
    timer_after(&N.watchdog_timer, (double)N.watchdog_usec / 2e6, watchdog_tick);
}

void sdnotify_ready(const char *status)
{
    send_with_status("READY=1\n", status);
    if (N.fd >= 0 && N.watchdog_usec)
        watchdog_tick(NULL);
}

void sdnotify_status(const char *status)
{
    send_with_status("", status);
}

void sdnotify_stopping(const char *status)
{
    send_with_status("STOPPING=1\n", status);
}

void sdnotify_close(void)
{
    timer_cancel(&N.watchdog_timer);
    if (N.fd >= 0)
        close(N.fd);
    N.fd = -1;
}
