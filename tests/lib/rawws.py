"""A WebSocket client on a bare socket, for what the websockets library will not do:
hold back its close answer, send unmasked frames, offer other versions, read the
bytes exactly as they came (whole frames or not)."""

import base64
import os
import socket

from harness import T


def upgrade(port, path, version="13", http="1.1", extra=(), rcvbuf=None, timeout=10):
    """Opens a connection and sends the upgrade request; returns (sock, status,
    head text).  version None: no Sec-WebSocket-Version header."""
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(T(timeout))
    s.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    head = "GET %s HTTP/%s\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" \
           "Sec-WebSocket-Key: %s\r\n" % (path, http, key)
    if version is not None:
        head += "Sec-WebSocket-Version: %s\r\n" % version
    for h in extra:
        head += h + "\r\n"
    s.sendall((head + "\r\n").encode())
    return s


def read_head(s):
    """The response head: (status, head text); the bytes after it stay in s.pending."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    text = head.decode("latin-1")
    status = int(text.split(" ", 2)[1]) if text.startswith("HTTP/") else 0
    return status, text, rest


def frame(opcode, payload=b"", fin=True, masked=True):
    if isinstance(payload, str):
        payload = payload.encode()
    b0 = (0x80 if fin else 0) | opcode
    n = len(payload)
    mbit = 0x80 if masked else 0
    if n < 126:
        h = bytes([b0, mbit | n])
    elif n < 65536:
        h = bytes([b0, mbit | 126]) + n.to_bytes(2, "big")
    else:
        h = bytes([b0, mbit | 127]) + n.to_bytes(8, "big")
    if not masked:
        return h + payload
    key = os.urandom(4)
    return h + key + bytes(c ^ key[i % 4] for i, c in enumerate(payload))


def close_frame(code, reason="", masked=True):
    return frame(8, code.to_bytes(2, "big") + reason.encode(), masked=masked)


def parse_frames(data):
    """Server frames (unmasked) in data: ([(opcode, fin, payload)], bytes left over
    that are not a whole frame)."""
    out, i = [], 0
    while i + 2 <= len(data):
        op, fin, n = data[i] & 0x0F, bool(data[i] & 0x80), data[i + 1] & 0x7F
        h = 2
        if n == 126:
            if i + 4 > len(data):
                break
            n, h = int.from_bytes(data[i + 2:i + 4], "big"), 4
        elif n == 127:
            if i + 10 > len(data):
                break
            n, h = int.from_bytes(data[i + 2:i + 10], "big"), 10
        if data[i + 1] & 0x80 or i + h + n > len(data):
            break
        out.append((op, fin, data[i + h:i + h + n]))
        i += h + n
    return out, data[i:]


class Reader:
    """Reads server frames off s, starting with the bytes left after the head."""

    def __init__(self, s, rest=b""):
        self.s, self.buf, self.eof = s, rest, False

    def next(self, timeout=10):
        """The next frame (opcode, fin, payload); None at EOF.  socket.timeout if
        nothing whole arrives within timeout."""
        self.s.settimeout(T(timeout))
        while True:
            frames, _ = parse_frames(self.buf)
            if frames:
                self.buf = self.buf[_frame_len(self.buf):]
                return frames[0]
            if self.eof:
                return None
            try:
                chunk = self.s.recv(1 << 20)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                self.eof = True
                if not self.buf:
                    return None
                continue
            self.buf += chunk

    def at_eof(self, timeout):
        """True if the peer closes TCP within timeout (bytes meanwhile kept)."""
        self.s.settimeout(T(timeout))
        try:
            while True:
                chunk = self.s.recv(1 << 20)
                if not chunk:
                    self.eof = True
                    return True
                self.buf += chunk
        except socket.timeout:
            return False
        except ConnectionResetError:
            self.eof = True
            return True


def _frame_len(data):
    n = data[1] & 0x7F
    if n == 126:
        return 4 + int.from_bytes(data[2:4], "big")
    if n == 127:
        return 10 + int.from_bytes(data[2:10], "big")
    return 2 + n


def close_code(payload):
    return int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
