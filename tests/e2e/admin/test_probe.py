"""tgbridge probe live|ready and tgbridge shutdown: the admin listener if configured,
else the TCP listener, else the Unix socket, from the daemon's own options; exit 0
or 1 with one line saying why, 2 for a usage or configuration error; no token file
read, no socket created, so any user may run it; 0.8 s at most by default."""

import os
import re
import socket
import subprocess
import tempfile
import time

from harness import (BIN, T, WRAPPER, bridge_env, check_status, closed_port,
                     eq, run_bridge, skip, start_bridge, start_mock, timeout)

TOKEN = "tg_probe_token_8d3f"
ADMIN_RE = r"admin listener on (\S+):(\d+)"


def probe(*args, env=None, preexec_fn=None, timeout=10):
    r = subprocess.run(WRAPPER + [BIN] + [str(a) for a in args], env=bridge_env(env), stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, errors="replace", timeout=T(timeout),
                       preexec_fn=preexec_fn)
    return r


def one_line(r, regex, what):
    lines = r.stdout.splitlines()
    eq(len(lines), 1, "%s: lines printed (%r, stderr %r)" % (what, r.stdout, r.stderr))
    assert re.search(regex, lines[0]), "%s: %r does not match %r" % (what, lines[0], regex)


def _free_port():
    return closed_port()


@timeout(40)
def test_probe_against_the_admin_listener():
    m = start_mock(tokens=[TOKEN])
    aport = _free_port()
    b = start_bridge(m.url, "--token", TOKEN, "--admin-listen", "127.0.0.1:%d" % aport)
    with m, b:
        b.wait_ready()
        r = probe("probe", "live", "--admin-listen", "127.0.0.1:%d" % aport, "--listen", "127.0.0.1:1")
        eq(r.returncode, 0, "probe live: " + r.stdout + r.stderr)
        one_line(r, r"^live: alive \(200 from the admin listener 127\.0\.0\.1:%d\)$" % aport, "probe live")
        r = probe("probe", "ready", "--admin-listen", "127.0.0.1:%d" % aport)
        eq(r.returncode, 0, "probe ready: " + r.stdout + r.stderr)
        one_line(r, r"^ready: ready \(200 from the admin listener", "probe ready")
        # the same options from the environment and from a config file
        r = probe("probe", "live", env={"TGBRIDGE_ADMIN_LISTEN": "127.0.0.1:%d" % aport})
        eq(r.returncode, 0, "probe live, TGBRIDGE_ADMIN_LISTEN: " + r.stdout + r.stderr)
        cf = tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False)
        cf.write("admin-listen = 127.0.0.1:%d\nlisten = 127.0.0.1:1\n" % aport)
        cf.close()
        r = probe("probe", "ready", "--config", cf.name)
        os.unlink(cf.name)
        eq(r.returncode, 0, "probe ready, --config: " + r.stdout + r.stderr)
        m.stop()
        b.wait_unready()
        r = probe("probe", "ready", "--admin-listen", "127.0.0.1:%d" % aport)
        eq(r.returncode, 1, "probe ready, gateway gone")
        one_line(r, r"^ready: not ready \(503 from the admin listener 127\.0\.0\.1:%d\): \S" % aport,
                 "probe ready, gateway gone")
        r = probe("probe", "live", "--admin-listen", "127.0.0.1:%d" % aport)
        eq(r.returncode, 0, "probe live, gateway gone")


