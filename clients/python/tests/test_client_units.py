"""The parts without sockets: configuration from the environment, the
breaker's state machine on a fake clock, the fallback decision table, and the
list of gateway-fault codes kept in sync with the Rust error catalogue."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from support import FakeClock

from tollgate_client import (GATEWAY_FAULT_CODES, GATEWAY_FAULT_MAYBE_SENT, GATEWAY_FAULT_NOT_SENT,
                             Config, ConfigError)
from tollgate_client import core as c

ERROR_RS = Path(__file__).resolve().parents[3] / "crates" / "tollgate-policy" / "src" / "error.rs"


def _fn_body(src: str, name: str) -> str:
    start = src.index(f"pub fn {name}(")
    end = src.index("\n    }\n", start)
    return src[start:end]


def _variants_to_codes(src: str) -> dict[str, str]:
    return dict(re.findall(r'Self::(\w+) => "([a-z_]+)"', _fn_body(src, "as_str")))


def test_gateway_fault_codes_match_the_rust_catalogue():
    src = ERROR_RS.read_text()
    codes = _variants_to_codes(src)
    fault = _fn_body(src, "fault")
    gateway_arm = re.search(r"((?:\|?\s*Self::\w+\s*)+)=>\s*Fault::Gateway", fault)
    assert gateway_arm, fault
    gateway = {codes[v] for v in re.findall(r"Self::(\w+)", gateway_arm.group(1))}
    retry_safe = {codes[v] for v in re.findall(r"Self::(\w+)", _fn_body(src, "retry_safe"))}
    assert gateway, "no Fault::Gateway codes found"
    assert set(GATEWAY_FAULT_CODES) == gateway
    assert set(GATEWAY_FAULT_NOT_SENT) == gateway & retry_safe
    assert set(GATEWAY_FAULT_MAYBE_SENT) == gateway - retry_safe


@pytest.mark.parametrize("code", ["rate_limited", "concurrency_limited", "endpoint_not_allowed",
                                  "destination_blocked", "consumer_unidentified", "circuit_open",
                                  "provider_backoff", "upstream_connect_failed", "upstream_timeout",
                                  "dns_failure", "bad_request", None])
def test_policy_client_and_upstream_answers_never_go_direct(code):
    for idempotent in (True, False):
        d = c.decide_on_response(code, idempotent, True)
        assert not d.fallback and not d.gateway_fault


def test_gateway_fault_answers():
    assert c.decide_on_response("shutting_down", False, True).fallback
    assert c.decide_on_response("limit_store_unavailable", False, True).fallback
    # internal_error may have been forwarded: only idempotent requests go direct.
    assert c.decide_on_response("internal_error", True, True).fallback
    assert not c.decide_on_response("internal_error", False, True).fallback
    assert c.decide_on_response("internal_error", False, True).gateway_fault
    # A body that cannot be replayed is never re-sent.
    assert not c.decide_on_response("shutting_down", True, False).fallback


def test_error_decisions():
    assert c.decide_on_error(c.NOT_SENT, "gateway_unreachable", False, True).fallback
    assert not c.decide_on_error(c.MAYBE_SENT, "connection_lost", False, True).fallback
    assert c.decide_on_error(c.MAYBE_SENT, "connection_lost", True, True).fallback
    for kind in (c.TIMEOUT, c.TUNNEL_REFUSED, c.OTHER):
        d = c.decide_on_error(kind, "x", True, True)
        assert not d.fallback and not d.gateway_fault


def test_idempotency():
    assert c.is_idempotent("GET", {}) and c.is_idempotent("put", {}) and c.is_idempotent("DELETE", {})
    assert not c.is_idempotent("POST", {}) and not c.is_idempotent("PATCH", {})
    assert c.is_idempotent("POST", {"Idempotency-Key": "abc"})


def test_breaker_state_machine():
    clock = FakeClock()
    b = c.Breaker(Config(gateway_url="http://127.0.0.1:1", breaker_threshold=2,
                         breaker_cooldown=5, clock=clock))
    assert b.acquire() == "normal"
    assert not b.failure()
    b.success()                       # a success resets the consecutive count
    assert not b.failure()
    assert b.failure()                # second consecutive fault opens
    assert b.state == "open" and b.acquire() is None
    clock.advance(4.9)
    assert b.acquire() is None
    clock.advance(0.1)
    assert b.acquire() == "probe"     # exactly one probe ...
    assert b.acquire() is None        # ... while the others go direct
    b.release_probe()                 # an uninformative end lets another probe through
    assert b.acquire() == "probe"
    assert b.failure()                # a failed probe re-opens at once
    assert b.state == "open"
    clock.advance(5)
    assert b.acquire() == "probe"
    b.success()
    assert b.state == "closed" and b.acquire() == "normal"


def test_config_from_env():
    cfg = Config.from_env({
        "TOLLGATE_URL": "http://gw.internal:8080/",
        "TOLLGATE_MODE": "route",
        "TOLLGATE_ROUTES": "api.github.com=/github, api.stripe.com=stripe",
        "TOLLGATE_FALLBACK": "off",
        "TOLLGATE_CONNECT_TIMEOUT": "0.5",
        "TOLLGATE_BREAKER_THRESHOLD": "5",
        "TOLLGATE_BREAKER_COOLDOWN": "12",
        "TOLLGATE_HEADERS": "x-team=checkout",
    })
    assert cfg.gateway_url == "http://gw.internal:8080" and cfg.mode == "route"
    assert cfg.routes == {"api.github.com": "/github", "api.stripe.com": "/stripe"}
    assert cfg.fallback is False and cfg.connect_timeout == 0.5
    assert cfg.breaker_threshold == 5 and cfg.breaker_cooldown == 12
    assert cfg.gateway_headers == {"x-team": "checkout"}
    assert cfg.route_url("https", "API.GitHub.com", None, "/repos/x?y=1") == \
        "http://gw.internal:8080/github/repos/x?y=1"
    assert cfg.managed("https", "api.github.com", 443)
    assert not cfg.managed("https", "api.github.com", 8443)
    assert not cfg.managed("https", "example.com", None)


def test_proxy_mode_host_selection():
    cfg = Config.from_env({"TOLLGATE_URL": "http://127.0.0.1:8080",
                           "TOLLGATE_HOSTS": "api.openai.com,127.0.0.1:9000"})
    assert cfg.mode == "proxy"
    assert cfg.managed("https", "api.openai.com", None)
    assert cfg.managed("http", "127.0.0.1", 9000)
    assert not cfg.managed("http", "127.0.0.1", 9001)
    assert Config(gateway_url="http://127.0.0.1:8080", hosts=("*",)).managed("https", "x.y", None)
    # No gateway configured: nothing is managed, everything goes direct.
    assert not Config.from_env({}).managed("https", "api.openai.com", None)


@pytest.mark.parametrize("env", [
    {"TOLLGATE_URL": "gw:8080"},
    {"TOLLGATE_URL": "http://gw:8080", "TOLLGATE_MODE": "sidecar"},
    {"TOLLGATE_URL": "http://gw:8080", "TOLLGATE_MODE": "route"},
    {"TOLLGATE_URL": "http://gw:8080", "TOLLGATE_FALLBACK": "maybe"},
    {"TOLLGATE_URL": "http://gw:8080", "TOLLGATE_ROUTES": "api.x.com"},
    {"TOLLGATE_URL": "http://gw:8080", "TOLLGATE_BREAKER_THRESHOLD": "0"},
    {"TOLLGATE_URL": "http://gw:8080", "TOLLGATE_CONNECT_TIMEOUT": "soon"},
])
def test_invalid_config_is_rejected(env):
    with pytest.raises(ConfigError):
        Config.from_env(env)
