"""Upstream groups end to end: a route API with several backend *processes* (the echo server
of servers.py, each in its own Python process so it can be killed), through a real
`tollgate run` and `requests`: weighted round robin, least outstanding requests, hash
stickiness, a target killed under concurrent load with no failed idempotent request, active
health checks marking it down and back up, and 503 `no_healthy_upstream` when all are down.
The network guard keeps its default (loopback blocked): group targets are reachable only
because they are listed."""

from __future__ import annotations

import collections
import concurrent.futures
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from helpers import assert_problem, metric_value, wait_until

HERE = Path(__file__).resolve().parent

# Runs EchoHandler on a fixed loopback port in its own process; prints "ready" when listening.
BACKEND = r"""
import sys
sys.path.insert(0, sys.argv[3])
from http.server import ThreadingHTTPServer
from servers import EchoHandler
class S(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
s = S(("127.0.0.1", int(sys.argv[1])), EchoHandler)
s.name = sys.argv[2]
s.requests = []
print("ready", flush=True)
s.serve_forever(poll_interval=0.05)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Backend:
    """One echo backend process on a fixed port (so it can come back on the same address)."""

    def __init__(self, name: str):
        self.name = name
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def label(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "Backend":
        self.proc = subprocess.Popen(
            [sys.executable, "-c", BACKEND, str(self.port), self.name, str(HERE)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ready"
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)


@pytest.fixture
def backends():
    started: list[Backend] = []

    def make(n: int) -> list[Backend]:
        out = [Backend(f"b{i}").start() for i in range(n)]
        started.extend(out)
        return out

    yield make
    for b in started:
        b.kill()


def group_config(bs: list[Backend], **group) -> dict:
    g = {"targets": [{"url": b.url} for b in bs]}
    g.update(group)
    return {"apis": [{"name": "svc", "route": "/svc", "upstream_group": g}]}


def served_by(r) -> str:
    assert r.status_code == 200, (r.status_code, r.text[:300])
    return r.headers["X-Upstream"]


def test_weighted_round_robin_and_guard_rule(gateway, backends):
    bs = backends(3)
    cfg = group_config(bs)
    cfg["apis"][0]["upstream_group"]["targets"][2]["weight"] = 2
    # The same loopback backend as a plain upstream: still blocked by the network guard.
    cfg["apis"].append({"name": "plain", "route": "/plain", "upstream": bs[0].url})
    gw = gateway(cfg)
    counts = collections.Counter(served_by(gw.route("GET", "/svc/x")) for _ in range(40))
    assert counts == {"b0": 10, "b1": 10, "b2": 20}
    assert_problem(gw.route("GET", "/plain/x"), 403, "destination_blocked")
    metrics = gw.admin("GET", "/metrics").text
    assert metric_value(metrics, "tollgate_upstream_target_requests_total", api="svc",
                        target=bs[2].label, result="success") == 20
    assert metric_value(metrics, "tollgate_upstream_target_healthy", api="svc",
                        target=bs[0].label) == 1


def test_least_requests_avoids_the_busy_target(gateway, backends):
    bs = backends(3)
    gw = gateway(group_config(bs, balance="least_requests"))
    slow: dict = {}

    def hold():
        slow["r"] = gw.route("GET", "/svc/slow?ms=2500", timeout=10)

    t = threading.Thread(target=hold)
    t.start()
    # Give the slow request time to reach a backend: that target now has one in flight.
    time.sleep(0.5)
    fast = [served_by(gw.route("GET", "/svc/fast")) for _ in range(8)]
    t.join(timeout=10)
    busy = served_by(slow["r"])
    assert busy not in fast, (busy, fast)
    assert set(fast) == {b.name for b in bs} - {busy}


def test_hash_on_header_is_sticky(gateway, backends):
    bs = backends(3)
    gw = gateway(group_config(bs, balance="hash", hash_on="header:x-user"))
    owners = {}
    for u in range(24):
        seen = {served_by(gw.route("GET", "/svc/a", headers={"x-user": f"user-{u}"}))
                for _ in range(4)}
        assert len(seen) == 1, (u, seen)
        owners[u] = seen.pop()
    assert len(set(owners.values())) >= 2, owners


def test_killed_target_no_failed_idempotent_request_and_recovery(gateway, backends):
    bs = backends(3)
    gw = gateway(group_config(bs, health_check={
        "path": "/health", "interval": "200ms", "timeout": "150ms",
        "healthy_threshold": 2, "unhealthy_threshold": 2}))
    victim = bs[1]
    results: list[tuple[int, str]] = []
    lock = threading.Lock()
    done = threading.Event()

    def one(i: int):
        with gw.session() as s:
            s.proxies = {}
            r = s.get(gw.proxy_url + f"/svc/item/{i}", timeout=10)
            with lock:
                results.append((r.status_code, r.headers.get("X-Upstream", r.headers.get("tollgate-error", ""))))
                if len(results) == 60:
                    done.set()

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        futs = [pool.submit(one, i) for i in range(300)]
        assert done.wait(20)
        victim.kill()
        for f in futs:
            f.result(timeout=30)
    statuses = collections.Counter(s for s, _ in results)
    assert statuses == {200: 300}, statuses
    served = collections.Counter(u for _, u in results)
    assert served["b1"] >= 1 and served["b0"] > 60 and served["b2"] > 60, served
    # Requests that hit the dead target moved to another one inside the gateway.
    failovers = metric_value(gw.admin("GET", "/metrics").text, "tollgate_upstream_retries_total",
                             api="svc", reason="failover")
    assert failovers and failovers >= 1, failovers

    def healthy(b):
        return metric_value(gw.admin("GET", "/metrics").text, "tollgate_upstream_target_healthy",
                            api="svc", target=b.label)

    assert wait_until(lambda: healthy(victim) == 0, timeout=5)
    # While it is down, it gets no traffic (and nothing fails).
    after = collections.Counter(served_by(gw.route("GET", "/svc/x")) for _ in range(12))
    assert "b1" not in after and sum(after.values()) == 12
    # It comes back on the same address: the health checks bring it back into rotation.
    victim.start()
    assert wait_until(lambda: healthy(victim) == 1, timeout=5)
    back = collections.Counter(served_by(gw.route("GET", "/svc/x")) for _ in range(12))
    assert back["b1"] == 4, back


def test_all_targets_down_is_503_no_healthy_upstream(gateway, backends):
    bs = backends(2)
    gw = gateway(group_config(bs, health_check={
        "path": "/", "interval": "200ms", "timeout": "150ms",
        "healthy_threshold": 1, "unhealthy_threshold": 1}))
    assert served_by(gw.route("GET", "/svc/x")) in {"b0", "b1"}
    for b in bs:
        b.kill()

    def down():
        m = gw.admin("GET", "/metrics").text
        return all(metric_value(m, "tollgate_upstream_target_healthy", api="svc",
                                target=b.label) == 0 for b in bs)

    assert wait_until(down, timeout=5)
    assert_problem(gw.route("GET", "/svc/x"), 503, "no_healthy_upstream")


def test_passive_ejection_without_health_checks(gateway, backends):
    bs = backends(2)
    gw = gateway(group_config(bs, passive={"consecutive_failures": 2, "cooldown": "1h"}))
    # Round robin: each backend answers 503 twice in a row, so both are ejected.
    for _ in range(4):
        r = gw.route("GET", "/svc/status/503")
        assert r.status_code == 503 and r.headers.get("X-Status-Echo") == "503"
    assert_problem(gw.route("GET", "/svc/ok"), 503, "no_healthy_upstream")
    metrics = gw.admin("GET", "/metrics").text
    for b in bs:
        assert metric_value(metrics, "tollgate_upstream_target_ejections_total", api="svc",
                            target=b.label) == 1
        assert metric_value(metrics, "tollgate_upstream_target_healthy", api="svc",
                            target=b.label) == 0


def test_reload_restarts_health_checks_without_leaking_the_old_ones(gateway, backends):
    bs = backends(2)
    failing = {"path": "/status/500", "interval": "100ms", "timeout": "90ms",
               "healthy_threshold": 1, "unhealthy_threshold": 1}
    gw = gateway(group_config(bs, health_check=failing))

    def gauges():
        m = gw.admin("GET", "/metrics").text
        return [metric_value(m, "tollgate_upstream_target_healthy", api="svc", target=b.label)
                for b in bs]

    assert wait_until(lambda: gauges() == [0, 0], timeout=5)
    assert_problem(gw.route("GET", "/svc/x"), 503, "no_healthy_upstream")
    # The new configuration probes a path that answers 200: its targets start healthy, and the
    # old configuration's checker (which would keep marking them down) is gone.
    gw.write_config(group_config(bs, health_check=dict(failing, path="/ok")))
    assert gw.reload().status_code == 200
    assert served_by(gw.route("GET", "/svc/x")) in {"b0", "b1"}
    for _ in range(10):
        assert gauges() == [1, 1]
        time.sleep(0.1)
    assert served_by(gw.route("GET", "/svc/x")) in {"b0", "b1"}


def test_validate_reports_group_and_cors_mistakes(run_cli, workdir):
    cfg = workdir / "bad.yaml"
    cfg.write_text(
        "apis:\n"
        "  - name: svc\n"
        "    route: /svc\n"
        "    upstream: http://10.0.0.1\n"
        "    upstream_group:\n"
        "      targets: [{ url: http://10.0.0.2/base }, { url: http://10.0.0.3, weight: 0 }]\n"
        "      hash_on: header:x-user\n"
        "    cors: { allowed_origins: ['*'], allow_credentials: true }\n")
    r = run_cli("validate", cfg)
    assert r.returncode == 1, r.stdout + r.stderr
    out = r.stdout + r.stderr
    for key in ["apis[0].upstream_group.targets[0].url", "apis[0].upstream_group.targets[1].weight",
                "apis[0].upstream_group.hash_on", "apis[0].cors.allowed_origins[0]",
                "apis[0].upstream_group: set either"]:
        assert key in out, (key, out)
