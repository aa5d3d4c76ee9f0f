"""Hot reload: file change, SIGHUP and POST /admin/reload; invalid configs are
rejected while the old one keeps serving; reload under load loses nothing."""

from __future__ import annotations

import os
import signal
import threading
import time

import requests

from helpers import TIMEOUT, assert_problem, base_config, metric_value, wait_until


def deny_cfg(extra_apis=()):
    return base_config(default_action="deny", apis=list(extra_apis))


def allow_api():
    return {"name": "echo", "hosts": ["127.0.0.1"], "allow": [{"methods": ["GET"], "paths": ["/v1/**"]}]}


def test_reload_on_file_change(gateway, upstream):
    gw = gateway(deny_cfg())
    url = f"{upstream.base}/v1/x"
    assert_problem(gw.get(url), 403, "destination_not_allowed")
    v1 = gw.config_version()
    gw.write_config(deny_cfg([allow_api()]))
    assert wait_until(lambda: gw.get(url).status_code == 200, timeout=6), gw.stderr_text()[-2000:]
    assert gw.alive()
    assert gw.config_version() > v1
    status = gw.admin("GET", "/admin/config").json()["status"]
    assert not status.get("last_error")


def test_reload_on_sighup(gateway, upstream, tmp_path):
    # The config is reached through a symlink whose target lives in a directory
    # the file watcher does not watch, so only SIGHUP can trigger this reload.
    real = tmp_path / "real"
    real.mkdir()
    link_dir = tmp_path / "gwhup" / "conf"
    link_dir.mkdir(parents=True)
    (real / "cfg.yaml").write_text("")
    link = link_dir / "tollgate.yaml"
    os.symlink(real / "cfg.yaml", link)
    gw = gateway(deny_cfg(), config_path=link)
    url = f"{upstream.base}/v1/hup"
    assert_problem(gw.get(url), 403, "destination_not_allowed")
    v1 = gw.config_version()
    gw.write_config(deny_cfg([allow_api()]))
    gw.send_signal(signal.SIGHUP)
    assert wait_until(lambda: gw.config_version() > v1, timeout=5), gw.stderr_text()[-2000:]
    assert gw.get(url).status_code == 200
    assert gw.alive()


def test_admin_reload_rejects_invalid_config(gateway, upstream):
    gw = gateway(deny_cfg([allow_api()]))
    url = f"{upstream.base}/v1/keep"
    assert gw.get(url).status_code == 200
    v1 = gw.config_version()
    good_text = gw.config_path.read_text()
    gw.write_config(good_text + "server:\n  shutdown_grace: \"soon\"\n  bogus_key: 1\n")
    r = gw.reload()
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["status"] == "rejected"
    assert isinstance(body["errors"], list) and body["errors"]
    assert any("bogus_key" in e or "shutdown_grace" in e for e in body["errors"]), body
    # The old configuration keeps serving.
    assert gw.get(url).status_code == 200
    assert_problem(gw.request("POST", url), 403, "endpoint_not_allowed")
    status = gw.admin("GET", "/admin/config").json()["status"]
    assert status["version"] == v1
    assert status["last_error"]
    metrics = gw.admin("GET", "/metrics").text
    assert (metric_value(metrics, "tollgate_config_reloads_total", result="error") or 0) >= 1, metrics
    # The failure is in the diagnostic log as well.
    assert wait_until(lambda: "reload" in gw.stderr_text().lower() and "error" in gw.stderr_text().lower())
    # Fixing the file and reloading applies it.
    gw.write_config(good_text)
    r = gw.reload()
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "applied" and r.json()["version"] > v1
    assert gw.alive()


def test_reload_under_load_loses_no_request(gateway, upstream):
    gw = gateway(base_config(apis=[allow_api()]))
    url = f"{upstream.base}/v1/load"
    stop = threading.Event()
    results = {"ok": 0, "failed": []}
    lock = threading.Lock()

    def worker():
        with requests.Session() as s:
            s.trust_env = False
            s.proxies = gw.proxies
            while not stop.is_set():
                try:
                    r = s.get(url, timeout=TIMEOUT)
                    ok = r.status_code == 200
                    err = None if ok else f"{r.status_code} {r.headers.get('tollgate-error')}"
                except requests.RequestException as e:
                    ok, err = False, repr(e)
                with lock:
                    if ok:
                        results["ok"] += 1
                    else:
                        results["failed"].append(err)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    v1 = gw.config_version()
    applied = 0
    try:
        for i in range(10):
            time.sleep(0.25)
            apis = [allow_api(), {"name": f"other{i}", "hosts": [f"other{i}.example"]}]
            gw.write_config(base_config(apis=apis))
            r = gw.reload()
            assert r.status_code == 200, r.text
            applied += 1
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=15)
    assert applied == 10
    assert not any(t.is_alive() for t in threads)
    assert results["failed"] == [], results["failed"][:10]
    assert results["ok"] > 20
    assert gw.config_version() >= v1 + 10
