"""Forward proxy (absolute-form HTTP) and routes, with real clients:
Python `requests` (explicit proxies and HTTP_PROXY) and `curl`."""

from __future__ import annotations

import json
import subprocess

import requests

from helpers import TIMEOUT, assert_problem, base_config, echo_headers
from servers import big_body

IDENTITY = {"name": "checkout", "identify": {"header": {"name": "x-tollgate-consumer", "value": "checkout"}}}


def echo_api(upstream, **extra):
    api = {"name": "echo", "hosts": ["127.0.0.1"]}
    api.update(extra)
    return api


def test_forward_with_requests_proxies(gateway, upstream):
    gw = gateway(base_config(consumers=[IDENTITY], apis=[echo_api(upstream)]))
    r = gw.get(f"{upstream.base}/v1/items?x=1",
               headers={"x-tollgate-consumer": "checkout", "Host": "evil.example", "X-Client": "c1"})
    assert r.status_code == 200, r.text
    # Upstream response passes through untouched.
    assert r.headers["X-Upstream"] == "plain"
    assert r.headers["X-Custom-Resp"] == "untouched"
    assert r.headers["Set-Cookie"] == "a=b; Path=/"
    assert "tollgate-error" not in r.headers
    seen = r.json()
    assert seen["method"] == "GET"
    assert seen["path"] == "/v1/items?x=1"
    h = echo_headers(r)
    # Host reconciled with the target: a client-supplied Host cannot redirect policy.
    assert h["host"] == f"127.0.0.1:{upstream.port}"
    assert h["x-client"] == "c1"
    # Identity header consumed, never forwarded; no proxy headers leak upstream.
    assert "x-tollgate-consumer" not in h
    assert not any(k.startswith("proxy-") for k in h)

    e = gw.wait_access(lambda e: e.get("path", "").startswith("/v1/items"))
    assert e["kind"] == "forward"
    assert e["method"] == "GET"
    assert e["scheme"] == "http"
    assert e["host"] == "127.0.0.1"
    assert e["status"] == 200
    assert e["decision"] == "allow"
    assert e["consumer"] == "checkout"
    assert e["api"] == "echo"
    assert e["upstream_addr"] == f"127.0.0.1:{upstream.port}"
    assert e["bytes_out"] == len(r.content)
    assert e["request_id"] == r.headers["x-request-id"]
    assert e["peer"].startswith("127.0.0.1")
    for key in ("time", "reason", "bytes_in", "duration_ms", "upstream_ms"):
        assert key in e, key
    assert e["duration_ms"] >= e["upstream_ms"] >= 0


