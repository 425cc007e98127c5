"""Watched secrets (issue 18, item 4): the token file and the client token file are
watched through their directory, so a write in place, a file replaced by rename and
Kubernetes' `..data` symlink swap all take effect within 2 s without SIGHUP, doing
what SIGHUP does (in-band re-authentication on V2, make-before-break rotation on V1).
A file that vanishes or is emptied keeps the old value, and says so in the log."""

import os
import tempfile
import threading
import time

from harness import (FLOW_TC, check_status, eq, start_bridge, start_mock, tc,
                     timeout, wait_until)

FAST = ("--reconnect-min", "0.05", "--reconnect-max", "0.3")


def secret_dir():
    return tempfile.mkdtemp(prefix="tgb-secret-")


def write_in_place(path, content):
    with open(path, "w") as f:
        f.write(content)


def replace_by_rename(path, content):
    with open(path + ".tmp", "w") as f:
        f.write(content)
    os.rename(path + ".tmp", path)


class K8sSecret:
    """A Secret volume as the kubelet writes it: token -> ..data/token, ..data ->
    ..<timestamp>, and an update is a new timestamped directory, a ..data_tmp symlink
    renamed over ..data, and the old directory removed."""

    def __init__(self, token):
        self.dir = secret_dir()
        self.n = 0
        self.current = None
        self.update(token)
        os.symlink("..data/token", os.path.join(self.dir, "token"))
        self.path = os.path.join(self.dir, "token")

    def update(self, token):
        self.n += 1
        ts = "..2026_12_07_19_%02d_00.%08d" % (self.n, 1000 + self.n)
        os.mkdir(os.path.join(self.dir, ts))
        with open(os.path.join(self.dir, ts, "token"), "w") as f:
            f.write(token)
        tmp = os.path.join(self.dir, "..data_tmp")
        os.symlink(ts, tmp)
        os.rename(tmp, os.path.join(self.dir, "..data"))
        if self.current:
            old = os.path.join(self.dir, self.current)
            os.unlink(os.path.join(old, "token"))
            os.rmdir(old)
        self.current = ts


def open_tokens(m, field):
    return {c[field] for c in m.stats()["connections"] if c["open"]}


def wait_token(m, field, token, what):
    wait_until(lambda: open_tokens(m, field) == {token}, timeout=2,
               what="%s: every open gateway connection on the new token (have %r)" % (what, open_tokens(m, field)))


@timeout(60)
def test_token_file_rewritten_in_place_is_used_within_2s():
    t1, t2 = "tg_watch_inplace_first_11", "tg_watch_inplace_second_12"
    tf = os.path.join(secret_dir(), "token")
    write_in_place(tf, t1 + "\n")
    m = start_mock("v2d", tokens=[t1, t2])
    b = start_bridge(m.url, "--token-file", tf, *FAST)
    with m, b:
        b.wait_ready()
        write_in_place(tf, t2 + "\n")
        wait_token(m, "last_auth_token", t2, "written in place")
        eq(m.stats()["connections_total"], 1, "connections (re-authenticated in-band, not reconnected)")
        check_status(b.post(FLOW_TC, tc("after")), 200, "a call afterwards")
        assert t1 not in b.log() and t2 not in b.log(), "a token in the log"


@timeout(60)
def test_kubernetes_data_symlink_swap_is_picked_up():
    t1, t2, t3 = "tg_watch_k8s_first_21", "tg_watch_k8s_second_22", "tg_watch_k8s_third_23"
    sec = K8sSecret(t1 + "\n")
    m = start_mock("v2d", tokens=[t1, t2, t3])
    b = start_bridge(m.url, "--token-file", sec.path, *FAST)
    with m, b:
        b.wait_ready()
        eq(open_tokens(m, "last_auth_token"), {t1}, "the first token")
        sec.update(t2 + "\n")
        wait_token(m, "last_auth_token", t2, "the first ..data swap")
        sec.update(t3 + "\n")
        wait_token(m, "last_auth_token", t3, "the second ..data swap")
        check_status(b.post(FLOW_TC, tc("after")), 200, "a call afterwards")


