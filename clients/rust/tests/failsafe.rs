//! The fail-safe client against the real `tollgate` binary and real loopback
//! upstreams: traffic flows through a live gateway and is in its access log;
//! a killed gateway means calls go direct and are counted (and logged); after
//! the cool-down a probe brings traffic back through the restarted gateway; a
//! POST in flight when the gateway dies is not re-sent; 429 and 403 from
//! Tollgate are returned as is.
//!
//! The binary is $TOLLGATE_BIN or target/debug/tollgate above this crate
//! (scripts/test.sh builds it before `cargo test --workspace`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tollgate_client::{BreakerState, Config, Error, FailSafeClient, Mode};

// -- the tollgate binary ------------------------------------------------------

fn tollgate_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TOLLGATE_BIN") {
        return PathBuf::from(p);
    }
    let mut dir = Some(Path::new(env!("CARGO_MANIFEST_DIR")));
    while let Some(d) = dir {
        let candidate = d.join("target").join("debug").join("tollgate");
        if candidate.is_file() {
            return candidate;
        }
        dir = d.parent();
    }
    panic!(
        "tollgate binary not found: run `cargo build -p tollgate` (scripts/test.sh does) or set TOLLGATE_BIN"
    );
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// `tollgate run` on a fixed proxy port, so a client configured with its URL
/// finds it again after a kill and restart.
struct Gateway {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Gateway {
    async fn start(config: serde_json::Value) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = config;
        config["logging"] = serde_json::json!({
            "access_log": dir.path().join("access.log").to_string_lossy(),
        });
        // JSON is YAML: the config file is written as JSON.
        std::fs::write(dir.path().join("tollgate.yaml"), config.to_string()).expect("write config");
        let mut gw = Gateway {
            dir,
            port: free_port(),
            child: None,
        };
        gw.restart().await;
        gw
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn restart(&mut self) {
        let stderr =
            std::fs::File::create(self.dir.path().join("stderr.log")).expect("stderr file");
        let child = Command::new(tollgate_bin())
            .arg("run")
            .arg("--config")
            .arg(self.dir.path().join("tollgate.yaml"))
            .arg("--proxy-listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--admin-listen")
            .arg("127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn tollgate");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                let log =
                    std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default();
                panic!("tollgate did not start (exit {exited:?}):\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Access-log lines mentioning `part`.
    fn access_lines(&self, part: &str) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(part))
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    async fn wait_access(&self, part: &str, n: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let lines = self.access_lines(part);
            if lines.len() >= n {
                return lines;
            }
            assert!(
                Instant::now() < deadline,
                "{n} access-log entries for {part}, saw {lines:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
    }
}

// -- a recording echo upstream ----------------------------------------------------

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
}

/// HTTP/1.1 upstream on an ephemeral loopback port: records every request on
/// arrival, answers `{"path","body"}` as JSON, and stalls `?ms=N` first.
struct Upstream {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let port = listener.local_addr().expect("addr").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let rec = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(serve(sock, rec.clone()));
            }
        });
        Upstream { port, seen, task }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn saw(&self, method: &str, prefix: &str) -> usize {
        self.seen
            .lock()
            .expect("lock")
            .iter()
            .filter(|s| s.method == method && s.path.starts_with(prefix))
            .count()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut sock: TcpStream, seen: Arc<Mutex<Vec<Seen>>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        let mut lines = head.split("\r\n");
        let mut first = lines.next().unwrap_or("").split(' ');
        let method = first.next().unwrap_or("").to_string();
        let path = first.next().unwrap_or("").to_string();
        let headers: HashMap<String, String> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = buf[end + 4..].to_vec();
        while body.len() < len {
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => body.extend_from_slice(&chunk[..n]),
            }
        }
        seen.lock().expect("lock").push(Seen {
            method: method.clone(),
            path: path.clone(),
        });
        if let Some(ms) = path
            .split("ms=")
            .nth(1)
            .and_then(|v| v.split('&').next())
            .and_then(|v| v.parse().ok())
        {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let out = serde_json::json!({"path": path, "body": String::from_utf8_lossy(&body[..len.min(body.len())])})
            .to_string();
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{out}",
            out.len()
        );
        let _ = sock.write_all(resp.as_bytes()).await;
        return;
    }
}

