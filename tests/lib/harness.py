"""Test harness for tgbridge integration tests (standard library only).

Every process a test starts through this module is registered and is
stopped by `cleanup()` (tests/conftest.py calls it after every test, pass or fail);
tests should still use the returned objects as context managers.

Environment:
  TGBRIDGE_BIN      path of the daemon (default ./tgbridge)
  TGBRIDGE_WRAPPER  command prefix, e.g. "valgrind --error-exitcode=99 -q";
                    when set, every wait is multiplied by SCALE (10)
  MOCK_GATEWAY      mock gateway script (default tests/lib/mock_gateway.py)
  TEST_TIMEOUT_SCALE  override the wait multiplier
"""

import http.client
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import tempfile
import threading
import time

import pytest

from middleman import Middleman

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else "python3"


def _path_from_env(name, default):
    value = os.environ.get(name) or default
    return value if os.path.isabs(value) else os.path.join(ROOT, value)


BIN = _path_from_env("TGBRIDGE_BIN", "tgbridge")
MOCK = _path_from_env("MOCK_GATEWAY", "tests/lib/mock_gateway.py")
WRAPPER = shlex.split(os.environ.get("TGBRIDGE_WRAPPER", ""))
SCALE = float(os.environ.get("TEST_TIMEOUT_SCALE") or (10 if WRAPPER else 1))

# Environment variables that would leak the developer's configuration into
# the daemon under test; start_bridge() removes them unless a test sets them.
_HERMETIC = ("TRUSTGRAPH_URL", "TRUSTGRAPH_TOKEN", "GATEWAY_SECRET",
             "TRUSTGRAPH_WORKSPACE")

LISTEN_RE = re.compile(r"listening rest=127\.0\.0\.1:(\d+)")


def T(seconds):
    """A wait of `seconds`, scaled for slow wrappers (valgrind)."""
    return seconds * SCALE


# A test that cannot run in this environment skips with pytest's own exception
# (pytest reports the reason; `make test` counts it as skipped).
Skip = pytest.skip.Exception


def skip(reason):
    pytest.skip(reason)


def timeout(seconds):
    """Decorator: per-test wall-clock limit (times SCALE), enforced by
    pytest-timeout through tests/conftest.py; 60 s when not given."""
    def deco(fn):
        fn.timeout = seconds
        return fn
    return deco


# --------------------------------------------------------------------------
# process bookkeeping

_live = []          # every _Proc started in this (test) process
_live_lock = threading.Lock()


def _register(p):
    with _live_lock:
        _live.append(p)


def cleanup():
    """Stop everything still running. Returns a list of problem strings
    (a bridge that did not exit 0 on SIGTERM, i.e. crashed or leaked under
    valgrind)."""
    problems = []
    with _live_lock:
        procs = list(reversed(_live))
        _live.clear()
    for p in procs:
        try:
            if isinstance(p, Bridge) and p.running() and p.check_exit:
                try:
                    p.stop()
                except AssertionError as e:
                    problems.append(str(e))
            else:
                p.kill()
        except Exception as e:  # pragma: no cover - best effort
            problems.append("cleanup of %r: %s" % (p, e))
    return problems


def live_bridges():
    with _live_lock:
        return [p for p in _live if isinstance(p, Bridge)]


class _Capture:
    """Reads a pipe in a thread; lets callers wait for a regex."""

    def __init__(self, pipe, name):
        self._buf = []
        self._cond = threading.Condition()
        self._eof = False
        self._t = threading.Thread(target=self._run, args=(pipe,), name=name,
                                   daemon=True)
        self._t.start()

    def _run(self, pipe):
        try:
            for raw in iter(pipe.readline, b""):
                with self._cond:
                    self._buf.append(raw.decode("utf-8", "replace"))
                    self._cond.notify_all()
        finally:
            with self._cond:
                self._eof = True
                self._cond.notify_all()
            pipe.close()

    def text(self):
        with self._cond:
            return "".join(self._buf)

    def wait_for(self, regex, timeout):
        """Return the first match of `regex` in the output (searched line by
        line), or None on timeout or end of output."""
        rx = re.compile(regex)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                while seen < len(self._buf):
                    m = rx.search(self._buf[seen])
                    seen += 1
                    if m:
                        return m
                if self._eof:
                    return None
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def join(self, timeout):
        self._t.join(timeout)


