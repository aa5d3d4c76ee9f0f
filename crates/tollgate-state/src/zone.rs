//! Time zones of calendar windows (`per: 1d` and `per: month` with a `time_zone`): a fixed UTC
//! offset, or an IANA zone (`Europe/Berlin`) from the tz database bundled into the binary
//! (jiff's `tzdb-bundle-always`, so the host's `/usr/share/zoneinfo` is not needed and every
//! gateway of a fleet uses the same rules).
//!
//! Calendar arithmetic follows the zone's rules at each instant: a local day that contains a
//! daylight-saving change is 23 or 25 hours long, and a window starts at the **first instant**
//! of its local day (00:00, or the end of the gap when a zone skips midnight).
//!
//! [`Zone`] is `Copy` so limit specs stay plain values on the hot path. A named zone is
//! therefore a `&'static` reference: each distinct IANA name is resolved once per process and
//! kept for its lifetime (as jiff's own zone cache does), which bounds the memory by the few
//! hundred names the database has, however often the configuration is reloaded.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, OnceLock};

use jiff::tz::{Offset, TimeZone};

/// The zone a calendar window is counted in.
#[derive(Clone, Copy)]
pub enum Zone {
    /// A fixed offset east of UTC, in minutes (`+02:00` → 120); never changes.
    Fixed(i32),
    /// An IANA zone, following its daylight-saving and historical offset changes.
    Named(&'static NamedZone),
}

/// A resolved IANA zone (see [`Zone::named`]).
pub struct NamedZone {
    name: Box<str>,
    tz: TimeZone,
}

impl Zone {
    pub const UTC: Zone = Zone::Fixed(0);

    /// The IANA zone `name` (e.g. `America/New_York`; case is ignored), or an error naming it
    /// when the bundled database does not know it.
    pub fn named(name: &str) -> Result<Zone, String> {
        static ZONES: OnceLock<Mutex<HashMap<Box<str>, &'static NamedZone>>> = OnceLock::new();
        let map = ZONES.get_or_init(Default::default);
        // Only inserted into; a panic cannot leave it half-updated.
        let mut g = map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(z) = g.get(name) {
            return Ok(Zone::Named(z));
        }
        let tz = TimeZone::get(name).map_err(|_| {
            format!("unknown time zone {name:?}: expected an IANA name such as Europe/Berlin or a UTC offset such as +02:00")
        })?;
        // Keyed by the database's own spelling, so other casings of a name (the lookup ignores
        // case) never add entries.
        let canonical = tz.iana_name().unwrap_or(name).to_owned();
        if let Some(z) = g.get(canonical.as_str()) {
            return Ok(Zone::Named(z));
        }
        let z: &'static NamedZone = Box::leak(Box::new(NamedZone {
            name: canonical.as_str().into(),
            tz,
        }));
        g.insert(canonical.into(), z);
        Ok(Zone::Named(z))
    }

    /// The jiff time zone (no allocation for either kind).
    fn tz(&self) -> TimeZone {
        match self {
            Zone::Fixed(m) => Offset::from_seconds(m.saturating_mul(60))
                .map(TimeZone::fixed)
                .unwrap_or(TimeZone::UTC),
            Zone::Named(z) => z.tz.clone(),
        }
    }

    /// `[start, end)` in epoch ms of the local calendar day containing `now_ms`.
    pub fn day_bounds(&self, now_ms: u64) -> (u64, u64) {
        self.day_bounds_checked(now_ms)
            .unwrap_or_else(|| utc_day(now_ms))
    }

    fn day_bounds_checked(&self, now_ms: u64) -> Option<(u64, u64)> {
        let tz = self.tz();
        let now = jiff::Timestamp::from_millisecond(i64::try_from(now_ms).ok()?).ok()?;
        let date = now.to_zoned(tz.clone()).date();
        let start = day_start(&tz, date)?;
        let end = day_start(&tz, date.tomorrow().ok()?)?;
        Some((start, end))
    }

    /// `[start, end)` in epoch ms of the month period containing `now_ms` that renews at the
    /// first instant of local day `renewal_day` (1..=31; in shorter months their last day).
    pub fn month_bounds(&self, now_ms: u64, renewal_day: u8) -> (u64, u64) {
        self.month_bounds_checked(now_ms, renewal_day)
            .unwrap_or_else(|| utc_day(now_ms))
    }

    fn month_bounds_checked(&self, now_ms: u64, renewal_day: u8) -> Option<(u64, u64)> {
        use jiff::civil::Date;
        let tz = self.tz();
        let now = jiff::Timestamp::from_millisecond(i64::try_from(now_ms).ok()?).ok()?;
        let today = now.to_zoned(tz.clone()).date();
        let rd = i8::try_from(renewal_day.clamp(1, 31)).ok()?;
        let renewal = |y: i16, m: i8| -> Option<Date> {
            let first = Date::new(y, m, 1).ok()?;
            Date::new(y, m, rd.min(first.days_in_month())).ok()
        };
        let (y, m) = (today.year(), today.month());
        let this = renewal(y, m)?;
        let (start, end) = if today >= this {
            let next = this
                .first_of_month()
                .checked_add(jiff::Span::new().months(1))
                .ok()?;
            (this, renewal(next.year(), next.month())?)
        } else {
            let prev = this
                .first_of_month()
                .checked_sub(jiff::Span::new().months(1))
                .ok()?;
            (renewal(prev.year(), prev.month())?, this)
        };
        Some((day_start(&tz, start)?, day_start(&tz, end)?))
    }
}

/// The first instant of local `date` in `tz`, in epoch ms. When midnight does not exist (a
/// daylight-saving gap at 00:00) that is the end of the gap; when it exists twice, the first.
fn day_start(tz: &TimeZone, date: jiff::civil::Date) -> Option<u64> {
    let z = date.to_zoned(tz.clone()).ok()?;
    let ms = z.start_of_day().ok()?.timestamp().as_millisecond();
    u64::try_from(ms).ok()
}

/// The UTC day, for instants the calendar cannot represent (beyond year 9999).
fn utc_day(now_ms: u64) -> (u64, u64) {
    const DAY: u64 = 86_400_000;
    let start = now_ms - now_ms % DAY;
    (start, start.saturating_add(DAY))
}

/// How the zone is written in configuration (`Europe/Berlin`, `+02:00`).
impl fmt::Display for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Zone::Fixed(m) => {
                let sign = if *m < 0 { '-' } else { '+' };
                let a = m.unsigned_abs();
                write!(f, "{sign}{:02}:{:02}", a / 60, a % 60)
            }
            Zone::Named(z) => f.write_str(&z.name),
        }
    }
}

impl fmt::Debug for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Zone({self})")
    }
}

impl PartialEq for Zone {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Zone::Fixed(a), Zone::Fixed(b)) => a == b,
            (Zone::Named(a), Zone::Named(b)) => a.name == b.name,
            _ => false,
        }
    }
}

impl Eq for Zone {}

impl fmt::Debug for NamedZone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}
