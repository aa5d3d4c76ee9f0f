//! Shares: guarantees, borrowing and the reservation of others' unused guarantees, at pinned
//! instants.
use super::*;

const T0: u64 = 1_700_000_040_000; // a whole minute (and a whole 60 s sliding sub-window)

/// Groups' stored states and guarantees; `hit` writes group `me`'s state like the stores do
/// (when allowed, and when refused at a cost above 0: the demand mark).
struct Shared {
    spec: LimitSpec,
    g: Vec<u64>,
    borrow: Borrow,
    st: Vec<Option<CounterState>>,
}

impl Shared {
    fn new(spec: LimitSpec, g: &[u64], borrow: Borrow) -> Self {
        Self {
            spec,
            g: g.to_vec(),
            borrow,
            st: vec![None; g.len()],
        }
    }
    fn hit(&mut self, me: usize, now: u64, cost: u64) -> Decision {
        let ev = evaluate_shared(&self.spec, &self.st, &self.g, me, self.borrow, now, cost);
        if ev.decision.allowed || cost > 0 {
            self.st[me] = Some(ev.new_state);
        }
        ev.decision
    }
    /// Admits requests of cost 1 for `me` until one is refused; returns how many got in.
    fn drain(&mut self, me: usize, now: u64) -> u64 {
        let mut n = 0;
        while self.hit(me, now, 1).allowed {
            n += 1;
            assert!(n <= 1_000, "never refused");
        }
        n
    }
}

fn minute(limit: u64) -> LimitSpec {
    LimitSpec::FixedWindow {
        limit,
        window: Window::Minute,
    }
}

#[test]
fn guarantee_is_floor_of_share() {
    assert_eq!(crate::guarantee(10, 250_000), 2);
    assert_eq!(crate::guarantee(10, 750_000), 7);
    assert_eq!(crate::guarantee(100, 290_000), 29);
    assert_eq!(crate::guarantee(3, 333_333), 0);
    assert_eq!(crate::guarantee(7, 2_000_000), 7);
}

#[test]
fn without_borrowing_each_group_gets_exactly_its_guarantee() {
    // 10 split 25% / 75%: guarantees 2 and 7; the rounding leftover (1) is nobody's.
    let mut s = Shared::new(minute(10), &[2, 7], Borrow::Off);
    assert_eq!(s.drain(0, T0 + 1), 2);
    let d = s.hit(0, T0 + 2, 1);
    assert!(!d.allowed);
    assert_eq!((d.remaining, d.retry_after_ms), (0, 59_998));
    assert_eq!(s.drain(1, T0 + 3), 7);
    // The next window gives every group its guarantee again.
    assert!(s.hit(0, T0 + 60_000, 1).allowed);
    assert!(s.hit(1, T0 + 60_000, 1).allowed);
}

#[test]
fn borrowing_unallocated_never_takes_another_groups_unused_guarantee() {
    // Limit 100: acme 25%, others 50%, 25 unallocated.
    let mut s = Shared::new(minute(100), &[25, 50], Borrow::Unallocated);
    // others saturate first: their 50 plus the 25 nobody is guaranteed; acme's 25 stay reserved.
    assert_eq!(s.drain(1, T0 + 1), 75);
    let d = s.hit(1, T0 + 2, 1);
    assert!(!d.allowed);
    assert_eq!(d.remaining, 0);
    // acme still gets all of its guarantee, and nothing more (the limit is full).
    assert_eq!(s.drain(0, T0 + 3), 25);

    // The other way round: acme borrows the unallocated 25 but never others' 50.
    let mut s = Shared::new(minute(100), &[25, 50], Borrow::Unallocated);
    let d = s.hit(0, T0 + 1, 1);
    // After this one: 24 left of its guarantee, or 49 counting what it may borrow.
    assert_eq!(d.remaining, 49);
    assert_eq!(s.drain(0, T0 + 1), 49);
    assert_eq!(s.drain(1, T0 + 2), 50);
}

#[test]
fn a_group_over_its_guarantee_reserves_nothing_and_guarantees_hold_under_contention() {
    // 10: a 3, b 3, c 0 (an unlisted pool without a guarantee), 4 unallocated.
    let mut s = Shared::new(minute(10), &[3, 3, 0], Borrow::Unallocated);
    // Interleave a and c until they are refused: together they may take 10 - 3 (b reserved).
    let mut got = [0u64; 3];
    for i in 0..20 {
        let me = if i % 2 == 0 { 0 } else { 2 };
        if s.hit(me, T0 + i, 1).allowed {
            got[me] += 1;
        }
    }
    assert_eq!(got[0] + got[2], 7);
    // b still has its whole guarantee.
    assert_eq!(s.drain(1, T0 + 30), 3);
    // The limit is never exceeded.
    assert!(!s.hit(0, T0 + 31, 1).allowed);
}

