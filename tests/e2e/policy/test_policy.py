"""--policy (issue 17, docs/security.md "Policies"): callers named by the kernel's
word on the Unix socket (uid) or by a local token (REST, Unix HTTP, the local
WebSocket's auth frame, ?token=), each allowed its services, flows, operations,
routes and one workspace; refusals are 403 forbidden-by-policy / error frames /
refused upgrades, never sent upstream; the access log names the caller;
/metrics counts refusals; SIGHUP applies a good file and keeps the old policy
for a bad one; --check-config names the member at fault."""

import asyncio
import json
import os
import signal
import socket
import tempfile
import urllib.parse

import pytest
import websockets

from harness import (FLOW_TC, T, check_status, eq, request, run_bridge, start_bridge,
                     start_mock, tc, timeout, tmpfile, wait_until)
from lineclient import LineClient, compact, unix_request

CI_TOKEN = "tgb_policy_ci_token_51d2"
AN_TOKEN = "tgb_policy_analytics_9c3e"
UIDS = (4101, 4102, 4103)
GW = "tg_policy_gateway_1f3a"


def policy_file(doc):
    return tmpfile(json.dumps(doc).encode(), suffix=".json")


def token_callers():
    return {
        "default": "deny",
        "callers": [
            {"name": "ci", "match": {"token_file": tmpfile(CI_TOKEN.encode())},
             "allow": [{"service": ["config"], "operation": ["get", "list"]}]},
            {"name": "analytics", "match": {"token_file": tmpfile(AN_TOKEN.encode())},
             "allow": [{"service": ["text-completion"], "flow": ["default"]},
                       {"route": ["i18n"]}],
             "workspace": "default"},
        ],
    }


def refused(r, caller):
    check_status(r, 403, "refused by the policy")
    err = r.json()["error"]
    eq(err["type"], "forbidden-by-policy", "error type")
    assert caller in err["message"], err


def upstream_requests(m):
    return m.stats().get("requests_received", 0)


def run(coro, seconds=30):
    return asyncio.run(asyncio.wait_for(coro, T(seconds)))


# ------------------------------------------------------------------ --check-config

@pytest.mark.parametrize("caller, member", [
    ({"name": "x", "match": {"uid": ["no-such-user-tgb"]}, "allow": []}, "callers[0].match.uid[0]"),
    ({"name": "x", "match": {"any": True}, "allow": [{"route": ["nope"]}]}, "callers[0].allow[0].route[0]"),
    ({"name": "x", "match": {"any": True}, "allow": [{"service": "*", "bogus": 1}]}, "callers[0].allow[0]"),
    ({"name": "x", "match": {"forward": True}, "allow": [], "upstream_token_file": "/k"},
     "callers[0].upstream_token_file"),
    ({"name": "x", "match": {"any": True}, "upstream_token_file": "/nonexistent/k"}, "callers[0].upstream_token_file"),
    ({"name": "x", "match": {"any": True}, "max_connections": 0}, "callers[0].max_connections"),
    ({"name": "bad name", "match": {"any": True}}, "callers[0].name"),
])
def test_check_config_names_the_member_at_fault(caller, member):
    p = policy_file({"default": "deny", "callers": [caller]})
    r = run_bridge("--policy", p, "--check-config")
    eq(r.returncode, 2, "exit code for %s" % member)
    assert member in r.stderr, r.stderr


def test_check_config_two_callers_one_token_and_client_token_file():
    tok = tmpfile(CI_TOKEN.encode())
    p = policy_file({"default": "deny", "callers": [
        {"name": "a", "match": {"token_file": tok}},
        {"name": "b", "match": {"token_file": tmpfile(CI_TOKEN.encode() + b"\n")}}]})
    r = run_bridge("--policy", p, "--check-config")
    eq(r.returncode, 2, "two callers sharing a token")
    assert "callers[1]" in r.stderr and "same token" in r.stderr, r.stderr
    assert CI_TOKEN not in r.stderr, "a token in the message"
    p = policy_file(token_callers())
    r = run_bridge("--policy", p, "--client-token-file", tok, "--check-config")
    eq(r.returncode, 2, "--client-token-file with --policy")
    assert "token_file" in r.stderr, r.stderr


