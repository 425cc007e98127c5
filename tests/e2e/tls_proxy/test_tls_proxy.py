"""TLS verification and HTTP CONNECT proxies (issue 5 item 8; README "TLS
and proxies", options --ca-file, --ca-only, --insecure, --proxy).  A
throwaway PKI is made with the openssl CLI at test time; the mock gateway
serves TLS with --tls-cert/--tls-key; the proxy is a small loopback CONNECT
proxy (harness.ConnectProxy)."""

import base64
import re
import socket
import time

from harness import (FLOW_TC, T, ConnectProxy, check_status, closed_port,
                     eq, log_count, make_pki, own_error, skip, slowdns_env,
                     start_bridge, start_mock, start_tls_mock, tc, timeout)

TOKEN = "tg_tls_proxy_token_9d3e"
FAST = ("--reconnect-min", "0.1", "--reconnect-max", "0.5",
        "--ping-interval", "1", "--ping-timeout", "1")

# A /readyz reason for a failed TLS connection names TLS at least ...
TLS_REASON = re.compile(r"(?i)\b(ssl|tls)\b|certificate")
# ... and, to be useful, says what was wrong with the certificate: an
# untrusted chain, or a name that does not match.
UNTRUSTED_REASON = re.compile(r"(?i)issuer|not trusted|untrusted|verif|"
                              r"self[- ]signed|unknown ca")
NAME_REASON = re.compile(r"(?i)mismatch|host ?name|name")


def tls_bridge(mock, *args, env=None):
    return start_bridge(mock.url, "--token", TOKEN, *FAST, *args, env=env)


def call_ok(b, text="over tls"):
    r = b.post(FLOW_TC, tc(text))
    check_status(r, 200, "call")
    eq(r.json().get("response"), text, "reply")
    s = b.stream(FLOW_TC, tc("abc", streaming=True, parts=3))
    check_status(s, 200, "streaming call")
    eq(s.chunked, True, "chunked stream")
    s.body()


def wait_not_ready_reason(b, timeout=5):
    """/readyz 503 once a connection attempt has failed (the reason is no
    longer 'not connected yet' / 'connecting'); returns the body."""
    deadline = time.monotonic() + T(timeout)
    while True:
        r = b.readyz()
        body = r.json()
        check_status(r, 503, "/readyz")
        if body.get("reason") and body.get("state") == "down" and \
                "not connected yet" not in body["reason"]:
            return body
        if time.monotonic() > deadline:
            raise AssertionError("no failure reason in /readyz: %r" % body)
        time.sleep(0.05)


# ---------------------------------------------------------------------- TLS

@timeout(30)
def test_tls_trusted_ca_file():
    pki = make_pki()
    m = start_tls_mock(pki["good_cert"], pki["good_key"], tokens=[TOKEN])
    b = tls_bridge(m, "--ca-file", pki["ca_a"])
    with m, b:
        r = b.wait_ready(5)
        eq(r.json().get("status"), "ready", "/readyz")
        call_ok(b)
        eq(m.stats()["connections_total"], 1, "TLS connections")


@timeout(30)
def test_tls_untrusted_ca_not_ready_with_tls_reason():
    pki = make_pki()
    # signed by CA B, which nobody gave tgbridge (and no system store has)
    m = start_tls_mock(pki["other_cert"], pki["other_key"], tokens=[TOKEN])
    b = tls_bridge(m, "--ca-file", pki["ca_a"], "--queue-timeout", "1")
    with m, b:
        body = wait_not_ready_reason(b)
        assert TLS_REASON.search(body["reason"]), \
            "/readyz reason does not mention TLS: %r" % body["reason"]
        r = b.post(FLOW_TC, tc("x"))
        own_error(r, 503, "gateway-unavailable")
        eq(m.stats()["connections_total"], 0,
           "WebSocket upgrades the gateway accepted")


@timeout(30)
def test_tls_wrong_hostname_not_ready():
    pki = make_pki()
    # trusted CA, but the certificate is for wrong.example.invalid
    m = start_tls_mock(pki["wrong_cert"], pki["wrong_key"], tokens=[TOKEN])
    b = tls_bridge(m, "--ca-file", pki["ca_a"], "--queue-timeout", "1")
    with m, b:
        body = wait_not_ready_reason(b)
        assert TLS_REASON.search(body["reason"]), \
            "/readyz reason does not mention TLS: %r" % body["reason"]
        own_error(b.post(FLOW_TC, tc("x")), 503, "gateway-unavailable")
        eq(m.stats()["connections_total"], 0,
           "WebSocket upgrades the gateway accepted")


