//! WebSocket upgrades on routes and absolute-form forward requests. A
//! `GET` over HTTP/1.1 with `Connection: upgrade` and `Upgrade: websocket`
//! goes through the whole pipeline like any request (access, limits,
//! concurrency, header rules, credentials); only then are `Connection` and
//! `Upgrade` put back on the upstream request (hop.rs removes them). When the
//! upstream answers `101`, the `101` is relayed and both upgraded connections
//! are spliced, bytes counted each way, until either side closes, nothing
//! moves for `connect.idle_timeout`, or the shutdown grace period ends. Any
//! other upstream answer is relayed as a normal response. Other `Upgrade`
//! protocols (h2c, …) are not passed on.

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Version};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::connect::{Meter, Metered};
use crate::observe::{BytesIn, Completion};
use crate::state::Gateway;

/// Whether the request asks for a WebSocket upgrade the gateway can relay.
pub fn is_websocket(parts: &http::request::Parts) -> bool {
    parts.method == Method::GET
        && parts.version == Version::HTTP_11
        && has_token(&parts.headers, &header::CONNECTION, "upgrade")
        && parts
            .headers
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
}

fn has_token(headers: &HeaderMap, name: &header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Takes the client connection's upgrade handle for a WebSocket request
/// (`None` for every other request).
pub fn take(parts: &mut http::request::Parts) -> Option<OnUpgrade> {
    if is_websocket(parts) {
        parts.extensions.remove::<OnUpgrade>()
    } else {
        None
    }
}

/// Puts the upgrade fields back after the hop-by-hop headers were removed.
pub fn restore(headers: &mut HeaderMap) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
}

/// A gRPC call: HTTP/2 with `content-type: application/grpc…`.
pub fn is_grpc(version: Version, headers: &HeaderMap) -> bool {
    version == Version::HTTP_2
        && headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

static GRPC_STATUS: header::HeaderName = header::HeaderName::from_static("grpc-status");
static GRPC_MESSAGE: header::HeaderName = header::HeaderName::from_static("grpc-message");

/// A gateway-made error on a gRPC call is answered as a gRPC "trailers-only"
/// response: the same HTTP status and `tollgate-error`, no body, plus
/// `grpc-status` (from the HTTP status, as in gRPC's HTTP-to-gRPC mapping,
/// with 429 as `RESOURCE_EXHAUSTED`) and `grpc-message` (the error code).
pub fn grpc_error(resp: &mut http::Response<crate::body::ProxyBody>) {
    let mut body = crate::body::ProxyBody::empty();
    if let Some(c) = resp.body_mut().take_completion() {
        body.on_complete(*c);
    }
    *resp.body_mut() = body;
    let status = resp.status();
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.remove(header::CONTENT_LENGTH);
    let code: u16 = match status.as_u16() {
        400 => 13,            // INTERNAL
        401 | 407 => 16,      // UNAUTHENTICATED
        403 => 7,             // PERMISSION_DENIED
        404 => 12,            // UNIMPLEMENTED
        413 | 429 | 431 => 8, // RESOURCE_EXHAUSTED
        502..=504 => 14,      // UNAVAILABLE
        _ => 2,               // UNKNOWN
    };
    headers.insert(GRPC_STATUS.clone(), HeaderValue::from(code));
    if let Some(reason) = headers.get(&crate::respond::TOLLGATE_ERROR).cloned() {
        headers.insert(GRPC_MESSAGE.clone(), reason);
    }
}

/// Splices the client's and the upstream's upgraded connections in the
/// background; the access-log line is written when the splice ends.
pub fn splice(
    gw: &Arc<Gateway>,
    client: OnUpgrade,
    upstream: OnUpgrade,
    idle: Duration,
    mut done: Completion,
) {
    let gateway = gw.clone();
    let track = gateway.shutdown.tracker().track();
    tokio::spawn(async move {
        let _track = track;
        let api = done.api.clone();
        let api_label = api.as_deref().unwrap_or("");
        gateway.metrics.websocket_upgraded(api_label);
        let _gauge = gateway.metrics.tunnel_opened(api_label);
        let (up_bytes, down_bytes) = match tokio::try_join!(client, upstream) {
            Ok((c, u)) => run(TokioIo::new(c), TokioIo::new(u), idle, &gateway).await,
            Err(e) => {
                tracing::debug!(request.id = %done.request_id, error = %e, "websocket upgrade failed");
                done.reason = Some("client_aborted");
                (0, 0)
            }
        };
        gateway
            .metrics
            .tunnel_bytes(api_label, up_bytes, down_bytes);
        done.bytes_in = BytesIn::Fixed(up_bytes);
        done.finish(down_bytes, true);
    });
}

async fn run<C, U>(client: C, mut upstream: U, idle: Duration, gw: &Gateway) -> (u64, u64)
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    U: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let meter = Arc::new(Meter::default());
    // Everything read from the upstream is written to the client, so metering
    // the client side counts both directions and sees all activity.
    let mut client = Metered::new(client, meter.clone());
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "websocket closed with an error");
            }
        }
        _ = meter.activity.idle_for(idle) => tracing::debug!("websocket idle timeout"),
        _ = gw.shutdown.forced() => tracing::debug!("websocket closed at the end of the shutdown grace period"),
    }
    meter.totals()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: Method, version: Version, pairs: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::builder()
            .method(method)
            .version(version)
            .uri("/ws");
        for (k, v) in pairs {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn only_http11_get_websocket_upgrades() {
        let ws = [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
        ];
        assert!(is_websocket(&parts(Method::GET, Version::HTTP_11, &ws)));
        assert!(!is_websocket(&parts(Method::POST, Version::HTTP_11, &ws)));
        assert!(!is_websocket(&parts(Method::GET, Version::HTTP_10, &ws)));
        assert!(!is_websocket(&parts(Method::GET, Version::HTTP_2, &ws)));
        let h2c = [("connection", "upgrade"), ("upgrade", "h2c")];
        assert!(!is_websocket(&parts(Method::GET, Version::HTTP_11, &h2c)));
        let no_conn = [("upgrade", "websocket")];
        assert!(!is_websocket(&parts(
            Method::GET,
            Version::HTTP_11,
            &no_conn
        )));
    }
}
