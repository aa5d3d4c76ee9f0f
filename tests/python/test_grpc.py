"""gRPC through a route, end to end with `grpcio`: the client speaks HTTP/2 with prior knowledge
(h2c) to the gateway, the gateway calls the `http://` upstream over h2c with `TE: trailers`, and
the response trailers (`grpc-status`, custom trailing metadata) come back. Unary and
server-streaming calls; an application error status is relayed from the upstream's trailers.
An `upstream_group` of gRPC backends gets h2c too, spread over its targets and failing over
when one stops. Raw-bytes methods (no protobuf code generation needed)."""

from __future__ import annotations

import collections
from concurrent import futures

import grpc
import pytest

from helpers import base_config

SERVICE = "echo.Echo"


def _say(request: bytes, context) -> bytes:
    if request == b"fail":
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, "asked to fail")
    md = dict(context.invocation_metadata())
    context.set_trailing_metadata((("x-trailer", "t1"),))
    return b"echo:" + request + b":" + md.get("x-team", "-").encode()


def _count(request: bytes, context):
    for i in range(int(request)):
        yield f"item-{i}".encode()


@pytest.fixture
def grpc_upstream():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.method_handlers_generic_handler(SERVICE, {
        "Say": grpc.unary_unary_rpc_method_handler(_say),
        "Count": grpc.unary_stream_rpc_method_handler(_count),
    })
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port
    server.stop(None)


def test_grpc_unary_and_streaming_through_a_route(gateway, grpc_upstream):
    gw = gateway(base_config(apis=[{
        "name": "grpc", "route": f"/{SERVICE}",
        "upstream": f"http://127.0.0.1:{grpc_upstream}/{SERVICE}"}]))
    with grpc.insecure_channel(gw.proxy_addr) as ch:
        say = ch.unary_unary(f"/{SERVICE}/Say")
        resp, call = say.with_call(b"hi", metadata=(("x-team", "web"),), timeout=5)
        assert resp == b"echo:hi:web"
        assert ("x-trailer", "t1") in call.trailing_metadata()
        assert call.code() == grpc.StatusCode.OK

        count = ch.unary_stream(f"/{SERVICE}/Count")
        assert list(count(b"5", timeout=5)) == [f"item-{i}".encode() for i in range(5)]

        with pytest.raises(grpc.RpcError) as e:
            say(b"fail", timeout=5)
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert e.value.details() == "asked to fail"
    entry = gw.wait_access(lambda e: e.get("api") == "grpc" and "Count" in e.get("path", ""))
    assert entry["status"] == 200


def test_gateway_errors_on_grpc_calls_carry_grpc_status(gateway, grpc_upstream):
    gw = gateway(base_config(apis=[{
        "name": "grpc", "route": f"/{SERVICE}",
        "upstream": f"http://127.0.0.1:{grpc_upstream}/{SERVICE}",
        "allow": [{"methods": ["POST"], "paths": ["/Say"]}]}]))
    with grpc.insecure_channel(gw.proxy_addr) as ch:
        assert ch.unary_unary(f"/{SERVICE}/Say")(b"ok", timeout=5) == b"echo:ok:-"
        with pytest.raises(grpc.RpcError) as e:
            list(ch.unary_stream(f"/{SERVICE}/Count")(b"3", timeout=5))
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert e.value.details() == "endpoint_not_allowed"
    entry = gw.wait_access(lambda e: "Count" in e.get("path", ""))
    assert entry["status"] == 403 and entry["decision"] == "deny"


def _grpc_backend(name: str):
    def who(request: bytes, context) -> bytes:
        return name.encode() + b":" + request

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        SERVICE, {"Who": grpc.unary_unary_rpc_method_handler(who)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def test_grpc_through_an_upstream_group_spreads_and_fails_over(gateway):
    backends = [_grpc_backend(n) for n in ("g0", "g1")]
    try:
        gw = gateway(base_config(apis=[{
            "name": "grpcgroup", "route": "/rpc",
            # gRPC calls are POSTs: failover replays the body only for retry-eligible requests.
            "retry": {"attempts": 2, "non_idempotent": True},
            "upstream_group": {"targets": [
                {"url": f"http://127.0.0.1:{port}"} for _, port in backends]}}]))
        with grpc.insecure_channel(gw.proxy_addr) as ch:
            who = ch.unary_unary(f"/rpc/{SERVICE}/Who")
            served = collections.Counter(who(b"x", timeout=5).split(b":")[0] for _ in range(10))
            assert served == {b"g0": 5, b"g1": 5}, served
            backends[0][0].stop(None).wait(5)
            # Every call still succeeds: the stopped target refuses connections and the gateway
            # moves the call to the other target at once (failover on connect errors).
            assert [who(b"y", timeout=5) for _ in range(6)] == [b"g1:y"] * 6
    finally:
        for server, _ in backends:
            server.stop(None)
