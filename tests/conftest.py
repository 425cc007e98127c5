"""What every test gets (docs/testing.md).

- tests/lib on sys.path: `from harness import ...`, `from lineclient import ...`.
- The working directory is the repository root, and the path-valued variables
  (TGBRIDGE_BIN, MOCK_GATEWAY, BUILD_DIR, UNIT_DIR) are made
  absolute against the directory pytest was started from.
- A wall-clock limit per test (pytest-timeout): the function's `timeout`
  attribute (harness.timeout(seconds)) or 60 s, times harness.SCALE (10 under
  TGBRIDGE_WRAPPER); an explicit @pytest.mark.timeout wins.
- After each test, pass or fail: every process it started is stopped
  (harness.cleanup(): a tgbridge that does not exit 0 on SIGTERM fails the test),
  then anything else it left running - its children and theirs, whatever became
  of their process groups - is killed; its temporary files are removed.
- A failing test's report carries the log tail of every tgbridge still running.
- The last line of the run, alone: `N passed, N failed` (", N skipped" after
  it when some were), one count per test whatever phase failed; a run that
  selects nothing exits 0 with "0 passed, 0 failed".
"""

import ctypes
import gc
import os
import signal
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_TIMEOUT = 60

for _var in ("TGBRIDGE_BIN", "MOCK_GATEWAY", "BUILD_DIR", "UNIT_DIR"):
    if os.environ.get(_var) and not os.path.isabs(os.environ[_var]):
        os.environ[_var] = os.path.abspath(os.environ[_var])
sys.path.insert(0, os.path.join(HERE, "lib"))

import harness  # noqa: E402  (needs the path above)

PR_SET_CHILD_SUBREAPER = 36
_config = None


def _become_subreaper():
    """Orphans of a test's processes (a daemon's double fork, a killed shell's
    children) are re-parented to this process rather than to init, so that the
    sweep after the test still finds them."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _descendants(root):
    children = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(name))
    found, todo = set(), [root]
    while todo:
        for c in children.get(todo.pop(), ()):
            if c not in found:
                found.add(c)
                todo.append(c)
    return found


def _sweep(before):
    """Kills every descendant of this process that was not there before the
    test, and reaps those that are (or became) its children."""
    me = os.getpid()
    left = _descendants(me) - before
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    while left and time.monotonic() < deadline:
        for pid in list(left):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:      # not ours to reap: gone with its parent
                done = pid if not os.path.exists("/proc/%d" % pid) else 0
            if done:
                left.discard(pid)
        if left:
            time.sleep(0.01)


def pytest_configure(config):
    global _config
    _config = config
    _become_subreaper()
    config._tgbridge_outcomes = {}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("timeout") is None:
            limit = getattr(getattr(item, "obj", None), "timeout", DEFAULT_TIMEOUT)
            item.add_marker(pytest.mark.timeout(limit * harness.SCALE))


@pytest.fixture(autouse=True)
def _owns_its_processes():
    """Each test owns what it starts: stopped and removed afterwards."""
    before = _descendants(os.getpid())
    os.chdir(ROOT)
    problems = []
    try:
        yield
    finally:
        try:
            problems = harness.cleanup()
        finally:
            harness.remove_tmpfiles()
            _sweep(before)
            gc.collect()          # sockets and files the test dropped
    if problems:
        pytest.fail("on cleanup: %s" % "\n\n".join(problems), pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" and rep.failed:
        for b in harness.live_bridges():
            rep.sections.append(("tgbridge pid %d log tail" % b.pid,
                                 b.log()[-2500:]))


# ------------------------------------------------------------ the last line

def _outcomes(config):
    return getattr(config, "_tgbridge_outcomes", None)


def pytest_runtest_logreport(report):
    # on the controller under xdist: every worker's reports come through here
    outcomes = _outcomes(_config)
    if outcomes is None:
        return
    nodeid = report.nodeid
    prev = outcomes.get(nodeid)
    if report.failed:
        outcomes[nodeid] = "failed"
    elif report.skipped and prev != "failed":
        outcomes[nodeid] = "skipped"
    elif report.when == "call" and report.passed and prev is None:
        outcomes[nodeid] = "passed"


def pytest_collectreport(report):
    outcomes = _outcomes(_config)
    if outcomes is not None and report.failed:
        outcomes["collect:" + report.nodeid] = "failed"   # once, whatever reported it


def pytest_sessionfinish(session, exitstatus):
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.OK


def pytest_unconfigure(config):
    outcomes = _outcomes(config)
    if outcomes is None or hasattr(config, "workerinput"):
        return
    values = list(outcomes.values())
    line = "%d passed, %d failed" % (values.count("passed"), values.count("failed"))
    if values.count("skipped"):
        line += ", %d skipped" % values.count("skipped")
    sys.stdout.write("\n" + line + "\n")
    sys.stdout.flush()

