//! Integration tests against the real Redis on 127.0.0.1:6379 (CI starts it). Each test uses
//! its own key prefix so runs never see each other's counters.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tollgate_state::algo::{civil_from_days, window_bounds};
use tollgate_state::{
    LimitRequest, LimitSpec, RedisConfig, RedisStore, Store, StoreError, Window, Zone,
};

const URL: &str = "redis://127.0.0.1:6379/";

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

async fn reachable() -> bool {
    let ok = matches!(
        tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect("127.0.0.1:6379")
        )
        .await,
        Ok(Ok(_))
    );
    if !ok {
        eprintln!("SKIPPED: no Redis reachable at 127.0.0.1:6379 (CI starts one)");
    }
    ok
}

async fn store(test: &str) -> RedisStore {
    let mut cfg = RedisConfig::new(URL);
    cfg.prefix = format!("tgtest-{}-{}-{test}", std::process::id(), now_ms());
    // Generous here: these tests prove counting, not latency, on a shared 2-core machine.
    cfg.timeout = Duration::from_secs(5);
    RedisStore::new(cfg).await.unwrap()
}

/// A month window whose renewal is nowhere near today, so a test never straddles it.
fn safe_month(limit: u64) -> LimitSpec {
    let (_, _, d) = civil_from_days((now_ms() / 86_400_000) as i64);
    LimitSpec::FixedWindow {
        limit,
        window: Window::Month {
            zone: Zone::Fixed(0),
            renewal_day: if d <= 14 { 20 } else { 5 },
        },
    }
}

/// Deletes this test's keys (month windows would otherwise linger for weeks).
async fn cleanup(s: &RedisStore) {
    let client = redis::Client::open(URL).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let pattern = format!("{}*", s.redis_key("api:").trim_end_matches(':'));
    let pattern = pattern.replace('{', "\\{").replace('}', "\\}");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(&pattern)
        .query_async(&mut conn)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: i64 = redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}