@timeout(30)
def test_tls_by_host_name_checks_the_name_not_the_address():
    """The gateway's name is looked up by tgbridge (src/upstream/resolver.c) and the
    connection goes to the numeric address, but SNI and the certificate check
    still use the name: a certificate for localhost and 127.0.0.1 is right
    for https://localhost and wrong for a name that merely resolves to
    127.0.0.1."""
    pki = make_pki()
    m = start_tls_mock(pki["good_cert"], pki["good_key"], tokens=[TOKEN])
    with m:
        b = start_bridge("https://localhost:%d" % m.port, "--token", TOKEN,
                         *FAST, "--ca-file", pki["ca_a"])
        with b:
            b.wait_ready(5)
            call_ok(b, "by name")
        env = slowdns_env(0)
        m.reset()
        b = start_bridge("https://gw.slow.test:%d" % m.port, "--token", TOKEN,
                         *FAST, "--ca-file", pki["ca_a"], env=env)
        with b:
            body = wait_not_ready_reason(b)
            assert NAME_REASON.search(body["reason"]), \
                "/readyz reason does not name the host name: %r" % \
                body["reason"]
            eq(m.stats()["connections_total"], 0,
               "WebSocket upgrades the gateway accepted")


@timeout(30)
def test_tls_insecure_accepts_untrusted_and_warns():
    pki = make_pki()
    m = start_tls_mock(pki["other_cert"], pki["other_key"], tokens=[TOKEN])
    b = tls_bridge(m, "--insecure")
    with m, b:
        b.wait_ready(5)
        call_ok(b, "insecure")
        assert re.search(r"(?m)\bwarn\b.*--insecure.*NOT verified",
                         b.log()), "no loud --insecure warning:\n%s" % \
            b.log()[-2000:]
    # ... and also against a wrong host name
    m2 = start_tls_mock(pki["wrong_cert"], pki["wrong_key"], tokens=[TOKEN])
    b2 = tls_bridge(m2, "--insecure")
    with m2, b2:
        b2.wait_ready(5)
        call_ok(b2, "insecure, wrong name")


@timeout(30)
def test_tls_ca_only_ignores_the_system_store():
    pki = make_pki()
    # The "system store" is CA B (OpenSSL reads SSL_CERT_FILE for its
    # default paths); the gateway's certificate is signed by B.
    env = {"SSL_CERT_FILE": pki["ca_b"], "SSL_CERT_DIR": "/nonexistent"}
    m = start_tls_mock(pki["other_cert"], pki["other_key"], tokens=[TOKEN])
    with m:
        b = tls_bridge(m, "--ca-file", pki["ca_a"], env=env)
        with b:
            b.wait_ready(5)          # --ca-file adds to the system store
            call_ok(b, "system store")
        b2 = tls_bridge(m, "--ca-file", pki["ca_a"], "--ca-only", env=env)
        with b2:
            body = wait_not_ready_reason(b2)
            assert TLS_REASON.search(body["reason"]), \
                "/readyz reason does not mention TLS: %r" % body["reason"]
            eq(m.stats()["connections_total"], 1,
               "upgrades (only the first bridge's)")
    # --ca-only with the right CA works
    m3 = start_tls_mock(pki["good_cert"], pki["good_key"], tokens=[TOKEN])
    b3 = tls_bridge(m3, "--ca-file", pki["ca_a"], "--ca-only", env=env)
    with m3, b3:
        b3.wait_ready(5)
        call_ok(b3, "ca-only")


@timeout(30)
def test_tls_failure_reason_says_what_is_wrong_with_the_certificate():
    pki = make_pki()
    m = start_tls_mock(pki["other_cert"], pki["other_key"], tokens=[TOKEN])
    m2 = start_tls_mock(pki["wrong_cert"], pki["wrong_key"], tokens=[TOKEN])
    with m, m2:
        b = tls_bridge(m, "--ca-file", pki["ca_a"])
        b2 = tls_bridge(m2, "--ca-file", pki["ca_a"])
        with b, b2:
            untrusted = wait_not_ready_reason(b)["reason"]
            wrong_name = wait_not_ready_reason(b2)["reason"]
        assert UNTRUSTED_REASON.search(untrusted), \
            "untrusted issuer: /readyz reason %r does not say the " \
            "certificate is not trusted" % untrusted
        assert NAME_REASON.search(wrong_name), \
            "wrong host name: /readyz reason %r does not say the " \
            "certificate's name does not match" % wrong_name


@timeout(30)
def test_tls_failure_logged_once_not_per_retry():
    pki = make_pki()
    m = start_tls_mock(pki["other_cert"], pki["other_key"], tokens=[TOKEN])
    b = start_bridge(m.url, "--token", TOKEN, "--reconnect-min", "0.05",
                     "--reconnect-max", "0.2")
    with m, b:
        wait_not_ready_reason(b)
        time.sleep(2)           # ~10 attempts at --reconnect-max 0.2
        n = log_count(b, r"\b(warn|error)\b")
        assert n <= 2, "%d warning/error lines for one state change " \
            "(README: each state change is logged once):\n%s" % (
                n, b.log()[-2500:])