class _Proc:
    name = "process"

    def __init__(self, cmd, env=None):
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env,
                                     cwd=ROOT)
        self.pid = self.proc.pid
        self._out = _Capture(self.proc.stdout, self.name + "-stdout")
        self._err = _Capture(self.proc.stderr, self.name + "-stderr")
        _register(self)

    def running(self):
        return self.proc.poll() is None

    def kill(self):
        if self.running():
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass
        self.proc.wait()
        self._out.join(2)
        self._err.join(2)

    def stdout(self):
        return self._out.text()

    def stderr(self):
        return self._err.text()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()
        return False


# --------------------------------------------------------------------------
# mock gateway

class Mock(_Proc):
    name = "mock"

    def __init__(self, cmd):
        super().__init__(cmd)
        m = self._out.wait_for(r"^PORT (\d+)", T(20))
        if not m:
            self.kill()
            raise RuntimeError("mock gateway did not print PORT: %s\n%s%s"
                               % (" ".join(cmd), self.stdout(), self.stderr()))
        self.port = int(m.group(1))
        self.url = "http://127.0.0.1:%d" % self.port
        self.ws_url = "ws://127.0.0.1:%d" % self.port

    def _call(self, method, path):
        conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                          timeout=T(10))
        try:
            conn.request(method, path, body=b"" if method == "POST" else None)
            r = conn.getresponse()
            data = r.read()
            if r.status != 200:
                raise RuntimeError("mock %s %s -> %d %r"
                                   % (method, path, r.status, data[:200]))
            return json.loads(data) if data.strip() else None
        finally:
            conn.close()

    def stats(self):
        return self._call("GET", "/_mock/stats")

    def reset(self):
        return self._call("POST", "/_mock/reset")

    def drop(self):
        return self._call("POST", "/_mock/drop")

    def stop(self):
        if self.running():
            self.proc.terminate()
            try:
                self.proc.wait(T(5))
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def wait_stats(self, pred, timeout=5, what="mock stats condition"):
        """Poll /_mock/stats until pred(stats) is true; returns the stats."""
        deadline = time.monotonic() + T(timeout)
        while True:
            s = self.stats()
            if pred(s):
                return s
            if time.monotonic() > deadline:
                raise AssertionError("timed out waiting for %s; stats=%s"
                                     % (what, _short(s)))
            time.sleep(0.02)


def start_mock(era="v2d", tokens=(), secret=None, anonymous=False,
               flows="default", extra=(), port=0):
    cmd = [PYTHON, MOCK, "--port", str(port), "--era", era]
    for t in tokens:
        cmd += ["--token", t]
    if secret is not None:
        cmd += ["--secret", secret]
    if anonymous:
        cmd.append("--anonymous")
    if flows:
        cmd += ["--flows", flows]
    cmd += list(extra)
    return Mock(cmd)


# --------------------------------------------------------------------------
# the daemon

def bridge_env(env=None):
    e = dict(os.environ)
    for k in _HERMETIC:
        e.pop(k, None)
    for k, v in (env or {}).items():
        if v is None:
            e.pop(k, None)
        else:
            e[k] = v
    return e


def run_bridge(*args, env=None, timeout=10):
    """Run tgbridge to completion (for --help, --version, bad flags).
    Returns CompletedProcess with text stdout/stderr."""
    return subprocess.run(WRAPPER + [BIN] + list(args), env=bridge_env(env),
                          cwd=ROOT, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, errors="replace",
                          timeout=T(timeout))


