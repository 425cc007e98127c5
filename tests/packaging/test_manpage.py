"""The manual page man/tgbridge.8: every option and environment variable that
--help prints is documented there (each option in an entry of its own under
OPTIONS, with its argument, its variable, its config-file key and its default),
and the page renders without a warning under groff and man."""

import os
import re
import shutil
import subprocess

from harness import ROOT, eq, run_bridge, skip

# TGBRIDGE_MANPAGE checks another page (e.g. a copy with an option taken out).
PAGE = os.environ.get("TGBRIDGE_MANPAGE") or os.path.join(ROOT, "man",
                                                          "tgbridge.8")

# Names --help prints in brackets: [TGBRIDGE_LISTEN]
BRACKETED_ENV = re.compile(r"\[([A-Z][A-Z0-9]*_[A-Z0-9_]+)\]")
# Environment variables --help names in passing: GATEWAY_SECRET,
# $XDG_RUNTIME_DIR, https_proxy ... (a $NAME, one of tgbridge's or the
# official clients' prefixes, or a proxy variable)
ANY_ENV = re.compile(r"(?<![\w$-])(?:\$([A-Z][A-Z0-9]*_[A-Z0-9_]+)"
                     r"|((?:TGBRIDGE|TRUSTGRAPH|GATEWAY)_[A-Z0-9_]+"
                     r"|(?:[a-z]+_proxy|[A-Z]+_PROXY)))(?![\w-])")
# "(default 50m ...)", "(default 15, limit 16)", "auto (default) | query";
# not "(default: none)"
DEFAULT = re.compile(r"\(default ([^\s,;)=]+)|([\w.-]+) \(default\)")
# Options the config file does not take although they have a variable.
NOT_A_KEY = {"config"}


def help_text():
    r = run_bridge("--help")
    eq(r.returncode, 0, "--help exit status")
    return r.stdout


def help_entries(text):
    """[(option, ARG or None, env or None, default or None)] as --help
    prints them (ARG such as URL, HOST:PORT, on|off): an entry is a line
    starting with '  --' and the indented lines under it, up to a blank
    line."""
    entries = []
    for block in re.split(r"(?m)^(?=  --)", text)[1:]:
        block = block.split("\n\n")[0]
        m = re.match(r"  (--[a-z][a-z0-9-]*)"
                     r"(?: ([A-Z][A-Z0-9:_]*|[a-z0-9]+(?:\|[a-z0-9]+)+))?"
                     r"(?:\s|$)", block)
        assert m, "cannot read this --help entry: %r" % block
        env = BRACKETED_ENV.findall(block)
        default = DEFAULT.search(block)
        entries.append((m.group(1), m.group(2), env[-1] if env else None,
                        default and (default.group(1) or default.group(2))))
    # the same option list test_cli.py reads for the docs/configuration.md check
    eq([e[0] for e in entries], re.findall(r"(?m)^  (--[a-z-]+)", text),
       "options read from --help")
    assert len(entries) > 20, text
    return entries


# --------------------------------------------------------------- roff reading

_ARGS = re.compile(r'"((?:[^"]|"")*)"|(\S+)')
_ALTERNATING = {"BR", "BI", "IB", "IR", "RB", "RI"}
_CHARS = {"dq": '"', "aq": "'", "ti": "~", "em": "--", "en": "-", "lq": '"',
          "rq": '"', "oq": "'", "cq": "'", "hy": "-", "mi": "-", "bu": "*",
          "->": "->", "<=": "<=", ">=": ">=", "mu": "x"}


def _escapes(s):
    s = s.replace("\\\\", "\x00")                  # an escaped backslash
    s = re.sub(r'\\".*', "", s)                    # comment
    s = re.sub(r"\\f(\[[^]]*\]|\(..|.)", "", s)    # font changes
    s = re.sub(r"\\\((..)", lambda m: _CHARS.get(m.group(1), "?"), s)
    s = re.sub(r"\\\[([^]]*)\]", lambda m: _CHARS.get(m.group(1), "?"), s)
    s = re.sub(r"\\[&:%|^c)]", "", s)              # zero-width escapes
    s = s.replace("\\-", "-").replace("\\ ", " ").replace("\\e", "\\")
    s = s.replace("\\~", " ").replace("\\0", " ")
    return s.replace("\x00", "\\")


