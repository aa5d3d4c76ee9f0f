use super::*;
use crate::load::load_str;

/// Loads `src` and returns (path, message) of every error.
fn problems(src: &str) -> Vec<(String, String)> {
    match load_str(src, "v.yaml") {
        Ok(_) => Vec::new(),
        Err(e) => e.0.into_iter().map(|e| (e.path, e.message)).collect(),
    }
}

fn paths(src: &str) -> Vec<String> {
    problems(src).into_iter().map(|p| p.0).collect()
}

fn api(extra: &str) -> String {
    format!("apis:\n  - name: a\n    hosts: [a.example.com]\n{extra}")
}

#[test]
fn guard_entries_parse() {
    let net = |s: &str| match parse_guard_entry(s).unwrap() {
        GuardEntry::Net(n) => n.to_string(),
        GuardEntry::SocketAddr(a) => panic!("{s} parsed as {a}"),
    };
    assert_eq!(net("10.0.0.0/8"), "10.0.0.0/8");
    assert_eq!(net("10.1.2.3"), "10.1.2.3/32");
    assert_eq!(net("fd00::1"), "fd00::1/128");
    assert_eq!(net("fd00::/8"), "fd00::/8");
    assert_eq!(
        parse_guard_entry("10.0.0.5:8443"),
        Ok(GuardEntry::SocketAddr("10.0.0.5:8443".parse().unwrap()))
    );
    assert_eq!(
        parse_guard_entry("[::1]:443"),
        Ok(GuardEntry::SocketAddr("[::1]:443".parse().unwrap()))
    );
    for bad in [
        "",
        "10.0.0.0/33",
        "example.com",
        "10.0.0.5:0",
        "::1:443x",
        "10.0.0.0/8:443",
    ] {
        assert!(parse_guard_entry(bad).is_err(), "{bad}");
    }
}

#[test]
fn guard_lists_are_checked() {
    let p =
        paths("network_guard:\n  allow: [10.0.0.0/8, nope]\n  deny: [\"[::1]:443\", 1.2.3.4/40]\n");
    assert_eq!(p, ["network_guard.allow[1]", "network_guard.deny[1]"]);
}

