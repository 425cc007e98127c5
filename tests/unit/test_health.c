/* health.c renders status sources it does not know: members joined whatever
 * sources say nothing, metric families in registration order, readiness from every
 * source's word. */
#include "unit_main.h"
#include "buf.h"
#include "health.h"
#include "status.h"
#include <string.h>

static bool fake_ready = true;
static void fake_a_status(struct buf *b) { buf_puts(b, "\"a\":1"); }
static void fake_silent(struct buf *b) { (void)b; }
static void fake_b_status(struct buf *b) { buf_puts(b, "\"b\":{\"c\":2},\"d\":3"); }
static void fake_a_metrics(struct buf *b) { status_metric_u(b, "fake_a", "gauge", "A.", 1); }
static void fake_b_metrics(struct buf *b) { status_metric_u(b, "fake_b", "counter", "B.", 2); }
static bool fake_a_ready(struct buf *b) { buf_puts(b, "\"era\":\"x\""); return true; }
static bool fake_b_ready(struct buf *b)
{
    if (!fake_ready)
        buf_puts(b, "\"why\":\"down\"");
    return fake_ready;
}
static bool fake_c_ready(struct buf *b) { (void)b; return true; }

static const struct status_source fake_sources[] = {
    {"first-silent", fake_silent, NULL, NULL},
    {"a", fake_a_status, fake_a_metrics, fake_a_ready},
    {"middle-silent", fake_silent, NULL, fake_c_ready},
    {"b", fake_b_status, fake_b_metrics, fake_b_ready},
    {"none", NULL, NULL, NULL},
};

static void render(enum health_page page, struct buf *out, unsigned want_status)
{
    const char *type;
    buf_init(out, 0);
    assert_int_equal(health_render(page, out, &type), want_status);
    buf_append(out, "", 1);
}

static void test_health_renders_registered_sources(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof fake_sources / sizeof *fake_sources; i++)
        status_register(&fake_sources[i]);
    struct buf b;
    /* Members joined by single commas, whatever sources say nothing; uptime last. */
    render(HEALTH_STATUS, &b, 200);
    static const char status_head[] = "{\"a\":1,\"b\":{\"c\":2},\"d\":3,\"uptime_seconds\":";
    assert_memory_equal(buf_ptr(&b), status_head, strlen(status_head));
    buf_free(&b);
    render(HEALTH_METRICS, &b, 200);
    static const char metrics_head[] = "# HELP fake_a A.\n# TYPE fake_a gauge\nfake_a 1\n"
                                       "# HELP fake_b B.\n# TYPE fake_b counter\nfake_b 2\n"
                                       "# HELP tgbridge_uptime_seconds ";
    assert_memory_equal(buf_ptr(&b), metrics_head, strlen(metrics_head));
    buf_free(&b);
    /* Ready when all are, with what the ready ones said ... */
    fake_ready = true;
    render(HEALTH_READY, &b, 200);
    assert_str_eq(buf_ptr(&b), "{\"status\":\"ready\",\"era\":\"x\"}");
    buf_free(&b);
    /* ... and otherwise not, with only why not. */
    fake_ready = false;
    render(HEALTH_READY, &b, 503);
    assert_str_eq(buf_ptr(&b), "{\"status\":\"not-ready\",\"why\":\"down\"}");
    buf_free(&b);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_health_renders_registered_sources),
};
UNIT_MAIN(tests)
