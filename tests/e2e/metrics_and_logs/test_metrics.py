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
            assert kind in ("counter", "gauge", "histogram"), line
            # a histogram's samples are its _bucket, _sum and _count series
            typed.update([name] if kind != "histogram" else [name + "_bucket", name + "_sum", name + "_count"])
            continue
        if line.startswith("# HELP ") or not line:
            continue
        m = SAMPLE.match(line)
        assert m, "not a valid sample line: %r" % line
        assert m.group(1) in typed, "sample before its # TYPE: %r" % line
        samples[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return samples


def histogram(samples, name, **labels):
    """(cumulative buckets [(le, n)], sum, count) of one series; checks the format's
    rules: buckets non-decreasing, +Inf equal to _count."""
    sel = ",".join('%s="%s"' % kv for kv in labels.items())
    buckets = []
    for k, v in samples.items():
        m = re.match(r'^%s_bucket\{%s,le="([^"]+)"\}$' % (name, re.escape(sel)), k)
        if m:
            buckets.append((float("inf") if m.group(1) == "+Inf" else float(m.group(1)), v))
    buckets.sort()
    assert buckets, "no %s{%s}" % (name, sel)
    assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:])), "buckets not cumulative: %r" % buckets
    count = samples["%s_count{%s}" % (name, sel)]
    eq(buckets[-1], (float("inf"), count), "+Inf bucket = _count")
    eq(buckets[0][0], 0.001, "the first bucket is 1 ms")
    eq(buckets[-2][0], 600, "the last finite bucket is 10 min")
    return buckets, samples["%s_sum{%s}" % (name, sel)], count


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
        # latencies, by service and outcome
        _, total, n = histogram(s, "tgbridge_call_duration_seconds", service="text-completion", outcome="ok")
        eq(n, 3, "ok text-completion calls")
        assert 0 < total < 3, total
        buckets, total, n = histogram(s, "tgbridge_call_duration_seconds", service="text-completion",
                                      outcome="failed")
        eq(n, 1, "the timed-out call")
        eq(dict(buckets)[0.25], 0, "it took over 0.25 s (--request-timeout 0.3)")
        eq(dict(buckets)[0.5], 1, "and under 0.5 s")
        st = b.stream(FLOW_TC, tc("abc", streaming=True, parts=3))
        st.body()
        s = scrape(b)
        _, _, n = histogram(s, "tgbridge_call_first_part_seconds", service="text-completion", outcome="ok")
        eq(n, 1, "a streamed call's time to first part")
        assert s['tgbridge_call_bytes_total{frontend="rest",direction="in"}'] > 0, s
        assert s['tgbridge_call_bytes_total{frontend="rest",direction="out"}'] > 0, s
        # a service name a caller invents does not become a label
        b.post("/api/v1/flow/default/service/made-up-kind-%d" % 7, {"x": 1})
        s = scrape(b)
        assert not any("made-up-kind" in k for k in s), "an invented service became a label"
        histogram(s, "tgbridge_call_duration_seconds", service="other", outcome="gateway-error")
        m.drop()
        wait_until(lambda: scrape(b)["tgbridge_upstream_reconnects_total"] >= 1,
                   timeout=5, what="reconnect counted")
        check_status(b.post("/metrics", {}), 405, "POST /metrics")
