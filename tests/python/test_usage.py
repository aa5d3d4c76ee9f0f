"""Fleet usage end to end: a real `tollgate control-plane` (SQLite, and PostgreSQL at
127.0.0.1:5432) and real managed gateway processes sending real traffic to a loopback echo
upstream. Usage is aggregated on the gateway, buffered on disk under --state-dir and
uploaded; these tests prove the server's totals equal the requests sent — exactly once —
through a control-plane outage, a gateway SIGKILL, and a replay of already-acknowledged
batches (a crash between the server's commit and the local delete); that the bounded buffer
evicts oldest first and counts it; that CSV export parses; and that a viewer scoped to one
group sees only its group."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import requests

from helpers import TOLLGATE_BIN, base_config, metric_value, to_yaml, wait_until
from test_managed import RealControlPlane, RealManagedGateway, policy


class UsageGateway(RealManagedGateway):
    """A managed gateway draining usage every second (the default is a minute)."""

    def __init__(self, *a, buffer_max: int | None = None, interval: int = 1, **kw):
        self.buffer_max = buffer_max
        self.interval = interval
        super().__init__(*a, **kw)

    def command(self) -> list[str]:
        cmd = super().command() + ["--usage-interval", str(self.interval)]
        if self.buffer_max is not None:
            cmd += ["--usage-buffer-max-bytes", str(self.buffer_max)]
        return cmd


def segments(state: Path) -> list[Path]:
    d = state / "usage"
    return sorted(d.glob("*.batch")) if d.exists() else []


def buffered_requests(state: Path) -> int:
    """Requests counted in the batches waiting on disk."""
    total = 0
    for p in segments(state):
        total += sum(r["count"] for r in json.loads(p.read_text())["rows"])
    return total


def totals(real: RealControlPlane, **params) -> dict:
    q = {"from": int(time.time()) - 3600, "to": int(time.time()) + 120, "step": 0, **params}
    r = real.api("GET", "/v1/usage", params=q)
    assert r.status_code == 200, r.text
    pts = r.json()["points"]
    keys = ("requests", "errors", "limited", "bytes_out", "cost")
    return {k: sum(p[k] for p in pts) for k in keys}


@pytest.fixture(params=["sqlite", "postgres"])
def db(request, monkeypatch):
    """The control plane's database: SQLite in its data dir, or a throw-away PostgreSQL
    database (passed through TOLLGATE_CP_DATABASE_URL, which the control plane reads)."""
    if request.param == "sqlite":
        yield "sqlite"
        return
    if shutil.which("psql") is None:
        pytest.skip("psql is not installed")
    user = os.environ.get("PGUSER", "postgres")
    name = "tg_usage_" + uuid.uuid4().hex[:12]

    def psql(sql: str) -> None:
        subprocess.run(["psql", "-h", "127.0.0.1", "-U", user, "-d", "test", "-v", "ON_ERROR_STOP=1",
                        "-qc", sql], check=True, capture_output=True, timeout=30)
    psql(f"CREATE DATABASE {name}")
    monkeypatch.setenv("TOLLGATE_CP_DATABASE_URL", f"postgres://{user}@127.0.0.1:5432/{name}")
    yield "postgres"
    monkeypatch.delenv("TOLLGATE_CP_DATABASE_URL")
    psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def fleet(tmp_path):
    """Starts a control plane with group `acme` on policy('/v1'); yields a maker of gateways."""
    real = RealControlPlane(tmp_path / "cp").start()
    started: list[UsageGateway] = []
    n = [0]
    assert real.api("POST", "/v1/groups", json={"name": "acme", "labels": {}}).status_code == 201
    assert real.api("POST", "/v1/groups/acme/configs", data=policy("/v1")).status_code == 201

    def gateway(state: Path, enroll: bool = True, **kw) -> UsageGateway:
        n[0] += 1
        tok = real.api("POST", "/v1/groups/acme/enrollment-tokens").json()["token"] if enroll else None
        gw = UsageGateway(tmp_path / f"gw{n[0]}", real, state, token=tok, **kw)
        started.append(gw)
        return gw

    yield real, gateway
    for g in started:
        g.kill()
    real.stop()


def send(gw, upstream, ok: int, denied: int) -> None:
    for i in range(ok):
        assert gw.get(f"{upstream.base}/v1/items/{i}").status_code == 200
    for _ in range(denied):
        assert gw.get(f"{upstream.base}/v2/secret").status_code == 403


def test_usage_counted_exactly_once_through_outage_crash_and_replay(db, fleet, upstream, tmp_path):
    real, gateway = fleet
    state = tmp_path / "state"
    gw = gateway(state)
    send(gw, upstream, ok=5, denied=2)
    assert wait_until(lambda: totals(real)["requests"] == 7, timeout=15), totals(real)
    t = totals(real)
    assert (t["errors"], t["limited"], t["cost"]) == (0, 0, 5), t

    # (a) Control-plane outage: usage waits on disk.
    real.stop()
    send(gw, upstream, ok=6, denied=1)
    assert wait_until(lambda: buffered_requests(state) == 7, timeout=15), \
        [p.read_text()[:300] for p in segments(state)]
    assert (metric_value(gw.metrics(), "tollgate_usage_buffer_bytes") or 0) > 0
    # (The upload attempt follows the write in the same interval.)
    assert wait_until(lambda: (metric_value(gw.metrics(), "tollgate_usage_upload_failures_total")
                               or 0) >= 1, timeout=10)

    # (b) Gateway crash after buffering, before any acknowledgement: SIGKILL.
    gw.kill()
    saved = tmp_path / "saved-segments"
    saved.mkdir()
    for p in segments(state):
        shutil.copy2(p, saved / p.name)

    # The control plane returns on the same data dir and port; the restarted gateway (same
    # state dir, already enrolled) replays the buffer in order.
    real.start()
    gw2 = gateway(state, enroll=False)
    assert wait_until(lambda: totals(real)["requests"] == 14 and not segments(state), timeout=20), \
        (totals(real), segments(state), gw2.stderr_text()[-2000:])

    # (c) A crash between the server's commit and the local delete: the acknowledged batches
    # are still on disk at the next start and are sent again. Counted once all the same.
    gw2.kill()
    for p in saved.iterdir():
        shutil.copy2(p, state / "usage" / p.name)
    gw3 = gateway(state, enroll=False)
    # Segments are deleted only after the control plane answered for them.
    assert wait_until(lambda: not segments(state), timeout=20), gw3.stderr_text()[-2000:]
    assert metric_value(gw3.metrics(), "tollgate_usage_batches_uploaded_total") >= 1
    t = totals(real)
    assert t["requests"] == 14 and t["cost"] == 11, t

    # Audit events from the fleet: the three denials with their reason, and config applied.
    r = real.api("GET", "/v1/audit/events", params={"group": "acme", "kind": "deny"})
    assert r.status_code == 200, r.text
    assert sum(e["count"] for e in r.json()) == 3, r.json()
    assert {e["reason"] for e in r.json()} == {"endpoint_not_allowed"}
    r = real.api("GET", "/v1/audit/events", params={"kind": "config_applied"})
    assert r.json() and all(e["reason"] == "1" for e in r.json()), r.json()

    # Per endpoint pattern: the ids collapse into one pattern.
    r = real.api("GET", "/v1/usage", params={"step": 0, "by": "endpoint",
                                              "from": int(time.time()) - 3600})
    by_ep = {p["key"]: p["requests"] for p in r.json()["points"]}
    assert by_ep == {"GET /v1/items/{id}": 11, "GET /v2/secret": 3}, by_ep


def test_sigkill_loses_at_most_the_persist_interval(db, fleet, upstream, tmp_path):
    """With the default 60 s upload interval, usage still reaches the disk buffer every 5 s
    (each drain its own batch): requests sent more than 5 s before a SIGKILL are counted,
    exactly once, and the server sums the several batches of one minute."""
    real, gateway = fleet
    state = tmp_path / "state"
    gw = gateway(state, interval=60)

    def accounted() -> int:  # on disk, or already uploaded (a slow run may reach the 60 s tick)
        return buffered_requests(state) + totals(real)["requests"]

    send(gw, upstream, ok=3, denied=0)
    assert wait_until(lambda: accounted() == 3, timeout=15), segments(state)
    send(gw, upstream, ok=1, denied=1)
    assert wait_until(lambda: accounted() == 5, timeout=15), segments(state)
    assert len(segments(state)) >= 2 or totals(real)["requests"] > 0, segments(state)
    gw.kill()  # SIGKILL: no graceful drain

    gw2 = gateway(state, enroll=False, interval=60)
    # The restarted gateway uploads the buffer at once (its first tick).
    assert wait_until(lambda: not segments(state) and totals(real)["requests"] == 5, timeout=20), \
        (totals(real), segments(state), gw2.stderr_text()[-2000:])
    t = totals(real)
    assert (t["requests"], t["cost"]) == (5, 4), t


def limited_policy() -> str:
    """policy('/v1') plus an hourly limit per consumer (for quota usage)."""
    return to_yaml(base_config(default_action="deny", apis=[{
        "name": "echo", "hosts": ["127.0.0.1"],
        "allow": [{"methods": ["GET"], "paths": ["/v1/**"]}],
        "limits": [{"name": "hourly", "requests": 1000, "per": "1h"}],
    }]))


def test_csv_export_quota_and_group_scoped_viewer(fleet, upstream, tmp_path):
    real, gateway = fleet
    gw = gateway(tmp_path / "state")
    assert real.api("POST", "/v1/groups/acme/configs", data=limited_policy()).status_code == 201
    assert wait_until(lambda: gw.config_version() == 2, timeout=15), gw.stderr_text()[-2000:]
    send(gw, upstream, ok=4, denied=1)
    assert wait_until(lambda: totals(real)["requests"] == 5, timeout=15), totals(real)
    # Quota usage against the limit, as the gateway reported it.
    q = {"from": int(time.time()) - 3600, "step": 0}
    # (The limit snapshot is taken just before each drain, so the last request may show up
    # one interval later; the highest value of the minute is kept.)
    assert wait_until(lambda: [p["used"] for p in real.api("GET", "/v1/usage/limits", params=q).json()]
                      == [4], timeout=10), real.api("GET", "/v1/usage/limits", params=q).text
    [lim] = real.api("GET", "/v1/usage/limits", params=q).json()
    assert (lim["api"], lim["limit"], lim["used"], lim["quota"]) == ("echo", "hourly", 4, 1000), lim
    assert real.api("POST", "/v1/groups", json={"name": "globex", "labels": {}}).status_code == 201

    # CSV through the CLI (pinned fingerprint), parsed with the csv module.
    env = {**os.environ, "TOLLGATE_CP_URL": real.url, "TOLLGATE_CP_TOKEN": real.token,
           "TOLLGATE_CP_FINGERPRINT": real.fingerprint}
    out = subprocess.run([TOLLGATE_BIN, "cp", "usage", "--csv", "--step", "0", "--by", "consumer"],
                         env=env, capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert rows and sum(int(r["requests"]) for r in rows) == 5, out.stdout
    assert {"t", "key", "requests", "errors", "limited", "p50_ms", "p99_ms"} <= set(rows[0])
    # Accept: text/csv gives the same.
    r = requests.get(real.url + "/v1/usage", params={"step": 0, "from": int(time.time()) - 3600},
                     verify=False, timeout=10,
                     headers={"Accept": "text/csv", "Authorization": f"Bearer {real.token}"})
    assert r.headers["content-type"].startswith("text/csv")
    assert sum(int(x["requests"]) for x in csv.DictReader(io.StringIO(r.text))) == 5

    def viewer(name, group):
        r = real.api("POST", "/v1/operator-tokens", json={"name": name, "role": "viewer", "group": group})
        assert r.status_code == 201, r.text
        return r.json()["token"]

    def as_token(tok, path, **params):
        return requests.get(real.url + path, params=params, verify=False, timeout=10,
                            headers={"Authorization": f"Bearer {tok}"})

    since = int(time.time()) - 3600
    globex = viewer("globex-viewer", "globex")
    r = as_token(globex, "/v1/usage", step=0, **{"from": since})
    assert r.status_code == 200 and r.json()["points"] == [], r.text
    assert r.json()["group"] == "globex"
    assert as_token(globex, "/v1/usage", group="acme").status_code == 403
    assert as_token(globex, "/v1/audit/events").json() == []
    assert as_token(globex, "/v1/audit/events", group="acme").status_code == 403
    acme = viewer("acme-viewer", "acme")
    r = as_token(acme, "/v1/usage", step=0, by="group", **{"from": since})
    assert [(p["key"], p["requests"]) for p in r.json()["points"]] == [("acme", 5)], r.text
    # The CLI with the scoped token: same answer, no other group.
    out = subprocess.run([TOLLGATE_BIN, "cp", "usage", "--json", "--step", "0", "--by", "group"],
                         env={**env, "TOLLGATE_CP_TOKEN": globex}, capture_output=True, text=True,
                         timeout=20)
    assert out.returncode == 0 and json.loads(out.stdout)["points"] == [], out.stdout + out.stderr


def test_bounded_buffer_evicts_oldest_and_counts_it(fleet, upstream, tmp_path):
    real, gateway = fleet
    state = tmp_path / "state"
    # A bound smaller than any batch: only the newest batch is ever kept.
    gw = gateway(state, buffer_max=1)
    assert gw.get(f"{upstream.base}/v1/items/1").status_code == 200
    assert wait_until(lambda: totals(real)["requests"] == 1, timeout=15), totals(real)
    real.stop()
    for i in range(3):
        # One request per round: one batch per round, each evicting the one before.
        send(gw, upstream, ok=1, denied=0)
        assert wait_until(
            lambda: (metric_value(gw.metrics(), "tollgate_usage_buffer_evicted_total") or 0) == i
            and len(segments(state)) == 1, timeout=10), (i, segments(state), gw.metrics())
    assert buffered_requests(state) == 1
    assert metric_value(gw.metrics(), "tollgate_usage_buffer_batches") == 1
    # Back online: what was kept arrives; the two evicted batches are gone, and were counted.
    real.start()
    assert wait_until(lambda: not segments(state), timeout=20), gw.stderr_text()[-2000:]
    assert totals(real)["requests"] == 2


class WebhookReceiver:
    """A real local webhook endpoint recording every JSON body POSTed to /hook/<secret>."""

    def __init__(self, delay: float = 0.0):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        import threading
        got = self.got = []

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                got.append((self.path, json.loads(self.rfile.read(n))))
                time.sleep(delay)  # a slow receiver widens the window for a duplicate
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook/s3cret-path"

    def states(self) -> list[str]:
        return [b["state"] for _, b in self.got]

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def two_prefix_policy() -> str:
    """Allows GET /v1/** and /v3/** on the loopback upstream."""
    return to_yaml(base_config(default_action="deny", apis=[{
        "name": "echo", "hosts": ["127.0.0.1"],
        "allow": [{"methods": ["GET"], "paths": ["/v1/**", "/v3/**"]}],
    }]))


def test_error_rate_alert_notifies_once_acts_and_resolves(db, upstream, tmp_path, monkeypatch):
    monkeypatch.setenv("TOLLGATE_CP_ALERT_INTERVAL", "0.3")
    hook = WebhookReceiver()
    real = RealControlPlane(tmp_path / "cp").start()
    gw = None
    try:
        assert real.api("POST", "/v1/groups", json={"name": "acme", "labels": {}}).status_code == 201
        assert real.api("POST", "/v1/groups/acme/configs", data=policy("/v1")).status_code == 201
        tok = real.api("POST", "/v1/groups/acme/enrollment-tokens").json()["token"]
        gw = UsageGateway(tmp_path / "gw", real, tmp_path / "state", token=tok)
        # v2 opens /v3 as well; the rule's automated action rolls the group back to v1.
        assert real.api("POST", "/v1/groups/acme/configs", data=two_prefix_policy()).json()["version"] == 2
        assert wait_until(lambda: gw.config_version() == 2, timeout=15)
        assert gw.get(f"{upstream.base}/v3/x").status_code == 200
        rule = {"name": "acme-errors", "group": "acme", "kind": "error_rate", "threshold": 0.3,
                "min_requests": 2, "window_secs": 600, "cooldown_secs": 3600, "webhook": hook.url,
                "action": {"roll_group_to": 1}}
        assert real.api("POST", "/v1/alerts", json={**rule, "group": None}).status_code == 400
        assert real.api("POST", "/v1/alerts", json={**rule, "kind": "nope"}).status_code == 400
        assert real.api("POST", "/v1/alerts", json=rule).status_code == 201
        assert real.api("POST", "/v1/alerts", json=rule).status_code == 409

        # 3 of 6 requests fail upstream (500): error rate 0.5 > 0.3.
        send(gw, upstream, ok=1, denied=0)
        assert gw.get(f"{upstream.base}/v3/x").status_code == 200
        for _ in range(3):
            assert gw.get(f"{upstream.base}/v1/status/500").status_code == 500
        assert wait_until(lambda: hook.states() == ["firing"], timeout=15), hook.got
        path, body = hook.got[0]
        assert path == "/hook/s3cret-path"
        assert body["rule"] == "acme-errors" and body["group"] == "acme"
        assert body["value"] > 0.3 and "FIRING acme-errors" in body["text"]

        # The action: the group now serves a new version (3) with v1's text; /v3 is closed again.
        assert wait_until(lambda: gw.config_version() == 3, timeout=15), gw.stderr_text()[-2000:]
        assert gw.get(f"{upstream.base}/v3/x").status_code == 403
        act = real.api("GET", "/v1/alerts").json()[0]["action_state"]
        assert (act["previous_version"], act["applied_version"]) == (2, 3), act

        # Still firing for several more evaluations: no second notification (cooldown).
        first = real.api("GET", "/v1/alerts").json()[0]["last_evaluated_ms"]
        assert wait_until(lambda: real.api("GET", "/v1/alerts").json()[0]["last_evaluated_ms"]
                          > first + 1000, timeout=10)
        assert hook.states() == ["firing"]
        [listed] = real.api("GET", "/v1/alerts").json()
        assert listed["firing"] and "s3cret" not in json.dumps(listed), listed

        # Healthy traffic brings the rate to 3/16 < 0.3: one "resolved".
        send(gw, upstream, ok=10, denied=0)
        assert wait_until(lambda: hook.states() == ["firing", "resolved"], timeout=15), hook.got
        audit = real.api("GET", "/v1/audit", params={"limit": 100}).json()
        actions = [e["action"] for e in audit]
        assert "alert.firing" in actions and "alert.resolved" in actions and "alert.create" in actions
        assert "alert.action" in actions
        assert "s3cret" not in json.dumps(audit)
        # Reversible: revert restores v2's text as v4; a viewer may not.
        viewer = real.api("POST", "/v1/operator-tokens", json={"name": "v", "role": "viewer"}).json()["token"]
        r = requests.post(real.url + "/v1/alerts/acme-errors/revert", verify=False, timeout=10,
                          headers={"Authorization": f"Bearer {viewer}"})
        assert r.status_code == 403
        r = real.api("POST", "/v1/alerts/acme-errors/revert")
        assert r.status_code == 200 and r.json()["version"] == 4, r.text
        assert wait_until(lambda: gw.get(f"{upstream.base}/v3/x").status_code == 200, timeout=15)
        assert real.api("GET", "/v1/alerts").json()[0]["action_state"] is None
        assert real.api("POST", "/v1/alerts/acme-errors/revert").status_code == 409
        assert "alert.action_revert" in [e["action"] for e in real.api("GET", "/v1/audit").json()]
    finally:
        if gw is not None:
            gw.kill()
        real.stop()
        hook.stop()


@pytest.mark.parametrize("db", ["postgres"], indirect=True)
def test_alerts_evaluated_once_across_postgres_replicas(db, tmp_path, monkeypatch):
    """Two control planes on one PostgreSQL database: only the holder of the alert advisory
    lock evaluates, so a firing rule notifies once, even with a slow webhook (without the
    lock the other replica evaluates during the POST and notifies again); when a replica
    stops, evaluation goes on."""
    monkeypatch.setenv("TOLLGATE_CP_ALERT_INTERVAL", "0.2")
    hook = WebhookReceiver(delay=1.0)
    cp1 = RealControlPlane(tmp_path / "cp1").start()
    cp2 = RealControlPlane(tmp_path / "cp2")
    cp2.token = cp1.token  # same database, same operators (no new admin token is printed)
    try:
        cp2.start()
        assert cp1.api("POST", "/v1/groups", json={"name": "acme", "labels": {}}).status_code == 201
        # dlp events in the window: 0 > -1, so the rule fires at its first evaluation.
        rule = {"name": "always", "group": "acme", "kind": "dlp", "threshold": -1,
                "cooldown_secs": 3600, "webhook": hook.url}
        assert cp2.api("POST", "/v1/alerts", json=rule).status_code == 201
        assert wait_until(lambda: hook.states() == ["firing"], timeout=15), hook.got

        def evaluated(cp) -> int:
            return cp.api("GET", "/v1/alerts").json()[0]["last_evaluated_ms"]

        first = evaluated(cp1)
        assert wait_until(lambda: evaluated(cp2) > first + 2000, timeout=15)
        assert hook.states() == ["firing"], hook.got
        assert [e["action"] for e in cp1.api("GET", "/v1/audit", params={"limit": 100}).json()
                ].count("alert.firing") == 1

        # One replica stops (its session and lock end): the other one evaluates.
        cp1.stop()
        now = evaluated(cp2)
        assert wait_until(lambda: evaluated(cp2) > now + 1000, timeout=15)
        assert hook.states() == ["firing"], hook.got
    finally:
        cp1.stop()
        cp2.stop()
        hook.stop()
