"""The C unit tests, one pytest item per C test (docs/testing.md).

Every C unit test binary is $UNIT_DIR/test_* (default build/unit; `make asan`:
build-asan/unit).  `BINARY --list` prints one test name per line, `BINARY NAME`
runs only that test and exits 0 iff it passed.  Each listed name is an item
test_c_unit[<binary>/<name>], run under UNIT_WRAPPER if set (`make valgrind`).

Until those binaries exist, the single binary of before ($UNIT_TESTS, default
build/unit_tests: it runs every test and prints "PASS name" / "FAIL name" after
each test's own lines, then "N passed, N failed") is run once at collection
and each test it reports is an item; if it stops early (a crash) one more item,
unit_tests/exit, fails with its exit status."""

import os
import re
import shlex
import subprocess

import pytest

import harness

ROOT = harness.ROOT
UNIT_DIR = os.environ.get("UNIT_DIR") or os.path.join(ROOT, "build", "unit")
LEGACY = os.environ.get("UNIT_TESTS") or os.path.join(ROOT, "build", "unit_tests")
WRAPPER = shlex.split(os.environ.get("UNIT_WRAPPER", ""))
LIST_TIMEOUT = 30


def _tail(text, n=4000):
    text = text.rstrip()
    return text if len(text) <= n else "...\n" + text[-n:]


def _binaries():
    if not os.path.isdir(UNIT_DIR):
        return []
    out = []
    for name in sorted(os.listdir(UNIT_DIR)):
        path = os.path.join(UNIT_DIR, name)
        # test_mux, not test_mux.o / test_mux.d
        if name.startswith("test_") and "." not in name and os.path.isfile(path) \
                and os.access(path, os.X_OK):
            out.append(path)
    return out


def _listed(binary):
    """[("bin", binary, name, "")], or one case with name None and why it
    cannot list."""
    short = os.path.basename(binary)
    try:
        p = subprocess.run([binary, "--list"], cwd=ROOT, stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, errors="replace",
                           timeout=LIST_TIMEOUT * harness.SCALE)
    except (OSError, subprocess.TimeoutExpired) as e:
        return [("bin", binary, None, "%s --list: %s" % (short, e))]
    names = [ln.strip() for ln in p.stdout.splitlines() if ln.strip()]
    if p.returncode != 0 or not names:
        return [("bin", binary, None, "%s --list exited %d with %d names:\n%s"
                 % (short, p.returncode, len(names), _tail(p.stdout + p.stderr)))]
    return [("bin", binary, n, "") for n in names]


# The old single binary: run once, here, and its per-test verdicts kept.
_legacy = {}
RESULT = re.compile(r"^(PASS|FAIL) (\S+)$")
SUMMARY = re.compile(r"^\d+ passed, \d+ failed$")


def _run_legacy():
    try:
        p = subprocess.run(WRAPPER + [LEGACY], cwd=ROOT, stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, errors="replace",
                           timeout=300 * harness.SCALE)
        out, err, rc = p.stdout, p.stderr, p.returncode
    except subprocess.TimeoutExpired as e:
        out, err, rc = e.stdout or "", e.stderr or "", "timeout"
    if isinstance(out, bytes):
        out = out.decode("utf-8", "replace")
    if isinstance(err, bytes):
        err = err.decode("utf-8", "replace")
    cases, own, summary = [], [], False
    for line in out.splitlines():
        m = RESULT.match(line)
        if m:
            _legacy[m.group(2)] = (m.group(1) == "PASS", "\n".join(own))
            cases.append(("legacy", LEGACY, m.group(2), ""))
            own = []
        elif SUMMARY.match(line):
            summary = True
        else:
            own.append(line)
    if rc != 0 or not summary:
        why = "%s exited %s%s; its last lines:\n%s" % (
            os.path.relpath(LEGACY, ROOT), rc,
            "" if summary else " without its 'N passed, N failed' line",
            _tail("\n".join(own) + "\n" + err))
        cases.append(("legacy", LEGACY, "exit", why))
    return cases


def _cases():
    bins = _binaries()
    if bins:
        return [c for b in bins for c in _listed(b)]
    if os.path.isfile(LEGACY) and os.access(LEGACY, os.X_OK):
        return _run_legacy()
    return []


def _id(case):
    _, binary, name, _ = case
    return "%s/%s" % (os.path.basename(binary), name or "list")


CASES = _cases()


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_c_unit(case):
    kind, binary, name, why = case
    if why:
        raise AssertionError(why)
    if kind == "legacy":
        passed, output = _legacy[name]
        if not passed:
            raise AssertionError("%s: FAIL %s\n%s" % (os.path.basename(binary), name, output))
        return
    try:
        p = subprocess.run(WRAPPER + [binary, name], cwd=ROOT, stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, errors="replace",
                           timeout=harness.T(50))
    except subprocess.TimeoutExpired as e:
        raise AssertionError("%s %s did not finish within %gs" % (binary, name, harness.T(50))
                             ) from e
    if p.returncode != 0:
        raise AssertionError("%s %s exited %d:\n%s" % (
            os.path.relpath(binary, ROOT), name, p.returncode, _tail(p.stdout + p.stderr)))
