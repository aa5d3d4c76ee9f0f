"""Shared machinery for the end-to-end suite: a YAML writer, the `Gateway`
process wrapper, raw-socket HTTP helpers and access-log polling.

Everything here is bounded in time: every socket has a timeout, every process
wait has a deadline, and every poll loop gives up after a few seconds, so a
broken gateway makes tests fail rather than hang.
"""

from __future__ import annotations

import gc
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import requests

TOLLGATE_BIN = os.environ.get("TOLLGATE_BIN", "/work/main/target/debug/tollgate")

# Every client request in the suite uses this (connect, read) timeout.
TIMEOUT = (3, 10)


# --------------------------------------------------------------------------
# YAML: a tiny block-style writer, so configs look like what users write.
# Strings are emitted double-quoted (JSON escapes are valid YAML escapes).
# --------------------------------------------------------------------------

def _scalar(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, dict):
        return "{}"
    if isinstance(v, list):
        return "[]"
    return json.dumps(str(v))


def to_yaml(obj: Any, indent: int = 0) -> str:
    pad = "  " * indent
    if isinstance(obj, dict):
        if not obj:
            return pad + "{}\n"
        out = []
        for k, v in obj.items():
            if isinstance(v, (dict, list)) and v:
                out.append(f"{pad}{k}:\n{to_yaml(v, indent + 1)}")
            else:
                out.append(f"{pad}{k}: {_scalar(v)}\n")
        return "".join(out)
    if isinstance(obj, list):
        out = []
        for item in obj:
            if isinstance(item, (dict, list)) and item:
                body = to_yaml(item, indent + 1)
                # The item's first line takes the dash; the rest stay aligned under it.
                out.append(pad + "- " + body[len(pad) + 2:])
            else:
                out.append(f"{pad}- {_scalar(item)}\n")
        return "".join(out)
    return pad + _scalar(obj) + "\n"


def write_atomic(path: Path, text: str) -> None:
    """Replace a file in one step so a watcher never sees it half-written."""
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# --------------------------------------------------------------------------
# Recursive JSON search (tracing may nest fields under "fields").
# --------------------------------------------------------------------------

def find_key(obj: Any, key: str) -> Any:
    if isinstance(obj, dict):
        if key in obj:
            return obj[key]
        for v in obj.values():
            found = find_key(v, key)
            if found is not None:
                return found
    elif isinstance(obj, list):
        for v in obj:
            found = find_key(v, key)
            if found is not None:
                return found
    return None


def _listen_addr(obj: Any, which: str) -> str | None:
    v = find_key(obj, f"listen.{which}")
    if v is None:
        listen = find_key(obj, "listen")
        if isinstance(listen, dict):
            v = listen.get(which)
    return v if isinstance(v, str) else None


def _has_message(obj: Any, text: str) -> bool:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in ("message", "msg") and isinstance(v, str) and text in v:
                return True
            if isinstance(v, (dict, list)) and _has_message(v, text):
                return True
    elif isinstance(obj, list):
        return any(_has_message(v, text) for v in obj)
    return False


# --------------------------------------------------------------------------
# The gateway process.
# --------------------------------------------------------------------------

class GatewayStartError(RuntimeError):
    pass


