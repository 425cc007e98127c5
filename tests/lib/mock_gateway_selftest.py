#!/usr/bin/python3
"""Self-test for tests/lib/mock_gateway.py; `make test` runs it as
tests/e2e/mock_gateway/test_mock_selftest.py.

    /usr/bin/python3 tests/lib/mock_gateway_selftest.py [-v]

Starts the mock in various eras and checks auth, every error shape, the
16-window / reader stall, close 1009, drops, closes, controls and SIGTERM;
then the passthrough routes (auth/*, i18n, metrics, document-stream,
export-core, import-core, bulk import/export sockets) per era, their auth,
streaming, back-pressure, aborts and _mock controls (those run concurrently,
each against its own mock).
"""

import asyncio
import base64
import hashlib
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

    async def __aenter__(self):
        # Startup blocks on readline: keep the event loop free for the
        # passthrough tests that run concurrently.
        return await asyncio.to_thread(self.__enter__)

    async def __aexit__(self, *exc):
        await asyncio.to_thread(self.__exit__, *exc)


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


# --------------------------------------------------------------------------
# Passthrough routes (non-envelope gateway routes)
# --------------------------------------------------------------------------

def pattern(offset, n, period_bytes=bytes(range(251))):
    """Independent reference of the mock's generated bodies: binary byte i
    = i % 251; alpha (period_bytes=ALPHA) byte i = ALPHA[i % 36]."""
    p = len(period_bytes)
    reps = (offset % p + n) // p + 1
    return (period_bytes * reps)[offset % p:offset % p + n]


ALPHA = b"abcdefghijklmnopqrstuvwxyz0123456789"
TRIPLE = {"metadata": {"id": "d1", "collection": "default"},
          "triples": [{"s": {"t": "i", "i": "http://x/s"},
                       "p": {"t": "i", "i": "http://x/p"},
                       "o": {"t": "l", "v": "o"}}]}


def pattern_sha256(total, period_bytes=bytes(range(251)), block=1 << 22):
    h = hashlib.sha256()
    blk = pattern(0, block + len(period_bytes), period_bytes)
    off = 0
    while off < total:
        n = min(block, total - off)
        ph = off % len(period_bytes)
        h.update(blk[ph:ph + n])
        off += n
    return h.hexdigest()


async def http(s, method, url, **kw):
    """(status, headers, body bytes)."""
    async with s.request(method, url, **kw) as r:
        return r.status, r.headers, await r.read()


def bearer(tok):
    return {"Authorization": "Bearer " + tok}


async def pstats(s, m):
    return (await stats(s, m))["passthrough"]


async def handshake_status(s, url):
    """Status of a refused upgrade, or 101 (then the socket is closed)."""
    try:
        ws = await s.ws_connect(url)
    except aiohttp.WSServerHandshakeError as e:
        return e.status
    await ws.close()
    return 101


