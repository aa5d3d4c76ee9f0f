//! The exporter against real loopback collectors (HTTP/1.1 and HTTP/2 h2c servers).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tollgate_config::{OtlpProtocol, SecretRef, Tracing};

use super::*;

/// What the test collector received: (path, content-type, x-api-key, body).
type Seen = Arc<Mutex<Vec<(String, String, String, Bytes)>>>;

async fn collector(grpc_status: &'static str) -> (u16, Seen) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let seen: Seen = Arc::default();
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                return;
            };
            let s = s.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let s = s.clone();
                    async move {
                        let h = |n: &str| {
                            req.headers()
                                .get(n)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_owned()
                        };
                        let (path, ct, key) = (
                            req.uri().path().to_owned(),
                            h("content-type"),
                            h("x-api-key"),
                        );
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        s.lock().unwrap().push((path, ct, key, body));
                        Ok::<_, std::convert::Infallible>(
                            Response::builder()
                                .header("content-type", "application/grpc")
                                .header("grpc-status", grpc_status)
                                .body(Full::new(Bytes::new()))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (port, seen)
}

fn config(port: u16, protocol: OtlpProtocol) -> Tracing {
    let mut headers = BTreeMap::new();
    headers.insert("x-api-key".to_owned(), SecretRef::Literal("k1".into()));
    Tracing {
        endpoint: format!("http://127.0.0.1:{port}"),
        protocol,
        sample_ratio: 1.0,
        parent_based: true,
        service_name: "svc-test".into(),
        headers,
        timeout: tollgate_config::Duration::from_secs(5),
        queue_size: 16,
        batch_size: 4,
        batch_delay: tollgate_config::Duration::from_millis(20),
    }
}

fn sampled(t: &Arc<Tracer>) -> Box<RequestSpan> {
    match t.request(&HeaderMap::new()) {
        Decision::Sampled(s) => s,
        Decision::NotSampled(_) => panic!("ratio 1.0 samples every request"),
    }
}

fn end() -> RequestEnd<'static> {
    RequestEnd {
        kind: "route",
        method: "GET",
        api: Some("github"),
        consumer: None,
        status: 200,
        decision: "allow",
        reason: None,
        request_id: "r1",
        attempts: 1,
        cache: None,
    }
}

async fn wait_for(seen: &Seen, n: usize) -> Vec<(String, String, String, Bytes)> {
    for _ in 0..500 {
        if seen.lock().unwrap().len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    seen.lock().unwrap().clone()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn exports_over_http_protobuf() {
    let (port, seen) = collector("0").await;
    let metrics = Arc::new(Metrics::new());
    let t = Tracer::start(&config(port, OtlpProtocol::Http), metrics.clone()).unwrap();
    let span = sampled(&t);
    let id = span.span_id();
    span.finish(&end());
    let got = wait_for(&seen, 1).await;
    assert_eq!(got.len(), 1);
    let (path, ct, key, body) = &got[0];
    assert_eq!(path, "/v1/traces");
    assert_eq!(ct, "application/x-protobuf");
    assert_eq!(key, "k1");
    assert!(contains(body, &id), "the span ID is in the message");
    assert!(contains(body, b"svc-test"));
    for _ in 0..100 {
        if metrics
            .encode()
            .contains("tollgate_trace_spans_exported_total 1")
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("exported counter did not move: {}", metrics.encode());
}

#[tokio::test]
async fn exports_over_grpc_with_framing() {
    let (port, seen) = collector("0").await;
    let t = Tracer::start(&config(port, OtlpProtocol::Grpc), Arc::new(Metrics::new())).unwrap();
    sampled(&t).finish(&end());
    let got = wait_for(&seen, 1).await;
    let (path, ct, _, body) = &got[0];
    assert_eq!(
        path,
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
    );
    assert_eq!(ct, "application/grpc");
    assert_eq!(body[0], 0, "uncompressed");
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    assert_eq!(len, body.len() - 5);
}

#[tokio::test]
async fn grpc_error_status_and_unreachable_collector_are_counted() {
    let (port, seen) = collector("14").await;
    let metrics = Arc::new(Metrics::new());
    let t = Tracer::start(&config(port, OtlpProtocol::Grpc), metrics.clone()).unwrap();
    sampled(&t).finish(&end());
    wait_for(&seen, 1).await;
    // A closed port: connect fails.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let t2 = Tracer::start(&config(closed_port, OtlpProtocol::Http), metrics.clone()).unwrap();
    sampled(&t2).finish(&end());
    for _ in 0..300 {
        let text = metrics.encode();
        if text.contains("tollgate_trace_exports_total{result=\"error\"} 2")
            && text.contains("tollgate_trace_spans_dropped_total{reason=\"export_failed\"} 2")
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("failures not counted: {}", metrics.encode());
}

#[tokio::test]
async fn a_full_queue_drops_and_counts() {
    let metrics = Arc::new(Metrics::new());
    // Nothing listens on port 9 of loopback in the test environment; a tiny queue fills
    // while the exporter waits on its first batch.
    let mut cfg = config(9, OtlpProtocol::Http);
    cfg.queue_size = 1;
    cfg.batch_size = 1;
    cfg.batch_delay = tollgate_config::Duration::from_secs(60);
    let t = Tracer::start(&cfg, metrics.clone()).unwrap();
    for _ in 0..50 {
        sampled(&t).finish(&end());
    }
    let text = metrics.encode();
    let line = text
        .lines()
        .find(|l| l.starts_with("tollgate_trace_spans_dropped_total{reason=\"queue_full\"}"))
        .unwrap();
    let n: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 48, "{line}");
}

#[test]
fn not_sampled_requests_get_an_unsampled_traceparent() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _g = rt.enter();
    let mut cfg = config(9, OtlpProtocol::Http);
    cfg.sample_ratio = 0.0;
    let t = Tracer::start(&cfg, Arc::new(Metrics::new())).unwrap();
    match t.request(&HeaderMap::new()) {
        Decision::NotSampled(Some(v)) => {
            let (_, _, flags) = context::parse_traceparent(v.as_bytes()).unwrap();
            assert_eq!(flags, 0);
        }
        _ => panic!("ratio 0 samples nothing"),
    }
    let mut h = HeaderMap::new();
    h.insert(
        &TRACEPARENT,
        http::HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    );
    // Parent-based: the caller's sampled flag wins over the ratio.
    match t.request(&h) {
        Decision::Sampled(s) => assert_eq!(
            context::hex(&s.trace_id()),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        ),
        Decision::NotSampled(_) => panic!("a sampled parent is followed"),
    }
}

#[tokio::test]
async fn flush_sends_what_is_queued_at_once() {
    let (port, seen) = collector("0").await;
    let mut cfg = config(port, OtlpProtocol::Http);
    // Without a flush these would wait a minute for their batch.
    cfg.batch_delay = tollgate_config::Duration::from_secs(60);
    cfg.batch_size = 2;
    let t = Tracer::start(&cfg, Arc::new(Metrics::new())).unwrap();
    for _ in 0..3 {
        sampled(&t).finish(&end());
    }
    assert!(t.flush(Duration::from_secs(10)).await);
    let got = seen.lock().unwrap().len();
    assert_eq!(got, 2, "three spans in batches of two");
}
