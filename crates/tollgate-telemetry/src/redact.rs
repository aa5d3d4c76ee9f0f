//! Hides the values of sensitive query parameters before a path reaches a log.
//!
//! Parameter names are compared case-insensitively after percent-decoding (so `api%5Fkey` is
//! caught as `api_key`). Pairs are split on `&`; because some servers also split on `;`, a
//! sensitive name after a `;` is caught too, and its value is redacted up to the next `&` so a
//! `;` inside a secret cannot leave a tail of it visible.

use std::borrow::Cow;

/// Replacement written in place of a sensitive value.
pub const REDACTED: &str = "REDACTED";

/// Returns `path_and_query` with the value of every parameter named in `params` replaced by
/// `REDACTED`. Borrows (no allocation) when nothing matches.
pub fn redact_query<'a>(path_and_query: &'a str, params: &[String]) -> Cow<'a, str> {
    if params.is_empty() {
        return Cow::Borrowed(path_and_query);
    }
    let Some(question) = path_and_query.find('?') else {
        return Cow::Borrowed(path_and_query);
    };
    // A fragment is not part of the query (clients should not send one, but be exact if they do).
    let query_end = path_and_query[question..]
        .find('#')
        .map_or(path_and_query.len(), |i| question + i);

    let mut out: Option<String> = None;
    // Bytes of the input already copied into `out`.
    let mut copied = 0;
    let mut pair_start = question + 1;
    while pair_start <= query_end {
        let pair_end = path_and_query[pair_start..query_end]
            .find('&')
            .map_or(query_end, |i| pair_start + i);
        let pair = &path_and_query[pair_start..pair_end];
        if let Some(value_offset) = sensitive_value_offset(pair, params) {
            let value_start = pair_start + value_offset;
            let buf = out.get_or_insert_with(|| String::with_capacity(path_and_query.len() + 8));
            buf.push_str(&path_and_query[copied..value_start]);
            buf.push_str(REDACTED);
            copied = pair_end;
        }
        pair_start = pair_end + 1;
    }
    match out {
        None => Cow::Borrowed(path_and_query),
        Some(mut buf) => {
            buf.push_str(&path_and_query[copied..]);
            Cow::Owned(buf)
        }
    }
}

/// Offset within `pair` where a sensitive value starts, if any `;`-separated part of it is
/// `name=value` with a sensitive name.
fn sensitive_value_offset(pair: &str, params: &[String]) -> Option<usize> {
    let mut part_start = 0;
    for part in pair.split(';') {
        if let Some(eq) = part.find('=')
            && name_matches(&part[..eq], params)
        {
            return Some(part_start + eq + 1);
        }
        part_start += part.len() + 1;
    }
    None
}

fn name_matches(raw_name: &str, params: &[String]) -> bool {
    params.iter().any(|param| {
        let mut decoded = Decoded::new(raw_name.as_bytes());
        param.bytes().all(|want| {
            decoded
                .next()
                .is_some_and(|got| got.eq_ignore_ascii_case(&want))
        }) && decoded.next().is_none()
    })
}

/// Iterates the bytes of a form-encoded name: `%XX` decoded, `+` as space, malformed escapes kept
/// literally.
struct Decoded<'a> {
    rest: &'a [u8],
}

impl<'a> Decoded<'a> {
    fn new(rest: &'a [u8]) -> Self {
        Decoded { rest }
    }
}

