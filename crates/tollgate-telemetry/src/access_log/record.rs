//! One access-log record and its JSON line.
//!
//! serde_json does the escaping, so any input yields valid JSON. On top of that the formatter
//! escapes U+0085, U+2028 and U+2029: they are legal unescaped in JSON, but some line-oriented
//! readers treat them as line breaks and would split one record in two.

use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::ser::Formatter;
use time::OffsetDateTime;
use time::macros::format_description;

/// Everything the access log records about one request or tunnel.
#[derive(Debug, Clone, Copy)]
pub struct AccessRecord<'a> {
    /// When the request started; rendered as RFC 3339 UTC with milliseconds.
    pub time: SystemTime,
    pub request_id: &'a str,
    /// `forward`, `connect` or `route`.
    pub kind: &'a str,
    pub peer: IpAddr,
    pub consumer: Option<&'a str>,
    pub api: Option<&'a str>,
    pub method: &'a str,
    pub scheme: &'a str,
    pub host: &'a str,
    /// Path and query, already passed through [`crate::redact_query`].
    pub path: &'a str,
    pub status: u16,
    /// `allow`, `deny` or `report`.
    pub decision: &'a str,
    /// The `tollgate-error` code when Tollgate decided or failed, or the code a report-mode rule
    /// would have used.
    pub reason: Option<&'a str>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration: Duration,
    pub upstream_duration: Option<Duration>,
    pub upstream_addr: Option<SocketAddr>,
    /// Upstream attempts made (0: nothing was sent; more than 1: retried).
    pub attempts: u32,
    /// Name of the injected credential key (never its value), when one was used.
    pub credential: Option<&'a str>,
    /// Data-loss protection findings as `detector:count,…` (`card:1,email:2`; `oversize:1` for a
    /// body too large to scan), never the data. `None` when nothing was found.
    pub dlp: Option<&'a str>,
    /// Response cache result for an API with `cache`: `hit`, `miss`, `stale`, `revalidated`
    /// or `bypass`. `None` when the API does not cache.
    pub cache: Option<&'a str>,
}

/// The serialized shape; field order here is the key order in the line.
#[derive(Serialize)]
struct Line<'a> {
    time: &'a str,
    request_id: &'a str,
    kind: &'a str,
    peer: IpAddr,
    consumer: Option<&'a str>,
    api: Option<&'a str>,
    method: &'a str,
    scheme: &'a str,
    host: &'a str,
    path: &'a str,
    status: u16,
    decision: &'a str,
    reason: Option<&'a str>,
    bytes_in: u64,
    bytes_out: u64,
    duration_ms: f64,
    upstream_ms: Option<f64>,
    upstream_addr: Option<SocketAddr>,
    attempts: u32,
    credential: Option<&'a str>,
    dlp: Option<&'a str>,
    cache: Option<&'a str>,
}

/// Appends `record` as one JSON object followed by `\n`.
pub(crate) fn write_line(buf: &mut Vec<u8>, r: &AccessRecord<'_>) -> io::Result<()> {
    let mut time_buf = [0u8; 40];
    let time = format_time(r.time, &mut time_buf);
    let line = Line {
        time,
        request_id: r.request_id,
        kind: r.kind,
        // Show IPv4 clients on a dual-stack listener as plain IPv4.
        peer: r.peer.to_canonical(),
        consumer: r.consumer,
        api: r.api,
        method: r.method,
        scheme: r.scheme,
        host: r.host,
        path: r.path,
        status: r.status,
        decision: r.decision,
        reason: r.reason,
        bytes_in: r.bytes_in,
        bytes_out: r.bytes_out,
        duration_ms: millis(r.duration),
        upstream_ms: r.upstream_duration.map(millis),
        upstream_addr: r.upstream_addr,
        attempts: r.attempts,
        credential: r.credential,
        dlp: r.dlp,
        cache: r.cache,
    };
    let mut ser = serde_json::Serializer::with_formatter(&mut *buf, LineSafeFormatter);
    line.serialize(&mut ser).map_err(io::Error::other)?;
    buf.push(b'\n');
    Ok(())
}

/// Milliseconds rounded to three decimals (microsecond resolution).
fn millis(d: Duration) -> f64 {
    let micros = d.as_nanos().saturating_add(500) / 1_000;
    micros as f64 / 1_000.0
}

