"""Retries, circuit breaker and provider back-off end to end, through a real
`tollgate run` and `requests`, against a loopback upstream that answers with
a scripted sequence of statuses."""

from __future__ import annotations

import collections
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from helpers import assert_problem, base_config, metric_value, wait_until


class ScriptedHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _any(self):
        n = int(self.headers.get("Content-Length", "0") or 0)
        body = self.rfile.read(n) if n else b""
        srv = self.server
        with srv.lock:
            srv.seen.append((self.command, body))
            step = srv.script.popleft() if srv.script else (200, {})
        code, headers = step
        out = f"answer {code}".encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(out)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_PUT = _any


@pytest.fixture
def scripted():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), ScriptedHandler)
    srv.daemon_threads = True
    srv.lock = threading.Lock()
    srv.script = collections.deque()
    srv.seen = []
    srv.base = f"http://127.0.0.1:{srv.server_address[1]}"
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def api(**extra):
    return {"name": "flaky", "hosts": ["127.0.0.1"], **extra}


def test_retries_succeed_and_post_needs_an_idempotency_key(gateway, scripted):
    retry = {"attempts": 3, "backoff": "5ms..20ms", "on": [503, "connect", "reset"]}
    gw = gateway(base_config(apis=[api(retry=retry)]))
    scripted.script.extend([(503, {}), (503, {}), (200, {})])
    r = gw.get(f"{scripted.base}/a")
    assert r.status_code == 200 and r.text == "answer 200"
    assert len(scripted.seen) == 3
    e = gw.wait_access(lambda e: e.get("path") == "/a")
    assert e["attempts"] == 3

    # POST without Idempotency-Key: tried once, the upstream's 503 comes back.
    scripted.script.extend([(503, {}), (200, {})])
    r = gw.request("POST", f"{scripted.base}/pay", data=b"amount=5")
    assert r.status_code == 503 and "tollgate-error" not in r.headers
    assert len(scripted.seen) == 4
    scripted.script.clear()

    # With the key it is retried, and the body arrives identical each time.
    scripted.script.extend([(503, {}), (200, {})])
    r = gw.request("POST", f"{scripted.base}/pay", data=b"amount=5",
                   headers={"Idempotency-Key": "order-7"})
    assert r.status_code == 200
    assert scripted.seen[4:] == [("POST", b"amount=5"), ("POST", b"amount=5")]
    metrics = gw.admin("GET", "/metrics").text
    assert metric_value(metrics, "tollgate_upstream_retries_total", api="flaky", reason="503") == 3


def test_breaker_and_provider_backoff_answer_locally(gateway, scripted):
    gw = gateway(base_config(apis=[api(breaker={"consecutive_failures": 2, "open_for": "1s"})]))
    scripted.script.extend([(500, {}), (500, {})])
    assert gw.get(f"{scripted.base}/b").status_code == 500
    assert gw.get(f"{scripted.base}/b").status_code == 500
    r = gw.get(f"{scripted.base}/b")
    assert_problem(r, 503, "circuit_open")
    assert r.headers["Retry-After"] == "1"
    assert len(scripted.seen) == 2
    time.sleep(1.1)
    # The probe succeeds and closes the breaker; its answer says the quota is spent.
    scripted.script.append((200, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "1"}))
    assert gw.get(f"{scripted.base}/b").status_code == 200
    r = gw.get(f"{scripted.base}/b")
    assert_problem(r, 429, "provider_backoff")
    assert r.headers["Retry-After"] == "1"
    assert len(scripted.seen) == 3
    time.sleep(1.1)
    assert gw.get(f"{scripted.base}/b").status_code == 200
    metrics = gw.admin("GET", "/metrics").text
    assert metric_value(metrics, "tollgate_breaker_state", api="flaky") == 0
    assert metric_value(metrics, "tollgate_breaker_transitions_total", api="flaky", to="open") == 1
    assert metric_value(metrics, "tollgate_provider_backoff_total", api="flaky") == 1
    e = gw.wait_access(lambda e: e.get("reason") == "circuit_open")
    assert e["status"] == 503 and e["attempts"] == 0


class KeyedHandler(BaseHTTPRequestHandler):
    """Answers 429 `Retry-After: 3` to requests whose `x-key` is in `server.refuse`, 200 to
    the rest; records every request's key."""
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        key = self.headers.get("x-key", "")
        srv = self.server
        with srv.lock:
            srv.keys.append(key)
            refused = key in srv.refuse
        out = b"slow down" if refused else b"ok"
        self.send_response(429 if refused else 200)
        if refused:
            self.send_header("Retry-After", "3")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


@pytest.fixture
def keyed():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), KeyedHandler)
    srv.daemon_threads = True
    srv.lock = threading.Lock()
    srv.refuse = set()
    srv.keys = []
    srv.base = f"http://127.0.0.1:{srv.server_address[1]}"
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_a_key_backoff_is_shared_across_gateways(gateway, keyed):
    """Two gateways sharing Redis; the provider answers 429 + Retry-After for key a only.
    The gateway that met it parks key a, and so does the other one, which then sends every
    request with key b (key a would still get the 429)."""
    cfg = base_config(
        state={"redis": {"url": "redis://127.0.0.1:6379/0",
                         "prefix": f"tg-keyboff-{uuid.uuid4().hex[:8]}"}},
        apis=[{"name": "multi", "hosts": ["127.0.0.1"], "credentials": {"keys": [
            {"name": "a", "header": "x-key", "value": "${env:KA}"},
            {"name": "b", "header": "x-key", "value": "${env:KB}"}]}}])
    env = {"KA": "key-a", "KB": "key-b"}
    g1, g2 = gateway(cfg, env=env), gateway(cfg, env=env)
    # Gateway 2 has served the API, so it follows the shared back-offs.
    assert g2.get(f"{keyed.base}/warm").status_code == 200
    keyed.refuse.add("key-a")
    # Round robin: key a comes up within two requests on gateway 1.
    assert 429 in [g1.get(f"{keyed.base}/g1").status_code for _ in range(2)]

    def key_backoff(gw):
        listing = gw.admin("GET", "/admin/limits").json()
        api = next(a for a in listing["apis"] if a["name"] == "multi")
        return api["key_backoff_ms"]

    assert key_backoff(g1)["a"] is not None
    assert wait_until(lambda: key_backoff(g2)["a"] is not None, timeout=5), key_backoff(g2)
    assert key_backoff(g2)["b"] is None
    before = len(keyed.keys)
    for _ in range(4):
        r = g2.get(f"{keyed.base}/g2")
        assert r.status_code == 200, r.text
    assert keyed.keys[before:] == ["key-b"] * 4