async def pt_v1():
    print("passthrough V1 eras: routes, Bearer == secret, ?token=")
    async with aiohttp.ClientSession() as s:
        async with Mock("--era", "v1a", "--secret", "s3cr+t") as m:
            b, w = m.base, m.base.replace("http", "ws")
            for meth, path in (("GET", "/api/v1/i18n/packs/en"),
                               ("POST", "/api/v1/auth/login"),
                               ("GET", "/api/metrics")):
                st, _, body = await http(s, meth, b + path,
                                         headers=bearer("s3cr+t"))
                check(st == 404 and body == b"404: Not Found",
                      f"v1a {meth} {path} -> aiohttp 404 ({st})")
            st, h, body = await http(s, "GET", b + "/api/metrics/query?x=1")
            check(st == 401 and body == b"401: Unauthorized"
                  and h["Content-Type"].startswith("text/plain"),
                  "v1a metrics without Bearer -> 401 text")
            st, h, body = await http(s, "GET", b + "/api/metrics/query?x=1",
                                     headers={"Authorization": "Basic s3cr+t"})
            check(st == 401, "v1a metrics Basic -> 401")
            st, h, body = await http(s, "GET",
                                     b + "/api/metrics/query?query=up%7B%7D",
                                     headers=bearer("s3cr+t"))
            j = json.loads(body)
            check(st == 200 and h["Content-Type"].startswith("text/plain")
                  and j["mock"]["path"] == "query"
                  and j["mock"]["query"] == {"query": "up{}"}
                  and j["mock"]["raw_query_string"] == "query=up%7B%7D",
                  "v1a metrics echo (text/plain JSON)")
            st, _, body = await http(s, "GET", b + "/api/metrics/q",
                                     headers=bearer("s3cr+t"),
                                     params={"mock-upstream-down": "1"})
            check(st == 500 and body == b"500: Internal Server Error",
                  "v1a metrics upstream down -> 500")
            st, _, body = await http(
                s, "GET", b + "/api/v1/document-stream?document-id=doc1",
                headers=bearer("s3cr+t"))
            check(st == 500 and body ==
                  b"Missing required parameters: user, document-id",
                  "v1a document-stream needs ?user=")
            st, _, body = await http(
                s, "GET", b + "/api/v1/document-stream?user=u&document-id="
                "doc1", headers=bearer("s3cr+t"))
            check(st == 200 and body == b"TrustGraph mock document.\n" * 64,
                  "v1a document-stream doc1")
            st, _, body = await http(s, "GET", b + "/api/v1/export-core?id=x",
                                     headers=bearer("s3cr+t"))
            check(st == 200 and json.loads(body) == {"error": "'user'"},
                  "v1a export-core needs ?user=")
            st, _, body = await http(
                s, "GET", b + "/api/v1/export-core?id=size-1000&user=u",
                headers=bearer("s3cr+t"))
            check(st == 200 and body == pattern(0, 1000),
                  "v1a export-core size-1000")
            url = w + "/api/v1/flow/default/import/objects"
            check(await handshake_status(s, url + "?token=s3cr+t") == 401,
                  "v1a import ?token= decoded ('+' = space) -> 401")
            ws = await s.ws_connect(url + "?token=s3cr%2Bt",
                                    headers=bearer("ignored"))
            await ws.send_json({"metadata": {"id": "a", "collection": "c"},
                                "schema_name": "s", "values": [{}]})
            await ws.close()
            await asyncio.sleep(0.1)
            ps = await pstats(s, m)
            sk = ps["sockets"][-1]
            check(sk["kind"] == "objects" and sk["frames_in"] == 1
                  and sk["bad_frames"] == 0 and sk["token"] == "s3cr+t"
                  and sk["authorization"] == "Bearer ignored"
                  and sk["closed_by"] == "client",
                  "v1a import objects socket")
            r = ps["routes"]
            check(r["metrics"]["count"] == 4 and r["i18n"]["count"] == 0
                  and r["metrics"]["statuses"] == {"401": 2, "200": 1,
                                                   "500": 1}
                  and r["metrics"]["last_authorization"] == "Bearer s3cr+t"
                  and r["import"]["count"] == 2
                  and r["import"]["statuses"] == {"401": 1, "101": 1}
                  and ps["http_401"] == 3,
                  "v1a passthrough route stats %s" % json.dumps(
                      {k: r[k] for k in ("metrics", "import")}))
        async with Mock("--era", "v1b") as m:
            b = m.base
            st, _, body = await http(s, "GET", b + "/api/v1/i18n/packs/es")
            check(st == 200 and json.loads(body)["mock.i18n.hello"] == "Hola",
                  "v1b i18n open (no secret)")
            st, _, _ = await http(s, "GET", b + "/api/v1/i18n/packs/es",
                                  headers={"Authorization": "Basic x"})
            check(st == 401, "v1b non-Bearer header -> 401 even when open")
            st, _, _ = await http(s, "POST", b + "/api/v1/auth/login")
            check(st == 404, "v1b no auth routes")
        async with Mock("--era", "v1c") as m:
            b, w = m.base, m.base.replace("http", "ws")
            st, _, body = await http(s, "GET", b + "/api/metrics/q",
                                     params={"mock-upstream-down": "1"})
            check(st == 502 and body.startswith(b"Bad Gateway: metrics "
                                                b"upstream unreachable"),
                  "v1c metrics upstream down -> 502")
            ws = await s.ws_connect(w + "/api/v1/flow/nope/export/triples"
                                    "?workspace=w2")
            msg = await ws.receive(timeout=3)
            check(msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1000,
                  "v1c invalid flow -> upgrade then close 1000")
            await asyncio.sleep(0.1)
            sk = (await pstats(s, m))["sockets"][-1]
            check(sk["error"] == "Invalid flow default/nope"
                  and sk["workspace"] == "default"
                  and sk["workspace_param"] == "w2",
                  "v1c bulk ?workspace= ignored (match_info only)")


