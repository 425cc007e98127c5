"""Error mapping: gateway error shapes E1..E6 on the REST mirror, id-less
errors, and tgbridge's own errors (bad input, limits, unavailability,
disconnects, timeouts)."""

import threading
import time
import uuid

from harness import (FLOW_TC, T, chunked, check_status, closed_port, eq,
                     flow_path, is_json_ct, own_error, post_early_reply,
                     raw_exchange, request, start_bridge, start_mock)

TOKEN = "tg_errors_token_3f2d"


def bridge_on(era="v2d", *args):
    m = start_mock(era, tokens=[TOKEN])
    b = start_bridge(m.url, "--token", TOKEN, *args) if era.startswith("v2") \
        else start_bridge(m.url, *args)
    return m, b


OPERATION = {"/api/v1/config": "list", "/api/v1/librarian": "list-documents",
             "/api/v1/flow": "list-flows", "/api/v1/iam": "whoami"}


def gw_error(b, path, error):
    """POST a request whose reply is the gateway error `error` (a _mock
    error spec)."""
    if path in OPERATION:
        body = {"operation": OPERATION[path], "_mock": {"error": error}}
    else:
        body = {"system": "", "prompt": "p", "_mock": {"error": error}}
    r = b.post(path, body, timeout=20)
    assert is_json_ct(r.headers), "Content-Type %r" % r.headers.get(
        "Content-Type")
    return r


def expect(r, status, body, what):
    check_status(r, status, what)
    eq(r.json(), body, what + ": body")


# ------------------------------------------------ gateway error shapes

def test_E5_nested_error_is_200_with_object():
    m, b = bridge_on()
    with m, b:
        b.wait_ready()
        r = gw_error(b, FLOW_TC, {"shape": "E5", "type": "llm-error",
                                  "message": "boom"})
        expect(r, 200, {"error": {"type": "llm-error", "message": "boom"}},
               "E5")


def test_E6_nested_string_error_is_200():
    m, b = bridge_on("v1b")
    with m, b:
        b.wait_ready()
        r = gw_error(b, FLOW_TC, {"shape": "E6", "message": "publish failed"})
        expect(r, 200, {"error": "publish failed"}, "E6")


def test_E2_structured_top_level_is_200_with_message():
    for era in ("v2d", "v1b"):
        m, b = bridge_on(era)
        with m, b:
            b.wait_ready()
            r = gw_error(b, FLOW_TC, {"shape": "E2", "type": "error",
                                      "message": "Invalid flow default/x"})
            expect(r, 200, {"error": "Invalid flow default/x"}, "E2 " + era)


def test_E1_v1a_bare_string_single_request_is_200():
    m, b = bridge_on("v1a", "--request-timeout", "30")
    with m, b:
        b.wait_ready()
        r = gw_error(b, FLOW_TC, {"shape": "E1", "message": "Invalid flow"})
        expect(r, 200, {"error": "Invalid flow"}, "E1")
        assert r.elapsed < T(5), "E1 answer took %.2fs" % r.elapsed


def test_E3_idless_single_request_is_answered():
    m, b = bridge_on("v2d", "--request-timeout", "30")
    with m, b:
        b.wait_ready()
        r = gw_error(b, FLOW_TC, {"shape": "E3", "type": "error",
                                  "message": "Bad message"})
        expect(r, 200, {"error": "Bad message"}, "E3")
        assert r.elapsed < T(5), "E3 answer took %.2fs" % r.elapsed


def _ambiguous(era, shape):
    m, b = bridge_on(era, "--request-timeout", "30")
    with m, b:
        b.wait_ready()
        results = {}

        def call(name, body):
            results[name] = b.post(FLOW_TC, body, timeout=40)

        # A waits upstream without any frame; then B triggers an id-less
        # error that could belong to either of them.
        ta = threading.Thread(target=call, args=(
            "a", {"system": "", "prompt": "a", "_mock": {"never": True}}))
        ta.start()
        m.wait_stats(lambda s: s["requests_received"] >= 1,
                     what="first request upstream")
        t0 = time.monotonic()
        tb = threading.Thread(target=call, args=(
            "b", {"system": "", "prompt": "b", "_mock": {"error": {
                "shape": shape, "type": "error", "message": "Bad message"}}}))
        tb.start()
        ta.join(T(15))
        tb.join(T(15))
        elapsed = time.monotonic() - t0
        assert "a" in results and "b" in results, \
            "callers left waiting %.1fs after an id-less error: %s" % (
                elapsed, sorted(results))
        for name in ("a", "b"):
            own_error(results[name], 502, "upstream-ambiguous-error")
        assert elapsed < T(5), "answers took %.2fs" % elapsed
        check_status(b.post(FLOW_TC, {"system": "", "prompt": "c"}), 200,
                     "request after an ambiguous error")


def test_E1_v1a_ambiguous_answers_every_candidate_502():
    _ambiguous("v1a", "E1")


def test_E3_ambiguous_answers_every_candidate_502():
    _ambiguous("v2d", "E3")