/// Renders `t` into `buf` as `YYYY-MM-DDTHH:MM:SS.mmmZ`; a time the calendar cannot represent
/// (centuries away) falls back to the epoch rather than failing the line.
fn format_time(t: SystemTime, buf: &mut [u8; 40]) -> &str {
    let format =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    const FALLBACK: &str = "1970-01-01T00:00:00.000Z";
    // Checked arithmetic: `OffsetDateTime::from(SystemTime)` panics outside years ±9999.
    let dt = match t.duration_since(UNIX_EPOCH) {
        Ok(after) => time::Duration::try_from(after)
            .ok()
            .and_then(|d| OffsetDateTime::UNIX_EPOCH.checked_add(d)),
        Err(before) => time::Duration::try_from(before.duration())
            .ok()
            .and_then(|d| OffsetDateTime::UNIX_EPOCH.checked_sub(d)),
    };
    let Some(dt) = dt else {
        return FALLBACK;
    };
    let capacity = buf.len();
    let mut cursor: &mut [u8] = &mut buf[..];
    let written = match dt.format_into(&mut cursor, format) {
        Ok(_) => capacity - cursor.len(),
        Err(_) => return FALLBACK,
    };
    std::str::from_utf8(&buf[..written]).unwrap_or(FALLBACK)
}

/// Compact JSON that additionally escapes the Unicode line separators.
struct LineSafeFormatter;

impl Formatter for LineSafeFormatter {
    fn write_string_fragment<W>(&mut self, writer: &mut W, fragment: &str) -> io::Result<()>
    where
        W: ?Sized + Write,
    {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            let escape = match c {
                '\u{85}' => "\\u0085",
                '\u{2028}' => "\\u2028",
                '\u{2029}' => "\\u2029",
                _ => continue,
            };
            writer.write_all(&fragment.as_bytes()[start..i])?;
            writer.write_all(escape.as_bytes())?;
            start = i + c.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    fn sample<'a>() -> AccessRecord<'a> {
        AccessRecord {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            request_id: "req-1",
            kind: "route",
            peer: "10.1.2.3".parse().unwrap(),
            consumer: Some("ci"),
            api: Some("github"),
            method: "GET",
            scheme: "https",
            host: "api.github.com",
            path: "/repos?token=REDACTED",
            status: 200,
            decision: "allow",
            reason: None,
            bytes_in: 0,
            bytes_out: 512,
            duration: Duration::from_micros(12_345),
            upstream_duration: Some(Duration::from_nanos(10_000_600)),
            upstream_addr: Some("140.82.112.6:443".parse().unwrap()),
            attempts: 1,
            credential: Some("main"),
            dlp: None,
            cache: None,
        }
    }

    fn render(r: &AccessRecord<'_>) -> String {
        let mut buf = Vec::new();
        write_line(&mut buf, r).unwrap();
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn renders_exact_line() {
        assert_eq!(
            render(&sample()),
            concat!(
                r#"{"time":"2023-11-14T22:13:20.123Z","request_id":"req-1","kind":"route","#,
                r#""peer":"10.1.2.3","consumer":"ci","api":"github","method":"GET","#,
                r#""scheme":"https","host":"api.github.com","path":"/repos?token=REDACTED","#,
                r#""status":200,"decision":"allow","reason":null,"bytes_in":0,"bytes_out":512,"#,
                r#""duration_ms":12.345,"upstream_ms":10.001,"upstream_addr":"140.82.112.6:443","#,
                r#""attempts":1,"credential":"main","dlp":null,"cache":null}"#,
                "\n"
            )
        );
    }

    #[test]
    fn absent_values_are_null_and_mapped_peers_are_ipv4() {
        let r = AccessRecord {
            peer: IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0x7f00, 1)),
            consumer: None,
            api: None,
            upstream_duration: None,
            upstream_addr: None,
            duration: Duration::ZERO,
            ..sample()
        };
        let v: serde_json::Value = serde_json::from_str(&render(&r)).unwrap();
        assert_eq!(v["peer"], "127.0.0.1");
        assert!(v["consumer"].is_null());
        assert!(v["api"].is_null());
        assert!(v["upstream_ms"].is_null());
        assert!(v["upstream_addr"].is_null());
        assert_eq!(v["duration_ms"], 0.0);
    }

    #[test]
    fn line_separators_are_escaped() {
        let host = "a\u{85}b\u{2028}c\u{2029}d\u{7f}e";
        let line = render(&AccessRecord { host, ..sample() });
        assert!(
            !line.contains('\u{85}') && !line.contains('\u{2028}') && !line.contains('\u{2029}')
        );
        assert!(line.contains(r#""host":"a\u0085b\u2028c\u2029d"#), "{line}");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["host"], host);
    }

    #[test]
    fn pre_epoch_and_far_times_render() {
        let r = AccessRecord {
            time: SystemTime::UNIX_EPOCH - Duration::from_millis(1),
            ..sample()
        };
        let v: serde_json::Value = serde_json::from_str(&render(&r)).unwrap();
        assert_eq!(v["time"], "1969-12-31T23:59:59.999Z");

        let r = AccessRecord {
            time: SystemTime::UNIX_EPOCH + Duration::from_secs(1 << 40),
            ..sample()
        };
        let v: serde_json::Value = serde_json::from_str(&render(&r)).unwrap();
        assert_eq!(v["time"], "1970-01-01T00:00:00.000Z");
    }
}
