"""`scope: global` limits over the three Redis topologies, against real
redis-server processes this file starts on ephemeral loopback ports (never the
shared Redis at :6379):

- TLS (`rediss://`) with a private CA, a client certificate (mTLS) and an ACL
  user; a wrong CA makes the store unavailable and each limit follows its
  `on_store_failure`.
- Sentinel: the master is killed mid-run, the sentinel promotes the replica,
  and the gateway moves to the new master on its own.
- Cluster: two gateways share one global limit under concurrent clients.

Skipped (with the reason) only when redis-server / redis-cli are absent."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from helpers import assert_problem, base_config, metric_value, wait_until
from servers import make_test_ca

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None or shutil.which("redis-cli") is None,
    reason="redis-server/redis-cli not installed",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisProc:
    """One redis-server (or sentinel) process; killed at teardown."""

    def __init__(self, workdir: Path, args: list[str], port: int, cli: list[str] | None = None):
        self.port = port
        self.dir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = open(workdir / "redis.log", "wb")
        self.proc = subprocess.Popen(["redis-server", *args], cwd=workdir,
                                     stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        # redis-cli arguments reaching this server (TLS options for a TLS server).
        self.cli_args = ["-h", "127.0.0.1", "-p", str(port), *(cli or [])]
        if not wait_until(lambda: self.cli("PING") == "PONG", timeout=10):
            self.kill()
            raise RuntimeError(f"redis-server on {port} did not start: "
                               + (workdir / "redis.log").read_text(errors="replace"))

    def cli(self, *args: str, timeout: float = 5) -> str:
        try:
            p = subprocess.run(["redis-cli", *self.cli_args, *args], capture_output=True,
                               text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return ""
        return p.stdout.strip()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.log.close()


@pytest.fixture
def redis_procs():
    started: list[RedisProc] = []

    def start(workdir: Path, args: list[str], port: int, cli=None) -> RedisProc:
        r = RedisProc(workdir, args, port, cli)
        started.append(r)
        return r

    yield start
    for r in started:
        r.kill()


def plain_args(port: int) -> list[str]:
    return ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--protected-mode", "no"]


def global_apis(upstream, limit: int, extra_open: dict | None = None) -> list[dict]:
    """`open` (fails open) and `closed` (fails closed) routes, each with a global limit."""
    return [
        {"name": "open", "route": "/open", "upstream": upstream.base,
         "limits": [{"name": "hourly", "requests": limit, "per": "1h", "scope": "global",
                     **(extra_open or {})}]},
        {"name": "closed", "route": "/closed", "upstream": upstream.base,
         "limits": [{"name": "hourly", "requests": limit, "per": "1h", "scope": "global",
                     "on_store_failure": "closed"}]},
    ]


def degraded(gw) -> float | None:
    return metric_value(gw.admin("GET", "/metrics").text, "tollgate_limit_store_degraded")


def keys(r: RedisProc, prefix: str) -> list[str]:
    out = r.cli("--scan", "--pattern", "{" + prefix + ":*")
    return [k for k in out.splitlines() if k]


# --------------------------------------------------------------------------
# TLS
# --------------------------------------------------------------------------

def client_cert(d: Path, ca: Path, ca_key: Path) -> dict[str, Path]:
    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30, cwd=d)
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "client.key", "-out", "client.csr", "-subj", "/CN=tollgate-gateway")
    (d / "client.cnf").write_text("extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n")
    run("x509", "-req", "-in", "client.csr", "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", "client.pem", "-days", "2", "-extfile", "client.cnf")
    return {"cert": d / "client.pem", "key": d / "client.key"}


@pytest.fixture
def tls_redis(tmp_path, redis_procs):
    """A TLS-only Redis that requires a client certificate and an ACL user `app`."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not available")
    ca = make_test_ca(_mkdir(tmp_path / "ca"))
    client = client_cert(tmp_path / "ca", ca["ca"], tmp_path / "ca" / "ca.key")
    port = free_port()
    conf = _mkdir(tmp_path / "redis") / "redis.conf"
    conf.write_text("user default off\nuser app on >s3cret ~* &* +@all\n")
    cli = ["--tls", "--cacert", str(ca["ca"]), "--cert", str(client["cert"]),
           "--key", str(client["key"]), "--user", "app", "--pass", "s3cret", "--no-auth-warning"]
    r = redis_procs(tmp_path / "redis", [
        str(conf), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--save", "",
        "--tls-cert-file", str(ca["cert"]), "--tls-key-file", str(ca["key"]),
        "--tls-ca-cert-file", str(ca["ca"]), "--tls-auth-clients", "yes",
    ], port, cli)
    return r, ca, client


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def test_tls_with_private_ca_client_cert_and_acl_user(gateway, upstream, tls_redis):
    r, ca, client = tls_redis
    cfg = base_config(
        apis=global_apis(upstream, 5),
        state={"redis": {
            "url": f"rediss://127.0.0.1:{r.port}/",
            "username": "app", "password": "${env:TG_REDIS_PASSWORD}",
            "tls": {"ca_file": str(ca["ca"]), "cert_file": str(client["cert"]),
                    "key_file": str(client["key"])},
            "prefix": "tgtls", "timeout": "2s"}},
    )
    gw = gateway(cfg, env={"TG_REDIS_PASSWORD": "s3cret"})
    codes = [gw.route("GET", "/open/x").status_code for _ in range(7)]
    assert codes == [200] * 5 + [429] * 2
    # The counter really is in the TLS Redis, and the store never degraded.
    assert [k for k in keys(r, "tgtls") if k.startswith("{tgtls:open}:")], keys(r, "tgtls")
    assert degraded(gw) == 0
    assert "s3cret" not in gw.stderr_text()


