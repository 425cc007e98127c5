/* The gateway and proxy URL parsers (src/config/url.c config_parse_gateway,
 * src/config/proxy.c config_parse_proxy) on the input as a string (up to its first NUL).
 *
 * Properties: no crash or over-read; a refusal leaves a NUL-terminated, non-empty
 * message; an accepted URL satisfies fz_check_gateway / fz_check_proxy
 * (fuzz_url_checks.h); and a refused one is refused again without an error buffer
 * (errorf tolerates err == NULL, as add_proxy_secrets calls it).  Then the --proxy
 * value as config_pick_proxy hands it to config_parse_proxy. */
#include "config.h"
#include "fuzz_common.h"
#include "fuzz_url_checks.h"
#include "redact.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool once;
    if (!once) { /* config_pick_proxy honours no_proxy: not the machine's here */
        unsetenv("no_proxy");
        unsetenv("NO_PROXY");
        once = true;
    }
    const uint8_t *nul = memchr(data, '\0', size);
    size_t n = nul ? (size_t)(nul - data) : size;
    char *s = fz_copy(data, n, true);
    char err[256];

    struct gateway_url gw;
    memset(err, 'x', sizeof err);
    int rc = config_parse_gateway(s, &gw, err, sizeof err);
    FUZZ_CHECK(rc == 0 || rc == -1);
    if (rc == 0) {
        fz_check_gateway(&gw);
    } else {
        FUZZ_CHECK(fz_terminated(err, sizeof err) && err[0]);
        FUZZ_CHECK(config_parse_gateway(s, &gw, NULL, 0) == -1);
    }

    struct proxy_url p;
    memset(err, 'x', sizeof err);
    rc = config_parse_proxy(s, &p, err, sizeof err);
    FUZZ_CHECK(rc == 0 || rc == -1);
    if (rc == 0) {
        fz_check_proxy(&p);
    } else {
        FUZZ_CHECK(fz_terminated(err, sizeof err) && err[0]);
        FUZZ_CHECK(config_parse_proxy(s, &p, NULL, 0) == -1);
    }

    /* --proxy as pick_proxy() takes it: "http://" and trailing slashes dropped. */
    char *picked = config_pick_proxy(&gw, s);
    FUZZ_CHECK(!picked == (!s[0] || !strcmp(s, "none")));
    if (picked) {
        memset(err, 'x', sizeof err);
        if (config_parse_proxy(picked, &p, err, sizeof err) == 0)
            fz_check_proxy(&p);
        else
            FUZZ_CHECK(fz_terminated(err, sizeof err));
        free(picked);
    }
    free(s);
    secrets_clear(); /* nothing registers any here; kept so that no target can grow */
    return 0;
}
