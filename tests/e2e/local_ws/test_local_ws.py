"""The local /api/v1/socket: the gateway's WebSocket protocol served by tgbridge,
multiplexed onto its upstream.  Clients here behave like the official ones
(reference §9.2-9.4): the HEAD Python client (auth frame first, req-N ids,
pipelined, pings every 20 s, 1 MiB max_size), the v1 Python client (?token=, no
auth frame) and the TypeScript client (no auth frame, re-sends with the same id).
Built on Debian's python3-websockets."""

import asyncio
import json
import os
import signal
import socket
import tempfile
import time

import websockets

from harness import (FLOW_TC, T, check_status, eq, start_bridge, start_mock,
                     tc, timeout, wait_until)
from lineclient import LineClient, envelope, unix_request
import rawws

TOKEN = "tg_localws_token_7a1c"


def metric_of(b, name):
    for line in b.get("/metrics").body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError("no metric " + name)


def run(coro, seconds=30):
    return asyncio.run(asyncio.wait_for(coro, T(seconds)))


def ws_url(b, query=""):
    return "ws://127.0.0.1:%d/api/v1/socket%s" % (b.port, query)


def tc_req(rid, prompt="hello", streaming=None, **mock):
    return {"id": rid, "service": "text-completion", "flow": "default",
            "request": tc(prompt, streaming, **mock)}


async def recv_json(ws, seconds=10):
    return json.loads(await asyncio.wait_for(ws.recv(), T(seconds)))


async def collect(ws, ids, seconds=20):
    """Frames until every id in ids has had its complete:true; {id: [frames]}."""
    got = {i: [] for i in ids}
    done = set()
    deadline = time.monotonic() + T(seconds)
    while done != set(ids):
        f = await recv_json(ws, max(0.1, deadline - time.monotonic()))
        assert f.get("id") in got, "a frame for an id not sent here: %r" % f
        assert f["id"] not in done, "a frame after complete:true: %r" % f
        got[f["id"]].append(f)
        if f.get("complete"):
            done.add(f["id"])
    return got


def texts(frames):
    return "".join(f["response"].get("response", "") for f in frames if "response" in f)


@timeout(60)
def test_head_client_auth_frame_then_pipelined_requests():
    """Like the HEAD Python client: an auth frame first, answered locally with
    both workspace keys and never forwarded; then requests pipelined as req-1,
    req-2, ...; every upstream frame forwarded in order, unmerged."""
    m = start_mock("v2d", tokens=[TOKEN])
    b = start_bridge(m.url, "--token", TOKEN)
    with m, b:
        b.wait_ready()
        auth_frames = m.stats()["auth_ok"]

        async def client():
            async with websockets.connect(ws_url(b), max_size=1 << 20, ping_interval=20) as ws:
                await ws.send(json.dumps({"type": "auth", "token": "anything-at-all"}))
                eq(await recv_json(ws), {"type": "auth-ok", "default_workspace": "default",
                                         "workspace": "default"}, "auth reply")
                for i in range(1, 6):
                    await ws.send(json.dumps(tc_req("req-%d" % i, "p%d" % i, streaming=True, parts=3)))
                return await collect(ws, ["req-%d" % i for i in range(1, 6)])
        got = run(client())
        for i in range(1, 6):
            frames = got["req-%d" % i]
            eq(texts(frames), "p%d" % i, "streamed text of req-%d" % i)
            eq([f["complete"] for f in frames], [False] * (len(frames) - 1) + [True],
               "complete flags of req-%d" % i)
        eq(m.stats()["auth_ok"], auth_frames, "auth frames that reached the gateway")
        sent = [json.loads(f) for f in m.stats()["last_envelopes"]]
        eq([f.get("type") for f in sent if f.get("type")], ["auth"], "auth frames upstream (tgbridge's own)")
        assert not any(f.get("token") == "anything-at-all" for f in sent), "the client's auth frame went upstream"


@timeout(60)
def test_v1_client_token_in_url_and_no_auth_frame():
    m = start_mock("v1b")
    b = start_bridge(m.url)
    with m, b:
        b.wait_ready()

        async def client():
            async with websockets.connect(ws_url(b, "?token=tg_v1+raw/token")) as ws:
                await ws.send(json.dumps(tc_req("r1", "v1 style")))
                return await recv_json(ws)
        f = run(client())
        eq(f["id"], "r1", "reply id")
        eq(f["response"]["response"], "v1 style", "reply")
        eq(f["complete"], True, "complete")


