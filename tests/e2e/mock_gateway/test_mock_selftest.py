"""The mock gateway's own self-test, as part of the suite: every end-to-end test is only
as good as the mock's fidelity to the gateway (auth eras, error shapes, the 16-request
window and reader stall, close 1009, drops, controls, SIGTERM), so `make test` checks
the mock too.

tests/lib/mock_gateway_selftest.py starts its own mocks on free ports (--port 0) and keeps
no files, so it runs alongside the other tests; it prints "ALL OK" and exits 0 when
every check passed, else a "  FAIL <what>" line per failed check."""

import os
import subprocess

from harness import PYTHON, ROOT, T, timeout

HERE = os.path.join(ROOT, "tests", "lib")
SELFTEST = os.path.join(HERE, "mock_gateway_selftest.py")


def _text(data):
    if data is None:
        return ""
    if isinstance(data, bytes):
        return data.decode("utf-8", "replace")
    return data


def _tail(text, n=3000):
    text = text.rstrip()
    return text if len(text) <= n else "...\n" + text[-n:]


@timeout(120)
def test_mock_gateway_selftest():
    try:
        p = subprocess.run([PYTHON, SELFTEST], cwd=HERE, stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=T(100))
    except subprocess.TimeoutExpired as e:
        raise AssertionError("mock gateway self-test did not finish within %gs; output tail:\n%s"
                             % (T(100), _tail(_text(e.stdout) + _text(e.stderr))))
    out, err = _text(p.stdout), _text(p.stderr)
    lines = out.splitlines()
    if p.returncode != 0 or "ALL OK" not in lines:
        fails = [ln.strip() for ln in lines if ln.strip().startswith(("FAIL", "FAILED"))]
        raise AssertionError("mock gateway self-test failed (exit %s)%s; output tail:\n%s"
                             % (p.returncode, ": " + "; ".join(fails)[:500] if fails else "",
                                _tail(out + ("\n--- stderr ---\n" + err if err.strip() else ""))))
