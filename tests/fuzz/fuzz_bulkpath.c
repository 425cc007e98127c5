/* The bulk sockets' routing and gateway target (bulkpath.c) against a plain reading
 * of the rules.
 *
 * Input: four fields separated by NUL bytes -- the request path, its query, the
 * token, the workspace (absent field: NULL workspace) -- as a local caller's head and
 * tgbridge's settings would give them.
 *
 * Reference: bulk_route accepts exactly "/api/v1/flow/" + a non-empty flow without
 * '/' + "/import/" or "/export/" + a non-empty kind without '/', and names
 * "<dir>/<kind>".  bulk_target writes "<base><path>?token=<token %-encoded>" then, in
 * order, "&" + each '&'-separated non-empty piece of the query whose name (up to its
 * first '=') is not "token", then "&workspace=<encoded>" when no piece is named
 * "workspace" and a workspace is given; nothing at all when that does not fit. */
#include "bulkpath.h"
#include "fuzz_common.h"
#include "util.h"

static enum bulk_dir reference_route(const char *p, size_t n, char *what, size_t cap)
{
    static const char pre[] = "/api/v1/flow/";
    size_t k = sizeof pre - 1;
    if (n < k || memcmp(p, pre, k))
        return BULK_NONE;
    size_t f0 = k, f1 = f0;
    while (f1 < n && p[f1] != '/')
        f1++;
    if (f1 == f0 || f1 == n)
        return BULK_NONE;
    size_t d0 = f1 + 1;
    enum bulk_dir d;
    if (n - d0 >= 7 && !memcmp(p + d0, "import/", 7))
        d = BULK_IMPORT;
    else if (n - d0 >= 7 && !memcmp(p + d0, "export/", 7))
        d = BULK_EXPORT;
    else
        return BULK_NONE;
    size_t k0 = d0 + 7;
    if (k0 == n || memchr(p + k0, '/', n - k0))
        return BULK_NONE;
    snprintf(what, cap, "%.*s", (int)(n - d0 < cap ? n - d0 : cap - 1), p + d0);
    return d;
}

static void append(char **out, size_t *len, const char *s, size_t n)
{
    *out = realloc(*out, *len + n + 1);
    if (!*out)
        abort();
    memcpy(*out + *len, s, n);
    *len += n;
    (*out)[*len] = '\0';
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *field[4] = {NULL, NULL, NULL, NULL};
    size_t flen[4] = {0, 0, 0, 0};
    char *copy = fz_copy(data, size, true);
    size_t at = 0;
    for (int i = 0; i < 4 && at <= size; i++) {
        field[i] = copy + at;
        const char *z = memchr(copy + at, '\0', size - at);
        flen[i] = z ? (size_t)(z - (copy + at)) : size - at;
        at += flen[i] + 1;
    }
    /* The spans are exact-size copies: a read past them is ASan's to see. */
    char *path = fz_copy((const uint8_t *)field[0], flen[0], false);
    char *query = field[1] ? fz_copy((const uint8_t *)field[1], flen[1], false) : NULL;
    const char *token = field[2] ? field[2] : "";
    const char *workspace = field[3];
    struct span ps = {path, flen[0]}, qs = {query, query ? flen[1] : 0};

    char what[64], want_what[64];
    enum bulk_dir got = bulk_route(ps, what, sizeof what);
    enum bulk_dir want = reference_route(path, flen[0], want_what, sizeof want_what);
    FUZZ_CHECK(got == want);
    if (got != BULK_NONE)
        FUZZ_CHECK(!strcmp(what, want_what));

    /* the reference target */
    char *ref = NULL;
    size_t rlen = 0;
    append(&ref, &rlen, "/base", 5);
    append(&ref, &rlen, path, flen[0]);
    char *enc = url_encode(token);
    append(&ref, &rlen, "?token=", 7);
    append(&ref, &rlen, enc, strlen(enc));
    free(enc);
    bool named_ws = false;
    for (size_t i = 0; query && i < flen[1];) {
        size_t j = i;
        while (j < flen[1] && query[j] != '&')
            j++;
        size_t nl = 0;
        while (i + nl < j && query[i + nl] != '=')
            nl++;
        named_ws |= nl == 9 && !memcmp(query + i, "workspace", 9);
        if (j > i && !(nl == 5 && !memcmp(query + i, "token", 5))) {
            append(&ref, &rlen, "&", 1);
            append(&ref, &rlen, query + i, j - i);
        }
        i = j + 1;
    }
    if (!named_ws && workspace) {
        char *w = url_encode(workspace);
        append(&ref, &rlen, "&workspace=", 11);
        append(&ref, &rlen, w, strlen(w));
        free(w);
    }
    size_t caps[2] = {4096, rlen + 1};
    for (int c = 0; c < 2; c++) {
        char *out = malloc(caps[c]);
        if (!out)
            abort();
        bool ok = bulk_target("/base", ps, qs, token, workspace, out, caps[c]);
        FUZZ_CHECK(ok == (rlen < caps[c]));
        if (ok)
            FUZZ_CHECK(!strcmp(out, ref));
        free(out);
    }
    /* one byte short of room: refused */
    char *small = malloc(rlen ? rlen : 1);
    if (!small)
        abort();
    FUZZ_CHECK(!bulk_target("/base", ps, qs, token, workspace, small, rlen));
    free(small);
    free(ref);
    free(path);
    free(query);
    free(copy);
    return 0;
}
