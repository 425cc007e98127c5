"""The Unix-domain socket (README "Unix socket" and "Line protocol"): the
line protocol (NDJSON envelopes without authentication), HTTP on the same
socket, the socket file's life cycle and access control, and the examples in
examples/ run against a live tgbridge.

Every test starts the mock gateway and the real binary with `--unix PATH`
inside a fresh temporary directory, talks to it over a real AF_UNIX socket
and removes the directory afterwards."""

import errno
import fcntl
import grp
import http.client
import json
import os
import re
import shutil
import socket
import stat
import struct
import subprocess
import tempfile
import termios
import threading
import time

from harness import (BIN, FLOW_TC, PYTHON, ROOT, WRAPPER, Bridge, Response,
                     T, bridge_env, check_status, closed_port, eq, flow_path,
                     own_error, run_bridge, skip, start_bridge, start_mock,
                     tc, timeout, wait_until)
from lineclient import (LineClient, UnixHTTPConnection, compact, envelope, idkey,
                        unix_request)

TOKEN = "tg_unix_token_51d7"
TC = ("text-completion", "default")
NDJSON = "application/x-ndjson"
NOBODY = 65534          # uid of "nobody" and gid of "nogroup" on Debian


# ----------------------------------------------------------------- helpers

def http_one_write(where, method, url, body=None, headers=None,
                   timeout=30):
    """An HTTP/1.1 request written in ONE write (head and body together),
    then the response read; `where` is a Unix socket path or a TCP port.

    (tgbridge answers a body over --max-body (413) as soon as it has the
    head, then closes: a client that writes its body separately, as
    http.client does, may get EPIPE on a Unix socket instead of the
    response, where TCP hides that. This helper keeps the comparison of
    statuses deterministic. Other head-decided errors - 404, 405, 501 - read
    the body first: test_unix_route_errors_read_the_body_and_keep_alive.)"""
    hdrs = {"Host": "localhost", "Connection": "close"}
    if body is not None:
        hdrs["Content-Type"] = "application/json"
        hdrs["Content-Length"] = str(len(body))
    hdrs.update(headers or {})
    head = "%s %s HTTP/1.1\r\n" % (method, url) + "".join(
        "%s: %s\r\n" % kv for kv in hdrs.items()) + "\r\n"
    if isinstance(where, str):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(T(timeout))
        sock.connect(where)
    else:
        sock = socket.create_connection(("127.0.0.1", where),
                                        timeout=T(timeout))
    t0 = time.monotonic()
    try:
        sock.sendall(head.encode() + (body or b""))
        r = http.client.HTTPResponse(sock, method=method)
        r.begin()
        return Response(r.status, r.headers, r.read(),
                        time.monotonic() - t0)
    finally:
        sock.close()


class Env:
    """Mock gateway + tgbridge serving a Unix socket in a fresh directory.
    Line clients made with .client() are closed before tgbridge is stopped
    (and must have nothing in flight by then)."""

    def __init__(self, *args, era="v2d", mock_extra=(), dir_mode=None):
        self.dir = tempfile.mkdtemp(prefix="tgb-unix-")
        self.path = os.path.join(self.dir, "tgb.sock")
        self.clients = []
        self.mock = self.bridge = None
        try:
            if dir_mode is not None:
                os.chmod(self.dir, dir_mode)
            v2 = era.startswith("v2")
            self.mock = start_mock(era, tokens=[TOKEN] if v2 else (),
                                   extra=mock_extra)
            auth = ("--token", TOKEN) if v2 else ()
            self.bridge = start_bridge(self.mock.url, *auth, "--unix",
                                       self.path, *args)
        except BaseException:
            self._teardown(None)
            raise

    def client(self, timeout=10):
        c = LineClient(self.path, timeout)
        self.clients.append(c)
        return c

    def ready(self):
        self.bridge.wait_ready()
        return self

    def _teardown(self, exc_type):
        try:
            for c in self.clients:
                c.close()
            if self.bridge is not None:
                self.bridge.__exit__(exc_type, None, None)
        finally:
            try:
                if self.mock is not None:
                    self.mock.__exit__(exc_type, None, None)
            finally:
                shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *rest):
        self._teardown(exc_type)
        return False


def stream_text(replies):
    """The text of a streamed text-completion: the concatenated `response`
    strings of its reply lines, after checking their shape (all but the last
    complete:false, last complete:true, each carries `response`)."""
    assert replies, "no replies"
    for r in replies[:-1]:
        eq(r.get("complete"), False, "complete on a non-final line %r" % r)
    last = replies[-1]
    assert "error" not in last, "error reply: %r" % (last,)
    eq(last.get("complete"), True, "complete on the last line")
    for r in replies:
        eq(sorted(r), ["complete", "id", "response"], "reply keys")
    return "".join(r["response"].get("response", "") for r in replies)


def check_error_line(msg, id, etype, what=""):
    """The one error shape: {"id":…,"error":{"type","message"},"complete":
    true}, nothing else."""
    w = (what + ": ") if what else ""
    assert isinstance(msg, dict), "%snot an object: %r" % (w, msg)
    eq(sorted(msg), ["complete", "error", "id"], w + "error line keys (%r)"
       % (msg,))
    eq(msg["id"], id, w + "id")
    eq(msg["complete"], True, w + "complete")
    err = msg["error"]
    assert isinstance(err, dict), "%serror is not an object: %r" % (w, msg)
    eq(sorted(err), ["message", "type"], w + "error keys (%r)" % (msg,))
    eq(err["type"], etype, w + "error.type (%r)" % (msg,))
    assert isinstance(err["message"], str) and err["message"], \
        "%serror.message empty: %r" % (w, msg)
    return err


CHILD = r"""
import json, socket, sys
path, lines = sys.argv[1], json.loads(sys.argv[2])
want, tmo = int(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(tmo)
try:
    s.connect(path)
except OSError as e:
    print(json.dumps({"connect_errno": e.errno})); sys.exit(0)
for ln in lines:
    s.sendall(ln.encode() + b"\n")
out, buf, end = [], b"", None
while len(out) < want:
    try:
        d = s.recv(65536)
    except OSError as e:
        end = "errno %d" % e.errno; break
    if not d:
        end = "eof"; break
    buf += d
    while b"\n" in buf and len(out) < want:
        ln, buf = buf.split(b"\n", 1)
        out.append(json.loads(ln))
print(json.dumps({"lines": out, "end": end, "rest": buf.decode("latin-1")}))
"""


def need_root():
    if os.geteuid() != 0:
        skip("needs root (to chown the socket / to connect as another uid)")


def as_user(path, lines=(), want=10 ** 6, uid=NOBODY, gid=NOBODY,
            timeout=10):
    """Connect to `path` as uid/gid (a forked child: the tests run as
    root), send `lines`, read up to `want` reply lines or to EOF. Returns
    {"connect_errno": n} or {"lines": [...], "end": "eof"|None|"errno n"}."""
    need_root()
    p = subprocess.run([PYTHON, "-c", CHILD, path, json.dumps(list(lines)),
                        str(want), str(T(timeout))],
                       user=uid, group=gid, extra_groups=[], cwd="/",
                       capture_output=True, text=True, timeout=T(timeout + 10))
    assert p.returncode == 0 and p.stdout.strip(), \
        "child as uid %d failed (rc=%d): %s %s" % (uid, p.returncode,
                                                   p.stdout, p.stderr)
    return json.loads(p.stdout)


# ------------------------------------------------------- the line protocol

def test_unix_ping_pong():
    with Env() as e:
        c = e.client()
        c.send(b'{"type":"ping"}')
        eq(c.raw_line(), b'{"type":"pong"}', "pong line, byte-exact")
        # pings work back to back and before the upstream is even needed
        c.send(b'{"type":"ping"}\n{"type":"ping"}\n')
        eq(c.raw_line(), b'{"type":"pong"}', "second pong")
        eq(c.raw_line(), b'{"type":"pong"}', "third pong")


