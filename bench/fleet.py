#!/usr/bin/env python3
"""Fleet benchmark: publish-to-applied time across N managed gateways.

Starts a real control plane (`tollgate control-plane`, SQLite, or PostgreSQL with
DATABASE_URL) and N real managed gateways (`tollgate run --control-plane …`), all on
127.0.0.1 with ephemeral ports in a temp dir; waits until every gateway applied version 1,
then publishes ROUNDS new versions one after the other. For each publish it reads what the
control plane records — `created_at_ms` of the version (GET /v1/groups/{g}/configs) and, per
gateway, `applied_at_ms` (GET /v1/gateways: when its first status report naming the version
arrived) — both on the control plane's clock, and prints p50 / p90 / max over all gateways.

The target (issue 5): with 50 gateways on loopback every gateway applies a new version
within 2 s.

Usage:  bench/fleet.py [--gateways 50] [--rounds 3] [--bin target/release/tollgate]
        (TOLLGATE_BIN and DATABASE_URL are read from the environment too)
Exit status: 0 every gateway applied every version, 1 otherwise.
Only the standard library is used.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


class ControlPlane:
    def __init__(self, binary: str, data_dir: Path, database_url: str | None):
        cmd = [binary, "control-plane", "--data-dir", str(data_dir), "--listen", "127.0.0.1:0"]
        if database_url:
            cmd += ["--database-url", database_url]
        self.log = open(data_dir.parent / "control-plane.log", "wb")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log,
                                     stdin=subprocess.DEVNULL)
        self.url = self.fingerprint = self.token = ""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not self.token:
            line = self.proc.stdout.readline().decode()
            if not line:
                break
            if line.startswith("control plane listening on "):
                self.url = line.split()[-1]
            elif line.startswith("TLS certificate SHA-256 fingerprint:"):
                self.fingerprint = line.split()[-1]
            elif "admin operator token" in line:
                self.token = line.split()[-1]
        if not (self.url and self.fingerprint and self.token):
            sys.exit("control plane did not start (an empty database is needed for the admin token)")
        host, port = self.url.removeprefix("https://").rsplit(":", 1)
        self.host, self.port = host, int(port)

    def api(self, method: str, path: str, body: bytes | None = None) -> tuple[int, object]:
        # The certificate is self-signed: pin it by its SHA-256 fingerprint instead of a CA.
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection(self.host, self.port, context=ctx, timeout=30)
        try:
            conn.connect()
            der = conn.sock.getpeercert(binary_form=True)
            if hashlib.sha256(der).hexdigest() != self.fingerprint:
                sys.exit("control plane certificate does not match its printed fingerprint")
            headers = {"Authorization": f"Bearer {self.token}"}
            if body is not None and body.startswith(b"{"):
                headers["Content-Type"] = "application/json"
            conn.request(method, path, body=body, headers=headers)
            r = conn.getresponse()
            data = r.read()
            return r.status, (json.loads(data) if data else None)
        finally:
            conn.close()

    def ok(self, method: str, path: str, body: bytes | None = None) -> object:
        status, v = self.api(method, path, body)
        if status >= 300:
            sys.exit(f"{method} {path}: {status} {v}")
        return v

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def percentile(xs: list[int], p: float) -> int:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, int(round(p / 100 * len(xs) + 0.5)) - 1))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gateways", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bin", default=os.environ.get("TOLLGATE_BIN", ""))
    ap.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = ap.parse_args()
    binary = args.bin
    if not binary:
        subprocess.run(["cargo", "build", "--release", "-p", "tollgate"], cwd=REPO, check=True)
        binary = str(REPO / "target/release/tollgate")

    tmp = Path(tempfile.mkdtemp(prefix="tollgate-fleet-"))
    (tmp / "cp").mkdir()
    cp = ControlPlane(binary, tmp / "cp", args.database_url)
    gateways: list[subprocess.Popen] = []
    failed = False
    try:
        cp.ok("POST", "/v1/groups", json.dumps({"name": "fleet"}).encode())
        cp.ok("POST", "/v1/groups/fleet/configs", b"default_action: deny\n# version 1\n")
        for i in range(args.gateways):
            token = cp.ok("POST", "/v1/groups/fleet/enrollment-tokens")["token"]
            log = open(tmp / f"gw{i}.log", "wb")
            gateways.append(subprocess.Popen(
                [binary, "run", "--control-plane", cp.url, "--enroll-token", token,
                 "--state-dir", str(tmp / f"gw{i}"), "--cp-fingerprint", cp.fingerprint,
                 "--gateway-name", f"gw-{i:02d}", "--proxy-listen", "127.0.0.1:0",
                 "--admin-listen", "127.0.0.1:0"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                env={**os.environ, "TOLLGATE_LOG": "warn"}))

        def applied(version: int) -> list[dict]:
            return [g for g in cp.ok("GET", "/v1/gateways") if g["applied_version"] == version]

        deadline = time.monotonic() + 60
        while len(applied(1)) < args.gateways:
            if time.monotonic() > deadline:
                sys.exit(f"only {len(applied(1))}/{args.gateways} gateways applied version 1; logs in {tmp}")
            time.sleep(0.2)
        print(f"{args.gateways} gateways enrolled and serving version 1")

        all_lags: list[int] = []
        for rnd in range(args.rounds):
            # Let every gateway get back into its long-poll after the previous apply.
            time.sleep(1.0)
            version = cp.ok("POST", "/v1/groups/fleet/configs",
                            f"default_action: deny\n# version {rnd + 2}\n".encode())["version"]
            deadline = time.monotonic() + 30
            while len(done := applied(version)) < args.gateways and time.monotonic() < deadline:
                time.sleep(0.1)
            created = next(v["created_at_ms"] for v in cp.ok("GET", "/v1/groups/fleet/configs")
                           if v["version"] == version)
            lags = [g["applied_at_ms"] - created for g in done]
            if len(done) < args.gateways:
                failed = True
                print(f"version {version}: only {len(done)}/{args.gateways} applied within 30 s")
            if lags:
                all_lags += lags
                print(f"version {version}: {len(done)}/{args.gateways} applied; publish-to-applied "
                      f"p50 {statistics.median(lags):.0f} ms, p90 {percentile(lags, 90)} ms, "
                      f"max {max(lags)} ms")
        if all_lags:
            print(f"ALL {len(all_lags)} applies: p50 {statistics.median(all_lags):.0f} ms, "
                  f"p90 {percentile(all_lags, 90)} ms, max {max(all_lags)} ms "
                  f"(target: max < 2000 ms) -> {'OK' if max(all_lags) < 2000 and not failed else 'MISSED'}")
    finally:
        for p in gateways:
            p.terminate()
        for p in gateways:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        cp.stop()
        if args.keep or failed:
            print(f"logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
