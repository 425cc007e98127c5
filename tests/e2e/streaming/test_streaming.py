"""Streaming over chunked HTTP: NDJSON and SSE framing, Accept negotiation,
time to first byte, final frames, first-frame and mid-stream errors,
heartbeats, callers that hang up.

Mock facts used here (tests/lib/mock_gateway.py): a streaming text-completion
with `parts: N` sends N text chunks whose "response" fields concatenate to
the prompt, then one final frame {"response": "", usage...,
"end_of_stream": true}; `delay` is the pause before every frame but the
first; `error.after`/`after` partial frames precede an error/drop/hang."""

import json
import time

from harness import (FLOW_TC, T, check_status, eq, flow_path, is_json_ct,
                     rss_meaningful, sse_payloads, start_bridge, start_mock,
                     tc, wait_bridge_status)
from rss import rss_kib

TOKEN = "tg_stream_token_91ab"
NDJSON = "application/x-ndjson"
SSE = "text/event-stream"


def bridge_on(era="v2d", *args):
    m = start_mock(era, tokens=[TOKEN])
    b = start_bridge(m.url, "--token", TOKEN, *args)
    return m, b


def tcs(prompt="The quick brown fox", streaming=True, **mock):
    """A (streaming) text-completion body."""
    return tc(prompt, streaming, **mock)


def ctype(headers):
    return (headers.get("Content-Type") or "").split(";")[0].strip().lower()


def read_ndjson(s):
    check_status(s, 200, "stream")
    eq(ctype(s.headers), NDJSON, "Content-Type")
    assert s.chunked, "NDJSON response is not chunked (headers %r)" % dict(
        s.headers)
    items = list(s.ndjson())
    assert not s.unterminated, "last NDJSON line lacks its newline"
    return items


def read_sse(s):
    check_status(s, 200, "stream")
    eq(ctype(s.headers), SSE, "Content-Type")
    assert s.chunked, "SSE response is not chunked"
    return list(s.events())


def check_text_completion(items, prompt, parts):
    eq(len(items), parts + 1, "frames (%d chunks + final)" % parts)
    eq([bool(i.get("end_of_stream")) for i in items],
       [False] * parts + [True], "end_of_stream flags")
    eq("".join(i.get("response", "") for i in items), prompt,
       "concatenated text")
    assert "in_token" in items[-1], "final frame lost: %r" % items[-1]


# ------------------------------------------------------------- framing

def test_ndjson_text_completion():
    m, b = bridge_on()
    with m, b:
        b.wait_ready()
        prompt = "one two three four five six"
        with b.stream(FLOW_TC, tcs(prompt, parts=4), NDJSON) as s:
            items = read_ndjson(s)
            raw = bytes(s.raw)
        check_text_completion(items, prompt, 4)
        eq(raw.count(b"\n"), 5, "newlines in the NDJSON body")


def test_sse_text_completion():
    m, b = bridge_on()
    with m, b:
        b.wait_ready()
        prompt = "alpha beta gamma delta"
        with b.stream(FLOW_TC, tcs(prompt, parts=4), SSE) as s:
            events = read_sse(s)
            raw = bytes(s.raw)
        payloads = sse_payloads(events)
        eq([e for e, _ in payloads], ["message"] * 5, "SSE event names")
        check_text_completion([p for _, p in payloads], prompt, 4)
        assert raw.startswith(b"data: ") or raw.startswith(b":"), raw[:100]
        assert raw.endswith(b"\n\n"), "SSE stream does not end with a blank" \
            " line: %r" % raw[-50:]
        eq(raw.count(b"data: "), 5, "data lines")


def test_accept_ndjson_streams_without_streaming_flag():
    # Accept alone selects streaming; the body is forwarded unchanged
    m, b = bridge_on()
    with m, b:
        b.wait_ready()
        with b.stream(FLOW_TC, tcs("x y z", streaming=None, parts=3),
                      NDJSON) as s:
            items = read_ndjson(s)
        assert len(items) >= 1, items
        eq(items[-1].get("end_of_stream"), True, "final frame last")


