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
        // `chunked` applied twice is as ambiguous as a missing one.
        let chunked_count = te
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter(|c| c.trim().eq_ignore_ascii_case("chunked"))
            .count();
        if chunked_count > 1 {
            return Err(ambiguous("chunked applied more than once"));
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
            &[
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked"),
            ][..],
        ] {
            let err = check_request_framing(&map(bad)).unwrap_err();
            assert_eq!(err.code, ErrorCode::AmbiguousFraming, "{bad:?}");
        }
    }
}
