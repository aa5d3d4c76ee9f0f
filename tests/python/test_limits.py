"""Local rate limits end to end: 429 with `rate_limited`, problem+json,
Retry-After and the IETF RateLimit fields; per-consumer budgets; counters that
survive a reload; report mode lets the refused request through and logs it."""

from __future__ import annotations

import calendar
import json
import re
import threading
import time
import uuid
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from zoneinfo import ZoneInfo

import pytest

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


def _limits_doc_limit(doc, api, limit):
    for a in doc["apis"]:
        if a["name"] == api:
            for l in a["limits"]:
                if l["name"] == limit:
                    return l
    raise AssertionError(f"{api}/{limit} not in {doc}")


def test_admin_limits_lists_keys_without_header_values(gateway, upstream):
    limits = [
        {"name": "per-key", "requests": 5, "per": "1h", "by": "header:x-api-key"},
        {"name": "daily", "requests": 100, "per": "1d", "cost": {"header": "x-weight"}},
    ]
    gw = gateway(base_config(apis=[limited_api(limits)]))
    url = f"{upstream.base}/v1/z"
    for key in ("secret-one", "secret-one", "secret-two"):
        assert gw.get(url, headers={"x-api-key": key, "x-weight": "7"}).status_code == 200
    r = gw.admin("GET", "/admin/limits")
    assert r.status_code == 200
    assert "secret-one" not in r.text and "secret-two" not in r.text
    doc = r.json()
    assert doc["store"] == {"redis": False, "degraded": False, "instances": 1}
    per_key = _limits_doc_limit(doc, "echo", "per-key")
    assert (per_key["scope"], per_key["algorithm"], per_key["quota"], per_key["window"]) == \
        ("local", "fixed", 5, "1h")
    used = sorted(k["used"] for k in per_key["keys"])
    assert used == [1, 2]
    for k in per_key["keys"]:
        assert re.fullmatch(r"[0-9a-f]{16}", k["key"]), k
        assert k["remaining"] == 5 - k["used"]
        assert 0 < k["reset_after_ms"] <= 3_600_000
    # The cost header weighed each request 7.
    daily = _limits_doc_limit(doc, "echo", "daily")
    assert [(k["key"], k["used"], k["remaining"]) for k in daily["keys"]] == [("-", 21, 79)]


def test_limits_cli_prints_the_table(gateway, upstream):
    import os
    import subprocess

    from helpers import TOLLGATE_BIN

    gw = gateway(base_config(
        admin={"token": "s3cret-admin"},
        apis=[limited_api([{"name": "hourly", "requests": 9, "per": "1h"}])]))
    for _ in range(2):
        assert gw.get(f"{upstream.base}/v1/a").status_code == 200
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLGATE_")}
    run = lambda *a: subprocess.run([TOLLGATE_BIN, "limits", "--admin", gw.admin_url, *a],
                                    capture_output=True, text=True, timeout=30, env=env)
    out = run("--token", "s3cret-admin")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "shared store: none, instances: 1"
    assert lines[1].split() == ["API", "LIMIT", "SCOPE", "ALGORITHM", "QUOTA", "WINDOW",
                                "KEY", "USED", "REMAINING", "RESET", "QUEUE"]
    row = lines[2].split()
    assert row[:8] == ["echo", "hourly", "local", "fixed", "9", "1h", "-", "2"]
    assert row[8] == "7" and row[9].endswith("s") and row[10] == "0"
    as_json = run("--token", "s3cret-admin", "--json")
    assert json.loads(as_json.stdout)["apis"][0]["limits"][0]["keys"][0]["used"] == 2
    # Without the token the admin API refuses, and the CLI says so.
    denied = run()
    assert denied.returncode == 1 and "401" in denied.stderr


