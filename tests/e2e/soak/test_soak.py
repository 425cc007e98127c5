"""A short soak: REST and Unix-socket callers in parallel — streaming, hanging up,
reusing ids, sending junk — while the gateway connection is dropped and the token
reloaded (SIGHUP) at random.  The daemon must keep answering every caller with a
well-formed reply, stay responsive, and exit cleanly (under `make asan` /
`make valgrind` this is also a memory-safety run).

Every caller that does not hang up on purpose checks that each of its requests got
exactly one complete answer of the kind its `_mock` control allows: the request's
own text back (every prompt is unique, so an answer meant for another caller is
caught), the gateway's error, or one of tgbridge's errors for an outage
(`TRANSIENT`).  At the end, once nothing is left in flight, tgbridge's counters must
account for every request the callers saw answered, and for no more than the callers
sent."""

import collections
import http.client
import json
import os
import random
import re
import signal
import socket
import tempfile
import threading
import time

from harness import (SCALE, bridge_status, check_status, start_bridge, start_mock,
                     timeout, wait_bridge_status)

TOKEN = "tg_soak_token_5d1"
# A few seconds in `make test`; `make soak` runs it for minutes (TGBRIDGE_SOAK_SECONDS).
DURATION = float(os.environ.get("TGBRIDGE_SOAK_SECONDS") or 6.0)
TC_PATH = "/api/v1/flow/default/service/text-completion"

# tgbridge's own errors that the outages of this test may cause to any request, with
# their REST statuses: the connection dropped under it, no connection for
# --queue-timeout, or no complete reply within --request-timeout.
TRANSIENT = {"upstream-disconnected": 502, "gateway-unavailable": 503, "request-timeout": 504}
BLOB_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


