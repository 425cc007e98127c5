#!/usr/bin/python3
"""Self-test for tests/mock_gateway.py; `make test` runs it as tests/test_mock_selftest.py.

    /usr/bin/python3 tests/mock_gateway_selftest.py [-v]

Starts the mock in various eras and checks auth, every error shape, the
16-window / reader stall, close 1009, drops, closes, controls and SIGTERM.
"""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import aiohttp

HERE = os.path.dirname(os.path.abspath(__file__))
MOCK = os.path.join(HERE, "mock_gateway.py")
VERBOSE = "-v" in sys.argv
FAILURES = []


def check(cond, what):
    if cond:
        if VERBOSE:
            print("  ok  ", what)
    else:
        print("  FAIL", what)
        FAILURES.append(what)


class Mock:
    def __init__(self, *args):
        self.args = list(args)

    def __enter__(self):
        self.p = subprocess.Popen(
            ["/usr/bin/python3", MOCK, *self.args], stdout=subprocess.PIPE,
            stderr=None if VERBOSE else subprocess.DEVNULL, text=True)
        line = self.p.stdout.readline()
        assert line.startswith("PORT "), line
        self.port = int(line.split()[1])
        self.base = f"http://127.0.0.1:{self.port}"
        self.url = f"ws://127.0.0.1:{self.port}/api/v1/socket"
        return self

    def __exit__(self, *exc):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            self.p.wait(5)


async def stats(session, m):
    async with session.get(m.base + "/_mock/stats") as r:
        return await r.json()


async def recv(ws, timeout=3.0):
    msg = await ws.receive(timeout=timeout)
    if msg.type != aiohttp.WSMsgType.TEXT:
        return msg
    return json.loads(msg.data)


async def call(ws, env, timeout=3.0):
    """Send one envelope, collect frames until complete / top-level error."""
    await ws.send_str(json.dumps(env))
    frames = []
    while True:
        f = await recv(ws, timeout)
        frames.append(f)
        if not isinstance(f, dict) or "error" in f or f.get("complete"):
            return frames


async def authed(session, m, token="tg_x"):
    ws = await session.ws_connect(m.url, max_msg_size=0)
    await ws.send_json({"type": "auth", "token": token})
    r = await recv(ws)
    assert r.get("type") == "auth-ok", r
    return ws


TC = {"system": "terse", "prompt": "hello world again"}


async def test_v1_auth():
    print("v1 auth / handshake")
    async with aiohttp.ClientSession() as s:
        with Mock("--era", "v1a", "--secret", "s3cr+t&x") as m:
            try:
                await s.ws_connect(m.url)
                check(False, "v1 no token -> 401")
            except aiohttp.WSServerHandshakeError as e:
                check(e.status == 401, "v1 no token -> 401")
            async with s.get(m.url) as r:
                body = await r.text()
                check(r.status == 401 and body == "401: Unauthorized"
                      and r.content_type == "text/plain",
                      "v1 401 text body")
            try:
                await s.ws_connect(m.url, headers={
                    "Authorization": "Bearer s3cr+t&x"})
                check(False, "v1 Authorization header ignored")
            except aiohttp.WSServerHandshakeError as e:
                check(e.status == 401, "v1 Authorization header ignored")
            ws = await s.ws_connect(m.url + "?token=s3cr%2Bt%26x")
            await ws.send_json({"type": "auth", "token": "s3cr+t&x"})
            check(await recv(ws) == {"error": "Bad message"},
                  "v1a auth frame -> E1 Bad message")
            fr = await call(ws, {"id": "r1", "service": "text-completion",
                                 "flow": "default", "request": TC})
            check(fr[-1]["response"]["response"] == TC["prompt"]
                  and fr[-1]["complete"] is True, "v1a text-completion")
            await ws.close()
            st = await stats(s, m)
            check(st["http_401"] == 3 and st["query_tokens_seen"] == 1
                  and st["last_query_token"] == "s3cr+t&x"
                  and st["auth_headers_seen"] == 1, "v1 stats")
        with Mock("--era", "v1b") as m:
            ws = await s.ws_connect(m.url + "?token=whatever")
            await ws.send_json({"type": "auth", "token": "x"})
            check(await recv(ws) == {"error": {"message": "Bad message",
                                               "type": "error"},
                                     "complete": True},
                  "v1b auth frame -> E3 Bad message")
            await ws.close()


