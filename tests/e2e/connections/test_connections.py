"""Connections and flow control: the gateway runs at most 16 requests per socket,
counted from the oldest unfinished one, so live long calls pin a socket's window.
tgbridge keeps one persistent connection and opens overflow connections while every
window is full and requests wait, closes them again when idle, and takes waiting
requests from its callers in turns.  The mock's own per-socket counters say what the
gateway saw."""

import json
import os
import signal
import socket
import tempfile
import threading
import time

from harness import (FLOW_TC, T, Background, check_status, eq, start_bridge,
                     start_mock, tc, timeout, tmpfile, wait_bridge_status, wait_until)
from middleman import Middleman

TOKEN = "tg_pool_token_3b7e"
FAST = ("--reconnect-min", "0.05", "--reconnect-max", "0.3")


def check_window(st):
    assert st["max_span_per_connection"] <= 16, \
        "a socket's span oldest-unfinished..newest reached %d" % st["max_span_per_connection"]
    eq(st["reader_stalls"], 0, "mock reader stalls")


def upstream(b):
    return b.get("/status").json()["upstream"]


@timeout(60)
def test_short_calls_pass_live_long_ones_through_a_second_connection():
    m = start_mock("v2d", tokens=[TOKEN])
    b = start_bridge(m.url, "--token", TOKEN, *FAST)
    with m, b:
        b.wait_ready()
        longs = [Background(b.post, FLOW_TC, tc("long%d" % i, first_delay=5), timeout=20) for i in range(3)]
        m.wait_stats(lambda x: x["requests_started"] >= 3, what="the long calls running")
        t0 = time.monotonic()
        shorts = [Background(b.post, FLOW_TC, tc("short%d" % i)) for i in range(40)]
        for i, s in enumerate(shorts):
            r = s.result(10)
            check_status(r, 200, "short call %d" % i)
            eq(r.json()["response"], "short%d" % i, "its reply")
        took = max(s.done_at for s in shorts) - t0
        assert took < T(2), "40 short calls took %.2fs behind 3 live long ones" % took
        assert not any(l.done() for l in longs), "a long call ended early"
        st = m.stats()
        # The persistent socket's window is pinned by the long calls; the burst of 40
        # fills one overflow window and may open a second before the first drains.
        assert 2 <= st["connections_total"] <= 3, st["connections_total"]
        check_window(st)
        roles = sorted(c["role"] for c in upstream(b)["connection_list"])
        eq(roles[-1], "persistent", "the persistent connection is listed")
        assert roles[:-1] and set(roles[:-1]) == {"overflow"}, roles
        for l in longs:
            check_status(l.result(20), 200, "long call")


@timeout(60)
def test_64_concurrent_one_second_calls_take_about_one_round():
    m = start_mock("v2d", tokens=[TOKEN])
    b = start_bridge(m.url, "--token", TOKEN, *FAST)
    with m, b:
        b.wait_ready()
        t0 = time.monotonic()
        calls = [Background(b.post, FLOW_TC, tc("w%d" % i, first_delay=1), timeout=30) for i in range(64)]
        for i, c in enumerate(calls):
            check_status(c.result(30), 200, "call %d" % i)
        took = max(c.done_at for c in calls) - t0
        # 64 calls, 15 per window: 5 connections, each opened when the others are
        # full; one at a time, so a few setups in series, then one round of 1 s.
        assert took < T(3), "64 one-second calls took %.2fs" % took
        st = m.stats()
        assert 5 <= st["connections_total"] <= 8, st["connections_total"]
        check_window(st)
        for c in st["connections"]:
            assert c["max_span"] <= 16, c


