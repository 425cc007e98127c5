"""A gateway that misbehaves: frames that are not JSON or not UTF-8, silence in
every phase of a connection attempt, refusals that quote the token.  tgbridge
must keep every caller answered, never forward what it cannot vouch for, name
truthfully what went wrong, and recover without a restart."""

import json
import os
import tempfile

from harness import (FLOW_TC, T, check_status, eq, is_json_ct, own_error,
                     start_bridge, start_mock, tc, timeout, wait_until)
from test_unix import LineClient, envelope

TOKEN = "tg_hostile_token_9c41"


def metric(b, name):
    text = b.get("/metrics").body.decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError("no metric %s in:\n%s" % (name, text))


# ------------------------------------------------------------ bad frames

@timeout(60)
def test_bad_reply_frames_fail_their_caller_and_nobody_else():
    """A reply frame that is not valid UTF-8 or not JSON is never served as
    application/json: its caller gets 502 bad-gateway-frame (or a final error
    part / line), the other callers are served, and each is counted."""
    sock = os.path.join(tempfile.mkdtemp(prefix="tgb-bad-"), "s.sock")
    m = start_mock("v2d", tokens=[TOKEN])
    b = start_bridge(m.url, "--token", TOKEN, "--unix", sock,
                     "--request-timeout", "2")
    with m, b:
        b.wait_ready()
        for kind in ("utf8", "json"):
            r = b.post(FLOW_TC, tc("bad " + kind, bad_frame=kind))
            own_error(r, 502, "bad-gateway-frame")
            # a stream: the good parts, then the error as its last item
            with b.stream(FLOW_TC, tc("s", streaming=True, bad_frame=kind,
                                      after=2)) as s:
                check_status(s, 200, "stream with a bad last frame")
                items = list(s.ndjson())
            eq(len(items), 3, "items of the stream (%s)" % kind)
            eq(items[-1].get("error", {}).get("type"), "bad-gateway-frame",
               "last item of the stream (%s)" % kind)
            # the line protocol
            c = LineClient(sock)
            c.send(envelope(id="L1", mock={"bad_frame": kind}))
            line = c.line()
            eq(line.get("id"), "L1", "line reply id")
            eq(line.get("error", {}).get("type"), "bad-gateway-frame",
               "line reply error type")
            eq(line.get("complete"), True, "line reply complete")
            c.sock.close()
            # and a normal caller is unaffected
            r = b.post(FLOW_TC, tc("after " + kind))
            check_status(r, 200, "a normal call after the bad frame")
            assert is_json_ct(r.headers)
            eq(r.json().get("response"), "after " + kind, "normal reply")
        eq(metric(b, "tgbridge_gateway_bad_frames_total"), 6.0,
           "bad frames counted")
        # A JSON array has no id the scanner can read: nobody can be told
        # at once, so its caller gets its deadline's answer, not the frame.
        r = b.post(FLOW_TC, tc("array", bad_frame="nonobject"), timeout=20)
        own_error(r, 504, "request-timeout")
        eq(metric(b, "tgbridge_gateway_bad_frames_total"), 7.0,
           "the array counted too")
        assert b.log().count("dropped a gateway frame") <= 2, \
            "bad frames are logged at most once per 10 s:\n" + b.log()