def roff_lines(source):
    """[(macro or None, text)] for each line of the page, macro lines reduced
    to the text they print (alternating-font macros join their arguments)."""
    out = []
    for line in source.splitlines():
        if line.startswith((".", "'")):
            m = re.match(r"[.'] *([A-Za-z]+)\s*(.*)", line)
            if not m:
                continue                             # comment or bare '.'
            macro, rest = m.group(1), m.group(2)
            args = [bare or quoted.replace('""', '"')
                    for quoted, bare in _ARGS.findall(rest)]
            sep = "" if macro in _ALTERNATING else " "
            out.append((macro, _escapes(sep.join(args))))
        else:
            out.append((None, _escapes(line)))
    return out


def read_page():
    assert os.path.exists(PAGE), "no manual page at %s" % PAGE
    with open(PAGE, encoding="utf-8") as f:
        return roff_lines(f.read())


def sections(lines):
    """{SECTION NAME: [(macro, text)]}"""
    out, name = {}, None
    for macro, text in lines:
        if macro == "SH":
            name = text.strip().upper()
            out[name] = []
        elif name:
            out[name].append((macro, text))
    return out


def options_entries(lines):
    """[(tag, body)] of OPTIONS, with .TQ tags stacked onto the entry."""
    out = []
    pending_tq = False
    tag_next = False
    for macro, text in lines:
        if macro == "TP":
            tag_next, pending_tq = True, False
            continue
        if macro == "TQ":
            tag_next, pending_tq = True, True
            continue
        if tag_next:
            if pending_tq and out:
                out[-1][0] += "\n" + text
            else:
                out.append([text, ""])
            tag_next = False
            continue
        if macro in ("SS", "PP", "P", "LP") and out:
            out.append(["", ""])             # prose between entries
            continue
        if out:
            out[-1][1] += " " + text
    return [(t, b) for t, b in out if t]


def has_word(text, word):
    """word in text, not as part of a longer name (--token is not in
    --token-file, max-line is not in --max-line)."""
    return re.search(r"(?<![\w$-])" + re.escape(word) + r"(?![\w-])",
                     text) is not None


def page_text(lines):
    return "\n".join(t for _, t in lines)


# ---------------------------------------------------------------------- tests

def test_manpage_documents_every_option_of_help():
    text = help_text()
    lines = read_page()
    secs = sections(lines)
    for name in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS",
                 "CONFIGURATION FILE", "ENVIRONMENT", "FILES", "SIGNALS",
                 "EXIT STATUS", "ROUTES", "SECURITY", "EXAMPLES", "SEE ALSO"):
        assert name in secs, "the page has no %s section (has %s)" % (
            name, list(secs))
    entries = options_entries(secs["OPTIONS"])
    problems = []
    for opt, arg, env, default in help_entries(text):
        mine = [(t, b) for t, b in entries if has_word(t, opt)]
        if not mine:
            problems.append("%s: no entry under OPTIONS" % opt)
            continue
        tag, body = mine[0]
        if arg and not re.search(r"(?<![\w-])%s[ =]%s(?![\w])"
                                 % (re.escape(opt), re.escape(arg)), tag):
            problems.append("%s: the entry's tag %r does not show %s %s"
                            % (opt, tag, opt, arg))
        if env and not has_word(body, env):
            problems.append("%s: the entry does not name its variable %s"
                            % (opt, env))
        key = opt[2:]
        if env and key not in NOT_A_KEY and not has_word(body, key):
            problems.append("%s: the entry does not name its config-file "
                            "key %s" % (opt, key))
        said = re.search(r"Default: (.*?)(?:\.\s|\.?$)", body)
        if default and not (said and re.search(
                r"(?<![\w.])%s(?!\w)" % re.escape(default), said.group(1))):
            problems.append("%s: the entry does not say 'Default: %s'"
                            % (opt, default))
    assert not problems, "man/tgbridge.8 is behind --help:\n  " + \
        "\n  ".join(problems)


