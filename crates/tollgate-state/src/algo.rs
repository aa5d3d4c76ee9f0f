//! Pure, clock-injected limit algorithms.
//!
//! Every function takes the current time as milliseconds since the Unix epoch and never reads a
//! clock itself, so tests pin exact instants and the Redis script (which mirrors this module in
//! Lua, using Redis' own clock) can be checked against the same rules.
//!
//! Evaluation is two-phase: [`evaluate`] returns the [`Decision`] and the state that *would* be
//! stored. The caller commits the new state only when every limit of a request allows it, which
//! gives all-or-nothing semantics across limits and "peek" (never commit) for free. A denied
//! request's returned state equals the input state, so a denial consumes nothing; the one
//! exception is a share group's activity instant ([`evaluate_shared`]), which a refusal by the
//! shared limit itself records without charging anything.

use serde::{Deserialize, Serialize};

use crate::{Borrow, Decision, LimitSpec, Window};

const SECOND_MS: u64 = 1_000;
const MINUTE_MS: u64 = 60 * SECOND_MS;
const HOUR_MS: u64 = 60 * MINUTE_MS;
const DAY_MS: u64 = 24 * HOUR_MS;

/// Stored counter state of one key. Small and `Copy` so staging it is cheap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CounterState {
    /// Fixed window: units used in the window starting at `start_ms`.
    Fixed {
        start_ms: u64,
        count: u64,
        /// Share groups only: when the group was last charged or refused (0: never, or state
        /// written before this field existed), which decides whether it is active.
        #[serde(default)]
        seen_ms: u64,
    },
    /// Sliding window: units in the current sub-window (starting at `start_ms`) and the previous.
    Sliding {
        start_ms: u64,
        cur: u64,
        prev: u64,
        /// Share groups only: as for `Fixed`.
        #[serde(default)]
        seen_ms: u64,
    },
    /// GCRA: theoretical arrival time, in microseconds since the epoch.
    Gcra { tat_us: u64 },
}

/// Result of evaluating one limit: the decision, the state to store if the request goes ahead,
/// and the instant after which that state is indistinguishable from "no state" (for expiry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evaluation {
    pub decision: Decision,
    pub new_state: CounterState,
    pub expires_at_ms: u64,
}

/// Evaluates `spec` for a request of `cost` units at `now_ms`, given the stored state (if any).
/// State of a different kind (the spec changed) is treated as absent.
pub fn evaluate(
    spec: &LimitSpec,
    state: Option<CounterState>,
    now_ms: u64,
    cost: u64,
) -> Evaluation {
    match *spec {
        LimitSpec::FixedWindow { limit, window } => {
            let (start, end) = window_bounds(window, now_ms);
            let count = match state {
                Some(CounterState::Fixed {
                    start_ms, count, ..
                }) if start_ms == start => count,
                _ => 0,
            };
            fixed(limit, start, end, count, now_ms, cost)
        }
        LimitSpec::Sliding { limit, window_ms } => {
            let (start_ms, cur, prev) = match state {
                Some(CounterState::Sliding {
                    start_ms,
                    cur,
                    prev,
                    ..
                }) => (start_ms, cur, prev),
                _ => (0, 0, 0),
            };
            sliding(limit, window_ms.max(1), start_ms, cur, prev, now_ms, cost)
        }
        LimitSpec::Gcra {
            rate_per_sec,
            burst,
        } => {
            let tat = match state {
                Some(CounterState::Gcra { tat_us }) => tat_us,
                _ => 0,
            };
            gcra(emission_interval_us(rate_per_sec), burst, tat, now_ms, cost)
        }
    }
}

