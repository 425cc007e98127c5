"""--policy gateway identities on pass-through routes and bulk sockets (issue 17,
docs/security.md "Policies"): a caller with an upstream_token_file reaches the
gateway with its own key, a forward caller with the credential it presented (its
Bearer; on an upgrade its ?token=), and a caller with neither with tgbridge's
--token; the auth routes keep the caller's own credential.  The mock gateway
accepts several keys (--token, repeated) and records the Authorization of every
pass-through request and the ?token= of every bulk socket.  No key shows in the
log, /status or /metrics, nor in a relayed refusal that quotes it."""

import asyncio
import json

import pytest
import websockets

from harness import (FLOW_TC, T, check_status, eq, run_bridge, start_bridge, start_mock, tc, timeout, tmpfile,
                     wait_until)

GW = "tg_keys_tgbridge_own_7d1e"          # tgbridge's --token
CI_KEY = "tg_keys_ci_gateway_key_40b9"     # the ci caller's upstream_token_file
FWD_KEY = "tg_keys_forwarded_users_k_e27"  # what the mcp caller presents
CI_TOKEN = "tgb_keys_local_ci_5a8c"        # the ci caller's local token
PLAIN_TOKEN = "tgb_keys_local_plain_91f0"  # a caller without a key of its own
ROUTES = ["metrics", "export-core", "flow-export", "flow-import", "auth"]


def policy(ci_extra=None):
    ci = {"name": "ci", "match": {"token_file": tmpfile(CI_TOKEN.encode())}, "allow": [{"route": ROUTES}],
          "upstream_token_file": tmpfile(CI_KEY + "\n")}
    ci.update(ci_extra or {})
    doc = {"default": "deny", "callers": [
        ci,
        {"name": "plain", "match": {"token_file": tmpfile(PLAIN_TOKEN.encode())}, "allow": [{"route": ROUTES}]},
        {"name": "mcp", "match": {"forward": True}, "allow": [{"route": ROUTES}, {"service": ["config"]}]},
    ]}
    return tmpfile(json.dumps(doc).encode(), suffix=".json")


def bridge(*extra):
    m = start_mock(tokens=[GW, CI_KEY, FWD_KEY], extra=("--user", "alice:wonderland"))
    b = start_bridge(m.url, "--token", GW, "--policy", policy(), "--access-log", "on", "--log-level", "debug",
                     *extra)
    b.wait_ready()
    return m, b


def bearer(t):
    return {"Authorization": "Bearer " + t}


def last_request(m, route):
    reqs = [r for r in m.stats()["passthrough"]["requests"] if r["route"] == route]
    assert reqs, "no %s request at the mock" % route
    return reqs[-1]


def run(coro, seconds=30):
    return asyncio.run(asyncio.wait_for(coro, T(seconds)))


async def bulk(port, path, query="", headers=None):
    url = "ws://127.0.0.1:%d%s%s" % (port, path, query)
    try:
        async with websockets.connect(url, extra_headers=headers or {}) as ws:
            await ws.close()
            return 101
    except websockets.exceptions.InvalidStatusCode as e:
        return e.status_code


def socket_token(m, n_before):
    wait_until(lambda: len(m.stats()["passthrough"]["sockets"]) > n_before, timeout=10, what="the socket at the mock")
    return m.stats()["passthrough"]["sockets"][-1]["token"]


def no_key_shown(b):
    for t in (CI_KEY, FWD_KEY):
        assert t not in b.log(), "a caller's gateway key in the log"
        for path in ("/status", "/metrics"):
            r = b.get(path, headers=bearer(CI_TOKEN))
            assert t not in r.body.decode(errors="replace"), "a caller's gateway key in %s" % path


# ------------------------------------------------------------------ --check-config

@pytest.mark.parametrize("extra, member, why", [
    ({"max_connections": 0}, "callers[0].max_connections", "1 to 64"),
    ({"max_connections": 65}, "callers[0].max_connections", "1 to 64"),
    ({"max_connections": "2"}, "callers[0].max_connections", "1 to 64"),
    ({"upstream_token_file": "/nonexistent/tgb-key"}, "callers[0].upstream_token_file", "cannot open"),
    ({"match": {"forward": True}}, "callers[0].upstream_token_file", "forward"),
])
def test_check_config_upstream_key_and_max_connections(extra, member, why):
    r = run_bridge("--policy", policy(extra), "--check-config")
    eq(r.returncode, 2, "exit code for %s" % member)
    assert member in r.stderr and why in r.stderr, r.stderr


def test_check_config_accepts_keys_forward_and_max_connections():
    r = run_bridge("--policy", policy({"max_connections": 64}), "--check-config")
    eq(r.returncode, 0, r.stderr)
    assert CI_KEY not in r.stderr + r.stdout, "the key in --check-config's output"


# ------------------------------------------------------------------ pass-through routes