def test_streaming_flag_without_accept_is_ndjson():
    m, b = bridge_on()
    with m, b:
        b.wait_ready()
        with b.stream(FLOW_TC, tcs("a b c", parts=3), None) as s:
            items = read_ndjson(s)
        check_text_completion(items, "a b c", 3)


def test_streaming_flag_with_accept_any_is_ndjson():
    m, b = bridge_on()
    with m, b:
        b.wait_ready()
        with b.stream(FLOW_TC, tcs("a b c", parts=3), "*/*") as s:
            items = read_ndjson(s)
        check_text_completion(items, "a b c", 3)


def test_graph_rag_stream_keeps_frame_after_end_of_stream():
    m, b = bridge_on()
    with m, b:
        b.wait_ready()
        with b.stream(flow_path("graph-rag"),
                      {"query": "q", "streaming": True,
                       "_mock": {"parts": 4}}, NDJSON) as s:
            items = read_ndjson(s)
        # explain, 4 chunks (the last with end_of_stream), final frame
        eq(len(items), 6, "graph-rag frames")
        eq(items[-1].get("end_of_session"), True,
           "last line is the end_of_session frame")
        assert "sources" in items[-1], items[-1]
        eq([bool(i.get("end_of_stream")) for i in items],
           [False, False, False, False, True, False], "end_of_stream flags")


def test_agent_stream():
    m, b = bridge_on()
    with m, b:
        b.wait_ready()
        with b.stream(flow_path("agent"),
                      {"question": "q", "streaming": True,
                       "_mock": {"parts": 4}}, SSE) as s:
            payloads = [p for _, p in sse_payloads(read_sse(s))]
        # thought, observation, explain, 4 answer chunks, final
        eq(len(payloads), 8, "agent frames")
        eq([p.get("message_type") for p in payloads[:3]],
           ["thought", "observation", "explain"], "message types")
        eq(payloads[-1].get("end_of_dialog"), True, "final end_of_dialog")
        assert not any(p.get("end_of_dialog") for p in payloads[:-1]), payloads
        eq("".join(p.get("content", "") for p in payloads[3:]),
           "Mock answer to: q", "answer text")


def test_triples_stream_without_payload_end_flag():
    m, b = bridge_on()
    with m, b:
        b.wait_ready()
        with b.stream(flow_path("triples"),
                      {"limit": 100, "streaming": True, "batch-size": 2,
                       "_mock": {"parts": 3}}, NDJSON) as s:
            items = read_ndjson(s)
        eq(len(items), 3, "triples batches")
        objs = [t["o"]["v"] for i in items for t in i["response"]]
        eq(objs, ["value %d" % n for n in range(6)], "triples in order")


# ------------------------------------------------------------ timing

def _ttfb(accept):
    delay = 1.0
    m, b = bridge_on()
    with m, b:
        b.wait_ready()
        with b.stream(FLOW_TC, tcs("first second", parts=2, delay=delay),
                      accept) as s:
            check_status(s, 200, "stream")
            it = s.ndjson() if accept == NDJSON else \
                (json.loads(e["data"]) for e in s.events() if "data" in e)
            first = next(it)
            t_first = time.monotonic() - s.t0
            rest = list(it)
            t_all = time.monotonic() - s.t0
        eq(len(rest), 2, "remaining frames")
        assert first.get("end_of_stream") is False, first
        assert t_all >= 2 * delay * 0.9, \
            "mock delays not applied? whole stream took %.2fs" % t_all
        assert t_first < min(T(0.5), t_all - delay * 0.9), \
            "first part arrived after %.2fs (whole stream %.2fs): not " \
            "streamed incrementally" % (t_first, t_all)


def test_ndjson_first_line_arrives_before_later_parts():
    _ttfb(NDJSON)


def test_sse_first_event_arrives_before_later_parts():
    _ttfb(SSE)


