"""The local client token is compared whole, at the length the caller showed it
(issue 16 item 7): a right token followed by a NUL byte is a different token, on
every path a token can arrive by -- a Bearer header (REST and the WebSocket
upgrade), ?token= with %00, and the local WebSocket's auth frame with \\u0000."""

import asyncio
import json
import os
import socket
import tempfile

import websockets

from harness import (FLOW_TC, T, check_status, eq, start_bridge, start_mock, tc,
                     timeout)

TOKEN = "tg_nul_gw_5c1e"
LOCAL = "local-secret-nul"


def raw(port, head, seconds=10):
    """Sends head, returns the status line of the answer (or b'' when the
    connection was closed without one)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=T(seconds))
    try:
        s.sendall(head)
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return data.split(b"\r\n", 1)[0]
    finally:
        s.close()


def status_of(line):
    parts = line.split()
    return int(parts[1]) if len(parts) > 1 else 0


UPGRADE = (b"GET /api/v1/socket%s HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
           b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           b"Sec-WebSocket-Version: 13\r\n%s\r\n")


@timeout(60)
def test_a_token_with_a_nul_inside_is_refused_on_every_path():
    m = start_mock("v2d", tokens=[TOKEN])
    tf = os.path.join(tempfile.mkdtemp(prefix="tgb-nul-"), "client-token")
    with open(tf, "w") as f:
        f.write(LOCAL + "\n")
    b = start_bridge(m.url, "--token", TOKEN, "--client-token-file", tf)
    with m, b:
        b.wait_ready()
        body = json.dumps(tc("x")).encode()

        def rest(auth):
            return status_of(raw(b.port, b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                 b"Content-Type: application/json\r\nContent-Length: %d\r\n"
                                 b"Authorization: Bearer %s\r\n\r\n%s"
                                 % (FLOW_TC.encode(), len(body), auth, body)))
        eq(rest(LOCAL.encode()), 200, "REST with the token")
        got = rest(LOCAL.encode() + b"\x00")
        assert got in (400, 401), "REST Bearer with a NUL after the token: %d" % got
        got = rest(LOCAL.encode() + b"\x00junk")
        assert got in (400, 401), "REST Bearer with a NUL and more after the token: %d" % got

        eq(status_of(raw(b.port, UPGRADE % (b"?token=" + LOCAL.encode(), b""))), 101, "upgrade, ?token=")
        eq(status_of(raw(b.port, UPGRADE % (b"?token=" + LOCAL.encode() + b"%00", b""))), 401,
           "upgrade, ?token= with %00")
        eq(status_of(raw(b.port, UPGRADE % (b"", b"Authorization: Bearer " + LOCAL.encode() + b"\r\n"))),
           101, "upgrade, Bearer")
        got = status_of(raw(b.port, UPGRADE % (b"", b"Authorization: Bearer " + LOCAL.encode() + b"\x00\r\n")))
        assert got in (400, 401), "upgrade, Bearer with a NUL: %d" % got

        async def frames():
            async with websockets.connect("ws://127.0.0.1:%d/api/v1/socket" % b.port) as ws:
                out = []
                for tok in (LOCAL + "\u0000", LOCAL + "\u0000x", LOCAL):
                    await ws.send(json.dumps({"type": "auth", "token": tok}))
                    out.append(json.loads(await asyncio.wait_for(ws.recv(), T(10)))["type"])
                return out
        eq(asyncio.run(asyncio.wait_for(frames(), T(30))), ["auth-failed", "auth-failed", "auth-ok"],
           "auth frames: token + \\u0000, token + \\u0000x, token")
        check_status(b.get("/healthz"), 200, "still serving")