class Bridge(_Proc):
    name = "tgbridge"

    def __init__(self, cmd, env, check_exit=True):
        self.check_exit = check_exit
        super().__init__(cmd, env=env)
        m = self._err.wait_for(LISTEN_RE.pattern, T(10))
        if not m:
            log = self.log()
            self.kill()
            raise AssertionError(
                "tgbridge did not log 'listening rest=127.0.0.1:<port>' "
                "(rc=%s): %s\n--- log ---\n%s"
                % (self.proc.returncode, " ".join(cmd), log[-4000:]))
        self.port = int(m.group(1))

    def log(self):
        return self.stderr() + self.stdout()

    def wait_log(self, regex, timeout=5):
        """Wait for a stderr line matching regex; returns the match."""
        m = self._err.wait_for(regex, T(timeout))
        if not m:
            raise AssertionError("no log line matching %r within %ss; log:\n%s"
                                 % (regex, timeout, self.log()[-3000:]))
        return m

    def readyz(self):
        return request(self.port, "GET", "/readyz", timeout=T(5))

    def wait_ready(self, timeout=10):
        deadline = time.monotonic() + T(timeout)
        last = None
        while True:
            if not self.running():
                raise AssertionError("tgbridge exited (rc=%s) while waiting "
                                     "for /readyz; log:\n%s"
                                     % (self.proc.returncode,
                                        self.log()[-3000:]))
            try:
                last = self.readyz()
                if last.status == 200:
                    return last
            except OSError as e:
                last = e
            if time.monotonic() > deadline:
                raise AssertionError("/readyz not 200 within %ss (last: %s); "
                                     "log:\n%s" % (timeout, last,
                                                   self.log()[-3000:]))
            time.sleep(0.02)

    def wait_unready(self, timeout=10):
        deadline = time.monotonic() + T(timeout)
        while True:
            r = self.readyz()
            if r.status != 200:
                return r
            if time.monotonic() > deadline:
                raise AssertionError("/readyz still 200 after %ss" % timeout)
            time.sleep(0.02)

    def stop(self, expect=0, timeout=15):
        """SIGTERM, wait, and assert the exit status (None: don't check)."""
        if self.running():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(T(timeout))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self._err.join(2)
                raise AssertionError("tgbridge did not exit within %ss of "
                                     "SIGTERM; log:\n%s"
                                     % (timeout, self.log()[-3000:]))
        self._out.join(5)
        self._err.join(5)
        rc = self.proc.returncode
        if expect is not None and rc != expect:
            raise AssertionError("tgbridge exit status %s (expected %s)%s; "
                                 "log tail:\n%s"
                                 % (rc, expect,
                                    " (signal %s)" % signal.Signals(-rc).name
                                    if rc < 0 else "", self.log()[-3000:]))
        return rc

    def cpu_ticks(self):
        return cpu_ticks(self.pid)

    # convenience wrappers bound to this bridge's port
    def post(self, path, body, headers=None, timeout=30):
        return post(self.port, path, body, headers, timeout=timeout)

    def get(self, path, headers=None, timeout=30):
        return request(self.port, "GET", path, headers=headers,
                       timeout=timeout)

    def stream(self, path, body, accept="application/x-ndjson", **kw):
        return stream(self.port, path, body, accept, **kw)

    def __exit__(self, exc_type, *rest):
        try:
            if exc_type is None and self.check_exit:
                self.stop()
            else:
                try:
                    self.stop(expect=None)
                except AssertionError:
                    pass    # don't hide the exception in flight
        finally:
            with _live_lock:
                if self in _live:
                    _live.remove(self)
        return False


def start_bridge(gateway_url, *args, env=None, listen="127.0.0.1:0",
                 check_exit=True):
    """Start tgbridge. gateway_url=None omits --gateway (to test the env
    default). Waits for the 'listening rest=' log line, not for /readyz."""
    cmd = WRAPPER + [BIN]
    if gateway_url is not None:
        cmd += ["--gateway", gateway_url]
    if listen is not None:
        cmd += ["--listen", listen]
    cmd += [str(a) for a in args]
    # As root the default Unix socket is /run/tgbridge/tgbridge.sock, shared by
    # every instance: tests that want a Unix socket name their own path.
    if not any(str(a) == "--unix" or str(a).startswith("--unix=") for a in args):
        cmd += ["--unix", "none"]
    return Bridge(cmd, bridge_env(env), check_exit=check_exit)


