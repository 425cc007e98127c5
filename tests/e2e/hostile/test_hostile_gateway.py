"""A gateway that misbehaves: frames that are not JSON or not UTF-8, silence in
every phase of a connection attempt, refusals that quote the token.  tgbridge
must keep every caller answered, never forward what it cannot vouch for, name
truthfully what went wrong, and recover without a restart."""

import base64
import json
import os
import signal
import socket
import tempfile
import threading
import time
from urllib.parse import quote

from harness import (FLOW_TC, T, ConnectProxy, check_status, eq, is_json_ct,
                     own_error, slowdns_env, start_bridge, start_mock, tc,
                     timeout, wait_until)
from fakesystemd import FakeSystemd
from lineclient import LineClient, envelope
from middleman import Middleman

TOKEN = "tg_hostile_token_9c41"


def metric(b, name):
    text = b.get("/metrics").body.decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError("no metric %s in:\n%s" % (name, text))


# ------------------------------------------------------------ bad frames

@timeout(60)
def test_bad_reply_frames_fail_their_caller_and_nobody_else():
    """A reply frame that is not valid UTF-8 or not JSON is never served as
    application/json: its caller gets 502 bad-gateway-frame (or a final error
    part / line), the other callers are served, and each is counted."""
    sock = os.path.join(tempfile.mkdtemp(prefix="tgb-bad-"), "s.sock")
    m = start_mock("v2d", tokens=[TOKEN])
    b = start_bridge(m.url, "--token", TOKEN, "--unix", sock,
                     "--request-timeout", "2")
    with m, b:
        b.wait_ready()
        for kind in ("utf8", "json"):
            r = b.post(FLOW_TC, tc("bad " + kind, bad_frame=kind))
            own_error(r, 502, "bad-gateway-frame")
            # a stream: the good parts, then the error as its last item
            with b.stream(FLOW_TC, tc("s", streaming=True, bad_frame=kind,
                                      after=2)) as s:
                check_status(s, 200, "stream with a bad last frame")
                items = list(s.ndjson())
            eq(len(items), 3, "items of the stream (%s)" % kind)
            eq(items[-1].get("error", {}).get("type"), "bad-gateway-frame",
               "last item of the stream (%s)" % kind)
            # the line protocol
            c = LineClient(sock)
            c.send(envelope(id="L1", mock={"bad_frame": kind}))
            line = c.line()
            eq(line.get("id"), "L1", "line reply id")
            eq(line.get("error", {}).get("type"), "bad-gateway-frame",
               "line reply error type")
            eq(line.get("complete"), True, "line reply complete")
            c.sock.close()
            # and a normal caller is unaffected
            r = b.post(FLOW_TC, tc("after " + kind))
            check_status(r, 200, "a normal call after the bad frame")
            assert is_json_ct(r.headers)
            eq(r.json().get("response"), "after " + kind, "normal reply")
        eq(metric(b, "tgbridge_gateway_bad_frames_total"), 6.0,
           "bad frames counted")
        # A JSON array has no id the scanner can read: nobody can be told
        # at once, so its caller gets its deadline's answer, not the frame.
        r = b.post(FLOW_TC, tc("array", bad_frame="nonobject"), timeout=20)
        own_error(r, 504, "request-timeout")
        eq(metric(b, "tgbridge_gateway_bad_frames_total"), 7.0,
           "the array counted too")
        assert b.log().count("dropped a gateway frame") <= 2, \
            "bad frames are logged at most once per 10 s:\n" + b.log()


# ------------------------------------------------------------ secrets

def secret_forms(secret):
    """Every spelling a secret may take on its way out."""
    forms = {secret, quote(secret, safe=""), quote(secret, safe="").lower(),
             json.dumps(secret)[1:-1],
             json.dumps(secret, ensure_ascii=False)[1:-1],
             base64.b64encode(secret.encode()).decode()}
    return {f for f in forms if f}


