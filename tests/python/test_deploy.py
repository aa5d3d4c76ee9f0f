"""Deploy artifacts (deploy/**) checked against the real binary: the configs they
ship validate and start, the commands, flags, ports and health paths they use
exist, the Kubernetes config hot-reloads through a ConfigMap-style symlink swap,
the systemd unit passes `systemd-analyze verify`, shell completions cover every
subcommand, and every metric the Grafana dashboard and the Prometheus alert rules
reference exists in a scrape of a gateway that served allowed, denied and
rate-limited requests (plus `promtool check rules|metrics` and `promtool test rules`).
The control-plane chart, manifests and unit are checked the same way against
`tollgate control-plane` (its /healthz and /readyz answered by a real server), and the
remote-gateway StatefulSet's command enrolls a real gateway with a real control plane.

What cannot run here: a container build (no registry access; see
deploy/docker/Dockerfile) and `helm template` (no helm binary; the chart is checked
structurally instead, and rendered when `helm` is on PATH)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import requests
import yaml

from helpers import TIMEOUT, TOLLGATE_BIN, base_config, connect_tunnel, metric_value, wait_until

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
TOKEN = "deploy-test-token"


def cli(*args, env=None, timeout=20) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([TOLLGATE_BIN, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=full_env, stdin=subprocess.DEVNULL)


def validate_text(tmp_path: Path, text: str, env=None, name="tollgate.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return cli("validate", path, env=env)


def port_of(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


def run_flags() -> set[str]:
    """Long flags `tollgate run` accepts, read from its own --help."""
    out = cli("run", "--help")
    assert out.returncode == 0, out.stderr
    return set(re.findall(r"--[a-z][a-z-]+", out.stdout))


def subcommands() -> list[str]:
    """Subcommands listed by `tollgate --help` (so new ones are covered automatically)."""
    out = cli("--help")
    assert out.returncode == 0, out.stderr
    section = out.stdout.split("Commands:", 1)[1].split("Options:", 1)[0]
    names = re.findall(r"^\s{2}([a-z][a-z-]*)\s", section, flags=re.M)
    return [n for n in names if n != "help"]


def check_command(argv: list[str], config_path: str) -> None:
    """argv (without the binary) is `run --config <config_path>` with flags the binary has."""
    assert argv[0] == "run", argv
    flags = [a for a in argv[1:] if a.startswith("-")]
    assert set(flags) <= run_flags(), (flags, run_flags())
    assert argv[argv.index("--config") + 1] == config_path, argv


def k8s_docs() -> dict[str, dict]:
    """Every manifest in deploy/kubernetes, by kind."""
    out = {}
    for f in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            assert doc and "kind" in doc, f
            out[doc["kind"]] = doc
    return out


# --------------------------------------------------------------------------
# Every YAML file parses
# --------------------------------------------------------------------------

def test_every_deploy_yaml_parses():
    files = [f for f in DEPLOY.rglob("*.y*ml") if "templates" not in f.parts]
    assert len(files) >= 10, files
    for f in files:
        docs = list(yaml.safe_load_all(f.read_text()))
        assert docs and all(d is not None for d in docs), f
    json.loads((DEPLOY / "grafana" / "tollgate-dashboard.json").read_text())


# --------------------------------------------------------------------------
# Kubernetes manifests
# --------------------------------------------------------------------------

def k8s_config_text() -> str:
    return k8s_docs()["ConfigMap"]["data"]["tollgate.yaml"]


def test_k8s_configmap_config_validates_only_with_the_admin_token(tmp_path):
    text = k8s_config_text()
    ok = validate_text(tmp_path, text, env={"TOLLGATE_ADMIN_TOKEN": TOKEN})
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # The admin listener binds the pod IP, so the token (from the Secret) is required:
    # the Deployment must provide it, and a config without it must not pass.
    env = dict(os.environ)
    env.pop("TOLLGATE_ADMIN_TOKEN", None)
    bad = subprocess.run([TOLLGATE_BIN, "validate", str(tmp_path / "tollgate.yaml")],
                         capture_output=True, text=True, timeout=20, env=env)
    assert bad.returncode == 1 and "TOLLGATE_ADMIN_TOKEN" in bad.stderr, bad.stderr


def test_k8s_commented_redis_and_api_example_validates(tmp_path):
    """The ConfigMap's commented example (shared limits through Redis, one API) is
    valid once uncommented, with REDIS_URL from the optional Secret key."""
    text = k8s_config_text().replace("apis: []\n", "")
    text = re.sub(r"^# (state:|  redis:|    url:|apis:|  - name|    [a-z])", r"\1", text, flags=re.M)
    assert "state:\n  redis:" in text and "- name: github" in text, text
    r = validate_text(tmp_path, text, env={"TOLLGATE_ADMIN_TOKEN": TOKEN,
                                           "REDIS_URL": "redis://127.0.0.1:6379/0"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 APIs" in r.stdout


def test_k8s_deployment_matches_config_and_binary():
    docs = k8s_docs()
    assert {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget",
            "HorizontalPodAutoscaler", "Kustomization", "Secret"} <= set(docs)
    cfg = yaml.safe_load(k8s_config_text())
    dep = docs["Deployment"]
    pod = dep["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (c,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"proxy": port_of(cfg["listen"]["proxy"]), "admin": port_of(cfg["listen"]["admin"])}

    # The config file the gateway reads is the ConfigMap key, through a directory mount
    # (subPath mounts never receive ConfigMap updates, so hot reload would silently stop).
    (mount,) = c["volumeMounts"]
    assert "subPath" not in mount
    (vol,) = [v for v in pod["spec"]["volumes"] if v["name"] == mount["name"]]
    assert vol["configMap"]["name"] == docs["ConfigMap"]["metadata"]["name"]
    check_command(c["args"], f"{mount['mountPath']}/tollgate.yaml")

    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"]}
    secret = docs["Secret"]
    assert env["TOLLGATE_ADMIN_TOKEN"]["name"] == secret["metadata"]["name"]
    assert env["TOLLGATE_ADMIN_TOKEN"]["key"] in secret["stringData"]
    assert not env["TOLLGATE_ADMIN_TOKEN"].get("optional")
    assert env["REDIS_URL"]["optional"] is True and env["REDIS_URL"]["key"] in secret["stringData"]

    grace = int(cfg["server"]["shutdown_grace"].rstrip("s"))
    assert pod["spec"]["terminationGracePeriodSeconds"] > grace
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"]

    assert docs["Service"]["spec"]["selector"].items() <= labels.items()
    assert {p["targetPort"] for p in docs["Service"]["spec"]["ports"]} == set(ports)
    assert docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    target = docs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", dep["metadata"]["name"])
    kustomized = set(docs["Kustomization"]["resources"])
    assert "secret.example.yaml" not in kustomized
    assert {f.name for f in (DEPLOY / "kubernetes").glob("*.yaml")} - kustomized == {
        "kustomization.yaml", "secret.example.yaml"}


def test_k8s_config_serves_probes_and_protects_metrics(gateway):
    gw = gateway(k8s_config_text(), env={"TOLLGATE_ADMIN_TOKEN": TOKEN})
    assert gw.admin("GET", "/healthz").status_code == 200
    assert gw.admin("GET", "/readyz").status_code == 200
    assert gw.admin("GET", "/metrics").status_code == 401
    r = gw.admin("GET", "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200 and "tollgate_config_version" in r.text


def kubelet_layout(d: Path, text: str, stamp: str) -> None:
    """Writes `text` the way the kubelet publishes a ConfigMap volume update: a new
    timestamped directory, then an atomic rename of the `..data` symlink onto it;
    `tollgate.yaml` itself is a symlink to `..data/tollgate.yaml` that never changes."""
    new = d / f"..{stamp}"
    new.mkdir()
    (new / "tollgate.yaml").write_text(text)
    old = os.readlink(d / "..data") if (d / "..data").is_symlink() else None
    tmp = d / "..data_tmp"
    os.symlink(new.name, tmp)
    os.replace(tmp, d / "..data")
    if not (d / "tollgate.yaml").is_symlink():
        os.symlink("..data/tollgate.yaml", d / "tollgate.yaml")
    if old:
        shutil.rmtree(d / old)


def test_configmap_symlink_swap_hot_reloads(gateway, upstream, tmp_path):
    """The Deployment's setup: --config <mount>/tollgate.yaml on a ConfigMap volume.
    A ConfigMap update (symlink swap, old directory deleted) is picked up by the
    file watcher without SIGHUP or a restart."""
    mount = tmp_path / "etc-tollgate"
    mount.mkdir()
    deny = base_config(default_action="deny")
    allow = base_config(default_action="deny", apis=[
        {"name": "echo", "hosts": ["127.0.0.1"], "allow": [{"methods": ["GET"], "paths": ["/v1/**"]}]}])
    # The first version is published empty; the gateway fixture then writes the real
    # config through the symlinks into that version's directory.
    kubelet_layout(mount, "", "2026_12_01_10_00_00.1")
    gw = gateway(deny, config_path=mount / "tollgate.yaml")
    assert (mount / "..data").is_symlink() and (mount / "tollgate.yaml").is_symlink()
    url = f"{upstream.base}/v1/cm"
    assert gw.get(url).status_code == 403
    v1 = gw.config_version()
    kubelet_layout(mount, gw.render(allow), "2026_12_01_10_01_00.2")
    assert wait_until(lambda: gw.config_version() > v1, timeout=8), gw.stderr_text()[-2000:]
    assert gw.get(url).status_code == 200
    # And a second swap, now that the first target directory is gone.
    v2 = gw.config_version()
    kubelet_layout(mount, gw.render(deny), "2026_12_01_10_02_00.3")
    assert wait_until(lambda: gw.config_version() > v2, timeout=8), gw.stderr_text()[-2000:]
    assert gw.get(url).status_code == 403


# --------------------------------------------------------------------------
# Helm chart (structure; rendered only when helm is installed)
# `.ci/run` fetches helm with scripts/get-helm.sh and sets TOLLGATE_REQUIRE_HELM=1, so there the
# rendering tests run (and fail if helm went missing) instead of being skipped.
needs_helm = pytest.mark.skipif(
    shutil.which("helm") is None and os.environ.get("TOLLGATE_REQUIRE_HELM") != "1",
    reason="helm is not installed here (scripts/get-helm.sh fetches it)")
# --------------------------------------------------------------------------

CHART = DEPLOY / "helm" / "tollgate"


def helm_config(values: dict, redis: bool) -> dict:
    """What templates/_helpers.tpl's "tollgate.config" renders, in Python."""
    cfg = json.loads(json.dumps(values["config"]))
    if redis:
        cfg.setdefault("state", {})["redis"] = {
            "url": "${env:REDIS_URL}", "timeout": values["redis"]["timeout"],
            "prefix": values["redis"]["prefix"]}
    return cfg