// -- configs --------------------------------------------------------------------

fn gateway_config(up: &Upstream, mode: Mode, extra: serde_json::Value) -> serde_json::Value {
    let mut api = match mode {
        Mode::Route => serde_json::json!({"name": "up", "route": "/up", "upstream": up.base()}),
        Mode::Proxy => serde_json::json!({"name": "up", "hosts": ["127.0.0.1"]}),
    };
    if let (Some(api), Some(extra)) = (api.as_object_mut(), extra.as_object()) {
        api.extend(extra.clone());
    }
    serde_json::json!({"network_guard": {"allow": ["127.0.0.1/32"]}, "apis": [api]})
}

fn client(
    mode: Mode,
    gw: &Gateway,
    up: &Upstream,
    threshold: u32,
    cooldown: Duration,
) -> FailSafeClient {
    let key = format!("127.0.0.1:{}", up.port);
    let b = Config::builder()
        .gateway_url(gw.url())
        .mode(mode)
        .breaker_threshold(threshold)
        .breaker_cooldown(cooldown);
    let b = match mode {
        Mode::Route => b.route(key, "/up"),
        Mode::Proxy => b.hosts([key]),
    };
    FailSafeClient::new(b.build().expect("config")).expect("client")
}

async fn json_body(r: reqwest::Response) -> serde_json::Value {
    let bytes = r.bytes().await.expect("body");
    serde_json::from_slice(&bytes).expect("json body")
}

const HOUR: Duration = Duration::from_secs(3600);

// -- scenarios ------------------------------------------------------------------

async fn traffic_flows_through_the_gateway(mode: Mode) {
    let up = Upstream::start().await;
    let gw = Gateway::start(gateway_config(&up, mode, serde_json::json!({}))).await;
    let c = client(mode, &gw, &up, 3, HOUR);
    for i in 0..3 {
        let r = c
            .get(format!("{}/v1/items/{i}?q=1", up.base()))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 200);
        assert_eq!(json_body(r).await["path"], format!("/v1/items/{i}?q=1"));
    }
    let r = c
        .post(format!("{}/v1/items", up.base()))
        .body("hello")
        .send()
        .await
        .expect("post");
    assert_eq!(json_body(r).await["body"], "hello");
    // Tollgate saw all four, as the kind of traffic the mode implies.
    let lines = gw.wait_access("/v1/items", 4).await;
    let kind = if mode == Mode::Route {
        "route"
    } else {
        "forward"
    };
    assert!(lines.iter().all(|l| l["kind"] == kind), "{lines:?}");
    assert_eq!(up.saw("GET", "/v1/items/"), 3);
    let s = c.stats();
    assert_eq!(
        (s.via_gateway, s.fallbacks, s.not_resent),
        (4, 0, 0),
        "{s:?}"
    );
}

#[tokio::test]
async fn gateway_up_route_mode_traffic_flows_through_it() {
    traffic_flows_through_the_gateway(Mode::Route).await;
}

#[tokio::test]
async fn gateway_up_proxy_mode_traffic_flows_through_it() {
    traffic_flows_through_the_gateway(Mode::Proxy).await;
}

