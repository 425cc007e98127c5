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

from harness import (FLOW_TC, T, check_status, eq, own_error, start_bridge,
                     start_mock, tc, timeout, wait_until)

TOKEN = "tg_callers_token_5e02"
MiB = 1024 * 1024


def rss(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def metric(b, name, labels=""):
    want = name + labels
    for line in b.get("/metrics").body.decode().splitlines():
        if line.startswith(want + " "):
            return float(line.split()[1])
    raise AssertionError("no metric %s" % want)


class PeakRss:
    """Samples a process's RSS in a thread until stopped; .peak is the most."""

    def __init__(self, pid):
        self.pid = pid
        self.peak = rss(pid)
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.wait(0.02):
            try:
                self.peak = max(self.peak, rss(self.pid))
            except (OSError, AssertionError):
                return

    def stop(self):
        self._stop.set()
        self._t.join(5)
        return self.peak


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
        base = rss(b.pid)
        sampler = PeakRss(b.pid)
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
        peak = sampler.stop()
        assert peak - base < 4 * MiB + 24 * MiB, \
            "RSS grew by %.1f MiB for a caller that does not read (bound 4 MiB)" % ((peak - base) / MiB)
        assert read_to_eof(slow, T(10)), "the slow caller's connection was not closed"
        slow.close()
        eq(metric(b, "tgbridge_callers_dropped_total", '{reason="slow-reader"}'), 1.0,
           "slow readers dropped")
        eq(len(re.findall("reads too slowly", b.log())), 1, "drop log lines")
        # and nothing of it is left
        wait_until(lambda: b.get("/status").json()["rest"]["active_calls"] == 0,
                   what="no REST call left")
