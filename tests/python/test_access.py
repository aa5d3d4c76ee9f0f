"""Access control end to end: default action, allow rules, consumers and
their API lists, unknown callers, API keys, and report mode."""

from __future__ import annotations

import base64

from helpers import assert_problem, base_config, echo_headers

CHECKOUT = {"name": "checkout", "identify": {"header": {"name": "x-tollgate-consumer", "value": "checkout"}}}


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_default_action_deny(gateway, upstream):
    gw = gateway(base_config(default_action="deny"))
    r = gw.get(f"{upstream.base}/anything")
    problem = assert_problem(r, 403, "destination_not_allowed")
    assert problem["title"] and problem["detail"]
    assert upstream.requests == []
    e = gw.wait_access(lambda e: e.get("path") == "/anything")
    assert e["decision"] == "deny"
    assert e["status"] == 403
    assert "destination_not_allowed" in e["reason"]
    assert e["request_id"] == r.headers["x-request-id"]


def test_allow_rules_methods_and_paths(gateway, upstream):
    gw = gateway(base_config(default_action="deny", apis=[{
        "name": "echo", "hosts": ["127.0.0.1"],
        "allow": [{"methods": ["GET"], "paths": ["/v1/**"]},
                  {"methods": ["POST"], "paths": ["/v1/orders/{id}/notes"]}]}]))
    assert gw.get(f"{upstream.base}/v1/a/b/c").status_code == 200
    assert gw.request("POST", f"{upstream.base}/v1/orders/42/notes", data=b"n").status_code == 200
    assert_problem(gw.request("POST", f"{upstream.base}/v1/a"), 403, "endpoint_not_allowed")
    assert_problem(gw.get(f"{upstream.base}/v2/a"), 403, "endpoint_not_allowed")
    assert_problem(gw.request("DELETE", f"{upstream.base}/v1/orders/42/notes"), 403, "endpoint_not_allowed")
    assert [q["path"] for q in upstream.requests] == ["/v1/a/b/c", "/v1/orders/42/notes"]
    e = gw.wait_access(lambda e: e.get("path") == "/v2/a")
    assert e["api"] == "echo" and e["decision"] == "deny"
    assert "endpoint_not_allowed" in e["reason"]


def test_consumer_api_list(gateway, upstream):
    consumer = dict(CHECKOUT, apis=["a"])
    gw = gateway(base_config(consumers=[consumer], apis=[
        {"name": "a", "route": "/a", "upstream": upstream.base},
        {"name": "b", "route": "/b", "upstream": upstream.base}]))
    hdr = {"x-tollgate-consumer": "checkout"}
    r = gw.route("GET", "/a/x", headers=hdr)
    assert r.status_code == 200
    assert "x-tollgate-consumer" not in echo_headers(r)
    assert_problem(gw.route("GET", "/b/x", headers=hdr), 403, "consumer_not_allowed")
    e = gw.wait_access(lambda e: e.get("api") == "b")
    assert e["consumer"] == "checkout" and e["decision"] == "deny"


def test_unknown_consumer_denied_proxy_407_route_401(gateway, upstream):
    gw = gateway(base_config(
        unknown_consumer={"action": "deny"}, consumers=[CHECKOUT],
        apis=[{"name": "r", "route": "/r", "upstream": upstream.base}]))
    r = gw.get(f"{upstream.base}/x")
    assert_problem(r, 407, "consumer_unidentified")
    # RFC 9110: a 407 must tell the client how to authenticate to the proxy.
    assert "Proxy-Authenticate" in r.headers
    r = gw.route("GET", "/r/x")
    assert_problem(r, 401, "consumer_unidentified")
    assert "WWW-Authenticate" in r.headers
    # Wrong identity header value is not a match either.
    assert_problem(gw.get(f"{upstream.base}/x", headers={"x-tollgate-consumer": "nope"}),
                   407, "consumer_unidentified")
    assert gw.get(f"{upstream.base}/x", headers={"x-tollgate-consumer": "checkout"}).status_code == 200
    assert len(upstream.requests) == 1


def test_api_key_consumers(gateway, upstream):
    key = "acme-key-71b2d9e4"
    gw = gateway(base_config(
        unknown_consumer={"action": "deny"},
        consumers=[{"name": "acme", "identify": {"api_key": {"key": "${env:ACME_KEY}"}}}],
        apis=[{"name": "r", "route": "/r", "upstream": upstream.base}]),
        env={"ACME_KEY": key})
    url = f"{upstream.base}/k"
    assert_problem(gw.get(url, headers={"Proxy-Authorization": basic("u", "wrong-key")}),
                   407, "consumer_unidentified")
    assert_problem(gw.get(url, headers={"Proxy-Authorization": "Bearer nope"}), 407, "consumer_unidentified")
    for auth in (basic("anything", key), f"Bearer {key}"):
        r = gw.get(url, headers={"Proxy-Authorization": auth})
        assert r.status_code == 200, (auth, r.text)
        h = echo_headers(r)
        assert "proxy-authorization" not in h
    # requests builds Proxy-Authorization from credentials in the proxy URL.
    with gw.session() as s:
        s.proxies = {"http": f"http://svc:{key}@{gw.proxy_addr}"}
        r = s.get(url, timeout=5)
    assert r.status_code == 200
    # Routes: Authorization: Bearer, which is consumed rather than forwarded.
    r = gw.route("GET", "/r/k", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200
    assert "authorization" not in echo_headers(r)
    assert_problem(gw.route("GET", "/r/k", headers={"Authorization": "Bearer wrong"}),
                   401, "consumer_unidentified")
    e = gw.wait_access(lambda e: e.get("kind") == "route" and e.get("status") == 200)
    assert e["consumer"] == "acme"


def test_anonymous_consumer(gateway, upstream):
    gw = gateway(base_config(unknown_consumer={"action": "anonymous"}, consumers=[CHECKOUT]))
    assert gw.get(f"{upstream.base}/anon").status_code == 200
    e = gw.wait_access(lambda e: e.get("path") == "/anon")
    assert e["consumer"] == "anonymous"


def test_global_report_only(gateway, upstream):
    gw = gateway(base_config(default_action="deny", report_only=True))
    r = gw.get(f"{upstream.base}/reported")
    assert r.status_code == 200
    assert "tollgate-error" not in r.headers
    e = gw.wait_access(lambda e: e.get("path") == "/reported")
    assert e["decision"] == "report"
    assert "destination_not_allowed" in e["reason"]
    assert e["status"] == 200


def test_default_action_report(gateway, upstream):
    gw = gateway(base_config(default_action="report"))
    assert gw.get(f"{upstream.base}/dr").status_code == 200
    e = gw.wait_access(lambda e: e.get("path") == "/dr")
    assert e["decision"] == "report"
    assert "destination_not_allowed" in e["reason"]


def test_api_report_mode(gateway, upstream):
    gw = gateway(base_config(default_action="deny", apis=[
        {"name": "echo", "hosts": ["127.0.0.1"], "mode": "report",
         "allow": [{"methods": ["GET"]}]}]))
    r = gw.request("POST", f"{upstream.base}/would-deny", data=b"x")
    assert r.status_code == 200
    assert r.json()["body"] == "x"
    e = gw.wait_access(lambda e: e.get("path") == "/would-deny")
    assert e["decision"] == "report"
    assert "endpoint_not_allowed" in e["reason"]
    assert e["api"] == "echo"
    r = gw.get(f"{upstream.base}/fine")
    e = gw.wait_access(lambda e: e.get("path") == "/fine")
    assert e["decision"] == "allow"