@timeout(90)
def test_no_secret_on_any_surface():
    """A hostile gateway quotes the token back in every refusal it can make
    (auth-failed, policy errors, the 401 body); tokens are rotated through,
    proxy credentials and spare secrets come in flags and the environment.
    No form of any of them may appear in the log, /status, /readyz,
    /metrics, error bodies, error lines, systemd's STATUS= or
    /proc/PID/{cmdline,environ}."""
    good = 'tg_go"od\\tok/+&%\u00e9 x'
    bad1 = 'tg_b"ad1\\/+%\u00e9'
    bad2 = 'tg_bad2 "\\x'
    env_token = 'tg_env"tok\\en+'
    gw_secret = 'gw_se"cret\\value'
    proxy_user, proxy_pass = "proxyuser", 'p@ss"w\\0rd'
    env_proxy_user, env_proxy_pass = "envuser", "envpa55word"
    work = tempfile.mkdtemp(prefix="tgb-secrets-")
    token_file = os.path.join(work, "token")
    with open(token_file, "w") as f:
        f.write(good + "\n")
    sock = os.path.join(work, "s.sock")
    sd = FakeSystemd()
    m = start_mock("v2d", tokens=[good], extra=["--echo-token"])
    with m, ConnectProxy() as proxy:
        proxy_url = "http://%s:%s@127.0.0.1:%d" % (
            proxy_user, quote(proxy_pass, safe=""), proxy.port)
        b = start_bridge(m.url, "--token-file", token_file, "--proxy", proxy_url,
                         "--unix", sock, "-v", "--reconnect-min", "0.05",
                         "--reconnect-max", "0.2", "--queue-timeout", "0.5",
                         env=sd.env(TRUSTGRAPH_TOKEN=env_token,
                                    GATEWAY_SECRET=gw_secret,
                                    HTTPS_PROXY="http://%s:%s@127.0.0.1:1" % (
                                        env_proxy_user, env_proxy_pass)))
        with b:
            b.wait_ready()
            auth = [h.get("proxy-authorization") for _, h in proxy.connects()]
            want = "basic " + base64.b64encode(
                ("%s:%s" % (proxy_user, proxy_pass)).encode()).decode()
            assert want in [a.lower() if a else a for a in auth] or want in auth, \
                "the proxy got %r, not the decoded credentials" % auth
            # an in-band re-authentication the gateway refuses, quoting it
            with open(token_file, "w") as f:
                f.write(bad1)
            os.kill(b.pid, signal.SIGHUP)
            wait_until(lambda: b.get("/status").json()["upstream"]["reauth"]
                       .startswith("rejected"), what="the refresh refused")
            # reconnecting with it: refused again, and the reason quotes it
            m.drop()
            b.wait_unready()
            wait_until(lambda: m.stats()["auth_failed"] >= 2,
                       what="the reconnect refused")
            with open(token_file, "w") as f:
                f.write(bad2)
            os.kill(b.pid, signal.SIGHUP)
            wait_until(lambda: m.stats()["auth_failed"] >= 3,
                       what="the next token refused too")
            wait_until(lambda: b"auth-failed" in b.readyz().body,
                       what="/readyz names the refusal")
            surfaces = {}
            surfaces["/readyz"] = b.readyz().body
            surfaces["/status"] = b.get("/status").body
            surfaces["/metrics"] = b.get("/metrics").body
            r = b.post(FLOW_TC, tc("x"), timeout=10)
            own_error(r, 503, "gateway-unavailable")
            surfaces["503 body"] = r.body
            c = LineClient(sock)
            c.send(envelope(id="s1"))
            surfaces["error line"] = c.raw_line(timeout=10)
            c.sock.close()
            surfaces["STATUS="] = "\n".join(sd.drain(T(0.3))).encode()
            with open("/proc/%d/cmdline" % b.pid, "rb") as f:
                surfaces["cmdline"] = f.read()
            with open("/proc/%d/environ" % b.pid, "rb") as f:
                surfaces["environ"] = f.read()
            b.stop()
            surfaces["log"] = b.log().encode()
    sd.close()
    # the surfaces are real: the refusal is there, redacted
    for where in ("/readyz", "/status", "503 body", "error line", "STATUS=", "log"):
        assert b"auth-failed: auth failure for token ***" in surfaces[where], \
            "%s: %r" % (where, surfaces[where][-2000:])
    secrets = [good, bad1, bad2, env_token, gw_secret, proxy_pass,
               "%s:%s" % (proxy_user, proxy_pass),
               "%s:%s" % (proxy_user, quote(proxy_pass, safe="")),
               env_proxy_pass]
    leaks = []
    for s in secrets:
        for form in secret_forms(s):
            for where, text in surfaces.items():
                if form.encode() in text:
                    leaks.append("%r (form %r) in %s" % (s, form, where))
    assert not leaks, "\n".join(leaks[:20])