def test_check_config_warns_of_unknown_operations():
    p = policy_file({"default": "deny", "callers": [
        {"name": "x", "match": {"any": True},
         "allow": [{"service": ["config"], "operation": ["get", "frobnicate"]}]}]})
    r = run_bridge("--policy", p, "--check-config")
    eq(r.returncode, 0, "an unknown operation is a warning: " + r.stderr)
    assert "callers[0].allow[0].operation" in r.stderr and "frobnicate" in r.stderr, r.stderr


# ------------------------------------------------------------------ token callers

@timeout(60)
def test_token_callers_over_tcp_rest_and_unix_http():
    m = start_mock(tokens=[GW])
    d = tempfile.mkdtemp(prefix="tgb-policy-")
    sock = os.path.join(d, "s.sock")
    b = start_bridge(m.url, "--token", GW, "--policy", policy_file(token_callers()), "--unix", sock, "--access-log", "on")
    b.wait_ready()
    ci = {"Authorization": "Bearer " + CI_TOKEN}
    an = {"Authorization": "Bearer " + AN_TOKEN}
    check_status(b.post("/api/v1/config", {"operation": "list", "type": "x"}, headers=ci), 200, "ci: config list")
    before = upstream_requests(m)
    refused(b.post("/api/v1/config", {"operation": "put", "values": []}, headers=ci), "ci")
    refused(b.post("/api/v1/config", {"type": "x"}, headers=ci), "ci")   # no operation: no rule without a list
    refused(b.post(FLOW_TC, tc("hi"), headers=ci), "ci")
    refused(b.post(FLOW_TC, tc("hi")), "default")
    refused(b.post(FLOW_TC, tc("hi"), headers={"Authorization": "Bearer not-a-local-token"}), "default")
    refused(b.post("/api/v1/flow/other/service/text-completion", tc("hi"), headers=an), "analytics")
    refused(b.post(FLOW_TC, dict(tc("hi"), workspace="elsewhere"), headers=an), "analytics")
    eq(upstream_requests(m), before, "refused calls sent upstream")
    check_status(b.post(FLOW_TC, tc("hi"), headers=an), 200, "analytics: text-completion")
    # Unix HTTP: the same tokens
    check_status(unix_request(sock, "POST", FLOW_TC, tc("hi"), headers=an), 200, "Unix HTTP analytics")
    refused(unix_request(sock, "POST", FLOW_TC, tc("hi"), headers=ci), "ci")
    # routes: /status is governed (route "status"); /metrics, /healthz are not
    refused(b.get("/status", headers=an), "analytics")
    check_status(b.get("/metrics"), 200, "/metrics outside the policy")
    check_status(b.get("/healthz"), 200, "/healthz outside the policy")
    refused(b.get("/api/metrics/query?query=up", headers=an), "analytics")
    metrics = b.get("/metrics").body.decode()
    assert 'tgbridge_policy_refusals_total{caller="ci",service="config"} 2' in metrics, metrics
    assert 'tgbridge_policy_refusals_total{caller="default",service="text-completion"} 2' in metrics, metrics
    log = b.log()
    assert "caller=ci " in log and "caller=analytics " in log, log[-2000:]
    assert CI_TOKEN not in log and AN_TOKEN not in log, "a token in the log"


