//! The one renderer for responses Tollgate makes itself. Every such response
//! carries `tollgate-error: <code>`, `cache-control: no-store` and an RFC 9457
//! `application/problem+json` body naming the reason; the status comes from
//! [`ErrorCode::status`], the single error→status mapping. Failures of the
//! data path (I/O, connect, TLS, DNS, guard, timeouts) are mapped to codes
//! here too, so the handler never invents a status.

use std::error::Error as StdError;
use std::io;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONNECTION, CONTENT_TYPE, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use tollgate_policy::{ErrorCode, GatewayError, TrafficKind};

use crate::body::ProxyBody;
use crate::dns::ResolveError;
use crate::upstream::ConnectError;

pub static TOLLGATE_ERROR: HeaderName = HeaderName::from_static("tollgate-error");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Renders a gateway error as a problem+json response.
pub fn error_response(
    err: &GatewayError,
    kind: TrafficKind,
    request_id: &str,
) -> Response<ProxyBody> {
    let code = err.code;
    let status =
        StatusCode::from_u16(code.status(kind)).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::json!({
        "type": format!("https://tollgate.dev/errors/{}", code.as_str()),
        "title": code.title(),
        "status": status.as_u16(),
        "detail": err.detail,
        "code": code.as_str(),
        "request_id": request_id,
    });
    let bytes = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
    let mut resp = Response::new(ProxyBody::full(bytes));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        TOLLGATE_ERROR.clone(),
        HeaderValue::from_static(code.as_str()),
    );
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    match status.as_u16() {
        407 => {
            h.insert(
                http::header::PROXY_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"tollgate\""),
            );
        }
        401 => {
            h.insert(
                http::header::WWW_AUTHENTICATE,
                bearer_challenge(&err.detail),
            );
        }
        _ => {}
    }
    if code == ErrorCode::ShuttingDown {
        h.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert(X_REQUEST_ID.clone(), v);
    }
    resp
}

/// The RFC 6750 challenge on a 401: `error_description` is the refusal's
/// detail (fixed texts that never carry the credential), limited to characters
/// a quoted-string may hold.
fn bearer_challenge(detail: &str) -> HeaderValue {
    let description: String = detail
        .chars()
        .filter(|c| c.is_ascii() && !c.is_ascii_control() && *c != '"' && *c != '\\')
        .take(200)
        .collect();
    HeaderValue::from_str(&format!(
        "Bearer realm=\"tollgate\", error=\"invalid_token\", error_description=\"{description}\""
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("Bearer realm=\"tollgate\""))
}

/// Maps a failed upstream exchange to a gateway error. `body_failed` says the
/// client's request body broke (bad chunking, reset) while it was streamed
/// upstream: that is the client's fault, not the upstream's.
pub fn upstream_failure(err: &(dyn StdError + 'static), body_failed: bool) -> GatewayError {
    if body_failed {
        return GatewayError::new(
            ErrorCode::BadRequest,
            "the request body could not be read (invalid chunked encoding or aborted)",
        );
    }
    if let Some(c) = connect_error_in(err) {
        return connect_failure(c);
    }
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            if h.is_timeout() {
                return GatewayError::new(
                    ErrorCode::UpstreamTimeout,
                    "the upstream did not answer in time",
                );
            }
            if h.is_parse() || h.is_parse_status() || h.is_parse_too_large() {
                return GatewayError::new(
                    ErrorCode::UpstreamProtocolError,
                    "the upstream sent an invalid HTTP response",
                );
            }
        }
        cur = e.source();
    }
    GatewayError::new(
        ErrorCode::UpstreamProtocolError,
        "the upstream closed the connection or sent an invalid response",
    )
}

/// The connector's error inside a client error chain, if that is what failed.
pub fn connect_error_in<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a ConnectError> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(c) = e.downcast_ref::<ConnectError>() {
            return Some(c);
        }
        cur = e.source();
    }
    None
}

