//! Shares against the real Redis on 127.0.0.1:6379, mirroring the local tests: the Lua script
//! must make exactly the decisions `LocalStore` makes for the same sequence. Windows are chosen
//! so the Redis clock cannot change the outcome (a month whose renewal is far away; a 30-day
//! sliding window whose fresh keys have no previous sub-window). Activity in earlier windows is
//! seeded identically into both stores (Redis hashes written directly, the local store through
//! its persistence file), so idle/active transitions across window edges are checked without
//! waiting for the clock. Each test has its own prefix.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tollgate_state::algo::{CounterState, civil_from_days, window_bounds};
use tollgate_state::{
    Borrow, LimitRequest, LimitSpec, LocalStore, RedisConfig, RedisStore, ShareGroup, ShareOf,
    ShareSpec, Store, Window, Zone,
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
    cfg.timeout = Duration::from_secs(5);
    RedisStore::new(cfg).await.unwrap()
}

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

fn long_sliding(limit: u64) -> LimitSpec {
    LimitSpec::Sliding {
        limit,
        window_ms: 30 * 86_400_000,
    }
}

/// One request per group of a limit split by `groups` (name, guarantee).
fn shared(key: &str, spec: LimitSpec, groups: &[(&str, u64)], borrow: Borrow) -> Vec<LimitRequest> {
    let share = Arc::new(ShareSpec {
        groups: groups
            .iter()
            .map(|(n, g)| ShareGroup {
                name: (*n).to_owned(),
                guarantee: *g,
            })
            .collect(),
        borrow,
    });
    (0..groups.len())
        .map(|group| LimitRequest {
            shares: Some(ShareOf {
                spec: share.clone(),
                group,
            }),
            ..LimitRequest::new(key, spec, 1)
        })
        .collect()
}

/// Runs the same sequence of (group, cost) against Redis and a fresh LocalStore and asserts
/// identical decisions (allowed, remaining).
async fn same_as_local(rs: &RedisStore, reqs: &[LimitRequest], seq: &[(usize, u64)]) -> Vec<bool> {
    same_as(rs, &LocalStore::new(), reqs, seq).await
}

/// [`same_as_local`] against a given (seeded) LocalStore.
async fn same_as(
    rs: &RedisStore,
    local: &LocalStore,
    reqs: &[LimitRequest],
    seq: &[(usize, u64)],
) -> Vec<bool> {
    let mut out = Vec::new();
    for (i, &(g, cost)) in seq.iter().enumerate() {
        let r = LimitRequest {
            cost,
            ..reqs[g].clone()
        };
        let remote = rs.check_all(std::slice::from_ref(&r)).await.unwrap()[0];
        let here = local.check_all(std::slice::from_ref(&r))[0];
        assert_eq!(
            (remote.allowed, remote.remaining, remote.limit),
            (here.allowed, here.remaining, here.limit),
            "step {i}: group {g} cost {cost}"
        );
        out.push(remote.allowed);
    }
    out
}

fn scenario() -> Vec<(usize, u64)> {
    // others (1) saturate, acme (0) claims its guarantee, the unlisted pool (2) tries to borrow,
    // with a few multi-unit costs.
    let mut seq = Vec::new();
    seq.extend(std::iter::repeat_n((1, 1), 80));
    seq.extend(std::iter::repeat_n((2, 3), 5));
    seq.extend(std::iter::repeat_n((0, 1), 30));
    seq.extend([(0, 0), (1, 2), (2, 1), (0, 5)]);
    seq
}

#[tokio::test]
async fn fixed_shares_match_local_decisions() {
    if !reachable().await {
        return;
    }
    let rs = store("shares-fixed").await;
    for borrow in [Borrow::Idle, Borrow::Unallocated, Borrow::Off] {
        let key = format!("api:hourly{borrow:?}:-");
        let reqs = shared(
            &key,
            safe_month(100),
            &[("acme", 25), ("others", 50), ("*", 10)],
            borrow,
        );
        let allowed = same_as_local(&rs, &reqs, &scenario()).await;
        let admitted = allowed.iter().filter(|a| **a).count();
        // Unallocated: others get 50 own plus the 15 unallocated (acme's 25 and the pool's 10
        // stay reserved). The pool: 3 × cost 3 within its 10. acme: its 25. Then the peek and
        // the pool's last unit of guarantee; others' cost 2 and acme's 5 no longer fit.
        // Off: others get their 50 only. Idle: acme and the pool are idle while others send,
        // so others get all 80 they ask for; the pool then 3 × 3 within its guarantee and 2 × 3
        // more borrowed (acme still idle), acme the 5 left; then only the peek fits.
        let want = match borrow {
            Borrow::Idle => 80 + 5 + 5 + 1,
            Borrow::Unallocated => 65 + 3 + 25 + 1 + 1,
            Borrow::Off => 50 + 3 + 25 + 1 + 1,
        };
        assert_eq!(admitted, want, "{borrow:?}");
    }
    cleanup(&rs).await;
}