@timeout(40)
def test_probe_against_the_tcp_listener():
    m = start_mock(tokens=[TOKEN])
    port = _free_port()
    b = start_bridge(m.url, "--token", TOKEN, listen="127.0.0.1:%d" % port)
    with m, b:
        b.wait_ready()
        r = probe("probe", "live", "--listen", "127.0.0.1:%d" % port, "--unix", "none")
        eq(r.returncode, 0, r.stdout + r.stderr)
        one_line(r, r"^live: alive \(200 from the TCP listener 127\.0\.0\.1:%d\)$" % port, "probe live")
        # a wildcard listen address is asked on loopback
        r = probe("probe", "ready", "--listen", "0.0.0.0:%d" % port, "--unix", "none")
        eq(r.returncode, 0, r.stdout + r.stderr)
        one_line(r, r"^ready: ready \(200 from the TCP listener 127\.0\.0\.1:%d\)$" % port, "probe ready")
        m.stop()
        b.wait_unready()
        r = probe("probe", "ready", "--listen", "127.0.0.1:%d" % port, "--unix", "none")
        eq(r.returncode, 1, r.stdout + r.stderr)
        one_line(r, r"^ready: not ready \(503 from the TCP listener", "probe ready, gateway gone")
    # nothing there any more
    r = probe("probe", "live", "--listen", "127.0.0.1:%d" % port, "--unix", "none")
    eq(r.returncode, 1, r.stdout + r.stderr)
    one_line(r, r"^live: cannot connect to the TCP listener 127\.0\.0\.1:%d: Connection refused$" % port,
             "probe live, nothing listening")


@timeout(40)
def test_probe_against_the_unix_socket():
    m = start_mock(tokens=[TOKEN])
    path = os.path.join(tempfile.mkdtemp(prefix="tgb-probe-"), "t.sock")
    b = start_bridge(m.url, "--token", TOKEN, "--unix", path)
    with m, b:
        b.wait_ready()
        # --listen on port 0: the probe cannot know the port, so it asks the socket
        r = probe("probe", "live", "--listen", "127.0.0.1:0", "--unix", path)
        eq(r.returncode, 0, r.stdout + r.stderr)
        one_line(r, r"^live: alive \(200 from the Unix socket %s\)$" % re.escape(path), "probe live")
        r = probe("probe", "ready", "--listen", "127.0.0.1:0", "--unix", path)
        eq(r.returncode, 0, r.stdout + r.stderr)
        m.stop()
        b.wait_unready()
        r = probe("probe", "ready", "--listen", "127.0.0.1:0", "--unix", path)
        eq(r.returncode, 1, r.stdout + r.stderr)
        one_line(r, r"^ready: not ready \(503 from the Unix socket", "probe ready, gateway gone")
    r = probe("probe", "live", "--listen", "127.0.0.1:0", "--unix", path)
    eq(r.returncode, 1, "probe live, tgbridge gone: " + r.stdout + r.stderr)
    one_line(r, r"^live: cannot connect to the Unix socket", "probe live, tgbridge gone")


@timeout(30)
def test_probe_gives_up_on_a_silent_listener():
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)          # the kernel accepts; nobody ever answers
    port = silent.getsockname()[1]
    try:
        t0 = time.monotonic()
        r = probe("probe", "live", "--admin-listen", "127.0.0.1:%d" % port)
        took = time.monotonic() - t0
        eq(r.returncode, 1, r.stdout + r.stderr)
        one_line(r, r"^live: no answer from the admin listener 127\.0\.0\.1:%d within 0\.8 s$" % port, "default")
        assert 0.7 < took < T(2.5), "the default timeout took %.2f s" % took
        t0 = time.monotonic()
        r = probe("probe", "ready", "--timeout", "0.2", "--listen", "127.0.0.1:%d" % port, "--unix", "none")
        took = time.monotonic() - t0
        eq(r.returncode, 1, r.stdout + r.stderr)
        one_line(r, r"within 0\.2 s$", "--timeout 0.2")
        assert took < T(0.7), "--timeout 0.2 took %.2f s" % took
    finally:
        silent.close()