@timeout(60)
def test_max_connections_1_keeps_one_socket():
    m = start_mock("v2d", tokens=[TOKEN])
    b = start_bridge(m.url, "--token", TOKEN, "--max-connections", "1", *FAST)
    with m, b:
        b.wait_ready()
        longs = [Background(b.post, FLOW_TC, tc("long%d" % i, first_delay=2), timeout=20) for i in range(3)]
        m.wait_stats(lambda x: x["requests_started"] >= 3, what="the long calls running")
        shorts = [Background(b.post, FLOW_TC, tc("short%d" % i), timeout=20) for i in range(20)]
        # 3 long + 12 short fill the window of 15; the other 8 wait for the long ones
        wait_until(lambda: sum(s.done() for s in shorts) >= 12, what="12 short calls answered")
        time.sleep(0.3)
        eq(sum(s.done() for s in shorts), 12, "short calls answered while the long ones run")
        for s in shorts + longs:
            check_status(s.result(20), 200, "call")
        eq(m.stats()["connections_total"], 1, "connections the gateway saw")


@timeout(60)
def test_overflow_connections_close_when_idle_and_the_persistent_one_stays():
    m = start_mock("v2d", tokens=[TOKEN])
    b = start_bridge(m.url, "--token", TOKEN, "--connection-idle", "0.5", *FAST)
    with m, b:
        b.wait_ready()
        calls = [Background(b.post, FLOW_TC, tc("w%d" % i, first_delay=0.5), timeout=20) for i in range(40)]
        for c in calls:
            check_status(c.result(20), 200, "call")
        assert m.stats()["connections_total"] >= 3, "no overflow connection opened"
        wait_until(lambda: m.stats()["connections_open"] == 1, timeout=5, what="back to one connection")
        st = upstream(b)
        eq(st["connections"], 1, "/status connections")
        eq(st["connection_list"][0]["role"], "persistent", "the one left")
        eq(st["connection_list"][0]["id"], 1, "it is the first")
        check_status(b.post(FLOW_TC, tc("after")), 200, "a call afterwards")
        text = b.get("/metrics").body.decode()
        assert 'tgbridge_upstream_connections_closed_total{reason="idle"}' in text, text
        idle = [l for l in text.splitlines() if l.startswith('tgbridge_upstream_connections_closed_total{reason="idle"}')]
        assert float(idle[0].split()[1]) >= 2, idle
        assert b.log().count("closing overflow connection") >= 2


class RefuseAfterFirst(Middleman):
    """A TCP front of the mock that lets the first connection through and refuses
    (closes at once) every later one while `refusing` is set."""

    def __init__(self, target):
        self.target = target
        self.refusing = True
        self.refused = []
        super().__init__()

    def handle(self, c, n):
        if n > 1 and self.refusing:
            self.refused.append(time.monotonic())
            c.close()
            return
        threading.Thread(target=self.tunnel_to, args=(c, self.target), daemon=True).start()


@timeout(60)
def test_refused_overflow_leaves_the_persistent_one_serving_and_backs_off():
    m = start_mock("v2d", tokens=[TOKEN])
    with m:
        front = RefuseAfterFirst(m.port)
        b = start_bridge(front.url, "--token", TOKEN, "--reconnect-min", "0.2", "--reconnect-max", "1",
                         "--queue-timeout", "20")
        with b:
            b.wait_ready()
            longs = [Background(b.post, FLOW_TC, tc("long%d" % i, first_delay=3), timeout=20) for i in range(15)]
            m.wait_stats(lambda x: x["requests_started"] >= 15, what="the window full")
            waiting = Background(b.post, FLOW_TC, tc("waits"), timeout=20)
            wait_until(lambda: len(front.refused) >= 3, timeout=10, what="overflow attempts refused")
            gaps = [b_ - a for a, b_ in zip(front.refused, front.refused[1:])]
            assert min(gaps) >= 0.15, "overflow attempts in a tight loop: %r" % gaps
            check_status(b.readyz(), 200, "/readyz while overflow connections are refused")
            eq(b.readyz().json()["status"], "ready", "readiness")
            front.refusing = False
            check_status(waiting.result(20), 200, "the waiting call, once one could open")
            for l in longs:
                check_status(l.result(20), 200, "long call")


