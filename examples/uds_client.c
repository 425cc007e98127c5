/* uds_client.c - a small C client for tgbridge's Unix socket (line protocol).
 *
 * Connects to the socket, writes ONE request line, and prints every reply line
 * as it arrives until the one with "complete":true.  No libraries beyond libc:
 * the replies are printed verbatim; the only JSON this program looks into is the
 * top level of each reply (for "complete" and "error").
 *
 *   cc -std=c11 -Wall -Wextra -Werror -o uds_client uds_client.c     (or: make -C examples)
 *
 *   ./uds_client [-s SOCKET] [-i ID] [SERVICE [FLOW [REQUEST_JSON]]]
 *
 *     SOCKET        default $TGBRIDGE_UNIX, else /run/tgbridge/tgbridge.sock
 *     ID            the request id (default "c1"); any string
 *     SERVICE       default graph-rag
 *     FLOW          default "default"; "-" for workspace services (config, flow, ...)
 *     REQUEST_JSON  the service payload, a JSON object; default
 *                   {"query":"What is TrustGraph?","streaming":true}
 *
 *   ./uds_client -s /run/tgbridge/tgbridge.sock text-completion default \
 *       '{"system":"Be terse.","prompt":"Say hi","streaming":true}'
 *   ./uds_client config - '{"operation":"list","type":"prompt"}'
 *
 * The request line written is
 *   {"id":"c1","service":"graph-rag","flow":"default","request":{...}}
 * and each reply line is one of
 *   {"id":"c1","response":{...},"complete":false}      (zero or more)
 *   {"id":"c1","response":{...},"complete":true}       (the last one), or
 *   {"id":"c1","error":{"type":"...","message":"..."},"complete":true}
 *
 * Exit status: 0 the reply completed, 1 an error reply or a connection problem,
 * 2 a usage error.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* ---- a growable byte buffer ---------------------------------------------------- */

struct buf {
    char *p;
    size_t len, cap;
};

static void buf_add(struct buf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            fprintf(stderr, "uds_client: out of memory\n");
            exit(1);
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void buf_str(struct buf *b, const char *s)
{
    buf_add(b, s, strlen(s));
}

/* Appends s as a JSON string literal. */
static void buf_json_string(struct buf *b, const char *s)
{
    buf_add(b, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char esc[8];
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            buf_add(b, esc, 2);
        } else if (c < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", c);
            buf_add(b, esc, 6);
        } else {
            buf_add(b, (const char *)&c, 1);
        }
    }
    buf_add(b, "\"", 1);
}

/* ---- just enough JSON: a member of the top-level object ------------------------- */

/* Returns a pointer to the value of the top-level member `key` of the JSON object
 * in `s` (after the colon and any blanks), or NULL.  Strings and nesting are
 * skipped properly, so a "complete" inside a response payload is not mistaken for
 * the reply's own. */
static const char *top_member(const char *s, const char *key)
{
    size_t klen = strlen(key);
    int depth = 0;
    int want_key = 0;
    for (const char *p = s; *p; p++) {
        switch (*p) {
        case '"': {
            const char *start = ++p;
            while (*p && *p != '"') {
                if (*p == '\\' && p[1])
                    p++;
                p++;
            }
            if (!*p)
                return NULL;
            if (depth == 1 && want_key) {
                want_key = 0;
                if ((size_t)(p - start) == klen && !memcmp(start, key, klen)) {
                    const char *v = p + 1;
                    while (*v == ' ' || *v == '\t')
                        v++;
                    if (*v++ != ':')
                        return NULL;
                    while (*v == ' ' || *v == '\t')
                        v++;
                    return v;
                }
            }
            break;
        }
        case '{':
            if (++depth == 1)
                want_key = 1;
            break;
        case '[':
            depth++;
            break;
        case '}':
        case ']':
            depth--;
            break;
        case ',':
            if (depth == 1)
                want_key = 1;
            break;
        default:
            break;
        }
    }
    return NULL;
}

