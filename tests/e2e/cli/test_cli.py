"""Command line: --help, --version, bad flags, gateway URL forms, sizes, the
config file."""

import os
import re
import signal
import subprocess
import time

from harness import (FLOW_TC, T, check_status, closed_port, eq, own_error,
                     post_early_reply, run_bridge, start_bridge, start_mock,
                     stream, tc, tmpfile)

TOKEN = "tg_cli_token_5e1f"

DOCUMENTED = ("--gateway", "--token-file", "--token", "--auth", "--listen",
              "--max-body", "--request-timeout", "--queue-timeout",
              "--max-inflight", "--log-level", "--config", "--help", "--version")


def test_help_prints_usage_to_stdout_and_exits_0():
    env = {"TRUSTGRAPH_TOKEN": "tg_help_env_secret_77",
           "GATEWAY_SECRET": "help-gw-secret-99"}
    r = run_bridge("--help", env=env)
    eq(r.returncode, 0, "--help exit status")
    for flag in DOCUMENTED:
        assert flag in r.stdout, "--help does not mention %s:\n%s" % (
            flag, r.stdout)
    for secret in env.values():
        assert secret not in r.stdout + r.stderr, "token shown by --help"


def test_version_exits_0():
    r = run_bridge("--version")
    eq(r.returncode, 0, "--version exit status")
    out = (r.stdout + r.stderr).strip()
    assert out and any(ch.isdigit() for ch in out), \
        "--version printed no version: %r" % out


def test_unknown_flag_exits_2_with_message():
    r = run_bridge("--no-such-flag")
    eq(r.returncode, 2, "exit status for an unknown flag")
    assert r.stderr.strip(), "no message on stderr for an unknown flag"
    assert "no-such-flag" in r.stderr, "message does not name the flag: %r" \
        % r.stderr


def test_missing_flag_value_exits_2():
    r = run_bridge("--gateway")
    eq(r.returncode, 2, "exit status for --gateway without a value")
    assert r.stderr.strip(), "no message on stderr"


def test_bad_flag_values_exit_2():
    bad = [
        ("--auth", "bogus"),
        ("--log-level", "loud"),
        ("--max-inflight", "abc"),
        ("--max-inflight", "0"),
        ("--listen", "no-port-here"),
        ("--max-body", "12x"),
        ("--request-timeout", "soon"),
        ("--queue-timeout", "later"),
        ("--gateway", "ftp://127.0.0.1:1/"),
    ]
    wrong = []
    for flag, value in bad:
        args = [flag, value]
        if flag != "--listen":
            args += ["--listen", "127.0.0.1:0"]
        try:
            r = run_bridge(*args, timeout=5)
        except subprocess.TimeoutExpired:
            wrong.append("%s %s -> still running after 5s" % (flag, value))
            continue
        if r.returncode != 2 or not r.stderr.strip():
            wrong.append("%s %s -> rc %s stderr %r" % (flag, value,
                                                      r.returncode,
                                                      r.stderr[:200]))
    assert not wrong, "bad values not rejected with exit 2:\n" + \
        "\n".join(wrong)


def test_stray_argument_exits_2():
    r = run_bridge("--listen", "127.0.0.1:0", "extra-positional")
    eq(r.returncode, 2, "exit status for a stray argument")


def _ready_with(url):
    with start_bridge(url, "--token", TOKEN, "--auth", "first-frame") as b:
        b.wait_ready()


def test_gateway_url_forms():
    with start_mock("v2d", tokens=[TOKEN]) as m:
        for url in ("http://127.0.0.1:%d" % m.port,
                    "http://127.0.0.1:%d/" % m.port,
                    "ws://127.0.0.1:%d" % m.port,
                    "ws://127.0.0.1:%d/api/v1/socket" % m.port):
            try:
                _ready_with(url)
            except AssertionError as e:
                raise AssertionError("--gateway %s: %s" % (url, e))


def test_gateway_default_from_TRUSTGRAPH_URL():
    with start_mock("v2d", tokens=[TOKEN]) as m:
        with start_bridge(None, "--token", TOKEN,
                          env={"TRUSTGRAPH_URL": m.url + "/"}) as b:
            b.wait_ready()
            eq(m.stats()["connections_total"] >= 1, True,
               "mock saw a connection")


