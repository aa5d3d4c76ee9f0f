//! The built-in DLP detectors: a candidate regular expression per detector
//! (compiled once per configuration) plus a validator that throws out
//! candidates that only look right — a card number must pass the Luhn check,
//! an IBAN its mod-97 checksum, an SSN the area/group/serial rules, a JWT
//! header must decode to JSON with `alg`, a high-entropy token must really be
//! random-looking. Near-misses are the point: a 16-digit order id that fails
//! Luhn is not a card.

use base64::Engine as _;
use regex_automata::meta::Regex;
use tollgate_config::dlp::BuiltinDetector;

/// Minimum length of a high-entropy token.
const ENTROPY_MIN_LEN: usize = 24;
/// Shannon entropy (bits per character) a mixed-alphabet token needs.
const ENTROPY_BITS: f64 = 4.0;
/// Hex tokens (max 4 bits per character) need at least 32 characters and this.
const ENTROPY_BITS_HEX: f64 = 3.0;
const ENTROPY_MIN_LEN_HEX: usize = 32;

/// The candidate pattern of a built-in detector (bytes, ASCII word boundaries).
pub(crate) fn pattern(d: BuiltinDetector) -> &'static str {
    match d {
        // 13–19 digits, single spaces or dashes allowed between them.
        BuiltinDetector::Card => r"(?-u:\b)[0-9](?:[ -]?[0-9]){12,18}(?-u:\b)",
        // Country code, check digits, 11–30 alphanumerics, optionally in groups of four.
        BuiltinDetector::Iban => r"(?-u:\b)[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}(?-u:\b)",
        // Only the dashed form: nine bare digits are too often something else.
        BuiltinDetector::Ssn => r"(?-u:\b)[0-9]{3}-[0-9]{2}-[0-9]{4}(?-u:\b)",
        BuiltinDetector::Email => {
            r"(?-u:\b)[A-Za-z0-9._%+-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,}(?-u:\b)"
        }
        BuiltinDetector::AwsKey => r"(?-u:\b)(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}(?-u:\b)",
        // The whole key when its END line is there, else the BEGIN line (a truncated key is
        // still a key).
        BuiltinDetector::PrivateKey => {
            r"(?s)-----BEGIN[A-Z0-9 ]*PRIVATE KEY-----(?:.*?-----END[A-Z0-9 ]*PRIVATE KEY-----)?"
        }
        BuiltinDetector::Jwt => r"(?-u:\b)eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*",
        BuiltinDetector::HighEntropy => r"[A-Za-z0-9+_-]{24,}={0,2}",
    }
}

/// Compiles the candidate pattern of `d`.
pub(crate) fn compile(d: BuiltinDetector) -> Result<Regex, String> {
    Regex::new(pattern(d)).map_err(|e| e.to_string())
}

/// Whether the candidate `m` of detector `d` is a real finding.
pub(crate) fn validate(d: BuiltinDetector, m: &[u8]) -> bool {
    match d {
        BuiltinDetector::Card => luhn_card(m),
        BuiltinDetector::Iban => iban(m),
        BuiltinDetector::Ssn => ssn(m),
        BuiltinDetector::Jwt => jwt(m),
        BuiltinDetector::HighEntropy => high_entropy(m),
        BuiltinDetector::Email | BuiltinDetector::AwsKey | BuiltinDetector::PrivateKey => true,
    }
}

/// 13–19 digits (separators ignored) passing the Luhn check; all-same digits are not a card.
pub(crate) fn luhn_card(m: &[u8]) -> bool {
    let digits: Vec<u8> = m
        .iter()
        .filter(|b| b.is_ascii_digit())
        .map(|b| b - b'0')
        .collect();
    if !(13..=19).contains(&digits.len()) || digits.iter().all(|d| *d == digits[0]) {
        return false;
    }
    luhn(&digits)
}

/// The Luhn (mod 10) check over decimal digits.
pub(crate) fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// An IBAN (spaces ignored): 15–34 characters whose mod-97 remainder, with the first four
/// moved to the end and letters as 10..35, is 1.
pub(crate) fn iban(m: &[u8]) -> bool {
    let s: Vec<u8> = m.iter().copied().filter(|b| *b != b' ').collect();
    if !(15..=34).contains(&s.len()) {
        return false;
    }
    let (head, tail) = s.split_at(4);
    let mut rem: u32 = 0;
    for &c in tail.iter().chain(head) {
        let v = match c {
            b'0'..=b'9' => u32::from(c - b'0'),
            b'A'..=b'Z' => u32::from(c - b'A') + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

/// `AAA-GG-SSSS` with area not 000, 666 or 900–999, group not 00 and serial not 0000.
pub(crate) fn ssn(m: &[u8]) -> bool {
    let num = |r: &[u8]| {
        r.iter().try_fold(0u32, |n, b| {
            b.is_ascii_digit().then(|| n * 10 + u32::from(b - b'0'))
        })
    };
    let (Some(area), Some(group), Some(serial)) = (
        m.get(0..3).and_then(num),
        m.get(4..6).and_then(num),
        m.get(7..11).and_then(num),
    ) else {
        return false;
    };
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

/// Three base64url parts whose first decodes to a JSON object with a string `alg`.
pub(crate) fn jwt(m: &[u8]) -> bool {
    let Some(header) = m.split(|b| *b == b'.').next() else {
        return false;
    };
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let trimmed: Vec<u8> = header.iter().copied().filter(|b| *b != b'=').collect();
    let Ok(raw) = engine.decode(trimmed) else {
        return false;
    };
    serde_json::from_slice::<serde_json::Value>(&raw)
        .ok()
        .and_then(|v| v.get("alg").map(serde_json::Value::is_string))
        .unwrap_or(false)
}

/// Shannon entropy of `m` in bits per byte.
pub(crate) fn entropy(m: &[u8]) -> f64 {
    if m.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for &b in m {
        counts[usize::from(b)] += 1;
    }
    let n = m.len() as f64;
    counts
        .iter()
        .filter(|c| **c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

/// A random-looking token: letters and digits mixed, not a UUID, entropy over the threshold
/// (a lower one for hex, whose alphabet caps entropy at 4 bits).
pub(crate) fn high_entropy(m: &[u8]) -> bool {
    let has_digit = m.iter().any(u8::is_ascii_digit);
    let has_alpha = m.iter().any(u8::is_ascii_alphabetic);
    if !has_digit || !has_alpha || is_uuid(m) {
        return false;
    }
    if m.iter().all(u8::is_ascii_hexdigit) {
        return m.len() >= ENTROPY_MIN_LEN_HEX && entropy(m) >= ENTROPY_BITS_HEX;
    }
    m.len() >= ENTROPY_MIN_LEN && entropy(m) >= ENTROPY_BITS
}

/// `8-4-4-4-12` hex digits: an identifier, not a secret.
fn is_uuid(m: &[u8]) -> bool {
    m.len() == 36
        && m.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}