def test_probe_usage_and_configuration_errors_exit_2():
    for args in (["probe"], ["probe", "sideways"], ["probe", "live", "--timeout", "soon"],
                 ["probe", "live", "--timeout", "0"], ["probe", "live", "--timeout"],
                 ["probe", "live", "--max-inflight", "99"], ["probe", "ready", "--no-such-flag"],
                 ["probe", "live", "--config", "/nonexistent/tgbridge.conf"],
                 ["probe", "live", "--listen", "127.0.0.1:8089", "--admin-listen", "127.0.0.1:8089"],
                 ["probe", "live", "--listen", "127.0.0.1:0", "--unix", "none"],
                 ["shutdown", "--listen", "127.0.0.1:8089", "--unix", "none"]):
        r = probe(*args)
        eq(r.returncode, 2, "%s: %r %r" % (" ".join(args), r.stdout, r.stderr))
        assert r.stderr.startswith("tgbridge %s: " % args[0]), r.stderr
    r = probe("probe", "--help")
    eq(r.returncode, 0, "probe --help")
    assert "tgbridge probe live|ready" in r.stdout and "tgbridge shutdown" in r.stdout, r.stdout
    r = run_bridge("--help")
    assert "tgbridge probe live|ready" in r.stdout and "tgbridge shutdown" in r.stdout, \
        "--help does not document the subcommands"


@timeout(40)
def test_probe_runs_as_another_user_without_reading_the_token_files():
    if os.geteuid() != 0:
        skip("needs root to start a probe as another user (setresuid)")
    d = tempfile.mkdtemp(prefix="tgb-probe-")
    os.chmod(d, 0o755)
    secrets = {}
    for name in ("token", "client-token", "admin-token"):
        p = os.path.join(d, name)
        with open(p, "w") as f:
            f.write(TOKEN + "\n" if name == "token" else "local_secret_%s_0a\n" % name)
        os.chmod(p, 0o600)       # root's alone: the probe cannot read them
        secrets[name] = p
    m = start_mock(tokens=[TOKEN])
    aport = _free_port()
    sock = os.path.join(d, "never.sock")
    flags = ["--token-file", secrets["token"], "--client-token-file", secrets["client-token"],
             "--admin-token-file", secrets["admin-token"], "--admin-listen", "127.0.0.1:%d" % aport]
    b = start_bridge(m.url, *flags)
    with m, b:
        b.wait_ready()

        def nobody():
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
        r = probe("probe", "ready", *flags, "--unix", sock, preexec_fn=nobody)
        eq(r.returncode, 0, "probe as uid 65534: %r %r" % (r.stdout, r.stderr))
        one_line(r, r"^ready: ready \(200 from the admin listener", "probe as uid 65534")
        # the same as root reads nothing either: the files stay unreadable to uid 65534,
        # and a file the daemon would read (--token-file) missing is no error for the probe
        r = probe("probe", "live", "--token-file", os.path.join(d, "missing"), "--admin-listen",
                  "127.0.0.1:%d" % aport, preexec_fn=nobody)
        eq(r.returncode, 0, "probe with a missing --token-file: %r %r" % (r.stdout, r.stderr))
        assert not os.path.exists(sock), "the probe created the Unix socket"


@timeout(30)
def test_tgbridge_shutdown_command():
    m = start_mock(tokens=[TOKEN])
    aport = _free_port()
    b = start_bridge(m.url, "--token", TOKEN, "--admin-listen", "127.0.0.1:%d" % aport)
    with m, b:
        b.wait_ready()
        r = probe("shutdown", "--admin-listen", "127.0.0.1:%d" % aport)
        eq(r.returncode, 0, r.stdout + r.stderr)
        one_line(r, r"^shutdown: shutting down \(202 from the admin listener 127\.0\.0\.1:%d\)$" % aport,
                 "tgbridge shutdown")
        b.wait_log(r"POST /shutdown: no longer accepting", timeout=3)
        eq(b.proc.wait(T(5)), 0, "exit status")
    r = probe("shutdown", "--admin-listen", "127.0.0.1:%d" % aport)
    eq(r.returncode, 1, "tgbridge shutdown with nothing running: " + r.stdout)
    one_line(r, r"^shutdown: cannot connect to the admin listener", "nothing running")