@timeout(60)
def test_killing_an_overflow_connection_fails_only_its_requests():
    m = start_mock("v2d", tokens=[TOKEN])
    b = start_bridge(m.url, "--token", TOKEN, *FAST)
    with m, b:
        b.wait_ready()
        first = [Background(b.post, FLOW_TC, tc("p%d" % i, first_delay=1), timeout=20) for i in range(15)]
        m.wait_stats(lambda x: x["requests_started"] >= 15, what="the persistent window full")
        second = [Background(b.post, FLOW_TC, tc("o%d" % i, drop=True, first_delay=0.5), timeout=20)
                  for i in range(1)]
        for s in second:
            r = s.result(20)
            check_status(r, 502, "the call on the dropped overflow connection")
            eq(r.json()["error"]["type"], "upstream-disconnected", "its error")
        for i, f in enumerate(first):
            r = f.result(20)
            check_status(r, 200, "call %d on the persistent connection" % i)
        check_status(b.readyz(), 200, "/readyz after losing an overflow connection")
        eq(upstream(b)["reconnects"], 0, "reconnects")


@timeout(60)
def test_losing_the_persistent_connection_promotes_an_overflow_one():
    m = start_mock("v2d", tokens=[TOKEN])
    b = start_bridge(m.url, "--token", TOKEN, *FAST, "--connection-idle", "30")
    with m, b:
        b.wait_ready()
        calls = [Background(b.post, FLOW_TC, tc("w%d" % i, first_delay=0.5), timeout=20) for i in range(20)]
        for c in calls:
            check_status(c.result(20), 200, "call")
        wait_until(lambda: upstream(b)["connections"] == 2, what="an overflow connection open")
        # the persistent connection's socket goes: the overflow one takes over
        before = {c["id"]: c["role"] for c in upstream(b)["connection_list"]}
        overflow_id = [i for i, role in before.items() if role == "overflow"][0]
        # an idle pool places a call on the persistent connection (most room, then oldest)
        r = b.post(FLOW_TC, tc("drop the persistent one", drop=True))
        check_status(r, 502, "the call that dropped its socket")
        st = upstream(b)
        eq(st["state"], "ready", "ready throughout")
        eq({c["id"]: c["role"] for c in st["connection_list"]}, {overflow_id: "persistent"},
           "the overflow connection is the persistent one now")
        check_status(b.readyz(), 200, "/readyz")
        check_status(b.post(FLOW_TC, tc("after")), 200, "the next call")
        m.wait_stats(lambda x: x["connections_open"] == 1, what="one connection left")
        eq(m.stats()["connections_total"], 2, "no new connection was needed")


@timeout(60)
def test_a_caller_with_a_backlog_does_not_hold_back_a_newcomer():
    """Fair queueing: one line client pipelines 1,000 requests; a REST caller that
    comes after it is answered within a few requests' time, not after the backlog."""
    sock = os.path.join(tempfile.mkdtemp(prefix="tgb-fair-"), "s.sock")
    m = start_mock("v2d", tokens=[TOKEN])
    b = start_bridge(m.url, "--token", TOKEN, "--unix", sock, "--max-connections", "1", "--queue-timeout", "60")
    with m, b:
        b.wait_ready()
        c = socket.socket(socket.AF_UNIX)
        c.connect(sock)
        lines = b"".join((json.dumps({"id": i, "service": "text-completion", "flow": "default",
                                      "request": tc("b%d" % i, first_delay=0.02)}) + "\n").encode()
                         for i in range(1000))
        c.sendall(lines)
        wait_bridge_status(b, lambda x: x["requests"]["queued"] > 500, what="a long backlog queued")
        answered_before = m.stats()["requests_completed"]
        r = b.post(FLOW_TC, tc("newcomer"))
        check_status(r, 200, "the newcomer")
        passed = m.stats()["requests_completed"] - answered_before
        assert passed < 40, "the newcomer waited for %d of the backlog's requests" % passed
        c.close()


