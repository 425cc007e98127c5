"""The fuzz targets' seed corpora (tests/fuzz/corpus/<target>/), replayed through
the targets built without libFuzzer (tests/fuzz/replay.c): every checked-in input
still holds every property its target checks (tests/fuzz/fuzz_<target>.c).

`make test` builds the replay binaries into $(BUILD), so they are looked up in
FUZZ_REPLAY_DIR if set, else in $BUILD_DIR (build-asan under `make asan`: sanitized),
else in build/.  Under TGBRIDGE_WRAPPER (`make valgrind`)
they run under the wrapper too.  `make fuzz` runs the same targets with libFuzzer."""

import os
import subprocess

import harness

ROOT = harness.ROOT
CORPUS = os.path.join(ROOT, "tests", "fuzz", "corpus")


def _replay_dirs():
    dirs = []
    if os.environ.get("FUZZ_REPLAY_DIR"):
        dirs.append(os.environ["FUZZ_REPLAY_DIR"])
    if os.environ.get("BUILD_DIR"):
        dirs.append(os.environ["BUILD_DIR"])
    dirs.append("build")
    return [d if os.path.isabs(d) else os.path.join(ROOT, d) for d in dirs]


def _replay(target):
    corpus = os.path.join(CORPUS, target)
    assert os.path.isdir(corpus) and os.listdir(corpus), \
        "no seed corpus in %s" % corpus
    name = "fuzz_replay_" + target
    for d in _replay_dirs():
        binary = os.path.join(d, name)
        if os.access(binary, os.X_OK):
            break
    else:
        harness.skip("%s not built (make fuzz-replay-bins; looked in %s)"
                     % (name, ", ".join(_replay_dirs())))
    cmd = harness.WRAPPER + [binary, corpus]
    try:
        p = subprocess.run(cmd, cwd=ROOT, stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, errors="replace",
                           timeout=harness.T(50))
    except subprocess.TimeoutExpired as e:
        raise AssertionError("%s timed out; output:\n%s%s"
                             % (name, e.stdout or "", e.stderr or ""))
    if p.returncode != 0:
        raise AssertionError("%s %s failed (exit status %d):\n%s%s"
                             % (os.path.relpath(binary, ROOT),
                                os.path.relpath(corpus, ROOT), p.returncode,
                                p.stdout[-3000:], p.stderr[-6000:]))
    assert "all passed" in p.stdout, p.stdout


def test_fuzz_corpus_body():
    _replay("body")


def test_fuzz_corpus_line():
    _replay("line")


def test_fuzz_corpus_frame():
    _replay("frame")


def test_fuzz_corpus_json():
    _replay("json")


def test_fuzz_corpus_config():
    _replay("config")


def test_fuzz_corpus_url():
    _replay("url")


def test_fuzz_corpus_lineframe():
    _replay("lineframe")


def test_fuzz_corpus_redact():
    _replay("redact")


def test_fuzz_corpus_httphead():
    _replay("httphead")


def test_fuzz_corpus_wsframe():
    _replay("wsframe")


def test_fuzz_corpus_wsread():
    _replay("wsread")


def test_fuzz_corpus_bulkpath():
    _replay("bulkpath")


def test_fuzz_corpus_passpath():
    _replay("passpath")


def test_fuzz_corpus_restname():
    _replay("restname")
