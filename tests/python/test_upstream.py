"""The upstream side: TLS routes with an extra CA, connect failures, response
timeouts, keep-alive pooling, and exact tunnel byte counts."""

from __future__ import annotations

import http.client
import socket
import time

from helpers import assert_problem, base_config, connect_tunnel, read_response


def test_route_to_tls_upstream_with_extra_ca(gateway, tls_upstream, certs):
    gw = gateway(base_config(
        upstream={"ca_file": str(certs["ca"])},
        apis=[{"name": "secure", "route": "/secure", "upstream": f"https://127.0.0.1:{tls_upstream.port}/base"}]))
    r = gw.route("GET", "/secure/v1/x")
    assert r.status_code == 200, r.text
    assert r.json()["server"] == "tls"
    assert r.json()["path"] == "/base/v1/x"
    e = gw.wait_access(lambda e: e.get("api") == "secure")
    assert e["upstream_addr"] == f"127.0.0.1:{tls_upstream.port}"


def test_route_to_tls_upstream_untrusted_ca(gateway, tls_upstream):
    gw = gateway(base_config(
        apis=[{"name": "secure", "route": "/secure", "upstream": f"https://127.0.0.1:{tls_upstream.port}"}]))
    r = gw.route("GET", "/secure/v1/x")
    assert_problem(r, 502, "upstream_tls_failed")
    assert tls_upstream.requests == []


def test_upstream_connect_failed(gateway):
    # A port that was just free: nothing listens there.
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    gw = gateway(base_config())
    assert_problem(gw.get(f"http://127.0.0.1:{port}/x"), 502, "upstream_connect_failed")
    e = gw.wait_access(lambda e: e.get("status") == 502)
    assert e["decision"] == "allow"
    assert "upstream_connect_failed" in (e["reason"] or "")


def test_upstream_response_header_timeout(gateway, upstream):
    gw = gateway(base_config(upstream={"response_header_timeout": "300ms"}))
    assert_problem(gw.get(f"{upstream.base}/slow?ms=2000"), 504, "upstream_timeout")
    assert gw.get(f"{upstream.base}/slow?ms=10").status_code == 200


def test_upstream_keep_alive_pool(gateway, upstream):
    gw = gateway(base_config())
    # The upstream connection goes back to the pool when its connection task
    # sees the response end, which can trail the client's receipt of the last
    # byte on a loaded machine; a short pause between requests keeps the test
    # about reuse rather than about that hand-off.
    with gw.session() as s:
        for i in range(5):
            assert s.get(f"{upstream.base}/pool{i}", timeout=5).status_code == 200
            time.sleep(0.05)
    # Separate client connections, one pooled upstream connection.
    for i in range(3):
        assert gw.get(f"{upstream.base}/pool-b{i}").status_code == 200
        time.sleep(0.05)
    assert len(upstream.requests) == 8
    assert upstream.connections == 1, upstream.connections


def test_tunnel_counts_exact_bytes(gateway, upstream):
    # A CONNECT tunnel to a plain HTTP upstream, so the bytes are easy to count.
    gw = gateway(base_config(connect={"allowed_ports": [upstream.port]}))
    sock, resp = connect_tunnel(gw.proxy_addr, f"127.0.0.1:{upstream.port}")
    assert resp.status == 200, resp
    request = (f"POST /tunnel HTTP/1.1\r\nHost: 127.0.0.1:{upstream.port}\r\nContent-Length: 5\r\n"
               "Connection: close\r\n\r\nhello").encode()
    sock.sendall(request)
    received = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    sock.close()
    assert received.startswith(b"HTTP/1.")
    assert b'"body": "hello"' in received
    e = gw.wait_access(lambda e: e.get("kind") == "connect")
    assert e["bytes_in"] == len(request)
    assert e["bytes_out"] == len(received)
    assert e["status"] == 200


def test_tunnel_idle_timeout(gateway, upstream):
    gw = gateway(base_config(connect={"allowed_ports": [upstream.port], "idle_timeout": "500ms"}))
    sock, resp = connect_tunnel(gw.proxy_addr, f"127.0.0.1:{upstream.port}")
    assert resp.status == 200, resp
    sock.settimeout(5)
    try:
        data = sock.recv(1)
    except (ConnectionResetError, socket.timeout) as e:
        data = e
    finally:
        sock.close()
    assert data == b"", f"tunnel not closed by the idle timeout: {data!r}"
    gw.wait_access(lambda e: e.get("kind") == "connect")


def test_slow_headers_are_cut_off(gateway, upstream):
    gw = gateway(base_config(server={"header_read_timeout": "500ms"}))
    with socket.create_connection(("127.0.0.1", gw.proxy_port), timeout=5) as sock:
        sock.sendall(f"GET {upstream.base}/slowloris HTTP/1.1\r\nHost: x\r\n".encode())
        # Never finish the head: the gateway must give up (408 or a plain close).
        try:
            resp = read_response(sock)
            assert resp.status == 408, resp
        except (ConnectionResetError, socket.timeout) as e:
            assert not isinstance(e, socket.timeout), "connection still open after 5s"
        except http.client.HTTPException as e:  # closed mid-way without a full answer
            assert "timed out" not in str(e), repr(e)
    assert upstream.requests == []
