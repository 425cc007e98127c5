"""systemd notification (sd_notify(3) protocol, spoken without libsystemd):
READY=1 once tgbridge serves, STATUS= following the gateway connection,
STOPPING=1 on SIGTERM, WATCHDOG=1 keep-alives when systemd asks for them.
A datagram socket in a temporary directory plays systemd."""

import os
import signal
import socket
import tempfile

from fakesystemd import FakeSystemd
from harness import (T, check_status, eq, start_bridge, start_mock, timeout)

TOKEN = "tg_systemd_token_41c9"


def fields(msg):
    return dict(line.split("=", 1) for line in msg.split("\n") if "=" in line)


@timeout(60)
def test_ready_status_and_stopping():
    sd = FakeSystemd()
    m = start_mock("v2d", tokens=[TOKEN])
    b = start_bridge(m.url, "--token", TOKEN, "--reconnect-min", "0.05",
                     env=sd.env())
    with m, b:
        ready = sd.wait_for(lambda x: "READY=1" in x, T(10), "READY=1")
        st = fields(ready).get("STATUS", "")
        assert st.startswith("listening on 127.0.0.1:%d" % b.port), ready
        # READY means serving: the daemon answers at once
        check_status(b.get("/healthz"), 200, "/healthz after READY=1")
        sd.wait_for(lambda x: fields(x).get("STATUS", "").startswith(
            "gateway connected (era v2c/v2d)"), T(10), "gateway connected")
        # the gateway going away shows in systemctl status
        m.stop()
        sd.wait_for(lambda x: fields(x).get("STATUS", "").startswith(
            "gateway not ready: "), T(10), "gateway not ready")
        b.proc.send_signal(signal.SIGTERM)
        stopping = sd.wait_for(lambda x: "STOPPING=1" in x, T(10),
                               "STOPPING=1")
        assert fields(stopping).get("STATUS", "").startswith(
            "SIGTERM: draining"), stopping
        b.stop()  # exit status 0
        assert not any("WATCHDOG=1" in x for x in sd.messages), \
            "watchdog pings nobody asked for: %r" % sd.messages
    sd.close()


@timeout(60)
def test_watchdog_keepalive_only_when_asked_for_this_process():
    sd = FakeSystemd()
    m = start_mock("v2d", tokens=[TOKEN])
    b = start_bridge(m.url, "--token", TOKEN,
                     env=sd.env(WATCHDOG_USEC=str(int(T(0.2) * 1e6))))
    with m, b:
        sd.wait_for(lambda x: "READY=1" in x, T(10), "READY=1")
        got = sd.drain(T(1.0))
        n = sum("WATCHDOG=1" in x for x in got)
        # every half interval (0.1 s): about 10 in a second
        assert n >= 4, "only %d WATCHDOG=1 in %.1fs: %r" % (n, T(1.0), got)
    # WATCHDOG_PID naming another process: the request is not ours
    sd2 = FakeSystemd()
    b2 = start_bridge(m.url, "--token", TOKEN,
                      env=sd2.env(WATCHDOG_USEC="100000", WATCHDOG_PID="1"))
    with m, b2:
        sd2.wait_for(lambda x: "READY=1" in x, T(10), "READY=1")
        got = sd2.drain(T(0.5))
        eq(sum("WATCHDOG=1" in x for x in got), 0, "WATCHDOG=1 for pid 1")
    sd.close()
    sd2.close()


@timeout(30)
def test_abstract_notify_socket():
    sd = FakeSystemd(abstract=True)
    m = start_mock("v2d", tokens=[TOKEN])
    b = start_bridge(m.url, "--token", TOKEN, env=sd.env())
    with m, b:
        sd.wait_for(lambda x: "READY=1" in x, T(10), "READY=1 (@abstract)")
    sd.close()


# ---------------------------------------------------------------- socket activation

