"""The fail-safe client libraries against the real `tollgate` binary: traffic
flows through a live gateway; a killed gateway means calls go direct and are
counted; a restarted gateway gets the traffic back after the breaker's probe;
a POST in flight when the gateway dies is not re-sent; a gateway fault code
goes direct; policy answers (429, 403) are returned as is. Every scenario runs
with requests, httpx sync and httpx async."""

from __future__ import annotations

import json
import threading

import httpx
import pytest
import requests

from helpers import base_config
from support import BROKEN, KINDS, BlackHole, Client, free_port, wait_for

from tollgate_client import Config, stats


def route_cfg(upstream, **api):
    return base_config(apis=[{"name": "up", "route": "/up", "upstream": upstream.base, **api}])


def host_cfg(upstream, **api):
    return base_config(apis=[{"name": "up", "hosts": ["127.0.0.1"], **api}])


def client_config(mode, gw, upstream, clock, **kw):
    key = f"127.0.0.1:{upstream.port}"
    if mode == "route":
        return Config(gateway_url=gw.url, mode="route", routes={key: "/up"}, clock=clock, **kw)
    return Config(gateway_url=gw.url, mode="proxy", hosts=(key,), clock=clock, **kw)


@pytest.fixture(params=KINDS)
def kind(request):
    return request.param


