"""A gateway that misbehaves: frames that are not JSON or not UTF-8, silence in
every phase of a connection attempt, refusals that quote the token.  tgbridge
must keep every caller answered, never forward what it cannot vouch for, name
truthfully what went wrong, and recover without a restart."""

import base64
import json
import os
import signal
import tempfile
from urllib.parse import quote

from harness import (FLOW_TC, T, ConnectProxy, check_status, eq, is_json_ct,
                     own_error, start_bridge, start_mock, tc, timeout,
                     wait_until)
from test_systemd import FakeSystemd
from test_unix import LineClient, envelope

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
