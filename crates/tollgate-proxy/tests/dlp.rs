//! Data-loss protection and body size limits through the proxy, against a
//! real upstream on an ephemeral loopback port: block (403, the upstream is
//! never hit), redact (the upstream receives the masked body with a correct
//! Content-Length), report, compressed bodies, forms, oversize behaviour,
//! untouched streaming of bodies that need no scan, response scanning, and
//! request/response body limits.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/harness.rs"]
mod harness;

use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use harness::{Proxy, RawResponse, raw, read_to_close};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

const CARD: &str = "4111111111111111";
const CARD_JSON: &str = r#"{"card":"4111111111111111","email":"jane@corp.example"}"#;

/// The upstream: records each request (method, headers, raw body) and answers by path.
/// `/echo`: 200 JSON `{"ok":true}`; `/card`: [`CARD_JSON`]; `/card.gz`: the same gzipped;
/// `/fixed/<n>`: n bytes with Content-Length; `/chunked/<n>`: n bytes, chunked.
struct Up {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<(http::request::Parts, Bytes)>>>,
    hits: Arc<AtomicUsize>,
}

impl Up {
    fn last(&self) -> (http::request::Parts, Bytes) {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("upstream saw no request")
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

fn brotli(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
        w.write_all(data).unwrap();
    }
    out
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

async fn answer(
    req: Request<Incoming>,
    seen: Arc<Mutex<Vec<(http::request::Parts, Bytes)>>>,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let path = parts.uri.path().to_owned();
    seen.lock().unwrap().push((parts, body));
    let json = |b: Body| {
        let mut r = Response::new(b);
        r.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        r
    };
    if path == "/card" {
        return json(full(CARD_JSON));
    }
    if path == "/card.gz" {
        let mut r = json(full(gzip(CARD_JSON.as_bytes())));
        r.headers_mut()
            .insert("content-encoding", "gzip".parse().unwrap());
        return r;
    }
    if let Some(n) = path.strip_prefix("/fixed/") {
        let n: usize = n.parse().unwrap();
        return json(full(vec![b'a'; n]));
    }
    if let Some(n) = path.strip_prefix("/chunked/") {
        let n: usize = n.parse().unwrap();
        let chunks: Vec<Result<Frame<Bytes>, Infallible>> = (0..n)
            .step_by(1000)
            .map(|i| Ok(Frame::data(Bytes::from(vec![b'a'; 1000.min(n - i)]))))
            .collect();
        let body = StreamBody::new(futures_util::stream::iter(chunks)).boxed();
        let mut r = Response::new(body);
        r.headers_mut()
            .insert("content-type", "text/plain".parse().unwrap());
        return r;
    }
    json(full(r#"{"ok":true}"#))
}

async fn upstream() -> Up {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<(http::request::Parts, Bytes)>>> = Arc::default();
    let hits: Arc<AtomicUsize> = Arc::default();
    let (seen2, hits2) = (seen.clone(), hits.clone());
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            let (seen, hits) = (seen2.clone(), hits2.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    hits.fetch_add(1, Ordering::SeqCst);
                    let seen = seen.clone();
                    async move { Ok::<_, Infallible>(answer(req, seen).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Up { addr, seen, hits }
}

/// A proxy with one API `a` for 127.0.0.1 and the given extra API keys (indented YAML lines).
async fn gateway_with(api_extra: &str) -> Proxy {
    Proxy::start(&format!(
        "apis:\n  - name: a\n    hosts: [\"127.0.0.1\"]\n{api_extra}"
    ))
    .await
}

fn post(up: SocketAddr, path: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST http://{up}{path} HTTP/1.1\r\nHost: x\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

fn get(up: SocketAddr, path: &str) -> Vec<u8> {
    format!("GET http://{up}{path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").into_bytes()
}

const JSON: &str = "Content-Type: application/json\r\n";

fn metric(proxy: &Proxy, needle: &str) -> Option<f64> {
    let text = proxy.gateway.metrics.encode();
    text.lines()
        .find(|l| l.starts_with(needle))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn text(r: &RawResponse) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

#[tokio::test]
async fn block_answers_403_naming_the_detector_and_the_upstream_is_never_hit() {
    let up = upstream().await;
    let proxy = gateway_with("    dlp: { detectors: { card: block, email: report } }\n").await;
    let resp = raw(
        proxy.addr,
        &post(up.addr, "/echo", JSON, CARD_JSON.as_bytes()),
    )
    .await;
    assert_eq!(resp.status, 403, "{}", text(&resp));
    assert_eq!(resp.header("tollgate-error"), Some("dlp_blocked"));
    let body = resp.json();
    assert_eq!(body["code"], "dlp_blocked");
    assert!(body["detail"].as_str().unwrap().contains("`card`"));
    assert!(!text(&resp).contains(CARD) && !text(&resp).contains("jane@"));
    assert_eq!(up.hits.load(Ordering::SeqCst), 0);
    let log = proxy.wait_log(1).await;
    assert_eq!(log[0]["dlp"], "card:1,email:1");
    assert_eq!(log[0]["reason"], "dlp_blocked");
    assert_eq!(log[0]["decision"], "deny");
    let line = serde_json::to_string(&log[0]).unwrap();
    assert!(
        !line.contains(CARD),
        "the log must not carry the data: {line}"
    );
    assert_eq!(
        metric(
            &proxy,
            r#"tollgate_dlp_findings_total{api="a",detector="card",action="block"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &proxy,
            r#"tollgate_dlp_findings_total{api="a",detector="email",action="report"}"#
        ),
        Some(1.0)
    );
    // A clean body passes.
    let ok = raw(
        proxy.addr,
        &post(up.addr, "/echo", JSON, br#"{"q":"hello"}"#),
    )
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(up.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn redact_masks_the_body_upstream_with_a_correct_content_length() {
    let up = upstream().await;
    let proxy = gateway_with("    dlp: { detectors: { card: redact, email: redact } }\n").await;
    let resp = raw(
        proxy.addr,
        &post(up.addr, "/echo", JSON, CARD_JSON.as_bytes()),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", text(&resp));
    let (parts, body) = up.last();
    let want = r#"{"card":"[REDACTED:card]","email":"[REDACTED:email]"}"#;
    assert_eq!(std::str::from_utf8(&body).unwrap(), want);
    assert_eq!(
        parts.headers["content-length"].to_str().unwrap(),
        want.len().to_string()
    );
    let log = proxy.wait_log(1).await;
    assert_eq!(log[0]["dlp"], "card:1,email:1");
    assert_eq!(log[0]["decision"], "allow");
}

#[tokio::test]
async fn report_passes_the_body_unchanged_and_logs_it() {
    let up = upstream().await;
    let proxy = gateway_with("    dlp: { detectors: { card: report, ssn: report } }\n").await;
    let body = br#"{"a":"4111 1111 1111 1111","b":"4111 1111 1111 1111","s":"123-45-6789"}"#;
    let resp = raw(proxy.addr, &post(up.addr, "/echo", JSON, body)).await;
    assert_eq!(resp.status, 200);
    assert_eq!(&up.last().1[..], &body[..]);
    let log = proxy.wait_log(1).await;
    assert_eq!(log[0]["dlp"], "card:2,ssn:1");
    assert_eq!(
        metric(
            &proxy,
            r#"tollgate_dlp_findings_total{api="a",detector="card",action="report"}"#
        ),
        Some(2.0)
    );
}

#[tokio::test]
async fn api_report_mode_turns_block_into_report() {
    let up = upstream().await;
    let proxy = gateway_with("    mode: report\n    dlp: { detectors: { card: block } }\n").await;
    let resp = raw(
        proxy.addr,
        &post(up.addr, "/echo", JSON, CARD_JSON.as_bytes()),
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(&up.last().1[..], CARD_JSON.as_bytes());
    let log = proxy.wait_log(1).await;
    assert_eq!(log[0]["dlp"], "card:1");
    assert_eq!(log[0]["decision"], "report");
    assert_eq!(log[0]["reason"], "dlp_blocked");
    assert_eq!(
        metric(
            &proxy,
            r#"tollgate_dlp_findings_total{api="a",detector="card",action="report"}"#
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn compressed_bodies_are_decoded_for_the_scan() {
    let up = upstream().await;
    let proxy = gateway_with("    dlp: { detectors: { card: block, email: redact } }\n").await;
    // gzip with a card: blocked.
    let gz = gzip(CARD_JSON.as_bytes());
    let resp = raw(
        proxy.addr,
        &post(
            up.addr,
            "/echo",
            &format!("{JSON}Content-Encoding: gzip\r\n"),
            &gz,
        ),
    )
    .await;
    assert_eq!(resp.status, 403);
    assert_eq!(up.hits.load(Ordering::SeqCst), 0);
    // brotli with only an e-mail: redacted and sent decoded, Content-Encoding dropped.
    let plain = br#"{"to":"jane@corp.example","n":1}"#;
    let br = brotli(plain);
    let resp = raw(
        proxy.addr,
        &post(
            up.addr,
            "/echo",
            &format!("{JSON}Content-Encoding: br\r\n"),
            &br,
        ),
    )
    .await;
    assert_eq!(resp.status, 200);
    let (parts, body) = up.last();
    assert_eq!(&body[..], br#"{"to":"[REDACTED:email]","n":1}"#);
    assert!(parts.headers.get("content-encoding").is_none());
    assert_eq!(
        parts.headers["content-length"],
        body.len().to_string().as_str()
    );
    // gzip with nothing found: forwarded byte for byte, still compressed.
    let clean = gzip(br#"{"n":2}"#);
    let resp = raw(
        proxy.addr,
        &post(
            up.addr,
            "/echo",
            &format!("{JSON}Content-Encoding: gzip\r\n"),
            &clean,
        ),
    )
    .await;
    assert_eq!(resp.status, 200);
    let (parts, body) = up.last();
    assert_eq!(&body[..], &clean[..]);
    assert_eq!(parts.headers["content-encoding"], "gzip");
    // A body that does not decode: 400, not forwarded unscanned.
    let hits = up.hits.load(Ordering::SeqCst);
    let resp = raw(
        proxy.addr,
        &post(
            up.addr,
            "/echo",
            &format!("{JSON}Content-Encoding: gzip\r\n"),
            b"not gzip",
        ),
    )
    .await;
    assert_eq!(resp.status, 400);
    assert_eq!(up.hits.load(Ordering::SeqCst), hits);
}

#[tokio::test]
async fn form_bodies_are_decoded_and_reencoded() {
    let up = upstream().await;
    let proxy = gateway_with("    dlp: { detectors: { email: redact } }\n").await;
    let form = b"user=jane&mail=jane%40corp.example&x=1";
    let resp = raw(
        proxy.addr,
        &post(
            up.addr,
            "/echo",
            "Content-Type: application/x-www-form-urlencoded\r\n",
            form,
        ),
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        &up.last().1[..],
        b"user=jane&mail=%5BREDACTED%3Aemail%5D&x=1"
    );
}

#[tokio::test]
async fn oversize_bodies_follow_on_oversize() {
    let up = upstream().await;
    let big = format!(r#"{{"pad":"{}","card":"{CARD}"}}"#, "x".repeat(4000));
    // block: 403 naming `oversize`, nothing sent.
    let proxy = gateway_with(
        "    dlp: { detectors: { card: block }, max_scan: 1KiB, on_oversize: block }\n",
    )
    .await;
    let resp = raw(proxy.addr, &post(up.addr, "/echo", JSON, big.as_bytes())).await;
    assert_eq!(resp.status, 403);
    assert!(
        resp.json()["detail"]
            .as_str()
            .unwrap()
            .contains("`oversize`")
    );
    assert_eq!(up.hits.load(Ordering::SeqCst), 0);
    // The same without Content-Length (chunked): the scan gives up at max_scan.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let head = format!(
        "POST http://{}/echo HTTP/1.1\r\nHost: x\r\n{JSON}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        up.addr
    );
    s.write_all(head.as_bytes()).await.unwrap();
    for part in big.as_bytes().chunks(500) {
        s.write_all(format!("{:x}\r\n", part.len()).as_bytes())
            .await
            .unwrap();
        s.write_all(part).await.unwrap();
        s.write_all(b"\r\n").await.unwrap();
    }
    s.write_all(b"0\r\n\r\n").await.unwrap();
    let resp = harness::read_response(&mut s, false).await;
    assert_eq!(resp.status, 403);
    assert_eq!(up.hits.load(Ordering::SeqCst), 0);

    // report: forwarded unscanned, byte for byte, and logged.
    let proxy = gateway_with(
        "    dlp: { detectors: { card: block }, max_scan: 1KiB, on_oversize: report }\n",
    )
    .await;
    let resp = raw(proxy.addr, &post(up.addr, "/echo", JSON, big.as_bytes())).await;
    assert_eq!(resp.status, 200);
    assert_eq!(&up.last().1[..], big.as_bytes());
    assert_eq!(proxy.wait_log(1).await[0]["dlp"], "oversize:1");
    // allow (default): forwarded, nothing logged.
    let proxy = gateway_with("    dlp: { detectors: { card: block }, max_scan: 1KiB }\n").await;
    let resp = raw(proxy.addr, &post(up.addr, "/echo", JSON, big.as_bytes())).await;
    assert_eq!(resp.status, 200);
    assert_eq!(&up.last().1[..], big.as_bytes());
    assert!(proxy.wait_log(1).await[0]["dlp"].is_null());
}

#[tokio::test]
async fn bodies_that_need_no_scan_stream_untouched() {
    let up = upstream().await;
    let proxy = gateway_with("    dlp: { detectors: { card: block }, max_scan: 1KiB }\n").await;
    // 3 MiB of octet-stream, chunked, with card numbers inside: not a scanned type.
    let mut body = Vec::new();
    let mut i = 0u32;
    while body.len() < 3 << 20 {
        body.extend_from_slice(format!("{CARD} line {i} ").as_bytes());
        i += 1;
    }
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let head = format!(
        "POST http://{}/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        up.addr
    );
    s.write_all(head.as_bytes()).await.unwrap();
    for part in body.chunks(64 * 1024) {
        s.write_all(format!("{:x}\r\n", part.len()).as_bytes())
            .await
            .unwrap();
        s.write_all(part).await.unwrap();
        s.write_all(b"\r\n").await.unwrap();
    }
    s.write_all(b"0\r\n\r\n").await.unwrap();
    let resp = harness::read_response(&mut s, false).await;
    assert_eq!(resp.status, 200);
    let (parts, got) = up.last();
    assert_eq!(got.len(), body.len());
    assert!(got[..] == body[..], "the body must arrive byte-identical");
    assert!(
        parts.headers.get("content-length").is_none(),
        "still streamed (chunked)"
    );
    assert!(proxy.wait_log(1).await[0]["dlp"].is_null());
    // An API without dlp streams JSON untouched too.
    let plain = Proxy::start("apis:\n  - name: b\n    hosts: [\"127.0.0.1\"]\n").await;
    let resp = raw(
        plain.addr,
        &post(up.addr, "/echo", JSON, CARD_JSON.as_bytes()),
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(&up.last().1[..], CARD_JSON.as_bytes());
}

#[tokio::test]
async fn responses_are_scanned_when_configured() {
    let up = upstream().await;
    let proxy =
        gateway_with("    dlp: { scan: [response], detectors: { card: redact, email: report } }\n")
            .await;
    // Request bodies are not scanned under scan: [response].
    let resp = raw(
        proxy.addr,
        &post(up.addr, "/echo", JSON, CARD_JSON.as_bytes()),
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(&up.last().1[..], CARD_JSON.as_bytes());
    // The response is redacted with a correct Content-Length.
    let resp = raw(proxy.addr, &get(up.addr, "/card")).await;
    assert_eq!(resp.status, 200);
    let want = r#"{"card":"[REDACTED:card]","email":"jane@corp.example"}"#;
    assert_eq!(text(&resp), want);
    assert_eq!(
        resp.header("content-length"),
        Some(want.len().to_string().as_str())
    );
    // A gzipped response: decoded, redacted, sent without Content-Encoding.
    let resp = raw(proxy.addr, &get(up.addr, "/card.gz")).await;
    assert_eq!(resp.status, 200);
    assert_eq!(text(&resp), want);
    assert!(resp.header("content-encoding").is_none());
    let log = proxy.wait_log(3).await;
    assert_eq!(log[1]["dlp"], "card:1,email:1");

    let blocking = proxy_block().await;
    let resp = raw(blocking.addr, &get(up.addr, "/card")).await;
    assert_eq!(resp.status, 403);
    assert_eq!(resp.header("tollgate-error"), Some("dlp_blocked"));
    assert!(!text(&resp).contains(CARD));
    assert!(resp.json()["detail"].as_str().unwrap().contains("response"));
}

async fn proxy_block() -> Proxy {
    gateway_with("    dlp: { scan: [request, response], detectors: { card: block } }\n").await
}

#[tokio::test]
async fn request_body_limit_answers_413() {
    let up = upstream().await;
    let proxy = gateway_with("    body_limits: { request: 1KiB }\n").await;
    // Declared too large: refused before anything is sent.
    let resp = raw(proxy.addr, &post(up.addr, "/echo", JSON, &[b'x'; 2000])).await;
    assert_eq!(resp.status, 413);
    assert_eq!(resp.header("tollgate-error"), Some("request_too_large"));
    assert_eq!(up.hits.load(Ordering::SeqCst), 0);
    // At the limit: fine.
    let resp = raw(proxy.addr, &post(up.addr, "/echo", JSON, &[b'x'; 1024])).await;
    assert_eq!(resp.status, 200);
    // Chunked, found too large while streaming: 413 as well.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let head = format!(
        "POST http://{}/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        up.addr
    );
    s.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..4 {
        s.write_all(b"200\r\n").await.unwrap();
        s.write_all(&[b'y'; 0x200]).await.unwrap();
        s.write_all(b"\r\n").await.unwrap();
    }
    s.write_all(b"0\r\n\r\n").await.unwrap();
    let resp = harness::read_response(&mut s, false).await;
    assert_eq!(resp.status, 413, "{}", text(&resp));
    assert_eq!(resp.header("tollgate-error"), Some("request_too_large"));
    // The upstream never received a complete over-limit body.
    assert!(up.seen.lock().unwrap().iter().all(|(_, b)| b.len() <= 1024));
    assert_eq!(
        metric(
            &proxy,
            r#"tollgate_body_limit_exceeded_total{api="a",direction="request"}"#
        ),
        Some(2.0)
    );
}

#[tokio::test]
async fn response_body_limit_refuses_or_cuts() {
    let up = upstream().await;
    let proxy = gateway_with("    body_limits: { response: 10KiB }\n").await;
    // Content-Length over the limit: 502 before anything is streamed.
    let resp = raw(proxy.addr, &get(up.addr, "/fixed/20000")).await;
    assert_eq!(resp.status, 502);
    assert_eq!(resp.header("tollgate-error"), Some("response_too_large"));
    // Within the limit: passes.
    let resp = raw(proxy.addr, &get(up.addr, "/fixed/10240")).await;
    assert_eq!((resp.status, resp.body.len()), (200, 10240));
    // Chunked over the limit: at most the limit is passed, then the connection closes
    // without the terminating chunk.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(&get(up.addr, "/chunked/50000")).await.unwrap();
    let all = read_to_close(&mut s).await;
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "the cut body must not look complete"
    );
    let head_end = text.find("\r\n\r\n").unwrap() + 4;
    // Hyper may drop the last buffered frame when it aborts; never more than the limit.
    let body: usize = text[head_end..].matches('a').count();
    assert!(body > 0 && body <= 10240, "{body} bytes passed");
    let log = proxy.wait_log(3).await;
    let cut = log
        .iter()
        .find(|l| l["path"].as_str().unwrap().contains("/chunked/"))
        .unwrap();
    assert_eq!(cut["reason"], "response_too_large");
    assert_eq!(cut["bytes_out"], 10240);
    assert_eq!(
        metric(
            &proxy,
            r#"tollgate_body_limit_exceeded_total{api="a",direction="response"}"#
        ),
        Some(2.0)
    );
}

#[tokio::test]
async fn a_scanned_body_is_replayed_on_retry() {
    // An upstream that fails the first attempt with 503, then records.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Bytes>>> = Arc::default();
    let n = Arc::new(AtomicUsize::new(0));
    let (seen2, n2) = (seen.clone(), n.clone());
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            let (seen, n) = (seen2.clone(), n2.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (seen, n) = (seen.clone(), n.clone());
                    async move {
                        let b = req.into_body().collect().await.unwrap().to_bytes();
                        seen.lock().unwrap().push(b);
                        let status = if n.fetch_add(1, Ordering::SeqCst) == 0 {
                            503
                        } else {
                            200
                        };
                        let mut r = Response::new(Full::new(Bytes::from_static(b"{}")));
                        *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    let proxy = gateway_with(
        "    retry: { attempts: 2, on: [503], backoff: 1ms..2ms, non_idempotent: true }\n    dlp: { detectors: { email: redact } }\n",
    )
    .await;
    let resp = raw(
        proxy.addr,
        &post(addr, "/x", JSON, br#"{"to":"jane@corp.example"}"#),
    )
    .await;
    assert_eq!(resp.status, 200);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    for b in seen.iter() {
        assert_eq!(&b[..], br#"{"to":"[REDACTED:email]"}"#);
    }
}

#[tokio::test]
async fn a_consumer_profile_and_limits_override_the_apis() {
    let up = upstream().await;
    let proxy = Proxy::start(
        "consumers:
  - name: vendor
    identify: { header: { name: x-c, value: vendor } }
    dlp: { detectors: { email: block } }
    body_limits: { request: 100B }
apis:
  - name: a
    hosts: [\"127.0.0.1\"]
    dlp: { detectors: { card: report } }
    body_limits: { request: 1KiB }
",
    )
    .await;
    let vendor = format!("{JSON}x-c: vendor\r\n");
    // The vendor's profile replaces the API's: e-mail blocks, a card is not looked at.
    let resp = raw(
        proxy.addr,
        &post(up.addr, "/echo", &vendor, br#"{"to":"jane@corp.example"}"#),
    )
    .await;
    assert_eq!(resp.status, 403);
    let resp = raw(
        proxy.addr,
        &post(up.addr, "/echo", &vendor, br#"{"c":"4111111111111111"}"#),
    )
    .await;
    assert_eq!(resp.status, 200);
    // Everyone else gets the API's profile.
    let resp = raw(
        proxy.addr,
        &post(up.addr, "/echo", JSON, br#"{"to":"jane@corp.example"}"#),
    )
    .await;
    assert_eq!(resp.status, 200);
    // The stricter limit applies to the vendor only.
    let body = [b'x'; 500];
    let resp = raw(
        proxy.addr,
        &post(up.addr, "/echo", "x-c: vendor\r\n", &body),
    )
    .await;
    assert_eq!(resp.status, 413);
    let resp = raw(proxy.addr, &post(up.addr, "/echo", "", &body)).await;
    assert_eq!(resp.status, 200);
    let log = proxy.wait_log(5).await;
    assert_eq!(log[1]["dlp"], serde_json::Value::Null);
    assert_eq!(log[1]["consumer"], "vendor");
}