async def pt_auth_v2():
    print("passthrough V2: auth/*, JWTs, i18n, metrics auth")
    async with aiohttp.ClientSession() as s:
        async with Mock("--era", "v2d", "--user", "alice:pw1",
                        "--token", "tg_good", "--workspaces",
                        "default,w2") as m:
            b = m.base
            login = b + "/api/v1/auth/login"
            st, h, body = await http(s, "POST", login, json={
                "username": "alice", "password": "bad"})
            check(st == 401 and body == b'{"error": "auth failure"}'
                  and h["Content-Type"].startswith("application/json"),
                  "login bad password -> 401")
            st, _, body = await http(s, "POST", login, data=b"{nope")
            check(st == 400 and json.loads(body) == {"error": "invalid json"},
                  "login invalid json -> 400")
            st, _, body = await http(s, "POST", login, json=[1])
            check(st == 500, "login non-object -> aiohttp 500")
            st, _, body = await http(s, "POST", login, json={
                "username": "alice", "password": "pw1", "workspace": "nope"})
            check(st == 401, "login unknown workspace -> 401")
            st, _, body = await http(s, "POST", login, json={
                "username": "alice", "password": "pw1"})
            j = json.loads(body)
            parts = j.get("jwt", "").split(".")
            claims = json.loads(base64.urlsafe_b64decode(
                parts[1] + "==")) if len(parts) == 3 else {}
            header = json.loads(base64.urlsafe_b64decode(
                parts[0] + "==")) if len(parts) == 3 else {}
            check(st == 200 and list(j) == ["jwt", "jwt_expires",
                                            "bootstrap_available"]
                  and j["bootstrap_available"] is False
                  and header.get("alg") == "EdDSA"
                  and claims.get("sub") == "alice"
                  and claims.get("default_workspace") == "default"
                  and claims["exp"] - claims["iat"] == 3600
                  and j["jwt_expires"].endswith("+00:00"),
                  "login -> JWT-shaped token")
            jwt = j.get("jwt", "")
            st, _, body = await http(s, "POST", login, json={
                "username": "alice", "password": "pw1", "workspace": "w2"})
            jwt2 = json.loads(body)["jwt"]
            # issued JWTs are accepted although --token restricts the rest
            st, _, _ = await http(s, "GET", b + "/api/metrics/x",
                                  headers=bearer(jwt))
            check(st == 200, "issued JWT accepted on REST")
            st, _, body = await http(s, "GET", b + "/api/metrics/x",
                                     headers=bearer("tg_other"))
            check(st == 401 and body == b'{"error":"auth failure"}',
                  "unknown key -> 401 JSON (exact bytes)")
            st, _, _ = await http(s, "GET", b + "/api/metrics/x",
                                  headers=bearer("mysecret"))
            check(st == 401, "malformed credential -> 401")
            st, _, _ = await http(s, "GET", b + "/api/metrics/x")
            check(st == 401, "anonymous refused without --anonymous")
            st, _, body = await http(s, "GET", b + "/api/metrics/x",
                                     headers=bearer("tg_good"),
                                     params={"mock-deny": "1"})
            check(st == 403 and body == b'{"error":"access denied"}',
                  "mock-deny -> 403")
            st, _, _ = await http(s, "POST", b + "/api/metrics/x",
                                  headers=bearer("tg_good"))
            check(st == 405, "POST on a GET route -> 405")
            ws = await s.ws_connect(m.url)
            await ws.send_json({"type": "auth", "token": jwt2})
            check(await recv(ws) == {"type": "auth-ok",
                                     "default_workspace": "w2"},
                  "issued JWT accepted in-band (its workspace)")
            fr = await call(ws, {"id": "l", "service": "iam", "request": {
                "operation": "login", "username": "alice",
                "password": "pw1"}})
            check(fr[-1]["response"].get("jwt", "").count(".") == 2,
                  "iam login over the socket")
            await ws.close()
            cp = b + "/api/v1/auth/change-password"
            st, _, body = await http(s, "POST", cp, json={})
            check(st == 401 and body == b'{"error":"auth failure"}',
                  "change-password needs a credential")
            st, _, body = await http(s, "POST", cp, headers=bearer(jwt),
                                     json={"new_password": "pw2"})
            check(st == 400 and json.loads(body) ==
                  {"error": "password (current) required"},
                  "change-password missing current -> 400")
            st, _, body = await http(s, "POST", cp, headers=bearer(jwt),
                                     json={"current_password": "pw1"})
            check(st == 400 and json.loads(body) ==
                  {"error": "new_password required"},
                  "change-password missing new -> 400")
            st, _, body = await http(s, "POST", cp, headers=bearer(jwt),
                                     json={"current_password": "x",
                                           "new_password": "pw2"})
            check(st == 401 and body == b'{"error": "auth failure"}',
                  "change-password wrong current -> 401")
            st, _, _ = await http(s, "POST", cp, headers=bearer("tg_good"),
                                  json={"current_password": "pw1",
                                        "new_password": "pw2"})
            check(st == 401, "change-password: key's user is not alice")
            st, _, body = await http(s, "POST", cp, headers=bearer(jwt),
                                     json={"current_password": "pw1",
                                           "new_password": "pw2"})
            check(st == 200 and json.loads(body) ==
                  {"bootstrap_available": False}, "change-password ok")
            st1, _, _ = await http(s, "POST", login, json={
                "username": "alice", "password": "pw1"})
            st2, _, _ = await http(s, "POST", login, json={
                "username": "alice", "password": "pw2"})
            check(st1 == 401 and st2 == 200, "new password in force")
            st, _, body = await http(s, "POST",
                                     b + "/api/v1/auth/bootstrap-status")
            check(st == 200 and json.loads(body) ==
                  {"bootstrap_available": False}, "bootstrap-status")
            st, _, body = await http(s, "POST", b + "/api/v1/auth/bootstrap")
            check(st == 401 and json.loads(body) ==
                  {"error": "auth failure"}, "bootstrap refused")
            # i18n is PUBLIC: the Authorization header is not looked at
            st, h, body = await http(s, "GET", b + "/api/v1/i18n/packs/zh-TW",
                                     headers={"Authorization": "Basic x"})
            j = json.loads(body)
            check(st == 200 and j["mock.i18n.hello"] == "你好"
                  and h["Content-Type"].startswith("application/json"),
                  "i18n public, zh-TW -> zh-cn")
            st, _, body = await http(s, "GET", b + "/api/v1/i18n/packs/fr")
            check(json.loads(body)["mock.i18n.language"] == "en",
                  "i18n unknown -> en")
            st, _, body = await http(s, "GET",
                                     b + "/api/v1/i18n/packs/a%2Fb")
            check(st == 400 and body == b"400: Invalid language code",
                  "i18n path traversal -> 400")
            ps = await pstats(s, m)
            r = ps["routes"]
            check(ps["logins_ok"] == 4 and ps["logins_failed"] == 3
                  and ps["password_changes"] == 1
                  and r["auth/login"]["count"] == 8
                  and r["auth/login"]["statuses"].get("401") == 3
                  and r["auth/login"]["bytes_in"] > 0
                  and r["auth/login"]["bytes_out"] > 0
                  and r["auth/change-password"]["last_authorization"]
                  == "Bearer " + jwt
                  and r["metrics"]["last_query"] == "mock-deny=1"
                  and r["i18n"]["count"] == 3 and ps["http_403"] == 1,
                  f"v2 auth route stats ({ps['logins_ok']}, "
                  f"{ps['logins_failed']}, {r['auth/login']['count']})")
            await s.post(m.base + "/_mock/reset?state=1")
            st, _, _ = await http(s, "POST", login, json={
                "username": "alice", "password": "pw1"})
            ps = await pstats(s, m)
            check(st == 200 and ps["routes"]["auth/login"]["count"] == 1,
                  "reset?state=1 restores users, zeroes route stats")


