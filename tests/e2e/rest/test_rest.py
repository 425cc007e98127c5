"""REST mirror: health endpoints, routes, envelope fidelity, non-streaming
replies of several services (final frame only)."""

import json
import uuid

from harness import (FLOW_TC, check_status, eq, flow_path, is_json_ct,
                     start_bridge, start_mock, tc)

TOKEN = "tg_rest_token_0c4e"


def bridge_on(era="v2d", *args):
    m = start_mock(era, tokens=[TOKEN])
    b = start_bridge(m.url, "--token", TOKEN, *args)
    return m, b


def echo(b, path, body):
    r = b.post(path, body)
    check_status(r, 200, "echo via " + path)
    assert is_json_ct(r.headers), "Content-Type %r" % r.headers.get(
        "Content-Type")
    env = r.json().get("envelope")
    assert isinstance(env, dict), "no echoed envelope in %r" % r.body[:500]
    return env


def raw_envelope(m, marker):
    """Raw text of the last envelope the mock received containing marker."""
    envs = m.stats().get("last_envelopes") or []
    hits = [e for e in envs if marker in e]
    assert hits, "no envelope containing %r among %d recent ones" % (
        marker, len(envs))
    return hits[-1]


# ------------------------------------------------------------------ health

def test_healthz():
    m, b = bridge_on()
    with m, b:
        r = b.get("/healthz")
        check_status(r, 200, "/healthz")
        assert is_json_ct(r.headers), "Content-Type %r" % r.headers.get(
            "Content-Type")
        eq(r.json(), {"status": "ok"}, "/healthz body")


def test_readyz_200_when_connected():
    m, b = bridge_on()
    with m, b:
        r = b.wait_ready()
        assert is_json_ct(r.headers), "Content-Type %r" % r.headers.get(
            "Content-Type")
        r.json()


def test_reconnects_after_gateway_drops_the_socket():
    m, b = bridge_on()
    with m, b:
        b.wait_ready()
        m.drop()   # mock aborts every socket
        # a new, authenticated connection must follow without any caller
        # asking for it; then /readyz is 200 again and requests are served
        m.wait_stats(lambda st: st["connections_total"] >= 2 and
                     st["auth_ok"] >= 2 and st["connections_open"] == 1,
                     timeout=10, what="reconnection after the drop")
        b.wait_ready(timeout=10)
        r = b.post(FLOW_TC, tc("again"))
        check_status(r, 200, "request after reconnect")
        eq(r.json().get("response"), "again", "reply after reconnect")
        assert m.stats()["connections_total"] >= 2, "no reconnection"


def test_readyz_follows_gateway_down_and_up():
    m, b = bridge_on()
    with b:
        with m:
            b.wait_ready()
            port = m.port
        # the gateway is gone: /readyz must say so (503 with a reason)
        r = b.wait_unready(timeout=10)
        check_status(r, 503, "/readyz with the gateway down")
        body = r.json()
        assert isinstance(body, dict) and len(json.dumps(body)) > 2, body
        check_status(b.get("/healthz"), 200, "/healthz with the gateway down")
        with start_mock("v2d", tokens=[TOKEN], port=port) as m2:
            b.wait_ready(timeout=35)
            r = b.post(FLOW_TC, tc("back"))
            check_status(r, 200, "request after the gateway came back")
            eq(m2.stats()["requests_received"], 1, "requests upstream")


def test_reconnects_after_gateway_closes_the_socket():
    m, b = bridge_on()
    with m, b:
        b.wait_ready()
        m._call("POST", "/_mock/close")   # close frame 1001, then gone
        m.wait_stats(lambda st: st["connections_total"] >= 2 and
                     st["auth_ok"] >= 2 and st["connections_open"] == 1,
                     timeout=10, what="reconnection after the close")
        b.wait_ready()
        check_status(b.post(FLOW_TC, tc("again")), 200, "after reconnect")


# ----------------------------------------------------------- envelopes

def test_flow_route_envelope():
    m, b = bridge_on()
    with m, b:
        b.wait_ready()
        env = echo(b, flow_path("graph-rag"),
                   {"query": "q", "_mock": {"echo": True}})
        eq(env.get("service"), "graph-rag", "service")
        eq(env.get("flow"), "default", "flow")
        eq(env["request"].get("query"), "q", "request.query")
        assert env.get("id") not in (None, "", 0), "no id: %r" % env


