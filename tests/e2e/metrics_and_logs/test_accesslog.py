"""The access log (--access-log, default on) and --log-format json: one line per
finished call on every front end, with the same field names everywhere, never a body
or a credential; JSON lines that a log shipper can parse."""

import json
import os
import tempfile

from harness import FLOW_TC, T, check_status, eq, start_bridge, start_mock, tc, timeout, wait_until
from lineclient import LineClient

TOKEN = "tg_access_token_6a2b"
SECRET_BODY = "a body that must never be logged 4417"


def access_lines(b, json_lines=False):
    out = []
    for line in b.log().splitlines():
        if json_lines:
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if obj.get("msg") == "access":
                out.append(obj)
        elif " access " in line or line.startswith("access "):
            fields = {}
            for part in line.split(" access ", 1)[1].split(" "):
                k, _, v = part.partition("=")
                fields[k] = v.strip('"')
            out.append(fields)
    return out


def line_call(path, obj):
    c = LineClient(path)
    c.send_raw((json.dumps(obj) + "\n").encode())
    got = []
    while True:
        line = c.raw_line(allow_eof=True)
        if line is None:
            break
        msg = json.loads(line)
        got.append(msg)
        if msg.get("complete") or "error" in msg:
            break
    c.close()
    return got


@timeout(60)
def test_one_access_line_per_call_on_every_front_end():
    sock = os.path.join(tempfile.mkdtemp(prefix="tgb-acc-"), "s.sock")
    m = start_mock("v2d", tokens=[TOKEN])
    b = start_bridge(m.url, "--token", TOKEN, "--unix", sock, "--request-timeout", "0.5")
    with m, b:
        b.wait_ready()
        check_status(b.post(FLOW_TC, tc(SECRET_BODY)), 200, "unary")
        s = b.stream(FLOW_TC, tc("abcdef", streaming=True, parts=3))
        s.body()
        b.post(FLOW_TC, tc("never", never=True))
        line_call(sock, {"id": "l1", "service": "text-completion", "flow": "default", "request": tc("via line")})
        wait_until(lambda: len(access_lines(b)) >= 4, what="four access lines")
        lines = access_lines(b)
        unary, stream, failed, line = lines[:4]
        eq((unary["frontend"], unary["method"], unary["service"], unary["flow"], unary["status"],
            unary["outcome"]), ("rest", "POST", "text-completion", "default", "200", "ok"), "unary call")
        assert unary["route"] == FLOW_TC and unary["upstream_id"].startswith("tgb-"), unary
        assert float(unary["duration_s"]) > 0 and int(unary["bytes_in"]) > 0 and int(unary["bytes_out"]) > 0, unary
        assert "first_part_s" not in unary, "a unary call has no first part"
        assert 0 < float(stream["first_part_s"]) <= float(stream["duration_s"]), stream
        eq((failed["status"], failed["outcome"], failed["error"]), ("504", "failed", "request-timeout"),
           "a call tgbridge failed")
        eq((line["frontend"], line["service"], line["outcome"]), ("line", "text-completion", "ok"), "line call")
        assert SECRET_BODY not in b.log() and TOKEN not in b.log(), "a body or the token in the log"
        # probes are not calls
        b.get("/healthz")
        b.get("/metrics")
        assert not any(l.get("route") in ("/healthz", "/metrics") for l in access_lines(b)), "probes logged"


@timeout(60)
def test_access_log_off_and_json_log_format():
    m = start_mock("v2d", tokens=[TOKEN])
    with m:
        b = start_bridge(m.url, "--token", TOKEN, "--access-log", "off")
        with b:
            b.wait_ready()
            check_status(b.post(FLOW_TC, tc("quiet")), 200, "call")
            check_status(b.get("/status"), 200, "status")
            eq(access_lines(b), [], "access lines with --access-log off")
        b = start_bridge(m.url, "--token", TOKEN, "--log-format", "json")
        with b:
            b.wait_ready()
            check_status(b.post(FLOW_TC, tc("loud")), 200, "call")
            wait_until(lambda: access_lines(b, json_lines=True), what="a JSON access line")
            rec = access_lines(b, json_lines=True)[0]
            eq((rec["frontend"], rec["status"], rec["outcome"], rec["service"]), ("rest", 200, "ok",
                                                                                  "text-completion"), "record")
            assert isinstance(rec["duration_s"], float) and isinstance(rec["bytes_out"], int), rec
            for line in b.log().splitlines():
                if not line.startswith("{"):
                    continue  # the harness's own marker lines
                obj = json.loads(line)
                assert {"ts", "level", "pid", "msg"} <= set(obj), obj


@timeout(60)
def test_requests_refused_at_the_door_get_their_access_line():
    """Refused before a call begins (a web origin, a wrong local token, a malformed
    framing, the policy on a pass-through route): each is a line like every call's."""
    m = start_mock("v2d", tokens=[TOKEN])
    local = "tgb_access_local_token_93c1"
    token_file = os.path.join(tempfile.mkdtemp(prefix="tgb-acc-"), "client.token")
    with open(token_file, "w") as f:
        f.write(local)
    b = start_bridge(m.url, "--token", TOKEN, "--client-token-file", token_file)
    with m, b:
        b.wait_ready()
        auth = {"Authorization": "Bearer " + local}
        eq(b.post(FLOW_TC, tc("x"), headers=dict(auth, Origin="http://evil.example")).status, 403, "origin")
        eq(b.post(FLOW_TC, tc("x"), headers={"Authorization": "Bearer wrong-token"}).status, 401, "token")
        eq(b.post(FLOW_TC, tc("x"), headers=dict(auth, **{"Transfer-Encoding": "chunked",
                                                         "Content-Length": "5"})).status, 400, "framing")
        wait_until(lambda: len(access_lines(b)) >= 3, what="three access lines")
        got = [(l["status"], l["outcome"], l["error"], l["route"]) for l in access_lines(b)]
        eq(got[:3], [("403", "failed", "forbidden-origin", FLOW_TC), ("401", "failed", "auth-required", FLOW_TC),
                     ("400", "failed", got[2][2], FLOW_TC)], "refusals logged")
        assert local not in b.log() and "wrong-token" not in b.log(), "a token in the log"