@timeout(60)
def test_typescript_client_resends_the_same_id():
    """The TypeScript client re-sends a request with the same id while the first
    is in flight: each send is its own request and each is answered."""
    m = start_mock("v2d", tokens=[TOKEN])
    b = start_bridge(m.url, "--token", TOKEN)
    with m, b:
        b.wait_ready()

        async def client():
            async with websockets.connect(ws_url(b, "?token=" + TOKEN)) as ws:
                req = {"id": "a1b2c3d4e5f6g7h8-1", "service": "text-completion",
                       "request": tc("twice", first_delay=0.3), "flow": "default"}
                await ws.send(json.dumps(req))
                await ws.send(json.dumps(req))
                return [await recv_json(ws), await recv_json(ws)]
        frames = run(client())
        eq([f["id"] for f in frames], ["a1b2c3d4e5f6g7h8-1"] * 2, "both answered, with the client's id")
        eq([f["response"]["response"] for f in frames], ["twice", "twice"], "both replies")
        eq(m.stats()["requests_received"], 2, "requests upstream")


@timeout(60)
def test_sockets_with_colliding_ids_each_get_their_own_frames():
    m = start_mock("v2d", tokens=[TOKEN])
    b = start_bridge(m.url, "--token", TOKEN)
    with m, b:
        b.wait_ready()

        async def one(k):
            async with websockets.connect(ws_url(b)) as ws:
                for i in range(1, 4):
                    await ws.send(json.dumps(tc_req("req-%d" % i, "s%d-r%d" % (k, i), streaming=True,
                                                    parts=4, delay=0.01)))
                got = await collect(ws, ["req-1", "req-2", "req-3"])
                return {rid: texts(fr) for rid, fr in got.items()}

        async def all_of_them():
            return await asyncio.gather(*(one(k) for k in range(6)))
        results = run(all_of_them())
        for k, res in enumerate(results):
            eq(res, {"req-%d" % i: "s%d-r%d" % (k, i) for i in range(1, 4)}, "socket %d" % k)


ERROR_CASES = [
    # era, _mock error spec, expected frame (without id)
    ("v2d", {"shape": "E5", "type": "llm-error", "message": "boom"},
     {"response": {"error": {"type": "llm-error", "message": "boom"}}, "complete": True}),
    ("v2d", {"shape": "E2", "type": "error", "message": "Invalid flow default/x"},
     {"error": {"type": "error", "message": "Invalid flow default/x"}, "complete": True}),
    ("v2d", {"shape": "E4", "type": "access-denied", "message": "access denied"},
     {"error": {"type": "access-denied", "message": "access denied"}, "complete": True}),
    ("v2d", {"shape": "E3", "message": "Bad message"},
     {"error": {"type": "error", "message": "Bad message"}, "complete": True}),
    ("v1a", {"shape": "E1", "message": "Invalid flow"},
     {"error": {"type": "error", "message": "Invalid flow"}, "complete": True}),
    ("v1a", {"shape": "E6", "message": "publish failed"},
     {"response": {"error": "publish failed"}, "complete": True}),
    ("v1b", {"shape": "E2", "type": "error", "message": "'agent'"},
     {"error": {"type": "error", "message": "'agent'"}, "complete": True}),
]


@timeout(90)
def test_every_error_shape_of_every_era_is_a_proper_error_frame():
    """Gateway errors reach the client with its id and complete:true: nested ones
    as the gateway nested them, top-level ones of every era (id-less ones too) as
    {"error":{"type","message"}} -- never id-less, never a bare string."""
    for era in ("v2d", "v1a", "v1b"):
        m = start_mock(era, tokens=[TOKEN]) if era.startswith("v2") else start_mock(era)
        b = start_bridge(m.url, "--token", TOKEN) if era.startswith("v2") else start_bridge(m.url)
        with m, b:
            b.wait_ready()
            for e, spec, want in ERROR_CASES:
                if e != era:
                    continue

                async def client():
                    async with websockets.connect(ws_url(b)) as ws:
                        await ws.send(json.dumps(tc_req("req-1", "x", error=spec)))
                        return await recv_json(ws)
                f = run(client())
                eq(f, dict(want, id="req-1"), "%s %s" % (era, spec["shape"]))


