"""The C unit tests, one pytest item per C test (docs/testing.md).

Every C unit test binary is $UNIT_DIR/test_* (default build/unit; `make asan`:
build-asan/unit).  `BINARY --list` prints one test name per line, `BINARY NAME`
runs only that test and exits 0 iff it passed.  Each listed name is an item
test_c_unit[<binary>/<name>], run under UNIT_WRAPPER if set (`make valgrind`).

No binary there is a failure, not an empty run."""

import os
import shlex
import subprocess

import pytest

import harness

ROOT = harness.ROOT
UNIT_DIR = os.environ.get("UNIT_DIR") or os.path.join(ROOT, "build", "unit")
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


def _cases():
    bins = _binaries()
    if not bins:
        return [("bin", UNIT_DIR, None, "no unit test binary in %s (make unit-bins)" % UNIT_DIR)]
    return [c for b in bins for c in _listed(b)]


def _id(case):
    _, binary, name, _ = case
    return "%s/%s" % (os.path.basename(binary), name or "list")


CASES = _cases()


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_c_unit(case):
    _, binary, name, why = case
    if why:
        raise AssertionError(why)
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