class Gateway:
    """One `tollgate run` process with its own config file, access log and
    captured stderr. Always killed at fixture teardown."""

    def __init__(self, workdir: Path, config: dict | str, env: dict | None = None,
                 config_path: Path | None = None, start: bool = True):
        self.dir = workdir
        (workdir / "conf").mkdir(parents=True, exist_ok=True)
        (workdir / "logs").mkdir(parents=True, exist_ok=True)
        self.config_path = config_path or (workdir / "conf" / "tollgate.yaml")
        self.access_log = workdir / "logs" / "access.log"
        self.stderr_path = workdir / "logs" / "stderr.log"
        self.stdout_path = workdir / "logs" / "stdout.log"
        self.env = dict(os.environ)
        self.env.update(env or {})
        self.proc: subprocess.Popen | None = None
        self.stderr_lines: list[str] = []
        self._stderr_lock = threading.Lock()
        self.proxy_addr = ""
        self.admin_addr = ""
        self.write_config(config)
        if start:
            self.start()

    # -- config -----------------------------------------------------------
    def render(self, config: dict | str) -> str:
        if isinstance(config, str):
            return config
        cfg = json.loads(json.dumps(config))  # deep copy
        cfg.setdefault("logging", {}).setdefault("access_log", str(self.access_log))
        return to_yaml(cfg)

    def write_config(self, config: dict | str) -> None:
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        target = self.config_path.resolve() if self.config_path.is_symlink() else self.config_path
        write_atomic(target, self.render(config))

    # -- process ----------------------------------------------------------
    def start(self, timeout: float = 15.0) -> None:
        self._stdout = open(self.stdout_path, "wb")
        self.proc = subprocess.Popen(
            [TOLLGATE_BIN, "run", "--config", str(self.config_path),
             "--proxy-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"],
            stdin=subprocess.DEVNULL, stdout=self._stdout, stderr=subprocess.PIPE,
            env=self.env,
        )
        ready = threading.Event()
        self._reader = threading.Thread(target=self._read_stderr, args=(ready,), daemon=True)
        self._reader.start()
        if not ready.wait(timeout):
            self.kill()
            raise GatewayStartError("gateway did not log 'listening' in time:\n" + self.stderr_text())
        if not self.proxy_addr or not self.admin_addr:
            self.kill()
            raise GatewayStartError("gateway exited before listening:\n" + self.stderr_text())

    def _read_stderr(self, ready: threading.Event) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        with open(self.stderr_path, "w") as copy:
            for raw in self.proc.stderr:
                line = raw.decode("utf-8", "replace")
                copy.write(line)
                copy.flush()
                with self._stderr_lock:
                    self.stderr_lines.append(line)
                if not ready.is_set():
                    try:
                        obj = json.loads(line)
                    except ValueError:
                        continue
                    if _has_message(obj, "listening"):
                        proxy, admin = _listen_addr(obj, "proxy"), _listen_addr(obj, "admin")
                        if proxy and admin:
                            self.proxy_addr, self.admin_addr = proxy, admin
                            ready.set()
        ready.set()  # EOF: unblock start(), which then reports the failure

    def stderr_text(self) -> str:
        with self._stderr_lock:
            return "".join(self.stderr_lines)

    def stderr_json(self) -> list[dict]:
        out = []
        for line in self.stderr_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def send_signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        if getattr(self, "_reader", None) is not None:
            self._reader.join(timeout=2)
        if getattr(self, "_stdout", None) is not None:
            self._stdout.close()

    def terminate(self, timeout: float = 10.0) -> int:
        self.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    # -- addresses --------------------------------------------------------
    @property
    def proxy_port(self) -> int:
        return int(self.proxy_addr.rsplit(":", 1)[1])

    @property
    def admin_port(self) -> int:
        return int(self.admin_addr.rsplit(":", 1)[1])

    @property
    def proxy_url(self) -> str:
        return f"http://{self.proxy_addr}"

    @property
    def admin_url(self) -> str:
        return f"http://{self.admin_addr}"

    @property
    def proxies(self) -> dict:
        return {"http": self.proxy_url, "https": self.proxy_url}

    # -- clients ----------------------------------------------------------
    def session(self) -> requests.Session:
        s = requests.Session()
        s.trust_env = False  # only the explicit proxies below, never the environment
        s.proxies = self.proxies
        return s

    def get(self, url: str, **kw) -> requests.Response:
        return self.request("GET", url, **kw)

    def request(self, method: str, url: str, **kw) -> requests.Response:
        kw.setdefault("timeout", TIMEOUT)
        with self.session() as s:
            return s.request(method, url, **kw)

    def route(self, method: str, path: str, **kw) -> requests.Response:
        """A request to the gateway itself (route mode), no proxy."""
        kw.setdefault("timeout", TIMEOUT)
        with requests.Session() as s:
            s.trust_env = False
            return s.request(method, self.proxy_url + path, **kw)

    def admin(self, method: str, path: str, **kw) -> requests.Response:
        kw.setdefault("timeout", TIMEOUT)
        with requests.Session() as s:
            s.trust_env = False
            return s.request(method, self.admin_url + path, **kw)

    def config_version(self, **kw) -> int:
        r = self.admin("GET", "/admin/config", **kw)
        r.raise_for_status()
        return int(r.json()["status"]["version"])

    def reload(self, **kw) -> requests.Response:
        return self.admin("POST", "/admin/reload", **kw)

    # -- access log -------------------------------------------------------
    def access_entries(self) -> list[dict]:
        try:
            text = self.access_log.read_text()
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass  # a line still being written
        return out

    def wait_access(self, pred: Callable[[dict], bool], timeout: float = 5.0) -> dict:
        """The first access-log entry matching `pred`, polling because the log is async."""
        deadline = time.monotonic() + timeout
        while True:
            for e in self.access_entries():
                if pred(e):
                    return e
            if time.monotonic() > deadline:
                raise AssertionError(
                    "no matching access-log entry within %.1fs; entries:\n%s"
                    % (timeout, "\n".join(json.dumps(e) for e in self.access_entries()[-20:])))
            time.sleep(0.05)


