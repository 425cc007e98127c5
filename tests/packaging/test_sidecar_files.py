"""The sidecar packaging (examples/sidecar/): Containerfile, kubernetes.yaml and
compose.yaml, checked against the binary and Debian 12 -- every tgbridge flag
they use exists and its value is accepted, the socket, probe, port, scrape and
token paths line up between the containers, the runtime packages exist and
provide every library the binary loads, the build stage's files build, and the
health checks (tgbridge probe) answer for a running tgbridge.

No container engine is needed: the files are read, not run."""

import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile

from harness import (BIN, ROOT, WRAPPER, Bridge, bridge_env, closed_port, eq,
                     run_bridge, skip, start_bridge, start_mock, timeout,
                     tmpfile)

SIDECAR = os.path.join(ROOT, "examples", "sidecar")
TOKEN = "tg_sidecar_token_3c9a"
TGBRIDGE_CMDS = ("tgbridge", "/usr/local/bin/tgbridge")     # where the image has it
PROBE_PATHS = {"live": "/healthz", "ready": "/readyz"}
LOOPBACK = ("127.0.0.1", "::1", "localhost")
# Values for the compose file's ${VARIABLES} (compose would take them from the
# environment or .env).
COMPOSE_ENV = {"TRUSTGRAPH_URL": "https://trustgraph.example.com/"}
# Options whose value is a file tgbridge reads or creates: given a scratch path
# when the configuration is checked on this machine.
PATH_OPTIONS = ("--token-file", "--client-token-file", "--unix")


def _yaml():
    try:
        import yaml
    except ImportError:
        skip("python3-yaml is not installed (apt-get install python3-yaml)")
    return yaml


def _load_yaml(name, all_docs=False):
    yaml = _yaml()
    with open(os.path.join(SIDECAR, name)) as f:
        return list(yaml.safe_load_all(f)) if all_docs else yaml.safe_load(f)


# --------------------------------------------------------------------------
# tgbridge's own options, from --help

_options_cache = {}


def _options():
    """({'--flag': takes_value}, {environment variable names}) from --help."""
    if not _options_cache:
        r = run_bridge("--help")
        eq(r.returncode, 0, "--help exit status")
        opts = {}
        for line in r.stdout.splitlines():
            m = re.match(r"^\s{2}(--[a-z][a-z0-9-]*)(?:[ =](\S+))?(?:\s{2,}|$)",
                         line)
            if m:
                opts[m.group(1)] = m.group(2) is not None
        assert "--listen" in opts and opts["--listen"], \
            "cannot read the options from --help:\n" + r.stdout
        _options_cache["opts"] = opts
        _options_cache["env"] = set(re.findall(r"\[([A-Z][A-Z0-9_]*)\]",
                                               r.stdout))
    return _options_cache["opts"], _options_cache["env"]


def parse_flags(argv, where):
    """[(flag, value-or-None)] of a tgbridge argument list; AssertionError
    naming `where` for an unknown flag, a missing value or a stray word."""
    opts, _ = _options()
    out, problems, i = [], [], 0
    while i < len(argv):
        word = str(argv[i])
        i += 1
        if not word.startswith("--"):
            problems.append("%r is not an option" % word)
            continue
        name, eq_sign, value = word.partition("=")
        if name not in opts:
            problems.append("%s is not an option of tgbridge (see --help)"
                            % name)
            continue
        if not opts[name]:
            if eq_sign:
                problems.append("%s takes no value" % name)
            out.append((name, None))
            continue
        if not eq_sign:
            if i >= len(argv) or str(argv[i]).startswith("--"):
                problems.append("%s needs a value" % name)
                continue
            value = str(argv[i])
            i += 1
        out.append((name, value))
    assert not problems, "%s: %s" % (where, "; ".join(problems))
    return out


def _last(flags):
    """The effective value of each flag (the last one given)."""
    return {k: v for k, v in flags}


def _check_values(flags, where):
    """Run tgbridge on these flags, files replaced by scratch ones: with
    --check-config if this build has it, else a real start (listening on
    port 0), which parses and checks every value the same way."""
    opts, _ = _options()
    scratch = tempfile.mkdtemp(prefix="tgbridge-sidecar-")
    try:
        check, start = [], []
        for name, value in flags:
            if name in PATH_OPTIONS:
                value = os.path.join(scratch, name.lstrip("-") + "-"
                                     + os.path.basename(value))
                if name != "--unix":
                    with open(value, "w") as f:
                        f.write(TOKEN + "\n")
                    os.chmod(value, 0o600)
            check += [name] if value is None else [name, value]
            if name == "--listen":
                value = "127.0.0.1:0"
            elif name == "--unix-group" and os.geteuid() != 0:
                value = str(os.getegid())   # only root may give it any group
            start += [name] if value is None else [name, value]
        if "--check-config" in opts:
            r = run_bridge(*check, "--check-config")
            assert r.returncode == 0, "%s: tgbridge %s --check-config: " \
                "exit %s: %s" % (where, " ".join(check), r.returncode,
                                 (r.stderr + r.stdout).strip())
            return
        if "--unix" not in start:
            start += ["--unix", "none"]
        Bridge(WRAPPER + [BIN] + start, bridge_env()).stop()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# --------------------------------------------------------------------------
