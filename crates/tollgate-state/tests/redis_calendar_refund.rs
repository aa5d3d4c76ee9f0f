//! Calendar windows in time zones and refunds, against the real Redis on 127.0.0.1:6379 (CI
//! starts it) and the local store side by side. Each test uses its own key prefix.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tollgate_state::algo::window_bounds;
use tollgate_state::{
    Borrow, LimitRequest, LimitSpec, LocalStore, RedisConfig, RedisStore, ShareGroup, ShareOf,
    ShareSpec, Store, StoreError, Window, Zone,
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

async fn conn() -> redis::aio::MultiplexedConnection {
    redis::Client::open(URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn redis_store(test: &str) -> RedisStore {
    let mut cfg = RedisConfig::new(URL);
    cfg.prefix = format!("tgtest-{}-{}-{test}", std::process::id(), now_ms());
    cfg.timeout = Duration::from_secs(5);
    RedisStore::new(cfg).await.unwrap()
}

/// Deletes the keys of `s` (calendar windows would otherwise linger for days).
async fn cleanup(s: &RedisStore) {
    let mut c = conn().await;
    let pattern = format!("{}*", s.redis_key("api:").trim_end_matches(':'));
    let pattern = pattern.replace('{', "\\{").replace('}', "\\}");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(&pattern)
        .query_async(&mut c)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: i64 = redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut c)
            .await
            .unwrap();
    }
}

fn req(key: &str, spec: LimitSpec, cost: u64) -> LimitRequest {
    LimitRequest::new(key, spec, cost)
}

fn fixed(limit: u64, window: Window) -> LimitSpec {
    LimitSpec::FixedWindow { limit, window }
}

/// Calendar windows in IANA zones: Redis picks the same window the gateway computes (same
/// machine clock), and counts within it.
#[tokio::test]
async fn calendar_windows_in_iana_zones_match_the_gateway() {
    if !reachable().await {
        return;
    }
    let s = redis_store("cal").await;
    let windows = [
        Window::LocalDay {
            zone: Zone::named("America/New_York").unwrap(),
        },
        Window::LocalDay {
            zone: Zone::named("Asia/Kathmandu").unwrap(),
        },
        Window::Month {
            zone: Zone::named("Europe/Berlin").unwrap(),
            renewal_day: 31,
        },
        Window::Month {
            zone: Zone::Fixed(-330),
            renewal_day: 15,
        },
    ];
    for (i, window) in windows.into_iter().enumerate() {
        let before = now_ms();
        let (_, end) = window_bounds(window, before);
        if end - before < 10_000 {
            // A window edge within seconds: the comparison below could straddle it.
            continue;
        }
        let r = req(&format!("api:cal{i}"), fixed(2, window), 1);
        let d1 = s.check_all(std::slice::from_ref(&r)).await.unwrap();
        let d2 = s.check_all(std::slice::from_ref(&r)).await.unwrap();
        let d3 = s.check_all(std::slice::from_ref(&r)).await.unwrap();
        let after = now_ms();
        assert!(
            d1[0].allowed && d2[0].allowed && !d3[0].allowed,
            "{window:?}"
        );
        assert_eq!((d1[0].remaining, d2[0].remaining), (1, 0));
        assert!(
            d1[0].reset_after_ms <= end - before + 1 && d1[0].reset_after_ms + 1 >= end - after,
            "{window:?}: redis reset {} vs local {}",
            d1[0].reset_after_ms,
            end - before
        );
        assert_eq!(d3[0].retry_after_ms, d3[0].reset_after_ms);
    }
    cleanup(&s).await;
}

/// The script picks the window by Redis' clock among the edges the gateway sends: a gateway
/// clock a window behind or ahead still lands in the right window; edges that do not cover
/// Redis' time at all are refused (the caller then fails open or closed).
#[tokio::test]
async fn the_script_picks_the_calendar_window_by_redis_time() {
    if !reachable().await {
        return;
    }
    let script = redis::Script::new(include_str!("../src/check_all.lua"));
    let prefix = format!("{{tgtest-{}-{}-edges:api}}", std::process::id(), now_ms());
    let mut c = conn().await;
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut c).await.unwrap();
    let n = secs * 1_000 + micros / 1_000;
    let run = |edges: Vec<u64>, key: &str| {
        let mut inv = script.prepare_invoke();
        inv.key(format!("{prefix}:{key}"));
        let edges: Vec<String> = edges.iter().map(u64::to_string).collect();
        inv.arg("1")
            .arg("m")
            .arg(5)
            .arg(edges.join(","))
            .arg(0)
            .arg(1)
            .arg(0)
            .arg(1)
            .arg("0");
        inv
    };
    // Redis' time in the last of the three candidate windows (the gateway's clock is behind).
    let late = vec![
        n - 40_000,
        n - 30_000,
        n - 20_000,
        n - 10_000,
        n + 600_000,
        n + 700_000,
    ];
    let got: Vec<i64> = run(late, "late").invoke_async(&mut c).await.unwrap();
    assert_eq!(got[0], 1);
    assert!((590_000..=600_000).contains(&got[3]), "reset {}", got[3]);
    // ... and in the first (the gateway's clock is ahead).
    let early = vec![
        n - 20_000,
        n - 10_000,
        n + 300_000,
        n + 400_000,
        n + 500_000,
        n + 600_000,
    ];
    let got: Vec<i64> = run(early, "early").invoke_async(&mut c).await.unwrap();
    assert!((290_000..=300_000).contains(&got[3]), "reset {}", got[3]);
    // Edges entirely in the past: refused, nothing written.
    let stale = vec![
        n - 60_000,
        n - 50_000,
        n - 40_000,
        n - 30_000,
        n - 20_000,
        n - 10_000,
    ];
    let err = run(stale, "stale")
        .invoke_async::<Vec<i64>>(&mut c)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("calendar edges"), "{err}");
    let exists: i64 = redis::cmd("EXISTS")
        .arg(format!("{prefix}:stale"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(exists, 0);
    let _: i64 = redis::cmd("DEL")
        .arg(format!("{prefix}:late"))
        .arg(format!("{prefix}:early"))
        .query_async(&mut c)
        .await
        .unwrap();
}

fn shared(key: &str, limit: u64, group: usize, cost: u64) -> LimitRequest {
    let spec = Arc::new(ShareSpec {
        groups: vec![
            ShareGroup {
                name: "acme".into(),
                guarantee: limit / 2,
            },
            ShareGroup {
                name: "others".into(),
                guarantee: limit / 2,
            },
        ],
        borrow: Borrow::Off,
    });
    LimitRequest {
        shares: Some(ShareOf { spec, group }),
        ..req(key, fixed(limit, Window::Hour), cost)
    }
}

/// Every algorithm gives back what was charged, in both stores: after a charge of the whole
/// limit and a refund, the refunded units can be taken again, and no more.
async fn refunds_restore_quota(store: Store) {
    let specs = [
        ("fixed", fixed(3, Window::Hour)),
        (
            "calendar",
            fixed(
                3,
                Window::LocalDay {
                    zone: Zone::named("Europe/Berlin").unwrap(),
                },
            ),
        ),
        (
            "sliding",
            LimitSpec::Sliding {
                limit: 3,
                window_ms: 3_600_000,
            },
        ),
        (
            "gcra",
            LimitSpec::Gcra {
                rate_per_sec: 0.001,
                burst: 3,
            },
        ),
    ];
    for (name, spec) in specs {
        let key = format!("api:refund-{name}");
        let three = req(&key, spec, 3);
        let one = req(&key, spec, 1);
        let peek = req(&key, spec, 0);
        assert!(store.check_all(std::slice::from_ref(&three)).await.unwrap()[0].allowed);
        assert!(!store.check_all(std::slice::from_ref(&one)).await.unwrap()[0].allowed);
        store
            .refund(std::slice::from_ref(&req(&key, spec, 2)))
            .await
            .unwrap();
        let d = store.peek_all(std::slice::from_ref(&peek)).await.unwrap();
        assert_eq!(d[0].remaining, 2, "{name}: remaining after the refund");
        for _ in 0..2 {
            assert!(
                store.check_all(std::slice::from_ref(&one)).await.unwrap()[0].allowed,
                "{name}"
            );
        }
        assert!(
            !store.check_all(std::slice::from_ref(&one)).await.unwrap()[0].allowed,
            "{name}"
        );
        // A refund never makes more than the limit available.
        store
            .refund(std::slice::from_ref(&req(&key, spec, 10)))
            .await
            .unwrap();
        let d = store.peek_all(std::slice::from_ref(&peek)).await.unwrap();
        assert_eq!(d[0].remaining, 3, "{name}: refund beyond the charge");
    }
    // A shared limit gives back to the requester's group only.
    let acme = shared("api:refund-shared", 4, 0, 2);
    let others = shared("api:refund-shared", 4, 1, 2);
    assert!(store.check_all(std::slice::from_ref(&acme)).await.unwrap()[0].allowed);
    assert!(
        store
            .check_all(std::slice::from_ref(&others))
            .await
            .unwrap()[0]
            .allowed
    );
    store.refund(std::slice::from_ref(&acme)).await.unwrap();
    let peek = |r: &LimitRequest| LimitRequest {
        cost: 0,
        ..r.clone()
    };
    assert_eq!(
        store.peek_all(&[peek(&acme)]).await.unwrap()[0].remaining,
        2
    );
    assert_eq!(
        store.peek_all(&[peek(&others)]).await.unwrap()[0].remaining,
        0
    );
}

#[tokio::test]
async fn refunds_restore_quota_in_redis() {
    if !reachable().await {
        return;
    }
    let s = redis_store("refund").await;
    refunds_restore_quota(Store::Redis(s.clone())).await;
    cleanup(&s).await;
}

#[tokio::test]
async fn refunds_restore_quota_locally() {
    refunds_restore_quota(Store::Local(LocalStore::new())).await;
}

#[tokio::test]
async fn refund_to_a_dead_redis_is_unavailable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cfg = RedisConfig::new(format!("redis://127.0.0.1:{port}/"));
    cfg.timeout = Duration::from_millis(200);
    let s = RedisStore::new(cfg).await.unwrap();
    let err = s
        .refund(&[req("api:x", fixed(3, Window::Hour), 1)])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
}
