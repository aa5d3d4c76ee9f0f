//! JSON bodies for the DLP stage: string escapes (`\uXXXX`, `\n`, `\/` …) are
//! decoded before scanning, so a card number written as `"\u0034111…"` or a PEM
//! key with `\n` line breaks is still found. Everything outside strings
//! (numbers, structure) is scanned as it is.
//!
//! Redaction maps each match back to the raw bytes that encoded it and replaces
//! them with a JSON-safe mask, so a match inside one string literal leaves valid
//! JSON. The body is not parsed: broken JSON is scanned as well as it decodes.

/// A JSON body with its string escapes decoded, and where each decoded byte
/// came from in the raw body.
pub(crate) struct Decoded {
    /// The scanned text.
    pub(crate) text: Vec<u8>,
    /// `origin[i]`: the raw offset where the escape or byte producing `text[i]`
    /// starts; `origin[text.len()]` is the raw body's length.
    origin: Vec<usize>,
}

impl Decoded {
    /// The raw byte range that encodes decoded `start..end`.
    pub(crate) fn raw_range(&self, start: usize, end: usize) -> (usize, usize) {
        let s = self.origin.get(start).copied().unwrap_or(0);
        let last = end
            .checked_sub(1)
            .and_then(|i| self.origin.get(i))
            .copied()
            .unwrap_or(s);
        // The end is where the next escape starts after the one that produced the
        // match's last byte (an escape decoding to several bytes maps them all to
        // its start, so a match ending inside one covers all of it).
        let e = self
            .origin
            .get(end..)
            .and_then(|rest| rest.iter().copied().find(|&o| o > last))
            .unwrap_or_else(|| self.origin.last().copied().unwrap_or(0));
        (s, e)
    }
}

fn hex4(b: &[u8]) -> Option<u32> {
    if b.len() < 4 {
        return None;
    }
    let s = std::str::from_utf8(&b[..4]).ok()?;
    u32::from_str_radix(s, 16).ok()
}

/// Decodes the body's string escapes. `None` when the body has no backslash
/// (then scanning the raw bytes is the same thing).
pub(crate) fn decode(raw: &[u8]) -> Option<Decoded> {
    if !raw.contains(&b'\\') {
        return None;
    }
    let mut text = Vec::with_capacity(raw.len());
    let mut origin = Vec::with_capacity(raw.len() + 1);
    let mut in_string = false;
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if !in_string || b != b'\\' {
            if b == b'"' {
                in_string = !in_string;
            }
            text.push(b);
            origin.push(i);
            i += 1;
            continue;
        }
        // An escape inside a string.
        let start = i;
        let Some(&e) = raw.get(i + 1) else {
            text.push(b);
            origin.push(i);
            break;
        };
        let simple = match e {
            b'"' => Some(b'"'),
            b'\\' => Some(b'\\'),
            b'/' => Some(b'/'),
            b'b' => Some(0x08),
            b'f' => Some(0x0c),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            _ => None,
        };
        if let Some(c) = simple {
            text.push(c);
            origin.push(start);
            i += 2;
            continue;
        }
        let unit = if e == b'u' { hex4(&raw[i + 2..]) } else { None };
        let Some(unit) = unit else {
            // Not a valid escape: kept as it is.
            text.push(b);
            origin.push(i);
            i += 1;
            continue;
        };
        i += 6;
        let mut cp = unit;
        if (0xD800..0xDC00).contains(&unit)
            && raw.get(i) == Some(&b'\\')
            && raw.get(i + 1) == Some(&b'u')
            && let Some(low) = hex4(raw.get(i + 2..).unwrap_or(&[]))
            && (0xDC00..0xE000).contains(&low)
        {
            cp = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00);
            i += 6;
        }
        let ch = char::from_u32(cp).unwrap_or(char::REPLACEMENT_CHARACTER);
        let mut buf = [0u8; 4];
        for &byte in ch.encode_utf8(&mut buf).as_bytes() {
            text.push(byte);
            origin.push(start);
        }
    }
    origin.push(raw.len());
    Some(Decoded { text, origin })
}

/// Appends `s` with `"` and `\` escaped, so a mask is valid inside a JSON string.
pub(crate) fn push_escaped(out: &mut Vec<u8>, s: &[u8]) {
    for &b in s {
        if matches!(b, b'"' | b'\\') {
            out.push(b'\\');
        }
        if b >= 0x20 {
            out.push(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_decode_and_map_back_to_their_raw_bytes() {
        let raw = br#"{"c":"\u00341\u00311 x\n\uD83D\uDE00"}"#;
        let d = decode(raw).unwrap();
        assert_eq!(
            String::from_utf8(d.text.clone()).unwrap(),
            "{\"c\":\"4111 x\n\u{1F600}\"}"
        );
        // "4111" starts at the first escape and ends before " x"; "11" in the middle maps
        // to the plain "1" and the escape after it.
        let s = d.text.iter().position(|&b| b == b'4').unwrap();
        let (rs, re) = d.raw_range(s, s + 4);
        assert_eq!(&raw[rs..re], br"\u00341\u00311");
        let (rs, re) = d.raw_range(s + 1, s + 3);
        assert_eq!(&raw[rs..re], br"1\u0031");
        // The emoji (4 decoded bytes) maps to both surrogate escapes.
        let e = d.text.len() - 6;
        let (rs, re) = d.raw_range(e, e + 4);
        assert_eq!(&raw[rs..re], br"\uD83D\uDE00");
        assert!(decode(b"{\"plain\":1}").is_none());
    }

    #[test]
    fn invalid_escapes_and_escapes_outside_strings_stay_as_they_are() {
        let d = decode(br#"{"a":"\x\u12"} \u0041"#).unwrap();
        assert_eq!(d.text, br#"{"a":"\x\u12"} \u0041"#);
    }
}
