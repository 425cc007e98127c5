"""Rooms of one concern (docs/design.md): no source file over 600 lines and no
function over 60 (from the first line of its signature to its closing brace).
Tables are data, not functions, and are not counted."""

import os
import re

import harness

SRC = os.path.join(harness.ROOT, "src")
MAX_FILE, MAX_FUNCTION = 600, 60


def sources():
    for d, _, files in os.walk(SRC):
        for f in sorted(files):
            if f.endswith(".c"):
                yield os.path.join(d, f)


def functions(text):
    """[(name, lines)] of the functions defined in C text written as this project
    writes it: the body's braces alone at the start of their lines."""
    lines = text.split("\n")
    out = []
    i = 0
    while i < len(lines):
        if lines[i] == "{" and i > 0 and lines[i - 1].rstrip().endswith(")"):
            start = i - 1
            while start > 0 and lines[start - 1].strip() and not lines[start - 1].rstrip().endswith(
                    (";", "}", "*/")) and not lines[start - 1].startswith(("#", "/*", " *")):
                start -= 1
            end = i + 1
            while end < len(lines) and lines[end] != "}":
                end += 1
            m = re.search(r"(\w+)\s*\(", " ".join(lines[start:i]))
            out.append((m.group(1) if m else "?", end - start + 1))
            i = end
        i += 1
    return out


def test_no_file_over_600_lines_and_no_function_over_60():
    bad = []
    for path in sources():
        with open(path, encoding="utf-8") as f:
            text = f.read()
        rel = os.path.relpath(path, harness.ROOT)
        n = text.count("\n")
        if n > MAX_FILE:
            bad.append("%s: %d lines" % (rel, n))
        bad += ["%s: %s() is %d lines" % (rel, name, length)
                for name, length in functions(text) if length > MAX_FUNCTION]
    assert not bad, "rooms of one concern, small functions:\n  " + "\n  ".join(bad)


def test_the_measure_sees_a_long_function():
    body = "\n".join("    x++;" for _ in range(59))
    short = "static int f(int x)\n{\n" + "\n".join("    x++;" for _ in range(57)) + "\n}\n"
    long_ = "static int\ng(int x,\n  int y)\n{\n" + body + "\n}\n"
    assert functions(short) == [("f", 60)]
    assert functions(long_) == [("g", 64)]
