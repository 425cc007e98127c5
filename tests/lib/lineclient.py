"""The one line-protocol client of the tests (README "Line protocol"), and HTTP
over a Unix socket: a connection with line-buffered reads and deadlines
(LineClient), the request line builder (envelope) and unix_request()."""

import http.client
import json
import socket
import time

from harness import Response, T, eq


def compact(obj):
    return json.dumps(obj, separators=(",", ":"))


def envelope(id=..., service="text-completion", flow="default", **req):
    """A line-protocol request line (bytes, with its newline). `req` is the
    text-completion request; `_mock` controls go in as mock={...}."""
    env = {}
    if id is not ...:
        env["id"] = id
    env["service"] = service
    if flow is not None:
        env["flow"] = flow
    mock = req.pop("mock", None)
    body = {"system": "", "prompt": "hello"}
    body.update(req)
    if mock:
        body["_mock"] = mock
    env["request"] = body
    return compact(env).encode() + b"\n"


def idkey(value):
    """A hashable key for a JSON id (ids may be any JSON value)."""
    return json.dumps(value, sort_keys=True)


class LineClient:
    """One line-protocol connection. Reads are line-buffered with deadlines;
    nothing here sleeps."""

    def __init__(self, path, timeout=10):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(T(timeout))
        self.sock.connect(path)
        self.buf = b""
        self.eof = False
        self.raw_lines = []       # every line received, as bytes

    # -- sending
    def send_raw(self, data):
        self.sock.sendall(data)

    def send(self, *lines):
        out = b""
        for line in lines:
            if isinstance(line, dict):
                line = compact(line)
            if isinstance(line, str):
                line = line.encode()
            out += line if line.endswith(b"\n") else line + b"\n"
        self.sock.sendall(out)

    def shutdown_write(self):
        self.sock.shutdown(socket.SHUT_WR)

    # -- receiving
    def raw_line(self, timeout=10, allow_eof=False):
        """Next line (bytes, without "\\n"); None at EOF if allow_eof."""
        deadline = time.monotonic() + T(timeout)
        while b"\n" not in self.buf:
            if self.eof:
                if allow_eof:
                    return None
                raise AssertionError("connection closed by tgbridge; "
                                     "unterminated rest %r; lines so far: %s"
                                     % (self.buf[:200], self.tail()))
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no reply line within %ss; lines so far: "
                                     "%s" % (timeout, self.tail()))
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(262144)
            except socket.timeout:
                continue
            if not data:
                self.eof = True
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        self.raw_lines.append(line)
        return line

    def line(self, timeout=10):
        raw = self.raw_line(timeout)
        try:
            return json.loads(raw)
        except ValueError:
            raise AssertionError("reply line is not JSON: %r" % raw[:300])

    def lines(self, n, timeout=10):
        deadline = time.monotonic() + T(timeout)
        return [self.line(max(0.01, (deadline - time.monotonic()) / T(1)))
                for _ in range(n)]

    def collect(self, ids, timeout=20):
        """Read until every id in `ids` got its complete:true line. Returns
        {idkey: [reply, ...]} in arrival order and the arrival order of all
        lines as [idkey, ...]. Fails on a line for an unknown id, a line
        after an id's complete:true, or a line without "complete"."""
        want = {idkey(i) for i in ids}
        got = {k: [] for k in want}
        done = set()
        order = []
        deadline = time.monotonic() + T(timeout)
        while done != want:
            left = (deadline - time.monotonic()) / T(1)
            if left <= 0:
                raise AssertionError("ids not complete after %ss: %s"
                                     % (timeout, sorted(want - done)))
            msg = self.line(left)
            assert isinstance(msg, dict) and "id" in msg, \
                "reply without an id: %r" % msg
            k = idkey(msg["id"])
            assert k in want, "reply for an id this client never sent " \
                "(or with its id altered): %r" % (msg,)
            assert k not in done, "reply after complete:true for %s: %r" \
                % (k, msg)
            assert msg.get("complete") in (True, False), \
                "reply without a boolean complete: %r" % (msg,)
            got[k].append(msg)
            order.append(k)
            if msg["complete"]:
                done.add(k)
        return got, order

    def ping(self, timeout=10):
        """Round trip: every reply line before the pong is a failure (used to
        show that nothing else was pending on the connection)."""
        self.send(b'{"type":"ping"}')
        raw = self.raw_line(timeout)
        eq(raw, b'{"type":"pong"}', "reply to a ping")

    def expect_eof(self, timeout=10):
        """Read to the end; returns the lines received before EOF."""
        rest = []
        while True:
            try:
                line = self.raw_line(timeout, allow_eof=True)
            except ConnectionResetError:
                return rest
            if line is None:
                assert not self.buf, "unterminated data before EOF: %r" \
                    % self.buf[:200]
                return rest
            rest.append(line)

    def tail(self):
        return [ln[:200] for ln in self.raw_lines[-6:]]

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over an AF_UNIX socket."""

    def __init__(self, path, timeout=30):
        super().__init__("localhost", timeout=T(timeout))
        self.unix_path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.unix_path)
        self.sock = s


def unix_request(path, method, url, body=None, headers=None, timeout=30):
    hdrs = dict(headers or {})
    data = body if body is None or isinstance(body, bytes) else \
        json.dumps(body).encode()
    if data is not None:
        hdrs.setdefault("Content-Type", "application/json")
    t0 = time.monotonic()
    conn = UnixHTTPConnection(path, timeout)
    try:
        try:
            conn.request(method, url, body=data, headers=hdrs)
        except BrokenPipeError:
            pass    # answered and closed before the body was read: read it
        r = conn.getresponse()
        return Response(r.status, r.headers, r.read(), time.monotonic() - t0)
    finally:
        conn.close()
