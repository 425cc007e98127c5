"""The buffered access log (issue 19, item 3; docs/operations.md, "Logs and the access
log"): access lines are gathered and written once per loop turn, yet every one arrives,
in order with the other log lines, soon after its call even when nothing follows, and
before tgbridge exits on SIGTERM; a standard error nobody reads never stalls the
daemon: what does not fit the pipe and the 64 KiB queue is dropped and counted
(tgbridge_log_lines_dropped_total), and the rest goes out once the reader is back."""

import fcntl
import json
import os
import re
import signal
import subprocess
import threading
import time

import pytest

from harness import (BIN, FLOW_TC, ROOT, WRAPPER, T, bridge_env, check_status, closed_port, cpu_ticks, eq, post,
                     request, start_bridge, start_mock, tc, timeout, wait_until)

TOKEN = "tg_buffer_token_51c7"
SIGHUP_LINE = "SIGHUP: no --token-file to re-read"


def is_access(line):
    return " info: access " in line or '"msg":"access"' in line


def upstream_id(line):
    if line.startswith("{"):
        return json.loads(line)["upstream_id"]
    return re.search(r" upstream_id=(\S+)", line).group(1)


def calls(port, n, prefix, callers=1):
    """n unary calls over REST from `callers` threads; every one must answer 200."""
    errors = []

    def run(k):
        try:
            for i in range(k, n, callers):
                check_status(post(port, FLOW_TC, tc("%s %d" % (prefix, i)), timeout=10), 200, "call")
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


@pytest.mark.parametrize("fmt", ["text", "json"])
@timeout(60)
def test_every_access_line_arrives_in_order_with_the_other_lines(fmt):
    m = start_mock("v2d", tokens=[TOKEN])
    b = start_bridge(m.url, "--token", TOKEN, "--log-format", fmt)
    with m, b:
        b.wait_ready()
        calls(b.port, 150, "before", callers=8)
        # A line of another kind between two groups of calls: it must stand between
        # their access lines, whatever waited in the access log's buffer.
        b.proc.send_signal(signal.SIGHUP)
        b.wait_log(re.escape(SIGHUP_LINE))
        calls(b.port, 150, "after", callers=8)
        wait_until(lambda: sum(map(is_access, b.log().splitlines())) >= 300, timeout=10, what="300 access lines")
        lines = [l for l in b.log().splitlines() if is_access(l) or SIGHUP_LINE in l]
        eq(len(lines), 301, "access lines and the SIGHUP line")
        eq([i for i, l in enumerate(lines) if SIGHUP_LINE in l], [150], "where the SIGHUP line is")
        ids = [upstream_id(l) for l in lines if is_access(l)]
        eq(len(set(ids)), 300, "one line per call")
        if fmt == "json":
            for l in lines:
                json.loads(l)  # whole lines, never two glued or one cut


@timeout(60)
def test_access_lines_arrive_within_a_second_when_idle_afterwards():
    m = start_mock("v2d", tokens=[TOKEN])
    b = start_bridge(m.url, "--token", TOKEN)
    with m, b:
        b.wait_ready()
        for i in range(3):
            check_status(b.post(FLOW_TC, tc("idle %d" % i)), 200, "call")
            t0 = time.monotonic()
            # nothing else happens now: the line must still come on its own
            b.wait_log(r" info: access .*upstream_id=\S+", timeout=1.5)
            wait_until(lambda: sum(map(is_access, b.log().splitlines())) == i + 1, timeout=1.5,
                       what="access line %d" % (i + 1))
            assert time.monotonic() - t0 < T(1.5), "access line %d took %.2f s" % (i + 1, time.monotonic() - t0)


@timeout(60)
def test_every_access_line_is_written_before_exit_on_sigterm():
    m = start_mock("v2d", tokens=[TOKEN])
    b = start_bridge(m.url, "--token", TOKEN, "--drain-timeout", "1")
    with m, b:
        b.wait_ready()
        calls(b.port, 200, "last", callers=8)
        # Calls still running at SIGTERM: some finish while tgbridge drains, the rest
        # are failed (shutting-down) on the way out, just before the loop stops.
        answers = []
        slow = [threading.Thread(target=lambda i=i: answers.append(
            b.post(FLOW_TC, tc("slow %d" % i, first_delay=0.3), timeout=10).status)) for i in range(6)]
        never = [threading.Thread(target=lambda i=i: answers.append(
            b.post(FLOW_TC, tc("never %d" % i, never=True), timeout=10).status)) for i in range(2)]
        for t in slow + never:
            t.start()
        wait_until(lambda: metric(b.port, "tgbridge_requests_in_flight") == 8, what="8 calls in flight")
        b.stop()  # SIGTERM, exit status 0
        for t in slow + never:
            t.join(T(10))
        eq(sorted(answers), [200] * 6 + [503] * 2, "the calls' answers")
        lines = b.log().splitlines()
        eq(sum(map(is_access, lines)), 208, "access lines after exit")
        eq(sum('error=shutting-down' in l for l in lines if is_access(l)), 2, "calls failed on the way out")
        assert lines and lines[-1].endswith("info: stopped"), lines[-3:]