/// The state after giving back `cost` units that a request was charged moments ago but that
/// did not go ahead (refused by a later step such as a concurrency limit). `None`: nothing to
/// give back (no state, another kind, or the window the charge went to has ended).
///
/// - Fixed window: the count drops by `cost` (not below 0) if the window is still the one the
///   state records.
/// - Sliding window: the recorded sub-window's count drops by `cost` (not below 0) while that
///   sub-window is the current or the previous one.
/// - GCRA: the theoretical arrival time moves back by `cost` emission intervals, but not before
///   now (a bucket never holds more than its burst).
///
/// Share groups keep their activity instant (`seen_ms`): the group did ask.
pub fn refund(
    spec: &LimitSpec,
    state: CounterState,
    now_ms: u64,
    cost: u64,
) -> Option<CounterState> {
    match (*spec, state) {
        (
            LimitSpec::FixedWindow { window, .. },
            CounterState::Fixed {
                start_ms,
                count,
                seen_ms,
            },
        ) => (window_bounds(window, now_ms).0 == start_ms).then_some(CounterState::Fixed {
            start_ms,
            count: count.saturating_sub(cost),
            seen_ms,
        }),
        (
            LimitSpec::Sliding { window_ms, .. },
            CounterState::Sliding {
                start_ms,
                cur,
                prev,
                seen_ms,
            },
        ) => {
            let w = window_ms.max(1);
            let cur_start = now_ms - now_ms % w;
            (start_ms == cur_start || start_ms.saturating_add(w) == cur_start).then_some(
                CounterState::Sliding {
                    start_ms,
                    cur: cur.saturating_sub(cost),
                    prev,
                    seen_ms,
                },
            )
        }
        (LimitSpec::Gcra { rate_per_sec, .. }, CounterState::Gcra { tat_us }) => {
            let back = emission_interval_us(rate_per_sec).saturating_mul(cost);
            Some(CounterState::Gcra {
                tat_us: tat_us
                    .saturating_sub(back)
                    .max(now_ms.saturating_mul(1_000)),
            })
        }
        _ => None,
    }
}

/// Microseconds between two units at `rate_per_sec` (at least 1 µs; a rate of zero or below
/// means one unit per `u64::MAX` µs, i.e. only the burst is ever available).
pub fn emission_interval_us(rate_per_sec: f64) -> u64 {
    if rate_per_sec.is_finite() && rate_per_sec > 0.0 {
        // Saturating float→int cast is the intent: absurd rates clamp to the u64 range.
        ((1_000_000.0 / rate_per_sec).round() as u64).max(1)
    } else {
        u64::MAX / 4
    }
}

fn fixed(limit: u64, start: u64, end: u64, count: u64, now_ms: u64, cost: u64) -> Evaluation {
    let reset_after_ms = end.saturating_sub(now_ms);
    let allowed = count.saturating_add(cost) <= limit;
    let used = if allowed { count + cost } else { count };
    Evaluation {
        decision: Decision {
            allowed,
            limit,
            remaining: limit.saturating_sub(used),
            reset_after_ms,
            // A denied request can only fit once the window rolls over (or never, if cost >
            // limit; the reset is still the earliest moment worth retrying).
            retry_after_ms: if allowed { 0 } else { reset_after_ms },
        },
        new_state: CounterState::Fixed {
            start_ms: start,
            count: used,
            seen_ms: 0,
        },
        expires_at_ms: end,
    }
}

/// Ceil of `prev * (w - elapsed) / w`: the previous sub-window's weight, rounded up so the
/// approximation never admits more than the exact proportion would.
fn weighted_prev(prev: u64, w: u64, elapsed: u64) -> u64 {
    let num = u128::from(prev) * u128::from(w - elapsed);
    let w = u128::from(w);
    u64::try_from(num.div_ceil(w)).unwrap_or(u64::MAX)
}

