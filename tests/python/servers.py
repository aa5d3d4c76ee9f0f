"""Loopback test servers: an echo HTTP upstream (plain and TLS), a test CA made
with the `openssl` CLI, and a minimal UDP DNS server with crafted answers."""

from __future__ import annotations

import json
import socket
import ssl
import struct
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

BIG_PATTERN = b"0123456789abcdef"


def big_body(n: int) -> bytes:
    return (BIG_PATTERN * (n // len(BIG_PATTERN) + 1))[:n]


class EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "echo-upstream"

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _read_body(self) -> bytes:
        te = self.headers.get("Transfer-Encoding", "")
        if "chunked" in te.lower():
            out = b""
            while True:
                size_line = self.rfile.readline(1024)
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    # trailers until the empty line
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline(8)
        n = int(self.headers.get("Content-Length", "0") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, status: int, body: bytes, ctype: str = "application/json", extra=()) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Upstream", self.server.name)
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def handle_any(self) -> None:
        body = self._read_body()
        record = {
            "method": self.command,
            "path": self.path,
            "headers": [[k, v] for k, v in self.headers.items()],
            "body": body.decode("utf-8", "replace"),
            "server": self.server.name,
        }
        self.server.requests.append(record)
        parts = urlsplit(self.path)
        q = parse_qs(parts.query)
        p = parts.path
        if p.endswith("/slow"):
            time.sleep(int(q.get("ms", ["1000"])[0]) / 1000.0)
        if "/status/" in p:
            code = int(p.rsplit("/", 1)[1])
            return self._send(code, f"status {code}".encode(), "text/plain",
                              extra=[("X-Status-Echo", str(code))])
        if p.endswith("/big"):
            return self._send(200, big_body(int(q.get("bytes", ["1024"])[0])), "application/octet-stream")
        if p.endswith("/hop"):
            # Hop-by-hop headers an upstream may send; the client must not see them.
            return self._send(200, b"hop", "text/plain", extra=[
                ("Connection", "X-Up-Hop"), ("X-Up-Hop", "1"), ("Keep-Alive", "timeout=5"),
                ("X-End-To-End", "kept")])
        self._send(200, json.dumps(record).encode(),
                   extra=[("X-Custom-Resp", "untouched"), ("Set-Cookie", "a=b; Path=/")])

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = handle_any


class EchoServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, name: str = "plain", ssl_ctx: ssl.SSLContext | None = None):
        super().__init__(("127.0.0.1", 0), EchoHandler)
        self.name = name
        self.ssl_ctx = ssl_ctx
        self.requests: list[dict] = []
        self.connections = 0
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def base(self) -> str:
        scheme = "https" if self.ssl_ctx else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def start(self) -> "EchoServer":
        self._thread.start()
        return self

    def finish_request(self, request, client_address):
        # Runs in the per-connection thread: the TLS handshake happens here, so
        # a stalled client never blocks the accept loop.
        self.connections += 1
        request.settimeout(10)
        if self.ssl_ctx is None:
            return super().finish_request(request, client_address)
        try:
            tls = self.ssl_ctx.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)
        except (ssl.SSLError, OSError):
            pass
        finally:
            try:
                tls.close()
            except OSError:
                pass

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)


# --------------------------------------------------------------------------
# Test CA.
# --------------------------------------------------------------------------

def make_test_ca(d: Path) -> dict[str, Path]:
    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30, cwd=d)

    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=Tollgate Test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (d / "ext.cnf").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "authorityKeyIdentifier=keyid\n"
        "subjectKeyIdentifier=hash\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf")
    return {"ca": d / "ca.pem", "cert": d / "server.pem", "key": d / "server.key"}


def tls_server_context(certs: dict[str, Path]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(certs["cert"]), str(certs["key"]))
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


# --------------------------------------------------------------------------
# DNS: answers A/AAAA from a dict, NXDOMAIN for unknown names.
# --------------------------------------------------------------------------

QTYPE_A, QTYPE_AAAA = 1, 28


class DnsServer:
    def __init__(self, records: dict[str, dict[str, list[str]]]):
        self.records = {k.lower().rstrip("."): v for k, v in records.items()}
        self.queries: list[tuple[str, int]] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    @property
    def addr(self) -> str:
        host, port = self.sock.getsockname()
        return f"{host}:{port}"

    def start(self) -> "DnsServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                answer = self.answer(data)
            except (IndexError, struct.error, UnicodeDecodeError):
                answer = None
            if answer:
                try:
                    self.sock.sendto(answer, peer)
                except OSError:
                    pass

    def answer(self, data: bytes) -> bytes | None:
        if len(data) < 12:
            return None
        qid, flags, qdcount = struct.unpack("!HHH", data[:6])
        if qdcount < 1 or flags & 0x8000:
            return None
        pos, labels = 12, []
        while True:
            n = data[pos]
            pos += 1
            if n == 0:
                break
            if n & 0xC0:
                return None  # compression is never used in a question
            labels.append(data[pos:pos + n].decode("ascii"))
            pos += n
        qtype, _qclass = struct.unpack("!HH", data[pos:pos + 4])
        pos += 4
        question = data[12:pos]
        name = ".".join(labels).lower()
        self.queries.append((name, qtype))

        entry = self.records.get(name)
        rdatas: list[bytes] = []
        if entry is None:
            rcode = 3  # NXDOMAIN
        else:
            rcode = 0
            if qtype == QTYPE_A:
                rdatas = [socket.inet_pton(socket.AF_INET, ip) for ip in entry.get("A", [])]
            elif qtype == QTYPE_AAAA:
                rdatas = [socket.inet_pton(socket.AF_INET6, ip) for ip in entry.get("AAAA", [])]
        # QR, opcode copied, AA, RD copied, RA, rcode.
        rflags = 0x8000 | (flags & 0x7800) | 0x0400 | (flags & 0x0100) | 0x0080 | rcode
        out = struct.pack("!HHHHHH", qid, rflags, 1, len(rdatas), 0, 0) + question
        for rd in rdatas:
            # Name as a pointer to the question (offset 12), class IN, TTL 5s.
            out += struct.pack("!HHHIH", 0xC00C, qtype, 1, 5, len(rd)) + rd
        return out