@timeout(60)
def test_local_websocket_caller_fixed_at_upgrade_then_auth_frame():
    m = start_mock(tokens=[GW])
    b = start_bridge(m.url, "--token", GW, "--policy", policy_file(token_callers()))
    b.wait_ready()

    def env(rid, service="text-completion", **extra):
        e = {"id": rid, "service": service, "request": tc("w")}
        if service == "text-completion":
            e["flow"] = "default"
        e.update(extra)
        return e

    async def client():
        url = "ws://127.0.0.1:%d/api/v1/socket?token=%s" % (b.port, AN_TOKEN)
        async with websockets.connect(url) as ws:
            await ws.send(json.dumps(env("a1")))
            r1 = json.loads(await ws.recv())
            await ws.send(json.dumps({"id": "c1", "service": "config", "request": {"operation": "list", "type": "t"}}))
            r2 = json.loads(await ws.recv())
            await ws.send(json.dumps({"type": "auth", "token": CI_TOKEN}))
            r3 = json.loads(await ws.recv())
            await ws.send(json.dumps({"id": "c2", "service": "config", "request": {"operation": "list", "type": "t"}}))
            r4 = json.loads(await ws.recv())
            await ws.send(json.dumps(env("a2")))
            r5 = json.loads(await ws.recv())
            return r1, r2, r3, r4, r5

    r1, r2, r3, r4, r5 = run(client())
    assert "response" in r1, r1
    eq(r2["id"], "c1", "refusal frame id")
    eq(r2["error"]["type"], "forbidden-by-policy", "analytics may not call config")
    eq(r3.get("type"), "auth-ok", "auth frame")
    assert "response" in r4, r4
    eq(r5["error"]["type"], "forbidden-by-policy", "after the frame the caller is ci")
    assert "ci" in r5["error"]["message"], r5


# ------------------------------------------------------------------ uids x services

