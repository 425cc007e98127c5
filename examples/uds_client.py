#!/usr/bin/python3
"""A client for tgbridge's Unix socket, standard library only.

Both protocols the socket speaks (docs/protocols.md, "Unix socket"):

* the line protocol: one JSON request envelope per line, one JSON reply per
  line (`LineClient`: several requests in flight on one connection, replies
  routed by id);
* HTTP: the REST mirror, here with streamed NDJSON replies
  (`UnixHTTPConnection`, an http.client.HTTPConnection on a socket path).

Command line:

    uds_client.py [--socket PATH] ping
    uds_client.py [--socket PATH] line SERVICE FLOW REQUEST_JSON   # FLOW "-": none
    uds_client.py [--socket PATH] rest ROUTE REQUEST_JSON          # streamed NDJSON
    uds_client.py [--socket PATH] get ROUTE                        # e.g. /readyz
    uds_client.py [--socket PATH] demo                             # 3 requests at once

    uds_client.py line graph-rag default '{"query":"What is TrustGraph?","streaming":true}'
    uds_client.py rest /api/v1/flow/default/service/graph-rag \\
        '{"query":"What is TrustGraph?","streaming":true}'
    uds_client.py line config - '{"operation":"list","type":"prompt"}'

`line` prints every reply line as received; `rest` prints every NDJSON item.
The socket defaults to $TGBRIDGE_UNIX, else /run/tgbridge/tgbridge.sock as
root, else $XDG_RUNTIME_DIR/tgbridge.sock. Exit status: 0 success, 1 an error
reply (or HTTP status >= 400, or a connection problem), 2 usage.

As a module:

    from uds_client import LineClient
    with LineClient("/run/tgbridge/tgbridge.sock") as c:
        a = c.submit("graph-rag", {"query": "What is X?", "streaming": True},
                     flow="default")
        b = c.submit("config", {"operation": "list", "type": "prompt"})
        for reply in c.replies():          # interleaved, until all complete
            print(reply["id"], reply.get("response") or reply.get("error"))
"""

import argparse
import http.client
import itertools
import json
import os
import socket
import sys


def default_socket():
    path = os.environ.get("TGBRIDGE_UNIX")
    if path:
        return path
    if os.geteuid() == 0 or not os.environ.get("XDG_RUNTIME_DIR"):
        return "/run/tgbridge/tgbridge.sock"
    return os.path.join(os.environ["XDG_RUNTIME_DIR"], "tgbridge.sock")


# --------------------------------------------------------------------------
# line protocol

class ReplyError(Exception):
    """An error line: {"id":…,"error":{"type":…,"message":…},"complete":true}"""

    def __init__(self, reply):
        err = reply.get("error") or {}
        super().__init__("%s: %s" % (err.get("type"), err.get("message")))
        self.reply = reply
        self.type = err.get("type")


class LineClient:
    """One connection speaking the line protocol.

    Ids only need to be unique among this connection's requests in flight;
    `submit` makes them up ("py1", "py2", …) unless given one."""

    def __init__(self, path=None, timeout=600):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path or default_socket())
        self._buf = b""
        self._ids = ("py%d" % n for n in itertools.count(1))
        self.pending = set()          # ids submitted, not yet complete

    def send_line(self, obj):
        self.sock.sendall(json.dumps(obj, separators=(",", ":")).encode()
                          + b"\n")

    def submit(self, service, request, flow=None, id=None, workspace=None):
        """Send one request; returns its id. Replies come from replies()."""
        if id is None:
            id = next(self._ids)
        env = {"id": id, "service": service}
        if flow:
            env["flow"] = flow
        if workspace:
            env["workspace"] = workspace
        env["request"] = request
        self.send_line(env)
        self.pending.add(id)
        return id

    def read_line(self):
        """The next reply line as an object (None at end of connection)."""
        while b"\n" not in self._buf:
            data = self.sock.recv(65536)
            if not data:
                return None
            self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def replies(self):
        """Yield reply lines until every submitted request is complete."""
        while self.pending:
            reply = self.read_line()
            if reply is None:
                raise ConnectionError("tgbridge closed the connection with "
                                      "%d request(s) unanswered"
                                      % len(self.pending))
            if reply.get("complete") and reply.get("id") in self.pending:
                self.pending.discard(reply["id"])
            yield reply

    def call(self, service, request, flow=None):
        """One request; returns the list of its `response` payloads, or
        raises ReplyError."""
        self.submit(service, request, flow)
        out = []
        for reply in self.replies():
            if "error" in reply:
                raise ReplyError(reply)
            out.append(reply["response"])
        return out

    def ping(self):
        self.send_line({"type": "ping"})
        return self.read_line()

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