# the Containerfile

def _containerfile():
    """[(INSTRUCTION, arguments)] of the Containerfile, continuation lines
    joined and comments dropped."""
    with open(os.path.join(SIDECAR, "Containerfile")) as f:
        lines = f.read().splitlines()
    out, cur = [], ""
    for line in lines:
        if not cur and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if cur and line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            cur += line.rstrip()[:-1] + " "
            continue
        cur += line
        word, _, rest = cur.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        cur = ""
    assert not cur, "Containerfile ends in a continuation line"
    return out


def _stages():
    """[[(INSTRUCTION, arguments)] per stage], FROM first."""
    stages = []
    for ins, rest in _containerfile():
        if ins == "FROM":
            stages.append([])
        assert stages, "Containerfile: %s before FROM" % ins
        stages[-1].append((ins, rest))
    return stages


def _exec_form(rest, what):
    try:
        v = json.loads(rest)
    except ValueError:
        raise AssertionError("Containerfile %s is not in exec (JSON) form: %s"
                             % (what, rest))
    assert isinstance(v, list) and all(isinstance(x, str) for x in v), what
    return v


def _image():
    """What the runtime stage says: entrypoint, cmd, user, exposed ports,
    healthcheck command, its RUN text and apt packages."""
    final = _stages()[-1]
    img = {"entrypoint": None, "cmd": [], "user": None, "expose": [],
           "healthcheck": None, "run": "", "from": final[0][1]}
    for ins, rest in final:
        if ins == "ENTRYPOINT":
            img["entrypoint"] = _exec_form(rest, "ENTRYPOINT")
        elif ins == "CMD":
            img["cmd"] = _exec_form(rest, "CMD")
        elif ins == "USER":
            img["user"] = rest
        elif ins == "EXPOSE":
            img["expose"] += rest.split()
        elif ins == "HEALTHCHECK":
            m = re.search(r"\bCMD\s+(\[.*\])\s*$", rest)
            assert m, "HEALTHCHECK without an exec-form CMD: " + rest
            img["healthcheck"] = _exec_form(m.group(1), "HEALTHCHECK CMD")
        elif ins == "RUN":
            img["run"] += rest + "\n"
    img["packages"] = _apt_packages(img["run"])
    ep = img["entrypoint"]
    assert ep and os.path.basename(ep[0]) == "tgbridge", \
        "the runtime ENTRYPOINT is not tgbridge: %r" % ep
    return img


def _apt_packages(run_text):
    pkgs = []
    for m in re.finditer(r"apt-get\s+install\s+([^&;|]*)", run_text):
        pkgs += [w for w in m.group(1).split() if not w.startswith("-")]
    return pkgs


def _image_uid_gid(img):
    m = re.match(r"^(\d+)(?::(\d+))?$", img["user"] or "")
    assert m, "Containerfile USER %r is not numeric (runAsNonRoot needs a " \
        "numeric user)" % img["user"]
    return int(m.group(1)), int(m.group(2)) if m.group(2) else None


def _image_flags():
    img = _image()
    return parse_flags(img["entrypoint"][1:] + img["cmd"],
                       "Containerfile ENTRYPOINT + CMD")


def _listen(values, where):
    assert "--listen" in values, "%s sets no --listen" % where
    host, _, port = values["--listen"].rpartition(":")
    return host.strip("[]"), int(port)


def _addr(value):
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


def _probe_target(cmd, where):
    """(path, host, port) of a `tgbridge probe live|ready [OPTION]...` command
    line: the admin listener its options name, else their --listen."""
    assert cmd and cmd[0] in TGBRIDGE_CMDS and cmd[1:2] == ["probe"], \
        "%s: not the image's tgbridge probe: %r" % (where, cmd)
    assert len(cmd) > 2 and cmd[2] in PROBE_PATHS, "%s: probe what? %r" % (
        where, cmd)
    values = _last(parse_flags(cmd[3:], where))
    if "--admin-listen" in values:
        return (PROBE_PATHS[cmd[2]],) + _addr(values["--admin-listen"])
    return (PROBE_PATHS[cmd[2]],) + _addr(values.get("--listen",
                                                     "127.0.0.1:8089"))