def as_uid(uid, sock, lines):
    """Send lines over the Unix socket as uid (a forked child with setresuid);
    returns the reply lines."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            c = LineClient(sock)
            c.send(*lines)
            pending, out = len(lines), []
            while pending:      # streamed services answer in parts
                f = c.line()
                if f.get("complete"):
                    pending -= 1
                    out.append(f)
            os.write(w, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    assert data, "the client as uid %d got nothing" % uid
    return json.loads(data)


SERVICES = {
    "text-completion": ("default", {"system": "", "prompt": "p"}),
    "graph-rag": ("default", {"query": "q"}),
    "embeddings": ("default", {"text": ["t"]}),
    "config": (None, {"operation": "list", "type": "t"}),
}


@timeout(90)
def test_three_uids_by_four_services_over_the_unix_socket():
    if os.geteuid() != 0:
        print("SKIP: needs root to connect as other uids (setresuid)")
        pytest.skip("needs root (setresuid)")
    allowed = {UIDS[0]: {"text-completion", "graph-rag"},
               UIDS[1]: {"config", "embeddings"},
               UIDS[2]: set()}
    doc = {"default": "deny", "callers": [
        {"name": "u1", "match": {"uid": [UIDS[0]]},
         "allow": [{"service": ["text-completion", "graph-rag"], "flow": ["default"]}]},
        {"name": "u2", "match": {"uid": [UIDS[1]]},
         "allow": [{"service": ["embeddings"]}, {"service": ["config"], "operation": ["list"]}]},
    ]}
    m = start_mock(tokens=[GW])
    d = tempfile.mkdtemp(prefix="tgb-policy-")
    os.chmod(d, 0o755)
    sock = os.path.join(d, "s.sock")
    b = start_bridge(m.url, "--token", GW, "--policy", policy_file(doc), "--unix", sock, "--unix-mode", "0666", "--access-log", "on")
    b.wait_ready()
    for uid in UIDS:
        lines = []
        for i, (svc, (flow, req)) in enumerate(sorted(SERVICES.items())):
            e = {"id": "%s-%d" % (svc, i), "service": svc, "request": req}
            if flow:
                e["flow"] = flow
            lines.append(compact(e))
        before = upstream_requests(m)
        got = as_uid(uid, sock, lines)
        replies = {r["id"]: r for r in got}
        assert len(replies) == len(lines), got
        for i, svc in enumerate(sorted(SERVICES)):
            r = replies["%s-%d" % (svc, i)]
            if svc in allowed[uid]:
                assert r.get("error", {}).get("type") != "forbidden-by-policy", (uid, svc, r)
            else:
                eq(r.get("error", {}).get("type"), "forbidden-by-policy", "uid %d %s" % (uid, svc))
                name = {UIDS[0]: "u1", UIDS[1]: "u2"}.get(uid, "default")
                assert name in r["error"]["message"], r
        eq(upstream_requests(m) - before, len(allowed[uid]), "calls sent upstream for uid %d" % uid)
    assert "caller=u1 " in b.log() and "caller=default " in b.log(), b.log()[-2000:]


# ------------------------------------------------------------------ workspace pinning

@timeout(60)
def test_workspace_pinned_caller():
    doc = {"default": "deny", "callers": [
        {"name": "pinned", "match": {"token_file": tmpfile(AN_TOKEN.encode())},
         "allow": [{"service": ["text-completion", "config"]}], "workspace": "ws-a"}]}
    m = start_mock(tokens=[GW], extra=("--workspaces", "default,ws-a,ws-b"))
    b = start_bridge(m.url, "--token", GW, "--policy", policy_file(doc))
    b.wait_ready()
    an = {"Authorization": "Bearer " + AN_TOKEN}
    r = b.post(FLOW_TC, tc("hi", echo=True), headers=an)
    check_status(r, 200, "pinned caller, no workspace named")
    eq(r.json()["workspace"], "ws-a", "the envelope carries the caller's workspace")
    refused(b.post(FLOW_TC, dict(tc("hi"), workspace="ws-b"), headers=an), "pinned")
    refused(b.post("/api/v1/config", {"operation": "getvalues-all-ws", "type": "t"}, headers=an), "pinned")

    async def client():
        url = "ws://127.0.0.1:%d/api/v1/socket?token=%s" % (b.port, AN_TOKEN)
        async with websockets.connect(url) as ws:
            await ws.send(json.dumps({"id": "x", "service": "text-completion", "flow": "default",
                                      "workspace": "ws-b", "request": tc("hi")}))
            return json.loads(await ws.recv())
    r = run(client())
    eq(r["error"]["type"], "forbidden-by-policy", "another workspace over the WebSocket")


@timeout(60)
def test_workspace_pinned_caller_against_a_v1_gateway_is_refused():
    doc = {"default": "deny", "callers": [
        {"name": "pinned", "match": {"token_file": tmpfile(AN_TOKEN.encode())},
         "allow": [{"service": ["text-completion"]}], "workspace": "ws-a"},
        {"name": "free", "match": {"token_file": tmpfile(CI_TOKEN.encode())},
         "allow": [{"service": ["text-completion"]}]}]}
    m = start_mock(era="v1b", secret="v1-policy-secret-4e")
    b = start_bridge(m.url, "--token", "v1-policy-secret-4e", "--policy", policy_file(doc))
    b.wait_ready()
    r = b.post(FLOW_TC, tc("hi"), headers={"Authorization": "Bearer " + AN_TOKEN})
    refused(r, "pinned")
    assert "no workspaces" in r.json()["error"]["message"], r
    check_status(b.post(FLOW_TC, tc("hi"), headers={"Authorization": "Bearer " + CI_TOKEN}), 200,
                 "an unpinned caller on a v1 gateway")


# ------------------------------------------------------------------ routes and bulk sockets

@timeout(60)
def test_pass_through_routes_and_bulk_sockets():
    doc = {"default": "deny", "callers": [
        {"name": "bulk", "match": {"token_file": tmpfile(CI_TOKEN.encode())},
         "allow": [{"route": ["flow-export", "i18n"]}]}]}
    m = start_mock(tokens=[GW])
    b = start_bridge(m.url, "--token", GW, "--policy", policy_file(doc), "--access-log", "on")
    b.wait_ready()
    ci = {"Authorization": "Bearer " + CI_TOKEN}
    r = b.get("/api/v1/i18n/packs/en", headers=ci)
    assert r.status != 403, r
    refused(b.get("/api/v1/i18n/packs/en"), "default")
    refused(b.get("/api/metrics/query?query=up", headers=ci), "bulk")

    async def bulk(path, token):
        url = "ws://127.0.0.1:%d%s?token=%s" % (b.port, path, token)
        try:
            async with websockets.connect(url) as ws:
                await ws.close()
                return 101
        except websockets.exceptions.InvalidStatusCode as e:
            return e.status_code
    eq(run(bulk("/api/v1/flow/default/export/triples", CI_TOKEN)), 101, "flow-export allowed")
    eq(run(bulk("/api/v1/flow/default/import/triples", CI_TOKEN)), 403, "flow-import refused")
    eq(run(bulk("/api/v1/flow/default/export/triples", "nobody-token-x")), 403, "default deny")
    b.wait_log(r"access frontend=bulk caller=bulk ", timeout=10)
    b.wait_log(r"access frontend=rest caller=bulk method=GET route=/api/v1/i18n", timeout=10)


@timeout(60)
def test_bulk_socket_of_a_pinned_caller_uses_its_workspace():
    doc = {"default": "deny", "callers": [
        {"name": "pinned", "match": {"token_file": tmpfile(CI_TOKEN.encode())},
         "allow": [{"route": ["flow-export"]}], "workspace": "ws-a"}]}
    m = start_mock(tokens=[GW], extra=("--workspaces", "default,ws-a,ws-b"))
    b = start_bridge(m.url, "--token", GW, "--policy", policy_file(doc))
    b.wait_ready()

    async def bulk(query):
        url = "ws://127.0.0.1:%d/api/v1/flow/default/export/triples?token=%s%s" % (b.port, CI_TOKEN, query)
        try:
            async with websockets.connect(url) as ws:
                await ws.close()
                return 101
        except websockets.exceptions.InvalidStatusCode as e:
            return e.status_code
    eq(run(bulk("&workspace=ws-b")), 403, "another workspace")
    eq(run(bulk("")), 101, "no workspace named")
    wait_until(lambda: m.stats().get("passthrough", {}).get("sockets"), timeout=10, what="the socket at the mock")
    eq(m.stats()["passthrough"]["sockets"][-1]["workspace_param"], "ws-a", "the pinned workspace upstream")


# ------------------------------------------------------------------ reload

@timeout(60)
def test_sighup_applies_a_good_policy_and_keeps_the_old_for_a_bad_one():
    doc = token_callers()
    p = policy_file(doc)
    m = start_mock(tokens=[GW])
    b = start_bridge(m.url, "--token", GW, "--policy", p)
    b.wait_ready()
    ci = {"Authorization": "Bearer " + CI_TOKEN}
    refused(b.post(FLOW_TC, tc("hi"), headers=ci), "ci")
    doc["callers"][0]["allow"].append({"service": ["text-completion"]})
    with open(p, "w") as f:
        json.dump(doc, f)
    os.kill(b.proc.pid, signal.SIGHUP)
    wait_until(lambda: b.post(FLOW_TC, tc("hi"), headers=ci).status == 200, timeout=10,
               what="the new policy applied")
    with open(p, "w") as f:
        f.write('{"default": "allow", "callers": [{"name": "ci"}]}')
    os.kill(b.proc.pid, signal.SIGHUP)
    b.wait_log(r"callers\[0\].*keeping the policy as it was", timeout=10)
    check_status(b.post(FLOW_TC, tc("hi"), headers=ci), 200, "the old policy still applies")
    refused(b.post(FLOW_TC, tc("hi")), "default")


@timeout(60)
def test_admin_listener_status_stays_outside_the_policy():
    m = start_mock(tokens=[GW])
    b = start_bridge(m.url, "--token", GW, "--policy", policy_file({"default": "deny"}),
                     "--admin-listen", "127.0.0.1:0")
    port = int(b.wait_log(r"admin listener on (\S+):(\d+)").group(2))
    b.wait_ready()
    refused(b.get("/status"), "default")
    r = request(port, "GET", "/status")
    check_status(r, 200, "the admin listener's /status for a loopback caller")


PLUS_TOKEN = "tgb+policy/plus_token_31"


@timeout(60)
def test_auth_route_caller_by_x_tgbridge_token_and_encoded_query_token():
    """On the auth routes the Bearer is the caller's own credential: the local token
    comes in X-Tgbridge-Token.  A ?token= is read percent-decoded, as the gateway does."""
    doc = {"default": "deny", "callers": [
        {"name": "ui", "match": {"token_file": tmpfile(AN_TOKEN.encode())}, "allow": [{"route": ["auth"]}]},
        {"name": "bulk", "match": {"token_file": tmpfile(PLUS_TOKEN.encode())},
         "allow": [{"route": ["flow-export"]}]}]}
    m = start_mock(tokens=[GW], extra=("--user", "alice:wonderland"))
    b = start_bridge(m.url, "--token", GW, "--policy", policy_file(doc))
    b.wait_ready()
    login = {"username": "alice", "password": "wonderland"}
    r = b.post("/api/v1/auth/login", login, headers={"Authorization": "Bearer users-own-jwt",
                                                      "X-Tgbridge-Token": AN_TOKEN})
    check_status(r, 200, "login by the ui caller")
    refused(b.post("/api/v1/auth/login", login, headers={"Authorization": "Bearer users-own-jwt"}), "default")

    async def bulk(token):
        url = "ws://127.0.0.1:%d/api/v1/flow/default/export/triples?token=%s" % (b.port, token)
        try:
            async with websockets.connect(url) as ws:
                await ws.close()
                return 101
        except websockets.exceptions.InvalidStatusCode as e:
            return e.status_code
    eq(run(bulk(urllib.parse.quote(PLUS_TOKEN, safe=""))), 101, "a percent-encoded ?token=")
    eq(run(bulk(PLUS_TOKEN)), 101, "as sent (its + not a space)")


@timeout(60)
def test_pinned_caller_pass_through_workspace_and_local_token_never_upstream():
    """export-core of a pinned caller carries its workspace (another is refused); a
    local token shown as the Bearer on an auth route is never sent to the gateway."""
    doc = {"default": "deny", "callers": [
        {"name": "pinned", "match": {"token_file": tmpfile(AN_TOKEN.encode())},
         "allow": [{"route": ["export-core", "auth"]}], "workspace": "ws-a"}]}
    m = start_mock(tokens=[GW], extra=("--workspaces", "default,ws-a,ws-b", "--user", "alice:wonderland"))
    b = start_bridge(m.url, "--token", GW, "--policy", policy_file(doc))
    b.wait_ready()
    an = {"Authorization": "Bearer " + AN_TOKEN}
    refused(b.get("/api/v1/export-core?id=size-10&workspace=ws-b", headers=an), "pinned")
    check_status(b.get("/api/v1/export-core?id=size-10", headers=an), 200, "export-core, no workspace named")
    rec = m.stats()["passthrough"]["routes"]["export-core"]
    assert "workspace=ws-a" in rec["last_query"], rec
    check_status(b.get("/api/v1/export-core?id=size-10&workspace=ws-a", headers=an), 200, "its own workspace")
    check_status(b.post("/api/v1/auth/login", {"username": "alice", "password": "wonderland"}, headers=an), 200,
                 "login with the local token as the Bearer")
    eq(m.stats()["passthrough"]["routes"]["auth/login"]["last_authorization"], None,
       "the local token sent upstream")
