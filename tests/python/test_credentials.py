"""Credentials injection and header rules, end to end with `requests`: the
upstream gets Tollgate's key and never the caller's, OAuth tokens are fetched
once for concurrent callers, keys rotate, a missing secret at reload keeps the
old configuration serving, and no secret appears in logs, metrics, error
bodies or `tollgate explain`."""

from __future__ import annotations

import json
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from helpers import TOLLGATE_BIN, assert_problem, base_config, echo_headers, metric_value

SECRET = "sk-live-py-7c1d9e2b5a"
CLIENT_SECRET = "cs-py-3f8a6b0d4e"


class TokenServer(ThreadingHTTPServer):
    """An OAuth token endpoint: answers `statuses` in order (the last repeats)."""

    daemon_threads = True

    def __init__(self, statuses=(200,), expires_in=3600):
        super().__init__(("127.0.0.1", 0), TokenHandler)
        self.statuses = list(statuses)
        self.expires_in = expires_in
        self.calls = 0
        self.lock = threading.Lock()
        self.seen: list[tuple[str, str]] = []
        self._t = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._t.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/token"

    def stop(self):
        self.shutdown()
        self.server_close()


class TokenHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0") or 0)).decode()
        srv = self.server
        with srv.lock:
            n = srv.calls
            srv.calls += 1
            srv.seen.append((self.headers.get("Authorization", ""), body))
        # Slow enough that concurrent first requests overlap with the fetch.
        threading.Event().wait(0.2)
        status = srv.statuses[min(n, len(srv.statuses) - 1)]
        out = json.dumps({"access_token": f"tok-{n}", "token_type": "Bearer",
                          "expires_in": srv.expires_in} if status == 200 else {"error": "server_error"}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


@pytest.fixture
def token_server():
    servers = []

    def make(**kw):
        s = TokenServer(**kw)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.stop()


def test_injected_header_replaces_the_callers(gateway, upstream):
    cfg = base_config(apis=[{"name": "echo", "hosts": ["127.0.0.1"],
                             "credentials": {"header": "Authorization", "value": "Bearer ${env:ECHO_KEY}"},
                             "headers": {"request": {"set": {"x-who": "{consumer}@{api}"}, "remove": ["x-drop"]},
                                         "response": {"remove": ["set-cookie"], "set": {"x-via": "tollgate"}}}}])
    gw = gateway(cfg, env={"ECHO_KEY": SECRET})
    r = gw.get(f"{upstream.base}/x", headers={"Authorization": "Bearer caller", "x-drop": "1"})
    assert r.status_code == 200, r.text
    seen = echo_headers(r)
    assert seen["authorization"] == f"Bearer {SECRET}"
    assert "x-drop" not in seen
    assert seen["x-who"] == "anonymous@echo"
    assert r.headers["x-via"] == "tollgate"
    assert "set-cookie" not in r.headers
    entry = gw.wait_access(lambda e: e.get("api") == "echo")
    assert entry["credential"] == "default"


def test_oauth_token_fetched_once_for_concurrent_requests(gateway, upstream, token_server):
    ts = token_server()
    cfg = base_config(apis=[{"name": "o", "hosts": ["127.0.0.1"], "credentials": {"oauth2": {
        "token_url": ts.url, "client_id": "py", "client_secret": "${env:CS}", "scopes": ["a"],
        "client_auth": "body"}}}])
    gw = gateway(cfg, env={"CS": CLIENT_SECRET})
    url = f"{upstream.base}/o"

    def call(_):
        r = gw.get(url, headers={"Authorization": "Bearer mine"})
        return r.status_code, echo_headers(r).get("authorization")

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(call, range(20)))
    assert results == [(200, "Bearer tok-0")] * 20
    assert ts.calls == 1
    assert ts.seen[0][1] == f"grant_type=client_credentials&scope=a&client_id=py&client_secret={CLIENT_SECRET}"
    metrics = gw.admin("GET", "/metrics").text
    assert metric_value(metrics, "tollgate_credential_token_fetches_total", api="o", result="ok") == 1