@timeout(60)
def test_bad_and_oversize_messages_get_error_frames_and_the_socket_stays():
    m = start_mock("v2d", tokens=[TOKEN])
    b = start_bridge(m.url, "--token", TOKEN, "--max-body", "64k")
    with m, b:
        b.wait_ready()

        async def client():
            out = []
            async with websockets.connect(ws_url(b)) as ws:
                for msg in ["not json", json.dumps([1, 2]),
                            json.dumps({"id": "m1", "request": {}}),
                            json.dumps({"id": "m2", "service": "agent", "request": "x"}),
                            b'{"id":"m3","service":"agent","request":{"q":"\xff"}}',
                            json.dumps({"id": "m4", "service": "text-completion", "flow": "default",
                                        "request": tc("y" * 70000)})]:
                    await ws.send(msg)
                    out.append(await recv_json(ws))
                # binary frames are read like text (ref Q30), and the socket still works
                await ws.send(json.dumps(tc_req("ok", "still here")).encode())
                out.append(await recv_json(ws))
            return out
        out = run(client())
        eq([f.get("id") for f in out], [None, None, "m1", "m2", None, "m4", "ok"], "ids of the replies")
        eq([f.get("error", {}).get("type") for f in out[:6]],
           ["bad-request"] * 5 + ["payload-too-large"], "error types")
        assert all(f.get("complete") is True for f in out), out
        eq(out[-1]["response"]["response"], "still here", "the request after the bad ones")


@timeout(60)
def test_client_close_mid_stream_frees_its_requests_and_is_answered_at_once():
    m = start_mock("v2d", tokens=[TOKEN])
    b = start_bridge(m.url, "--token", TOKEN)
    with m, b:
        b.wait_ready()

        async def client():
            ws = await websockets.connect(ws_url(b))
            await ws.send(json.dumps(tc_req("req-1", "long", streaming=True, parts=50, delay=0.05)))
            await recv_json(ws)
            t0 = time.monotonic()
            await ws.close()
            return time.monotonic() - t0
        took = run(client())
        assert took < T(1), "the close took %.2fs to be answered" % took
        wait_until(lambda: b.get("/status").json()["ws"]["active_calls"] == 0 and
                   b.get("/status").json()["ws"]["connections"] == 0, what="the socket's requests freed")
        check_status(b.post(FLOW_TC, tc("after")), 200, "the next caller")


@timeout(60)
def test_upstream_lost_mid_stream_fails_waiting_requests_at_once():
    m = start_mock("v2d", tokens=[TOKEN])
    b = start_bridge(m.url, "--token", TOKEN, "--reconnect-min", "0.05")
    with m, b:
        b.wait_ready()

        async def client():
            async with websockets.connect(ws_url(b)) as ws:
                await ws.send(json.dumps(tc_req("req-1", "x", streaming=True, parts=10, delay=0.05,
                                                drop=True, after=2)))
                frames = []
                while True:
                    f = await recv_json(ws)
                    frames.append(f)
                    if f.get("complete"):
                        return frames
        frames = run(client())
        eq(frames[-1].get("error", {}).get("type"), "upstream-disconnected", "the last frame")
        eq(frames[-1]["id"], "req-1", "its id")


@timeout(60)
def test_client_token_on_the_websocket_and_on_rest():
    m = start_mock("v2d", tokens=[TOKEN])
    tf = os.path.join(tempfile.mkdtemp(prefix="tgb-ct-"), "client-token")
    with open(tf, "w") as f:
        f.write("local-secret-1\n")
    b = start_bridge(m.url, "--token", TOKEN, "--client-token-file", tf)
    with m, b:
        b.wait_ready()

        async def auth_frames():
            async with websockets.connect(ws_url(b)) as ws:
                await ws.send(json.dumps(tc_req("r0", "before auth")))
                before = await recv_json(ws)
                await ws.send(json.dumps({"type": "auth", "token": "wrong"}))
                failed = await recv_json(ws)
                await ws.send(json.dumps({"type": "auth", "token": "local-secret-1"}))
                ok = await recv_json(ws)
                await ws.send(json.dumps(tc_req("r1", "after auth")))
                return before, failed, ok, await recv_json(ws)
        before, failed, ok, after = run(auth_frames())
        eq(before, {"id": "r0", "error": {"type": "auth-required", "message": "auth failure"},
                    "complete": True}, "a request before the auth frame")
        eq(failed, {"type": "auth-failed", "error": "auth failure"}, "a wrong token")
        eq(ok["type"], "auth-ok", "the right token")
        eq(after["response"]["response"], "after auth", "a request after it")

        async def url_token(tok):
            async with websockets.connect(ws_url(b, "?token=" + tok)) as ws:
                await ws.send(json.dumps(tc_req("q", "by url")))
                return await recv_json(ws)
        eq(run(url_token("local-secret-1"))["response"]["response"], "by url", "the right ?token=")
        try:
            run(url_token("nope"))
            raise AssertionError("a wrong ?token= was accepted")
        except websockets.exceptions.InvalidStatusCode as e:
            eq(e.status_code, 401, "status for a wrong ?token=")
        # REST: a Bearer header
        r = b.post(FLOW_TC, tc("no token"))
        check_status(r, 401, "REST without the token")
        eq(r.json(), {"error": "auth failure"}, "REST 401 body")
        check_status(b.post(FLOW_TC, tc("token"), headers={"Authorization": "Bearer local-secret-1"}), 200,
                     "REST with the token")
        check_status(b.get("/healthz"), 200, "probes need no token")
        assert m.stats()["last_query_token"] in (None, TOKEN), "a local token went upstream"
        assert "local-secret-1" not in b.log(), "the client token in the log"


