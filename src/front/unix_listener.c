#include "unix_listener.h"
#include "access.h"
#include "line_proto.h"
#include "listener.h"
#include "log.h"
#include "util.h"
#include <errno.h>
#include <grp.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

struct unix_listener {
    const struct config *cfg;
    struct listener *l;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    dev_t dev;
    ino_t ino;
    bool adopted;        /* systemd's: never unlinked */
};

static void on_accept(int fd, const struct sockaddr *addr, socklen_t len, void *arg)
{
    (void)arg;
    struct ucred cr;
    socklen_t crlen = sizeof cr;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &crlen)) {
        log_warn("Unix socket: cannot read peer credentials: %s", strerror(errno));
        close(fd);
        return;
    }
    struct peer peer;
    memset(&peer, 0, sizeof peer);
    peer.addrlen = len < sizeof peer.addr ? len : sizeof peer.addr;
    memcpy(&peer.addr, addr, peer.addrlen);
    peer.accepted_at = now_mono();
    peer.unix_socket = true;
    peer.has_cred = true;
    peer.uid = (unsigned)cr.uid;
    peer.gid = (unsigned)cr.gid;
    peer.pid = (int)cr.pid;
    struct admission v;
    access_admit(&(struct admission_ask){.rule = ADMIT_PEER, .peer = &peer}, &v);
    if (!v.admitted) {
        log_warn("Unix socket: refused pid %d: %s", peer.pid, v.refusal.message);
        line_refuse(fd, v.refusal.type, v.refusal.message);
        close(fd);
        return;
    }
    listener_dispatch(fd, &peer, PROTO_HTTP | PROTO_LINE);
}

/* A socket file left by a crashed run is replaced; one a live daemon answers on is
 * never touched; anything that is not a socket is not ours to delete. */
static int clear_stale(const char *path, char *err, size_t errlen)
{
    struct stat st;
    if (lstat(path, &st)) {
        if (errno == ENOENT)
            return 0;
        return errorf(err, errlen, "cannot inspect %s: %s", path, strerror(errno));
    }
    if (!S_ISSOCK(st.st_mode))
        return errorf(err, errlen, "%s exists and is not a socket; refusing to replace it", path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return errorf(err, errlen, "socket: %s", strerror(errno));
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, path, strlen(path));
    int rc = connect(fd, (struct sockaddr *)&sa, sizeof sa);
    int e = errno;
    close(fd);
    if (rc == 0)
        return errorf(err, errlen, "%s is in use by a running process (another tgbridge?); not taking it over",
                    path);
    if (e != ECONNREFUSED)
        return errorf(err, errlen, "cannot check %s: %s", path, strerror(e));
    if (unlink(path) && errno != ENOENT)
        return errorf(err, errlen, "cannot remove stale socket %s: %s", path, strerror(errno));
    log_info("replaced stale socket %s", path);
    return 0;
}

static int ensure_parent(const char *path, char *err, size_t errlen)
{
    char copy[sizeof(((struct sockaddr_un *)0)->sun_path)];
    snprintf(copy, sizeof copy, "%s", path);
    const char *dir = dirname(copy);
    if (mkdir(dir, 0755) && errno != EEXIST)
        return errorf(err, errlen, "cannot create %s: %s", dir, strerror(errno));
    return 0;
}

/* --unix-group as a gid: a number, or a group name looked up now. */
static int socket_group(const char *name, gid_t *gid, char *err, size_t errlen)
{
    char *e;
    long g = strtol(name, &e, 10);
    if (!*e) {
        *gid = (gid_t)g;
        return 0;
    }
    struct group *gr = getgrnam(name);
    if (!gr)
        return errorf(err, errlen, "unknown group '%s' (--unix-group)", name);
    *gid = gr->gr_gid;
    return 0;
}

/* A new socket bound at path, created with its final mode: no window in which it is
 * more open than asked.  The fd, or -1 with err set. */
static int bind_with_mode(const char *path, mode_t mode, char *err, size_t errlen)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        errorf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, path, strlen(path));
    mode_t old = umask(~mode & 0777);
    int rc = bind(fd, (struct sockaddr *)&sa, sizeof sa);
    umask(old);
    if (rc) {
        errorf(err, errlen, "cannot bind %s: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

struct unix_listener *unix_listener_open(const struct config *cfg, char *err, size_t errlen)
{
    err[0] = '\0';
    if (!cfg->unix_path)
        return NULL;
    struct unix_listener *u = calloc(1, sizeof *u);
    if (!u) {
        errorf(err, errlen, "out of memory");
        return NULL;
    }
    u->cfg = cfg;
    if (strlen(cfg->unix_path) >= sizeof u->path) {
        errorf(err, errlen, "Unix socket path is longer than %zu bytes: %s", sizeof u->path - 1, cfg->unix_path);
        free(u);
        return NULL;
    }
    strcpy(u->path, cfg->unix_path);
    gid_t gid = (gid_t)-1;
    if (cfg->unix_group && socket_group(cfg->unix_group, &gid, err, errlen)) {
        free(u);
        return NULL;
    }
    int fd = -1;
    if (ensure_parent(u->path, err, errlen) || clear_stale(u->path, err, errlen))
        goto fail;
    fd = bind_with_mode(u->path, cfg->unix_mode, err, errlen);
    if (fd < 0)
        goto fail;
    struct stat st;
    if (chmod(u->path, cfg->unix_mode) || (gid != (gid_t)-1 && chown(u->path, (uid_t)-1, gid)) ||
        stat(u->path, &st)) {
        errorf(err, errlen, "cannot set the owner/mode of %s: %s", u->path, strerror(errno));
        unlink(u->path);
        goto fail;
    }
    u->dev = st.st_dev;
    u->ino = st.st_ino;
    if (listen(fd, 511) || !(u->l = listener_start(fd, on_accept, u))) {
        errorf(err, errlen, "cannot listen on %s: %s", u->path, strerror(errno));
        unlink(u->path);
        goto fail;
    }
    return u;
fail:
    if (fd >= 0 && !u->l)
        close(fd);
    free(u);
    return NULL;
}

struct unix_listener *unix_listener_adopt(const struct config *cfg, int fd, char *path, size_t pathlen, char *err,
                                          size_t errlen)
{
    err[0] = '\0';
    struct unix_listener *u = calloc(1, sizeof *u);
    if (!u)
        abort();
    u->cfg = cfg;
    u->adopted = true;
    struct sockaddr_un sa;
    socklen_t len = sizeof sa;
    memset(&sa, 0, sizeof sa);
    if (getsockname(fd, (struct sockaddr *)&sa, &len) || sa.sun_family != AF_UNIX) {
        errorf(err, errlen, "socket activation: the \"unix\" descriptor is not a Unix socket");
        free(u);
        return NULL;
    }
    snprintf(u->path, sizeof u->path, "%s", sa.sun_path[0] ? sa.sun_path : "(abstract)");
    snprintf(path, pathlen, "%s", u->path);
    if (!(u->l = listener_start(fd, on_accept, u))) {
        errorf(err, errlen, "cannot add the Unix socket to the event loop");
        free(u);
        return NULL;
    }
    return u;
}

void unix_listener_close(struct unix_listener *u)
{
    if (!u)
        return;
    listener_close(u->l);
    struct stat st;
    /* Only our own file: a successor may already have bound the path; and never the
     * one systemd owns. */
    if (!u->adopted && !stat(u->path, &st) && st.st_dev == u->dev && st.st_ino == u->ino)
        unlink(u->path);
    free(u);
}
