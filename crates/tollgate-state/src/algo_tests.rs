use super::*;
use crate::Zone;

/// Epoch ms of a UTC date-time.
fn utc(y: i64, mo: u32, d: u32, h: u64, mi: u64) -> u64 {
    let days = u64::try_from(days_from_civil(y, mo, d)).unwrap();
    days * DAY_MS + h * HOUR_MS + mi * MINUTE_MS
}

/// Runs a request against `state`, committing the new state only when allowed (as the stores
/// do), and returns the decision.
fn hit(spec: &LimitSpec, state: &mut Option<CounterState>, now: u64, cost: u64) -> Decision {
    let ev = evaluate(spec, *state, now, cost);
    if ev.decision.allowed {
        *state = Some(ev.new_state);
    }
    ev.decision
}

fn month(off: i32, rd: u8) -> Window {
    Window::Month {
        zone: Zone::Fixed(off),
        renewal_day: rd,
    }
}

#[test]
fn civil_round_trip_and_known_dates() {
    assert_eq!(days_from_civil(1970, 1, 1), 0);
    assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    assert_eq!(civil_from_days(-1), (1969, 12, 31));
    for z in (-800_000..800_000).step_by(97) {
        let (y, m, d) = civil_from_days(z);
        assert_eq!(days_from_civil(y, m, d), z);
    }
    assert_eq!(days_in_month(2024, 2), 29);
    assert_eq!(days_in_month(2023, 2), 28);
    assert_eq!(days_in_month(2000, 2), 29);
    assert_eq!(days_in_month(2100, 2), 28);
}

#[test]
fn fixed_window_edges_and_cost() {
    let spec = LimitSpec::FixedWindow {
        limit: 5,
        window: Window::Minute,
    };
    let mut st = None;
    let t0 = utc(2025, 6, 1, 12, 0);
    let d = hit(&spec, &mut st, t0 + 59_000, 3);
    assert!(d.allowed);
    assert_eq!(
        (d.remaining, d.reset_after_ms, d.retry_after_ms),
        (2, 1_000, 0)
    );
    // cost 3 no longer fits; denial charges nothing so cost 2 still does.
    let d = hit(&spec, &mut st, t0 + 59_500, 3);
    assert!(!d.allowed);
    assert_eq!((d.remaining, d.retry_after_ms), (2, 500));
    assert!(hit(&spec, &mut st, t0 + 59_999, 2).allowed);
    assert!(!hit(&spec, &mut st, t0 + 59_999, 1).allowed);
    // The next window starts exactly at hh:01:00.000.
    let d = hit(&spec, &mut st, t0 + 60_000, 1);
    assert!(d.allowed);
    assert_eq!((d.remaining, d.reset_after_ms), (4, 60_000));
    // A cost above the limit never fits.
    assert!(!hit(&spec, &mut st, t0 + 60_001, 6).allowed);
    // Cost 0 is a peek.
    let d = hit(&spec, &mut st, t0 + 60_001, 0);
    assert!(d.allowed);
    assert_eq!(d.remaining, 4);
}

#[test]
fn clock_windows_align_to_utc() {
    let t = utc(2025, 6, 1, 13, 47) + 12_345;
    assert_eq!(window_bounds(Window::Second, t), (t - 345, t + 655));
    assert_eq!(
        window_bounds(Window::Hour, t),
        (utc(2025, 6, 1, 13, 0), utc(2025, 6, 1, 14, 0))
    );
    assert_eq!(
        window_bounds(Window::Day, t),
        (utc(2025, 6, 1, 0, 0), utc(2025, 6, 2, 0, 0))
    );
}

#[test]
fn month_renewal_day_31_in_short_months() {
    let w = month(0, 31);
    // May 10: period began on April's last day (30th) and ends May 31.
    assert_eq!(
        window_bounds(w, utc(2025, 5, 10, 8, 0)),
        (utc(2025, 4, 30, 0, 0), utc(2025, 5, 31, 0, 0))
    );
    // April 29: period began March 31, ends April 30.
    assert_eq!(
        window_bounds(w, utc(2025, 4, 29, 23, 59)),
        (utc(2025, 3, 31, 0, 0), utc(2025, 4, 30, 0, 0))
    );
    // The renewal instant itself belongs to the new period.
    assert_eq!(
        window_bounds(w, utc(2025, 4, 30, 0, 0)).0,
        utc(2025, 4, 30, 0, 0)
    );
}