async def test_v2_auth():
    print("v2 auth")
    async with aiohttp.ClientSession() as s:
        with Mock("--era", "v2a", "--anonymous") as m:
            ws = await s.ws_connect(m.url)
            await ws.send_json({"type": "auth", "token": ""})
            check((await recv(ws))["type"] == "auth-failed",
                  "v2a empty token refused even with --anonymous")
            await ws.send_json({"type": "auth", "token": "tg_abc"})
            check(await recv(ws) == {"type": "auth-ok",
                                     "workspace": "default"},
                  "v2a auth-ok workspace")
            await ws.close()
        with Mock("--era", "v2b", "--anonymous") as m:
            ws = await s.ws_connect(m.url)
            await ws.send_json({"type": "auth"})
            check(await recv(ws) == {"type": "auth-ok",
                                     "workspace": "default"},
                  "v2b anonymous")
            await ws.close()
        with Mock("--era", "v2c") as m:
            ws = await s.ws_connect(m.url)
            await ws.send_json({"type": "auth", "token": ""})
            check((await recv(ws))["type"] == "auth-failed",
                  "v2c anonymous refused without --anonymous")
            await ws.send_json({"type": "auth", "token": "a.b.c"})
            check(await recv(ws) == {"type": "auth-ok",
                                     "default_workspace": "default"},
                  "v2c auth-ok default_workspace (JWT shape)")
            await ws.close()
        with Mock("--era", "v2d", "--token", "tg_good",
                  "--token", "h.p.s") as m:
            ws = await s.ws_connect(m.url + "?token=tg_good",
                                    headers={"Authorization":
                                             "Bearer tg_good"})
            fr = await call(ws, {"id": "p1", "service": "text-completion",
                                 "flow": "default", "request": TC})
            check(fr == [{"id": "p1", "error": {"message": "auth failure",
                                                "type": "auth-required"},
                          "complete": True}], "pre-auth -> auth-required")
            await ws.send_json({"type": "auth", "token": "mysecret"})
            check(await recv(ws) == {"type": "auth-failed",
                                     "error": "auth failure"},
                  "malformed token -> auth-failed")
            await ws.send_json({"type": "auth", "token": "tg_bad"})
            check((await recv(ws))["type"] == "auth-failed",
                  "unknown key -> auth-failed")
            await ws.send_json({"type": "auth", "token": "tg_good"})
            check((await recv(ws))["type"] == "auth-ok", "good key")
            await ws.send_json({"type": "auth", "token": "bad"})
            check((await recv(ws))["type"] == "auth-failed", "re-auth fail")
            fr = await call(ws, {"id": "p2", "service": "text-completion",
                                 "flow": "default", "request": TC})
            check(fr[-1].get("complete") and "response" in fr[-1],
                  "failed re-auth keeps identity")
            await ws.close()
            st = await stats(s, m)
            check(st["auth_ok"] == 1 and st["auth_failed"] == 3
                  and st["query_tokens_seen"] == 1
                  and st["auth_headers_seen"] == 1, "v2 auth stats")


def E(msg, id=None):
    f = {"error": {"message": msg, "type": "error"}, "complete": True}
    if id is not None:
        f["id"] = id
    return f


def P(id, type_, msg):
    return {"id": id, "error": {"message": msg, "type": type_},
            "complete": True}


