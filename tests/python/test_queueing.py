"""Queueing by priority and concurrency limits end to end with the real binary:
queued requests are released VIP first; a full concurrency limit answers 429
`concurrency_limited` with Retry-After; /admin/limits and the metrics show the
queue and the slots."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from helpers import assert_problem, base_config, metric_value


def consumer(name, priority=0):
    return {"name": name, "priority": priority,
            "identify": {"header": {"name": "x-team", "value": name}}}


def until(what, pred, timeout=15.0):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def metric(gw, name, **labels):
    return metric_value(gw.admin("GET", "/metrics").text, name, **labels) or 0


def in_thread(fn):
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", fn()), daemon=True)
    t.start()
    return t, out


def test_queued_requests_are_released_by_priority(gateway, upstream):
    limits = [{"name": "trickle", "requests": 1, "per": "2s", "algorithm": "gcra",
               "on_limit": {"queue": "30s", "max_queue": 10}}]
    gw = gateway(base_config(
        consumers=[consumer("vip", 10), consumer("normal")],
        apis=[{"name": "echo", "hosts": ["127.0.0.1"], "limits": limits}]))
    depth = lambda: metric(gw, "tollgate_limit_queue_depth", api="echo", limit="trickle")
    assert gw.get(f"{upstream.base}/first", headers={"x-team": "normal"}).status_code == 200
    normal = in_thread(lambda: gw.get(f"{upstream.base}/normal", headers={"x-team": "normal"}, timeout=60))
    until("normal queued", lambda: depth() == 1)
    vip = in_thread(lambda: gw.get(f"{upstream.base}/vip", headers={"x-team": "vip"}, timeout=60))
    until("vip queued", lambda: depth() == 2)
    listing = gw.admin("GET", "/admin/limits").json()
    api = next(a for a in listing["apis"] if a["name"] == "echo")
    assert api["limits"][0]["queue_depth"] == 2
    for t, out in (vip, normal):
        t.join(60)
        assert out["r"].status_code == 200, out["r"].text
    assert [r["path"] for r in upstream.requests] == ["/first", "/vip", "/normal"]
    assert metric(gw, "tollgate_limit_queued_total", api="echo", limit="trickle", result="admitted") == 2


def test_full_concurrency_limit_answers_429(gateway, upstream):
    gw = gateway(base_config(
        consumers=[consumer("a"), consumer("b")],
        apis=[{"name": "echo", "hosts": ["127.0.0.1"],
               "concurrency": {"max": 2, "per_consumer": 1}}]))
    slow = in_thread(lambda: gw.get(f"{upstream.base}/slow?ms=1500", headers={"x-team": "a"}, timeout=30))
    until("slot taken", lambda: metric(gw, "tollgate_concurrency_in_flight", api="echo") == 1)
    r = gw.get(f"{upstream.base}/again", headers={"x-team": "a"})
    problem = assert_problem(r, 429, "concurrency_limited")
    assert "1 per consumer" in problem["detail"]
    assert r.headers["Retry-After"] == "1"
    listing = gw.admin("GET", "/admin/limits").json()
    api = next(a for a in listing["apis"] if a["name"] == "echo")
    assert api["concurrency"] == {"in_flight": 1, "queued": 0}
    # Another consumer still fits under `max`.
    assert gw.get(f"{upstream.base}/other", headers={"x-team": "b"}).status_code == 200
    slow[0].join(30)
    assert slow[1]["r"].status_code == 200
    until("slots free", lambda: metric(gw, "tollgate_concurrency_in_flight", api="echo") == 0)


@pytest.mark.parametrize("scope", ["local", "global"])
def test_concurrency_refusal_consumes_no_rate_limit(gateway, upstream, scope):
    """A request the rate limit admits but the concurrency limit refuses gets its units back
    (in the process, or in Redis for `scope: global`): only requests that went upstream count."""
    extra = {}
    if scope == "global":
        extra["state"] = {"redis": {"url": "redis://127.0.0.1:6379/0",
                                    "prefix": f"tg-refund-{uuid.uuid4().hex[:8]}"}}
    gw = gateway(base_config(
        consumers=[consumer("a")],
        apis=[{"name": "echo", "hosts": ["127.0.0.1"], "concurrency": {"max": 1},
               "limits": [{"name": "hourly", "requests": 3, "per": "1h", "scope": scope}]}],
        **extra))
    slow = in_thread(lambda: gw.get(f"{upstream.base}/slow?ms=1500", headers={"x-team": "a"}, timeout=30))
    until("slot taken", lambda: metric(gw, "tollgate_concurrency_in_flight", api="echo") == 1)
    for i in range(4):
        r = gw.get(f"{upstream.base}/refused{i}", headers={"x-team": "a"})
        assert_problem(r, 429, "concurrency_limited")
    slow[0].join(30)
    assert slow[1]["r"].status_code == 200
    until("slot free", lambda: metric(gw, "tollgate_concurrency_in_flight", api="echo") == 0)
    # The slow request used 1 of 3; the four refused ones used nothing.
    for i in range(2):
        r = gw.get(f"{upstream.base}/after{i}", headers={"x-team": "a"})
        assert r.status_code == 200, r.text
    r = gw.get(f"{upstream.base}/over", headers={"x-team": "a"})
    assert_problem(r, 429, "rate_limited")
    assert [q["path"] for q in upstream.requests] == ["/slow?ms=1500", "/after0", "/after1"]
