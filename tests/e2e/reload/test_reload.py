"""SIGHUP re-reads --config (issue 18, item 6): reloadable options apply to new
calls, the others are reported as needing a restart and keep their value, an option
set by a flag or the environment keeps it, a bad file changes nothing; a new token
shorter than 8 characters is refused and the old one kept (item 8)."""

import os
import signal
import socket
import time

from harness import (FLOW_TC, bridge_status, check_status, eq, own_error,
                     start_bridge, start_mock, tc, timeout, tmpfile)

TOKEN = "tg_reload_token_4d2a"


def write_file(path, text, mode=0o600):
    """Replace the file atomically, as an editor or a config manager does."""
    tmp = path + ".new"
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def conf_file(text):
    path = tmpfile(text, suffix=".conf")
    os.chmod(path, 0o600)
    return path


def window_max(b):
    return bridge_status(b)["requests"]["window_max"]


@timeout(30)
def test_sighup_applies_a_reloadable_option_to_new_calls():
    m = start_mock(tokens=[TOKEN])
    conf = conf_file("token = %s\nmax-inflight = 4\nmax-body = 1k\n" % TOKEN)
    b = start_bridge(m.url, "--config", conf)
    with m, b:
        b.wait_ready()
        eq(window_max(b), 4, "max-inflight from the file")
        big = tc("x" * 2000)
        own_error(b.post(FLOW_TC, big), 413, "payload-too-large")
        write_file(conf, "token = %s\nmax-inflight = 9\nmax-body = 50m\n" % TOKEN)
        os.kill(b.pid, signal.SIGHUP)
        b.wait_log(r"reload: \S+ read: 2 changes applied, 0 need a restart")
        b.wait_log(r"reload: max-inflight = 9 \(was 4\)")
        eq(window_max(b), 9, "max-inflight after SIGHUP")
        check_status(b.post(FLOW_TC, big), 200, "a 2000-byte body after max-body went to 50m")
        assert TOKEN not in b.log(), "the token was logged"


@timeout(30)
def test_sighup_applies_the_log_level():
    m = start_mock(tokens=[TOKEN])
    conf = conf_file("token = %s\nlog-level = info\n" % TOKEN)
    b = start_bridge(m.url, "--config", conf)
    with m, b:
        b.wait_ready()
        check_status(b.post(FLOW_TC, tc("loud")), 200, "call at info")
        b.wait_log(r"outcome=", timeout=5)
        write_file(conf, "token = %s\nlog-level = warn\n" % TOKEN)
        os.kill(b.pid, signal.SIGHUP)
        b.wait_log(r"reload: log-level = warn \(was info\)")
        lines = b.log().count("outcome=")
        check_status(b.post(FLOW_TC, tc("quiet")), 200, "call at warn")
        time.sleep(0.5)
        eq(b.log().count("outcome="), lines, "access lines at warn")
        write_file(conf, "token = %s\nlog-level = info\n" % TOKEN)
        os.kill(b.pid, signal.SIGHUP)
        b.wait_log(r"reload: \S+ read: 1 change applied")
        check_status(b.post(FLOW_TC, tc("loud again")), 200, "call at info")
        deadline = time.monotonic() + 5
        while b.log().count("outcome=") == lines and time.monotonic() < deadline:
            time.sleep(0.02)
        eq(b.log().count("outcome="), lines + 1, "access lines at info again")


@timeout(30)
def test_sighup_reports_a_non_reloadable_change_and_keeps_the_old_value():
    m = start_mock(tokens=[TOKEN])
    conf = conf_file("token = %s\nmax-pending = 100\nmax-inflight = 4\n" % TOKEN)
    b = start_bridge(m.url, "--config", conf)
    with m, b:
        b.wait_ready()
        write_file(conf, "token = %s\nmax-pending = 200\nmax-inflight = 4\n"
                   "request-timeout = 5\n" % TOKEN)
        os.kill(b.pid, signal.SIGHUP)
        b.wait_log(r"reload: max-pending changed in the config file \(200, was 100\): "
                   r"it needs a restart; keeping 100")
        b.wait_log(r"reload: request-timeout changed in the config file .*needs a restart")
        b.wait_log(r"reload: \S+ read: 0 changes applied, 2 need a restart")
        eq(window_max(b), 4, "max-inflight unchanged")
        check_status(b.post(FLOW_TC, tc("still")), 200, "call after the reload")


@timeout(30)
def test_sighup_keeps_an_option_set_by_a_flag_or_the_environment():
    m = start_mock(tokens=[TOKEN])
    conf = conf_file("token = %s\nmax-inflight = 4\nmax-queue = 7\nmax-body = 1k\n" % TOKEN)
    b = start_bridge(m.url, "--config", conf, "--max-inflight", "5",
                     env={"TGBRIDGE_MAX_BODY": "1k"})
    with m, b:
        b.wait_ready()
        eq(window_max(b), 5, "the flag over the file")
        write_file(conf, "token = %s\nmax-inflight = 11\nmax-queue = 8\nmax-body = 50m\n" % TOKEN)
        os.kill(b.pid, signal.SIGHUP)
        b.wait_log(r"reload: \S+ read: 1 change applied, 0 need a restart")
        b.wait_log(r"reload: max-queue = 8 \(was 7\)")
        eq(window_max(b), 5, "the flag still over the file after SIGHUP")
        own_error(b.post(FLOW_TC, tc("x" * 2000)), 413, "payload-too-large")  # the environment's max-body kept
        assert "max-inflight = 11" not in b.log() and "max-body =" not in b.log(), b.log()


