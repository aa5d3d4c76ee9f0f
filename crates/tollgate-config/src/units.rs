//! Human-friendly scalar units used in the config: durations (`250ms`, `5s`, `1h`)
//! and byte sizes (`64KiB`, `10MB`).

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written as `<number><unit>` with unit `ms`, `s`, `m`, `h` or `d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn from_millis(ms: u64) -> Self {
        Self(std::time::Duration::from_millis(ms))
    }
    pub const fn from_secs(s: u64) -> Self {
        Self(std::time::Duration::from_secs(s))
    }
    pub fn get(self) -> std::time::Duration {
        self.0
    }
    pub fn secs_5() -> Self {
        Self::from_secs(5)
    }
    pub fn secs_10() -> Self {
        Self::from_secs(10)
    }
    pub fn secs_30() -> Self {
        Self::from_secs(30)
    }
    pub fn secs_60() -> Self {
        Self::from_secs(60)
    }
    pub fn secs_90() -> Self {
        Self::from_secs(90)
    }
    pub fn secs_300() -> Self {
        Self::from_secs(300)
    }
}

/// Why a unit value did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnitError(String);

impl FromStr for Duration {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().map_err(|_| {
            UnitError(format!(
                "invalid duration {s:?}: expected e.g. 250ms, 5s, 10m, 1h, 1d"
            ))
        })?;
        let ms_per = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => {
                return Err(UnitError(format!(
                    "invalid duration {s:?}: unit must be one of ms, s, m, h, d"
                )));
            }
        };
        n.checked_mul(ms_per)
            .map(Self::from_millis)
            .ok_or_else(|| UnitError(format!("duration {s:?} is too large")))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(86_400_000) && ms > 0 {
            write!(f, "{}d", ms / 86_400_000)
        } else if ms.is_multiple_of(3_600_000) && ms > 0 {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) && ms > 0 {
            write!(f, "{}m", ms / 60_000)
        } else if ms.is_multiple_of(1_000) {
            write!(f, "{}s", ms / 1_000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^[0-9]+(ms|s|m|h|d)$",
            "description": "A duration such as 250ms, 5s, 10m, 1h or 1d."
        })
    }
}

/// A byte size written as `<number>[unit]` with unit `B`, `KB`, `KiB`, `MB`, `MiB`, `GB`, `GiB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn kib_64() -> Self {
        Self(64 * 1024)
    }
    pub fn get(self) -> u64 {
        self.0
    }
}

impl FromStr for ByteSize {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().map_err(|_| {
            UnitError(format!(
                "invalid size {s:?}: expected e.g. 512B, 64KiB, 10MB"
            ))
        })?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KB" | "kB" => 1_000,
            "KiB" => 1 << 10,
            "MB" => 1_000_000,
            "MiB" => 1 << 20,
            "GB" => 1_000_000_000,
            "GiB" => 1 << 30,
            _ => {
                return Err(UnitError(format!(
                    "invalid size {s:?}: unit must be one of B, KB, KiB, MB, MiB, GB, GiB"
                )));
            }
        };
        n.checked_mul(mult)
            .map(Self)
            .ok_or_else(|| UnitError(format!("size {s:?} is too large")))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n >= 1 << 30 && n.is_multiple_of(1 << 30) {
            write!(f, "{}GiB", n >> 30)
        } else if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
            write!(f, "{}MiB", n >> 20)
        } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
            write!(f, "{}KiB", n >> 10)
        } else {
            write!(f, "{n}B")
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Accept a bare integer (bytes) as well as a string with a unit.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Self(n)),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl JsonSchema for ByteSize {
    fn schema_name() -> Cow<'static, str> {
        "ByteSize".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "oneOf": [
                { "type": "integer", "minimum": 0 },
                { "type": "string", "pattern": "^[0-9]+ ?(B|KB|kB|KiB|MB|MiB|GB|GiB)?$" }
            ],
            "description": "A size in bytes, or with a unit: 512B, 64KiB, 10MB, 1GiB."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print() {
        for (s, ms) in [
            ("250ms", 250),
            ("5s", 5_000),
            ("10m", 600_000),
            ("1h", 3_600_000),
            ("1d", 86_400_000),
        ] {
            let d: Duration = s.parse().unwrap();
            assert_eq!(d.get().as_millis(), ms);
            assert_eq!(d.to_string(), s);
        }
        assert!("5".parse::<Duration>().is_err());
        assert!("5 years".parse::<Duration>().is_err());
        assert!("-5s".parse::<Duration>().is_err());
    }

    #[test]
    fn sizes_parse() {
        assert_eq!("64KiB".parse::<ByteSize>().unwrap().get(), 65_536);
        assert_eq!("10MB".parse::<ByteSize>().unwrap().get(), 10_000_000);
        assert_eq!("12".parse::<ByteSize>().unwrap().get(), 12);
        assert!("12XB".parse::<ByteSize>().is_err());
    }
}