# --------------------------------------------------------------------------
# HTTP over the socket

class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client on a Unix socket: the REST routes, unchanged."""

    def __init__(self, path=None, timeout=600):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path or default_socket()

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


def rest_stream(path, route, body):
    """POST `body` to `route` asking for NDJSON; yields (status, item) for
    every line of the reply as it arrives (a non-2xx reply yields its JSON
    body once)."""
    conn = UnixHTTPConnection(path)
    try:
        try:
            conn.request("POST", route, body=json.dumps(body).encode(),
                         headers={"Content-Type": "application/json",
                                  "Accept": "application/x-ndjson"})
        except BrokenPipeError:
            # tgbridge answered (404, 405, 413, ...) and closed before it
            # read the whole body: the answer is still there to be read
            pass
        resp = conn.getresponse()
        if resp.status >= 300:
            yield resp.status, json.loads(resp.read() or b"null")
            return
        for line in resp:              # chunked NDJSON: one item per line
            if line.strip():
                yield resp.status, json.loads(line)
    finally:
        conn.close()


def rest_get(path, route):
    conn = UnixHTTPConnection(path, timeout=30)
    try:
        conn.request("GET", route)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    finally:
        conn.close()


# --------------------------------------------------------------------------
# command line

def emit(obj):
    print(json.dumps(obj, separators=(",", ":")), flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="tgbridge Unix-socket client (line protocol and REST)")
    ap.add_argument("--socket", "-s", default=None,
                    help="socket path (default: %s)" % default_socket())
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("ping")
    p = sub.add_parser("line", help="one request over the line protocol")
    p.add_argument("service")
    p.add_argument("flow", help='flow id, "-" for workspace services')
    p.add_argument("request", help="the payload, a JSON object")
    p = sub.add_parser("rest", help="POST a route, streamed NDJSON")
    p.add_argument("route")
    p.add_argument("request")
    p = sub.add_parser("get", help="GET a route (/readyz, /status)")
    p.add_argument("route")
    sub.add_parser("demo", help="three requests in flight on one connection")
    args = ap.parse_args(argv)
    path = args.socket or default_socket()

    try:
        if args.cmd == "ping":
            with LineClient(path, timeout=30) as c:
                reply = c.ping()
            emit(reply)
            return 0 if reply == {"type": "pong"} else 1

        if args.cmd == "line":
            with LineClient(path) as c:
                c.submit(args.service, json.loads(args.request),
                         flow=None if args.flow == "-" else args.flow)
                failed = False
                for reply in c.replies():
                    emit(reply)
                    failed = failed or "error" in reply
            return 1 if failed else 0

        if args.cmd == "rest":
            status, item = 0, {}
            for status, item in rest_stream(path, args.route,
                                            json.loads(args.request)):
                emit(item)
            # a stream that failed after it started ends with {"error":…}
            return 1 if status >= 300 or "error" in item else 0

        if args.cmd == "get":
            status, body = rest_get(path, args.route)
            emit(body)
            return 0 if status < 300 else 1

        if args.cmd == "demo":
            with LineClient(path) as c:
                ids = [c.submit("text-completion",
                                {"system": "Be terse.", "prompt": p,
                                 "streaming": True}, flow="default")
                       for p in ("one", "two", "three")]
                texts = {i: "" for i in ids}
                for reply in c.replies():
                    if "error" in reply:
                        print("%s failed: %s" % (reply["id"],
                                                 reply["error"]), flush=True)
                        return 1
                    print("%s %s" % (reply["id"], "complete" if
                                     reply["complete"] else "part"),
                          flush=True)
                    texts[reply["id"]] += reply["response"].get(
                        "response", "")
            for i in ids:
                print("%s: %s" % (i, texts[i]))
            return 0
    except (OSError, ValueError) as e:
        print("uds_client.py: %s" % e, file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