def test_forward_with_http_proxy_env(gateway, upstream, monkeypatch):
    gw = gateway(base_config())
    monkeypatch.setenv("HTTP_PROXY", gw.proxy_url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    # A plain requests.get: the proxy comes from the environment only.
    r = requests.get(f"{upstream.base}/via-env", timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    assert r.json()["path"] == "/via-env"
    e = gw.wait_access(lambda e: e.get("path") == "/via-env")
    assert e["kind"] == "forward" and e["status"] == 200
    assert e["consumer"] == "anonymous"


def test_forward_post_body_and_chunked_stream(gateway, upstream):
    gw = gateway(base_config())
    payload = json.dumps({"k": "v" * 1000})
    r = gw.request("POST", f"{upstream.base}/post", data=payload,
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 200
    assert r.json()["body"] == payload

    parts = [b"alpha-", b"beta-" * 500, b"gamma"]
    r = gw.request("PUT", f"{upstream.base}/chunked", data=iter(parts))  # chunked upload
    assert r.status_code == 200
    assert r.json()["body"].encode() == b"".join(parts)
    e = gw.wait_access(lambda e: e.get("path") == "/chunked")
    assert e["bytes_in"] == len(b"".join(parts))


def test_forward_large_response_byte_identical(gateway, upstream):
    gw = gateway(base_config())
    n = 3 * 1024 * 1024 + 17
    r = gw.get(f"{upstream.base}/big?bytes={n}")
    assert r.status_code == 200
    assert r.content == big_body(n)
    e = gw.wait_access(lambda e: e.get("path", "").startswith("/big"))
    assert e["bytes_out"] == n


def test_upstream_status_passes_through(gateway, upstream):
    gw = gateway(base_config())
    r = gw.get(f"{upstream.base}/status/418")
    assert r.status_code == 418
    assert r.text == "status 418"
    assert r.headers["X-Status-Echo"] == "418"
    assert "tollgate-error" not in r.headers
    e = gw.wait_access(lambda e: e.get("path") == "/status/418")
    assert e["status"] == 418


def test_hop_by_hop_headers_stripped_both_ways(gateway, upstream):
    gw = gateway(base_config())
    r = gw.get(f"{upstream.base}/echo", headers={
        "Connection": "X-Drop-Me", "X-Drop-Me": "1", "Keep-Alive": "timeout=1",
        "TE": "trailers", "Upgrade": "websocket", "Proxy-Connection": "keep-alive",
        "X-Keep-Me": "yes"})
    assert r.status_code == 200
    h = echo_headers(r)
    for gone in ("x-drop-me", "keep-alive", "te", "upgrade", "proxy-connection"):
        assert gone not in h, (gone, h)
    assert h["x-keep-me"] == "yes"

    r = gw.get(f"{upstream.base}/hop")
    assert r.status_code == 200 and r.text == "hop"
    assert "X-Up-Hop" not in r.headers
    assert "Keep-Alive" not in r.headers
    assert r.headers["X-End-To-End"] == "kept"


def curl(*args, timeout=15):
    """curl with a deadline; stdout stays bytes so CRLFs in `-D -` survive."""
    return subprocess.run(["curl", "-sS", "--max-time", "10", *args],
                          capture_output=True, timeout=timeout)


def test_curl_forward_plain_http(gateway, upstream):
    gw = gateway(base_config())
    p = curl("-x", gw.proxy_url, "-D", "-", f"{upstream.base}/curl/path?q=1")
    assert p.returncode == 0, p.stderr
    head, _, body = p.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    seen = json.loads(body)
    assert seen["path"] == "/curl/path?q=1"
    h = {k.lower(): v for k, v in seen["headers"]}
    assert h["host"] == f"127.0.0.1:{upstream.port}"
    assert "curl/" in h["user-agent"]
    assert not any(k.startswith("proxy-") for k in h)
    gw.wait_access(lambda e: e.get("path", "").startswith("/curl/path") and e["status"] == 200)


def test_curl_route(gateway, upstream):
    gw = gateway(base_config(apis=[{
        "name": "echo-api", "route": "/echo-api", "upstream": f"{upstream.base}/base"}]))
    p = curl("--noproxy", "*", "-D", "-", f"{gw.proxy_url}/echo-api/v1/x?y=2")
    assert p.returncode == 0, p.stderr
    head, _, body = p.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    seen = json.loads(body)
    assert seen["path"] == "/base/v1/x?y=2"
    h = {k.lower(): v for k, v in seen["headers"]}
    # The upstream sees its own authority, not the gateway's.
    assert h["host"] == f"127.0.0.1:{upstream.port}"
    e = gw.wait_access(lambda e: e.get("kind") == "route")
    assert e["api"] == "echo-api"
    assert e["status"] == 200
    assert e["upstream_addr"] == f"127.0.0.1:{upstream.port}"


def test_route_with_requests_and_unknown_route(gateway, upstream):
    gw = gateway(base_config(apis=[{
        "name": "echo-api", "route": "/echo-api", "upstream": f"{upstream.base}/base"}]))
    r = gw.route("POST", "/echo-api/v1/create", data=b"hello")
    assert r.status_code == 200
    assert r.json()["path"] == "/base/v1/create"
    assert r.json()["body"] == "hello"
    assert_problem(gw.route("GET", "/nope/v1"), 404, "route_not_found")


def test_curl_route_http2_prior_knowledge(gateway, upstream):
    gw = gateway(base_config(apis=[{"name": "r", "route": "/r", "upstream": upstream.base}]))
    p = curl("--noproxy", "*", "--http2-prior-knowledge", "-D", "-", f"{gw.proxy_url}/r/h2?z=1")
    assert p.returncode == 0, p.stderr
    head, _, body = p.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/2 200"), head
    seen = json.loads(body)
    assert seen["path"] == "/h2?z=1"
    assert {k.lower(): v for k, v in seen["headers"]}["host"] == f"127.0.0.1:{upstream.port}"
    e = gw.wait_access(lambda e: e.get("path", "").startswith("/r/h2") or e.get("path", "").startswith("/h2"))
    assert e["kind"] == "route" and e["status"] == 200