#[test]
fn cost_counts_against_guarantee_and_zero_cost_peeks() {
    let mut s = Shared::new(minute(10), &[5, 5], Borrow::Off);
    assert!(!s.hit(0, T0, 6).allowed);
    assert!(s.hit(0, T0, 5).allowed);
    let d = s.hit(0, T0, 0);
    assert!(d.allowed);
    assert_eq!(d.remaining, 0);
    assert!(s.hit(1, T0, 5).allowed);
}

#[test]
fn sliding_window_shares_decay_and_retry_is_exact() {
    let w = 60_000;
    let spec = LimitSpec::Sliding {
        limit: 10,
        window_ms: w,
    };
    let mut s = Shared::new(spec, &[5, 5], Borrow::Off);
    assert_eq!(s.drain(0, T0), 5);
    let d = s.hit(0, T0, 1);
    assert!(!d.allowed);
    // Next sub-window: a's 5 weigh ceil(5 × left / w); one more fits once that is 4, i.e. 12 s
    // into it.
    assert_eq!(d.retry_after_ms, w + 12_000);
    assert!(!s.hit(0, T0 + w + 11_999, 1).allowed);
    assert!(s.hit(0, T0 + w + 12_000, 1).allowed);
    // b was never affected.
    assert_eq!(s.drain(1, T0 + w + 12_000), 5);
}

#[test]
fn sliding_total_uses_summed_counters_and_borrow_retry() {
    let w = 60_000;
    let spec = LimitSpec::Sliding {
        limit: 10,
        window_ms: w,
    };
    // a 4, b 4, 2 unallocated; borrowing on.
    let mut s = Shared::new(spec, &[4, 4], Borrow::Unallocated);
    assert_eq!(s.drain(0, T0), 6); // 4 own + 2 unallocated; b's 4 reserved
    let d = s.hit(0, T0, 1);
    assert!(!d.allowed);
    // Borrowing path: total 6 + 1 must fit under 10 - 4 reserved; a's own path needs its 6 to
    // weigh 3. Own: ceil(6 × left / w) ≤ 3 → left ≤ 30 s → 30 s into the next sub-window.
    // Borrow: 6 × left / w ≤ 5 → left ≤ 50 s → 10 s into it, the earlier.
    assert_eq!(d.retry_after_ms, w + 10_000);
    assert!(!s.hit(0, T0 + w + 9_999, 1).allowed);
    assert!(s.hit(0, T0 + w + 10_000, 1).allowed);
    // b's guarantee is intact.
    assert_eq!(s.drain(1, T0 + w + 10_000), 4);
}

#[test]
fn month_windows_share_too() {
    let spec = LimitSpec::FixedWindow {
        limit: 4,
        window: Window::Month {
            zone: crate::Zone::UTC,
            renewal_day: 1,
        },
    };
    let mut s = Shared::new(spec, &[2, 2], Borrow::Off);
    assert_eq!(s.drain(0, T0), 2);
    assert_eq!(s.drain(1, T0), 2);
}

#[test]
fn scaled_shares_divide_guarantees() {
    let s = crate::ShareOf {
        spec: std::sync::Arc::new(crate::ShareSpec {
            groups: vec![
                crate::ShareGroup {
                    name: "a".into(),
                    guarantee: 25,
                },
                crate::ShareGroup {
                    name: "b".into(),
                    guarantee: 50,
                },
            ],
            borrow: Borrow::Off,
        }),
        group: 1,
    };
    let half = s.scaled(3);
    let g: Vec<u64> = half.spec.groups.iter().map(|g| g.guarantee).collect();
    assert_eq!(
        (g, half.group, half.spec.borrow),
        (vec![8, 16], 1, Borrow::Off)
    );
    assert_eq!(s.scaled(0).spec.groups[0].guarantee, 25);
}

// Borrowing from idle groups (`Borrow::Idle`, the default).

#[test]
fn an_idle_groups_guarantee_is_lent_and_claimed_back_by_its_first_request() {
    // 100 split acme 25% / others 75%: nothing is unallocated.
    let mut s = Shared::new(minute(100), &[25, 75], Borrow::Idle);
    // acme has not been seen in this window or the last: others may use all 100.
    let d = s.hit(1, T0 + 1, 1);
    assert_eq!(d.remaining, 99);
    assert_eq!(s.drain(1, T0 + 2), 99);
    // acme arrives: the limit is full, so it is refused; what was lent is gone for this window.
    let d = s.hit(0, T0 + 3, 1);
    assert!(!d.allowed);
    assert_eq!((d.remaining, d.retry_after_ms), (0, 59_997));
    // Its refusal made it active: in the next window its 25 are reserved again.
    assert_eq!(s.drain(1, T0 + 60_000), 75);
    assert_eq!(s.drain(0, T0 + 60_001), 25);
}

