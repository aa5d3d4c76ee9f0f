//! Range requests answered from the cache (RFC 9110 §14): a stored full `200`
//! answers a `GET` with `Range: bytes=…` as `206 Partial Content` with one
//! `Content-Range`, or `416 Range Not Satisfiable` with `Content-Range: bytes */<length>`.
//!
//! What is not answered as a range (the full `200` is served, as RFC 9110 allows a server
//! to ignore `Range`): `HEAD`, a unit other than `bytes`, a malformed range set, several
//! ranges (`bytes=0-1,5-6`; multipart/byteranges is not produced), and an `If-Range`
//! whose validator does not match the stored response (strong `ETag` comparison, or an
//! exact `Last-Modified` date). Ranges are of the stored bytes, i.e. of the content coding
//! the upstream sent. An upstream's own `206` is passed through and never stored (cache.rs).

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_RANGE, ETAG, HeaderMap, HeaderValue, IF_RANGE, RANGE};
use http::{Method, StatusCode};

/// What a request's `Range` asks of a stored body of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Want {
    /// Serve the whole response.
    Full,
    /// `first..=last`.
    Part(u64, u64),
    /// No satisfiable range: 416.
    Unsatisfiable,
}

/// Parses `bytes=<first>-<last>`, `bytes=<first>-` and `bytes=-<suffix>` for a body of
/// `len` bytes.
pub(crate) fn parse(value: &str, len: u64) -> Want {
    let Some((unit, set)) = value.split_once('=') else {
        return Want::Full;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return Want::Full;
    }
    let set = set.trim();
    if set.contains(',') {
        return Want::Full;
    }
    let Some((first, last)) = set.split_once('-') else {
        return Want::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if first.is_empty() {
        // Suffix: the last N bytes.
        if !digits(last) {
            return Want::Full;
        }
        let n = last.parse::<u64>().unwrap_or(u64::MAX);
        if n == 0 || len == 0 {
            return Want::Unsatisfiable;
        }
        return Want::Part(len.saturating_sub(n), len - 1);
    }
    if !digits(first) || !(last.is_empty() || digits(last)) {
        return Want::Full;
    }
    let first = first.parse::<u64>().unwrap_or(u64::MAX);
    let last = if last.is_empty() {
        u64::MAX
    } else {
        last.parse::<u64>().unwrap_or(u64::MAX)
    };
    if last < first {
        // Invalid range-spec: ignored.
        return Want::Full;
    }
    if first >= len {
        return Want::Unsatisfiable;
    }
    Want::Part(first, last.min(len - 1))
}

/// Whether `If-Range` (if any) lets the range apply to a response with these headers.
fn if_range_matches(req: &HeaderMap, stored: &HeaderMap) -> bool {
    let Some(v) = req.get(IF_RANGE).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let v = v.trim();
    if v.starts_with('"') || v.starts_with("W/") {
        // Strong comparison: weak tags never match.
        return !v.starts_with("W/")
            && stored
                .get(ETAG)
                .and_then(|e| e.to_str().ok())
                .is_some_and(|e| e.trim() == v);
    }
    let (Ok(when), Some(last)) = (
        httpdate::parse_http_date(v),
        stored
            .get(http::header::LAST_MODIFIED)
            .and_then(|l| l.to_str().ok())
            .and_then(|l| httpdate::parse_http_date(l).ok()),
    ) else {
        return false;
    };
    when == last
}

/// Turns a stored full response into the answer to the request's `Range`, if it has one
/// that applies. Returns the new status and body; `headers` are adjusted in place.
pub(crate) fn apply(
    method: &Method,
    req: &HeaderMap,
    status: StatusCode,
    headers: &mut HeaderMap,
    body: Bytes,
) -> (StatusCode, Bytes) {
    if *method != Method::GET || status != StatusCode::OK {
        return (status, body);
    }
    let Some(range) = req.get(RANGE).and_then(|v| v.to_str().ok()) else {
        return (status, body);
    };
    if !if_range_matches(req, headers) {
        return (status, body);
    }
    let len = body.len() as u64;
    match parse(range, len) {
        Want::Full => (status, body),
        Want::Unsatisfiable => {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                headers.insert(CONTENT_RANGE, v);
            }
            headers.insert(CONTENT_LENGTH, HeaderValue::from(0u32));
            (StatusCode::RANGE_NOT_SATISFIABLE, Bytes::new())
        }
        Want::Part(first, last) => {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {first}-{last}/{len}")) {
                headers.insert(CONTENT_RANGE, v);
            }
            headers.insert(CONTENT_LENGTH, HeaderValue::from(last - first + 1));
            // Bounds: first <= last < len (parse guarantees it).
            let (s, e) = (
                usize::try_from(first).unwrap_or(usize::MAX),
                usize::try_from(last).unwrap_or(usize::MAX),
            );
            let part = if e < body.len() && s <= e {
                body.slice(s..=e)
            } else {
                return (status, body);
            };
            (StatusCode::PARTIAL_CONTENT, part)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_ranges_parse_per_rfc_9110() {
        assert_eq!(parse("bytes=0-9", 100), Want::Part(0, 9));
        assert_eq!(parse("bytes=90-", 100), Want::Part(90, 99));
        assert_eq!(parse("bytes=90-500", 100), Want::Part(90, 99));
        assert_eq!(parse("bytes=-10", 100), Want::Part(90, 99));
        assert_eq!(parse("bytes=-500", 100), Want::Part(0, 99));
        assert_eq!(parse("bytes=100-", 100), Want::Unsatisfiable);
        assert_eq!(parse("bytes=-0", 100), Want::Unsatisfiable);
        assert_eq!(parse("bytes=0-1,5-6", 100), Want::Full);
        assert_eq!(parse("bytes=9-1", 100), Want::Full);
        assert_eq!(parse("items=0-1", 100), Want::Full);
        assert_eq!(parse("bytes=a-b", 100), Want::Full);
        assert_eq!(parse("bytes=0-0", 0), Want::Unsatisfiable);
    }

    #[test]
    fn if_range_needs_a_strong_matching_validator() {
        let mut stored = HeaderMap::new();
        stored.insert(ETAG, HeaderValue::from_static("\"v1\""));
        let mut req = HeaderMap::new();
        req.insert(RANGE, HeaderValue::from_static("bytes=0-1"));
        req.insert(IF_RANGE, HeaderValue::from_static("\"v1\""));
        let body = Bytes::from_static(b"hello");
        let (s, b) = apply(
            &Method::GET,
            &req,
            StatusCode::OK,
            &mut stored.clone(),
            body.clone(),
        );
        assert_eq!((s, &b[..]), (StatusCode::PARTIAL_CONTENT, &b"he"[..]));
        req.insert(IF_RANGE, HeaderValue::from_static("\"v2\""));
        let (s, _) = apply(
            &Method::GET,
            &req,
            StatusCode::OK,
            &mut stored.clone(),
            body.clone(),
        );
        assert_eq!(s, StatusCode::OK);
        req.insert(IF_RANGE, HeaderValue::from_static("W/\"v1\""));
        let (s, _) = apply(&Method::GET, &req, StatusCode::OK, &mut stored, body);
        assert_eq!(s, StatusCode::OK);
    }
}