E4_CASES = [
    ("unknown-service", "unknown service", FLOW_TC, 404,
     {"error": "unknown kind"}),
    ("unknown-service", "unknown service", "/api/v1/config", 400,
     {"error": "unknown operation"}),
    ("auth-required", "auth failure", FLOW_TC, 401,
     {"error": "auth failure"}),
    ("access-denied", "access denied", "/api/v1/librarian", 403,
     {"error": "access denied"}),
    ("workspace-not-found", "workspace not found", FLOW_TC, 404,
     {"error": "workspace not found"}),
]


def test_E4_policy_errors_mapped_to_http_status():
    m, b = bridge_on("v2d")
    with m, b:
        b.wait_ready()
        for etype, msg, path, status, body in E4_CASES:
            r = gw_error(b, path, {"shape": "E4", "type": etype,
                                   "message": msg})
            expect(r, status, body, "E4 %s on %s" % (etype, path))


def test_gateway_timeout_error_is_200():
    m, b = bridge_on()
    with m, b:
        b.wait_ready()
        r = b.post(FLOW_TC, {"system": "", "prompt": "p", "_mock": {"timeout": True}})
        check_status(r, 200, "E5 gateway-error timeout (non-streaming)")
        err = r.json().get("error")
        assert isinstance(err, dict), r.body
        eq(err.get("type"), "gateway-error", "error.type")


def test_unknown_kind_real_mock_404():
    # no _mock control: the mock itself rejects a kind it does not serve
    m, b = bridge_on("v2d")
    with m, b:
        b.wait_ready()
        r = b.post(flow_path("no-such-kind"), {"x": 1})
        expect(r, 404, {"error": "unknown kind"}, "unknown flow kind")


def test_unknown_operation_real_mock_400():
    m, b = bridge_on("v2d")
    with m, b:
        b.wait_ready()
        r = b.post("/api/v1/config", {"operation": "no-such-op"})
        expect(r, 400, {"error": "unknown operation"}, "unknown operation")


# ------------------------------------------------------- own errors: input

def test_malformed_json_400():
    m, b = bridge_on()
    with m, b:
        b.wait_ready()
        for body in (b'{"system": "", "prompt": ', b"not json", b"",
                     b'{"system": "", "prompt": "x"} trailing',
                     b'{"system": "", "prompt": "x"}}', b"{'a': 1}",
                     b'{"a": 1,}', b'{"a": NaN}'):
            r = b.post(FLOW_TC, body)
            try:
                own_error(r, 400, "bad-request")
            except AssertionError as e:
                raise AssertionError("body %r: %s" % (body, e))
        eq(m.stats()["requests_received"], 0, "bad bodies sent upstream")


def test_body_not_an_object_400():
    m, b = bridge_on()
    with m, b:
        b.wait_ready()
        for body in (b"[1, 2]", b'"text"', b"42", b"null"):
            r = b.post(FLOW_TC, body)
            own_error(r, 400, "bad-request")
            r = b.post("/api/v1/config", body)
            own_error(r, 400, "bad-request")
        eq(m.stats()["requests_received"], 0, "bad bodies sent upstream")


def test_unknown_routes_404():
    m, b = bridge_on()
    with m, b:
        b.wait_ready()
        for path in ("/nope", "/api/v1/config/", "/api/v1/",
                     "/api/v1/flow/default/service/",
                     "/api/v1/flow/default/service/text-completion/extra",
                     "/api/v1/flow//service/text-completion",
                     "/api/v2/config"):
            r = b.post(path, {"operation": "list"})
            own_error(r, 404, "not-found")
        own_error(b.get("/nope"), 404, "not-found")
        eq(m.stats()["requests_received"], 0, "unknown routes sent upstream")


def test_wrong_method_405_with_allow():
    m, b = bridge_on()
    with m, b:
        b.wait_ready()
        for method, path, allowed in (
                ("GET", "/api/v1/config", "POST"),
                ("PUT", FLOW_TC, "POST"),
                ("DELETE", "/api/v1/iam", "POST"),
                ("POST", "/healthz", "GET"),
                ("POST", "/readyz", "GET")):
            r = request(b.port, method, path,
                        b"{}" if method in ("PUT", "POST") else None)
            own_error(r, 405, "method-not-allowed")
            allow = r.headers.get("Allow") or ""
            assert allowed in [a.strip() for a in allow.split(",")], \
                "%s %s: Allow header %r" % (method, path, allow)


def test_body_too_large_content_length_413():
    m, b = bridge_on("v2d", "--max-body", "64k")
    with m, b:
        b.wait_ready()
        body = b'{"pad":"' + b"x" * 300000 + b'"}'
        r = post_early_reply(b.port, FLOW_TC, body, chunk=16384)
        own_error(r, 413, "payload-too-large")
        check_status(b.post(FLOW_TC, {"system": "", "prompt": "small"}), 200,
                     "small request after a 413")
        eq(m.stats()["requests_received"], 1, "oversized body sent upstream")