def wait_until(pred: Callable[[], bool], timeout: float = 5.0, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return True
        except (requests.RequestException, OSError):
            pass
        time.sleep(interval)
    return False


# --------------------------------------------------------------------------
# Raw HTTP over a socket, for requests real clients refuse to send.
# --------------------------------------------------------------------------

class RawResponse:
    def __init__(self, status: int, headers: dict[str, str], body: bytes):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"RawResponse({self.status}, {self.headers}, {self.body[:300]!r})"


def raw_request(addr: str, data: bytes, timeout: float = 5.0) -> RawResponse:
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the gateway may answer and close before reading everything
        return read_response(sock, method=data.split(b" ", 1)[0].decode())


def read_response(sock: socket.socket, method: str = "GET") -> RawResponse:
    resp = http.client.HTTPResponse(sock, method=method)
    resp.begin()
    headers = {k.lower(): v for k, v in resp.getheaders()}
    body = b"" if method == "CONNECT" and resp.status == 200 else resp.read()
    return RawResponse(resp.status, headers, body)


def connect_tunnel(addr: str, target: str, extra_headers: Iterable[str] = (),
                   timeout: float = 5.0) -> tuple[socket.socket, RawResponse]:
    """Sends CONNECT and reads the answer head. On 200 the socket is the tunnel."""
    host, port = addr.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    sock.settimeout(timeout)
    head = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
    for h in extra_headers:
        head += h + "\r\n"
    sock.sendall((head + "\r\n").encode())
    # Read the head byte by byte so no tunnel bytes are consumed by a buffer.
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(1)
        if not chunk:
            break
        buf += chunk
        if len(buf) > 65536:
            break
    head_text, _, _ = buf.partition(b"\r\n\r\n")
    lines = head_text.decode("latin-1").split("\r\n")
    m = re.match(r"HTTP/1\.[01] (\d{3})", lines[0] if lines else "")
    status = int(m.group(1)) if m else 0
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    body = b""
    if status != 200:
        n = int(headers.get("content-length", "0") or 0)
        while len(body) < n:
            chunk = sock.recv(n - len(body))
            if not chunk:
                break
            body += chunk
    return sock, RawResponse(status, headers, body)


# --------------------------------------------------------------------------
# Assertions on gateway-generated errors.
# --------------------------------------------------------------------------

PROBLEM_KEYS = {"type", "title", "status", "detail", "code", "request_id"}


def assert_problem(resp, status: int, code: str) -> dict:
    """A response Tollgate generated itself: status, `tollgate-error` header and
    an RFC 9457 body whose request_id matches the `x-request-id` header."""
    if isinstance(resp, RawResponse):
        st, headers, body = resp.status, resp.headers, resp.body
    else:
        st, headers, body = resp.status_code, {k.lower(): v for k, v in resp.headers.items()}, resp.content
    detail = f"status={st} headers={headers} body={body[:500]!r}"
    assert st == status, detail
    assert headers.get("tollgate-error") == code, detail
    assert headers.get("content-type", "").startswith("application/problem+json"), detail
    problem = json.loads(body)
    assert PROBLEM_KEYS <= set(problem), detail
    assert problem["code"] == code, detail
    assert problem["status"] == status, detail
    rid = headers.get("x-request-id")
    assert rid, "x-request-id missing on a gateway error: " + detail
    assert problem["request_id"] == rid, detail
    return problem


def echo_headers(resp) -> dict[str, str]:
    """Lower-cased headers the echo upstream saw (last one wins)."""
    return {k.lower(): v for k, v in resp.json()["headers"]}


def metric_value(metrics_text: str, name: str, **labels: str) -> float | None:
    """Sum of samples of `name` whose labels include all of `labels`."""
    total = None
    for line in metrics_text.splitlines():
        if not line.startswith(name):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total = (total or 0.0) + float(m.group(4))
    return total


def base_config(allow: Iterable[str] = ("127.0.0.1/32",), **extra: Any) -> dict:
    """A config whose network guard lets loopback upstreams through (they are
    blocked by default), plus any top-level sections given."""
    cfg: dict[str, Any] = {"network_guard": {"allow": list(allow)}}
    cfg.update(extra)
    return cfg


def get_and_close(session: requests.Session, url: str, **kw) -> tuple[int, dict, bytes]:
    """GET, then drop every reference to the connection so the client really
    closes it: a CONNECT tunnel is only logged once it ends, and requests keeps
    the socket alive for as long as the Response object lives."""
    kw.setdefault("timeout", TIMEOUT)
    r = session.get(url, **kw)
    out = (r.status_code, dict(r.headers), r.content)
    r.close()
    del r
    session.close()
    gc.collect()
    return out
