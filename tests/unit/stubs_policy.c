/* The per-caller policy, for unit tests of the session: none configured. */
#include "policy.h"

bool policy_active(void)
{
    return false;
}

bool policy_check_call(const char *caller, const struct policy_call *call, const char **workspace,
                       struct refusal *no)
{
    (void)caller, (void)call, (void)workspace, (void)no;
    return true;
}

bool policy_gateway_key(const char *caller, const char *bearer, size_t blen, struct gateway_key *out)
{
    (void)caller, (void)bearer, (void)blen, (void)out;
    return false;
}
