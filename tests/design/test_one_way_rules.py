"""The one-way rules of docs/design.md, checked on the source: which module names
which, by its #include "x.h" lines (x.h belongs to the module x.c) and by the
symbols its object uses that another module's object defines (nm on $BUILD_DIR).

The rules themselves are the ```rules block of docs/design.md, so that they change
only with the document that explains them:

    <room>: <rooms it may name>       a room names only these (and itself)
    front-ends: <module> ...           no one of these names another
    routers: <module> ...              ... except these, which hand connections to them
    renderer <module>: <rooms>         the one module that renders what others report
"""

import os
import re
import subprocess

import harness

ROOT = harness.ROOT
SRC = os.path.join(ROOT, "src")
DESIGN = os.path.join(ROOT, "docs", "design.md")


def build_dir():
    d = os.environ.get("BUILD_DIR") or "build"
    return d if os.path.isabs(d) else os.path.join(ROOT, d)


def modules():
    """{"front/rest/call": "front", "main": "main", ...}"""
    out = {}
    for d, _, files in os.walk(SRC):
        for f in files:
            if f.endswith(".c"):
                rel = os.path.relpath(os.path.join(d, f), SRC)[:-2]
                out[rel] = rel.split("/")[0] if "/" in rel else "main"
    return out


def include_edges(mods):
    owner = {os.path.basename(m) + ".h": m for m in mods}
    edges = set()
    for m in mods:
        with open(os.path.join(SRC, m + ".c"), encoding="utf-8") as f:
            for h in re.findall(r'^\s*#\s*include\s+"([^"]+)"', f.read(), re.M):
                t = owner.get(os.path.basename(h))
                if t and t != m:
                    edges.add((m, t, "includes " + os.path.basename(h)))
    return edges


def symbol_edges(mods, build):
    defined, used = {}, {}
    for m in mods:
        obj = os.path.join(build, m + ".o")
        assert os.path.exists(obj), "no object %s: build first (make test builds it)" % obj
        out = subprocess.run(["nm", obj], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[1] in "TDBRC":
                defined[parts[2]] = m
            elif len(parts) == 2 and parts[0] == "U":
                used.setdefault(m, set()).add(parts[1])
    edges = set()
    for m, syms in used.items():
        for s in syms:
            t = defined.get(s)
            if t and t != m:
                edges.add((m, t, "calls or reads " + s))
    return edges


def rules(text):
    block = re.search(r"^```rules\n(.*?)^```", text, re.M | re.S)
    assert block, "docs/design.md has no ```rules block"
    rooms, front_ends, routers, renderer = {}, [], [], None
    for line in block.group(1).splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        key, _, rest = line.partition(":")
        names = rest.split()
        if key == "front-ends":
            front_ends = names
        elif key == "routers":
            routers = names
        elif key.startswith("renderer "):
            renderer = (key.split()[1], set(names))
        else:
            rooms[key] = set(names)
    return rooms, front_ends, routers, renderer


def group(module, front_ends):
    """The front end a module belongs to (front/rest/call -> front/rest), or None."""
    for fe in front_ends:
        if module == fe or module.startswith(fe + "/"):
            return fe
    return None


def violations(mods, edges, rule_set):
    rooms, front_ends, routers, renderer = rule_set
    bad = []
    for a, b, how in sorted(edges):
        ra, rb = mods[a], mods[b]
        allowed = rooms.get(ra)
        if allowed is None:
            bad.append("%s is in room %s, which the rules do not name" % (a, ra))
            continue
        if "*" in allowed:
            continue  # main.c wires everything together
        if ra != rb and rb not in allowed:
            bad.append("%s -> %s (%s): room %s may not name room %s" % (a, b, how, ra, rb))
        ga, gb = group(a, front_ends), group(b, front_ends)
        if gb and ga != gb and a not in routers:
            bad.append("%s -> %s (%s): a front end is named by %s" % (a, b, how, a))
        if renderer and a == renderer[0] and rb not in renderer[1]:
            bad.append("%s -> %s (%s): the renderer names a part it should not know" % (a, b, how))
    return bad


def test_the_source_keeps_the_one_way_rules():
    mods = modules()
    with open(DESIGN, encoding="utf-8") as f:
        rule_set = rules(f.read())
    edges = include_edges(mods) | symbol_edges(mods, build_dir())
    bad = violations(mods, edges, rule_set)
    assert not bad, "the one-way rules of docs/design.md are broken:\n  " + "\n  ".join(bad)


def test_the_checker_sees_each_kind_of_break():
    """The same check on made-up edges: each rule, broken once, is reported."""
    with open(DESIGN, encoding="utf-8") as f:
        rule_set = rules(f.read())
    mods = {"base/loop": "base", "upstream/conn": "upstream", "front/ws": "front",
            "front/rest/call": "front", "front/listener": "front", "obs/health": "obs",
            "core/mux": "core", "relay/wspass": "relay"}
    fine = {("front/rest/call", "core/mux", "x"), ("front/listener", "front/ws", "x"),
            ("upstream/conn", "core/mux", "x")}
    assert violations(mods, fine, rule_set) == []
    for edge in [("base/loop", "upstream/conn", "x"),      # the loop names a module above it
                 ("core/mux", "upstream/conn", "x"),        # the mux names the upstream
                 ("front/rest/call", "front/ws", "x"),      # a front end names another
                 ("relay/wspass", "front/ws", "x"),
                 ("obs/health", "core/mux", "x")]:          # health names a source
        assert violations(mods, {edge}, rule_set), "not reported: %s -> %s" % edge[:2]
