/* The pass-through routes' path canonicalisation (passpath.c) against a plain reading
 * of the rules.
 *
 * Input: the method, a NUL byte, then the raw path (no NUL byte: the method is "GET"
 * and the whole input is the path).  The first input also checks a table of known
 * answers (the cases issue 16 names).
 *
 * Reference: a path is "bad" when it holds a backslash, a control character, a broken
 * escape, an escaped '/', '\' or NUL (any case), or a segment (between raw slashes)
 * that decodes to "." or "..".  Then:
 *  - BAD_PATH only for a bad path; a bad path whose decoding starts in the
 *    pass-through space is BAD_PATH;
 *  - OK / BAD_METHOD / TOO_LONG exactly when the path is not bad and its decoding is one
 *    of the routes (exact, or /api/metrics/..., or /api/v1/i18n/packs/<one segment>),
 *    BAD_METHOD when the method is not the route's (GET and HEAD, or POST);
 *  - the canonical path: decodes to the same bytes as the raw one, holds no dot
 *    segment, no backslash, no escaped slash, backslash or NUL, only pchar, '/' and
 *    upper-case escapes of what is not unreserved; canonicalised again it is itself,
 *    with the same verdict and route. */
#include "fuzz_common.h"
#include "passpath.h"

static int hexv(unsigned char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

static bool is_unreserved(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
           c == '_' || c == '~';
}

/* Every escape decoded (broken ones left as they are); n is set to the length. */
static char *decode(const char *p, size_t len, size_t *n)
{
    char *d = malloc(len + 1);
    if (!d)
        abort();
    size_t k = 0;
    for (size_t i = 0; i < len; i++) {
        if (p[i] == '%' && i + 2 < len && hexv((unsigned char)p[i + 1]) >= 0 && hexv((unsigned char)p[i + 2]) >= 0) {
            d[k++] = (char)(hexv((unsigned char)p[i + 1]) * 16 + hexv((unsigned char)p[i + 2]));
            i += 2;
        } else {
            d[k++] = p[i];
        }
    }
    d[k] = '\0';
    *n = k;
    return d;
}

static bool reference_bad(const char *p, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c == '\\' || c < 0x21 || c == 0x7f)
            return true;
        if (c != '%')
            continue;
        if (i + 2 >= len || hexv((unsigned char)p[i + 1]) < 0 || hexv((unsigned char)p[i + 2]) < 0)
            return true;
        int v = hexv((unsigned char)p[i + 1]) * 16 + hexv((unsigned char)p[i + 2]);
        if (v == '/' || v == '\\' || v == 0)
            return true;
    }
    for (size_t s = 0; s < len;) {
        size_t e = s;
        while (e < len && p[e] != '/')
            e++;
        size_t n;
        char *d = decode(p + s, e - s, &n);
        bool dot = (n == 1 && d[0] == '.') || (n == 2 && d[0] == '.' && d[1] == '.');
        free(d);
        if (dot)
            return true;
        s = e + 1;
    }
    return false;
}

/* The route of a decoded path that is not bad: its Allow value, or NULL. */
static const char *reference_allow(const char *d)
{
    static const char *const get_exact[] = {"/api/metrics", "/api/v1/document-stream", "/api/v1/export-core"};
    static const char *const post_exact[] = {"/api/v1/import-core", "/api/v1/auth/login", "/api/v1/auth/bootstrap",
                                             "/api/v1/auth/bootstrap-status", "/api/v1/auth/change-password"};
    for (size_t i = 0; i < 3; i++)
        if (!strcmp(d, get_exact[i]))
            return "GET, HEAD";
    for (size_t i = 0; i < 5; i++)
        if (!strcmp(d, post_exact[i]))
            return "POST";
    if (!strncmp(d, "/api/metrics/", 13))
        return "GET, HEAD";
    if (!strncmp(d, "/api/v1/i18n/packs/", 19) && d[19] && !strchr(d + 19, '/'))
        return "GET, HEAD";
    return NULL;
}

static bool starts_in_space(const char *d)
{
    static const char *const space[] = {"/api/metrics", "/api/v1/auth", "/api/v1/i18n", "/api/v1/document-stream",
                                        "/api/v1/import-core", "/api/v1/export-core"};
    for (size_t i = 0; i < 6; i++) {
        size_t n = strlen(space[i]);
        if (!strncmp(d, space[i], n) && (d[n] == '\0' || d[n] == '/'))
            return true;
    }
    return false;
}

static void check_canonical(const char *c)
{
    FUZZ_CHECK(c[0] == '/');
    for (size_t i = 0; c[i]; i++) {
        unsigned char ch = (unsigned char)c[i];
        if (ch == '%') {
            FUZZ_CHECK(fz_is_hex((unsigned char)c[i + 1]) && fz_is_hex((unsigned char)c[i + 2]));
            FUZZ_CHECK(!(c[i + 1] >= 'a' && c[i + 1] <= 'f') && !(c[i + 2] >= 'a' && c[i + 2] <= 'f'));
            int v = hexv((unsigned char)c[i + 1]) * 16 + hexv((unsigned char)c[i + 2]);
            FUZZ_CHECK(!is_unreserved((unsigned char)v) && v != '/' && v != '\\' && v != 0);
            i += 2;
            continue;
        }
        FUZZ_CHECK(ch == '/' || is_unreserved(ch) || (ch && strchr("!$&'()*+,;=:@", ch)));
    }
    FUZZ_CHECK(!strstr(c, "/./") && !strstr(c, "/../"));
    size_t n = strlen(c);
    FUZZ_CHECK(!(n >= 2 && !strcmp(c + n - 2, "/.")) && !(n >= 3 && !strcmp(c + n - 3, "/..")));
}