fn sliding(
    limit: u64,
    w: u64,
    start_ms: u64,
    cur: u64,
    prev: u64,
    now_ms: u64,
    cost: u64,
) -> Evaluation {
    let cur_start = now_ms - now_ms % w;
    // Roll the stored sub-windows forward to the one containing `now`.
    let (cur, prev) = if start_ms == cur_start {
        (cur, prev)
    } else if start_ms + w == cur_start {
        (0, cur)
    } else {
        (0, 0)
    };
    let elapsed = now_ms - cur_start;
    let estimate = weighted_prev(prev, w, elapsed).saturating_add(cur);
    let allowed = estimate.saturating_add(cost) <= limit;
    let (new_cur, used) = if allowed {
        (cur + cost, estimate + cost)
    } else {
        (cur, estimate)
    };
    let to_next = w - elapsed;
    // Everything recorded is forgotten once the current sub-window has also slid out.
    let reset_after_ms = if new_cur > 0 {
        to_next + w
    } else if prev > 0 {
        to_next
    } else {
        0
    };
    let retry_after_ms = if allowed {
        0
    } else {
        sliding_retry(limit, w, cur, prev, elapsed, cost).unwrap_or(reset_after_ms)
    };
    Evaluation {
        decision: Decision {
            allowed,
            limit,
            remaining: limit.saturating_sub(used),
            reset_after_ms,
            retry_after_ms,
        },
        new_state: CounterState::Sliding {
            start_ms: cur_start,
            cur: new_cur,
            prev,
            seen_ms: 0,
        },
        expires_at_ms: cur_start + 2 * w,
    }
}

/// Earliest wait after which `cost` more units fit, assuming no other traffic; `None` if never.
fn sliding_retry(limit: u64, w: u64, cur: u64, prev: u64, elapsed: u64, cost: u64) -> Option<u64> {
    if cost > limit {
        return None;
    }
    let to_next = w - elapsed;
    if cur + cost <= limit && prev > 0 {
        // Within this sub-window: need ceil(prev * (w - e') / w) <= k, i.e. prev*(w-e') <= k*w.
        let k = u128::from(limit - cur - cost);
        let max_left = (k * u128::from(w) / u128::from(prev)).min(u128::from(w));
        let max_left = u64::try_from(max_left).unwrap_or(w);
        return Some(to_next.saturating_sub(max_left).max(1));
    }
    // In the next sub-window `cur` becomes the previous one and must decay enough.
    if cur == 0 {
        return Some(to_next);
    }
    let k = u128::from(limit - cost);
    let max_left = (k * u128::from(w) / u128::from(cur)).min(u128::from(w));
    let max_left = u64::try_from(max_left).unwrap_or(w);
    Some(to_next + (w - max_left))
}

fn gcra(t_us: u64, burst: u64, tat_us: u64, now_ms: u64, cost: u64) -> Evaluation {
    let now_us = now_ms.saturating_mul(1_000);
    let tau = t_us.saturating_mul(burst);
    let base = tat_us.max(now_us);
    let new_tat = base.saturating_add(t_us.saturating_mul(cost));
    let allow_at = new_tat.saturating_sub(tau);
    let allowed = allow_at <= now_us && cost <= burst;
    let stored = if allowed { new_tat } else { tat_us.max(now_us) };
    // Units available now = how many emission intervals the bucket is below full.
    let remaining = (now_us.saturating_add(tau).saturating_sub(stored)) / t_us.max(1);
    let ceil_ms = |us: u64| us.div_ceil(1_000);
    Evaluation {
        decision: Decision {
            allowed,
            limit: burst,
            remaining,
            reset_after_ms: ceil_ms(stored.saturating_sub(now_us)),
            retry_after_ms: if allowed {
                0
            } else {
                ceil_ms(allow_at.saturating_sub(now_us)).max(1)
            },
        },
        new_state: CounterState::Gcra { tat_us: stored },
        expires_at_ms: ceil_ms(stored),
    }
}

