"""GET /metrics: the Prometheus text format (0.0.4), with counters that move
with what callers and the gateway do."""

import re

from harness import (FLOW_TC, check_status, eq, own_error, start_bridge,
                     start_mock, tc, wait_until)

TOKEN = "tg_metrics_token_93d0"
SAMPLE = re.compile(r'^([a-z_]+)(\{[a-z_]+="(?:[^"\\\n]|\\.)*"(?:,[a-z_]+="(?:[^"\\\n]|\\.)*")*\})? '
                    r'(-?[0-9]+(?:\.[0-9]+)?)$')


def scrape(b):
    r = b.get("/metrics")
    check_status(r, 200, "/metrics")
    eq(r.headers.get("Content-Type"), "text/plain; version=0.0.4; charset=utf-8",
       "Content-Type")
    samples, typed = {}, set()
    for line in r.body.decode().splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            assert kind in ("counter", "gauge"), line
            typed.add(name)
            continue
        if line.startswith("# HELP ") or not line:
            continue
        m = SAMPLE.match(line)
        assert m, "not a valid sample line: %r" % line
        assert m.group(1) in typed, "sample before its # TYPE: %r" % line
        samples[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return samples


def test_metrics_follow_requests_failures_and_the_gateway():
    m = start_mock("v2d", tokens=[TOKEN])
    b = start_bridge(m.url, "--token", TOKEN, "--request-timeout", "0.3",
                     "--reconnect-min", "0.05")
    with m, b:
        b.wait_ready()
        s = scrape(b)
        eq(s["tgbridge_upstream_ready"], 1, "ready gauge")
        eq(s['tgbridge_info{era="v2c/v2d",auth="auto"}'], 1, "info")
        eq(s["tgbridge_requests_submitted_total"], 0, "submitted")
        eq(s["tgbridge_window_max"], 15, "window max (--max-inflight)")
        for i in range(3):
            check_status(b.post(FLOW_TC, tc("m%d" % i)), 200, "call %d" % i)
        own_error(b.post(FLOW_TC, tc("slow", never=True)), 504,
                  "request-timeout")
        s = scrape(b)
        eq(s["tgbridge_requests_submitted_total"], 4, "submitted")
        eq(s["tgbridge_requests_completed_total"], 3, "completed")
        eq(s['tgbridge_requests_failed_total{type="request-timeout"}'], 1,
           "failed by type")
        eq(s["tgbridge_requests_in_flight"], 1,
           "in flight (the abandoned call still holds the gateway's window)")
        eq(s["tgbridge_requests_queued"], 0, "queued")
        assert s["tgbridge_uptime_seconds"] > 0, s
        m.drop()
        wait_until(lambda: scrape(b)["tgbridge_upstream_reconnects_total"] >= 1,
                   timeout=5, what="reconnect counted")
        check_status(b.post("/metrics", {}), 405, "POST /metrics")