async def pt_bootstrap_anonymous():
    print("passthrough V2b: --bootstrap, --anonymous, bulk ?workspace=")
    async with aiohttp.ClientSession() as s:
        async with Mock("--era", "v2b", "--bootstrap", "--anonymous",
                        "--workspaces", "default,w2") as m:
            b, w = m.base, m.base.replace("http", "ws")
            st, _, body = await http(s, "POST",
                                     b + "/api/v1/auth/bootstrap-status")
            check(json.loads(body) == {"bootstrap_available": True},
                  "bootstrap available")
            st, _, body = await http(s, "POST", b + "/api/v1/auth/bootstrap")
            j = json.loads(body)
            key = j.get("bootstrap_admin_api_key", "")
            check(st == 200 and key.startswith("tg_")
                  and j["bootstrap_admin_user_id"] == "admin"
                  and j["bootstrap_available"] is False, "bootstrap")
            st, _, _ = await http(s, "POST", b + "/api/v1/auth/bootstrap")
            check(st == 401, "bootstrap consumed")
            st, _, _ = await http(s, "GET", b + "/api/metrics/x")
            check(st == 200, "v2b anonymous REST with --anonymous")
            url = w + "/api/v1/flow/default/import/triples"
            check(await handshake_status(s, url) == 401,
                  "bulk socket without ?token= -> 401 even in no-auth")
            check(await handshake_status(s, url + "?token=") == 401,
                  "bulk socket ?token= empty -> 401")
            ws = await s.ws_connect(url + "?token=%s&workspace=w2" % key)
            await ws.send_str(json.dumps(TRIPLE))
            await ws.close()
            await asyncio.sleep(0.1)
            sk = (await pstats(s, m))["sockets"][-1]
            check(sk["workspace"] == "w2" and sk["frames_in"] == 1
                  and sk["identity"]["handle"] == "admin",
                  "v2b bulk ?workspace= honoured, bootstrap key accepted")