def metric(port, name):
    r = request(port, "GET", "/metrics", timeout=5)
    check_status(r, 200, "/metrics")
    m = re.search(r"^%s (\d+)$" % re.escape(name), r.body.decode(), re.M)
    assert m, "no %s in /metrics" % name
    return int(m.group(1))


class UnreadBridge:
    """tgbridge with its stderr on a one-page pipe that nobody reads until read()."""

    def __init__(self, mock):
        self.port = closed_port()
        self.r, w = os.pipe()
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 4096)  # full after ~15 lines
        self.p = subprocess.Popen(WRAPPER + [BIN, "--gateway", mock.url, "--token", TOKEN,
                                             "--listen", "127.0.0.1:%d" % self.port, "--unix", "none"],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=w,
                                  env=bridge_env(None), cwd=ROOT)
        os.close(w)
        self.got = []
        self.reader = None

    def wait_ready(self):
        def ready():
            try:
                return request(self.port, "GET", "/readyz", timeout=2).status == 200
            except OSError:
                return False
        wait_until(ready, timeout=10, what="/readyz")

    def read(self):
        """From now on, a reader that keeps up."""
        def run():
            with os.fdopen(self.r, "rb") as f:
                for line in f:
                    self.got.append(line.decode("utf-8", "replace"))
        self.reader = threading.Thread(target=run, daemon=True)
        self.reader.start()

    def access_lines(self):
        return sum(map(is_access, self.got))

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        rc = self.p.wait(T(15))
        if self.reader:
            self.reader.join(T(5))
        return rc

    def close(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()
        if self.reader is None:
            os.close(self.r)


@timeout(120)
def test_a_stderr_pipe_nobody_reads_never_stalls_the_daemon():
    m = start_mock("v2d", tokens=[TOKEN])
    b = UnreadBridge(m)
    try:
        with m:
            b.wait_ready()
            # Far more than the pipe (4 KiB) and the queue (64 KiB) hold: ~260 B a line.
            n = 800
            calls(b.port, n, "unread", callers=4)
            check_status(request(b.port, "GET", "/healthz", timeout=5), 200, "/healthz with stderr full")
            dropped = metric(b.port, "tgbridge_log_lines_dropped_total")
            assert 0 < dropped < n, dropped
            # Waiting for room is watching the pipe, not polling it.
            before = cpu_ticks(b.p.pid)
            time.sleep(1.0)
            assert cpu_ticks(b.p.pid) - before <= 5, "tgbridge busy while its stderr is full"
            # The reader comes back: what waited goes out, with nothing else happening.
            b.read()
            wait_until(lambda: b.access_lines() == n - dropped, timeout=10,
                       what="the %d access lines not dropped" % (n - dropped))
            eq(metric(b.port, "tgbridge_log_lines_dropped_total"), dropped, "dropped after the reader came back")
            eq(b.stop(), 0, "exit status")
            eq(b.access_lines(), n - dropped, "access lines read")
            assert b.got[-1].rstrip().endswith("info: stopped"), b.got[-3:]
    finally:
        b.close()


@timeout(60)
def test_what_waits_for_a_slow_reader_is_written_before_exit():
    m = start_mock("v2d", tokens=[TOKEN])
    b = UnreadBridge(m)
    try:
        with m:
            b.wait_ready()
            n = 100  # more than the pipe holds, less than the queue
            calls(b.port, n, "slow reader", callers=4)
            eq(metric(b.port, "tgbridge_log_lines_dropped_total"), 0, "dropped")
            b.p.send_signal(signal.SIGTERM)
            time.sleep(0.3)  # tgbridge is on its way out; its stderr is still full
            b.read()
            eq(b.stop(), 0, "exit status")
            eq(b.access_lines(), n, "access lines read")
            assert b.got[-1].rstrip().endswith("info: stopped"), b.got[-3:]
    finally:
        b.close()
