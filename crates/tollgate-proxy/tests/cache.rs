//! The response cache end to end: a real origin on an ephemeral loopback port
//! that counts requests and answers with scripted Cache-Control / ETag / Vary,
//! reached through a route of the proxy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/harness.rs"]
mod harness;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use harness::{Proxy, RawResponse, raw};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// One scripted answer of the origin.
#[derive(Clone)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    delay: Duration,
}

fn reply(headers: &[(&'static str, &str)], body: &str) -> Reply {
    Reply {
        status: 200,
        headers: headers.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        body: body.as_bytes().to_vec(),
        delay: Duration::ZERO,
    }
}

/// An origin that counts requests per path and answers from a script; a request
/// whose `If-None-Match` equals the scripted `ETag` gets 304.
struct Origin {
    addr: SocketAddr,
    count: Arc<AtomicUsize>,
    replies: Arc<Mutex<HashMap<String, Reply>>>,
    seen: Arc<Mutex<Vec<http::HeaderMap>>>,
    tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Origin {
    async fn start() -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let replies: Arc<Mutex<HashMap<String, Reply>>> = Arc::default();
        let seen: Arc<Mutex<Vec<http::HeaderMap>>> = Arc::default();
        let tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (c, r, s, t) = (count.clone(), replies.clone(), seen.clone(), tasks.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let (c, r, s) = (c.clone(), r.clone(), s.clone());
                let conn = tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (c, r, s) = (c.clone(), r.clone(), s.clone());
                        async move { Ok::<_, Infallible>(answer(req, &c, &r, &s).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(sock), svc)
                        .await;
                });
                t.lock().unwrap().push(conn.abort_handle());
            }
        });
        tasks.lock().unwrap().push(accept.abort_handle());
        Origin {
            addr,
            count,
            replies,
            seen,
            tasks,
        }
    }

    fn set(&self, path: &str, r: Reply) {
        self.replies.lock().unwrap().insert(path.to_owned(), r);
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Closes the listener and every connection: the origin is down.
    fn stop(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

async fn answer(
    req: Request<Incoming>,
    count: &AtomicUsize,
    replies: &Mutex<HashMap<String, Reply>>,
    seen: &Mutex<Vec<http::HeaderMap>>,
) -> Response<Full<Bytes>> {
    count.fetch_add(1, Ordering::SeqCst);
    seen.lock().unwrap().push(req.headers().clone());
    let r = replies
        .lock()
        .unwrap()
        .get(req.uri().path())
        .cloned()
        .unwrap_or_else(|| reply(&[], "default"));
    if !r.delay.is_zero() {
        tokio::time::sleep(r.delay).await;
    }
    let etag = r.headers.iter().find(|(k, _)| *k == "etag").map(|(_, v)| v);
    let inm = req
        .headers()
        .get("if-none-match")
        .and_then(|v| v.to_str().ok());
    let not_modified = etag.is_some() && etag.map(String::as_str) == inm;
    let mut b = Response::builder().status(if not_modified { 304 } else { r.status });
    for (k, v) in &r.headers {
        b = b.header(*k, v.as_str());
    }
    let body = if not_modified { Vec::new() } else { r.body };
    b.body(Full::new(Bytes::from(body))).unwrap()
}

fn config(origin: &Origin, cache: &str) -> String {
    config_limited(origin, cache, 1000)
}

fn config_limited(origin: &Origin, cache: &str, per_hour: u32) -> String {
    format!(
        "consumers:
  - {{ name: alice, identify: {{ header: {{ name: x-team, value: alice }} }} }}
  - {{ name: bob, identify: {{ header: {{ name: x-team, value: bob }} }} }}
apis:
  - name: origin
    route: /o
    upstream: http://{}
    limits: [{{ name: hourly, requests: {per_hour}, per: 1h }}]
    cache: {cache}
",
        origin.addr
    )
}

async fn get(p: &Proxy, path: &str, extra: &str) -> RawResponse {
    let req = format!(
        "GET /o{path} HTTP/1.1\r\nHost: gw\r\nx-team: alice\r\n{extra}Connection: close\r\n\r\n"
    );
    raw(p.addr, req.as_bytes()).await
}

fn cache_status(r: &RawResponse) -> &str {
    r.header("cache-status").unwrap_or("")
}

fn metric(p: &Proxy, prefix: &str) -> Option<f64> {
    p.gateway
        .metrics
        .encode()
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn fresh_response_is_served_from_memory_then_expires() {
    let o = Origin::start().await;
    o.set("/fresh", reply(&[("cache-control", "max-age=1")], "one"));
    let p = Proxy::start(&config(&o, "{}")).await;
    let a = get(&p, "/fresh", "").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body, b"one");
    assert_eq!(cache_status(&a), "tollgate; fwd=miss; stored");
    let b = get(&p, "/fresh", "").await;
    assert_eq!(b.status, 200);
    assert_eq!(b.body, b"one");
    assert_eq!(cache_status(&b), "tollgate; hit");
    assert!(b.header("age").is_some(), "a hit carries Age");
    assert_eq!(o.count(), 1, "the hit never reached the origin");
    // After max-age the stored response is stale and, without validators, fetched again.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    o.set("/fresh", reply(&[("cache-control", "max-age=60")], "two"));
    let c = get(&p, "/fresh", "").await;
    assert_eq!(c.body, b"two");
    assert_eq!(o.count(), 2);
    let lines = p.wait_log(3).await;
    let results: Vec<_> = lines.iter().map(|l| l["cache"].clone()).collect();
    assert_eq!(results, ["miss", "hit", "miss"]);
    assert_eq!(
        metric(
            &p,
            "tollgate_cache_lookups_total{api=\"origin\",result=\"hit\"}"
        ),
        Some(1.0)
    );
    assert!(metric(&p, "tollgate_cache_bytes").unwrap() > 0.0);
    assert_eq!(metric(&p, "tollgate_cache_entries"), Some(1.0));
}

#[tokio::test]
async fn a_hit_consumes_no_limit_quota() {
    let o = Origin::start().await;
    o.set("/q", reply(&[("cache-control", "max-age=60")], "q"));
    let p = Proxy::start(&config_limited(&o, "{}", 3)).await;
    // The limit allows 3 per hour: the first request takes one, ten hits take none.
    for _ in 0..10 {
        assert_eq!(get(&p, "/q", "").await.status, 200);
    }
    assert_eq!(o.count(), 1);
    // Two more distinct URLs still fit in the quota; a fourth does not.
    assert_eq!(get(&p, "/q2", "").await.status, 200);
    assert_eq!(get(&p, "/q3", "").await.status, 200);
    assert_eq!(get(&p, "/q4", "").await.status, 429);
}

#[tokio::test]
async fn revalidation_with_304_answers_200_from_cache() {
    let o = Origin::start().await;
    o.set(
        "/etag",
        reply(
            &[("cache-control", "max-age=0"), ("etag", "\"v1\"")],
            "body-v1",
        ),
    );
    let p = Proxy::start(&config(&o, "{}")).await;
    let a = get(&p, "/etag", "").await;
    assert_eq!(a.body, b"body-v1");
    let b = get(&p, "/etag", "").await;
    assert_eq!(b.status, 200, "the client gets the full response");
    assert_eq!(b.body, b"body-v1");
    assert_eq!(cache_status(&b), "tollgate; fwd=stale; fwd-status=304");
    assert_eq!(o.count(), 2);
    let seen = o.seen.lock().unwrap().clone();
    assert_eq!(seen[1].get("if-none-match").unwrap(), "\"v1\"");
    let lines = p.wait_log(2).await;
    assert_eq!(lines[1]["cache"], "revalidated");
}

#[tokio::test]
async fn vary_keeps_one_variant_per_header_value() {
    let o = Origin::start().await;
    o.set(
        "/v",
        reply(
            &[("cache-control", "max-age=60"), ("vary", "accept-language")],
            "v",
        ),
    );
    let p = Proxy::start(&config(&o, "{}")).await;
    get(&p, "/v", "Accept-Language: en\r\n").await;
    get(&p, "/v", "Accept-Language: de\r\n").await;
    assert_eq!(o.count(), 2, "a different Vary-selected header is a miss");
    let en = get(&p, "/v", "Accept-Language: en\r\n").await;
    let de = get(&p, "/v", "Accept-Language: de\r\n").await;
    assert_eq!(cache_status(&en), "tollgate; hit");
    assert_eq!(cache_status(&de), "tollgate; hit");
    assert_eq!(o.count(), 2);
}

#[tokio::test]
async fn private_and_no_store_responses_are_not_stored_or_shared() {
    let o = Origin::start().await;
    o.set(
        "/private",
        reply(&[("cache-control", "private, max-age=60")], "mine"),
    );
    o.set("/nostore", reply(&[("cache-control", "no-store")], "x"));
    o.set("/public", reply(&[("cache-control", "max-age=60")], "pub"));
    let p = Proxy::start(&config(&o, "{}")).await;
    for _ in 0..2 {
        let r = get(&p, "/private", "").await;
        assert_eq!(cache_status(&r), "tollgate; fwd=miss");
        get(&p, "/nostore", "").await;
    }
    assert_eq!(o.count(), 4);
    // The consumer is part of the key: alice's stored response is not bob's.
    get(&p, "/public", "").await;
    let bob = raw(
        p.addr,
        b"GET /o/public HTTP/1.1\r\nHost: gw\r\nx-team: bob\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(cache_status(&bob), "tollgate; fwd=miss; stored");
    assert_eq!(o.count(), 6);
    // The caller's own Authorization makes a response without `public` unstorable.
    o.set("/auth", reply(&[("cache-control", "max-age=60")], "a"));
    get(&p, "/auth", "Authorization: Bearer abc\r\n").await;
    let again = get(&p, "/auth", "Authorization: Bearer abc\r\n").await;
    assert_eq!(cache_status(&again), "tollgate; fwd=miss");
    assert_eq!(o.count(), 8);
}

#[tokio::test]
async fn shared_across_consumers_serves_one_stored_response_to_all() {
    let o = Origin::start().await;
    o.set("/s", reply(&[("cache-control", "max-age=60")], "s"));
    let p = Proxy::start(&config(
        &o,
        "{ shared_across_consumers: true, key: [method, url] }",
    ))
    .await;
    get(&p, "/s", "").await;
    let bob = raw(
        p.addr,
        b"GET /o/s HTTP/1.1\r\nHost: gw\r\nx-team: bob\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(cache_status(&bob), "tollgate; hit");
    assert_eq!(o.count(), 1);
}

#[tokio::test]
async fn stale_if_error_serves_stale_while_the_origin_is_down() {
    let o = Origin::start().await;
    o.set(
        "/sie",
        reply(
            &[("cache-control", "max-age=1, stale-if-error=600")],
            "kept",
        ),
    );
    let p = Proxy::start(&config(&o, "{}")).await;
    get(&p, "/sie", "").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    o.stop();
    let r = get(&p, "/sie", "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"kept");
    assert_eq!(cache_status(&r), "tollgate; hit; detail=stale");
    let lines = p.wait_log(2).await;
    assert_eq!(lines[1]["cache"], "stale");
}

#[tokio::test]
async fn without_stale_if_error_a_down_origin_is_an_error() {
    let o = Origin::start().await;
    o.set("/nosie", reply(&[("cache-control", "max-age=1")], "gone"));
    let p = Proxy::start(&config(&o, "{}")).await;
    get(&p, "/nosie", "").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    o.stop();
    let r = get(&p, "/nosie", "").await;
    assert_eq!(r.status, 502);
}

#[tokio::test]
async fn concurrent_identical_misses_collapse_into_one_request() {
    let o = Origin::start().await;
    let mut r = reply(&[("cache-control", "max-age=60")], "together");
    r.delay = Duration::from_millis(300);
    o.set("/c", r);
    let p = Arc::new(Proxy::start(&config(&o, "{}")).await);
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let p = p.clone();
        tasks.push(tokio::spawn(async move { get(&p, "/c", "").await }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"together");
    }
    assert_eq!(
        o.count(),
        1,
        "100 concurrent identical requests, 1 upstream request"
    );
}

#[tokio::test]
async fn large_bodies_stream_and_are_not_stored() {
    let o = Origin::start().await;
    let big = "x".repeat(64 * 1024);
    o.set("/big", reply(&[("cache-control", "max-age=60")], &big));
    let p = Proxy::start(&config(&o, "{ max_entry: 16KiB }")).await;
    for _ in 0..2 {
        let r = get(&p, "/big", "").await;
        assert_eq!(r.body.len(), big.len());
        assert_eq!(cache_status(&r), "tollgate; fwd=miss");
    }
    assert_eq!(o.count(), 2);
    assert_eq!(metric(&p, "tollgate_cache_entries"), Some(0.0));
}

#[tokio::test]
async fn ttl_gives_freshness_to_responses_without_cache_headers() {
    let o = Origin::start().await;
    o.set("/plain", reply(&[], "plain"));
    let p = Proxy::start(&config(&o, "{ ttl: 60s }")).await;
    get(&p, "/plain", "").await;
    let b = get(&p, "/plain", "").await;
    assert_eq!(cache_status(&b), "tollgate; hit");
    assert_eq!(
        b.header("cache-control"),
        None,
        "the ttl is not shown to clients"
    );
    assert_eq!(o.count(), 1);

    let o2 = Origin::start().await;
    o2.set("/plain", reply(&[], "plain"));
    let p2 = Proxy::start(&config(&o2, "{}")).await;
    get(&p2, "/plain", "").await;
    get(&p2, "/plain", "").await;
    assert_eq!(o2.count(), 2, "without ttl nothing makes it fresh");
}

#[tokio::test]
async fn purge_removes_an_apis_entries() {
    let o = Origin::start().await;
    o.set("/p1", reply(&[("cache-control", "max-age=60")], "p1"));
    o.set("/p2", reply(&[("cache-control", "max-age=60")], "p2"));
    let p = Proxy::start(&config(&o, "{}")).await;
    get(&p, "/p1", "").await;
    get(&p, "/p2", "").await;
    let url = format!("http://{}/p1", o.addr);
    p.gateway.cache.purge("origin", Some(&url));
    assert_eq!(
        cache_status(&get(&p, "/p1", "").await),
        "tollgate; fwd=miss; stored"
    );
    assert_eq!(cache_status(&get(&p, "/p2", "").await), "tollgate; hit");
    p.gateway.cache.purge("origin", None);
    assert_eq!(
        cache_status(&get(&p, "/p2", "").await),
        "tollgate; fwd=miss; stored"
    );
    assert_eq!(o.count(), 4);
}

#[tokio::test]
async fn post_is_bypassed() {
    let o = Origin::start().await;
    o.set("/post", reply(&[("cache-control", "max-age=60")], "p"));
    let p = Proxy::start(&config(&o, "{}")).await;
    for _ in 0..2 {
        let r = raw(
            p.addr,
            b"POST /o/post HTTP/1.1\r\nHost: gw\r\nx-team: alice\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(cache_status(&r), "tollgate; fwd=bypass");
    }
    assert_eq!(o.count(), 2);
}

#[tokio::test]
async fn stale_while_revalidate_serves_stale_and_refreshes_in_the_background() {
    let o = Origin::start().await;
    o.set(
        "/swr",
        reply(
            &[("cache-control", "max-age=1, stale-while-revalidate=600")],
            "old",
        ),
    );
    let p = Proxy::start(&config(&o, "{}")).await;
    get(&p, "/swr", "").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    o.set(
        "/swr",
        reply(
            &[("cache-control", "max-age=60, stale-while-revalidate=600")],
            "new",
        ),
    );
    let stale = get(&p, "/swr", "").await;
    assert_eq!(stale.body, b"old");
    assert_eq!(cache_status(&stale), "tollgate; hit; detail=stale");
    for _ in 0..200 {
        if o.count() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(o.count(), 2, "one background refresh");
    // The refresh stores the new response; give its body a moment to finish.
    let mut fresh = get(&p, "/swr", "").await;
    for _ in 0..100 {
        if fresh.body == b"new" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        fresh = get(&p, "/swr", "").await;
    }
    assert_eq!(fresh.body, b"new");
    assert_eq!(cache_status(&fresh), "tollgate; hit");
    assert_eq!(o.count(), 2);
}

#[tokio::test]
async fn head_is_cached_separately_and_has_no_body() {
    let o = Origin::start().await;
    o.set("/h", reply(&[("cache-control", "max-age=60")], "hello"));
    let p = Proxy::start(&config(&o, "{}")).await;
    let head = b"HEAD /o/h HTTP/1.1\r\nHost: gw\r\nx-team: alice\r\nConnection: close\r\n\r\n";
    raw(p.addr, head).await;
    let again = raw(p.addr, head).await;
    assert_eq!(cache_status(&again), "tollgate; hit");
    assert_eq!(again.header("content-length"), Some("5"));
    assert!(again.body.is_empty());
    assert_eq!(o.count(), 1);
    // A GET is its own key: never answered with a HEAD's empty body.
    let g = get(&p, "/h", "").await;
    assert_eq!(g.body, b"hello");
    assert_eq!(o.count(), 2);
}

#[tokio::test]
async fn memory_stays_within_max_bytes_by_evicting() {
    let o = Origin::start().await;
    let body = "b".repeat(1500);
    for i in 0..10 {
        o.set(
            &format!("/e{i}"),
            reply(&[("cache-control", "max-age=60")], &body),
        );
    }
    let yaml = format!("cache: {{ max_bytes: 8KiB }}\n{}", config(&o, "{}"));
    let p = Proxy::start(&yaml).await;
    for i in 0..10 {
        let r = get(&p, &format!("/e{i}"), "").await;
        assert_eq!(r.body.len(), 1500);
    }
    let (bytes, entries) = p.gateway.cache.size();
    assert!(bytes <= 8 * 1024, "{bytes} bytes held");
    assert!(entries < 10, "{entries} entries held");
    assert!(metric(&p, "tollgate_cache_evictions_total").unwrap() >= 1.0);
    assert!(metric(&p, "tollgate_cache_bytes").unwrap() <= 8.0 * 1024.0);
}

#[tokio::test]
async fn a_successful_unsafe_request_invalidates_the_url() {
    let o = Origin::start().await;
    o.set("/doc", reply(&[("cache-control", "max-age=60")], "doc"));
    let p = Proxy::start(&config(&o, "{}")).await;
    get(&p, "/doc", "").await;
    assert_eq!(cache_status(&get(&p, "/doc", "").await), "tollgate; hit");
    raw(
        p.addr,
        b"PUT /o/doc HTTP/1.1\r\nHost: gw\r\nx-team: alice\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(
        cache_status(&get(&p, "/doc", "").await),
        "tollgate; fwd=miss; stored"
    );
    assert_eq!(o.count(), 3);
}

#[tokio::test]
async fn a_body_rewritten_by_response_dlp_is_not_stored_with_stale_headers() {
    let o = Origin::start().await;
    let body = r#"{"contact":"jane.doe@example.org"}"#;
    o.set(
        "/pii",
        reply(
            &[
                ("cache-control", "max-age=60"),
                ("content-type", "application/json"),
            ],
            body,
        ),
    );
    let yaml = config(&o, "{}").replace(
        "    cache: {}\n",
        "    cache: {}\n    dlp: { scan: [response], detectors: { email: redact } }\n",
    );
    let p = Proxy::start(&yaml).await;
    for _ in 0..2 {
        let r = get(&p, "/pii", "").await;
        assert_eq!(r.status, 200);
        let text = String::from_utf8(r.body.clone()).unwrap();
        assert!(text.contains("[REDACTED:email]"), "{text}");
        assert_eq!(
            r.header("content-length")
                .map(|v| v.parse::<usize>().unwrap()),
            Some(r.body.len())
        );
    }
    assert_eq!(o.count(), 2, "the redacted body was not stored");
}