async def pt_downloads():
    print("passthrough downloads: export-core 64 MiB, back-pressure, "
          "aborts, document-stream")
    async with aiohttp.ClientSession() as s:
        async with Mock("--era", "v2d") as m:
            b, H = m.base, bearer("tg_x")
            size = 64 << 20
            t0 = time.monotonic()
            h, n = hashlib.sha256(), 0
            async with s.get(b + "/api/v1/export-core", headers=H, params={
                    "id": "size-64M", "workspace": "default"}) as r:
                ct, te = r.headers.get("Content-Type"), \
                    r.headers.get("Transfer-Encoding")
                async for chunk in r.content.iter_chunked(1 << 20):
                    h.update(chunk)
                    n += len(chunk)
            dt = time.monotonic() - t0
            check(r.status == 200 and ct == "application/octet-stream"
                  and te == "chunked" and n == size
                  and h.hexdigest() == pattern_sha256(size),
                  f"export-core 64 MiB streamed + sha256 ({dt:.2f}s)")
            # Back-pressure: a reader that stops holds the writer back.
            r = await s.get(b + "/api/v1/export-core?id=size-64M",
                            headers=H)
            got = await r.content.readexactly(1 << 20)
            await asyncio.sleep(0.5)
            ps = await pstats(s, m)
            d = ps["downloads"][-1]
            check(got == pattern(0, 1 << 20) and d["in_progress"]
                  and d["bytes_sent"] < 24 << 20,
                  f"back-pressure: {d['bytes_sent']} bytes sent while the "
                  f"reader holds 1 MiB")
            r.close()                         # client goes away mid-body
            for _ in range(40):
                await asyncio.sleep(0.05)
                ps = await pstats(s, m)
                if not ps["downloads"][-1]["in_progress"]:
                    break
            d = ps["downloads"][-1]
            check(d["aborted"] and not d["complete"]
                  and ps["responses_aborted"] == 1
                  and ps["routes"]["export-core"]["aborted"] == 1,
                  "client abort mid-download recorded")
            try:
                async with s.get(b + "/api/v1/export-core", headers=H,
                                 params={"id": "size-10M",
                                         "mock-fail-after": "100000"}) as r:
                    await r.read()
                check(False, "mock-fail-after -> truncated transfer")
            except aiohttp.ClientPayloadError:
                check(True, "mock-fail-after -> truncated transfer")
            st, _, body = await http(s, "GET", b + "/api/v1/export-core",
                                     headers=H, params={
                                         "id": "size-10M",
                                         "mock-truncate-after": "12345"})
            check(st == 200 and body == pattern(0, 12345),
                  "mock-truncate-after -> clean short body")
            for extra in ({}, {"mock-length": "1"}):
                try:
                    async with s.get(b + "/api/v1/export-core", headers=H,
                                     params=dict(extra, **{
                                         "id": "size-1M",
                                         "mock-cut-after": "100000"})) as r:
                        got = await r.read()
                    check(False, "mock-cut-after %r -> broken transfer "
                          "(got %d bytes, whole)" % (extra, len(got)))
                except aiohttp.ClientPayloadError:
                    ps = await pstats(s, m)
                    d = ps["downloads"][-1]
                    check(d["cut"] and d["bytes_sent"] == 100000
                          and d["chunked"] == (not extra),
                          "mock-cut-after %r -> broken transfer, recorded"
                          % extra)
            async with s.get(b + "/api/v1/export-core", headers=H,
                             params={"id": "size-300000",
                                     "mock-length": "1"}) as r:
                body = await r.read()
                check(r.headers.get("Content-Length") == "300000"
                      and "Transfer-Encoding" not in r.headers
                      and body == pattern(0, 300000),
                      "mock-length -> Content-Length, whole body")
            for path in ("/api/metrics/query",
                         "/api/v1/export-core?id=size-10",
                         "/api/v1/document-stream?document-id=size-10"):
                st, hd, body = await http(
                    s, "GET", b + path + ("&" if "?" in path else "?")
                    + "mock-quote-credential=1&mock-quote-pad=5", headers=H)
                check(st == 401 and json.loads(body) == {
                    "error": "auth failure (token Bearer tg_x)xxxxx"}
                    and "Bearer tg_x" in hd.get("WWW-Authenticate", ""),
                    "mock-quote-credential on %s -> 401 quoting it" % path)
            st, hd, body = await http(
                s, "GET", b + "/api/metrics/x?mock-quote-credential=1"
                "&mock-quote=s3cr%22t", headers=H)
            check(st == 401 and json.loads(body) == {
                "error": 'auth failure (token s3cr"t)'}
                and 's3cr"t' in hd.get("WWW-Authenticate", ""),
                "mock-quote -> 401 quoting that instead")
            for n in (204, 304):
                st, hd, body = await http(
                    s, "GET", b + "/api/metrics/x?mock-status=%d" % n, headers=H)
                check(st == n and body == b"", "mock-status=%d -> no body" % n)
            st, _, body = await http(s, "GET", b + "/api/v1/export-core",
                                     headers=H)
            check(st == 200 and json.loads(body) == {"error": "'id'"},
                  "export-core without id -> 200 {'error': \"'id'\"}")
            st, _, body = await http(s, "GET",
                                     b + "/api/v1/export-core?id=core1",
                                     headers=H)
            try:
                import msgpack
                up = msgpack.Unpacker(raw=False)
                up.feed(body)
                msgs = list(up)
                check([x[0] for x in msgs] == ["t", "t", "t", "ge"]
                      and msgs[0][1]["m"] == {"i": "core1", "c": "default"},
                      "export-core core1 = msgpack t/ge tuples")
            except ImportError:
                check(st == 200 and body[:1] == b"\x92",
                      "export-core core1 msgpack (no module to parse)")
            st, _, body = await http(s, "GET",
                                     b + "/api/v1/export-core?id=nope",
                                     headers=H)
            check(st == 200 and body == b"", "export-core unknown -> empty")
            st, _, _ = await http(s, "GET", b + "/api/v1/export-core?id=x")
            check(st == 401, "export-core needs auth")

            ds = b + "/api/v1/document-stream"
            st, _, body = await http(s, "GET", ds, headers=H, params={
                "document-id": "size-1048576", "workspace": "default",
                "chunk-size": "65536", "mock-pattern": "alpha"})
            check(st == 200 and body == pattern(0, 1 << 20, ALPHA),
                  "document-stream size-1048576 (alpha pattern)")
            st, _, body = await http(s, "GET", ds, headers=H,
                                     params={"document-id": "doc1"})
            check(body == b"TrustGraph mock document.\n" * 64,
                  "document-stream doc1")
            st, h, body = await http(s, "GET", ds, headers=H)
            check(st == 500 and body ==
                  b"Missing required parameter: document-id"
                  and h["Content-Type"].startswith("text/plain"),
                  "document-stream without document-id -> 500 text")
            st, _, body = await http(s, "GET", ds, headers=H, params={
                "document-id": "doc1", "chunk-size": "abc"})
            check(st == 200 and json.loads(body) == {
                "error": "invalid literal for int() with base 10: 'abc'"},
                "document-stream bad chunk-size -> 200 JSON error")
            st, _, body = await http(s, "GET", ds, headers=H,
                                     params={"document-id": "nope"})
            check(st == 200 and body == b"", "document-stream unknown doc")
            # One write per chunk-size piece: the HTTP chunks show it.
            rd, wr = await asyncio.open_connection("127.0.0.1", m.port)
            wr.write(b"GET /api/v1/document-stream?document-id=size-1000"
                     b"&chunk-size=300 HTTP/1.1\r\nHost: x\r\n"
                     b"Authorization: Bearer tg_x\r\n"
                     b"Connection: close\r\n\r\n")
            raw = await asyncio.wait_for(rd.read(), 3)
            wr.close()
            body = raw.split(b"\r\n\r\n", 1)[1]
            check(body == b"12c\r\n" + pattern(0, 300) + b"\r\n12c\r\n"
                  + pattern(300, 300) + b"\r\n12c\r\n" + pattern(600, 300)
                  + b"\r\n64\r\n" + pattern(900, 100) + b"\r\n0\r\n\r\n",
                  "document-stream: one HTTP chunk per chunk-size")


