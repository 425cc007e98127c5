"""--policy and callers' gateway identities across reloads (issue 17,
docs/security.md "Policies"): a new policy applies to new calls; the pool of a
caller whose key the new policy no longer gives drains (its connection closes);
a caller's upstream_token_file is watched like the policy file itself."""

import json
import os
import signal

from harness import FLOW_TC, check_status, start_bridge, start_mock, tc, timeout, tmpfile, wait_until

GW = "tg_reload_gateway_own_71"
K1 = "tg_reload_ci_key_one_72"
K2 = "tg_reload_ci_key_two_73"
CI = "tgb_reload_local_ci_74"


def doc(key_file):
    return {"default": "deny", "callers": [
        {"name": "ci", "match": {"token_file": tmpfile(CI.encode())},
         "allow": [{"service": "*"}], "upstream_token_file": key_file}]}


def sockets_with(m, key, open_only=True):
    return [c for c in m.stats()["connections"]
            if c.get("last_auth_token") == key and (c["open"] or not open_only)]


def call(b):
    return b.post(FLOW_TC, tc("hi"), headers={"Authorization": "Bearer " + CI})


@timeout(60)
def test_sighup_moves_a_caller_to_its_new_key_and_drains_the_old_pool():
    m = start_mock(tokens=[GW, K1, K2])
    policy = tmpfile(json.dumps(doc(tmpfile(K1.encode()))).encode(), suffix=".json")
    b = start_bridge(m.url, "--token", GW, "--policy", policy)
    b.wait_ready()
    check_status(call(b), 200, "a call with the first key")
    eq_sockets = sockets_with(m, K1)
    assert len(eq_sockets) == 1 and eq_sockets[0]["requests_received"] == 1, m.stats()["connections"]
    with open(policy, "w") as f:
        json.dump(doc(tmpfile(K2.encode())), f)
    os.kill(b.proc.pid, signal.SIGHUP)
    b.wait_log(r"no longer gives caller ci this gateway identity", timeout=10)
    wait_until(lambda: not sockets_with(m, K1), timeout=10, what="the old key's socket closed")
    check_status(call(b), 200, "a call after the reload")
    assert [c["requests_received"] for c in sockets_with(m, K2)] == [1], m.stats()["connections"]
    own = sockets_with(m, GW)
    assert own and all(c["requests_received"] == 0 for c in own), "a caller's call went out with tgbridge's key"
    log = b.log()
    assert K1 not in log and K2 not in log, "a key in the log"


@timeout(60)
def test_a_rewritten_upstream_token_file_is_picked_up_without_sighup():
    m = start_mock(tokens=[GW, K1, K2])
    key_file = tmpfile(K1.encode())
    policy = tmpfile(json.dumps(doc(key_file)).encode(), suffix=".json")
    b = start_bridge(m.url, "--token", GW, "--policy", policy)
    b.wait_ready()
    check_status(call(b), 200, "a call with the first key")
    tmp = key_file + ".new"
    with open(tmp, "w") as f:
        f.write(K2 + "\n")
    os.rename(tmp, key_file)  # as a Secret is rotated: replaced, not written in place
    wait_until(lambda: not sockets_with(m, K1), timeout=10, what="the old key's socket closed")
    check_status(call(b), 200, "a call with the rotated key")
    assert [c["requests_received"] for c in sockets_with(m, K2)] == [1], m.stats()["connections"]