def test_unix_control_lines_other_than_ping_are_refused():
    with Env() as e:
        c = e.client()
        # the gateway's auth frame must not be accepted (tgbridge
        # authenticates upstream itself), nor any unknown type
        c.send(compact({"type": "auth", "token": "tg_x"}))
        check_error_line(c.line(), None, "bad-request", "auth frame")
        c.send(compact({"id": "t1", "type": "nonsense"}))
        check_error_line(c.line(), "t1", "bad-request", "unknown type")
        c.ping()


def test_unix_streaming_request_reply_shape():
    with Env() as e:
        e.ready()
        c = e.client()
        c.send(envelope("a1", prompt="the quick brown fox", streaming=True,
                        mock={"parts": 4}))
        got, _ = c.collect(["a1"])
        replies = got[idkey("a1")]
        eq(len(replies), 5, "4 parts and the final frame")
        eq(stream_text(replies), "the quick brown fox", "streamed text")
        assert replies[-1]["response"].get("end_of_stream") is True, replies
        # non-streaming: exactly one line, complete:true
        c.send(envelope("a2", prompt="unary"))
        got, _ = c.collect(["a2"])
        eq(len(got[idkey("a2")]), 1, "unary reply lines")
        eq(got[idkey("a2")][0]["response"]["response"], "unary", "unary text")
        c.ping()
        # the id may be reused once its reply is complete
        c.send(envelope("a1", prompt="again"))
        got, _ = c.collect(["a1"])
        eq(got[idkey("a1")][-1]["response"]["response"], "again",
           "reused id after complete")


def test_unix_ids_echoed_verbatim():
    with Env() as e:
        e.ready()
        c = e.client()
        ids = [7, "s\"q\\uote\n", {"k": [1, 2]}, [3, "x"], True, 0]
        for i, v in enumerate(ids):
            c.send(envelope(v, prompt="p%d" % i))
        got, _ = c.collect(ids)
        for i, v in enumerate(ids):
            eq(got[idkey(v)][-1]["response"]["response"], "p%d" % i,
               "reply for id %r" % (v,))
        # "a number stays a number", byte-exact: 1.50 is not re-serialised
        c.send(b'{"id":1.50,"service":"text-completion","flow":"default",'
               b'"request":{"system":"","prompt":"num"}}\n')
        raw = c.raw_line()
        assert raw.startswith(b'{"id":1.50,'), \
            "id not echoed verbatim: %r" % raw[:100]
        c.ping()


def test_unix_missing_id_is_assigned_and_echoed():
    with Env() as e:
        e.ready()
        c = e.client()
        c.send(envelope(prompt="first", streaming=True, mock={"parts": 3}))
        first = c.lines(4)
        ids = {json.dumps(m.get("id")) for m in first}
        eq(len(ids), 1, "one assigned id on every line of the reply (%r)"
           % first)
        aid = first[0]["id"]
        assert isinstance(aid, str) and aid.startswith("tgb-c"), \
            "assigned id %r (README: \"tgb-c<N>\")" % (aid,)
        eq(stream_text(first), "first", "reply text")
        c.send(envelope(prompt="second"))
        second = c.line()
        bid = second.get("id")
        assert isinstance(bid, str) and bid.startswith("tgb-c"), second
        assert bid != aid, "two requests got the same assigned id %r" % bid
        eq(second["response"]["response"], "second", "second reply")
        c.ping()


def test_unix_null_id_is_answered():
    # README: an id is "any JSON value except null". A line with "id":null
    # must get an answer all the same: either treated as missing (an
    # assigned "tgb-c<N>" id) or refused with an error line.
    with Env() as e:
        e.ready()
        c = e.client()
        c.send(b'{"id":null,"service":"text-completion","flow":"default",'
               b'"request":{"system":"","prompt":"null id"}}\n')
        try:
            msg = c.line(timeout=5)
        except AssertionError as ex:
            env = [x for x in e.mock.stats()["last_envelopes"]
                   if "null id" in x]
            raise AssertionError("no answer to a line with \"id\":null "
                                 "(%s); the gateway received %r"
                                 % (ex, env[-1][:200] if env else None))
        if "error" in msg:
            check_error_line(msg, None, "bad-request", "null id refused")
        else:
            assert isinstance(msg.get("id"), str) and \
                msg["id"].startswith("tgb-c"), msg
            eq(msg["response"]["response"], "null id", "reply")
        c.ping()


def test_unix_repeated_id_key_is_answered():
    # {"id":"a","id":"b",...}: whatever tgbridge makes of it (refuse it, or
    # use one of the two), the line must be answered, with an id the client
    # can recognise; the gateway takes the last "id" member.
    with Env() as e:
        e.ready()
        c = e.client()
        c.send(b'{"id":"a","id":"b","service":"text-completion",'
               b'"flow":"default","request":{"system":"","prompt":"two ids"}}'
               b'\n')
        try:
            msg = c.line(timeout=5)
        except AssertionError as ex:
            env = [x for x in e.mock.stats()["last_envelopes"]
                   if "two ids" in x]
            raise AssertionError("no answer to a line with two \"id\" "
                                 "members (%s); the gateway received %r"
                                 % (ex, env[-1][:200] if env else None))
        if "error" in msg:
            assert msg.get("id") in (None, "a", "b"), msg
            eq(msg["error"].get("type"), "bad-request", "error type")
        else:
            assert msg.get("id") in ("a", "b"), msg
            eq(msg["response"]["response"], "two ids", "reply")
        c.ping()


def test_unix_upstream_sees_tgbridge_ids_not_client_ids():
    with Env() as e:
        e.ready()
        a, b = e.client(), e.client()
        a.send(envelope("same", prompt="A", mock={"echo": True}))
        b.send(envelope("same", prompt="B", mock={"echo": True}))
        ra, rb = a.line(), b.line()
        ea, eb = ra["response"]["envelope"], rb["response"]["envelope"]
        eq(ra["id"], "same", "id back to client A")
        eq(rb["id"], "same", "id back to client B")
        eq(ea["request"]["prompt"], "A", "A's envelope")
        eq(eb["request"]["prompt"], "B", "B's envelope")
        assert ea["id"] != "same" and eb["id"] != "same", \
            "client id sent upstream: %r %r" % (ea["id"], eb["id"])
        assert ea["id"] != eb["id"], "both clients mapped to upstream id %r" \
            % ea["id"]
        eq(ea.get("service"), "text-completion", "service")
        eq(ea.get("flow"), "default", "flow")
        assert "type" not in ea and "token" not in ea, ea


def test_unix_same_id_on_two_connections_at_once():
    with Env() as e:
        e.ready()
        a, b = e.client(), e.client()
        # both in flight at the same time: slow streams, same id
        a.send(envelope("x", prompt="alpha beta gamma delta", streaming=True,
                        mock={"parts": 4, "delay": 0.05}))
        b.send(envelope("x", prompt="one two three four", streaming=True,
                        mock={"parts": 4, "delay": 0.05}))
        e.mock.wait_stats(lambda s: s["requests_received"] >= 2,
                          what="both requests upstream")
        ga, _ = a.collect(["x"])
        gb, _ = b.collect(["x"])
        eq(stream_text(ga[idkey("x")]), "alpha beta gamma delta",
           "client A's stream")
        eq(stream_text(gb[idkey("x")]), "one two three four",
           "client B's stream")
        a.ping()
        b.ping()


