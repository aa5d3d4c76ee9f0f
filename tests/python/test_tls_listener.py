"""The TLS proxy listener (`listen.proxy_tls`) end to end with curl and
Python's ssl module: a PKI made with the openssl CLI (as in
docs/stages/tls-listener.md), client certificates with a SPIFFE URI SAN,
one revoked in a CRL made by `openssl ca -gencrl`. curl reaches the plain
echo upstream through the listener as an HTTPS forward proxy and as a
route; the consumer is identified from the certificate."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
from pathlib import Path

import pytest

from helpers import base_config, find_key, wait_until

SPIFFE = "spiffe://tollgate.test/ns/ci/sa/builder"


def sh(*args: str, cwd: Path) -> None:
    r = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=30,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, f"{args}: {r.stderr}"


def new_key_csr(d: Path, name: str, subject: str) -> None:
    sh("openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
       "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=d)


def sign(d: Path, name: str, ext: str) -> None:
    (d / f"{name}.ext").write_text(ext)
    sh("openssl", "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
       "-CAcreateserial", "-days", "30", "-out", f"{name}.crt", "-extfile", f"{name}.ext",
       cwd=d)


def server_cert(d: Path, cn: str) -> None:
    new_key_csr(d, "server", f"/CN={cn}")
    sign(d, "server", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    if shutil.which("openssl") is None or shutil.which("curl") is None:
        pytest.skip("openssl and curl are needed")
    d = tmp_path_factory.mktemp("listener-pki")
    sh("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
       "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "30",
       "-subj", "/CN=Tollgate Client CA",
       "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    server_cert(d, "listener-1")
    new_key_csr(d, "builder", "/CN=builder")
    sign(d, "builder", f"subjectAltName=URI:{SPIFFE}\nextendedKeyUsage=clientAuth\n")
    new_key_csr(d, "old", "/CN=old")
    sign(d, "old", "subjectAltName=URI:spiffe://tollgate.test/ns/ci/sa/old\n"
                   "extendedKeyUsage=clientAuth\n")
    # A minimal `openssl ca` database, only to revoke and publish the CRL.
    (d / "index.txt").write_text("")
    (d / "crlnumber").write_text("1000\n")
    (d / "ca.cnf").write_text(
        "[ca]\ndefault_ca = ca_default\n[ca_default]\ndatabase = index.txt\n"
        "crlnumber = crlnumber\ndefault_md = sha256\ndefault_crl_days = 30\n")
    sh("openssl", "ca", "-config", "ca.cnf", "-cert", "ca.crt", "-keyfile", "ca.key",
       "-revoke", "old.crt", cwd=d)
    sh("openssl", "ca", "-config", "ca.cnf", "-cert", "ca.crt", "-keyfile", "ca.key",
       "-gencrl", "-out", "ca.crl", cwd=d)
    return d


def listener_config(pki: Path, upstream, client_auth: str) -> dict:
    return base_config(
        listen={"proxy_tls": {
            "addr": "127.0.0.1:0",
            "cert": str(pki / "server.crt"),
            "key": f"${{file:{pki / 'server.key'}}}",
            "client_ca": str(pki / "ca.crt"),
            "client_auth": client_auth,
            "crls": [str(pki / "ca.crl")],
        }},
        consumers=[{"name": "builder", "identify": {"client_cert": {"uri": SPIFFE}}}],
        apis=[{"name": "echo", "hosts": ["127.0.0.1"], "route": "/echo",
               "upstream": f"http://127.0.0.1:{upstream.port}"}],
    )


def tls_addr(gw) -> str:
    for obj in gw.stderr_json():
        v = find_key(obj, "listen.proxy_tls")
        if isinstance(v, str) and v:
            return v
    raise AssertionError("no listen.proxy_tls in the 'listening' line:\n" + gw.stderr_text())


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "10", *args], capture_output=True,
                          text=True, timeout=20, stdin=subprocess.DEVNULL)


def client_args(pki: Path, name: str, proxy: bool) -> list[str]:
    p = "--proxy-" if proxy else "--"
    return [f"{p}cert", str(pki / f"{name}.crt"), f"{p}key", str(pki / f"{name}.key")]


def test_spiffe_client_through_https_proxy_and_route(gateway, upstream, pki):
    gw = gateway(listener_config(pki, upstream, "required"))
    addr = tls_addr(gw)
    # Forward proxy over TLS: curl speaks TLS to the proxy, plain HTTP through it.
    r = curl("--proxy", f"https://{addr}", "--proxy-cacert", str(pki / "ca.crt"),
             *client_args(pki, "builder", proxy=True),
             f"http://127.0.0.1:{upstream.port}/fwd?x=1")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["path"].startswith("/fwd"), r.stdout
    # Route over TLS.
    r = curl("--cacert", str(pki / "ca.crt"), *client_args(pki, "builder", proxy=False),
             "-o", "/dev/null", "-w", "%{http_code}", f"https://{addr}/echo/r")
    assert r.returncode == 0 and r.stdout == "200", (r.stdout, r.stderr)
    fwd = gw.wait_access(lambda e: e.get("kind") == "forward")
    assert fwd["consumer"] == "builder" and fwd["status"] == 200, fwd
    rt = gw.wait_access(lambda e: e.get("kind") == "route")
    assert rt["consumer"] == "builder" and rt["api"] == "echo", rt


def test_required_mode_and_crl_refuse_at_the_handshake(gateway, upstream, pki):
    gw = gateway(listener_config(pki, upstream, "required"))
    addr = tls_addr(gw)
    url = f"https://{addr}/echo/x"
    no_cert = curl("--cacert", str(pki / "ca.crt"), url)
    assert no_cert.returncode != 0, no_cert.stdout
    revoked = curl("--cacert", str(pki / "ca.crt"), *client_args(pki, "old", proxy=False), url)
    assert revoked.returncode != 0, revoked.stdout
    # The gateway says why: no certificate, then the revoked one.
    def reasons():
        return [o.get("error") for o in gw.stderr_json()
                if o.get("message") == "proxy_tls handshake failed"]
    wait_until(lambda: len(reasons()) >= 2)
    assert reasons() == ["peer sent no certificates", "invalid peer certificate: Revoked"], reasons()
    ok = curl("--cacert", str(pki / "ca.crt"), *client_args(pki, "builder", proxy=False),
              "-o", "/dev/null", "-w", "%{http_code}", url)
    assert ok.stdout == "200", ok.stderr
    # Only the good client's request reached the pipeline.
    gw.wait_access(lambda e: e.get("kind") == "route")
    assert [e["consumer"] for e in gw.access_entries()] == ["builder"]


def test_optional_mode_lets_clients_without_a_certificate_in(gateway, upstream, pki):
    gw = gateway(listener_config(pki, upstream, "optional"))
    r = curl("--cacert", str(pki / "ca.crt"), "-o", "/dev/null", "-w", "%{http_code}",
             f"https://{tls_addr(gw)}/echo/x")
    assert r.stdout == "200", r.stderr
    assert gw.wait_access(lambda e: e.get("kind") == "route")["consumer"] == "anonymous"


def served_cn(addr: str, pki: Path) -> str:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        with ctx.wrap_socket(s, server_hostname="127.0.0.1") as t:
            subject = dict(x[0] for x in t.getpeercert()["subject"])
            return subject["commonName"]


def test_reload_swaps_the_server_certificate(gateway, upstream, pki, tmp_path):
    # Own copies of the server files, so other tests keep listener-1.
    for n in ("server.crt", "server.key"):
        (tmp_path / n).write_bytes((pki / n).read_bytes())
    cfg = listener_config(pki, upstream, "optional")
    cfg["listen"]["proxy_tls"]["cert"] = str(tmp_path / "server.crt")
    cfg["listen"]["proxy_tls"]["key"] = f"${{file:{tmp_path / 'server.key'}}}"
    gw = gateway(cfg)
    addr = tls_addr(gw)
    assert served_cn(addr, pki) == "listener-1"
    work = tmp_path / "mint"
    work.mkdir()
    for n in ("ca.crt", "ca.key"):
        (work / n).write_bytes((pki / n).read_bytes())
    server_cert(work, "listener-2")
    for n in ("server.crt", "server.key"):
        (tmp_path / n).write_bytes((work / n).read_bytes())
    r = gw.reload()
    assert r.status_code == 200, r.text
    assert served_cn(addr, pki) == "listener-2"
    # A broken key fails the reload and names the key; the old certificate keeps serving.
    (tmp_path / "server.key").write_text("not a key")
    r = gw.reload()
    assert r.status_code != 200 and "listen.proxy_tls.key" in r.text, r.text
    assert served_cn(addr, pki) == "listener-2"


def test_explain_simulates_a_client_certificate(run_cli, tmp_path):
    cfg = tmp_path / "tollgate.yaml"
    cfg.write_text(
        "unknown_consumer: { action: deny }\n"
        "consumers:\n"
        "  - name: builder\n"
        f"    identify: {{ client_cert: {{ uri: \"{SPIFFE}\" }} }}\n")
    with_cert = run_cli("explain", cfg, "--json", "--cert-uri", SPIFFE, "GET http://api.example.com/x")
    assert with_cert.returncode == 0, with_cert.stderr
    assert json.loads(with_cert.stdout)["consumer"] == "builder", with_cert.stdout
    without = run_cli("explain", cfg, "--json", "GET http://api.example.com/x")
    assert json.loads(without.stdout)["error"] == "consumer_unidentified", without.stdout