def test_day_quota_survives_a_graceful_restart(gateway, upstream, tmp_path):
    state = tmp_path / "state"
    cfg = base_config(
        state={"dir": str(state)},
        apis=[limited_api([{"name": "daily", "requests": 4, "per": "1d"}])])
    gw = gateway(cfg)
    url = f"{upstream.base}/v1/d"
    for _ in range(3):
        assert gw.get(url).status_code == 200
    assert gw.terminate() == 0
    # Saved at shutdown, atomically: only the final file is left.
    assert sorted(p.name for p in state.iterdir()) == ["limits.json"]
    again = gateway(cfg)
    daily = _limits_doc_limit(again.admin("GET", "/admin/limits").json(), "echo", "daily")
    assert [(k["key"], k["used"]) for k in daily["keys"]] == [("-", 3)]
    assert again.get(url).status_code == 200
    assert_problem(again.get(url), 429, "rate_limited")


def test_corrupt_state_file_is_set_aside(gateway, upstream, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "limits.json").write_text("{truncated")
    gw = gateway(base_config(
        state={"dir": str(state)},
        apis=[limited_api([{"name": "daily", "requests": 4, "per": "1d"}])]))
    assert gw.get(f"{upstream.base}/v1/c").status_code == 200
    aside = [p for p in state.iterdir() if p.name.startswith("limits.json.corrupt-")]
    assert len(aside) == 1 and aside[0].read_text() == "{truncated"
    assert "cannot load persisted limit counters" in gw.stderr_text()


