"""Fault injection against the real binary (issue 5 item 9): the gateway
killed mid-stream and restarted on the same port, down at start, SIGSTOPped,
rejecting the token; a burst of 500; a never-ending request pinning the
window until the socket is rotated; token rotation (V2 in-band, V1 by
rotation); SIGTERM drain.  The contract is README "Failure semantics",
"Socket rotation", "Token rotation" and the options table."""

import http.client
import json
import os
import signal
import socket
import threading
import time

from harness import (FLOW_TC, SCALE, T, Background, Suspended, bridge_status,
                     check_status, closed_port, eq, log_count, own_error,
                     start_bridge, start_mock, tc, timeout, tmpfile,
                     wait_bridge_status, wait_until)

TOKEN = "tg_resilience_token_5a1f"

# Small durations everywhere (README options table: fractions accepted).
FAST = ("--reconnect-min", "0.1", "--reconnect-max", "0.5",
        "--ping-interval", "1", "--ping-timeout", "1")


# These tests are about one socket: its window, its loss, its rotation.  The pool of
# overflow connections has its own tests (test_connections.py).
ONE_SOCKET = ("--max-connections", "1")


def bridge_on(*args, era="v2d", tokens=(TOKEN,), port=0):
    m = start_mock(era, tokens=list(tokens), port=port)
    b = start_bridge(m.url, "--token", TOKEN, *FAST, *ONE_SOCKET, *args)
    return m, b


def ndjson_lines(s):
    """Every NDJSON object of a stream (until it ends)."""
    return [json.loads(line) for line in s.lines() if line.strip()]


def is_error_line(obj, etype):
    return (isinstance(obj, dict) and isinstance(obj.get("error"), dict)
            and obj["error"].get("type") == etype
            and isinstance(obj["error"].get("message"), str))


def write_token(path, token):
    """Replace the token file's content atomically (as a rotation would)."""
    tmp = path + ".new"
    with open(tmp, "w") as f:
        f.write(token + "\n")
    os.replace(tmp, path)


def auth_frames_with(m, token):
    """Auth frames carrying `token` among the mock's recent raw frames."""
    n = 0
    for raw in m.stats().get("last_envelopes") or []:
        try:
            obj = json.loads(raw)
        except ValueError:
            continue
        if isinstance(obj, dict) and obj.get("type") == "auth" \
                and obj.get("token") == token:
            n += 1
    return n


def check_window(st):
    assert st["max_window"] <= 16, "mock window reached %d" % st["max_window"]
    assert st["max_span_per_connection"] <= 16, \
        "span oldest-unfinished..newest reached %d" % \
        st["max_span_per_connection"]
    eq(st["reader_stalls"], 0, "mock reader stalls")


# ------------------------------------------------------------ gateway death

@timeout(40)
def test_gateway_killed_mid_stream_then_restarted_on_same_port():
    port = closed_port()
    m, b = bridge_on(port=port)
    with b:
        b.wait_ready()
        pid = b.pid
        s = b.stream(FLOW_TC, tc("abcdefgh", streaming=True, parts=8,
                                 delay=0.3))
        check_status(s, 200, "streaming call")
        lines = s.lines()
        first = json.loads(next(lines))
        assert "response" in first, "first part %r" % first
        unary = Background(b.post, FLOW_TC, tc("unary", first_delay=30))
        m.wait_stats(lambda st: st["requests_received"] >= 2,
                     what="both calls sent upstream")
        t_kill = time.monotonic()
        m.proc.kill()            # SIGKILL: sockets vanish, no close frame
        m.proc.wait()
        rest = [json.loads(x) for x in lines if x.strip()]
        t_end = time.monotonic()
        assert rest, "stream ended without any further line"
        assert is_error_line(rest[-1], "upstream-disconnected"), \
            "last line of the cut stream: %r (all: %r)" % (rest[-1], rest)
        assert not any("error" in x for x in rest[:-1]), \
            "error before the end: %r" % rest
        assert len(rest) < 8, "the stream was not cut: %r" % rest
        assert not s.unterminated, "final error line lacks its newline"
        assert t_end - t_kill < T(2), \
            "stream error came %.2fs after the kill" % (t_end - t_kill)
        r = unary.result(10)
        own_error(r, 502, "upstream-disconnected")
        assert unary.done_at - t_kill < T(2), \
            "502 came %.2fs after the kill" % (unary.done_at - t_kill)
        nr = b.wait_unready(5)
        eq(nr.status, 503, "/readyz with the gateway dead")

        m2 = start_mock(tokens=[TOKEN], port=port)   # same port
        with m2:
            b.wait_ready(10)
            r = b.post(FLOW_TC, tc("after the restart"))
            check_status(r, 200, "call after the gateway restarted")
            eq(r.json().get("response"), "after the restart", "reply")
            assert b.running() and b.pid == pid, "tgbridge was restarted"
            st = m2.stats()
            # nothing from before the crash was replayed to the new gateway
            eq(st["requests_received"], 1, "requests the new gateway got")
            eq(st["auth_ok"], 1, "auth on the new gateway")
            assert bridge_status(b)["upstream"]["reconnects"] >= 1, \
                "/status reconnects not counted"


