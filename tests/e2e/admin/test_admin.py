"""The admin listener (--admin-listen): /healthz, /readyz, /metrics and /status on a
listener of its own, no data route there (404), no Host/Origin checks there, /status
and POST /shutdown only for loopback peers or the --admin-token-file token; refused
when equal to --listen; taken from systemd by the name "admin"."""

import base64
import contextlib
import http.client
import json
import os
import shutil
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


# What a peer in the namespace runs: one request, its status and body back as JSON.
_PEER_REQUEST = r"""
import base64, http.client, json, sys
host, port, method, path, headers = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], json.loads(sys.argv[5])
c = http.client.HTTPConnection(host, port, timeout=float(sys.argv[6]))
c.request(method, path, headers=headers)
r = c.getresponse()
print(json.dumps({"status": r.status, "body": base64.b64encode(r.read()).decode()}))
"""


def _ip(*args, ns=None):
    cmd = (["ip", "netns", "exec", ns] if ns else []) + ["ip"] + list(args)
    subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, capture_output=True, timeout=T(10))


@contextlib.contextmanager
def outside_peer():
    """A peer that is not on loopback: a network namespace of this test's own, joined
    to this one by a veth pair in the benchmarking range 198.18.0.0/15 (no packet
    leaves the machine).  Yields (the address tgbridge is reached at from there, a
    request function with areq's arguments); the namespace goes with the test."""
    if os.geteuid() != 0 or not shutil.which("ip"):
        skip("a network namespace needs root and ip(8) (Debian package iproute2)")
    tag = "%x" % (os.getpid() & 0xffff)
    ns, host_if, peer_if = "tgb-adm-" + tag, "tgbh" + tag, "tgbp" + tag
    net = "198.18.%d." % (os.getpid() % 250)
    try:
        _ip("netns", "add", ns)
        _ip("link", "add", host_if, "type", "veth", "peer", "name", peer_if)
        _ip("link", "set", peer_if, "netns", ns)
        _ip("addr", "add", net + "1/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("addr", "add", net + "2/30", "dev", peer_if, ns=ns)
        _ip("link", "set", peer_if, "up", ns=ns)
        _ip("link", "set", "lo", "up", ns=ns)
    except (OSError, subprocess.SubprocessError) as e:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        skip("cannot make a network namespace here: %s" % e)

    def peer_request(host, port, method, path, headers=None, timeout=10):
        out = subprocess.run(["ip", "netns", "exec", ns, "/usr/bin/python3", "-c", _PEER_REQUEST, host, str(port),
                              method, path, json.dumps(dict(headers or {})), str(T(timeout))],
                             stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=T(timeout) + 5)
        assert out.returncode == 0, "the peer's request failed: " + out.stderr[-2000:]
        r = json.loads(out.stdout)
        return r["status"], base64.b64decode(r["body"])

    try:
        yield net + "1", peer_request
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)


@timeout(30)
def test_admin_status_refused_to_a_non_loopback_peer_without_the_token():
    with outside_peer() as (addr, from_outside):
        m, b = admin_bridge(admin="0.0.0.0:0")
        with m, b:
            b.wait_ready()
            st, body = from_outside(addr, b.admin_port, "GET", "/status")
            eq(st, 403, "/status from %s, no --admin-token-file" % addr)
            eq(json.loads(body)["error"]["type"], "forbidden", "error type")
            eq(from_outside(addr, b.admin_port, "GET", "/status", {"Authorization": "Bearer " + ADMIN_TOKEN})[0], 403,
               "a Bearer when no admin token is configured")
            # the probes and the scraper need nothing
            for path in ("/healthz", "/readyz", "/metrics"):
                eq(from_outside(addr, b.admin_port, "GET", path)[0], 200, path + " from " + addr)
            eq(areq("127.0.0.1", b.admin_port, "GET", "/status")[0], 200, "/status from loopback")


@timeout(30)
def test_admin_status_with_the_admin_token_from_a_non_loopback_peer():
    with outside_peer() as (addr, from_outside):
        tf = tmpfile(ADMIN_TOKEN + "\n")
        m, b = admin_bridge("--admin-token-file", tf, "--log-level", "debug", admin="0.0.0.0:0")
        with m, b:
            b.wait_ready()
            p = b.admin_port
            eq(from_outside(addr, p, "GET", "/status")[0], 401, "/status without the token")
            eq(from_outside(addr, p, "GET", "/status", {"Authorization": "Bearer wrong-token-123"})[0], 401, "a wrong token")
            eq(from_outside(addr, p, "GET", "/status", {"X-Tgbridge-Token": ADMIN_TOKEN})[0], 401, "not a Bearer")
            st, body = from_outside(addr, p, "GET", "/status", {"Authorization": "Bearer " + ADMIN_TOKEN})
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
    with outside_peer() as (addr, from_outside):
        tf = tmpfile(ADMIN_TOKEN + "\n")
        m, b = admin_bridge("--admin-token-file", tf, admin="0.0.0.0:0")
        with m, b:
            b.wait_ready()
            eq(from_outside(addr, b.admin_port, "POST", "/shutdown")[0], 401, "POST /shutdown from %s, no token" % addr)
            eq(from_outside(addr, b.admin_port, "POST", "/shutdown", {"Authorization": "Bearer nope-nope-nope"})[0], 401,
               "a wrong token")
            time.sleep(0.3)
            assert b.running(), "tgbridge stopped on a refused /shutdown"
            check_status(b.get("/healthz"), 200, "still serving")
            eq(from_outside(addr, b.admin_port, "POST", "/shutdown", {"Authorization": "Bearer " + ADMIN_TOKEN})[0], 202,
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