/// Evaluates a limit split into guaranteed shares (see the crate docs, "Shares") for a request
/// of `cost` units by group `me` at `now_ms`. `states[j]` is group `j`'s stored counter and
/// `guarantees[j]` its guarantee (same length). The returned state is group `me`'s; with a
/// `cost` above 0 it records `now_ms` as the group's last activity, and the stores write it
/// even when the request is refused by this limit (see [`crate::Borrow::Idle`]). Only fixed
/// and sliding windows are shared; a GCRA spec is evaluated on `me`'s counter alone.
pub fn evaluate_shared(
    spec: &LimitSpec,
    states: &[Option<CounterState>],
    guarantees: &[u64],
    me: usize,
    borrow: Borrow,
    now_ms: u64,
    cost: u64,
) -> Evaluation {
    let mine = states.get(me).copied().flatten();
    let g = |j: usize| guarantees.get(j).copied().unwrap_or(0);
    let lending = borrow != Borrow::Off;
    // The requester's last activity: now when it asks for something (charged or refused).
    let seen_ms = if cost > 0 {
        now_ms
    } else {
        match mine {
            Some(CounterState::Fixed { seen_ms, .. } | CounterState::Sliding { seen_ms, .. }) => {
                seen_ms
            }
            _ => 0,
        }
    };
    // Seen since `since` (0 means never).
    let seen_since = |seen: u64, since: u64| seen != 0 && seen >= since;
    match *spec {
        LimitSpec::FixedWindow { limit, window } => {
            let (start, end) = window_bounds(window, now_ms);
            // Activity in the previous window keeps a group active in this one, so its state
            // must outlive this window by one more.
            let prev_start = window_bounds(window, start.saturating_sub(1)).0;
            let next_end = window_bounds(window, end).1;
            let (used, active): (Vec<u64>, Vec<bool>) = states
                .iter()
                .map(|st| match st {
                    Some(CounterState::Fixed {
                        start_ms,
                        count,
                        seen_ms,
                    }) => (
                        if *start_ms == start { *count } else { 0 },
                        seen_since(*seen_ms, prev_start) || (*count > 0 && *start_ms >= prev_start),
                    ),
                    _ => (0, false),
                })
                .unzip();
            let total = used.iter().fold(0u64, |a, b| a.saturating_add(*b));
            let reserved = reserved_by_others(&used, &active, guarantees, me, borrow);
            let used_me = used.get(me).copied().unwrap_or(0);
            let (allowed, remaining) =
                share_fit(limit, g(me), used_me, total, reserved, lending, cost);
            let charged = if allowed { cost } else { 0 };
            let reset_after_ms = end.saturating_sub(now_ms);
            Evaluation {
                decision: Decision {
                    allowed,
                    limit,
                    remaining,
                    reset_after_ms,
                    // Every group's count drops to 0 at the window edge.
                    retry_after_ms: if allowed { 0 } else { reset_after_ms.max(1) },
                },
                new_state: CounterState::Fixed {
                    start_ms: start,
                    count: used_me.saturating_add(charged),
                    seen_ms,
                },
                expires_at_ms: next_end,
            }
        }
        LimitSpec::Sliding { limit, window_ms } => {
            let w = window_ms.max(1);
            let cur_start = now_ms - now_ms % w;
            let elapsed = now_ms - cur_start;
            // (cur, prev) of every group, rolled forward to the sub-window containing `now`, and
            // whether it was active in this sub-window or the previous one.
            let (rolled, active): (Vec<(u64, u64)>, Vec<bool>) = states
                .iter()
                .map(|st| match st {
                    Some(CounterState::Sliding {
                        start_ms,
                        cur,
                        prev,
                        seen_ms,
                    }) => {
                        let (c, p) = roll(*start_ms, *cur, *prev, cur_start, w);
                        let since = cur_start.saturating_sub(w);
                        ((c, p), seen_since(*seen_ms, since) || c > 0 || p > 0)
                    }
                    _ => ((0, 0), false),
                })
                .unzip();
            let used: Vec<u64> = rolled
                .iter()
                .map(|(c, p)| weighted_prev(*p, w, elapsed).saturating_add(*c))
                .collect();
            let sum_cur = rolled.iter().fold(0u64, |a, (c, _)| a.saturating_add(*c));
            let sum_prev = rolled.iter().fold(0u64, |a, (_, p)| a.saturating_add(*p));
            // The total is estimated from the summed counters, exactly as an unshared limit
            // with the same traffic would be.
            let total = weighted_prev(sum_prev, w, elapsed).saturating_add(sum_cur);
            let reserved = reserved_by_others(&used, &active, guarantees, me, borrow);
            let (cur_me, prev_me) = rolled.get(me).copied().unwrap_or((0, 0));
            let used_me = used.get(me).copied().unwrap_or(0);
            let (allowed, remaining) =
                share_fit(limit, g(me), used_me, total, reserved, lending, cost);
            let new_cur = if allowed {
                cur_me.saturating_add(cost)
            } else {
                cur_me
            };
            let to_next = w - elapsed;
            let all_cur = sum_cur.saturating_add(new_cur - cur_me);
            let reset_after_ms = if all_cur > 0 {
                to_next + w
            } else if sum_prev > 0 {
                to_next
            } else {
                0
            };
            let retry_after_ms = if allowed {
                0
            } else {
                // Earliest of: fitting within the own guarantee (and the limit), or borrowing
                // while the others' reservation stays as it is now.
                let fits = |l: u64, c: u64, p: u64| sliding_wait(l, w, c, p, elapsed, cost);
                let own = match (fits(g(me), cur_me, prev_me), fits(limit, sum_cur, sum_prev)) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    _ => None,
                };
                let lent = if lending {
                    fits(limit.saturating_sub(reserved), sum_cur, sum_prev)
                } else {
                    None
                };
                match (own, lent) {
                    (Some(a), Some(b)) => a.min(b),
                    (Some(a), None) | (None, Some(a)) => a,
                    (None, None) => reset_after_ms,
                }
                .max(1)
            };
            Evaluation {
                decision: Decision {
                    allowed,
                    limit,
                    remaining,
                    reset_after_ms,
                    retry_after_ms,
                },
                new_state: CounterState::Sliding {
                    start_ms: cur_start,
                    cur: new_cur,
                    prev: prev_me,
                    seen_ms,
                },
                expires_at_ms: cur_start + 2 * w,
            }
        }
        LimitSpec::Gcra { .. } => evaluate(spec, mine, now_ms, cost),
    }
}