@timeout(30)
def test_drop_fails_sent_calls_and_queued_ones_go_out_after_reconnect():
    m, b = bridge_on("--max-inflight", "2", "--queue-timeout", "10")
    with m, b:
        b.wait_ready()
        sent = [Background(b.post, FLOW_TC, tc("sent%d" % i, first_delay=30))
                for i in range(2)]
        m.wait_stats(lambda x: x["requests_started"] >= 2,
                     what="2 calls in the window")
        queued = [Background(b.post, FLOW_TC, tc("queued%d" % i))
                  for i in range(3)]
        wait_bridge_status(b, lambda x: x["requests"]["queued"] == 3,
                           what="3 calls queued behind them")
        m.drop()
        for x in sent:
            own_error(x.result(5), 502, "upstream-disconnected")
        for i, x in enumerate(queued):
            r = x.result(10)
            check_status(r, 200, "queued call %d after the reconnect" % i)
            eq(r.json().get("response"), "queued%d" % i, "reply %d" % i)
        st = m.stats()
        eq(st["connections_total"], 2, "connections")
        eq(st["auth_ok"], 2, "authentications (redone on the new socket)")
        conns = {c["id"]: c for c in st["connections"]}
        eq(conns[1]["requests_received"], 2, "calls on the dropped socket")
        eq(conns[2]["requests_received"], 3,
           "calls on the new socket (the failed ones are not replayed)")


@timeout(30)
def test_gateway_down_at_start_requests_queue_until_it_comes_up():
    port = closed_port()
    b = start_bridge("http://127.0.0.1:%d" % port, "--token", TOKEN, *FAST, *ONE_SOCKET,
                     "--queue-timeout", "6")
    with b:
        r = b.readyz()
        check_status(r, 503, "/readyz before the gateway exists")
        unary = Background(b.post, FLOW_TC, tc("queued unary"))
        streamed = Background(
            lambda: ndjson_lines(b.stream(FLOW_TC, tc("qs", streaming=True,
                                                      parts=2))))
        wait_bridge_status(b, lambda st: st["requests"]["queued"] >= 2,
                           what="both calls queued")
        b.wait_log(r"upstream not ready: cannot connect")
        assert not unary.done() and not streamed.done(), \
            "a call was answered while no gateway existed"
        t_up = time.monotonic()
        m = start_mock(tokens=[TOKEN], port=port)
        with m:
            r = unary.result(10)
            check_status(r, 200, "queued call once the gateway came up")
            eq(r.json().get("response"), "queued unary", "reply")
            parts = streamed.result(10)
            assert parts and not any("error" in p for p in parts), \
                "queued stream: %r" % parts
            eq("".join(p.get("response", "") for p in parts), "qs",
               "queued stream text")
            # reconnect backoff is at most --reconnect-max (0.5 s) + 30 %
            waited = max(unary.done_at, streamed.done_at) - t_up
            assert waited < T(3), "answered %.2fs after the gateway came up" \
                % waited
            eq(m.stats()["requests_received"], 2, "requests sent once each")


@timeout(30)
def test_gateway_down_past_queue_timeout_503_with_retry_after():
    port = closed_port()
    b = start_bridge("http://127.0.0.1:%d" % port, "--token", TOKEN, *FAST, *ONE_SOCKET,
                     "--queue-timeout", "1")
    with b:
        streamed = Background(b.stream, FLOW_TC,
                              tc("s", streaming=True))
        r = b.post(FLOW_TC, tc("nobody home"))
        body = own_error(r, 503, "gateway-unavailable")
        assert 0.9 <= r.elapsed < T(2.5), \
            "503 after %.2fs, --queue-timeout 1" % r.elapsed
        ra = r.headers.get("Retry-After")
        assert ra is not None, "503 gateway-unavailable without Retry-After"
        assert ra.isdigit() and 1 <= int(ra) <= 60, "Retry-After %r" % ra
        assert "connect" in body["error"]["message"], \
            "message does not say why: %r" % body["error"]["message"]
        s = streamed.result(10)
        check_status(s, 503, "streaming call past --queue-timeout")
        assert s.headers.get("Retry-After"), "streaming 503 lacks Retry-After"
        err = json.loads(s.body())
        eq(err.get("error", {}).get("type"), "gateway-unavailable",
           "streaming 503 type")


@timeout(30)
def test_gateway_down_logged_once_not_per_retry():
    port = closed_port()
    b = start_bridge("http://127.0.0.1:%d" % port, "--token", TOKEN,
                     "--reconnect-min", "0.05", "--reconnect-max", "0.2")
    with b:
        b.wait_log(r"upstream not ready")
        time.sleep(1.5)         # ~8 more attempts at --reconnect-max 0.2
        n = log_count(b, r"\b(warn|error)\b")
        assert n == 1, "%d warning/error lines for one state change " \
            "(README: logged once, not once per attempt):\n%s" % (
                n, b.log()[-2500:])
        # ... and the next state change is logged again
        m = start_mock(tokens=[TOKEN], port=port)
        with m:
            b.wait_ready(5)
            b.wait_log(r"upstream ready")


# ------------------------------------------------------- dead-peer detection

