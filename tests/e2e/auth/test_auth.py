"""Authentication modes against every gateway generation, token sources and
token secrecy (logs, /proc/<pid>/cmdline, error bodies)."""

import time
import urllib.parse

from harness import (FLOW_TC, T, UpgradeCapture, WRAPPER, check_status,
                     cmdline, eq, own_error, start_bridge, start_mock, tmpfile)

V2_TOKEN = "tg_good_4d9a1c"
V2_BAD = "tg_wrong_77e0b2"
V1_SECRET = "v1-secret-93b7"
V1_BAD = "v1-wrong-secret-1a2b"

QUEUE_TIMEOUT = 0.6


def _echo_ok(b):
    r = b.post(FLOW_TC, {"system": "", "prompt": "hi",
                         "_mock": {"echo": True}})
    check_status(r, 200, "request through an authenticated bridge")
    return r


def _assert_rejected(m, b, counter, secrets=()):
    """The upstream refused the credentials: /readyz stays 503 and a
    request gets 503 gateway-unavailable after --queue-timeout."""
    m.wait_stats(lambda s: s.get(counter, 0) >= 1, timeout=10,
                 what="mock %s >= 1" % counter)
    for _ in range(3):
        r = b.readyz()
        check_status(r, 503, "/readyz after a rejected token")
        r.json()
        time.sleep(0.05)
    t0 = time.monotonic()
    r = b.post(FLOW_TC, {"system": "", "prompt": "hi"})
    elapsed = time.monotonic() - t0
    own_error(r, 503, "gateway-unavailable")
    assert elapsed >= QUEUE_TIMEOUT * 0.9, \
        "503 after %.2fs, before --queue-timeout %.1f" % (elapsed,
                                                          QUEUE_TIMEOUT)
    assert elapsed < T(QUEUE_TIMEOUT + 5), "503 took %.2fs" % elapsed
    eq(m.stats().get("requests_received", 0), 0,
       "requests forwarded on an unauthenticated socket")
    for s in secrets:
        assert s.encode() not in r.body, "token in the 503 body"
        assert s not in b.log(), "token in the log"


# ------------------------------------------- what goes on the upgrade wire

def _upgrade(*args, path_suffix=""):
    with UpgradeCapture() as cap, \
            start_bridge(cap.url + path_suffix, *args):
        line, hdrs = cap.wait(1)[0]
    method, target, _ = line.split(" ", 2)
    eq(method, "GET", "upgrade method")
    assert hdrs.get("upgrade", "").lower() == "websocket", hdrs
    path, _, query = target.partition("?")
    return path, query, hdrs


def test_upgrade_query_mode_percent_encodes_token():
    token = "a+b c/d&e=f%g?h#i"
    path, query, hdrs = _upgrade("--auth", "query", "--token", token)
    eq(path, "/api/v1/socket", "socket path")
    params = dict(p.partition("=")[::2] for p in query.split("&") if p)
    assert "token" in params, "no token= in %r" % query
    raw = params["token"]
    for c in "+ &#?":
        assert c not in raw, "%r not percent-encoded in %r" % (c, raw)
    eq(urllib.parse.unquote(raw), token, "decoded query token")
    assert "authorization" not in hdrs, "query mode sent a header too"


def test_upgrade_header_mode_sends_bearer():
    path, query, hdrs = _upgrade("--auth", "header", "--token", V2_TOKEN)
    eq(path, "/api/v1/socket", "socket path")
    eq(hdrs.get("authorization"), "Bearer " + V2_TOKEN, "Authorization")
    assert "token=" not in query, "header mode put the token in the URL"


def test_upgrade_first_frame_mode_has_no_credentials():
    path, query, hdrs = _upgrade("--auth", "first-frame", "--token", V2_TOKEN)
    eq(path, "/api/v1/socket", "socket path")
    assert V2_TOKEN not in query and "token=" not in query, query
    assert "authorization" not in hdrs, "first-frame mode sent a header"


def test_upgrade_gateway_path_prefix_kept():
    path, _, _ = _upgrade("--auth", "header", "--token", V2_TOKEN,
                          path_suffix="/tg/root/")
    eq(path, "/tg/root/api/v1/socket", "socket path under a prefix")


# ------------------------------------------------------------------ query

def test_query_mode_v1a_secret_accepted():
    with start_mock("v1a", secret=V1_SECRET) as m, \
            start_bridge(m.url, "--auth", "query", "--token", V1_SECRET) as b:
        b.wait_ready()
        _echo_ok(b)
        eq(m.stats()["last_query_token"], V1_SECRET, "query token")