async def test_validation():
    print("validation order / error shapes (§4.1)")
    async with aiohttp.ClientSession() as s:
        cases_v1a = [
            ("not json", {"error": "Expecting value: line 1 column 1 (char 0)"}),
            ("[1,2]", {"error": "Bad message"}),
            ('{"id":"a"}', {"error": "Bad message"}),
            ('{"request":{}}', {"error": "Bad message"}),
            ('{"id":"a","request":{}}', {"error": "'service'"}),
            ('{"id":"a","service":"nope","request":{}}', {"error": "'nope'"}),
            ('{"id":"a","service":"agent","request":{}}',
             {"error": "'agent'"}),
            ('{"id":"a","service":"config","flow":"default","request":{}}',
             {"error": "This kind not supported by flow"}),
            ('{"id":"a","service":"agent","flow":"x","request":{}}',
             {"error": "Invalid flow"}),
        ]
        with Mock("--era", "v1a") as m:
            ws = await s.ws_connect(m.url)
            for raw, want in cases_v1a:
                await ws.send_str(raw)
                got = await recv(ws)
                check(got == want, f"v1a {raw} -> {want}")
            await ws.close()
        with Mock("--era", "v1b") as m:
            ws = await s.ws_connect(m.url)
            for raw, want in [
                ("not json", E("Expecting value: line 1 column 1 (char 0)")),
                ("[1,2]", E("'list' object has no attribute 'get'")),
                ('{"id":"a"}', E("Bad message", "a")),
                ('{"id":"","x":1}', E("Bad message")),
                ('{"request":{}}', E("Bad message")),
                ('{"id":"a","request":{}}', E("'service'", "a")),
                ('{"id":"a","service":"nope","request":{}}',
                 E("'nope'", "a")),
                ('{"id":"a","service":"agent","flow":"x","request":{}}',
                 E("Invalid flow", "a")),
            ]:
                await ws.send_str(raw)
                got = await recv(ws)
                check(got == want, f"v1b {raw} -> {want}")
            await ws.close()
        with Mock("--era", "v1c") as m:
            ws = await s.ws_connect(m.url)
            fr = await call(ws, {"id": 7, "service": "agent", "flow": "x",
                                 "workspace": "w2", "request": {}})
            check(fr == [E("Invalid flow w2/x", 7)],
                  "v1c Invalid flow ws/flow, numeric id")
            fr = await call(ws, {"id": "t", "service": "text-load",
                                 "flow": "default", "request": {"text": ""}})
            check(fr == [{"id": "t", "response": {}, "complete": True}],
                  "v1c text-load -> {}")
            await ws.close()
        with Mock("--era", "v2d", "--workspaces", "default,w2",
                  "--exclude-kinds", "reranker") as m:
            ws = await authed(s, m)
            for env, want in [
                ("not json", E("Expecting value: line 1 column 1 (char 0)")),
                ("[1,2]", E("'list' object has no attribute 'get'")),
                ('{"id":"a"}', E("Bad message", "a")),
                ('{"request":{}}', E("Bad message")),
                ({"id": "a", "request": {}},
                 P("a", "unknown-service", "unknown service")),
                ({"id": "a", "service": "agent", "request": {}},
                 P("a", "unknown-service", "unknown service")),
                ({"id": "a", "service": "config", "flow": "default",
                  "request": {"operation": "get"}},
                 P("a", "unknown-service", "unknown service")),
                ({"id": "a", "service": "config", "request": {}},
                 P("a", "unknown-service", "unknown service")),
                ({"id": "a", "service": "text-load", "flow": "default",
                  "request": {}},
                 P("a", "unknown-service", "unknown service")),
                ({"id": "a", "service": "agent", "flow": "default",
                  "workspace": "nope", "request": {}},
                 P("a", "workspace-not-found", "workspace not found")),
                ({"id": "a", "service": "agent", "flow": "x",
                  "request": {}},
                 {"id": "a", "error": {"message": "Invalid flow default/x",
                                       "type": "error"}, "complete": True}),
                ({"id": "a", "service": "reranker", "flow": "default",
                  "request": {}},
                 {"id": "a", "error": {"message":
                                       "This kind not supported by flow",
                                       "type": "error"}, "complete": True}),
                ({"id": "a", "service": "graph-rag", "flow": "default",
                  "request": {}},
                 {"id": "a", "response": {"error": {
                     "type": "gateway-error", "message": "'query'"}},
                  "complete": True}),
            ]:
                await ws.send_str(env if isinstance(env, str)
                                  else json.dumps(env))
                got = await recv(ws)
                check(got == want, f"v2d {str(env)[:70]} -> {want}")
            fr = await call(ws, {"id": "w", "service": "flow",
                                 "workspace": "w2",
                                 "request": {"operation": "list-flows"}})
            check(fr[-1]["response"] == {"flow-ids": ["default"]},
                  "v2d flow list-flows in w2")
            await ws.close()