@timeout(40)
def test_sigstopped_gateway_detected_within_ping_bound_then_recovers():
    m, b = bridge_on()
    with m, b:
        b.wait_ready()
        check_status(b.post(FLOW_TC, tc("before")), 200, "call before")
        time.sleep(0.2)
        with Suspended(m) as sus:
            t_stop = sus.stopped_at
            inflight = Background(b.post, FLOW_TC, tc("to a frozen gateway"))
            nr = b.wait_unready(8)
            t_detect = time.monotonic() - t_stop
            print("readiness dropped %.2fs after SIGSTOP" % t_detect)
            # --ping-interval 1 + --ping-timeout 1, plus a second of slack
            # for lws's whole-second validity timer
            assert t_detect <= T(3.5), \
                "readiness dropped %.2fs after SIGSTOP (bound 1+1 s)" % \
                t_detect
            reason = nr.json().get("reason", "")
            assert "stopped answering" in reason, \
                "/readyz reason %r" % reason
            b.wait_log(r"stopped answering", timeout=2)
            r = inflight.result(5)
            own_error(r, 502, "upstream-disconnected")
            assert inflight.done_at - t_stop <= T(4), \
                "the call on the dead socket failed only after %.2fs" % \
                (inflight.done_at - t_stop)
            sus.resume()
            b.wait_ready(12)
        r = b.post(FLOW_TC, tc("after SIGCONT"))
        check_status(r, 200, "call after SIGCONT")
        eq(r.json().get("response"), "after SIGCONT", "reply")
        st = m.stats()
        assert st["connections_total"] >= 2, "no new connection"
        # The call lost with the frozen socket is never replayed: the new
        # connection(s) carried only the call made after SIGCONT.  (The
        # frozen mock may still read the lost frame from its socket buffer
        # when it resumes; that is the original send, not a replay.)
        eq(sum(c["requests_received"] for c in st["connections"]
               if c["id"] != 1), 1, "requests on the new connection(s)")


# ------------------------------------------------------------- bad tokens

@timeout(30)
def test_rejected_token_clear_errors_backoff_and_recovery_from_file():
    tf = tmpfile("tg_not_the_right_one_77\n")
    m = start_mock(tokens=[TOKEN])
    b = start_bridge(m.url, "--token-file", tf, *ONE_SOCKET, "--reconnect-min", "0.05",
                     "--reconnect-max", "1", "--queue-timeout", "1",
                     "--ping-interval", "1", "--ping-timeout", "1")
    with m, b:
        m.wait_stats(lambda st: st["auth_failed"] >= 1, what="first auth")
        t_first = time.monotonic()
        r = wait_until(lambda: (lambda x: x if "rejected" in
                                x.json().get("reason", "") else None)(
            b.readyz()), timeout=3, what="/readyz naming the rejection")
        check_status(r, 503, "/readyz with a rejected token")
        r = b.post(FLOW_TC, tc("x"))
        body = own_error(r, 503, "gateway-unavailable")
        assert "rejected the token" in body["error"]["message"], \
            "503 message %r" % body["error"]["message"]
        assert r.headers.get("Retry-After"), "503 without Retry-After"
        # Backoff: a rejected token waits --reconnect-max (1 s) each time.
        # Exponential from 0.05 s would already be at ~5 attempts; a tight
        # loop at hundreds.
        time.sleep(max(0, t_first + T(2.6) - time.monotonic()))
        st = m.stats()
        extra = st["auth_failed"] - 1
        # A rate: under a slow wrapper the window (T) is longer, so is the bound.
        assert extra <= 3 * SCALE, "%d more rejected attempts within 2.6 s " \
            "(--reconnect-max 1)" % extra
        assert extra >= 1, "no retry at all within 2.6 s"
        eq(st["auth_ok"], 0, "auth_ok")
        # each state change is logged once, not once per attempt
        n = log_count(b, r"upstream not ready")
        assert n == 1, "'upstream not ready' logged %d times:\n%s" % (
            n, b.log()[-2000:])
        # the file is re-read before every reconnect: fixing it is enough
        write_token(tf, TOKEN)
        b.wait_ready(5)
        check_status(b.post(FLOW_TC, tc("fixed")), 200, "after the fix")
        assert "tg_not_the_right_one_77" not in b.log(), "token in the log"


@timeout(30)
def test_v1_wrong_secret_401_backoff_no_tight_loop():
    m = start_mock("v1b", secret="v1-right-secret")
    b = start_bridge(m.url, "--token", "v1-wrong-secret", *ONE_SOCKET, "--auth", "query",
                     "--reconnect-min", "0.05", "--reconnect-max", "1",
                     "--queue-timeout", "1")
    with m, b:
        m.wait_stats(lambda st: st["http_401"] >= 1, what="first upgrade")
        t_first = time.monotonic()
        r = wait_until(lambda: (lambda x: x if "401" in
                                x.json().get("reason", "") else None)(
            b.readyz()), timeout=3, what="/readyz naming the HTTP 401")
        check_status(r, 503, "/readyz with a wrong V1 secret")
        time.sleep(max(0, t_first + T(2.6) - time.monotonic()))
        extra = m.stats()["http_401"] - 1
        assert 1 <= extra <= 3 * SCALE, "%d more refused upgrades within 2.6 s " \
            "(--reconnect-max 1)" % extra
        own_error(b.post(FLOW_TC, tc("x")), 503, "gateway-unavailable")


# ------------------------------------------------------------- flow control

