#include "activation.h"
#include "util.h"
#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define FIRST_FD 3 /* SD_LISTEN_FDS_START */

static int prepare(int fd, char *err, size_t errlen)
{
    int type = 0, listening = 0;
    socklen_t len = sizeof type;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) || type != SOCK_STREAM)
        return errorf(err, errlen, "socket activation: descriptor %d is not a stream socket", fd);
    len = sizeof listening;
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) || !listening)
        return errorf(err, errlen, "socket activation: descriptor %d is not listening", fd);
    int fdf = fcntl(fd, F_GETFD), fl = fcntl(fd, F_GETFL);
    if (fdf < 0 || fl < 0 || fcntl(fd, F_SETFD, fdf | FD_CLOEXEC) || fcntl(fd, F_SETFL, fl | O_NONBLOCK))
        return errorf(err, errlen, "socket activation: descriptor %d: %s", fd, strerror(errno));
    return 0;
}

static int family_of(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    return getsockname(fd, (struct sockaddr *)&ss, &len) ? -1 : ss.ss_family;
}

int activation_take(struct activation *out, char *err, size_t errlen)
{
    out->rest_fd = out->unix_fd = out->admin_fd = -1;
    const char *pid = getenv("LISTEN_PID"), *fds = getenv("LISTEN_FDS");
    const char *names = getenv("LISTEN_FDNAMES");
    char *names_copy = names ? strdup(names) : NULL;
    int rc = 0;
    long n = 0;
    if (pid && fds) {
        char *e;
        long p = strtol(pid, &e, 10);
        n = strtol(fds, &e, 10);
        if (p != (long)getpid() || *e || n < 0 || n > 64)
            n = 0; /* meant for another process (or garbled): not ours to take */
    }
    unsetenv("LISTEN_PID");
    unsetenv("LISTEN_FDS");
    unsetenv("LISTEN_FDNAMES");
    char *save = NULL, *name = names_copy ? strtok_r(names_copy, ":", &save) : NULL;
    for (long i = 0; i < n && !rc; i++, name = name ? strtok_r(NULL, ":", &save) : NULL) {
        int fd = FIRST_FD + (int)i;
        if ((rc = prepare(fd, err, errlen)))
            break;
        int fam = family_of(fd);
        /* systemd names unnamed sockets "unknown"; then the family decides. */
        bool unnamed = !name || !*name || !strcmp(name, "unknown");
        int *slot = NULL;
        if ((unnamed && fam == AF_UNIX) || (name && !strcmp(name, "unix")))
            slot = &out->unix_fd;
        else if ((unnamed && (fam == AF_INET || fam == AF_INET6)) || (name && !strcmp(name, "rest")))
            slot = &out->rest_fd;
        else if (name && !strcmp(name, "admin"))
            slot = &out->admin_fd;
        if (!slot)
            rc = errorf(err, errlen, "socket activation: descriptor %d is named '%s'; tgbridge takes \"rest\" "
                        "(TCP), \"admin\" (TCP) and \"unix\"", fd, name ? name : "");
        else if (*slot >= 0)
            rc = errorf(err, errlen, "socket activation: two %s sockets (descriptors %d and %d)",
                        slot == &out->unix_fd ? "Unix" : slot == &out->admin_fd ? "admin" : "REST", *slot, fd);
        else if ((slot == &out->unix_fd) != (fam == AF_UNIX))
            rc = errorf(err, errlen, "socket activation: descriptor %d (\"%s\") is not a %s socket", fd,
                        name ? name : "", slot == &out->unix_fd ? "Unix" : "TCP");
        else
            *slot = fd;
    }
    free(names_copy);
    return rc;
}