async def test_controls():
    print("_mock controls and services")
    async with aiohttp.ClientSession() as s:
        with Mock("--era", "v2d") as m:
            ws = await authed(s, m)

            def env(id, svc, req, flow="default"):
                e = {"id": id, "service": svc, "request": req}
                if flow:
                    e["flow"] = flow
                return e

            shapes = {
                "E1": {"error": "boom"},
                "E2": {"id": "e", "error": {"message": "boom",
                                            "type": "llm-error"},
                       "complete": True},
                "E3": {"error": {"message": "boom", "type": "llm-error"},
                       "complete": True},
                "E4": {"id": "e", "error": {"message": "boom",
                                            "type": "llm-error"},
                       "complete": True},
                "E5": {"id": "e", "response": {"error": {
                    "type": "llm-error", "message": "boom"}},
                    "complete": True},
                "E6": {"id": "e", "response": {"error": "boom"},
                       "complete": True},
            }
            for shape, want in shapes.items():
                fr = await call(ws, env("e", "text-completion", {
                    **TC, "streaming": True, "_mock": {"error": {
                        "shape": shape, "type": "llm-error",
                        "message": "boom", "after": 2}}}))
                check(len(fr) == 3 and fr[-1] == want
                      and fr[0]["complete"] is False,
                      f"error {shape} after 2")
            fr = await call(ws, env("e", "agent", {
                "question": "q", "_mock": {"error": {"shape": "E4",
                                                     "type": "access-denied"}}}))
            check(fr == [P("e", "access-denied", "access denied")],
                  "E4 inline default message")

            fr = await call(ws, env("g", "graph-rag", {
                "query": "what", "streaming": True, "_mock": {"parts": 4}}))
            r = [f["response"] for f in fr]
            check(r[0]["message_type"] == "explain" and len(fr) == 6
                  and r[4]["end_of_stream"] is True
                  and fr[4]["complete"] is False
                  and r[5]["end_of_session"] is True
                  and fr[5]["complete"] is True
                  and "".join(x["response"] for x in r[1:5])
                  == "Mock graph RAG answer to: what",
                  "graph-rag streaming shape")
            fr = await call(ws, env("g", "graph-rag", {"query": "q"}))
            check(len(fr) == 2 and fr[1]["response"]["end_of_stream"]
                  and fr[1]["response"]["end_of_session"],
                  "graph-rag non-streaming: explain + final")
            fr = await call(ws, env("a", "agent", {"question": "q",
                                                   "streaming": True}))
            check([f["response"]["message_type"] for f in fr][:3]
                  == ["thought", "observation", "explain"]
                  and fr[-1]["response"]["end_of_dialog"] is True,
                  "agent streaming")
            fr = await call(ws, env("t", "text-completion",
                                    {**TC, "streaming": True}))
            check(len(fr) == 4 and "".join(
                f["response"]["response"] for f in fr) == TC["prompt"]
                and fr[-1]["response"]["end_of_stream"] is True,
                "text-completion streaming 3 parts + final")
            fr = await call(ws, env("t", "triples", {"streaming": True,
                                                     "_mock": {"parts": 5}}))
            check(len(fr) == 5 and all("end_of_stream" not in f["response"]
                                       for f in fr), "triples batches")
            fr = await call(ws, env("k", "knowledge", {
                "operation": "get-kg-core", "id": "c1"}, flow=None))
            check(fr[-1]["response"] == {"eos": True} and len(fr) > 2,
                  "knowledge get-kg-core")
            fr = await call(ws, env("v", "embeddings", {"texts": ["a", "b"]}))
            check(len(fr[0]["response"]["vectors"]) == 2, "embeddings")
            fr = await call(ws, env("c", "config", {
                "operation": "put", "values": [
                    {"type": "t", "key": "k", "value": "v"}]}, flow=None))
            fr = await call(ws, env("c", "config", {
                "operation": "get", "keys": [{"type": "t", "key": "k"}]},
                flow=None))
            check(fr[-1]["response"]["values"][0]["value"] == "v",
                  "config put/get")
            fr = await call(ws, env("cm", "collection-management", {
                "operation": "list-collections"}, flow=None))
            check(fr[-1]["response"]["collections"][0]["collection"]
                  == "default", "collections")
            fr = await call(ws, env("i", "iam", {"operation": "whoami",
                                                 "actor": "spoof"},
                                    flow=None))
            check(fr[-1]["response"]["user"]["id"] == "mock-user", "iam")

            e = env(42, "text-completion", {**TC, "_mock": {"echo": True}})
            e["workspace"] = "default"
            fr = await call(ws, e)
            check(fr[0]["id"] == 42 and fr[0]["response"]["envelope"] == e
                  and fr[0]["response"]["echo"] == e["request"], "echo")
            fr = await call(ws, env("z", "text-completion", {
                **TC, "_mock": {"size": 5_000_000}}), timeout=10)
            b = fr[0]["response"]["blob"]
            check(len(b) == 5_000_000 and b[:3] == "abc"
                  and fr[0]["response"]["response"] == b, "5 MB blob")
            fr = await call(ws, env("to", "agent", {
                "question": "q", "_mock": {"timeout": True}}))
            check(fr == [{"id": "to", "response": {"error": {
                "type": "gateway-error", "message": ""}},
                "complete": True}], "timeout v2d message ''")
            t0 = time.monotonic()
            fr = await call(ws, env("d", "text-completion", {
                **TC, "streaming": True,
                "_mock": {"first_delay": 0.3, "delay": 0.1, "parts": 3}}))
            dt = time.monotonic() - t0
            check(len(fr) == 4 and 0.55 < dt < 1.5, f"delays ({dt:.2f}s)")
            await ws.close()
        with Mock("--era", "v2a", "--timeout", "0.3") as m:
            ws = await authed(s, m)
            t0 = time.monotonic()
            fr = await call(ws, {"id": "n", "service": "agent",
                                 "flow": "default", "request": {
                                     "question": "q",
                                     "_mock": {"never": True}}})
            dt = time.monotonic() - t0
            check(fr == [{"id": "n", "response": {"error": {
                "type": "gateway-error", "message": "Timeout"}},
                "complete": True}] and 0.25 < dt < 1.0,
                "--timeout idle timeout 'Timeout' (v2a)")
            await ws.close()