def closed_port():
    """A local TCP port with (very likely) nothing listening."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# --------------------------------------------------------------------------
# HTTP helpers

class Response:
    """Unpacks as (status, headers, body)."""

    def __init__(self, status, headers, body, elapsed):
        self.status = status
        self.headers = headers
        self.body = body
        self.elapsed = elapsed

    def __iter__(self):
        return iter((self.status, self.headers, self.body))

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            raise AssertionError("response body is not JSON (status %d): %r"
                                 % (self.status, self.body[:300]))

    def __repr__(self):
        return "<HTTP %s %r%s>" % (self.status, self.body[:300],
                                   "..." if len(self.body) > 300 else "")


def to_bytes(body):
    if body is None:
        return None
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    return json.dumps(body).encode()


def request(port, method, path, body=None, headers=None, timeout=30):
    hdrs = dict(headers or {})
    data = to_bytes(body)
    if data is not None:
        hdrs.setdefault("Content-Type", "application/json")
    t0 = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=T(timeout))
    try:
        conn.request(method, path, body=data, headers=hdrs)
        r = conn.getresponse()
        data = r.read()
        return Response(r.status, r.headers, data, time.monotonic() - t0)
    finally:
        conn.close()


def post(port, path, body, headers=None, timeout=30):
    return request(port, "POST", path, body, headers, timeout)


class Stream:
    """An incrementally read (chunked) HTTP response.

    Iterate `.lines()` (str, without the newline), `.ndjson()` (objects) or
    `.events()` (SSE: dicts with 'event', 'data' or 'comment'). `.t0` is the
    time the request was sent, `.t_headers` when the status line arrived.
    """

    def __init__(self, port, path, body, accept="application/x-ndjson",
                 headers=None, timeout=30, wait=True):
        hdrs = {"Content-Type": "application/json"}
        if accept is not None:
            hdrs["Accept"] = accept
        hdrs.update(headers or {})
        self.conn = http.client.HTTPConnection("127.0.0.1", port,
                                               timeout=T(timeout))
        self.t0 = time.monotonic()
        self.conn.request("POST", path, body=to_bytes(body), headers=hdrs)
        self.sock = self.conn.sock
        self.resp = None
        self.t_headers = None
        self.unterminated = False   # last line lacked its "\n"
        self.raw = bytearray()
        if wait:
            self.begin()

    def begin(self):
        """Wait for the status line and headers (done by the constructor
        unless wait=False)."""
        if self.resp is None:
            self.resp = self.conn.getresponse()
            self.t_headers = time.monotonic()
        return self

    @property
    def status(self):
        return self.begin().resp.status

    @property
    def headers(self):
        return self.begin().resp.headers

    @property
    def chunked(self):
        return self.begin().resp.chunked

    def lines(self):
        self.begin()
        while True:
            line = self.resp.readline()
            if not line:
                return
            self.raw += line
            if line.endswith(b"\n"):
                line = line[:-1]
            else:
                self.unterminated = True
            yield line.decode("utf-8", "replace")

    def ndjson(self):
        for line in self.lines():
            try:
                yield json.loads(line)
            except ValueError:
                raise AssertionError("NDJSON line is not JSON: %r" % line[:300])

    def events(self):
        block = []
        for line in self.lines():
            if line.endswith("\r"):
                line = line[:-1]
            if line:
                block.append(line)
                continue
            if not block:
                continue
            ev = {"event": "message"}
            data = []
            comments = []
            for b in block:
                if b.startswith(":"):
                    comments.append(b[1:].strip())
                    continue
                k, _, v = b.partition(":")
                if v.startswith(" "):
                    v = v[1:]
                if k == "data":
                    data.append(v)
                else:
                    ev[k] = v
            block = []
            if data:
                ev["data"] = "\n".join(data)
            elif comments:
                ev = {"comment": comments[0]}
            else:
                continue
            yield ev
        if block:
            yield {"incomplete": block}

    def body(self):
        """Read the whole (rest of the) body."""
        data = self.begin().resp.read()
        self.raw += data
        return data

    def hangup(self):
        """Abort the connection mid-stream (FIN at once, no more reads)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.close()

    def close(self):
        try:
            if self.resp is not None:
                self.resp.close()
        finally:
            self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def stream(port, path, body, accept="application/x-ndjson", **kw):
    return Stream(port, path, body, accept, **kw)