def test_sse_heartbeat_on_idle_stream():
    m, b = bridge_on("v2d", "--heartbeat", "0.3")
    with m, b:
        b.wait_ready()
        with b.stream(FLOW_TC, tcs("idle", parts=1, delay=1.6), SSE) as s:
            events = read_sse(s)
            raw = bytes(s.raw)
        kinds = ["ping" if e.get("comment") == "ping" else
                 "data" if "data" in e else repr(e) for e in events]
        eq(kinds.count("data"), 2, "data events in %r" % kinds)
        first = kinds.index("data")
        between = kinds[first + 1:kinds.index("data", first + 1)]
        # ideally 5 (every 0.3 s of a 1.6 s silence)
        assert between.count("ping") >= 3, \
            "too few ': ping' heartbeats during 1.6s idle with --heartbeat " \
            "0.3: %r" % kinds
        assert b": ping\n\n" in raw, raw[:300]


def test_ndjson_has_no_heartbeat_lines():
    m, b = bridge_on("v2d", "--heartbeat", "0.2")
    with m, b:
        b.wait_ready()
        with b.stream(FLOW_TC, tcs("idle", parts=1, delay=0.8),
                      NDJSON) as s:
            items = read_ndjson(s)   # every line must be a JSON payload
        check_text_completion(items, "idle", 1)


# ------------------------------------------------------------- errors

def first_frame_error(era, error, status, etype=None, path=FLOW_TC):
    m = start_mock(era, tokens=[TOKEN])
    b = start_bridge(m.url, "--token", TOKEN)
    with m, b:
        b.wait_ready()
        for accept in (NDJSON, SSE):
            with b.stream(path, tcs("p", error=error), accept) as s:
                body = s.body()
                st = s.status
                hdrs = s.headers
            what = "%s %s first-frame error %s" % (era, accept, error)
            assert st == status, "%s: HTTP %d (expected %d) %r" % (
                what, st, status, body[:300])
            assert is_json_ct(hdrs), "%s: Content-Type %r" % (
                what, hdrs.get("Content-Type"))
            obj = json.loads(body)
            err = obj.get("error") if isinstance(obj, dict) else None
            assert isinstance(err, dict) and isinstance(err.get("type"), str) \
                and isinstance(err.get("message"), str), \
                "%s: body %r" % (what, obj)
            if etype is not None:
                eq(err["type"], etype, what + ": error.type")
            if error.get("message") is not None:
                eq(err["message"], error["message"], what + ": error.message")


def test_stream_first_frame_unknown_service_404():
    first_frame_error("v2d", {"shape": "E4", "type": "unknown-service",
                              "message": "unknown service"}, 404)


def test_stream_first_frame_workspace_not_found_404():
    first_frame_error("v2d", {"shape": "E4", "type": "workspace-not-found",
                              "message": "workspace not found"}, 404)


def test_stream_first_frame_access_denied_403():
    first_frame_error("v2d", {"shape": "E4", "type": "access-denied",
                              "message": "access denied"}, 403)


def test_stream_first_frame_auth_required_401():
    first_frame_error("v2d", {"shape": "E4", "type": "auth-required",
                              "message": "auth failure"}, 401)


def test_stream_first_frame_E2_400():
    first_frame_error("v2d", {"shape": "E2", "type": "error",
                              "message": "Invalid flow default/default"}, 400)


def test_stream_first_frame_E1_v1a_400():
    first_frame_error("v1a", {"shape": "E1", "message": "Invalid flow"}, 400)


def test_stream_first_frame_backend_error_502():
    first_frame_error("v2d", {"shape": "E5", "type": "llm-error",
                              "message": "boom"}, 502, etype="llm-error")


def test_stream_first_frame_gateway_timeout_504():
    m, b = bridge_on()
    with m, b:
        b.wait_ready()
        with b.stream(FLOW_TC, tcs("p", timeout=True), NDJSON) as s:
            body = s.body()
            eq(s.status, 504, "gateway-error timeout as first frame")
        err = json.loads(body)["error"]
        eq(err.get("type"), "gateway-error", "error.type")