def test_gateway_flag_overrides_env():
    with start_mock("v2d", tokens=[TOKEN]) as m:
        env = {"TRUSTGRAPH_URL": "http://127.0.0.1:%d/" % closed_port()}
        with start_bridge(m.url, "--token", TOKEN, env=env) as b:
            b.wait_ready()


def _body_of_size(n):
    """A JSON object of exactly n bytes (n >= 40) asking the mock to echo."""
    head = b'{"_mock":{"echo":true},"pad":"'
    tail = b'"}'
    return head + b"a" * (n - len(head) - len(tail)) + tail


def test_max_body_k_suffix_is_kib():
    with start_mock("v2d", tokens=[TOKEN]) as m, \
            start_bridge(m.url, "--token", TOKEN, "--max-body", "1k") as b:
        b.wait_ready()
        r = b.post(FLOW_TC, _body_of_size(1024))
        check_status(r, 200, "1024-byte body with --max-body 1k")
        own_error(post_early_reply(b.port, FLOW_TC, _body_of_size(1025)), 413,
                  "payload-too-large")


def test_max_body_m_suffix_is_mib():
    with start_mock("v2d", tokens=[TOKEN]) as m, \
            start_bridge(m.url, "--token", TOKEN, "--max-body", "1m") as b:
        b.wait_ready()
        own_error(post_early_reply(b.port, FLOW_TC,
                                   _body_of_size(1024 * 1024 + 1)),
                  413, "payload-too-large")
        check_status(b.post(FLOW_TC, _body_of_size(1024 * 1024)), 200,
                     "1 MiB body with --max-body 1m")


def test_sigterm_idle_exits_0_promptly():
    with start_mock("v2d", tokens=[TOKEN]) as m, \
            start_bridge(m.url, "--token", TOKEN) as b:
        b.wait_ready()
        t0 = time.monotonic()
        b.proc.send_signal(signal.SIGTERM)
        b.proc.wait(T(10))
        assert time.monotonic() - t0 < T(2), \
            "idle shutdown took %.1fs" % (time.monotonic() - t0)
        b.stop()   # asserts exit status 0


def test_sigterm_lets_inflight_stream_finish():
    with start_mock("v2d", tokens=[TOKEN]) as m, \
            start_bridge(m.url, "--token", TOKEN) as b:
        b.wait_ready()
        prompt = "one two three"
        with stream(b.port, FLOW_TC, tc(prompt, streaming=True, parts=3,
                                        delay=0.3)) as s:
            check_status(s, 200, "stream")
            it = s.ndjson()
            items = [next(it)]
            b.proc.send_signal(signal.SIGTERM)
            items += list(it)
        eq("".join(i.get("response", "") for i in items), prompt,
           "text of a stream that was in flight at SIGTERM")
        eq(items[-1].get("end_of_stream"), True, "final frame delivered")
        t0 = time.monotonic()
        b.proc.wait(T(10))
        assert time.monotonic() - t0 < T(3), "exit took %.1fs after the " \
            "last call finished" % (time.monotonic() - t0)
        b.stop()   # asserts exit status 0


def test_readyz_503_while_gateway_unreachable():
    url = "http://127.0.0.1:%d" % closed_port()
    with start_bridge(url, "--token", TOKEN) as b:
        r = b.get("/readyz")
        check_status(r, 503, "/readyz with no gateway")
        body = r.json()
        assert isinstance(body, dict) and body, "/readyz 503 body %r" % body
        r = b.get("/healthz")
        check_status(r, 200, "/healthz does not depend on the gateway")


def test_listen_on_fixed_port():
    port = closed_port()
    with start_mock("v2d", tokens=[TOKEN]) as m, \
            start_bridge(m.url, "--token", TOKEN,
                         listen="127.0.0.1:%d" % port) as b:
        eq(b.port, port, "port in the 'listening rest=' line")
        b.wait_ready()


def test_missing_token_file_fails_at_startup():
    r = run_bridge("--token-file", "/nonexistent/tgbridge-token",
                   "--listen", "127.0.0.1:0", timeout=10)
    assert r.returncode != 0, "a missing --token-file was accepted"
    assert r.stderr.strip(), "no message for a missing --token-file"


# ----------------------------------------------------------- config file

def write_config(text, mode=0o600):
    path = tmpfile(text, suffix=".conf")  # removed at cleanup
    os.chmod(path, mode)
    return path