def sse_payloads(events):
    """JSON payloads of the SSE data events (comments skipped)."""
    out = []
    for ev in events:
        if "data" in ev:
            out.append((ev.get("event", "message"), json.loads(ev["data"])))
    return out


def raw_exchange(port, head, body_chunks=(), timeout=30):
    """Send `head` then `body_chunks` from a thread while reading the
    response, so a server that answers early (413) and stops reading is
    handled. Returns a Response (status 0 if none could be read)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=T(timeout))
    send_error = []

    def sender():
        try:
            sock.sendall(head)
            for c in body_chunks:
                sock.sendall(c)
        except OSError as e:
            send_error.append(e)

    t0 = time.monotonic()
    th = threading.Thread(target=sender, daemon=True)
    th.start()
    try:
        r = http.client.HTTPResponse(sock, method="POST")
        r.begin()
        try:
            data = r.read()
        except (http.client.IncompleteRead, OSError) as e:
            data = getattr(e, "partial", b"")
        return Response(r.status, r.headers, data, time.monotonic() - t0)
    finally:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
        th.join(T(5))


def post_early_reply(port, path, body, chunk=65536, timeout=30):
    """POST `body` with Content-Length while reading the reply concurrently:
    for a server that may answer (413) before the body is sent."""
    head = (b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (path.encode(), len(body)))
    return raw_exchange(port, head, [body[i:i + chunk]
                                     for i in range(0, len(body), chunk)],
                        timeout=timeout)


def chunked(chunks):
    """Encode byte strings as HTTP/1.1 chunked transfer coding."""
    for c in chunks:
        if c:
            yield b"%x\r\n%s\r\n" % (len(c), c)
    yield b"0\r\n\r\n"


class UpgradeCapture:
    """A bare TCP listener standing in for a gateway: records the head of
    every HTTP request it receives (the WebSocket upgrade) and answers 401,
    so tests can check exactly what the daemon puts on the wire."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self.heads = []
        self._cond = threading.Condition()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            try:
                c.settimeout(5)
                data = b""
                while b"\r\n\r\n" not in data and len(data) < 65536:
                    chunk = c.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                head = data.split(b"\r\n\r\n")[0].decode("latin-1")
                c.sendall(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0"
                          b"\r\nConnection: close\r\n\r\n")
            except OSError:
                head = None
            finally:
                c.close()
            if head:
                with self._cond:
                    self.heads.append(head)
                    self._cond.notify_all()

    def wait(self, n=1, timeout=10):
        """The first n request heads, parsed as (request_line, {header: value})
        with lower-case header names."""
        deadline = time.monotonic() + T(timeout)
        with self._cond:
            while len(self.heads) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("only %d upgrade requests seen"
                                         % len(self.heads))
                self._cond.wait(left)
            heads = self.heads[:n]
        out = []
        for h in heads:
            lines = h.split("\r\n")
            hdrs = {}
            for ln in lines[1:]:
                k, _, v = ln.partition(":")
                hdrs[k.strip().lower()] = v.strip()
            out.append((lines[0], hdrs))
        return out

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


# --------------------------------------------------------------------------
# misc

def cpu_ticks(pid):
    """utime+stime of a process (all threads) in clock ticks."""
    with open("/proc/%d/stat" % pid) as f:
        s = f.read()
    fields = s[s.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])


def links_asan(pid):
    """True when the process runs with AddressSanitizer (its quarantine holds freed
    memory, so RSS says nothing about leaks; LeakSanitizer checks them at exit)."""
    with open("/proc/%d/maps" % pid) as f:
        return any("libasan" in line for line in f)