#[test]
fn an_active_group_keeps_its_unused_guarantee_reserved() {
    let mut s = Shared::new(minute(100), &[25, 75], Borrow::Idle);
    assert!(s.hit(1, T0 + 1, 1).allowed);
    // acme's first request is admitted and makes it active: its other 24 are reserved.
    assert!(s.hit(0, T0 + 2, 1).allowed);
    let d = s.hit(1, T0 + 3, 1);
    // others: used 2, total 3; own 73 left, borrowable 100 − 3 − 24 = 73.
    assert_eq!(d.remaining, 73);
    assert_eq!(s.drain(1, T0 + 4), 73);
    assert_eq!(s.drain(0, T0 + 5), 24);
    // Unallocated mode never lends acme's guarantee, even while it is idle.
    let mut u = Shared::new(minute(100), &[25, 75], Borrow::Unallocated);
    assert_eq!(u.drain(1, T0), 75);
    // And without borrowing nobody gets more than its guarantee.
    let mut o = Shared::new(minute(100), &[25, 75], Borrow::Off);
    let mut o2 = Shared::new(minute(100), &[25, 50], Borrow::Off);
    assert_eq!((o.drain(1, T0), o2.drain(1, T0)), (75, 50));
}

#[test]
fn activity_in_the_previous_fixed_window_keeps_the_reservation() {
    let mut s = Shared::new(minute(100), &[25, 75], Borrow::Idle);
    assert!(s.hit(0, T0 + 59_999, 1).allowed); // acme, last millisecond of window 0
    // Window 1: acme has used nothing here but was active in window 0.
    assert_eq!(s.drain(1, T0 + 60_000), 75);
    assert!(s.hit(0, T0 + 60_001, 25).allowed);
    // Window 2: acme was active in window 1.
    assert_eq!(s.drain(1, T0 + 120_000), 75);
    // Window 3: acme's last activity (window 1) is two windows back: idle, all 100 lendable.
    assert_eq!(s.drain(1, T0 + 180_000), 100);
    // Activity read from a counter written without `seen_ms` (older state) still counts.
    let mut old = Shared::new(minute(100), &[25, 75], Borrow::Idle);
    old.st[0] = Some(CounterState::Fixed {
        start_ms: T0,
        count: 3,
        seen_ms: 0,
    });
    assert_eq!(old.drain(1, T0 + 60_000), 75);
}

#[test]
fn peeks_and_refusals_by_another_group_do_not_make_a_group_active() {
    let mut s = Shared::new(minute(100), &[25, 75], Borrow::Idle);
    // A cost-0 peek by acme asks for nothing.
    assert!(s.hit(0, T0, 0).allowed);
    assert_eq!(s.drain(1, T0 + 1), 100);
}

#[test]
fn month_windows_look_back_one_calendar_month() {
    let spec = LimitSpec::FixedWindow {
        limit: 10,
        window: Window::Month {
            zone: crate::Zone::UTC,
            renewal_day: 1,
        },
    };
    let day = |y, m, d| days_from_civil(y, m, d) as u64 * DAY_MS;
    let mut s = Shared::new(spec, &[5, 5], Borrow::Idle);
    assert!(s.hit(0, day(2024, 1, 31) + 1, 1).allowed);
    // February (29 days): January's use keeps group 0 active.
    assert_eq!(s.drain(1, day(2024, 2, 1)), 5);
    // March: idle again.
    assert_eq!(s.drain(1, day(2024, 3, 1)), 10);
}

#[test]
fn sliding_activity_spans_the_current_and_previous_sub_window() {
    let w = 60_000;
    let spec = LimitSpec::Sliding {
        limit: 10,
        window_ms: w,
    };
    let mut s = Shared::new(spec, &[5, 5], Borrow::Idle);
    // b borrows a's idle 5 as well.
    assert_eq!(s.drain(1, T0), 10);
    // a is refused (the limit is full) and so becomes active.
    assert!(!s.hit(0, T0 + 1, 1).allowed);
    // Half-way through the next sub-window b's 10 weigh 5: that is all of b's guarantee, and
    // a's 5 are reserved, so b gets nothing and a gets its 5.
    assert!(!s.hit(1, T0 + w + 30_000, 1).allowed);
    assert_eq!(s.drain(0, T0 + w + 30_000), 5);
    // Sub-window 2: b's 10 have slid out; a's 5 from sub-window 1 still weigh
    // ceil(5 × 59 999 / 60 000) = 5, so a (active, nothing unused) reserves nothing more and b
    // gets the other 5.
    assert_eq!(s.drain(1, T0 + 2 * w + 1), 5);
    // Sub-window 3: a last seen in sub-window 1 is idle; b's 5 from sub-window 2 weigh in.
    assert_eq!(s.drain(1, T0 + 3 * w + 30_000), 10 - 3);
}