@timeout(60)
def test_token_file_replaced_by_rename_rotates_a_v1_connection():
    t1, t2 = "v1-watch-rename-first-31", "v1-watch-rename-second-32"
    tf = os.path.join(secret_dir(), "token")
    write_in_place(tf, t1 + "\n")
    m = start_mock("v1b")  # records ?token= per socket
    b = start_bridge(m.url, "--token-file", tf, "--auth", "query", *FAST)
    with m, b:
        b.wait_ready()
        replace_by_rename(tf, t2 + "\n")
        wait_token(m, "query_token", t2, "replaced by rename")
        check_status(b.post(FLOW_TC, tc("after")), 200, "a call afterwards")


@timeout(60)
def test_same_content_rewritten_does_not_rotate():
    t1 = "tg_watch_touch_only_41"
    tf = os.path.join(secret_dir(), "token")
    write_in_place(tf, t1 + "\n")
    m = start_mock("v1b")
    b = start_bridge(m.url, "--token-file", tf, "--auth", "query", *FAST)
    with m, b:
        b.wait_ready()
        replace_by_rename(tf, t1 + "\n")
        os.utime(tf)
        time.sleep(1)
        eq(m.stats()["connections_total"], 1, "connections (nothing rotated)")
        assert "changed" not in b.log(), b.log()


def reconnect(m, b, nth):
    """The gateway drops us; tgbridge connects again (re-reading the token file)."""
    m.drop()
    m.wait_stats(lambda x: x["connections_open"] >= 1 and x["auth_failed"] + x["auth_ok"] >= nth,
                 what="connection %d authenticated (or refused)" % nth)
    b.wait_ready()


@timeout(60)
def test_emptied_or_removed_token_file_keeps_the_old_token():
    t1 = "tg_watch_keep_old_51"
    tf = os.path.join(secret_dir(), "token")
    write_in_place(tf, t1 + "\n")
    m = start_mock("v2d", tokens=[t1])
    b = start_bridge(m.url, "--token-file", tf, *FAST)
    with m, b:
        b.wait_ready()
        write_in_place(tf, "")
        b.wait_log(r"changed: token file \S+ is empty; keeping the current token", timeout=2)
        check_status(b.post(FLOW_TC, tc("emptied")), 200, "a call with the file empty")
        # a new connection (the gateway dropped us) still presents the old token
        reconnect(m, b, 2)
        check_status(b.post(FLOW_TC, tc("reconnected")), 200, "a call after a reconnect with the file empty")
        eq(m.stats()["auth_failed"], 0, "auth failures")
        os.unlink(tf)
        b.wait_log(r"changed: cannot open token file \S+: No such file or directory; keeping the current token",
                   timeout=2)
        reconnect(m, b, 3)
        check_status(b.post(FLOW_TC, tc("removed")), 200, "a call after a reconnect with the file gone")
        eq(m.stats()["auth_failed"], 0, "auth failures")
        eq(open_tokens(m, "last_auth_token"), {t1}, "the token in use")


@timeout(60)
def test_client_token_file_change_requires_the_new_local_token():
    gw = "tg_watch_client_gateway_61"
    old, new = "local-watch-old-62", "local-watch-new-63"
    tf = os.path.join(secret_dir(), "client-token")
    write_in_place(tf, old + "\n")
    m = start_mock("v2d", tokens=[gw])
    b = start_bridge(m.url, "--token", gw, *FAST, "--client-token-file", tf)
    with m, b:
        b.wait_ready()

        def call(tok):
            return b.post(FLOW_TC, tc("c"), headers={"Authorization": "Bearer " + tok}).status
        eq(call(old), 200, "the old local token before the change")
        replace_by_rename(tf, new + "\n")
        wait_until(lambda: call(new) == 200, timeout=2, what="the new local token accepted")
        eq(call(old), 401, "the old local token after the change")
        write_in_place(tf, "")
        b.wait_log(r"changed: --client-token-file \S+ is empty; keeping the client token as it was", timeout=2)
        eq(call(new), 200, "the kept local token")