/// Σ over groups other than `me` that hold a reservation of their unused guarantee,
/// `max(0, g_j − used_j)`: every other group with [`Borrow::Unallocated`] (and `Off`, where
/// it is unused), only the active ones with [`Borrow::Idle`].
fn reserved_by_others(
    used: &[u64],
    active: &[bool],
    guarantees: &[u64],
    me: usize,
    borrow: Borrow,
) -> u64 {
    used.iter()
        .zip(guarantees)
        .enumerate()
        .filter(|(j, _)| *j != me)
        .filter(|(j, _)| borrow != Borrow::Idle || active.get(*j).copied().unwrap_or(true))
        .fold(0u64, |a, (_, (u, g))| {
            a.saturating_add(g.saturating_sub(*u))
        })
}

/// The share admission rule: within the own guarantee (and the limit), or, when borrowing, within
/// what the limit leaves after the others' reservations. Returns whether `cost` fits and what
/// this group could still take after the charge. A cost of 0 always fits.
fn share_fit(
    limit: u64,
    g_me: u64,
    used_me: u64,
    total: u64,
    reserved: u64,
    borrow: bool,
    cost: u64,
) -> (bool, u64) {
    let own = |used: u64, total: u64| g_me.saturating_sub(used).min(limit.saturating_sub(total));
    let lend = |total: u64| {
        if borrow {
            limit.saturating_sub(total.saturating_add(reserved))
        } else {
            0
        }
    };
    let fits_own = used_me.saturating_add(cost) <= g_me && total.saturating_add(cost) <= limit;
    let fits_lent = borrow && total.saturating_add(cost).saturating_add(reserved) <= limit;
    let allowed = cost == 0 || fits_own || fits_lent;
    let (u, t) = if allowed {
        (used_me.saturating_add(cost), total.saturating_add(cost))
    } else {
        (used_me, total)
    };
    (allowed, own(u, t).max(lend(t)))
}

