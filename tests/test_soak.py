"""A short soak: REST and Unix-socket callers in parallel — streaming, hanging up,
reusing ids, sending junk — while the gateway connection is dropped and the token
reloaded (SIGHUP) at random.  The daemon must keep answering every caller with a
well-formed reply, stay responsive, and exit cleanly (under `make asan` /
`make valgrind` this is also a memory-safety run)."""

import http.client
import json
import os
import random
import signal
import socket
import tempfile
import threading
import time

from harness import SCALE, start_bridge, start_mock, timeout

TOKEN = "tg_soak_token_5d1"
# A few seconds in `make test`; `make soak` runs it for minutes (TGBRIDGE_SOAK_SECONDS).
DURATION = float(os.environ.get("TGBRIDGE_SOAK_SECONDS") or 6.0)


def _rest_caller(port, seed, stop, problems):
    r = random.Random(seed)
    while time.monotonic() < stop:
        mock = r.choice([{}, {"parts": 3, "delay": 0.01}, {"never": True}, {"drop": True, "after": 1},
                         {"error": {"shape": "E5", "type": "llm-error", "message": "x"}}, {"size": 100000}])
        accept = r.choice(["application/json", "application/x-ndjson", "text/event-stream"])
        body = json.dumps({"system": "s", "prompt": "p%d" % seed, "streaming": accept != "application/json",
                           "_mock": mock})
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10 * SCALE)
        try:
            c.request("POST", "/api/v1/flow/default/service/text-completion", body, {"Accept": accept})
            resp = c.getresponse()
            if r.random() < 0.25:
                resp.read(8)  # hang up mid-reply on purpose
                continue
            data = resp.read()
            if resp.status not in (200, 502, 503, 504):
                problems.append("REST status %d: %r" % (resp.status, data[:200]))
            elif accept == "application/json" or resp.status != 200:
                json.loads(data)
            elif data and not data.endswith(b"\n"):
                problems.append("stream not ended by a newline: %r" % data[-80:])
        except (OSError, http.client.HTTPException, ValueError) as e:
            problems.append("REST caller: %r" % e)
        finally:
            c.close()


def _line_caller(path, seed, stop, problems):
    r = random.Random(seed)
    while time.monotonic() < stop:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(10 * SCALE)
        try:
            s.connect(path)
            n = r.randint(1, 12)
            for k in range(n):
                mock = r.choice([{}, {"parts": 2}, {"never": True}, {"drop": True}])
                s.sendall((json.dumps({"id": k, "service": "text-completion", "flow": "default",
                                       "request": {"system": "s", "prompt": "q", "_mock": mock}}) + "\n").encode())
            s.sendall(b"junk\n")
            if r.random() < 0.5:
                time.sleep(r.random() * 0.2)
                continue  # hang up with requests in flight
            buf = b""
            while buf.count(b"\n") < 1:  # at least the junk line's error comes back
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
            for line in buf.split(b"\n")[:-1]:
                json.loads(line)
        except (OSError, ValueError) as e:
            problems.append("line caller: %r" % e)
        finally:
            s.close()


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
        problems = []
        threads = [threading.Thread(target=_rest_caller, args=(b.port, i, stop, problems)) for i in range(8)]
        threads += [threading.Thread(target=_line_caller, args=(path, 100 + i, stop, problems)) for i in range(4)]
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
        assert not problems, "\n".join(problems[:10])
        b.wait_ready()
        deadline = time.monotonic() + 5 * SCALE
        while True:  # the last hang-ups may still be on their way in
            st = b.get("/status").json()
            if st["rest"]["active_calls"] == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert st["requests"]["submitted"] > 100, st
        assert st["rest"]["active_calls"] == 0, st
        b.stop()  # exit status 0 (and sanitizer-clean under make asan)