@timeout(60)
def test_drain_on_sigterm_fails_requests_then_closes_1001():
    m = start_mock("v2d", tokens=[TOKEN])
    b = start_bridge(m.url, "--token", TOKEN, "--drain-timeout", "0.3")
    with m, b:
        b.wait_ready()

        async def client():
            async with websockets.connect(ws_url(b)) as ws:
                await ws.send(json.dumps(tc_req("req-1", "never", never=True)))
                await asyncio.sleep(0.2)
                os.kill(b.pid, signal.SIGTERM)
                f = await recv_json(ws)
                try:
                    await asyncio.wait_for(ws.recv(), T(5))
                except websockets.exceptions.ConnectionClosed as e:
                    return f, e.code
                raise AssertionError("no close after the drain")
        f, code = run(client())
        eq(f.get("error", {}).get("type"), "shutting-down", "the request's final error")
        eq(code, 1001, "close code")
        b.stop()


@timeout(60)
def test_unix_socket_serves_line_http_and_websocket_side_by_side():
    sock = os.path.join(tempfile.mkdtemp(prefix="tgb-uws-"), "s.sock")
    m = start_mock("v2d", tokens=[TOKEN])
    b = start_bridge(m.url, "--token", TOKEN, "--unix", sock)
    with m, b:
        b.wait_ready()

        async def client():
            async with websockets.unix_connect(sock, "ws://localhost/api/v1/socket") as ws:
                await ws.send(json.dumps({"type": "auth", "token": ""}))
                await recv_json(ws)
                await ws.send(json.dumps(tc_req("w1", "over unix")))
                return await recv_json(ws)
        c = LineClient(sock)
        c.send(envelope(id="l1", prompt="line"))
        eq(run(client())["response"]["response"], "over unix", "the WebSocket over the Unix socket")
        eq(c.line()["response"]["response"], "line", "the line client meanwhile")
        r = unix_request(sock, "POST", FLOW_TC, json.dumps(tc("http")).encode())
        check_status(r, 200, "HTTP over the Unix socket")


@timeout(60)
def test_browser_origin_and_client_limit_refused_at_the_handshake():
    m = start_mock("v2d", tokens=[TOKEN])
    b = start_bridge(m.url, "--token", TOKEN, "--max-ws-clients", "2")
    with m, b:
        b.wait_ready()

        async def status_of(**kw):
            try:
                async with websockets.connect(ws_url(b), **kw):
                    return 101
            except websockets.exceptions.InvalidStatusCode as e:
                return e.status_code
        eq(run(status_of(origin="https://evil.example")), 403, "a web page's upgrade")

        async def three():
            a = await websockets.connect(ws_url(b))
            c = await websockets.connect(ws_url(b))
            try:
                return await status_of()
            finally:
                await a.close()
                await c.close()
        eq(run(three()), 503, "past --max-ws-clients")


@timeout(60)
def test_pings_answered_while_the_gateway_is_gone():
    m = start_mock("v2d", tokens=[TOKEN])
    b = start_bridge(m.url, "--token", TOKEN)
    with m, b:
        b.wait_ready()

        async def client():
            async with websockets.connect(ws_url(b)) as ws:
                m.kill()
                for _ in range(3):
                    waiter = await ws.ping()
                    await asyncio.wait_for(waiter, T(2))
                return True
        assert run(client())


