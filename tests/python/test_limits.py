"""Local rate limits end to end: 429 with `rate_limited`, problem+json,
Retry-After and the IETF RateLimit fields; per-consumer budgets; counters that
survive a reload; report mode lets the refused request through and logs it."""

from __future__ import annotations

import re
import time

from helpers import assert_problem, base_config, metric_value

BURST = [{"name": "burst", "requests": 3, "per": "1m"}]


def consumer(name):
    return {"name": name, "identify": {"header": {"name": "x-team", "value": name}}}


def limited_api(limits=BURST, **extra):
    return {"name": "echo", "hosts": ["127.0.0.1"], "limits": limits, **extra}


def fresh_minute():
    """Fixed minute windows start at hh:mm:00 UTC; a test that needs all its
    requests in one window waits out the last seconds of a minute."""
    into = time.time() % 60
    if into > 50:
        time.sleep(60.5 - into)


def parse_policy(value):
    """`"name";q=N;w=S, ...` -> {name: (q, w)}."""
    out = {}
    for item in value.split(","):
        m = re.fullmatch(r'\s*"([^"]+)";q=(\d+);w=(\d+)\s*', item)
        assert m, value
        out[m.group(1)] = (int(m.group(2)), int(m.group(3)))
    return out


def parse_limit(value):
    """`"name";r=N;t=S` -> (name, r, t)."""
    m = re.fullmatch(r'"([^"]+)";r=(\d+);t=(\d+)', value.strip())
    assert m, value
    return m.group(1), int(m.group(2)), int(m.group(3))


def test_fourth_request_is_rate_limited(gateway, upstream):
    gw = gateway(base_config(apis=[limited_api()]))
    fresh_minute()
    url = f"{upstream.base}/v1/x"
    for left in (2, 1, 0):
        r = gw.get(url)
        assert r.status_code == 200, r.text
        assert parse_policy(r.headers["RateLimit-Policy"]) == {"burst": (3, 60)}
        name, remaining, reset = parse_limit(r.headers["RateLimit"])
        assert (name, remaining) == ("burst", left)
        assert 0 < reset <= 60
        assert "Retry-After" not in r.headers
    r = gw.get(url)
    problem = assert_problem(r, 429, "rate_limited")
    assert '"burst"' in problem["detail"] and '"echo"' in problem["detail"]
    retry = int(r.headers["Retry-After"])
    assert 0 < retry <= 60
    assert parse_policy(r.headers["RateLimit-Policy"]) == {"burst": (3, 60)}
    assert parse_limit(r.headers["RateLimit"])[:2] == ("burst", 0)
    e = gw.wait_access(lambda e: e.get("status") == 429)
    assert e["decision"] == "deny" and e["reason"] == "rate_limited" and e["api"] == "echo"
    metrics = gw.admin("GET", "/metrics").text
    assert metric_value(metrics, "tollgate_limit_decisions_total",
                        api="echo", limit="burst", result="admitted") == 3
    assert metric_value(metrics, "tollgate_limit_decisions_total",
                        api="echo", limit="burst", result="limited") == 1


def test_consumers_have_independent_budgets(gateway, upstream):
    limits = [{"name": "each", "requests": 2, "per": "1h", "algorithm": "sliding", "by": "consumer"}]
    gw = gateway(base_config(consumers=[consumer("a"), consumer("b")],
                             apis=[limited_api(limits)]))
    url = f"{upstream.base}/v1/y"
    for team in ("a", "a", "b", "b"):
        assert gw.get(url, headers={"x-team": team}).status_code == 200
    assert_problem(gw.get(url, headers={"x-team": "a"}), 429, "rate_limited")
    assert_problem(gw.get(url, headers={"x-team": "b"}), 429, "rate_limited")


def test_reload_keeps_the_count(gateway, upstream):
    cfg = base_config(apis=[limited_api()])
    gw = gateway(cfg)
    fresh_minute()
    url = f"{upstream.base}/v1/z"
    for _ in range(2):
        assert gw.get(url).status_code == 200
    v1 = gw.config_version()
    r = gw.reload()
    assert r.status_code == 200, r.text
    assert gw.config_version() > v1
    r = gw.get(url)
    assert r.status_code == 200
    assert parse_limit(r.headers["RateLimit"])[1] == 0
    assert_problem(gw.get(url), 429, "rate_limited")


def test_report_mode_lets_the_fourth_through(gateway, upstream):
    gw = gateway(base_config(apis=[limited_api(mode="report")]))
    fresh_minute()
    for i in range(4):
        r = gw.get(f"{upstream.base}/v1/rep{i}")
        assert r.status_code == 200, r.text
        assert "tollgate-error" not in r.headers
        assert "Retry-After" not in r.headers
    assert parse_limit(r.headers["RateLimit"])[:2] == ("burst", 0)
    e = gw.wait_access(lambda e: e.get("path") == "/v1/rep3")
    assert e["decision"] == "report"
    assert "rate_limited" in e["reason"]
    assert e["status"] == 200
