//! Global (Redis) limits across several gateway instances, Redis outages with fail-open at the
//! fair share and fail-closed with 503, automatic recovery, and persistence of local counters.
//! Uses the real Redis on 127.0.0.1:6379 (unique key prefixes) and a redis-server each outage
//! test starts on its own port.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/harness.rs"]
mod harness;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use harness::{Proxy, RawResponse, echo_upstream, raw};

fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("tgtest-{tag}-{}-{nanos}", std::process::id())
}

async fn get(proxy: SocketAddr, path: &str) -> RawResponse {
    let req = format!("GET {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n");
    raw(proxy, req.as_bytes()).await
}

/// `timeout` is generous where Redis is up (a loaded CI machine must not look like an outage)
/// and short where the test kills it.
fn config(
    redis_url: &str,
    prefix: &str,
    timeout: &str,
    upstream: SocketAddr,
    apis: &str,
) -> String {
    format!(
        "state: {{ redis: {{ url: \"{redis_url}\", prefix: \"{prefix}\", timeout: {timeout} }} }}\napis:\n{}",
        apis.replace("UPSTREAM", &format!("http://{upstream}"))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_gateways_share_one_global_limit_exactly() {
    let up = echo_upstream().await;
    let prefix = unique("shared");
    // A 1h fixed window: the test cannot straddle its edge unless it runs across a full hour.
    // The local limit makes every request take the mixed path (peek local, charge Redis,
    // charge local).
    let yaml = config(
        "redis://127.0.0.1:6379",
        &prefix,
        "2s",
        up.addr,
        "  - name: shared\n    route: /s\n    upstream: UPSTREAM\n    limits:\n      - { name: hourly, requests: 60, per: 1h, scope: global }\n      - { name: roomy, requests: 1000, per: 1h }\n",
    );
    let proxies = [
        Proxy::start(&yaml).await,
        Proxy::start(&yaml).await,
        Proxy::start(&yaml).await,
    ];
    let addrs: Vec<SocketAddr> = proxies.iter().map(|p| p.addr).collect();
    let mut tasks = Vec::new();
    for client in 0..30 {
        let addrs = addrs.clone();
        tasks.push(tokio::spawn(async move {
            let mut codes = Vec::new();
            for i in 0..5 {
                let r = get(addrs[(client + i) % addrs.len()], "/s/x").await;
                codes.push((r.status, r.header("tollgate-error").map(str::to_owned)));
            }
            codes
        }));
    }
    let mut ok = 0;
    let mut limited = 0;
    for t in tasks {
        for (status, code) in t.await.unwrap() {
            match status {
                200 => ok += 1,
                429 => {
                    assert_eq!(code.as_deref(), Some("rate_limited"));
                    limited += 1;
                }
                other => panic!("unexpected status {other} ({code:?})"),
            }
        }
    }
    assert_eq!((ok, limited), (60, 90));

    // Every instance sees the same shared counter in /admin/limits.
    for p in &proxies {
        let doc = tollgate_proxy::admin_limits::snapshot(&p.gateway).await;
        let l = &doc["apis"][0]["limits"][0];
        assert_eq!(l["scope"], "global");
        assert_eq!(l["store"], "redis");
        assert_eq!(l["keys"][0]["key"], "-");
        assert_eq!(l["keys"][0]["used"], 60);
        assert_eq!(l["keys"][0]["remaining"], 0);
        assert!(l["keys"][0]["reset_after_ms"].as_u64().unwrap() <= 3_600_000);
        assert_eq!(doc["store"]["degraded"], false);
        // The local limit only counted what this instance admitted.
        assert_eq!(doc["apis"][0]["limits"][1]["scope"], "local");
    }
    let local_used: u64 = {
        let mut n = 0;
        for p in &proxies {
            let doc = tollgate_proxy::admin_limits::snapshot(&p.gateway).await;
            n += doc["apis"][0]["limits"][1]["keys"][0]["used"]
                .as_u64()
                .unwrap_or(0);
        }
        n
    };
    assert_eq!(local_used, 60);
    let m = proxies[0].gateway.metrics.encode();
    assert!(m.contains("tollgate_limit_store_degraded 0"), "{m}");
    assert!(
        m.contains("tollgate_limit_store_latency_seconds_count"),
        "{m}"
    );
}

/// A redis-server of the test's own, on a free port.
struct OwnRedis {
    port: u16,
    child: Option<Child>,
}

impl OwnRedis {
    async fn start(port: u16) -> OwnRedis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed");
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        OwnRedis {
            port,
            child: Some(child),
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn free_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `n` requests, each bounded in time, and returns the statuses with their error codes.
async fn burst(proxy: SocketAddr, path: &str, n: usize) -> Vec<(u16, Option<String>)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let r = get(proxy, path).await;
        // Redis is down or back: no request waits much beyond the 1 s store timeout.
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "a request took {:?}",
            t.elapsed()
        );
        out.push((r.status, r.header("tollgate-error").map(str::to_owned)));
    }
    out
}

fn count(codes: &[(u16, Option<String>)], status: u16, code: Option<&str>) -> usize {
    codes
        .iter()
        .filter(|(s, c)| *s == status && c.as_deref() == code)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_outage_fails_open_at_fair_share_or_closed_and_recovers() {
    let up = echo_upstream().await;
    let port = free_port().await;
    let mut redis = OwnRedis::start(port).await;
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let prefix = unique("outage");
    let yaml = config(
        &url,
        &prefix,
        // Killed Redis refuses connections at once, so the timeout only guards against a slow
        // machine making a live Redis look dead (which would turn shared counting local).
        "1s",
        up.addr,
        "  - name: open\n    route: /open\n    upstream: UPSTREAM\n    limits: [{ name: hourly, requests: 20, per: 1h, scope: global }]\n  - name: closed\n    route: /closed\n    upstream: UPSTREAM\n    limits: [{ name: hourly, requests: 1000, per: 1h, scope: global, on_store_failure: closed }]\n",
    );
    let g1 = Proxy::start(&yaml).await;
    let g2 = Proxy::start(&yaml).await;
    let store = g1.gateway.global.load_full().unwrap();
    // Both announce themselves; g1 learns of g2 on its next heartbeat.
    wait_for("two live instances", || store.instances() == 2).await;

    let before = burst(g1.addr, "/open/x", 4).await;
    assert_eq!(count(&before, 200, None), 4, "{before:?}");
    assert_eq!(count(&burst(g2.addr, "/closed/x", 2).await, 200, None), 2);

    redis.kill();
    // Closed: 503 limit_store_unavailable, promptly.
    let closed = burst(g1.addr, "/closed/x", 3).await;
    assert_eq!(
        count(&closed, 503, Some("limit_store_unavailable")),
        3,
        "{closed:?}"
    );
    assert!(store.is_degraded());
    // Open: this instance enforces its fair share, 20 / 2 instances = 10, on its own.
    let open = burst(g1.addr, "/open/x", 14).await;
    assert_eq!(count(&open, 200, None), 10, "{open:?}");
    assert_eq!(count(&open, 429, Some("rate_limited")), 4, "{open:?}");
    let doc = tollgate_proxy::admin_limits::snapshot(&g1.gateway).await;
    assert_eq!(doc["store"]["degraded"], true);
    assert_eq!(doc["apis"][0]["limits"][0]["store"], "unavailable");
    let m = g1.gateway.metrics.encode();
    assert!(m.contains("tollgate_limit_store_degraded 1"), "{m}");
    assert!(
        !m.contains("tollgate_limit_store_errors_total{kind=\"unavailable\"} 0"),
        "{m}"
    );

    // Redis comes back (empty: it keeps nothing on disk): recovery without a gateway restart.
    let _redis = OwnRedis::start(port).await;
    let store2 = g2.gateway.global.load_full().unwrap();
    wait_for("recovery", || !store.is_degraded() && !store2.is_degraded()).await;
    let after = burst(g1.addr, "/closed/x", 2).await;
    assert_eq!(count(&after, 200, None), 2, "{after:?}");
    // The shared counter starts afresh in the new Redis: the whole 20 are available again,
    // shared by both instances.
    let mut admitted = 0;
    let mut seen = Vec::new();
    for (i, p) in [&g1, &g2, &g1, &g2].iter().enumerate() {
        let got = burst(p.addr, "/open/x", if i < 2 { 10 } else { 3 }).await;
        admitted += count(&got, 200, None);
        seen.push((
            count(&got, 200, None),
            store.is_degraded(),
            store2.is_degraded(),
        ));
    }
    let errors = |g: &Proxy| {
        g.gateway
            .metrics
            .encode()
            .lines()
            .filter(|l| l.starts_with("tollgate_limit_store_errors_total"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(admitted, 20, "{seen:?} {:?} {:?}", errors(&g1), errors(&g2));
    assert!(
        g1.gateway
            .metrics
            .encode()
            .contains("tollgate_limit_store_degraded 0")
    );
}

#[tokio::test]
async fn day_and_month_quotas_survive_a_restart_with_the_same_state_dir() {
    let up = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "state: {{ dir: \"{}\" }}\napis:\n  - name: q\n    route: /q\n    upstream: http://{}\n    limits:\n      - {{ name: daily, requests: 5, per: 1d }}\n      - {{ name: monthly, requests: 100, per: month, time_zone: \"+02:00\", renewal_day: 15 }}\n      - {{ name: minute, requests: 50, per: 1m }}\n",
        dir.path().display(),
        up.addr
    );
    let first = Proxy::start(&yaml).await;
    for _ in 0..3 {
        assert_eq!(get(first.addr, "/q/x").await.status, 200);
    }
    // What shutdown does once requests have drained.
    assert_eq!(tollgate_proxy::persist::save(&first.gateway).unwrap(), 2);
    first.task.abort();
    drop(first);

    let second = Proxy::start(&yaml).await;
    let doc = tollgate_proxy::admin_limits::snapshot(&second.gateway).await;
    let limits = &doc["apis"][0]["limits"];
    assert_eq!(limits[0]["keys"][0]["used"], 3);
    assert_eq!(limits[1]["keys"][0]["used"], 3);
    assert_eq!(limits[1]["window"], "month");
    // Minute windows are not persisted.
    assert_eq!(limits[2]["keys"].as_array().unwrap().len(), 0);
    let codes: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(get(second.addr, "/q/x").await.status);
        }
        v
    };
    assert_eq!(codes, [200, 200, 429]);
}

#[tokio::test]
async fn a_refusal_by_either_kind_charges_neither() {
    let up = echo_upstream().await;
    let prefix = unique("order");
    let yaml = config(
        "redis://127.0.0.1:6379",
        &prefix,
        "2s",
        up.addr,
        "  - name: localfirst\n    route: /lf\n    upstream: UPSTREAM\n    limits:\n      - { name: g, requests: 100, per: 1h, scope: global }\n      - { name: l, requests: 2, per: 1h }\n  - name: globalfirst\n    route: /gf\n    upstream: UPSTREAM\n    limits:\n      - { name: g, requests: 3, per: 1h, scope: global }\n      - { name: l, requests: 100, per: 1h }\n",
    );
    let p = Proxy::start(&yaml).await;
    let lf = burst(p.addr, "/lf/x", 5).await;
    assert_eq!(count(&lf, 200, None), 2, "{lf:?}");
    let gf = burst(p.addr, "/gf/x", 5).await;
    assert_eq!(count(&gf, 200, None), 3, "{gf:?}");
    let r = get(p.addr, "/gf/x").await;
    assert!(
        r.header("ratelimit").unwrap().starts_with("\"g\";r=0;"),
        "{r:?}"
    );
    assert!(r.header("retry-after").is_some());
    let doc = tollgate_proxy::admin_limits::snapshot(&p.gateway).await;
    let used =
        |api: usize, limit: usize| doc["apis"][api]["limits"][limit]["keys"][0]["used"].clone();
    // Local refusals did not reach Redis; global refusals did not charge the local limit.
    assert_eq!((used(0, 0), used(0, 1)), (2.into(), 2.into()));
    assert_eq!((used(1, 0), used(1, 1)), (3.into(), 3.into()));
}
