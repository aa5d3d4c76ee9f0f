"""The network guard end to end: the gateway refuses private, loopback and
metadata destinations before connecting, unless the config allows them."""

from __future__ import annotations

import pytest

from helpers import assert_problem, base_config, connect_tunnel


def test_loopback_port_not_in_allow_list(gateway, upstream, sentinel):
    gw = gateway(base_config(allow=[f"127.0.0.1:{upstream.port}"]))
    assert gw.get(f"{upstream.base}/ok").status_code == 200
    r = gw.get(f"{sentinel.base}/leak")
    assert_problem(r, 403, "destination_blocked")
    # Refused before connecting: the sentinel never saw a TCP connection.
    assert sentinel.connections == 0
    e = gw.wait_access(lambda e: e.get("path") == "/leak")
    assert e["decision"] == "deny" and e["status"] == 403
    assert "destination_blocked" in e["reason"]


def test_loopback_blocked_by_default(gateway, sentinel):
    gw = gateway({})
    assert_problem(gw.get(f"{sentinel.base}/x"), 403, "destination_blocked")
    assert_problem(gw.get(f"http://localhost:{sentinel.port}/x"), 403, "destination_blocked")
    assert_problem(gw.get(f"http://[::1]:{sentinel.port}/x"), 403, "destination_blocked")
    assert sentinel.connections == 0


@pytest.mark.parametrize("host", [
    "169.254.169.254", "10.0.0.1", "192.168.1.1", "172.16.0.1", "100.64.0.1", "0.0.0.0",
    "[::ffff:169.254.169.254]", "[::ffff:10.0.0.1]", "[fd00::1]", "[fe80::1]", "[64:ff9b::a00:1]",
])
def test_private_and_metadata_blocked(gateway, host):
    # Allowing loopback must not open anything else.
    gw = gateway(base_config())
    r = gw.get(f"http://{host}/latest/meta-data/")
    assert_problem(r, 403, "destination_blocked")


def test_connect_to_mapped_loopback_blocked(gateway, tls_upstream):
    # Only one exact loopback ip:port is allowed; the TLS upstream's port is not it.
    gw = gateway(base_config(allow=["127.0.0.1:1"], connect={"allowed_ports": [tls_upstream.port, 443]}))
    for target in (f"[::ffff:127.0.0.1]:{tls_upstream.port}", f"127.0.0.1:{tls_upstream.port}",
                   "[::ffff:169.254.169.254]:443", "169.254.169.254:443"):
        sock, resp = connect_tunnel(gw.proxy_addr, target)
        sock.close()
        assert_problem(resp, 403, "destination_blocked")
    assert tls_upstream.connections == 0


def test_connect_back_to_own_listeners_blocked(gateway):
    # Even with all of loopback allowed, the gateway never proxies to itself.
    gw = gateway(base_config())
    r = gw.get(f"{gw.admin_url}/metrics")
    assert r.status_code == 403, r.text
    assert r.headers.get("tollgate-error") == "destination_blocked"


def test_allow_private_never_allows_metadata(gateway):
    gw = gateway({"network_guard": {"allow_private": True}})
    for host in ("169.254.169.254", "127.0.0.1:9", "100.64.0.1"):
        assert_problem(gw.get(f"http://{host}/"), 403, "destination_blocked")


def test_explicit_deny_entry(gateway, upstream):
    gw = gateway({"network_guard": {"allow": ["127.0.0.0/8"], "deny": [f"127.0.0.1:{upstream.port}"]}})
    assert_problem(gw.get(f"{upstream.base}/denied"), 403, "destination_blocked")
    assert upstream.connections == 0