def _mid_stream_error(accept):
    m, b = bridge_on()
    with m, b:
        b.wait_ready()
        error = {"shape": "E5", "type": "llm-error", "message": "died",
                 "after": 2}
        with b.stream(FLOW_TC, tcs("a b c d e", parts=5, error=error),
                      accept) as s:
            check_status(s, 200, "stream with a late error")
            if accept == NDJSON:
                items = read_ndjson(s)
                eq(len(items), 3, "2 parts + error line: %r" % items)
                assert all("error" not in i for i in items[:2]), items
                err = items[2].get("error")
                eq(set(items[2]), {"error"}, "error line keys")
            else:
                payloads = sse_payloads(read_sse(s))
                eq([e for e, _ in payloads], ["message", "message", "error"],
                   "SSE event sequence %r" % payloads)
                err = payloads[2][1].get("error")
        assert isinstance(err, dict), "final error %r" % err
        eq(err.get("type"), "llm-error", "error.type")
        eq(err.get("message"), "died", "error.message")


def test_ndjson_error_after_parts_is_final_line():
    _mid_stream_error(NDJSON)


def test_sse_error_after_parts_is_error_event():
    _mid_stream_error(SSE)


def test_mid_stream_upstream_drop_ends_with_error_line():
    m, b = bridge_on()
    with m, b:
        b.wait_ready()
        with b.stream(FLOW_TC, tcs("a b c d e", parts=5, after=2, drop=True),
                      NDJSON) as s:
            t0 = time.monotonic()
            items = read_ndjson(s)
            elapsed = time.monotonic() - t0
        eq(len(items), 3, "2 parts + error line: %r" % items)
        err = items[-1].get("error")
        assert isinstance(err, dict), items[-1]
        eq(err.get("type"), "upstream-disconnected", "error.type")
        assert elapsed < T(5), "error line took %.2fs" % elapsed
        b.wait_ready()
        check_status(b.post(FLOW_TC, tcs("after drop", streaming=None)), 200,
                     "request after the upstream came back")


def test_mid_stream_upstream_drop_sse_error_event():
    m, b = bridge_on()
    with m, b:
        b.wait_ready()
        with b.stream(FLOW_TC, tcs("a b c d e", parts=5, after=1, drop=True),
                      SSE) as s:
            payloads = sse_payloads(read_sse(s))
        eq([e for e, _ in payloads], ["message", "error"], "SSE events")
        eq(payloads[-1][1]["error"].get("type"), "upstream-disconnected",
           "error.type")


# ------------------------------------------------------------- hang-ups

def test_caller_hangs_up_mid_stream_next_caller_served():
    m, b = bridge_on()
    with m, b:
        b.wait_ready()
        s = b.stream(FLOW_TC, tcs("w " * 40, parts=40, delay=0.05), NDJSON)
        it = s.ndjson()
        next(it)
        next(it)
        s.hangup()
        # frames for the departed caller keep arriving meanwhile
        for n in range(3):
            prompt = "next caller %d" % n
            with b.stream(FLOW_TC, tcs(prompt, parts=3), NDJSON) as s2:
                check_text_completion(read_ndjson(s2), prompt, 3)
        m.wait_stats(lambda st: st["requests_completed"] >= 4, timeout=10,
                     what="abandoned stream to finish upstream")
        r = b.post(FLOW_TC, tcs("x", streaming=None))
        check_status(r, 200, "after hang-up")
        eq(r.json().get("response"), "x", "reply")
        assert b.running(), "tgbridge died"


def test_caller_hangs_up_before_first_byte():
    m, b = bridge_on()
    with m, b:
        b.wait_ready()
        s = b.stream(FLOW_TC, tcs("p", parts=2, first_delay=0.5), SSE,
                     wait=False)
        m.wait_stats(lambda st: st["requests_received"] >= 1,
                     what="request upstream")
        s.hangup()
        # the abandoned reply arrives and must be discarded quietly
        m.wait_stats(lambda st: st["requests_completed"] >= 1,
                     what="abandoned request to finish upstream")
        with b.stream(FLOW_TC, tcs("q r", parts=2), SSE) as s2:
            check_text_completion([p for _, p in sse_payloads(read_sse(s2))],
                                  "q r", 2)
        check_status(b.post(FLOW_TC, tcs("x", streaming=None)), 200,
                     "after hang-up")


def drained(st):
    """/status shows nothing left: no call, nothing in flight, queued or in the
    window."""
    return (st["rest"]["active_calls"] == 0
            and st["requests"]["in_flight"] == 0
            and st["requests"]["queued"] == 0
            and st["requests"]["window_used"] == 0)


