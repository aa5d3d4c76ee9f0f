"""OpenTelemetry tracing end to end: a real `tollgate run` exports spans over OTLP to a real
receiver in this process — gRPC `TraceService/Export` served by grpcio, and HTTP/protobuf
`POST /v1/traces` — and the spans are decoded with the official opentelemetry-proto classes.

Checked: the request span's parent is the caller's `traceparent`; cache-lookup, queue-wait and
upstream-attempt spans are its children; a retried request has two attempt spans; each
upstream request carries a `traceparent` naming its attempt span; sampling ratio 0 records
nothing; with the receiver down requests still succeed and the failure metrics move."""

from __future__ import annotations

import socket
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest
import requests
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from helpers import base_config, metric_value, wait_until

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
CALLER_TP = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
SERVER = trace_pb2.Span.SPAN_KIND_SERVER
CLIENT = trace_pb2.Span.SPAN_KIND_CLIENT
INTERNAL = trace_pb2.Span.SPAN_KIND_INTERNAL


class Received:
    """Spans collected by a receiver, with the resource attributes and request metadata."""

    def __init__(self):
        self.lock = threading.Lock()
        self.spans: list[trace_pb2.Span] = []
        self.resources: list[dict] = []
        self.metadata: list[dict] = []

    def add(self, req: trace_service_pb2.ExportTraceServiceRequest, metadata: dict) -> None:
        with self.lock:
            self.metadata.append(metadata)
            for rs in req.resource_spans:
                self.resources.append(attrs(rs.resource.attributes))
                for ss in rs.scope_spans:
                    self.spans.extend(ss.spans)

    def snapshot(self) -> list[trace_pb2.Span]:
        with self.lock:
            return list(self.spans)

    def wait_for(self, pred, timeout: float = 10.0) -> list[trace_pb2.Span]:
        assert wait_until(lambda: pred(self.snapshot()), timeout=timeout), \
            f"spans never matched; got {[s.name for s in self.snapshot()]}"
        return self.snapshot()


def attrs(kvs) -> dict:
    out = {}
    for kv in kvs:
        v = kv.value
        out[kv.key] = getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None
    return out


class GrpcReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, received: Received):
        self.received = received

    def Export(self, request, context):
        self.received.add(request, dict(context.invocation_metadata()))
        return trace_service_pb2.ExportTraceServiceResponse()


class HttpReceiverHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0") or 0)
        body = self.rfile.read(n)
        ok = self.path == "/v1/traces" and self.headers.get("Content-Type") == "application/x-protobuf"
        if ok:
            req = trace_service_pb2.ExportTraceServiceRequest()
            req.ParseFromString(body)
            self.server.received.add(req, {k.lower(): v for k, v in self.headers.items()})
        out = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200 if ok else 400)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