def test_tls_with_the_wrong_ca_fails_open_or_closed(gateway, upstream, tls_redis, tmp_path):
    r, _, client = tls_redis
    other = make_test_ca(_mkdir(tmp_path / "other-ca"))
    cfg = base_config(
        apis=global_apis(upstream, 2),
        state={"redis": {
            "url": f"rediss://app:s3cret@127.0.0.1:{r.port}/",
            "tls": {"ca_file": str(other["ca"]), "cert_file": str(client["cert"]),
                    "key_file": str(client["key"])},
            "prefix": "tgbadca", "timeout": "500ms"}},
    )
    gw = gateway(cfg)
    # Open: enforced locally at this instance's share (here all of it: one instance).
    assert [gw.route("GET", "/open/x").status_code for _ in range(3)] == [200, 200, 429]
    resp = gw.route("GET", "/closed/x")
    assert_problem(resp, 503, "limit_store_unavailable")
    assert degraded(gw) == 1
    assert wait_until(lambda: "certificate" in gw.stderr_text().lower(), timeout=5), \
        gw.stderr_text()
    assert "shared limit store unreachable" in gw.stderr_text()
    assert "s3cret" not in gw.stderr_text()
    assert keys(r, "tgbadca") == []


def test_validate_reports_redis_tls_and_topology_errors(run_cli, tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text(
        "state:\n  redis:\n    url: rediss://127.0.0.1:1/\n"
        f"    tls: {{ ca_file: {tmp_path}/missing.pem }}\n")
    p = run_cli("validate", f)
    assert p.returncode != 0
    assert "state.redis.tls.ca_file" in p.stdout + p.stderr, p.stdout + p.stderr
    f.write_text("state:\n  redis:\n    url: redis://127.0.0.1:1/\n"
                 "    cluster: { nodes: [\"127.0.0.1:7000\"] }\n")
    p = run_cli("validate", f)
    assert p.returncode != 0
    assert "exactly one of" in p.stdout + p.stderr, p.stdout + p.stderr
    f.write_text("state:\n  redis:\n    sentinel: { master: m, nodes: [\"127.0.0.1:26379\"] }\n"
                 "    timeout: 100ms\n")
    p = run_cli("validate", f)
    assert p.returncode == 0, p.stdout + p.stderr


# --------------------------------------------------------------------------
# Sentinel
# --------------------------------------------------------------------------

def test_sentinel_failover_moves_decisions_to_the_new_master(gateway, upstream, redis_procs,
                                                            tmp_path):
    mport, rport, sport = free_port(), free_port(), free_port()
    master = redis_procs(tmp_path / "master", plain_args(mport), mport)
    replica = redis_procs(tmp_path / "replica",
                          plain_args(rport) + ["--replicaof", "127.0.0.1", str(mport)], rport)
    assert wait_until(lambda: "master_link_status:up" in replica.cli("INFO", "replication"),
                      timeout=10)
    sdir = _mkdir(tmp_path / "sentinel")
    (sdir / "sentinel.conf").write_text(
        f"port {sport}\nbind 127.0.0.1\nprotected-mode no\n"
        f"sentinel monitor tg 127.0.0.1 {mport} 1\n"
        "sentinel down-after-milliseconds tg 500\n"
        "sentinel failover-timeout tg 2000\n")
    sentinel = redis_procs(sdir, [str(sdir / "sentinel.conf"), "--sentinel"], sport)
    # The sentinel must know the replica before the master dies, or it has nobody to promote.
    assert wait_until(lambda: f"{rport}" in sentinel.cli("SENTINEL", "replicas", "tg"),
                      timeout=15), sentinel.cli("SENTINEL", "replicas", "tg")

    cfg = base_config(
        apis=global_apis(upstream, 100_000),
        state={"redis": {"sentinel": {"master": "tg", "nodes": [f"127.0.0.1:{sport}"]},
                         "prefix": "tgsent", "timeout": "200ms"}},
    )
    gw = gateway(cfg)
    for _ in range(5):
        assert gw.route("GET", "/open/x").status_code == 200
        assert gw.route("GET", "/closed/x").status_code == 200
    found = [k for k in keys(master, "tgsent") if k.startswith("{tgsent:closed}:")]
    assert len(found) == 1, keys(master, "tgsent")
    key = found[0]

    # Traffic keeps flowing through the failover; no request is lost.
    stop = threading.Event()
    results: list[tuple[str, int, str]] = []

    def drive():
        while not stop.is_set():
            for api in ("open", "closed"):
                resp = gw.route("GET", f"/{api}/x")
                results.append((api, resp.status_code, resp.headers.get("tollgate-error", "")))
            time.sleep(0.02)

    t = threading.Thread(target=drive, daemon=True)
    t.start()
    try:
        time.sleep(0.3)
        master.kill()
        promoted = wait_until(
            lambda: sentinel.cli("SENTINEL", "get-master-addr-by-name", "tg").endswith(str(rport)),
            timeout=20)
        assert promoted, sentinel.cli("SENTINEL", "masters")
        # Recovery is automatic: the gateway finds the new master and is no longer degraded.
        assert wait_until(lambda: degraded(gw) == 0 and
                          gw.route("GET", "/closed/x").status_code == 200, timeout=15), \
            gw.stderr_text()
        before = len(results)
        assert wait_until(lambda: len(results) > before + 10, timeout=10)
    finally:
        stop.set()
        t.join(timeout=15)

    # Meanwhile: the open limit admitted everything, the closed one refused with 503.
    assert all(code == 200 for api, code, _ in results if api == "open"), results
    closed = [(code, err) for api, code, err in results if api == "closed"]
    assert all(c == 200 or (c == 503 and e == "limit_store_unavailable") for c, e in closed)
    assert (503, "limit_store_unavailable") in closed, "the outage was never noticed"
    assert closed[-1] == (200, ""), closed[-5:]
    # Decisions now land on the promoted replica.
    def count():
        return replica.cli("HGETALL", key)
    seen = count()
    assert seen != ""
    assert gw.route("GET", "/closed/x").status_code == 200
    assert count() != seen
    assert "using the master named by sentinel" in gw.stderr_text()


# --------------------------------------------------------------------------
# Cluster
# --------------------------------------------------------------------------

@pytest.fixture
def cluster(tmp_path, redis_procs):
    ports = [free_port() for _ in range(3)]
    nodes = [
        redis_procs(tmp_path / f"node{p}",
                    plain_args(p) + ["--cluster-enabled", "yes",
                                     "--cluster-config-file", f"nodes-{p}.conf",
                                     # Its own ephemeral bus port (default: port + 10000).
                                     "--cluster-port", str(free_port()),
                                     "--cluster-node-timeout", "2000"], p)
        for p in ports
    ]
    p = subprocess.run(["redis-cli", "--cluster", "create",
                        *[f"127.0.0.1:{port}" for port in ports],
                        "--cluster-replicas", "0", "--cluster-yes"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stdout + p.stderr
    assert wait_until(lambda: all("cluster_state:ok" in n.cli("CLUSTER", "INFO") for n in nodes),
                      timeout=15)
    return nodes


def test_cluster_two_gateways_share_one_global_limit(gateway, upstream, cluster):
    limit = 150
    apis = [{"name": "shared", "route": "/s", "upstream": upstream.base,
             "limits": [
                 # Several limits of one decision: their keys share one hash slot.
                 {"name": "hourly", "requests": limit, "per": "1h", "scope": "global"},
                 {"name": "roomy", "requests": 100_000, "per": "1h", "scope": "global",
                  "algorithm": "sliding"},
                 {"name": "bucket", "requests": 100_000, "per": "1s", "burst": 100_000,
                  "scope": "global", "algorithm": "gcra"},
             ]}]
    cfg = base_config(apis=apis, state={"redis": {
        "cluster": {"nodes": [f"127.0.0.1:{cluster[0].port}"]},
        "prefix": "tgclus", "timeout": "1s"}})
    gws = [gateway(cfg), gateway(cfg)]

    def one(i):
        return gws[i % 2].route("GET", "/s/x").status_code

    with ThreadPoolExecutor(max_workers=8) as ex:
        codes = list(ex.map(one, range(2 * limit + 60)))
    admitted = codes.count(200)
    assert abs(admitted - limit) <= limit * 0.02, (admitted, codes)
    assert set(codes) <= {200, 429}, codes
    for gw in gws:
        assert degraded(gw) == 0, gw.stderr_text()

    # The counters live in the cluster (one slot, one node); the heartbeat works there too.
    holders = [n for n in cluster if keys(n, "tgclus")]
    assert len(holders) == 1, [keys(n, "tgclus") for n in cluster]
    # (The GCRA key expires as soon as its bucket is full again: within milliseconds here.)
    assert {"{tgclus:shared}:hourly:-", "{tgclus:shared}:roomy:-"} <= set(keys(holders[0], "tgclus"))
    assert wait_until(
        lambda: all(g.admin("GET", "/admin/limits").json()["store"]["instances"] == 2
                    for g in gws), timeout=10)
    # The admin listing SCANs the node holding the API's slot and peeks the counter there.
    doc = gws[0].admin("GET", "/admin/limits").json()
    api = next(a for a in doc["apis"] if a["name"] == "shared")
    hourly = next(lim for lim in api["limits"] if lim["name"] == "hourly")
    assert [(k["used"], k["remaining"]) for k in hourly["keys"]] == [(admitted, limit - admitted)], \
        hourly