def test_many_hangups_do_not_leak_or_block():
    # Rounds of 30 callers hanging up: 20 mid-stream (NDJSON and SSE, after the
    # first frame), then 10 before the first byte (while the gateway sits on their
    # requests).  Each request carries 64 KiB up and back, so a leaked body or reply
    # buffer would show in the RSS.  The mock completes every abandoned request (at
    # most ~10 are open at once, so they never fill the window and cause a socket
    # rotation, which would abort them instead), so after each round tgbridge must
    # be back to nothing in flight, and its RSS must stay where the warm-up round
    # left it.
    m, b = bridge_on()
    pad = "x" * 65536
    rounds = 6
    with m, b:
        b.wait_ready()
        sent = 0
        rss = []

        def finished_upstream(what):
            m.wait_stats(lambda st: st["requests_completed"] >= sent,
                         timeout=20, what="%d abandoned requests (%s) to "
                         "finish upstream" % (sent, what))

        for rnd in range(rounds):
            for i in range(20):
                s = b.stream(FLOW_TC, tcs("h %d %d %s" % (rnd, i, pad), parts=3,
                                          delay=0.02),
                             NDJSON if i % 2 else SSE)
                eq(s.status, 200, "stream status before the hang-up")
                s.hangup()
                sent += 1
            finished_upstream("mid-stream")
            for i in range(10):
                s = b.stream(FLOW_TC, tcs("w %d %d %s" % (rnd, i, pad), parts=3,
                                          delay=0.02, first_delay=0.2),
                             NDJSON if i % 2 else SSE, wait=False)
                m.wait_stats(lambda st: st["requests_received"] > sent,
                             what="request %d upstream" % (sent + 1))
                s.hangup()
                sent += 1
            finished_upstream("before the first byte")
            st = wait_bridge_status(
                b, drained, timeout=5,
                what="round %d: no call, nothing in flight or queued" % rnd)
            eq(st["requests"]["submitted"], sent, "requests submitted")
            eq(st["requests"]["abandoned"], sent, "requests abandoned by their callers")
            eq(st["requests"]["completed"] + st["requests"]["failed"], 0, "answered")
            eq(st["upstream"]["rotations"], 0, "socket rotations")
            eq(st["upstream"]["reconnects"], 0, "reconnects")
            rss.append(rss_kib(b.pid))
        with b.stream(FLOW_TC, tcs("still fine", parts=2), NDJSON) as s:
            check_text_completion(read_ndjson(s), "still fine", 2)
        if rss_meaningful(b.pid):
            # round 0 is the warm-up (allocator pools, buffers at their peak size);
            # a leak of even one 64 KiB buffer per request would add ~1.9 MiB a round
            base = rss[0]
            assert max(rss) - base <= 1024, \
                "RSS grew by %d KiB over the warm-up's %d KiB (KiB per round: %s)" \
                % (max(rss) - base, base, rss)
            half = rounds // 2
            assert rss[-1] - rss[half] <= 256, \
                "RSS still climbing in the last rounds (KiB per round: %s)" % rss


def test_hangup_of_waiting_caller_frees_its_state_at_once():
    # A caller waiting on a reply that will never come hangs up: its call and its
    # upstream request are released right away (not at --request-timeout), so /status
    # shows no active call, and the next caller is served.
    m, b = bridge_on("v2d", "--request-timeout", "60")
    with m, b:
        b.wait_ready()
        for accept in (NDJSON, "application/json"):
            s = b.stream(FLOW_TC, tcs("never", never=True), accept, wait=False)
            m.wait_stats(lambda st: st["requests_received"] >= 1, what="request upstream")
            s.hangup()
            deadline = time.monotonic() + T(2)
            while True:
                st = b.get("/status").json()
                if st["rest"]["active_calls"] == 0:
                    break
                assert time.monotonic() < deadline, "call still active after hang-up: %r" % st
                time.sleep(0.02)
            m.reset()
        check_status(b.post(FLOW_TC, tcs("x", streaming=None)), 200, "after hang-ups")