/* ---- the socket -------------------------------------------------------------------- */

static int connect_unix(const char *path)
{
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof sa.sun_path) {
        fprintf(stderr, "uds_client: socket path too long: %s\n", path);
        return -1;
    }
    memcpy(sa.sun_path, path, strlen(path));
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0) {
        fprintf(stderr, "uds_client: socket: %s\n", strerror(errno));
        return -1;
    }
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        fprintf(stderr, "uds_client: cannot connect to %s: %s\n", path, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static void usage(void)
{
    fprintf(stderr, "usage: uds_client [-s SOCKET] [-i ID] [SERVICE [FLOW [REQUEST_JSON]]]\n"
                    "  FLOW \"-\" for workspace services (config, flow, librarian, ...)\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *path = getenv("TGBRIDGE_UNIX");
    const char *id = "c1";
    if (!path || !*path)
        path = "/run/tgbridge/tgbridge.sock";
    int opt;
    while ((opt = getopt(argc, argv, "s:i:h")) != -1) {
        switch (opt) {
        case 's':
            path = optarg;
            break;
        case 'i':
            id = optarg;
            break;
        default:
            usage();
        }
    }
    if (argc - optind > 3)
        usage();
    const char *service = optind < argc ? argv[optind] : "graph-rag";
    const char *flow = optind + 1 < argc ? argv[optind + 1] : "default";
    const char *request = optind + 2 < argc ? argv[optind + 2]
                                            : "{\"query\":\"What is TrustGraph?\",\"streaming\":true}";
    if (strchr(request, '\n')) {
        fprintf(stderr, "uds_client: REQUEST_JSON must be on one line\n");
        return 2;
    }

    /* A reply may be cut short if tgbridge goes away: report it, don't die of SIGPIPE. */
    signal(SIGPIPE, SIG_IGN);

    struct buf line = {0};
    buf_str(&line, "{\"id\":");
    buf_json_string(&line, id);
    buf_str(&line, ",\"service\":");
    buf_json_string(&line, service);
    if (*flow && strcmp(flow, "-") != 0) {
        buf_str(&line, ",\"flow\":");
        buf_json_string(&line, flow);
    }
    buf_str(&line, ",\"request\":");
    buf_str(&line, request);
    buf_str(&line, "}\n");

    int rc = 1;
    struct buf in = {0};
    int fd = connect_unix(path);
    if (fd < 0)
        goto out;
    if (write_all(fd, line.p, line.len) < 0) {
        fprintf(stderr, "uds_client: write: %s\n", strerror(errno));
        goto out;
    }

    /* Read reply lines until one says "complete":true. */
    size_t scanned = 0;
    char chunk[65536];
    for (;;) {
        char *nl;
        while (in.len > scanned && (nl = memchr(in.p + scanned, '\n', in.len - scanned)) != NULL) {
            *nl = '\0';
            const char *reply = in.p + scanned;
            scanned = (size_t)(nl - in.p) + 1;
            printf("%s\n", reply);
            fflush(stdout);
            const char *complete = top_member(reply, "complete");
            if (complete && !strncmp(complete, "true", 4)) {
                rc = top_member(reply, "error") != NULL; /* 1 for an error reply */
                goto out;
            }
        }
        if (scanned) { /* keep only the unfinished line, at the front */
            memmove(in.p, in.p + scanned, in.len - scanned);
            in.len -= scanned;
            scanned = 0;
        }
        ssize_t n = read(fd, chunk, sizeof chunk);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            fprintf(stderr, "uds_client: read: %s\n", strerror(errno));
            goto out;
        }
        if (n == 0) {
            fprintf(stderr, "uds_client: connection closed before the reply completed\n");
            goto out;
        }
        buf_add(&in, chunk, (size_t)n);
    }
out:
    if (fd >= 0)
        close(fd);
    free(line.p);
    free(in.p);
    return rc;
}
