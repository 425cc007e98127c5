"""systemd's side of sd_notify(3) for the tests: a datagram socket in a temporary
directory (or the abstract namespace) that collects the daemon's notifications."""

import os
import socket
import tempfile
import time
import uuid


class FakeSystemd:
    def __init__(self, abstract=False):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = "tgb-test-%s" % uuid.uuid4().hex[:12]
            self.sock.bind("\0" + name)
            self.env_value = "@" + name
        else:
            self.dir = tempfile.mkdtemp(prefix="tgb-sd-")
            path = os.path.join(self.dir, "notify")
            self.sock.bind(path)
            self.env_value = path
        self.messages = []

    def env(self, **extra):
        e = {"NOTIFY_SOCKET": self.env_value}
        e.update(extra)
        return e

    def wait_for(self, pred, timeout_s, what):
        deadline = time.monotonic() + timeout_s
        while True:
            for m in self.messages:
                if pred(m):
                    return m
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no notification %s within %.1fs; got %r"
                                     % (what, timeout_s, self.messages))
            self.sock.settimeout(left)
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except socket.timeout:
                pass

    def drain(self, seconds):
        """Everything that arrives within `seconds`."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.sock.settimeout(max(0.001, end - time.monotonic()))
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except socket.timeout:
                pass
        return self.messages

    def close(self):
        self.sock.close()