# ------------------------------------------------------------ silent gateways

class Gatekeeper(Middleman):
    """A TCP listener standing in for a gateway (or a proxy) that misbehaves:
    mode "silent" accepts and says nothing; "half101" answers the upgrade
    with half a 101 and stops; "forward" tunnels to target_port (the mock)
    from then on.  Counts connections; ends by itself (daemon threads)."""

    def __init__(self, mode="silent", target_port=None):
        self.mode = mode
        self.target_port = target_port
        self.heads = []
        super().__init__()

    def handle(self, c, n):
        with self._lock:
            mode = self.mode
        threading.Thread(target=self._serve, args=(c, mode),
                         daemon=True).start()

    def _serve(self, c, mode):
        try:
            if mode == "forward":
                self.tunnel_to(c, self.target_port)
                return
            data = b""
            while b"\r\n\r\n" not in data and len(data) < 65536:
                chunk = c.recv(4096)
                if not chunk:
                    return
                data += chunk
            with self._lock:
                self.heads.append(data.split(b"\r\n")[0])
            if mode == "half101":
                c.sendall(b"HTTP/1.1 101 Switching Protocols\r\n"
                          b"Upgrade: websocket\r\n")
            while c.recv(4096):
                pass
        except OSError:
            pass

    def set_mode(self, mode):
        with self._lock:
            self.mode = mode


FAST = ("--reconnect-min", "0.05", "--reconnect-max", "0.2")


def wait_reason(b, text, timeout=10):
    """/readyz is 503 and its reason is exactly `text`; returns its body."""
    def ok():
        r = b.readyz()
        if r.status != 503:
            return None
        body = r.json()
        return body if body.get("reason") == text else None
    try:
        return wait_until(ok, timeout=timeout, what="/readyz reason %r" % text)
    except AssertionError:
        raise AssertionError("/readyz reason is not %r: %r" % (text, b.readyz().body))


@timeout(60)
def test_gateway_that_accepts_and_says_nothing():
    with Gatekeeper("silent") as g:
        b = start_bridge(g.url, "--token", TOKEN, "--connect-timeout", "0.5", *FAST)
        with b:
            wait_reason(b, "no upgrade reply from the gateway within 0.5 s")
            wait_until(lambda: g.count() >= 3, what="the attempt retried")
            st = b.get("/status").json()["upstream"]
            assert st["state"] in ("connecting", "down"), st
            eq(st["reason"], "no upgrade reply from the gateway within 0.5 s", "/status reason")


@timeout(60)
def test_gateway_that_sends_half_a_101():
    with Gatekeeper("half101") as g:
        b = start_bridge(g.url, "--token", TOKEN, "--connect-timeout", "0.5", *FAST)
        with b:
            wait_reason(b, "no upgrade reply from the gateway within 0.5 s")
            wait_until(lambda: g.count() >= 3, what="the attempt retried")


@timeout(60)
def test_gateway_silent_for_a_while_then_behaving():
    """No restart needed: the attempts that hit the deadline are retried, and
    the first one that meets a working gateway makes tgbridge ready."""
    m = start_mock("v2d", tokens=[TOKEN])
    with m, Gatekeeper("silent", target_port=m.port) as g:
        b = start_bridge(g.url, "--token", TOKEN, "--connect-timeout", "0.5", *FAST)
        with b:
            wait_reason(b, "no upgrade reply from the gateway within 0.5 s")
            g.set_mode("forward")
            b.wait_ready(timeout=10)
            check_status(b.post(FLOW_TC, tc("at last")), 200, "call once it behaves")


@timeout(60)
def test_gateway_silent_after_the_upgrade_is_an_auth_timeout():
    """A 101 followed by silence: the authentication reply is the phase that
    times out (regression: the auth timer caught this before the deadline
    covered every phase)."""
    m = start_mock("v2d", tokens=[TOKEN], extra=["--auth-delay", "30"])
    b = start_bridge(m.url, "--token", TOKEN, "--connect-timeout", "0.5", *FAST)
    with m, b:
        wait_reason(b, "no reply to the authentication frame from the gateway within 0.5 s")
        wait_until(lambda: m.stats()["connections_total"] >= 3, what="retried")