class _TokensHandler(BaseHTTPRequestHandler):
    """`/tokens/<n>` answers like an LLM API: `{"usage": {"total_tokens": n}}`."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.hits += 1
        n = self.path.rsplit("/", 1)[-1]
        body = json.dumps({"id": "x", "usage": {"total_tokens": int(n)}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_tokens_read_from_the_response_use_up_the_limit(gateway):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _TokensHandler)
    srv.daemon_threads = True
    srv.hits = 0
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        limits = [{"name": "tokens", "requests": 100, "per": "1h",
                   "cost": {"response_json": "usage.total_tokens"}}]
        gw = gateway(base_config(apis=[limited_api(limits)]))
        base = f"http://127.0.0.1:{srv.server_address[1]}"
        r = gw.get(f"{base}/tokens/60")
        assert r.status_code == 200 and r.json()["usage"]["total_tokens"] == 60
        # Admission charged the reserve (1); the 60 tokens land when the body ends.
        assert parse_limit(r.headers["RateLimit"])[:2] == ("tokens", 99)
        def used():
            keys = gw.admin("GET", "/admin/limits").json()["apis"][0]["limits"][0]["keys"]
            return keys[0]["used"] if keys else 0

        def wait_used(n):
            deadline = time.time() + 5
            while used() != n and time.time() < deadline:
                time.sleep(0.02)
            assert used() == n

        wait_used(60)
        r = gw.get(f"{base}/tokens/45")
        assert r.status_code == 200, r.text
        assert parse_limit(r.headers["RateLimit"])[:2] == ("tokens", 39)
        # 60 + 45 tokens > 100: the counter stops at the limit, the next request is refused.
        wait_used(100)
        r = gw.get(f"{base}/tokens/1")
        assert_problem(r, 429, "rate_limited")
        assert parse_limit(r.headers["RateLimit"])[:2] == ("tokens", 0)
        assert srv.hits == 2
    finally:
        srv.shutdown()
        srv.server_close()


def next_renewal(per, zone, renewal_day, now):
    """Epoch seconds of the end of the calendar window holding `now`: the next local midnight
    in `zone` (`per: 1d`), or the next local midnight of the renewal day (`per: month`)."""
    tz = ZoneInfo(zone)
    local = datetime.fromtimestamp(now, tz)
    if per == "1d":
        d = local.date() + timedelta(days=1)
        return datetime(d.year, d.month, d.day, tzinfo=tz).timestamp()

    def renewal(y, m):
        return datetime(y, m, min(renewal_day, calendar.monthrange(y, m)[1]), tzinfo=tz)

    this = renewal(local.year, local.month)
    if local >= this:
        y, m = (local.year + 1, 1) if local.month == 12 else (local.year, local.month + 1)
        return renewal(y, m).timestamp()
    return this.timestamp()


@pytest.mark.parametrize("scope", ["local", "global"])
@pytest.mark.parametrize("per,zone,renewal_day", [
    ("1d", "America/New_York", None), ("month", "Europe/Berlin", 31)])
def test_calendar_windows_in_iana_time_zones(gateway, upstream, scope, per, zone, renewal_day):
    """A day or month counted in an IANA zone resets at that zone's local midnight (of the
    renewal day), in the process and through Redis: Retry-After and the RateLimit reset say
    exactly when."""
    limit = {"name": "cal", "requests": 2, "per": per, "time_zone": zone, "scope": scope}
    if renewal_day:
        limit["renewal_day"] = renewal_day
    extra = {}
    if scope == "global":
        extra["state"] = {"redis": {"url": "redis://127.0.0.1:6379/0",
                                    "prefix": f"tg-cal-{uuid.uuid4().hex[:8]}"}}
    gw = gateway(base_config(apis=[limited_api([limit])], **extra))
    end = next_renewal(per, zone, renewal_day, time.time())
    if end - time.time() < 30:
        pytest.skip("the window ends within seconds; the counts could straddle it")
    for _ in range(2):
        assert gw.get(f"{upstream.base}/cal").status_code == 200
    r = gw.get(f"{upstream.base}/cal")
    assert_problem(r, 429, "rate_limited")
    want = end - time.time()
    assert abs(int(r.headers["Retry-After"]) - want) <= 3, (r.headers["Retry-After"], want)
    t = int(re.search(r";t=(\d+)", r.headers["RateLimit"]).group(1))
    assert abs(t - want) <= 3, (r.headers["RateLimit"], want)


def test_validate_rejects_an_unknown_time_zone(run_cli, tmp_path):
    f = tmp_path / "tz.yaml"
    f.write_text(
        "apis:\n"
        "  - name: a\n"
        "    hosts: [a.example]\n"
        "    limits:\n"
        "      - { name: daily, requests: 5, per: 1d, time_zone: Europe/Berlin }\n"
        "      - { name: monthly, requests: 5, per: month, time_zone: Europe/Berln }\n")
    p = run_cli("validate", f)
    assert p.returncode == 1, (p.stdout, p.stderr)
    m = re.search(rf"{re.escape(str(f))}:(\d+):(\d+): (\S+)", p.stderr)
    assert m, p.stderr
    assert m.group(1) == "6" and m.group(3).startswith("apis[0].limits[1].time_zone"), p.stderr
    assert 'unknown time zone "Europe/Berln"' in p.stderr
    assert "apis[0].limits[0]" not in p.stderr


@pytest.mark.parametrize("scope", ["local", "global"])
def test_a_key_limit_refusal_gives_back_the_api_limits(gateway, upstream, scope):
    """The API's limit admits a request, then every credential key is at its own limit: the
    request is refused (429) and the API's limit gets its unit back."""
    extra = {}
    if scope == "global":
        extra["state"] = {"redis": {"url": "redis://127.0.0.1:6379/0",
                                    "prefix": f"tg-keyrefund-{uuid.uuid4().hex[:8]}"}}
    minute = {"name": "minute", "requests": 1, "per": "1m"}
    api = {"name": "multi", "hosts": ["127.0.0.1"],
           "limits": [{"name": "hourly", "requests": 10, "per": "1h", "scope": scope}],
           "credentials": {"keys": [
               {"name": "one", "header": "x-key", "value": "${env:K1}", "limits": [dict(minute)]},
               {"name": "two", "header": "x-key", "value": "${env:K2}", "limits": [dict(minute)]}]}}
    gw = gateway(base_config(apis=[api], **extra), env={"K1": "key-one", "K2": "key-two"})
    fresh_minute()
    for _ in range(2):
        assert gw.get(f"{upstream.base}/k").status_code == 200
    for _ in range(3):
        assert_problem(gw.get(f"{upstream.base}/k"), 429, "rate_limited")
    assert len(upstream.requests) == 2
    hourly = _limits_doc_limit(gw.admin("GET", "/admin/limits").json(), "multi", "hourly")
    assert [(k["used"], k["remaining"]) for k in hourly["keys"]] == [(2, 8)], hourly
