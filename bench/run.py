#!/usr/bin/python3
"""tgbridge benchmark suite: `make bench` (see bench/README.md).

Builds the bench's C programs (bench/Makefile), starts the fast mock gateway and tgbridge on
loopback (free ports chosen at run time), runs every scenario of issue 4 and issue 11's
mixed and wide ones through tgbridge and through the direct WebSocket baseline, alternating
the two where noise matters, and prints ONE table.  It asserts no timings: the exit status is 0 whenever the suite could
run, whatever the figures.  Every process it starts is stopped before it exits.

Options: --rounds N (alternations per scenario, default 5), --quick (smaller runs, for
trying the suite out), --profile (also profile tgbridge and the mock: perf cpu-clock
sampling and callgrind; or BENCH_PROFILE=1), --json PATH (write every raw figure there),
--only NAME[,NAME] or BENCH_ONLY=NAME[,NAME] (scenarios: unary1, fresh, unary64, nginx, accesslog,
stream, large, mixed, wide, passthrough, hold, wsidle; "none" runs only what --profile asks for).
The passthrough scenario uses the Python mock gateway (tests/lib/mock_gateway.py) and curl; the
nginx scenario uses nginx (nginx-light, installed when missing if run as root, else skipped).
Standard library only (Debian's /usr/bin/python3).
"""
import argparse
import http.client
import json
import os
import platform
import re
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BUILD = os.path.join(HERE, "build")
TGBRIDGE = os.environ.get("TGBRIDGE_BIN", os.path.join(ROOT, "tgbridge"))
FASTMOCK = os.path.join(BUILD, "fastmock")
DIRECT = os.path.join(BUILD, "direct")
# BENCH_DIRECT_PER_FRAME=1: the baseline writes one lws_write per frame (a naive client)
# instead of one send per burst, as tgbridge does.
DIRECT_MODE = ["--per-frame"] if os.environ.get("BENCH_DIRECT_PER_FRAME") == "1" else []
HTTPLOAD = os.path.join(BUILD, "httpload")
CLK_TCK = os.sysconf("SC_CLK_TCK")
MB20 = 20 * 1024 * 1024
WINDOW = 15  # tgbridge's default --max-inflight; the direct client uses the same

CHILDREN = []  # every Popen we started, stopped in cleanup()


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def raise_nofile():
    """preexec_fn: the 10,000-stream scenario needs ~10,000 descriptors per process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def nofile_limit():
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


# ---- /proc ------------------------------------------------------------------------------

def proc_cpu_s(pid):
    """utime+stime of pid in seconds (from /proc/PID/stat, clock-tick resolution)."""
    with open(f"/proc/{pid}/stat") as f:
        tail = f.read().rsplit(")", 1)[1].split()
    return (int(tail[11]) + int(tail[12])) / CLK_TCK


def proc_sched_ns(pid):
    """On-CPU time in ns from /proc/PID/schedstat (finer than stat), or None."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def proc_status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            v = v.strip()
            if v.endswith(" kB"):
                out[k] = int(v[:-3])
            elif v.isdigit():
                out[k] = int(v)
    return out


def reset_hwm(pid):
    """Resets VmHWM to the current RSS (Linux >= 4.0, needs write access)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def listening_tcp_ports(pid):
    """Ports pid listens on, from its socket inodes and /proc/net/tcp{,6}."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                t = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            m = re.match(r"socket:\[(\d+)\]", t)
            if m:
                inodes.add(m.group(1))
    except OSError:
        return []
    ports = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    p = line.split()
                    if p[3] == "0A" and p[9] in inodes:
                        ports.append(int(p[1].rsplit(":", 1)[1], 16))
        except OSError:
            pass
    return ports


# ---- processes --------------------------------------------------------------------------

def spawn(argv, **kw):
    p = subprocess.Popen(argv, preexec_fn=raise_nofile, **kw)
    CHILDREN.append(p)
    return p


def stop(p, timeout=10.0):
    """SIGTERM the one process we started, then SIGKILL it if it lingers."""
    if p is None or p.poll() is not None:
        return
    try:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(5)
    except ProcessLookupError:
        pass


def cleanup():
    for p in reversed(CHILDREN):
        stop(p, 5.0)
    CHILDREN.clear()


class Mock:
    def __init__(self, tmp, tag, wrapper=()):
        self.err_path = os.path.join(tmp, f"fastmock-{tag}.log")
        self.err = open(self.err_path, "w")
        self.p = spawn(list(wrapper) + [FASTMOCK], stdout=subprocess.PIPE, stderr=self.err, text=True)
        self.pid = self.p.pid
        r, _, _ = select.select([self.p.stdout], [], [], 60)
        line = self.p.stdout.readline() if r else ""
        m = re.match(r"PORT (\d+)", line)
        if not m:
            raise RuntimeError(f"fastmock did not report its port (see {self.err_path})")
        self.port = int(m.group(1))

    def stop(self):
        stop(self.p)
        self.err.close()
        with open(self.err_path) as f:
            return f.read().strip()


class Bridge:
    """tgbridge on loopback.  Its stderr is drained by a thread into self.lines (and the log
    file) — fine for the few lines of --log-level warn; with stderr_file=True (the access-log
    scenario: hundreds of thousands of lines) it goes straight to the log file instead, with
    no reader in between that could hold lines in memory or, by reading slowly, block
    tgbridge's write(2) on a full pipe."""

    def __init__(self, tmp, tag, mock_port, extra=(), wrapper=(), unix=False, ready_timeout=30.0,
                 log_level="warn", stderr_file=False):
        self.log_path = os.path.join(tmp, f"tgbridge-{tag}.log")
        self.unix_path = os.path.join(tmp, f"tgb-{tag}.sock") if unix else None
        argv = list(wrapper) + [TGBRIDGE, "--gateway", f"http://127.0.0.1:{mock_port}", "--token", "tg_bench",
                                "--listen", "127.0.0.1:0", "--log-level", log_level]
        if HAS_UNIX:
            argv += ["--unix", self.unix_path or "none"]
        argv += list(extra)
        self.lines = []
        self._t = None
        self._err = None
        self._off = 0  # count_new_lines(): bytes of the log file already counted
        if stderr_file:
            # stderr is a plain file here, not the journal: no journal priority prefixes
            env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
            self._err = open(self.log_path, "wb")
            self.p = spawn(argv, stdout=subprocess.DEVNULL, stderr=self._err, env=env)
        else:
            self.p = spawn(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            self._t = threading.Thread(target=self._drain, daemon=True)
            self._t.start()
        self.pid = self.p.pid
        self.port = None
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline and self.port is None:
            if self.p.poll() is not None:
                raise RuntimeError(f"tgbridge exited with {self.p.returncode}: {self.tail()}")
            for line in list(self.lines):
                m = re.search(r"listening rest=([^\s]+):(\d+)", line)
                if m:
                    self.port = int(m.group(2))
            if self.port is None:
                # At --log-level warn the "listening" line (info) is not printed, and with
                # stderr_file nothing reads it: find the listening socket in /proc instead.
                ports = listening_tcp_ports(self.pid)
                if ports:
                    self.port = ports[0]
            if self.port is None:
                time.sleep(0.02)
        if self.port is None:
            raise RuntimeError(f"tgbridge did not start listening: {self.tail()}")
        while time.monotonic() < deadline:
            st, _ = http_get(self.port, "/readyz")
            if st == 200 and (not self.unix_path or os.path.exists(self.unix_path)):
                return
            time.sleep(0.02)
        raise RuntimeError(f"tgbridge never became ready: {self.tail()}")

    def _drain(self):
        with open(self.log_path, "w") as f:
            for line in self.p.stderr:
                self.lines.append(line)
                f.write(line)
                f.flush()

    def tail(self):
        if self._err is None:
            return "".join(self.lines[-5:]).strip()
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, os.path.getsize(self.log_path) - 2000))
                return b"".join(f.read().splitlines(True)[-5:]).decode(errors="replace").strip()
        except OSError:
            return ""

    def count_new_lines(self):
        """(lines, bytes) the log file grew by since the last call (stderr_file only)."""
        lines, start = 0, self._off
        with open(self.log_path, "rb") as f:
            f.seek(start)
            while True:
                chunk = f.read(1 << 20)
                if not chunk:
                    break
                lines += chunk.count(b"\n")
                self._off += len(chunk)
        return lines, self._off - start

    def status(self):
        st, body = http_get(self.port, "/status")
        try:
            return json.loads(body) if st == 200 else {}
        except ValueError:
            return {}

    def stop(self):
        stop(self.p, 15.0)
        if self._t is not None:
            self._t.join(2)
        if self._err is not None:
            self._err.close()


def http_get(port, path, timeout=2.0):
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        c.request("GET", path)
        r = c.getresponse()
        body = r.read()
        c.close()
        return r.status, body
    except (OSError, http.client.HTTPException):
        return 0, b""


def run_tool(argv, timeout=180):
    """Runs a load generator; returns its JSON line (a dict) plus wall time."""
    t0 = time.monotonic()
    try:
        cp = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout,
                            preexec_fn=raise_nofile)
    except subprocess.TimeoutExpired:
        log(f"  ! {os.path.basename(argv[0])} timed out")
        return None
    wall = time.monotonic() - t0
    lines = [l for l in cp.stdout.splitlines() if l.startswith("{")]
    if not lines:
        log(f"  ! {os.path.basename(argv[0])} printed no result (exit {cp.returncode}): {cp.stderr.strip()[:300]}")
        return None
    d = json.loads(lines[-1])
    d["wall_s"] = wall
    if not d.get("ok", False) or d.get("errors", 0):
        log(f"  ! {os.path.basename(argv[0])}: ok={d.get('ok')} errors={d.get('errors')} "
            f"why={d.get('why')!r} first_error={d.get('first_error', '')!r}")
    return d


def proc_cpu_fine_s(pid):
    """On-CPU seconds from schedstat (ns resolution), else from stat (clock ticks)."""
    ns = proc_sched_ns(pid)
    return ns / 1e9 if ns is not None else proc_cpu_s(pid)


class Watch:
    """CPU of the processes of one path around one run: utime+stime from /proc/PID/stat
    (what the issue asks for; 1/CLK_TCK resolution) and the finer schedstat figure."""

    def __init__(self, *procs):
        self.procs = [p for p in procs if p is not None]
        self.c0 = [proc_cpu_s(p.pid) for p in self.procs]
        self.f0 = [proc_cpu_fine_s(p.pid) for p in self.procs]
        self.t0 = time.monotonic()

    def done(self):
        wall = time.monotonic() - self.t0
        self.fine = [proc_cpu_fine_s(p.pid) - c for p, c in zip(self.procs, self.f0)]
        return wall, [proc_cpu_s(p.pid) - c for p, c in zip(self.procs, self.c0)]


# ---- the two paths ---------------------------------------------------------------------

def load_args(callers, requests, warmup, parts=0, size=0, pad=0):
    a = ["--requests", str(requests), "--warmup", str(warmup)]
    if parts:
        a += ["--parts", str(parts)]
    if size:
        a += ["--size", str(size)]
    if pad:
        a += ["--pad", str(pad)]
    return a


def run_direct(mock, callers, requests, warmup, **kw):
    w = Watch(mock)
    d = run_tool([DIRECT, "--port", str(mock.port), "--callers", str(callers), "--window", str(WINDOW)]
                 + DIRECT_MODE + load_args(callers, requests, warmup, **kw))
    wall, (mock_cpu,) = w.done()
    if d:
        d["mock_cpu_s"] = mock_cpu
        d["mock_cpu_fine_s"] = w.fine[0]
        d["mock_wall_s"] = wall
        d["total_requests"] = requests + warmup
    return d


