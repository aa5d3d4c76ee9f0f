"""DNS end to end: a local DNS server returns crafted answers. All-private
answers are refused, mixed answers are pinned to the allowed address, and
unknown names are a 502 dns_failure."""

from __future__ import annotations

from helpers import assert_problem, connect_tunnel, echo_headers

RECORDS = {
    "private.tollgate.test": {"A": ["10.0.0.1", "192.168.1.1"]},
    "mixed.tollgate.test": {"A": ["10.0.0.1", "127.0.0.1"]},
    "six.tollgate.test": {"AAAA": ["fd00::1", "::ffff:169.254.169.254"]},
    "meta.tollgate.test": {"A": ["169.254.169.254"]},
}


def dns_config(dns, upstream):
    return {
        "dns": {"servers": [dns.addr], "timeout": "2s"},
        "network_guard": {"allow": [f"127.0.0.1:{upstream.port}"]},
    }


def test_all_private_answers_denied(gateway, dns_server, upstream):
    dns = dns_server(RECORDS)
    gw = gateway(dns_config(dns, upstream))
    for name in ("private.tollgate.test", "six.tollgate.test", "meta.tollgate.test"):
        r = gw.get(f"http://{name}:{upstream.port}/x")
        assert_problem(r, 403, "destination_blocked")
    assert any(q[0] == "private.tollgate.test" for q in dns.queries), dns.queries
    assert upstream.connections == 0


def test_mixed_answer_pinned_to_allowed_address(gateway, dns_server, upstream):
    dns = dns_server(RECORDS)
    gw = gateway(dns_config(dns, upstream))
    for _ in range(3):  # whatever order the resolver returns, the allowed address is used
        r = gw.get(f"http://mixed.tollgate.test:{upstream.port}/pinned")
        assert r.status_code == 200, r.text
        assert echo_headers(r)["host"] == f"mixed.tollgate.test:{upstream.port}"
    e = gw.wait_access(lambda e: e.get("path") == "/pinned")
    assert e["host"] == "mixed.tollgate.test"
    assert e["upstream_addr"] == f"127.0.0.1:{upstream.port}"


def test_nxdomain_is_dns_failure(gateway, dns_server, upstream):
    dns = dns_server(RECORDS)
    gw = gateway(dns_config(dns, upstream))
    r = gw.get(f"http://nope.tollgate.test:{upstream.port}/x")
    assert_problem(r, 502, "dns_failure")
    assert any(q[0] == "nope.tollgate.test" for q in dns.queries), dns.queries
    e = gw.wait_access(lambda e: e.get("host") == "nope.tollgate.test")
    assert e["status"] == 502


def test_connect_resolves_through_guard(gateway, dns_server, tls_upstream, certs):
    dns = dns_server(RECORDS)
    gw = gateway({
        "dns": {"servers": [dns.addr], "timeout": "2s"},
        "network_guard": {"allow": [f"127.0.0.1:{tls_upstream.port}"]},
        "connect": {"allowed_ports": [tls_upstream.port]},
    })
    sock, resp = connect_tunnel(gw.proxy_addr, f"private.tollgate.test:{tls_upstream.port}")
    sock.close()
    assert_problem(resp, 403, "destination_blocked")
    sock, resp = connect_tunnel(gw.proxy_addr, f"mixed.tollgate.test:{tls_upstream.port}")
    sock.close()
    assert resp.status == 200, resp
    e = gw.wait_access(lambda e: e.get("kind") == "connect" and e.get("host") == "mixed.tollgate.test")
    assert e["upstream_addr"] == f"127.0.0.1:{tls_upstream.port}"
