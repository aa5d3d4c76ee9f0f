//! Credential injection and header rules through the proxy, against a real
//! echo upstream and a real OAuth 2.0 token endpoint on ephemeral loopback
//! ports: what arrives upstream, what the caller can no longer send, token
//! caching/refresh/retry, key rotation, and that no secret leaks into logs,
//! metrics, error bodies or explain output.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/harness.rs"]
mod harness;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use harness::{Proxy, Upstream, closed_port, echo_upstream, raw};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

const SECRET: &str = "sk-live-TOPSECRET-4242";

/// The last request the echo upstream saw.
fn last_seen(up: &Upstream) -> serde_json::Value {
    up.seen.lock().unwrap().last().cloned().unwrap()
}

fn header<'a>(seen: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    seen["headers"][name][0].as_str()
}

fn get(up: SocketAddr, path: &str, extra: &str) -> String {
    format!("GET http://{up}{path} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n")
}

fn secret_file(dir: &tempfile::TempDir, name: &str, value: &str) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, format!("{value}\n")).unwrap();
    p.display().to_string()
}

#[tokio::test]
async fn header_credential_replaces_whatever_the_caller_sent() {
    let up = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let file = secret_file(&dir, "gh", SECRET);
    let proxy = Proxy::start(&format!(
        "apis:\n  - name: gh\n    hosts: [\"127.0.0.1\"]\n    credentials: {{ header: Authorization, value: \"Bearer ${{file:{file}}}\" }}\n"
    ))
    .await;
    let resp = raw(
        proxy.addr,
        get(
            up.addr,
            "/repos",
            "Authorization: Bearer caller-token\r\nProxy-Authorization: Basic eDp5\r\n",
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let seen = last_seen(&up);
    let auth = seen["headers"]["authorization"].as_array().unwrap();
    assert_eq!(auth.len(), 1, "{seen}");
    assert_eq!(auth[0], format!("Bearer {SECRET}"));
    assert!(seen["headers"].get("proxy-authorization").is_none());
    // The key never comes back to the caller.
    assert!(!String::from_utf8_lossy(&resp.body).is_empty());
    let lines = proxy.wait_log(1).await;
    assert_eq!(lines[0]["credential"], "default");
    let text = proxy.gateway.metrics.encode();
    assert!(
        text.contains("tollgate_credential_uses_total{api=\"gh\",key=\"default\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn keys_are_not_sent_over_plain_http_to_remote_hosts() {
    let proxy = Proxy::start(&format!(
        "apis:\n  - name: remote\n    hosts: [api.example.com]\n    credentials: {{ header: x-key, value: \"{SECRET}\" }}\n"
    ))
    .await;
    let resp = raw(
        proxy.addr,
        b"GET http://api.example.com/x HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 403, "{resp:?}");
    assert_eq!(
        resp.header("tollgate-error"),
        Some("destination_not_allowed")
    );
    assert!(resp.json()["detail"].as_str().unwrap().contains("https"));
    assert!(!format!("{resp:?}").contains(SECRET));
}

#[tokio::test]
async fn query_and_basic_credentials() {
    let up = echo_upstream().await;
    let proxy = Proxy::start(&format!(
        "apis:\n  - name: q\n    hosts: [\"127.0.0.1\"]\n    credentials: {{ query: api_key, value: \"{SECRET}\" }}\n"
    ))
    .await;
    let resp = raw(
        proxy.addr,
        get(up.addr, "/v1/x?api_key=mine&api%5Fkey=sneaky&q=1", "").as_bytes(),
    )
    .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(last_seen(&up)["uri"], format!("/v1/x?q=1&api_key={SECRET}"));
    // The access log records what the client sent, never the injected key.
    let line = proxy.wait_log(1).await[0].to_string();
    assert!(!line.contains(SECRET), "{line}");
    assert!(line.contains("api_key=REDACTED"), "{line}");

    let up = echo_upstream().await;
    let proxy = Proxy::start(&format!(
        "apis:\n  - name: b\n    hosts: [\"127.0.0.1\"]\n    credentials: {{ basic: {{ username: acct, password: \"{SECRET}\" }} }}\n"
    ))
    .await;
    let resp = raw(
        proxy.addr,
        get(up.addr, "/", "Authorization: Basic Zm9vOmJhcg==\r\n").as_bytes(),
    )
    .await;
    assert_eq!(resp.status, 200);
    let want = base64::engine::general_purpose::STANDARD.encode(format!("acct:{SECRET}"));
    assert_eq!(
        header(&last_seen(&up), "authorization"),
        Some(format!("Basic {want}").as_str())
    );
}

#[tokio::test]
async fn header_rules_in_order_with_credentials_last() {
    let up = echo_upstream().await;
    let yaml = format!(
        r#"consumers:
  - name: ci
    identify: {{ header: {{ name: x-who, value: ci }} }}
    headers:
      request: {{ set: {{ x-team: "consumer {{consumer}}" }}, append: {{ x-tags: c }} }}
      response: {{ set: {{ x-served-to: "{{consumer}}" }} }}
apis:
  - name: api
    hosts: ["127.0.0.1"]
    credentials: {{ header: x-api-key, value: "{SECRET}" }}
    headers:
      request:
        remove: [x-internal]
        set: {{ x-team: "api", x-api-key: "overwritten?", x-trace: "{{api}}/{{request_id}}" }}
        append: {{ x-tags: a }}
      response:
        remove: [server-timing]
        set: {{ x-gateway: "tollgate {{api}}" }}
"#
    );
    let proxy = Proxy::start(&yaml).await;
    let resp = raw(
        proxy.addr,
        get(
            up.addr,
            "/",
            "x-who: ci\r\nx-internal: secret-ish\r\nx-tags: caller\r\nx-request-id: rid-7\r\n",
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    let seen = last_seen(&up);
    assert!(seen["headers"].get("x-internal").is_none());
    assert_eq!(header(&seen, "x-team"), Some("consumer ci"));
    assert_eq!(header(&seen, "x-trace"), Some("api/rid-7"));
    assert_eq!(
        seen["headers"]["x-tags"],
        serde_json::json!(["caller", "a", "c"])
    );
    // Credentials come after every header rule.
    assert_eq!(header(&seen, "x-api-key"), Some(SECRET));
    assert_eq!(resp.header("x-gateway"), Some("tollgate api"));
    assert_eq!(resp.header("x-served-to"), Some("ci"));

    // Gateway-generated errors get no response rules.
    let down: SocketAddr = format!("127.0.0.1:{}", closed_port().await)
        .parse()
        .unwrap();
    let resp = raw(proxy.addr, get(down, "/", "x-who: ci\r\n").as_bytes()).await;
    assert_eq!(resp.status, 502, "{resp:?}");
    assert!(resp.header("x-gateway").is_none() && resp.header("x-served-to").is_none());
}

#[tokio::test]
async fn hop_by_hop_rules_are_refused_at_load() {
    let yaml = "apis:\n  - name: a\n    hosts: [a.example]\n    headers: { request: { set: { Connection: close } } }\n";
    let cfg = tollgate_config::load_str(yaml, "t.yaml").unwrap().config;
    let errs = tollgate_policy::Policy::compile(Arc::new(cfg), 1).unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].path, "apis[0].headers.request.set.Connection");
}

/// A token endpoint on an ephemeral port. Answers from `script` (status codes,
/// the last one repeating); 200 answers carry `access_token: tok-<n>`.
struct TokenServer {
    addr: SocketAddr,
    calls: Arc<AtomicUsize>,
    /// (authorization header, form body) of every request.
    requests: Arc<Mutex<Vec<(String, String)>>>,
}

async fn token_server(script: Vec<u16>, expires_in: u64) -> TokenServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls: Arc<AtomicUsize> = Arc::default();
    let requests: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let (c2, r2) = (calls.clone(), requests.clone());
    let script = Arc::new(script);
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            let (calls, requests, script) = (c2.clone(), r2.clone(), script.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (calls, requests, script) =
                        (calls.clone(), requests.clone(), script.clone());
                    async move {
                        let auth = req
                            .headers()
                            .get("authorization")
                            .map(|v| v.to_str().unwrap().to_owned())
                            .unwrap_or_default();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        requests
                            .lock()
                            .unwrap()
                            .push((auth, String::from_utf8_lossy(&body).into_owned()));
                        let n = calls.fetch_add(1, Ordering::SeqCst);
                        // Slow enough that concurrent requests overlap with the fetch.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        let status = script[n.min(script.len() - 1)];
                        let body = if status == 200 {
                            format!(
                                r#"{{"access_token":"tok-{n}","token_type":"Bearer","expires_in":{expires_in}}}"#
                            )
                        } else {
                            r#"{"error":"temporarily_unavailable"}"#.to_owned()
                        };
                        let mut r = Response::new(Full::new(Bytes::from(body)));
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
    TokenServer {
        addr,
        calls,
        requests,
    }
}

fn oauth_yaml(token_url: &str, refresh_before: &str) -> String {
    format!(
        "apis:\n  - name: o\n    hosts: [\"127.0.0.1\"]\n    credentials:\n      oauth2: {{ token_url: \"{token_url}\", client_id: app, client_secret: \"{SECRET}\", scopes: [read, write], refresh_before: {refresh_before} }}\n"
    )
}

#[tokio::test]
async fn oauth_token_is_fetched_once_for_concurrent_requests() {
    let up = echo_upstream().await;
    let ts = token_server(vec![200], 3600).await;
    let proxy = Proxy::start(&oauth_yaml(&format!("http://{}/token", ts.addr), "30s")).await;
    let req = get(up.addr, "/", "Authorization: Bearer caller\r\n");
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (addr, req) = (proxy.addr, req.clone());
        tasks.push(tokio::spawn(async move {
            raw(addr, req.as_bytes()).await.status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(ts.calls.load(Ordering::SeqCst), 1);
    let seen = up.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 50);
    assert!(
        seen.iter()
            .all(|s| s["headers"]["authorization"] == serde_json::json!(["Bearer tok-0"]))
    );
    // client_secret_basic and a form body, per RFC 6749.
    let (auth, body) = ts.requests.lock().unwrap()[0].clone();
    let want = base64::engine::general_purpose::STANDARD.encode(format!("app:{SECRET}"));
    assert_eq!(auth, format!("Basic {want}"));
    assert_eq!(body, "grant_type=client_credentials&scope=read+write");
    let text = proxy.gateway.metrics.encode();
    assert!(
        text.contains(
            "tollgate_credential_token_fetches_total{api=\"o\",key=\"default\",result=\"ok\"} 1"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn oauth_token_survives_a_reload_unless_its_request_changed() {
    let up = echo_upstream().await;
    let ts = token_server(vec![200], 3600).await;
    let url = format!("http://{}/token", ts.addr);
    let proxy = Proxy::start(&oauth_yaml(&url, "30s")).await;
    let req = get(up.addr, "/", "");
    assert_eq!(raw(proxy.addr, req.as_bytes()).await.status, 200);
    let reload = |yaml: String, version: u64| {
        let yaml = format!("network_guard: {{ allow: [\"127.0.0.1/32\"] }}\n{yaml}");
        let cfg = tollgate_config::load_str(&yaml, "again.yaml")
            .unwrap()
            .config;
        let policy = tollgate_policy::Policy::compile(Arc::new(cfg), version).unwrap();
        let gw = &proxy.gateway;
        let prev = gw.active.load_full();
        let next = tollgate_proxy::Active::build(policy, &[proxy.addr], Some(&prev)).unwrap();
        gw.active.store(Arc::new(next));
    };
    reload(oauth_yaml(&url, "30s"), 2);
    assert_eq!(raw(proxy.addr, req.as_bytes()).await.status, 200);
    assert_eq!(ts.calls.load(Ordering::SeqCst), 1);
    // A different scope is a different token request: fetched again.
    reload(
        oauth_yaml(&url, "30s").replace("[read, write]", "[read]"),
        3,
    );
    assert_eq!(raw(proxy.addr, req.as_bytes()).await.status, 200);
    assert_eq!(ts.calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        header(&last_seen(&up), "authorization"),
        Some("Bearer tok-1")
    );
}

#[tokio::test]
async fn oauth_token_is_refreshed_before_expiry() {
    let up = echo_upstream().await;
    // 31 s tokens refreshed 30 s early: a new token after one second.
    let ts = token_server(vec![200], 31).await;
    let proxy = Proxy::start(&oauth_yaml(&format!("http://{}/token", ts.addr), "30s")).await;
    let req = get(up.addr, "/", "");
    assert_eq!(raw(proxy.addr, req.as_bytes()).await.status, 200);
    assert_eq!(raw(proxy.addr, req.as_bytes()).await.status, 200);
    assert_eq!(ts.calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        header(&last_seen(&up), "authorization"),
        Some("Bearer tok-0")
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(raw(proxy.addr, req.as_bytes()).await.status, 200);
    assert_eq!(ts.calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        header(&last_seen(&up), "authorization"),
        Some("Bearer tok-1")
    );
}

#[tokio::test]
async fn oauth_token_endpoint_errors_are_retried() {
    let up = echo_upstream().await;
    let ts = token_server(vec![500, 503, 200], 3600).await;
    let proxy = Proxy::start(&oauth_yaml(&format!("http://{}/token", ts.addr), "30s")).await;
    let resp = raw(proxy.addr, get(up.addr, "/", "").as_bytes()).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(ts.calls.load(Ordering::SeqCst), 3);
    assert_eq!(
        header(&last_seen(&up), "authorization"),
        Some("Bearer tok-2")
    );
}

#[tokio::test]
async fn oauth_endpoint_down_without_a_token_is_credential_unavailable() {
    let up = echo_upstream().await;
    let port = closed_port().await;
    let proxy = Proxy::start(&oauth_yaml(
        &format!("http://127.0.0.1:{port}/token"),
        "30s",
    ))
    .await;
    let resp = raw(proxy.addr, get(up.addr, "/", "").as_bytes()).await;
    assert_eq!(resp.status, 503, "{resp:?}");
    assert_eq!(
        resp.header("tollgate-error"),
        Some("credential_unavailable")
    );
    let body = resp.json();
    assert_eq!(body["code"], "credential_unavailable");
    assert!(up.seen.lock().unwrap().is_empty());

    // A permanent refusal (401) is not retried, and says why without secrets.
    let ts = token_server(vec![401], 3600).await;
    let proxy = Proxy::start(&oauth_yaml(&format!("http://{}/token", ts.addr), "30s")).await;
    let resp = raw(proxy.addr, get(up.addr, "/", "").as_bytes()).await;
    assert_eq!(resp.status, 503);
    assert_eq!(ts.calls.load(Ordering::SeqCst), 1);
    let detail = resp.json()["detail"].as_str().unwrap().to_owned();
    assert!(detail.contains("status 401"), "{detail}");
    assert!(!detail.contains(SECRET));
}

#[tokio::test]
async fn a_silent_token_endpoint_times_out() {
    let up = echo_upstream().await;
    // Accepts connections and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let acc = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            acc.fetch_add(1, Ordering::SeqCst);
            held.push(s);
        }
    });
    let yaml = oauth_yaml(&format!("http://{addr}/token"), "30s")
        .replace("refresh_before: 30s", "refresh_before: 30s, timeout: 200ms");
    let proxy = Proxy::start(&yaml).await;
    let resp = raw(proxy.addr, get(up.addr, "/", "").as_bytes()).await;
    assert_eq!(resp.status, 503, "{resp:?}");
    assert!(
        resp.json()["detail"]
            .as_str()
            .unwrap()
            .contains("timed out")
    );
    // Three attempts, each on a fresh connection (the stuck one is abandoned).
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn oauth_token_endpoint_is_behind_the_network_guard() {
    let up = echo_upstream().await;
    let ts = token_server(vec![200], 3600).await;
    // The upstream is allowed, the token endpoint's port is not.
    let yaml = format!(
        "network_guard: {{ allow: [\"{}\"] }}\n{}",
        up.addr,
        oauth_yaml(&format!("http://{}/token", ts.addr), "30s")
    );
    let proxy = Proxy::start(&yaml).await;
    let resp = raw(proxy.addr, get(up.addr, "/", "").as_bytes()).await;
    assert_eq!(resp.status, 503, "{resp:?}");
    assert!(
        resp.json()["detail"]
            .as_str()
            .unwrap()
            .contains("network guard")
    );
    assert_eq!(ts.calls.load(Ordering::SeqCst), 0);
}

fn keys_yaml(rotation: &str) -> String {
    format!(
        r#"apis:
  - name: multi
    hosts: ["127.0.0.1"]
    credentials:
      rotation: {rotation}
      keys:
        - {{ name: a, header: x-key, value: "key-a-{SECRET}" }}
        - {{ name: b, header: x-key, value: "key-b-{SECRET}" }}
        - {{ name: c, query: key, value: "key-c" }}
"#
    )
}

fn used_key(seen: &serde_json::Value) -> String {
    match header(seen, "x-key") {
        Some(v) => v.split('-').nth(1).unwrap().to_owned(),
        None => {
            assert!(
                seen["uri"].as_str().unwrap().ends_with("key=key-c"),
                "{seen}"
            );
            "c".to_owned()
        }
    }
}

#[tokio::test]
async fn round_robin_rotation_spreads_requests_and_logs_key_names() {
    let up = echo_upstream().await;
    let proxy = Proxy::start(&keys_yaml("round_robin")).await;
    for _ in 0..6 {
        let resp = raw(
            proxy.addr,
            get(up.addr, "/", "x-key: caller\r\n").as_bytes(),
        )
        .await;
        assert_eq!(resp.status, 200);
    }
    let used: Vec<String> = up.seen.lock().unwrap().iter().map(used_key).collect();
    assert_eq!(used, ["a", "b", "c", "a", "b", "c"]);
    let logged: Vec<String> = proxy
        .wait_log(6)
        .await
        .iter()
        .map(|l| l["credential"].as_str().unwrap().to_owned())
        .collect();
    let mut sorted = logged.clone();
    sorted.sort();
    assert_eq!(sorted, ["a", "a", "b", "b", "c", "c"]);
    let text = proxy.gateway.metrics.encode();
    for k in ["a", "b", "c"] {
        let line = format!("tollgate_credential_uses_total{{api=\"multi\",key=\"{k}\"}} 2");
        assert!(text.contains(&line), "{line} not in {text}");
    }
    assert!(!text.contains(SECRET));

    // Provider back-off for one key (the hook): it is skipped.
    let active = proxy.gateway.active.load_full();
    assert!(active.policy.skip_key(
        "multi",
        "a",
        std::time::Instant::now() + Duration::from_secs(60)
    ));
    for _ in 0..4 {
        raw(proxy.addr, get(up.addr, "/", "").as_bytes()).await;
    }
    let used: Vec<String> = up.seen.lock().unwrap()[6..].iter().map(used_key).collect();
    assert_eq!(used, ["b", "c", "b", "c"]);
}

#[tokio::test]
async fn least_used_rotation_balances_uses() {
    let up = echo_upstream().await;
    let proxy = Proxy::start(&keys_yaml("least_used")).await;
    let active = proxy.gateway.active.load_full();
    // Keys a and b are in back-off for a while: c takes the traffic…
    let until = std::time::Instant::now() + Duration::from_millis(300);
    active.policy.skip_key("multi", "a", until);
    active.policy.skip_key("multi", "b", until);
    for _ in 0..3 {
        raw(proxy.addr, get(up.addr, "/", "").as_bytes()).await;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    // …and afterwards the least used keys catch up before c is used again.
    for _ in 0..6 {
        raw(proxy.addr, get(up.addr, "/", "").as_bytes()).await;
    }
    let used: Vec<String> = up.seen.lock().unwrap().iter().map(used_key).collect();
    assert_eq!(used, ["c", "c", "c", "a", "b", "a", "b", "a", "b"]);
}

#[tokio::test]
async fn secrets_never_appear_in_logs_metrics_errors_or_explain() {
    let up = echo_upstream().await;
    let port = closed_port().await;
    let dir = tempfile::tempdir().unwrap();
    let file = secret_file(&dir, "k", SECRET);
    let yaml = format!(
        r#"apis:
  - name: hdr
    route: /hdr
    upstream: "http://{up}"
    credentials: {{ header: Authorization, value: "Bearer ${{file:{file}}}" }}
  - name: oauth
    route: /oauth
    upstream: "http://{up}"
    credentials:
      oauth2: {{ token_url: "http://127.0.0.1:{port}/t", client_id: app, client_secret: "${{file:{file}}}" }}
"#,
        up = up.addr
    );
    let proxy = Proxy::start(&yaml).await;
    let mut bodies = String::new();
    for path in ["/hdr/x?token=abc", "/oauth/y"] {
        let resp = raw(
            proxy.addr,
            format!("GET {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        bodies.push_str(&format!("{resp:?}"));
    }
    // The upstream did get the key: the test can fail.
    assert!(up.seen.lock().unwrap()[0].to_string().contains(SECRET));
    assert!(bodies.contains("credential_unavailable"), "{bodies}");
    let log = serde_json::to_string(&proxy.wait_log(2).await).unwrap();
    let metrics = proxy.gateway.metrics.encode();
    let active = proxy.gateway.active.load_full();
    let policy = &active.policy;
    let mut explain = String::new();
    for api in ["hdr", "oauth"] {
        let req = tollgate_policy::RequestInfo {
            kind: tollgate_policy::TrafficKind::Route,
            method: &http::Method::GET,
            scheme: tollgate_policy::Scheme::Http,
            host: "gw",
            port: 80,
            path: &format!("/{api}/x"),
            query: None,
            headers: &http::HeaderMap::new(),
            peer: "127.0.0.1".parse().unwrap(),
            client_cert: None,
        };
        let eval = policy.evaluate(&req, &tollgate_policy::Switches::default(), true);
        for step in policy.describe_outbound(&eval, tollgate_policy::TrafficKind::Route) {
            explain.push_str(&step.reason);
            explain.push('\n');
        }
    }
    assert!(
        explain.contains("<redacted>") && explain.contains("${file:"),
        "{explain}"
    );
    let config = serde_json::to_string(policy.config()).unwrap();
    let debug = format!("{policy:?}");
    for (what, text) in [
        ("error bodies", &bodies),
        ("access log", &log),
        ("metrics", &metrics),
        ("explain", &explain),
        ("config as served", &config),
        ("policy debug", &debug),
    ] {
        assert!(!text.contains(SECRET), "{what} leaks the secret: {text}");
        assert!(
            !text.contains("TOPSECRET"),
            "{what} leaks part of the secret"
        );
    }
}