@timeout(60)
def test_tcp_connect_that_never_completes():
    """A listener whose accept queue is full drops new SYNs: the TCP connect
    itself is what never finishes."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(0)
    port = s.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port))
    try:
        b = start_bridge("http://127.0.0.1:%d" % port, "--token", TOKEN,
                         "--connect-timeout", "0.5", *FAST)
        with b:
            wait_reason(b, "no TCP connection to 127.0.0.1:%d within 0.5 s" % port)
    finally:
        filler.close()
        s.close()


@timeout(60)
def test_tls_server_that_never_answers_the_hello():
    with Gatekeeper("silent") as g:
        b = start_bridge("https://127.0.0.1:%d" % g.port, "--token", TOKEN,
                         "--connect-timeout", "0.5", *FAST)
        with b:
            wait_reason(b, "no TLS handshake with the gateway within 0.5 s")


@timeout(60)
def test_proxy_that_never_answers_connect():
    m = start_mock("v2d", tokens=[TOKEN])
    with m, Gatekeeper("silent") as g:
        b = start_bridge(m.url, "--token", TOKEN, "--proxy", g.url,
                         "--connect-timeout", "0.5", *FAST)
        with b:
            wait_reason(b, "no reply from the proxy 127.0.0.1:%d to CONNECT within 0.5 s" % g.port)
            assert any(h.startswith(b"CONNECT 127.0.0.1:%d " % m.port) for h in g.heads), g.heads


@timeout(60)
def test_name_that_resolves_too_slowly():
    m = start_mock("v2d", tokens=[TOKEN])
    b = start_bridge("http://gw.slow.test:%d" % m.port, "--token", TOKEN,
                     "--connect-timeout", "0.3", *FAST, env=slowdns_env(T(3)))
    with m, b:
        wait_reason(b, "cannot resolve the gateway's host name gw.slow.test within 0.3 s")


@timeout(60)
def test_rotation_replacement_that_never_answers_keeps_the_current_one():
    """The deadline holds for a rotation's replacement too: it fails, the
    current connection keeps serving (readiness untouched), and the rotation
    is retried and succeeds once the gateway answers again."""
    m = start_mock("v1b")
    with m, Gatekeeper("forward", target_port=m.port) as g:
        token_file = token_file_with("tg_first")
        b = start_bridge(g.url, "--auth", "query", "--connect-timeout", "0.5",
                         "--reconnect-min", "0.05", "--reconnect-max", "0.5",
                         "--token-file", token_file)
        with b:
            b.wait_ready()
            g.set_mode("silent")
            with open(token_file, "w") as f:
                f.write("tg_second")
            os.kill(b.pid, signal.SIGHUP)
            b.wait_log(r"rotation failed, keeping connection #1: no upgrade reply from the gateway "
                       r"within 0\.5 s", timeout=10)
            check_status(b.readyz(), 200, "/readyz while the replacement fails")
            check_status(b.post(FLOW_TC, tc("still")), 200, "served meanwhile")
            g.set_mode("forward")
            wait_until(lambda: b.get("/status").json()["upstream"]["rotations"] >= 2 and
                       not b.get("/status").json()["upstream"]["draining_old_connection"] and
                       m.stats().get("last_query_token") == "tg_second",
                       timeout=15, what="the rotation retried and done")
            check_status(b.post(FLOW_TC, tc("rotated")), 200, "served after the rotation")


def token_file_with(token):
    fd, path = tempfile.mkstemp(prefix="tgb-token-")
    with os.fdopen(fd, "w") as f:
        f.write(token)
    return path


@timeout(60)
def test_proxy_host_name_is_looked_up_off_the_loop():
    """With a proxy given by name, the proxy's name is resolved on a thread
    like the gateway's: a slow resolver never freezes local callers."""
    delay = 1.5 * T(1)
    m = start_mock("v2d", tokens=[TOKEN])
    with m, ConnectProxy() as proxy:
        b = start_bridge(m.url, "--token", TOKEN, "--proxy",
                         "http://proxy.slow.test:%d" % proxy.port, *FAST,
                         env=slowdns_env(delay))
        with b:
            eq(b.get("/status").json()["upstream"]["state"], "resolving",
               "state while the proxy's name is looked up")
            t0 = time.monotonic()
            check_status(b.get("/healthz"), 200, "/healthz during the lookup")
            took = time.monotonic() - t0
            assert took < T(0.5), "/healthz took %.2fs during the proxy lookup" % took
            b.wait_ready(timeout=10)
            assert proxy.connects(), "the proxy was not used"
            check_status(b.post(FLOW_TC, tc("via the proxy")), 200, "call")
