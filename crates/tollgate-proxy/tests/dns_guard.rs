//! The resolver against a real (in-process) DNS server, and the guard applied to its answers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/dns_server.rs"]
mod dns_server;

use std::net::{IpAddr, SocketAddr};

use dns_server::{Behaviour, TestDns};
use tollgate_proxy::dns::{DnsError, ResolveError, Resolver, resolve_checked};
use tollgate_proxy::guard::{GuardDenial, NetworkGuard};

const PORT: u16 = 8443;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn resolver_with_timeout(dns: &TestDns, timeout: tollgate_config::Duration) -> Resolver {
    Resolver::new(&tollgate_config::Dns {
        servers: vec![dns.addr],
        timeout,
    })
    .unwrap()
}

fn resolver(dns: &TestDns) -> Resolver {
    resolver_with_timeout(dns, tollgate_config::Duration::from_secs(5))
}

fn guard(allow: &[&str]) -> NetworkGuard {
    let cfg = tollgate_config::NetworkGuard {
        allow: allow.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    NetworkGuard::new(&cfg, &[]).unwrap()
}

fn sa(ip_port: &str) -> SocketAddr {
    ip_port.parse().unwrap()
}

#[tokio::test]
async fn an_all_internal_answer_is_blocked_with_the_first_reason() {
    let dns = TestDns::start(vec![
        ("internal.test", vec![ip("10.0.0.1"), ip("192.168.1.1")]),
        ("meta.test", vec![ip("169.254.169.254"), ip("10.0.0.1")]),
        ("localhost", vec![ip("8.8.8.8")]),
    ])
    .await;
    let (r, g) = (resolver(&dns), guard(&[]));
    let blocked = |res: Result<Vec<SocketAddr>, ResolveError>| match res {
        Err(ResolveError::Blocked(d)) => d,
        other => panic!("expected Blocked, got {other:?}"),
    };
    assert_eq!(
        blocked(resolve_checked(&r, &g, "internal.test", PORT).await),
        GuardDenial::Private
    );
    assert_eq!(
        blocked(resolve_checked(&r, &g, "meta.test", PORT).await),
        GuardDenial::Metadata
    );
    // `localhost` gets no special pass: it resolves to loopback (hickory answers it and its
    // subdomains locally, RFC 6761, even if a server says otherwise) and the guard refuses that.
    assert_eq!(
        blocked(resolve_checked(&r, &g, "localhost", PORT).await),
        GuardDenial::Loopback
    );
    assert_eq!(
        blocked(resolve_checked(&r, &g, "api.localhost", PORT).await),
        GuardDenial::Loopback
    );
}

#[tokio::test]
async fn a_mixed_answer_keeps_only_allowed_addresses_in_answer_order() {
    let dns = TestDns::start(vec![(
        "mixed.test",
        vec![
            ip("127.0.0.3"),
            ip("10.0.0.1"),
            ip("127.0.0.1"),
            ip("127.0.0.2"),
        ],
    )])
    .await;
    let r = resolver(&dns);
    let g = guard(&["127.0.0.2:8443", "127.0.0.3:8443"]);
    let got = resolve_checked(&r, &g, "mixed.test", PORT).await.unwrap();
    assert_eq!(got, vec![sa("127.0.0.3:8443"), sa("127.0.0.2:8443")]);
    // The allow entries name a port; on another port nothing passes, and the first answer's
    // reason is reported.
    match resolve_checked(&r, &g, "mixed.test", 9443).await {
        Err(ResolveError::Blocked(GuardDenial::Loopback)) => {}
        other => panic!("expected Blocked(Loopback), got {other:?}"),
    }
}

#[tokio::test]
async fn nxdomain_and_nodata_are_not_found() {
    let dns = TestDns::start(vec![("v6only.test", vec![])]).await;
    let (r, g) = (resolver(&dns), guard(&[]));
    for host in ["missing.test", "v6only.test"] {
        match resolve_checked(&r, &g, host, PORT).await {
            Err(ResolveError::Dns(DnsError::NotFound(h))) => assert_eq!(h, host),
            other => panic!("{host}: expected NotFound, got {other:?}"),
        }
    }
    assert!(dns.queries("missing.test") > 0);
}

#[tokio::test]
async fn ip_literals_skip_dns_but_not_the_guard() {
    let dns = TestDns::start(vec![]).await;
    let r = resolver(&dns);
    let g = guard(&["127.0.0.2:8443"]);
    assert_eq!(
        resolve_checked(&r, &g, "127.0.0.2", PORT).await.unwrap(),
        vec![sa("127.0.0.2:8443")]
    );
    assert!(matches!(
        resolve_checked(&r, &g, "10.0.0.1", PORT).await,
        Err(ResolveError::Blocked(GuardDenial::Private))
    ));
    assert!(matches!(
        resolve_checked(&r, &g, "[::ffff:169.254.169.254]", PORT).await,
        Err(ResolveError::Blocked(GuardDenial::Metadata))
    ));
    assert_eq!(dns.total_queries(), 0);
}

#[tokio::test]
async fn aaaa_answers_are_resolved_and_judged() {
    let dns = TestDns::start(vec![
        ("mapped.test", vec![ip("::ffff:10.0.0.1")]),
        ("nat64.test", vec![ip("64:ff9b::a9fe:a9fe")]),
        ("dual.test", vec![ip("::1"), ip("127.0.0.2"), ip("fd00::1")]),
        ("v6mapped-ok.test", vec![ip("::ffff:127.0.0.2")]),
    ])
    .await;
    let r = resolver(&dns);
    let g = guard(&["127.0.0.2:8443", "[::1]:8443"]);
    assert!(matches!(
        resolve_checked(&r, &g, "mapped.test", PORT).await,
        Err(ResolveError::Blocked(GuardDenial::Private))
    ));
    assert!(matches!(
        resolve_checked(&r, &g, "nat64.test", PORT).await,
        Err(ResolveError::Blocked(GuardDenial::Metadata))
    ));
    // Both families are asked for; IPv4 answers come first.
    assert_eq!(
        r.lookup("dual.test").await.unwrap(),
        vec![ip("127.0.0.2"), ip("::1"), ip("fd00::1")]
    );
    assert_eq!(
        resolve_checked(&r, &g, "dual.test", PORT).await.unwrap(),
        vec![sa("127.0.0.2:8443"), sa("[::1]:8443")]
    );
    // A mapped answer is returned as the plain IPv4 address it reaches.
    assert_eq!(
        resolve_checked(&r, &g, "v6mapped-ok.test", PORT)
            .await
            .unwrap(),
        vec![sa("127.0.0.2:8443")]
    );
}

#[tokio::test]
async fn positive_answers_are_cached_for_their_ttl() {
    let dns = TestDns::start(vec![("cached.test", vec![ip("127.0.0.2")])]).await;
    let r = resolver(&dns);
    assert_eq!(
        r.lookup("cached.test").await.unwrap(),
        vec![ip("127.0.0.2")]
    );
    let asked = dns.queries("cached.test");
    assert!(asked > 0);
    // The record changes at the server, but its 60 s TTL has not run out.
    dns.set("cached.test", vec![ip("127.0.0.9")]);
    assert_eq!(
        r.clone().lookup("cached.test").await.unwrap(),
        vec![ip("127.0.0.2")]
    );
    assert_eq!(dns.queries("cached.test"), asked);
}

#[tokio::test]
async fn a_rebinding_answer_is_judged_afresh() {
    // TTL 0: every lookup asks the server, as an attacker's zone would make it.
    let dns = TestDns::start_with_ttl(vec![("rebind.test", vec![ip("127.0.0.2")])], 0).await;
    let r = resolver(&dns);
    let g = guard(&["127.0.0.2:8443"]);
    assert_eq!(
        resolve_checked(&r, &g, "rebind.test", PORT).await.unwrap(),
        vec![sa("127.0.0.2:8443")]
    );
    dns.set("rebind.test", vec![ip("169.254.169.254")]);
    assert!(matches!(
        resolve_checked(&r, &g, "rebind.test", PORT).await,
        Err(ResolveError::Blocked(GuardDenial::Metadata))
    ));
}

#[tokio::test]
async fn server_failures_and_silence_are_reported() {
    let dns = TestDns::start(vec![]).await;
    dns.set_behaviour("broken.test", Behaviour::ServFail);
    dns.set_behaviour("silent.test", Behaviour::Drop);
    let r = resolver_with_timeout(&dns, tollgate_config::Duration::from_millis(400));
    let g = guard(&[]);
    match resolve_checked(&r, &g, "broken.test", PORT).await {
        Err(ResolveError::Dns(e @ DnsError::Failed(_))) => assert!(e.is_retryable()),
        other => panic!("expected Failed, got {other:?}"),
    }
    match resolve_checked(&r, &g, "silent.test", PORT).await {
        Err(ResolveError::Dns(e @ DnsError::Timeout(_))) => assert!(e.is_retryable()),
        other => panic!("expected Timeout, got {other:?}"),
    }
}

#[tokio::test]
async fn truncated_udp_answers_are_fetched_over_tcp() {
    // 40 A records do not fit a 512-byte UDP answer, so the server sets TC.
    let many: Vec<IpAddr> = (1..=40).map(|i| IpAddr::from([127, 1, 0, i])).collect();
    let dns = TestDns::start(vec![("many.test", many.clone())]).await;
    let r = resolver(&dns);
    let g = guard(&["127.1.0.0/16"]);
    let got = resolve_checked(&r, &g, "many.test", PORT).await.unwrap();
    let want: Vec<SocketAddr> = many.iter().map(|ip| SocketAddr::new(*ip, PORT)).collect();
    assert_eq!(got, want);
}