impl Iterator for Decoded<'_> {
    type Item = u8;

    fn next(&mut self) -> Option<u8> {
        let (&first, tail) = self.rest.split_first()?;
        match (first, tail) {
            (b'%', [hi, lo, after @ ..]) => {
                if let (Some(hi), Some(lo)) = (hex(*hi), hex(*lo)) {
                    self.rest = after;
                    return Some(hi << 4 | lo);
                }
                self.rest = tail;
                Some(b'%')
            }
            (b'+', _) => {
                self.rest = tail;
                Some(b' ')
            }
            _ => {
                self.rest = tail;
                Some(first)
            }
        }
    }
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    fn redact(input: &str, names: &[&str]) -> Cow<'static, str> {
        match redact_query(input, &params(names)) {
            Cow::Borrowed(s) => Cow::Owned(format!("borrowed:{s}")),
            Cow::Owned(s) => Cow::Owned(s),
        }
    }

    #[test]
    fn nothing_to_redact_borrows() {
        assert_eq!(redact("/a/b", &["token"]), "borrowed:/a/b");
        assert_eq!(redact("/a?x=1&y=2", &["token"]), "borrowed:/a?x=1&y=2");
        assert_eq!(redact("/a?token=1", &[]), "borrowed:/a?token=1");
        // The name appears only as a value or inside a longer name.
        assert_eq!(
            redact("/a?x=token&tokens=1&my_token=2", &["token"]),
            "borrowed:/a?x=token&tokens=1&my_token=2"
        );
        // A path segment that looks like a parameter is not a query.
        assert_eq!(redact("/token=1/b", &["token"]), "borrowed:/token=1/b");
    }

    #[test]
    fn one_parameter() {
        assert_eq!(redact("/a?token=s3cr3t", &["token"]), "/a?token=REDACTED");
        assert_eq!(
            redact("/a?x=1&token=s3cr3t&y=2", &["token"]),
            "/a?x=1&token=REDACTED&y=2"
        );
        assert_eq!(redact("/a?token=", &["token"]), "/a?token=REDACTED");
        assert_eq!(redact("/a?token=a=b", &["token"]), "/a?token=REDACTED");
    }

    #[test]
    fn several_parameters_and_repeats() {
        assert_eq!(
            redact(
                "/v1?api_key=k1&q=rust&sig=abc&api_key=k2",
                &["api_key", "sig"]
            ),
            "/v1?api_key=REDACTED&q=rust&sig=REDACTED&api_key=REDACTED"
        );
    }

    #[test]
    fn case_insensitive_names() {
        assert_eq!(
            redact("/a?API_KEY=1&Api_Key=2", &["api_key"]),
            "/a?API_KEY=REDACTED&Api_Key=REDACTED"
        );
        assert_eq!(redact("/a?token=1", &["TOKEN"]), "/a?token=REDACTED");
    }

    #[test]
    fn parameter_without_equals_is_left_alone() {
        assert_eq!(redact("/a?token", &["token"]), "borrowed:/a?token");
        assert_eq!(
            redact("/a?token&x=1&token=2", &["token"]),
            "/a?token&x=1&token=REDACTED"
        );
        assert_eq!(redact("/a?&&token=1&", &["token"]), "/a?&&token=REDACTED&");
    }

    #[test]
    fn encoded_names_are_decoded() {
        assert_eq!(
            redact("/a?api%5Fkey=1", &["api_key"]),
            "/a?api%5Fkey=REDACTED"
        );
        assert_eq!(
            redact("/a?%61pi%5fKEY=1", &["api_key"]),
            "/a?%61pi%5fKEY=REDACTED"
        );
        assert_eq!(redact("/a?my+key=1", &["my key"]), "/a?my+key=REDACTED");
        // Malformed escapes are compared literally and do not panic.
        assert_eq!(
            redact("/a?to%zz=1&%=2&%4", &["to%zz"]),
            "/a?to%zz=REDACTED&%=2&%4"
        );
    }

    #[test]
    fn semicolon_separated_pairs() {
        assert_eq!(
            redact("/a?x=1;token=abc", &["token"]),
            "/a?x=1;token=REDACTED"
        );
        assert_eq!(
            redact("/a?token=abc;def&y=2", &["token"]),
            "/a?token=REDACTED&y=2"
        );
    }

    #[test]
    fn fragment_is_kept_and_not_scanned() {
        assert_eq!(
            redact("/a?token=1#token=2", &["token"]),
            "/a?token=REDACTED#token=2"
        );
        assert_eq!(
            redact("/a?x=1#token=2", &["token"]),
            "borrowed:/a?x=1#token=2"
        );
    }

    #[test]
    fn multibyte_input_is_handled() {
        assert_eq!(
            redact("/ü?clé=värde&ключ=секрет", &["КЛЮЧ", "ключ"]),
            "/ü?clé=värde&ключ=REDACTED"
        );
    }
}