#[test]
fn month_february_leap_years() {
    let w = month(0, 30);
    assert_eq!(
        window_bounds(w, utc(2024, 2, 15, 0, 0)),
        (utc(2024, 1, 30, 0, 0), utc(2024, 2, 29, 0, 0))
    );
    assert_eq!(
        window_bounds(w, utc(2023, 2, 15, 0, 0)),
        (utc(2023, 1, 30, 0, 0), utc(2023, 2, 28, 0, 0))
    );
    assert_eq!(
        window_bounds(w, utc(2100, 3, 1, 0, 0)).0,
        utc(2100, 2, 28, 0, 0)
    );
    assert_eq!(
        window_bounds(w, utc(2000, 3, 1, 0, 0)).0,
        utc(2000, 2, 29, 0, 0)
    );
    // Renewal day 1 is the plain calendar month, across a year end.
    assert_eq!(
        window_bounds(month(0, 1), utc(2024, 12, 31, 23, 59)),
        (utc(2024, 12, 1, 0, 0), utc(2025, 1, 1, 0, 0))
    );
    assert_eq!(
        window_bounds(month(0, 15), utc(2025, 1, 10, 0, 0)),
        (utc(2024, 12, 15, 0, 0), utc(2025, 1, 15, 0, 0))
    );
}

#[test]
fn month_with_utc_offsets() {
    // +02:00: 2025-03-14T22:30Z is already the 15th locally, so a new period began at
    // local midnight = 22:00Z.
    assert_eq!(
        window_bounds(month(120, 15), utc(2025, 3, 14, 22, 30)),
        (utc(2025, 3, 14, 22, 0), utc(2025, 4, 14, 22, 0))
    );
    // -05:00: 2025-03-15T03:00Z is still the 14th locally; renewal is at 05:00Z.
    assert_eq!(
        window_bounds(month(-300, 15), utc(2025, 3, 15, 3, 0)),
        (utc(2025, 2, 15, 5, 0), utc(2025, 3, 15, 5, 0))
    );
    assert_eq!(
        window_bounds(month(-300, 15), utc(2025, 3, 15, 5, 0)).0,
        utc(2025, 3, 15, 5, 0)
    );
    // Quota use carries through the month and resets at the renewal.
    let spec = LimitSpec::FixedWindow {
        limit: 2,
        window: month(120, 15),
    };
    let mut st = None;
    assert!(hit(&spec, &mut st, utc(2025, 3, 20, 0, 0), 2).allowed);
    let d = hit(&spec, &mut st, utc(2025, 4, 14, 21, 59), 1);
    assert!(!d.allowed);
    assert_eq!(d.retry_after_ms, MINUTE_MS);
    assert!(hit(&spec, &mut st, utc(2025, 4, 14, 22, 0), 1).allowed);
}

fn zone(name: &str) -> Zone {
    Zone::named(name).unwrap()
}

fn local_day(z: Zone) -> Window {
    Window::LocalDay { zone: z }
}

fn month_in(z: Zone, rd: u8) -> Window {
    Window::Month {
        zone: z,
        renewal_day: rd,
    }
}

