"""Local callers that misbehave: readers that stop reading, heads and bodies
dribbled a byte at a time, connections that never say anything, ambiguous
HTTP framing, and web pages reaching the loopback port.  None of them may
cost other callers anything, and none gets in by the back door."""

import json
import os
import re
import socket
import tempfile
import threading
import time

from harness import (FLOW_TC, T, check_status, eq, own_error, rss_meaningful,
                     start_bridge, start_mock, tc, timeout, wait_until)
from rss import RssWatch, rss_bytes

TOKEN = "tg_callers_token_5e02"
MiB = 1024 * 1024


def metric(b, name, labels=""):
    want = name + labels
    for line in b.get("/metrics").body.decode().splitlines():
        if line.startswith(want + " "):
            return float(line.split()[1])
    raise AssertionError("no metric %s" % want)


def raw_post(port, path, body, headers=(), rcvbuf=None):
    """A POST on a raw socket that the caller reads (or not) itself."""
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(("127.0.0.1", port))
    data = json.dumps(body).encode()
    head = ("POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            "Content-Length: %d\r\n" % (path, len(data)))
    for h in headers:
        head += h + "\r\n"
    s.sendall(head.encode() + b"\r\n" + data)
    return s


def read_to_eof(s, timeout_s):
    """Reads until the peer closes; True if it did within the time."""
    s.settimeout(timeout_s)
    try:
        while True:
            chunk = s.recv(1 << 20)
            if not chunk:
                return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


# ------------------------------------------------------------ slow readers

@timeout(120)
def test_caller_that_stops_reading_a_huge_stream_is_dropped_not_buffered():
    """The mock streams 300 MiB to a REST caller that never reads.  tgbridge
    holds at most --max-client-buffer for it (RSS measured from /proc), then
    shuts its connection; a second caller streaming at the same time gets
    every part; the drop is logged once and counted."""
    m = start_mock("v2d", tokens=[TOKEN])
    b = start_bridge(m.url, "--token", TOKEN, "--max-client-buffer", "4m")
    with m, b:
        b.wait_ready()
        check_status(b.post(FLOW_TC, tc("warm up")), 200, "warm-up")
        base = rss_bytes(b.pid)
        sampler = RssWatch(b.pid, interval=0.02)
        slow = raw_post(b.port, FLOW_TC, tc("never read", streaming=True, parts=300,
                                            part_size=MiB),
                        headers=["Accept: application/x-ndjson"], rcvbuf=64 * 1024)
        got = []
        with b.stream(FLOW_TC, tc("the other caller", streaming=True, parts=40,
                                  delay=0.02)) as s:
            check_status(s, 200, "the second caller's stream")
            for item in s.ndjson():
                got.append(item)
        eq(len(got), 41, "parts the second caller got (40 and the final one)")
        eq(got[-1].get("end_of_stream"), True, "its final part")
        wait_until(lambda: m.stats()["requests_completed"] >= 3, timeout=60,
                   what="the mock sent all 300 MiB")
        sampler.stop()
        peak = sampler.peak * 1024
        assert not rss_meaningful(b.pid) or peak - base < 4 * MiB + 24 * MiB, \
            "RSS grew by %.1f MiB for a caller that does not read (bound 4 MiB)" % ((peak - base) / MiB)
        assert read_to_eof(slow, T(10)), "the slow caller's connection was not closed"
        slow.close()
        eq(metric(b, "tgbridge_callers_dropped_total", '{reason="slow-reader"}'), 1.0,
           "slow readers dropped")
        eq(len(re.findall("reads too slowly", b.log())), 1, "drop log lines")
        # and nothing of it is left
        wait_until(lambda: b.get("/status").json()["rest"]["active_calls"] == 0,
                   what="no REST call left")


# ------------------------------------------------------------ slow and silent connections

class Dribbler:
    """A connection that sends `data` one byte every `every` seconds (after
    `prefix` in one go) and notes when the other side closed it."""

    def __init__(self, connect, prefix=b"", data=b"", every=0.1):
        self.sock = connect()
        self.started = time.monotonic()
        self.closed_at = None
        self._t = threading.Thread(target=self._run, args=(prefix, data, every), daemon=True)
        self._t.start()

    def _gone(self):
        try:
            chunk = self.sock.recv(65536, socket.MSG_DONTWAIT)
            return not chunk
        except BlockingIOError:
            return False
        except OSError:
            return True

    def _run(self, prefix, data, every):
        try:
            if prefix:
                self.sock.sendall(prefix)
            i = 0
            while not self._gone():
                if i < len(data):
                    self.sock.send(data[i:i + 1])
                    i += 1
                time.sleep(every)
        except OSError:
            pass
        self.closed_at = time.monotonic()

    def lifetime(self, timeout_s):
        self._t.join(timeout_s)
        return None if self.closed_at is None else self.closed_at - self.started

    def close(self):
        self.sock.close()


def tcp(port):
    return lambda: socket.create_connection(("127.0.0.1", port))


def unix(path):
    def connect():
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        return s
    return connect


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


@timeout(90)
def test_fifty_dribbling_connections_are_closed_and_cost_nobody_anything():
    """Heads and bodies dribbled a byte at a time, Unix connections that never
    say a word, and a line that never ends: all closed after --client-timeout
    (not before), normal callers served at full speed meanwhile, every
    descriptor given back.  A line client that sent complete lines and then
    idles is not cut."""
    sock = os.path.join(tempfile.mkdtemp(prefix="tgb-drib-"), "s.sock")
    m = start_mock("v2d", tokens=[TOKEN])
    b = start_bridge(m.url, "--token", TOKEN, "--unix", sock, "--client-timeout", "1")
    with m, b:
        b.wait_ready()
        check_status(b.post(FLOW_TC, tc("warm up")), 200, "warm-up")
        base_fds = fd_count(b.pid)
        head = b"POST /api/v1/flow/default/service/text-completion HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        body_head = (b"POST /api/v1/flow/default/service/text-completion HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Length: 2000000\r\n\r\n")
        idle_line = socket.socket(socket.AF_UNIX)
        idle_line.connect(sock)
        idle_line.sendall(b'{"type":"ping"}\n')
        idle_line.settimeout(T(5))
        eq(idle_line.recv(100), b'{"type":"pong"}\n', "the idle line client's pong")
        drib = [Dribbler(tcp(b.port), data=head * 20) for _ in range(20)]
        drib += [Dribbler(tcp(b.port), prefix=body_head, data=b"x" * 1000, every=0.2) for _ in range(10)]
        drib += [Dribbler(unix(sock)) for _ in range(10)]
        drib += [Dribbler(unix(sock), prefix=b"POST /api/v1/flow HTTP/1.1\r\n", data=b"X-A: b\r\n" * 50)
                 for _ in range(5)]
        drib += [Dribbler(unix(sock), prefix=b'{"id":1,', data=b" " * 1000) for _ in range(5)]
        # normal callers meanwhile: each answered promptly
        worst = 0.0
        t_end = time.monotonic() + T(2.5)
        while time.monotonic() < t_end:
            t0 = time.monotonic()
            check_status(b.post(FLOW_TC, tc("meanwhile")), 200, "a normal call meanwhile")
            worst = max(worst, time.monotonic() - t0)
            time.sleep(0.05)
        assert worst < T(0.5), "a normal call took %.2fs among the dribblers" % worst
        lives = [d.lifetime(T(5)) for d in drib]
        for d in drib:
            d.close()
        assert all(x is not None for x in lives), "%d dribblers never closed" % lives.count(None)
        assert min(lives) >= 0.9, "a dribbler was closed early (%.2fs)" % min(lives)
        assert max(lives) < 1 + T(1.5), "a dribbler lived %.2fs with --client-timeout 1" % max(lives)
        # the persistent line client is still there
        idle_line.sendall(b'{"type":"ping"}\n')
        eq(idle_line.recv(100), b'{"type":"pong"}\n', "the idle line client, after 2.5 s")
        idle_line.close()
        wait_until(lambda: fd_count(b.pid) <= base_fds, timeout=5,
                   what="descriptors back to %d (now %d)" % (base_fds, fd_count(b.pid)))
        assert metric(b, "tgbridge_callers_dropped_total", '{reason="client-timeout"}') >= 50
        assert b.log().count("--client-timeout") <= 6, "timeouts are not logged one by one:\n" + b.log()


@timeout(60)
def test_keep_alive_connection_idle_past_the_client_timeout_is_closed():
    m = start_mock("v2d", tokens=[TOKEN])
    b = start_bridge(m.url, "--token", TOKEN, "--client-timeout", "0.5")
    with m, b:
        b.wait_ready()
        import http.client
        c = http.client.HTTPConnection("127.0.0.1", b.port, timeout=T(5))
        c.request("POST", FLOW_TC, json.dumps(tc("first")))
        r = c.getresponse()
        eq(r.status, 200, "first request")
        r.read()
        s = c.sock
        t0 = time.monotonic()
        s.settimeout(T(5))
        eq(s.recv(10), b"", "EOF on the idle keep-alive connection")
        took = time.monotonic() - t0
        assert 0.4 <= took < 0.5 + T(1), "closed after %.2fs idle" % took
        c.close()


# ------------------------------------------------------------ strict framing

def raw_http(port, data, timeout_s=10):
    """Sends raw bytes, returns (status, body) of the first response (0 if none)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=T(timeout_s))
    try:
        s.sendall(data)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                return 0, buf
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        status = int(head.split(b" ")[1])
        m = re.search(rb"(?i)content-length: *(\d+)", head)
        want = int(m.group(1)) if m else 0
        while len(rest) < want:
            chunk = s.recv(65536)
            if not chunk:
                break
            rest += chunk
        return status, rest
    finally:
        s.close()


@timeout(60)
def test_ambiguous_body_framing_is_refused():
    """RFC 9112 §6: two different Content-Lengths, a coding other than
    chunked, or both Transfer-Encoding and Content-Length are refused, never
    guessed at (a proxy in front could read the body differently)."""
    m = start_mock("v2d", tokens=[TOKEN])
    b = start_bridge(m.url, "--token", TOKEN)
    with m, b:
        b.wait_ready()
        body = json.dumps(tc("x")).encode()
        head = b"POST " + FLOW_TC.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        before = m.stats()["requests_received"]
        # (libmicrohttpd itself refuses a Content-Length that is not one number, in HTML)
        for bad in (b"1x", b"%d, %d" % (len(body), len(body) + 1)):
            status, _ = raw_http(b.port, head + b"Content-Length: " + bad + b"\r\n\r\n" + body)
            eq(status, 400, "status for Content-Length: %r" % bad)
        cases = [
            (400, b"Content-Length: %d\r\nContent-Length: %d\r\n\r\n" % (len(body), len(body) + 5)),
            (501, b"Transfer-Encoding: gzip\r\n\r\n"),
            (501, b"Transfer-Encoding: gzip, chunked\r\n\r\n"),
            (400, b"Transfer-Encoding: chunked\r\nContent-Length: %d\r\n\r\n" % len(body)),
        ]
        for want, hdrs in cases:
            status, rbody = raw_http(b.port, head + hdrs + body)
            eq(status, want, "status for %r" % hdrs)
            err = json.loads(rbody)["error"]
            eq(err["type"], "bad-request" if want == 400 else "not-implemented",
               "error type for %r" % hdrs)
        # identical repeated lengths are one length (RFC 9110 §8.6)
        status, rbody = raw_http(b.port, head + b"Content-Length: %d\r\nContent-Length: %d\r\n\r\n"
                                 % (len(body), len(body)) + body)
        eq(status, 200, "two identical Content-Lengths")
        # and the plain forms keep working
        status, _ = raw_http(b.port, head + b"Transfer-Encoding: chunked\r\n\r\n"
                             + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        eq(status, 200, "chunked")
        eq(m.stats()["requests_received"] - before, 2, "requests that reached the gateway")


# ------------------------------------------------------------ browsers

@timeout(60)
def test_web_pages_are_refused_by_origin_and_host():
    """A page on any web site can POST to a loopback port (and, with DNS
    rebinding, read the answer): a request with an Origin not allowed, or a
    Host that is not a loopback name or the listen address, gets 403 and
    never reaches the gateway; health probes stay open."""
    m = start_mock("v2d", tokens=[TOKEN])
    b = start_bridge(m.url, "--token", TOKEN, "--allow-origin", "https://app.example",
                     "--allow-host", "tgbridge.internal")
    with m, b:
        b.wait_ready()
        sent = m.stats()["frames_in"]
        r = b.post(FLOW_TC, tc("evil"), headers={"Origin": "https://evil.example",
                                                  "Content-Type": "text/plain"})
        own_error(r, 403, "forbidden-origin")
        r = b.post(FLOW_TC, tc("null"), headers={"Origin": "null"})
        own_error(r, 403, "forbidden-origin")
        r = b.post(FLOW_TC, tc("rebound"), headers={"Host": "attacker.example:8089"})
        own_error(r, 403, "forbidden-host")
        r = b.get("/status", headers={"Host": "attacker.example"})
        own_error(r, 403, "forbidden-host")
        # a name that merely starts like a loopback address is anyone's DNS name
        r = b.get("/status", headers={"Host": "127.attacker.example:8089"})
        own_error(r, 403, "forbidden-host")
        eq(m.stats()["frames_in"], sent, "frames the refused requests sent upstream")
        # allowed: no Origin, the allowed one, loopback names, the allowed host
        for hdrs in ({}, {"Origin": "https://app.example"}, {"Host": "localhost:1234"},
                     {"Host": "[::1]:8089"}, {"Host": "tgbridge.internal:8089"}):
            check_status(b.post(FLOW_TC, tc("ok"), headers=hdrs), 200, "allowed %r" % hdrs)
        # probes carry a pod's IP as Host, and are harmless
        check_status(b.get("/healthz", headers={"Host": "10.1.2.3:8089"}), 200, "/healthz")
        eq(b.log().count("refused (forbidden-origin): requests from the web origin https://evil.example"), 1,
           "one log line per origin")
