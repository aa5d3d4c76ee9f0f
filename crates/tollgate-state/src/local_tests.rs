use super::*;
use crate::{LimitSpec, Window, Zone};

fn req(key: &str, spec: LimitSpec, cost: u64) -> LimitRequest {
    LimitRequest {
        key: key.to_owned(),
        spec,
        cost,
        shares: None,
    }
}

fn fixed(limit: u64, window: Window) -> LimitSpec {
    LimitSpec::FixedWindow { limit, window }
}

#[test]
fn multi_limit_is_all_or_nothing() {
    let store = LocalStore::new();
    let t = 1_700_000_000_000;
    let reqs = [
        req("api:minute", fixed(10, Window::Minute), 1),
        req("api:second", fixed(2, Window::Second), 1),
    ];
    assert!(store.check_all_at(&reqs, t).iter().all(|d| d.allowed));
    assert!(store.check_all_at(&reqs, t).iter().all(|d| d.allowed));
    // The per-second limit denies: the minute limit must not be charged either.
    let d = store.check_all_at(&reqs, t);
    assert!(!d[0].allowed && !d[1].allowed);
    assert_eq!(d[0].remaining, 8);
    assert_eq!(d[1].retry_after_ms, 1_000);
    // A peek reports what would remain after this request, and charges nothing.
    let peek = store.peek_all_at(&reqs[..1], t);
    assert!(peek[0].allowed);
    assert_eq!(peek[0].remaining, 7);
    assert_eq!(store.peek_all_at(&reqs[..1], t)[0].remaining, 7);
    let d = store.check_all_at(&reqs, t + 1_000);
    assert!(d.iter().all(|d| d.allowed));
    assert_eq!(d[0].remaining, 7);
}

#[test]
fn same_key_twice_sees_its_own_charge() {
    let store = LocalStore::new();
    let spec = fixed(3, Window::Hour);
    let reqs = [req("k", spec, 2), req("k", spec, 2)];
    let d = store.check_all_at(&reqs, 0);
    assert!(!d[0].allowed && !d[1].allowed);
    assert_eq!(store.peek_all_at(&[req("k", spec, 0)], 0)[0].remaining, 3);
    let d = store.check_all_at(&[req("k", spec, 1), req("k", spec, 2)], 0);
    assert!(d.iter().all(|d| d.allowed));
    assert_eq!(d[1].remaining, 0);
}

#[test]
fn concurrent_threads_admit_exactly_the_limit() {
    let store = LocalStore::with_shards(4);
    let t = 1_700_000_000_000;
    let admitted = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                let reqs = [
                    req("api:hot", fixed(500, Window::Day), 1),
                    req("api:other", fixed(1_000_000, Window::Day), 1),
                ];
                for _ in 0..200 {
                    if store.check_all_at(&reqs, t)[0].allowed {
                        admitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
        }
    });
    assert_eq!(admitted.into_inner(), 500);
    // The second limit was charged exactly for the admitted requests.
    let other = [req("api:other", fixed(1_000_000, Window::Day), 0)];
    assert_eq!(store.peek_all_at(&other, t)[0].remaining, 1_000_000 - 500);
}

#[test]
fn expired_keys_are_purged() {
    let store = LocalStore::new();
    store.check_all_at(&[req("a", fixed(5, Window::Second), 1)], 10_000);
    store.check_all_at(&[req("b", fixed(5, Window::Hour), 1)], 10_000);
    assert_eq!(store.len(), 2);
    assert_eq!(store.purge_expired(11_000), 1);
    assert_eq!(store.len(), 1);
}

#[test]
fn persistence_round_trip_keeps_long_windows_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("counters.json");
    let store = LocalStore::new();
    let day = req("api:day", fixed(100, Window::Day), 30);
    let month = req(
        "api:month",
        fixed(
            1_000,
            Window::Month {
                zone: Zone::Fixed(120),
                renewal_day: 15,
            },
        ),
        7,
    );
    let minute = req("api:minute", fixed(10, Window::Minute), 4);
    let d = store.check_all(&[day.clone(), month.clone(), minute.clone()]);
    assert!(d.iter().all(|d| d.allowed));
    assert_eq!(store.save(&path).unwrap(), 2);
    // No temp file left behind next to the target.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    let restarted = LocalStore::new();
    assert_eq!(restarted.load(&path).unwrap(), 2);
    let peek = |r: &LimitRequest| {
        let mut r = r.clone();
        r.cost = 0;
        restarted.peek_all(&[r])[0].remaining
    };
    assert_eq!(peek(&day), 70);
    assert_eq!(peek(&month), 993);
    assert_eq!(peek(&minute), 10);
    // Overwrite in place works (rename over an existing file).
    assert_eq!(restarted.save(&path).unwrap(), 2);
    assert_eq!(LocalStore::new().load(&path).unwrap(), 2);
}