@pytest.fixture(params=["grpc", "http"])
def receiver(request):
    """(protocol, endpoint, Received) for a receiver speaking that protocol."""
    received = Received()
    if request.param == "grpc":
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(GrpcReceiver(received), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        yield "grpc", f"http://127.0.0.1:{port}", received
        server.stop(grace=None)
    else:
        srv = ThreadingHTTPServer(("127.0.0.1", 0), HttpReceiverHandler)
        srv.daemon_threads = True
        srv.received = received
        t = threading.Thread(target=srv.serve_forever, daemon=True)
        t.start()
        yield "http", f"http://127.0.0.1:{srv.server_address[1]}", received
        srv.shutdown()
        srv.server_close()


def tracing(protocol: str, endpoint: str, **extra) -> dict:
    return {"tracing": {"endpoint": endpoint, "protocol": protocol, "batch_delay": "50ms",
                        "service_name": "tollgate-e2e", "headers": {"x-collector-key": "${env:OTLP_KEY}"},
                        **extra}}


def header(record: dict, name: str) -> str | None:
    for k, v in record["headers"]:
        if k.lower() == name:
            return v
    return None


def test_spans_link_to_the_caller_and_the_upstream(gateway, upstream, receiver):
    protocol, endpoint, received = receiver
    apis = [
        {"name": "echo", "hosts": ["127.0.0.1"], "route": "/echo", "upstream": upstream.base,
         "retry": {"attempts": 2, "backoff": "5ms..10ms", "on": [503]}},
    ]
    gw = gateway(base_config(apis=apis, telemetry=tracing(protocol, endpoint)),
                 env={"OTLP_KEY": "collector-secret"})

    # One request that succeeds at once, one that is retried (the echo upstream always 503s).
    r = requests.get(f"{gw.proxy_url}/echo/ok?token=hunter2",
                     headers={"traceparent": CALLER_TP, "tracestate": "vendor=abc"}, timeout=10)
    assert r.status_code == 200
    r = requests.get(f"{gw.proxy_url}/echo/status/503", headers={"traceparent": CALLER_TP},
                     timeout=10)
    assert r.status_code == 503

    def complete(spans):
        return len([s for s in spans if s.kind == SERVER]) >= 2 and \
            len([s for s in spans if s.kind == CLIENT]) >= 3
    spans = received.wait_for(complete)
    by_id = {s.span_id.hex(): s for s in spans}
    servers = [s for s in spans if s.kind == SERVER]
    assert len(servers) == 2
    for s in servers:
        assert s.trace_id.hex() == CALLER_TRACE
        assert s.parent_span_id.hex() == CALLER_SPAN, "the request span's parent is the caller's span"
        a = attrs(s.attributes)
        assert a["http.request.method"] == "GET"
        assert a["tollgate.api"] == "echo"
        assert a["tollgate.decision"] == "allow"
        assert a["tollgate.upstream.host"] == "127.0.0.1"
        assert a["tollgate.upstream.port"] == upstream.port
        assert "hunter2" not in str(s), "query strings never reach spans"
    ok = next(s for s in servers if attrs(s.attributes)["http.response.status_code"] == 200)
    failed = next(s for s in servers if attrs(s.attributes)["http.response.status_code"] == 503)
    assert ok.trace_state == "vendor=abc"
    assert attrs(failed.attributes)["tollgate.attempts"] == 2

    attempts = [s for s in spans if s.kind == CLIENT]
    ok_attempts = [s for s in attempts if s.parent_span_id == ok.span_id]
    retried = sorted((s for s in attempts if s.parent_span_id == failed.span_id),
                     key=lambda s: attrs(s.attributes)["tollgate.attempt"])
    assert len(ok_attempts) == 1
    assert [attrs(s.attributes)["tollgate.attempt"] for s in retried] == [1, 2]
    assert [attrs(s.attributes)["http.response.status_code"] for s in retried] == [503, 503]
    assert all(s.status.code == trace_pb2.Status.STATUS_CODE_ERROR for s in retried)
    for s in attempts:
        assert s.trace_id.hex() == CALLER_TRACE
        assert s.parent_span_id.hex() in by_id
        assert s.start_time_unix_nano <= s.end_time_unix_nano

    # The upstream saw one traceparent per attempt, each naming that attempt's span.
    seen = [header(rec, "traceparent") for rec in upstream.requests]
    assert len(seen) == 3
    sent_ids = sorted(tp.split("-")[2] for tp in seen)
    assert sent_ids == sorted(s.span_id.hex() for s in attempts)
    assert all(tp.startswith(f"00-{CALLER_TRACE}-") and tp.endswith("-01") for tp in seen)
    assert header(upstream.requests[0], "tracestate") == "vendor=abc"

    # The resource and the collector header; the header's value never shows in the logs.
    assert received.resources[0]["service.name"] == "tollgate-e2e"
    assert received.metadata[0].get("x-collector-key") == "collector-secret"
    assert "collector-secret" not in gw.stderr_text()
    text = requests.get(f"{gw.admin_url}/metrics", timeout=5).text
    assert metric_value(text, "tollgate_trace_spans_exported_total") >= 5


def test_cache_and_queue_spans_are_children(gateway, upstream, receiver):
    protocol, endpoint, received = receiver
    apis = [{
        "name": "cached", "hosts": ["127.0.0.1"], "route": "/c", "upstream": upstream.base,
        "cache": {"ttl": "60s"},
        # A token bucket of one request per 2 s: the second request that reaches the limit
        # waits in its queue for the next token.
        "limits": [{"name": "tiny", "requests": 1, "per": "2s", "algorithm": "gcra", "burst": 1,
                    "on_limit": {"queue": "10s", "max_queue": 5}}],
    }]
    gw = gateway(base_config(apis=apis, telemetry=tracing(protocol, endpoint)),
                 env={"OTLP_KEY": "k"})
    # A miss (goes upstream, takes the token), then a hit from the cache (takes none); a third,
    # uncached request queues for the next token.
    # (/status/200 answers without Set-Cookie, so it is stored.)
    assert requests.get(f"{gw.proxy_url}/c/status/200", timeout=10).status_code == 200
    assert requests.get(f"{gw.proxy_url}/c/status/200", timeout=10).status_code == 200
    assert requests.get(f"{gw.proxy_url}/c/b", timeout=10).status_code == 200

    def complete(spans):
        return len([s for s in spans if s.kind == SERVER]) >= 3 and \
            any(s.name == "tollgate.queue_wait" for s in spans)
    spans = received.wait_for(complete)
    servers = {s.span_id: s for s in spans if s.kind == SERVER}
    lookups = [s for s in spans if s.name == "tollgate.cache_lookup"]
    assert sorted(attrs(s.attributes)["tollgate.cache.result"] for s in lookups) == ["hit", "miss", "miss"]
    for s in lookups + [s for s in spans if s.name == "tollgate.queue_wait"]:
        assert s.kind == INTERNAL
        assert s.parent_span_id in servers, "child spans hang off their request span"
        assert s.trace_id == servers[s.parent_span_id].trace_id
    q = next(s for s in spans if s.name == "tollgate.queue_wait")
    assert attrs(q.attributes)["tollgate.queue.result"] == "admitted"
    assert attrs(q.attributes)["tollgate.limit"] == "tiny"
    # No caller context: the request spans are roots of new traces.
    assert all(len(s.parent_span_id) == 0 for s in servers.values())
    hit = next(s for s in servers.values() if attrs(s.attributes).get("tollgate.cache") == "hit")
    assert not [s for s in spans if s.kind == CLIENT and s.parent_span_id == hit.span_id]


def test_sample_ratio_zero_records_nothing(gateway, upstream, receiver):
    protocol, endpoint, received = receiver
    apis = [{"name": "echo", "hosts": ["127.0.0.1"], "route": "/echo", "upstream": upstream.base}]
    gw = gateway(base_config(apis=apis, telemetry=tracing(protocol, endpoint, sample_ratio=0.0)),
                 env={"OTLP_KEY": "k"})
    for _ in range(5):
        assert requests.get(f"{gw.proxy_url}/echo/x", timeout=10).status_code == 200
    # An unsampled caller context is followed too, and travels upstream unchanged.
    unsampled = f"00-{CALLER_TRACE}-{CALLER_SPAN}-00"
    assert requests.get(f"{gw.proxy_url}/echo/y", headers={"traceparent": unsampled},
                        timeout=10).status_code == 200
    # A sampled caller context is followed (parent-based), so spans do flow on this connection.
    assert requests.get(f"{gw.proxy_url}/echo/z", headers={"traceparent": CALLER_TP},
                        timeout=10).status_code == 200
    spans = received.wait_for(lambda sp: any(s.kind == SERVER for s in sp))
    assert {s.trace_id.hex() for s in spans} == {CALLER_TRACE}, "only the sampled caller's trace"
    tps = [header(r, "traceparent") for r in upstream.requests]
    assert all(tp.endswith("-00") for tp in tps[:5]), "unsampled new traces say so upstream"
    assert tps[5] == unsampled


def test_receiver_down_requests_still_succeed(gateway, upstream, tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = s.getsockname()[1]
    s.close()
    apis = [{"name": "echo", "hosts": ["127.0.0.1"], "route": "/echo", "upstream": upstream.base}]
    gw = gateway(base_config(apis=apis, telemetry={"tracing": {
        "endpoint": f"http://127.0.0.1:{dead}", "protocol": "grpc", "batch_delay": "20ms",
        "timeout": "1s"}}))
    for _ in range(10):
        assert requests.get(f"{gw.proxy_url}/echo/x", timeout=10).status_code == 200

    def failed():
        text = requests.get(f"{gw.admin_url}/metrics", timeout=5).text
        return (metric_value(text, "tollgate_trace_exports_total", result="error") or 0) >= 1 and \
            (metric_value(text, "tollgate_trace_spans_dropped_total", reason="export_failed") or 0) >= 1
    assert wait_until(failed, timeout=10)
    # Logged once, not once per failure.
    warnings = [l for l in gw.stderr_json() if "span export failed" in str(l.get("fields", l))]
    assert len(warnings) == 1, warnings


def test_invalid_tracing_config_is_rejected(run_cli, tmp_path):
    cfg = tmp_path / "t.yaml"
    cfg.write_text("telemetry:\n  tracing:\n    endpoint: collector:4317\n    sample_ratio: 2\n")
    r = run_cli("validate", cfg)
    assert r.returncode == 1
    assert "telemetry.tracing.endpoint" in r.stdout + r.stderr
    assert "telemetry.tracing.sample_ratio" in r.stdout + r.stderr


def test_reload_turns_tracing_on_and_off(gateway, upstream, receiver):
    protocol, endpoint, received = receiver
    apis = [{"name": "echo", "hosts": ["127.0.0.1"], "route": "/echo", "upstream": upstream.base}]
    plain = base_config(apis=apis)
    gw = gateway(plain, env={"OTLP_KEY": "k"})
    assert requests.get(f"{gw.proxy_url}/echo/before", timeout=10).status_code == 200
    # Tracing off: the upstream still gets a (generated, sampled) traceparent, as always.
    assert header(upstream.requests[-1], "traceparent").endswith("-01")

    gw.write_config(base_config(apis=apis, telemetry=tracing(protocol, endpoint)))
    assert gw.reload().status_code == 200
    assert requests.get(f"{gw.proxy_url}/echo/on", timeout=10).status_code == 200
    spans = received.wait_for(lambda sp: any(s.kind == SERVER for s in sp))
    (server,) = [s for s in spans if s.kind == SERVER]
    (attempt,) = [s for s in spans if s.kind == CLIENT]
    assert header(upstream.requests[-1], "traceparent").split("-")[2] == attempt.span_id.hex()
    assert attempt.parent_span_id == server.span_id

    gw.write_config(plain)
    assert gw.reload().status_code == 200
    assert requests.get(f"{gw.proxy_url}/echo/off", timeout=10).status_code == 200
    text = requests.get(f"{gw.admin_url}/metrics", timeout=5).text
    # Give a (wrongly) still-running exporter its batch delay (50ms) several times over.
    time.sleep(0.5)
    assert len([s for s in received.snapshot() if s.kind == SERVER]) == 1
    assert metric_value(text, "tollgate_trace_spans_dropped_total", reason="queue_full") == 0


def test_shutdown_flushes_queued_spans(gateway, upstream, receiver):
    protocol, endpoint, received = receiver
    apis = [{"name": "echo", "hosts": ["127.0.0.1"], "route": "/echo", "upstream": upstream.base}]
    # A batch delay far beyond the test: only the shutdown flush can send these spans.
    gw = gateway(base_config(apis=apis, telemetry=tracing(protocol, endpoint, batch_delay="1h")),
                 env={"OTLP_KEY": "k"})
    assert requests.get(f"{gw.proxy_url}/echo/last", timeout=10).status_code == 200
    assert received.snapshot() == []
    assert gw.terminate() == 0
    spans = received.snapshot()
    assert [s.kind for s in spans if s.kind == SERVER] == [SERVER]
    assert len([s for s in spans if s.kind == CLIENT]) == 1
