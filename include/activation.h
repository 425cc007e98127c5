/* systemd socket activation (sd_listen_fds(3), without libsystemd): the listening
 * sockets systemd hands over in LISTEN_FDS, told apart by LISTEN_FDNAMES
 * (FileDescriptorName=: "rest" for the REST/TCP listener, "unix" for the Unix socket,
 * "admin" for the admin listener, which is never taken unnamed)
 * or, unnamed, by their address family. */
#ifndef TGB_ACTIVATION_H
#define TGB_ACTIVATION_H
#include <stddef.h>

struct activation {
    int rest_fd;   /* -1: none handed over */
    int unix_fd;
    int admin_fd;  /* --admin-listen's */
};

/* Takes the sockets meant for this process (LISTEN_PID), makes them close-on-exec and
 * non-blocking, and removes the variables from the environment.  0, or -1 with err (a
 * socket that is not a listening stream socket, an unknown name, two of a kind). */
int activation_take(struct activation *out, char *err, size_t errlen);
#endif