async def test_window():
    print("window / reader stall (§6.1)")
    async with aiohttp.ClientSession() as s:
        with Mock("--era", "v2d") as m:
            ws = await authed(s, m)
            await ws.send_json({"id": "slow", "service": "agent",
                                "flow": "default", "request": {
                                    "question": "q",
                                    "_mock": {"never": True}}})
            for i in range(40):
                await ws.send_json({"id": f"q{i}", "service": "embeddings",
                                    "flow": "default",
                                    "request": {"texts": ["x"]}})
            await ws.send_json({"type": "auth", "token": "tg_x"})
            done = []
            t0 = time.monotonic()
            while True:
                try:
                    f = await recv(ws, timeout=1.0)
                except asyncio.TimeoutError:
                    break
                done.append(f)
            ids = [f.get("id") for f in done]
            check(ids == [f"q{i}" for i in range(15)],
                  f"exactly 15 quick ones complete ({len(ids)})")
            st = await stats(s, m)
            c = st["connections"][-1]
            check(st["requests_started"] == 16 and st["max_window"] == 16
                  and st["reader_stalls"] >= 1 and c["reader_stalled"]
                  and st["queue_full_waits"] >= st["reader_stalls"]
                  and c["window_full"]
                  and c["window"] == 16 and c["queue_depth"] == 10,
                  f"stats started={st['requests_started']} "
                  f"max_window={st['max_window']} "
                  f"stalls={st['reader_stalls']}/{st['queue_full_waits']}")
            # slow + 15 done + 1 held by the worker + 10 queued + 1 blocked
            check(st["max_span_per_connection"] == 28
                  and st["max_inflight_per_connection"] == 13,
                  f"span 28 / inflight 13 ({st['max_span_per_connection']}, "
                  f"{st['max_inflight_per_connection']})")
            check(st["auth_ok"] == 1, "trailing auth frame not read")
            r = await s.post(m.base + "/_mock/drop")
            check((await r.json())["dropped"] == 1, "POST /_mock/drop")
            msg = await ws.receive(timeout=3)
            check(msg.type in (aiohttp.WSMsgType.CLOSED,
                               aiohttp.WSMsgType.ERROR)
                  and ws.close_code in (1006, None),
                  f"drop -> abrupt close ({msg.type}, {ws.close_code})")

            # Recovery: a 1.5 s head request, 20 quick ones; the 16th quick
            # one starts only when the head finishes.
            ws = await authed(s, m)
            await ws.send_json({"id": "slow", "service": "agent",
                                "flow": "default", "request": {
                                    "question": "q",
                                    "_mock": {"first_delay": 1.5}}})
            for i in range(20):
                await ws.send_json({"id": f"q{i}", "service": "embeddings",
                                    "flow": "default",
                                    "request": {"texts": ["x"]}})
            t0 = time.monotonic()
            times = {}
            while len(times) < 21:
                f = await recv(ws, timeout=5)
                if f.get("complete"):
                    times[f["id"]] = time.monotonic() - t0
            check(times["q14"] < 0.5 and times["q15"] > 1.4
                  and times["slow"] > 1.4,
                  f"q14 {times['q14']:.2f}s, q15 {times['q15']:.2f}s")
            await ws.close()


