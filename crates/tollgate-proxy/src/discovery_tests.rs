use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use tollgate_config::Discovery as DiscoveryConfig;
use tollgate_policy::TrafficKind;
use tollgate_telemetry::Metrics;

use super::*;

#[test]
fn normalises_ids_tokens_and_emails() {
    let cases = [
        (
            "/v1/users/123/orders/9f8c0e1d2a3b4c5d",
            "/v1/users/{id}/orders/{id}",
        ),
        ("/v1/users/123?expand=true#x", "/v1/users/{id}"),
        ("/items/3f2504e0-4f89-11d3-9a0c-0305e82c3301", "/items/{id}"),
        (
            "/customers/cus_9s6XKzkNRiz8i3/charges",
            "/customers/{id}/charges",
        ),
        ("/people/jane.doe@example.com", "/people/{id}"),
        ("/people/jane%40example.com", "/people/{id}"),
        ("/reports/2024-01-31", "/reports/{id}"),
        ("/a/{weird}/*", "/a/{id}/{id}"),
        // Names stay literal: words, versions, short hex-looking words.
        ("/v2/repos/tollgate/pulls", "/v2/repos/tollgate/pulls"),
        ("/api/deadbeef/facade", "/api/deadbeef/facade"),
        (
            "/very_long_resource_name_without_digits",
            "/very_long_resource_name_without_digits",
        ),
        // Dot segments, empty segments and trailing slashes.
        ("//a/./b/../c/", "/a/c"),
        ("/..", "/"),
        ("/", "/"),
        ("", "/"),
    ];
    for (path, want) in cases {
        assert_eq!(normalize_path(path), want, "{path}");
    }
    let long = format!("/x/{}", "a".repeat(MAX_SEGMENT_LEN + 1));
    assert_eq!(normalize_path(&long), "/x/{id}");
    let deep = "/s".repeat(MAX_SEGMENTS + 3);
    let want = format!("{}/**", "/s".repeat(MAX_SEGMENTS));
    assert_eq!(normalize_path(&deep), want);
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, v.parse().unwrap());
    }
    h
}

#[test]
fn reads_provider_rate_limit_headers() {
    assert_eq!(ProviderLimits::from_headers(&HeaderMap::new()), None);
    let l = ProviderLimits::from_headers(&headers(&[
        ("x-ratelimit-limit", "5000"),
        ("x-ratelimit-remaining", "4990"),
        ("x-ratelimit-reset", "3500"),
    ]))
    .unwrap();
    assert_eq!(l.limit, Some(5000));
    assert_eq!(l.remaining, Some(4990));
    assert_eq!(l.reset, Some(Duration::from_secs(3500)));
    let l = ProviderLimits::from_headers(&headers(&[
        ("ratelimit-policy", "\"default\";q=100;w=60"),
        ("ratelimit", "\"default\";r=42;t=17"),
    ]))
    .unwrap();
    assert_eq!(l.policy, Some((100, 60)));
    assert_eq!(l.remaining, Some(42));
    assert_eq!(l.reset, Some(Duration::from_secs(17)));
    // The older draft's bare quota.
    let l = ProviderLimits::from_headers(&headers(&[("ratelimit-policy", "10;w=1")])).unwrap();
    assert_eq!(l.policy, Some((10, 1)));
    let l = ProviderLimits::from_headers(&headers(&[("retry-after", "30")])).unwrap();
    assert_eq!(l.retry_after, Some(Duration::from_secs(30)));
}

fn seen<'a>(host: &'a str, method: &'a str, path: &'a str, status: u16) -> Seen<'a> {
    Seen {
        kind: TrafficKind::Forward,
        host,
        method,
        path,
        api: None,
        consumer: None,
        status,
        denied: false,
        duration: Duration::from_millis(20),
        limits: None,
    }
}

fn cfg(max_hosts: usize, max_endpoints_per_host: usize) -> DiscoveryConfig {
    DiscoveryConfig {
        enabled: true,
        max_hosts,
        max_endpoints_per_host,
    }
}

fn endpoints_of<'a>(snap: &'a Value, host: &str) -> &'a Vec<Value> {
    snap["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host"] == host)
        .unwrap()["endpoints"]
        .as_array()
        .unwrap()
}

