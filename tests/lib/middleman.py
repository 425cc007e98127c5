"""The tests' one TCP middleman: a loopback listener in front of the mock (or of
whatever a test names) that sees every connection tgbridge opens.  A subclass
says what to do with each connection (handle(), called on the accepting thread
with the connection's ordinal) - tunnel it, refuse it, stall it; the listener,
the byte pump, the bookkeeping and the teardown are here once.  Threads and
sockets only; every socket it opened is closed by close()."""

import socket
import threading


class Middleman:
    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self.accepted = 0
        self._lock = threading.Lock()
        self._socks = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self.accepted += 1
                n = self.accepted
            self.track(c)
            self.handle(c, n)

    def handle(self, c, n):
        """Connection number `n` (from 1) was accepted: by default served on a
        thread of its own by serve(c)."""
        threading.Thread(target=self.serve, args=(c,), daemon=True).start()

    def serve(self, c):
        raise NotImplementedError

    def track(self, s):
        with self._lock:
            self._socks.append(s)

    def count(self):
        with self._lock:
            return self.accepted

    def tunnel(self, c, up):
        """Relays c <-> up (already connected) until both directions end; runs
        on the calling thread and one more."""
        threading.Thread(target=self.pump, args=(up, c), daemon=True).start()
        self.pump(c, up)

    def tunnel_to(self, c, port):
        """Connects to 127.0.0.1:port and relays c there (see tunnel)."""
        try:
            up = socket.create_connection(("127.0.0.1", port))
        except OSError:
            c.close()
            return
        self.track(up)
        self.tunnel(c, up)

    @staticmethod
    def pump(src, dst):
        """Copies src to dst until src ends, then half-closes dst."""
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