#[test]
fn local_days_follow_daylight_saving() {
    let berlin = zone("Europe/Berlin");
    // Spring forward (2026-03-29, 02:00 → 03:00): the local day has 23 hours.
    assert_eq!(
        window_bounds(local_day(berlin), utc(2026, 3, 29, 12, 0)),
        (utc(2026, 3, 28, 23, 0), utc(2026, 3, 29, 22, 0))
    );
    // Fall back (2026-10-25, 03:00 → 02:00): 25 hours, the repeated hour included once.
    let fall = (utc(2026, 10, 24, 22, 0), utc(2026, 10, 25, 23, 0));
    for t in [
        utc(2026, 10, 24, 22, 0),
        utc(2026, 10, 25, 0, 30),
        utc(2026, 10, 25, 1, 30),
        utc(2026, 10, 25, 22, 59),
    ] {
        assert_eq!(window_bounds(local_day(berlin), t), fall);
    }
    // New York (2026-03-08): EST midnight to EDT midnight; a minute before belongs to the 7th.
    let ny = zone("America/New_York");
    assert_eq!(
        window_bounds(local_day(ny), utc(2026, 3, 8, 12, 0)),
        (utc(2026, 3, 8, 5, 0), utc(2026, 3, 9, 4, 0))
    );
    assert_eq!(
        window_bounds(local_day(ny), utc(2026, 3, 8, 4, 59)),
        (utc(2026, 3, 7, 5, 0), utc(2026, 3, 8, 5, 0))
    );
    // Havana skips midnight itself (00:00 → 01:00): the day starts at the end of the gap.
    assert_eq!(
        window_bounds(local_day(zone("America/Havana")), utc(2026, 3, 8, 12, 0)),
        (utc(2026, 3, 8, 5, 0), utc(2026, 3, 9, 4, 0))
    );
    // Fixed offsets never change; UTC is the plain aligned day.
    assert_eq!(
        window_bounds(local_day(Zone::Fixed(330)), utc(2026, 1, 1, 0, 0)),
        (utc(2025, 12, 31, 18, 30), utc(2026, 1, 1, 18, 30))
    );
    let t = utc(2026, 7, 1, 13, 7);
    assert_eq!(
        window_bounds(local_day(Zone::UTC), t),
        window_bounds(Window::Day, t)
    );
    // A day's quota carries through the 25-hour day and renews at local midnight.
    let spec = LimitSpec::FixedWindow {
        limit: 2,
        window: local_day(berlin),
    };
    let mut st = None;
    assert!(hit(&spec, &mut st, utc(2026, 10, 24, 22, 30), 1).allowed);
    assert!(hit(&spec, &mut st, utc(2026, 10, 25, 22, 0), 1).allowed);
    let d = hit(&spec, &mut st, utc(2026, 10, 25, 22, 59), 1);
    assert!(!d.allowed);
    assert_eq!(d.retry_after_ms, MINUTE_MS);
    assert!(hit(&spec, &mut st, utc(2026, 10, 25, 23, 0), 1).allowed);
}

#[test]
fn months_in_iana_zones() {
    let berlin = zone("Europe/Berlin");
    // March 2026 begins in CET and ends in CEST: one hour short of 31 days.
    assert_eq!(
        window_bounds(month_in(berlin, 1), utc(2026, 3, 15, 0, 0)),
        (utc(2026, 2, 28, 23, 0), utc(2026, 3, 31, 22, 0))
    );
    assert_eq!(
        window_bounds(month_in(berlin, 1), utc(2026, 3, 31, 21, 59)).1,
        utc(2026, 3, 31, 22, 0)
    );
    assert_eq!(
        window_bounds(month_in(berlin, 1), utc(2026, 3, 31, 22, 0)).0,
        utc(2026, 3, 31, 22, 0)
    );
    // Renewal day 31 clamps to the last day of shorter months, at local midnight.
    assert_eq!(
        window_bounds(month_in(berlin, 31), utc(2026, 4, 15, 0, 0)),
        (utc(2026, 3, 30, 22, 0), utc(2026, 4, 29, 22, 0))
    );
    assert_eq!(
        window_bounds(month_in(berlin, 31), utc(2026, 2, 20, 0, 0)),
        (utc(2026, 1, 30, 23, 0), utc(2026, 2, 27, 23, 0))
    );
    assert_eq!(
        window_bounds(month_in(berlin, 30), utc(2028, 2, 15, 0, 0)),
        (utc(2028, 1, 29, 23, 0), utc(2028, 2, 28, 23, 0))
    );
    // Renewal on the day of the change: local midnight before it (EST) and after it (EDT).
    assert_eq!(
        window_bounds(
            month_in(zone("America/New_York"), 8),
            utc(2026, 3, 10, 0, 0)
        ),
        (utc(2026, 3, 8, 5, 0), utc(2026, 4, 8, 4, 0))
    );
    // Renewal on a day without a midnight: the first instant of that day.
    assert_eq!(
        window_bounds(month_in(zone("America/Havana"), 8), utc(2026, 3, 10, 0, 0)),
        (utc(2026, 3, 8, 5, 0), utc(2026, 4, 8, 4, 0))
    );
    // A named zone with a constant offset agrees with the fixed offset.
    let t = utc(2026, 5, 14, 23, 30);
    assert_eq!(
        window_bounds(month_in(zone("Asia/Kolkata"), 15), t),
        window_bounds(month(330, 15), t)
    );
}