def _swap_during_calls(era, field, extra):
    tokens = ["tg_watch_swap_%s_%d_token" % (era, i) for i in range(6)]
    sec = K8sSecret(tokens[0] + "\n")
    m = start_mock(era, tokens=tokens if era.startswith("v2") else ())
    b = start_bridge(m.url, "--token-file", sec.path, *extra, *FAST, "--drain-timeout", "10")
    with m, b:
        b.wait_ready()
        lock = threading.Lock()
        results = []
        nxt = [0]
        swaps = []

        def worker():
            while True:
                with lock:
                    i = nxt[0]
                    nxt[0] += 1
                if i >= 1000:
                    return
                r = b.post(FLOW_TC, tc("s%d" % i, first_delay=0.005), timeout=30)
                ok = r.status == 200 and r.json().get("response") == "s%d" % i
                with lock:
                    results.append((i, r.status, ok))
                    done = len(results)
                # a swap every 150 calls, while the rest run
                if done % 150 == 0 and len(swaps) < 5 and done // 150 > len(swaps):
                    with lock:
                        if done // 150 > len(swaps):
                            swaps.append(done)
                            sec.update(tokens[len(swaps)] + "\n")

        ts = [threading.Thread(target=worker) for _ in range(8)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(120)
        eq(len(swaps), 5, "token swaps during the calls")
        failed = [(i, s) for i, s, ok in results if not ok]
        eq(len(results), 1000, "calls answered")
        eq(failed, [], "failed calls")
        wait_token(m, field, tokens[5], "after 5 swaps")
        check_status(b.post(FLOW_TC, tc("after")), 200, "a call afterwards")


@timeout(180)
def test_token_swapped_5_times_during_1000_calls_v2_in_band():
    _swap_during_calls("v2d", "last_auth_token", ())


@timeout(180)
def test_token_swapped_5_times_during_1000_calls_v1_rotation():
    _swap_during_calls("v1b", "query_token", ("--auth", "query"))


@timeout(60)
def test_sighup_with_an_empty_token_file_keeps_the_old_token():
    import signal
    t1 = "tg_watch_sighup_empty_71"
    tf = os.path.join(secret_dir(), "token")
    write_in_place(tf, t1 + "\n")
    m = start_mock("v2d", tokens=[t1])
    b = start_bridge(m.url, "--token-file", tf, *FAST)
    with m, b:
        b.wait_ready()
        write_in_place(tf, "\n")
        os.kill(b.pid, signal.SIGHUP)
        b.wait_log(r"SIGHUP: token file \S+ is empty; keeping the current token", timeout=2)
        reconnect(m, b, 2)
        check_status(b.post(FLOW_TC, tc("after")), 200, "a call after SIGHUP and a reconnect")
        eq(m.stats()["auth_failed"], 0, "auth failures")
        eq(open_tokens(m, "last_auth_token"), {t1}, "the token in use")


@timeout(60)
def test_ca_file_replaced_is_used_by_the_next_connection():
    from harness import make_pki, start_tls_mock
    pki = make_pki()
    tok = "tg_watch_ca_token_81"
    caf = os.path.join(secret_dir(), "ca.pem")
    with open(pki["ca_a"]) as f:
        write_in_place(caf, f.read())
    # signed by CA B: untrusted until the CA file says otherwise
    m = start_tls_mock(pki["other_cert"], pki["other_key"], tokens=[tok])
    b = start_bridge(m.url, "--token", tok, *FAST, "--ca-file", caf, "--ca-only")
    with m, b:
        wait_until(lambda: b.readyz().status == 503 and "not connected yet" not in b.readyz().json()["reason"],
                   timeout=5, what="a failed TLS handshake")
        with open(pki["ca_b"]) as f:
            replace_by_rename(caf, f.read())
        b.wait_ready(timeout=2.5)
        check_status(b.post(FLOW_TC, tc("trusted now")), 200, "a call once the CA file trusts the gateway")
        write_in_place(caf, "")
        b.wait_log(r"changed: --ca-file \S+ cannot be read or holds no certificate; keeping the CAs as they were",
                   timeout=2)
        reconnect(m, b, 2)
        check_status(b.post(FLOW_TC, tc("kept")), 200, "a call on a new connection with the CA file empty")
