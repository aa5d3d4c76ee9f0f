"""Certificates per SNI host name on the TLS listener
(`listen.proxy_tls.certificates`): exact name, one-label wildcard, default,
no default; a replaced certificate file served without a restart (file
watch, same process, open connections keep theirs); a broken replacement
keeps the previous certificate; validation errors name their keys.
Clients: Python's ssl module (server_hostname = SNI) and curl --resolve."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
from pathlib import Path

import pytest

from helpers import base_config, find_key, wait_until


def sh(*args: str, cwd: Path) -> None:
    r = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=30,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, f"{args}: {r.stderr}"


def mint(d: Path, name: str, cn: str, sans: list[str]) -> None:
    """`name`.crt / `name`.key signed by d/ca.*, with DNS SANs."""
    sh("openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
       "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=d)
    san = ",".join(f"DNS:{s}" for s in sans)
    (d / f"{name}.ext").write_text(f"subjectAltName={san}\nextendedKeyUsage=serverAuth\n")
    sh("openssl", "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
       "-CAcreateserial", "-days", "30", "-out", f"{name}.crt", "-extfile", f"{name}.ext",
       cwd=d)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    if shutil.which("openssl") is None or shutil.which("curl") is None:
        pytest.skip("openssl and curl are needed")
    d = tmp_path_factory.mktemp("sni-pki")
    sh("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
       "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "30",
       "-subj", "/CN=Tollgate SNI Test CA",
       "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    mint(d, "api", "sni-api", ["api.example.com"])
    mint(d, "wild", "sni-wild", ["*.example.org"])
    mint(d, "default", "sni-default", ["localhost"])
    mint(d, "api2", "sni-api-2", ["api.example.com"])
    return d


def sni_config(pki: Path, upstream, files: Path | None = None, default: bool = True) -> dict:
    f = files or pki
    tls: dict = {
        "addr": "127.0.0.1:0",
        "certificates": [
            {"hosts": ["api.example.com"], "cert": str(f / "api.crt"),
             "key": f"${{file:{f / 'api.key'}}}"},
            {"hosts": ["*.example.org"], "cert": str(pki / "wild.crt"),
             "key": str(pki / "wild.key")},
        ],
    }
    if default:
        tls["cert"] = str(pki / "default.crt")
        tls["key"] = str(pki / "default.key")
    return base_config(
        listen={"proxy_tls": tls},
        apis=[{"name": "echo", "hosts": ["api.example.com", "a.example.org", "127.0.0.1"],
               "route": "/echo", "upstream": f"http://127.0.0.1:{upstream.port}"}],
    )


def tls_addr(gw) -> tuple[str, int]:
    for obj in gw.stderr_json():
        v = find_key(obj, "listen.proxy_tls")
        if isinstance(v, str) and v:
            host, port = v.rsplit(":", 1)
            return host, int(port)
    raise AssertionError("no listen.proxy_tls in the 'listening' line:\n" + gw.stderr_text())


def context(pki: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    # The SNI name is what is being tested; the served name may differ (default cert).
    ctx.check_hostname = False
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    return ctx


def peer(addr: tuple[str, int], pki: Path, name: str) -> tuple[str, list[str], str | None]:
    """(subject CN, DNS SANs, ALPN) of the certificate served for SNI `name`."""
    with socket.create_connection(addr, timeout=5) as s:
        with context(pki).wrap_socket(s, server_hostname=name) as t:
            cert = t.getpeercert()
            cn = dict(x[0] for x in cert["subject"])["commonName"]
            sans = [v for k, v in cert.get("subjectAltName", ()) if k == "DNS"]
            return cn, sans, t.selected_alpn_protocol()


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "10", *args], capture_output=True,
                          text=True, timeout=20, stdin=subprocess.DEVNULL)


def test_each_name_gets_its_certificate(gateway, upstream, pki):
    gw = gateway(sni_config(pki, upstream))
    addr = tls_addr(gw)
    assert peer(addr, pki, "api.example.com") == ("sni-api", ["api.example.com"], "h2")
    assert peer(addr, pki, "API.Example.COM")[0] == "sni-api"
    assert peer(addr, pki, "a.example.org") == ("sni-wild", ["*.example.org"], "h2")
    # One label only; unknown names and the bare parent get the default.
    assert peer(addr, pki, "a.b.example.org")[0] == "sni-default"
    assert peer(addr, pki, "example.org")[0] == "sni-default"
    assert peer(addr, pki, "unknown.test")[0] == "sni-default"
    # curl verifies the served certificate against the name it asked for.
    port = addr[1]
    for name in ("api.example.com", "a.example.org"):
        r = curl("--cacert", str(pki / "ca.crt"), "--resolve", f"{name}:{port}:127.0.0.1",
                 f"https://{name}:{port}/echo/x", "-o", "/dev/null", "-w",
                 "%{http_code} %{http_version}")
        assert r.returncode == 0 and r.stdout == "200 2", (name, r.stdout, r.stderr)
    # ...and refuses the default certificate for a name it does not cover.
    r = curl("--cacert", str(pki / "ca.crt"), "--resolve", f"nope.test:{port}:127.0.0.1",
             f"https://nope.test:{port}/echo/x")
    assert r.returncode == 60, (r.returncode, r.stderr)


def test_without_a_default_unknown_names_are_refused(gateway, upstream, pki):
    gw = gateway(sni_config(pki, upstream, default=False))
    addr = tls_addr(gw)
    assert peer(addr, pki, "api.example.com")[0] == "sni-api"
    with pytest.raises(ssl.SSLError):
        peer(addr, pki, "unknown.test")
    def failures():
        return [o.get("error") for o in gw.stderr_json()
                if o.get("message") == "proxy_tls handshake failed"]
    wait_until(lambda: failures())
    assert failures() == ["unexpected error: no server certificate chain resolved"], failures()


def http_get(t: ssl.SSLSocket, host: str) -> int:
    t.sendall(f"GET /echo/k HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = t.recv(4096)
        assert chunk, buf
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        chunk = t.recv(4096)
        assert chunk
        body += chunk
    return int(head.split(b" ")[1])


def replace(src: Path, dst: Path) -> None:
    tmp = dst.with_name("." + dst.name + ".tmp")
    tmp.write_bytes(src.read_bytes())
    os.replace(tmp, dst)


def metric(gw, name: str) -> float:
    text = gw.admin("GET", "/metrics").text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_replaced_certificate_file_is_served_without_restart(gateway, upstream, pki, tmp_path):
    files = tmp_path / "live"
    files.mkdir()
    for n in ("api.crt", "api.key"):
        (files / n).write_bytes((pki / n).read_bytes())
    gw = gateway(sni_config(pki, upstream, files=files))
    addr = tls_addr(gw)
    pid = gw.proc.pid
    assert peer(addr, pki, "api.example.com")[0] == "sni-api"
    ctx = context(pki)
    ctx.set_alpn_protocols(["http/1.1"])
    with socket.create_connection(addr, timeout=5) as s, \
            ctx.wrap_socket(s, server_hostname="api.example.com") as open_conn:
        assert http_get(open_conn, "api.example.com") == 200
        # Key first, then certificate: in between the pair does not match and that
        # reload is rejected; the certificate's arrival reloads again.
        replace(pki / "api2.key", files / "api.key")
        replace(pki / "api2.crt", files / "api.crt")
        assert wait_until(lambda: peer(addr, pki, "api.example.com")[0] == "sni-api-2",
                          timeout=10), gw.stderr_text()[-3000:]
        assert gw.proc.pid == pid and gw.proc.poll() is None
        # The connection opened before keeps its session and keeps working.
        assert http_get(open_conn, "api.example.com") == 200
        assert dict(x[0] for x in open_conn.getpeercert()["subject"])["commonName"] == "sni-api"
    assert metric(gw, "tollgate_config_last_reload_success") == 1
    # A broken replacement: rejected, logged, the previous certificate keeps serving.
    (files / "api.crt").write_text("-----BEGIN CERTIFICATE-----\ngarbage\n")

    def rejected():
        return [o for o in gw.stderr_json()
                if "previous configuration keeps serving" in str(o.get("message", ""))
                and "listen.proxy_tls.certificates[0].cert" in json.dumps(o)]
    assert wait_until(lambda: rejected(), timeout=10), gw.stderr_text()[-3000:]
    assert find_key(rejected()[-1], "reload.trigger") == "tls_file_change"
    assert metric(gw, "tollgate_config_last_reload_success") == 0
    assert peer(addr, pki, "api.example.com")[0] == "sni-api-2"
    assert gw.proc.pid == pid and gw.proc.poll() is None


def test_validation_errors_name_their_keys(gateway, upstream, pki, tmp_path):
    gw = gateway(sni_config(pki, upstream))
    cases = []
    dup = sni_config(pki, upstream)
    dup["listen"]["proxy_tls"]["certificates"][1]["hosts"] = ["*.example.org", "API.example.com"]
    cases.append((dup, "listen.proxy_tls.certificates[1].hosts[1]"))
    missing = sni_config(pki, upstream)
    missing["listen"]["proxy_tls"]["certificates"][0]["cert"] = str(tmp_path / "absent.crt")
    cases.append((missing, "listen.proxy_tls.certificates[0].cert"))
    mismatch = sni_config(pki, upstream)
    mismatch["listen"]["proxy_tls"]["certificates"][1]["key"] = str(pki / "api.key")
    cases.append((mismatch, "listen.proxy_tls.certificates[1].key"))
    nothing = sni_config(pki, upstream, default=False)
    nothing["listen"]["proxy_tls"]["certificates"] = []
    cases.append((nothing, "listen.proxy_tls"))
    for cfg, key in cases:
        gw.write_config(cfg)
        r = gw.reload()
        assert r.status_code != 200 and key in r.text, (key, r.text)
    assert peer(tls_addr(gw), pki, "api.example.com")[0] == "sni-api"