#[test]
fn load_missing_file_is_empty_and_garbage_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::new();
    assert_eq!(store.load(&dir.path().join("absent.json")).unwrap(), 0);
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, b"{not json").unwrap();
    assert!(matches!(store.load(&bad), Err(StoreError::Persist(_))));
}

fn shared(
    key: &str,
    spec: LimitSpec,
    groups: &[(&str, u64)],
    borrow: crate::Borrow,
) -> Vec<LimitRequest> {
    let share = std::sync::Arc::new(crate::ShareSpec {
        groups: groups
            .iter()
            .map(|(n, g)| crate::ShareGroup {
                name: (*n).to_owned(),
                guarantee: *g,
            })
            .collect(),
        borrow,
    });
    (0..groups.len())
        .map(|group| LimitRequest {
            shares: Some(crate::ShareOf {
                spec: share.clone(),
                group,
            }),
            ..req(key, spec, 1)
        })
        .collect()
}

#[test]
fn shares_keep_guarantees_in_group_counters() {
    let store = LocalStore::new();
    let t = 1_700_000_040_000;
    // acme 25%, others 50% of 100 per hour; the unallocated 25 may be borrowed.
    let r = shared(
        "api:hourly:-",
        fixed(100, Window::Hour),
        &[("acme", 25), ("others", 50)],
        crate::Borrow::Unallocated,
    );
    let run = |r: &LimitRequest| {
        let mut n = 0;
        while store.check_all_at(std::slice::from_ref(r), t)[0].allowed {
            n += 1;
        }
        n
    };
    assert_eq!(run(&r[1]), 75);
    assert_eq!(run(&r[0]), 25);
    // Each group has its own counter next to the limit's key.
    let peek = |k: &str| store.peek_all_at(&[req(k, fixed(100, Window::Hour), 0)], t)[0].remaining;
    assert_eq!(peek("api:hourly:-|acme"), 75);
    assert_eq!(peek("api:hourly:-|others"), 25);
}

#[test]
fn shares_are_all_or_nothing_with_other_limits() {
    let store = LocalStore::new();
    let t = 1_700_000_040_000;
    let r = shared(
        "api:hourly:-",
        fixed(10, Window::Hour),
        &[("a", 5), ("b", 5)],
        crate::Borrow::Off,
    );
    let tight = req("api:second:-", fixed(1, Window::Second), 1);
    let d = store.check_all_at(&[r[0].clone(), tight.clone()], t);
    assert!(d.iter().all(|d| d.allowed));
    assert_eq!(d[0].remaining, 4);
    // The per-second limit refuses: a's share is not charged.
    let d = store.check_all_at(&[r[0].clone(), tight.clone()], t);
    assert!(!d[0].allowed && !d[1].allowed);
    assert_eq!((d[0].remaining, d[0].retry_after_ms), (4, 0));
    assert_eq!(d[1].retry_after_ms, 1_000);
    // Without borrowing, a's remaining is what is left of its guarantee.
    let d = store.check_all_at(&[r[0].clone(), tight], t + 1_000);
    assert_eq!(d[0].remaining, 3);
}

/// Admits `r` at `t` until refused; returns how many got in.
fn drain_at(store: &LocalStore, r: &LimitRequest, t: u64) -> u64 {
    let mut n = 0;
    while store.check_all_at(std::slice::from_ref(r), t)[0].allowed {
        n += 1;
        assert!(n <= 10_000, "never refused");
    }
    n
}

#[test]
fn a_refused_group_becomes_active_and_the_mark_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("counters.json");
    let store = LocalStore::new();
    // Real time: save/load keep entries by the process clock.
    let t = crate::local::now_ms();
    let next_hour = t - t % 3_600_000 + 3_600_000;
    let r = shared(
        "api:hourly:-",
        fixed(100, Window::Hour),
        &[("acme", 25), ("others", 75)],
        crate::Borrow::Idle,
    );
    // acme idle: others use all 100; acme's first request is refused but marks it active.
    assert_eq!(drain_at(&store, &r[1], t), 100);
    // A peek charges and marks nothing.
    assert!(!store.peek_all_at(std::slice::from_ref(&r[0]), t)[0].allowed);
    assert_eq!(store.save(&path).unwrap(), 1);
    assert!(!store.check_all_at(std::slice::from_ref(&r[0]), t)[0].allowed);
    assert_eq!(store.save(&path).unwrap(), 2);

    let restarted = LocalStore::new();
    assert_eq!(restarted.load(&path).unwrap(), 2);
    // Next hour: acme is active (refused in the previous hour), so its 25 stay reserved.
    assert_eq!(drain_at(&restarted, &r[1], next_hour), 75);
    assert_eq!(drain_at(&restarted, &r[0], next_hour), 25);
}

