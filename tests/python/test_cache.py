"""The response cache end to end through a real `tollgate run` and `requests`:
an origin on a loopback port counts requests and answers with the
Cache-Control / ETag the test scripts per path."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from helpers import base_config, metric_value


class OriginHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        srv = self.server
        path = self.path.split("?")[0]
        with srv.lock:
            srv.count[path] = srv.count.get(path, 0) + 1
            srv.seen.append({k.lower(): v for k, v in self.headers.items()})
            headers, body, delay = srv.replies.get(path, ({}, b"default", 0.0))
        if delay:
            time.sleep(delay)
        etag = headers.get("ETag")
        if etag and self.headers.get("If-None-Match") == etag:
            self.send_response(304)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def origin():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), OriginHandler)
    srv.daemon_threads = True
    srv.lock = threading.Lock()
    srv.count = {}
    srv.seen = []
    srv.replies = {}
    srv.base = f"http://127.0.0.1:{srv.server_address[1]}"
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def cached_api(**cache):
    return {"name": "origin", "hosts": ["127.0.0.1"], "cache": cache,
            "limits": [{"name": "hourly", "requests": 1000, "per": "1h"}]}


def test_hits_revalidation_and_metrics(gateway, origin):
    origin.replies["/fresh"] = ({"Cache-Control": "max-age=60"}, b"fresh", 0.0)
    origin.replies["/etag"] = ({"Cache-Control": "max-age=0", "ETag": '"v1"'}, b"tagged", 0.0)
    gw = gateway(base_config(apis=[cached_api()]))
    a = gw.get(f"{origin.base}/fresh")
    assert a.status_code == 200 and a.text == "fresh"
    assert a.headers["Cache-Status"] == "tollgate; fwd=miss; stored"
    b = gw.get(f"{origin.base}/fresh")
    assert b.text == "fresh" and b.headers["Cache-Status"] == "tollgate; hit"
    assert "Age" in b.headers
    assert origin.count["/fresh"] == 1

    assert gw.get(f"{origin.base}/etag").text == "tagged"
    r = gw.get(f"{origin.base}/etag")
    assert r.status_code == 200 and r.text == "tagged"
    assert r.headers["Cache-Status"] == "tollgate; fwd=stale; fwd-status=304"
    assert origin.seen[-1].get("if-none-match") == '"v1"'

    metrics = gw.admin("GET", "/metrics").text
    assert metric_value(metrics, "tollgate_cache_lookups_total", api="origin", result="hit") == 1
    assert metric_value(metrics, "tollgate_cache_lookups_total", api="origin",
                        result="revalidated") == 1
    assert metric_value(metrics, "tollgate_cache_entries") == 2
    e = gw.wait_access(lambda e: e.get("cache") == "hit")
    assert e["path"] == "/fresh"


def test_collapsing_and_purge(gateway, origin):
    origin.replies["/slow"] = ({"Cache-Control": "max-age=60"}, b"once", 0.3)
    gw = gateway(base_config(apis=[cached_api()]))
    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(lambda _: gw.get(f"{origin.base}/slow"), range(20)))
    assert all(r.status_code == 200 and r.text == "once" for r in results)
    assert origin.count["/slow"] == 1

    r = gw.admin("POST", "/admin/cache/purge", json={"api": "origin"})
    assert r.status_code == 200 and r.json()["removed"] == 1
    assert gw.get(f"{origin.base}/slow").headers["Cache-Status"] == "tollgate; fwd=miss; stored"
    assert origin.count["/slow"] == 2

    r = gw.admin("POST", "/admin/cache/purge",
                 json={"api": "origin", "url": f"{origin.base}/slow"})
    assert r.status_code == 200 and r.json()["removed"] == 1
    r = gw.admin("POST", "/admin/cache/purge", json={"api": "nope"})
    assert r.status_code == 404 and r.headers["tollgate-error"] == "unknown_api"


def test_private_responses_are_not_shared(gateway, origin):
    origin.replies["/me"] = ({"Cache-Control": "private, max-age=60"}, b"mine", 0.0)
    gw = gateway(base_config(apis=[cached_api(shared_across_consumers=True,
                                              key=["method", "url"])]))
    for _ in range(2):
        r = gw.get(f"{origin.base}/me")
        assert r.headers["Cache-Status"] == "tollgate; fwd=miss"
    assert origin.count["/me"] == 2
