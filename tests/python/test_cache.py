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


class RangeOriginHandler(OriginHandler):
    """Like the origin, but answers `Range: bytes=a-b` itself with a 206."""

    def do_GET(self):
        srv = self.server
        path = self.path.split("?")[0]
        rng = self.headers.get("Range")
        if not rng or not path.startswith("/partial"):
            return super().do_GET()
        with srv.lock:
            srv.count[path] = srv.count.get(path, 0) + 1
            srv.seen.append({k.lower(): v for k, v in self.headers.items()})
        body = srv.replies[path][1]
        a, b = rng.split("=")[1].split("-")
        part = body[int(a):int(b) + 1]
        self.send_response(206)
        self.send_header("Cache-Control", "max-age=60")
        self.send_header("Content-Range", f"bytes {a}-{int(a) + len(part) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(part)))
        self.end_headers()
        self.wfile.write(part)


def _curl(gw, *args):
    """curl through the gateway as a forward proxy: (status, headers, body)."""
    import subprocess
    out = subprocess.run(["curl", "-s", "-D", "-", "--max-time", "10", "-x", gw.proxy_url, *args],
                         capture_output=True, timeout=20, check=True).stdout
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body


def test_range_requests_are_answered_from_a_stored_full_response(gateway, origin):
    body = bytes(range(48, 48 + 64)) * 4  # 256 bytes
    origin.replies["/file"] = ({"Cache-Control": "max-age=60", "ETag": '"f1"'}, body, 0.0)
    gw = gateway(base_config(apis=[cached_api()]))
    url = f"{origin.base}/file"
    st, h, b = _curl(gw, url)
    assert (st, b) == (200, body) and h["cache-status"] == "tollgate; fwd=miss; stored"

    st, h, b = _curl(gw, "-r", "10-19", url)
    assert st == 206 and b == body[10:20]
    assert h["content-range"] == "bytes 10-19/256" and h["content-length"] == "10"
    assert h["cache-status"] == "tollgate; hit"
    st, h, b = _curl(gw, "-r", "-6", url)  # suffix
    assert st == 206 and b == body[-6:] and h["content-range"] == "bytes 250-255/256"
    st, h, b = _curl(gw, "-r", "250-", url)
    assert st == 206 and b == body[250:]
    # Unsatisfiable: 416 with the length.
    st, h, b = _curl(gw, "-r", "1000-2000", url)
    assert st == 416 and h["content-range"] == "bytes */256" and b == b""
    # Several ranges: the whole response (RFC 9110 lets a server ignore Range).
    st, h, b = _curl(gw, "-r", "0-1,5-6", url)
    assert st == 200 and b == body
    # If-Range with another validator: the whole response.
    st, h, b = _curl(gw, "-r", "0-1", "-H", 'If-Range: "other"', url)
    assert st == 200 and b == body
    st, h, b = _curl(gw, "-r", "0-1", "-H", 'If-Range: "f1"', url)
    assert st == 206 and b == body[:2]
    assert origin.count["/file"] == 1


def test_an_upstream_206_is_never_stored_as_the_full_response(gateway):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), RangeOriginHandler)
    srv.daemon_threads = True
    srv.lock = threading.Lock()
    srv.count, srv.seen = {}, []
    body = b"0123456789abcdefghij"
    srv.replies = {"/partial": ({"Cache-Control": "max-age=60"}, body, 0.0)}
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        gw = gateway(base_config(apis=[cached_api()]))
        st, h, b = _curl(gw, "-r", "0-4", f"{base}/partial")
        assert st == 206 and b == b"01234" and h["content-range"] == "bytes 0-4/20"
        assert "stored" not in h["cache-status"]
        # The next full GET is not answered with the 5-byte part.
        st, h, b = _curl(gw, f"{base}/partial")
        assert st == 200 and b == body and h["cache-status"] == "tollgate; fwd=miss; stored"
        assert srv.count["/partial"] == 2
    finally:
        srv.shutdown()
        srv.server_close()


def _consumers():
    return [{"name": n, "identify": {"header": {"name": "x-tollgate-consumer", "value": n}}}
            for n in ("alice", "bob")]


def _as(gw, who, url):
    return gw.get(url, headers={"x-tollgate-consumer": who})


def test_responses_fetched_with_different_keys_are_not_shared(gateway, origin):
    """Several credential keys: the default key has `credential`, so even with
    `shared_across_consumers` a response fetched with one key never answers a request
    that would use another."""
    origin.replies["/acct"] = ({"Cache-Control": "max-age=60"}, b"account data", 0.0)
    api = cached_api(shared_across_consumers=True)
    api["credentials"] = {"keys": [{"name": "one", "header": "x-key", "value": "${env:K1}"},
                                   {"name": "two", "header": "x-key", "value": "${env:K2}"}]}
    gw = gateway(base_config(apis=[api], consumers=_consumers()), env={"K1": "key-one", "K2": "key-two"})
    url = f"{origin.base}/acct"
    a = _as(gw, "alice", url)
    assert a.headers["Cache-Status"] == "tollgate; fwd=miss; stored"
    b = _as(gw, "bob", url)  # the rotation's next key: another account, not a hit
    assert b.headers["Cache-Status"] == "tollgate; fwd=miss; stored"
    assert [s["x-key"] for s in origin.seen] == ["key-one", "key-two"]
    # Both keys' responses are stored now: further requests are hits, whoever asks.
    for who in ("alice", "bob", "alice"):
        assert _as(gw, who, url).headers["Cache-Status"] == "tollgate; hit"
    assert origin.count["/acct"] == 2


def test_a_shared_credential_shares_only_when_configured(gateway, origin):
    origin.replies["/pub"] = ({"Cache-Control": "max-age=60"}, b"catalogue", 0.0)
    creds = {"header": "x-key", "value": "${env:K1}"}
    shared = cached_api(shared_across_consumers=True, key=["method", "url", "credential"])
    shared["credentials"] = creds
    gw = gateway(base_config(apis=[shared], consumers=_consumers()), env={"K1": "key-one"})
    url = f"{origin.base}/pub"
    assert _as(gw, "alice", url).headers["Cache-Status"] == "tollgate; fwd=miss; stored"
    r = _as(gw, "bob", url)
    assert r.headers["Cache-Status"] == "tollgate; hit" and r.text == "catalogue"
    assert origin.count["/pub"] == 1
    gw.kill()

    # Not configured (the default): per consumer, although the credential is the same.
    private = cached_api()
    private["credentials"] = creds
    gw = gateway(base_config(apis=[private], consumers=_consumers()), env={"K1": "key-one"})
    assert _as(gw, "alice", url).headers["Cache-Status"] == "tollgate; fwd=miss; stored"
    assert _as(gw, "bob", url).headers["Cache-Status"] == "tollgate; fwd=miss; stored"
    assert _as(gw, "bob", url).headers["Cache-Status"] == "tollgate; hit"
    assert origin.count["/pub"] == 3
