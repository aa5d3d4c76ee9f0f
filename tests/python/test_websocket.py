"""WebSocket upgrades through the gateway, end to end: a small WebSocket echo server on
loopback (handshake and framing written here with sockets, hashlib and base64), a raw-socket
client that upgrades through a route and through the forward proxy (absolute-form), exchanges
text frames and gets them echoed; a denied path gets the normal 403 without upgrading."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct
import threading

from helpers import base_config, metric_value, wait_until

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC11B65"
TIMEOUT = 5.0


def _accept_value(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """Reads up to the end of an HTTP head; returns (head, bytes read past it)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            break
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def _recv_exact(sock: socket.socket, n: int, pending: bytearray) -> bytes:
    while len(pending) < n:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed mid-frame")
        pending += chunk
    out = bytes(pending[:n])
    del pending[:n]
    return out


def read_frame(sock: socket.socket, pending: bytearray) -> tuple[int, bytes]:
    b0, b1 = _recv_exact(sock, 2, pending)
    opcode, masked, n = b0 & 0x0F, b1 & 0x80, b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", _recv_exact(sock, 2, pending))
    elif n == 127:
        (n,) = struct.unpack("!Q", _recv_exact(sock, 8, pending))
    mask = _recv_exact(sock, 4, pending) if masked else b""
    data = _recv_exact(sock, n, pending)
    if masked:
        data = bytes(c ^ mask[i % 4] for i, c in enumerate(data))
    return opcode, data


def frame(opcode: int, data: bytes, mask: bool) -> bytes:
    head = bytes([0x80 | opcode])
    n = len(data)
    m = 0x80 if mask else 0
    if n < 126:
        head += bytes([m | n])
    elif n < 65536:
        head += bytes([m | 126]) + struct.pack("!H", n)
    else:
        head += bytes([m | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + data
    key = os.urandom(4)
    return head + key + bytes(c ^ key[i % 4] for i, c in enumerate(data))


class WsEchoServer:
    """Answers the WebSocket handshake and echoes text/binary frames until a close frame."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.heads: list[bytes] = []
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket):
        conn.settimeout(TIMEOUT)
        with conn:
            head, rest = _read_head(conn)
            self.heads.append(head)
            fields = {}
            for line in head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                fields[k.strip().lower()] = v.strip()
            key = fields.get(b"sec-websocket-key")
            if fields.get(b"upgrade", b"").lower() != b"websocket" or not key:
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                return
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + _accept_value(key)
                         + b"\r\n\r\n")
            pending = bytearray(rest)
            try:
                while True:
                    op, data = read_frame(conn, pending)
                    if op == 0x8:
                        conn.sendall(frame(0x8, data, mask=False))
                        return
                    conn.sendall(frame(op, b"echo:" + data, mask=False))
            except (ConnectionError, OSError):
                return

    def stop(self):
        self._stop = True
        self.sock.close()


def ws_connect(port: int, target: str, host: str) -> tuple[socket.socket, int, bytes, bytearray]:
    """Sends the upgrade request; returns (socket, status, head, bytes past the head)."""
    key = base64.b64encode(os.urandom(16))
    s = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    s.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n".encode()
              + b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
              + b"Sec-WebSocket-Key: " + key + b"\r\n\r\n")
    head, rest = _read_head(s)
    status = int(head.split(b" ", 2)[1])
    if status == 101:
        assert _accept_value(key) in head, head
    return s, status, head, bytearray(rest)


def echo_round_trips(s: socket.socket, pending: bytearray):
    for msg in (b"hello", b"x" * 300, "\u00e9t\u00e9".encode()):
        s.sendall(frame(0x1, msg, mask=True))
        op, data = read_frame(s, pending)
        assert (op, data) == (0x1, b"echo:" + msg)
    s.sendall(frame(0x8, b"\x03\xe8", mask=True))
    op, _ = read_frame(s, pending)
    assert op == 0x8
    s.close()


def test_websocket_echo_through_a_route_and_denied_path(gateway):
    ws = WsEchoServer()
    try:
        gw = gateway(base_config(
            apis=[{"name": "chat", "route": "/chat", "upstream": f"http://127.0.0.1:{ws.port}",
                   "allow": [{"methods": ["GET"], "paths": ["/live/**"]}]}]))
        s, status, head, pending = ws_connect(gw.proxy_port, "/chat/live/room1", gw.proxy_addr)
        assert status == 101, head
        assert b"upgrade: websocket" in head.lower()
        echo_round_trips(s, pending)
        # The upstream saw the upgrade with the route's path.
        up = ws.heads[0].lower()
        assert up.startswith(b"get /live/room1 http/1.1"), up
        assert b"upgrade: websocket" in up and b"connection: upgrade" in up

        # A path the API does not allow: the normal 403, no upgrade, nothing upstream.
        s, status, head, _ = ws_connect(gw.proxy_port, "/chat/admin", gw.proxy_addr)
        s.close()
        assert status == 403, head
        assert b"application/problem+json" in head.lower()
        assert len(ws.heads) == 1

        # One access-log line for the upgraded connection, with bytes both ways; metrics.
        e = gw.wait_access(lambda e: e.get("path") == "/chat/live/room1")
        assert e["status"] == 101 and e["api"] == "chat"
        assert e["bytes_in"] > 0 and e["bytes_out"] > 0
        text = gw.admin("GET", "/metrics").text
        assert metric_value(text, "tollgate_websocket_upgrades_total", api="chat") == 1
    finally:
        ws.stop()


def test_websocket_through_the_forward_proxy(gateway):
    ws = WsEchoServer()
    try:
        gw = gateway(base_config(apis=[{"name": "ws", "hosts": ["127.0.0.1"]}]))
        url = f"http://127.0.0.1:{ws.port}/socket"
        s, status, head, pending = ws_connect(gw.proxy_port, url, f"127.0.0.1:{ws.port}")
        assert status == 101, head
        echo_round_trips(s, pending)
        assert wait_until(lambda: any(e.get("status") == 101 for e in gw.access_entries()))
    finally:
        ws.stop()


def test_upgrade_to_a_non_websocket_upstream_is_a_plain_response(gateway, upstream):
    """An upstream that does not switch answers normally; the client is not upgraded."""
    gw = gateway(base_config(apis=[{"name": "echo", "route": "/e", "upstream": upstream.base}]))
    s, status, head, _ = ws_connect(gw.proxy_port, "/e/x", gw.proxy_addr)
    s.close()
    assert status == 200, head
    assert b"upgrade:" not in head.lower()