/// Sub-window counters rolled forward from `start_ms` to `cur_start`.
fn roll(start_ms: u64, cur: u64, prev: u64, cur_start: u64, w: u64) -> (u64, u64) {
    if start_ms == cur_start {
        (cur, prev)
    } else if start_ms + w == cur_start {
        (0, cur)
    } else {
        (0, 0)
    }
}

/// Wait until `cost` more units fit under `limit` for sliding counters `(cur, prev)` with no
/// other traffic: 0 when they fit now, `None` when they never can.
fn sliding_wait(limit: u64, w: u64, cur: u64, prev: u64, elapsed: u64, cost: u64) -> Option<u64> {
    let est = weighted_prev(prev, w, elapsed).saturating_add(cur);
    if est.saturating_add(cost) <= limit {
        return Some(0);
    }
    sliding_retry(limit, w, cur, prev, elapsed, cost)
}

/// `[start, end)` of the fixed window containing `now_ms`, in epoch milliseconds.
pub fn window_bounds(window: Window, now_ms: u64) -> (u64, u64) {
    match window {
        Window::LocalDay { zone } => zone.day_bounds(now_ms),
        Window::Month { zone, renewal_day } => zone.month_bounds(now_ms, renewal_day),
        _ => {
            let len = aligned_len_ms(window).unwrap_or(DAY_MS);
            let start = now_ms - now_ms % len;
            (start, start + len)
        }
    }
}

/// The length of a window aligned to the epoch (second to UTC day); `None` for calendar
/// windows ([`is_calendar`]).
pub fn aligned_len_ms(window: Window) -> Option<u64> {
    match window {
        Window::Second => Some(SECOND_MS),
        Window::Minute => Some(MINUTE_MS),
        Window::Hour => Some(HOUR_MS),
        Window::Day => Some(DAY_MS),
        Window::LocalDay { .. } | Window::Month { .. } => None,
    }
}

/// Whether `window` follows a calendar (a time zone's days or months) rather than the epoch.
pub fn is_calendar(window: Window) -> bool {
    matches!(window, Window::LocalDay { .. } | Window::Month { .. })
}

/// The edges of the six calendar windows around `now_ms`: the starts of the windows two
/// before to three after the one containing `now_ms`, ascending (`[2]..[3]` is the current
/// window). The Redis script cannot compute calendars (no time-zone database in Lua), so the
/// gateway sends these and the script picks the window that contains Redis' own clock, with
/// the previous window's start and the next one's end for share-group activity. One window of
/// clock difference either way is covered.
pub fn calendar_edges(window: Window, now_ms: u64) -> [u64; 6] {
    let (s0, e0) = window_bounds(window, now_ms);
    let s_1 = window_bounds(window, s0.saturating_sub(1)).0;
    let s_2 = window_bounds(window, s_1.saturating_sub(1)).0;
    let e1 = window_bounds(window, e0).1;
    let e2 = window_bounds(window, e1).1;
    [s_2, s_1, s0, e0, e1, e2]
}

/// Whether a limit's state spans an hour or more, so [`crate::LocalStore::save`] persists it.
pub fn is_long_window(spec: &LimitSpec) -> bool {
    match *spec {
        LimitSpec::FixedWindow { window, .. } => !matches!(window, Window::Second | Window::Minute),
        LimitSpec::Sliding { window_ms, .. } => window_ms >= HOUR_MS,
        LimitSpec::Gcra {
            rate_per_sec,
            burst,
        } => emission_interval_us(rate_per_sec).saturating_mul(burst) >= HOUR_MS * 1_000,
    }
}

pub fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

pub fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date. Counts in 400-year eras (146 097 days),
/// with years starting in March so the leap day is the last day of the counted year.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12); // March = 0 … February = 11
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Inverse of [`days_from_civil`]: `(year, month 1..=12, day 1..=31)`.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
#[path = "algo_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "algo_shares_tests.rs"]
mod shares_tests;