thread_local! {
    static LOGS: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Writes `tracing` output to the emitting thread's buffer: one global
/// subscriber (per-thread scoped ones miss events when tests run in
/// parallel, as tracing caches callsite interest globally), while each test
/// runs on its own current-thread runtime and reads only its own lines.
struct ThreadLog;

impl std::io::Write for ThreadLog {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        LOGS.with(|l| l.borrow_mut().extend_from_slice(b));
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(|| ThreadLog)
            .with_max_level(tracing::Level::WARN)
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
    LOGS.with(|l| l.borrow_mut().clear());
}

async fn killed_gateway_goes_direct(mode: Mode) {
    capture_logs();

    let up = Upstream::start().await;
    let mut gw = Gateway::start(gateway_config(&up, mode, serde_json::json!({}))).await;
    let c = client(mode, &gw, &up, 2, HOUR);
    assert_eq!(
        c.get(format!("{}/warm", up.base()))
            .send()
            .await
            .expect("warm")
            .status(),
        200
    );
    gw.kill();

    // Connection refused: nothing reached the gateway, so even a POST may go direct.
    let r = c
        .get(format!("{}/down/1", up.base()))
        .send()
        .await
        .expect("direct get");
    assert_eq!(json_body(r).await["path"], "/down/1");
    let r = c
        .post(format!("{}/down/2", up.base()))
        .body("p")
        .send()
        .await
        .expect("direct post");
    assert_eq!(json_body(r).await["body"], "p");
    // Two consecutive faults opened the breaker: direct without trying.
    assert_eq!(c.breaker_state(), BreakerState::Open);
    let r = c
        .get(format!("{}/down/3", up.base()))
        .send()
        .await
        .expect("breaker open");
    assert_eq!(r.status(), 200);

    assert_eq!(up.saw("POST", "/down/2"), 1, "sent exactly once");
    assert_eq!(up.saw("GET", "/down/"), 2);
    let s = c.stats();
    assert_eq!(
        (s.fallbacks, s.breaker_opened, s.via_gateway),
        (3, 1, 1),
        "{s:?}"
    );
    // The first GET may land on the pooled keep-alive connection the kill
    // just broke (`connection_lost`: idempotent, so direct) or find it closed
    // and be refused; the POST after it is always refused (`gateway_unreachable`).
    let first = if s.fallbacks_by_reason.contains_key("connection_lost") {
        "connection_lost"
    } else {
        "gateway_unreachable"
    };
    let mut expected = std::collections::BTreeMap::from([("breaker_open".to_string(), 1u64)]);
    *expected.entry(first.to_string()).or_default() += 1;
    *expected
        .entry("gateway_unreachable".to_string())
        .or_default() += 1;
    assert_eq!(s.fallbacks_by_reason, expected, "{s:?}");

    // Each fallback is one WARN event with its reason, method and redacted URL.
    let text = LOGS.with(|l| String::from_utf8_lossy(&l.borrow()).to_string());
    let events: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["fields"]["tollgate.event"] == "fallback")
        .collect();
    let reasons: Vec<&str> = events
        .iter()
        .filter_map(|e| e["fields"]["tollgate.reason"].as_str())
        .collect();
    assert_eq!(
        reasons,
        [first, "gateway_unreachable", "breaker_open"],
        "{text}"
    );
    assert!(events.iter().all(|e| e["level"] == "WARN"));
    assert_eq!(events[1]["fields"]["tollgate.method"], "POST");
    assert_eq!(
        events[1]["fields"]["tollgate.url"],
        format!("{}/down/2", up.base())
    );
}

#[tokio::test]
async fn gateway_killed_route_mode_calls_go_direct_and_are_counted() {
    killed_gateway_goes_direct(Mode::Route).await;
}

#[tokio::test]
async fn gateway_killed_proxy_mode_calls_go_direct_and_are_counted() {
    killed_gateway_goes_direct(Mode::Proxy).await;
}