def test_workspace_route_envelope_has_no_flow():
    m, b = bridge_on()
    with m, b:
        b.wait_ready()
        # knowledge payloads carry their own "flow" field: payload, not
        # routing
        env = echo(b, "/api/v1/knowledge",
                   {"operation": "load-kg-core", "id": "core1",
                    "flow": "default", "_mock": {"echo": True}})
        eq(env.get("service"), "knowledge", "service")
        assert "flow" not in env, "workspace route envelope has flow: %r" % env
        eq(env["request"].get("flow"), "default", "payload flow preserved")


def test_config_route_envelope():
    m, b = bridge_on()
    with m, b:
        b.wait_ready()
        env = echo(b, "/api/v1/config", {"operation": "list", "type": "prompt",
                                         "_mock": {"echo": True}})
        eq(env.get("service"), "config", "service")
        assert "flow" not in env, "config envelope has flow: %r" % env


def test_iam_route_envelope():
    m, b = bridge_on()
    with m, b:
        b.wait_ready()
        env = echo(b, "/api/v1/iam", {"operation": "whoami",
                                      "_mock": {"echo": True}})
        eq(env.get("service"), "iam", "service")
        assert "flow" not in env, "iam envelope has flow: %r" % env


def test_other_flow_name_routed():
    with start_mock("v2d", tokens=[TOKEN], flows="default,research") as m, \
            start_bridge(m.url, "--token", TOKEN) as b:
        b.wait_ready()
        env = echo(b, flow_path("prompt", flow="research"),
                   {"id": "question", "variables": {},
                    "_mock": {"echo": True}})
        eq(env.get("flow"), "research", "flow")
        eq(env.get("service"), "prompt", "service")


def test_body_forwarded_byte_exact():
    m, b = bridge_on()
    with m, b:
        b.wait_ready()
        marker = "exact-" + uuid.uuid4().hex
        body = ('{ "big": 12345678901234567890, "dec": 1.10, "exp": 1E+2,'
                '  "s": "tab\\t \\u00e9 \\ud83d\\ude00 caf\u00e9",'
                ' "nested": {"a": [1, 2.50, -0.0, null, true]},'
                ' "marker": "%s", "_mock": {"echo": true} }' % marker)
        r = b.post(FLOW_TC, body.encode("utf-8"))
        check_status(r, 200, "echo")
        raw = raw_envelope(m, marker)
        assert body in raw, ("body not forwarded byte-exact as the request "
                             "value.\nsent: %s\ngot:  %s" % (body, raw[:2000]))
        env = json.loads(raw)
        eq(env.get("service"), "text-completion", "service")
        eq(env.get("flow"), "default", "flow")


def test_ids_are_unique():
    m, b = bridge_on()
    with m, b:
        b.wait_ready()
        ids = []
        for i in range(5):
            env = echo(b, FLOW_TC, tc(str(i), echo=True))
            ids.append(json.dumps(env.get("id")))
        eq(len(set(ids)), 5, "distinct envelope ids %r" % ids)


def test_body_workspace_copied_to_envelope():
    m, b = bridge_on()
    with m, b:
        b.wait_ready()
        body = tc("x", echo=True)
        body["workspace"] = "default"
        env = echo(b, FLOW_TC, body)
        eq(env.get("workspace"), "default", "envelope workspace")



def test_repeated_body_keys_read_as_the_gateway_reads_them():
    """The gateway's JSON parser keeps a repeated key's last value; the
    envelope's workspace and the streaming choice must agree with it.  A
    long workspace name is carried whole, not cut to a buffer's size."""
    long_ws = "w" * 300
    m = start_mock("v2d", tokens=[TOKEN],
                   extra=["--workspaces", "default,b," + long_ws])
    b = start_bridge(m.url, "--token", TOKEN)
    with m, b:
        b.wait_ready()
        raw = ('{"workspace":"a","system":"","prompt":"x",'
               '"_mock":{"echo":true},"workspace":"b"}')
        env = echo(b, FLOW_TC, raw)
        eq(env.get("workspace"), "b", "envelope workspace (last key wins)")
        env = echo(b, FLOW_TC, {"system": "", "prompt": "x",
                                "_mock": {"echo": True},
                                "workspace": long_ws})
        eq(env.get("workspace"), long_ws, "a 300-character workspace")
        # "streaming": true then false: not a stream, as the gateway sees it
        r = b.post(FLOW_TC, '{"streaming":true,"system":"","prompt":"y",'
                   '"streaming":false}', headers={"Accept": "*/*"})
        check_status(r, 200, "repeated streaming key")
        assert is_json_ct(r.headers), r.headers
        eq(r.json().get("response"), "y", "unary reply")


# --------------------------------------------------- non-streaming replies

