"""The documentation's relative links: every link in README.md, docs/*.md and
the other Markdown files of the tree names a file or folder that exists, and
a link with #anchor into a Markdown file names a heading of that file (the
anchor GitHub makes of it).  The README was split into docs/; a page renamed
or a section retitled must not leave a reader at a dead end."""

import os
import re


def _root():
    """The source tree: the first folder above this file with the README and
    docs/ (found, not fixed, so the test may live in any tests/ subfolder)."""
    d = os.path.dirname(os.path.abspath(__file__))
    while not (os.path.exists(os.path.join(d, "README.md")) and os.path.isdir(os.path.join(d, "docs"))):
        parent = os.path.dirname(d)
        assert parent != d, "no README.md with docs/ above " + __file__
        d = parent
    return d


ROOT = _root()

SKIP_DIRS = {".git", "build", "build-asan", "build-fuzz", "corpus", "node_modules"}
FENCE = re.compile(r"(?ms)^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$")
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"(?m)^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$")


def markdown_files():
    out = []
    for d, dirs, files in os.walk(ROOT):
        dirs[:] = sorted(x for x in dirs if x not in SKIP_DIRS)
        out += [os.path.join(d, f) for f in sorted(files) if f.endswith(".md")]
    return out


def prose(text):
    """The text with fenced code blocks and code spans blanked out, so a
    bracket in an example is not taken for a link."""
    text = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    return CODE_SPAN.sub("", text)


def slug(heading):
    """GitHub's anchor for a heading: links reduced to their text, markup and
    punctuation dropped, lower case, spaces to hyphens."""
    h = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    h = h.lower().replace("`", "")
    h = re.sub(r"[^\w\- ]", "", h)
    return h.replace(" ", "-")


def anchors(path):
    with open(path, encoding="utf-8") as f:
        text = FENCE.sub("", f.read())
    seen, out = {}, set()
    for h in HEADING.findall(text):
        s = slug(h)
        n = seen.get(s, 0)
        seen[s] = n + 1
        out.add(s if n == 0 else "%s-%d" % (s, n))
    return out


def broken_links(path, text):
    """[(target, why)] for the relative links of one Markdown text at path."""
    bad = []
    for target in LINK.findall(prose(text)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):
            continue                                    # http:, mailto:, ...
        file_part, _, anchor = target.partition("#")
        dest = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) if file_part else path
        if not os.path.exists(dest):
            bad.append((target, "no such file"))
        elif anchor and dest.endswith(".md") and anchor not in anchors(dest):
            bad.append((target, "no heading with this anchor"))
    return bad


def test_every_relative_link_in_the_docs_resolves():
    files = markdown_files()
    names = [os.path.relpath(f, ROOT) for f in files]
    assert "README.md" in names and "docs/design.md" in names, names
    problems, links = [], 0
    for path in files:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        links += len(LINK.findall(prose(text)))
        for target, why in broken_links(path, text):
            problems.append("%s: (%s): %s" % (os.path.relpath(path, ROOT), target, why))
    assert links > 50, "only %d links found: is the link pattern still right?" % links
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_the_link_check_sees_a_missing_page_and_a_missing_anchor():
    readme = os.path.join(ROOT, "README.md")
    text = ("[ok](docs/security.md#web-pages-origin-and-host) [gone](docs/nowhere.md) "
            "[bad](docs/security.md#no-such-heading) [web](https://example.com/x) "
            "`[code](docs/nowhere.md)`\n```\n[fenced](docs/nowhere.md)\n```\n")
    got = broken_links(readme, text)
    assert got == [("docs/nowhere.md", "no such file"),
                   ("docs/security.md#no-such-heading", "no heading with this anchor")], got
    assert slug("Streaming replies (tgbridge's extension)") == "streaming-replies-tgbridges-extension"
    assert slug("`src/base` — the ground floor") == "srcbase--the-ground-floor"
