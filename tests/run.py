#!/usr/bin/python3
"""Runs the tgbridge test suite.

    /usr/bin/python3 tests/run.py [-k SUBSTRING] [-j N] [-v]

Runs the C unit tests (every test of the test_* binaries in UNIT_TESTS, default
build/unit, each test in its own process; skipped when -k is given) then every test_* function of tests/test_*.py,
each in its own child process (own process group, killed afterwards) with
N in parallel (default 2). Prints `PASS name (0.42s)` / `FAIL name: reason`
per test and, last, `N passed, N failed`. Exit status 0 iff nothing failed.
"""

import argparse
import importlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RESULT_TAG = "@@TGBRIDGE-TEST-RESULT@@ "
DEFAULT_TIMEOUT = 60


def discover(pattern):
    """([(name, module, func, timeout)] in file order, [(file, traceback)]
    for test files that cannot be imported)."""
    sys.path.insert(0, HERE)
    tests = []
    broken = []
    for fn in sorted(os.listdir(HERE)):
        if not (fn.startswith("test_") and fn.endswith(".py")):
            continue
        modname = fn[:-3]
        try:
            mod = importlib.import_module(modname)
        except Exception:
            broken.append((modname, traceback.format_exc()))
            continue
        for attr, obj in vars(mod).items():
            if attr.startswith("test_") and callable(obj):
                name = "%s.%s" % (modname, attr)
                if pattern and pattern not in name:
                    continue
                tests.append((name, modname, attr,
                              getattr(obj, "timeout", DEFAULT_TIMEOUT)))
    return tests, broken


# ---------------------------------------------------------------- child side

def run_child(modname, funcname):
    sys.path.insert(0, HERE)
    import harness
    result = {"status": "PASS", "reason": "", "tb": "", "logs": ""}
    t0 = time.monotonic()
    try:
        mod = importlib.import_module(modname)
        getattr(mod, funcname)()
    except harness.Skip as e:
        result.update(status="SKIP", reason=str(e))
    except BaseException as e:  # noqa: B902 - report everything
        reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
        result.update(status="FAIL",
                      reason="%s%s" % (type(e).__name__,
                                       ": " + reason if reason else ""),
                      tb=traceback.format_exc())
        logs = []
        for b in harness.live_bridges():
            logs.append("tgbridge pid %d log tail:\n%s"
                        % (b.pid, b.log()[-2500:]))
        result["logs"] = "\n".join(logs)
    problems = harness.cleanup()
    harness.remove_tmpfiles()
    if problems and result["status"] != "FAIL":
        result.update(status="FAIL", reason="on cleanup: " +
                      problems[0].splitlines()[0],
                      tb="\n\n".join(problems))
    result["elapsed"] = time.monotonic() - t0
    sys.stdout.flush()
    sys.stdout.write("\n" + RESULT_TAG + json.dumps(result) + "\n")
    sys.stdout.flush()
    os._exit(0)


# --------------------------------------------------------------- parent side

def indent(text, prefix="    "):
    return "\n".join(prefix + line for line in text.rstrip().splitlines())


def run_one(name, modname, funcname, limit, scale, verbose):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", modname,
           funcname]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    timed_out = False
    try:
        out, _ = proc.communicate(timeout=limit * scale)
    except subprocess.TimeoutExpired:
        timed_out = True
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, _ = proc.communicate()
    finally:
        # anything the test left behind in its process group
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    elapsed = time.monotonic() - t0
    text = out.decode("utf-8", "replace")
    result = None
    printed = text
    idx = text.rfind(RESULT_TAG)
    if idx >= 0:
        printed = text[:idx]
        try:
            result = json.loads(text[idx + len(RESULT_TAG):].strip())
        except ValueError:
            result = None
    if result is None:
        result = {"status": "FAIL",
                  "reason": ("timed out after %gs" % (limit * scale))
                  if timed_out else
                  "test process died (rc=%s)" % proc.returncode,
                  "tb": "", "logs": ""}
    result["elapsed"] = elapsed
    result["output"] = printed.strip()
    if verbose and result["status"] != "FAIL" and printed.strip():
        result["show_output"] = True
    return name, result