async def test_compliant_client():
    print("window-respecting client: no reader stalls (§6.2)")
    async with aiohttp.ClientSession() as s:
        with Mock("--era", "v2d") as m:
            ws = await authed(s, m)
            unfinished, n_sent, total = set(), 0, 120

            def span():
                if not unfinished:
                    return 0
                return n_sent - min(unfinished)

            async def send(i, delay):
                nonlocal n_sent
                await ws.send_json({"id": i, "service": "embeddings",
                                    "flow": "default", "request": {
                                        "texts": ["x"],
                                        "_mock": {"first_delay": delay}}})
                unfinished.add(i)
                n_sent += 1
            # Item 0 is long; the rest are short; send in bursts whenever
            # the span (oldest unfinished .. newest sent) allows.
            nxt = 0
            while nxt < total or unfinished:
                while nxt < total and (not unfinished or
                                       nxt - min(unfinished) + 1 <= 16):
                    await send(nxt, 1.0 if nxt % 40 == 0 else 0.05)
                    nxt += 1
                f = await recv(ws, timeout=5)
                if f.get("complete"):
                    unfinished.discard(f["id"])
            st = await stats(s, m)
            check(st["max_span_per_connection"] <= 16
                  and st["reader_stalls"] == 0
                  and st["requests_completed"] == total,
                  f"compliant: span {st['max_span_per_connection']}, "
                  f"stalls {st['reader_stalls']}, "
                  f"queue_full_waits {st['queue_full_waits']}")
            await ws.close()


