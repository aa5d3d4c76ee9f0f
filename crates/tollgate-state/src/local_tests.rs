use super::*;
use crate::{LimitSpec, Window};

fn req(key: &str, spec: LimitSpec, cost: u64) -> LimitRequest {
    LimitRequest {
        key: key.to_owned(),
        spec,
        cost,
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
                utc_offset_minutes: 120,
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
