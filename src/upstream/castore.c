#include "castore.h"
#include "log.h"
#include "loop.h"
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

/* Only the CA file's certificates, or none when it holds nothing usable. */
static X509_STORE *load(const char *path)
{
    X509_STORE *st = X509_STORE_new();
    if (!st)
        abort();
    if (X509_STORE_load_file(st, path) != 1 || !sk_X509_OBJECT_num(X509_STORE_get0_objects(st))) {
        X509_STORE_free(st);
        return NULL;
    }
    return st;
}

void castore_reload(const struct config *cfg, const char *why)
{
    if (!cfg->ca_file)
        return;
    SSL_CTX *ctx = loop_client_tls_ctx();
    if (!ctx) {
        log_warn("%s: no TLS context to give --ca-file to", why);
        return;
    }
    X509_STORE *st = load(cfg->ca_file);
    /* OpenSSL's queue is per thread and lws reads it after a failed handshake: leave
     * nothing of ours in it. */
    ERR_clear_error();
    if (!st) {
        log_error("%s: --ca-file %s cannot be read or holds no certificate; keeping the CAs as they were", why,
                  cfg->ca_file);
        return;
    }
    /* As lws built the first one (loop.c): the file, and the system's unless --ca-only. */
    if (!cfg->ca_only && X509_STORE_set_default_paths(st) != 1)
        ERR_clear_error();
    SSL_CTX_set_cert_store(ctx, st); /* frees the old one; no verification is under way between loop turns */
    log_info("%s: --ca-file read again; new gateway connections verify with it", why);
}
