use super::*;
use std::sync::Arc;

/// The value of the one sample line whose name-and-labels part is exactly `series`.
fn sample(text: &str, series: &str) -> Option<String> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(str::to_owned)
}

fn observation<'a>() -> RequestObservation<'a> {
    RequestObservation {
        kind: "route",
        api: "github",
        consumer: "ci",
        status: 201,
        decision: "allow",
        total: Duration::from_millis(12),
        upstream: Some(Duration::from_millis(10)),
        bytes_in: 100,
        bytes_out: 2048,
    }
}

#[test]
fn observe_request_exports_counter_histograms_and_bytes() {
    let m = Metrics::new();
    m.observe_request(&observation());
    m.observe_request(&observation());
    m.observe_request(&RequestObservation {
        kind: "forward",
        api: "",
        consumer: "",
        status: 403,
        decision: "deny",
        total: Duration::from_micros(300),
        upstream: None,
        bytes_in: 0,
        bytes_out: 0,
    });
    let text = m.encode();

    assert_eq!(
        sample(
            &text,
            r#"tollgate_requests_total{kind="route",api="github",consumer="ci",status_class="2xx",decision="allow"}"#
        )
        .as_deref(),
        Some("2"),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"tollgate_requests_total{kind="forward",api="none",consumer="unknown",status_class="4xx",decision="deny"}"#
        )
        .as_deref(),
        Some("1"),
        "{text}"
    );
    assert!(text.contains("# TYPE tollgate_request_duration_seconds histogram"));
    assert_eq!(
        sample(
            &text,
            r#"tollgate_request_duration_seconds_count{kind="route",api="github"}"#
        )
        .as_deref(),
        Some("2")
    );
    assert_eq!(
        sample(
            &text,
            r#"tollgate_request_duration_seconds_sum{kind="route",api="github"}"#
        )
        .as_deref(),
        Some("0.024")
    );
    assert_eq!(
        sample(
            &text,
            r#"tollgate_request_duration_seconds_bucket{le="0.0005",kind="forward",api="none"}"#
        )
        .as_deref(),
        Some("1"),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"tollgate_upstream_duration_seconds_count{api="github"}"#
        )
        .as_deref(),
        Some("2")
    );
    // No upstream time was observed for the unmatched request.
    assert_eq!(
        sample(
            &text,
            r#"tollgate_upstream_duration_seconds_count{api="none"}"#
        )
        .as_deref(),
        Some("0")
    );
    assert_eq!(
        sample(
            &text,
            r#"tollgate_request_bytes_total{api="github",direction="in"}"#
        )
        .as_deref(),
        Some("200")
    );
    assert_eq!(
        sample(
            &text,
            r#"tollgate_request_bytes_total{api="github",direction="out"}"#
        )
        .as_deref(),
        Some("4096")
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
}

#[test]
fn status_classes() {
    assert_eq!(status_class(101), "1xx");
    assert_eq!(status_class(200), "2xx");
    assert_eq!(status_class(304), "3xx");
    assert_eq!(status_class(499), "4xx");
    assert_eq!(status_class(502), "5xx");
    assert_eq!(status_class(0), "other");
    assert_eq!(status_class(600), "other");
}

#[test]
fn connection_guard_decrements_on_drop() {
    let m = Metrics::new();
    let gauge = "tollgate_proxy_connections_active";
    assert_eq!(sample(&m.encode(), gauge).as_deref(), Some("0"));
    let a = m.connection_opened();
    let b = m.connection_opened();
    assert_eq!(sample(&m.encode(), gauge).as_deref(), Some("2"));
    drop(a);
    assert_eq!(sample(&m.encode(), gauge).as_deref(), Some("1"));
    drop(b);
    assert_eq!(sample(&m.encode(), gauge).as_deref(), Some("0"));
}