def run_bridge(mock, bridge, transport, callers, requests, warmup, ndjson=False, **kw):
    if transport == "ws":
        # The local /api/v1/socket speaks the gateway's protocol: the direct client
        # itself is the load, pointed at tgbridge instead of the mock (same callers on
        # one socket, same window, same frames).
        argv = [DIRECT, "--port", str(bridge.port), "--callers", str(callers), "--window", str(WINDOW)] \
            + DIRECT_MODE + load_args(callers, requests, warmup, **kw)
    elif transport == "tcp":
        target = ["--port", str(bridge.port)]
    else:
        target = ["--unix", bridge.unix_path]
    if transport != "ws":
        argv = [HTTPLOAD] + target + ["--conns", str(callers)] + load_args(callers, requests, warmup, **kw)
    if transport == "line":
        argv.append("--line")
    elif ndjson and transport != "ws":
        argv.append("--ndjson")
    w = Watch(mock, bridge)
    hwm_reset = reset_hwm(bridge.pid)
    rss0 = proc_status(bridge.pid).get("VmRSS", 0)
    d = run_tool(argv)
    wall, (mock_cpu, tgb_cpu) = w.done()
    if d:
        st = proc_status(bridge.pid)
        d.update(mock_cpu_s=mock_cpu, tgb_cpu_s=tgb_cpu, mock_cpu_fine_s=w.fine[0], tgb_cpu_fine_s=w.fine[1],
                 mock_wall_s=wall, total_requests=requests + warmup,
                 tgb_rss0_kb=rss0, tgb_hwm_kb=st.get("VmHWM", 0) if hwm_reset else None,
                 tgb_rss_kb=st.get("VmRSS", 0))
    return d


def alternate(rounds, runners):
    """runners: {name: fn}.  Round r runs them in rotated order, so neither path always
    goes first on a machine whose load drifts."""
    names = list(runners)
    out = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            d = runners[n]()
            if d:
                out[n].append(d)
    return out


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# ---- scenarios -------------------------------------------------------------------------

def scen_unary1(ctx, R):
    n = 1000 if ctx.quick else 3000
    runs = {"direct": lambda: run_direct(ctx.mock, 1, n, 200)}
    for tr in ctx.transports:
        runs[tr] = (lambda tr=tr: run_bridge(ctx.mock, ctx.bridge, tr, 1, n, 200))
    R["unary1"] = alternate(ctx.rounds, runs)


def scen_fresh(ctx, R):
    """A caller that opens a new connection for each call (curl, most scripts): the latency
    of the first request on a fresh connection (connection set-up itself not counted)."""
    runs = {"direct": lambda: run_direct(ctx.mock, 1, 1, 0)}
    for tr in ctx.transports:
        runs[tr] = (lambda tr=tr: run_bridge(ctx.mock, ctx.bridge, tr, 1, 1, 0))
    R["fresh"] = alternate(ctx.rounds * 3, runs)


def scen_unary64(ctx, R):
    n = 5000 if ctx.quick else 20000
    runs = {"direct": lambda: run_direct(ctx.mock, 64, n, 1000)}
    for tr in ctx.transports:
        runs[tr] = (lambda tr=tr: run_bridge(ctx.mock, ctx.bridge, tr, 64, n, 1000))
    R["unary64"] = alternate(ctx.rounds, runs)


def scen_stream(ctx, R):
    parts = 20000 if ctx.quick else 100000
    # One warm-up stream on the same connection first, so that the figures are the
    # stream's own and not a new connection's set-up (scen_fresh measures that).
    runs = {"direct": lambda: run_direct(ctx.mock, 1, 1, 1, parts=parts)}
    for tr in ctx.transports:
        runs[tr] = (lambda tr=tr: run_bridge(ctx.mock, ctx.bridge, tr, 1, 1, 1, ndjson=True, parts=parts))
    R["stream"] = alternate(ctx.rounds, runs)
    R["stream_parts"] = parts


def scen_large(ctx, R):
    size = 4 * 1024 * 1024 if ctx.quick else MB20
    rounds = max(3, min(ctx.rounds, 5))
    up = {"direct": lambda: run_direct(ctx.mock, 1, 1, 0, pad=size),
          "tcp": lambda: run_bridge(ctx.mock, ctx.bridge, "tcp", 1, 1, 0, pad=size)}
    down = {"direct": lambda: run_direct(ctx.mock, 1, 1, 0, size=size),
            "tcp": lambda: run_bridge(ctx.mock, ctx.bridge, "tcp", 1, 1, 0, size=size)}
    R["upload"] = alternate(rounds, up)
    R["download"] = alternate(rounds, down)
    R["large_size"] = size

# ---- access log: what one info line per finished call costs (issue 12, item 6) -----------
#
# The 64-caller unary load of scen_unary64 (REST/TCP) against three fresh tgbridges started
# side by side, all at --log-level info: access log off, on (text), on (--log-format json).
# Their stderr goes straight to a file in the tmp dir (Bridge(stderr_file=True)): no reader
# process or thread, so nothing but tgbridge's own write(2) into the page cache is measured
# -- the least any consumer (journald reading a stream socket, a log shipper) can cost it.

ACCESSLOG_MODES = (("off", ["--access-log", "off"]),
                   ("text", ["--access-log", "on", "--log-format", "text"]),
                   ("json", ["--access-log", "on", "--log-format", "json"]))


def scen_accesslog(ctx, R):
    n = 5000 if ctx.quick else 20000
    bridges = {}
    res = {"requests": n, "warmup": 1000, "callers": 64, "runs": {}, "files": {}}
    try:
        for mode, extra in ACCESSLOG_MODES:
            b = Bridge(ctx.tmp, f"accesslog-{mode}", ctx.mock.port, extra=extra, log_level="info", stderr_file=True)
            bridges[mode] = b
            run_bridge(ctx.mock, b, "tcp", 4, 500, 0)  # warm it once, as main() warms the main bridge

        def one(mode):
            b = bridges[mode]
            b.count_new_lines()  # start-up and earlier runs are not this run's
            d = run_bridge(ctx.mock, b, "tcp", 64, n, 1000)
            lines, nbytes = b.count_new_lines()
            if d:
                d.update(log_lines=lines, log_bytes=nbytes)
            return d

        res["runs"] = alternate(ctx.rounds, {m: (lambda m=m: one(m)) for m, _ in ACCESSLOG_MODES})
    finally:
        for mode, b in bridges.items():
            b.stop()
            try:
                res["files"][mode] = os.path.getsize(b.log_path)
                with open(b.log_path, "rb") as f:  # one sample line, for the record
                    tail = f.read()[-4096:].splitlines()
                res.setdefault("sample", {})[mode] = next(
                    (l.decode(errors="replace") for l in reversed(tail) if b" access " in l or b'"access"' in l), None)
                os.unlink(b.log_path)  # tens of MB each; the figures are kept
            except OSError:
                pass
    R["accesslog"] = res


def accesslog_rows(R):
    A = R["accesslog"]
    runs = A.get("runs") or {}
    base = runs.get("off") or []
    rps = lambda d: d.get("rps")
    cpu = lambda d: d["tgb_cpu_s"] / d["total_requests"] * 1e6 if d.get("total_requests") else None
    lps = lambda d: d["log_lines"] / d["mock_wall_s"] if d.get("mock_wall_s") else None
    what = {"off": "access log off", "text": "access log on, text", "json": "access log on, json"}
    rows = []
    for key, unit, fn in (("throughput (req/s)", "", rps), ("tgbridge CPU per request (µs)", "", cpu)):
        for mode, _ in ACCESSLOG_MODES:
            rs = runs.get(mode) or []
            if not rs:
                continue
            v = med([fn(d) for d in rs])
            ratio = None
            if mode != "off":
                # paired: round i of this mode against round i of "off"
                ratio = med([fn(b) / fn(a) for a, b in zip(base, rs) if fn(a) and fn(b)])
            rows.append((f"{what[mode]} (info, 64 callers, REST/TCP): {key}", "n/a", fmt(v),
                         f"{fmt(ratio, '×', 2)} off" if ratio is not None else "", "report", ""))
    for mode, _ in ACCESSLOG_MODES:
        rs = runs.get(mode) or []
        if mode == "off" or not rs:
            continue
        per = med([d["log_bytes"] / d["log_lines"] for d in rs if d.get("log_lines")])
        rows.append((f"{what[mode]}: lines written per second (bytes per line)", "n/a", fmt(med([lps(d) for d in rs])),
                     f"{fmt(per, ' B', 0)}/line", "report", ""))
    return rows


def accesslog_detail(R):
    if "accesslog" not in R:
        return []
    A = R["accesslog"]
    out = ["", f"access log, every round ({A['callers']} callers, {A['requests']:,} requests after "
               f"{A['warmup']:,} warm-up; stderr straight to a file):"]
    for mode, _ in ACCESSLOG_MODES:
        for i, d in enumerate((A.get("runs") or {}).get(mode, [])):
            wall = d.get("mock_wall_s") or 0
            out.append(f"  {mode:4s} round {i + 1}: {fmt(d.get('rps'))} req/s, tgbridge CPU "
                       f"{d['tgb_cpu_s'] / d['total_requests'] * 1e6:.2f} µs/request (stat), "
                       f"{d['tgb_cpu_fine_s'] / d['total_requests'] * 1e6:.2f} (schedstat), "
                       f"{d['tgb_cpu_fine_s'] / wall * 100 if wall else 0:.0f}% of one core; "
                       f"{d.get('log_lines', 0):,} lines ({d.get('log_bytes', 0) / 1048576:.1f} MiB) in "
                       f"{wall:.2f} s = {d.get('log_lines', 0) / wall if wall else 0:,.0f} lines/s")
    for mode, line in (A.get("sample") or {}).items():
        if line:
            out.append(f"  sample line ({mode}): {line}")
    return out


# ---- nginx anchors: an HTTP floor and an HTTP hop that forwards (issue 19, item 1) ----------
#
# The 64-caller unary load of scen_unary64 (the same httpload, the same 64 keep-alive
# callers, the same requests) against (a) nginx answering the constant body tgbridge gives
# those callers (bench/nginx/constant.conf) and (b) nginx as a reverse proxy with keep-alive
# upstream connections (bench/nginx/proxy.conf) to a second nginx answering that body.  Each
# nginx is one process (master_process off), so its /proc CPU is all of its work, measured
# as tgbridge's is.  The REST/TCP figures are the unary64 scenario's of the same run, or,
# when that scenario is not selected, measured here in the same alternation.

NGINX_DIR = os.path.join(HERE, "nginx")
NGINX_PKG = "nginx-light"


def find_nginx():
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx")
                                          if os.access(p, os.X_OK)), None)


def nginx_service_pid():
    try:
        with open("/run/nginx.pid") as f:
            pid = int(f.read().split()[0])
        with open(f"/proc/{pid}/comm") as f:
            return pid if f.read().strip() == "nginx" else None
    except (OSError, ValueError, IndexError):
        return None


