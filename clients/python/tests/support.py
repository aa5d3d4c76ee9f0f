"""Test machinery: a gateway on a fixed port, a fake clock for the breaker,
and one wrapper over the three client flavours so every scenario runs with
requests, httpx sync and httpx async."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
import time

import httpx
import requests

from helpers import TOLLGATE_BIN, Gateway, GatewayStartError, metric_value
from servers import EchoServer

from tollgate_client import Config, Core
from tollgate_client import httpx_transport, requests_adapter

TIMEOUT = (3, 10)
KINDS = ["requests", "httpx", "httpx_async"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeClock:
    """Monotonic time the test moves by hand, so the breaker's cool-down is
    crossed exactly when the test says, never by waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FixedGateway(Gateway):
    """helpers.Gateway listening on a fixed proxy port, so a client configured
    with its URL finds it again after a kill and restart."""

    def __init__(self, workdir, config, port: int, env=None):
        self.port = port
        super().__init__(workdir, config, env=env)

    def start(self, timeout: float = 15.0) -> None:
        self.proxy_addr = self.admin_addr = ""
        with self._stderr_lock:
            self.stderr_lines = []
        self._stdout = open(self.stdout_path, "ab")
        self.proc = subprocess.Popen(
            [TOLLGATE_BIN, "run", "--config", str(self.config_path),
             "--proxy-listen", f"127.0.0.1:{self.port}", "--admin-listen", "127.0.0.1:0"],
            stdin=subprocess.DEVNULL, stdout=self._stdout, stderr=subprocess.PIPE, env=self.env,
        )
        ready = threading.Event()
        self._reader = threading.Thread(target=self._read_stderr, args=(ready,), daemon=True)
        self._reader.start()
        if not ready.wait(timeout) or not self.proxy_addr:
            self.kill()
            raise GatewayStartError("gateway did not start:\n" + self.stderr_text())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests_total(self) -> float:
        return metric_value(self.admin("GET", "/metrics").text, "tollgate_requests_total") or 0.0


class Resp:
    def __init__(self, status: int, headers, body: bytes):
        self.status = status
        self.headers = {k.lower(): v for k, v in headers.items()}
        self.body = body

    def __repr__(self) -> str:
        return f"Resp({self.status}, {self.headers}, {self.body[:200]!r})"


class Client:
    """One flavour of client over a shared Core; `request` returns a Resp or
    raises the library's own exception."""

    def __init__(self, kind: str, config: Config, verify=True):
        self.kind = kind
        self.core = Core(config)
        if kind == "requests":
            self.s = requests_adapter.session(core=self.core)
            self.s.trust_env = False
            self.s.verify = verify
        elif kind == "httpx":
            self.c = httpx_transport.client(core=self.core, transport_kw={"verify": verify},
                                            trust_env=False, timeout=httpx.Timeout(10, connect=3))
        else:
            self.loop = asyncio.new_event_loop()
            self.c = httpx_transport.async_client(core=self.core, transport_kw={"verify": verify},
                                                  trust_env=False,
                                                  timeout=httpx.Timeout(10, connect=3))

    def request(self, method: str, url: str, read_timeout: float | None = None, **kw) -> Resp:
        if read_timeout is not None and self.kind != "requests":
            kw["timeout"] = httpx.Timeout(read_timeout, connect=3)
        if self.kind == "requests":
            timeout = TIMEOUT if read_timeout is None else (TIMEOUT[0], read_timeout)
            r = self.s.request(method, url, timeout=timeout, **kw)
            return Resp(r.status_code, r.headers, r.content)
        if self.kind == "httpx":
            r = self.c.request(method, url, **kw)
            return Resp(r.status_code, r.headers, r.content)
        r = self.loop.run_until_complete(self.c.request(method, url, **kw))
        return Resp(r.status_code, r.headers, r.content)

    def stats(self) -> dict:
        return self.core.stats.snapshot()

    def close(self) -> None:
        if getattr(self, "_closed", False):
            return
        self._closed = True
        if self.kind == "requests":
            self.s.close()
        elif self.kind == "httpx":
            self.c.close()
        else:
            self.loop.run_until_complete(self.c.aclose())
            self.loop.close()


# Exceptions any flavour raises when the connection broke mid-request.
BROKEN = (requests.exceptions.ConnectionError, httpx.TransportError)


def wait_for(pred, what: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class BlackHole:
    """A loopback address that accepts no connection: a listening socket with a
    backlog of 0 whose single queue slot is taken, so a client's SYN is dropped
    and its connect times out (a gateway that is up but hung, or firewalled)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self._fill: list[socket.socket] = []
        for _ in range(8):
            c = socket.socket()
            c.settimeout(0.3)
            try:
                c.connect(("127.0.0.1", self.port))
            except OSError:
                c.close()
                break
            self._fill.append(c)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        for c in self._fill:
            c.close()
        self.sock.close()


class QuietEchoServer(EchoServer):
    """The suite's echo upstream, minus the traceback it prints when a stalled
    response is written to a peer these tests killed on purpose."""

    def handle_error(self, request, client_address):
        import sys

        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)