def _probed(values):
    """(host, port) a probe given a daemon's flags asks: its admin listener,
    else its --listen."""
    if "--admin-listen" in values:
        return _addr(values["--admin-listen"])
    return _addr(values["--listen"])


def _inside(path, mount):
    rel = os.path.relpath(path, mount)
    return None if rel == os.pardir or rel.startswith(os.pardir + os.sep) \
        else rel


# --------------------------------------------------------------------------
# kubernetes.yaml and compose.yaml

def _k8s():
    docs = [d for d in _load_yaml("kubernetes.yaml", all_docs=True) if d]
    kinds = {}
    for d in docs:
        kinds.setdefault(d.get("kind"), []).append(d)
    assert kinds.get("Deployment") and kinds.get("Secret"), \
        "kubernetes.yaml needs a Deployment and a Secret, has %s" % list(kinds)
    pod = kinds["Deployment"][0]["spec"]["template"]["spec"]
    containers = {}
    for c in pod.get("initContainers", []) + pod.get("containers", []):
        containers[c["name"]] = c
    assert "tgbridge" in containers, "no container named tgbridge"
    apps = [c for n, c in containers.items() if n != "tgbridge"]
    assert apps, "no application container beside tgbridge"
    return kinds, pod, containers["tgbridge"], apps


def _k8s_flags(tb):
    """The tgbridge container's arguments as the runtime sees them: command
    replaces the image's ENTRYPOINT, args its CMD."""
    img = _image()
    if "command" in tb:
        argv = list(tb["command"])
        assert os.path.basename(argv[0]) == "tgbridge", tb["command"]
        argv = argv[1:] + list(tb.get("args", []))
    else:
        argv = img["entrypoint"][1:] + list(tb.get("args", img["cmd"]))
    for a in argv:
        assert isinstance(a, str), "kubernetes.yaml: the tgbridge argument " \
            "%r is not a string (quote it)" % (a,)
    return parse_flags(argv, "kubernetes.yaml tgbridge container")


def _compose_subst(value):
    """Compose's variable substitution on every string of the file."""
    if isinstance(value, dict):
        return {k: _compose_subst(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_compose_subst(v) for v in value]
    if not isinstance(value, str):
        return value

    def one(m):
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, arg = m.group(2), m.group(3)
        have = COMPOSE_ENV.get(name)
        if op in (":-", "-"):
            return have if have else arg
        if op in (":?", "?"):
            assert have, "compose.yaml needs %s: %s" % (name, arg)
        return have or ""
    return re.sub(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}"
                  r"|\$([A-Za-z_][A-Za-z0-9_]*)", one, value)


def _compose():
    doc = _compose_subst(_load_yaml("compose.yaml"))
    services = doc.get("services") or {}
    assert "tgbridge" in services, "compose.yaml has no service tgbridge"
    apps = [s for n, s in services.items() if n != "tgbridge"]
    assert apps, "compose.yaml has no application service"
    return doc, services["tgbridge"], apps


def _words(v):
    return shlex.split(v) if isinstance(v, str) else [str(x) for x in v]


def _compose_flags(tb):
    img = _image()
    if "entrypoint" in tb:
        argv = _words(tb["entrypoint"])
        assert os.path.basename(argv[0]) == "tgbridge", tb["entrypoint"]
        argv = argv[1:] + _words(tb.get("command", []))
    else:
        argv = img["entrypoint"][1:] + _words(tb.get("command", img["cmd"]))
    return parse_flags(argv, "compose.yaml service tgbridge")


def _compose_mounts(service):
    """{volume name: (target, read_only)} of a service's named volumes."""
    out = {}
    for v in service.get("volumes", []):
        if isinstance(v, str):
            parts = v.split(":")
            if len(parts) >= 2 and not parts[0].startswith((".", "/", "~")):
                out[parts[0]] = (parts[1], len(parts) > 2 and
                                 "ro" in parts[2].split(","))
        elif v.get("type", "volume") == "volume":
            out[v["source"]] = (v["target"], bool(v.get("read_only")))
    return out


def _env_dict(env):
    if isinstance(env, list):
        if env and isinstance(env[0], dict):    # Kubernetes
            return {e["name"]: e.get("value") for e in env}
        return dict(e.split("=", 1) for e in env)
    return dict(env or {})


def _mode(v):
    return int(v, 8) if isinstance(v, str) else int(v)


# --------------------------------------------------------------------------
# the tests

