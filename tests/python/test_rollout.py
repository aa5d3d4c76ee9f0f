"""Rollouts with the real control plane and five real managed gateways (`tollgate run
--control-plane …`) on loopback, driven through the operator CLI (`tollgate cp …`): a staged
version goes to the canaries chosen by label, is rolled back (a new, higher version carrying the
old configuration), then another goes to a 100 % canary and is promoted; what each gateway
*enforces* is checked through its proxy after every step. Also: a viewer token scoped to one
group sees only that group through the CLI."""

from __future__ import annotations

import subprocess

from helpers import TOLLGATE_BIN, assert_problem, wait_until
from test_managed import RealControlPlane, RealManagedGateway, policy


class LabelledGateway(RealManagedGateway):
    def __init__(self, workdir, real, state_dir, token, name: str, labels: dict[str, str]):
        self.gw_name, self.labels = name, labels
        super().__init__(workdir, real, state_dir, token=token)

    def command(self) -> list[str]:
        cmd = [TOLLGATE_BIN, "run", "--control-plane", self.real.url,
               "--state-dir", str(self.state_dir), "--cp-fingerprint", self.fp,
               "--gateway-name", self.gw_name,
               "--proxy-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]
        for k, v in self.labels.items():
            cmd += ["--label", f"{k}={v}"]
        if self.token:
            cmd += ["--enroll-token", self.token]
        return cmd


def cli(real: RealControlPlane, *args: str, token: str | None = None, ok: bool = True):
    r = subprocess.run(
        [TOLLGATE_BIN, "cp", "--url", real.url, "--token", token or real.token,
         "--ca-fingerprint", real.fingerprint, *args],
        capture_output=True, text=True, timeout=30)
    if ok:
        assert r.returncode == 0, f"tollgate cp {' '.join(args)}: {r.stderr}"
    return r


def allows(gw, upstream, prefix: str) -> bool:
    return gw.get(f"{upstream.base}{prefix}/a").status_code == 200


def test_canary_by_label_rollback_then_promote(tmp_path, upstream):
    real = RealControlPlane(tmp_path / "cp").start()
    gws: list[LabelledGateway] = []
    try:
        cli(real, "groups", "create", "acme")
        (tmp_path / "v1.yaml").write_text(policy("/v1"))
        (tmp_path / "v2.yaml").write_text(policy("/v2"))
        (tmp_path / "v4.yaml").write_text(policy("/v4"))
        assert "version 1" in cli(real, "configs", "publish", "acme", str(tmp_path / "v1.yaml")).stdout
        for i in range(5):
            tok = cli(real, "tokens", "create", "acme").stdout.strip()
            ring = "canary" if i < 2 else "main"
            gws.append(LabelledGateway(tmp_path / f"g{i}", real, tmp_path / f"s{i}", tok,
                                       f"site-{i}", {"ring": ring}))
        canaries, others = gws[:2], gws[2:]
        for gw in gws:
            assert allows(gw, upstream, "/v1")
            assert_problem(gw.get(f"{upstream.base}/v2/a"), 403, "endpoint_not_allowed")

        # Staged: stored and signed, assigned to nobody.
        out = cli(real, "configs", "publish", "acme", str(tmp_path / "v2.yaml"), "--no-assign").stdout
        assert "version 2 (not assigned)" in out
        out = cli(real, "rollout", "start", "acme", "2", "--canary-labels", "ring=canary").stdout
        assert "canary 100%" in out and "canary" in out
        lines = {ln.split()[1]: ln for ln in out.splitlines() if ln.startswith("gw_")}
        assert sorted(ln.split()[2] == "yes" for ln in lines.values()) == [False] * 3 + [True] * 2
        for gw in canaries:
            assert wait_until(lambda: allows(gw, upstream, "/v2"), timeout=10), gw.stderr_text()[-2000:]
            assert gw.config_version() == 2
        # The canaries applied version 2 (and reported it); the others were never offered it.
        status = real.api("GET", "/v1/groups/acme/rollout").json()
        assert wait_until(lambda: all(
            g["applied_version"] == g["assigned_version"]
            for g in real.api("GET", "/v1/gateways").json()), timeout=10)
        for gw in others:
            assert gw.config_version() == 1
            assert_problem(gw.get(f"{upstream.base}/v2/a"), 403, "endpoint_not_allowed")
        assert {g["name"] for g in status["gateways"] if g["canary"]} == {"site-0", "site-1"}

        # Rollback: version 3 carries version 1's configuration, for every gateway.
        out = cli(real, "rollout", "rollback", "acme").stdout
        assert "rolled_back" in out and "re-issued as version 3" in out
        for gw in gws:
            assert wait_until(lambda: gw.config_version() == 3, timeout=10), gw.stderr_text()[-2000:]
            assert allows(gw, upstream, "/v1")
            assert_problem(gw.get(f"{upstream.base}/v2/a"), 403, "endpoint_not_allowed")

        # Next: 100 % canary, then promote; every gateway enforces version 5 (v4.yaml).
        assert "version 4" in cli(real, "configs", "publish", "acme", str(tmp_path / "v4.yaml"),
                                   "--no-assign").stdout
        # A plain publish while a rollout is in progress is refused with a clear message.
        cli(real, "rollout", "start", "acme", "4", "--canary", "100%")
        r = cli(real, "configs", "publish", "acme", str(tmp_path / "v1.yaml"), ok=False)
        assert r.returncode != 0 and "rollout in progress" in r.stderr
        out = cli(real, "rollout", "promote", "acme").stdout
        assert "promoted" in out and "group acme: version 4" in out
        for gw in gws:
            assert wait_until(lambda: allows(gw, upstream, "/v4"), timeout=10), gw.stderr_text()[-2000:]
            assert gw.config_version() == 4
        assert wait_until(lambda: all(
            g["applied_version"] == 4 and not g["drift"] and g["applied_at_ms"] > 0
            for g in real.api("GET", "/v1/gateways").json()), timeout=10)

        # Back to version 1's policy after the promote: a copy of it as version 5.
        assert "restored version 1 of acme as version 5" in cli(real, "configs", "restore", "acme", "1").stdout
        for gw in gws:
            assert wait_until(lambda: gw.config_version() == 5, timeout=10), gw.stderr_text()[-2000:]
            assert allows(gw, upstream, "/v1")
            assert_problem(gw.get(f"{upstream.base}/v4/a"), 403, "endpoint_not_allowed")

        # Audited: who, when, what.
        audit = cli(real, "audit", "--limit", "200").stdout
        for action in ("rollout.start", "rollout.rollback", "rollout.promote", "config.restore"):
            assert action in audit
    finally:
        for g in gws:
            g.kill()
        real.stop()


def test_scoped_viewer_cli_sees_only_its_group(tmp_path):
    real = RealControlPlane(tmp_path / "cp").start()
    try:
        for g in ("acme", "globex"):
            cli(real, "groups", "create", g)
        token = cli(real, "operators", "create", "acme-view", "--role", "viewer",
                    "--group", "acme").stdout.strip()
        assert token.startswith("tgop_")
        out = cli(real, "groups", "list", token=token).stdout
        assert "acme" in out and "globex" not in out
        r = cli(real, "configs", "list", "globex", token=token, ok=False)
        assert r.returncode != 0 and "403" in r.stderr
        r = cli(real, "rollout", "status", "globex", token=token, ok=False)
        assert r.returncode != 0 and "403" in r.stderr
        assert "no rollout" in cli(real, "rollout", "status", "acme", token=token).stdout
        audit = cli(real, "audit", token=token).stdout
        assert "group.create" in audit and "globex" not in audit
    finally:
        real.stop()


def test_sqlite_backup_while_serving_then_restore(tmp_path):
    """`tollgate control-plane --backup-to DIR` while the control plane serves; a control plane
    started on the backup has the same state (as of the backup), the same signing key and TLS
    identity, and the gateways' credentials still work."""
    import requests
    real = RealControlPlane(tmp_path / "cp").start()
    try:
        cli(real, "groups", "create", "acme")
        (tmp_path / "v1.yaml").write_text(policy("/v1"))
        (tmp_path / "v2.yaml").write_text(policy("/v2"))
        cli(real, "configs", "publish", "acme", str(tmp_path / "v1.yaml"))
        tok = cli(real, "tokens", "create", "acme").stdout.strip()
        enr = real.api("POST", "/v1/enroll", json={"token": tok, "name": "gw", "labels": {}}).json()
        backup = tmp_path / "backup"
        r = subprocess.run([TOLLGATE_BIN, "control-plane", "--data-dir", str(tmp_path / "cp"),
                            "--backup-to", str(backup)], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        assert oct((backup / "signing.key").stat().st_mode & 0o777) == "0o600"
        # After the backup: not in it.
        cli(real, "configs", "publish", "acme", str(tmp_path / "v2.yaml"))
        # The target must be new: an existing directory is refused, nothing overwritten.
        r = subprocess.run([TOLLGATE_BIN, "control-plane", "--data-dir", str(tmp_path / "cp"),
                            "--backup-to", str(backup)], capture_output=True, text=True, timeout=30)
        assert r.returncode != 0 and "must not exist" in r.stderr
    finally:
        real.stop()

    restored = RealControlPlane(backup)
    restored.token = real.token  # the admin token is in the database, not printed again
    restored.start()
    try:
        assert restored.fingerprint == real.fingerprint
        assert restored.public_key == real.public_key
        versions = restored.api("GET", "/v1/groups/acme/configs").json()
        assert [v["version"] for v in versions] == [1]
        with requests.Session() as s:
            s.trust_env = False
            got = s.get(restored.url + "/v1/gateway/config?after=0&wait=0", verify=False, timeout=10,
                        headers={"Authorization": f"Bearer {enr['credential']}"})
        assert got.status_code == 200 and got.json()["bundle"]["version"] == 1
        # The gateway still serves version 2 (published after the backup) and says so: the next
        # publish must be newer than that, or the gateway would refuse it as a rollback.
        with requests.Session() as s:
            s.trust_env = False
            r = s.post(restored.url + "/v1/gateway/status", verify=False, timeout=10,
                       headers={"Authorization": f"Bearer {enr['credential']}"},
                       json={"applied_version": 2, "healthy": True, "started_at": 1})
        assert r.status_code == 204
        out = cli(restored, "configs", "publish", "acme", str(tmp_path / "v1.yaml")).stdout
        assert "as version 3" in out
    finally:
        restored.stop()