def write_token(path, token):
    with open(path + ".new", "w") as f:
        f.write(token + "\n")
    os.replace(path + ".new", path)


def open_two_connections(m, b, n_long=18, delay=3):
    """15 held calls fill the persistent window; the rest go to an overflow one."""
    longs = [Background(b.post, FLOW_TC, tc("long%d" % i, first_delay=delay), timeout=30)
             for i in range(n_long)]
    m.wait_stats(lambda x: x["requests_started"] >= n_long, what="the held calls running")
    eq(m.stats()["connections_open"], 2, "connections open")
    return longs


@timeout(60)
def test_sighup_v2_reauthenticates_every_connection_in_band():
    t1, t2 = "tg_pool_rot_first_71", "tg_pool_rot_second_72"
    tf = tmpfile(t1 + "\n")
    m = start_mock("v2d", tokens=[t1, t2])
    b = start_bridge(m.url, "--token-file", tf, *FAST)
    with m, b:
        b.wait_ready()
        longs = open_two_connections(m, b)
        write_token(tf, t2)
        os.kill(b.pid, signal.SIGHUP)
        wait_until(lambda: all(c["last_auth_token"] == t2 for c in m.stats()["connections"] if c["open"]),
                   timeout=5, what="every open connection re-authenticated with the new token")
        st = m.stats()
        eq(st["connections_total"], 2, "connections (no new ones)")
        eq(st["auth_failed"], 0, "auth failures")
        for i, l in enumerate(longs):
            check_status(l.result(30), 200, "held call %d across the re-authentication" % i)
        check_status(b.post(FLOW_TC, tc("after")), 200, "a call afterwards")
        assert t1 not in b.log() and t2 not in b.log(), "a token in the log"


@timeout(60)
def test_sighup_v1_replaces_every_connection_without_losing_a_call():
    t1, t2 = "v1-pool-rot-first-81", "v1-pool-rot-second-82"
    tf = tmpfile(t1 + "\n")
    m = start_mock("v1b")            # V1 without a secret: records ?token= per socket
    b = start_bridge(m.url, "--token-file", tf, "--auth", "query", *FAST, "--drain-timeout", "10")
    with m, b:
        b.wait_ready()
        longs = open_two_connections(m, b, delay=6)
        write_token(tf, t2)
        os.kill(b.pid, signal.SIGHUP)
        # at once: the persistent one's replacement does not wait for the overflow
        # connection, which retires, to finish its calls
        m.wait_stats(lambda x: any(c["open"] and c["query_token"] == t2 for c in x["connections"]),
                     timeout=T(2), what="a connection with the new token")
        after = b.post(FLOW_TC, tc("after the reload"))
        check_status(after, 200, "a call after the reload")
        for i, l in enumerate(longs):
            check_status(l.result(30), 200, "held call %d on an old connection" % i)
        m.wait_stats(lambda x: all(c["query_token"] == t2 for c in x["connections"] if c["open"]),
                     timeout=10, what="every connection with the old token gone")
        newest = [c for c in m.stats()["connections"] if c["query_token"] == t2]
        eq(sum(c["requests_received"] for c in newest), 1, "the call after the reload went to a new one")


@timeout(60)
def test_sigterm_drains_every_connection():
    m = start_mock("v2d", tokens=[TOKEN])
    b = start_bridge(m.url, "--token", TOKEN, *FAST, "--drain-timeout", "10")
    with m, b:
        b.wait_ready()
        longs = open_two_connections(m, b, delay=1)
        b.proc.send_signal(signal.SIGTERM)
        for i, l in enumerate(longs):
            check_status(l.result(30), 200, "held call %d finishing during the drain" % i)
        eq(b.proc.wait(10), 0, "exit status")
        st = m.wait_stats(lambda x: x["connections_open"] == 0, what="every connection closed")
        eq(sorted(c["close_code"] for c in st["connections"]), [1001, 1001], "close codes")