def test_config_file_under_environment_under_flags():
    m = start_mock("v2d", tokens=[TOKEN])
    conf = write_config(
        "# tgbridge settings\n"
        "\n"
        "gateway = %s\n"
        "token   = \"%s\"\n"
        "max-inflight = 4\n"
        "max-queue = 7\n"
        "request-timeout = 0.5\n"
        "insecure = false\n" % (m.url, TOKEN))
    with m:
        # the file alone: gateway, token and limits come from it
        with start_bridge(None, "--config", conf) as b:
            b.wait_ready()
            check_status(b.post(FLOW_TC, tc("from the file")), 200, "call")
            eq(b.get("/status").json()["requests"]["window_max"], 4,
               "max-inflight from the file")
            own_error(b.post(FLOW_TC, tc("slow", never=True)), 504,
                      "request-timeout")
            assert TOKEN not in b.log(), "the token from the file was logged"
        # the environment overrides the file, a flag overrides both
        with start_bridge(None, env={"TGBRIDGE_CONFIG": conf,
                                     "TGBRIDGE_MAX_INFLIGHT": "6"}) as b:
            b.wait_ready()
            eq(b.get("/status").json()["requests"]["window_max"], 6,
               "environment over the file")
        with start_bridge(None, "--config=" + conf, "--max-inflight", "8",
                          env={"TGBRIDGE_MAX_INFLIGHT": "6"}) as b:
            b.wait_ready()
            eq(b.get("/status").json()["requests"]["window_max"], 8,
               "flag over the environment and the file")


def test_config_file_mistakes_stop_the_start_with_file_and_line():
    cases = [
        ("max-inflight = 4\nno-such-option = 1\n", ":2: unknown option 'no-such-option'"),
        ("max-inflight = 4\nmax-inflight = 5\n", ":2: 'max-inflight' is set twice"),
        ("\n\nmax-inflight = lots\n", ":3: option wants a positive integer"),
        ("insecure = perhaps\n", ":1: 'insecure' wants true or false"),
        ("just words\n", ":1: expected 'option = value'"),
        ("help = 1\n", ":1: unknown option 'help'"),
    ]
    for text, want in cases:
        conf = write_config(text)
        r = run_bridge("--config", conf, "--listen", "127.0.0.1:0")
        eq(r.returncode, 2, "exit status for %r" % text)
        assert conf + want in r.stderr, "message for %r: %r" % (text, r.stderr)
    r = run_bridge("--config", "/nonexistent/tgbridge.conf")
    eq(r.returncode, 2, "exit status for a missing config file")
    assert "cannot open config file /nonexistent/tgbridge.conf" in r.stderr, \
        r.stderr


def test_config_file_with_a_token_readable_by_others_is_warned_about():
    m = start_mock("v2d", tokens=[TOKEN])
    conf = write_config("gateway = %s\ntoken = %s\n" % (m.url, TOKEN),
                        mode=0o644)
    with m, start_bridge(None, "--config", conf) as b:
        b.wait_ready()
        b.wait_log(r"holds a token and is readable by group or others "
                   r"\(mode 0644\)")
        assert TOKEN not in b.log(), "the token was logged"


def test_every_option_and_environment_variable_is_in_docs_configuration():
    # The options table moved from README.md to docs/configuration.md.
    import re
    from harness import ROOT
    r = run_bridge("--help")
    eq(r.returncode, 0, "--help exit status")
    with open(os.path.join(ROOT, "docs", "configuration.md")) as f:
        doc = f.read()
    opts = re.findall(r"(?m)^  (--[a-z-]+)", r.stdout)
    envs = re.findall(r"\[([A-Z]+_[A-Z_]+)\]", r.stdout)
    assert len(opts) > 20 and len(envs) > 20, r.stdout
    missing = [o for o in opts if "`%s" % o not in doc]
    missing += [e for e in envs if "`%s" % e not in doc]
    assert not missing, "in --help but not in docs/configuration.md: %s" % missing