#[test]
fn counters_saved_before_seen_ms_existed_still_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.json");
    let t = crate::local::now_ms();
    let start = t - t % 3_600_000;
    let end = start + 3_600_000;
    std::fs::write(
        &path,
        format!(
            r#"{{"version":1,"entries":[["api:hourly:-|acme",{{"kind":"fixed","start_ms":{start},"count":3}},{end}],
                ["api:s:-",{{"kind":"sliding","start_ms":{start},"cur":2,"prev":0}},{end}]]}}"#
        ),
    )
    .unwrap();
    let store = LocalStore::new();
    assert_eq!(store.load(&path).unwrap(), 2);
    let r = shared(
        "api:hourly:-",
        fixed(100, Window::Hour),
        &[("acme", 25), ("others", 75)],
        crate::Borrow::Idle,
    );
    // acme's 3 count as activity: 22 of its guarantee stay reserved.
    assert_eq!(drain_at(&store, &r[1], t), 75);
}

#[test]
fn a_refusal_by_another_limit_marks_no_demand() {
    let store = LocalStore::new();
    let t = 1_700_000_040_000;
    let r = shared(
        "api:m:-",
        fixed(100, Window::Minute),
        &[("acme", 25), ("others", 75)],
        crate::Borrow::Idle,
    );
    let tight = req("api:second:-", fixed(1, Window::Second), 1);
    assert!(store.check_all_at(std::slice::from_ref(&tight), t)[0].allowed);
    // The per-second limit refuses acme; its share would have admitted it, so acme asked this
    // limit for nothing it could not have and stays idle.
    let d = store.check_all_at(&[r[0].clone(), tight], t);
    assert!(!d[0].allowed && !d[1].allowed);
    assert_eq!(drain_at(&store, &r[1], t), 100);
}

#[test]
fn peek_noting_refusals_charges_nothing_but_marks_a_refused_group() {
    let store = LocalStore::new();
    let t = 1_700_000_040_000;
    let r = shared(
        "api:m:-",
        fixed(100, Window::Minute),
        &[("acme", 25), ("others", 75)],
        crate::Borrow::Idle,
    );
    // Allowed: nothing is charged or written.
    assert!(store.peek_all_noting_refusals_at(std::slice::from_ref(&r[1]), t)[0].allowed);
    assert!(store.is_empty());
    assert_eq!(drain_at(&store, &r[1], t), 100);
    // Refused: acme's demand is noted, so next minute its 25 are reserved.
    assert!(!store.peek_all_noting_refusals_at(std::slice::from_ref(&r[0]), t)[0].allowed);
    assert_eq!(drain_at(&store, &r[1], t + 60_000), 75);
}

#[test]
fn refunds_give_back_within_the_window_only() {
    let store = LocalStore::new();
    let t = 3_600_000 * 500 + 10;
    let r = req("api:hour", fixed(2, Window::Hour), 2);
    assert!(store.check_all_at(std::slice::from_ref(&r), t)[0].allowed);
    store.refund_at(&[req("api:hour", fixed(2, Window::Hour), 1)], t + 5);
    let peek = [req("api:hour", fixed(2, Window::Hour), 0)];
    assert_eq!(store.peek_all_at(&peek, t + 6)[0].remaining, 1);
    // The window the charge went to has ended: nothing to give back, the new one is untouched.
    assert!(store.check_all_at(&[req("api:hour", fixed(2, Window::Hour), 1)], t + 7)[0].allowed);
    store.refund_at(&[req("api:hour", fixed(2, Window::Hour), 2)], t + 3_600_000);
    assert_eq!(store.peek_all_at(&peek, t + 3_600_001)[0].remaining, 2);
    assert!(
        store.check_all_at(&[req("api:hour", fixed(2, Window::Hour), 2)], t + 3_600_002)[0].allowed
    );
    store.refund_at(
        &[req("api:hour", fixed(2, Window::Hour), 1)],
        t + 2 * 3_600_000,
    );
    assert_eq!(store.peek_all_at(&peek, t + 2 * 3_600_000)[0].remaining, 2);
    // A key never charged stays absent.
    store.refund_at(&[req("api:never", fixed(2, Window::Hour), 1)], t);
    assert_eq!(store.len(), 1);
}