@timeout(90)
def test_client_that_does_not_read_is_closed_1008():
    m = start_mock("v2d", tokens=[TOKEN])
    b = start_bridge(m.url, "--token", TOKEN, "--max-client-buffer", "1m")
    with m, b:
        b.wait_ready()
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        s.connect(("127.0.0.1", b.port))
        s.sendall(b"GET /api/v1/socket HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                  b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  b"Sec-WebSocket-Version: 13\r\n\r\n")
        payload = json.dumps(tc_req("big", "x", streaming=True, parts=100, part_size=256 * 1024)).encode()
        mask = b"\x01\x02\x03\x04"
        frame = bytes([0x81, 0xFE]) + len(payload).to_bytes(2, "big") + mask + \
            bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
        s.sendall(frame)
        wait_until(lambda: "reads too slowly" in b.log(), timeout=30, what="the slow client dropped")
        # Now it reads: what it gets is every frame it was owed before, whole, then the
        # 1008 close frame, then the end of the connection.
        _, _, rest = rawws.read_head(s)
        r = rawws.Reader(s, rest)
        frames = []
        while not frames or frames[-1][0] != 8:
            f = r.next(10)
            assert f is not None, "EOF after %d frames, before a close frame (%d bytes left over)" \
                % (len(frames), len(r.buf))
            frames.append(f)
        eq(set(f[0] for f in frames[:-1]), {1}, "the frames before the close")
        parts = [json.loads(f[2]) for f in frames[:-1]]
        assert parts and all(p["id"] == "big" for p in parts), "frames owed before the drop"
        eq(rawws.close_code(frames[-1][2]), 1008, "the close frame")
        s.sendall(rawws.close_frame(1008))
        assert r.at_eof(3), "the connection still open after the closing handshake"
        eq(r.buf, b"", "bytes after the close frame")
        s.close()
        eq(metric_of(b, 'tgbridge_callers_dropped_total{reason="slow-reader"}'), 1.0, "slow readers dropped")


@timeout(60)
def test_dropped_slow_reader_that_never_reads_is_cut_off_after_close_timeout():
    """The drop waits for a slow reader to take what it is owed, but not forever: one
    that never reads is disconnected --close-timeout after it was dropped."""
    m = start_mock("v2d", tokens=[TOKEN])
    b = start_bridge(m.url, "--token", TOKEN, "--max-client-buffer", "1m", "--close-timeout", "4")
    with m, b:
        b.wait_ready()
        s = rawws.upgrade(b.port, "/api/v1/socket", rcvbuf=32 * 1024)
        s.sendall(rawws.frame(1, json.dumps(tc_req("big", "x", streaming=True, parts=100, part_size=256 * 1024))))
        wait_until(lambda: "reads too slowly" in b.log(), timeout=30, what="the slow client dropped")
        t0 = time.monotonic()
        wait_until(lambda: b.get("/status").json()["ws"]["connections"] == 0, timeout=T(8),
                   what="the connection closed")
        took = time.monotonic() - t0
        assert 3.0 < took < T(6), "closed %.2fs after the drop (--close-timeout 4)" % took
        s.close()


@timeout(60)
def test_requests_past_max_pending_get_an_error_at_once():
    m = start_mock("v2d", tokens=[TOKEN])
    b = start_bridge(m.url, "--token", TOKEN, "--max-pending", "3")
    with m, b:
        b.wait_ready()

        async def client():
            async with websockets.connect(ws_url(b)) as ws:
                for i in range(5):
                    await ws.send(json.dumps(tc_req("r%d" % i, "p", first_delay=0.5)))
                first = [await recv_json(ws), await recv_json(ws)]
                await ws.ping()
                rest = await collect(ws, ["r0", "r1", "r2"])
                return first, rest
        first, rest = run(client())
        eq(sorted(f["id"] for f in first), ["r3", "r4"], "refused at once")
        eq({f["error"]["type"] for f in first}, {"too-many-requests"}, "their error")
        eq(sorted(rest), ["r0", "r1", "r2"], "the others answered")


@timeout(60)
def test_upgrades_rfc6455_refuses_are_answered_over_http():
    """RFC 6455 §4.1-4.4 on the local WebSocket and the bulk sockets alike: an
    upgrade over HTTP/1.0 gets 400, one without Sec-WebSocket-Version: 13 gets 426
    naming the version served; version 13 over HTTP/1.1 opens."""
    m = start_mock("v2d", tokens=[TOKEN])
    b = start_bridge(m.url, "--token", TOKEN)
    with m, b:
        b.wait_ready()
        for path in ("/api/v1/socket", "/api/v1/flow/default/import/triples"):
            for version, http, want in (("8", "1.1", 426), (None, "1.1", 426), ("13", "1.0", 400),
                                        ("13, 8", "1.1", 426), ("13", "1.1", 101)):
                s = rawws.upgrade(b.port, path, version=version, http=http)
                status, head, _ = rawws.read_head(s)
                s.close()
                what = "%s, version %s, HTTP/%s" % (path, version, http)
                eq(status, want, what)
                if want == 426:
                    assert "\r\nsec-websocket-version: 13\r\n" in head.lower() + "\r\n", head
                if want != 101:
                    assert "application/json" in head.lower(), head
        wait_until(lambda: b.get("/status").json()["passthrough"]["active"] == 0, what="bulk pair freed")
        eq(len(m.stats()["passthrough"]["sockets"]), 1, "bulk sockets the gateway saw (the one opened)")


@timeout(60)
def test_protocol_errors_fail_the_connection_with_their_close_code():
    """RFC 6455 §5.1-5.5 and §8.1 on the local WebSocket: a frame a client must never
    send gets a close frame with 1002 (protocol error), a text message that is not
    UTF-8 one with 1007, and then the end of the connection -- never a reply.  Other
    clients are not disturbed."""
    m = start_mock("v2d", tokens=[TOKEN])
    b = start_bridge(m.url, "--token", TOKEN)
    req = json.dumps(tc_req("p1", "hello"))
    cases = [
        ("an unmasked text frame", rawws.frame(1, req, masked=False), 1002),
        ("RSV1 set (no extension negotiated)", rawws.frame(0x40 | 1, req), 1002),
        ("a reserved opcode", rawws.frame(3, req), 1002),
        ("a fragmented ping", rawws.frame(9, b"x", fin=False), 1002),
        ("a ping of 126 bytes", rawws.frame(9, b"x" * 126), 1002),
        ("a continuation with no message under way", rawws.frame(0, req), 1002),
        ("a new message inside a fragmented one", rawws.frame(1, req[:5], fin=False) + rawws.frame(1, req), 1002),
        ("a text message that is not UTF-8",
         rawws.frame(1, b'{"id":"p1","service":"text-completion","request":{"q":"\xff"}}'), 1007),
        ("a close frame of one byte", rawws.frame(8, b"\x03"), 1002),
    ]
    with m, b:
        b.wait_ready()
        for what, data, code in cases:
            s = rawws.upgrade(b.port, "/api/v1/socket")
            status, _, rest = rawws.read_head(s)
            eq(status, 101, what)
            s.sendall(data)
            r = rawws.Reader(s, rest)
            f = r.next(5)
            assert f is not None and f[0] == 8, "%s: %r instead of a close frame" % (what, f)
            eq(rawws.close_code(f[2]), code, what)
            assert r.at_eof(5), "%s: the connection still open after the close frame" % what
            eq(r.buf, b"", "%s: bytes after the close frame" % what)
            s.close()
        wait_until(lambda: b.get("/status").json()["ws"]["connections"] == 0, what="every failed socket freed")

        async def client():
            async with websockets.connect(ws_url(b)) as ws:
                await ws.send(json.dumps(tc_req("ok", "still served")))
                return await recv_json(ws)
        eq(run(client())["response"]["response"], "still served", "a well-behaved client after them")
        assert "with 1002: an unmasked frame" in b.log(), "the reason logged"


@timeout(60)
def test_upgrade_without_a_proper_key_gets_400():
    """RFC 6455 §4.1-4.2: the Sec-WebSocket-Key is 16 bytes in base64; without one the
    upgrade cannot be answered, and gets a 400 error body instead of a silent close
    (or, for a short key, a 101 all the same)."""
    m = start_mock("v2d", tokens=[TOKEN])
    b = start_bridge(m.url, "--token", TOKEN)
    with m, b:
        b.wait_ready()
        for key in (None, "short", "dGhlIHNhbXBsZSBub25jZQ"):
            s = socket.socket()
            s.settimeout(T(5))
            s.connect(("127.0.0.1", b.port))
            head = "GET /api/v1/socket HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n" \
                   "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            if key is not None:
                head += "Sec-WebSocket-Key: %s\r\n" % key
            s.sendall((head + "\r\n").encode())
            status, text, _ = rawws.read_head(s)
            s.close()
            eq(status, 400, "key %r" % key)
            assert "application/json" in text.lower(), text
        s = rawws.upgrade(b.port, "/api/v1/socket")
        eq(rawws.read_head(s)[0], 101, "a proper key")
        s.close()