def rss_meaningful(pid):
    """False under valgrind or ASan, whose allocators keep what is freed."""
    return not WRAPPER and not links_asan(pid)


def cmdline(pid):
    with open("/proc/%d/cmdline" % pid, "rb") as f:
        return f.read()


def wait_until(pred, timeout=5, interval=0.02, what="condition"):
    deadline = time.monotonic() + T(timeout)
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(interval)


def _short(obj, n=600):
    s = json.dumps(obj) if not isinstance(obj, str) else obj
    return s if len(s) <= n else s[:n] + "..."


def slowdns_env(delay):
    """Environment that preloads tests/lib/slowdns.c (built by the Makefile as
    build/slowdns.so, or $SLOWDNS_LIB): names ending .slow.test / .fail.test /
    .two.test resolve slowly, fail, or to two addresses.  Skips the test if
    the library was not built."""
    lib = os.environ.get("SLOWDNS_LIB") or os.path.join(ROOT, "build",
                                                        "slowdns.so")
    if not os.path.exists(lib):
        skip("%s not built (make build/slowdns.so)" % lib)
    asan = os.environ.get("ASAN_OPTIONS", "")
    # An ASan build wants its runtime first; the shim has no ASan in it.
    asan = (asan + ":" if asan else "") + "verify_asan_link_order=0"
    return {"LD_PRELOAD": lib, "SLOWDNS_DELAY": str(delay),
            "ASAN_OPTIONS": asan}


def tmpfile(content, suffix=""):
    """A temporary file removed at cleanup; returns its path."""
    fd, path = tempfile.mkstemp(prefix="tgbridge-test-", suffix=suffix)
    with os.fdopen(fd, "wb") as f:
        f.write(content.encode() if isinstance(content, str) else content)
    _tmpfiles.append(path)
    return path


_tmpfiles = []


def remove_tmpfiles():
    while _tmpfiles:
        try:
            os.unlink(_tmpfiles.pop())
        except OSError:
            pass


# --------------------------------------------------------------------------
# assertion helpers

def _clip(value, n=300):
    r = repr(value)
    return r if len(r) <= n else "%s...<%d chars>" % (r[:n], len(r))


def eq(actual, expected, what=""):
    if actual != expected:
        raise AssertionError("%s%s != expected %s"
                             % (what + ": " if what else "", _clip(actual),
                                _clip(expected)))


def check_status(resp, status, what=""):
    if resp.status != status:
        raise AssertionError("%sexpected HTTP %d, got %d: %r"
                             % (what + ": " if what else "", status,
                                resp.status, resp.body[:500]))


def is_json_ct(headers):
    ct = (headers.get("Content-Type") or "").lower()
    return ct.split(";")[0].strip() == "application/json"


def own_error(resp, status, etype):
    """Assert tgbridge's own error shape {"error":{"type","message"}}."""
    check_status(resp, status, etype)
    assert is_json_ct(resp.headers), \
        "error Content-Type %r" % resp.headers.get("Content-Type")
    body = resp.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), \
        "expected {\"error\":{...}}, got %r" % body
    eq(body["error"].get("type"), etype, "error.type")
    assert isinstance(body["error"].get("message"), str), \
        "error.message missing: %r" % body
    return body


FLOW_TC = "/api/v1/flow/default/service/text-completion"


def flow_path(kind, flow="default"):
    return "/api/v1/flow/%s/service/%s" % (flow, kind)


def tc(prompt="hello", streaming=None, **mock):
    """A text-completion request body (the service needs `system` and
    `prompt`); keyword arguments become the `_mock` controls."""
    body = {"system": "", "prompt": prompt}
    if streaming is not None:
        body["streaming"] = streaming
    if mock:
        body["_mock"] = mock
    return body


# --------------------------------------------------------------------------
# fault injection, TLS and proxies (tests/test_resilience.py,
# tests/test_tls_proxy.py)