def run_unit_dir(path):
    """Runs every test of the cmocka binaries test_* in path, each as `BINARY NAME`
    (tests/unit/unit_main.h); returns (passed, failed, lines)."""
    passed = failed = 0
    lines = []
    for binary in sorted(os.listdir(path)):
        exe = os.path.join(path, binary)
        if not binary.startswith("test_") or not os.path.isfile(exe) or not os.access(exe, os.X_OK):
            continue
        p = subprocess.run([exe, "--list"], cwd=ROOT, capture_output=True, text=True, timeout=60)
        names = p.stdout.split()
        if p.returncode != 0 or not names:
            failed += 1
            lines.append("FAIL %s: --list failed (rc=%d)" % (binary, p.returncode))
            continue
        for name in names:
            label = "%s::%s" % (binary, name)
            try:
                r = subprocess.run([exe, name], cwd=ROOT, capture_output=True, text=True,
                                   errors="replace", timeout=300)
            except subprocess.TimeoutExpired:
                failed += 1
                lines.append("FAIL %s: timed out" % label)
                continue
            if r.returncode == 0:
                passed += 1
                lines.append("PASS %s" % label)
            else:
                failed += 1
                lines.append("FAIL %s: exit status %d" % (label, r.returncode))
                lines.append(indent((r.stdout + r.stderr)[-3000:]))
    return passed, failed, lines


def main():
    ap = argparse.ArgumentParser(description="tgbridge test runner")
    ap.add_argument("-k", dest="pattern", default="",
                    help="only tests whose name contains SUBSTRING")
    ap.add_argument("-j", dest="jobs", type=int, default=2,
                    help="parallel workers (default 2)")
    ap.add_argument("-v", dest="verbose", action="store_true",
                    help="show test output of passing tests too")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        run_child(*args.child)
        return

    # Resolve path-valued variables against the caller's cwd, then work from
    # the repository root.
    for var in ("TGBRIDGE_BIN", "MOCK_GATEWAY", "UNIT_TESTS"):
        if os.environ.get(var) and not os.path.isabs(os.environ[var]):
            os.environ[var] = os.path.abspath(os.environ[var])
    os.chdir(ROOT)
    sys.path.insert(0, HERE)
    import harness

    passed = failed = skipped = 0
    lock = threading.Lock()

    unit = os.environ.get("UNIT_TESTS") or os.path.join(ROOT, "build", "unit")
    if not args.pattern and os.path.isdir(unit):
        p, f, lines = run_unit_dir(unit)
        for line in lines:
            print(line)
        passed += p
        failed += f
        sys.stdout.flush()

    tests, broken = discover(args.pattern)
    for modname, tb in broken:
        failed += 1
        print("FAIL %s: cannot import\n%s" % (modname, indent(tb)))

    if not os.path.exists(harness.BIN):
        print("note: %s does not exist (run make first)" % harness.BIN)

    def report(fut_result):
        nonlocal passed, failed, skipped
        name, r = fut_result
        with lock:
            st = r["status"]
            if st == "PASS":
                passed += 1
                print("PASS %s (%.2fs)" % (name, r["elapsed"]))
            elif st == "SKIP":
                skipped += 1
                print("SKIP %s: %s" % (name, r["reason"]))
            else:
                failed += 1
                print("FAIL %s: %s (%.2fs)" % (name, r["reason"],
                                               r["elapsed"]))
                if r.get("tb"):
                    print(indent(r["tb"]))
                if r.get("logs"):
                    print(indent(r["logs"]))
                if r.get("output"):
                    print(indent("output:\n" + r["output"][-3000:]))
            if r.get("show_output"):
                print(indent(r["output"]))
            sys.stdout.flush()

    def done(fut):
        try:
            report(fut.result())
        except Exception:
            with lock:
                nonlocal_failed.append(1)
                print("FAIL runner:\n" + indent(traceback.format_exc()))

    nonlocal_failed = []
    t0 = time.monotonic()
    jobs = max(1, args.jobs)
    with ThreadPoolExecutor(max_workers=jobs) as ex:
        futs = [ex.submit(run_one, name, mod, fn, limit, harness.SCALE,
                          args.verbose)
                for name, mod, fn, limit in tests]
        for f in futs:
            f.add_done_callback(done)
    failed += len(nonlocal_failed)
    print("(%s%.1fs)" % ("%d skipped; " % skipped if skipped else "",
                          time.monotonic() - t0))
    print("%d passed, %d failed" % (passed, failed))
    sys.stdout.flush()
    sys.exit(0 if failed == 0 else 1)


if __name__ == "__main__":
    main()
