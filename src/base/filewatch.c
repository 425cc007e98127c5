#include "filewatch.h"
#include "log.h"
#include "loop.h"
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/evp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <unistd.h>

/* A rotation is a burst of events (Kubernetes: a new directory, a symlink, a rename,
 * a removal; an editor: truncate, write, close): the files are read once it settles,
 * well within the 2 s a change must take effect in. */
#define SETTLE_SECONDS 0.15
#define DIR_EVENTS (IN_CLOSE_WRITE | IN_MODIFY | IN_ATTRIB | IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO)

/* What a path read as: its content's digest, or that it could not be read. */
struct seen {
    bool readable;
    unsigned char digest[EVP_MAX_MD_SIZE];
};

struct entry {
    char *path;
    int wd;          /* its directory's watch, -1 once the directory is gone */
    bool dirty;      /* an event in its directory since it was last read */
    struct seen last;
    filewatch_cb cb;
    void *arg;
};

static struct {
    int fd; /* the inotify descriptor (owned by the loop through w, NULL until the first watch) */
    struct watcher *w;
    struct timer settle;
    struct entry *e;
    size_t n;
} W;

/* Streams the file through SHA-256: secrets are not kept, and a CA bundle may be large. */
static void fingerprint(const char *path, struct seen *out)
{
    memset(out, 0, sizeof *out);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (!md || !EVP_DigestInit_ex(md, EVP_sha256(), NULL))
        abort();
    char chunk[16384];
    ssize_t got;
    while ((got = read(fd, chunk, sizeof chunk)) > 0)
        EVP_DigestUpdate(md, chunk, (size_t)got);
    close(fd);
    explicit_bzero(chunk, sizeof chunk);
    out->readable = got == 0 && EVP_DigestFinal_ex(md, out->digest, NULL);
    EVP_MD_CTX_free(md);
}

static void settled(struct timer *t)
{
    (void)t;
    /* By index: a callback may add a watch, which moves the array. */
    for (size_t i = 0; i < W.n; i++) {
        if (!W.e[i].dirty)
            continue;
        W.e[i].dirty = false;
        struct seen now;
        fingerprint(W.e[i].path, &now);
        if (!memcmp(&now, &W.e[i].last, sizeof now))
            continue; /* touched, or rewritten with the same content */
        W.e[i].last = now;
        W.e[i].cb(W.e[i].path, W.e[i].arg);
    }
}

/* True when the event concerns a watched file's directory. */
static bool mark(int wd, bool all)
{
    bool any = false;
    for (size_t i = 0; i < W.n; i++) {
        if (all || W.e[i].wd == wd) {
            W.e[i].dirty = true;
            any = true;
        }
    }
    return any;
}

static void on_events(void *arg)
{
    (void)arg;
    char buf[8192] __attribute__((aligned(__alignof__(struct inotify_event))));
    ssize_t got;
    bool any = false;
    while ((got = read(W.fd, buf, sizeof buf)) > 0) {
        for (char *p = buf; p < buf + got;) {
            const struct inotify_event *ev = (const struct inotify_event *)p;
            p += sizeof *ev + ev->len;
            any |= mark(ev->wd, (ev->mask & IN_Q_OVERFLOW) != 0);
            if (!(ev->mask & IN_IGNORED))
                continue;
            for (size_t i = 0; i < W.n; i++) {
                if (W.e[i].wd == ev->wd) {
                    W.e[i].wd = -1;
                    log_warn("no longer watching %s: its directory is gone (SIGHUP still re-reads it)",
                             W.e[i].path);
                }
            }
        }
    }
    if (any && !timer_pending(&W.settle))
        timer_after(&W.settle, SETTLE_SECONDS, settled);
}

static int open_inotify(char *err, size_t errlen)
{
    int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "cannot watch files (inotify): %s", strerror(errno));
        return -1;
    }
    W.w = loop_watch_fd(fd, on_events, NULL);
    if (!W.w) {
        close(fd);
        snprintf(err, errlen, "cannot watch files: the event loop refused the inotify descriptor");
        return -1;
    }
    W.fd = fd;
    return 0;
}

static int watch_dir_of(const char *path, char *err, size_t errlen)
{
    char dir[PATH_MAX];
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else
        snprintf(dir, sizeof dir, "%.*s", slash == path ? 1 : (int)(slash - path), path);
    int wd = inotify_add_watch(W.fd, dir, DIR_EVENTS);
    if (wd < 0)
        snprintf(err, errlen, "cannot watch %s (for %s): %s", dir, path, strerror(errno));
    return wd;
}

int filewatch_add(const char *path, filewatch_cb cb, void *arg, char *err, size_t errlen)
{
    for (size_t i = 0; i < W.n; i++)
        if (!strcmp(W.e[i].path, path) && W.e[i].cb == cb && W.e[i].arg == arg)
            return 0;
    if (!W.w && open_inotify(err, errlen))
        return -1;
    int wd = watch_dir_of(path, err, errlen);
    if (wd < 0)
        return -1;
    struct entry *grown = realloc(W.e, (W.n + 1) * sizeof *W.e);
    char *copy = strdup(path);
    if (!grown || !copy)
        abort();
    W.e = grown;
    struct entry *e = &W.e[W.n++];
    *e = (struct entry){.path = copy, .wd = wd, .cb = cb, .arg = arg};
    fingerprint(path, &e->last);
    return 0;
}

void filewatch_stop(void)
{
    timer_cancel(&W.settle);
    if (W.w)
        loop_unwatch_now(W.w);
    for (size_t i = 0; i < W.n; i++)
        free(W.e[i].path);
    free(W.e);
    memset(&W, 0, sizeof W);
}
