"""The admin listener: emergency switches, health, metrics and the admin token."""

from __future__ import annotations

from helpers import assert_problem, base_config, metric_value

CHECKOUT = {"name": "checkout", "identify": {"header": {"name": "x-tollgate-consumer", "value": "checkout"}}}


def switch_config(upstream):
    return base_config(consumers=[CHECKOUT], apis=[
        {"name": "echo", "hosts": ["127.0.0.1"]},
        {"name": "other", "route": "/other", "upstream": upstream.base}])


def test_emergency_switches(gateway, upstream):
    gw = gateway(switch_config(upstream))
    url = f"{upstream.base}/sw"
    as_checkout = {"x-tollgate-consumer": "checkout"}
    assert gw.get(url).status_code == 200

    r = gw.admin("PUT", "/admin/switches/deny-all")
    assert r.status_code == 200, r.text
    assert_problem(gw.get(url), 403, "emergency_stop")
    assert_problem(gw.route("GET", "/other/x"), 403, "emergency_stop")
    state = gw.admin("GET", "/admin/switches")
    assert state.status_code == 200 and "deny" in state.text.lower()
    assert gw.admin("DELETE", "/admin/switches/deny-all").status_code == 200
    assert gw.get(url).status_code == 200

    assert gw.admin("PUT", "/admin/switches/apis/echo").status_code == 200
    assert_problem(gw.get(url), 403, "emergency_stop")
    assert gw.route("GET", "/other/x").status_code == 200
    assert "echo" in gw.admin("GET", "/admin/switches").text
    assert gw.admin("DELETE", "/admin/switches/apis/echo").status_code == 200
    assert gw.get(url).status_code == 200

    assert gw.admin("PUT", "/admin/switches/consumers/checkout").status_code == 200
    assert_problem(gw.get(url, headers=as_checkout), 403, "emergency_stop")
    assert_problem(gw.route("GET", "/other/y", headers=as_checkout), 403, "emergency_stop")
    assert gw.get(url).status_code == 200  # anonymous is unaffected
    assert gw.admin("DELETE", "/admin/switches/consumers/checkout").status_code == 200
    assert gw.get(url, headers=as_checkout).status_code == 200

    e = gw.wait_access(lambda e: e.get("status") == 403)
    assert e["decision"] == "deny" and "emergency_stop" in e["reason"]
    # Unknown names are refused rather than silently accepted.
    assert gw.admin("PUT", "/admin/switches/apis/no-such-api").status_code == 404
    assert gw.admin("PUT", "/admin/switches/consumers/no-such-consumer").status_code == 404


def test_switches_survive_reload(gateway, upstream):
    gw = gateway(switch_config(upstream))
    assert gw.admin("PUT", "/admin/switches/deny-all").status_code == 200
    assert gw.reload().status_code == 200
    assert_problem(gw.get(f"{upstream.base}/after-reload"), 403, "emergency_stop")


def test_health_ready_and_metrics(gateway, upstream):
    gw = gateway(switch_config(upstream))
    assert gw.admin("GET", "/healthz").status_code == 200
    assert gw.admin("GET", "/readyz").status_code == 200
    for _ in range(3):
        assert gw.get(f"{upstream.base}/m", headers={"x-tollgate-consumer": "checkout"}).status_code == 200
    assert gw.route("GET", "/other/m").status_code == 200
    gw.get("http://10.0.0.1/blocked")
    blocked = gw.wait_access(lambda e: e.get("host") == "10.0.0.1")
    r = gw.admin("GET", "/metrics")
    assert r.status_code == 200
    # Prometheus text or OpenMetrics exposition.
    assert r.headers["Content-Type"].startswith(("text/plain", "application/openmetrics-text"))
    m = r.text
    assert metric_value(m, "tollgate_requests_total", api="echo", consumer="checkout") == 3, m
    assert metric_value(m, "tollgate_requests_total", api="other", consumer="anonymous") == 1, m
    assert "tollgate_config_version" in m or "tollgate_config_info" in m
    assert "_bucket" in m  # latency histograms
    # Bounded labels: raw hosts and paths never become label values.
    assert "/m\"" not in m and "10.0.0.1" not in m
    # Refusals are counted by their tollgate-error code; plain successes are not.
    assert blocked["reason"], blocked
    assert metric_value(m, "tollgate_request_reasons_total", api="none", decision="deny",
                        reason=blocked["reason"]) == 1, m
    assert metric_value(m, "tollgate_request_reasons_total", api="echo") is None, m
    # Guard denials are counted by reason.
    assert any(line.startswith("tollgate_guard") and not line.startswith("#") for line in m.splitlines()), m


def test_admin_token(gateway, upstream):
    token = "admintok-5c1e7a90b3"
    gw = gateway(base_config(admin={"token": "${env:TG_ADMIN_TOKEN}"}), env={"TG_ADMIN_TOKEN": token})
    assert gw.admin("GET", "/healthz").status_code == 200
    assert gw.admin("GET", "/readyz").status_code == 200
    for method, path in (("GET", "/metrics"), ("GET", "/admin/config"), ("GET", "/admin/switches"),
                         ("POST", "/admin/reload"), ("PUT", "/admin/switches/deny-all")):
        r = gw.admin(method, path)
        assert r.status_code == 401, (method, path, r.status_code)
        assert token not in r.text
        r = gw.admin(method, path, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401, (method, path, r.status_code)
    ok = {"Authorization": f"Bearer {token}"}
    assert gw.admin("GET", "/metrics", headers=ok).status_code == 200
    assert gw.admin("GET", "/admin/config", headers=ok).status_code == 200
    assert token not in gw.admin("GET", "/admin/config", headers=ok).text
    # The unauthenticated PUT above changed nothing.
    assert gw.get(f"{upstream.base}/still-open").status_code == 200
    assert token not in gw.stderr_text()