#[test]
fn unknown_zones_are_refused() {
    let e = Zone::named("Europe/Berln").unwrap_err();
    assert!(e.contains("Europe/Berln"), "{e}");
    assert_eq!(zone("Europe/Berlin"), zone("Europe/Berlin"));
    assert_ne!(zone("Europe/Berlin"), Zone::Fixed(60));
    assert_eq!(Zone::Fixed(-330).to_string(), "-05:30");
    assert_eq!(zone("Europe/Berlin").to_string(), "Europe/Berlin");
    assert_eq!(zone("europe/berlin"), zone("Europe/Berlin"));
    assert_eq!(zone("europe/berlin").to_string(), "Europe/Berlin");
}

#[test]
fn calendar_edges_cover_neighbouring_windows() {
    let w = local_day(zone("Europe/Berlin"));
    assert_eq!(
        calendar_edges(w, utc(2026, 3, 29, 12, 0)),
        [
            utc(2026, 3, 26, 23, 0),
            utc(2026, 3, 27, 23, 0),
            utc(2026, 3, 28, 23, 0),
            utc(2026, 3, 29, 22, 0),
            utc(2026, 3, 30, 22, 0),
            utc(2026, 3, 31, 22, 0),
        ]
    );
    let m = month_in(zone("Europe/Berlin"), 31);
    let e = calendar_edges(m, utc(2026, 4, 15, 0, 0));
    assert_eq!(e[2..4], [utc(2026, 3, 30, 22, 0), utc(2026, 4, 29, 22, 0)]);
    assert_eq!(e[1], utc(2026, 2, 27, 23, 0));
    assert_eq!(e[5], utc(2026, 6, 29, 22, 0));
    assert!(e.windows(2).all(|p| p[0] < p[1]));
}

#[test]
fn gcra_burst_then_steady_rate() {
    let spec = LimitSpec::Gcra {
        rate_per_sec: 10.0,
        burst: 5,
    };
    let mut st = None;
    let t0 = utc(2025, 1, 1, 0, 0);
    for i in 0..5 {
        let d = hit(&spec, &mut st, t0, 1);
        assert!(d.allowed, "burst request {i}");
        assert_eq!(d.remaining, 4 - i);
    }
    let d = hit(&spec, &mut st, t0, 1);
    assert!(!d.allowed);
    assert_eq!((d.retry_after_ms, d.reset_after_ms, d.limit), (100, 500, 5));
    assert!(!hit(&spec, &mut st, t0 + 99, 1).allowed);
    // Then one unit per 100 ms.
    for k in 1..=5 {
        assert!(hit(&spec, &mut st, t0 + 100 * k, 1).allowed);
        assert!(!hit(&spec, &mut st, t0 + 100 * k, 1).allowed);
    }
    // Cost 2 needs two intervals of refill; a cost above the burst never fits.
    let d = hit(&spec, &mut st, t0 + 550, 2);
    assert!(!d.allowed);
    assert_eq!(d.retry_after_ms, 150);
    assert!(hit(&spec, &mut st, t0 + 700, 2).allowed);
    assert!(!hit(&spec, &mut st, t0 + 100_000, 6).allowed);
    // Idle long enough, the bucket is full again.
    assert_eq!(hit(&spec, &mut st, t0 + 100_000, 0).remaining, 5);
}