def test_print_config_shows_effective_values_and_sources_and_masks_secrets():
    tf = tmpfile("tg_from_the_token_file_77\n")
    conf = write_config("gateway = https://gw.example.com/tg\n"
                        "request-timeout = 300\n"
                        "max-queue = 7\n"
                        "proxy = http://proxyuser:proxy-pw-31@proxy.example:3128\n")
    r = run_bridge("--config", conf, "--max-queue", "9", "--token", "tg_flag_secret_123",
                   "--print-config", env={"TGBRIDGE_CONNECT_TIMEOUT": "4.5",
                                          "TGBRIDGE_CLIENT_TOKEN_FILE": tf})
    eq(r.returncode, 0, "exit status; stderr: %s" % r.stderr)
    values, sources = {}, {}
    for l in r.stdout.splitlines():
        if l.startswith("# ") and ": " in l and " = " not in l:
            k, _, v = l[2:].partition(": ")
            sources[k] = v.split("; reload: ")[0]  # what SIGHUP does follows the source
        elif " = " in l and not l.startswith("#"):
            k, _, v = l.partition(" = ")
            values[k] = v
    eq((values["gateway"], sources["gateway"]), ("https://gw.example.com/tg", conf + ":1"), "gateway")
    eq((values["request-timeout"], sources["request-timeout"]), ("300", conf + ":2"), "request-timeout")
    eq((values["max-queue"], sources["max-queue"]), ("9", "flag"), "a flag over the file")
    eq((values["connect-timeout"], sources["connect-timeout"]), ("4.5", "TGBRIDGE_CONNECT_TIMEOUT"), "environment")
    eq((values["max-inflight"], sources["max-inflight"]), ("15", "default"), "a default")
    eq(values["token"], "***", "the token masked")
    eq(values["proxy"], "http://***@proxy.example:3128", "proxy credentials masked")
    eq(sources["workspace"], "unset (default)", "an unset option")
    for secret in ("tg_flag_secret_123", "proxy-pw-31", "proxyuser", "tg_from_the_token_file_77"):
        assert secret not in r.stdout + r.stderr, "%s shown by --print-config" % secret
    # what it prints is a config file tgbridge reads back
    back = write_config("\n".join(l for l in r.stdout.splitlines()
                                  if l and not l.startswith("#") and not l.startswith("token ")) + "\n")
    r2 = run_bridge("--config", back, "--check-config")
    eq(r2.returncode, 0, "--check-config on the printed configuration: %s" % r2.stderr)


def test_check_config_exits_0_when_valid_and_2_with_the_reason():
    r = run_bridge("--gateway", "http://127.0.0.1:1", "--check-config")
    eq(r.returncode, 0, "valid: %s" % r.stderr)
    assert "valid" in r.stdout, r.stdout
    for args, why in ((["--max-inflight", "20"], "max-inflight"),
                      (["--token-file", "/nonexistent/tgb-token"], "/nonexistent/tgb-token"),
                      (["--client-token-file", "/nonexistent/tgb-client"], "/nonexistent/tgb-client"),
                      (["--gateway", "ftp://x"], "gateway")):
        r = run_bridge(*args, "--check-config")
        eq(r.returncode, 2, "invalid %r" % args)
        assert why in r.stderr, r.stderr


def test_switches_from_the_environment_are_booleans():
    """TGBRIDGE_INSECURE=false once meant "on" (any value but 0 did)."""
    for value, want in (("false", "false"), ("no", "false"), ("0", "false"), ("off", "false"),
                        ("true", "true"), ("1", "true"), ("yes", "true")):
        for var, opt in (("TGBRIDGE_INSECURE", "insecure"), ("TGBRIDGE_CA_ONLY", "ca-only")):
            extra = ["--ca-file", "/etc/hostname"] if opt == "ca-only" else []
            r = run_bridge(*extra, "--print-config", env={var: value})
            eq(r.returncode, 0, "%s=%s: %s" % (var, value, r.stderr))
            assert ("\n%s = %s\n" % (opt, want)) in r.stdout, "%s=%s gave:\n%s" % (var, value, r.stdout)
    r = run_bridge("--check-config", env={"TGBRIDGE_INSECURE": "maybe"})
    eq(r.returncode, 2, "an unreadable switch")
    assert "TGBRIDGE_INSECURE" in r.stderr, r.stderr