async def pt_uploads():
    print("passthrough uploads: import-core streamed, chunked, aborted")
    async with aiohttp.ClientSession() as s:
        async with Mock("--era", "v2d") as m:
            b, H = m.base, bearer("tg_x")
            url = b + "/api/v1/import-core?id=c1&workspace=default"
            total = 16 << 20
            ref = hashlib.sha256()

            async def gen():
                blk = os.urandom(1 << 20)
                for i in range(total >> 20):
                    piece = bytes([i]) + blk[1:]
                    ref.update(piece)
                    yield piece
            st, h, body = await http(s, "POST", url, headers=H, data=gen())
            ps = await pstats(s, m)
            u = ps["uploads"][-1]
            check(st == 200 and body == b""
                  and h["Content-Type"] == "application/octet-stream"
                  and u["chunked"] and u["complete"] and u["bytes"] == total
                  and u["sha256"] == ref.hexdigest()
                  and u["content_length"] is None,
                  "import-core chunked 16 MiB upload, sha256")
            data = os.urandom(3 << 20)
            st, _, _ = await http(s, "POST", url, headers=H, data=data)
            u = (await pstats(s, m))["uploads"][-1]
            check(st == 200 and not u["chunked"]
                  and u["content_length"] == len(data)
                  and u["sha256"] == hashlib.sha256(data).hexdigest(),
                  "import-core Content-Length upload, sha256")
            # Client dies mid-body.
            rd, wr = await asyncio.open_connection("127.0.0.1", m.port)
            wr.write(b"POST /api/v1/import-core?id=c2 HTTP/1.1\r\nHost: x\r\n"
                     b"Authorization: Bearer tg_x\r\n"
                     b"Content-Length: 1048576\r\n\r\n" + b"z" * 200000)
            await wr.drain()
            await asyncio.sleep(0.2)
            wr.close()
            for _ in range(40):
                await asyncio.sleep(0.05)
                ps = await pstats(s, m)
                if not ps["uploads"][-1]["in_progress"]:
                    break
            u = ps["uploads"][-1]
            check(u["aborted"] and u["bytes"] == 200000 and u["id"] == "c2"
                  and u["sha256"] == hashlib.sha256(
                      b"z" * 200000).hexdigest()
                  and ps["uploads_aborted"] == 1
                  and ps["routes"]["import-core"]["aborted"] == 1,
                  "aborted upload recorded (bytes, sha256 so far)")
            try:
                await http(s, "POST", url + "&mock-fail-after=1000000",
                           headers=H, data=os.urandom(8 << 20))
                check(False, "upload mock-fail-after -> connection error")
            except aiohttp.ClientError:
                check(True, "upload mock-fail-after -> connection error")
            await asyncio.sleep(0.1)
            ps = await pstats(s, m)
            u = ps["uploads"][-1]
            check(u["failed_by_mock"] and u["bytes"] == 1000000
                  and ps["mock_failures"] == 1, "upload failed by the mock")
            st, _, body = await http(s, "POST", b + "/api/v1/import-core",
                                     headers=H, data=b"xx")
            check(st == 200 and json.loads(body) == {"error": "'id'"},
                  "import-core without id")
            st, _, _ = await http(s, "POST", url, data=b"xx")
            check(st == 401, "import-core needs auth")


