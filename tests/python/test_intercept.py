"""TLS interception (`tls: intercept`) end to end with real clients: curl and
Python `requests` CONNECT through Tollgate to a local TLS upstream, trusting
the CA made by `tollgate ca init`. Inside the tunnel every request runs the
pipeline, the injected credential reaches the upstream (never the client),
and a ClientHello for another host is refused."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import requests

from helpers import base_config

SECRET = "intercept-upstream-secret-51c9"


@pytest.fixture
def intercepting(gateway, tls_upstream, certs, run_cli, tmp_path):
    ca_dir = tmp_path / "ca"
    r = run_cli("ca", "init", "--dir", ca_dir)
    assert r.returncode == 0, r.stderr
    assert (ca_dir / "ca.key").stat().st_mode & 0o777 == 0o600
    # Printed by `ca cert` is what clients trust.
    printed = run_cli("ca", "cert", "--dir", ca_dir)
    assert printed.returncode == 0 and "BEGIN CERTIFICATE" in printed.stdout
    trust = tmp_path / "trust.pem"
    trust.write_text(printed.stdout)
    port = tls_upstream.port
    gw = gateway(base_config(
        upstream={"ca_file": str(certs["ca"])},
        connect={"allowed_ports": [port]},
        tls_intercept={"ca_cert": str(ca_dir / "ca.crt"), "ca_key": str(ca_dir / "ca.key")},
        apis=[{
            "name": "sec",
            "hosts": ["127.0.0.1"],
            "tls": "intercept",
            "credentials": {"header": "x-api-key", "value": SECRET},
            "allow": [{"methods": ["GET"], "paths": ["/ok/**"]}],
        }]))
    return gw, trust, f"https://127.0.0.1:{port}"


def curl(gw, trust, url, *extra):
    if shutil.which("curl") is None:
        pytest.skip("curl not available")
    out = subprocess.run(
        ["curl", "-sS", "--max-time", "10", "-x", gw.proxy_url, "--cacert", str(trust),
         "-D", "-", *extra, url],
        capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL)
    return out


def split_response(text: str) -> tuple[int, dict[str, str], str]:
    # curl -D - prints the CONNECT response head first, then the inner one.
    heads = text.replace("\r\n", "\n").split("\n\n")
    status, headers, i = 0, {}, 0
    while i < len(heads) - 1 and heads[i].startswith("HTTP/"):
        lines = heads[i].split("\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:] if ":" in l)}
        i += 1
    return status, headers, "\n\n".join(heads[i:])


def test_curl_through_an_intercepted_tunnel(intercepting, tls_upstream):
    gw, trust, base = intercepting
    out = curl(gw, trust, f"{base}/ok/items?x=1")
    assert out.returncode == 0, out.stderr
    status, headers, body = split_response(out.stdout)
    assert status == 200, out.stdout
    assert "HTTP/2 200" in out.stdout  # curl offered h2 by ALPN and got it inside the tunnel
    assert headers.get("x-upstream") == "tls"
    # The upstream got the injected credential; the client's response headers do not carry it.
    seen = tls_upstream.requests[-1]
    assert seen["path"] == "/ok/items?x=1"
    assert dict((k.lower(), v) for k, v in seen["headers"])["x-api-key"] == SECRET
    assert SECRET not in json.dumps(headers)

    # Allow rules apply inside the tunnel: a problem+json 403 from Tollgate.
    out = curl(gw, trust, f"{base}/admin/delete")
    status, headers, body = split_response(out.stdout)
    assert status == 403, out.stdout
    assert headers["tollgate-error"] == "endpoint_not_allowed"
    assert headers["content-type"] == "application/problem+json"
    assert json.loads(body)["code"] == "endpoint_not_allowed"
    assert all(r["path"] != "/admin/delete" for r in tls_upstream.requests)

    e = gw.wait_access(lambda e: e.get("kind") == "intercept" and e.get("status") == 403)
    assert e["api"] == "sec" and e["path"] == "/admin/delete"
    e = gw.wait_access(lambda e: e.get("kind") == "intercept" and e.get("status") == 200)
    assert e["scheme"] == "https" and e["host"] == "127.0.0.1"


def test_requests_through_https_proxy(intercepting, tls_upstream, monkeypatch):
    gw, trust, base = intercepting
    monkeypatch.setenv("HTTPS_PROXY", gw.proxy_url)
    with requests.Session() as s:
        r = s.get(f"{base}/ok/py", verify=str(trust), timeout=10)
        assert r.status_code == 200, r.text
        assert r.headers["x-upstream"] == "tls"
        assert SECRET not in json.dumps(dict(r.headers))
        r = s.post(f"{base}/ok/py", verify=str(trust), timeout=10)
        assert r.status_code == 403
        assert r.headers["tollgate-error"] == "endpoint_not_allowed"
    assert [x["method"] for x in tls_upstream.requests] == ["GET"]


def test_sni_for_another_host_is_refused(intercepting, tls_upstream):
    gw, trust, base = intercepting
    port = base.rsplit(":", 1)[1]
    if shutil.which("openssl") is None:
        pytest.skip("openssl not available")
    out = subprocess.run(
        ["openssl", "s_client", "-proxy", gw.proxy_addr, "-connect", f"127.0.0.1:{port}",
         "-servername", "evil.example", "-CAfile", str(trust), "-brief"],
        capture_output=True, text=True, timeout=20, input="")
    assert out.returncode != 0, out.stdout + out.stderr
    assert "alert" in (out.stdout + out.stderr).lower()
    e = gw.wait_access(lambda e: e.get("kind") == "connect")
    assert e["reason"] == "tls_sni_mismatch"
    assert tls_upstream.requests == []