@timeout(30)
def test_sighup_with_a_broken_file_changes_nothing_and_keeps_serving():
    m = start_mock(tokens=[TOKEN])
    conf = conf_file("token = %s\nmax-inflight = 4\n" % TOKEN)
    b = start_bridge(m.url, "--config", conf)
    with m, b:
        b.wait_ready()
        for text, why in (("token = %s\nmax-inflight = 9\nno-such-option = 1\n" % TOKEN,
                           r":3: unknown option 'no-such-option'"),
                          ("token = %s\nmax-inflight = 9\nmax-inflight = 10\n" % TOKEN,
                           r":3: 'max-inflight' is set twice"),
                          ("token = %s\nmax-inflight = 99\n" % TOKEN, r"max-inflight"),
                          ("token = short\nmax-inflight = 9\n",
                           r"the gateway token \(from \S+:1\) is 5 characters long")):
            write_file(conf, text)
            os.kill(b.pid, signal.SIGHUP)
            b.wait_log(r"reload: .*%s.*; nothing changed" % why)
            eq(window_max(b), 4, "max-inflight after a bad file (%s)" % why)
            check_status(b.post(FLOW_TC, tc("serving")), 200, "call after a bad file")
        os.remove(conf)
        os.kill(b.pid, signal.SIGHUP)
        b.wait_log(r"reload: cannot open config file .*; nothing changed")
        check_status(b.post(FLOW_TC, tc("serving")), 200, "call without a file")
        assert "short" not in b.log().replace("shorter", ""), "the short token was logged"


@timeout(30)
def test_sighup_refuses_a_short_new_token_file_and_keeps_the_old_token():
    tf = tmpfile(TOKEN + "\n")
    m = start_mock(tokens=[TOKEN])
    b = start_bridge(m.url, "--token-file", tf, "--max-connections", "1")
    with m, b:
        b.wait_ready()
        write_file(tf, "abc\n")
        os.kill(b.pid, signal.SIGHUP)
        b.wait_log(r"SIGHUP: the gateway token in --token-file \S+ is 3 characters long: "
                   r"8 or more wanted \(or --allow-short-token\); keeping the current token")
        # the reconnection reads the file again: still refused, the old token used
        m.drop()
        m.wait_stats(lambda s: s["auth_ok"] >= 2, what="re-authentication after the drop")
        check_status(b.post(FLOW_TC, tc("old token")), 200, "call with the old token")
        eq(m.stats()["auth_failed"], 0, "auth_failed")


@timeout(30)
def test_sighup_refuses_a_short_new_client_token_and_keeps_the_old_one():
    client = "tg_client_token_91aa"
    ctf = tmpfile(client + "\n")
    m = start_mock(tokens=[TOKEN])
    b = start_bridge(m.url, "--token", TOKEN, "--client-token-file", ctf)
    with m, b:
        b.wait_ready()
        write_file(ctf, "pw\n")
        os.kill(b.pid, signal.SIGHUP)
        b.wait_log(r"the client token in --client-token-file \S+ is 2 characters long.*"
                   r"keeping the client token as it was")
        r = b.post(FLOW_TC, tc("old client token"),
                   headers={"Authorization": "Bearer " + client})
        check_status(r, 200, "the old client token still works")
        check_status(b.post(FLOW_TC, tc("new"), headers={"Authorization": "Bearer pw"}),
                     401, "the short one refused")


@timeout(30)
def test_sighup_applies_the_client_timeout_to_new_connections():
    m = start_mock(tokens=[TOKEN])
    conf = conf_file("token = %s\nclient-timeout = 30\n" % TOKEN)
    b = start_bridge(m.url, "--config", conf)
    with m, b:
        b.wait_ready()
        write_file(conf, "token = %s\nclient-timeout = 0.5\n" % TOKEN)
        os.kill(b.pid, signal.SIGHUP)
        b.wait_log(r"reload: client-timeout = 0.5 \(was 30\)")
        s = socket.create_connection(("127.0.0.1", b.port), timeout=10)
        s.sendall(b"GET /healthz HTTP/1.1\r\n")  # a head that never ends
        start = time.monotonic()
        try:
            got = s.recv(4096)
        except ConnectionResetError:
            got = b""
        elapsed = time.monotonic() - start
        s.close()
        assert elapsed < 5, "the connection lasted %.1f s: the old 30 s still applied" % elapsed
        assert b"200" not in got, got
        check_status(b.post(FLOW_TC, tc("after")), 200, "a call after the reload")