def test_helm_chart_metadata_and_values():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "tollgate"
    version = re.search(r'^version = "([^"]+)"', (ROOT / "Cargo.toml").read_text(), re.M).group(1)
    assert chart["appVersion"] == version
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def has(path: list[str]) -> bool:
        node = values
        for key in path:
            if not isinstance(node, dict) or key not in node:
                return False
            node = node[key]
        return True

    # Every `.Values.a.b` a template uses is defined in values.yaml (a typo there
    # renders as empty and produces a broken manifest without any error).
    refs = set()
    for t in (CHART / "templates").iterdir():
        refs |= set(re.findall(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)", t.read_text()))
    assert len(refs) > 20, refs
    missing = sorted(r for r in refs if not has(r.lstrip(".").split(".")))
    assert not missing, missing
    assert not has(["no", "such", "value"])  # the lookup itself can fail

    probes = (values["readinessProbe"]["httpGet"], values["livenessProbe"]["httpGet"])
    assert probes == ({"path": "/readyz", "port": "admin"}, {"path": "/healthz", "port": "admin"})
    deployment = (CHART / "templates" / "deployment.yaml").read_text()
    assert "subPath:" not in deployment
    check_command(["run", "--config", "/etc/tollgate/tollgate.yaml"], "/etc/tollgate/tollgate.yaml")
    assert 'args: ["run", "--config", "/etc/tollgate/tollgate.yaml"]' in deployment


@pytest.mark.parametrize("redis", [False, True])
def test_helm_values_config_validates(tmp_path, redis):
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    text = yaml.safe_dump(helm_config(values, redis), sort_keys=False)
    r = validate_text(tmp_path, text, env={"TOLLGATE_ADMIN_TOKEN": TOKEN,
                                           "REDIS_URL": "redis://127.0.0.1:6379/0"})
    assert r.returncode == 0, text + r.stdout + r.stderr


@needs_helm
def test_helm_template_renders_a_valid_config(tmp_path):
    out = subprocess.run(["helm", "template", "t", str(CHART), "--set", "redis.enabled=true",
                          "--set", "redis.existingSecret=redis"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    docs = {d["kind"]: d for d in yaml.safe_load_all(out.stdout) if d}
    assert {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"} <= set(docs)
    r = validate_text(tmp_path, docs["ConfigMap"]["data"]["tollgate.yaml"],
                      env={"TOLLGATE_ADMIN_TOKEN": TOKEN, "REDIS_URL": "redis://127.0.0.1:6379/0"})
    assert r.returncode == 0, r.stdout + r.stderr


# --------------------------------------------------------------------------
# Dockerfile (not built here: no container registry is reachable)
# --------------------------------------------------------------------------

def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    text = re.sub(r"^\s*#.*\n", "", text, flags=re.M).replace("\\\n", " ")
    return [(m.group(1).upper(), m.group(2).strip())
            for m in re.finditer(r"^([A-Za-z]+)\s+(.*)$", text, flags=re.M)]


def test_dockerfile_matches_binary_and_config(tmp_path):
    ins = dockerfile()
    froms = [a for i, a in ins if i == "FROM"]
    assert len(froms) == 2, froms
    assert froms[0].startswith("rust:1.95") and froms[0].endswith(" AS build"), froms
    assert not froms[1].startswith("rust"), "the runtime stage must be a small distro image"
    runs = " ".join(a for i, a in ins if i == "RUN")
    assert "cargo build --release --locked -p tollgate" in runs

    user = [a for i, a in ins if i == "USER"]
    assert user and user[-1].split(":")[0] not in ("0", "root"), user

    copies = dict(reversed(a.split()[-2:]) for i, a in ins if i == "COPY" and "--from" not in a)
    config_path = "/etc/tollgate/tollgate.yaml"
    src = copies[config_path]
    assert (ROOT / src).is_file(), src
    cfg_text = (ROOT / src).read_text()
    cfg = yaml.safe_load(cfg_text)

    exposed = {int(p) for i, a in ins if i == "EXPOSE" for p in a.split()}
    assert exposed == {port_of(cfg["listen"]["proxy"]), port_of(cfg["listen"]["admin"])} == {8080, 8081}
    (health,) = [a for i, a in ins if i == "HEALTHCHECK"]
    assert f"127.0.0.1:{port_of(cfg['listen']['admin'])}/healthz" in health, health

    (entry,) = [json.loads(a) for i, a in ins if i == "ENTRYPOINT"]
    (cmd,) = [json.loads(a) for i, a in ins if i == "CMD"]
    assert entry == ["/usr/local/bin/tollgate"]
    check_command(cmd, config_path)
    r = validate_text(tmp_path, cfg_text, env={"TOLLGATE_ADMIN_TOKEN": TOKEN})
    assert r.returncode == 0, r.stdout + r.stderr

    ignore = (DEPLOY / "docker" / "Dockerfile.dockerignore").read_text().split()
    assert "target" in ignore and ".git" in ignore


def test_docker_config_starts_and_health_needs_no_token(gateway):
    gw = gateway((DEPLOY / "docker" / "tollgate.yaml").read_text(), env={"TOLLGATE_ADMIN_TOKEN": TOKEN})
    assert gw.admin("GET", "/healthz").status_code == 200
    assert gw.admin("GET", "/admin/config").status_code == 401


# --------------------------------------------------------------------------
# systemd unit
# --------------------------------------------------------------------------

UNIT = DEPLOY / "systemd" / "tollgate.service"


def unit_settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            k, v = line.split("=", 1)
            out.setdefault(k.strip(), []).append(v.strip())
    return out


def test_systemd_unit_hardening_and_commands(tmp_path):
    s = unit_settings()
    for key, value in {
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
        "PrivateTmp": "yes", "PrivateDevices": "yes", "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX", "StateDirectory": "tollgate",
        "DynamicUser": "yes", "ExecReload": "/bin/kill -HUP $MAINPID",
    }.items():
        assert s.get(key) == [value], (key, s.get(key))
    (start,) = s["ExecStart"]
    argv = start.split()
    assert argv[0] == "/usr/local/bin/tollgate"
    check_command(argv[1:], "/etc/tollgate/tollgate.yaml")
    assert s["ExecStartPre"] == ["/usr/local/bin/tollgate validate /etc/tollgate/tollgate.yaml"]
    # The config shipped beside the unit validates and keeps state in the StateDirectory.
    shipped = (DEPLOY / "systemd" / "tollgate.yaml").read_text()
    assert yaml.safe_load(shipped)["state"]["dir"] == "/var/lib/tollgate"
    r = validate_text(tmp_path, shipped)
    assert r.returncode == 0, r.stdout + r.stderr


def systemd_verify(unit_text: str, d: Path) -> subprocess.CompletedProcess:
    # verify checks that executables exist: point the unit at the binary under test.
    d.mkdir(parents=True, exist_ok=True)
    path = d / "tollgate.service"
    path.write_text(unit_text.replace("/usr/local/bin/tollgate", TOLLGATE_BIN))
    return subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True,
                          text=True, timeout=60)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_and_security(tmp_path):
    ok = systemd_verify(UNIT.read_text(), tmp_path / "good")
    # verify exits 0 even for unknown keys or bad values (it only warns), so any output fails.
    assert ok.returncode == 0 and not ok.stderr.strip() and not ok.stdout.strip(), ok.stderr
    # The check itself catches a typo and a bad value.
    broken = UNIT.read_text().replace("ProtectHome=yes", "ProtectHome=yes\nProtectHomes=yes") \
                             .replace("PrivateTmp=yes", "PrivateTmp=maybe")
    bad = systemd_verify(broken, tmp_path / "bad")
    assert "ProtectHomes" in bad.stderr and "maybe" in bad.stderr, bad.stderr

    sec = subprocess.run(["systemd-analyze", "security", "--offline=yes",
                          str(tmp_path / "good" / "tollgate.service")],
                         capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for tollgate\.service: ([0-9.]+)", sec.stdout)
    assert m, sec.stdout + sec.stderr
    assert float(m.group(1)) <= 2.0, sec.stdout


# --------------------------------------------------------------------------
# Shell completions
# --------------------------------------------------------------------------

def test_completions_cover_every_subcommand():
    names = subcommands()
    assert {"run", "validate", "explain", "schema", "limits", "completions"} <= set(names), names
    bash = cli("completions", "bash")
    assert bash.returncode == 0, bash.stderr
    assert "complete -F _tollgate" in bash.stdout
    for name in names:
        assert f"tollgate,{name})" in bash.stdout, name
    assert "--config" in bash.stdout and "--admin-listen" in bash.stdout
    for shell, marker in (("zsh", "#compdef tollgate"), ("fish", "complete -c tollgate")):
        out = cli("completions", shell)
        assert out.returncode == 0 and marker in out.stdout, (shell, out.stderr)
        assert all(name in out.stdout for name in names), shell
    bad = cli("completions", "tcsh")
    assert bad.returncode == 2 and "tcsh" in bad.stderr


# --------------------------------------------------------------------------
# Dashboard and alert rules against a live scrape
# --------------------------------------------------------------------------

METRIC_RE = re.compile(r"\btollgate_[a-z0-9_]*[a-z0-9]\b")


def dashboard_strings(node) -> list[str]:
    if isinstance(node, dict):
        return [s for v in node.values() for s in dashboard_strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in dashboard_strings(v)]
    return [node] if isinstance(node, str) else []


def referenced_metrics() -> dict[str, set[str]]:
    dash = json.loads((DEPLOY / "grafana" / "tollgate-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    rules = [r for g in yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
             for r in g["rules"]]
    return {
        "dashboard": set(METRIC_RE.findall("\n".join(dashboard_strings(dash)))),
        "dashboard_exprs": set(METRIC_RE.findall("\n".join(exprs))),
        "alert_exprs": set(METRIC_RE.findall("\n".join(r["expr"] for r in rules))),
        # Annotations may also name a family (e.g. a histogram without its suffix).
        "alert_annotations": set(METRIC_RE.findall(
            "\n".join(v for r in rules for v in r.get("annotations", {}).values()))),
    }


def exposed_sample_names(scrape: str) -> set[str]:
    """Every series name a Prometheus server would store from this scrape: declared
    families (even those with no sample yet) with their type's suffixes, plus samples."""
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"],
                "gaugehistogram": ["_bucket", "_gsum", "_gcount"], "summary": ["", "_sum", "_count"],
                "info": ["_info"], "stateset": [""], "gauge": [""], "unknown": [""]}
    names = set()
    for m in re.finditer(r"^# TYPE (\S+) (\S+)$", scrape, flags=re.M):
        names |= {m.group(1) + s for s in suffixes[m.group(2)]}
    names |= set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", scrape, flags=re.M))
    return names


def to_prometheus_text(scrape: str) -> str:
    """OpenMetrics -> Prometheus text 0.0.4, which is what `promtool check metrics`
    (2.42) parses: counters are declared as `<name>_total`, no `# UNIT`, no `# EOF`."""
    counters = set(re.findall(r"^# TYPE (\S+) counter$", scrape, flags=re.M))
    out = []
    for line in scrape.splitlines():
        if line == "# EOF" or line.startswith("# UNIT "):
            continue
        m = re.match(r"# (HELP|TYPE) (\S+)(.*)", line)
        if m and m.group(2) in counters:
            line = f"# {m.group(1)} {m.group(2)}_total{m.group(3)}"
        out.append(line)
    return "\n".join(out) + "\n"


def promtool() -> str | None:
    path = shutil.which("promtool")
    if path is None and os.environ.get("TOLLGATE_REQUIRE_PROMTOOL") == "1":
        pytest.fail("promtool is required (TOLLGATE_REQUIRE_PROMTOOL=1): apt-get install prometheus")
    return path


def test_name_check_catches_a_metric_that_does_not_exist():
    scrape = "# TYPE tollgate_x counter\ntollgate_x_total 1\n# TYPE tollgate_h_seconds histogram\n# EOF\n"
    names = exposed_sample_names(scrape)
    assert {"tollgate_x_total", "tollgate_h_seconds_bucket", "tollgate_h_seconds_count"} <= names
    assert "tollgate_x" not in names and "tollgate_h_seconds" not in names
    assert METRIC_RE.findall('rate(tollgate_x_total{a="b"}[5m]) / tollgate_y') == ["tollgate_x_total", "tollgate_y"]


def test_dashboard_and_alerts_reference_only_metrics_a_running_gateway_exposes(
        gateway, upstream, dns_server):
    """Labelled families appear in /metrics only once they have a sample, so the
    traffic covers every panel: allowed, endpoint- and destination-denied,
    guard-blocked, rate-limited, retried into an open breaker, a DNS failure and a
    CONNECT tunnel."""
    dns = dns_server({"flaky.tollgate.test": {"A": ["127.0.0.1"]},
                      "tunnel.tollgate.test": {"A": ["127.0.0.1"]}})
    cfg = base_config(
        default_action="deny",
        dns={"servers": [dns.addr], "timeout": "2s"},
        connect={"allowed_ports": [upstream.port]},
        apis=[
            {"name": "echo", "hosts": ["127.0.0.1"],
             "allow": [{"methods": ["GET"], "paths": ["/v1/**"]}],
             "limits": [{"name": "burst", "requests": 2, "per": "1h", "algorithm": "gcra"}]},
            {"name": "blocked", "hosts": ["127.0.0.2"]},
            {"name": "flaky", "hosts": ["flaky.tollgate.test"],
             "retry": {"attempts": 2, "backoff": "5ms..20ms", "on": [503]},
             "breaker": {"consecutive_failures": 2, "open_for": "1m"}},
            {"name": "tunnel", "hosts": ["tunnel.tollgate.test"]},
            {"name": "nx", "hosts": ["nx.tollgate.test"]},
        ])
    gw = gateway(cfg)
    statuses = [gw.get(f"{upstream.base}/v1/{i}").status_code for i in range(3)]
    assert statuses == [200, 200, 429], statuses
    assert gw.get(f"{upstream.base}/other").status_code == 403
    assert gw.get("http://api.example.invalid/x").status_code == 403
    assert gw.get(f"http://127.0.0.2:{upstream.port}/x").status_code == 403
    assert gw.get(f"http://flaky.tollgate.test:{upstream.port}/status/503").status_code == 503
    assert gw.get(f"http://nx.tollgate.test:{upstream.port}/x").status_code == 502
    sock, resp = connect_tunnel(gw.proxy_addr, f"tunnel.tollgate.test:{upstream.port}")
    with sock:
        assert resp.status == 200, resp
        sock.sendall(b"GET /through-tunnel HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
        assert got.startswith(b"HTTP/1.") and b"through-tunnel" in got
    assert wait_until(lambda: metric_value(gw.admin("GET", "/metrics").text, "tollgate_requests_total",
                                           kind="connect", api="tunnel") == 1)
    scrape = gw.admin("GET", "/metrics").text

    # The traffic above is visible: the test really exercised the metrics it checks.
    assert metric_value(scrape, "tollgate_requests_total", api="echo", decision="allow", status_class="2xx") == 2
    assert metric_value(scrape, "tollgate_requests_total", api="echo", decision="deny") >= 2
    assert metric_value(scrape, "tollgate_requests_total", api="none", decision="deny") == 1
    assert metric_value(scrape, "tollgate_limit_decisions_total", api="echo", result="admitted") == 2
    assert metric_value(scrape, "tollgate_limit_decisions_total", api="echo", result="limited") == 1
    assert metric_value(scrape, "tollgate_upstream_duration_seconds_count", api="echo") == 2
    assert metric_value(scrape, "tollgate_request_duration_seconds_bucket", api="echo", le="+Inf") >= 3
    assert metric_value(scrape, "tollgate_request_bytes_total", api="echo", direction="out") > 0
    assert (metric_value(scrape, "tollgate_guard_denials_total") or 0) >= 1, scrape
    assert metric_value(scrape, "tollgate_config_last_reload_success") == 1
    assert metric_value(scrape, "tollgate_upstream_retries_total", api="flaky", reason="503") == 1
    assert metric_value(scrape, "tollgate_breaker_state", api="flaky") == 2
    assert (metric_value(scrape, "tollgate_dns_errors_total") or 0) >= 1, scrape
    assert metric_value(scrape, "tollgate_tunnel_bytes_total", api="tunnel", direction="out") > 0
    assert metric_value(scrape, "tollgate_proxy_tunnels_active", api="tunnel") == 0

    exposed = exposed_sample_names(scrape)
    refs = referenced_metrics()
    assert len(refs["dashboard_exprs"]) >= 15 and len(refs["alert_exprs"]) >= 5, refs
    families = set(re.findall(r"^# TYPE (\S+) ", scrape, flags=re.M))
    for where, names in refs.items():
        missing = sorted(names - exposed - (families if where == "alert_annotations" else set()))
        assert not missing, f"{where} references metrics /metrics does not expose: {missing}"
    # Every panel shows data for the core series this traffic produced.
    sampled = set(re.findall(r"^([a-z_]+)[{ ]", scrape, flags=re.M))
    assert {"tollgate_requests_total", "tollgate_request_duration_seconds_bucket",
            "tollgate_upstream_duration_seconds_bucket", "tollgate_limit_decisions_total",
            "tollgate_request_bytes_total", "tollgate_config_version",
            "tollgate_proxy_connections_active"} <= sampled

    tool = promtool()
    if tool is None:
        pytest.skip("promtool not installed (apt-get install prometheus); names were checked")
    lint = subprocess.run([tool, "check", "metrics"], input=to_prometheus_text(scrape),
                          capture_output=True, text=True, timeout=60)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_promtool_checks_and_unit_tests_the_alert_rules():
    tool = promtool()
    if tool is None:
        pytest.skip("promtool not installed (apt-get install prometheus)")
    check = subprocess.run([tool, "check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS" in check.stdout
    unit = subprocess.run([tool, "test", "rules", str(DEPLOY / "prometheus" / "alerts_test.yml")],
                          capture_output=True, text=True, timeout=120)
    assert unit.returncode == 0, unit.stdout + unit.stderr


def test_dashboard_structure():
    dash = json.loads((DEPLOY / "grafana" / "tollgate-dashboard.json").read_text())
    assert dash["uid"] and dash["title"] == "Tollgate"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "job", "instance", "api"} <= variables
    for p in dash["panels"]:
        for t in p.get("targets", []):
            used = set(re.findall(r"\$(\w+)", t["expr"])) - {"__rate_interval", "__interval", "__range"}
            assert used <= variables, (p["title"], used)
            # Balanced brackets: the cheapest PromQL syntax check without a server.
            for o, c in ("()", "{}", "[]"):
                assert t["expr"].count(o) == t["expr"].count(c), (p["title"], t["expr"])
    titles = " ".join(p["title"] for p in dash["panels"]).lower()
    for word in ("requests/s", "status class", "latency", "upstream", "limit", "bytes",
                 "connections", "configuration", "config version"):
        assert word in titles, word


def test_admin_probe_paths_used_by_deploy_artifacts_exist(gateway):
    gw = gateway(base_config())
    for path in ("/healthz", "/readyz", "/metrics"):
        r = gw.admin("GET", path)
        assert r.status_code == 200, (path, r.status_code)
    with requests.Session() as s:
        s.trust_env = False
        assert s.get(gw.admin_url + "/nope", timeout=TIMEOUT).status_code == 404


# --------------------------------------------------------------------------
# Control plane: Helm chart, plain manifests and systemd unit, against the real binary
# --------------------------------------------------------------------------

CP_CHART = DEPLOY / "helm" / "tollgate-control-plane"
CP_K8S = DEPLOY / "kubernetes" / "control-plane"
CP_UNIT = DEPLOY / "systemd" / "tollgate-control-plane.service"


def cp_flags() -> set[str]:
    """Long flags `tollgate control-plane` accepts, read from its own --help."""
    out = cli("control-plane", "--help")
    assert out.returncode == 0, out.stderr
    return set(re.findall(r"--[a-z][a-z-]+", out.stdout))


def check_cp_command(argv: list[str]) -> int:
    """argv (without the binary) is a valid `control-plane` command; returns its listen port."""
    assert argv[0] == "control-plane", argv
    flags = {a for a in argv[1:] if a.startswith("-")}
    assert flags <= cp_flags(), (flags, cp_flags())
    assert argv[argv.index("--data-dir") + 1] == "/var/lib/tollgate-cp", argv
    return port_of(argv[argv.index("--listen") + 1].strip('"'))


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory):
    """A real `tollgate control-plane` on an ephemeral loopback port (SQLite)."""
    d = tmp_path_factory.mktemp("cp")
    proc = subprocess.Popen([TOLLGATE_BIN, "control-plane", "--data-dir", str(d / "data"),
                             "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True)
    try:
        printed = {}
        for line in proc.stdout:
            for key, pattern in (("base", r"listening on (https://\S+)"),
                                 ("fingerprint", r"fingerprint: ([0-9a-f]+)"),
                                 ("token", r"token \(shown once, store it now\): (\S+)")):
                m = re.search(pattern, line)
                if m:
                    printed[key] = m.group(1)
            if "token" in printed:
                break
        assert {"base", "fingerprint", "token"} <= set(printed), printed
        yield printed
    finally:
        proc.kill()
        proc.wait(timeout=10)


def probe(base: str, path: str) -> int:
    with requests.Session() as s:
        s.trust_env = False
        # The generated self-signed certificate; kubelet probes do not verify it either.
        return s.get(base + path, verify=False, timeout=TIMEOUT).status_code


def test_control_plane_serves_the_probe_paths(control_plane):
    import urllib3
    urllib3.disable_warnings()
    base = control_plane["base"]
    assert probe(base, "/healthz") == 200
    assert probe(base, "/readyz") == 200
    assert probe(base, "/no-such-probe") == 404


def probe_paths(container: dict) -> dict:
    return {k: (container[k]["httpGet"]["path"], container[k]["httpGet"]["port"],
                container[k]["httpGet"]["scheme"]) for k in ("readinessProbe", "livenessProbe")}


def test_control_plane_manifests_match_the_binary():
    docs = {}
    for f in sorted(CP_K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            assert doc and "kind" in doc, f
            docs.setdefault(doc["kind"], []).append(doc)
    kust = docs["Kustomization"][0]
    assert sorted(kust["resources"]) == sorted(p.name for p in CP_K8S.glob("*.yaml")
                                               if p.name != "kustomization.yaml")
    (sts,) = docs["StatefulSet"]
    assert sts["spec"]["replicas"] == 1, "SQLite: one writer"
    pod = sts["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    port = check_cp_command(c["args"])
    assert [(p["name"], p["containerPort"]) for p in c["ports"]] == [("https", port)]
    assert probe_paths(c) == {"readinessProbe": ("/readyz", "https", "HTTPS"),
                              "livenessProbe": ("/healthz", "https", "HTTPS")}
    # The data directory is the claim, the root filesystem read-only, the user not root.
    (mount,) = c["volumeMounts"]
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert mount == {"name": claim["metadata"]["name"], "mountPath": "/var/lib/tollgate-cp"}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"] == labels
    services = {s["metadata"]["name"]: s for s in docs["Service"]}
    assert sts["spec"]["serviceName"] in services
    assert services[sts["spec"]["serviceName"]]["spec"]["clusterIP"] == "None"
    for s in services.values():
        assert s["spec"]["selector"] == labels
        assert [(p["targetPort"], p["port"]) for p in s["spec"]["ports"]] == [("https", port)]


def test_control_plane_helm_chart_structure():
    chart = yaml.safe_load((CP_CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "tollgate-control-plane"
    version = re.search(r'^version = "([^"]+)"', (ROOT / "Cargo.toml").read_text(), re.M).group(1)
    assert chart["appVersion"] == version
    values = yaml.safe_load((CP_CHART / "values.yaml").read_text())

    def has(path: list[str]) -> bool:
        node = values
        for key in path:
            if not isinstance(node, dict) or key not in node:
                return False
            node = node[key]
        return True

    refs = set()
    for t in (CP_CHART / "templates").iterdir():
        refs |= set(re.findall(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)", t.read_text()))
    assert len(refs) > 15, refs
    missing = sorted(r for r in refs if not has(r.lstrip(".").split(".")))
    assert not missing, missing
    for name, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        assert values[name]["httpGet"] == {"path": path, "port": "https", "scheme": "HTTPS"}
    sts = (CP_CHART / "templates" / "statefulset.yaml").read_text()
    # The args the template renders, with the default values substituted.
    args = re.search(r"args:\n((?:\s+- .*\n|\s+\{\{.*\n)+)", sts).group(1)
    rendered = [a.strip()[2:].strip('"') for a in args.splitlines()
                if a.strip().startswith("- ")]
    rendered = [a.replace("{{ .Values.port }}", str(values["port"])) for a in rendered]
    assert check_cp_command(rendered[:5]) == values["port"] == values["service"]["port"]
    assert {"--tls-cert", "--tls-key"} <= cp_flags()
    assert "name: TOLLGATE_CP_DATABASE_URL" in sts
    assert "TOLLGATE_CP_DATABASE_URL" in cli("control-plane", "--help").stdout
    # Several replicas only with PostgreSQL and a shared signing key and certificate.
    helpers = (CP_CHART / "templates" / "_helpers.tpl").read_text()
    assert "fail " in helpers and "signingKey.existingSecret" in helpers
    assert "mountPath: /var/lib/tollgate-cp/signing.key" in sts


@needs_helm
def test_control_plane_helm_template_renders():
    out = subprocess.run(["helm", "template", "t", str(CP_CHART)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(out.stdout) if d]
    assert sorted(kinds) == ["Service", "Service", "StatefulSet"]
    bad = subprocess.run(["helm", "template", "t", str(CP_CHART), "--set", "postgresql.enabled=true",
                          "--set", "postgresql.existingSecret=db", "--set", "replicaCount=3"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "signingKey.existingSecret" in bad.stderr


def test_control_plane_systemd_unit_commands():
    settings: dict[str, list[str]] = {}
    for line in CP_UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            k, v = line.split("=", 1)
            settings.setdefault(k.strip(), []).append(v.strip())
    (start,) = settings["ExecStart"]
    argv = start.split()
    assert argv[0] == "/usr/local/bin/tollgate"
    check_cp_command(argv[1:])
    assert settings["StateDirectory"] == ["tollgate-cp"]
    for key in ("NoNewPrivileges", "ProtectSystem", "PrivateTmp", "DynamicUser"):
        assert settings[key] == unit_settings()[key], key


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_control_plane_systemd_analyze_verify(tmp_path):
    d = tmp_path / "cp"
    d.mkdir()
    path = d / "tollgate-control-plane.service"
    path.write_text(CP_UNIT.read_text().replace("/usr/local/bin/tollgate", TOLLGATE_BIN))
    ok = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True,
                        timeout=60)
    assert ok.returncode == 0 and not ok.stderr.strip() and not ok.stdout.strip(), ok.stderr
    sec = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(path)],
                         capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for tollgate-control-plane\.service: ([0-9.]+)", sec.stdout)
    assert m, sec.stdout + sec.stderr
    assert float(m.group(1)) <= 2.0, sec.stdout


REMOTE_K8S = DEPLOY / "kubernetes" / "remote-gateway"


def test_remote_gateway_manifest_enrolls_and_serves(control_plane, tmp_path, upstream):
    """The remote-gateway StatefulSet's command, run for real against a real control plane
    (URL and fingerprint filled in, ports ephemeral): it enrolls with the one-time token from
    the env var the manifest sets, applies the published bundle and proxies traffic."""
    docs = {}
    for f in sorted(REMOTE_K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            docs.setdefault(doc["kind"], []).append(doc)
    (sts,) = docs["StatefulSet"]
    assert sts["spec"]["replicas"] == 1, "one enrollment per pod"
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    args = c["args"]
    assert args[0] == "run" and set(a for a in args if a.startswith("--")) <= run_flags()
    state_dir = args[args.index("--state-dir") + 1]
    (mount,) = c["volumeMounts"]
    assert mount["mountPath"] == state_dir
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == mount["name"]
    assert [e["name"] for e in c["env"]] == ["TOLLGATE_ENROLL_TOKEN"]
    assert "TOLLGATE_ENROLL_TOKEN" in cli("run", "--help").stdout
    assert port_of(args[args.index("--proxy-listen") + 1]) == c["ports"][0]["containerPort"]
    for svc in docs["Service"]:
        assert svc["spec"]["selector"] == sts["spec"]["template"]["metadata"]["labels"]
    probes = [c[k]["exec"]["command"][-1] for k in ("readinessProbe", "livenessProbe")]
    assert probes == ["http://127.0.0.1:8081/readyz", "http://127.0.0.1:8081/healthz"]

    # The guide's steps: a group, a one-time token, a published config (admin on loopback).
    env = {"TOLLGATE_CP_URL": control_plane["base"], "TOLLGATE_CP_TOKEN": control_plane["token"],
           "TOLLGATE_CP_FINGERPRINT": control_plane["fingerprint"]}
    assert cli("cp", "groups", "create", "site-a", env=env).returncode == 0
    token = cli("cp", "tokens", "create", "site-a", env=env)
    assert token.returncode == 0, token.stderr
    conf = tmp_path / "site-a.yaml"
    conf.write_text("listen: { proxy: 0.0.0.0:8080, admin: 127.0.0.1:8081 }\n"
                    "network_guard: { allow: [127.0.0.1/32] }\ndefault_action: allow\n")
    pub = cli("cp", "configs", "publish", "site-a", conf, env=env)
    assert pub.returncode == 0, pub.stdout + pub.stderr

    argv = [a.replace("https://tollgate-control-plane:9443", control_plane["base"])
             .replace("REPLACE_WITH_THE_CONTROL_PLANE_FINGERPRINT", control_plane["fingerprint"])
             .replace(state_dir, str(tmp_path / "state"))
             .replace("0.0.0.0:8080", "127.0.0.1:0") for a in args]
    full_env = dict(os.environ, TOLLGATE_ENROLL_TOKEN=token.stdout.strip())
    proc = subprocess.Popen([TOLLGATE_BIN, *argv, "--admin-listen", "127.0.0.1:0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=full_env, stdin=subprocess.DEVNULL)
    try:
        listening = None
        for line in proc.stderr:
            if '"listening"' in line:
                listening = json.loads(line)
                break
        assert listening, "the managed gateway never listened"
        proxy = listening.get("listen.proxy") or listening["fields"]["listen.proxy"]
        admin = listening.get("listen.admin") or listening["fields"]["listen.admin"]
        with requests.Session() as s:
            s.trust_env = False
            assert s.get(f"http://{admin}/readyz", timeout=TIMEOUT).status_code == 200
            r = s.get(upstream.base + "/via-remote", proxies={"http": f"http://{proxy}"},
                      timeout=TIMEOUT)
        assert r.status_code == 200 and upstream.requests[-1]["path"] == "/via-remote"
        assert (tmp_path / "state" / "bundle.json").exists(), "the fail-static backup is kept"
    finally:
        proc.kill()
        proc.wait(timeout=10)


REMOTE_CHART = DEPLOY / "helm" / "tollgate-remote-gateway"


def test_remote_gateway_helm_chart_structure():
    """The remote-gateway chart renders the same command as the run-tested manifest above:
    its flags exist in `tollgate run --help`, and state dir, env var, ports and probes agree."""
    chart = yaml.safe_load((REMOTE_CHART / "Chart.yaml").read_text())
    version = re.search(r'^version = "([^"]+)"', (ROOT / "Cargo.toml").read_text(), re.M).group(1)
    assert chart["name"] == "tollgate-remote-gateway" and chart["appVersion"] == version
    values = yaml.safe_load((REMOTE_CHART / "values.yaml").read_text())

    def has(path: list[str]) -> bool:
        node = values
        for key in path:
            if not isinstance(node, dict) or key not in node:
                return False
            node = node[key]
        return True

    refs = set()
    for t in (REMOTE_CHART / "templates").iterdir():
        refs |= set(re.findall(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)", t.read_text()))
    missing = sorted(r for r in refs if not has(r.lstrip(".").split(".")))
    assert len(refs) > 15 and not missing, (refs, missing)

    sts = (REMOTE_CHART / "templates" / "statefulset.yaml").read_text()
    flags = set(re.findall(r"^\s+- (--[a-z-]+)$", sts, re.M))
    assert {"--control-plane", "--cp-fingerprint", "--cp-public-key", "--state-dir",
            "--proxy-listen", "--gateway-name", "--label"} == flags
    assert flags <= run_flags()
    manifest = yaml.safe_load((REMOTE_K8S / "statefulset.yaml").read_text())
    (c,) = manifest["spec"]["template"]["spec"]["containers"]
    args = c["args"]
    assert values["controlPlane"]["url"] == args[args.index("--control-plane") + 1]
    assert "- --state-dir\n            - /var/lib/tollgate\n" in sts
    assert "mountPath: /var/lib/tollgate\n" in sts
    assert "name: TOLLGATE_ENROLL_TOKEN" in sts
    assert values["proxyPort"] == port_of(args[args.index("--proxy-listen") + 1])
    for path in ("/readyz", "/healthz"):
        assert f'"http://127.0.0.1:{{{{ .Values.adminPort }}}}{path}"' in sts
    assert values["adminPort"] == 8081
    # Without a pin the template refuses to render.
    assert "fail " in sts and not values["controlPlane"]["fingerprint"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_remote_gateway_systemd_drop_in_from_the_guide(tmp_path):
    """docs/deploy.md's managed-gateway drop-in, exactly as printed there, on the shipped unit:
    `systemd-analyze verify` loads it without a warning and its command uses real flags."""
    guide = (ROOT / "docs" / "deploy.md").read_text()
    m = re.search(r"^printf '(\[Service\]\\nExecStartPre=.*?)' \\$", guide, re.M)
    assert m, "the drop-in printf line is gone from docs/deploy.md"
    drop_in = m.group(1).replace("\\n", "\n")
    (exec_start,) = [l for l in drop_in.splitlines() if l.startswith("ExecStart=/")]
    argv = exec_start.split("=", 1)[1].split()
    assert argv[:2] == ["/usr/local/bin/tollgate", "run"]
    assert {a for a in argv if a.startswith("--")} <= run_flags()
    assert "EnvironmentFile=-/etc/tollgate/tollgate.env" in UNIT.read_text()
    (tmp_path / "tollgate.service.d").mkdir()
    (tmp_path / "tollgate.service").write_text(UNIT.read_text().replace("/usr/local/bin/tollgate", TOLLGATE_BIN))
    (tmp_path / "tollgate.service.d" / "managed.conf").write_text(drop_in.replace("/usr/local/bin/tollgate", TOLLGATE_BIN))
    ok = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "tollgate.service")],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and not ok.stderr.strip() and not ok.stdout.strip(), ok.stderr
    # The check sees the drop-in: a typo in it is reported.
    (tmp_path / "tollgate.service.d" / "managed.conf").write_text(drop_in + "ExecStrat=x\n")
    bad = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "tollgate.service")],
                         capture_output=True, text=True, timeout=60)
    assert "ExecStrat" in bad.stderr, bad.stderr


@needs_helm
@pytest.mark.parametrize("chart,values", [
    ("tollgate", []),
    ("tollgate-control-plane", []),
    ("tollgate-remote-gateway", ["--set", "controlPlane.fingerprint=ab12",
                                 "--set", "controlPlane.url=https://cp.example:8443"]),
])
def test_helm_lint_every_chart(chart, values):
    path = str(DEPLOY / "helm" / chart)
    lint = subprocess.run(["helm", "lint", "--strict", path, *values], capture_output=True,
                          text=True, timeout=60)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    out = subprocess.run(["helm", "template", "t", path, *values], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert all(d.get("kind") for d in yaml.safe_load_all(out.stdout) if d)