def install_nginx():
    """(path, None) when nginx is there or could be installed, else (None, why).  Installs
    nginx-light only as root (as `make deps` installs packages), never letting the package
    start the Debian nginx service: a policy-rc.d that denies every start is put in place
    for the install (unless one exists), and a service that started all the same is
    stopped (systemctl when systemd runs the machine, else the pid in /run/nginx.pid)."""
    path = find_nginx()
    if path:
        return path, None
    if os.geteuid() != 0:
        return None, f"nginx not installed and not root (sudo apt-get install -y {NGINX_PKG})"
    if not shutil.which("apt-get"):
        return None, "nginx not installed and no apt-get"
    policy = "/usr/sbin/policy-rc.d"
    own_policy = False
    before = nginx_service_pid()
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    out = ""
    try:
        if not os.path.exists(policy):
            with open(policy, "w") as f:
                f.write("#!/bin/sh\n# written by tgbridge's bench/run.py for the install of nginx-light\nexit 101\n")
            os.chmod(policy, 0o755)
            own_policy = True
        log(f"bench: installing {NGINX_PKG} (apt-get; the nginx service is not started) ...")
        install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", NGINX_PKG]
        for step in ([install], [["apt-get", "update", "-q"], install]):
            rc = 0
            for argv in step:
                cp = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                    timeout=600)
                out, rc = cp.stdout, cp.returncode
                if rc:
                    break
            if rc == 0:
                break
    except (OSError, subprocess.SubprocessError) as e:
        out = str(e)
    finally:
        if own_policy:
            try:
                os.unlink(policy)
            except OSError:
                pass
        if os.path.isdir("/run/systemd/system") and shutil.which("systemctl"):
            subprocess.run(["systemctl", "stop", "nginx"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pid = nginx_service_pid()
        if pid and pid != before:
            try:
                os.kill(pid, signal.SIGTERM)  # the service's master: it stops its workers
            except OSError:
                pass
    path = find_nginx()
    if not path:
        tail = " | ".join(out.strip().splitlines()[-2:])
        return None, f"installing {NGINX_PKG} failed: {tail[:200]}"
    return path, None


class Nginx:
    """One nginx process from a bench/nginx template, in its own directory under tmp."""

    def __init__(self, binary, tmp, tag, template, **ports):
        self.dir = os.path.join(tmp, f"nginx-{tag}")
        os.makedirs(self.dir, exist_ok=True)
        with open(os.path.join(NGINX_DIR, template)) as f:
            tmpl = f.read()
        self.p = None
        for attempt in range(3):  # a port picked free may be taken before nginx binds it
            self.port = free_port()
            text = tmpl.replace("@DIR@", self.dir).replace("@PORT@", str(self.port))
            for k, v in ports.items():
                text = text.replace(f"@{k.upper()}@", str(v))
            if "@" in re.sub(r"#.*", "", text):
                raise RuntimeError(f"bench/nginx/{template}: a placeholder was left unreplaced")
            conf = os.path.join(self.dir, template)
            with open(conf, "w") as f:
                f.write(text)
            self.log_path = os.path.join(self.dir, "error.log")
            self.p = spawn([binary, "-p", self.dir + "/", "-c", conf, "-e", self.log_path],
                           stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            self.pid = self.p.pid
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.p.poll() is None:
                if http_get(self.port, "/")[0] == 200:
                    return
                time.sleep(0.02)
            stop(self.p)
        raise RuntimeError(f"nginx ({template}) did not answer: {self.tail()}")

    def tail(self):
        try:
            with open(self.log_path) as f:
                return " | ".join(f.read().strip().splitlines()[-3:])
        except OSError:
            return ""

    def stop(self):
        stop(self.p)


def run_nginx(anchor, backend, callers, requests, warmup):
    """The httpload of run_bridge, against an nginx: its CPU (and its backend's) from /proc."""
    w = Watch(anchor, backend)
    d = run_tool([HTTPLOAD, "--port", str(anchor.port), "--conns", str(callers)] + load_args(callers, requests, warmup))
    wall, cpus = w.done()
    if d:
        d.update(nginx_cpu_s=cpus[0], nginx_cpu_fine_s=w.fine[0], wall_s_watch=wall, total_requests=requests + warmup)
        if backend is not None:
            d.update(backend_cpu_s=cpus[1], backend_cpu_fine_s=w.fine[1])
    return d


def scen_nginx(ctx, R):
    n = 5000 if ctx.quick else 20000
    res = {"requests": n, "warmup": 1000, "callers": 64, "runs": {}}
    R["nginx"] = res
    binary, why = install_nginx()
    if not binary:
        res["skipped"] = why
        log(f"  nginx anchors skipped: {why}")
        return
    v = subprocess.run([binary, "-v"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True).stdout
    res["version"] = v.strip().rsplit(":", 1)[-1].strip()
    started = []
    try:
        constant = Nginx(binary, ctx.tmp, "constant", "constant.conf")
        started.append(constant)
        backend = Nginx(binary, ctx.tmp, "backend", "constant.conf")
        started.append(backend)
        proxy = Nginx(binary, ctx.tmp, "proxy", "proxy.conf", backend_port=backend.port)
        started.append(proxy)
        runs = {"constant": lambda: run_nginx(constant, None, 64, n, 1000),
                "proxy": lambda: run_nginx(proxy, backend, 64, n, 1000)}
        for anchor in (constant, proxy):
            run_tool([HTTPLOAD, "--port", str(anchor.port), "--conns", "4", "--requests", "500", "--warmup", "0"])
        u = R.get("unary64", {}).get("tcp")
        if u:
            res["rest_from"] = "unary64"
        else:
            res["rest_from"] = "nginx"
            runs["tcp"] = lambda: run_bridge(ctx.mock, ctx.bridge, "tcp", 64, n, 1000)
        res["runs"] = alternate(ctx.rounds, runs)
        if u:
            res["runs"]["tcp"] = u
    except (OSError, RuntimeError) as e:
        res["skipped"] = f"nginx did not start: {e}"
        log(f"  nginx anchors skipped: {res['skipped']}")
    finally:
        for x in started:
            x.stop()


def nginx_rows(R):
    N = R["nginx"]
    if N.get("skipped"):
        return [(f"nginx anchors: skipped ({N['skipped']})", "n/a", "n/a", "", "skipped", "")]
    runs = N.get("runs") or {}
    rest = runs.get("tcp") or []
    rps = lambda d: d.get("rps")
    cpu = lambda key: (lambda d: d[key] / d["total_requests"] * 1e6 if d.get("total_requests") else None)
    tgb = cpu("tgb_cpu_s")

    def ratio(fa, a, fb, b):
        # REST/TCP over nginx, round by round (the REST rounds of unary64, when they are the
        # source, ran in the same run but not interleaved with these: paired by index)
        return med([fb(y) / fa(x) for x, y in zip(a, b) if fa(x) and fb(y)])

    rows = []
    # the direct column holds nginx's figure, the tgbridge column REST/TCP's, the ratio is
    # REST/TCP / nginx
    for anchor, what, target, lim in (("constant", "nginx, constant body", "≤ 1.5×", 1.5),
                                      ("proxy", "nginx reverse proxy → nginx", "≤ 0.5×", 0.5)):
        rs = runs.get(anchor) or []
        if not rs or not rest:
            continue
        r = ratio(rps, rs, rps, rest)
        rows.append((f"{what}, 64 callers, vs REST/TCP: throughput (req/s; direct = nginx)",
                     fmt(med([rps(d) for d in rs])), fmt(med([rps(d) for d in rest])),
                     fmt(r, "×", 2), "report", ""))
        c = ratio(cpu("nginx_cpu_s"), rs, tgb, rest)
        who = ", the proxy's own" if anchor == "proxy" else ""
        rows.append((f"{what}: CPU per request{who} (µs)", fmt(med([cpu("nginx_cpu_s")(d) for d in rs])),
                     fmt(med([tgb(d) for d in rest])), fmt(c, "×", 2), target, verdict(c is not None and c <= lim)))
        if anchor == "proxy":
            rows.append((f"{what}: CPU per request, its backend (µs)",
                         fmt(med([cpu("backend_cpu_s")(d) for d in rs])), "", "", "report", ""))
    if not rows:
        rows.append(("nginx anchors: no run finished (see the messages above)", "n/a", "n/a", "", "report", ""))
    return rows


def nginx_detail(R):
    N = R.get("nginx")
    if not N:
        return []
    if N.get("skipped"):
        return ["", f"nginx anchors: skipped — {N['skipped']}"]
    src = ("the unary64 scenario's (same run, not interleaved)" if N.get("rest_from") == "unary64"
           else "measured in this scenario, alternating with nginx")
    out = ["", f"nginx anchors ({N.get('version', 'nginx')}, one process each, {N['callers']} callers, "
               f"{N['requests']:,} requests after {N['warmup']:,} warm-up; REST/TCP figures: {src}):"]
    for anchor in ("constant", "proxy", "tcp"):
        for i, d in enumerate((N.get("runs") or {}).get(anchor, [])):
            wall = d.get("mock_wall_s") or d.get("wall_s_watch") or 0
            tot = d["total_requests"]
            if anchor == "tcp":
                cpu = f"tgbridge {d['tgb_cpu_s'] / tot * 1e6:.2f} µs/request (stat), " \
                      f"{d['tgb_cpu_fine_s'] / tot * 1e6:.2f} (schedstat), " \
                      f"{d['tgb_cpu_fine_s'] / wall * 100 if wall else 0:.0f}% of one core"
            else:
                cpu = f"nginx {d['nginx_cpu_s'] / tot * 1e6:.2f} µs/request (stat), " \
                      f"{d['nginx_cpu_fine_s'] / tot * 1e6:.2f} (schedstat), " \
                      f"{d['nginx_cpu_fine_s'] / wall * 100 if wall else 0:.0f}% of one core"
                if "backend_cpu_s" in d:
                    cpu += f"; backend {d['backend_cpu_s'] / tot * 1e6:.2f} (stat), " \
                           f"{d['backend_cpu_fine_s'] / tot * 1e6:.2f} (schedstat)"
            name = "REST/TCP" if anchor == "tcp" else anchor
            out.append(f"  {name:8s} round {i + 1}: {fmt(d.get('rps'))} req/s, {cpu}")
    return out


# ---- many connections: long calls beside short ones, and many long calls at once ----------
#
# Both run on FRESH processes for every run (a mock, and tgbridge with its defaults:
# --max-connections 8, --max-inflight 15, --connection-idle 30), so each tgbridge run starts
# from its one persistent connection, as after any idle spell, and no overflow connection
# left open by an earlier run helps it.  The direct baseline is ONE socket to the mock, as
# every official client uses, with the same window of 15; the mock keeps the gateway's
# window (16 running, counted from the oldest unfinished request).

MIXED_SHORT = 64        # short-call callers
MIXED_LONG = 3          # callers looping a long call
MIXED_LONG_MS = 2000    # the long call: the mock replies this long after it starts
WIDE_CALLS = 64         # concurrent calls in the wide scenario
WIDE_MS = 1000          # each answered this long after it starts


def mock_counters(text):
    """key=value counters of the mock's last "fastmock:" line (conns, conns_max, ...)."""
    lines = [l for l in (text or "").splitlines() if l.startswith("fastmock:")]
    if not lines:
        return {}
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", lines[-1])}


class StatusPoller:
    """Polls tgbridge's GET /status while a run goes on: the most upstream connections seen
    at once and the connection list at that moment."""

    def __init__(self, bridge, every=0.05):
        self.bridge, self.every = bridge, every
        self.max_conns, self.at_max, self.polls = 0, None, 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.is_set():
            up = self.bridge.status().get("upstream") or {}
            self.polls += 1
            n = up.get("connections")
            if isinstance(n, int) and n > self.max_conns:
                self.max_conns = n
                self.at_max = [{k: c.get(k) for k in ("id", "role", "state", "window_used", "requests_carried")}
                               for c in up.get("connection_list") or []]
            self._stop.wait(self.every)

    def stop(self):
        self._stop.set()
        self._t.join(5)
        up = self.bridge.status().get("upstream") or {}
        return {"max_connections_seen": self.max_conns, "connection_list_at_max": self.at_max, "polls": self.polls,
                "connections_end": up.get("connections"),
                "requests_carried": [c.get("requests_carried") for c in up.get("connection_list") or []]}


def fresh_direct(ctx, tag, args):
    """The direct client on a fresh mock; adds the mock's own counters."""
    mock = Mock(ctx.tmp, tag)
    try:
        d = run_tool([DIRECT, "--port", str(mock.port), "--window", str(WINDOW)] + DIRECT_MODE + args)
    finally:
        counters = mock_counters(mock.stop())
    if d:
        d["mock"] = counters
    return d


def fresh_bridge(ctx, tag, args):
    """httpload through a fresh tgbridge (defaults) on a fresh mock; adds what /status showed
    during the run, tgbridge's CPU and the mock's own counters."""
    mock = Mock(ctx.tmp, tag)
    bridge = None
    try:
        bridge = Bridge(ctx.tmp, tag, mock.port)
        poller = StatusPoller(bridge)
        w = Watch(bridge)
        d = run_tool([HTTPLOAD, "--port", str(bridge.port)] + args)
        wall, (tgb_cpu,) = w.done()
        st = poller.stop()
    finally:
        if bridge:
            bridge.stop()
        counters = mock_counters(mock.stop())
    if d:
        d.update(status=st, mock=counters, tgb_cpu_s=tgb_cpu, tgb_cpu_fine_s=w.fine[0], tgb_wall_s=wall)
    return d


def scen_mixed(ctx, R):
    """3 callers each looping a 2-second call and 64 callers of short calls (one outstanding
    each, closed loop).  Short calls issued in the `dur` seconds after a `warm`-second warm-up
    are measured.  Three runs a round: direct (one socket), tgbridge, and tgbridge with the
    64 short callers alone (no long calls) -- the reference for the p99 target."""
    warm, dur = (2.0, 3.0) if ctx.quick else (2.0, 6.0)
    rounds = min(ctx.rounds, 3)
    span = ["--duration", str(dur), "--warmup-s", str(warm)]
    longs = lambda flag: [flag, str(MIXED_LONG), "--long-delay-ms", str(MIXED_LONG_MS)]
    runs = {"direct": lambda: fresh_direct(ctx, "mixed-d", ["--callers", str(MIXED_SHORT)] + longs("--long-callers")
                                           + span),
            "tcp": lambda: fresh_bridge(ctx, "mixed-b", ["--conns", str(MIXED_SHORT)] + longs("--long-conns") + span),
            "tcp_nolong": lambda: fresh_bridge(ctx, "mixed-n", ["--conns", str(MIXED_SHORT)] + span)}
    R["mixed"] = alternate(rounds, runs)
    R["mixed_params"] = {"short_callers": MIXED_SHORT, "long_callers": MIXED_LONG, "long_ms": MIXED_LONG_MS,
                         "warmup_s": warm, "duration_s": dur, "rounds": rounds}


def scen_wide(ctx, R):
    """64 concurrent calls, each answered 1 s after it starts: time from the first request
    to the last reply.  Direct: 64 callers on one socket (15 in the window at a time).
    tgbridge: 64 REST connections, the daemon's defaults."""
    rounds = min(ctx.rounds, 3)
    args = ["--requests", str(WIDE_CALLS), "--warmup", "0", "--delay-ms", str(WIDE_MS)]
    runs = {"direct": lambda: fresh_direct(ctx, "wide-d", ["--callers", str(WIDE_CALLS)] + args),
            "tcp": lambda: fresh_bridge(ctx, "wide-b", ["--conns", str(WIDE_CALLS)] + args)}
    R["wide"] = alternate(rounds, runs)
    R["wide_params"] = {"calls": WIDE_CALLS, "delay_ms": WIDE_MS, "rounds": rounds}


def scen_hold(ctx, R):
    n = 2000 if ctx.quick else 10000
    limit = nofile_limit()
    if limit < n + 200:
        n = max(100, limit - 200)
        log(f"  (RLIMIT_NOFILE hard limit {limit}: holding {n} streams instead)")
    mock = Mock(ctx.tmp, "hold")
    bridge = Bridge(ctx.tmp, "hold", mock.port,
                    extra=["--max-queue", str(n + 1000), "--queue-timeout", "600", "--request-timeout", "600"])
    res = {"streams": n}
    try:
        time.sleep(0.3)
        rss0 = proc_status(bridge.pid)["VmRSS"]
        idle0_cpu, idle0_ns = proc_cpu_s(bridge.pid), proc_sched_ns(bridge.pid)
        time.sleep(2.0)
        res["idle_empty_cpu_ms_per_s"] = (proc_cpu_s(bridge.pid) - idle0_cpu) * 1000 / 2.0
        if idle0_ns is not None:
            res["idle_empty_sched_ms_per_s"] = (proc_sched_ns(bridge.pid) - idle0_ns) / 1e6 / 2.0
        t0 = time.monotonic()
        hp = spawn([HTTPLOAD, "--port", str(bridge.port), "--conns", str(n), "--hold", "--connect-rate", "4000",
                    "--timeout", "120", "--hold-seconds", "300"],
                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        r, _, _ = select.select([hp.stdout], [], [], 150)
        line = hp.stdout.readline() if r else ""
        m = re.match(r"HELD (\d+)", line)
        res["held_written"] = int(m.group(1)) if m else 0
        # wait until tgbridge has every call (queued or in the window)
        st = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            st = bridge.status()
            calls = st.get("rest", {}).get("active_calls")
            rq = st.get("requests", {})
            inq = (rq.get("queued") or 0) + (rq.get("in_flight") or 0)
            if (calls or inq) >= res["held_written"] > 0:
                break
            time.sleep(0.2)
        res["ramp_s"] = time.monotonic() - t0
        res["status"] = {"requests": st.get("requests"), "rest": st.get("rest")}
        time.sleep(1.0)
        s1 = proc_status(bridge.pid)
        res["rss0_kb"], res["rss1_kb"] = rss0, s1["VmRSS"]
        res["rss_per_stream_b"] = (s1["VmRSS"] - rss0) * 1024 / max(1, res["held_written"])
        c0, ns0 = proc_cpu_s(bridge.pid), proc_sched_ns(bridge.pid)
        v0 = s1.get("voluntary_ctxt_switches", 0) + s1.get("nonvoluntary_ctxt_switches", 0)
        time.sleep(10.0)
        s2 = proc_status(bridge.pid)
        res["idle_cpu_ms"] = (proc_cpu_s(bridge.pid) - c0) * 1000
        if ns0 is not None:
            res["idle_sched_ms"] = (proc_sched_ns(bridge.pid) - ns0) / 1e6
        res["idle_wakeups_per_s"] = (s2.get("voluntary_ctxt_switches", 0) + s2.get("nonvoluntary_ctxt_switches", 0)
                                     - v0) / 10.0
        out, _ = hp.communicate(timeout=60)  # closes its stdin: the callers hang up
        lines = [l for l in out.splitlines() if l.startswith("{")]
        if lines:
            d = json.loads(lines[-1])
            res["held_replies"] = d.get("held_replies")
            res["connect_errors"] = d.get("connect_errors")
            res["first_error"] = d.get("first_error")
        # the callers are gone: does tgbridge give the memory back?
        time.sleep(2.5)
        res["rss_after_kb"] = proc_status(bridge.pid)["VmRSS"]
    finally:
        bridge.stop()
        res["mock_log"] = mock.stop()
    R["hold"] = res


def scen_ws_idle(ctx, R):
    """1,000 local WebSocket clients connected and silent: tgbridge's RSS per socket and
    its CPU over 10 s.  The clients are plain sockets that send the upgrade request and
    then nothing (standard library only, like the rest of run.py)."""
    n = 300 if ctx.quick else 1000
    mock = Mock(ctx.tmp, "wsidle")
    bridge = Bridge(ctx.tmp, "wsidle", mock.port, extra=["--max-ws-clients", str(n + 10)])
    res = {"sockets": n}
    socks = []
    try:
        time.sleep(0.3)
        rss0 = proc_status(bridge.pid)["VmRSS"]
        req = (b"GET /api/v1/socket HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        for _ in range(n):
            c = socket.create_connection(("127.0.0.1", bridge.port), timeout=10)
            c.sendall(req)
            socks.append(c)
        upgraded = 0
        for c in socks:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = c.recv(4096)
                if not chunk:
                    break
                head += chunk
            upgraded += head.startswith(b"HTTP/1.1 101")
        res["upgraded"] = upgraded
        time.sleep(1.0)
        s1 = proc_status(bridge.pid)
        res["rss0_kb"], res["rss1_kb"] = rss0, s1["VmRSS"]
        res["rss_per_socket_b"] = (s1["VmRSS"] - rss0) * 1024 / max(1, upgraded)
        c0, ns0 = proc_cpu_s(bridge.pid), proc_sched_ns(bridge.pid)
        v0 = s1.get("voluntary_ctxt_switches", 0) + s1.get("nonvoluntary_ctxt_switches", 0)
        time.sleep(10.0)
        s2 = proc_status(bridge.pid)
        res["idle_cpu_ms"] = (proc_cpu_s(bridge.pid) - c0) * 1000
        if ns0 is not None:
            res["idle_sched_ms"] = (proc_sched_ns(bridge.pid) - ns0) / 1e6
        res["idle_wakeups_per_s"] = (s2.get("voluntary_ctxt_switches", 0) + s2.get("nonvoluntary_ctxt_switches", 0)
                                     - v0) / 10.0
    finally:
        for c in socks:
            c.close()
        bridge.stop()
        res["mock_log"] = mock.stop()
    R["ws_idle"] = res


# ---- pass-through: a large export-core relayed by tgbridge vs straight from the gateway -----
#
# GET /api/v1/export-core is not an envelope: tgbridge relays it as an HTTP request of its
# own to the gateway and streams the body through a fixed 256 KiB buffer.  The gateway here
# is the Python mock (tests/lib/mock_gateway.py: fastmock has no pass-through routes), whose
# export-core of id "size-N" generates N bytes, written `mock-chunk` bytes at a time.  The
# client is curl (C; a Python http.client reader was measured at about half of curl's rate
# through tgbridge, so it would have been the bottleneck).

PYMOCK = os.path.join(ROOT, "tests", "lib", "mock_gateway.py")
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
PASS_TOKEN = "tg_bench"           # the same token as Bridge's --token
PASS_MIB = 100                    # the scenario's export, in MiB (3 alternating rounds)
PASS_BIG_MIB = 300                # once, to show tgbridge's RSS does not grow with size
# The mock's write size: 1 MiB writes make the mock faster (measured: 2,300-4,100 MiB/s
# straight to curl in most transfers, against 1,990-2,340 MiB/s with its default of 64 KiB),
# so tgbridge, not the mock, bounds its own path and the baseline is the stronger one.
PASS_CHUNK = int(os.environ.get("BENCH_PASS_CHUNK", str(1024 * 1024)))
PASS_RSS_EVERY = 0.010            # VmRSS sampling period during a transfer
# The mock allocates a fresh ~1 MiB buffer per write.  With glibc's default (dynamic) mmap
# threshold each one is mmapped and unmapped again, so the mock page-faults on every write
# (perf: exc_page_fault, clear_page) and runs at 620-880 MiB/s, until some later free raises
# the threshold and it jumps to 3,000-4,100 MiB/s at a moment no one chooses.  Fixed thresholds for
# the mock alone (not tgbridge, not curl) make it fast from its first transfer.
PYMOCK_ENV = dict(os.environ, GLIBC_TUNABLES=":".join(filter(None, (
    os.environ.get("GLIBC_TUNABLES"), "glibc.malloc.mmap_threshold=33554432",
    "glibc.malloc.trim_threshold=268435456"))))
CURL = shutil.which("curl")
# For scale, when installed: socat as a bare TCP relay (no HTTP at all) between curl and the
# mock, with 16 KiB and 256 KiB buffers: what one more user-space hop costs on this machine.
SOCAT = shutil.which("socat")
SOCAT_BUFS = (16384, 262144)


class PyMock:
    """tests/lib/mock_gateway.py, started as tests/lib/harness.py start_mock does."""

    def __init__(self, tmp, tag):
        self.err_path = os.path.join(tmp, f"mock_gateway-{tag}.log")
        self.err = open(self.err_path, "w")
        self.p = spawn([PYTHON, PYMOCK, "--port", "0", "--era", "v2d", "--token", PASS_TOKEN],
                       stdout=subprocess.PIPE, stderr=self.err, text=True, env=PYMOCK_ENV)
        self.pid = self.p.pid
        r, _, _ = select.select([self.p.stdout], [], [], 60)
        line = self.p.stdout.readline() if r else ""
        m = re.match(r"PORT (\d+)", line)
        if not m:
            raise RuntimeError(f"mock_gateway.py did not report its port (see {self.err_path})")
        self.port = int(m.group(1))

    def stop(self):
        stop(self.p)
        self.err.close()
        with open(self.err_path) as f:
            return f.read().strip()


class RssSampler:
    """VmRSS of pid every PASS_RSS_EVERY seconds while a transfer runs: the largest seen."""

    def __init__(self, pid):
        self.pid, self.max_kb, self.samples = pid, 0, 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while True:
            try:
                v = proc_status(self.pid).get("VmRSS", 0)
            except OSError:
                return
            self.samples += 1
            self.max_kb = max(self.max_kb, v)
            if self._stop.wait(PASS_RSS_EVERY):
                return

    def stop(self):
        self._stop.set()
        self._t.join(2)
        return self.max_kb, self.samples


def curl_get(url, unix_path=None, auth=False, timeout=300):
    """One GET with curl, body to /dev/null; curl's own timings (seconds)."""
    argv = [CURL, "-sS", "-o", "/dev/null", "-w",
            "%{http_code} %{size_download} %{time_total} %{time_starttransfer} %{time_connect}"]
    if unix_path:
        argv += ["--unix-socket", unix_path]
    if auth:
        argv += ["-H", f"Authorization: Bearer {PASS_TOKEN}"]
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        cp = subprocess.run(argv + [url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "why": "curl timed out"}
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)  # curl is the only child reaped meanwhile
    f = cp.stdout.split()
    if cp.returncode or len(f) != 5:
        return {"ok": False, "why": f"curl exit {cp.returncode}: {cp.stderr.strip()[:200]}"}
    return {"status": int(f[0]), "bytes": int(f[1]), "time_total_s": float(f[2]), "ttfb_s": float(f[3]),
            "connect_s": float(f[4]),
            "client_cpu_s": (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)}


def free_port():
    with socket.socket() as so:
        so.bind(("127.0.0.1", 0))
        return so.getsockname()[1]


def socat_run(mock, bridge, bufsize, mib):
    """One export through a bare socat TCP relay (one connection, then it exits)."""
    port = free_port()
    sp = spawn([SOCAT, "-b", str(bufsize), f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr",
                f"TCP:127.0.0.1:{mock.port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and port not in listening_tcp_ports(sp.pid):
        if sp.poll() is not None:
            break
        time.sleep(0.01)
    try:
        return pass_run(mock, bridge, f"socat{bufsize // 1024}k", mib, via_port=port, relay=sp)
    finally:
        try:
            sp.wait(5)
        except subprocess.TimeoutExpired:
            pass
        stop(sp)


def pass_run(mock, bridge, path, mib, via_port=None, relay=None):
    """One export of `mib` MiB: straight from the mock (path "direct") or through tgbridge
    ("tcp": REST over TCP, "unix": REST over its Unix socket).  tgbridge's RSS is sampled
    every 10 ms meanwhile and its VmHWM reset before (clear_refs), so the peak is caught
    even between two samples."""
    size = mib * 1048576
    target = f"/api/v1/export-core?id=size-{mib}m&workspace=default&mock-chunk={PASS_CHUNK}"
    if path == "direct":
        url, unix_path, auth = f"http://127.0.0.1:{mock.port}{target}", None, True
    elif via_port:
        url, unix_path, auth = f"http://127.0.0.1:{via_port}{target}", None, True
    elif path == "tcp":
        url, unix_path, auth = f"http://127.0.0.1:{bridge.port}{target}", None, False
    else:
        url, unix_path, auth = f"http://localhost{target}", bridge.unix_path, False
    hwm_reset = reset_hwm(bridge.pid)
    rss0 = proc_status(bridge.pid).get("VmRSS", 0)
    sampler = RssSampler(bridge.pid)
    w = Watch(mock, bridge, relay)
    d = curl_get(url, unix_path, auth)
    wall, _ = w.done()
    rss_max, samples = sampler.stop()
    st = proc_status(bridge.pid)
    d.update(path=path, mib=mib, size=size, wall_s=wall, mock_cpu_s=w.fine[0], tgb_cpu_s=w.fine[1],
             tgb_rss0_kb=rss0, tgb_rss_max_kb=rss_max, rss_samples=samples,
             tgb_hwm_kb=st.get("VmHWM") if hwm_reset else None, tgb_rss_after_kb=st.get("VmRSS"))
    if "status" in d:
        d["ok"] = d["status"] == 200 and d["bytes"] == size
        if not d["ok"]:
            d["why"] = f"HTTP {d['status']}, {d['bytes']} of {size} bytes"
        t = d["time_total_s"]
        if t > 0:
            d["mib_s"] = d["bytes"] / 1048576 / t
            d["mock_cpu_share"] = d["mock_cpu_s"] / t
            d["tgb_cpu_share"] = d["tgb_cpu_s"] / t
            if relay is not None and len(w.fine) > 2:
                d["relay_cpu_s"] = w.fine[2]
                d["relay_cpu_share"] = w.fine[2] / t
        peak = max(rss_max, d["tgb_hwm_kb"] or 0)
        d["tgb_peak_growth_kb"] = peak - rss0
    if not d.get("ok"):
        log(f"  ! pass-through {path} {mib} MiB: {d.get('why')}")
        return None
    return d


def scen_passthrough(ctx, R):
    """A 100 MiB export-core through tgbridge (REST/TCP, and REST over the Unix socket when
    built with it) and straight from the mock, alternating, 3 rounds at most; then 300 MiB
    once each way.  Fresh mock and tgbridge of their own."""
    if not CURL:
        log("  (curl not found: pass-through scenario skipped)")
        R["passthrough"] = {"skipped": "curl not found"}
        return
    rounds = max(1, min(ctx.rounds, 3))
    res = {"mib": PASS_MIB, "big_mib": PASS_BIG_MIB, "chunk": PASS_CHUNK, "rounds": rounds,
           "client": " ".join(subprocess.run([CURL, "--version"], stdout=subprocess.PIPE,
                                             text=True).stdout.split()[:2])}
    mock = PyMock(ctx.tmp, "pass")
    bridge = None
    try:
        bridge = Bridge(ctx.tmp, "pass", mock.port, unix=HAS_UNIX)
        time.sleep(0.3)
        res["tgb_rss_start_kb"] = proc_status(bridge.pid)["VmRSS"]
        # One export each way first, not counted: the mock builds its generated body and
        # tgbridge pays its first-call allocations (the "from start" RSS figure counts them
        # from before this warm-up).
        res["warmup"] = [pass_run(mock, bridge, "direct", PASS_MIB), pass_run(mock, bridge, "tcp", PASS_MIB)]
        runs = {"direct": lambda: pass_run(mock, bridge, "direct", PASS_MIB),
                "tcp": lambda: pass_run(mock, bridge, "tcp", PASS_MIB)}
        if bridge.unix_path:
            runs["unix"] = lambda: pass_run(mock, bridge, "unix", PASS_MIB)
        if SOCAT:
            for b in SOCAT_BUFS:
                runs[f"socat{b // 1024}k"] = (lambda b=b: socat_run(mock, bridge, b, PASS_MIB))
        res["runs"] = alternate(rounds, runs)
        res["big"] = {"tcp": pass_run(mock, bridge, "tcp", PASS_BIG_MIB),
                      "direct": pass_run(mock, bridge, "direct", PASS_BIG_MIB)}
        res["tgb_rss_end_kb"] = proc_status(bridge.pid)["VmRSS"]
        res["tgb_status_passthrough"] = bridge.status().get("passthrough")
    finally:
        if bridge:
            bridge.stop()
        mock.stop()
    R["passthrough"] = res


def passthrough_rows(R, label):
    rows = []
    P = R["passthrough"]
    if P.get("skipped"):
        return [("pass-through export", "n/a", "n/a", P["skipped"], "", "")]
    runs = P.get("runs", {})
    dr = runs.get("direct", [])
    d = med([x.get("mib_s") for x in dr])
    for tr in ("tcp", "unix"):
        br = runs.get(tr)
        if not br:
            continue
        b = med([x.get("mib_s") for x in br])
        ratio = med([y["mib_s"] / x["mib_s"] for x, y in zip(dr, br) if x.get("mib_s") and y.get("mib_s")])
        rows.append((f"pass-through export {P['mib']} MiB, {label[tr]}: throughput (MiB/s)", fmt(d), fmt(b),
                     fmt(ratio, "×", 2), "≥ 0.7×", verdict(ratio is not None and ratio >= 0.7)))
    for b in SOCAT_BUFS:
        sr = runs.get(f"socat{b // 1024}k")
        if not sr:
            continue
        v = med([x.get("mib_s") for x in sr])
        ratio = med([y["mib_s"] / x["mib_s"] for x, y in zip(dr, sr) if x.get("mib_s") and y.get("mib_s")])
        rows.append((f"  for scale: bare TCP relay (socat -b {b // 1024} KiB, no HTTP): throughput (MiB/s)", fmt(d),
                     fmt(v), fmt(ratio, "×", 2), "report", ""))
    # CPU per 100 MiB carried (schedstat): steadier than timings on a shared machine.
    per100 = lambda x, key: x[key] * 1000 * (100 * 1048576) / x["bytes"] if x.get(key) is not None else None
    dcpu = med([per100(x, "mock_cpu_s") for x in dr])
    for tr, key, what in (("tcp", "tgb_cpu_s", "tgbridge, REST/TCP"), ("unix", "tgb_cpu_s", "tgbridge, REST/unix"),
                          ("socat16k", "relay_cpu_s", "socat -b 16 KiB"),
                          ("socat256k", "relay_cpu_s", "socat -b 256 KiB")):
        if not runs.get(tr):
            continue
        c = med([per100(x, key) for x in runs[tr]])
        rows.append((f"pass-through: relay CPU per 100 MiB, {what} (ms; direct = the mock's)", fmt(dcpu), fmt(c),
                     fmt(c / dcpu, "×", 2) if c and dcpu else "n/a", "report", ""))
    # everything the machine's 2 cores had to run for one transfer: mock + relay + curl
    chain = lambda x: per100({"v": x["mock_cpu_s"] + x["tgb_cpu_s"] + (x.get("relay_cpu_s") or 0)
                              + x["client_cpu_s"], "bytes": x["bytes"]}, "v") if "client_cpu_s" in x else None
    dch = med([chain(x) for x in dr])
    for tr in ("tcp", "unix", "socat16k", "socat256k"):
        if not runs.get(tr):
            continue
        c = med([chain(x) for x in runs[tr]])
        what = label.get(tr) or f"socat -b {tr[5:-1]} KiB"
        rows.append((f"pass-through: CPU of mock + relay + curl per 100 MiB, {what} (ms)", fmt(dch), fmt(c),
                     fmt(c / dch, "×", 2) if c and dch else "n/a", "report", ""))
    growth = [x["tgb_peak_growth_kb"] for tr in ("tcp", "unix") for x in runs.get(tr, [])]
    worst = max(growth) if growth else None
    # from before the first export of all (the warm-up included) to the highest peak
    peaks = [max(x["tgb_rss_max_kb"], x["tgb_hwm_kb"] or 0)
             for x in (P.get("warmup") or []) + [y for tr in ("tcp", "unix") for y in runs.get(tr, [])]
             if x and x["path"] in ("tcp", "unix")]
    cold = max(peaks) - P["tgb_rss_start_kb"] if peaks and P.get("tgb_rss_start_kb") else None
    rows.append((f"pass-through export {P['mib']} MiB: tgbridge peak RSS growth (MiB, worst run)", "n/a",
                 fmt(worst / 1024 if worst is not None else None, "", 2),
                 f"from start +{fmt(cold / 1024 if cold is not None else None, '', 2)}", "≤ 4 MiB",
                 verdict(worst is not None and worst <= 4096 and (cold is None or cold <= 4096))))
    big = P.get("big") or {}
    bt, bd = big.get("tcp"), big.get("direct")
    if bt:
        ratio = bt["mib_s"] / bd["mib_s"] if bd and bd.get("mib_s") else None
        rows.append((f"pass-through export {P['big_mib']} MiB (once), REST/TCP: throughput (MiB/s)",
                     fmt(bd.get("mib_s") if bd else None), fmt(bt.get("mib_s")), fmt(ratio, "×", 2), "report", ""))
        g = bt["tgb_peak_growth_kb"]
        rows.append((f"pass-through export {P['big_mib']} MiB (once): tgbridge peak RSS growth (MiB)", "n/a",
                     fmt(g / 1024, "", 2), "", "≤ 4 MiB", verdict(g <= 4096)))
    return rows


def passthrough_detail(R):
    P = R.get("passthrough")
    if not P or P.get("skipped"):
        return []
    out = ["", f"pass-through export (tests/lib/mock_gateway.py, mock-chunk={P['chunk']}; client {P['client']}; "
               f"throughput = bytes / curl's time_total; CPU = schedstat over that time; RSS growth = the larger of "
               f"VmHWM after a clear_refs reset and VmRSS sampled every {PASS_RSS_EVERY * 1000:g} ms, minus VmRSS "
               f"before):"]
    rows = [("warm-up", x) for x in P.get("warmup") or [] if x]
    rows += [(f"round {i + 1}", x) for tr in P["runs"] for i, x in enumerate(P["runs"][tr])]
    rows += [("once", x) for x in (P.get("big") or {}).values() if x]
    for tag, x in rows:
        line = (f"  {x['path']:9s} {x['mib']:3d} MiB {tag:8s}: {fmt(x.get('mib_s'))} MiB/s, first byte "
                f"{x['ttfb_s'] * 1000:.1f} ms, mock CPU {x.get('mock_cpu_share', 0) * 100:.0f}%, tgbridge CPU "
                f"{x.get('tgb_cpu_share', 0) * 100:.0f}%")
        if "relay_cpu_share" in x:
            line += f", socat CPU {x['relay_cpu_share'] * 100:.0f}%"
        if x.get("time_total_s"):
            line += f", curl CPU {x.get('client_cpu_s', 0) / x['time_total_s'] * 100:.0f}%"
        if x["path"] in ("tcp", "unix"):
            line += (f"; tgbridge RSS {x['tgb_rss0_kb']:,} KiB before, peak {x['tgb_rss_max_kb']:,} sampled "
                     f"({x['rss_samples']} samples) / {x['tgb_hwm_kb'] or 0:,} VmHWM, {x['tgb_rss_after_kb']:,} after")
        out.append(line)
    allp = [max(x["tgb_rss_max_kb"], x["tgb_hwm_kb"] or 0) for _, x in rows if x["path"] in ("tcp", "unix")]
    if allp and P.get("tgb_rss_start_kb"):
        out.append(f"  tgbridge RSS: {P['tgb_rss_start_kb']:,} KiB before the first export, highest peak "
                   f"{max(allp):,} KiB (+{(max(allp) - P['tgb_rss_start_kb']) / 1024:.2f} MiB), "
                   f"{P.get('tgb_rss_end_kb', 0):,} KiB after the last")
    return out


# ---- table -----------------------------------------------------------------------------

def fmt(x, unit="", digits=None):
    if x is None:
        return "n/a"
    if digits is None:
        digits = 0 if abs(x) >= 100 else (1 if abs(x) >= 10 else 2)
    return f"{x:,.{digits}f}{unit}"


def build_rows(R, transports):
    rows = []
    label = {"tcp": "REST/TCP", "unix": "REST/unix", "line": "line/unix", "ws": "WS/TCP"}

    def figure(runs, key, sub=None):
        vals = []
        for d in runs:
            v = d.get(key)
            if sub:
                v = (v or {}).get(sub)
            vals.append(v)
        return med(vals)

    def paired(dr, br, key, sub, op):
        """Median over rounds of op(bridge_i, direct_i): pairs runs that ran side by side."""
        vals = []
        def get(d):
            v = d.get(key)
            return (v or {}).get(sub) if sub else v
        for a, b in zip(dr, br):
            x, y = get(a), get(b)
            if x is not None and y is not None:
                vals.append(op(y, x))
        return med(vals)

    if "unary1" in R:
        u = R["unary1"]
        for tr in transports:
            if not u.get(tr):
                continue
            for pct, target, lim in (("p50", "added ≤ 100 µs", 100), ("p99", "added ≤ 1,000 µs", 1000)):
                d = figure(u["direct"], "lat_us", pct)
                b = figure(u[tr], "lat_us", pct)
                add = paired(u["direct"], u[tr], "lat_us", pct, lambda y, x: y - x)
                rows.append((f"unary, 1 caller, {label[tr]}: latency {pct} (µs)", fmt(d), fmt(b),
                             f"+{fmt(add)} µs" if add is not None else "n/a", target,
                             verdict(add is not None and add <= lim)))
    if "fresh" in R:
        u = R["fresh"]
        for tr in transports:
            if not u.get(tr):
                continue
            d = figure(u["direct"], "lat_us", "p50")
            b = figure(u[tr], "lat_us", "p50")
            add = paired(u["direct"], u[tr], "lat_us", "p50", lambda y, x: y - x)
            rows.append((f"first call on a new connection, {label[tr]}: latency (µs)", fmt(d), fmt(b),
                         f"+{fmt(add)} µs" if add is not None else "n/a", "report", ""))
    if "unary64" in R:
        u = R["unary64"]
        for tr in transports:
            if not u.get(tr):
                continue
            d = figure(u["direct"], "rps")
            b = figure(u[tr], "rps")
            ratio = paired(u["direct"], u[tr], "rps", None, lambda y, x: y / x if x else None)
            rows.append((f"unary, 64 callers, {label[tr]}: throughput (req/s)", fmt(d), fmt(b),
                         f"{fmt(ratio, '×', 2)}", "≥ 0.5×", verdict(ratio is not None and ratio >= 0.5)))
        # CPU per request: tgbridge's utime+stime over the 64-caller runs; the direct
        # column is the whole direct client's CPU per request, for scale.
        d_cpu = med([d["cpu_s"] / d["requests"] * 1e6 for d in u["direct"] if d.get("requests")])
        for tr in transports:
            if not u.get(tr):
                continue
            b_cpu = med([d["tgb_cpu_s"] / d["total_requests"] * 1e6 for d in u[tr]])
            rows.append((f"CPU per request, {label[tr]} (µs; direct = whole client)", fmt(d_cpu), fmt(b_cpu),
                         fmt(b_cpu / d_cpu, "×", 2) if b_cpu and d_cpu else "n/a", "report", ""))
    if "stream" in R:
        s = R["stream"]
        parts = R.get("stream_parts", 0)
        for tr in transports:
            if not s.get(tr):
                continue
            d = figure(s["direct"], "frames_per_s")
            b = figure(s[tr], "frames_per_s")
            ratio = paired(s["direct"], s[tr], "frames_per_s", None, lambda y, x: y / x if x else None)
            rows.append((f"stream of {parts:,} parts, {label[tr]}: parts/s", fmt(d), fmt(b), fmt(ratio, "×", 2),
                         "≥ 0.5×", verdict(ratio is not None and ratio >= 0.5)))
            d = figure(s["direct"], "ttfb_us", "p50")
            b = figure(s[tr], "ttfb_us", "p50")
            add = paired(s["direct"], s[tr], "ttfb_us", "p50", lambda y, x: y - x)
            rows.append((f"stream, {label[tr]}: time to first part (µs)", fmt(d), fmt(b),
                         f"+{fmt(add)} µs" if add is not None else "n/a", "report", ""))
        for tr in transports:
            if s.get(tr):
                # tgbridge's CPU covers the warm-up stream too: divide by every part it carried
                b_cpu = med([d["tgb_cpu_fine_s"] / max(1, d["frames"] * d["total_requests"] / max(1, d["requests"]))
                             * 1e6 for d in s[tr]])
                d_cpu = med([d["cpu_s"] / max(1, d["frames"]) * 1e6 for d in s["direct"]])
                rows.append((f"CPU per stream part, {label[tr]} (µs; direct = whole client)", fmt(d_cpu), fmt(b_cpu),
                             fmt(b_cpu / d_cpu, "×", 2) if b_cpu and d_cpu else "n/a", "report", ""))
    if "hold" in R:
        h = R["hold"]
        n = h.get("held_written", 0)
        per = h.get("rss_per_stream_b")
        rows.append((f"{n:,} open streams: tgbridge RSS per stream (KiB)", "n/a", fmt(per / 1024 if per else None),
                     "", "≤ 8 KiB", verdict(per is not None and per <= 8192)))
        cpu = h.get("idle_cpu_ms")
        sched = h.get("idle_sched_ms")
        shown = f"{fmt(cpu, ' ms', 0)} ({fmt(sched, ' ms', 1)} sched)" if sched is not None else fmt(cpu, " ms", 0)
        rows.append((f"{n:,} open streams: tgbridge CPU over 10 s idle", "n/a", shown,
                     f"{fmt(h.get('idle_wakeups_per_s'), '', 0)} wakeups/s", "0", verdict(cpu is not None and cpu == 0
                                                                                          and (sched or 0) < 5)))
    if "ws_idle" in R:
        w = R["ws_idle"]
        n = w.get("upgraded", 0)
        per = w.get("rss_per_socket_b")
        rows.append((f"{n:,} idle local WebSockets: tgbridge RSS per socket (KiB)", "n/a",
                     fmt(per / 1024 if per else None), "", "report", ""))
        cpu = w.get("idle_cpu_ms")
        sched = w.get("idle_sched_ms")
        shown = f"{fmt(cpu, ' ms', 0)} ({fmt(sched, ' ms', 1)} sched)" if sched is not None else fmt(cpu, " ms", 0)
        rows.append((f"{n:,} idle local WebSockets: tgbridge CPU over 10 s", "n/a", shown,
                     f"{fmt(w.get('idle_wakeups_per_s'), '', 0)} wakeups/s", "0",
                     verdict(cpu is not None and cpu == 0 and (sched or 0) < 5)))
    if "nginx" in R:
        rows += nginx_rows(R)
    if "accesslog" in R:
        rows += accesslog_rows(R)
    if "mixed" in R:
        rows += mixed_rows(R, figure, paired)
    if "wide" in R:
        rows += wide_rows(R, figure, paired)
    if "passthrough" in R:
        rows += passthrough_rows(R, label)
    for key, what in (("upload", "request"), ("download", "reply")):
        if key not in R:
            continue
        L = R[key]
        size = R.get("large_size", MB20)
        mbs = lambda d: size / 1048576 / (d["lat_us"]["p50"] / 1e6) if d.get("lat_us", {}).get("p50") else None
        dthr = med([mbs(d) for d in L["direct"]])
        bthr = med([mbs(d) for d in L.get("tcp", [])])
        ratio = med([mbs(b) / mbs(a) for a, b in zip(L["direct"], L.get("tcp", [])) if mbs(a) and mbs(b)])
        rows.append((f"{size // 1048576} MB {what}, REST/TCP: throughput (MB/s)", fmt(dthr), fmt(bthr),
                     fmt(ratio, "×", 2), "report", ""))
        dpk = med([(d["hwm_kb"] - d["rss_start_kb"]) * 1024 / size for d in L["direct"]])
        bpk = med([(d["tgb_hwm_kb"] - d["tgb_rss0_kb"]) * 1024 / size for d in L.get("tcp", [])
                   if d.get("tgb_hwm_kb") is not None])
        rows.append((f"{size // 1048576} MB {what}: peak RSS growth / payload", fmt(dpk, "×", 2), fmt(bpk, "×", 2), "",
                     "≤ 3×", verdict(bpk is not None and bpk <= 3)))
    return rows


def fmt_s(us):
    return "n/a" if us is None else f"{us / 1e6:,.2f} s" if abs(us) >= 100000 else f"{us:,.0f} µs"


def mixed_rows(R, figure, paired):
    rows = []
    m = R["mixed"]
    P = R.get("mixed_params", {})
    what = (f"mixed ({P.get('long_callers')} × {P.get('long_ms', 0) / 1000:g} s looping"
            f" + {P.get('short_callers')} short)")
    dr, br, nr = m.get("direct", []), m.get("tcp", []), m.get("tcp_nolong", [])
    for pct in ("p50", "p99"):
        d, b = figure(dr, "lat_us", pct), figure(br, "lat_us", pct)
        add = paired(dr, br, "lat_us", pct, lambda y, x: y - x)
        shown = "n/a" if add is None else ("−" + fmt_s(-add) if add < 0 else "+" + fmt_s(add))
        rows.append((f"{what}, REST/TCP: short-call {pct}", fmt_s(d), fmt_s(b), shown, "report", ""))
    d, b = figure(dr, "rps"), figure(br, "rps")
    ratio = paired(dr, br, "rps", None, lambda y, x: y / x if x else None)
    rows.append((f"{what}, REST/TCP: short calls/s", fmt(d), fmt(b), fmt(ratio, "×"), "report", ""))
    # the target: tgbridge's p99 with the long calls running against its p99 with none,
    # paired round by round (the two runs of a round are side by side)
    bp, nb = figure(br, "lat_us", "p99"), figure(nr, "lat_us", "p99")
    add = paired(nr, br, "lat_us", "p99", lambda y, x: y - x)
    shown = "n/a" if add is None else (f"+{fmt(add)} µs" if add >= 0 else f"−{fmt(-add)} µs")
    rows.append(("mixed: tgbridge short-call p99 (µs), long calls vs none", "n/a", f"{fmt(bp)} vs {fmt(nb)}", shown,
                 "≤ +2,000 µs", verdict(add is not None and add <= 2000)))
    dl, bl = figure(dr, "long_lat_us", "p50"), figure(br, "long_lat_us", "p50")
    rows.append(("mixed: the long calls' own latency p50", fmt_s(dl), fmt_s(bl), "", "report", ""))
    dc = figure(dr, "mock", "conns_max")
    bc = figure(br, "mock", "conns_max")
    nc = figure(nr, "mock", "conns_max")
    rows.append(("mixed: gateway connections (most at once; no long calls)", fmt(dc, "", 0),
                 f"{fmt(bc, '', 0)} ({fmt(nc, '', 0)})", "", "report", ""))
    return rows


def wide_rows(R, figure, paired):
    rows = []
    w = R["wide"]
    P = R.get("wide_params", {})
    dr, br = w.get("direct", []), w.get("tcp", [])
    d, b = figure(dr, "elapsed_s"), figure(br, "elapsed_s")
    ratio = paired(dr, br, "elapsed_s", None, lambda y, x: y / x if x else None)
    what = f"wide ({P.get('calls')} concurrent {P.get('delay_ms', 0) / 1000:g} s calls)"
    rows.append((f"{what}, REST/TCP: completion (s)", fmt(d, " s", 2), fmt(b, " s", 2), fmt(ratio, "×", 2),
                 "≤ 1.5 s", verdict(b is not None and b <= 1.5)))
    dc = figure(dr, "mock", "conns_max")
    bc = figure(br, "mock", "conns_max")
    bs = figure(br, "status", "max_connections_seen")
    rows.append(("wide: gateway connections (most at once; /status)", fmt(dc, "", 0),
                 f"{fmt(bc, '', 0)} ({fmt(bs, '', 0)})", "", "report", ""))
    return rows


def many_connections_detail(R):
    """Every round of the mixed and wide scenarios, below the table."""
    out = []
    if "mixed" in R:
        m = R["mixed"]
        for path, name in (("direct", "direct, one socket"), ("tcp", "tgbridge"),
                           ("tcp_nolong", "tgbridge, no long calls")):
            for i, d in enumerate(m.get(path, [])):
                lat = d.get("lat_us") or {}
                st = d.get("status") or {}
                out.append(f"  mixed {name:24s} round {i + 1}: short p50 {fmt_s(lat.get('p50'))}, "
                           f"p99 {fmt_s(lat.get('p99'))}, max {fmt_s(lat.get('max'))}, {fmt(d.get('rps'))} short "
                           f"calls/s ({lat.get('n')} measured), {d.get('long_completed')} long calls done; "
                           f"gateway connections: mock {d.get('mock', {}).get('conns_max')}"
                           + (f", /status {st.get('max_connections_seen')}" if st else ""))
    if "wide" in R:
        for path, name in (("direct", "direct, one socket"), ("tcp", "tgbridge")):
            for i, d in enumerate(R["wide"].get(path, [])):
                lat = d.get("lat_us") or {}
                st = d.get("status") or {}
                out.append(f"  wide  {name:24s} round {i + 1}: all {lat.get('n')} done in "
                           f"{fmt(d.get('elapsed_s'), ' s', 3)} (latency p50 {fmt_s(lat.get('p50'))}, "
                           f"max {fmt_s(lat.get('max'))}); gateway connections: "
                           f"mock {d.get('mock', {}).get('conns_max')}"
                           + (f", /status {st.get('max_connections_seen')}, requests per connection "
                              f"{st.get('requests_carried')}" if st else ""))
    return (["", "many connections, every round:"] + out) if out else []


def verdict(ok):
    return "met" if ok else "MISSED"


def print_table(rows, out=sys.stdout):
    head = ("scenario", "direct", "tgbridge", "ratio / added", "target", "")
    w = [max(len(str(r[i])) for r in rows + [head]) for i in range(6)]
    line = "  ".join(h.ljust(w[i]) if i == 0 else h.rjust(w[i]) for i, h in enumerate(head))
    print(line, file=out)
    print("-" * len(line), file=out)
    for r in rows:
        print("  ".join(str(c).ljust(w[i]) if i == 0 else str(c).rjust(w[i]) for i, c in enumerate(r)), file=out)


def machine():
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": model, "kernel": platform.release(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "loadavg": os.getloadavg()}


def mock_summary(R):
    """How busy the mock was: its CPU as a share of the runs' wall time, per scenario."""
    out = []
    for key in ("unary1", "unary64", "stream", "upload", "download"):
        if key not in R:
            continue
        for path, runs in R[key].items():
            if not runs:
                continue
            busy = med([d["mock_cpu_fine_s"] / d["mock_wall_s"] for d in runs if d.get("mock_wall_s")])
            tgb = med([d["tgb_cpu_fine_s"] / d["mock_wall_s"] for d in runs
                       if d.get("mock_wall_s") and "tgb_cpu_fine_s" in d])
            out.append((key, path, busy, tgb))
    return out


# ---- profile (optional) ----------------------------------------------------------------

def profile(ctx):
    """perf cpu-clock sampling of tgbridge and fastmock at full speed, then callgrind on a
    shorter run.  Prints the top entries; the raw files stay in bench/build/profile/."""
    pdir = os.path.join(BUILD, "profile")
    os.makedirs(pdir, exist_ok=True)
    report = []
    perf = shutil.which("perf")
    if perf:
        mock = Mock(ctx.tmp, "perf")
        bridge = Bridge(ctx.tmp, "perf", mock.port)
        try:
            for tag, argv in (("unary64", [HTTPLOAD, "--port", str(bridge.port), "--conns", "64", "--requests", "20000",
                                           "--warmup", "500"]),
                              ("stream", [HTTPLOAD, "--port", str(bridge.port), "--conns", "1", "--requests", "3",
                                          "--warmup", "0", "--parts", "100000", "--ndjson"])):
                recs = []
                for who, pid in (("tgbridge", bridge.pid), ("fastmock", mock.pid)):
                    out = os.path.join(pdir, f"perf-{who}-{tag}.data")
                    for stale in (out, out + ".old"):
                        if os.path.exists(stale):
                            os.unlink(stale)
                    recs.append((who, out, spawn([perf, "record", "-q", "-e", "cpu-clock", "-F", "2000", "-g", "-p",
                                                  str(pid), "-o", out], stdout=subprocess.DEVNULL,
                                                 stderr=subprocess.DEVNULL)))
                time.sleep(0.5)
                w = Watch(mock, bridge)
                run_tool(argv)
                wall, (mcpu, bcpu) = w.done()
                for who, out, p in recs:
                    p.send_signal(signal.SIGINT)
                    p.wait(30)
                report.append(f"perf {tag}: wall {wall:.2f} s, tgbridge CPU {bcpu:.2f} s, fastmock CPU {mcpu:.2f} s")
                for who, out, _ in recs:
                    cp = subprocess.run([perf, "report", "-i", out, "--stdio", "--no-children", "--sort",
                                         "dso,symbol", "--percent-limit", "0.7"], stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, text=True)
                    top = [l for l in cp.stdout.splitlines() if re.match(r"\s+\d+\.\d+%", l)]
                    top = top[:14 if who == "tgbridge" else 6]
                    report.append(f"  perf top ({who}, {tag}, self time):")
                    report += ["    " + re.sub(r"\s+", " ", l.strip()).replace(" - -", "") for l in top]
                    if who != "tgbridge":
                        continue
                    # where the kernel time goes: system calls, with everything they cause
                    cp = subprocess.run([perf, "report", "-i", out, "--stdio", "--children", "--sort", "symbol",
                                         "--percent-limit", "0.5"], stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, text=True)
                    sysc = []
                    for l in cp.stdout.splitlines():
                        m = re.match(r"\s+(\d+\.\d+)%\s+\d+\.\d+%\s+\[k\] (?:__x64_sys_(\w+)|__sys_(sendmsg))\s", l)
                        if m:
                            sysc.append(f"{m.group(2) or m.group(3)} {m.group(1)}%")
                    if sysc:
                        report.append("    system calls (incl. what they cause in the kernel): " + ", ".join(sysc[:8]))
        finally:
            bridge.stop()
            mock.stop()
    vg = shutil.which("valgrind")
    if vg and shutil.which("callgrind_control"):
        report += callgrind_profiles(ctx, pdir, vg)
    return report


def callgrind_top(path, n=14):
    """(total Ir, [top self entries]) of one callgrind file."""
    cp = subprocess.run(["callgrind_annotate", "--threshold=99", path], stdout=subprocess.PIPE,
                        stderr=subprocess.DEVNULL, text=True)
    lines = cp.stdout.splitlines()
    tot = next((l for l in lines if "PROGRAM TOTALS" in l), "")
    m = re.match(r"\s*([\d,]+)", tot)
    total = int(m.group(1).replace(",", "")) if m else 0
    start = next((i for i, l in enumerate(lines) if re.match(r"\s*Ir\s+file:function", l)), None)
    top = []
    if start is not None:
        for l in lines[start + 2:]:
            if not l.strip():
                continue
            l = re.sub(r"\s+", " ", l.strip())
            l = re.sub(r"\./[^:]*/", "", l)  # glibc source paths
            l = l.replace("/usr/lib/x86_64-linux-gnu/", "").replace(ROOT + "/", "")
            top.append(l)
            if len(top) >= n:
                break
    return total, top


def callgrind_profiles(ctx, pdir, vg):
    """Instruction counts (deterministic, unlike timings on a shared machine) for the same
    work through tgbridge, through the mock, and through the direct client: 2,000 unary
    requests from 64 callers, then (separately) one 20,000-part stream.  Only what runs
    inside lws_service() is counted (--toggle-collect), so start-up — e.g. lws loading the
    system CA store — is excluded; each workload gets fresh processes."""
    report = []
    n_req, parts = 2000, 20000
    work = {"unary": (["--conns", "64", "--requests", str(n_req), "--warmup", "0"],
                      ["--callers", "64", "--requests", str(n_req), "--warmup", "0"], n_req, "request"),
            "stream": (["--conns", "1", "--requests", "1", "--warmup", "0", "--parts", str(parts), "--ndjson"],
                       ["--callers", "1", "--requests", "1", "--warmup", "0", "--parts", str(parts)], parts, "part")}
    for f in os.listdir(pdir):
        if f.startswith("callgrind-"):
            os.unlink(os.path.join(pdir, f))

    def wrap(who, tag):
        return [vg, "--tool=callgrind", "--toggle-collect=lws_service",
                f"--callgrind-out-file={os.path.join(pdir, f'callgrind-{who}-{tag}.out')}"]

    for tag, (hargs, dargs, n, unit) in work.items():
        mock = Mock(ctx.tmp, f"cg-{tag}", wrapper=wrap("fastmock", tag))
        bridge = None
        try:
            bridge = Bridge(ctx.tmp, f"cg-{tag}", mock.port, wrapper=wrap("tgbridge", tag), ready_timeout=120)
            run_tool([HTTPLOAD, "--port", str(bridge.port), "--timeout", "300"] + hargs, timeout=400)
        finally:
            if bridge:
                bridge.stop()
            mock.stop()
        mock = Mock(ctx.tmp, f"cg-d-{tag}")
        try:
            run_tool(wrap("direct", tag) + [DIRECT, "--port", str(mock.port), "--window", str(WINDOW),
                                            "--timeout", "300"] + dargs, timeout=400)
        finally:
            mock.stop()
        for who in ("tgbridge", "fastmock", "direct"):
            path = os.path.join(pdir, f"callgrind-{who}-{tag}.out")
            if not os.path.exists(path):
                report.append(f"callgrind {who}, {tag}: no profile written")
                continue
            total, top = callgrind_top(path, 12 if who == "tgbridge" else 6)
            report.append(f"callgrind {who}, {tag}: {total:,} instructions = {total / n:,.0f} per {unit}")
            report += ["    " + l for l in top]
    return report

# ---- main ------------------------------------------------------------------------------

HAS_UNIX = False
HAS_WS = False


class Ctx:
    pass


def main():
    global HAS_UNIX, HAS_WS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--profile", action="store_true", default=os.environ.get("BENCH_PROFILE") == "1")
    ap.add_argument("--json", default=os.path.join(BUILD, "results.json"))
    ap.add_argument("--only", default=os.environ.get("BENCH_ONLY", ""))
    args = ap.parse_args()
    only = set(filter(None, args.only.split(",")))

    cp = subprocess.run(["make", "-s", "-C", HERE], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if cp.returncode:
        print(cp.stdout, file=sys.stderr)
        sys.exit("bench: building the bench programs failed")
    if not os.access(TGBRIDGE, os.X_OK):
        sys.exit(f"bench: {TGBRIDGE} not built (run `make`)")
    help_text = subprocess.run([TGBRIDGE, "--help"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True).stdout
    HAS_UNIX = "--unix" in help_text
    HAS_WS = "--max-ws-clients" in help_text

    ctx = Ctx()
    ctx.rounds = max(1, args.rounds if not args.quick else min(args.rounds, 3))
    ctx.quick = args.quick
    ctx.transports = ["tcp"] + (["unix", "line"] if HAS_UNIX else []) + (["ws"] if HAS_WS else [])
    mach = machine()
    R = {"machine": mach, "transports": ctx.transports, "rounds": ctx.rounds}
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tgbench-") as tmp:
        ctx.tmp = tmp
        try:
            ctx.mock = Mock(tmp, "main")
            ctx.bridge = Bridge(tmp, "main", ctx.mock.port, unix=HAS_UNIX)
            # warm both paths once (page faults, allocator, TCP) before measuring
            run_direct(ctx.mock, 4, 500, 0)
            run_bridge(ctx.mock, ctx.bridge, "tcp", 4, 500, 0)
            R["tgb_rss_start_kb"] = proc_status(ctx.bridge.pid)["VmRSS"]
            for name, fn, what in (("unary1", scen_unary1, "unary, 1 caller"),
                                   ("fresh", scen_fresh, "first call on a new connection"),
                                   ("unary64", scen_unary64, "unary, 64 keep-alive callers"),
                                   ("nginx", scen_nginx,
                                    "nginx anchors: a constant body and a reverse proxy, 64 callers"),
                                   ("accesslog", scen_accesslog,
                                    "access log off / on (text) / on (json), 64 callers, three fresh tgbridges"),
                                   ("stream", scen_stream, "one long stream"),
                                   ("large", scen_large, "20 MB request and reply")):
                if only and name not in only:
                    continue
                log(f"bench: {what} ({ctx.rounds} alternating rounds) ...")
                fn(ctx, R)
            st = ctx.bridge.status()
            R["tgb_status_end"] = st.get("requests")
            R["tgb_rss_end_kb"] = proc_status(ctx.bridge.pid)["VmRSS"]
            ctx.bridge.stop()
            R["mock_log"] = ctx.mock.stop()
            if not only or "mixed" in only:
                log(f"bench: mixed: {MIXED_LONG} looping {MIXED_LONG_MS / 1000:g} s calls beside {MIXED_SHORT} short "
                    f"callers, fresh processes ({min(ctx.rounds, 3)} alternating rounds) ...")
                scen_mixed(ctx, R)
            if not only or "wide" in only:
                log(f"bench: wide: {WIDE_CALLS} concurrent {WIDE_MS / 1000:g} s calls, fresh processes "
                    f"({min(ctx.rounds, 3)} alternating rounds) ...")
                scen_wide(ctx, R)
            if not only or "passthrough" in only:
                log(f"bench: pass-through: a {PASS_MIB} MiB export-core through tgbridge and straight from the "
                    f"Python mock ({max(1, min(ctx.rounds, 3))} alternating rounds), then {PASS_BIG_MIB} MiB once ...")
                scen_passthrough(ctx, R)
            if not only or "hold" in only:
                log("bench: 10,000 open streams held by the mock ...")
                scen_hold(ctx, R)
            if HAS_WS and (not only or "wsidle" in only):
                log("bench: 1,000 idle local WebSocket clients ...")
                scen_ws_idle(ctx, R)
            if args.profile:
                log("bench: profiling (perf cpu-clock, then callgrind) ...")
                R["profile"] = profile(ctx)
        finally:
            cleanup()
    R["elapsed_s"] = time.monotonic() - t_start
    mach["loadavg_end"] = os.getloadavg()

    rows = build_rows(R, ctx.transports)
    capped = [k for k in ("mixed", "wide", "passthrough") if k in R]
    many = f" ({', '.join(capped)}: {min(ctx.rounds, 3)})" if capped and ctx.rounds > 3 else ""
    print()
    print(f"tgbridge benchmark — {mach['date']} — {mach['nproc']} × {mach['cpu']} — Linux {mach['kernel']}")
    print(f"load average at start {mach['loadavg'][0]:.2f}, at end {mach['loadavg_end'][0]:.2f}; "
          f"{ctx.rounds} alternating rounds{many}; medians; window {WINDOW} on both paths; direct client writes "
          f"{'one frame per lws_write (BENCH_DIRECT_PER_FRAME=1)' if DIRECT_MODE else 'bursts in one send, as tgbridge'}")
    print()
    print_table(rows)
    print()
    ms = mock_summary(R)
    if ms:
        worst = max(ms, key=lambda x: x[2] or 0)
        print(f"mock gateway CPU: at most {worst[2] * 100:.0f}% of one core (scenario {worst[0]}, path {worst[1]}); "
              "the mock is single-threaded, so below 100% it was not the bottleneck")
        for key, path, busy, tgb in ms:
            if path != "direct" and tgb is not None:
                print(f"  {key:9s} {path:7s} mock {busy * 100:4.0f}%  tgbridge {tgb * 100:4.0f}% of one core")
            else:
                print(f"  {key:9s} {path:7s} mock {busy * 100:4.0f}%")
    for line in nginx_detail(R):
        print(line)
    for line in accesslog_detail(R):
        print(line)
    for line in many_connections_detail(R):
        print(line)
    for line in passthrough_detail(R):
        print(line)
    if "hold" in R:
        h = R["hold"]
        rq = (h.get("status") or {}).get("requests") or {}
        print(f"open streams: {h.get('held_written')} held; tgbridge had {rq.get('in_flight')} in the gateway's "
              f"window and {rq.get('queued')} queued behind it (ramp {h.get('ramp_s', 0):.1f} s); "
              f"RSS {h.get('rss0_kb')} → {h.get('rss1_kb')} KiB, {h.get('rss_after_kb')} KiB after the callers left; "
              f"idle with no calls: {fmt(h.get('idle_empty_cpu_ms_per_s'), ' ms/s', 1)}")
    if R.get("profile"):
        print()
        print("profile:")
        for line in R["profile"]:
            print("  " + line)
    print(f"\n(total {R['elapsed_s']:.0f} s; raw figures in {os.path.relpath(args.json, ROOT)})")
    R["rows"] = rows
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(R, f, indent=1, default=str)


if __name__ == "__main__":
    def on_sig(sig, frame):
        cleanup()
        sys.exit(130)
    signal.signal(signal.SIGTERM, on_sig)
    signal.signal(signal.SIGINT, on_sig)
    try:
        main()
    finally:
        cleanup()