#[test]
fn tunnels_gauge_and_bytes_by_api() {
    let m = Metrics::new();
    let t1 = m.tunnel_opened("s3");
    let t2 = m.tunnel_opened("s3");
    let t3 = m.tunnel_opened("");
    m.tunnel_bytes("s3", 10, 0);
    m.tunnel_bytes("s3", 5, 700);
    let text = m.encode();
    assert_eq!(
        sample(&text, r#"tollgate_proxy_tunnels_active{api="s3"}"#).as_deref(),
        Some("2")
    );
    assert_eq!(
        sample(&text, r#"tollgate_proxy_tunnels_active{api="none"}"#).as_deref(),
        Some("1")
    );
    assert_eq!(
        sample(
            &text,
            r#"tollgate_tunnel_bytes_total{api="s3",direction="in"}"#
        )
        .as_deref(),
        Some("15")
    );
    assert_eq!(
        sample(
            &text,
            r#"tollgate_tunnel_bytes_total{api="s3",direction="out"}"#
        )
        .as_deref(),
        Some("700")
    );
    drop((t1, t2, t3));
    let text = m.encode();
    assert_eq!(
        sample(&text, r#"tollgate_proxy_tunnels_active{api="s3"}"#).as_deref(),
        Some("0")
    );
    assert_eq!(
        sample(&text, r#"tollgate_proxy_tunnels_active{api="none"}"#).as_deref(),
        Some("0")
    );
}

#[test]
fn guard_dns_config_and_build_info() {
    let m = Metrics::new();
    let text = m.encode();
    assert_eq!(
        sample(&text, r#"tollgate_config_reloads_total{result="error"}"#).as_deref(),
        Some("0")
    );
    assert_eq!(
        sample(
            &text,
            &format!(
                r#"tollgate_build_info{{version="{}"}}"#,
                env!("CARGO_PKG_VERSION")
            )
        )
        .as_deref(),
        Some("1")
    );

    m.guard_denied("private_address");
    m.guard_denied("private_address");
    m.guard_denied("metadata");
    m.dns_error("timeout");
    m.config_applied(7);
    m.config_reload_failed();
    let text = m.encode();
    assert_eq!(
        sample(
            &text,
            r#"tollgate_guard_denials_total{reason="private_address"}"#
        )
        .as_deref(),
        Some("2")
    );
    assert_eq!(
        sample(&text, r#"tollgate_guard_denials_total{reason="metadata"}"#).as_deref(),
        Some("1")
    );
    assert_eq!(
        sample(&text, r#"tollgate_dns_errors_total{kind="timeout"}"#).as_deref(),
        Some("1")
    );
    assert_eq!(
        sample(&text, "tollgate_config_version").as_deref(),
        Some("7")
    );
    assert_eq!(
        sample(&text, r#"tollgate_config_reloads_total{result="ok"}"#).as_deref(),
        Some("1")
    );
    assert_eq!(
        sample(&text, r#"tollgate_config_reloads_total{result="error"}"#).as_deref(),
        Some("1")
    );
    assert_eq!(
        sample(&text, "tollgate_config_last_reload_success").as_deref(),
        Some("0")
    );
    m.config_applied(8);
    let text = m.encode();
    assert_eq!(
        sample(&text, "tollgate_config_last_reload_success").as_deref(),
        Some("1")
    );
    assert_eq!(
        sample(&text, "tollgate_config_version").as_deref(),
        Some("8")
    );
    assert_eq!(
        sample(&text, "tollgate_access_log_dropped_total").as_deref(),
        Some("0")
    );
}

#[test]
fn label_values_are_escaped_in_exposition() {
    let m = Metrics::new();
    m.observe_request(&RequestObservation {
        api: "we\"ird\\api\nname",
        ..observation()
    });
    let text = m.encode();
    assert!(
        text.contains(r#"api="we\"ird\\api\nname""#),
        "label value not escaped: {text}"
    );
}

#[test]
fn concurrent_observations_are_all_counted() {
    let m = Arc::new(Metrics::new());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let m = Arc::clone(&m);
            std::thread::spawn(move || {
                let apis = ["a", "b", "c"];
                for i in 0..300 {
                    m.observe_request(&RequestObservation {
                        api: apis[(i + t) % 3],
                        ..observation()
                    });
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let text = m.encode();
    let total: u64 = ["a", "b", "c"]
        .iter()
        .map(|api| {
            sample(
                &text,
                &format!(
                    r#"tollgate_requests_total{{kind="route",api="{api}",consumer="ci",status_class="2xx",decision="allow"}}"#
                ),
            )
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
        })
        .sum();
    assert_eq!(total, 1200, "{text}");
}

#[test]
fn limit_decisions_by_api_limit_and_result() {
    let m = Metrics::new();
    m.limit_decision("gh", "burst", false);
    m.limit_decision("gh", "burst", false);
    m.limit_decision("gh", "burst", true);
    m.limit_decision("gh", "daily", false);
    let text = m.encode();
    let series = |limit: &str, result: &str| {
        sample(
            &text,
            &format!(
                "tollgate_limit_decisions_total{{api=\"gh\",limit=\"{limit}\",result=\"{result}\"}}"
            ),
        )
    };
    assert_eq!(series("burst", "admitted").as_deref(), Some("2"));
    assert_eq!(series("burst", "limited").as_deref(), Some("1"));
    assert_eq!(series("daily", "admitted").as_deref(), Some("1"));
    assert_eq!(series("daily", "limited"), None);
}