def blob(n):
    """The mock's text for `_mock.size` n."""
    return (BLOB_ALPHABET * (n // len(BLOB_ALPHABET) + 1))[:n]


class Tally:
    """What the callers saw, for the final comparison with tgbridge's counters.

    known: requests tgbridge certainly answered (the caller read the terminal reply,
      or the reply had begun with its status and was complete by then); of those,
      gateway: answered by the gateway to the end (its text or its error: tgbridge's
      `completed`), own[type]: failed by tgbridge with that error (`failed`), and
      untyped: answered, but the caller hung up before seeing which way.
    unknown: requests of callers that hung up while they may have been pending, or
      before tgbridge had even read them: each may or may not have been submitted,
      and completed or failed."""

    def __init__(self):
        self.lock = threading.Lock()
        self.problems = []
        self.known = self.gateway = self.untyped = self.unknown = 0
        self.own = collections.Counter()

    def problem(self, text):
        with self.lock:
            self.problems.append(text)

    def answered(self, outcome):
        with self.lock:
            self.known += 1
            if outcome[0] == "own":
                self.own[outcome[1]] += 1
            elif outcome[0] == "untyped":
                self.untyped += 1
            else:
                self.gateway += 1

    def maybe(self, n=1):
        with self.lock:
            self.unknown += n


def _own_error(obj):
    """The type of a tgbridge/gateway error object {"error":{"type","message"}}, or None
    if obj is not one."""
    if not isinstance(obj, dict) or set(obj) != {"error"}:
        return None
    err = obj["error"]
    if not isinstance(err, dict) or not isinstance(err.get("type"), str) \
            or not isinstance(err.get("message"), str):
        return None
    return err["type"]


def _check_outcome(who, mock, want_text, outcome):
    """An outcome is ("ok", text), ("gateway", error type) or ("own", error type).
    Returns a problem string or None."""
    kind, what = outcome
    if kind == "own":
        if what in TRANSIENT:
            return None
        return "%s: tgbridge error %r (mock %r)" % (who, what, mock)
    if "never" in mock or "drop" in mock:
        return "%s: %r for a request that cannot complete (mock %r)" % (who, outcome, mock)
    if "error" in mock:
        if outcome != ("gateway", mock["error"]["type"]):
            return "%s: %r, expected the gateway's %s" % (who, outcome, mock["error"]["type"])
        return None
    if kind != "ok" or what != want_text:
        shown = what if not isinstance(what, str) or len(what) < 80 else what[:60] + "...(%d)" % len(what)
        return "%s: %r, expected the text %r (mock %r)" % (who, (kind, shown), want_text[:60], mock)
    return None


def _stream_items(accept, data):
    """The payloads of a streamed body as [(is_error_item, obj)]; raises ValueError
    when the framing is broken."""
    text = data.decode("utf-8")
    items = []
    if accept == "application/x-ndjson":
        if not text.endswith("\n"):
            raise ValueError("stream not ended by a newline: %r" % text[-80:])
        for line in text[:-1].split("\n"):
            obj = json.loads(line)
            items.append((_own_error(obj) is not None, obj))
        return items
    if not text.endswith("\n\n"):
        raise ValueError("SSE stream not ended by a blank line: %r" % text[-80:])
    for block in text[:-2].split("\n\n"):
        lines = block.split("\n")
        if all(ln.startswith(":") for ln in lines):
            continue  # a heartbeat comment
        event, data_lines = "message", []
        for ln in lines:
            k, _, v = ln.partition(":")
            v = v[1:] if v.startswith(" ") else v
            if k == "event":
                event = v
            elif k == "data":
                data_lines.append(v)
            elif k:
                raise ValueError("SSE field %r in %r" % (k, block[:200]))
        if not data_lines:
            raise ValueError("SSE event without data: %r" % block[:200])
        obj = json.loads("\n".join(data_lines))
        if event not in ("message", "error") or (event == "error") != (_own_error(obj) is not None):
            raise ValueError("SSE event %r with %r" % (event, "\n".join(data_lines)[:200]))
        items.append((event == "error", obj))
    return items


def _rest_outcome(accept, status, data):
    """The outcome of a complete REST reply; raises ValueError if it is malformed."""
    if status not in (200, 502, 503, 504):
        raise ValueError("REST status %d: %r" % (status, data[:200]))
    if status != 200 or accept == "application/json":
        body = json.loads(data)
        etype = _own_error(body)
        if status == 200:
            if etype is not None:
                return ("gateway", etype)  # a service error, as the gateway's REST route gives it
            if not isinstance(body, dict) or not isinstance(body.get("response"), str):
                raise ValueError("200 reply without a text response: %r" % data[:200])
            return ("ok", body["response"])
        if etype is None:
            raise ValueError("%d reply is not an error object: %r" % (status, data[:200]))
        if etype in TRANSIENT:
            if TRANSIENT[etype] != status:
                raise ValueError("%s with status %d" % (etype, status))
            return ("own", etype)
        if status != 502:  # a service error before the stream began
            raise ValueError("gateway error %s with status %d" % (etype, status))
        return ("gateway", etype)
    items = _stream_items(accept, data)
    if not items:
        raise ValueError("empty %s stream" % accept)
    for is_err, obj in items[:-1]:
        if is_err or not isinstance(obj.get("response"), str) or obj.get("end_of_stream"):
            raise ValueError("stream item before the last one: %r" % json.dumps(obj)[:200])
    is_err, last = items[-1]
    if is_err:
        etype = _own_error(last)
        return ("own" if etype in TRANSIENT else "gateway", etype)
    if last.get("end_of_stream") is not True or not isinstance(last.get("response"), str):
        raise ValueError("stream not ended by its final item: %r" % json.dumps(last)[:200])
    return ("ok", "".join(obj["response"] for _, obj in items))


def _rest_caller(port, seed, stop, tally):
    r = random.Random(seed)
    n = 0
    while time.monotonic() < stop:
        n += 1
        mock = r.choice([{}, {"parts": 3, "delay": 0.01}, {"never": True}, {"drop": True, "after": 1},
                         {"error": {"shape": "E5", "type": "llm-error", "message": "x"}}, {"size": 100000}])
        accept = r.choice(["application/json", "application/x-ndjson", "text/event-stream"])
        prompt = "p%d-%d" % (seed, n)
        want = blob(mock["size"]) if "size" in mock else prompt
        body = json.dumps({"system": "s", "prompt": prompt, "streaming": accept != "application/json",
                           "_mock": mock})
        who = "REST caller %d request %d (%s)" % (seed, n, accept)
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10 * SCALE)
        try:
            c.request("POST", TC_PATH, body, {"Accept": accept})
            resp = c.getresponse()
            if r.random() < 0.25:
                resp.read(8)  # hang up mid-reply on purpose
                if accept == "application/json" or resp.status != 200:
                    tally.answered(("untyped", None))  # the status came with the whole answer
                else:
                    tally.maybe()
                continue
            data = resp.read()
            outcome = _rest_outcome(accept, resp.status, data)
            tally.answered(outcome)
            bad = _check_outcome(who, mock, want, outcome)
            if bad:
                tally.problem(bad)
        except (OSError, http.client.HTTPException, ValueError) as e:
            tally.problem("%s: %r" % (who, e))
            tally.maybe()  # counted as possibly pending: the problem fails the test anyway
        finally:
            c.close()


class _LineConn:
    """One line-protocol connection's replies: every line is checked as it comes."""

    def __init__(self, who, requests, tally):
        self.who, self.requests, self.tally = who, requests, tally
        self.pending = set(requests)
        self.text = {k: "" for k in requests}
        self.junk_errors = 0
        self.pongs = 0

    def line(self, raw):
        try:
            obj = json.loads(raw)
        except ValueError:
            self.tally.problem("%s: reply line is not JSON: %r" % (self.who, raw[:200]))
            return
        if obj == {"type": "pong"}:
            self.pongs += 1
            return
        if not isinstance(obj, dict) or "id" not in obj:
            self.tally.problem("%s: reply without an id: %r" % (self.who, raw[:200]))
            return
        k = obj["id"]
        if k is None:
            self.junk_errors += 1
            etype = obj.get("error", {}).get("type") if isinstance(obj.get("error"), dict) else None
            if etype != "bad-request" or obj.get("complete") is not True or self.junk_errors > 1:
                self.tally.problem("%s: reply #%d with id null: %r" % (self.who, self.junk_errors, raw[:200]))
            return
        if k not in self.requests:
            self.tally.problem("%s: reply for an id never sent: %r" % (self.who, raw[:200]))
            return
        if k not in self.pending:
            self.tally.problem("%s: a line after the terminal reply of id %r: %r" % (self.who, k, raw[:200]))
            return
        who = "%s id %r" % (self.who, k)
        mock, prompt = self.requests[k]
        if "error" in obj:
            etype = obj["error"].get("type") if isinstance(obj["error"], dict) else None
            if obj.get("complete") is not True or not isinstance(etype, str) \
                    or not isinstance(obj["error"].get("message"), str) or set(obj) != {"id", "error", "complete"}:
                self.tally.problem("%s: malformed error line %r" % (who, raw[:200]))
            outcome = ("own" if etype in TRANSIENT else "gateway", etype)
        elif "response" in obj and obj.get("complete") in (True, False) and set(obj) == {"id", "response", "complete"}:
            part = obj["response"].get("response") if isinstance(obj["response"], dict) else None
            if not isinstance(part, str):
                self.tally.problem("%s: response without text %r" % (who, raw[:200]))
                part = ""
            self.text[k] += part
            if not obj["complete"]:
                return
            outcome = ("ok", self.text[k])
        else:
            self.tally.problem("%s: malformed reply line %r" % (who, raw[:200]))
            return
        self.pending.discard(k)
        self.tally.answered(outcome)
        bad = _check_outcome(who, mock, prompt, outcome)
        if bad:
            self.tally.problem(bad)


def _read_lines(s, conn, until):
    """Feeds conn every complete line until until() is true; False at end of stream."""
    buf = b""
    while not until():
        chunk = s.recv(65536)
        if not chunk:
            if buf:
                conn.tally.problem("%s: unterminated last line %r" % (conn.who, buf[:200]))
            return False
        buf += chunk
        *lines, buf = buf.split(b"\n")
        for raw in lines:
            conn.line(raw.decode("utf-8", "replace"))
    if buf:
        conn.tally.problem("%s: more after the last awaited line: %r" % (conn.who, buf[:200]))
    return True


def _line_caller(path, seed, stop, tally):
    r = random.Random(seed)
    c = 0
    while time.monotonic() < stop:
        c += 1
        who = "line caller %d connection %d" % (seed, c)
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(10 * SCALE)
        requests = {}
        try:
            s.connect(path)
            n = r.randint(1, 12)
            for k in range(n):
                mock = r.choice([{}, {"parts": 2}, {"never": True}, {"drop": True}])
                prompt = "q%d-%d-%d" % (seed, c, k)
                requests[k] = (mock, prompt)
                s.sendall((json.dumps({"id": k, "service": "text-completion", "flow": "default",
                                       "request": {"system": "s", "prompt": prompt, "_mock": mock}}) + "\n").encode())
            s.sendall(b"junk\n")
            if r.random() < 0.5:
                time.sleep(r.random() * 0.2)
                tally.maybe(n)
                continue  # hang up with requests in flight
            conn = _LineConn(who, requests, tally)
            if r.random() < 0.5:
                # half-close: every reply still comes, then tgbridge closes
                s.shutdown(socket.SHUT_WR)
                _read_lines(s, conn, lambda: False)
            else:
                # stay connected; a ping after the last reply shows nothing else was due
                if _read_lines(s, conn, lambda: not conn.pending and conn.junk_errors):
                    s.sendall(b'{"type":"ping"}\n')
                    if not _read_lines(s, conn, lambda: conn.pongs):
                        tally.problem("%s: closed by tgbridge before the pong" % who)
            if conn.pending or not conn.junk_errors:
                tally.problem("%s: connection ended with ids %s unanswered%s"
                              % (who, sorted(conn.pending), "" if conn.junk_errors else ", junk line unanswered"))
                tally.maybe(len(conn.pending))
        except (OSError, ValueError) as e:
            tally.problem("%s: %r" % (who, e))
            tally.maybe(len(requests))
        finally:
            s.close()


def _metrics(b):
    r = b.get("/metrics")
    check_status(r, 200, "/metrics")
    failed, values = {}, {}
    for line in r.body.decode().splitlines():
        m = re.match(r'tgbridge_requests_failed_total\{type="([^"]*)"\} (\d+)$', line)
        if m:
            failed[m.group(1)] = int(m.group(2))
        elif line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = value
    return failed, values


@timeout(DURATION + 120)
def test_soak_callers_drops_and_token_reloads():
    work = tempfile.mkdtemp(prefix="tgb-soak-")
    token_file = os.path.join(work, "token")
    with open(token_file, "w") as f:
        f.write(TOKEN)
    path = os.path.join(work, "s.sock")
    m = start_mock("v2d", tokens=[TOKEN])
    b = start_bridge(m.url, "--token-file", token_file, "--unix", path, "--request-timeout", "0.7",
                     "--queue-timeout", "2", "--max-inflight", "16", "--reconnect-min", "0.05",
                     "--reconnect-max", "0.3", "--drain-timeout", "0.5")
    with m, b:
        b.wait_ready()
        stop = time.monotonic() + DURATION
        tally = Tally()
        threads = [threading.Thread(target=_rest_caller, args=(b.port, i, stop, tally)) for i in range(8)]
        threads += [threading.Thread(target=_line_caller, args=(path, 100 + i, stop, tally)) for i in range(4)]
        for t in threads:
            t.start()
        r = random.Random(7)
        while time.monotonic() < stop:
            time.sleep(r.random() * 1.0)
            if r.random() < 0.5:
                m.drop()
            else:
                os.kill(b.pid, signal.SIGHUP)
        for t in threads:
            t.join(timeout=30 * SCALE)
        assert not any(t.is_alive() for t in threads), "callers still running 30 s after the end"
        assert not tally.problems, "%d problems:\n%s" % (len(tally.problems), "\n".join(tally.problems[:10]))

        # Requests tgbridge gave up on ({"never": true} past --request-timeout) stay in
        # the gateway's window until the gateway finishes them, which the mock never
        # does: dropping the connection retires them.  Then nothing may be left.
        m.drop()
        b.wait_ready()
        st = wait_bridge_status(
            b, lambda st: (st["rest"]["active_calls"] == 0 and st["requests"]["in_flight"] == 0
                           and st["requests"]["queued"] == 0 and st["requests"]["window_used"] == 0
                           and not st["upstream"]["draining_old_connection"]),
            timeout=5, what="nothing left in flight, queued or active")
        failed_by_type, values = _metrics(b)
        req = st["requests"]
        assert values.get('tgbridge_active_calls{frontend="line"}') == "0", values
        assert req["submitted"] > 100, st

        # Every request a caller saw answered was submitted and counted once, as
        # completed (the gateway answered it) or failed (tgbridge's own error); the
        # requests of callers that hung up may or may not have been.
        known, unknown = tally.known, tally.unknown
        summary = ("callers: %d answered (%d by the gateway, %d by tgbridge %s, %d untyped), "
                   "%d unknown; /status %s; failed by type %s"
                   % (known, tally.gateway, sum(tally.own.values()), dict(tally.own), tally.untyped,
                      unknown, req, failed_by_type))
        assert known <= req["submitted"] <= known + unknown, "submitted: " + summary
        assert known <= req["completed"] + req["failed"] <= known + unknown, "answered: " + summary
        assert req["completed"] + req["failed"] <= req["submitted"], "answered > submitted: " + summary
        # ...and with the hang-ups counted too, nothing is unaccounted for.
        assert req["completed"] + req["failed"] + req["abandoned"] == req["submitted"], \
            "submitted != completed + failed + abandoned: " + summary
        assert tally.gateway <= req["completed"] <= tally.gateway + tally.untyped + unknown, \
            "completed: " + summary
        assert sum(failed_by_type.values()) == req["failed"], "failed by type: " + summary
        assert set(failed_by_type) <= set(TRANSIENT), "unexpected failure types: " + summary
        for etype in TRANSIENT:
            seen = tally.own.get(etype, 0)
            assert seen <= failed_by_type.get(etype, 0) <= seen + tally.untyped + unknown, \
                "failed %s: %s" % (etype, summary)
        assert bridge_status(b)["rest"]["active_calls"] == 0
        b.stop()  # exit status 0 (and sanitizer-clean under make asan)