def test_sidecar_yaml_files_parse():
    kinds, pod, tb, apps = _k8s()
    doc, ctb, capps = _compose()
    for name in ("Containerfile", "README.md"):
        assert os.path.isfile(os.path.join(SIDECAR, name)), name
    assert not os.path.exists(os.path.join(SIDECAR, "tgbridge-probe")), \
        "the bash probe script is back: tgbridge probe replaced it"
    assert _stages(), "Containerfile has no stage"


def test_sidecar_every_flag_exists():
    _, env_names = _options()
    flags, problems = {}, []
    for where, get in (("Containerfile", _image_flags),
                       ("kubernetes.yaml", lambda: _k8s_flags(_k8s()[2])),
                       ("compose.yaml", lambda: _compose_flags(_compose()[1]))):
        try:
            flags[where] = get()
        except AssertionError as e:
            problems.append(str(e))
    assert not problems, "\n".join(problems)
    for where, fl in flags.items():
        assert fl, "%s passes tgbridge no flags" % where
    # tgbridge's settings in its containers' environments are its own too.
    _, _, tb, _ = _k8s()
    _, ctb, _ = _compose()
    for where, env in (("kubernetes.yaml", _env_dict(tb.get("env"))),
                       ("compose.yaml", _env_dict(ctb.get("environment")))):
        for name in env:
            if name.startswith(("TGBRIDGE_", "TRUSTGRAPH_", "GATEWAY_")):
                assert name in env_names, "%s: tgbridge has no variable %s" \
                    % (where, name)
    # The check itself: a misspelt flag, a lost value and a stray word fail.
    good = [w for f, v in flags["kubernetes.yaml"] for w in
            ([f] if v is None else [f, v])]
    for bad in ([w.replace("--unix-mode", "--unix-mod") for w in good],
                good + ["--listen"], good + ["8089"]):
        try:
            parse_flags(bad, "mutated")
        except AssertionError:
            continue
        raise AssertionError("parse_flags accepted %r" % bad)


@timeout(120)
def test_sidecar_flag_values_accepted():
    _check_values(_image_flags(), "Containerfile")
    _check_values(_k8s_flags(_k8s()[2]), "kubernetes.yaml")
    _check_values(_compose_flags(_compose()[1]), "compose.yaml")


def test_sidecar_containerfile():
    stages = _stages()
    assert len(stages) >= 2, "Containerfile: a build stage and a runtime stage"
    assert re.match(r"^(docker\.io/(library/)?)?debian:bookworm(\s|$)",
                    stages[0][0][1]), "build stage is not Debian 12: %s" \
        % stages[0][0][1]
    img = _image()
    assert re.match(r"^(docker\.io/(library/)?)?debian:bookworm-slim$",
                    img["from"]), "runtime is not debian:bookworm-slim: %s" \
        % img["from"]
    uid, gid = _image_uid_gid(img)
    assert uid != 0, "the image runs as root"
    values = _last(_image_flags())
    host, port = _listen(values, "Containerfile")
    assert host in LOOPBACK, "the image listens on %s: see README" % host
    assert [p.split("/")[0] for p in img["expose"]] == [str(port)], \
        "EXPOSE %s != the --listen port %d" % (img["expose"], port)
    hc = img["healthcheck"]
    assert hc, "no HEALTHCHECK"
    path, phost, pport = _probe_target(hc, "HEALTHCHECK")
    eq((path, phost, pport), ("/readyz",) + _probed(values), "HEALTHCHECK target")
    # The socket's directory and group are made in the image.
    sock_dir = os.path.dirname(values["--unix"])
    assert re.search(r"install -d [^\n]*-o %d [^\n]*%s\b" % (uid,
                     re.escape(sock_dir)), img["run"]), \
        "the image does not create %s owned by %d" % (sock_dir, uid)
    if "--unix-group" in values:
        assert re.search(r"--gid %s\b" % re.escape(values["--unix-group"]),
                         img["run"]), "no group %s made in the image" \
            % values["--unix-group"]
    # The build stage installs what the Makefile says building needs, and
    # libcap-dev when the link line has -lcap.
    build_text = "\n".join(r for i, r in stages[0] if i == "RUN")
    build_pkgs = set(_apt_packages(build_text))
    with open(os.path.join(ROOT, "Makefile")) as f:
        mk = f.read().replace("\\\n", " ")
    m = re.search(r"^BUILD_DEB_PKGS\s*:?=(.*)$", mk, re.M)
    if m:
        need = set(m.group(1).split())
    else:
        m = re.search(r"^DEB_PKGS\s*:?=(.*)$", mk, re.M)
        need = {p for p in m.group(1).split() if p.endswith("-dev") or
                p in ("build-essential", "pkg-config")}
    m = re.search(r"^PKGS\s*:?=(.*)$", mk, re.M)
    libs = subprocess.run(["pkg-config", "--libs"] + m.group(1).split(),
                          capture_output=True, text=True) \
        if shutil.which("pkg-config") else None
    if libs and libs.returncode == 0 and "-lcap" in libs.stdout.split():
        need.add("libcap-dev")
    assert need <= build_pkgs, "build stage lacks %s" % sorted(need -
                                                                 build_pkgs)
    assert re.search(r"\bmake\b[^\n]*\btgbridge\b", build_text), \
        "the build stage does not run make tgbridge"