def test_help_lists_the_short_options():
    r = run_bridge("--help")
    eq(r.returncode, 0, "--help exit status")
    for short, long_ in (("-h", "--help"), ("-V", "--version"), ("-v", "--log-level debug")):
        assert re.search(r"(?m)^  %s +%s$" % (short, long_), r.stdout), \
            "--help does not list %s:\n%s" % (short, r.stdout)
    for short, want in (("-h", "Usage:"), ("-V", "tgbridge ")):
        r = run_bridge(short)
        eq(r.returncode, 0, "%s exit status" % short)
        assert r.stdout.startswith(want), r.stdout


def test_a_flag_given_twice_is_refused_lists_included():
    for args, name in ((["--max-body", "1k", "--max-body", "2k"], "--max-body"),
                       (["--max-body=1k", "--max-body=2k"], "--max-body"),
                       (["--allow-origin", "https://a.example", "--allow-origin", "https://b.example"],
                        "--allow-origin"),
                       (["--unix-allow-uid", "0", "--unix-allow-uid", "1"], "--unix-allow-uid"),
                       (["--insecure", "--insecure"], "--insecure"),
                       (["-v", "--log-level", "info"], "--log-level"),
                       (["-v", "-v"], "-v"),
                       (["--config", "/dev/null", "--config", "/dev/null"], "--config")):
        r = run_bridge(*args, "--check-config")
        eq(r.returncode, 2, "%r exit status; stderr: %s" % (args, r.stderr))
        assert "option '%s' is given twice" % name in r.stderr, r.stderr
    r = run_bridge("--allow-origin", "https://a.example,https://b.example", "--check-config")
    eq(r.returncode, 0, "a list given once, comma-separated: %s" % r.stderr)


def test_a_token_shorter_than_8_characters_is_refused_at_start():
    short = tmpfile("abc1234\n")
    good = tmpfile("abcd1234\n")
    cases = (
        (["--token", "abc"], {}, "the gateway token (from flag) is 3 characters long"),
        ([], {"TRUSTGRAPH_TOKEN": "abc"}, "the gateway token (from TRUSTGRAPH_TOKEN) is 3 characters"),
        ([], {"GATEWAY_SECRET": "x"}, "the gateway token (from GATEWAY_SECRET) is 1 character long"),
        (["--token-file", short], {}, "the gateway token in --token-file %s is 7 characters" % short),
        (["--config", write_config("token = abcdef\n")], {}, ":1) is 6 characters long"),
        (["--client-token-file", short], {}, "the client token in --client-token-file %s is 7" % short),
    )
    for args, env, why in cases:
        for check in ([], ["--check-config"]):
            r = run_bridge("--gateway", "http://127.0.0.1:%d" % closed_port(), *args, *check, env=env)
            eq(r.returncode, 2, "%r %r exit status; stderr: %s" % (args, env, r.stderr))
            assert why in r.stderr and "8 or more wanted (or --allow-short-token)" in r.stderr, r.stderr
            assert "abc1234" not in r.stderr, "the token itself was shown"
        for allow, allow_env in ((["--allow-short-token"], {}),
                                 ([], {"TGBRIDGE_ALLOW_SHORT_TOKEN": "true"}),
                                 (["--config", write_config("allow-short-token = true\n")], {})):
            if "--config" in args and "--config" in allow:
                continue
            r = run_bridge(*args, *allow, "--check-config", env=dict(env, **allow_env))
            eq(r.returncode, 0, "%r %r with %r: %s" % (args, env, allow or allow_env, r.stderr))
    for args in (["--token", "abcd1234"], ["--token-file", good], ["--client-token-file", good]):
        r = run_bridge(*args, "--check-config")
        eq(r.returncode, 0, "8 characters %r: %s" % (args, r.stderr))


def test_print_config_marks_each_option_reloadable_or_not():
    r = run_bridge("--print-config")
    eq(r.returncode, 0, "exit status: %s" % r.stderr)
    notes = {}
    for l in r.stdout.splitlines():
        m = re.match(r"# ([a-z-]+): .*; reload: (.*)$", l)
        if m:
            notes[m.group(1)] = m.group(2)
    eq(notes["client-timeout"], "applies to new calls", "client-timeout")
    eq(notes["log-level"], "applies to new calls", "log-level")
    eq(notes["listen"], "needs a restart", "listen")
    eq(notes["gateway"], "needs a restart", "gateway")
    eq(notes["token-file"], "the file is re-read, a new name needs a restart", "token-file")
    assert len(notes) > 40, notes