def test_oauth_endpoint_down_is_credential_unavailable(gateway, upstream, token_server):
    ts = token_server(statuses=(500,))
    cfg = base_config(apis=[{"name": "o", "hosts": ["127.0.0.1"], "credentials": {"oauth2": {
        "token_url": ts.url, "client_id": "py", "client_secret": CLIENT_SECRET}}}])
    gw = gateway(cfg)
    r = gw.get(f"{upstream.base}/o")
    problem = assert_problem(r, 503, "credential_unavailable")
    assert "status 500" in problem["detail"]
    assert CLIENT_SECRET not in r.text
    assert ts.calls == 3  # retried
    assert upstream.requests == []


def test_round_robin_keys_and_metrics(gateway, upstream):
    cfg = base_config(apis=[{"name": "multi", "hosts": ["127.0.0.1"], "credentials": {"keys": [
        {"name": "one", "header": "x-key", "value": "${env:K1}"},
        {"name": "two", "header": "x-key", "value": "${env:K2}"}]}}])
    gw = gateway(cfg, env={"K1": "key-one", "K2": "key-two"})
    got = [echo_headers(gw.get(f"{upstream.base}/k"))["x-key"] for _ in range(4)]
    assert got == ["key-one", "key-two", "key-one", "key-two"]
    metrics = gw.admin("GET", "/metrics").text
    for k in ("one", "two"):
        assert metric_value(metrics, "tollgate_credential_uses_total", api="multi", key=k) == 2
    assert "key-one" not in metrics


def test_missing_secret_at_reload_keeps_old_config(gateway, upstream):
    cfg = base_config(apis=[{"name": "echo", "hosts": ["127.0.0.1"],
                             "credentials": {"header": "x-key", "value": "${env:K1}"}}])
    gw = gateway(cfg, env={"K1": "first"})
    assert echo_headers(gw.get(f"{upstream.base}/a"))["x-key"] == "first"
    good = gw.config_path.read_text()
    gw.write_config(good.replace("${env:K1}", "${env:TG_UNSET_CRED}"))
    r = gw.reload()
    assert r.status_code >= 400, r.text
    assert "TG_UNSET_CRED" in r.text
    assert echo_headers(gw.get(f"{upstream.base}/b"))["x-key"] == "first"


def test_secrets_never_leak(gateway, upstream, token_server, tmp_path):
    secret_file = tmp_path / "key"
    secret_file.write_text(SECRET + "\n")
    down = token_server(statuses=(401,))
    cfg = base_config(apis=[
        {"name": "echo", "hosts": ["127.0.0.1"],
         "credentials": {"header": "Authorization", "value": f"Bearer ${{file:{secret_file}}}"}},
        {"name": "o", "route": "/o", "upstream": upstream.base, "credentials": {"oauth2": {
            "token_url": down.url, "client_id": "py", "client_secret": "${env:CS}"}}}])
    gw = gateway(cfg, env={"CS": CLIENT_SECRET, "TOLLGATE_LOG": "debug"})
    ok = gw.get(f"{upstream.base}/x?token=abc")
    assert echo_headers(ok)["authorization"] == f"Bearer {SECRET}"  # the upstream does get it
    bad = gw.route("GET", "/o/y")
    assert_problem(bad, 503, "credential_unavailable")
    metrics = gw.admin("GET", "/metrics").text
    config = gw.admin("GET", "/admin/config").text
    explain = subprocess.run([TOLLGATE_BIN, "explain", str(gw.config_path), f"GET {upstream.base}/x"],
                             capture_output=True, text=True, timeout=20, env={**gw.env})
    assert explain.returncode == 0, explain.stderr
    assert "<redacted>" in explain.stdout and "${file:" in explain.stdout, explain.stdout
    gw.wait_access(lambda e: e.get("api") == "o")
    assert gw.terminate(timeout=10) == 0
    places = {
        "access log": gw.access_log.read_text(),
        "stderr": gw.stderr_text(),
        "error body": bad.text + str(dict(bad.headers)),
        "metrics": metrics,
        "admin config": config,
        "explain": explain.stdout + explain.stderr,
    }
    assert "credential" in places["access log"]
    for where, text in places.items():
        for secret in (SECRET, CLIENT_SECRET):
            assert secret not in text, f"{secret[:8]}… leaked into {where}"


