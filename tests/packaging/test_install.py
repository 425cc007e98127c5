"""make install / make uninstall (PREFIX, DESTDIR) and the installed systemd units:
the tree is exactly what docs/operations.md "Installing" lists, the units' ExecStart
follows PREFIX, systemd-analyze verifies them as installed, and the hardening keeps
its exposure score."""

import os
import re
import shutil
import subprocess
import tempfile

from harness import ROOT, eq, skip, timeout

EXPECTED = {
    "bin/tgbridge": 0o755,
    "share/man/man8/tgbridge.8": 0o644,
    "lib/systemd/system/tgbridge.service": 0o644,
    "lib/systemd/system/tgbridge.socket": 0o644,
    "lib/systemd/system/tgbridge-unix.socket": 0o644,
    "share/doc/tgbridge/README.md": 0o644,
    "share/doc/tgbridge/tgbridge.conf.example": 0o644,
}
# The documentation pages go beside the README, so its docs/ links work there too.
EXPECTED.update({"share/doc/tgbridge/docs/" + f: 0o644
                 for f in os.listdir(os.path.join(ROOT, "docs")) if f.endswith(".md")})


def make(*args):
    p = subprocess.run(["make", "--no-print-directory", "-C", ROOT] + list(args), capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=300)
    assert p.returncode == 0, "make %s failed:\n%s%s" % (" ".join(args), p.stdout[-2000:], p.stderr[-2000:])
    return p


def tree(root):
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            path = os.path.join(d, f)
            out[os.path.relpath(path, root)] = os.stat(path).st_mode & 0o7777
    return out


@timeout(300)
def test_install_into_destdir_then_uninstall_removes_exactly_that():
    dest = tempfile.mkdtemp(prefix="tgb-destdir-")
    try:
        make("install", "DESTDIR=" + dest, "PREFIX=/usr/local")
        got = tree(dest)
        eq(got, {"usr/local/" + k: v for k, v in EXPECTED.items()}, "installed tree and modes")
        unit = open(os.path.join(dest, "usr/local/lib/systemd/system/tgbridge.service")).read()
        assert re.search(r"^ExecStart=/usr/local/bin/tgbridge ", unit, re.M), unit
        assert "@BINDIR@" not in unit and "@DOCDIR@" not in unit, "placeholders left in the unit"
        assert "file:///usr/local/share/doc/tgbridge/README.md" in unit, "Documentation= follows PREFIX"
        assert len([k for k in got if "/share/doc/tgbridge/docs/" in k]) >= 6, "the docs/ pages are installed"
        v = subprocess.run([os.path.join(dest, "usr/local/bin/tgbridge"), "--version"], capture_output=True,
                           text=True, timeout=10)
        assert v.returncode == 0 and v.stdout.startswith("tgbridge "), v
        # a config example that tgbridge accepts
        c = subprocess.run([os.path.join(dest, "usr/local/bin/tgbridge"), "--config",
                            os.path.join(dest, "usr/local/share/doc/tgbridge/tgbridge.conf.example"),
                            "--check-config"], capture_output=True, text=True, timeout=10)
        eq(c.returncode, 0, "the example config checks: %s" % c.stderr)
        # PREFIX=/usr puts everything under /usr
        make("install", "DESTDIR=" + dest, "PREFIX=/usr")
        assert os.path.exists(os.path.join(dest, "usr/bin/tgbridge"))
        make("uninstall", "DESTDIR=" + dest, "PREFIX=/usr")
        make("uninstall", "DESTDIR=" + dest, "PREFIX=/usr/local")
        eq(tree(dest), {}, "files left after make uninstall")
    finally:
        shutil.rmtree(dest, ignore_errors=True)


@timeout(300)
def test_installed_units_verify_and_stay_hardened():
    if not shutil.which("systemd-analyze"):
        skip("systemd-analyze is not installed (Debian package systemd)")
    # Installed for real under a temporary PREFIX, so that ExecStart names a binary
    # that exists: systemd-analyze verify fails on a missing one.
    prefix = tempfile.mkdtemp(prefix="tgb-prefix-")
    try:
        make("install", "PREFIX=" + prefix)
        units = os.path.join(prefix, "lib/systemd/system")
        p = subprocess.run(["systemd-analyze", "verify", "--man=no", "tgbridge.service", "tgbridge.socket",
                            "tgbridge-unix.socket"], cwd=units, capture_output=True, text=True, timeout=60)
        # systemd-analyze also complains about the machine it runs on (no units of its
        # own in a container); only complaints about our units count
        ours = [l for l in (p.stdout + p.stderr).splitlines() if l.startswith("tgbridge")]
        assert not ours, "systemd-analyze verify:\n" + "\n".join(ours)
        s = subprocess.run(["systemd-analyze", "security", "--offline=yes", "tgbridge.service"], cwd=units,
                           capture_output=True, text=True, timeout=60)
        m = re.search(r"Overall exposure level for tgbridge.service: ([0-9.]+)", s.stdout + s.stderr)
        if not m:
            skip("this systemd-analyze has no offline security check: %s" % (s.stdout + s.stderr)[-300:])
        assert float(m.group(1)) <= 2.0, "exposure %s (docs/operations.md says 1.2):\n%s" % (m.group(1), s.stdout[-3000:])
        # the verifier really looks at ExecStart: without the binary it fails
        os.rename(os.path.join(prefix, "bin/tgbridge"), os.path.join(prefix, "tgbridge.moved"))
        p = subprocess.run(["systemd-analyze", "verify", "--man=no", "tgbridge.service"], cwd=units,
                           capture_output=True, text=True, timeout=60)
        assert p.returncode != 0 and "not executable" in p.stdout + p.stderr, p
    finally:
        shutil.rmtree(prefix, ignore_errors=True)
