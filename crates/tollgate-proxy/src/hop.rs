//! Hop-by-hop headers and message framing. Headers that describe one
//! connection (RFC 9110 §7.6.1) never cross the proxy in either direction:
//! `Connection` and every header it names, `Keep-Alive`, `Proxy-Connection`,
//! `Proxy-Authorization`, `Proxy-Authenticate`, `TE`, `Trailer`,
//! `Transfer-Encoding` and `Upgrade`. The re-framing is hyper's job on each
//! side, so removing `Transfer-Encoding` does not change the body bytes.
//!
//! Ambiguous framing is refused before anything is forwarded (400
//! `ambiguous_framing`). hyper's HTTP/1 parser already rejects with a bare 400
//! (before Tollgate sees the request): differing duplicate `Content-Length`
//! values and a `Transfer-Encoding` whose final coding is not `chunked`. For a
//! request with both `Content-Length` and `Transfer-Encoding`, hyper drops the
//! length; the [`crate::framing`] sniffer notices such requests so the
//! handler can refuse them. The checks here cover HTTP/2 and anything that
//! reaches the handler some other way.

use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};
use tollgate_policy::{ErrorCode, GatewayError};

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes hop-by-hop headers (and the ones `Connection` names) in place.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Collect the names listed in `Connection` first; most requests have no
    // such header, so this allocates nothing in the common case.
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
        headers.remove(header::CONNECTION);
    }
    for name in [
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::PROXY_AUTHORIZATION,
        &header::PROXY_AUTHENTICATE,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
    ] {
        if headers.contains_key(name) {
            headers.remove(name);
        }
    }
}

fn is_chunked_final(values: &[&HeaderValue]) -> bool {
    let Some(last) = values.last() else {
        return false;
    };
    let Ok(s) = last.to_str() else { return false };
    s.rsplit(',')
        .next()
        .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"))
}

/// Refuses request framing a downstream parser could read differently.
/// Enforces `server.max_headers` and `server.max_header_bytes` with a proper
/// `431 headers_too_large`. hyper is configured with twice these limits as a
/// hard backstop (beyond it, hyper answers a bare 431 itself), so ordinary
/// oversized requests get a response that says what happened.
pub fn check_head_limits(
    parts: &http::request::Parts,
    cfg: &tollgate_config::Server,
) -> Result<(), GatewayError> {
    let headers = &parts.headers;
    if headers.len() > cfg.max_headers {
        return Err(GatewayError::new(
            ErrorCode::HeadersTooLarge,
            format!("more than {} request headers", cfg.max_headers),
        ));
    }
    // Request line plus `name: value\r\n` for each header.
    let uri = &parts.uri;
    let uri_len = uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |p| p.as_str().len());
    let line = parts.method.as_str().len() + uri_len + 12;
    let size = headers
        .iter()
        .fold(line, |acc, (n, v)| acc + n.as_str().len() + v.len() + 4);
    if u64::try_from(size).unwrap_or(u64::MAX) > cfg.max_header_bytes.get() {
        return Err(GatewayError::new(
            ErrorCode::HeadersTooLarge,
            format!("request head larger than {}", cfg.max_header_bytes),
        ));
    }
    Ok(())
}

pub fn check_request_framing(headers: &HeaderMap) -> Result<(), GatewayError> {
    let te: Vec<&HeaderValue> = headers.get_all(header::TRANSFER_ENCODING).iter().collect();
    let has_cl = headers.contains_key(header::CONTENT_LENGTH);
    if !te.is_empty() {
        if has_cl {
            return Err(ambiguous("Content-Length together with Transfer-Encoding"));
        }
        if !is_chunked_final(&te) {
            return Err(ambiguous("Transfer-Encoding must end with chunked"));
        }
        // Only `chunked` is understood. Any other coding (`gzip, chunked`)
        // would be silently lost when the body is re-framed upstream, and
        // `chunked` applied twice is as ambiguous as a missing one.
        let codings = te
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .count();
        if codings != 1 {
            return Err(ambiguous(
                "only the chunked transfer coding is supported, applied once",
            ));
        }
    }
    if has_cl {
        let mut first: Option<&[u8]> = None;
        for v in headers.get_all(header::CONTENT_LENGTH) {
            for part in v.as_bytes().split(|&b| b == b',') {
                let part = part.trim_ascii();
                if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
                    return Err(ambiguous("invalid Content-Length"));
                }
                match first {
                    None => first = Some(part),
                    Some(f) if f != part => {
                        return Err(ambiguous("differing Content-Length values"));
                    }
                    Some(_) => {}
                }
            }
        }
    }
    Ok(())
}

fn ambiguous(detail: &'static str) -> GatewayError {
    GatewayError::new(ErrorCode::AmbiguousFraming, detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn strips_hop_headers_and_connection_tokens() {
        let mut h = map(&[
            ("connection", "close, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("te", "trailers"),
            ("trailer", "x-t"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-keep", "yes"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-keep"], "yes");
    }

    #[test]
    fn framing_rules() {
        assert!(check_request_framing(&map(&[("content-length", "5")])).is_ok());
        assert!(check_request_framing(&map(&[("transfer-encoding", "chunked")])).is_ok());
        assert!(
            check_request_framing(&map(&[("content-length", "5"), ("content-length", "5")]))
                .is_ok()
        );
        for bad in [
            &[("content-length", "5"), ("transfer-encoding", "chunked")][..],
            &[("content-length", "5"), ("content-length", "6")][..],
            &[("content-length", "5, 6")][..],
            &[("content-length", "-1")][..],
            &[("transfer-encoding", "gzip")][..],
            &[("transfer-encoding", "chunked, gzip")][..],
            &[("transfer-encoding", "gzip, chunked")][..],
            &[
                ("transfer-encoding", "gzip"),
                ("transfer-encoding", "chunked"),
            ][..],
            &[
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked"),
            ][..],
        ] {
            let err = check_request_framing(&map(bad)).unwrap_err();
            assert_eq!(err.code, ErrorCode::AmbiguousFraming, "{bad:?}");
        }
    }

    #[test]
    fn head_limits_answer_431_with_a_code() {
        let cfg = tollgate_config::Server {
            max_headers: 3,
            ..Default::default()
        };
        let mut req = http::Request::get("http://example.com/x").body(()).unwrap();
        for i in 0..3 {
            req.headers_mut().insert(
                HeaderName::from_bytes(format!("x-h{i}").as_bytes()).unwrap(),
                HeaderValue::from_static("v"),
            );
        }
        let (parts, ()) = req.into_parts();
        assert!(check_head_limits(&parts, &cfg).is_ok());
        let mut parts = parts;
        parts.headers.insert("x-h9", HeaderValue::from_static("v"));
        let err = check_head_limits(&parts, &cfg).unwrap_err();
        assert_eq!(err.code, ErrorCode::HeadersTooLarge);

        let small = tollgate_config::Server {
            max_header_bytes: tollgate_config::ByteSize(64),
            ..Default::default()
        };
        let (mut parts, ()) = http::Request::get("http://example.com/")
            .body(())
            .unwrap()
            .into_parts();
        assert!(check_head_limits(&parts, &small).is_ok());
        parts
            .headers
            .insert("x-big", HeaderValue::from_str(&"a".repeat(64)).unwrap());
        assert_eq!(
            check_head_limits(&parts, &small).unwrap_err().code,
            ErrorCode::HeadersTooLarge
        );
    }
}