def test_query_mode_percent_encodes_token():
    secret = "p+a/ss w&o=r%d?#x"
    with start_mock("v1b", secret=secret) as m, \
            start_bridge(m.url, "--auth", "query", "--token", secret,
                         "--log-level", "debug") as b:
        b.wait_ready()
        _echo_ok(b)
        eq(m.stats()["last_query_token"], secret, "decoded query token")
        log = b.log()
    assert secret not in log, "secret in the log"
    assert urllib.parse.quote(secret, safe="") not in log, \
        "percent-encoded secret in the log"


def test_query_mode_v1a_wrong_secret_rejected():
    with start_mock("v1a", secret=V1_SECRET) as m, \
            start_bridge(m.url, "--auth", "query", "--token", V1_BAD,
                         "--queue-timeout", QUEUE_TIMEOUT) as b:
        _assert_rejected(m, b, "http_401", secrets=[V1_BAD])


def test_query_mode_v1c_secret_accepted():
    with start_mock("v1c", secret=V1_SECRET) as m, \
            start_bridge(m.url, "--auth", "query",
                         env={"GATEWAY_SECRET": V1_SECRET}) as b:
        b.wait_ready()
        _echo_ok(b)


# ----------------------------------------------------------------- header

def test_header_mode_v1_open_gateway():
    with start_mock("v1b") as m, \
            start_bridge(m.url, "--auth", "header", "--token", V1_SECRET) as b:
        b.wait_ready()
        _echo_ok(b)
        st = m.stats()
        assert st["auth_headers_seen"] >= 1, "no Authorization header seen"
        eq(st["query_tokens_seen"], 0, "upgrades with ?token=")


def test_header_mode_v1_with_secret_rejected():
    # A V1 gateway reads the WebSocket token from the query only, so a
    # header-only client is refused with HTTP 401 at the upgrade.
    with start_mock("v1a", secret=V1_SECRET) as m, \
            start_bridge(m.url, "--auth", "header", "--token", V1_SECRET,
                         "--queue-timeout", QUEUE_TIMEOUT) as b:
        _assert_rejected(m, b, "http_401", secrets=[V1_SECRET])


# ------------------------------------------------------------ first-frame

def _first_frame_ok(era):
    with start_mock(era, tokens=[V2_TOKEN]) as m, \
            start_bridge(m.url, "--auth", "first-frame",
                         "--token", V2_TOKEN) as b:
        b.wait_ready()
        _echo_ok(b)
        st = m.stats()
        assert st["auth_ok"] >= 1, "mock auth_ok=%r" % st["auth_ok"]
        eq(st["auth_failed"], 0, "auth_failed")
        eq(st["query_tokens_seen"], 0, "upgrades with ?token=")
        eq(st["auth_headers_seen"], 0, "upgrades with Authorization")


def test_first_frame_v2a_accepted():
    _first_frame_ok("v2a")


def test_first_frame_v2b_accepted():
    _first_frame_ok("v2b")


def test_first_frame_v2c_accepted():
    _first_frame_ok("v2c")


def test_first_frame_v2d_accepted():
    _first_frame_ok("v2d")


def test_first_frame_nothing_sent_before_auth_ok():
    # The mock answers the auth frame only after 0.5 s; a request that
    # arrives meanwhile must wait, not be sent (it would get auth-required).
    with start_mock("v2d", tokens=[V2_TOKEN],
                    extra=["--auth-delay", "0.5"]) as m, \
            start_bridge(m.url, "--auth", "first-frame",
                         "--token", V2_TOKEN) as b:
        r = b.post(FLOW_TC, {"system": "", "prompt": "early"})
        check_status(r, 200, "request sent during authentication")
        eq(r.json().get("response"), "early", "reply")
        st = m.stats()
        eq(st["requests_rejected"], 0, "requests rejected (auth-required)")
        eq(st["auth_ok"], 1, "auth_ok")


def test_first_frame_v2d_wrong_token_rejected():
    with start_mock("v2d", tokens=[V2_TOKEN]) as m, \
            start_bridge(m.url, "--auth", "first-frame", "--token", V2_BAD,
                         "--queue-timeout", QUEUE_TIMEOUT) as b:
        _assert_rejected(m, b, "auth_failed", secrets=[V2_BAD])


def test_first_frame_v2a_wrong_token_rejected():
    with start_mock("v2a", tokens=[V2_TOKEN]) as m, \
            start_bridge(m.url, "--auth", "first-frame", "--token", V2_BAD,
                         "--queue-timeout", QUEUE_TIMEOUT) as b:
        _assert_rejected(m, b, "auth_failed", secrets=[V2_BAD])


# ------------------------------------------------------------------- auto

AUTO_ERAS = {
    "v1a": "v1a",
    "v1b": "v1b/v1c",
    "v1c": "v1b/v1c",
    "v2a": "v2a/v2b",
    "v2b": "v2a/v2b",
    "v2c": "v2c/v2d",
    "v2d": "v2c/v2d",
}