async def test_transport():
    print("transport: 1009, drop, close, SIGTERM")
    async with aiohttp.ClientSession() as s:
        with Mock("--era", "v2d") as m:
            ws = await authed(s, m)
            await ws.send_json({"id": "n", "service": "agent",
                                "flow": "default", "request": {
                                    "question": "q",
                                    "_mock": {"never": True}}})
            try:
                # The server closes as soon as it sees the frame header, so
                # the rest of the send may hit EPIPE (same with the gateway).
                await ws.send_str("x" * (52428800 + 1))
            except (aiohttp.ClientError, ConnectionError):
                pass
            msg = await ws.receive(timeout=10)
            check(msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1009,
                  f"oversize -> close 1009 ({msg.type}, {msg.data})")
            await ws.close()
            ws = await authed(s, m)
            fr = []
            await ws.send_json({"id": "d", "service": "text-completion",
                                "flow": "default", "request": {
                                    **TC, "streaming": True,
                                    "_mock": {"drop": True, "after": 2}}})
            while True:
                msg = await ws.receive(timeout=3)
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                fr.append(json.loads(msg.data))
            check(len(fr) == 2 and msg.type in (aiohttp.WSMsgType.CLOSED,
                                                aiohttp.WSMsgType.ERROR),
                  f"_mock.drop after 2 ({len(fr)} frames, {msg.type})")
            ws = await authed(s, m)
            r = await s.post(m.base + "/_mock/close")
            check((await r.json())["closed"] == 1, "POST /_mock/close")
            msg = await ws.receive(timeout=3)
            check(msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1001,
                  f"server close 1001 ({msg.type}, {msg.data})")
            await asyncio.sleep(0.2)
            st = await stats(s, m)
            check(st["connections_open"] == 0 and st["oversize_closes"] == 1
                  and st["connections_total"] == 3,
                  f"connection counters {st['connections_open']} "
                  f"{st['oversize_closes']} {st['connections_total']}")
            r = await s.post(m.base + "/_mock/reset")
            st = await stats(s, m)
            check(st["connections_total"] == 0 and st["last_envelopes"] == []
                  and st["connections"] == [], "reset")

            # SIGTERM with a stalled reader -> exit 0 promptly.
            ws = await authed(s, m)
            await ws.send_json({"id": "n", "service": "agent",
                                "flow": "default", "request": {
                                    "question": "q",
                                    "_mock": {"never": True}}})
            for i in range(30):
                await ws.send_json({"id": f"n{i}", "service": "agent",
                                    "flow": "default", "request": {
                                        "question": "q",
                                        "_mock": {"never": True}}})
            await asyncio.sleep(0.3)
            t0 = time.monotonic()
            m.p.send_signal(signal.SIGTERM)
            rc = m.p.wait(5)
            dt = time.monotonic() - t0
            check(rc == 0 and dt < 2.5, f"SIGTERM exit {rc} in {dt:.2f}s")
            msg = await ws.receive(timeout=3)
            check(msg.type in (aiohttp.WSMsgType.CLOSED,
                               aiohttp.WSMsgType.ERROR),
                  f"shutdown -> abrupt close ({msg.type})")


async def main():
    for t in (test_v1_auth, test_v2_auth, test_validation, test_controls,
              test_window, test_compliant_client, test_transport):
        try:
            await t()
        except Exception as e:
            import traceback
            traceback.print_exc()
            FAILURES.append(f"{t.__name__}: {e!r}")
    print("FAILED: %d" % len(FAILURES) if FAILURES else "ALL OK")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