#[tokio::test]
async fn sliding_shares_match_local_decisions() {
    if !reachable().await {
        return;
    }
    let rs = store("shares-sliding").await;
    for borrow in [Borrow::Idle, Borrow::Unallocated, Borrow::Off] {
        let key = format!("api:sliding{borrow:?}:-");
        let reqs = shared(
            &key,
            long_sliding(100),
            &[("acme", 25), ("others", 50), ("*", 10)],
            borrow,
        );
        same_as_local(&rs, &reqs, &scenario()).await;
    }
    cleanup(&rs).await;
}

#[tokio::test]
async fn shared_limit_is_all_or_nothing_with_a_plain_one() {
    if !reachable().await {
        return;
    }
    let rs = store("shares-multi").await;
    let r = shared(
        "api:q:-",
        safe_month(10),
        &[("a", 5), ("b", 5)],
        Borrow::Off,
    );
    let plain = LimitRequest::new("api:plain:-", safe_month(3), 1);
    for _ in 0..3 {
        let d = rs.check_all(&[r[0].clone(), plain.clone()]).await.unwrap();
        assert!(d.iter().all(|d| d.allowed));
    }
    let d = rs.check_all(&[r[0].clone(), plain.clone()]).await.unwrap();
    assert!(!d[0].allowed && !d[1].allowed);
    // a's share was not charged by the refused request: 2 of its 5 remain.
    assert_eq!(d[0].remaining, 2);
    assert!(d[1].retry_after_ms > 0);
    cleanup(&rs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_groups_get_their_guarantees() {
    if !reachable().await {
        return;
    }
    let rs = store("shares-concurrent").await;
    let store = Store::Redis(rs.clone());
    let reqs = shared(
        "api:hot:-",
        safe_month(200),
        &[("acme", 50), ("others", 100)],
        Borrow::Unallocated,
    );
    let got: Arc<[AtomicU64; 2]> = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let mut tasks = Vec::new();
    for t in 0..8 {
        let (store, got, r) = (store.clone(), got.clone(), reqs[t % 2].clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..100 {
                if store.check_all(std::slice::from_ref(&r)).await.unwrap()[0].allowed {
                    got[t % 2].fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (a, o) = (
        got[0].load(Ordering::Relaxed),
        got[1].load(Ordering::Relaxed),
    );
    // Both saturate: together exactly the limit, each at least its guarantee, and no group
    // can borrow more than the 50 unallocated.
    assert_eq!(a + o, 200);
    assert!((50..=100).contains(&a), "acme got {a}");
    assert!((100..=150).contains(&o), "others got {o}");
    cleanup(&rs).await;
}

fn idle_scenario() -> Vec<(usize, u64)> {
    // others (1) take 80 while acme (0) and the pool (2) are idle; acme's first request makes
    // it active and others are held off its other 24; the pool still fits its own guarantee;
    // acme takes the rest of its share; nobody else fits.
    let mut seq = vec![(1, 1); 80];
    seq.extend([(0, 1), (1, 1), (2, 1), (1, 1)]);
    seq.extend(std::iter::repeat_n((0, 1), 30));
    seq.extend([(2, 1), (1, 1)]);
    seq
}

#[tokio::test]
async fn idle_groups_lend_and_claim_back_like_local() {
    if !reachable().await {
        return;
    }
    let rs = store("shares-idle").await;
    for (name, spec) in [("m", safe_month(100)), ("s", long_sliding(100))] {
        let key = format!("api:idle{name}:-");
        let reqs = shared(
            &key,
            spec,
            &[("acme", 25), ("others", 50), ("*", 10)],
            Borrow::Idle,
        );
        let allowed = same_as_local(&rs, &reqs, &idle_scenario()).await;
        let got = |g: usize| {
            idle_scenario()
                .iter()
                .zip(&allowed)
                .filter(|((gg, _), a)| *gg == g && **a)
                .count()
        };
        // acme 1, then 18 more within its guarantee until the limit is full; others 80; the
        // pool 1 (then the limit is full).
        assert_eq!((got(0), got(1), got(2)), (1 + 18, 80, 1), "{name}");
    }
    cleanup(&rs).await;
}

/// Writes `state` for `key` into Redis (as the script stores it) and returns the persisted
/// entry for the local store.
async fn seed(rs: &RedisStore, key: &str, kind: &str, state: CounterState) -> serde_json::Value {
    let (a, b, c, d) = match state {
        CounterState::Fixed {
            start_ms,
            count,
            seen_ms,
        } => (start_ms, count, 0, seen_ms),
        CounterState::Sliding {
            start_ms,
            cur,
            prev,
            seen_ms,
        } => (start_ms, cur, prev, seen_ms),
        CounterState::Gcra { .. } => unreachable!(),
    };
    let client = redis::Client::open(URL).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let rk = rs.redis_key(key);
    let _: () = redis::cmd("HSET")
        .arg(&rk)
        .arg("k")
        .arg(kind)
        .arg("a")
        .arg(a)
        .arg("b")
        .arg(b)
        .arg("c")
        .arg(c)
        .arg("d")
        .arg(d)
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: i64 = redis::cmd("PEXPIRE")
        .arg(&rk)
        .arg(3_600_000)
        .query_async(&mut conn)
        .await
        .unwrap();
    serde_json::json!([key, state, now_ms() + 3_600_000])
}

#[tokio::test]
async fn activity_in_earlier_windows_decides_like_local() {
    if !reachable().await {
        return;
    }
    let rs = store("shares-roll").await;
    let dir = tempfile::tempdir().unwrap();
    let now = now_ms();
    let w = 30 * 86_400_000;
    let cs = now - now % w;
    let month = safe_month(100);
    let LimitSpec::FixedWindow { window, .. } = month else {
        unreachable!()
    };
    let (start, _) = window_bounds(window, now);
    let (prev, _) = window_bounds(window, start - 1);
    let (prev2, _) = window_bounds(window, prev - 1);
    // acme: active through the previous window; the pool: last seen two windows back (idle).
    let cases = [
        (
            "m",
            month,
            CounterState::Fixed {
                start_ms: prev,
                count: 4,
                seen_ms: prev + 1,
            },
            CounterState::Fixed {
                start_ms: prev2,
                count: 5,
                seen_ms: prev2 + 1,
            },
        ),
        (
            "s",
            long_sliding(100),
            // A refusal in the previous sub-window (nothing counted).
            CounterState::Sliding {
                start_ms: cs - w,
                cur: 0,
                prev: 0,
                seen_ms: cs - w + 1,
            },
            CounterState::Sliding {
                start_ms: cs - 2 * w,
                cur: 7,
                prev: 0,
                seen_ms: cs - 2 * w + 1,
            },
        ),
    ];
    let mut entries = Vec::new();
    let mut all = Vec::new();
    for (name, spec, acme, pool) in cases {
        let key = format!("api:roll{name}:-");
        let kind = if name == "m" { "m" } else { "s" };
        entries.push(seed(&rs, &format!("{key}|acme"), kind, acme).await);
        entries.push(seed(&rs, &format!("{key}|*"), kind, pool).await);
        all.push((
            key.clone(),
            shared(
                &key,
                spec,
                &[("acme", 25), ("others", 50), ("*", 10)],
                Borrow::Idle,
            ),
        ));
    }
    let path = dir.path().join("seed.json");
    std::fs::write(
        &path,
        serde_json::to_vec(&serde_json::json!({ "version": 1, "entries": entries })).unwrap(),
    )
    .unwrap();
    let local = LocalStore::new();
    assert_eq!(local.load(&path).unwrap(), 4);
    for (key, reqs) in all {
        // others drain: acme's 25 stay reserved (active last window), the idle pool's 10 are
        // lent. The pool's and acme's next requests fit their own guarantees (75 of 100
        // used); others are then held off both groups' unused guarantees.
        let mut seq = vec![(1, 1); 90];
        seq.extend([(2, 1), (0, 1), (1, 1)]);
        let allowed = same_as(&rs, &local, &reqs, &seq).await;
        let others = allowed[..90].iter().filter(|a| **a).count();
        assert_eq!(others, 75, "{key}");
        assert_eq!(&allowed[90..], &[true, true, false], "{key}");
    }
    cleanup(&rs).await;
}

#[tokio::test]
async fn a_refusal_marks_the_group_in_redis_and_charges_nothing() {
    if !reachable().await {
        return;
    }
    let rs = store("shares-mark").await;
    let reqs = shared(
        "api:mark:-",
        safe_month(10),
        &[("a", 5), ("b", 5)],
        Borrow::Idle,
    );
    for _ in 0..10 {
        assert!(rs.check_all(&reqs[1..2]).await.unwrap()[0].allowed);
    }
    let a_key = rs.redis_key("api:mark:-|a");
    // A peek writes nothing.
    assert!(!rs.peek_all(&reqs[0..1]).await.unwrap()[0].allowed);
    assert_eq!(count_and_seen(&a_key).await, vec![None, None]);
    // A refused request writes the demand mark and a count of 0.
    let before = now_ms();
    assert!(!rs.check_all(&reqs[0..1]).await.unwrap()[0].allowed);
    let got = count_and_seen(&a_key).await;
    assert_eq!(got[0], Some(0));
    assert!(got[1].unwrap() + 1_000 >= before, "{got:?}");
    cleanup(&rs).await;
}

async fn count_and_seen(key: &str) -> Vec<Option<u64>> {
    let client = redis::Client::open(URL).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let got: Vec<Option<u64>> = redis::cmd("HMGET")
        .arg(key)
        .arg("b")
        .arg("d")
        .query_async(&mut conn)
        .await
        .unwrap();
    got
}