def _auto(era):
    v1 = era.startswith("v1")
    token = V1_SECRET if v1 else V2_TOKEN
    kw = {"secret": V1_SECRET} if v1 else {"tokens": [V2_TOKEN]}
    with start_mock(era, **kw) as m, \
            start_bridge(m.url, "--token", token) as b:   # --auth auto
        b.wait_ready()
        found = b.wait_log(r"era=(\S+)").group(1).rstrip(",;)")
        eq(found, AUTO_ERAS[era], "detected era")
        _echo_ok(b)
        st = m.stats()
        eq(st["connections_total"], 1, "connections used to detect %s" % era)
        if v1:
            eq(st["last_query_token"], V1_SECRET, "query token")
        else:
            eq(st["auth_ok"], 1, "auth-ok replies")
    assert token not in b.log(), "token in the log"


def _make_auto(era):
    def t():
        _auto(era)
    t.__name__ = "test_auto_detects_" + era
    return t


for _era in AUTO_ERAS:
    globals()["test_auto_detects_" + _era] = _make_auto(_era)
del _era


def test_auto_v2d_wrong_token_rejected():
    with start_mock("v2d", tokens=[V2_TOKEN]) as m, \
            start_bridge(m.url, "--token", V2_BAD,
                         "--queue-timeout", QUEUE_TIMEOUT) as b:
        _assert_rejected(m, b, "auth_failed", secrets=[V2_BAD])


def test_auto_v1a_wrong_secret_rejected():
    with start_mock("v1a", secret=V1_SECRET) as m, \
            start_bridge(m.url, "--token", V1_BAD,
                         "--queue-timeout", QUEUE_TIMEOUT) as b:
        _assert_rejected(m, b, "http_401", secrets=[V1_BAD])


# ---------------------------------------------------- token sources/secrecy

def _no_token_anywhere(b, token):
    assert token not in b.log(), "token in the log"
    cmd = cmdline(b.pid)
    assert token.encode() not in cmd, "token in /proc/%d/cmdline: %r" % (
        b.pid, cmd)


def test_token_file_not_in_logs_or_cmdline():
    path = tmpfile(V2_TOKEN)
    with start_mock("v2d", tokens=[V2_TOKEN]) as m, \
            start_bridge(m.url, "--token-file", path,
                         "--log-level", "debug") as b:
        b.wait_ready()
        _echo_ok(b)
        _no_token_anywhere(b, V2_TOKEN)


def test_token_file_trailing_newline_ignored():
    path = tmpfile(V2_TOKEN + "\n")
    with start_mock("v2d", tokens=[V2_TOKEN]) as m, \
            start_bridge(m.url, "--token-file", path) as b:
        b.wait_ready()


def test_env_TRUSTGRAPH_TOKEN_not_in_logs_or_cmdline():
    with start_mock("v2d", tokens=[V2_TOKEN]) as m, \
            start_bridge(m.url, "--log-level", "debug",
                         env={"TRUSTGRAPH_TOKEN": V2_TOKEN}) as b:
        b.wait_ready()
        _echo_ok(b)
        _no_token_anywhere(b, V2_TOKEN)


def test_env_GATEWAY_SECRET_v1_not_in_logs_or_cmdline():
    with start_mock("v1a", secret=V1_SECRET) as m, \
            start_bridge(m.url, "--log-level", "debug",
                         env={"GATEWAY_SECRET": V1_SECRET}) as b:
        b.wait_ready()
        _echo_ok(b)
        _no_token_anywhere(b, V1_SECRET)


def test_token_flag_not_in_logs_and_cmdline_scrubbed():
    with start_mock("v2d", tokens=[V2_TOKEN]) as m, \
            start_bridge(m.url, "--token", V2_TOKEN,
                         "--log-level", "debug") as b:
        b.wait_ready()
        _echo_ok(b)
        assert V2_TOKEN not in b.log(), "token in the log"
        if not WRAPPER:   # a wrapper's own argv keeps the token
            cmd = cmdline(b.pid)
            assert V2_TOKEN.encode() not in cmd, \
                "--token value still in /proc/%d/cmdline" % b.pid


def test_rejected_token_not_in_logs_or_bodies():
    with start_mock("v2d", tokens=[V2_TOKEN]) as m, \
            start_bridge(m.url, "--token", V2_BAD, "--log-level", "debug",
                         "--queue-timeout", QUEUE_TIMEOUT) as b:
        _assert_rejected(m, b, "auth_failed", secrets=[V2_BAD])
        r = b.readyz()
        assert V2_BAD.encode() not in r.body, "token in /readyz body"


def test_token_flag_precedes_env():
    with start_mock("v2d", tokens=[V2_TOKEN]) as m, \
            start_bridge(m.url, "--token", V2_TOKEN,
                         env={"TRUSTGRAPH_TOKEN": V2_BAD}) as b:
        b.wait_ready()
        eq(m.stats()["auth_failed"], 0, "auth_failed")