@timeout(60)
def test_pass_through_routes_present_the_callers_gateway_identity():
    m, b = bridge()
    # (a) the caller's upstream_token_file key, not tgbridge's
    check_status(b.get("/api/metrics/query?query=up", headers=bearer(CI_TOKEN)), 200, "ci: metrics")
    eq(last_request(m, "metrics")["authorization"], "Bearer " + CI_KEY, "ci's metrics upstream")
    check_status(b.get("/api/v1/export-core?id=size-10", headers=bearer(CI_TOKEN)), 200, "ci: export-core")
    eq(last_request(m, "export-core")["authorization"], "Bearer " + CI_KEY, "ci's export-core upstream")
    # (b) a forward caller: its own Bearer
    check_status(b.get("/api/metrics/query?query=up", headers=bearer(FWD_KEY)), 200, "mcp: metrics")
    eq(last_request(m, "metrics")["authorization"], "Bearer " + FWD_KEY, "mcp's metrics upstream")
    # (d) a caller without a key of its own: tgbridge's
    check_status(b.get("/api/metrics/query?query=up", headers=bearer(PLAIN_TOKEN)), 200, "plain: metrics")
    eq(last_request(m, "metrics")["authorization"], "Bearer " + GW, "plain's metrics upstream")
    # the auth routes keep the caller's own credential (none here: the Bearer is local)
    check_status(b.post("/api/v1/auth/login", {"username": "alice", "password": "wonderland"},
                        headers=bearer(CI_TOKEN)), 200, "ci: login")
    eq(last_request(m, "auth/login")["authorization"], None, "ci's login upstream")
    # (e) a gateway refusal quoting the credential it got: redacted on the way back
    r = b.get("/api/metrics/query?query=up&mock-quote_credential=true", headers=bearer(CI_TOKEN))
    check_status(r, 401, "a refusal quoting the key")
    assert CI_KEY not in r.body.decode(errors="replace") and CI_KEY not in str(r.headers), r.body
    assert "***" in r.body.decode(), r.body
    log = b.log()
    assert "caller=ci " in log and "caller=mcp " in log and "caller=plain " in log, log[-3000:]
    no_key_shown(b)


# ------------------------------------------------------------------ bulk sockets

@timeout(60)
def test_bulk_sockets_present_the_callers_gateway_identity():
    m, b = bridge()
    exp, imp = "/api/v1/flow/default/export/triples", "/api/v1/flow/default/import/triples"
    n = len(m.stats()["passthrough"]["sockets"])
    # (c) the upstream_token_file caller, by its local token in ?token= or as a Bearer
    eq(run(bulk(b.port, exp, "?token=" + CI_TOKEN)), 101, "ci: export socket")
    eq(socket_token(m, n), CI_KEY, "ci's export socket upstream")
    n += 1
    eq(run(bulk(b.port, imp, "", bearer(CI_TOKEN))), 101, "ci: import socket by Bearer")
    eq(socket_token(m, n), CI_KEY, "ci's import socket upstream")
    n += 1
    # a forward caller: its ?token= (where the tg-load-* tools put it), or its Bearer
    eq(run(bulk(b.port, exp, "?token=" + FWD_KEY)), 101, "mcp: export socket by ?token=")
    eq(socket_token(m, n), FWD_KEY, "mcp's export socket upstream")
    n += 1
    eq(run(bulk(b.port, imp, "", bearer(FWD_KEY))), 101, "mcp: import socket by Bearer")
    eq(socket_token(m, n), FWD_KEY, "mcp's import socket upstream")
    n += 1
    # (d) no key of its own: tgbridge's
    eq(run(bulk(b.port, exp, "?token=" + PLAIN_TOKEN)), 101, "plain: export socket")
    eq(socket_token(m, n), GW, "plain's export socket upstream")
    b.wait_log(r"access frontend=bulk caller=mcp ", timeout=10)
    b.wait_log(r"access frontend=bulk caller=ci ", timeout=10)
    no_key_shown(b)


@timeout(60)
def test_forward_caller_named_by_query_token_and_auth_frame_on_the_local_websocket():
    """The local WebSocket's ?token= (the TypeScript client puts its key there) and its
    auth frame (the Python clients and the MCP server) name a forward caller when the
    token is no local one: its rules apply (mcp may call config, not text-completion)."""
    m, b = bridge()

    async def client(query, frame):
        async with websockets.connect("ws://127.0.0.1:%d/api/v1/socket%s" % (b.port, query)) as ws:
            if frame:
                await ws.send(json.dumps({"type": "auth", "token": frame}))
                json.loads(await ws.recv())
            await ws.send(json.dumps({"id": "t1", "service": "text-completion", "flow": "default",
                                      "request": tc("hi")}))
            return json.loads(await ws.recv())
    for query, frame in (("?token=" + FWD_KEY, None), ("", FWD_KEY)):
        r = run(client(query, frame))
        eq(r.get("error", {}).get("type"), "forbidden-by-policy", "text-completion by mcp")
        assert "caller mcp" in r["error"]["message"], r
    # a REST envelope with the forward Bearer is mcp's too
    r = b.post(FLOW_TC, tc("hi"), headers=bearer(FWD_KEY))
    check_status(r, 403, "text-completion by mcp over REST")
    assert "caller mcp" in r.json()["error"]["message"], r.json()
