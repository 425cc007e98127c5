"""The admin listener (--admin-listen): /healthz, /readyz, /metrics and /status on a
listener of its own, no data route there (404), no Host/Origin checks there, /status
and POST /shutdown only for loopback peers or the --admin-token-file token; refused
when equal to --listen; taken from systemd by the name "admin"."""

import http.client
import json
import os
import signal
import socket
import subprocess
import time

from harness import (BIN, FLOW_TC, T, WRAPPER, bridge_env, check_status, eq,
                     request, run_bridge, skip, start_bridge, start_mock, tc,
                     timeout, tmpfile)

TOKEN = "tg_admin_token_5b2e"
ADMIN_TOKEN = "adm_4f1c9e0d77aa"
ADMIN_RE = r"admin listener on (\S+):(\d+)"


def admin_bridge(*args, admin="127.0.0.1:0", tokens=(TOKEN,)):
    m = start_mock(tokens=list(tokens))
    b = start_bridge(m.url, "--token", TOKEN, "--admin-listen", admin, *args)
    b.admin_port = int(b.wait_log(ADMIN_RE).group(2))
    return m, b


def areq(host, port, method, path, headers=None, timeout=10):
    """A request to host:port (not necessarily loopback)."""
    conn = http.client.HTTPConnection(host, port, timeout=T(timeout))
    try:
        conn.request(method, path, headers=dict(headers or {}))
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def outside_address():
    """An address of this machine that is not loopback (a peer connecting to it is
    not on loopback), or skip."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("192.0.2.77", 9))    # no packet is sent: the route picks the source
        addr = s.getsockname()[0]
    except OSError:
        addr = None
    finally:
        s.close()
    if not addr or addr.startswith("127."):
        skip("this machine has no non-loopback IPv4 address to connect from")
    return addr


@timeout(30)
def test_admin_listener_serves_the_four_routes_and_404s_data_routes():
    m, b = admin_bridge()
    with m, b:
        b.wait_ready()
        p = b.admin_port
        eq(areq("127.0.0.1", p, "GET", "/healthz")[0], 200, "/healthz")
        eq(areq("127.0.0.1", p, "GET", "/readyz")[0], 200, "/readyz")
        st, body = areq("127.0.0.1", p, "GET", "/metrics")
        eq(st, 200, "/metrics")
        assert b"tgbridge_" in body, body[:300]
        st, body = areq("127.0.0.1", p, "GET", "/status")
        eq(st, 200, "/status from loopback")
        assert "upstream" in json.loads(body), body[:300]
        # no data route: calls, pass-through, the upgrades, the unknown
        r = request(p, "POST", FLOW_TC, tc("x"))
        check_status(r, 404, "a flow service call on the admin listener")
        eq(request(p, "POST", "/api/v1/config", {"operation": "config"}).status, 404, "a kind")
        eq(areq("127.0.0.1", p, "GET", "/api/v1/iam")[0], 404, "a pass-through route")
        eq(areq("127.0.0.1", p, "GET", "/api/v1/socket",
                {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                 "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})[0], 404, "the WebSocket upgrade")
        eq(areq("127.0.0.1", p, "GET", "/nothing")[0], 404, "an unknown path")
        eq(m.stats()["requests_started"], 0, "requests that reached the gateway")
        # the health routes stay on the data listener, and the data routes work there
        check_status(b.get("/healthz"), 200, "/healthz on the data listener")
        check_status(b.get("/readyz"), 200, "/readyz on the data listener")
        check_status(b.post(FLOW_TC, tc("x")), 200, "a call on the data listener")
        # /shutdown is the admin listener's only
        check_status(request(b.port, "POST", "/shutdown"), 404, "/shutdown on the data listener")
        eq(areq("127.0.0.1", p, "GET", "/shutdown")[0], 405, "GET /shutdown")


@timeout(30)
def test_admin_listener_ignores_host_and_origin():
    m, b = admin_bridge()
    with m, b:
        b.wait_ready()
        hostile = {"Host": "10.1.2.3:9090", "Origin": "https://evil.example"}
        for path in ("/healthz", "/readyz", "/metrics", "/status"):
            eq(areq("127.0.0.1", b.admin_port, "GET", path, hostile)[0], 200, path + " with a foreign Host/Origin")
        # the data listener keeps its browser rules
        check_status(b.get("/status", headers=hostile), 403, "/status on the data listener, foreign Origin")


@timeout(30)
def test_admin_status_refused_to_a_non_loopback_peer_without_the_token():
    addr = outside_address()
    m, b = admin_bridge(admin="0.0.0.0:0")
    with m, b:
        b.wait_ready()
        st, body = areq(addr, b.admin_port, "GET", "/status")
        eq(st, 403, "/status from %s, no --admin-token-file" % addr)
        eq(json.loads(body)["error"]["type"], "forbidden", "error type")
        eq(areq(addr, b.admin_port, "GET", "/status", {"Authorization": "Bearer " + ADMIN_TOKEN})[0], 403,
           "a Bearer when no admin token is configured")
        # the probes and the scraper need nothing
        for path in ("/healthz", "/readyz", "/metrics"):
            eq(areq(addr, b.admin_port, "GET", path)[0], 200, path + " from " + addr)
        eq(areq("127.0.0.1", b.admin_port, "GET", "/status")[0], 200, "/status from loopback")


@timeout(30)
def test_admin_status_with_the_admin_token_from_a_non_loopback_peer():
    addr = outside_address()
    tf = tmpfile(ADMIN_TOKEN + "\n")
    m, b = admin_bridge("--admin-token-file", tf, "--log-level", "debug", admin="0.0.0.0:0")
    with m, b:
        b.wait_ready()
        p = b.admin_port
        eq(areq(addr, p, "GET", "/status")[0], 401, "/status without the token")
        eq(areq(addr, p, "GET", "/status", {"Authorization": "Bearer wrong-token-123"})[0], 401, "a wrong token")
        eq(areq(addr, p, "GET", "/status", {"X-Tgbridge-Token": ADMIN_TOKEN})[0], 401, "not a Bearer")
        st, body = areq(addr, p, "GET", "/status", {"Authorization": "Bearer " + ADMIN_TOKEN})
        eq(st, 200, "/status with the admin token")
        assert ADMIN_TOKEN.encode() not in body
        # the admin token is no client token on the data listener, nor needed there
        check_status(b.get("/status"), 200, "/status on the data listener (no --client-token-file)")
        r = run_bridge("--admin-token-file", tf, "--print-config", "--unix", "none")
        eq(r.returncode, 0, "--print-config")
        assert ADMIN_TOKEN not in r.stdout + r.stderr, "the admin token printed"
    assert ADMIN_TOKEN not in b.log(), "the admin token in the log"


def test_admin_listen_equal_to_listen_is_refused():
    for listen, admin in (("127.0.0.1:18089", "127.0.0.1:18089"), ("127.0.0.1:18089", "0.0.0.0:18089"),
                          ("0.0.0.0:18089", "127.0.0.1:18089")):
        r = run_bridge("--listen", listen, "--admin-listen", admin, "--unix", "none", "--check-config")
        eq(r.returncode, 2, "--listen %s --admin-listen %s" % (listen, admin))
        assert "--admin-listen must differ from --listen" in r.stderr, r.stderr
    r = run_bridge("--listen", "127.0.0.1:18089", "--unix", "none", "--check-config",
                   env={"TGBRIDGE_ADMIN_LISTEN": "127.0.0.1:18089"})
    eq(r.returncode, 2, "TGBRIDGE_ADMIN_LISTEN equal to --listen")
    cf = tmpfile("listen = 127.0.0.1:18089\nadmin-listen = 127.0.0.1:18089\n")
    r = run_bridge("--config", cf, "--unix", "none", "--check-config")
    eq(r.returncode, 2, "admin-listen equal to listen in the config file")
    # a different port is fine; and off is the default
    r = run_bridge("--listen", "127.0.0.1:18089", "--admin-listen", "127.0.0.1:18090", "--unix", "none",
                   "--print-config")
    eq(r.returncode, 0, r.stderr)
    assert "admin-listen = 127.0.0.1:18090" in r.stdout, r.stdout
    r = run_bridge("--unix", "none", "--print-config")
    assert "admin-listen = off" in r.stdout, r.stdout


def _activated(fds, names, *args):
    """tgbridge as systemd starts a socket-activated service (tests/e2e/systemd)."""
    def place():
        for i, fd in enumerate(fds):
            os.dup2(fd, 3 + i)
            os.set_inheritable(3 + i, True)
    env = bridge_env({"LISTEN_FDS": str(len(fds)), "LISTEN_FDNAMES": names})
    cmd = ["/bin/sh", "-c", 'LISTEN_PID=$$; export LISTEN_PID; exec "$@"', "sh"] + WRAPPER + [BIN] + list(args)
    return subprocess.Popen(cmd, env=env, preexec_fn=place, pass_fds=tuple(range(3, 3 + len(fds))),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _listening():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    return s, s.getsockname()[1]


@timeout(30)
def test_admin_socket_activation_by_name():
    m = start_mock(tokens=[TOKEN])
    rest, rport = _listening()
    admin, aport = _listening()
    with m:
        # the admin socket first: the name decides, not the order
        p = _activated([admin.fileno(), rest.fileno()], "admin:rest", "--gateway", m.url, "--token", TOKEN,
                       "--listen", "127.0.0.1:1", "--unix", "none")
        try:
            deadline = time.monotonic() + T(10)
            while True:
                try:
                    if areq("127.0.0.1", aport, "GET", "/healthz", timeout=2)[0] == 200:
                        break
                except OSError:
                    pass
                assert time.monotonic() < deadline, "the admin socket never answered"
                time.sleep(0.05)
            eq(areq("127.0.0.1", aport, "GET", "/status")[0], 200, "/status on the handed-over admin socket")
            eq(request(aport, "POST", FLOW_TC, tc("x")).status, 404, "a call on the admin socket")
            eq(request(rport, "POST", "/shutdown").status, 404, "/shutdown on the handed-over REST socket")
            eq(areq("127.0.0.1", rport, "GET", "/healthz")[0], 200, "/healthz on the REST socket")
            p.send_signal(signal.SIGTERM)
            eq(p.wait(T(10)), 0, "exit status")
            log = p.stderr.read()
            assert "admin listener on 127.0.0.1:%d (from systemd)" % aport in log, log
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
    rest.close()
    admin.close()


def _wait_exit(b, seconds):
    try:
        return b.proc.wait(T(seconds))
    except subprocess.TimeoutExpired:
        raise AssertionError("tgbridge still running %ss after POST /shutdown; log:\n%s"
                             % (seconds, b.log()[-2000:]))


@timeout(30)
def test_post_shutdown_drains_and_exits_0():
    m, b = admin_bridge("--drain-timeout", "5")
    with m, b:
        b.wait_ready()
        s = b.stream(FLOW_TC, tc("abcd", streaming=True, parts=4, delay=0.3))
        lines = s.lines()
        next(lines)
        st, body = areq("127.0.0.1", b.admin_port, "POST", "/shutdown")
        eq(st, 202, "POST /shutdown")
        eq(json.loads(body), {"status": "shutting down"}, "its answer")
        b.wait_log(r"POST /shutdown: no longer accepting", timeout=3)
        rest = [json.loads(x) for x in lines if x.strip()]
        assert rest and not any("error" in x for x in rest), "stream during the drain: %r" % rest
        eq(rest[-1].get("end_of_stream"), True, "the stream in flight completed")
        eq(_wait_exit(b, 5), 0, "exit status after POST /shutdown")
        for port in (b.port, b.admin_port):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
                raise AssertionError("port %d still accepts after the drain" % port)
            except ConnectionRefusedError:
                pass


@timeout(30)
def test_post_shutdown_refused_from_non_loopback_without_the_token():
    addr = outside_address()
    tf = tmpfile(ADMIN_TOKEN + "\n")
    m, b = admin_bridge("--admin-token-file", tf, admin="0.0.0.0:0")
    with m, b:
        b.wait_ready()
        eq(areq(addr, b.admin_port, "POST", "/shutdown")[0], 401, "POST /shutdown from %s, no token" % addr)
        eq(areq(addr, b.admin_port, "POST", "/shutdown", {"Authorization": "Bearer nope-nope-nope"})[0], 401,
           "a wrong token")
        time.sleep(0.3)
        assert b.running(), "tgbridge stopped on a refused /shutdown"
        check_status(b.get("/healthz"), 200, "still serving")
        eq(areq(addr, b.admin_port, "POST", "/shutdown", {"Authorization": "Bearer " + ADMIN_TOKEN})[0], 202,
           "POST /shutdown with the admin token")
        eq(_wait_exit(b, 5), 0, "exit status")


def test_admin_token_file_is_checked_at_start():
    short = tmpfile("adm1\n")
    r = run_bridge("--admin-token-file", short, "--unix", "none", "--check-config")
    eq(r.returncode, 2, "a 4-character admin token: " + r.stderr)
    assert "admin token" in r.stderr and "adm1" not in r.stderr, r.stderr
    r = run_bridge("--admin-token-file", short, "--allow-short-token", "--unix", "none", "--check-config")
    eq(r.returncode, 0, "--allow-short-token: " + r.stderr)
    r = run_bridge("--admin-token-file", "/nonexistent/admin-token", "--unix", "none", "--check-config")
    eq(r.returncode, 2, "a missing --admin-token-file")
    assert "--admin-token-file" in r.stderr, r.stderr