def test_body_too_large_chunked_413():
    m, b = bridge_on("v2d", "--max-body", "64k")
    with m, b:
        b.wait_ready()
        head = (b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n" % FLOW_TC.encode())
        parts = [b'{"pad":"'] + [b"y" * 8192] * 40 + [b'"}']
        r = raw_exchange(b.port, head, chunked(parts))
        own_error(r, 413, "payload-too-large")
        eq(m.stats()["requests_received"], 0, "oversized body sent upstream")


def test_chunked_upload_within_limit_forwarded_exact():
    m, b = bridge_on("v2d", "--max-body", "64k")
    with m, b:
        b.wait_ready()
        marker = uuid.uuid4().hex
        body = ('{"m": "%s", "n": 1.50, "_mock": {"echo": true}, "pad": "%s"}'
                % (marker, "z" * 30000)).encode()
        head = (b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n" % FLOW_TC.encode())
        r = raw_exchange(b.port, head, chunked(
            [body[i:i + 1000] for i in range(0, len(body), 1000)]))
        check_status(r, 200, "chunked upload under --max-body")
        raws = [e for e in m.stats().get("last_envelopes") or []
                if marker in e]
        assert raws and body.decode() in raws[-1], \
            "chunked body not forwarded byte-exact"


# ------------------------------------------- own errors: upstream problems

def test_gateway_unreachable_503_after_queue_timeout():
    url = "http://127.0.0.1:%d" % closed_port()
    with start_bridge(url, "--token", TOKEN, "--queue-timeout", "0.5") as b:
        t0 = time.monotonic()
        r = b.post(FLOW_TC, {"system": "", "prompt": "x"})
        elapsed = time.monotonic() - t0
        own_error(r, 503, "gateway-unavailable")
        assert elapsed >= 0.45, "503 after %.2fs < --queue-timeout" % elapsed
        assert elapsed < T(4), "503 took %.2fs" % elapsed
        assert TOKEN.encode() not in r.body


def test_request_queued_until_gateway_comes_up():
    port = closed_port()
    with start_bridge("http://127.0.0.1:%d" % port, "--token", TOKEN,
                      "--queue-timeout", "15") as b:
        results = []
        t = threading.Thread(target=lambda: results.append(
            b.post(FLOW_TC, {"system": "", "prompt": "queued"}, timeout=30)))
        t.start()
        try:
            check_status(b.readyz(), 503, "/readyz before the gateway is up")
            with start_mock("v2d", tokens=[TOKEN], port=port) as m:
                t.join(T(20))
                assert results, "queued request not answered"
                check_status(results[0], 200, "queued request")
                eq(m.stats()["requests_received"], 1, "requests upstream")
        finally:
            t.join(T(20))


def test_upstream_drop_502_then_recovers():
    m, b = bridge_on()
    with m, b:
        b.wait_ready()
        t0 = time.monotonic()
        r = b.post(FLOW_TC, {"system": "", "prompt": "x", "_mock": {"drop": True}})
        own_error(r, 502, "upstream-disconnected")
        assert time.monotonic() - t0 < T(5), "502 took too long"
        b.wait_ready(timeout=10)
        check_status(b.post(FLOW_TC, {"system": "", "prompt": "y"}), 200,
                     "request after reconnect")


def test_drop_fails_every_inflight_request():
    m, b = bridge_on()
    with m, b:
        b.wait_ready()
        results = []

        def call(i):
            results.append(b.post(FLOW_TC, {"system": "", "prompt": str(i),
                                             "_mock": {"never": True}},
                                  timeout=20))
        threads = [threading.Thread(target=call, args=(i,)) for i in range(5)]
        for t in threads:
            t.start()
        m.wait_stats(lambda s: s["requests_received"] >= 5,
                     what="5 requests upstream")
        m.drop()
        for t in threads:
            t.join(T(10))
        eq(len(results), 5, "answered callers")
        for r in results:
            own_error(r, 502, "upstream-disconnected")


def test_request_timeout_504():
    m, b = bridge_on("v2d", "--request-timeout", "0.5")
    with m, b:
        b.wait_ready()
        t0 = time.monotonic()
        r = b.post(FLOW_TC, {"system": "", "prompt": "x", "_mock": {"never": True}})
        elapsed = time.monotonic() - t0
        own_error(r, 504, "request-timeout")
        assert 0.45 <= elapsed < T(3), "504 after %.2fs" % elapsed
        check_status(b.post(FLOW_TC, {"system": "", "prompt": "y"}), 200,
                     "request after a timeout")


def test_request_timeout_504_streaming():
    m, b = bridge_on("v2d", "--request-timeout", "0.5")
    with m, b:
        b.wait_ready()
        with b.stream(FLOW_TC, {"system": "", "prompt": "x", "streaming": True,
                                "_mock": {"never": True}}) as s:
            body = s.body()
            eq(s.status, 504, "stream that never starts")
        assert b"request-timeout" in body, body
