"""Managed gateways (`tollgate run --control-plane …`) against a fake control plane on
loopback that speaks the /v1 protocol and signs bundles with ed25519 exactly as the real one
does (canonical JSON of the bundle, fields in declared order). The fake lets a test serve
bundles the real control plane never would — tampered, unsigned, older, expired — to prove
the gateway refuses them while the old configuration keeps serving; and it can be stopped to
prove the gateway fails static (keeps serving, restarts from its backup)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from helpers import TOLLGATE_BIN, Gateway, GatewayStartError, assert_problem, base_config, \
    metric_value, to_yaml, wait_until


class FakeControlPlane:
    """Enroll (one-time tokens), long-poll config, status reports. `offer` is what the config
    endpoint serves: by default only when its version is newer than `after` (like the real
    server); `force=True` serves it regardless, to test the gateway's own rollback check."""

    def __init__(self, group: str = "acme", port: int = 0):
        self.key = Ed25519PrivateKey.generate()
        raw = self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.public_b64 = base64.b64encode(raw).decode()
        self.key_id = hashlib.sha256(raw).hexdigest()[:16]
        self.group = group
        self.tokens = {"tok-1"}
        self.credential = "cred-" + os.urandom(8).hex()
        self.offer: dict | None = None
        self.force = False
        self.statuses: list[dict] = []
        self.polls = 0
        self.cond = threading.Condition()
        self.closed = False
        self._port = port
        self.server: ThreadingHTTPServer | None = None

    # -- bundles ----------------------------------------------------------
    def sign(self, version: int, yaml: str, *, issued_at: int | None = None,
             ttl: int = 3600, group: str | None = None, key=None) -> dict:
        now = int(time.time())
        bundle = {
            "version": version,
            "group": group or self.group,
            "issued_at": issued_at if issued_at is not None else now,
            "expires_at": (issued_at if issued_at is not None else now) + ttl,
            "key_id": self.key_id,
            "config_yaml": yaml,
        }
        canonical = json.dumps(bundle, separators=(",", ":"), ensure_ascii=False).encode()
        sig = (key or self.key).sign(canonical)
        return {"bundle": bundle, "signature": base64.b64encode(sig).decode()}

    def publish(self, signed: dict, force: bool = False) -> None:
        with self.cond:
            self.offer = signed
            self.force = force
            self.cond.notify_all()

    # -- server -----------------------------------------------------------
    def start(self) -> "FakeControlPlane":
        cp = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _send(self, status: int, body: dict | None = None):
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                if body is not None:
                    self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(data)

            def _authed(self) -> bool:
                return self.headers.get("Authorization") == f"Bearer {cp.credential}"

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n) or b"{}")
                if self.path == "/v1/enroll":
                    if body.get("token") not in cp.tokens:
                        return self._send(401, {"error": "unauthorized", "message": "bad token"})
                    cp.tokens.discard(body["token"])
                    return self._send(200, {
                        "gateway_id": "gw-1", "credential": cp.credential, "group": cp.group,
                        "control_plane_key": {"key_id": cp.key_id, "public_key_b64": cp.public_b64},
                    })
                if self.path == "/v1/gateway/status":
                    if not self._authed():
                        return self._send(401, {"error": "unauthorized", "message": "no"})
                    cp.statuses.append(body)
                    return self._send(204)
                self._send(404, {"error": "not_found", "message": self.path})

            def do_GET(self):
                url = urlparse(self.path)
                if url.path != "/v1/gateway/config":
                    return self._send(404, {"error": "not_found", "message": self.path})
                if not self._authed():
                    return self._send(401, {"error": "unauthorized", "message": "no"})
                q = parse_qs(url.query)
                after = int(q.get("after", ["0"])[0])
                # Hold at most 1 s (not the 30 s asked for) so stopping the fake is quick; the
                # gateway simply polls again.
                deadline = time.monotonic() + min(int(q.get("wait", ["0"])[0]), 1)
                with cp.cond:
                    cp.polls += 1
                    while True:
                        o = cp.offer
                        if o is not None and (cp.force or o["bundle"]["version"] > after):
                            return self._send(200, o)
                        left = deadline - time.monotonic()
                        if left <= 0 or cp.closed:
                            return self._send(204)
                        cp.cond.wait(left)

        self.server = ThreadingHTTPServer(("127.0.0.1", self._port), Handler)
        self.server.daemon_threads = True
        self._port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def stop(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def restart(self) -> "FakeControlPlane":
        """Same port, key and state, serving again."""
        self.closed = False
        return self.start()


class ManagedGateway(Gateway):
    """`tollgate run` in managed mode; no --config (the control plane provides it)."""

    def __init__(self, workdir: Path, cp: FakeControlPlane, state_dir: Path,
                 token: str | None = "tok-1", pin_key: bool = True, start: bool = True):
        self.cp, self.state_dir, self.token, self.pin_key = cp, state_dir, token, pin_key
        super().__init__(workdir, "", start=False)
        if start:
            self.start()

    def command(self) -> list[str]:
        cmd = [TOLLGATE_BIN, "run", "--control-plane", self.cp.url,
               "--state-dir", str(self.state_dir),
               "--proxy-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]
        if self.token:
            cmd += ["--enroll-token", self.token]
        if self.pin_key:
            cmd += ["--cp-public-key", self.cp.public_b64]
        return cmd

    def start(self, timeout: float = 15.0) -> None:
        self._stdout = open(self.stdout_path, "wb")
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                     stdout=self._stdout, stderr=subprocess.PIPE, env=self.env)
        ready = threading.Event()
        self._reader = threading.Thread(target=self._read_stderr, args=(ready,), daemon=True)
        self._reader.start()
        if timeout <= 0:
            return
        if not ready.wait(timeout) or not self.proxy_addr:
            self.kill()
            raise GatewayStartError("managed gateway did not start listening:\n" + self.stderr_text())

    def wait_listening(self, timeout: float = 15.0) -> None:
        assert wait_until(lambda: bool(self.proxy_addr and self.admin_addr), timeout=timeout), \
            self.stderr_text()[-3000:]

    def metrics(self) -> str:
        return self.admin("GET", "/metrics").text


def policy(allowed_prefix: str) -> str:
    """Deny by default; allow GET on the loopback upstream under `allowed_prefix` only."""
    return to_yaml(base_config(default_action="deny", apis=[{
        "name": "echo", "hosts": ["127.0.0.1"],
        "allow": [{"methods": ["GET"], "paths": [f"{allowed_prefix}/**"]}],
    }]))


@pytest.fixture
def cp():
    srv = FakeControlPlane().start()
    yield srv
    srv.stop()


@pytest.fixture
def managed(tmp_path):
    started: list[ManagedGateway] = []
    counter = [0]

    def make(cp, state_dir=None, **kw) -> ManagedGateway:
        counter[0] += 1
        gw = ManagedGateway(tmp_path / f"mgw{counter[0]}", cp,
                            state_dir or (tmp_path / "state"), **kw)
        started.append(gw)
        return gw

    yield make
    for gw in started:
        gw.kill()


def rejected(gw: ManagedGateway, reason: str) -> float:
    return metric_value(gw.metrics(), "tollgate_config_bundle_rejected_total", reason=reason) or 0


def test_enroll_apply_v1_then_v2(cp, managed, upstream, tmp_path):
    cp.publish(cp.sign(1, policy("/v1")))
    gw = managed(cp)
    assert gw.get(f"{upstream.base}/v1/a").status_code == 200
    assert_problem(gw.get(f"{upstream.base}/v2/a"), 403, "endpoint_not_allowed")
    # Enrollment stored with 0600; the token was spent (the fake refuses it now).
    enr = tmp_path / "state" / "enrollment.json"
    assert stat.S_IMODE(enr.stat().st_mode) == 0o600
    assert json.loads(enr.read_text())["credential"] == cp.credential
    assert "tok-1" not in cp.tokens

    cp.publish(cp.sign(2, policy("/v2")))
    assert wait_until(lambda: gw.get(f"{upstream.base}/v2/a").status_code == 200, timeout=8), \
        gw.stderr_text()[-3000:]
    assert_problem(gw.get(f"{upstream.base}/v1/a"), 403, "endpoint_not_allowed")
    assert gw.config_version() == 2
    # A local reload cannot override the control plane.
    r = gw.reload()
    assert r.status_code == 422 and "managed by the control plane" in r.text, r.text
    assert gw.get(f"{upstream.base}/v2/a").status_code == 200
    m = gw.metrics()
    assert metric_value(m, "tollgate_config_applied_version") == 2
    assert metric_value(m, "tollgate_control_plane_connected") == 1
    assert (metric_value(m, "tollgate_config_publish_to_apply_seconds_count") or 0) >= 2, m
    # The backup is the signed bundle of v2, byte-for-byte what the control plane signed.
    backup = json.loads((tmp_path / "state" / "bundle.json").read_text())
    assert backup == cp.offer
    assert stat.S_IMODE((tmp_path / "state" / "bundle.json").stat().st_mode) == 0o600
    # Status was reported with the applied version.
    assert wait_until(lambda: any(s["applied_version"] == 2 and s["healthy"]
                                  for s in cp.statuses), timeout=5), cp.statuses


@pytest.mark.parametrize("kind", ["tampered", "unsigned", "foreign_key", "older", "expired",
                                  "wrong_group", "invalid_config"])
def test_bad_bundles_are_refused_and_old_config_keeps_serving(cp, managed, upstream, kind):
    cp.publish(cp.sign(2, policy("/v1")))
    gw = managed(cp)
    assert gw.get(f"{upstream.base}/v1/a").status_code == 200
    force = False
    if kind == "tampered":
        bad = cp.sign(3, policy("/v1"))
        bad["bundle"]["config_yaml"] = policy("/v2")
        reason = "bad_signature"
    elif kind == "unsigned":
        bad = cp.sign(3, policy("/v2"))
        bad["signature"] = ""
        reason = "bad_signature"
    elif kind == "foreign_key":
        bad = cp.sign(3, policy("/v2"), key=Ed25519PrivateKey.generate())
        reason = "bad_signature"
    elif kind == "older":
        bad, force, reason = cp.sign(1, policy("/v2")), True, "rollback"
    elif kind == "expired":
        bad = cp.sign(3, policy("/v2"), issued_at=int(time.time()) - 7200, ttl=3600)
        reason = "expired"
    elif kind == "wrong_group":
        bad, reason = cp.sign(3, policy("/v2"), group="other"), "wrong_group"
    else:
        bad, reason = cp.sign(3, "apis: 5\n"), "invalid_config"
    before = rejected(gw, reason)
    cp.publish(bad, force=force)
    assert wait_until(lambda: rejected(gw, reason) > before, timeout=8), gw.stderr_text()[-3000:]
    # Offered again on later polls, it is refused once, not counted and logged on every poll.
    polls = cp.polls
    assert wait_until(lambda: cp.polls >= polls + 2, timeout=10)
    assert rejected(gw, reason) == before + 1
    # Old policy still enforced: /v1 allowed, /v2 denied; version unchanged.
    assert gw.get(f"{upstream.base}/v1/a").status_code == 200
    assert_problem(gw.get(f"{upstream.base}/v2/a"), 403, "endpoint_not_allowed")
    assert gw.config_version() == 2
    assert metric_value(gw.metrics(), "tollgate_config_applied_version") == 2
    assert wait_until(lambda: any(s.get("last_error") and not s["healthy"] for s in cp.statuses),
                      timeout=5), cp.statuses
    assert gw.alive()
    # A good, newer bundle is still applied afterwards and clears the error.
    cp.publish(cp.sign(4, policy("/v2")))
    assert wait_until(lambda: gw.get(f"{upstream.base}/v2/a").status_code == 200, timeout=40), \
        gw.stderr_text()[-3000:]
    assert wait_until(lambda: any(s["applied_version"] == 4 and s["healthy"] and not s["last_error"]
                                  for s in cp.statuses), timeout=5), cp.statuses


def test_control_plane_down_keeps_serving_and_restart_serves_from_backup(cp, managed, upstream,
                                                                         tmp_path):
    cp.publish(cp.sign(1, policy("/v1")))
    gw = managed(cp)
    assert gw.get(f"{upstream.base}/v1/a").status_code == 200
    cp.stop()
    assert wait_until(lambda: metric_value(gw.metrics(), "tollgate_control_plane_connected") == 0,
                      timeout=8), gw.stderr_text()[-3000:]
    assert gw.get(f"{upstream.base}/v1/a").status_code == 200
    assert_problem(gw.get(f"{upstream.base}/v2/a"), 403, "endpoint_not_allowed")

    # Restart with the control plane still down: serves v1 from the backup at once.
    gw.kill()
    gw2 = managed(cp, token=None)
    assert gw2.get(f"{upstream.base}/v1/a").status_code == 200
    assert_problem(gw2.get(f"{upstream.base}/v2/a"), 403, "endpoint_not_allowed")
    assert gw2.config_version() == 1
    assert "backup" in gw2.stderr_text()

    # The control plane returns with v2: the gateway catches up.
    cp.restart()
    cp.publish(cp.sign(2, policy("/v2")))
    assert wait_until(lambda: gw2.get(f"{upstream.base}/v2/a").status_code == 200, timeout=40), \
        gw2.stderr_text()[-3000:]
    assert metric_value(gw2.metrics(), "tollgate_control_plane_connected") == 1


def test_expired_backup_serves_and_is_renewed(cp, managed, upstream, tmp_path):
    now = int(time.time())
    cp.publish(cp.sign(1, policy("/v1"), issued_at=now - 100, ttl=103))  # expires in ~3 s
    gw = managed(cp)
    assert gw.get(f"{upstream.base}/v1/a").status_code == 200
    gw.kill()
    assert wait_until(lambda: time.time() > now + 4, timeout=6)
    # Expired backup, control plane down: it still serves (fail static), loudly.
    cp.stop()
    gw2 = managed(cp, token=None)
    assert gw2.get(f"{upstream.base}/v1/a").status_code == 200
    assert_problem(gw2.get(f"{upstream.base}/v2/a"), 403, "endpoint_not_allowed")
    assert "expired backup" in gw2.stderr_text()
    gw2.kill()
    # Control plane back with a re-signed copy of the same version: the backup is renewed and
    # the error cleared, without a new version being published.
    cp.restart()
    cp.statuses.clear()
    renewed = cp.sign(1, policy("/v1"), issued_at=now - 100, ttl=30 * 86400)
    cp.publish(renewed)
    gw3 = managed(cp, token=None)
    assert gw3.get(f"{upstream.base}/v1/a").status_code == 200
    assert wait_until(lambda: any(s["applied_version"] == 1 and s["healthy"] and not s["last_error"]
                                  for s in cp.statuses), timeout=10), \
        (cp.statuses, gw3.stderr_text()[-3000:])
    backup = json.loads((tmp_path / "state" / "bundle.json").read_text())
    assert backup == renewed
    assert gw3.config_version() == 1


def test_tampered_backup_does_not_serve(cp, managed, upstream, tmp_path):
    cp.publish(cp.sign(1, policy("/v1")))
    gw = managed(cp)
    assert gw.get(f"{upstream.base}/v1/a").status_code == 200
    gw.kill()
    cp.stop()
    path = tmp_path / "state" / "bundle.json"
    b = json.loads(path.read_text())
    b["bundle"]["config_yaml"] = policy("/")
    path.write_text(json.dumps(b))
    gw2 = managed(cp, token=None, start=False)
    gw2.start(timeout=0)
    assert wait_until(lambda: "not configured" in gw2.stderr_text(), timeout=10), gw2.stderr_text()
    assert "listening" not in gw2.stderr_text()
    assert gw2.alive()


def test_never_configured_gateway_does_not_listen_until_first_bundle(cp, managed, upstream):
    gw = managed(cp, start=False)
    gw.start(timeout=0)
    assert wait_until(lambda: "not configured" in gw.stderr_text(), timeout=10), gw.stderr_text()
    # Enrolled and polling, but nothing listens: no empty or default policy is served.
    assert wait_until(lambda: cp.polls >= 2, timeout=10)
    assert not gw.proxy_addr and "listening" not in gw.stderr_text()
    assert gw.alive()
    cp.publish(cp.sign(1, policy("/v1")))
    gw.wait_listening()
    assert gw.get(f"{upstream.base}/v1/a").status_code == 200
    assert_problem(gw.get(f"{upstream.base}/v2/a"), 403, "endpoint_not_allowed")


def test_pinned_key_mismatch_refuses_to_start(cp, managed):
    gw = managed(cp, start=False, pin_key=False)
    other = base64.b64encode(Ed25519PrivateKey.generate().public_key().public_bytes(
        Encoding.Raw, PublicFormat.Raw)).decode()
    gw.command = lambda: [TOLLGATE_BIN, "run", "--control-plane", cp.url, "--state-dir",
                          str(gw.state_dir), "--enroll-token", "tok-1", "--cp-public-key", other]
    gw.start(timeout=0)
    assert gw.wait(timeout=15) != 0
    assert "does not match the pinned" in gw.stderr_text()


def test_used_enrollment_token_is_a_clear_error(cp, managed, tmp_path):
    cp.tokens.clear()
    gw = managed(cp, start=False)
    gw.start(timeout=0)
    assert gw.wait(timeout=15) != 0
    assert "enrollment refused" in gw.stderr_text()


# --------------------------------------------------------------------------
# Against the real control plane (`tollgate control-plane`): HTTPS with the generated
# self-signed certificate pinned by fingerprint, real enrollment, publish and status.
# --------------------------------------------------------------------------

class RealControlPlane:
    def __init__(self, data_dir: Path, listen: str = "127.0.0.1:0"):
        self.data_dir, self.listen = data_dir, listen
        self.proc: subprocess.Popen | None = None
        self.url = self.fingerprint = self.public_key = ""
        self.token = ""

    def start(self) -> "RealControlPlane":
        restart = bool(self.token)
        self.proc = subprocess.Popen(
            [TOLLGATE_BIN, "control-plane", "--data-dir", str(self.data_dir),
             "--listen", self.listen],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline().decode()
            if not line:
                break
            if line.startswith("control plane listening on "):
                self.url = line.split()[-1]
                self.listen = self.url.removeprefix("https://")
            elif line.startswith("TLS certificate SHA-256 fingerprint:"):
                self.fingerprint = line.split()[-1]
            elif line.startswith("bundle signing key:"):
                self.public_key = line.split()[-1]
            elif "admin operator token" in line:
                self.token = line.split()[-1]
            # The admin token is printed only on the first start, after the other lines.
            if self.url and self.fingerprint and self.public_key and (
                    "admin operator token" in line or (restart and "signing key" in line)):
                break
        assert self.url and self.fingerprint, "control plane did not start"
        return self

    def api(self, method: str, path: str, **kw):
        import requests
        import urllib3
        urllib3.disable_warnings()
        with requests.Session() as s:
            s.trust_env = False
            # The test client skips verification; the gateway under test pins the fingerprint.
            return s.request(method, self.url + path, verify=False, timeout=10,
                             headers={"Authorization": f"Bearer {self.token}"}, **kw)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)


class RealManagedGateway(ManagedGateway):
    def __init__(self, workdir, real: RealControlPlane, state_dir, token=None,
                 fingerprint=None, start=True):
        self.real, self.fp = real, fingerprint or real.fingerprint
        self.cp = real  # for the base class
        super().__init__(workdir, real, state_dir, token=token, pin_key=False, start=start)

    def command(self) -> list[str]:
        cmd = [TOLLGATE_BIN, "run", "--control-plane", self.real.url,
               "--state-dir", str(self.state_dir), "--cp-fingerprint", self.fp,
               "--gateway-name", "site-1", "--label", "site=test",
               "--proxy-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]
        if self.token:
            cmd += ["--enroll-token", self.token]
        return cmd


def test_real_control_plane_end_to_end(tmp_path, upstream):
    real = RealControlPlane(tmp_path / "cp").start()
    gws: list[ManagedGateway] = []
    try:
        assert real.api("POST", "/v1/groups", json={"name": "acme", "labels": {}}).status_code == 201
        tok = real.api("POST", "/v1/groups/acme/enrollment-tokens").json()["token"]
        r = real.api("POST", "/v1/groups/acme/configs", data=policy("/v1"))
        assert r.status_code == 201 and r.json()["version"] == 1, r.text

        state = tmp_path / "state"
        gw = RealManagedGateway(tmp_path / "g1", real, state, token=tok)
        gws.append(gw)
        assert gw.get(f"{upstream.base}/v1/a").status_code == 200
        assert_problem(gw.get(f"{upstream.base}/v2/a"), 403, "endpoint_not_allowed")
        enr = json.loads((state / "enrollment.json").read_text())
        assert enr["control_plane_key"]["public_key_b64"] == real.public_key

        # Publish v2: the held long-poll wakes and the gateway applies it.
        assert real.api("POST", "/v1/groups/acme/configs", data=policy("/v2")).json()["version"] == 2
        assert wait_until(lambda: gw.get(f"{upstream.base}/v2/a").status_code == 200, timeout=10), \
            gw.stderr_text()[-3000:]

        def reported(version):
            gws_ = real.api("GET", "/v1/gateways").json()
            return any(g["applied_version"] == version and g["healthy"] and g["name"] == "site-1"
                       for g in gws_)
        assert wait_until(lambda: reported(2), timeout=10), real.api("GET", "/v1/gateways").text

        # Control plane down: keeps serving; a restarted gateway serves from its backup.
        real.stop()
        assert gw.get(f"{upstream.base}/v2/a").status_code == 200
        gw.kill()
        gw2 = RealManagedGateway(tmp_path / "g2", real, state)
        gws.append(gw2)
        assert gw2.get(f"{upstream.base}/v2/a").status_code == 200
        assert gw2.config_version() == 2

        # The control plane comes back (same data dir and port) with v3: the gateway catches up.
        real.start()
        assert real.api("POST", "/v1/groups/acme/configs", data=policy("/v3")).json()["version"] == 3
        assert wait_until(lambda: gw2.get(f"{upstream.base}/v3/a").status_code == 200,
                          timeout=40), gw2.stderr_text()[-3000:]
        assert_problem(gw2.get(f"{upstream.base}/v2/a"), 403, "endpoint_not_allowed")
    finally:
        for g in gws:
            g.kill()
        real.stop()


def test_real_control_plane_wrong_fingerprint_is_refused(tmp_path):
    real = RealControlPlane(tmp_path / "cp").start()
    try:
        assert real.api("POST", "/v1/groups", json={"name": "acme", "labels": {}}).status_code == 201
        tok = real.api("POST", "/v1/groups/acme/enrollment-tokens").json()["token"]
        gw = RealManagedGateway(tmp_path / "g", real, tmp_path / "state", token=tok,
                                fingerprint="00" * 32, start=False)
        try:
            gw.start(timeout=0)
            assert wait_until(lambda: "does not match the pinned --cp-fingerprint"
                              in gw.stderr_text(), timeout=10), gw.stderr_text()
            assert not (tmp_path / "state" / "enrollment.json").exists()
            assert "listening" not in gw.stderr_text()
        finally:
            gw.kill()
    finally:
        real.stop()