@pytest.fixture
def make_client():
    made = []

    def make(kind, config, **kw):
        c = Client(kind, config, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def upstream_saw(upstream, method, path_prefix):
    return [r for r in upstream.requests if r["method"] == method and r["path"].startswith(path_prefix)]


def gateway_entries(gw, path_part):
    return [e for e in gw.access_entries() if path_part in json.dumps(e)]


@pytest.mark.parametrize("mode", ["route", "proxy"])
def test_gateway_up_traffic_flows_through_it_and_is_counted(gateway, upstream, clock, make_client,
                                                            kind, mode):
    gw = gateway(route_cfg(upstream) if mode == "route" else host_cfg(upstream))
    c = make_client(kind, client_config(mode, gw, upstream, clock))
    before = gw.requests_total()
    for i in range(3):
        r = c.request("GET", f"{upstream.base}/v1/items/{i}?q=1")
        assert r.status == 200, r
        assert json.loads(r.body)["path"] == f"/v1/items/{i}?q=1"
    r = c.request("POST", f"{upstream.base}/v1/items", content=b"hello") if kind != "requests" else \
        c.request("POST", f"{upstream.base}/v1/items", data=b"hello")
    assert r.status == 200 and json.loads(r.body)["body"] == "hello", r
    # Tollgate saw and counted all four.
    wait_for(lambda: len(gateway_entries(gw, "/v1/items")) == 4, "4 access-log entries")
    assert gw.requests_total() - before == 4
    expected_kind = "route" if mode == "route" else "forward"
    assert {e["kind"] for e in gateway_entries(gw, "/v1/items")} == {expected_kind}
    assert len(upstream_saw(upstream, "GET", "/v1/items/")) == 3
    s = c.stats()
    assert s["via_gateway"] == 4 and s["fallbacks"] == 0 and s["not_resent"] == 0, s
    assert stats()["via_gateway"] == 4


@pytest.mark.parametrize("mode", ["route", "proxy"])
def test_gateway_killed_calls_go_direct_and_fallbacks_are_counted(gateway, upstream, clock,
                                                                  make_client, kind, mode, caplog):
    gw = gateway(route_cfg(upstream) if mode == "route" else host_cfg(upstream))
    c = make_client(kind, client_config(mode, gw, upstream, clock, breaker_threshold=2))
    assert c.request("GET", f"{upstream.base}/warm").status == 200
    gw.kill()

    # Connection refused: nothing reached the gateway, so even a POST may go direct.
    r = c.request("GET", f"{upstream.base}/down/1")
    assert r.status == 200 and json.loads(r.body)["path"] == "/down/1"
    body = {"content": b"p"} if kind != "requests" else {"data": b"p"}
    r = c.request("POST", f"{upstream.base}/down/2", **body)
    assert r.status == 200 and json.loads(r.body)["body"] == "p"
    # Two consecutive faults opened the breaker: now direct without trying.
    r = c.request("GET", f"{upstream.base}/down/3")
    assert r.status == 200
    assert c.core.breaker.state == "open"

    assert len(upstream_saw(upstream, "POST", "/down/2")) == 1  # sent exactly once
    assert len(upstream_saw(upstream, "GET", "/down/")) == 2
    s = c.stats()
    assert s["fallbacks"] == 3, s
    assert s["fallbacks_by_reason"] == {"gateway_unreachable": 2, "breaker_open": 1}, s
    assert s["breaker_opened"] == 1 and s["via_gateway"] == 1, s
    assert stats()["fallbacks"] == 3
    # Each fallback is one structured WARNING on the tollgate_client logger.
    logged = [r for r in caplog.records
              if r.name == "tollgate_client" and getattr(r, "tollgate.event", None) == "fallback"]
    assert [getattr(r, "tollgate.reason") for r in logged] == \
        ["gateway_unreachable", "gateway_unreachable", "breaker_open"]
    assert all(r.levelname == "WARNING" and "event=fallback" in r.getMessage() for r in logged)
    assert getattr(logged[1], "tollgate.method") == "POST"
    assert getattr(logged[1], "tollgate.url") == f"{upstream.base}/down/2"


def test_gateway_back_traffic_returns_through_it_after_the_probe(gateway, upstream, clock,
                                                                 make_client, kind):
    gw = gateway(route_cfg(upstream))
    c = make_client(kind, client_config("route", gw, upstream, clock, breaker_threshold=1,
                                        breaker_cooldown=30))
    gw.kill()
    assert c.request("GET", f"{upstream.base}/a").status == 200   # refused -> direct, opens
    gw.start()
    n_before = len(gw.access_entries())
    # Cool-down not over: still direct, the live gateway is not tried.
    assert c.request("GET", f"{upstream.base}/b").status == 200
    assert len(gw.access_entries()) == n_before
    assert c.core.breaker.state == "open"
    clock.advance(30)
    assert c.core.breaker.state == "half_open"
    # The probe goes through the gateway and closes the breaker.
    assert c.request("GET", f"{upstream.base}/probe").status == 200
    wait_for(lambda: gateway_entries(gw, "/probe"), "the probe in the access log")
    assert c.core.breaker.state == "closed"
    assert c.request("GET", f"{upstream.base}/after").status == 200
    wait_for(lambda: gateway_entries(gw, "/after"), "traffic back through the gateway")
    s = c.stats()
    assert s["probes"] == 1 and s["via_gateway"] == 2, s
    assert s["fallbacks_by_reason"] == {"gateway_unreachable": 1, "breaker_open": 1}, s


def test_failed_probe_reopens_for_another_cooldown(gateway, upstream, clock, make_client, kind):
    gw = gateway(route_cfg(upstream))
    c = make_client(kind, client_config("route", gw, upstream, clock, breaker_threshold=1,
                                        breaker_cooldown=10))
    gw.kill()
    assert c.request("GET", f"{upstream.base}/a").status == 200
    clock.advance(10)
    assert c.request("GET", f"{upstream.base}/probe").status == 200  # probe refused -> direct
    assert c.core.breaker.state == "open"
    s = c.stats()
    assert s["probes"] == 1 and s["breaker_opened"] == 2, s
    assert s["fallbacks_by_reason"] == {"gateway_unreachable": 2}, s


def _in_flight(c, method, url, **kw):
    out = {}

    def run():
        try:
            out["resp"] = c.request(method, url, **kw)
        except Exception as e:  # the assertion is on what was raised
            out["error"] = e

    # The async client's loop runs in this worker thread; nothing else uses it meanwhile.
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


@pytest.mark.parametrize("mode", ["route", "proxy"])
def test_post_in_flight_when_gateway_dies_is_not_resent(gateway, upstream, clock, make_client,
                                                        kind, mode):
    gw = gateway(route_cfg(upstream) if mode == "route" else host_cfg(upstream))
    c = make_client(kind, client_config(mode, gw, upstream, clock))
    body = {"content": b"charge"} if kind != "requests" else {"data": b"charge"}
    t, out = _in_flight(c, "POST", f"{upstream.base}/v1/charges/slow?ms=3000", **body)
    wait_for(lambda: upstream_saw(upstream, "POST", "/v1/charges"), "the POST upstream")
    gw.kill()
    t.join(15)
    assert not t.is_alive()
    assert "error" in out, out                    # raised, not silently re-sent
    assert isinstance(out["error"], BROKEN), repr(out["error"])
    assert len(upstream_saw(upstream, "POST", "/v1/charges")) == 1
    s = c.stats()
    assert s["not_resent"] == 1 and s["fallbacks"] == 0, s


def test_post_with_idempotency_key_in_flight_is_resent_directly(gateway, upstream, clock,
                                                                make_client, kind):
    gw = gateway(route_cfg(upstream))
    c = make_client(kind, client_config("route", gw, upstream, clock))
    body = {"content": b"charge"} if kind != "requests" else {"data": b"charge"}
    t, out = _in_flight(c, "POST", f"{upstream.base}/v1/charges/slow?ms=1500",
                        headers={"Idempotency-Key": "k-1"}, **body)
    wait_for(lambda: upstream_saw(upstream, "POST", "/v1/charges"), "the POST upstream")
    gw.kill()
    t.join(15)
    assert "resp" in out and out["resp"].status == 200, out
    saw = upstream_saw(upstream, "POST", "/v1/charges")
    assert len(saw) == 2 and all(r["body"] == "charge" for r in saw)
    s = c.stats()
    assert s["fallbacks_by_reason"] == {"connection_lost": 1} and s["not_resent"] == 0, s


def test_429_from_tollgate_is_returned_as_is(gateway, upstream, clock, make_client, kind):
    limits = [{"name": "one", "requests": 1, "per": "1h", "algorithm": "sliding"}]
    gw = gateway(route_cfg(upstream, limits=limits))
    c = make_client(kind, client_config("route", gw, upstream, clock, breaker_threshold=1))
    assert c.request("GET", f"{upstream.base}/v1/x").status == 200
    for _ in range(3):
        r = c.request("GET", f"{upstream.base}/v1/x")
        assert r.status == 429 and r.headers["tollgate-error"] == "rate_limited", r
        assert "retry-after" in r.headers
    assert len(upstream_saw(upstream, "GET", "/v1/x")) == 1   # never went direct
    s = c.stats()
    assert s["fallbacks"] == 0 and s["via_gateway"] == 4, s
    assert c.core.breaker.state == "closed"


@pytest.mark.parametrize("mode", ["route", "proxy"])
def test_403_denial_is_returned_as_is(gateway, upstream, clock, make_client, kind, mode):
    allow = [{"methods": ["GET"], "paths": ["/v1/**"]}]
    gw = gateway(route_cfg(upstream, allow=allow) if mode == "route" else host_cfg(upstream, allow=allow))
    c = make_client(kind, client_config(mode, gw, upstream, clock, breaker_threshold=1))
    body = {"content": b"x"} if kind != "requests" else {"data": b"x"}
    r = c.request("POST", f"{upstream.base}/v1/refunds", **body)
    assert r.status == 403 and r.headers["tollgate-error"] == "endpoint_not_allowed", r
    assert upstream.requests == []
    s = c.stats()
    assert s["fallbacks"] == 0 and s["via_gateway"] == 1, s


def test_gateway_fault_code_goes_direct_once(gateway, upstream, clock, make_client, kind):
    # A global limit whose Redis refuses connections and that fails closed:
    # Tollgate answers 503 limit_store_unavailable, its own fault, nothing sent upstream.
    dead_redis = f"redis://127.0.0.1:{free_port()}"  # nothing listens there
    cfg = route_cfg(upstream, limits=[{"name": "g", "requests": 100, "per": "1h", "scope": "global",
                                       "on_store_failure": "closed"}])
    cfg["state"] = {"redis": {"url": dead_redis, "timeout": "200ms", "prefix": "clienttest"}}
    gw = gateway(cfg)
    c = make_client(kind, client_config("route", gw, upstream, clock))
    body = {"content": b"order"} if kind != "requests" else {"data": b"order"}
    r = c.request("POST", f"{upstream.base}/v1/orders", **body)
    assert r.status == 200 and r.headers.get("x-upstream") == "plain", r
    assert "tollgate-error" not in r.headers
    assert len(upstream_saw(upstream, "POST", "/v1/orders")) == 1
    e = wait_for(lambda: gateway_entries(gw, "/v1/orders"), "the 503 in the access log")[0]
    assert e["status"] == 503
    s = c.stats()
    assert s["fallbacks_by_reason"] == {"gateway_error:limit_store_unavailable": 1}, s


def test_https_through_connect_and_direct_when_killed(gateway, tls_upstream, certs, clock,
                                                      make_client, kind):
    cfg = host_cfg(tls_upstream)
    cfg["connect"] = {"allowed_ports": [tls_upstream.port]}
    gw = gateway(cfg)
    verify = str(certs["ca"])
    if kind != "requests":
        import ssl
        verify = ssl.create_default_context(cafile=verify)
    c = make_client(kind, client_config("proxy", gw, tls_upstream, clock), verify=verify)
    r = c.request("GET", f"{tls_upstream.base}/secure/1")
    assert r.status == 200, r
    c.close()  # a tunnel is logged when it ends
    wait_for(lambda: [e for e in gw.access_entries() if e.get("kind") == "connect"], "the tunnel")
    c = make_client(kind, client_config("proxy", gw, tls_upstream, clock), verify=verify)
    gw.kill()
    r = c.request("GET", f"{tls_upstream.base}/secure/2")
    assert r.status == 200 and json.loads(r.body)["path"] == "/secure/2"
    assert c.stats()["fallbacks_by_reason"] == {"gateway_unreachable": 1}


def test_fallback_off_surfaces_gateway_errors(gateway, upstream, clock, make_client, kind):
    gw = gateway(route_cfg(upstream))
    c = make_client(kind, client_config("route", gw, upstream, clock, fallback=False))
    assert c.request("GET", f"{upstream.base}/x").status == 200
    gw.kill()
    with pytest.raises(BROKEN):
        c.request("GET", f"{upstream.base}/y")
    assert upstream_saw(upstream, "GET", "/y") == []
    assert c.stats()["fallbacks"] == 0


def test_unmanaged_hosts_are_untouched(gateway, upstream, clock, make_client, kind):
    gw = gateway(route_cfg(upstream))
    cfg = Config(gateway_url=gw.url, mode="route", routes={"api.example.com": "/up"}, clock=clock)
    c = make_client(kind, cfg)
    assert c.request("GET", f"{upstream.base}/plain").status == 200
    assert gateway_entries(gw, "/plain") == []
    s = c.stats()
    assert s["unmanaged"] == 1 and s["via_gateway"] == 0 and s["fallbacks"] == 0, s


def test_failed_startup_health_check_does_not_disable_the_gateway(gateway, upstream, clock,
                                                                  make_client, kind):
    from tollgate_client import health_check

    gw = gateway(route_cfg(upstream))
    gw.kill()
    c = make_client(kind, client_config("route", gw, upstream, clock, breaker_cooldown=30))
    assert health_check(c.core) is False
    assert c.request("GET", f"{upstream.base}/early").status == 200   # direct, not tried
    assert c.stats()["fallbacks_by_reason"] == {"breaker_open": 1}
    gw.start()
    assert health_check(c.core) is True
    clock.advance(30)
    assert c.request("GET", f"{upstream.base}/later").status == 200   # the probe
    wait_for(lambda: gateway_entries(gw, "/later"), "traffic through the gateway")
    assert c.core.breaker.state == "closed"


def test_configured_from_the_environment(gateway, upstream, monkeypatch, kind, make_client):
    gw = gateway(route_cfg(upstream))
    monkeypatch.setenv("TOLLGATE_URL", gw.url)
    monkeypatch.setenv("TOLLGATE_MODE", "route")
    monkeypatch.setenv("TOLLGATE_ROUTES", f"127.0.0.1:{upstream.port}=/up")
    monkeypatch.setenv("TOLLGATE_HEADERS", "x-tollgate-consumer=checkout")
    c = make_client(kind, None)   # Core(None) reads the environment
    r = c.request("GET", f"{upstream.base}/env")
    assert r.status == 200
    seen = {k.lower(): v for k, v in json.loads(r.body)["headers"]}
    assert seen.get("x-tollgate-consumer") == "checkout"     # gateway-only header, via the gateway
    wait_for(lambda: gateway_entries(gw, "/env"), "the request in the access log")
    gw.kill()
    r = c.request("GET", f"{upstream.base}/env-direct")
    seen = {k.lower(): v for k, v in json.loads(r.body)["headers"]}
    assert r.status == 200 and "x-tollgate-consumer" not in seen   # never sent direct
    assert c.stats()["fallbacks_by_reason"] == {"gateway_unreachable": 1}


@pytest.mark.parametrize("mode", ["route", "proxy"])
def test_gateway_connect_timeout_goes_direct(upstream, clock, make_client, kind, mode):
    hole = BlackHole()
    try:
        key = f"127.0.0.1:{upstream.port}"
        cfg = Config(gateway_url=hole.url, mode=mode, routes={key: "/up"} if mode == "route" else {},
                     hosts=(key,) if mode == "proxy" else (), connect_timeout=0.3, clock=clock)
        c = make_client(kind, cfg)
        body = {"content": b"p"} if kind != "requests" else {"data": b"p"}
        r = c.request("POST", f"{upstream.base}/hung", **body)   # nothing was sent: safe to go direct
        assert r.status == 200 and json.loads(r.body)["body"] == "p", r
        assert len(upstream_saw(upstream, "POST", "/hung")) == 1
        assert c.stats()["fallbacks_by_reason"] == {"connect_timeout": 1}
    finally:
        hole.close()


def test_read_timeout_is_raised_not_resent(gateway, upstream, clock, make_client, kind):
    gw = gateway(route_cfg(upstream))
    c = make_client(kind, client_config("route", gw, upstream, clock, breaker_threshold=1))
    with pytest.raises((requests.exceptions.Timeout, httpx.TimeoutException)):
        c.request("GET", f"{upstream.base}/stall/slow?ms=2000", read_timeout=0.5)
    # The provider got it once through the gateway; it was not repeated directly.
    assert len(upstream_saw(upstream, "GET", "/stall/")) == 1
    s = c.stats()
    assert s["fallbacks"] == 0 and s["not_resent"] == 0, s
    assert c.core.breaker.state == "closed"   # slowness is not a gateway fault
