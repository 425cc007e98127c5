#!/usr/bin/python3
"""`make demo`: start the bundled mock gateway and tgbridge on free loopback ports,
show a plain and a streamed answer with curl, then stop both.

Everything here is what a user would type by hand; see README "Quick start"."""
import os
import shlex
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = "tg_demo_token"


def wait_for_line(proc_file, needle, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(proc_file) as f:
            for line in f:
                if needle in line:
                    return line
        time.sleep(0.05)
    raise SystemExit("timed out waiting for %r in %s" % (needle, proc_file))


def run(cmd):
    print("\n$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    subprocess.run(cmd, check=False)
    print(flush=True)


def main():
    work = tempfile.mkdtemp(prefix="tgbridge-demo-")
    token_file = os.path.join(work, "token")
    with open(token_file, "w") as f:
        f.write(TOKEN + "\n")
    os.chmod(token_file, 0o600)
    mock_out = os.path.join(work, "mock.out")
    bridge_err = os.path.join(work, "tgbridge.log")
    procs = []
    try:
        mock = subprocess.Popen(
            ["/usr/bin/python3", os.path.join(ROOT, "tests/lib/mock_gateway.py"), "--port", "0",
             "--era", "v2d", "--token", TOKEN],
            stdout=open(mock_out, "w"), stderr=subprocess.DEVNULL)
        procs.append(mock)
        port = int(wait_for_line(mock_out, "PORT").split()[1])
        print("mock gateway (v2d, in-band auth) on 127.0.0.1:%d" % port)
        sock = os.path.join(work, "tgbridge.sock")
        bridge = subprocess.Popen(
            [os.path.join(ROOT, "tgbridge"), "--gateway", "http://127.0.0.1:%d" % port,
             "--token-file", token_file, "--listen", "127.0.0.1:0", "--unix", sock],
            stderr=open(bridge_err, "w"))
        procs.append(bridge)
        line = wait_for_line(bridge_err, "listening rest=")
        rest = line.split("listening rest=")[1].split()[0]
        base = "http://" + rest
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(base + "/readyz") as r:
                    if r.status == 200:
                        break
            except Exception:
                if time.monotonic() > deadline:
                    raise SystemExit("tgbridge did not become ready; log: " + bridge_err)
                time.sleep(0.05)
        print("tgbridge on %s, connected and authenticated\n" % base)
        with open(bridge_err) as f:
            sys.stdout.write(f.read())
        run(["curl", "-sS", base + "/api/v1/flow/default/service/text-completion",
             "-H", "Content-Type: application/json",
             "-d", '{"system":"You are terse.","prompt":"Say hi"}'])
        run(["curl", "-sSN", base + "/api/v1/flow/default/service/graph-rag",
             "-H", "Accept: application/x-ndjson",
             "-d", '{"query":"What is TrustGraph?","streaming":true,'
                   '"_mock":{"parts":5,"delay":0.2}}'])
        run(["curl", "-sSN", base + "/api/v1/flow/default/service/agent",
             "-H", "Accept: text/event-stream",
             "-d", '{"question":"Who are you?","streaming":true}'])
        print("\n# the Unix socket, line protocol (one JSON envelope per line, replies as lines):")
        line = ('{"id":"q1","service":"text-completion","flow":"default",'
                '"request":{"system":"s","prompt":"hello from a shell","streaming":true}}\n')
        print("$ echo '%s' | socat -t 5 - UNIX-CONNECT:%s" % (line.strip(), sock), flush=True)
        subprocess.run(["socat", "-t", "5", "-", "UNIX-CONNECT:" + sock], input=line.encode(),
                       check=False)
        run(["curl", "-sS", "--unix-socket", sock, "http://localhost/status"])
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
    print("demo finished; logs in " + work)


if __name__ == "__main__":
    main()
