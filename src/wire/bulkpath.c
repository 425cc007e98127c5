#include "bulkpath.h"
#include "buf.h"
#include "util.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum bulk_dir bulk_route(struct span path, char *what, size_t cap)
{
    static const char pre[] = "/api/v1/flow/";
    if (!path.p || path.n <= sizeof pre - 1 || memcmp(path.p, pre, sizeof pre - 1))
        return BULK_NONE;
    const char *f = path.p + sizeof pre - 1, *end = path.p + path.n;
    const char *slash = memchr(f, '/', (size_t)(end - f));
    if (!slash || slash == f)
        return BULK_NONE;
    const char *dir = slash + 1;
    size_t left = (size_t)(end - dir);
    enum bulk_dir r = BULK_NONE;
    if (left > 7 && !memcmp(dir, "import/", 7))
        r = BULK_IMPORT;
    else if (left > 7 && !memcmp(dir, "export/", 7))
        r = BULK_EXPORT;
    if (r == BULK_NONE || memchr(dir + 7, '/', left - 7))
        return BULK_NONE;
    if (cap)
        snprintf(what, cap, "%.*s", (int)(left < cap ? left : cap - 1), dir);
    return r;
}

bool bulk_target(const char *base_path, struct span path, struct span query, const char *token,
                 const char *workspace, char *out, size_t cap)
{
    struct buf b;
    buf_init(&b, 0);
    buf_puts(&b, base_path);
    buf_append(&b, path.p, path.n);
    char *enc = url_encode(token);
    buf_printf(&b, "?token=%s", enc ? enc : "");
    if (enc) {
        explicit_bzero(enc, strlen(enc));
        free(enc);
    }
    bool has_workspace = false;
    const char *q = query.p, *qend = q ? q + query.n : NULL;
    while (q && q < qend) {
        const char *amp = memchr(q, '&', (size_t)(qend - q));
        const char *e = amp ? amp : qend;
        const char *eq = memchr(q, '=', (size_t)(e - q));
        size_t nlen = (size_t)((eq ? eq : e) - q);
        bool is_token = nlen == 5 && !memcmp(q, "token", 5);
        has_workspace |= nlen == 9 && !memcmp(q, "workspace", 9);
        if (!is_token && e > q) {
            buf_puts(&b, "&");
            buf_append(&b, q, (size_t)(e - q));
        }
        q = amp ? amp + 1 : qend;
    }
    if (!has_workspace && workspace) {
        char *w = url_encode(workspace);
        buf_printf(&b, "&workspace=%s", w ? w : "");
        free(w);
    }
    bool ok = b.len < cap;
    if (ok)
        memcpy(out, buf_ptr(&b), b.len + 1);
    if (b.data)
        explicit_bzero(b.data, b.cap);
    buf_free(&b);
    return ok;
}
