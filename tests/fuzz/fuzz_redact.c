/* Secret redaction (redact.c): secret_add of a secret and secret_add_userinfo of a
 * second ("user:password"), both taken from the input (up to its first and second NUL),
 * then redact_buf of the rest.
 *
 * Properties: no crash or leak (secrets_clear after each input); the result holds
 * none of the secrets -- nor the password part of the userinfo -- as raw bytes; and
 * redact_dup and redact_str give the same text (redact_str cut to its buffer).
 *
 * The absence check skips a secret holding a '*': REDACTED is "***", so a secret such
 * as "*", "**" or "a*" may be formed anew by the replacement and the text around it
 * ("aa*" becomes "a***"), which reveals nothing of the secret.  A secret without '*'
 * cannot be formed that way: every "***" splits the text where it stands. */
#include "buf.h"
#include "fuzz_common.h"
#include "redact.h"

static void check_absent(const char *out, size_t n, const char *secret)
{
    size_t sn = strlen(secret);
    if (!sn || strchr(secret, '*'))
        return;
    if (memmem(out, n, secret, sn))
        fprintf(stderr, "secret \"%s\" still in the redacted text\n", secret);
    FUZZ_CHECK(!memmem(out, n, secret, sn));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *end = data + size;
    const uint8_t *z1 = memchr(data, '\0', size);
    const uint8_t *z2 = z1 ? memchr(z1 + 1, '\0', (size_t)(end - z1 - 1)) : NULL;
    char *s1 = NULL, *s2 = NULL;
    const uint8_t *rest = data;
    if (z1) {
        s1 = fz_copy(data, (size_t)(z1 - data), true);
        rest = z1 + 1;
    }
    if (z2) {
        s2 = fz_copy(z1 + 1, (size_t)(z2 - z1 - 1), true);
        rest = z2 + 1;
    }
    size_t n = (size_t)(end - rest);
    if (s1)
        secret_add(s1);
    if (s2)
        secret_add_userinfo(s2);

    struct buf b;
    buf_init(&b, 16); /* headroom, as lws buffers have */
    buf_append(&b, rest, n);
    redact_buf(&b);
    FUZZ_CHECK(b.pre == 16 && (b.len == 0 || b.data));
    const char *out = b.len ? buf_ptr(&b) : "";
    if (s1)
        check_absent(out, b.len, s1);
    if (s2) {
        check_absent(out, b.len, s2);
        const char *colon = strchr(s2, ':');
        if (colon)
            check_absent(out, b.len, colon + 1);
    }

    char *dup = redact_dup((const char *)rest, n);
    /* redact_dup returns a C string: compare up to the first NUL of the result. */
    FUZZ_CHECK(strlen(dup) <= b.len && !memcmp(dup, out, strlen(dup)));
    FUZZ_CHECK(strlen(dup) == strnlen(out, b.len));

    /* redact_str works on a C string: the input up to its first NUL. */
    char small[64];
    size_t sn = strnlen((const char *)rest, n);
    if (sn < sizeof small) {
        memcpy(small, rest, sn);
        small[sn] = '\0';
        char *want = redact_dup(small, sn);
        redact_str(small, sizeof small);
        FUZZ_CHECK(!strncmp(small, want, sizeof small - 1) && strlen(small) == strnlen(want, sizeof small - 1));
        free(want);
    }
    free(dup);
    buf_free(&b);
    free(s1);
    free(s2);
    secrets_clear();
    return 0;
}