#[test]
fn aggregates_by_pattern_with_statuses_consumers_and_limits() {
    let metrics = Arc::new(Metrics::new());
    let d = Discovery::new(metrics.clone());
    let c = cfg(10, 10);
    let alice: Arc<str> = Arc::from("alice");
    let bob: Arc<str> = Arc::from("bob");
    let limits = ProviderLimits {
        limit: Some(5000),
        reset: Some(Duration::from_secs(3599)),
        ..ProviderLimits::default()
    };
    for (i, path) in ["/v1/users/1", "/v1/users/2?x=1", "/v1/users/3"]
        .iter()
        .enumerate()
    {
        let mut s = seen(
            "API.Example.com",
            "GET",
            path,
            if i == 2 { 404 } else { 200 },
        );
        s.consumer = Some(if i == 0 { &alice } else { &bob });
        s.limits = Some(&limits);
        d.record(&c, &s);
    }
    let mut tunnel = seen("api.example.com", "CONNECT", "", 200);
    tunnel.kind = TrafficKind::Connect;
    d.record(&c, &tunnel);
    let snap = d.snapshot(&c);
    let eps = endpoints_of(&snap, "api.example.com");
    assert_eq!(eps.len(), 2, "{snap:#}");
    let tun = &eps[0];
    assert_eq!(
        (tun["method"].as_str(), tun["pattern"].as_str()),
        (Some("CONNECT"), Some(""))
    );
    let ep = &eps[1];
    assert_eq!(ep["pattern"], "/v1/users/{id}");
    assert_eq!(ep["method"], "GET");
    assert_eq!(ep["count"], 3);
    assert_eq!(ep["status"]["2xx"], 2);
    assert_eq!(ep["status"]["4xx"], 1);
    assert_eq!(ep["consumers"], serde_json::json!(["alice", "bob"]));
    assert_eq!(ep["latency_ms"]["p50"], 25.0_f64.min(20.0));
    assert_eq!(ep["rate_limit"]["max_limit"], 5000);
    assert_eq!(snap["endpoints"], 2);
    assert!(metrics.encode().contains("tollgate_discovery_endpoints 2"));
}

#[test]
fn bounds_hosts_and_endpoints_with_overflow_buckets() {
    let metrics = Arc::new(Metrics::new());
    let d = Discovery::new(metrics.clone());
    let c = cfg(2, 3);
    for i in 0..5 {
        let path = format!("/e{i}/x");
        d.record(&c, &seen("a.example", "GET", &path, 200));
    }
    // A repeat of a known endpoint is still counted after the bound is reached.
    d.record(&c, &seen("a.example", "GET", "/e0/x", 200));
    d.record(&c, &seen("b.example", "GET", "/", 200));
    d.record(&c, &seen("c.example", "GET", "/", 200));
    d.record(&c, &seen("d.example", "GET", "/", 200));
    let snap = d.snapshot(&c);
    let hosts = snap["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 2, "{snap:#}");
    let a = hosts.iter().find(|h| h["host"] == "a.example").unwrap();
    assert_eq!(a["endpoints"].as_array().unwrap().len(), 3);
    assert_eq!(a["overflow"], 2);
    assert_eq!(a["endpoints"][0]["count"], 2);
    assert_eq!(snap["host_overflow"], 2);
    let text = metrics.encode();
    assert!(
        text.contains("tollgate_discovery_overflow_total 4"),
        "{text}"
    );
    assert!(text.contains("tollgate_discovery_endpoints 4"), "{text}");
}

#[test]
fn disabled_records_nothing() {
    let d = Discovery::new(Arc::new(Metrics::new()));
    let mut c = cfg(10, 10);
    c.enabled = false;
    d.record(&c, &seen("a.example", "GET", "/", 200));
    assert_eq!(d.snapshot(&c)["hosts"].as_array().unwrap().len(), 0);
}

#[test]
fn latency_quantiles_come_from_buckets_clamped_to_min_and_max() {
    let d = Discovery::new(Arc::new(Metrics::new()));
    let c = cfg(10, 10);
    for i in 0..100 {
        let mut s = seen("a.example", "GET", "/", 200);
        s.duration = Duration::from_millis(if i < 98 { 3 } else { 700 });
        d.record(&c, &s);
    }
    let snap = d.snapshot(&c);
    let lat = &endpoints_of(&snap, "a.example")[0]["latency_ms"];
    assert_eq!(lat["min"], 3.0);
    assert_eq!(lat["max"], 700.0);
    assert_eq!(lat["p50"], 5.0);
    assert_eq!(lat["p99"], 700.0);
    assert_eq!(lat["avg"], (98.0 * 3.0 + 2.0 * 700.0) / 100.0);
}