@timeout(60)
def test_burst_of_500_requests_all_answered_none_lost():
    m, b = bridge_on()
    with m, b:
        b.wait_ready()
        n = 500
        out = {}
        barrier = threading.Barrier(n)

        def call(i):
            try:
                barrier.wait(T(20))
                out[i] = b.post(FLOW_TC, tc("burst-%d" % i), timeout=60)
            except BaseException as e:  # noqa: B902
                out[i] = e
        threads = [threading.Thread(target=call, args=(i,), daemon=True)
                   for i in range(n)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + T(45)
        for t in threads:
            t.join(max(0, deadline - time.monotonic()))
        bad = []
        for i in range(n):
            r = out.get(i)
            if isinstance(r, BaseException) or r is None:
                bad.append((i, r))
            elif r.status != 200 or \
                    r.json().get("response") != "burst-%d" % i:
                bad.append((i, r))
        assert not bad, "%d of %d calls not answered correctly; first: %r" \
            % (len(bad), n, bad[0])
        st = m.stats()
        eq(st["requests_received"], n, "requests the gateway received")
        eq(st["requests_completed"], n, "requests the gateway completed")
        eq(st["connections_total"], 1, "connections")
        check_window(st)
        sb = bridge_status(b)["requests"]
        eq(sb["queued"], 0, "/status queued after the burst")
        eq(sb["in_flight"], 0, "/status in flight after the burst")


@timeout(40)
def test_never_ending_request_then_40_rotates_the_socket():
    m, b = bridge_on("--max-inflight", "16", "--request-timeout", "1",
                     "--drain-timeout", "1", "--queue-timeout", "10")
    with m, b:
        b.wait_ready()
        never = Background(b.post, FLOW_TC, tc("never", never=True))
        m.wait_stats(lambda st: st["requests_started"] >= 1,
                     what="the never-ending call started")
        t_sent = time.monotonic()
        calls = [Background(b.post, FLOW_TC, tc("n-%d" % i))
                 for i in range(40)]
        # the window holds the never-ending call + 15: those answer at once
        wait_until(lambda: sum(c.done() for c in calls) >= 15, timeout=0.75,
                   what="15 calls answered at once")
        # just before the never-ending call's --request-timeout fires
        time.sleep(max(0, t_sent + 0.85 - time.monotonic()))
        done = [c for c in calls if c.done()]
        eq(len(done), 15, "calls answered before --request-timeout fired")
        assert not never.done(), "the never-ending call was answered early"
        for c in done:
            check_status(c.result(1), 200, "early call")
        r = never.result(5)
        own_error(r, 504, "request-timeout")
        t504 = never.done_at - never.started_at
        assert 0.9 <= t504 <= T(1.6), "504 after %.2fs (timeout 1 s)" % \
            t504
        for i, c in enumerate(calls):
            r = c.result(10)
            check_status(r, 200, "call %d" % i)
            eq(r.json().get("response"), "n-%d" % i, "reply %d" % i)
        last = max(c.done_at for c in calls)
        assert last - never.done_at < T(2), \
            "the rest took %.2fs after the 504" % (last - never.done_at)
        st = m.stats()
        eq(st["connections_total"], 2, "mock connections (one rotation)")
        check_window(st)
        conns = {c["id"]: c for c in st["connections"]}
        eq(sorted(conns), [1, 2], "connection ids")
        eq(conns[1]["requests_received"], 16, "requests on the first socket")
        eq(conns[2]["requests_received"], 25, "requests on the new socket")
        s = bridge_status(b)["upstream"]
        eq(s["rotations"], 1, "/status rotations")
        eq(s["reconnects"], 0, "/status reconnects (a rotation is not one)")
        # the old socket goes once nothing live is left on it
        m.wait_stats(lambda x: x["connections_open"] == 1, timeout=3,
                     what="the rotated-out connection closed")
        wait_bridge_status(b, lambda x: not x["upstream"]
                           ["draining_old_connection"], timeout=3,
                           what="draining_old_connection false")


@timeout(40)
def test_callers_hanging_up_on_a_pinned_window_trigger_rotation():
    m, b = bridge_on("--max-inflight", "16", "--request-timeout", "60",
                     "--queue-timeout", "10", "--drain-timeout", "1")
    with m, b:
        b.wait_ready()
        streams = []
        for i in range(16):
            s = b.stream(FLOW_TC, tc("h%d" % i, streaming=True, never=True,
                                     after=1))
            check_status(s, 200, "pinning stream %d" % i)
            next(s.lines())
            streams.append(s)
        waiting = [Background(b.post, FLOW_TC, tc("w%d" % i))
                   for i in range(5)]
        wait_bridge_status(b, lambda x: x["requests"]["queued"] == 5,
                           what="5 calls waiting behind 16 live ones")
        time.sleep(0.3)
        assert not any(w.done() for w in waiting), \
            "a call passed 16 live ones in a window of 16"
        eq(bridge_status(b)["upstream"]["rotations"], 0,
           "rotations while every call in the window is live")
        t_hup = time.monotonic()
        for s in streams:
            s.hangup()
        for i, w in enumerate(waiting):
            r = w.result(10)
            check_status(r, 200, "waiting call %d" % i)
            eq(r.json().get("response"), "w%d" % i, "reply %d" % i)
        took = max(w.done_at for w in waiting) - t_hup
        # README: a departed caller's state is freed within a second, then
        # the socket is rotated
        assert took < T(2.5), "answered %.2fs after the hang-ups" % took
        st = m.stats()
        eq(st["connections_total"], 2, "connections (one rotation)")
        check_window(st)
        eq(bridge_status(b)["upstream"]["rotations"], 1, "/status rotations")
        m.wait_stats(lambda x: x["connections_open"] == 1, timeout=3,
                     what="the abandoned socket closed")


@timeout(40)
def test_connection_and_its_replacement_both_lost_mid_rotation_reconnects():
    """The current socket and the one replacing it (still authenticating)
    go down together: nothing is left serving and nothing on its way, so
    tgbridge must reconnect from scratch (it used to stay down for good)."""
    m = start_mock("v2d", tokens=[TOKEN], extra=["--auth-delay", "1"])
    b = start_bridge(m.url, "--token", TOKEN, *FAST, *ONE_SOCKET, "--max-inflight", "1",
                     "--request-timeout", "60", "--queue-timeout", "20")
    with m, b:
        b.wait_ready()
        s = b.stream(FLOW_TC, tc("pin", streaming=True, never=True, after=1))
        check_status(s, 200, "pinning stream")
        next(s.lines())
        waiting = Background(b.post, FLOW_TC, tc("after-both-lost"))
        wait_bridge_status(b, lambda x: x["requests"]["queued"] == 1,
                           what="a call waiting behind the pinning one")
        s.hangup()  # the window is now pinned by nobody: rotation
        m.wait_stats(lambda x: x["connections_open"] == 2, timeout=3,
                     what="the replacement connected (authenticating)")
        m.drop()    # both sockets go at once
        wait_bridge_status(b, lambda x: x["upstream"]["reconnects"] >= 1
                           and x["upstream"]["state"] == "ready", timeout=10,
                           what="connected again after losing both sockets")
        r = waiting.result(15)
        check_status(r, 200, "the queued call, after the reconnect")
        eq(r.json().get("response"), "after-both-lost", "reply")
        st = bridge_status(b)["upstream"]
        # The two closes may be seen far enough apart for the failed replacement to
        # be retried once before the current connection's loss is noticed.
        assert st["rotations"] in (1, 2), st


@timeout(30)
def test_live_calls_holding_the_window_503_after_queue_timeout_no_rotation():
    m, b = bridge_on("--max-inflight", "4", "--queue-timeout", "1",
                     "--request-timeout", "30", "--drain-timeout", "0.5")
    with m, b:
        b.wait_ready()
        live = [Background(b.post, FLOW_TC, tc("live%d" % i, never=True))
                for i in range(4)]
        m.wait_stats(lambda x: x["requests_started"] >= 4,
                     what="4 live calls in the window")
        r = b.post(FLOW_TC, tc("no room"))
        body = own_error(r, 503, "gateway-unavailable")
        assert 0.9 <= r.elapsed < T(2.5), "503 after %.2fs" % r.elapsed
        assert r.headers.get("Retry-After"), "503 without Retry-After"
        assert "window" in body["error"]["message"], \
            "message %r does not say the window was full" % \
            body["error"]["message"]
        eq(bridge_status(b)["upstream"]["rotations"], 0,
           "rotations (the calls in the window are live)")
        eq(m.stats()["connections_total"], 1, "connections")
        eq(m.stats()["requests_received"], 4, "requests sent upstream")
        assert not any(x.done() for x in live), "a live call was answered"


@timeout(30)
def test_request_timeout_counts_from_send_not_from_queue():
    m, b = bridge_on("--max-inflight", "1", "--request-timeout", "1",
                     "--queue-timeout", "5")
    with m, b:
        b.wait_ready()
        first = Background(b.post, FLOW_TC, tc("first", first_delay=0.7))
        m.wait_stats(lambda x: x["requests_started"] >= 1,
                     what="the first call running")
        second = Background(b.post, FLOW_TC, tc("second", first_delay=0.6))
        check_status(first.result(10), 200, "first call")
        r = second.result(10)
        total = second.done_at - second.started_at
        check_status(r, 200, "second call: %.2fs in all, of which ~0.6 s "
                     "after it was sent (--request-timeout 1)" % total)
        eq(r.json().get("response"), "second", "reply")
        assert total > 1.0, "the second call took only %.2fs: it did " \
            "not wait for the window" % total


@timeout(30)
def test_max_queue_overflow_503_queue_full():
    m, b = bridge_on("--max-inflight", "1", "--max-queue", "2",
                     "--queue-timeout", "10", "--request-timeout", "30",
                     "--drain-timeout", "0.5")
    with m, b:
        b.wait_ready()
        live = Background(b.post, FLOW_TC, tc("live", never=True))
        m.wait_stats(lambda x: x["requests_started"] >= 1,
                     what="the live call running")
        queued = [Background(b.post, FLOW_TC, tc("q%d" % i, never=True))
                  for i in range(2)]
        wait_bridge_status(b, lambda x: x["requests"]["queued"] == 2,
                           what="2 calls queued")
        r = b.post(FLOW_TC, tc("one too many"))
        own_error(r, 503, "queue-full")
        assert r.elapsed < T(0.5), "queue-full took %.2fs" % r.elapsed
        assert r.headers.get("Retry-After"), "queue-full without Retry-After"
        assert not live.done() and not any(q.done() for q in queued), \
            "a waiting call was answered"
        eq(m.stats()["requests_received"], 1, "requests sent upstream")


@timeout(60)
def test_envelope_at_gateway_frame_limit_refused_locally_socket_survives():
    limit = 52428800         # the gateway's max_msg_size (50 MiB)
    m, b = bridge_on()
    with m, b:
        b.wait_ready()
        r = b.post(FLOW_TC, tc("probe", echo=True))
        check_status(r, 200, "probe")
        rid = r.json()["envelope"]["id"]
        head, _, n = rid.rpartition("-")
        # the next two ids have the same length as this one's successors
        nid = "%s-%d" % (head, int(n) + 1)
        assert len("%s-%d" % (head, int(n) + 2)) == len(nid)
        path = "/api/v1/flow/default/service/graph-embeddings"
        prefix = '{"id":%s,"service":"graph-embeddings","flow":"default",' \
                 '"request":' % json.dumps(nid)

        def body_for(envelope_len):
            fixed = len(prefix) + len('{"limit":1,"pad":""}') + 1
            return '{"limit":1,"pad":"%s"}' % ("x" * (envelope_len - fixed))
        # one byte under the limit: forwarded, and the gateway keeps the socket
        under = body_for(limit - 1)
        r = b.post(path, under, timeout=60)
        check_status(r, 200, "envelope of limit-1 bytes")
        assert "entities" in r.json(), r.body[:200]
        del under
        # exactly the limit: the gateway would close the socket (1009)
        at = body_for(limit)
        r = b.post(path, at, timeout=60)
        del at
        own_error(r, 413, "payload-too-large")
        st = m.stats()
        eq(st["oversize_closes"], 0, "sockets the gateway closed with 1009")
        eq(st["connections_total"], 1, "connections")
        eq(st["requests_received"], 2, "requests the gateway received")
        check_status(b.post(FLOW_TC, tc("after")), 200, "call afterwards")


# ----------------------------------------------------------- token rotation

@timeout(30)
def test_sighup_v2_reauthenticates_in_band_on_the_same_connection():
    t1, t2 = "tg_rotation_first_1111", "tg_rotation_second_2222"
    tf = tmpfile(t1 + "\n")
    m = start_mock(tokens=[t1, t2])
    b = start_bridge(m.url, "--token-file", tf, *FAST, *ONE_SOCKET)
    with m, b:
        b.wait_ready()
        eq(m.stats()["auth_ok"], 1, "auth_ok after start")
        s = b.stream(FLOW_TC, tc("abcdef", streaming=True, parts=6,
                                 delay=0.2))
        lines = s.lines()
        next(lines)
        write_token(tf, t2)
        os.kill(b.pid, signal.SIGHUP)
        st = m.wait_stats(lambda x: x["auth_ok"] >= 2, timeout=3,
                          what="in-band re-authentication")
        eq(st["connections_total"], 1, "connections (same socket)")
        eq(st["connections_open"], 1, "open connections")
        eq(st["auth_failed"], 0, "auth_failed")
        eq(auth_frames_with(m, t2), 1, "auth frames with the new token")
        b.wait_log(r"re-authenticated in-band", timeout=3)
        rest = [json.loads(x) for x in lines if x.strip()]
        assert rest and not any("error" in x for x in rest), \
            "stream across the re-auth: %r" % rest
        eq(rest[-1].get("end_of_stream"), True, "stream completed")
        eq(bridge_status(b)["upstream"]["reauth"], "ok", "/status reauth")
        r = b.post(FLOW_TC, tc("after reauth"))
        check_status(r, 200, "call after the re-auth")
        eq(m.stats()["connections_total"], 1, "still one connection")
        assert t2 not in b.log() and t1 not in b.log(), "token in the log"


@timeout(30)
def test_sighup_v2_rejected_new_token_keeps_the_connection():
    t1, bad = "tg_rotation_good_3333", "tg_rotation_unknown_4444"
    tf = tmpfile(t1 + "\n")
    m = start_mock(tokens=[t1])
    b = start_bridge(m.url, "--token-file", tf, *FAST, *ONE_SOCKET)
    with m, b:
        b.wait_ready()
        write_token(tf, bad)
        os.kill(b.pid, signal.SIGHUP)
        m.wait_stats(lambda x: x["auth_failed"] >= 1, timeout=3,
                     what="the new token's auth frame")
        b.wait_log(r"rejected the new token", timeout=3)
        reauth = wait_bridge_status(
            b, lambda x: x["upstream"]["reauth"] != "", timeout=3,
            what="/status upstream.reauth")["upstream"]["reauth"]
        assert reauth.startswith("rejected"), "/status reauth %r" % reauth
        check_status(b.readyz(), 200, "/readyz after a rejected re-auth")
        r = b.post(FLOW_TC, tc("still working"))
        check_status(r, 200, "call after a rejected re-auth")
        eq(r.json().get("response"), "still working", "reply")
        st = m.stats()
        eq(st["connections_total"], 1, "connections")
        eq(st["auth_ok"], 1, "auth_ok")
        assert bad not in b.log(), "rejected token in the log"


@timeout(30)
def test_sighup_v1_query_auth_rotates_socket_make_before_break():
    t1, t2 = "v1-rotation-first-5555", "v1-rotation-second-6666"
    tf = tmpfile(t1 + "\n")
    m = start_mock("v1b")        # V1 without a secret: records ?token=
    b = start_bridge(m.url, "--token-file", tf, "--auth", "query", *FAST, *ONE_SOCKET,
                     "--drain-timeout", "5")
    with m, b:
        b.wait_ready()
        st = m.stats()
        eq(st["connections_total"], 1, "connections after start")
        eq(st["last_query_token"], t1, "query token of the first socket")
        s = b.stream(FLOW_TC, tc("abcdef", streaming=True, parts=6,
                                 delay=0.25))
        lines = s.lines()
        next(lines)
        write_token(tf, t2)
        os.kill(b.pid, signal.SIGHUP)
        st = m.wait_stats(lambda x: x["connections_total"] >= 2, timeout=3,
                          what="a new connection after SIGHUP")
        eq(st["last_query_token"], t2, "query token of the new socket")
        eq(st["query_tokens_seen"], 2, "upgrades with ?token=")
        # the call in flight on the old socket finishes there
        rest = [json.loads(x) for x in lines if x.strip()]
        assert rest and not any("error" in x for x in rest), \
            "stream across the rotation: %r" % rest
        eq(rest[-1].get("end_of_stream"), True, "stream completed")
        r = b.post(FLOW_TC, tc("on the new socket"))
        check_status(r, 200, "call after the rotation")
        st = m.wait_stats(lambda x: x["connections_open"] == 1, timeout=3,
                          what="the old socket closed")
        eq(st["connections_total"], 2, "connections")
        conns = {c["id"]: c for c in st["connections"]}
        eq(conns[1]["requests_received"], 1, "requests on the old socket")
        eq(conns[2]["requests_received"], 1, "requests on the new socket")
        eq(bridge_status(b)["upstream"]["rotations"], 1, "/status rotations")


@timeout(30)
def test_sighup_v1_during_a_drain_is_not_lost():
    t1, t2, t3 = ("v1-twice-first-1212", "v1-twice-second-3434",
                  "v1-twice-third-5656")
    tf = tmpfile(t1 + "\n")
    m = start_mock("v1b")
    b = start_bridge(m.url, "--token-file", tf, "--auth", "query", *FAST, *ONE_SOCKET,
                     "--drain-timeout", "3")
    with m, b:
        b.wait_ready()
        s = b.stream(FLOW_TC, tc("abcdef", streaming=True, parts=6,
                                 delay=0.25))
        lines = s.lines()
        next(lines)
        write_token(tf, t2)
        os.kill(b.pid, signal.SIGHUP)
        m.wait_stats(lambda x: x["connections_total"] >= 2, timeout=3,
                     what="the rotation for the second token")
        # a second rotation of the token while connection #1 still drains
        write_token(tf, t3)
        os.kill(b.pid, signal.SIGHUP)
        rest = [json.loads(x) for x in lines if x.strip()]
        assert rest and not any("error" in x for x in rest), \
            "stream across the rotations: %r" % rest
        # the drain is over by now (the stream ended): the third token must
        # be in use on a new connection soon after, not only at the next
        # reconnect whenever that may happen
        st = m.wait_stats(lambda x: x["last_query_token"] == t3, timeout=3,
                          what="a connection with the third token "
                               "(last_query_token)")
        check_status(b.post(FLOW_TC, tc("x")), 200, "call afterwards")
        assert st["connections_total"] >= 3, "connections %d" % \
            st["connections_total"]


@timeout(30)
def test_sighup_v1_rejected_new_token_keeps_the_old_socket_serving():
    # make-before-break: if the new connection cannot be made (the new token
    # is refused), the working one must not be broken
    m = start_mock("v1b", secret="v1-good-secret")
    tf = tmpfile("v1-good-secret\n")
    b = start_bridge(m.url, "--token-file", tf, "--auth", "query", *FAST, *ONE_SOCKET,
                     "--drain-timeout", "1", "--queue-timeout", "2")
    with m, b:
        b.wait_ready()
        write_token(tf, "v1-typo-in-the-new-secret")
        os.kill(b.pid, signal.SIGHUP)
        m.wait_stats(lambda x: x["http_401"] >= 1, timeout=3,
                     what="the new token's upgrade refused")
        r = b.post(FLOW_TC, tc("still served"))
        check_status(r, 200, "call after a refused token rotation")
        time.sleep(1.5)         # past --drain-timeout
        r = b.post(FLOW_TC, tc("still served later"))
        check_status(r, 200, "call after --drain-timeout with the new "
                     "token still refused")
        eq(m.stats()["connections_open"], 1, "open connections")


@timeout(30)
def test_rotation_fails_live_request_on_old_socket_after_drain_timeout():
    t1, t2 = "v1-drain-first-7777", "v1-drain-second-8888"
    tf = tmpfile(t1 + "\n")
    m = start_mock("v1b")
    b = start_bridge(m.url, "--token-file", tf, "--auth", "query", *FAST, *ONE_SOCKET,
                     "--drain-timeout", "1")
    with m, b:
        b.wait_ready()
        s = b.stream(FLOW_TC, tc("x", streaming=True, never=True, after=1))
        lines = s.lines()
        next(lines)
        write_token(tf, t2)
        t_hup = time.monotonic()
        os.kill(b.pid, signal.SIGHUP)
        m.wait_stats(lambda x: x["connections_total"] >= 2, timeout=3,
                     what="the new connection")
        # new calls go to the new socket at once
        r = b.post(FLOW_TC, tc("meanwhile"))
        check_status(r, 200, "call during the drain")
        rest = [json.loads(x) for x in lines if x.strip()]
        t_fail = time.monotonic() - t_hup
        assert rest and is_error_line(rest[-1], "upstream-disconnected"), \
            "live call on the rotated-out socket ended with %r" % rest
        assert 0.8 <= t_fail <= T(2.5), \
            "it failed %.2fs after SIGHUP (--drain-timeout 1)" % t_fail
        st = m.wait_stats(lambda x: x["connections_open"] == 1, timeout=3,
                          what="the old socket closed")
        conns = {c["id"]: c for c in st["connections"]}
        eq(conns[1]["open"], False, "old connection open")
        eq(conns[2]["requests_received"], 1, "calls on the new socket")
        check_status(b.readyz(), 200, "/readyz after the rotation")


# ----------------------------------------------------------------- shutdown

def _wait_exit(b, timeout):
    try:
        b.proc.wait(T(timeout))
    except Exception:
        raise AssertionError("tgbridge still running %ss after SIGTERM; "
                             "log:\n%s" % (timeout, b.log()[-2000:]))
    return b.proc.returncode


@timeout(30)
def test_sigterm_lets_inflight_stream_finish_and_exits_0():
    m, b = bridge_on("--drain-timeout", "5")
    with m, b:
        b.wait_ready()
        s = b.stream(FLOW_TC, tc("abcd", streaming=True, parts=4, delay=0.3))
        lines = s.lines()
        next(lines)
        t_term = time.monotonic()
        b.proc.send_signal(signal.SIGTERM)
        b.wait_log(r"no longer accepting", timeout=3)
        try:
            socket.create_connection(("127.0.0.1", b.port), timeout=2).close()
            raise AssertionError("the REST port still accepts connections "
                                 "after SIGTERM")
        except ConnectionRefusedError:
            pass
        rest = [json.loads(x) for x in lines if x.strip()]
        assert rest and not any("error" in x for x in rest), \
            "stream during the drain: %r" % rest
        eq(rest[-1].get("end_of_stream"), True, "stream completed")
        rc = _wait_exit(b, 4)
        eq(rc, 0, "exit status after SIGTERM")
        took = time.monotonic() - t_term
        assert took < T(3), "exit %.2fs after SIGTERM; the stream ended " \
            "after ~1 s and --drain-timeout is 5" % took
        # the gateway socket was closed with a close frame (1001 going away)
        st = m.wait_stats(lambda x: x["connections_open"] == 0, timeout=2,
                          what="gateway socket closed")
        eq(st["connections"][0]["close_code"], 1001, "close code")


@timeout(30)
def test_sigterm_fails_requests_still_running_after_drain_timeout():
    m, b = bridge_on("--drain-timeout", "1")
    with m, b:
        b.wait_ready()
        s = b.stream(FLOW_TC, tc("x", streaming=True, never=True, after=1))
        lines = s.lines()
        next(lines)
        unary = Background(b.post, FLOW_TC, tc("u", never=True))
        m.wait_stats(lambda x: x["requests_started"] >= 2,
                     what="both calls running")
        t_term = time.monotonic()
        b.proc.send_signal(signal.SIGTERM)
        rest = [json.loads(x) for x in lines if x.strip()]
        t_end = time.monotonic() - t_term
        assert rest and is_error_line(rest[-1], "shutting-down"), \
            "stream past --drain-timeout ended with %r" % rest
        assert 0.8 <= t_end <= T(2.5), \
            "stream failed %.2fs after SIGTERM (--drain-timeout 1)" % t_end
        r = unary.result(5)
        own_error(r, 503, "shutting-down")
        rc = _wait_exit(b, 4)
        eq(rc, 0, "exit status after SIGTERM")


@timeout(30)
def test_sigterm_with_gateway_down_answers_queued_calls_and_exits_0():
    port = closed_port()
    b = start_bridge("http://127.0.0.1:%d" % port, "--token", TOKEN, *FAST, *ONE_SOCKET,
                     "--drain-timeout", "1", "--queue-timeout", "10")
    with b:
        unary = Background(b.post, FLOW_TC, tc("queued at shutdown"))
        streamed = Background(
            lambda: (lambda s: (s.status, s.body()))(
                b.stream(FLOW_TC, tc("s", streaming=True))))
        wait_bridge_status(b, lambda x: x["requests"]["queued"] == 2,
                           what="2 calls queued, no gateway")
        t_term = time.monotonic()
        b.proc.send_signal(signal.SIGTERM)
        # README: the rest are failed with shutting-down -- an answer, not a
        # connection closed without a response
        try:
            r = unary.result(5)
        except (OSError, http.client.HTTPException) as e:
            raise AssertionError("queued call got no answer at shutdown "
                                 "(%s: %s)" % (type(e).__name__, e))
        own_error(r, 503, "shutting-down")
        try:
            status, body = streamed.result(5)
        except (OSError, http.client.HTTPException) as e:
            raise AssertionError("queued streaming call got no answer at "
                                 "shutdown (%s: %s)" % (type(e).__name__, e))
        eq(status, 503, "queued streaming call at shutdown")
        eq(json.loads(body).get("error", {}).get("type"), "shutting-down",
           "queued streaming call at shutdown: error type")
        assert unary.done_at - t_term < T(2.5), "answered %.2fs after " \
            "SIGTERM (--drain-timeout 1)" % (unary.done_at - t_term)
        eq(_wait_exit(b, 4), 0, "exit status")
