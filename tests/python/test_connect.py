"""HTTPS through CONNECT tunnels: `requests` with HTTPS_PROXY and `curl -x`,
against a local TLS upstream whose certificate comes from a test CA."""

from __future__ import annotations

import json
import subprocess

import requests

from helpers import assert_problem, base_config, connect_tunnel, get_and_close


def tls_config(tls_upstream, **extra):
    return base_config(connect={"allowed_ports": [tls_upstream.port]}, **extra)


def test_https_via_requests_https_proxy_env(gateway, tls_upstream, certs, monkeypatch):
    gw = gateway(tls_config(tls_upstream))
    monkeypatch.setenv("HTTPS_PROXY", gw.proxy_url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    # A session that honours the environment, like requests.get does.
    status, headers, body = get_and_close(
        requests.Session(), f"https://127.0.0.1:{tls_upstream.port}/secure/path?a=1",
        verify=str(certs["ca"]))
    assert status == 200, body
    assert headers["X-Upstream"] == "tls"
    assert json.loads(body)["path"] == "/secure/path?a=1"
    assert tls_upstream.requests, "the TLS upstream never saw the request"

    # The client closed its connection, so the tunnel ended and its line is written.
    e = gw.wait_access(lambda e: e.get("kind") == "connect")
    assert e["method"] == "CONNECT"
    assert e["host"] == "127.0.0.1"
    assert e["decision"] == "allow"
    assert e["bytes_in"] > 0 and e["bytes_out"] > 0
    # The tunnel carried at least the TLS handshake plus the response body.
    assert e["bytes_out"] > len(body)
    assert e["upstream_addr"] == f"127.0.0.1:{tls_upstream.port}"


def test_https_via_curl_connect(gateway, tls_upstream, certs):
    gw = gateway(tls_config(tls_upstream))
    p = subprocess.run(
        ["curl", "-sS", "--max-time", "10", "-x", gw.proxy_url, "--cacert", str(certs["ca"]),
         f"https://localhost:{tls_upstream.port}/curl-tls"],
        capture_output=True, text=True, timeout=15)
    assert p.returncode == 0, p.stderr
    seen = json.loads(p.stdout)
    assert seen["path"] == "/curl-tls"
    assert seen["server"] == "tls"
    e = gw.wait_access(lambda e: e.get("kind") == "connect")
    assert e["host"] == "localhost"
    assert e["status"] == 200
    assert e["bytes_in"] > 0 and e["bytes_out"] > 0
    # localhost resolves to 127.0.0.1 and ::1; only 127.0.0.1 is allowed by the guard.
    assert e["upstream_addr"] == f"127.0.0.1:{tls_upstream.port}"


def test_connect_port_not_allowed(gateway, tls_upstream):
    gw = gateway(base_config())  # allowed_ports defaults to [443]
    sock, resp = connect_tunnel(gw.proxy_addr, f"127.0.0.1:{tls_upstream.port}")
    sock.close()
    assert_problem(resp, 403, "port_not_allowed")
    assert tls_upstream.connections == 0


def test_connect_same_host_rules_as_l7(gateway, tls_upstream):
    gw = gateway(tls_config(tls_upstream, default_action="deny"))
    sock, resp = connect_tunnel(gw.proxy_addr, f"127.0.0.1:{tls_upstream.port}")
    sock.close()
    assert_problem(resp, 403, "destination_not_allowed")
    e = gw.wait_access(lambda e: e.get("kind") == "connect")
    assert e["decision"] == "deny"
    assert e["status"] == 403


def test_connect_consumer_by_api_key(gateway, tls_upstream, certs):
    key = "k-connect-3f9a1c"
    gw = gateway(tls_config(
        tls_upstream,
        unknown_consumer={"action": "deny"},
        consumers=[{"name": "acme", "identify": {"api_key": {"key": "${env:ACME_KEY}"}}}]),
        env={"ACME_KEY": key})
    # Without credentials: 407.
    sock, resp = connect_tunnel(gw.proxy_addr, f"127.0.0.1:{tls_upstream.port}")
    sock.close()
    assert_problem(resp, 407, "consumer_unidentified")
    # With credentials in the proxy URL, requests sends Proxy-Authorization on CONNECT.
    proxy = f"http://user:{key}@{gw.proxy_addr}"
    s = requests.Session()
    s.trust_env = False
    status, _, body = get_and_close(s, f"https://127.0.0.1:{tls_upstream.port}/with-key",
                                    proxies={"https": proxy}, verify=str(certs["ca"]))
    assert status == 200
    # The TLS upstream sees the inner request only: no proxy credentials.
    assert not any(k.lower().startswith("proxy-") for k, _ in json.loads(body)["headers"])
    e = gw.wait_access(lambda e: e.get("kind") == "connect" and e.get("status") == 200)
    assert e["consumer"] == "acme"