async def pt_sockets():
    print("passthrough bulk import/export sockets, echo, close codes")
    async with aiohttp.ClientSession() as s:
        async with Mock("--era", "v2d", "--token", "tg_ok") as m:
            w = m.base.replace("http", "ws") + "/api/v1/flow/default/"
            imp, exp = w + "import/triples", w + "export/triples"
            st, _, body = await http(s, "GET", m.base + "/api/v1/flow/"
                                     "default/import/triples")
            check(st == 401 and body == b'{"error":"auth failure"}',
                  "import without ?token= -> 401 JSON")
            check(await handshake_status(s, imp + "?token=tg_bad") == 401,
                  "import unknown key -> 401")
            check(await handshake_status(s, imp + "?token=x") == 401,
                  "import malformed -> 401")
            st, _, body = await http(s, "GET", m.base + "/api/v1/flow/"
                                     "default/export/rows?token=tg_ok")
            check(st == 404 and json.loads(body) == {"error": "unknown kind"},
                  "export/rows -> 404 unknown kind (before auth)")
            ws = await s.ws_connect(imp + "?token=tg_ok&workspace=default",
                                    headers=bearer("hdr"))
            for _ in range(3):
                await ws.send_str(json.dumps(TRIPLE))
            for _ in range(2):
                await ws.send_bytes(json.dumps(TRIPLE).encode())
            try:
                msg = await ws.receive(timeout=0.3)
                check(False, f"import replies nothing ({msg.type})")
            except asyncio.TimeoutError:
                check(True, "import replies nothing")
            await ws.close(code=4000, message=b"done")
            check(ws.close_code == 1000, "import: server answers close 1000")
            await asyncio.sleep(0.1)
            sk = (await pstats(s, m))["sockets"][-1]
            n = len(json.dumps(TRIPLE))
            check(sk["frames_in"] == 5 and sk["text_frames_in"] == 3
                  and sk["binary_frames_in"] == 2 and sk["bytes_in"] == 5 * n
                  and sk["frames_out"] == 0 and sk["token"] == "tg_ok"
                  and sk["workspace"] == "default"
                  and sk["client_close_code"] == 4000
                  and sk["client_close_reason"] == "done"
                  and sk["server_close_code"] == 1000
                  and sk["closed_by"] == "client" and not sk["open"],
                  "import socket stats")
            ws = await s.ws_connect(imp + "?token=tg_ok")
            await ws.send_str('{"metadata": {}}')
            msg = await ws.receive(timeout=3)
            await asyncio.sleep(0.1)
            sk = (await pstats(s, m))["sockets"][-1]
            check(msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1000
                  and sk["bad_frames"] == 1 and sk["closed_by"] == "server"
                  and "KeyError" in sk["error"],
                  "import undecodable frame -> server closes 1000")
            ws = await s.ws_connect(imp + "?token=tg_ok&mock-lenient=1")
            await ws.send_bytes(b"\xff\x00 not json")
            await ws.close()
            sk = (await pstats(s, m))["sockets"][-1]
            check(sk["bad_frames"] == 0 and sk["frames_in"] == 1,
                  "mock-lenient import")
            ws = await s.ws_connect(w.replace("/default/", "/nope/")
                                    + "import/triples?token=tg_ok")
            msg = await ws.receive(timeout=3)
            check(msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1000,
                  "import invalid flow -> close 1000")

            ws = await s.ws_connect(exp + "?token=tg_ok&mock-frames=5"
                                    "&mock-frame-size=1000")
            frames = []
            while True:
                msg = await ws.receive(timeout=3)
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                frames.append(msg.data)
            check(len(frames) == 5 and all(len(f) == 1000 for f in frames)
                  and json.loads(frames[4])["metadata"]["id"]
                  == "urn:mock:export:4"
                  and msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1000,
                  "export 5 frames of 1000 bytes then close 1000")
            ws = await s.ws_connect(w + "export/graph-embeddings?token=tg_ok"
                                    "&mock-frames=1&mock-close-code=4002"
                                    "&mock-close-reason=bye")
            f = json.loads((await ws.receive(timeout=3)).data)
            msg = await ws.receive(timeout=3)
            check("vector" in f["entities"][0]
                  and msg.type == aiohttp.WSMsgType.CLOSE
                  and msg.data == 4002 and msg.extra == "bye",
                  "export close code/reason control")
            ws = await s.ws_connect(exp + "?token=tg_ok&mock-frames=1"
                                    "&mock-hold=1")
            await ws.receive(timeout=3)
            try:
                await ws.receive(timeout=0.3)
                check(False, "export hold stays open")
            except asyncio.TimeoutError:
                check(True, "export hold stays open")
            await ws.close()
            ws = await s.ws_connect(exp + "?token=tg_ok&mock-frames=10"
                                    "&mock-drop-after=2")
            got = 0
            while True:
                msg = await ws.receive(timeout=3)
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                got += 1
            check(got == 2 and msg.type in (aiohttp.WSMsgType.CLOSED,
                                            aiohttp.WSMsgType.ERROR),
                  f"export drop after 2 ({got}, {msg.type})")

            ws = await s.ws_connect(imp + "?token=tg_ok&mock-echo=1")
            await ws.send_str("hé")
            await ws.send_bytes(b"\x00\x01\xff")
            m1, m2 = await ws.receive(timeout=3), await ws.receive(timeout=3)
            await ws.close(code=4005, message=b"why")
            check(m1.type == aiohttp.WSMsgType.TEXT and m1.data == "hé"
                  and m2.type == aiohttp.WSMsgType.BINARY
                  and m2.data == b"\x00\x01\xff" and ws.close_code == 4005,
                  "echo text/binary, close code echoed")
            ws = await s.ws_connect(exp + "?token=tg_ok&mock-echo=1"
                                    "&mock-close-after=1&mock-close-code=4003")
            await ws.send_str("x")
            m1, m2 = await ws.receive(timeout=3), await ws.receive(timeout=3)
            check(m1.data == "x" and m2.type == aiohttp.WSMsgType.CLOSE
                  and m2.data == 4003, "echo close-after")
            await asyncio.sleep(0.1)
            sk = (await pstats(s, m))["sockets"][-1]
            # (aiohttp's client answers a server close with 1000)
            check(sk["echo"] and sk["server_close_code"] == 4003
                  and sk["client_close_code"] == 1000
                  and sk["closed_by"] == "server", "echo stats %s" % sk)

            ws = await s.ws_connect(imp + "?token=tg_ok")
            r = await (await s.post(m.base + "/_mock/close")).json()
            msg = await ws.receive(timeout=3)
            check(r["closed_passthrough"] == 1 and msg.type ==
                  aiohttp.WSMsgType.CLOSE and msg.data == 1001,
                  "/_mock/close closes bulk sockets 1001")
            ws = await s.ws_connect(imp + "?token=tg_ok")
            r = await (await s.post(m.base + "/_mock/drop")).json()
            msg = await ws.receive(timeout=3)
            check(r["dropped_passthrough"] == 1 and msg.type in (
                aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR),
                "/_mock/drop aborts bulk sockets")
            await asyncio.sleep(0.1)
            ps = await pstats(s, m)
            check(ps["sockets"][-1]["closed_by"] == "drop"
                  and ps["routes"]["import"]["statuses"].get("101") == 7,
                  "bulk socket route stats")