static void known_answers(void)
{
    static const struct {
        const char *method, *path;
        enum passpath_verdict v;
        const char *canon;
    } t[] = {
        {"GET", "/api/metrics/query", PASSPATH_OK, "/api/metrics/query"},
        {"HEAD", "/api/metrics", PASSPATH_OK, "/api/metrics"},
        {"GET", "/api/metrics/%71uery%3a%7b", PASSPATH_OK, "/api/metrics/query%3A%7B"},
        {"POST", "/api/metrics/x/../../v1/auth/change-password", PASSPATH_BAD_PATH, NULL},
        {"GET", "/api/metrics/%2e%2e/%2E%2E/v1/auth/login", PASSPATH_BAD_PATH, NULL},
        {"GET", "/api/metrics/.%2e/x", PASSPATH_BAD_PATH, NULL},
        {"GET", "/api/metrics/a%2Fb", PASSPATH_BAD_PATH, NULL},
        {"GET", "/api/metrics/a%2fb", PASSPATH_BAD_PATH, NULL},
        {"GET", "/api/metrics/a\\b", PASSPATH_BAD_PATH, NULL},
        {"GET", "/api/metrics/a%5cb", PASSPATH_BAD_PATH, NULL},
        {"GET", "/api/v1/flow/x/../../auth/login", PASSPATH_BAD_PATH, NULL},
        {"GET", "/api%2Fv1/export-core", PASSPATH_BAD_PATH, NULL},
        {"GET", "/api/v1/flow/a%2Fb/service/x", PASSPATH_NONE, NULL},
        {"POST", "/api/v1/flow/default/service/agent", PASSPATH_NONE, NULL},
        {"POST", "/api/metrics/query", PASSPATH_BAD_METHOD, "/api/metrics/query"},
        {"GET", "/api/v1/auth/login", PASSPATH_BAD_METHOD, "/api/v1/auth/login"},
        {"POST", "/api/v1/auth/%6cogin", PASSPATH_OK, "/api/v1/auth/login"},
        {"POST", "/api/v1/auth/whoami", PASSPATH_NONE, NULL},
        {"GET", "/api/v1/i18n/packs/es", PASSPATH_OK, "/api/v1/i18n/packs/es"},
        {"GET", "/api/v1/i18n/packs/", PASSPATH_NONE, NULL},
        {"DELETE", "/api/v1/export-core", PASSPATH_BAD_METHOD, "/api/v1/export-core"},
        {"POST", "/api/v1/import-core", PASSPATH_OK, "/api/v1/import-core"},
        {"GET", "/api/v1/document-stream", PASSPATH_OK, "/api/v1/document-stream"},
    };
    for (size_t i = 0; i < sizeof t / sizeof *t; i++) {
        char out[256];
        struct passpath pp;
        enum passpath_verdict v = passpath_route(t[i].method, (struct span){t[i].path, strlen(t[i].path)}, out,
                                                 sizeof out, &pp);
        if (v != t[i].v || (t[i].canon && strcmp(out, t[i].canon))) {
            fprintf(stderr, "known answer %zu: %s %s -> %d %s\n", i, t[i].method, t[i].path, (int)v,
                    t[i].canon ? out : "");
            abort();
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool known;
    if (!known) {
        known_answers();
        known = true;
    }
    const uint8_t *z = memchr(data, '\0', size);
    char *method = z ? fz_copy(data, (size_t)(z - data), true) : fz_copy((const uint8_t *)"GET", 3, true);
    size_t off = z ? (size_t)(z - data) + 1 : 0;
    char *raw = fz_copy(data + off, size - off, false); /* exact size: ASan sees a read past it */
    struct span path = {raw, size - off};
    size_t cap = 1 + (size % 512);
    char *out = malloc(cap);
    if (!out)
        abort();
    struct passpath pp;
    enum passpath_verdict v = passpath_route(method, path, out, cap, &pp);

    bool bad = reference_bad(raw, path.n);
    size_t dn;
    char *dec = decode(raw, path.n, &dn);
    bool rooted = path.n && raw[0] == '/';
    const char *allow = rooted && !bad && strlen(dec) == dn ? reference_allow(dec) : NULL;
    if (v == PASSPATH_BAD_PATH)
        FUZZ_CHECK(bad && rooted && pp.why);
    if (bad && rooted && starts_in_space(dec))
        FUZZ_CHECK(v == PASSPATH_BAD_PATH);
    FUZZ_CHECK((v == PASSPATH_OK || v == PASSPATH_BAD_METHOD || v == PASSPATH_TOO_LONG) == (allow != NULL));
    if (allow && v != PASSPATH_TOO_LONG) {
        bool get = !strcmp(allow, "GET, HEAD");
        bool ok = get ? !strcmp(method, "GET") || !strcmp(method, "HEAD") : !strcmp(method, "POST");
        FUZZ_CHECK(v == (ok ? PASSPATH_OK : PASSPATH_BAD_METHOD));
        FUZZ_CHECK(pp.allow && !strcmp(pp.allow, allow));
        check_canonical(out);
        size_t cn;
        char *cdec = decode(out, strlen(out), &cn);
        FUZZ_CHECK(cn == dn && !memcmp(cdec, dec, dn));
        free(cdec);
        char again[1600];
        struct passpath pp2;
        enum passpath_verdict v2 = passpath_route(method, (struct span){out, strlen(out)}, again, sizeof again, &pp2);
        FUZZ_CHECK(v2 == v && pp2.route == pp.route && !strcmp(again, out));
    }
    free(dec);
    free(out);
    free(raw);
    free(method);
    return 0;
}