#[tokio::test]
async fn gateway_back_traffic_returns_through_it_after_the_probe() {
    let cooldown = Duration::from_secs(3);
    let up = Upstream::start().await;
    let mut gw = Gateway::start(gateway_config(&up, Mode::Route, serde_json::json!({}))).await;
    let c = client(Mode::Route, &gw, &up, 1, cooldown);
    gw.kill();
    assert_eq!(
        c.get(format!("{}/a", up.base()))
            .send()
            .await
            .expect("a")
            .status(),
        200
    );
    let opened = Instant::now();
    assert_eq!(c.breaker_state(), BreakerState::Open);
    gw.restart().await;
    if opened.elapsed() < cooldown {
        // Cool-down not over: the live gateway is not tried.
        assert_eq!(
            c.get(format!("{}/b", up.base()))
                .send()
                .await
                .expect("b")
                .status(),
            200
        );
        assert_eq!(c.stats().fallbacks_by_reason.get("breaker_open"), Some(&1));
        tokio::time::sleep(cooldown.saturating_sub(opened.elapsed()) + Duration::from_millis(50))
            .await;
    }
    assert_eq!(c.breaker_state(), BreakerState::HalfOpen);
    // The probe goes through the gateway and closes the breaker.
    assert_eq!(
        c.get(format!("{}/probe", up.base()))
            .send()
            .await
            .expect("probe")
            .status(),
        200
    );
    gw.wait_access("/probe", 1).await;
    assert_eq!(c.breaker_state(), BreakerState::Closed);
    assert_eq!(
        c.get(format!("{}/after", up.base()))
            .send()
            .await
            .expect("after")
            .status(),
        200
    );
    gw.wait_access("/after", 1).await;
    assert!(gw.access_lines("/a\"").is_empty() && gw.access_lines("/b").is_empty());
    let s = c.stats();
    assert_eq!(
        (s.probes, s.via_gateway, s.breaker_opened),
        (1, 2, 1),
        "{s:?}"
    );
    assert_eq!(
        s.fallbacks_by_reason.get("gateway_unreachable"),
        Some(&1),
        "{s:?}"
    );
}

