"""Malformed input over raw sockets, header limits, and request-id /
traceparent propagation."""

from __future__ import annotations

import http.client
import re

from helpers import assert_problem, base_config, echo_headers, raw_request

FRAMING_CODES = ("bad_request", "ambiguous_framing")


def head(upstream, method="POST", path="/framing", extra=""):
    return (f"{method} {upstream.base}{path} HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{upstream.port}\r\n{extra}").encode()


def assert_framing_rejected(resp, strict=True):
    """400; with strict, Tollgate's own problem body. Without strict, the
    HTTP parser may have answered before Tollgate saw the request (a bare 400),
    but a tollgate-error header, if any, must name a framing code."""
    assert resp.status == 400, resp
    code = resp.headers.get("tollgate-error")
    if strict or code is not None:
        assert code in FRAMING_CODES, resp
        assert_problem(resp, 400, code)


def test_content_length_with_transfer_encoding(gateway, upstream):
    gw = gateway(base_config())
    data = head(upstream, extra="Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n") + b"0\r\n\r\n"
    assert_framing_rejected(raw_request(gw.proxy_addr, data))
    assert upstream.requests == []


def test_duplicate_differing_content_length(gateway, upstream):
    gw = gateway(base_config())
    data = head(upstream, extra="Content-Length: 3\r\nContent-Length: 5\r\n\r\n") + b"abcde"
    # hyper rejects this itself, with a bare 400 (no tollgate-error header).
    assert_framing_rejected(raw_request(gw.proxy_addr, data), strict=False)
    assert upstream.requests == []


def test_unknown_transfer_coding_rejected(gateway, upstream):
    # `gzip, chunked`: Transfer-Encoding is hop-by-hop, so a proxy that only
    # decodes the chunking and drops the header forwards a still-gzipped body
    # without saying so. RFC 9112 6.1: answer 501 (or refuse the framing, 400).
    gw = gateway(base_config())
    body = b"5\r\nhello\r\n0\r\n\r\n"
    data = head(upstream, extra="Transfer-Encoding: gzip, chunked\r\n\r\n") + body
    r = raw_request(gw.proxy_addr, data)
    assert r.status in (400, 501), r
    assert upstream.requests == []


def test_bad_chunking(gateway, upstream):
    gw = gateway(base_config())
    data = head(upstream, extra="Transfer-Encoding: chunked\r\n\r\n") + b"zz\r\nhello\r\n0\r\n\r\n"
    # The head may already be forwarded when the bad chunk is read, so the
    # client sees a 400 (or 502) or a closed connection, never a 200.
    try:
        r = raw_request(gw.proxy_addr, data)
        assert r.status in (400, 502), r
    except (OSError, http.client.HTTPException):
        pass
    assert not any("hello" in q["body"] for q in upstream.requests), upstream.requests


def test_too_many_headers(gateway, upstream):
    gw = gateway(base_config(server={"max_headers": 50}))
    extra = "".join(f"X-H{i}: v\r\n" for i in range(200)) + "\r\n"
    r = raw_request(gw.proxy_addr, head(upstream, "GET", "/many", extra))
    assert r.status in (431, 400), r
    if "tollgate-error" in r.headers:
        assert r.headers["tollgate-error"] in ("headers_too_large", "bad_request"), r
    assert upstream.requests == []


def test_headers_too_large(gateway, upstream):
    gw = gateway(base_config(server={"max_header_bytes": "8KiB"}))
    extra = f"X-Big: {'a' * 16000}\r\n\r\n"
    r = raw_request(gw.proxy_addr, head(upstream, "GET", "/large", extra))
    assert r.status == 431, r
    if "tollgate-error" in r.headers:
        assert_problem(r, 431, "headers_too_large")
    assert upstream.requests == []


def test_garbage_request_line(gateway):
    gw = gateway(base_config())
    r = raw_request(gw.proxy_addr, b"THIS IS NOT HTTP\r\n\r\n")
    assert r.status == 400, r


def test_request_id_propagated(gateway, upstream):
    gw = gateway(base_config())
    rid = "test-rid-0123456789"
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    r = gw.get(f"{upstream.base}/rid", headers={"x-request-id": rid, "traceparent": tp})
    assert r.status_code == 200
    assert r.headers["x-request-id"] == rid
    h = echo_headers(r)
    assert h["x-request-id"] == rid
    # Same trace; the parent-id may be Tollgate's own span.
    m = re.fullmatch(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})", h["traceparent"])
    assert m and m.group(1) == "0af7651916cd43dd8448eb211c80319c", h["traceparent"]
    e = gw.wait_access(lambda e: e.get("path") == "/rid")
    assert e["request_id"] == rid


def test_request_id_generated(gateway, upstream):
    gw = gateway(base_config())
    r1 = gw.get(f"{upstream.base}/gen")
    r2 = gw.get(f"{upstream.base}/gen")
    rid = r1.headers.get("x-request-id")
    assert rid and rid != r2.headers.get("x-request-id")
    assert echo_headers(r1)["x-request-id"] == rid
    e = gw.wait_access(lambda e: e.get("request_id") == rid)
    assert e["path"] == "/gen"


def test_request_id_on_routes_and_errors(gateway, upstream):
    gw = gateway(base_config(apis=[{"name": "r", "route": "/r", "upstream": upstream.base}]))
    r = gw.route("GET", "/r/x", headers={"X-Request-Id": "route-rid-1"})
    assert r.headers["x-request-id"] == "route-rid-1"
    assert echo_headers(r)["x-request-id"] == "route-rid-1"
    r = gw.route("GET", "/missing", headers={"X-Request-Id": "route-rid-2"})
    problem = assert_problem(r, 404, "route_not_found")
    assert problem["request_id"] == "route-rid-2"
