"""CORS per route API, end to end through a real `tollgate run` with Python `requests` acting
as the CORS-checking client: preflights answered at the gateway (204 with the exact
Access-Control-* fields, or 403 `cors_not_allowed` with none), actual responses decorated for
allowed origins only, and preflights that need no credentials while the actual call does."""

from __future__ import annotations

from helpers import assert_problem, base_config

APP = "https://app.example.com"
EVIL = "https://evil.example.net"
ACA = "access-control-"


def cors_headers(r) -> dict[str, str]:
    return {k.lower(): v for k, v in r.headers.items() if k.lower().startswith(ACA)}


def config(upstream) -> dict:
    return base_config(
        unknown_consumer={"action": "deny"},
        consumers=[{"name": "web", "identify": {"header": {"name": "x-team", "value": "web"}}}],
        apis=[
            {"name": "app", "route": "/app", "upstream": upstream.base,
             "cors": {"allowed_origins": [APP], "allowed_methods": ["GET", "PUT"],
                      "allowed_headers": ["X-Team", "Content-Type"],
                      "expose_headers": ["X-Upstream"], "allow_credentials": True,
                      "max_age": "10m"}},
            {"name": "pub", "route": "/pub", "upstream": upstream.base,
             "cors": {"allowed_origins": ["*"], "allowed_headers": ["*"]}},
            {"name": "plain", "route": "/plain", "upstream": upstream.base},
        ])


def test_preflight_is_answered_at_the_gateway(gateway, upstream):
    gw = gateway(config(upstream))
    r = gw.route("OPTIONS", "/app/items/1", headers={
        "Origin": APP, "Access-Control-Request-Method": "PUT",
        "Access-Control-Request-Headers": "x-team, content-type"})
    assert r.status_code == 204, r.text
    assert cors_headers(r) == {
        "access-control-allow-origin": APP,
        "access-control-allow-methods": "GET, PUT",
        "access-control-allow-headers": "x-team, content-type",
        "access-control-allow-credentials": "true",
        "access-control-max-age": "600",
    }
    assert "Origin" in r.headers["Vary"]
    # No credentials on the preflight, yet no 401: and nothing reached the upstream.
    assert upstream.requests == []
    # Wildcard origin without credentials, any requested header echoed.
    r = gw.route("OPTIONS", "/pub/x", headers={
        "Origin": EVIL, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "X-Anything"})
    assert r.status_code == 204
    assert cors_headers(r) == {
        "access-control-allow-origin": "*",
        "access-control-allow-methods": "GET, HEAD, POST",
        "access-control-allow-headers": "x-anything",
    }


def test_refused_preflights_carry_no_cors_headers(gateway, upstream):
    gw = gateway(config(upstream))
    cases = [
        {"Origin": EVIL, "Access-Control-Request-Method": "GET"},
        {"Origin": APP, "Access-Control-Request-Method": "DELETE"},
        {"Origin": APP, "Access-Control-Request-Method": "GET",
         "Access-Control-Request-Headers": "x-secret"},
    ]
    for h in cases:
        r = gw.route("OPTIONS", "/app/items/1", headers=h)
        assert_problem(r, 403, "cors_not_allowed")
        assert cors_headers(r) == {}, h
    assert upstream.requests == []


def test_actual_responses_get_cors_headers_for_allowed_origins_only(gateway, upstream):
    gw = gateway(config(upstream))
    ok = gw.route("GET", "/app/items/1", headers={"Origin": APP, "x-team": "web"})
    assert ok.status_code == 200
    assert cors_headers(ok) == {
        "access-control-allow-origin": APP,
        "access-control-allow-credentials": "true",
        "access-control-expose-headers": "X-Upstream",
    }
    assert "Origin" in ok.headers["Vary"]
    # A gateway-generated refusal is readable by the allowed origin too.
    denied = gw.route("GET", "/app/items/1", headers={"Origin": APP})
    assert_problem(denied, 401, "consumer_unidentified")
    assert cors_headers(denied)["access-control-allow-origin"] == APP
    # A disallowed origin is served, but without CORS fields (the browser blocks it).
    evil = gw.route("GET", "/app/items/1", headers={"Origin": EVIL, "x-team": "web"})
    assert evil.status_code == 200 and cors_headers(evil) == {}
    # An API without `cors` passes OPTIONS through to the upstream untouched.
    plain = gw.route("OPTIONS", "/plain/x", headers={
        "Origin": APP, "Access-Control-Request-Method": "GET", "x-team": "web"})
    assert plain.status_code == 200 and cors_headers(plain) == {}
    assert plain.json()["method"] == "OPTIONS"
