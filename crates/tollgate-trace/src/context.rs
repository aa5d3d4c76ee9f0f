//! W3C Trace Context: span and trace IDs, `traceparent` parsing and formatting, and the sampler.

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The longest `tracestate` carried on (the W3C limit is 512 characters).
const MAX_TRACESTATE: usize = 512;

pub type TraceId = [u8; 16];
pub type SpanId = [u8; 8];

thread_local! {
    // A per-thread splitmix64 stream seeded from the process's random hasher keys: IDs must be
    // unique, not secret, and a system call per span would cost more than the span.
    static RNG: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(u64::from(std::process::id()));
    h.finish()
}

fn next_u64() -> u64 {
    RNG.with(|s| {
        let mut z = s.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        s.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

/// A new, non-zero span ID.
pub fn new_span_id() -> SpanId {
    (next_u64() | 1).to_be_bytes()
}

/// A new, non-zero trace ID.
pub fn new_trace_id() -> TraceId {
    let mut t = [0u8; 16];
    t[..8].copy_from_slice(&next_u64().to_be_bytes());
    t[8..].copy_from_slice(&(next_u64() | 1).to_be_bytes());
    t
}

/// The caller's trace context, from a valid `traceparent` (and its `tracestate`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub sampled: bool,
    pub trace_state: Option<String>,
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn parse_hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = hex_val(pair[0])? << 4 | hex_val(pair[1])?;
    }
    Some(out)
}

/// Parses one `traceparent` value (version 00 layout; later versions may append fields).
pub fn parse_traceparent(v: &[u8]) -> Option<(TraceId, SpanId, u8)> {
    if v.len() < 55 || (v.len() > 55 && (v[0..2] == *b"00" || v[55] != b'-')) {
        return None;
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' || v[0..2] == *b"ff" {
        return None;
    }
    parse_hex::<1>(&v[0..2])?;
    let trace: TraceId = parse_hex(&v[3..35])?;
    let span: SpanId = parse_hex(&v[36..52])?;
    let flags = parse_hex::<1>(&v[53..55])?[0];
    if trace == [0; 16] || span == [0; 8] {
        return None;
    }
    Some((trace, span, flags))
}

/// The caller's context: exactly one valid `traceparent`, plus `tracestate` (its fields joined,
/// dropped when longer than the W3C limit).
pub fn extract(headers: &HeaderMap) -> Option<Parent> {
    let mut all = headers.get_all(&TRACEPARENT).iter();
    let tp = all.next()?;
    if all.next().is_some() {
        return None;
    }
    let (trace_id, span_id, flags) = parse_traceparent(tp.as_bytes())?;
    let mut state = String::new();
    for v in headers.get_all(&TRACESTATE) {
        if let Ok(s) = v.to_str() {
            let s = s.trim();
            if !s.is_empty() {
                if !state.is_empty() {
                    state.push(',');
                }
                state.push_str(s);
            }
        }
    }
    Some(Parent {
        trace_id,
        span_id,
        sampled: flags & 1 == 1,
        trace_state: (!state.is_empty() && state.len() <= MAX_TRACESTATE).then_some(state),
    })
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 0xf)] as char);
    }
}

/// Lowercase hex of an ID (for logs and tests).
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    push_hex(&mut s, bytes);
    s
}

/// `00-<trace>-<span>-<flags>`.
pub fn traceparent(trace_id: &TraceId, span_id: &SpanId, sampled: bool) -> HeaderValue {
    let mut s = String::with_capacity(55);
    s.push_str("00-");
    push_hex(&mut s, trace_id);
    s.push('-');
    push_hex(&mut s, span_id);
    s.push_str(if sampled { "-01" } else { "-00" });
    // Only hex digits and dashes: always a valid header value.
    HeaderValue::from_str(&s).unwrap_or(HeaderValue::from_static(
        "00-00000000000000000000000000000001-0000000000000001-00",
    ))
}

/// Which traces are recorded: a share of new ones, and (parent-based) whatever the caller
/// decided for its own.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampler {
    ratio: f64,
    parent_based: bool,
}

impl Sampler {
    pub fn new(ratio: f64, parent_based: bool) -> Self {
        Self {
            ratio: ratio.clamp(0.0, 1.0),
            parent_based,
        }
    }

    /// Whether a trace is recorded. With a parent and `parent_based`, its sampled flag decides;
    /// otherwise the trace ID's low 8 bytes are compared with the ratio, so every service that
    /// samples by ratio keeps the same traces.
    pub fn sample(&self, trace_id: &TraceId, parent: Option<&Parent>) -> bool {
        if self.parent_based
            && let Some(p) = parent
        {
            return p.sampled;
        }
        if self.ratio >= 1.0 {
            return true;
        }
        if self.ratio <= 0.0 {
            return false;
        }
        let mut low = [0u8; 8];
        low.copy_from_slice(&trace_id[8..]);
        let bound = (self.ratio * (u64::MAX as f64)) as u64;
        u64::from_be_bytes(low) < bound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats_traceparent() {
        let v = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (t, s, f) = parse_traceparent(v).unwrap();
        assert_eq!(hex(&t), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&s), "00f067aa0ba902b7");
        assert_eq!(f, 1);
        assert_eq!(traceparent(&t, &s, true).as_bytes(), v);
        for bad in [
            &b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"[..],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            b"garbage",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad:?}");
        }
        // A later version may append fields.
        assert!(
            parse_traceparent(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz")
                .is_some()
        );
    }

    #[test]
    fn extract_needs_one_traceparent_and_joins_tracestate() {
        let mut h = HeaderMap::new();
        assert!(extract(&h).is_none());
        h.append(
            &TRACEPARENT,
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
        );
        h.append(&TRACESTATE, HeaderValue::from_static("a=1"));
        h.append(&TRACESTATE, HeaderValue::from_static("b=2"));
        let p = extract(&h).unwrap();
        assert!(!p.sampled);
        assert_eq!(p.trace_state.as_deref(), Some("a=1,b=2"));
        h.append(
            &TRACEPARENT,
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        assert!(extract(&h).is_none(), "two traceparents are ignored");
    }

    #[test]
    fn sampling() {
        let parent = |sampled| Parent {
            trace_id: [1; 16],
            span_id: [1; 8],
            sampled,
            trace_state: None,
        };
        let none = Sampler::new(0.0, true);
        let all = Sampler::new(1.0, true);
        let t = new_trace_id();
        assert!(!none.sample(&t, None));
        assert!(all.sample(&t, None));
        assert!(none.sample(&t, Some(&parent(true))));
        assert!(!all.sample(&t, Some(&parent(false))));
        assert!(!Sampler::new(0.0, false).sample(&t, Some(&parent(true))));
        let half = Sampler::new(0.5, true);
        let kept = (0..2000)
            .filter(|_| half.sample(&new_trace_id(), None))
            .count();
        assert!((800..1200).contains(&kept), "{kept} of 2000");
        assert_ne!(new_span_id(), new_span_id());
    }
}
