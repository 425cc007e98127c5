"""Every front end under the same deadlines and budgets (issue 16 item 3):
 - a local WebSocket message must be complete within --client-timeout of its first
   fragment, plus as much again per MiB of it, as a REST body (pings do not extend
   it): past it the client gets a 1008 close frame and the drop is counted
   (client-timeout);
 - --max-assembling caps the bytes of all requests still being received (REST bodies,
   lines, local WebSocket messages): the caller whose bytes would pass it is refused
   (local WebSocket 1013 with a reason, REST 503 too-busy with Retry-After, an error
   line on the line protocol), counted (memory-budget), every other caller served;
   the bytes are free again once the request is complete or its caller gone.
(Replies are kept small (_mock size): what is measured is what is being received.)"""

import asyncio
import json
import os
import socket
import tempfile
import time

import websockets

from harness import (FLOW_TC, T, check_status, eq, own_error, start_bridge, start_mock, tc,
                     timeout, wait_until)
from lineclient import LineClient, envelope, idkey

TOKEN = "tg_limits16_9d0b"


def metric(b, reason):
    name = 'tgbridge_callers_dropped_total{reason="%s"}' % reason
    for line in b.get("/metrics").body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError("no metric " + name)


class RawWS:
    """A WebSocket client that sends exactly the frames it is told to."""

    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=T(10))
        self.s.sendall(b"GET /api/v1/socket HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                       b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                       b"Sec-WebSocket-Version: 13\r\n\r\n")
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.s.recv(4096)
            assert chunk, "closed during the upgrade"
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head

    def send(self, opcode, payload, fin=True):
        mask = b"\x11\x22\x33\x44"
        n = len(payload)
        hdr = bytes([(0x80 if fin else 0) | opcode])
        if n < 126:
            hdr += bytes([0x80 | n])
        elif n < 65536:
            hdr += bytes([0xFE]) + n.to_bytes(2, "big")
        else:
            hdr += bytes([0xFF]) + n.to_bytes(8, "big")
        body = bytes(c ^ mask[i % 4] for i, c in enumerate(payload)) if n < 4096 else \
            (int.from_bytes(payload, "big") ^ int.from_bytes((mask * (n // 4 + 1))[:n], "big")).to_bytes(n, "big")
        self.s.sendall(hdr + mask + body)

    def _need(self, n, deadline):
        while len(self.buf) < n:
            self.s.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = self.s.recv(1 << 16)
            if not chunk:
                return False
            self.buf += chunk
        return True

    def frame(self, seconds=10):
        """(opcode, payload), or None at the end of the connection."""
        deadline = time.monotonic() + T(seconds)
        if not self._need(2, deadline):
            return None
        op, n = self.buf[0] & 0x0F, self.buf[1] & 0x7F
        h = 2
        if n == 126:
            self._need(4, deadline)
            n, h = int.from_bytes(self.buf[2:4], "big"), 4
        elif n == 127:
            self._need(10, deadline)
            n, h = int.from_bytes(self.buf[2:10], "big"), 10
        if not self._need(h + n, deadline):
            return None
        payload, self.buf = self.buf[h:h + n], self.buf[h + n:]
        return op, payload

    def until_close(self, seconds=10):
        """The close frame's (code, reason), skipping other frames."""
        while True:
            f = self.frame(seconds)
            assert f is not None, "the connection ended without a close frame"
            if f[0] == 8:
                return int.from_bytes(f[1][:2], "big"), f[1][2:].decode()

    def close(self):
        self.s.close()


def message(rid, prompt_len):
    """A request whose prompt is prompt_len bytes: (its first part, its last part)."""
    head = json.dumps({"id": rid, "service": "text-completion", "flow": "default",
                       "request": {"system": "", "_mock": {"size": 10}, "prompt": ""}})[:-3].encode()
    assert head.endswith(b'"prompt": "'), head
    return head + b"y" * prompt_len, b'"}}'


@timeout(60)
def test_an_unfinished_websocket_message_is_closed_1008_after_client_timeout():
    m = start_mock("v2d", tokens=[TOKEN])
    b = start_bridge(m.url, "--token", TOKEN, "--client-timeout", "1")
    with m, b:
        b.wait_ready()
        # a 500 KB first fragment and nothing after it: due at 1 s * (1 + 0.48)
        a = RawWS(b.port)
        first, _ = message("a", 500 * 1000)
        t0 = time.monotonic()
        a.send(0x1, first, fin=False)
        code, reason = a.until_close(seconds=10)
        took = time.monotonic() - t0
        eq(code, 1008, "close code for an unfinished message")
        assert "client-timeout" in reason, reason
        assert T(1.3) <= took + 0.1 and took < T(4), "closed after %.2fs" % took
        # The closing handshake completes (RFC 6455 section 5.5.1): the client answers
        # the close, and then the connection ends.
        a.send(0x8, code.to_bytes(2, "big"))
        assert a.frame(seconds=5) is None, "the connection stays open after the close frame"
        a.close()
        # dribbled at 20 bytes/s with a ping before every piece: pings do not extend it
        d = RawWS(b.port)
        t0 = time.monotonic()
        d.send(0x1, b'{"id":"d","service":', fin=False)
        while time.monotonic() - t0 < T(3):
            time.sleep(0.25)
            try:
                d.send(0x9, b"p")
                d.send(0x0, b"xxxxx", fin=False)
            except OSError:
                break  # closed under us: the close frame is read below
        code, reason = d.until_close(seconds=5)
        took = time.monotonic() - t0
        eq(code, 1008, "close code for a dribbled message")
        assert took < T(4), "the dribbled message lasted %.2fs" % took
        d.close()
        eq(metric(b, "client-timeout"), 2.0, "drops counted as client-timeout")

        # idle between messages is not limited; a whole message after it is served
        async def idle_then_request():
            async with websockets.connect("ws://127.0.0.1:%d/api/v1/socket" % b.port) as ws:
                await asyncio.sleep(1.5)
                await ws.send(json.dumps({"id": "late", "service": "text-completion", "flow": "default",
                                          "request": tc("after a pause")}))
                return json.loads(await asyncio.wait_for(ws.recv(), T(10)))
        got = asyncio.run(asyncio.wait_for(idle_then_request(), T(20)))
        eq(got["response"]["response"], "after a pause", "a message after an idle pause")
        eq(metric(b, "client-timeout"), 2.0, "no more drops")


@timeout(90)
def test_max_assembling_refuses_the_caller_past_it_and_frees_on_completion():
    m = start_mock("v2d", tokens=[TOKEN])
    d = tempfile.mkdtemp(prefix="tgb-asm-")
    path = os.path.join(d, "tgb.sock")
    b = start_bridge(m.url, "--token", TOKEN, "--unix", path, "--max-assembling", "1m",
                     "--max-body", "4m", "--max-line", "4m")
    with m, b:
        b.wait_ready()
        # --- the local WebSocket: A holds 700 KB unfinished; B's 500 KB would pass 1 MiB
        a = RawWS(b.port)
        a_first, a_last = message("a", 700 * 1000)
        a.send(0x1, a_first, fin=False)
        time.sleep(T(0.5))
        bb = RawWS(b.port)
        b_first, b_last = message("b", 500 * 1000)
        bb.send(0x1, b_first, fin=False)
        code, reason = bb.until_close()
        eq(code, 1013, "close code past --max-assembling")
        assert "max-assembling" in reason, reason
        bb.close()
        eq(metric(b, "memory-budget"), 1.0, "drops counted as memory-budget")
        # every other caller is served meanwhile
        check_status(b.post(FLOW_TC, tc("small")), 200, "a small REST call meanwhile")
        # A completes its message: it is served, and its bytes are free again
        a.send(0x0, a_last, fin=True)
        f = a.frame()
        eq(json.loads(f[1])["id"], "a", "A's reply")
        b2 = RawWS(b.port)
        b2.send(0x1, b_first, fin=False)
        b2.send(0x0, b_last, fin=True)
        f = b2.frame()
        eq(f[0], 1, "B again: a text frame, not a close")
        eq(json.loads(f[1])["id"], "b", "B again is served")
        b2.close()

        # --- REST: A's upload stalls at 700 KB; B's 500 KB body is refused 503 too-busy
        body_a = json.dumps(tc("z" * 800 * 1000)).encode()
        sa = socket.create_connection(("127.0.0.1", b.port), timeout=T(10))
        sa.sendall(b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                   b"Content-Length: %d\r\n\r\n" % (FLOW_TC.encode(), len(body_a)) + body_a[:700 * 1000])
        time.sleep(T(0.5))
        r = b.post(FLOW_TC, tc("w" * 500 * 1000, size=10))
        own_error(r, 503, "too-busy")
        assert r.headers.get("Retry-After"), "no Retry-After on 503 too-busy"
        eq(metric(b, "memory-budget"), 2.0, "the REST refusal counted")
        check_status(b.post(FLOW_TC, tc("small")), 200, "a small REST call meanwhile")
        sa.close()  # the caller gone: its bytes are free
        wait_until(lambda: b.post(FLOW_TC, tc("w" * 500 * 1000, size=10)).status == 200, timeout=T(5),
                   what="the same upload accepted once A is gone")

        # --- the line protocol: A holds 700 KB of a line; B's line is refused with its id
        la, lb = LineClient(path, T(10)), LineClient(path, T(10))
        try:
            la.send_raw(b'{"id":"la","service":"text-completion","flow":"default","request":'
                        b'{"system":"","_mock":{"size":10},"prompt":"' + b"y" * 700 * 1000)
            time.sleep(T(0.5))
            lb.send_raw(b'{"id":"lb","service":"text-completion","flow":"default","request":'
                        b'{"system":"","_mock":{"size":10},"prompt":"' + b"y" * 500 * 1000)
            got = lb.line()
            eq(got.get("id"), "lb", "the refused line's id")
            eq(got["error"]["type"], "too-busy", "its error")
            lb.send_raw(b'"}}\n')  # the rest of that line is discarded
            lb.ping()
            eq(metric(b, "memory-budget"), 3.0, "the line refusal counted")
            la.send_raw(b'"}}\n')  # A completes: served, its bytes free
            got, _ = la.collect(["la"])
            eq(len(got[idkey("la")][0]["response"]["response"]), 10, "A's line served")
            lb.send_raw(envelope("lb2", prompt="y" * 500 * 1000, mock={"size": 10}))
            got, _ = lb.collect(["lb2"])
            eq(len(got[idkey("lb2")][0]["response"]["response"]), 10, "B's line now served")
        finally:
            la.close()
            lb.close()
        eq(metric(b, "memory-budget"), 3.0, "no more refusals")
