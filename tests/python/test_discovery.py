"""API discovery end to end: traffic with ids in its paths to an upstream that
announces its rate limit produces the expected endpoint patterns and counts in
`GET /admin/discovery`; `tollgate discover` prints them; `tollgate discover
--suggest` prints a policy that `tollgate validate` accepts and that, loaded
with `default_action: deny`, lets the same traffic through and nothing else."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from helpers import assert_problem, base_config, connect_tunnel, metric_value

CONSUMER = {"name": "web", "identify": {"header": {"name": "x-team", "value": "web"}}}

# (method, path) sent, and the pattern each must be recorded under.
TRAFFIC = [
    ("GET", "/v1/users/1", "/v1/users/{id}"),
    ("GET", "/v1/users/2?expand=orders", "/v1/users/{id}"),
    ("GET", "/v1/users/3", "/v1/users/{id}"),
    ("GET", "/v1/users/42/orders/9f8c0e1d2a3b4c5d", "/v1/users/{id}/orders/{id}"),
    ("GET", "/v1/users/3f2504e0-4f89-11d3-9a0c-0305e82c3301/orders/77",
     "/v1/users/{id}/orders/{id}"),
    ("GET", "/v1/users?page=2", "/v1/users"),
    ("POST", "/v1/users", "/v1/users"),
    ("DELETE", "/v1/users/7", "/v1/users/{id}"),
]


class RateLimitedHandler(BaseHTTPRequestHandler):
    """Answers every request 200 with GitHub-style rate-limit headers."""
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def handle_any(self):
        n = int(self.headers.get("Content-Length", "0") or 0)
        if n:
            self.rfile.read(n)
        self.server.seen.append((self.command, self.path))
        body = json.dumps({"path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-RateLimit-Limit", "5000")
        self.send_header("X-RateLimit-Remaining", str(5000 - len(self.server.seen)))
        self.send_header("X-RateLimit-Reset", "3500")
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = handle_any


@pytest.fixture
def limited_upstream():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), RateLimitedHandler)
    srv.daemon_threads = True
    srv.seen = []
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def drive(gw, port):
    for method, path, _ in TRAFFIC:
        r = gw.request(method, f"http://127.0.0.1:{port}{path}", headers={"x-team": "web"})
        assert r.status_code == 200, (method, path, r.status_code, r.text)


def endpoints(doc, host="127.0.0.1"):
    hosts = {h["host"]: h for h in doc["hosts"]}
    assert host in hosts, doc
    return {(e["method"], e["pattern"]): e for e in hosts[host]["endpoints"]}


def test_discovery_patterns_and_suggested_policy(gateway, limited_upstream, run_cli, tmp_path):
    port = limited_upstream.server_address[1]
    gw = gateway(base_config(consumers=[CONSUMER]))
    drive(gw, port)

    want = {}
    for method, _, pattern in TRAFFIC:
        want[(method, pattern)] = want.get((method, pattern), 0) + 1
    # Recorded at body end: the last response may still be finishing.
    doc = wait_endpoints(gw, len(want))
    for _ in range(50):
        if sum(e["count"] for e in endpoints(doc).values()) == len(TRAFFIC):
            break
        threading.Event().wait(0.1)
        doc = gw.admin("GET", "/admin/discovery").json()
    eps = endpoints(doc)
    assert {k: e["count"] for k, e in eps.items()} == want, doc
    users = eps[("GET", "/v1/users/{id}")]
    assert users["status"] == {"2xx": 3}
    assert users["consumers"] == ["web"]
    assert users["kind"] == "forward"
    assert users["denied"] == 0
    assert users["latency_ms"]["max"] >= users["latency_ms"]["min"] > 0
    assert users["rate_limit"]["limit"] == 5000
    assert users["rate_limit"]["max_reset_seconds"] == 3500
    metrics = gw.admin("GET", "/metrics").text
    assert metric_value(metrics, "tollgate_discovery_endpoints") == len(want)

    admin = ["--admin", gw.admin_url]
    table = run_cli("discover", *admin)
    assert table.returncode == 0, table.stderr
    row = next(l for l in table.stdout.splitlines() if "/v1/users/{id}/orders/{id}" in l)
    assert row.split()[:3] == ["127.0.0.1", "GET", "/v1/users/{id}/orders/{id}"], table.stdout
    assert "5000/1h" in table.stdout

    sug = run_cli("discover", "--suggest", *admin)
    assert sug.returncode == 0, sug.stderr
    suggested = tmp_path / "suggested.yaml"
    suggested.write_text(sug.stdout)
    valid = run_cli("validate", suggested)
    assert valid.returncode == 0, (sug.stdout, valid.stderr)

    policy = yaml.safe_load(sug.stdout)
    assert policy["default_action"] == "report"
    [api] = policy["apis"]
    assert api["hosts"] == ["127.0.0.1"]
    assert api["limits"] == [{"name": "provider", "requests": 5000, "per": "1h"}]
    allowed = {(m, p) for rule in api["allow"] for m in rule["methods"] for p in rule["paths"]}
    assert allowed == {
        ("GET", "/v1/users/{id}"), ("DELETE", "/v1/users/{id}"),
        ("GET", "/v1/users/{id}/orders/{id2}"),
        ("GET", "/v1/users"), ("POST", "/v1/users"),
    }

    # Loaded as the configuration, strict: the same traffic passes, nothing else does.
    policy["default_action"] = "deny"
    policy["network_guard"] = {"allow": ["127.0.0.1/32"]}
    enforced = gateway(yaml.safe_dump(policy))
    before = len(limited_upstream.seen)
    drive(enforced, port)
    assert len(limited_upstream.seen) == before + len(TRAFFIC)
    for method, path in [("PUT", "/v1/users/1"), ("GET", "/v1/admin"), ("GET", "/v2/users/1")]:
        r = enforced.request(method, f"http://127.0.0.1:{port}{path}")
        assert_problem(r, 403, "endpoint_not_allowed")
    assert len(limited_upstream.seen) == before + len(TRAFFIC)


def wait_endpoints(gw, n):
    """The discovery table once it holds `n` endpoints (recording happens at body end)."""
    doc = {}
    for _ in range(50):
        doc = gw.admin("GET", "/admin/discovery").json()
        if doc["endpoints"] >= n:
            return doc
        threading.Event().wait(0.1)
    raise AssertionError(doc)


def test_discovery_records_denials_and_tunnels_and_can_be_disabled(gateway, limited_upstream):
    port = limited_upstream.server_address[1]
    gw = gateway(base_config(default_action="deny"))
    r = gw.get(f"http://127.0.0.1:{port}/v1/things/123")
    assert_problem(r, 403, "destination_not_allowed")
    # A tunnel is a host-level entry (method CONNECT, no path); this one is refused
    # (the port is not in connect.allowed_ports) and still recorded.
    sock, resp = connect_tunnel(gw.proxy_addr, f"127.0.0.1:{port}")
    sock.close()
    assert resp.status == 403
    eps = endpoints(wait_endpoints(gw, 2))
    assert set(eps) == {("GET", "/v1/things/{id}"), ("CONNECT", "")}
    ep = eps[("GET", "/v1/things/{id}")]
    assert ep["denied"] == 1 and ep["status"] == {"4xx": 1}
    assert ep["rate_limit"] is None
    tunnel = eps[("CONNECT", "")]
    assert tunnel["kind"] == "connect" and tunnel["denied"] == 1
    assert limited_upstream.seen == []

    off = gateway(base_config(discovery={"enabled": False}))
    assert off.get(f"http://127.0.0.1:{port}/v1/users/1").status_code == 200
    doc = off.admin("GET", "/admin/discovery").json()
    assert doc["enabled"] is False and doc["hosts"] == []