def bridge_status(b):
    """GET /status of a bridge, as JSON."""
    r = b.get("/status", timeout=10)
    check_status(r, 200, "/status")
    return r.json()


def wait_bridge_status(b, pred, timeout=5, what="/status condition"):
    """Poll /status until pred(status) is true; returns the status."""
    deadline = time.monotonic() + T(timeout)
    while True:
        st = bridge_status(b)
        if pred(st):
            return st
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for %s; /status=%s"
                                 % (what, _short(st)))
        time.sleep(0.02)


def log_count(b, regex):
    """Number of log lines of bridge b matching regex."""
    rx = re.compile(regex)
    return sum(1 for line in b.log().splitlines() if rx.search(line))


class Suspended:
    """SIGSTOP a process for the duration of a with-block (SIGCONT on exit,
    also on failure, so the process can be stopped normally afterwards)."""

    def __init__(self, proc):
        self.proc = proc
        self.stopped_at = None

    def __enter__(self):
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.stopped_at = time.monotonic()
        return self

    def resume(self):
        if self.stopped_at is not None:
            self.stopped_at = None
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass

    def __exit__(self, *exc):
        self.resume()
        return False


class Background:
    """Runs fn(*args) in a thread; .result(timeout) returns its value or
    re-raises its exception; .done_at is the monotonic completion time."""

    def __init__(self, fn, *args, **kw):
        self.value = None
        self.error = None
        self.started_at = time.monotonic()
        self.done_at = None
        self._t = threading.Thread(target=self._run, args=(fn, args, kw),
                                   daemon=True)
        self._t.start()

    def _run(self, fn, args, kw):
        try:
            self.value = fn(*args, **kw)
        except BaseException as e:  # noqa: B902 - handed to result()
            self.error = e
        finally:
            self.done_at = time.monotonic()

    def done(self):
        return self.done_at is not None

    def result(self, timeout=30):
        self._t.join(T(timeout))
        if self._t.is_alive():
            raise AssertionError("background call still running after %ss"
                                 % timeout)
        if self.error is not None:
            raise self.error
        return self.value


def _openssl(*args):
    p = subprocess.run(["openssl"] + list(args), capture_output=True,
                       text=True, errors="replace", timeout=60)
    if p.returncode != 0:
        raise RuntimeError("openssl %s failed (%d): %s"
                           % (" ".join(args), p.returncode, p.stderr[-2000:]))


def make_pki():
    """A throwaway PKI made with the openssl CLI (EC P-256, valid 2 days),
    every file registered with tmpfile() for removal. Returns a dict of paths:
      ca_a, ca_b                  two unrelated CA certificates
      good_cert/good_key          leaf for IP:127.0.0.1 + DNS:localhost, by A
      wrong_cert/wrong_key        leaf for DNS:wrong.example.invalid, by A
      other_cert/other_key        leaf for IP:127.0.0.1 + DNS:localhost, by B
    """
    def path(suffix):
        return tmpfile(b"", suffix)

    ca_cnf = path(".cnf")
    with open(ca_cnf, "w") as f:
        f.write("[req]\ndistinguished_name = dn\nprompt = no\n"
                "[dn]\nCN = tgbridge test CA\n"
                "[v3_ca]\nbasicConstraints = critical,CA:TRUE\n"
                "keyUsage = critical,keyCertSign,cRLSign\n"
                "subjectKeyIdentifier = hash\n")
    out = {}
    for name in ("a", "b"):
        key, cert = path(".key"), path(".pem")
        _openssl("req", "-x509", "-new", "-newkey", "ec", "-pkeyopt",
                 "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key,
                 "-out", cert, "-days", "2", "-config", ca_cnf,
                 "-extensions", "v3_ca", "-subj",
                 "/CN=tgbridge test CA %s" % name.upper())
        out["ca_" + name] = cert
        out["ca_%s_key" % name] = key

    def leaf(label, ca, sans, cn):
        ext = path(".cnf")
        with open(ext, "w") as f:
            f.write("[v3]\nbasicConstraints = CA:FALSE\n"
                    "keyUsage = critical,digitalSignature,keyEncipherment\n"
                    "extendedKeyUsage = serverAuth\n"
                    "subjectAltName = %s\n" % sans)
        key, csr, cert = path(".key"), path(".csr"), path(".pem")
        _openssl("req", "-new", "-newkey", "ec", "-pkeyopt",
                 "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key,
                 "-out", csr, "-subj", "/CN=" + cn)
        _openssl("x509", "-req", "-in", csr, "-CA", out["ca_" + ca],
                 "-CAkey", out["ca_%s_key" % ca], "-set_serial",
                 str(int.from_bytes(os.urandom(8), "big")), "-days", "2",
                 "-extfile", ext, "-extensions", "v3", "-out", cert)
        out[label + "_cert"] = cert
        out[label + "_key"] = key

    leaf("good", "a", "IP:127.0.0.1,DNS:localhost", "127.0.0.1")
    leaf("wrong", "a", "DNS:wrong.example.invalid", "wrong.example.invalid")
    leaf("other", "b", "IP:127.0.0.1,DNS:localhost", "127.0.0.1")
    return out


