"""A message refused because it is too deep or too long still carries its id when its
first bytes show one (issue 16 item 10): a 50,000-deep message whose id comes first,
and a line over --max-line / a WebSocket message over --max-body, on the line
protocol and the local WebSocket.  Nothing of them reaches the gateway."""

import asyncio
import json
import os
import tempfile

import websockets

from harness import T, eq, start_bridge, start_mock, timeout
from lineclient import LineClient, envelope, idkey

TOKEN = "tg_ids_refused_3f2a"
DEEP = 50000


def deep(rid):
    """{"id":rid,"service":...,"request":{"x":[[[...]]]}}: valid but 50,000 deep."""
    return (b'{"id":' + json.dumps(rid).encode() + b',"service":"text-completion","flow":"default",'
            b'"request":{"x":' + b"[" * DEEP + b"]" * DEEP + b"}}")


def long_msg(rid, n):
    return (b'{"id":' + json.dumps(rid).encode() + b',"service":"text-completion","flow":"default",'
            b'"request":{"system":"","prompt":"' + b"y" * n + b'"}}')


@timeout(60)
def test_too_deep_and_too_long_are_refused_with_their_id():
    m = start_mock("v2d", tokens=[TOKEN])
    d = tempfile.mkdtemp(prefix="tgb-ids-")
    path = os.path.join(d, "tgb.sock")
    b = start_bridge(m.url, "--token", TOKEN, "--unix", path, "--max-line", "128k", "--max-body", "128k")
    with m, b:
        b.wait_ready()
        c = LineClient(path, T(10))
        try:
            for rid in ("deep-1", 7, {"k": "obj"}):
                c.send_raw(deep(rid) + b"\n")
                got = c.line()
                eq(got.get("id"), rid, "the id of a %d-deep line" % DEEP)
                eq(got["error"]["type"], "bad-request", "its error")
            c.send_raw(long_msg("long-1", 140000) + b"\n")
            got = c.line()
            eq(got.get("id"), "long-1", "the id of a line over --max-line")
            eq(got["error"]["type"], "line-too-long", "its error")
            # an id the kept bytes do not show whole is not guessed
            c.send_raw(b'{"service":"x","request":{"p":"' + b"z" * 140000 + b'"},"id":"late"}\n')
            eq(c.line().get("id"), None, "an id after the cut")
            c.send(envelope("ok", prompt="still here"))
            got, _ = c.collect(["ok"])
            eq(got[idkey("ok")][0]["response"]["response"], "still here", "the line after them")
        finally:
            c.close()

        async def ws():
            out = []
            async with websockets.connect("ws://127.0.0.1:%d/api/v1/socket" % b.port,
                                          max_size=None) as s:
                for msg in (deep("ws-deep"), long_msg("ws-long", 140000)):
                    await s.send(msg.decode())
                    out.append(json.loads(await asyncio.wait_for(s.recv(), T(10))))
            return out
        out = asyncio.run(asyncio.wait_for(ws(), T(30)))
        eq([f.get("id") for f in out], ["ws-deep", "ws-long"], "ids on the local WebSocket")
        eq([f["error"]["type"] for f in out], ["bad-request", "payload-too-large"], "their errors")
        eq(m.stats()["requests_received"], 1, "only the good line reached the gateway")