# -------------------------------------------------------------------- proxy

@timeout(30)
def test_proxy_flag_tunnels_through_connect():
    m = start_mock(tokens=[TOKEN])
    with m, ConnectProxy() as p:
        b = start_bridge(m.url, "--token", TOKEN, *FAST, "--proxy", p.url)
        with b:
            b.wait_ready(5)
            call_ok(b, "via proxy")
            cs = p.connects()
            eq(len(cs), 1, "CONNECTs the proxy saw")
            eq(cs[0][0].split()[1], "127.0.0.1:%d" % m.port, "CONNECT target")
            eq(len(p.requests), 1, "requests the proxy saw")
            eq(m.stats()["connections_total"], 1, "gateway connections")
            b.wait_log(r"through the HTTP proxy 127\.0\.0\.1:%d" % p.port)
            # a reconnect goes through the proxy again
            m.drop()
            b.wait_unready(5)
            b.wait_ready(5)
            eq(len(p.connects()), 2, "CONNECTs after a reconnect")


@timeout(30)
def test_proxy_with_credentials_to_tls_gateway():
    pki = make_pki()
    m = start_tls_mock(pki["good_cert"], pki["good_key"], tokens=[TOKEN])
    with m, ConnectProxy() as p:
        url = "http://proxyuser:proxy-pw-7731@127.0.0.1:%d" % p.port
        b = tls_bridge(m, "--ca-file", pki["ca_a"], "--proxy", url)
        with b:
            b.wait_ready(5)
            call_ok(b, "tls via proxy")
            cs = p.connects()
            eq(len(cs), 1, "CONNECTs the proxy saw")
            eq(cs[0][0].split()[1], "127.0.0.1:%d" % m.port, "CONNECT target")
            auth = cs[0][1].get("proxy-authorization", "")
            scheme, _, cred = auth.partition(" ")
            eq(scheme.lower(), "basic", "Proxy-Authorization scheme")
            eq(base64.b64decode(cred).decode(), "proxyuser:proxy-pw-7731",
               "Proxy-Authorization credentials")
            assert "proxy-pw-7731" not in b.log(), \
                "proxy password in the log:\n%s" % b.log()[-2000:]


@timeout(30)
def test_env_http_proxy_does_not_capture_loopback_gateway():
    dead = "http://127.0.0.1:%d" % closed_port()
    m = start_mock(tokens=[TOKEN])
    env = {"http_proxy": dead, "HTTP_PROXY": dead, "https_proxy": dead,
           "HTTPS_PROXY": dead, "no_proxy": None, "NO_PROXY": None}
    b = start_bridge(m.url, "--token", TOKEN, *FAST, env=env)
    with m, b:
        b.wait_ready(5)
        call_ok(b, "not proxied")
        assert "through the HTTP proxy" not in b.log(), b.log()[-2000:]
    # the same for a wss:// loopback gateway and https_proxy
    pki = make_pki()
    tm = start_tls_mock(pki["good_cert"], pki["good_key"], tokens=[TOKEN])
    tb = tls_bridge(tm, "--ca-file", pki["ca_a"], env=env)
    with tm, tb:
        tb.wait_ready(5)
        call_ok(tb, "tls not proxied")
        assert "through the HTTP proxy" not in tb.log(), tb.log()[-2000:]


def _non_loopback_ipv4():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("192.0.2.1", 9))      # no packet is sent
        ip = s.getsockname()[0]
    except OSError:
        return None
    finally:
        s.close()
    return None if ip.startswith("127.") or ip == "0.0.0.0" else ip


@timeout(30)
def test_env_http_proxy_used_for_other_hosts_and_no_proxy_honoured():
    ip = _non_loopback_ipv4()
    if not ip:
        skip("no non-loopback IPv4 address on this machine")
    m = start_mock(tokens=[TOKEN], extra=["--host", ip])
    gw = "http://%s:%d" % (ip, m.port)
    with m, ConnectProxy() as p:
        env = {"http_proxy": p.url, "HTTP_PROXY": None, "no_proxy": None,
               "NO_PROXY": None}
        b = start_bridge(gw, "--token", TOKEN, *FAST, env=env)
        with b:
            b.wait_ready(5)
            call_ok(b, "env proxy")
            cs = p.connects()
            eq(len(cs), 1, "CONNECTs through the http_proxy from the env")
            eq(cs[0][0].split()[1], "%s:%d" % (ip, m.port), "CONNECT target")
        env["no_proxy"] = "localhost,%s" % ip
        b2 = start_bridge(gw, "--token", TOKEN, *FAST, env=env)
        with b2:
            b2.wait_ready(5)
            call_ok(b2, "no_proxy")
            eq(len(p.connects()), 1, "CONNECTs with the host in no_proxy")