#[test]
fn sliding_window_weights_previous_window() {
    let spec = LimitSpec::Sliding {
        limit: 10,
        window_ms: 1_000,
    };
    let mut st = None;
    let t0 = 1_000_000_000; // a multiple of the window
    assert!(hit(&spec, &mut st, t0 + 500, 10).allowed);
    assert!(!hit(&spec, &mut st, t0 + 999, 1).allowed);
    // 250 ms into the next window the previous 10 weigh ceil(10 * 0.75) = 8.
    let d = hit(&spec, &mut st, t0 + 1_250, 2);
    assert!(d.allowed);
    assert_eq!(d.remaining, 0);
    let d = hit(&spec, &mut st, t0 + 1_250, 1);
    assert!(!d.allowed);
    // Fits once ceil(10 * left / 1000) <= 7, i.e. 700 ms left: 50 ms from now.
    assert_eq!(d.retry_after_ms, 50);
    assert!(!hit(&spec, &mut st, t0 + 1_299, 1).allowed);
    assert!(hit(&spec, &mut st, t0 + 1_300, 1).allowed);
    // Two windows later everything has slid out.
    let d = hit(&spec, &mut st, t0 + 3_000, 10);
    assert!(d.allowed);
}

#[test]
fn denial_returns_unchanged_state() {
    let spec = LimitSpec::FixedWindow {
        limit: 1,
        window: Window::Second,
    };
    let s = Some(CounterState::Fixed {
        start_ms: 5_000,
        count: 1,
        seen_ms: 0,
    });
    let ev = evaluate(&spec, s, 5_100, 1);
    assert!(!ev.decision.allowed);
    assert_eq!(Some(ev.new_state), s);
    let g = LimitSpec::Gcra {
        rate_per_sec: 1.0,
        burst: 1,
    };
    let s = Some(CounterState::Gcra { tat_us: 6_000_000 });
    let ev = evaluate(&g, s, 5_500, 1);
    assert!(!ev.decision.allowed);
    assert_eq!(Some(ev.new_state), s);
}

#[test]
fn long_windows_are_persisted() {
    let f = |window| LimitSpec::FixedWindow { limit: 1, window };
    assert!(!is_long_window(&f(Window::Minute)));
    assert!(is_long_window(&f(Window::Hour)));
    assert!(is_long_window(&f(month(0, 1))));
    assert!(is_long_window(&LimitSpec::Sliding {
        limit: 1,
        window_ms: HOUR_MS
    }));
    assert!(!is_long_window(&LimitSpec::Gcra {
        rate_per_sec: 1.0,
        burst: 10
    }));
}

#[test]
fn refunds_follow_each_algorithm() {
    let t = utc(2026, 3, 29, 12, 0);
    // Sliding: the charge moved into the previous sub-window is still given back; two
    // sub-windows on it is gone.
    let spec = LimitSpec::Sliding {
        limit: 10,
        window_ms: MINUTE_MS,
    };
    let st = CounterState::Sliding {
        start_ms: t,
        cur: 4,
        prev: 2,
        seen_ms: 0,
    };
    let back = |now| refund(&spec, st, now, 3);
    assert_eq!(
        back(t + 5),
        Some(CounterState::Sliding {
            start_ms: t,
            cur: 1,
            prev: 2,
            seen_ms: 0
        })
    );
    assert!(back(t + MINUTE_MS + 5).is_some());
    assert_eq!(back(t + 2 * MINUTE_MS), None);
    // GCRA: back by whole emission intervals, never before now.
    let g = LimitSpec::Gcra {
        rate_per_sec: 1.0,
        burst: 5,
    };
    let now_us = t * 1_000;
    let st = CounterState::Gcra {
        tat_us: now_us + 4_000_000,
    };
    assert_eq!(
        refund(&g, st, t, 1),
        Some(CounterState::Gcra {
            tat_us: now_us + 3_000_000
        })
    );
    assert_eq!(
        refund(&g, st, t, 9),
        Some(CounterState::Gcra { tat_us: now_us })
    );
    // Fixed calendar day: only within the charged day; another kind of state is left alone.
    let day = LimitSpec::FixedWindow {
        limit: 3,
        window: local_day(zone("Europe/Berlin")),
    };
    let st = CounterState::Fixed {
        start_ms: utc(2026, 3, 28, 23, 0),
        count: 2,
        seen_ms: 7,
    };
    assert_eq!(
        refund(&day, st, t, 5),
        Some(CounterState::Fixed {
            start_ms: utc(2026, 3, 28, 23, 0),
            count: 0,
            seen_ms: 7
        })
    );
    assert_eq!(refund(&day, st, utc(2026, 3, 29, 22, 0), 1), None);
    assert_eq!(refund(&g, st, t, 1), None);
}