class TlsMock(Mock):
    """A mock gateway serving TLS; its own /_mock/* calls skip verification."""

    def __init__(self, cmd):
        super().__init__(cmd)
        self.url = "https://127.0.0.1:%d" % self.port
        self.ws_url = "wss://127.0.0.1:%d" % self.port

    def _call(self, method, path):
        import ssl
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection("127.0.0.1", self.port,
                                           timeout=T(10), context=ctx)
        try:
            conn.request(method, path, body=b"" if method == "POST" else None)
            r = conn.getresponse()
            data = r.read()
            if r.status != 200:
                raise RuntimeError("mock %s %s -> %d %r"
                                   % (method, path, r.status, data[:200]))
            return json.loads(data) if data.strip() else None
        finally:
            conn.close()


def start_tls_mock(cert, key, era="v2d", tokens=(), port=0, extra=()):
    cmd = [PYTHON, MOCK, "--port", str(port), "--era", era,
           "--tls-cert", cert, "--tls-key", key]
    for t in tokens:
        cmd += ["--token", t]
    cmd += list(extra)
    return TlsMock(cmd)


class ConnectProxy(Middleman):
    """A loopback HTTP CONNECT proxy (threads and sockets). Records every
    request head it gets as (request_line, {lower-case header: value}) in
    .requests; CONNECTs are tunnelled, anything else gets 405."""

    def __init__(self):
        self.requests = []
        super().__init__()

    def connects(self):
        with self._lock:
            return [r for r in self.requests if r[0].startswith("CONNECT ")]

    def serve(self, c):
        try:
            c.settimeout(T(10))
            data = b""
            while b"\r\n\r\n" not in data and len(data) < 65536:
                chunk = c.recv(4096)
                if not chunk:
                    c.close()
                    return
                data += chunk
            head, _, rest = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            hdrs = {}
            for ln in lines[1:]:
                k, _, v = ln.partition(":")
                hdrs[k.strip().lower()] = v.strip()
            with self._lock:
                self.requests.append((lines[0], hdrs))
            parts = lines[0].split()
            if len(parts) < 2 or parts[0] != "CONNECT":
                c.sendall(b"HTTP/1.1 405 Method Not Allowed\r\n"
                          b"Content-Length: 0\r\nConnection: close\r\n\r\n")
                c.close()
                return
            host, _, port = parts[1].rpartition(":")
            try:
                up = socket.create_connection((host.strip("[]"), int(port)),
                                              timeout=T(10))
            except (OSError, ValueError):
                c.sendall(b"HTTP/1.1 502 Bad Gateway\r\n"
                          b"Content-Length: 0\r\nConnection: close\r\n\r\n")
                c.close()
                return
            self.track(up)
            c.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            c.settimeout(None)
            up.settimeout(None)
            if rest:
                up.sendall(rest)
            self.tunnel(c, up)
        except OSError:
            try:
                c.close()
            except OSError:
                pass
