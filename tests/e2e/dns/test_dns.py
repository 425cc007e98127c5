"""Gateway host names: looked up off the event loop, so a slow or failing
resolver never freezes local callers; a name with several addresses is tried
address by address.  The resolver is tests/lib/slowdns.c (LD_PRELOAD), so the
machine's resolver configuration is never touched."""

import time

from harness import (FLOW_TC, T, check_status, eq, log_count, slowdns_env,
                     start_bridge, start_mock, tc, timeout, wait_bridge_status,
                     wait_until)

TOKEN = "tg_dns_token_7e3a"
FAST = ("--reconnect-min", "0.05", "--reconnect-max", "0.2")


def timed_healthz(b):
    t0 = time.monotonic()
    r = b.get("/healthz", timeout=T(10))
    return r, time.monotonic() - t0


@timeout(60)
def test_slow_resolver_does_not_freeze_the_daemon():
    delay = 1.5 * (T(1))  # longer under valgrind, where everything is slower
    m = start_mock("v2d", tokens=[TOKEN])
    b = start_bridge("http://gw.slow.test:%d" % m.port, "--token", TOKEN,
                     *FAST, env=slowdns_env(delay))
    with m, b:
        # The first lookup is under way: the daemon answers meanwhile.
        st = b.get("/status").json()["upstream"]
        eq(st["state"], "resolving", "/status state during the lookup")
        r, took = timed_healthz(b)
        check_status(r, 200, "/healthz during the lookup")
        assert took < T(0.5), "/healthz took %.2fs during a DNS lookup" % took
        b.wait_ready(timeout=10)
        check_status(b.post(FLOW_TC, tc("via a name")), 200, "call")
        # A reconnect looks the name up again: still no freeze.
        m.drop()
        wait_bridge_status(b, lambda x: x["upstream"]["state"] == "resolving",
                           what="resolving again after the drop")
        worst = 0.0
        for _ in range(5):
            r, took = timed_healthz(b)
            check_status(r, 200, "/healthz during the second lookup")
            worst = max(worst, took)
            time.sleep(delay / 10)
        assert worst < T(0.5), "/healthz took %.2fs during a lookup" % worst
        # a call made during the lookup waits in the queue and is answered
        r = b.post(FLOW_TC, tc("queued during the lookup"), timeout=T(20))
        check_status(r, 200, "call queued during the lookup")
        eq(r.json().get("response"), "queued during the lookup", "reply")


@timeout(60)
def test_unresolvable_name_is_a_clear_reason_and_retried():
    m = start_mock("v2d", tokens=[TOKEN])
    b = start_bridge("http://gw.fail.test:%d" % m.port, "--token", TOKEN,
                     *FAST, "--queue-timeout", "1", "--log-level", "debug",
                     env=slowdns_env(0.05))
    with m, b:
        wait_until(lambda: "cannot resolve" in b.readyz().body.decode(),
                   timeout=5, what="/readyz names the DNS failure")
        r = b.readyz()
        check_status(r, 503, "/readyz")
        assert b"gw.fail.test" in r.body, r.body
        r = b.post(FLOW_TC, tc("x"), timeout=T(10))
        check_status(r, 503, "call while the name does not resolve")
        assert b"cannot resolve" in r.body, r.body
        # looked up again and again (with backoff), logged once
        wait_until(lambda: log_count(b, r"resolving gw\.fail\.test") >= 3,
                   timeout=5, what="the lookup retried")
        eq(log_count(b, r"upstream not ready: cannot resolve"), 1,
           "the failure logged once, not per retry")
        eq(m.stats()["connections_total"], 0, "connections to the mock")


@timeout(60)
def test_name_with_two_addresses_falls_back_to_the_second():
    """The first address refuses: the second is tried at once, within the
    same attempt (no backoff, no "not ready" warning), as lws itself does."""
    m = start_mock("v2d", tokens=[TOKEN])
    b = start_bridge("http://gw.two.test:%d" % m.port, "--token", TOKEN,
                     "--reconnect-min", "5", "--reconnect-max", "5",
                     env=slowdns_env(0))
    with m, b:
        b.wait_ready(timeout=4)  # well before a 5 s backoff could end
        check_status(b.post(FLOW_TC, tc("second address")), 200, "call")
        eq(m.stats()["connections_total"], 1, "connections to the mock")
        eq(log_count(b, r"upstream not ready"), 0, "not-ready warnings")


@timeout(60)
def test_shutdown_during_a_lookup_is_prompt_and_clean():
    """SIGTERM while the gateway's name is still being looked up: tgbridge
    exits at once with status 0 (and, under make asan / make valgrind,
    without a leak: the lookup still running is not waited for)."""
    m = start_mock("v2d", tokens=[TOKEN])
    b = start_bridge("http://gw.slow.test:%d" % m.port, "--token", TOKEN,
                     *FAST, env=slowdns_env(T(3)))
    with m, b:
        eq(b.get("/status").json()["upstream"]["state"], "resolving",
           "/status state")
        t0 = time.monotonic()
        b.stop()  # exit status 0, checked by the harness
        assert time.monotonic() - t0 < T(2), \
            "shutdown waited for the lookup (%.1fs)" % (time.monotonic() - t0)
