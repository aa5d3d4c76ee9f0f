"""Secrets never leak: API keys and the admin token given through the
environment appear nowhere in the access log, diagnostics, metrics, admin
answers or error bodies."""

from __future__ import annotations

import base64
import subprocess

import requests

from helpers import TOLLGATE_BIN, base_config, get_and_close


def test_api_key_never_appears_anywhere(gateway, upstream, tls_upstream, certs, tmp_path):
    key = "sk-live-9f3b2c7d1e6a4085"
    token = "adm-4e8d1b6c2f9a7035"
    env = {"ACME_KEY": key, "TG_ADMIN_TOKEN": token, "TOLLGATE_LOG": "debug"}
    cfg = base_config(
        admin={"token": "${env:TG_ADMIN_TOKEN}"},
        unknown_consumer={"action": "deny"},
        consumers=[{"name": "acme", "identify": {"api_key": {"key": "${env:ACME_KEY}"}}}],
        apis=[{"name": "echo", "hosts": ["127.0.0.1"], "allow": [{"methods": ["GET"]}]},
              {"name": "r", "route": "/r", "upstream": upstream.base}],
        connect={"allowed_ports": [tls_upstream.port]},
        logging={"redact_query_params": ["api_key", "key", "token", "custom_q"]},
    )
    gw = gateway(cfg, env=env)
    basic = "Basic " + base64.b64encode(f"svc:{key}".encode()).decode()
    bearer = f"Bearer {key}"
    near_miss = "Basic " + base64.b64encode(f"svc:{key[:-1]}X".encode()).decode()
    bodies: list[str] = []

    def keep(r):
        # Upstream echo bodies repeat what the client sent (a query key included),
        # so only bodies Tollgate produced itself are searched; headers always are.
        if "X-Upstream" not in r.headers:
            bodies.append(r.text)
        bodies.append(str(dict(r.headers)))
        return r

    url = f"{upstream.base}/s"
    assert keep(gw.get(url, headers={"Proxy-Authorization": basic})).status_code == 200
    assert keep(gw.get(url + f"?api_key={key}&x=1", headers={"Proxy-Authorization": bearer})).status_code == 200
    assert keep(gw.get(url, headers={"Proxy-Authorization": near_miss})).status_code == 407
    assert keep(gw.request("POST", url, headers={"Proxy-Authorization": basic})).status_code == 403
    assert keep(gw.get(url + f"?custom_q={key}", headers={"Proxy-Authorization": bearer,
                                                       "X-Custom-Secret": key})).status_code == 200
    assert keep(gw.route("GET", "/r/x", headers={"Authorization": bearer})).status_code == 200
    assert keep(gw.route("GET", f"/r/x?token={key}", headers={"Authorization": "Bearer no"})).status_code == 401
    assert keep(gw.get(f"http://10.0.0.1/?key={key}", headers={"Proxy-Authorization": basic})).status_code == 403
    assert keep(gw.get(f"http://[::1]:{upstream.port}/", headers={"Proxy-Authorization": basic})).status_code == 403
    # CONNECT with the key in the proxy URL.
    s = requests.Session()
    s.trust_env = False
    status, headers, _ = get_and_close(s, f"https://127.0.0.1:{tls_upstream.port}/t", verify=str(certs["ca"]),
                                       proxies={"https": f"http://svc:{key}@{gw.proxy_addr}"})
    assert status == 200
    bodies.append(str(headers))
    # Admin answers.
    auth = {"Authorization": f"Bearer {token}"}
    metrics = gw.admin("GET", "/metrics", headers=auth)
    config = gw.admin("GET", "/admin/config", headers=auth)
    switches = gw.admin("GET", "/admin/switches", headers=auth)
    bad_admin = gw.admin("GET", "/admin/config", headers={"Authorization": f"Bearer {key}"})
    for r in (metrics, config, switches, bad_admin):
        keep(r)
    assert metrics.status_code == 200 and config.status_code == 200

    # A rejected reload whose error concerns the key's consumer.
    good = gw.config_path.read_text()
    gw.write_config(good.replace("${env:ACME_KEY}", "${env:TG_UNSET_FOR_TEST}"))
    keep(gw.reload(headers=auth))
    gw.write_config(good)

    # `explain` with the key in a header.
    p = subprocess.run([TOLLGATE_BIN, "explain", str(gw.config_path), "-H", f"Proxy-Authorization: {bearer}",
                        "GET http://127.0.0.1/x"], capture_output=True, text=True, timeout=20,
                       env={**gw.env})
    bodies += [p.stdout, p.stderr]

    # Wait until every request above is logged, then stop so all output is flushed.
    gw.wait_access(lambda e: e.get("kind") == "connect")
    gw.wait_access(lambda e: e.get("host") == "10.0.0.1")
    assert gw.terminate(timeout=10) == 0
    access = gw.access_log.read_text()
    assert access.count("\n") >= 10, access
    places = {
        "access log": access,
        "stderr": gw.stderr_text(),
        "stdout": gw.stdout_path.read_text(),
        "responses": "\n".join(bodies),
    }
    b64_key = base64.b64encode(f"svc:{key}".encode()).decode()
    for where, text in places.items():
        for secret in (key, token, b64_key):
            assert secret not in text, f"secret {secret[:6]}… leaked into {where}"
    # The redacted query parameter still shows its name, without the value.
    assert "api_key=REDACTED" in access, access
    assert "custom_q=REDACTED" in access, access