@timeout(90)
def test_unix_concurrent_clients_interleaved_streams():
    nclients, nreq, parts = 20, 5, 4
    with Env() as e:
        e.ready()
        clients = [e.client(timeout=30) for _ in range(nclients)]
        # the same ids on every connection; one numeric
        ids = ["r0", "r1", 2, "r3", "r4"][:nreq]

        def prompt(ci, j):
            return " ".join("c%d-r%d-w%d" % (ci, j, w) for w in range(8))

        results = {}

        def run(ci):
            c = clients[ci]
            try:
                c.send(*[envelope(ids[j], prompt=prompt(ci, j),
                                  streaming=True,
                                  mock={"parts": parts, "delay": 0.02})
                         .rstrip(b"\n") for j in range(nreq)])
                got, order = c.collect(ids, timeout=60)
                for j in range(nreq):
                    replies = got[idkey(ids[j])]
                    eq(len(replies), parts + 1,
                       "client %d id %r reply lines" % (ci, ids[j]))
                    eq(stream_text(replies), prompt(ci, j),
                       "client %d id %r text" % (ci, ids[j]))
                c.ping()        # nothing stray after the last reply
                results[ci] = order
            except BaseException as ex:  # noqa: B902
                results[ci] = ex

        threads = [threading.Thread(target=run, args=(i,))
                   for i in range(nclients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(T(75))
        bad = {i: r for i, r in results.items()
               if isinstance(r, BaseException)}
        missing = set(range(nclients)) - set(results)
        assert not missing, "clients still waiting: %s" % sorted(missing)
        if bad:
            i, ex = sorted(bad.items(), key=lambda kv: kv[0])[0]
            raise AssertionError("%d of %d clients failed; client %d: %s"
                                 % (len(bad), nclients, i, ex))

        # replies of different ids on one connection interleave (they are
        # written as frames arrive, not one request after another)
        def interleaved(order):
            seen_done = set()
            last = None
            for k in order:
                if k != last and k in seen_done:
                    return True
                if last is not None and k != last:
                    seen_done.add(last)
                last = k
            return False
        n = sum(1 for o in results.values() if interleaved(o))
        assert n > 0, "no connection saw interleaved replies"
        st = e.mock.stats()
        eq(st["requests_received"], nclients * nreq, "requests upstream")


def test_unix_workspace_service_and_workspace_option():
    with Env("--workspace", "ws1",
             mock_extra=("--workspaces", "default,ws1")) as e:
        e.ready()
        c = e.client()
        # a workspace service: no flow in the line, none in the envelope
        c.send(compact({"id": "cfg", "service": "config", "request": {
            "operation": "list", "type": "prompt",
            "_mock": {"echo": True}}}))
        r = c.line()
        eq(r.get("complete"), True, "config reply (%r)" % r)
        env = r["response"]["envelope"]
        eq(env.get("service"), "config", "service")
        assert "flow" not in env, "flow added to a workspace service: %r" \
            % env
        # --workspace is added when the line has none ...
        eq(env.get("workspace"), "ws1", "--workspace in the envelope")
        # ... and a line's own workspace is kept
        c.send(compact({"id": "own", "service": "config",
                        "workspace": "default", "request": {
                            "operation": "list", "type": "prompt",
                            "_mock": {"echo": True}}}))
        env = c.line()["response"]["envelope"]
        eq(env.get("workspace"), "default", "the line's own workspace")
        c.ping()


def test_unix_sigterm_lets_running_line_requests_finish():
    with Env() as e:
        e.ready()
        c = e.client()
        c.send(envelope("run", prompt="w " * 10, streaming=True,
                        mock={"parts": 10, "delay": 0.1}))
        first = c.line()
        eq(first.get("complete"), False, "first part (%r)" % first)
        e.bridge.proc.send_signal(15)
        e.bridge.wait_log(r"SIGTERM")
        # it stops accepting (the log line comes just before): new
        # connections soon fail, the socket file being gone or refusing

        def refused():
            try:
                LineClient(e.path, timeout=2).close()
                return False
            except OSError:
                return True
        wait_until(refused, timeout=2,
                   what="new connections refused while draining")
        # the running request completes normally
        got, _ = c.collect(["run"])
        rest = got[idkey("run")]
        eq(stream_text([first] + rest), "w " * 10, "drained stream")
        t0 = time.monotonic()
        c.close()
        eq(e.bridge.stop(timeout=5), 0, "exit status")
        assert time.monotonic() - t0 < T(5), "exit took too long"
        assert not os.path.exists(e.path), "socket file left"


def test_unix_second_signal_fails_line_requests_shutting_down():
    with Env() as e:
        e.ready()
        c = e.client()
        c.send(envelope("stuck", prompt="x", streaming=True,
                        mock={"never": True, "after": 1}))
        eq(c.line().get("complete"), False, "first part")
        e.bridge.proc.send_signal(15)
        e.bridge.wait_log(r"SIGTERM")
        e.bridge.proc.send_signal(15)       # second signal: stop now
        msg = c.line()
        check_error_line(msg, "stuck", "shutting-down", "second signal")
        rest = c.expect_eof()
        eq(rest, [], "lines after shutting-down")
        eq(e.bridge.stop(timeout=5), 0, "exit status")


BAD_LINES = [
    # (line bytes, expected id, expected type, what)
    (b"not json", None, "bad-request", "invalid JSON"),
    (b'{"id":"t","service":"text-completion"', None, "bad-request",
     "truncated JSON"),
    (b'{"id":"t2","service":"x","request":{}} trailing', None,
     "bad-request", "trailing data"),
    (b"[1,2,3]", None, "bad-request", "array"),
    (b'"just a string"', None, "bad-request", "string"),
    (b"42", None, "bad-request", "number"),
    (b'{"id":"u1","service":"text-completion","flow":"default",'
     b'"request":{"system":"","prompt":"\xff\xfe"}}', None, "bad-request",
     "invalid UTF-8"),
    (b'{"id":"u2","service":"te\xc3(","request":{}}', None,
     "bad-request", "invalid UTF-8 sequence"),
    (b'{"id":"m1","flow":"default","request":{"system":"","prompt":"x"}}',
     "m1", "bad-request", "missing service"),
    (b'{"id":"m2","service":"","flow":"default","request":{}}', "m2",
     "bad-request", "empty service"),
    (b'{"id":"m3","service":7,"flow":"default","request":{}}', "m3",
     "bad-request", "non-string service"),
    (b'{"id":"r1","service":"text-completion","flow":"default",'
     b'"request":[1]}', "r1", "bad-request", "array request"),
    (b'{"id":"r2","service":"text-completion","flow":"default",'
     b'"request":"text"}', "r2", "bad-request", "string request"),
    (b'{"id":"r3","service":"text-completion","flow":"default"}', "r3",
     "bad-request", "missing request"),
    (b'{"id":"f1","service":"text-completion","flow":5,'
     b'"request":{"system":"","prompt":"x"}}', "f1", "bad-request",
     "non-string flow"),
    (b'{"id":{"n":1},"request":{}}', {"n": 1}, "bad-request",
     "missing service, object id"),
]


def test_unix_bad_lines_keep_the_connection():
    with Env() as e:
        e.ready()
        c = e.client()
        for line, id, etype, what in BAD_LINES:
            c.send_raw(line + b"\n")
            check_error_line(c.line(), id, etype, what)
            c.ping()    # exactly one error line, and the connection lives
        # all at once too: one error line each, in order
        c.send_raw(b"".join(ln + b"\n" for ln, _, _, _ in BAD_LINES))
        for line, id, etype, what in BAD_LINES:
            check_error_line(c.line(), id, etype, what + " (batched)")
        c.ping()
        # and a real request still works on this connection
        c.send(envelope("ok", prompt="still here"))
        got, _ = c.collect(["ok"])
        eq(got[idkey("ok")][0]["response"]["response"], "still here",
           "request after bad lines")
        eq(e.mock.stats()["requests_received"], 1,
           "bad lines must not reach the gateway")


def test_unix_blank_lines_and_crlf_are_accepted():
    with Env() as e:
        e.ready()
        c = e.client()
        c.send_raw(b"\n   \n\t\n\r\n" +
                   envelope("crlf", prompt="crlf").rstrip(b"\n") + b"\r\n")
        got, _ = c.collect(["crlf"])
        eq(got[idkey("crlf")][0]["response"]["response"], "crlf",
           "request ending in CRLF")
        c.ping()     # blank lines produced no reply
        # blanks before the object are fine too, also as the very first
        # bytes of a connection (they select the line protocol)
        d = e.client()
        d.send_raw(b' \t{"type":"ping"}\n')
        eq(d.raw_line(), b'{"type":"pong"}', "pong after leading blanks")


@timeout(90)
def test_unix_thousands_of_requests_pipelined_on_one_connection():
    # more than the 1024 unanswered requests at which tgbridge stops
    # reading a client: it must resume, and every request be answered once
    n = 3000
    with Env() as e:
        e.ready()
        c = e.client(timeout=60)
        other = e.client()
        data = b"".join(envelope("p%d" % i, prompt="x%d" % i)
                        for i in range(n))
        errors = []

        def writer():
            try:
                c.send_raw(data)
            except OSError as ex:
                errors.append(ex)
        th = threading.Thread(target=writer, daemon=True)
        th.start()
        other.ping()            # another client is not held up meanwhile
        got, _ = c.collect(["p%d" % i for i in range(n)], timeout=60)
        th.join(T(10))
        assert not errors, "writing the requests failed: %r" % errors
        for i in range(n):
            r = got[idkey("p%d" % i)]
            eq(len(r), 1, "replies to p%d" % i)
            eq(r[0]["response"]["response"], "x%d" % i, "reply to p%d" % i)
        c.ping()
        eq(e.mock.stats()["requests_received"], n, "requests upstream")


def test_unix_duplicate_in_flight_id():
    with Env() as e:
        e.ready()
        c = e.client()
        slow = envelope("d", prompt="first one", streaming=True,
                        mock={"parts": 3, "delay": 0.1})
        dup = envelope("d", prompt="second one")
        # one write: the second line is read while the first is in flight
        c.send_raw(slow + dup)
        first = c.line()
        check_error_line(first, "d", "duplicate-id",
                         "first line after a duplicate")
        got, _ = c.collect(["d"])
        eq(stream_text(got[idkey("d")]), "first one",
           "the original request is unaffected")
        # complete: the id is free again, and the connection is usable
        c.send(dup)
        got, _ = c.collect(["d"])
        eq(got[idkey("d")][0]["response"]["response"], "second one",
           "id reused after completion")
        c.ping()
        eq(e.mock.stats()["requests_received"], 2, "requests upstream")


def test_unix_oversize_line_discarded_connection_kept():
    with Env("--max-line", "1k") as e:
        e.ready()
        c = e.client()

        def line_of(total, id):
            head = envelope(id, prompt="").rstrip(b"\n")
            pad = total - len(head)
            # grow the prompt so the line is exactly `total` bytes
            return head.replace(b'"prompt":""', b'"prompt":"' +
                                b"p" * pad + b'"')

        exact = line_of(1024, "fits")
        eq(len(exact), 1024, "test line length")
        c.send_raw(exact + b"\n")
        got, _ = c.collect(["fits"])
        eq(len(got[idkey("fits")][0]["response"]["response"]),
           1024 - len(envelope("fits", prompt="")) + 1, "exact-size line")

        # 1025 bytes: too long, refused with the id its first bytes show (issue 16 item 10)
        c.send_raw(line_of(1025, "big1") + b"\n")
        check_error_line(c.line(), "big1", "line-too-long", "1025-byte line")
        c.ping()

        # a 300 kB line whose tail, if it were taken for a line, would be
        # answered (a ping): the whole rest must be discarded
        tail = b'"}}\n'
        big = (b'{"id":"big2","service":"text-completion","flow":"default",'
               b'"request":{"system":"","prompt":"' +
               (b'x{"type":"ping"}' * 20000) + tail)
        c.send_raw(big)
        check_error_line(c.line(), "big2", "line-too-long", "300 kB line")
        c.ping()
        # the same, arriving in small pieces
        for i in range(0, len(big), 4000):
            c.send_raw(big[i:i + 4000])
        check_error_line(c.line(), "big2", "line-too-long", "line in pieces")
        c.ping()

        c.send(envelope("after", prompt="after"))
        got, _ = c.collect(["after"])
        eq(got[idkey("after")][0]["response"]["response"], "after",
           "request after an oversize line")
        eq(e.mock.stats()["requests_received"], 2,
           "requests upstream (oversize lines must not be forwarded)")


@timeout(60)
def test_unix_client_hangup_mid_stream():
    with Env() as e:
        e.ready()
        a = e.client()
        ids = ["h%d" % i for i in range(4)]
        # never-ending and slow streams, then A vanishes mid-stream
        a.send(*[envelope(i, prompt="a " * 30, streaming=True,
                          mock={"parts": 30, "delay": 0.05}).rstrip(b"\n")
                 for i in ids[:2]],
               *[envelope(i, prompt="never", streaming=True,
                          mock={"never": True, "after": 1}).rstrip(b"\n")
                 for i in ids[2:]])
        first = a.line()
        assert first.get("id") in ids and first.get("complete") is False, \
            first
        a.sock.shutdown(socket.SHUT_RDWR)
        a.close()
        # B uses the very same ids: stray replies for A would be visible
        b = e.client()
        b.send(*[envelope(i, prompt="b%s" % i, streaming=True,
                          mock={"parts": 2}).rstrip(b"\n") for i in ids])
        got, _ = b.collect(ids)
        for i in ids:
            eq(stream_text(got[idkey(i)]), "b%s" % i, "B's reply for " + i)
        b.ping()
        b.close()
        # A's state is gone: the drain at SIGTERM has no line request to
        # wait for (the README's 10 s drain counts only live callers)
        t0 = time.monotonic()
        e.bridge.stop()
        took = time.monotonic() - t0
        assert took < T(5), "SIGTERM took %.1fs: the hung-up client's " \
            "requests are still counted" % took


@timeout(60)
def test_unix_slow_reader_is_disconnected_others_served():
    # each reply (~64 kB: the text and the mock's "blob" copy) is far below
    # the cap; only the pile-up of unread ones may exceed it
    size, n_slow = 32 * 1024, 96
    with Env("--max-client-buffer", "256k") as e:
        e.ready()
        slow = e.client()
        fast = e.client()
        # the slow client asks for ~6 MiB of replies and never reads them
        slow.send(*[envelope("s%d" % i, prompt="big", mock={"size": size})
                    .rstrip(b"\n") for i in range(n_slow)])
        # meanwhile a reading client is served, streaming
        for k in range(3):
            fast.send(envelope("f%d" % k, prompt="fast", mock={"size": 4096},
                               streaming=True))
            got, _ = fast.collect(["f%d" % k])
            eq(len(stream_text(got[idkey("f%d" % k)])), 4096,
               "fast client's reply")
        m = e.bridge.wait_log(r"(?i)unix client.*(slow|buffer|limit)",
                              timeout=20)
        # a client that reads may receive far more than the cap in total
        for k in range(12):
            fast.send(envelope("b%d" % k, prompt="big", mock={"size": size}))
            got, _ = fast.collect(["b%d" % k])
            eq(len(got[idkey("b%d" % k)][0]["response"]["response"]), size,
               "reading client's big reply %d" % k)
        fast.ping()
        # the slow client's connection is closed: it gets EOF (or a reset)
        # after whatever the kernel had buffered, far less than it asked for
        total = 0
        slow.sock.settimeout(T(10))
        t0 = time.monotonic()
        while True:
            try:
                d = slow.sock.recv(1 << 20)
            except ConnectionResetError:
                break
            except socket.timeout:
                raise AssertionError("slow client not disconnected (%d bytes "
                                     "read, %.1fs); log line was %r"
                                     % (total, time.monotonic() - t0,
                                        m.group(0)))
            if not d:
                break
            total += len(d)
        assert total < n_slow * 2 * size, "slow client received " \
            "everything (%d bytes)" % total
        assert e.bridge.running(), "tgbridge died"
        # and a new client is served normally
        n = e.client()
        n.send(envelope("n", prompt="new"))
        got, _ = n.collect(["n"])
        eq(got[idkey("n")][0]["response"]["response"], "new", "new client")


def test_unix_half_close_still_gets_every_reply():
    with Env() as e:
        e.ready()
        c = e.client()
        ids = ["q1", "q2", "q3"]
        c.send(*[envelope(i, prompt="half close " + i, streaming=True,
                          mock={"parts": 3, "delay": 0.05}).rstrip(b"\n")
                 for i in ids])
        c.shutdown_write()
        got, _ = c.collect(ids)
        for i in ids:
            eq(stream_text(got[idkey(i)]), "half close " + i, "reply " + i)
        extra = c.expect_eof()
        eq(extra, [], "lines after the last reply")
        # nothing in flight: a half-close ends the connection at once
        d = e.client()
        d.ping()
        d.shutdown_write()
        eq(d.expect_eof(), [], "lines after a bare half-close")


def wait_until_stalled(sock, total, settle=0.3, timeout=10):
    """Wait, without reading, until tgbridge has filled the socket buffer: the
    bytes waiting for `sock` (FIONREAD) are some and stay the same for
    `settle` seconds. Returns their number, checked to be less than `total`,
    the reply's size: the rest of the reply must then wait in tgbridge for
    the socket to become writable again."""
    deadline = time.monotonic() + T(timeout)
    last, since = -1, time.monotonic()
    while True:
        queued = struct.unpack("i", fcntl.ioctl(sock, termios.FIONREAD,
                                                b"\0\0\0\0"))[0]
        if queued != last:
            last, since = queued, time.monotonic()
        elif queued and time.monotonic() - since >= settle:
            break
        assert time.monotonic() < deadline, \
            "tgbridge wrote nothing (or kept writing): %d bytes" % queued
        time.sleep(0.02)
    assert queued < total, "the whole reply fit in the socket buffer " \
        "(%d of %d bytes): the test shows nothing" % (queued, total)
    return queued


LARGE = 700 * 1000   # the reply is twice that: the text and the mock's blob


def test_unix_reply_larger_than_the_socket_buffer_reaches_a_late_reader():
    # the client reads only once tgbridge's writes stall on a full socket
    # buffer: the rest must follow when it becomes writable (libwebsockets 4.1
    # drops a raw descriptor's POLLOUT asked for from its writeable callback)
    with Env() as e:
        e.ready()
        c = e.client()
        for k in range(2):
            c.send(envelope("big%d" % k, prompt="big", mock={"size": LARGE}))
            wait_until_stalled(c.sock, 2 * LARGE)
            got, _ = c.collect(["big%d" % k], timeout=10)
            eq(len(got[idkey("big%d" % k)][0]["response"]["response"]), LARGE,
               "the reply text of big%d" % k)
        c.ping()


def test_unix_reply_to_a_line_sent_in_two_parts_reaches_a_late_reader():
    # the shape in which it was seen: a large line written in two parts, a
    # pause between them (with another client served meanwhile, and without),
    # and an echoed reply larger than the socket buffer
    head = (b'{"id":"la","service":"text-completion","flow":"default",'
            b'"request":{"system":"","prompt":"')
    with Env("--max-line", "4m") as e:
        e.ready()
        for other in (True, False):
            la, lb = e.client(), e.client()
            la.send_raw(head + b"y" * LARGE)
            time.sleep(0.3)
            if other:
                lb.ping()
            la.send_raw(b'"}}\n')
            wait_until_stalled(la.sock, LARGE)
            got, _ = la.collect(["la"], timeout=10)
            eq(got[idkey("la")][0]["response"]["response"], "y" * LARGE,
               "the echoed prompt (another client active: %s)" % other)
            la.ping()
            lb.ping()


# -------------------------------------------- errors on the line protocol

def test_unix_errors_normalised_v2():
    with Env(era="v2d") as e:
        e.ready()
        c = e.client()
        cases = [
            ("e5", {"shape": "E5", "type": "llm-error", "message": "boom"},
             {"type": "llm-error", "message": "boom"}),
            ("e2", {"shape": "E2", "type": "error",
                    "message": "Invalid flow default/x"},
             {"type": "error", "message": "Invalid flow default/x"}),
            ("e4", {"shape": "E4", "type": "access-denied",
                    "message": "access denied"},
             {"type": "access-denied", "message": "access denied"}),
        ]
        for id, spec, err in cases:
            c.send(envelope(id, prompt="p", mock={"error": spec}))
            msg = c.line()
            eq(msg, {"id": id, "error": err, "complete": True},
               "%s error line" % spec["shape"])
        # an error after streamed parts: the parts, then one error line
        c.send(envelope("late", prompt="a b c d", streaming=True,
                        mock={"parts": 4, "error": {
                            "shape": "E5", "type": "llm-error",
                            "message": "late boom", "after": 2}}))
        got, _ = c.collect(["late"])
        r = got[idkey("late")]
        eq(len(r), 3, "two parts then the error (%r)" % r)
        eq([m["complete"] for m in r[:2]], [False, False], "parts")
        eq(r[2], {"id": "late", "error": {"type": "llm-error",
                                          "message": "late boom"},
                  "complete": True}, "final error line")
        # the gateway itself refusing an unknown service
        c.send(envelope("nk", service="no-such-kind", prompt="x"))
        check_error_line(c.line(), "nk", "unknown-service", "unknown kind")
        c.ping()


def test_unix_errors_normalised_v1a_bare_string():
    with Env("--request-timeout", "30", era="v1a") as e:
        e.ready()
        c = e.client()
        c.send(envelope("e1", prompt="p", mock={"error": {
            "shape": "E1", "message": "Invalid flow"}}))
        msg = c.line()
        eq(msg, {"id": "e1", "error": {"type": "error",
                                       "message": "Invalid flow"},
                 "complete": True}, "v1a bare-string error line")
        c.ping()
        c.send(envelope("ok", prompt="fine"))
        got, _ = c.collect(["ok"])
        eq(got[idkey("ok")][0]["response"]["response"], "fine", "after E1")


def test_unix_errors_normalised_v1b_shapes():
    with Env("--request-timeout", "30", era="v1b") as e:
        e.ready()
        c = e.client()
        c.send(envelope("e6", prompt="p", mock={"error": {
            "shape": "E6", "message": "publish failed"}}))
        msg = c.line()
        etype = msg.get("error", {}).get("type") if isinstance(
            msg.get("error"), dict) else None
        assert isinstance(etype, str) and etype, "E6: %r" % (msg,)
        err = check_error_line(msg, "e6", etype, "E6 nested string")
        eq(err["message"], "publish failed", "E6 message")
        c.send(envelope("e3", prompt="p", mock={"error": {
            "shape": "E3", "type": "error", "message": "Bad message"}}))
        eq(c.line(), {"id": "e3", "error": {"type": "error",
                                            "message": "Bad message"},
                      "complete": True}, "E3 id-less error, one candidate")
        c.ping()


def test_unix_upstream_disconnect_mid_stream():
    with Env() as e:
        e.ready()
        c = e.client()
        c.send(envelope("dr", prompt="a b c d e", streaming=True,
                        mock={"parts": 5, "drop": True, "after": 2}))
        got, _ = c.collect(["dr"])
        r = got[idkey("dr")]
        eq([m.get("complete") for m in r], [False, False, True],
           "two parts then the failure (%r)" % r)
        check_error_line(r[-1], "dr", "upstream-disconnected", "after drop")
        # served again after the reconnect, on the same connection
        e.bridge.wait_ready()
        c.send(envelope("again", prompt="again"))
        got, _ = c.collect(["again"])
        eq(got[idkey("again")][0]["response"]["response"], "again",
           "after reconnect")


def test_unix_gateway_unavailable_and_request_timeout():
    d = tempfile.mkdtemp(prefix="tgb-unix-")
    path = os.path.join(d, "tgb.sock")
    try:
        # no gateway at all: queued, then gateway-unavailable
        with start_bridge("http://127.0.0.1:%d" % closed_port(), "--token",
                          TOKEN, "--unix", path, "--queue-timeout", "0.3",
                          "--reconnect-max", "1") as b:
            c = LineClient(path)
            try:
                c.send(envelope("gu", prompt="x"))
                check_error_line(c.line(), "gu", "gateway-unavailable",
                                 "no gateway")
                c.ping()
            finally:
                c.close()
            b.stop()
    finally:
        shutil.rmtree(d, ignore_errors=True)
    with Env("--request-timeout", "0.5") as e:
        e.ready()
        c = e.client()
        c.send(envelope("rt", prompt="x", streaming=True,
                        mock={"never": True, "after": 1}))
        got, _ = c.collect(["rt"])
        r = got[idkey("rt")]
        eq(len(r), 2, "one part then the timeout (%r)" % r)
        check_error_line(r[-1], "rt", "request-timeout", "request timeout")
        c.ping()


# ------------------------------------------------------ HTTP on the socket

def test_unix_http_healthz_readyz_and_unary():
    with Env() as e:
        e.ready()
        r = unix_request(e.path, "GET", "/healthz")
        check_status(r, 200, "/healthz over the Unix socket")
        eq(r.json(), {"status": "ok"}, "/healthz body")
        r = unix_request(e.path, "GET", "/readyz")
        check_status(r, 200, "/readyz over the Unix socket")
        eq(r.json().get("status"), "ready", "/readyz status")
        assert r.json().get("era"), r.json()
        r = unix_request(e.path, "POST", FLOW_TC, tc("over unix"))
        check_status(r, 200, "unary POST over the Unix socket")
        eq(r.json().get("response"), "over unix", "unary reply")
        # keep-alive: several requests on one connection
        conn = UnixHTTPConnection(e.path)
        try:
            for i in range(3):
                conn.request("POST", FLOW_TC, body=json.dumps(tc("k%d" % i)),
                             headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                body = resp.read()
                eq(resp.status, 200, "keep-alive request %d" % i)
                eq(json.loads(body).get("response"), "k%d" % i,
                   "keep-alive reply %d" % i)
        finally:
            conn.close()
        st = unix_request(e.path, "GET", "/status")
        check_status(st, 200, "/status over the Unix socket")


def test_unix_http_ndjson_streaming_matches_tcp():
    with Env() as e:
        e.ready()
        body = json.dumps(tc("one two three four five", streaming=True,
                             parts=5)).encode()
        out = {}
        for via in ("tcp", "unix"):
            conn = UnixHTTPConnection(e.path) if via == "unix" else \
                http.client.HTTPConnection("127.0.0.1", e.bridge.port,
                                           timeout=T(30))
            try:
                conn.request("POST", FLOW_TC, body=body,
                             headers={"Content-Type": "application/json",
                                      "Accept": NDJSON})
                resp = conn.getresponse()
                eq(resp.status, 200, via + " status")
                eq((resp.headers.get("Content-Type") or "").split(";")[0],
                   NDJSON, via + " Content-Type")
                assert resp.chunked, via + ": not chunked"
                lines = []
                while True:
                    ln = resp.readline()
                    if not ln:
                        break
                    lines.append(json.loads(ln))
                out[via] = lines
            finally:
                conn.close()
        eq(len(out["unix"]), 6, "NDJSON lines over the Unix socket")
        eq("".join(x.get("response", "") for x in out["unix"]),
           "one two three four five", "streamed text")
        eq(out["unix"], out["tcp"], "Unix NDJSON == TCP NDJSON")


def test_unix_http_error_statuses_match_tcp():
    with Env("--max-body", "1k") as e:
        e.ready()
        big = json.dumps(tc("x" * 4000)).encode()
        cases = [
            ("GET", "/nope", None, {}, 404),
            ("GET", "/healthz/", None, {}, 404),
            ("POST", "/api/v1/config/", b"{}", {}, 404),
            ("POST", "/healthz", b"{}", {}, 405),
            ("GET", FLOW_TC, None, {}, 405),
            ("POST", FLOW_TC, b"not json", {}, 400),
            ("POST", FLOW_TC, b"[1,2]", {}, 400),
            ("POST", FLOW_TC, big, {}, 413),
            ("GET", "/api/v1/flow/default/import/triples", None, {}, 400),  # not an upgrade
            ("GET", "/api/v1/socket", None, {}, 400),  # not an upgrade
            ("POST", flow_path("no-such-kind"), b'{"x":1}', {}, 404),
            ("POST", "/api/v1/config", b'{"operation":"no-such-op"}', {},
             400),
            ("POST", FLOW_TC, json.dumps(tc("p", error={
                "shape": "E5", "type": "llm-error", "message": "boom"}))
             .encode(), {}, 200),
            ("POST", FLOW_TC, json.dumps(tc("p", streaming=True, error={
                "shape": "E5", "type": "llm-error", "message": "boom"}))
             .encode(), {"Accept": NDJSON}, 502),
            ("POST", FLOW_TC, json.dumps(tc("p", error={
                "shape": "E4", "type": "access-denied",
                "message": "access denied"})).encode(), {}, 403),
        ]
        for method, url, body, hdrs, status in cases:
            what = "%s %s %s" % (method, url, hdrs or "")
            rt = http_one_write(e.bridge.port, method, url, body, hdrs)
            ru = http_one_write(e.path, method, url, body, hdrs)
            check_status(rt, status, "TCP " + what)
            check_status(ru, status, "Unix " + what)
            eq(ru.body, rt.body, "body over Unix vs TCP for " + what)
            eq(ru.headers.get("Content-Type"), rt.headers.get("Content-Type"),
               "Content-Type over Unix vs TCP for " + what)
            if status == 405:
                eq(ru.headers.get("Allow"), rt.headers.get("Allow"), "Allow")
        own_error(unix_request(e.path, "GET", "/nope"), 404, "not-found")
        own_error(unix_request(e.path, "POST", FLOW_TC, b"not json"), 400,
                  "bad-request")


def test_unix_http_and_line_clients_side_by_side():
    with Env() as e:
        e.ready()
        c = e.client()
        c.send(envelope("l1", prompt="line a b c", streaming=True,
                        mock={"parts": 3, "delay": 0.05}))
        r = unix_request(e.path, "POST", FLOW_TC, tc("http meanwhile"))
        check_status(r, 200, "HTTP while a line client streams")
        eq(r.json().get("response"), "http meanwhile", "HTTP reply")
        got, _ = c.collect(["l1"])
        eq(stream_text(got[idkey("l1")]), "line a b c", "line reply")


# ---------------------------------------------- the socket file and access

def test_unix_socket_default_mode_0660():
    with Env() as e:
        st = os.stat(e.path)
        assert stat.S_ISSOCK(st.st_mode), "not a socket: %o" % st.st_mode
        eq(oct(stat.S_IMODE(st.st_mode)), oct(0o660), "default mode")
        eq(st.st_uid, os.geteuid(), "owner")


def test_unix_socket_mode_0600_and_group():
    need_root()
    nogroup = grp.getgrgid(NOBODY).gr_name
    with Env("--unix-mode", "0600", "--unix-group", nogroup,
             dir_mode=0o755) as e:
        st = os.stat(e.path)
        eq(oct(stat.S_IMODE(st.st_mode)), oct(0o600), "--unix-mode 0600")
        eq(st.st_gid, NOBODY, "--unix-group %s" % nogroup)
        e.client().ping()           # the owner (root) may connect
        # nobody:nogroup may not: the group has no permission at 0600
        r = as_user(e.path, uid=NOBODY, gid=NOBODY)
        eq(r.get("connect_errno"), errno.EACCES, "nobody on a 0600 socket "
           "(%r)" % r)


def test_unix_socket_group_grants_access():
    need_root()
    with Env("--unix-mode", "0660", "--unix-group", str(NOBODY),
             dir_mode=0o755) as e:
        st = os.stat(e.path)
        eq(oct(stat.S_IMODE(st.st_mode)), oct(0o660), "mode")
        eq(st.st_gid, NOBODY, "--unix-group by number")
        e.ready()
        # a member of the group (primary gid) may connect and use it
        r = as_user(e.path, [compact({"type": "ping"}),
                             envelope("g", prompt="grp").decode().strip()],
                    want=2, uid=NOBODY, gid=NOBODY)
        assert "lines" in r, "group member could not connect: %r" % r
        eq(r["lines"][0], {"type": "pong"}, "pong for the group member")
        eq(r["lines"][1].get("response", {}).get("response"), "grp",
           "reply for the group member (%r)" % r)
        # someone outside the group may not
        r = as_user(e.path, uid=NOBODY, gid=1)
        eq(r.get("connect_errno"), errno.EACCES, "non-member (%r)" % r)


def test_unix_group_by_name_and_unknown_group():
    need_root()
    d = tempfile.mkdtemp(prefix="tgb-unix-")
    try:
        path = os.path.join(d, "s.sock")
        daemon_gid = grp.getgrnam("daemon").gr_gid
        with start_bridge("http://127.0.0.1:%d" % closed_port(), "--unix",
                          path, "--unix-group", "daemon") as b:
            eq(os.stat(path).st_gid, daemon_gid, "--unix-group daemon")
            b.stop()
        p = run_bridge("--gateway", "http://127.0.0.1:%d" % closed_port(),
                       "--listen", "127.0.0.1:0", "--unix", path,
                       "--unix-group", "no-such-group-tgb")
        assert p.returncode != 0, "started with an unknown group"
        assert "no-such-group-tgb" in p.stderr, p.stderr
        assert not os.path.exists(path), "socket left behind"
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_unix_peer_credentials_refused_uid():
    need_root()
    # only nobody may connect: root is not special
    with Env("--unix-allow-uid", str(NOBODY), "--unix-mode", "0666",
             dir_mode=0o755) as e:
        e.ready()
        c = e.client()
        lines = c.expect_eof()
        eq(len(lines), 1, "one line to a refused peer (%r)" % lines)
        check_error_line(json.loads(lines[0]), None, "forbidden",
                         "refused root")
        e.bridge.wait_log(r"(?i)refused")
        # the allowed uid is served
        r = as_user(e.path, [compact({"type": "ping"}),
                             envelope("u", prompt="allowed").decode().strip()],
                    want=2, uid=NOBODY, gid=NOBODY)
        assert "lines" in r, r
        eq(r["lines"][0], {"type": "pong"}, "pong for the allowed uid")
        eq(r["lines"][1].get("response", {}).get("response"), "allowed",
           "reply for the allowed uid (%r)" % r)
        # HTTP from a refused peer is refused as well
        c2 = e.client()
        try:
            c2.send_raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        except OSError:
            pass            # may already be closed: the line is still there
        first = c2.raw_line(allow_eof=True)
        assert first is not None and b"forbidden" in first, \
            "refused HTTP peer got %r" % first


def test_unix_peer_credentials_allow_gid_and_names():
    need_root()
    with Env("--unix-allow-gid", "nogroup", "--unix-mode", "0666",
             dir_mode=0o755) as e:
        e.ready()
        lines = e.client().expect_eof()
        eq(len(lines), 1, "one line to a refused peer (%r)" % lines)
        check_error_line(json.loads(lines[0]), None, "forbidden", "gid 0")
        r = as_user(e.path, [compact({"type": "ping"})], want=1,
                    uid=NOBODY, gid=NOBODY)
        eq(r.get("lines"), [{"type": "pong"}], "allowed gid (%r)" % r)
        # uid nobody but another primary gid: refused
        r = as_user(e.path, [], uid=NOBODY, gid=1)
        assert "lines" in r, r
        eq(len(r["lines"]), 1, "refused peer lines (%r)" % r)
        check_error_line(r["lines"][0], None, "forbidden", "uid nobody gid 1")
        eq(r["end"], "eof", "refused peer closed")
    # by user name
    with Env("--unix-allow-uid", "nobody,root", dir_mode=0o755) as e:
        e.client().ping()


def test_unix_stale_socket_is_replaced():
    d = tempfile.mkdtemp(prefix="tgb-unix-")
    try:
        path = os.path.join(d, "tgb.sock")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(path)
        s.close()                       # file stays, nobody listens
        os.chmod(path, 0o604)           # not what tgbridge would create
        with raises(ConnectionRefusedError):
            LineClient(path)
        m = start_mock("v2d", tokens=[TOKEN])
        with m, start_bridge(m.url, "--token", TOKEN, "--unix", path) as b:
            b.wait_log(r"(?i)stale")
            st = os.stat(path)
            assert stat.S_ISSOCK(st.st_mode), "not a socket"
            eq(oct(stat.S_IMODE(st.st_mode)), oct(0o660),
               "mode of the new socket (the stale one was 0604)")
            c = LineClient(path)
            try:
                c.ping()
                c.send(envelope("st", prompt="fresh"))
                got, _ = c.collect(["st"])
                eq(got[idkey("st")][0]["response"]["response"], "fresh",
                   "served on the replaced socket")
            finally:
                c.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)


class raises:
    def __init__(self, exc):
        self.exc = exc

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            raise AssertionError("%s not raised" % self.exc.__name__)
        return issubclass(exc_type, self.exc)


def test_unix_live_socket_not_stolen():
    with Env() as e:
        e.ready()
        ino = os.stat(e.path).st_ino
        c = e.client()
        c.ping()
        p = run_bridge("--gateway", e.mock.url, "--token", TOKEN,
                       "--listen", "127.0.0.1:0", "--unix", e.path)
        eq(p.returncode, 1, "second tgbridge on a live path: exit status "
           "(stderr %r)" % p.stderr[-500:])
        assert e.path in p.stderr and "use" in p.stderr, \
            "no message naming the path: %r" % p.stderr[-500:]
        eq(os.stat(e.path).st_ino, ino, "the first daemon's socket file")
        # the first keeps serving, old and new connections alike
        c.ping()
        c2 = e.client()
        c2.send(envelope("first", prompt="still mine"))
        got, _ = c2.collect(["first"])
        eq(got[idkey("first")][0]["response"]["response"], "still mine",
           "first daemon still serving")
        assert e.bridge.running()


def test_unix_foreign_listener_and_non_socket_untouched():
    d = tempfile.mkdtemp(prefix="tgb-unix-")
    try:
        gw = "http://127.0.0.1:%d" % closed_port()
        # somebody else listening on the path
        path = os.path.join(d, "other.sock")
        other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        other.bind(path)
        other.listen(1)
        try:
            p = run_bridge("--gateway", gw, "--listen", "127.0.0.1:0",
                           "--unix", path)
            eq(p.returncode, 1, "path of a live listener (%r)"
               % p.stderr[-300:])
            assert path in p.stderr, p.stderr[-300:]
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.settimeout(T(5))
            conn.connect(path)          # still the other listener's
            conn.close()
        finally:
            other.close()
        # a regular file is never deleted
        path = os.path.join(d, "file")
        with open(path, "w") as f:
            f.write("precious")
        p = run_bridge("--gateway", gw, "--listen", "127.0.0.1:0",
                       "--unix", path)
        eq(p.returncode, 1, "path of a regular file (%r)" % p.stderr[-300:])
        assert path in p.stderr, p.stderr[-300:]
        with open(path) as f:
            eq(f.read(), "precious", "regular file content")
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_unix_socket_removed_on_sigterm():
    with Env() as e:
        e.client().ping()
        eq(e.bridge.stop(), 0, "exit status")
        assert not os.path.exists(e.path), "socket file left after SIGTERM"


def test_unix_socket_of_a_successor_not_removed():
    with Env() as e:
        e.client().ping()
        # someone replaced the path meanwhile: at exit it is not ours
        os.unlink(e.path)
        other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        other.bind(e.path)
        try:
            e.bridge.stop()
            assert os.path.exists(e.path), \
                "tgbridge removed a socket file that is not its own"
        finally:
            other.close()


def test_unix_default_path_from_environment():
    d = tempfile.mkdtemp(prefix="tgb-unix-")
    try:
        gw = "http://127.0.0.1:%d" % closed_port()
        base = WRAPPER + [BIN, "--gateway", gw, "--listen", "127.0.0.1:0"]
        other = os.path.join(d, "second")
        # under systemd: the (first) $RUNTIME_DIRECTORY
        with Bridge(base, bridge_env({"RUNTIME_DIRECTORY": d + ":" + other,
                                      "TGBRIDGE_UNIX": None})) as b:
            path = os.path.join(d, "tgbridge.sock")
            b.wait_log(r"unix=" + re.escape(path))
            c = LineClient(path)
            try:
                c.ping()
            finally:
                c.close()
            b.stop()
        assert not os.path.exists(path), "socket left after exit"
        # TGBRIDGE_UNIX names the path
        path = os.path.join(d, "env.sock")
        with Bridge(base, bridge_env({"TGBRIDGE_UNIX": path,
                                      "RUNTIME_DIRECTORY": d})) as b:
            c = LineClient(path)
            try:
                c.ping()
            finally:
                c.close()
            b.stop()
        # --unix none: no socket at all
        with Bridge(base + ["--unix", "none"],
                    bridge_env({"RUNTIME_DIRECTORY": d})) as b:
            b.wait_log(r"unix=none")
            assert not os.path.exists(os.path.join(d, "tgbridge.sock"))
            b.stop()
    finally:
        shutil.rmtree(d, ignore_errors=True)


# --------------------------------------------------------------- examples

EXAMPLES = os.path.join(ROOT, "examples")


@timeout(120)
def test_unix_examples_c_client():
    if not shutil.which("cc") or not shutil.which("make"):
        skip("no C compiler / make")
    out = tempfile.mkdtemp(prefix="tgb-example-")
    try:
        p = subprocess.run(["make", "-s", "-C", EXAMPLES, "O=" + out],
                           capture_output=True, text=True, timeout=T(60))
        assert p.returncode == 0, "examples/Makefile failed:\n%s%s" % (
            p.stdout, p.stderr)
        exe = os.path.join(out, "uds_client")
        # the exact flags the README promises, on their own too
        p = subprocess.run(["cc", "-std=c11", "-Wall", "-Wextra", "-Werror",
                            "-o", os.path.join(out, "uds_client2"),
                            os.path.join(EXAMPLES, "uds_client.c")],
                           capture_output=True, text=True, timeout=T(60))
        assert p.returncode == 0, "cc -std=c11 -Wall -Wextra -Werror:\n" + \
            p.stderr
        with Env() as e:
            e.ready()
            req = json.dumps(tc("c client says hi", streaming=True, parts=3))
            p = subprocess.run([exe, "-s", e.path, "text-completion",
                                "default", req], capture_output=True,
                               text=True, timeout=T(30))
            eq(p.returncode, 0, "uds_client exit status (stderr %r)"
               % p.stderr)
            lines = [json.loads(x) for x in p.stdout.splitlines()]
            eq(len(lines), 4, "reply lines printed (%r)" % lines)
            eq(stream_text(lines), "c client says hi", "streamed text")
            # an error reply: printed, exit status 1
            req = json.dumps(tc("p", error={"shape": "E5", "type": "llm-error",
                                            "message": "boom"}))
            p = subprocess.run([exe, "-s", e.path, "text-completion",
                                "default", req], capture_output=True,
                               text=True, timeout=T(30))
            eq(p.returncode, 1, "uds_client on an error reply")
            check_error_line(json.loads(p.stdout.splitlines()[-1]), "c1",
                             "llm-error", "C client's error line")
            # environment default for the socket, and a workspace service
            p = subprocess.run([exe, "config", "-",
                                '{"operation":"list","type":"prompt"}'],
                               capture_output=True, text=True, timeout=T(30),
                               env=dict(os.environ, TGBRIDGE_UNIX=e.path))
            eq(p.returncode, 0, "uds_client config (stderr %r)" % p.stderr)
            last = json.loads(p.stdout.splitlines()[-1])
            eq(last.get("complete"), True, "config reply")
            # no daemon: a clear error, exit status 1
            p = subprocess.run([exe, "-s", os.path.join(out, "nothing")],
                               capture_output=True, text=True, timeout=T(30))
            eq(p.returncode, 1, "uds_client without a daemon")
            assert p.stderr.strip(), "no error message"
    finally:
        shutil.rmtree(out, ignore_errors=True)


@timeout(90)
def test_unix_examples_python_client():
    script = os.path.join(EXAMPLES, "uds_client.py")
    with Env() as e:
        e.ready()

        def run(*args):
            return subprocess.run([PYTHON, script, "--socket", e.path] +
                                  list(args), capture_output=True, text=True,
                                  timeout=T(30))

        p = run("ping")
        eq(p.returncode, 0, "ping (stderr %r)" % p.stderr)
        eq(p.stdout.strip(), '{"type":"pong"}', "ping output")

        req = json.dumps(tc("py line client", streaming=True, parts=3))
        p = run("line", "text-completion", "default", req)
        eq(p.returncode, 0, "line (stderr %r)" % p.stderr)
        lines = [json.loads(x) for x in p.stdout.splitlines()]
        eq(stream_text(lines), "py line client", "line protocol text")

        p = run("rest", FLOW_TC, req)
        eq(p.returncode, 0, "rest (stderr %r)" % p.stderr)
        items = [json.loads(x) for x in p.stdout.splitlines()]
        eq(len(items), 4, "NDJSON items (%r)" % items)
        eq("".join(i.get("response", "") for i in items), "py line client",
           "streamed REST text")

        p = run("get", "/readyz")
        eq(p.returncode, 0, "get /readyz (stderr %r)" % p.stderr)
        eq(json.loads(p.stdout).get("status"), "ready", "readyz")

        p = run("demo")
        eq(p.returncode, 0, "demo (stderr %r)" % p.stderr)
        assert "interleaved" in p.stdout or p.stdout.strip(), p.stdout

        req = json.dumps(tc("p", error={"shape": "E5", "type": "llm-error",
                                        "message": "boom"}))
        p = run("line", "text-completion", "default", req)
        eq(p.returncode, 1, "line with an error reply")
        check_error_line(json.loads(p.stdout.splitlines()[-1]), "py1",
                         "llm-error", "Python client's error line")

    # the module is importable and its classes usable from other programs
    p = subprocess.run([PYTHON, "-c", "import sys; sys.path.insert(0, %r); "
                        "import uds_client; print(uds_client.LineClient, "
                        "uds_client.UnixHTTPConnection)" % EXAMPLES],
                       capture_output=True, text=True, timeout=T(30))
    eq(p.returncode, 0, "import uds_client (stderr %r)" % p.stderr)


@timeout(90)
def test_unix_examples_shell_oneliners():
    if not shutil.which("socat") and not shutil.which("nc"):
        skip("neither socat nor nc installed")
    script = os.path.join(EXAMPLES, "uds_oneliner.sh")
    with Env() as e:
        e.ready()
        p = subprocess.run(["sh", script, e.path], capture_output=True,
                           text=True, timeout=T(60))
        eq(p.returncode, 0, "uds_oneliner.sh (stdout %r stderr %r)"
           % (p.stdout[-500:], p.stderr[-500:]))
        out = p.stdout.splitlines()
        msgs = [json.loads(x) for x in out if x.startswith('{"id"')]
        done = {m["id"] for m in msgs
                if m.get("complete") is True and "response" in m}
        if shutil.which("socat"):
            assert '{"type":"pong"}' in out, "no pong in %r" % out[:10]
            assert {"q1", "a", "b"} <= done, \
                "socat examples incomplete: %s; %r" % (sorted(done), out[:20])
        if "nc -U:" in p.stderr:
            assert "n1" in done, "nc example incomplete: %r" % out[:20]
        if shutil.which("curl"):
            assert any('"status":"ready"' in x.replace(" ", "")
                       for x in out), "no curl /readyz output in %r" % out


def test_unix_route_errors_read_the_body_and_keep_alive():
    # A 404/405 decided from the request head alone is answered only after the body
    # has been read, so a client that sends head and body in separate writes (as
    # http.client does) gets the status, not EPIPE, and may reuse the connection.
    with Env() as env:
        env.ready()
        for make in (lambda: UnixHTTPConnection(env.path),
                     lambda: http.client.HTTPConnection("127.0.0.1", env.bridge.port, timeout=T(30))):
            conn = make()
            try:
                for method, url, status in (("POST", "/healthz", 405), ("POST", "/nope", 404),
                                            ("GET", "/api/v1/config", 405)):
                    body = b'{"pad":"' + b"x" * 65536 + b'"}'
                    conn.putrequest(method, url)
                    conn.putheader("Content-Type", "application/json")
                    conn.putheader("Content-Length", str(len(body)))
                    conn.endheaders()
                    conn.send(body[:10])   # separate writes, like any streaming client
                    conn.send(body[10:])
                    r = conn.getresponse()
                    data = r.read()
                    eq(r.status, status, "%s %s: %r" % (method, url, data[:120]))
                conn.request("GET", "/healthz")  # the same connection is still usable
                r = conn.getresponse()
                eq(r.status, 200, "keep-alive after route errors")
                r.read()
            finally:
                conn.close()