fn req(key: &str, spec: LimitSpec, cost: u64) -> LimitRequest {
    LimitRequest {
        key: key.to_owned(),
        spec,
        cost,
        shares: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_tasks_admit_exactly_the_limit() {
    if !reachable().await {
        return;
    }
    let rs = store("exact").await;
    let store = Store::Redis(rs.clone());
    let admitted = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (store, admitted) = (store.clone(), admitted.clone());
        tasks.push(tokio::spawn(async move {
            let reqs = [req("api:hot", safe_month(500), 1)];
            for _ in 0..200 {
                let d = store.check_all(&reqs).await.unwrap();
                if d[0].allowed {
                    admitted.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(admitted.load(Ordering::Relaxed), 500);
    let peek = store
        .peek_all(&[req("api:hot", safe_month(500), 0)])
        .await
        .unwrap();
    assert_eq!(peek[0].remaining, 0);
    cleanup(&rs).await;
}

#[tokio::test]
async fn multi_limit_is_all_or_nothing_and_sets_ttl() {
    if !reachable().await {
        return;
    }
    let s = store("multi").await;
    let reqs = [
        req("api:consumer:acme", safe_month(10), 1),
        req(
            "api:whole",
            LimitSpec::Sliding {
                limit: 2,
                window_ms: 3_600_000,
            },
            1,
        ),
    ];
    for _ in 0..2 {
        assert!(s.check_all(&reqs).await.unwrap().iter().all(|d| d.allowed));
    }
    let d = s.check_all(&reqs).await.unwrap();
    assert!(!d[0].allowed && !d[1].allowed);
    assert!(d[1].retry_after_ms > 0);
    let peek = s
        .peek_all(&[req("api:consumer:acme", safe_month(10), 0)])
        .await
        .unwrap();
    assert_eq!(
        peek[0].remaining, 8,
        "the denied request charged the month limit"
    );

    let client = redis::Client::open(URL).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    for (r, max_ms) in [(&reqs[0], 32 * 86_400_000_i64), (&reqs[1], 2 * 3_600_000)] {
        let key = s.redis_key(&r.key);
        assert!(key.starts_with('{') && key.contains("}:"), "{key}");
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(ttl > 0 && ttl <= max_ms, "{key} ttl {ttl}");
    }
    cleanup(&s).await;
}

#[tokio::test]
async fn gcra_and_calendar_agree_with_local_algorithms() {
    if !reachable().await {
        return;
    }
    let s = store("gcra").await;
    let g = req(
        "api:g",
        LimitSpec::Gcra {
            rate_per_sec: 0.001,
            burst: 3,
        },
        1,
    );
    for i in 0..3 {
        let d = s.check_all(std::slice::from_ref(&g)).await.unwrap();
        assert!(d[0].allowed, "burst {i}");
        assert_eq!(d[0].remaining, 2 - i);
    }
    let d = s.check_all(std::slice::from_ref(&g)).await.unwrap();
    assert!(!d[0].allowed);
    assert!(d[0].retry_after_ms > 990_000 && d[0].retry_after_ms <= 1_000_000);

    // The script's month arithmetic must match algo.rs (checked at today's date: Redis and this
    // process share the machine clock).
    for (off, rd) in [(0, 1), (120, 15), (-300, 31), (330, 29)] {
        let window = Window::Month {
            zone: Zone::Fixed(off),
            renewal_day: rd,
        };
        let r = req("api:m", LimitSpec::FixedWindow { limit: 5, window }, 0);
        let before = now_ms();
        let d = s.peek_all(&[r]).await.unwrap();
        let after = now_ms();
        let (_, end) = window_bounds(window, before);
        assert!(
            d[0].reset_after_ms <= end - before + 1 && d[0].reset_after_ms + 1 >= end - after,
            "offset {off} day {rd}: redis reset {} vs local {}",
            d[0].reset_after_ms,
            end - before
        );
    }
    cleanup(&s).await;
}

#[tokio::test]
async fn keys_from_different_groups_are_rejected() {
    if !reachable().await {
        return;
    }
    let s = store("groups").await;
    let spec = safe_month(5);
    let err = s
        .check_all(&[req("a:x", spec, 1), req("b:x", spec, 1)])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)));
}

#[tokio::test]
async fn dead_redis_is_unavailable_within_the_timeout() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cfg = RedisConfig::new(format!("redis://127.0.0.1:{port}/"));
    cfg.timeout = Duration::from_millis(200);
    let s = RedisStore::new(cfg).await.unwrap();
    let reqs = [req("api:x", safe_month(5), 1)];
    for _ in 0..3 {
        let res = tokio::time::timeout(Duration::from_secs(10), s.check_all(&reqs))
            .await
            .expect("check_all is bounded by its own timeout");
        assert!(matches!(res, Err(StoreError::Unavailable(_))), "{res:?}");
    }
}

#[tokio::test]
async fn silent_redis_times_out_as_unavailable() {
    // Accepts connections and never answers, like a hung or black-holed server.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    let mut cfg = RedisConfig::new(format!("redis://127.0.0.1:{port}/"));
    cfg.timeout = Duration::from_millis(100);
    let s = RedisStore::new(cfg).await.unwrap();
    let res = tokio::time::timeout(
        Duration::from_secs(10),
        s.check_all(&[req("api:x", safe_month(5), 1)]),
    )
    .await
    .expect("check_all is bounded by its own timeout");
    assert!(matches!(res, Err(StoreError::Unavailable(_))), "{res:?}");
    hold.abort();
}

#[tokio::test]
async fn recovers_when_redis_comes_back() {
    if !reachable().await {
        return;
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let mut cfg = RedisConfig::new(format!("redis://{addr}/"));
    cfg.timeout = Duration::from_millis(500);
    cfg.prefix = format!("tgtest-{}-{}-recover", std::process::id(), now_ms());
    let s = RedisStore::new(cfg).await.unwrap();
    let reqs = [req("api:x", safe_month(5), 1)];
    assert!(matches!(
        s.check_all(&reqs).await,
        Err(StoreError::Unavailable(_))
    ));

    // "Redis comes back" on the same address: a relay to the real server.
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let relay = tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut up = tokio::net::TcpStream::connect("127.0.0.1:6379")
                    .await
                    .unwrap();
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut up).await;
            });
        }
    });
    // The connection manager reconnects in the background; poll (bounded) until it does.
    let mut ok = None;
    for _ in 0..100 {
        match s.check_all(&reqs).await {
            Ok(d) => {
                ok = Some(d);
                break;
            }
            Err(StoreError::Unavailable(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("{e}"),
        }
    }
    let d = ok.expect("store recovered without a restart");
    assert!(d[0].allowed);
    assert_eq!(d[0].remaining, 4);
    relay.abort();
    cleanup(&s).await;
}