def _key_limited_api(upstream, scope="local", mode=None):
    minute = {"name": "minute", "requests": 2, "per": "1m", "algorithm": "sliding", "scope": scope}
    api = {"name": "multi", "hosts": ["127.0.0.1"], "credentials": {"keys": [
        {"name": "one", "header": "x-key", "value": "${env:K1}", "limits": [dict(minute)]},
        {"name": "two", "header": "x-key", "value": "${env:K2}", "limits": [dict(minute)]}]}}
    if mode:
        api["mode"] = mode
    return api


@pytest.mark.parametrize("scope", ["local", "global"])
def test_each_key_has_its_own_limits(gateway, upstream, scope):
    """Two keys of 2 requests a minute each: 4 requests pass over both keys, the 5th is 429
    naming a key's limit, with RateLimit fields and Retry-After, and nothing goes upstream."""
    import uuid
    extra = {}
    if scope == "global":
        extra["state"] = {"redis": {"url": "redis://127.0.0.1:6379/0", "prefix": f"tg-keylim-{uuid.uuid4().hex[:8]}"}}
    cfg = base_config(apis=[_key_limited_api(upstream, scope)], **extra)
    gw = gateway(cfg, env={"K1": "key-one", "K2": "key-two"})
    got = []
    for _ in range(4):
        r = gw.get(f"{upstream.base}/k")
        assert r.status_code == 200, r.text
        got.append(echo_headers(r)["x-key"])
    assert sorted(got) == ["key-one", "key-one", "key-two", "key-two"]
    seen = [dict((k.lower(), v) for k, v in rec["headers"])["x-key"] for rec in upstream.requests]
    assert sorted(seen) == sorted(got)
    r = gw.get(f"{upstream.base}/k")
    problem = assert_problem(r, 429, "rate_limited")
    assert "one/minute" in problem["detail"] and "two/minute" in problem["detail"]
    assert "key-one" not in r.text and "key-two" not in r.text
    assert r.headers["RateLimit-Policy"] in ('"one/minute";q=2;w=60', '"two/minute";q=2;w=60')
    assert ";r=0;" in r.headers["RateLimit"]
    assert 1 <= int(r.headers["Retry-After"]) <= 120
    assert len(upstream.requests) == 4
    metrics = gw.admin("GET", "/metrics").text
    for k in ("one", "two"):
        assert metric_value(metrics, "tollgate_credential_uses_total", api="multi", key=k) == 2


def test_an_exhausted_key_is_skipped_and_report_mode_only_reports(gateway, upstream):
    """A key at its limit gives its turn to the other; under `mode: report` the request
    that finds every key exhausted still goes upstream."""
    api = _key_limited_api(upstream)
    api["credentials"]["keys"][0]["limits"][0]["requests"] = 1
    gw = gateway(base_config(apis=[api]), env={"K1": "key-one", "K2": "key-two"})
    got = [echo_headers(gw.get(f"{upstream.base}/k"))["x-key"] for _ in range(3)]
    # one, two, then one's turn again: it is exhausted, so two.
    assert got == ["key-one", "key-two", "key-two"]
    assert_problem(gw.get(f"{upstream.base}/k"), 429, "rate_limited")

    api = _key_limited_api(upstream, mode="report")
    gw2 = gateway(base_config(apis=[api]), env={"K1": "key-one", "K2": "key-two"})
    codes = [gw2.get(f"{upstream.base}/r").status_code for _ in range(6)]
    assert codes == [200] * 6


def test_key_limits_are_validated_with_their_key_path(run_cli, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "apis:\n"
        "  - name: multi\n"
        "    hosts: [api.example.com]\n"
        "    credentials:\n"
        "      keys:\n"
        "        - name: one\n"
        "          header: x-key\n"
        "          value: plain\n"
        "          limits:\n"
        "            - { name: m, requests: 2, per: 1m, on_limit: { queue: 5s } }\n"
        "            - { name: w, requests: 0, per: 7s }\n")
    out = run_cli("validate", cfg)
    text = out.stdout + out.stderr
    assert out.returncode != 0, text
    assert "apis[0].credentials.keys[0].limits[0].on_limit" in text, text
    assert "apis[0].credentials.keys[0].limits[1].requests" in text, text