def final_only(b, kind, body, check):
    r = b.post(flow_path(kind), body)
    check_status(r, 200, kind)
    assert is_json_ct(r.headers), "Content-Type %r" % r.headers.get(
        "Content-Type")
    obj = r.json()
    assert isinstance(obj, dict), "%s reply is not an object: %r" % (kind,
                                                                     obj)
    check(obj)
    return obj


def test_text_completion_non_streaming():
    m, b = bridge_on()
    with m, b:
        b.wait_ready()

        def check(o):
            eq(o.get("response"), "hello there", "response text")
            eq(o.get("end_of_stream"), True, "end_of_stream on final frame")
        final_only(b, "text-completion", tc("hello there"), check)


def test_graph_rag_non_streaming_returns_final_frame():
    # explain frame first, then the answer frame (both flags set)
    m, b = bridge_on()
    with m, b:
        b.wait_ready()

        def check(o):
            eq(o.get("end_of_session"), True, "graph-rag final end_of_session")
            assert "Mock graph RAG answer to: why" in o.get("response", ""), o
            assert o.get("message_type") != "explain", o
        final_only(b, "graph-rag", {"query": "why"}, check)


def test_agent_non_streaming_returns_answer_frame():
    m, b = bridge_on()
    with m, b:
        b.wait_ready()

        def check(o):
            eq(o.get("message_type"), "answer", "agent final message_type")
            eq(o.get("end_of_dialog"), True, "agent final end_of_dialog")
            eq(o.get("content"), "Mock answer to: q", "agent answer")
        final_only(b, "agent", {"question": "q"}, check)


def test_triples_non_streaming():
    m, b = bridge_on()
    with m, b:
        b.wait_ready()

        def check(o):
            assert isinstance(o.get("response"), list) and \
                len(o["response"]) == 3, "triples reply %r" % o
        final_only(b, "triples", {"limit": 10}, check)


def test_workspace_service_non_streaming():
    m, b = bridge_on()
    with m, b:
        b.wait_ready()
        r = b.post("/api/v1/flow", {"operation": "list-flows"})
        check_status(r, 200, "flow list-flows")
        eq(r.json(), {"flow-ids": ["default"]}, "list-flows reply")
        r = b.post("/api/v1/config", {"operation": "put", "values": [
            {"type": "t", "key": "k", "value": "v1"}]})
        check_status(r, 200, "config put")
        r = b.post("/api/v1/config", {"operation": "get", "keys": [
            {"type": "t", "key": "k"}]})
        check_status(r, 200, "config get")
        eq(r.json().get("values"), [{"type": "t", "key": "k", "value": "v1"}],
           "config get values")


def test_v1a_gateway_non_streaming():
    with start_mock("v1a") as m, \
            start_bridge(m.url, "--token", "anything") as b:
        b.wait_ready()
        r = b.post(FLOW_TC, tc("hello v1"))
        check_status(r, 200, "v1a text-completion")
        eq(r.json().get("response"), "hello v1", "reply")


def test_streaming_true_with_accept_json_returns_final_frame_only():
    m, b = bridge_on()
    with m, b:
        b.wait_ready()
        body = {"query": "q", "streaming": True, "_mock": {"parts": 3}}
        r = b.post(flow_path("graph-rag"), body,
                   headers={"Accept": "application/json"})
        check_status(r, 200, "streaming:true with Accept: application/json")
        assert is_json_ct(r.headers), "Content-Type %r" % r.headers.get(
            "Content-Type")
        obj = r.json()   # one JSON document, not NDJSON
        # the frame after the end_of_stream chunk: usage + sources, no text
        eq(obj.get("end_of_session"), True, "end_of_session")
        eq(obj.get("end_of_stream"), False, "end_of_stream")
        eq(obj.get("response"), "", "final frame text")
        assert "sources" in obj and "in_token" in obj, obj


def test_long_headers_fit():
    """A head with a long bearer token (a JWT with many claims, 8 KiB) still fits
    the 16 KiB the listener waits for and libmicrohttpd's connection pool."""
    m = start_mock("v2d", tokens=[TOKEN])
    b = start_bridge(m.url, "--token", TOKEN)
    with m, b:
        b.wait_ready()
        jwt = "eyJ" + "a" * 8000 + ".b.c"
        r = b.post(FLOW_TC, tc("long head"), headers={"Authorization": "Bearer " + jwt,
                                                     "X-Trace": "t" * 2000})
        check_status(r, 200, "a request with an 8 KiB bearer token")
        eq(r.json()["response"], "long head", "its reply")
