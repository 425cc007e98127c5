/* The call records, for unit tests: kept for the test to read (stubs.h). */
#include "stubs.h"
#include <stdio.h>
#include <stdlib.h>

struct fake_call fake_calls[64];
size_t fake_ncalls;

void callrec_finish(const struct call_record *r)
{
    if (fake_ncalls == sizeof fake_calls / sizeof *fake_calls)
        abort();
    struct fake_call *c = &fake_calls[fake_ncalls++];
    c->outcome = r->outcome;
    snprintf(c->frontend, sizeof c->frontend, "%s", r->frontend ? r->frontend : "");
    snprintf(c->service, sizeof c->service, "%s", r->service ? r->service : "");
    snprintf(c->error, sizeof c->error, "%s", r->error ? r->error : "");
    c->had_first_part = r->first_part > 0;
}
