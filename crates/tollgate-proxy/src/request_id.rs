//! Request correlation: `x-request-id` is propagated when the client sent a
//! sane one (1–128 visible ASCII characters) and generated otherwise;
//! `traceparent` (W3C Trace Context) is propagated when valid and generated
//! otherwise, so every upstream request carries both.

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

thread_local! {
    // A per-thread splitmix64 stream seeded from the process's random hasher
    // keys: unique and unpredictable enough for correlation IDs, and far
    // cheaper than a system call per request.
    static RNG: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
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

fn push_hex(out: &mut String, v: u64, digits: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..digits).rev() {
        out.push(HEX[((v >> (i * 4)) & 0xf) as usize] as char);
    }
}

/// A fresh 128-bit request ID as 32 lowercase hex digits.
pub fn generate() -> String {
    let mut s = String::with_capacity(32);
    push_hex(&mut s, next_u64(), 16);
    push_hex(&mut s, next_u64(), 16);
    s
}

fn sane_id(v: &HeaderValue) -> Option<&str> {
    let b = v.as_bytes();
    if b.is_empty() || b.len() > 128 || !b.iter().all(|c| c.is_ascii_graphic()) {
        return None;
    }
    v.to_str().ok()
}

/// The request's ID: the client's `x-request-id` if sane, else a new one.
pub fn request_id(headers: &HeaderMap, name: &HeaderName) -> String {
    match headers.get(name).and_then(sane_id) {
        Some(s) => s.to_owned(),
        None => generate(),
    }
}

fn is_lower_hex(s: &[u8]) -> bool {
    s.iter()
        .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
}

/// Whether a `traceparent` value is valid per W3C Trace Context (version 00
/// layout; later versions may append fields after the flags).
pub fn valid_traceparent(v: &[u8]) -> bool {
    if v.len() < 55 || (v.len() > 55 && v[0..2] == *b"00") || (v.len() > 55 && v[55] != b'-') {
        return false;
    }
    let (ver, trace, span, flags) = (&v[0..2], &v[3..35], &v[36..52], &v[53..55]);
    v[2] == b'-'
        && v[35] == b'-'
        && v[52] == b'-'
        && is_lower_hex(ver)
        && ver != b"ff"
        && is_lower_hex(trace)
        && trace.iter().any(|&c| c != b'0')
        && is_lower_hex(span)
        && span.iter().any(|&c| c != b'0')
        && is_lower_hex(flags)
}

/// A new sampled W3C `traceparent`.
pub fn generate_traceparent() -> HeaderValue {
    let mut s = String::with_capacity(55);
    s.push_str("00-");
    push_hex(&mut s, next_u64() | 1, 16);
    push_hex(&mut s, next_u64(), 16);
    s.push('-');
    push_hex(&mut s, next_u64() | 1, 16);
    s.push_str("-01");
    HeaderValue::from_str(&s).unwrap_or(HeaderValue::from_static(
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ))
}

/// Keeps a valid incoming `traceparent` and replaces a missing or invalid one.
pub fn ensure_traceparent(headers: &mut HeaderMap) {
    let ok = headers.get_all(&TRACEPARENT).iter().count() == 1
        && headers
            .get(&TRACEPARENT)
            .is_some_and(|v| valid_traceparent(v.as_bytes()));
    if !ok {
        headers.insert(TRACEPARENT.clone(), generate_traceparent());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_hex_and_distinct() {
        let a = generate();
        let b = generate();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn propagates_only_sane_ids() {
        let name = HeaderName::from_static("x-request-id");
        let mut h = HeaderMap::new();
        h.insert(&name, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h, &name), "abc-123");
        h.insert(&name, HeaderValue::from_static("has space"));
        assert_ne!(request_id(&h, &name), "has space");
        h.insert(&name, HeaderValue::from_str(&"x".repeat(129)).unwrap());
        assert_eq!(request_id(&h, &name).len(), 32);
    }

    #[test]
    fn traceparent_validation() {
        assert!(valid_traceparent(
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        assert!(!valid_traceparent(
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"
        ));
        assert!(!valid_traceparent(
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"
        ));
        assert!(!valid_traceparent(
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        assert!(!valid_traceparent(
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"
        ));
        assert!(!valid_traceparent(b"garbage"));
        assert!(valid_traceparent(generate_traceparent().as_bytes()));
        let mut h = HeaderMap::new();
        h.insert(&TRACEPARENT, HeaderValue::from_static("nope"));
        ensure_traceparent(&mut h);
        assert!(valid_traceparent(h[&TRACEPARENT].as_bytes()));
    }
}