def test_manpage_documents_every_environment_variable_of_help():
    text = help_text()
    lines = read_page()
    env_section = page_text(sections(lines).get("ENVIRONMENT", []))
    names = set(BRACKETED_ENV.findall(text))
    names |= {a or b for a, b in ANY_ENV.findall(text)}
    assert len(BRACKETED_ENV.findall(text)) > 20, text
    missing = sorted(n for n in names if not has_word(env_section, n))
    assert not missing, ("in --help but not in the ENVIRONMENT section of "
                         "man/tgbridge.8: %s" % missing)


def _clean(out):
    return re.sub(r".\x08", "", out)                # overstrike, if any


def test_manpage_groff_gives_no_warnings():
    groff = shutil.which("groff")
    if not groff:
        skip("groff not installed (Debian package groff-base)")
    r = subprocess.run([groff, "-ww", "-z", "-man", PAGE],
                       capture_output=True, text=True, timeout=60)
    eq(r.returncode, 0, "groff exit status (stderr %r)" % r.stderr)
    eq(r.stderr, "", "groff -ww -z -man warnings")
    # and as a terminal shows it, at the widths people use
    for width in (60, 80, 132):
        r = subprocess.run([groff, "-ww", "-man", "-Tutf8", "-rLL=%dn" % width,
                            PAGE], capture_output=True, text=True, timeout=60)
        eq(r.returncode, 0, "groff -Tutf8 exit status at %d columns" % width)
        eq(r.stderr, "", "groff -Tutf8 warnings at %d columns" % width)


def test_manpage_man_renders_it():
    man = shutil.which("man")
    if not man:
        skip("man not installed (Debian package man-db)")
    env = dict(os.environ, MANPAGER="cat", PAGER="cat", MANWIDTH="80",
               MAN_DISABLE_SECCOMP="1", LC_ALL="C.UTF-8")
    env.pop("MAN_KEEP_FORMATTING", None)
    r = subprocess.run([man, "-l", PAGE], capture_output=True, text=True,
                       env=env, stdin=subprocess.DEVNULL, timeout=60)
    eq(r.returncode, 0, "man -l exit status (stderr %r)" % r.stderr)
    eq(r.stderr, "", "man -l warnings")
    out = _clean(r.stdout)
    assert re.search(r"(?m)^TGBRIDGE\(8\)", out), "no TGBRIDGE(8) header:\n" \
        + out[:500]
    for name in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "ENVIRONMENT",
                 "FILES", "SIGNALS", "EXIT STATUS", "EXAMPLES", "SEE ALSO"):
        assert re.search(r"(?m)^%s$" % name, out), \
            "the rendered page has no %s heading" % name
    missing = [o for o, _, _, _ in help_entries(help_text())
               if not has_word(out, o)]
    assert not missing, "options missing from the rendered page: %s" % missing


def test_manpage_mandoc_lint_is_clean():
    mandoc = shutil.which("mandoc")
    if not mandoc:
        skip("mandoc not installed (optional: Debian package mandoc)")
    r = subprocess.run([mandoc, "-T", "lint", "-W", "warning", PAGE],
                       capture_output=True, text=True, timeout=60)
    eq((r.stdout + r.stderr).strip(), "", "mandoc -T lint -W warning")


def test_manpage_names_the_version_tgbridge_reports():
    r = run_bridge("--version")
    eq(r.returncode, 0, "--version exit status")
    version = r.stdout.strip()                       # "tgbridge 0.1.0"
    th = [t for m, t in read_page() if m == "TH"]
    assert th and version in th[0], \
        ".TH line %r does not carry %r (update it with the version)" % (
            th[:1], version)