async fn post_in_flight_not_resent(mode: Mode) {
    let up = Upstream::start().await;
    let mut gw = Gateway::start(gateway_config(&up, mode, serde_json::json!({}))).await;
    let c = client(mode, &gw, &up, 3, HOUR);
    let url = format!("{}/v1/charges/slow?ms=3000", up.base());
    let call = tokio::spawn({
        let c = c.clone();
        async move { c.post(url).body("charge").send().await }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while up.saw("POST", "/v1/charges") == 0 {
        assert!(
            Instant::now() < deadline,
            "the POST never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gw.kill();
    let out = tokio::time::timeout(Duration::from_secs(15), call)
        .await
        .expect("call ended")
        .expect("join");
    match out {
        Err(Error::NotResent { reason, .. }) => assert_eq!(reason, "connection_lost"),
        other => panic!("expected NotResent, got {other:?}"),
    }
    assert_eq!(up.saw("POST", "/v1/charges"), 1, "the POST was re-sent");
    let s = c.stats();
    assert_eq!((s.not_resent, s.fallbacks), (1, 0), "{s:?}");
}

#[tokio::test]
async fn post_in_flight_route_mode_when_gateway_dies_is_not_resent() {
    post_in_flight_not_resent(Mode::Route).await;
}

#[tokio::test]
async fn post_in_flight_proxy_mode_when_gateway_dies_is_not_resent() {
    post_in_flight_not_resent(Mode::Proxy).await;
}

#[tokio::test]
async fn rate_limited_429_from_tollgate_is_returned_as_is() {
    let up = Upstream::start().await;
    let limits = serde_json::json!({"limits": [{"name": "one", "requests": 1, "per": "1h", "algorithm": "sliding"}]});
    let gw = Gateway::start(gateway_config(&up, Mode::Route, limits)).await;
    let c = client(Mode::Route, &gw, &up, 1, HOUR);
    assert_eq!(
        c.get(format!("{}/v1/x", up.base()))
            .send()
            .await
            .expect("first")
            .status(),
        200
    );
    for _ in 0..3 {
        let r = c
            .get(format!("{}/v1/x", up.base()))
            .send()
            .await
            .expect("limited");
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["tollgate-error"], "rate_limited");
    }
    assert_eq!(
        up.saw("GET", "/v1/x"),
        1,
        "a 429 must not be retried directly"
    );
    let s = c.stats();
    assert_eq!((s.fallbacks, s.via_gateway), (0, 4), "{s:?}");
    assert_eq!(c.breaker_state(), BreakerState::Closed);
}

async fn denial_returned_as_is(mode: Mode) {
    let up = Upstream::start().await;
    let allow = serde_json::json!({"allow": [{"methods": ["GET"], "paths": ["/v1/**"]}]});
    let gw = Gateway::start(gateway_config(&up, mode, allow)).await;
    let c = client(mode, &gw, &up, 1, HOUR);
    let r = c
        .post(format!("{}/v1/orders", up.base()))
        .body("x")
        .send()
        .await
        .expect("denied");
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["tollgate-error"], "endpoint_not_allowed");
    assert_eq!(up.saw("POST", "/v1/orders"), 0);
    let s = c.stats();
    assert_eq!((s.fallbacks, s.via_gateway), (0, 1), "{s:?}");
}

#[tokio::test]
async fn denial_403_route_mode_is_returned_as_is() {
    denial_returned_as_is(Mode::Route).await;
}

#[tokio::test]
async fn denial_403_proxy_mode_is_returned_as_is() {
    denial_returned_as_is(Mode::Proxy).await;
}

#[tokio::test]
async fn unmanaged_hosts_are_untouched_and_env_config_is_read() {
    let up = Upstream::start().await;
    let gw = Gateway::start(gateway_config(&up, Mode::Route, serde_json::json!({}))).await;
    let env: HashMap<&str, String> = HashMap::from([
        ("TOLLGATE_URL", gw.url()),
        ("TOLLGATE_MODE", "route".to_string()),
        ("TOLLGATE_ROUTES", format!("127.0.0.1:{}=/up", up.port)),
        ("TOLLGATE_BREAKER_THRESHOLD", "1".to_string()),
    ]);
    let cfg = Config::env_builder(|k| env.get(k).cloned())
        .expect("env")
        .build()
        .expect("config");
    let c = FailSafeClient::new(cfg).expect("client");
    assert_eq!(
        c.get(format!("{}/env", up.base()))
            .send()
            .await
            .expect("managed")
            .status(),
        200
    );
    gw.wait_access("/env", 1).await;
    // Same host, another port: not managed, sent direct, not a fallback.
    let other = Upstream::start().await;
    assert_eq!(
        c.get(format!("{}/plain", other.base()))
            .send()
            .await
            .expect("unmanaged")
            .status(),
        200
    );
    assert_eq!(other.saw("GET", "/plain"), 1);
    let s = c.stats();
    assert_eq!(
        (s.via_gateway, s.unmanaged, s.fallbacks),
        (1, 1, 0),
        "{s:?}"
    );
    let bad = Config::env_builder(|k| (k == "TOLLGATE_FALLBACK").then(|| "maybe".to_string()));
    assert!(bad.is_err_and(|e| e.to_string().contains("TOLLGATE_FALLBACK")));
}

#[tokio::test]
async fn gateway_fault_code_goes_direct_once() {
    // A global limit whose Redis refuses connections and that fails closed:
    // Tollgate answers 503 limit_store_unavailable, its own fault, nothing
    // sent upstream — so even a POST goes direct, exactly once.
    let up = Upstream::start().await;
    let limits = serde_json::json!({"limits": [{"name": "g", "requests": 100, "per": "1h",
        "scope": "global", "on_store_failure": "closed"}]});
    let mut cfg = gateway_config(&up, Mode::Route, limits);
    cfg["state"] = serde_json::json!({"redis": {"url": format!("redis://127.0.0.1:{}", free_port()),
        "timeout": "200ms", "prefix": "rustclienttest"}});
    let gw = Gateway::start(cfg).await;
    let c = client(Mode::Route, &gw, &up, 3, HOUR);
    let r = c
        .post(format!("{}/v1/orders", up.base()))
        .body("order")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("tollgate-error").is_none());
    assert_eq!(json_body(r).await["body"], "order");
    assert_eq!(up.saw("POST", "/v1/orders"), 1);
    let lines = gw.wait_access("/v1/orders", 1).await;
    assert_eq!(lines[0]["status"], 503, "{lines:?}");
    let s = c.stats();
    let by: Vec<(&str, u64)> = s
        .fallbacks_by_reason
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    assert_eq!(by, [("gateway_error:limit_store_unavailable", 1)], "{s:?}");
    assert_eq!(s.via_gateway, 0);
}
