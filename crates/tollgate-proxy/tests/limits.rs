//! Rate limits through the proxy: counting, 429 with the IETF fields, metrics,
//! and counters that survive a configuration swap.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/harness.rs"]
mod harness;

use std::sync::Arc;

use harness::{Proxy, echo_upstream, raw};
use tollgate_policy::Policy;
use tollgate_proxy::Active;

// GCRA rather than a fixed minute, so the test cannot straddle a window edge: the bucket refills
// one request every 20 minutes.
const CONFIG: &str = "apis:\n  - name: local\n    hosts: [\"127.0.0.1\"]\n    limits: [{ name: burst, requests: 3, per: 1h, algorithm: gcra }]\n";

#[tokio::test]
async fn fourth_request_is_refused_with_ratelimit_fields() {
    let up = echo_upstream().await;
    let proxy = Proxy::start(CONFIG).await;
    let req = format!(
        "GET http://{}/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        up.addr
    );
    for left in [2, 1] {
        let resp = raw(proxy.addr, req.as_bytes()).await;
        assert_eq!(resp.status, 200, "{resp:?}");
        assert_eq!(
            resp.header("ratelimit-policy"),
            Some("\"burst\";q=3;w=3600")
        );
        let rl = resp.header("ratelimit").unwrap();
        assert!(rl.starts_with(&format!("\"burst\";r={left};t=")), "{rl}");
        assert!(resp.header("retry-after").is_none());
    }

    // A reload keeps the counters: they live on the gateway, not in the policy.
    let gw = &proxy.gateway;
    let yaml = format!("network_guard: {{ allow: [\"127.0.0.1/32\"] }}\n{CONFIG}");
    let cfg = tollgate_config::load_str(&yaml, "again.yaml")
        .unwrap()
        .config;
    let policy = Policy::compile(Arc::new(cfg), 2).unwrap();
    let prev = gw.active.load_full();
    let next = Active::build(policy, &[proxy.addr], Some(&prev)).unwrap();
    gw.active.store(Arc::new(next));

    let resp = raw(proxy.addr, req.as_bytes()).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert!(
        resp.header("ratelimit")
            .unwrap()
            .starts_with("\"burst\";r=0;")
    );

    let resp = raw(proxy.addr, req.as_bytes()).await;
    assert_eq!(resp.status, 429, "{resp:?}");
    assert_eq!(resp.header("tollgate-error"), Some("rate_limited"));
    assert_eq!(
        resp.header("content-type"),
        Some("application/problem+json")
    );
    let retry: u64 = resp.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=1200).contains(&retry), "{retry}");
    assert!(
        resp.header("ratelimit")
            .unwrap()
            .starts_with("\"burst\";r=0;t=")
    );
    let body = resp.json();
    assert_eq!(body["code"], "rate_limited");
    assert!(body["detail"].as_str().unwrap().contains("\"burst\""));
    // Only the first three requests reached the upstream.
    assert_eq!(up.seen.lock().unwrap().len(), 3);

    let text = gw.metrics.encode();
    for (result, n) in [("admitted", 3), ("limited", 1)] {
        let line = format!(
            "tollgate_limit_decisions_total{{api=\"local\",limit=\"burst\",result=\"{result}\"}} {n}"
        );
        assert!(text.contains(&line), "{line} missing from\n{text}");
    }
    let lines = proxy.wait_log(4).await;
    assert_eq!(lines[3]["status"], 429);
    assert_eq!(lines[3]["reason"], "rate_limited");
}