/// Maps a failure to reach the upstream (DNS, guard, TCP, TLS).
pub fn connect_failure(err: &ConnectError) -> GatewayError {
    match err {
        ConnectError::Resolve(ResolveError::Blocked(d)) => GatewayError::new(
            ErrorCode::DestinationBlocked,
            format!(
                "every address of the destination is blocked by the network guard ({})",
                d.as_str()
            ),
        ),
        ConnectError::Resolve(ResolveError::Dns(_)) => GatewayError::new(
            ErrorCode::DnsFailure,
            "the destination host name could not be resolved",
        ),
        ConnectError::Timeout => GatewayError::new(
            ErrorCode::UpstreamTimeout,
            "connecting to the upstream timed out",
        ),
        ConnectError::Tls(_) => GatewayError::new(
            ErrorCode::UpstreamTlsFailed,
            "the TLS handshake with the upstream failed",
        ),
        ConnectError::Io(e) => GatewayError::new(ErrorCode::UpstreamConnectFailed, io_detail(e)),
        ConnectError::InvalidHost => {
            GatewayError::new(ErrorCode::BadRequest, "the destination host is not valid")
        }
    }
}

fn io_detail(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "the upstream refused the connection",
        io::ErrorKind::ConnectionReset => "the upstream reset the connection",
        _ => "could not connect to the upstream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_json(resp: Response<ProxyBody>) -> serde_json::Value {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn renders_problem_json() {
        let err = GatewayError::new(ErrorCode::ConsumerUnidentified, "no credentials");
        let resp = error_response(&err, TrafficKind::Forward, "abc");
        assert_eq!(resp.status(), 407);
        assert_eq!(resp.headers()["tollgate-error"], "consumer_unidentified");
        assert_eq!(
            resp.headers()["proxy-authenticate"],
            "Basic realm=\"tollgate\""
        );
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        assert_eq!(resp.headers()["cache-control"], "no-store");
        let v = body_json(resp).await;
        assert_eq!(
            v["type"],
            "https://tollgate.dev/errors/consumer_unidentified"
        );
        assert_eq!(v["status"], 407);
        assert_eq!(v["code"], "consumer_unidentified");
        assert_eq!(v["detail"], "no credentials");
        assert_eq!(v["request_id"], "abc");
    }

    #[tokio::test]
    async fn route_identification_is_401_and_shutdown_closes() {
        let err = GatewayError::new(ErrorCode::ConsumerUnidentified, "the \"key\" is\nbad");
        let resp = error_response(&err, TrafficKind::Route, "r");
        assert_eq!(resp.status(), 401);
        // RFC 6750: quotes and control characters cannot break out of the quoted-string.
        assert_eq!(
            resp.headers()["www-authenticate"],
            "Bearer realm=\"tollgate\", error=\"invalid_token\", error_description=\"the key isbad\""
        );
        let err = GatewayError::new(ErrorCode::ShuttingDown, "x");
        let resp = error_response(&err, TrafficKind::Route, "r");
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["connection"], "close");
    }

    #[test]
    fn maps_connect_errors() {
        let refused = ConnectError::Io(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert_eq!(
            connect_failure(&refused).code,
            ErrorCode::UpstreamConnectFailed
        );
        assert_eq!(
            connect_failure(&ConnectError::Timeout).code,
            ErrorCode::UpstreamTimeout
        );
        let tls = ConnectError::Tls(io::Error::other("bad cert"));
        assert_eq!(connect_failure(&tls).code, ErrorCode::UpstreamTlsFailed);
        let wrapped: Box<dyn StdError + Send + Sync> = Box::new(refused);
        assert_eq!(
            upstream_failure(&*wrapped, false).code,
            ErrorCode::UpstreamConnectFailed
        );
        assert_eq!(
            upstream_failure(&*wrapped, true).code,
            ErrorCode::BadRequest
        );
    }
}