async def pt_slow():
    print("passthrough slow / stall controls, /_mock/passthrough")
    async with aiohttp.ClientSession() as s:
        async with Mock("--era", "v2d") as m:
            b, H = m.base, bearer("tg_x")
            ctl = b + "/_mock/passthrough"
            r = await s.post(ctl, json={"nope": {}})
            check(r.status == 400, "controls: unknown route refused")
            r = await s.post(ctl, json={"export-core": {"slow": 30,
                                                        "once": True}})
            check((await r.json())["controls"]["export-core"]["slow"] == 30,
                  "controls set")
            t0 = time.monotonic()
            try:
                await http(s, "GET", b + "/api/v1/export-core?id=size-10",
                           headers=H, timeout=aiohttp.ClientTimeout(
                               total=0.3))
                check(False, "slow export-core -> client timeout")
            except asyncio.TimeoutError:
                check(True, "slow export-core -> client timeout")
            for _ in range(40):
                await asyncio.sleep(0.05)
                ps = await pstats(s, m)
                if ps["routes"]["export-core"]["aborted"]:
                    break
            check(ps["routes"]["export-core"]["aborted"] == 1
                  and ps["routes"]["export-core"]["in_progress"] == 0
                  and ps["controls"] == {},
                  "client gave up while slow; 'once' consumed")
            st, _, body = await http(s, "GET",
                                     b + "/api/v1/export-core?id=size-10",
                                     headers=H)
            check(st == 200 and len(body) == 10, "next call not slow")
            t0 = time.monotonic()
            st, _, _ = await http(s, "POST", b + "/api/v1/auth/login"
                                  "?mock-slow=0.3", json={})
            dt = time.monotonic() - t0
            check(st == 401 and 0.28 < dt < 2, f"mock-slow query ({dt:.2f}s)")
            try:
                await asyncio.wait_for(s.ws_connect(
                    m.base.replace("http", "ws")
                    + "/api/v1/flow/default/export/triples"
                    "?token=tg_x&mock-slow=inf"), 0.3)
                check(False, "slow handshake -> client timeout")
            except (asyncio.TimeoutError, aiohttp.ClientError):
                check(True, "slow handshake -> client timeout")
            got = b""
            try:
                async with s.get(b + "/api/v1/document-stream", headers=H,
                                 params={"document-id": "size-100000",
                                         "chunk-size": "1000",
                                         "mock-stall-after": "5000"},
                                 timeout=aiohttp.ClientTimeout(
                                     sock_read=0.3)) as r:
                    async for c in r.content.iter_any():
                        got += c
                check(False, "stall mid-body -> client read timeout")
            except asyncio.TimeoutError:
                check(got == pattern(0, 5000),
                      "stall mid-body -> client read timeout")
            await s.post(ctl)                  # empty body clears
            for _ in range(40):
                await asyncio.sleep(0.05)
                ps = await pstats(s, m)
                if not ps["downloads"][-1]["in_progress"]:
                    break
            d = ps["downloads"][-1]
            check(d["stalled"] and d["aborted"] and d["bytes_sent"] == 5000,
                  "stalled download, then client gone")
            ws = await s.ws_connect(m.url)      # the mux is unaffected
            await ws.send_json({"type": "auth", "token": "tg_x"})
            check((await recv(ws))["type"] == "auth-ok", "socket still fine")
            await ws.close()


async def test_passthrough():
    results = await asyncio.gather(
        pt_v1(), pt_auth_v2(), pt_bootstrap_anonymous(), pt_downloads(),
        pt_uploads(), pt_sockets(), pt_slow(), return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            import traceback
            traceback.print_exception(r)
            FAILURES.append(f"test_passthrough: {r!r}")


async def main():
    for t in (test_v1_auth, test_v2_auth, test_validation, test_controls,
              test_window, test_compliant_client, test_transport,
              test_passthrough):
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