def test_sidecar_kubernetes_lines_up():
    kinds, pod, tb, apps = _k8s()
    values = _last(_k8s_flags(tb))
    host, port = _listen(values, "kubernetes.yaml")
    assert host in LOOPBACK, "tgbridge listens on %s: the pod shares " \
        "127.0.0.1; see README before exposing it" % host
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    psc = pod.get("securityContext", {})

    # A native sidecar must be restartable, or the pod never gets past it.
    if tb in pod.get("initContainers", []):
        eq(tb.get("restartPolicy"), "Always", "tgbridge init container "
           "restartPolicy")

    # The socket: inside an emptyDir that the app mounts too, at the path the
    # app is told; group and mode let the app's user connect.
    sock = values["--unix"]
    mounts = {m["name"]: m for m in tb.get("volumeMounts", [])}
    shared = [n for n, m in mounts.items()
              if _inside(sock, m["mountPath"]) is not None]
    assert shared, "--unix %s is in none of tgbridge's mounts %s" % (
        sock, [m["mountPath"] for m in mounts.values()])
    vol = shared[0]
    assert "emptyDir" in volumes.get(vol, {}), "volume %s is no emptyDir" % vol
    rel = _inside(sock, mounts[vol]["mountPath"])
    mode = _mode(values.get("--unix-mode", "0660"))
    assert mode & 0o060 == 0o060, "--unix-mode %o: the group cannot connect" \
        % mode
    group = values.get("--unix-group")
    assert group and group.isdigit(), "--unix-group should be a gid: %r" % group
    tb_sc = tb.get("securityContext", {})
    for app in apps:
        am = {m["name"]: m for m in app.get("volumeMounts", [])}
        assert vol in am, "app %s does not mount %s" % (app["name"], vol)
        app_sock = os.path.join(am[vol]["mountPath"], rel)
        env = _env_dict(app.get("env"))
        assert app_sock in env.values(), "app %s is not told the socket %s " \
            "(env %s)" % (app["name"], app_sock, env)
        url = env.get("TRUSTGRAPH_URL")
        if url:
            m = re.match(r"^https?://([^/:]+|\[[^]]+\]):(\d+)/?$", url)
            assert m and m.group(1).strip("[]") in LOOPBACK and \
                int(m.group(2)) == port, "app TRUSTGRAPH_URL %s is not " \
                "tgbridge's %s" % (url, values["--listen"])
        sc = app.get("securityContext", {})
        groups = {psc.get("fsGroup"), sc.get("runAsGroup",
                                             psc.get("runAsGroup"))}
        groups |= set(psc.get("supplementalGroups", []))
        assert int(group) in groups, "app %s is not in the socket's group " \
            "%s (its groups: %s)" % (app["name"], group, groups)
        for m in app.get("volumeMounts", []):
            assert "secret" not in volumes.get(m["name"], {}), \
                "app %s mounts the Secret %s" % (app["name"], m["name"])
    assert int(group) in {psc.get("fsGroup"), tb_sc.get("runAsGroup")} | \
        set(psc.get("supplementalGroups", [])), \
        "tgbridge is not in the socket's group %s" % group

    # The token: --token-file is the mounted Secret key.
    tf = values.get("--token-file")
    assert tf, "no --token-file"
    found = None
    for n, m in mounts.items():
        sec = volumes.get(n, {}).get("secret")
        rel = _inside(tf, m["mountPath"])
        if sec is None or rel is None:
            continue
        assert "subPath" not in m, "a subPath Secret mount never sees a " \
            "rotated token"
        items = sec.get("items")
        keys = {i["path"]: i["key"] for i in items} if items else None
        key = keys.get(rel) if keys is not None else rel
        assert key, "%s: no item of Secret %s has path %s" % (tf,
                                                              sec["secretName"], rel)
        found = (sec, key)
    assert found, "--token-file %s is in no Secret volume" % tf
    sec, key = found
    secrets = {s["metadata"]["name"]: s for s in kinds["Secret"]}
    assert sec["secretName"] in secrets, "Secret %s is not in the file" \
        % sec["secretName"]
    data = dict(secrets[sec["secretName"]].get("data") or {})
    data.update(secrets[sec["secretName"]].get("stringData") or {})
    assert key in data, "Secret %s has no key %s" % (sec["secretName"], key)
    fmode = _mode(sec.get("defaultMode", 0o644))
    tb_groups = {psc.get("fsGroup"), tb_sc.get("runAsGroup")}
    assert fmode & 0o004 or (fmode & 0o040 and psc.get("fsGroup")
                             in tb_groups), \
        "the token file (mode %o, owner root) is not readable by tgbridge" % fmode

    # Probes: httpGet on the admin listener (kubelet comes from the node to the
    # pod IP), or exec tgbridge probe on what the container's flags name.
    admin = values.get("--admin-listen")
    want = {"readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = tb.get(kind)
        if probe is None:
            assert kind not in want, "tgbridge has no %s" % kind
            continue
        if "httpGet" in probe:
            assert admin, "%s: httpGet needs --admin-listen (kubelet cannot " \
                "reach 127.0.0.1)" % kind
            ahost, aport = _addr(admin)
            assert ahost not in LOOPBACK, "%s: the admin listener %s is on " \
                "loopback, out of kubelet's reach" % (kind, admin)
            eq(probe["httpGet"]["port"], aport, "%s port (--admin-listen)" % kind)
            path = probe["httpGet"]["path"]
        else:
            path, phost, pport = _probe_target(probe["exec"]["command"], kind)
            eq((phost, pport), _probed(values), "%s target" % kind)
        if kind in want:
            eq(path, want[kind], "%s path" % kind)

    # Prometheus scrapes /metrics where it can reach it: the admin listener.
    ann = kinds["Deployment"][0]["spec"]["template"].get("metadata", {}) \
        .get("annotations") or {}
    if ann.get("prometheus.io/scrape") == "true":
        assert admin, "a scrape annotation without --admin-listen"
        eq(str(ann.get("prometheus.io/port")), str(_addr(admin)[1]),
           "prometheus.io/port (--admin-listen)")
        eq(ann.get("prometheus.io/path", "/metrics"), "/metrics",
           "prometheus.io/path")
    ports = [p.get("containerPort") for p in tb.get("ports", [])]
    if admin:
        assert _addr(admin)[1] in ports, "the admin port %s is not among " \
            "tgbridge's ports %s" % (admin, ports)

    # Locked down, sized, and the user the image was built for.
    uid, _ = _image_uid_gid(_image())
    eq(tb_sc.get("runAsUser"), uid, "tgbridge runAsUser (the image's USER)")
    for c in [tb] + apps:
        sc = c.get("securityContext", {})
        where = "container %s" % c["name"]
        assert sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, where
        assert sc.get("readOnlyRootFilesystem") is True, where
        assert sc.get("allowPrivilegeEscalation") is False, where
        assert "ALL" in sc.get("capabilities", {}).get("drop", []), where
        assert sc.get("privileged") is not True, where
    res = tb.get("resources", {})
    assert res.get("requests", {}).get("memory") and \
        res.get("requests", {}).get("cpu") and \
        res.get("limits", {}).get("memory"), "tgbridge resources: %s" % res


def test_sidecar_compose_lines_up():
    doc, tb, apps = _compose()
    values = _last(_compose_flags(tb))
    host, port = _listen(values, "compose.yaml")
    assert host in LOOPBACK, "tgbridge listens on %s" % host
    sock = values["--unix"]
    mounts = _compose_mounts(tb)
    shared = [n for n, (t, _) in mounts.items()
              if _inside(sock, t) is not None]
    assert shared, "--unix %s is in none of tgbridge's volumes %s" % (
        sock, mounts)
    vol = shared[0]
    assert vol in (doc.get("volumes") or {}), "volume %s is not declared" % vol
    rel = _inside(sock, mounts[vol][0])
    group = values.get("--unix-group")
    assert _mode(values.get("--unix-mode", "0660")) & 0o060 == 0o060
    uid, _ = _image_uid_gid(_image())
    user = str(tb.get("user", uid)).split(":")[0]
    eq(user, str(uid), "tgbridge user (the image's USER)")
    for app in apps:
        am = _compose_mounts(app)
        assert vol in am, "app does not mount the volume %s" % vol
        env = _env_dict(app.get("environment"))
        app_sock = os.path.join(am[vol][0], rel)
        assert app_sock in env.values(), "app is not told the socket %s" \
            % app_sock
        eq(app.get("network_mode"), "service:tgbridge", "app network_mode "
           "(127.0.0.1 must be tgbridge's)")
        url = env.get("TRUSTGRAPH_URL")
        if url:
            m = re.match(r"^https?://([^/:]+|\[[^]]+\]):(\d+)/?$", url)
            assert m and int(m.group(2)) == port, "app TRUSTGRAPH_URL %s" % url
        assert group in [str(g) for g in app.get("group_add", [])] or \
            str(app.get("user", "")).partition(":")[2] == group, \
            "app is not in the socket's group %s" % group
        dep = app.get("depends_on", {})
        assert "tgbridge" in dep, "app does not depend on tgbridge"
    hc = tb.get("healthcheck", {}).get("test")
    assert hc and hc[0] in ("CMD", "CMD-SHELL"), "tgbridge healthcheck: %r" % hc
    cmd = hc[1:] if hc[0] == "CMD" else shlex.split(hc[1])
    eq(_probe_target(cmd, "compose healthcheck")[1:], _probed(values),
       "healthcheck target")
    # The token: --token-file is the service's secret.
    tf = values.get("--token-file")
    names = {}
    for s in tb.get("secrets", []):
        src, target = (s, s) if isinstance(s, str) else \
            (s["source"], s.get("target", s["source"]))
        names[target if target.startswith("/") else "/run/secrets/" + target] \
            = src
    assert tf in names, "--token-file %s is none of the secrets %s" % (
        tf, list(names))
    assert "file" in (doc.get("secrets") or {}).get(names[tf], {}), \
        "secret %s is not declared with a file" % names[tf]
    for s in [tb] + apps:
        assert s.get("read_only") is True
        assert "ALL" in s.get("cap_drop", [])
        assert any(o.replace("=", ":") in ("no-new-privileges:true",
                                          "no-new-privileges")
                   for o in s.get("security_opt", []))
        assert not s.get("secrets") or s is tb, "the app has the secret"


def _debian12():
    try:
        with open("/etc/os-release") as f:
            osr = dict(l.rstrip("\n").split("=", 1) for l in f if "=" in l)
    except OSError:
        osr = {}
    if osr.get("ID") != "debian" or osr.get("VERSION_ID", "").strip('"') \
            != "12":
        skip("not Debian 12: the image's package names are Debian 12's")


def _apt_ready():
    if not shutil.which("apt-cache"):
        skip("apt-cache is absent")
    if subprocess.run(["apt-cache", "show", "libc6"],
                      capture_output=True).returncode:
        skip("apt has no package lists (apt-get update)")


def test_sidecar_packages_exist_in_debian12():
    _debian12()
    _apt_ready()
    stages = _stages()
    pkgs = set(_image()["packages"]) | set(_apt_packages(
        "\n".join(r for i, r in stages[0] if i == "RUN")))
    assert pkgs, "no apt-get install in the Containerfile"
    # One call (its status is 0 if any of them exists): the names it shows.
    out = subprocess.run(["apt-cache", "show", "--no-all-versions"] +
                         sorted(pkgs), capture_output=True, text=True).stdout
    missing = sorted(pkgs - set(re.findall(r"^Package: (\S+)$", out, re.M)))
    assert not missing, "not Debian 12 packages: %s" % missing


def _dpkg_owners(paths):
    """{path: the package providing it}, trying each path's /usr-merged
    alias too (dpkg knows only the one its package ships); one dpkg call."""
    cands = {}
    for path in paths:
        for p in (path, os.path.realpath(path)):
            cands.setdefault(p, path)
            cands.setdefault(p[4:] if p.startswith("/usr/") else "/usr" + p,
                             path)
    out = subprocess.run(["dpkg", "-S"] + sorted(cands), capture_output=True,
                         text=True).stdout
    owners = {}
    for line in out.splitlines():
        pkgs, _, p = line.rpartition(": ")
        if p in cands and pkgs:
            owners.setdefault(cands[p], pkgs.split(",")[0].split(":")[0]
                              .strip())
    return owners


def test_sidecar_runtime_packages_cover_the_libraries():
    _debian12()
    if not shutil.which("dpkg") or not shutil.which("ldd"):
        skip("dpkg or ldd is absent")
    _apt_ready()
    binary = os.path.join(ROOT, "build", "tgbridge")
    if not os.path.exists(binary):
        skip("build/tgbridge is not built (the image builds it the same way)")
    runtime = _image()["packages"]
    deps = subprocess.run(
        ["apt-cache", "depends", "--recurse", "--no-recommends",
         "--no-suggests", "--no-conflicts", "--no-breaks", "--no-replaces",
         "--no-enhances"] + runtime, capture_output=True, text=True)
    assert deps.returncode == 0, "apt-cache depends %s: %s" % (
        " ".join(runtime), deps.stderr.strip())
    closure = {l.strip() for l in deps.stdout.splitlines()
               if l and not l.startswith(" ")}
    r = subprocess.run(["ldd", binary], capture_output=True, text=True)
    eq(r.returncode, 0, "ldd exit status")
    libs = re.findall(r"(?:=>\s*)?(/\S+)\s+\(0x", r.stdout)
    assert libs, r.stdout
    owners = _dpkg_owners(libs)
    problems = []
    for lib in libs:
        pkg = owners.get(lib)
        if pkg is None:
            problems.append("%s belongs to no package" % lib)
        elif pkg not in closure:
            problems.append("%s is in %s, which the runtime packages %s do "
                            "not bring" % (lib, pkg, runtime))
    # What the binary itself links comes from a package named in the file.
    if shutil.which("readelf"):
        out = subprocess.run(["readelf", "-d", binary], capture_output=True,
                             text=True).stdout
        for soname in re.findall(r"\(NEEDED\).*\[(.+)\]", out):
            path = next((p for p in libs if os.path.basename(p) == soname),
                        None)
            pkg = owners.get(path)
            if pkg and pkg not in runtime and pkg != "libc6":
                problems.append("%s (NEEDED) comes from %s, not named in the "
                                "runtime stage" % (soname, pkg))
    assert not problems, "; ".join(problems)


@timeout(300)
def test_sidecar_build_stage_builds():
    if not shutil.which("make") or not shutil.which("cc"):
        skip("no make or cc")
    stages = _stages()
    work = tempfile.mkdtemp(prefix="tgbridge-image-build-")
    try:
        for ins, rest in stages[0]:
            if ins != "COPY":
                continue
            words = [w for w in rest.split() if not w.startswith("--")]
            srcs, dest = words[:-1], words[-1]
            base = os.path.normpath(os.path.join(work, dest.lstrip("/")))
            for s in srcs:
                src = os.path.join(ROOT, s)
                assert os.path.exists(src), "COPY %s: not in the repository" % s
                if os.path.isdir(src):      # a directory's contents
                    shutil.copytree(src, base, dirs_exist_ok=True)
                    continue
                target = base
                if dest.endswith("/") or len(srcs) > 1 or os.path.isdir(base):
                    target = os.path.join(base, os.path.basename(src))
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.copy2(src, target)
        r = subprocess.run(["make", "-j2", "tgbridge"], cwd=work,
                           capture_output=True, text=True, timeout=280)
        assert r.returncode == 0, "make tgbridge with only the COPY'd " \
            "files failed:\n" + (r.stdout + r.stderr)[-3000:]
        v = subprocess.run([os.path.join(work, "tgbridge"), "--version"],
                           capture_output=True, text=True)
        eq(v.returncode, 0, "the built tgbridge --version")
        p = subprocess.run([os.path.join(work, "tgbridge"), "probe", "--help"],
                           capture_output=True, text=True)
        eq(p.returncode, 0, "the built tgbridge probe --help")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _health_checks():
    """[(where, argv)] of the exec health checks the files run."""
    out = [("HEALTHCHECK", _image()["healthcheck"])]
    _, ctb, _ = _compose()
    hc = ctb.get("healthcheck", {}).get("test")
    out.append(("compose healthcheck",
                hc[1:] if hc[0] == "CMD" else shlex.split(hc[1])))
    _, _, tb, _ = _k8s()
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        if "exec" in tb.get(kind, {}):
            out.append((kind, tb[kind]["exec"]["command"]))
    return out


def _run_check(argv, port):
    """argv with this build's binary and --listen / --admin-listen at port."""
    args, i = [BIN], 1
    while i < len(argv):
        a = argv[i]
        if a in ("--listen", "--admin-listen") and i + 1 < len(argv):
            args += [a, "127.0.0.1:%d" % port]
            i += 2
            continue
        args.append(a)
        i += 1
    return subprocess.run(WRAPPER + args, capture_output=True, text=True,
                          timeout=20, env=bridge_env())


def test_sidecar_health_checks_answer():
    checks = _health_checks()
    token = tmpfile(TOKEN + "\n")
    with start_mock(tokens=(TOKEN,)) as mock, \
            start_bridge(mock.url, "--token-file", token) as up, \
            start_bridge("http://127.0.0.1:%d/" % closed_port(),
                         "--token-file", token) as down:
        up.wait_ready()
        for where, argv in checks:
            path = _probe_target(argv, where)[0]
            r = _run_check(argv, up.port)
            eq(r.returncode, 0, "%s, gateway up: %s%s" % (where, r.stdout,
                                                           r.stderr))
            r = _run_check(argv, down.port)
            eq(r.returncode, 0 if path == "/healthz" else 1,
               "%s, gateway down: %s" % (where, r.stdout))
            r = _run_check(argv, closed_port())
            eq(r.returncode, 1, "%s, nothing listening: %s" % (where,
                                                                r.stdout))