def _activated(fds, names, *args, env=None):
    """tgbridge started as systemd starts a socket-activated service: the listening
    sockets at descriptors 3, 4, ..., LISTEN_FDS, LISTEN_FDNAMES, and LISTEN_PID equal
    to its own pid (set by the shell it is exec'ed from)."""
    import subprocess
    from harness import BIN, WRAPPER, bridge_env

    def place():
        for i, fd in enumerate(fds):
            os.dup2(fd, 3 + i)
            os.set_inheritable(3 + i, True)
    env = bridge_env(dict(env or {}, LISTEN_FDS=str(len(fds)), LISTEN_FDNAMES=names))
    cmd = ["/bin/sh", "-c", 'LISTEN_PID=$$; export LISTEN_PID; exec "$@"', "sh"] + WRAPPER + [BIN] + list(args)
    return subprocess.Popen(cmd, env=env, preexec_fn=place, pass_fds=tuple(range(3, 3 + len(fds))),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _http(sock, path):
    sock.sendall(("GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n" % path).encode())
    data = b""
    while True:
        d = sock.recv(65536)
        if not d:
            return data
        data += d


@timeout(30)
def test_socket_activation_takes_over_both_sockets_and_leaves_them_to_systemd():
    m = start_mock(tokens=[TOKEN])
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(16)
    port = tcp.getsockname()[1]
    path = os.path.join(tempfile.mkdtemp(prefix="tgb-act-"), "act.sock")
    us = socket.socket(socket.AF_UNIX)
    us.bind(path)
    us.listen(16)
    # a caller that connects before tgbridge runs is not lost
    early = socket.create_connection(("127.0.0.1", port))
    early.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    with m:
        p = _activated([tcp.fileno(), us.fileno()], "rest:unix", "--gateway", m.url, "--token", TOKEN,
                       "--listen", "127.0.0.1:1", "--unix", "/nonexistent/dir/never.sock")
        try:
            data = b""
            early.settimeout(T(10))
            while True:
                d = early.recv(65536)
                if not d:
                    break
                data += d
            assert data.startswith(b"HTTP/1.1 200"), data[:200]
            u = socket.socket(socket.AF_UNIX)
            u.connect(path)
            assert _http(u, "/healthz").startswith(b"HTTP/1.1 200"), "the Unix socket systemd handed over"
            u.close()
            p.send_signal(signal.SIGTERM)
            eq(p.wait(T(10)), 0, "exit status")
            log = p.stderr.read()
            assert "socket activation: took over the REST listener and the Unix socket" in log, log
            assert os.path.exists(path), "tgbridge removed the socket systemd owns"
            # systemd still holds the listening socket: the next instance gets callers
            c = socket.create_connection(("127.0.0.1", port))
            c.close()
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
    early.close()


@timeout(30)
def test_socket_activation_refuses_a_socket_it_cannot_place():
    a = socket.socket()
    a.bind(("127.0.0.1", 0))
    a.listen(4)
    p = _activated([a.fileno()], "metrics", "--gateway", "http://127.0.0.1:1", "--unix", "none")
    eq(p.wait(T(10)), 1, "exit status")
    assert "named 'metrics'" in p.stderr.read()
    # not meant for it (another pid): ignored, its own listener is bound
    import subprocess
    from harness import BIN, WRAPPER, bridge_env
    q = subprocess.Popen(WRAPPER + [BIN, "--gateway", "http://127.0.0.1:1", "--unix", "none", "--listen",
                                    "127.0.0.1:0"],
                         env=bridge_env({"LISTEN_PID": "1", "LISTEN_FDS": "1"}), stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        line = q.stderr.readline()
        while line and "listening rest=" not in line:
            line = q.stderr.readline()
        assert "listening rest=127.0.0.1:" in line, line
    finally:
        q.send_signal(signal.SIGTERM)
        eq(q.wait(T(10)), 0, "exit status")
    a.close()


@timeout(180)
def test_ten_restarts_under_load_refuse_no_caller():
    """What `systemctl restart` does to a socket-activated tgbridge: SIGTERM, the old
    process drains its calls and exits, the new one starts on the same listening
    sockets.  Callers that arrive in between wait in the kernel's listen backlog, so
    under steady load none is refused and every call is answered."""
    import json
    import threading
    import time
    from harness import FLOW_TC, post, tc
    m = start_mock(tokens=[TOKEN])
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(128)
    port = tcp.getsockname()[1]
    path = os.path.join(tempfile.mkdtemp(prefix="tgb-restart-"), "act.sock")
    us = socket.socket(socket.AF_UNIX)
    us.bind(path)
    us.listen(128)
    stop = threading.Event()
    lock = threading.Lock()
    calls, failures = [0], []

    def unix_post(body):
        u = socket.socket(socket.AF_UNIX)
        u.settimeout(T(20))
        try:
            u.connect(path)
            data = json.dumps(tc(body, first_delay=0.02))
            u.sendall(("POST %s HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                       "Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (FLOW_TC, len(data), data)).encode())
            got = b""
            while True:
                d = u.recv(65536)
                if not d:
                    break
                got += d
        finally:
            u.close()
        head, _, rest = got.partition(b"\r\n\r\n")
        return head.startswith(b"HTTP/1.1 200") and json.loads(rest).get("response") == body, got[:200]

    def caller(n):
        i = 0
        while not stop.is_set():
            i += 1
            body = "c%d-%d" % (n, i)
            try:
                if n == 0:
                    ok, got = unix_post(body)
                    why = None if ok else "Unix socket: %r" % got
                else:
                    r = post(port, FLOW_TC, tc(body, first_delay=0.02), timeout=20)
                    ok = r.status == 200 and r.json().get("response") == body
                    why = None if ok else "HTTP %d %r" % (r.status, r.body[:200])
            except (OSError, ValueError) as e:  # refused, reset, timed out, cut short
                why = repr(e)
            with lock:
                calls[0] += 1
                if why:
                    failures.append(why)

    procs, logs = [], []

    sds = []

    def start():
        # as systemd's Type=notify: the next restart waits for READY=1 (the load does not)
        sds.append(FakeSystemd())
        p = _activated([tcp.fileno(), us.fileno()], "rest:unix", "--gateway", m.url, "--token", TOKEN,
                       "--access-log", "off", "--drain-timeout", "10", env=sds[-1].env())
        # its log, read as it comes, so a full pipe never stalls it
        out = []
        threading.Thread(target=lambda: out.extend(p.stderr), daemon=True).start()
        procs.append(p)
        logs.append(out)
        return p

    with m:
        p = start()
        threads = [threading.Thread(target=caller, args=(n,)) for n in range(5)]
        try:
            for t in threads:
                t.start()
            for _ in range(10):
                sds[-1].wait_for(lambda x: "READY=1" in x, T(10), "READY=1")
                time.sleep(0.3)
                before = calls[0]
                p.send_signal(signal.SIGTERM)
                eq(p.wait(T(15)), 0, "exit status after the drain")
                p = start()
                assert before > 0, "no load"
            time.sleep(0.3)
        finally:
            stop.set()
            for t in threads:
                t.join(T(30))
            p.send_signal(signal.SIGTERM)
            for q in procs:
                if q.poll() is None:
                    try:
                        q.wait(T(15))
                    except Exception:
                        q.kill()
    for sd in sds:
        sd.close()
    print("%d calls, %d failed, across %d processes" % (calls[0], len(failures), len(procs)))
    eq(len(procs), 11, "processes")
    bad = [l for out in logs for l in out if "Sanitizer" in l or "runtime error" in l]
    eq(bad[:5], [], "sanitizer reports")
    assert calls[0] >= 100, "only %d calls under load" % calls[0]
    eq(failures[:5], [], "failed calls (of %d; %d failed)\nlast log: %s"
       % (calls[0], len(failures), "".join(logs[-2][-20:]) if len(logs) > 1 else ""))
    assert os.path.exists(path), "a tgbridge removed the socket systemd owns"
