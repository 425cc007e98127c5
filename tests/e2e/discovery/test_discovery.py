"""The gateway found by default (issue 18, item 5): with no gateway given,
tgbridge tries http://localhost:8888, then http://localhost:8088, and keeps the
first that completes the WebSocket upgrade.

These tests bind the real candidate ports, 8888 and 8088, with mock gateways:
the defaults are what is under test, so there is no hook to move them.  Tests
here hold one file lock for their whole run (tests run in two xdist workers;
no other test binds these ports: mocks take a port the kernel picks, far above
them), and each skips, saying why, when something else holds a port."""

import asyncio
import fcntl
import time
import os
import socket

import pytest
import websockets

from harness import (FLOW_TC, T, ConnectProxy, check_status, eq, own_error, run_bridge,
                     start_bridge, start_mock, timeout, wait_until)

TOKEN = "tg_discover_token_4e1"
P_NEW, P_OLD = 8888, 8088
U_NEW, U_OLD = "http://localhost:8888", "http://localhost:8088"
# quick retries: a round of both candidates every 0.2-0.5 s
FAST = ("--reconnect-min", "0.2", "--reconnect-max", "0.5",
        "--connect-timeout", "2")
LOCK = "/tmp/tgbridge-test-discovery.lock"


def _port_free(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


@pytest.fixture(autouse=True)
def candidate_ports():
    """One discovery test at a time on this machine, and both ports free."""
    fd = os.open(LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        taken = [p for p in (P_NEW, P_OLD) if not _port_free(p)]
        if taken:
            pytest.skip("port %s is taken by something else: the gateway "
                        "discovery tests need 8888 and 8088 free" % taken)
        yield
    finally:
        os.close(fd)


def mock_on(port, tokens=(TOKEN,)):
    return start_mock("v2d", tokens=list(tokens), port=port)


def bridge(*args, **kw):
    return start_bridge(None, "--token", TOKEN, *FAST, *args, **kw)


def status_gateway(b):
    up = b.get("/status").json()["upstream"]
    return up["gateway"], up["gateway_discovered"]


def export_frames(b, query=""):
    """An export socket through tgbridge: its close code and reason, and the
    frames it got before."""
    async def go():
        url = "ws://127.0.0.1:%d/api/v1/flow/default/export/triples%s" % (b.port, query)
        async with websockets.connect(url) as ws:
            frames = []
            try:
                while True:
                    frames.append(await ws.recv())
            except websockets.ConnectionClosed as e:
                return e.rcvd.code, e.rcvd.reason, frames
    return asyncio.run(asyncio.wait_for(go(), T(30)))


def test_print_config_shows_the_discovery():
    r = run_bridge("--unix", "none", "--print-config")
    eq(r.returncode, 0, "exit status: %s" % r.stderr)
    assert ("# gateway: default; reload: needs a restart\n"
            "# gateway = (discover: http://localhost:8888, "
            "http://localhost:8088)\n") in r.stdout, r.stdout
    r = run_bridge("--unix", "none", "--gateway", "http://gw.example:9000",
                   "--print-config")
    assert "\ngateway = http://gw.example:9000\n" in r.stdout, r.stdout
    assert "discover" not in r.stdout, "an explicit gateway discovers nothing"


@timeout(60)
def test_only_8088_up_is_chosen_and_logged():
    with mock_on(P_OLD) as m, bridge() as b:
        b.wait_ready()
        b.wait_log(r"listening rest=\S+ unix=none gateway=\(discover: "
                   r"http://localhost:8888, http://localhost:8088\) ")
        b.wait_log(r"gateway found: http://localhost:8088 \(no --gateway "
                   r"given; the first of http://localhost:8888 and "
                   r"http://localhost:8088 to accept the WebSocket upgrade\)")
        eq(status_gateway(b), (U_OLD, {"candidates": [U_NEW, U_OLD],
                                       "chosen": U_OLD}), "/status")
        check_status(b.post(FLOW_TC, {"system": "s", "prompt": "hi"}), 200,
                     "a call through the gateway found")
        assert m.stats()["connections_total"] >= 1


@timeout(60)
def test_both_up_8888_is_chosen():
    with mock_on(P_NEW) as new, mock_on(P_OLD) as old, bridge() as b:
        b.wait_ready()
        b.wait_log(r"gateway found: http://localhost:8888 ")
        eq(status_gateway(b)[0], U_NEW, "/status gateway")
        check_status(b.post(FLOW_TC, {"system": "s", "prompt": "hi"}), 200,
                     "a call")
        assert new.stats()["connections_total"] >= 1
        eq(old.stats()["connections_total"], 0, "8088 never upgraded")


@timeout(60)
def test_8888_refusing_the_token_is_chosen_and_reported_not_skipped():
    with mock_on(P_NEW, tokens=("someone-elses-token",)) as new, \
            mock_on(P_OLD) as old, bridge() as b:
        b.wait_log(r"gateway found: http://localhost:8888 ")
        new.wait_stats(lambda s: s["auth_failed"] >= 1, what="auth refused")
        r = b.readyz()
        eq(r.status, 503, "not ready")
        assert "rejected the token" in r.body.decode(), r.body
        b.wait_log(r"upstream not ready: the gateway rejected the token")
        eq(status_gateway(b), (U_NEW, {"candidates": [U_NEW, U_OLD],
                                       "chosen": U_NEW}), "/status")
        eq(old.stats()["connections_total"], 0, "8088 never tried")


@timeout(60)
def test_none_up_not_ready_then_the_one_that_comes_up_is_chosen():
    with bridge() as b:
        wait_until(lambda: "no gateway found" in b.readyz().body.decode(),
                   timeout=10, what="the reason names both candidates")
        r = b.readyz()
        eq(r.status, 503, "not ready")
        body = r.body.decode()
        assert U_NEW in body and U_OLD in body, body
        eq(status_gateway(b)[1]["chosen"], None, "/status: none chosen")
        # pass-through and bulk sockets before a choice: the usual unreachable error
        own_error(b.get("/api/v1/i18n/packs/es"), 502, "gateway-unreachable")
        code, reason, _ = export_frames(b)
        eq(code, 1013, "a bulk socket's close before a choice")
        assert "no gateway found" in reason, reason
        with mock_on(P_OLD) as m:
            b.wait_ready(timeout=15)
            b.wait_log(r"gateway found: http://localhost:8088 ")
            r = b.get("/api/v1/i18n/packs/es")
            check_status(r, 200, "pass-through to the gateway found")
            eq(r.json()["mock.i18n.hello"], "Hola", "language pack")
            code, _, frames = export_frames(b, "?mock-frames=3&mock-close_code=4002")
            eq((code, len(frames)), (4002, 3), "a bulk socket to the gateway found")
            assert m.stats()["connections_total"] >= 1


@timeout(90)
def test_chosen_lost_for_reconnect_max_both_tried_again():
    new = mock_on(P_NEW)
    with bridge() as b:
        b.wait_ready()
        b.wait_log(r"gateway found: http://localhost:8888 ")
        new.stop()
        b.wait_unready()
        with mock_on(P_OLD) as old:
            b.wait_log(r"the gateway found at http://localhost:8888 has "
                       r"failed for --reconnect-max \(0.5 s\): trying "
                       r"http://localhost:8888 and http://localhost:8088 "
                       r"again", timeout=15)
            b.wait_ready(timeout=15)
            b.wait_log(r"gateway found: http://localhost:8088 ")
            eq(status_gateway(b)[0], U_OLD, "/status after re-discovery")
            r = b.get("/api/v1/i18n/packs/es")
            check_status(r, 200, "pass-through follows the new choice")
            assert old.stats()["connections_total"] >= 1


@timeout(60)
def test_an_explicit_gateway_is_never_second_guessed():
    with mock_on(P_OLD) as old:
        with start_bridge(U_NEW, "--token", TOKEN, *FAST) as b:
            wait_until(lambda: "cannot connect" in b.readyz().body.decode(),
                       timeout=10, what="8888 tried and failing")
            time.sleep(2)  # four times --reconnect-max
            eq(b.readyz().status, 503, "still not ready")
            eq(old.stats()["connections_total"], 0, "8088 never tried")
            eq(status_gateway(b), (U_NEW, None), "/status")
            assert "gateway found" not in b.log()


@timeout(60)
def test_an_explicit_proxy_carries_both_candidates_the_environments_none():
    with mock_on(P_OLD) as m, ConnectProxy() as p:
        with bridge("--proxy", p.url) as b:
            b.wait_ready()
            b.wait_log(r"gateway found: http://localhost:8088 ")
            targets = [c[0].split()[1] for c in p.connects()]
            assert targets[:2] == ["localhost:8888", "localhost:8088"], targets
            check_status(b.get("/api/v1/i18n/packs/es"), 200,
                         "pass-through through the proxy")
        n = len(p.connects())
        env = {"http_proxy": p.url, "HTTP_PROXY": None, "no_proxy": None,
               "NO_PROXY": None}
        with bridge(env=env) as b:
            b.wait_ready()
            b.wait_log(r"gateway found: http://localhost:8088 ")
            eq(len(p.connects()), n, "the environment's proxy is not used "
                                     "for loopback")
        assert m.stats()["connections_total"] >= 2