#[test]
fn names_are_unique_and_well_formed() {
    let src = "\
consumers:
  - { name: anonymous, identify: { source: [10.0.0.1] } }
  - { name: \"bad name\", identify: { source: [10.0.0.2] } }
  - { name: c, identify: { source: [10.0.0.3] } }
  - { name: c, identify: { source: [10.0.0.4] } }
  - { name: \"\", identify: { source: [10.0.0.5] } }
apis:
  - { name: x.y-z_1, hosts: [a.example.com] }
  - { name: \"a/b\", hosts: [b.example.com] }
  - { name: x.y-z_1, hosts: [c.example.com] }
";
    let p = problems(src);
    let got: Vec<_> = p.iter().map(|p| p.0.as_str()).collect();
    assert_eq!(
        got,
        [
            "consumers[0].name",
            "consumers[1].name",
            "consumers[3].name",
            "consumers[4].name",
            "apis[1].name",
            "apis[2].name"
        ]
    );
    assert!(p[0].1.contains("reserved"));
    assert!(p[2].1.contains("already used by consumers[2]"));
}

#[test]
fn consumer_api_references_must_exist() {
    let src = format!(
        "{}consumers:\n  - name: c\n    identify: {{ source: [10.0.0.0/8] }}\n    apis: [a, missing]\n",
        api("")
    );
    let p = problems(&src);
    assert_eq!(
        p,
        [(
            "consumers[0].apis[1]".to_owned(),
            "no API is named \"missing\"".to_owned()
        )]
    );
}

#[test]
fn routes_are_checked() {
    let base = "apis:\n  - { name: a, hosts: [a.example.com], route: /a }\n";
    for (route, ok) in [
        ("/b", true),
        ("/b/v1", true),
        ("b", false),
        ("/b/", false),
        ("/", false),
        ("/admin", false),
        ("/admin/x", false),
        ("/administrators", true),
        ("/a", false),
        ("/b/*", false),
    ] {
        let src = format!("{base}  - {{ name: b, hosts: [b.example.com], route: \"{route}\" }}\n");
        let p = paths(&src);
        if ok {
            assert!(p.is_empty(), "{route}: {p:?}");
        } else {
            assert_eq!(p, ["apis[1].route"], "{route}");
        }
    }
}

#[test]
fn routed_api_needs_a_target() {
    assert_eq!(
        paths("apis:\n  - { name: a, hosts: [\"*.example.com\"], route: /a }\n"),
        ["apis[0].route"]
    );
    assert_eq!(
        paths("apis:\n  - { name: a, route: /a }\n"),
        ["apis[0].route"]
    );
    assert!(
        paths("apis:\n  - { name: a, route: /a, upstream: \"http://127.0.0.1:9000\" }\n")
            .is_empty()
    );
    assert!(paths("apis:\n  - { name: a, hosts: [\"*.x.com\", x.com], route: /a }\n").is_empty());
}

#[test]
fn upstreams_are_absolute_http_urls() {
    for (u, ok) in [
        ("https://api.example.com", true),
        ("http://127.0.0.1:9000/base", true),
        ("https://[::1]:8443", true),
        ("ftp://example.com", false),
        ("api.example.com", false),
        ("/relative", false),
        ("https://api.example.com/?x=1", false),
        ("https://api.example.com/#frag", false),
        ("https://user:pw@api.example.com", false),
        ("https://", false),
    ] {
        let p = paths(&api(&format!("    upstream: \"{u}\"\n")));
        assert_eq!(p.is_empty(), ok, "{u}: {p:?}");
        if !ok {
            assert_eq!(p, ["apis[0].upstream"]);
        }
    }
}

#[test]
fn hosts_are_plain_names() {
    for (h, ok) in [
        ("api.example.com", true),
        ("*.example.com", true),
        ("10.0.0.1", true),
        ("[fd00::1]", true),
        ("", false),
        ("https://api.example.com", false),
        ("api.example.com:443", false),
        ("api.example.com/v1", false),
        ("api.*.com", false),
        ("*", false),
        ("*.", false),
        ("**.example.com", false),
    ] {
        let src = format!("apis:\n  - name: a\n    hosts: [\"{h}\"]\n");
        assert_eq!(paths(&src).is_empty(), ok, "{h}");
        if !ok {
            assert_eq!(paths(&src), ["apis[0].hosts[0]"], "{h}");
        }
    }
}

#[test]
fn listeners() {
    assert_eq!(
        paths("listen: { proxy: 127.0.0.1:9000, admin: 127.0.0.1:9000 }\n"),
        ["listen.admin"]
    );
    // Two ephemeral-port listeners never collide.
    assert!(paths("listen: { proxy: 127.0.0.1:0, admin: 127.0.0.1:0 }\n").is_empty());
    let p = problems("listen: { admin: 0.0.0.0:8081 }\n");
    assert_eq!(p.len(), 1);
    assert!(p[0].1.contains("admin.token"), "{p:?}");
    assert!(paths("listen: { admin: \"[::1]:8081\" }\n").is_empty());
    assert!(paths("listen: { admin: 0.0.0.0:8081 }\nadmin: { token: \"${env:T}\" }\n").is_empty());
}

#[test]
fn identities_are_checked() {
    let src = "\
consumers:
  - name: a
    identify: { header: { name: \"bad header\", value: a } }
  - name: b
    identify: { header: { name: X-Who, value: \"\" } }
  - name: c
    identify: { source: [10.0.0.0/8, \"10.0.0.1:80\", nope] }
  - name: d
    identify: { source: [] }
  - name: e
    identify: { api_key: { key: \"${env:K}\", header: \"x key\" } }
  - name: f
    identify: { header: { name: x-who, value: f } }
  - name: g
    identify: { header: { name: X-Who, value: f } }
";
    assert_eq!(
        paths(src),
        [
            "consumers[0].identify.header.name",
            "consumers[1].identify.header.value",
            "consumers[2].identify.source[1]",
            "consumers[2].identify.source[2]",
            "consumers[3].identify.source",
            "consumers[4].identify.api_key.header",
            "consumers[6].identify",
        ]
    );
}

#[test]
fn limits() {
    assert_eq!(
        paths("connect: { allowed_ports: [] }\n"),
        ["connect.allowed_ports"]
    );
    assert_eq!(
        paths("connect: { allowed_ports: [443, 0] }\n"),
        ["connect.allowed_ports[1]"]
    );
    assert_eq!(
        paths("server: { max_headers: 0 }\n"),
        ["server.max_headers"]
    );
    assert_eq!(
        paths("server: { max_connections: 0 }\n"),
        ["server.max_connections"]
    );
    assert_eq!(
        paths("logging: { access_log: \"\" }\n"),
        ["logging.access_log"]
    );
}

#[test]
fn validate_without_source_falls_back_to_origin() {
    let mut cfg = crate::Config::default();
    cfg.server.max_headers = 0;
    let e = validate(&cfg, &SourceMap::empty("<api>"));
    assert_eq!(e.len(), 1);
    assert_eq!(
        e[0].to_string(),
        "<api>:1:1: server.max_headers: must be at least 1"
    );
}

#[test]
fn limits_are_checked() {
    let src = api("    limits:
      - { name: hourly, requests: 5000, per: 1h }
      - { name: hourly, requests: 0, per: 90s }
      - { name: \"bad name\", requests: 1, per: 90s, algorithm: sliding }
      - { name: s, requests: 1, per: 0s, algorithm: sliding, burst: 3 }
      - { name: g, requests: 10, per: 1s, algorithm: gcra, burst: 0 }
      - { name: ok, requests: 10, per: 1d, algorithm: gcra, burst: 20, by: \"header:X-Team\" }
");
    let got = problems(&src);
    let p: Vec<_> = got.iter().map(|p| p.0.as_str()).collect();
    assert_eq!(
        p,
        [
            "apis[0].limits[1].name",
            "apis[0].limits[1].requests",
            "apis[0].limits[1].per",
            "apis[0].limits[2].name",
            "apis[0].limits[3].per",
            "apis[0].limits[3].burst",
            "apis[0].limits[4].burst",
        ],
        "{got:#?}"
    );
    assert!(got[2].1.contains("1s, 1m, 1h or 1d"), "{}", got[2].1);

    // Each accepted `per` of a fixed window, and the key forms.
    for per in ["1s", "1m", "1h", "1d", "60s", "24h"] {
        let src = api(&format!(
            "    limits: [{{ name: l, requests: 1, per: {per} }}]\n"
        ));
        assert!(problems(&src).is_empty(), "{per}");
    }
    let loaded = load_str(
        &api("    limits:\n      - { name: a, requests: 1, per: 1m, by: consumer }\n      - { name: b, requests: 1, per: 1m, by: endpoint }\n      - { name: c, requests: 1, per: 1m, by: \"header:X-Team\" }\n"),
        "v.yaml",
    )
    .unwrap();
    let by: Vec<String> = loaded.config.apis[0]
        .limits
        .iter()
        .map(|l| l.by.to_string())
        .collect();
    assert_eq!(by, ["consumer", "endpoint", "header:x-team"]);

    // A bad key is a located parse error.
    for bad in ["everyone", "\"header:bad name\"", "\"header:\""] {
        let src = api(&format!(
            "    limits: [{{ name: l, requests: 1, per: 1m, by: {bad} }}]\n"
        ));
        let got = problems(&src);
        assert_eq!(got.len(), 1, "{bad}: {got:?}");
        assert!(got[0].0.starts_with("apis[0].limits[0]"), "{bad}: {got:?}");
    }
}

#[test]
fn response_costs_are_checked() {
    let src = api("    limits:
      - { name: none, requests: 5, per: 1d, cost: {} }
      - { name: two, requests: 5, per: 1d, cost: { header: x-w, response_bytes: true } }
      - { name: path, requests: 5, per: 1d, cost: { response_json: \"usage..total\" } }
      - { name: dflt, requests: 5, per: 1d, cost: { response_bytes: true, default: 3, reserve: 0 } }
      - { name: hres, requests: 5, per: 1d, cost: { header: x-w, reserve: 2 } }
      - { name: ok, requests: 5, per: 1d, cost: { response_json: usage.total_tokens, default: 1, reserve: 2 } }
      - { name: okb, requests: 5, per: 1d, cost: { response_bytes: true } }
");
    assert_eq!(
        paths(&src),
        [
            "apis[0].limits[0].cost",
            "apis[0].limits[1].cost",
            "apis[0].limits[2].cost.response_json",
            "apis[0].limits[3].cost.default",
            "apis[0].limits[3].cost.reserve",
            "apis[0].limits[4].cost.reserve",
        ]
    );
}

#[test]
fn shared_state_month_windows_and_cost_are_checked() {
    let src = api("    limits:
      - { name: g, requests: 5, per: 1h, scope: global }
      - { name: m, requests: 5, per: month, algorithm: sliding }
      - { name: tz, requests: 5, per: month, time_zone: \"+25:00\", renewal_day: 32 }
      - { name: misplaced, requests: 5, per: 1h, time_zone: \"+02:00\", renewal_day: 3 }
      - { name: c, requests: 5, per: 1d, cost: { header: \"bad header\" } }
      - { name: ok, requests: 5, per: month, time_zone: \"-05:30\", renewal_day: 31, on_store_failure: closed, cost: { header: x-weight } }
      - { name: iana, requests: 5, per: month, time_zone: Europe/Berlin, renewal_day: 31 }
      - { name: day, requests: 5, per: 1d, time_zone: America/New_York }
      - { name: typo, requests: 5, per: 1d, time_zone: Europe/Berln }
      - { name: slide, requests: 5, per: 1d, algorithm: sliding, time_zone: Europe/Berlin }
");
    let got = paths(&src);
    assert_eq!(
        got,
        [
            "apis[0].limits[0].scope",
            "apis[0].limits[1].per",
            "apis[0].limits[2].time_zone",
            "apis[0].limits[2].renewal_day",
            "apis[0].limits[3].time_zone",
            "apis[0].limits[3].renewal_day",
            "apis[0].limits[4].cost.header",
            "apis[0].limits[8].time_zone",
            "apis[0].limits[9].time_zone",
        ]
    );
    let msgs = problems(&src);
    assert!(
        msgs[7].1.contains("unknown time zone \"Europe/Berln\""),
        "{msgs:?}"
    );
    assert!(msgs[8].1.contains("calendar windows"), "{msgs:?}");
    let with_redis = format!(
        "state:\n  dir: /tmp/x\n  redis: {{ url: \"${{env:REDIS_URL}}\", prefix: \"a{{b}}\", timeout: 0s }}\n{}",
        api("    limits: [{ name: g, requests: 5, per: 1h, scope: global }]\n")
    );
    assert_eq!(
        paths(&with_redis),
        ["state.redis.prefix", "state.redis.timeout"]
    );
    let valid = with_redis.replace("a{b}", "tg").replace("0s", "20ms");
    let loaded = load_str(&valid, "s.yaml").unwrap().config;
    let r = loaded.state.redis.unwrap();
    assert_eq!(r.url.unwrap().to_string(), "${env:REDIS_URL}");
    assert_eq!((r.prefix.as_str(), r.timeout.get().as_millis()), ("tg", 20));
    assert_eq!(loaded.state.dir.as_deref(), Some("/tmp/x"));
    assert_eq!(loaded.apis[0].limits[0].scope, LimitScope::Global);

    for (tz, want) in [
        ("+02:00", Ok(120)),
        ("-0530", Ok(-330)),
        ("Z", Ok(0)),
        ("+2", Ok(120)),
        ("02:00", Err(())),
        ("+1:75", Err(())),
    ] {
        assert_eq!(crate::parse_utc_offset(tz).map_err(|_| ()), want, "{tz}");
    }
}

#[test]
fn discovery_bounds_are_checked() {
    let loaded = load_str("", "d.yaml").unwrap().config;
    assert_eq!(loaded.discovery, crate::Discovery::default());
    assert!(loaded.discovery.enabled);
    assert_eq!(
        paths("discovery: { max_hosts: 0, max_endpoints_per_host: 10001 }"),
        ["discovery.max_hosts", "discovery.max_endpoints_per_host"]
    );
    assert!(
        paths("discovery: { enabled: false, max_hosts: 5, max_endpoints_per_host: 10000 }")
            .is_empty()
    );
    assert_eq!(paths("discovery: { max_host: 5 }"), ["discovery.max_host"]);
}

#[test]
fn redis_topologies_validate() {
    let redis = |body: &str| format!("state:\n  redis: {body}\n");
    // Exactly one topology.
    assert_eq!(paths(&redis("{ timeout: 20ms }")), ["state.redis"]);
    assert_eq!(
        paths(&redis(
            "{ url: \"redis://h:1\", cluster: { nodes: [\"h:1\"] } }"
        )),
        ["state.redis"]
    );
    // Addresses are host:port; a sentinel names its master; cert and key go together.
    assert_eq!(
        paths(&redis(
            "{ sentinel: { master: \" \", nodes: [\"h:26379\", \"redis://h:1\", \"h\"] } }"
        )),
        [
            "state.redis.sentinel.master",
            "state.redis.sentinel.nodes[1]",
            "state.redis.sentinel.nodes[2]"
        ]
    );
    assert_eq!(
        paths(&redis(
            "{ cluster: { nodes: [] }, tls: { cert_file: /c.pem } }"
        )),
        ["state.redis.cluster.nodes", "state.redis.tls"]
    );
    let ok = redis(
        "{ sentinel: { master: m, nodes: [\"127.0.0.1:26379\", \"[::1]:26380\"], password: \"${env:S}\" }, \
         tls: { ca_file: /ca.pem, cert_file: /c.pem, key_file: /k.pem }, username: app }",
    );
    assert!(paths(&ok).is_empty(), "{:?}", paths(&ok));
    let loaded = load_str(&ok, "s.yaml").unwrap().config;
    let r = loaded.state.redis.unwrap();
    assert_eq!(r.sentinel.unwrap().nodes.len(), 2);
    assert_eq!(r.tls.unwrap().ca_file.as_deref(), Some("/ca.pem"));
}
