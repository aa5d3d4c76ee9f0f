//! The request path: classify how the request arrived (CONNECT tunnel,
//! absolute-form forward proxy, origin-form route), check framing, run the
//! policy pipeline, then either answer with the gateway error or forward the
//! request upstream with hop-by-hop headers removed, `Host` rewritten to the
//! target, and `x-request-id` / `traceparent` set.
//!
//! Host reconciliation: for absolute-form requests the URI authority is the
//! destination and a disagreeing `Host` header is ignored for matching and
//! replaced upstream; for routes the upstream's authority is sent. So `Host`
//! can never steer a request past the policy.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::header::{CONNECTION, HOST, HeaderValue};
use http::{Method, Request, Response, Uri, Version};
use hyper::body::Incoming;
use tollgate_policy::{
    ErrorCode, Fault, GatewayError, Outcome, RequestInfo, Scheme, Target, TrafficKind,
};

use crate::body::{BodyStats, ProxyBody, RequestBody};
use crate::dns::ResolveError;
use crate::observe::{BytesIn, Completion, count_connect_error};
use crate::respond::{connect_error_in, error_response, upstream_failure};
use crate::state::{Active, Gateway, X_REQUEST_ID};
use crate::upstream::{ConnectError, UpstreamAddr, bare_host};
use crate::{connect, hop, limit_headers, request_id};

/// Per-connection facts the handler needs.
pub struct ConnCtx {
    pub gateway: Arc<Gateway>,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// Framing verdicts from the connection's [`crate::framing::Sniffer`].
    pub framing: Arc<crate::framing::Verdicts>,
}

/// How the client named the destination.
struct Dest<'a> {
    kind: TrafficKind,
    scheme: Scheme,
    host: &'a str,
    port: u16,
    path: &'a str,
    query: Option<&'a str>,
}

fn bad_request(detail: &'static str) -> GatewayError {
    GatewayError::new(ErrorCode::BadRequest, detail)
}

fn classify<'a>(
    parts: &'a http::request::Parts,
    local: SocketAddr,
) -> Result<Dest<'a>, GatewayError> {
    let uri = &parts.uri;
    if parts.method == Method::CONNECT {
        let auth = uri
            .authority()
            .ok_or_else(|| bad_request("CONNECT needs host:port"))?;
        let port = auth
            .port_u16()
            .ok_or_else(|| bad_request("CONNECT needs host:port"))?;
        let host = bare_host(auth.host());
        return Ok(Dest {
            kind: TrafficKind::Connect,
            scheme: Scheme::Https,
            host,
            port,
            path: "",
            query: None,
        });
    }
    // HTTP/2 always carries :scheme and :authority, so an HTTP/2 request
    // (prior knowledge) is a route request; forward proxying is HTTP/1.
    let absolute = parts.version < Version::HTTP_2 && uri.scheme().is_some();
    if absolute {
        let scheme = match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("http") => Scheme::Http,
            Some(s) if s.eq_ignore_ascii_case("https") => Scheme::Https,
            _ => return Err(bad_request("only http and https URLs can be proxied")),
        };
        let host = bare_host(
            uri.host()
                .ok_or_else(|| bad_request("the request URL has no host"))?,
        );
        if host.is_empty() {
            return Err(bad_request("the request URL has no host"));
        }
        let port = uri.port_u16().unwrap_or(scheme.default_port());
        return Ok(Dest {
            kind: TrafficKind::Forward,
            scheme,
            host,
            port,
            path: uri.path(),
            query: uri.query(),
        });
    }
    // Origin-form: the Host header only names the gateway; it is recorded,
    // never matched.
    let host = match parts.headers.get(HOST) {
        Some(h) => h.to_str().map_err(|_| bad_request("invalid Host header"))?,
        None => uri.host().unwrap_or(""),
    };
    Ok(Dest {
        kind: TrafficKind::Route,
        scheme: Scheme::Http,
        host,
        port: local.port(),
        path: uri.path(),
        query: uri.query(),
    })
}

/// The hyper service entry point.
pub async fn handle(
    ctx: Arc<ConnCtx>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    // Consumed for every request, in order, to stay aligned with the sniffer.
    let ambiguous = ctx.framing.next_is_ambiguous();
    let active = ctx.gateway.active.load_full();
    let (mut parts, body) = req.into_parts();
    let request_id = request_id::request_id(&parts.headers, &X_REQUEST_ID);
    let http1 = parts.version < Version::HTTP_2;

    let dest = classify(&parts, ctx.local);
    let kind = dest.as_ref().map_or(TrafficKind::Forward, |d| d.kind);
    let mut done = Completion {
        gateway: ctx.gateway.clone(),
        active: active.clone(),
        start,
        time: SystemTime::now(),
        request_id,
        kind,
        peer: ctx.peer,
        consumer: None,
        api: None,
        method: parts.method.clone(),
        scheme: dest.as_ref().map_or(Scheme::Http, |d| d.scheme),
        host: dest
            .as_ref()
            .map_or_else(|_| String::new(), |d| d.host.to_owned()),
        path: parts
            .uri
            .path_and_query()
            .map_or_else(String::new, |p| p.as_str().to_owned()),
        status: 0,
        decision: "deny",
        reason: None,
        bytes_in: BytesIn::Fixed(0),
        upstream_duration: None,
        upstream_addr: None,
    };
    if kind == TrafficKind::Connect {
        done.path.clear();
    }
    let dest = match dest {
        Ok(d) => d,
        Err(e) => return Ok(deny(done, &e)),
    };
    if ctx.gateway.shutdown.is_triggered() {
        return Ok(deny(
            done,
            &GatewayError::new(
                ErrorCode::ShuttingDown,
                "the gateway is shutting down; retry on a new connection",
            ),
        ));
    }
    if ambiguous {
        let e = GatewayError::new(
            ErrorCode::AmbiguousFraming,
            "Content-Length together with Transfer-Encoding",
        );
        return Ok(deny(done, &e));
    }
    if let Err(e) = hop::check_head_limits(&parts, &active.policy.config().server) {
        return Ok(deny(done, &e));
    }
    if let Err(e) = hop::check_request_framing(&parts.headers) {
        return Ok(deny(done, &e));
    }

    let info = RequestInfo {
        kind: dest.kind,
        method: &parts.method,
        scheme: dest.scheme,
        host: dest.host,
        port: dest.port,
        path: dest.path,
        query: dest.query,
        headers: &parts.headers,
        peer: ctx.peer.ip(),
    };
    let mut eval =
        active
            .policy
            .evaluate_limited(&info, &ctx.gateway.switches, &ctx.gateway.limits, false);
    let limits = eval.limits.take();
    if let (Some(o), Some(api)) = (&limits, &eval.api) {
        for r in &o.results {
            // A refused request charged no limit: only the refusing ones are counted.
            if o.admitted || r.limited {
                ctx.gateway.metrics.limit_decision(api, &r.name, r.limited);
            }
        }
    }
    done.consumer = eval.consumer.clone();
    done.api = eval.api.clone();
    done.decision = eval.decision();
    done.reason = eval.reported.first().map(|e| e.code.as_str());
    if let Outcome::Deny(err) = &eval.outcome {
        let mut resp = deny(done, err);
        if let Some(o) = &limits {
            limit_headers::apply(resp.headers_mut(), o, true);
        }
        return Ok(resp);
    }
    let Some(target) = eval.target else {
        return Ok(deny(
            done,
            &GatewayError::new(ErrorCode::Internal, "no target for an allowed request"),
        ));
    };

    if kind == TrafficKind::Connect {
        let on_upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
        let mut resp = connect::open(&ctx, &active, &target, on_upgrade, done).await;
        if let Some(o) = &limits
            && resp.status() == http::StatusCode::OK
        {
            limit_headers::apply(resp.headers_mut(), o, false);
        }
        return Ok(resp);
    }
    let dest = Forwarding {
        target,
        strip_authorization: eval.strip_authorization,
        limits,
    };
    Ok(forward(&ctx.gateway, &active, parts, body, dest, http1, done).await)
}

/// Renders a gateway error and logs it (the one path for every refusal).
pub(crate) fn deny(mut done: Completion, err: &GatewayError) -> Response<ProxyBody> {
    let mut resp = error_response(err, done.kind, &done.request_id);
    done.status = resp.status().as_u16();
    // A refusal by policy or the network guard is a denial in logs and metrics;
    // an upstream failure keeps the pipeline's decision (it was allowed).
    if matches!(err.code.fault(), Fault::Policy | Fault::Client) {
        done.decision = "deny";
    }
    done.reason = Some(err.code.as_str());
    resp.body_mut().on_complete(done);
    resp
}

/// `host[:port]` as sent in `Host` and the upstream URI.
pub fn authority(t: &Target) -> String {
    let bracket = t.host.contains(':');
    let mut s = String::with_capacity(t.host.len() + 8);
    if bracket {
        s.push('[');
    }
    s.push_str(&t.host);
    if bracket {
        s.push(']');
    }
    if t.port != t.scheme.default_port() {
        use std::fmt::Write as _;
        let _ = write!(s, ":{}", t.port);
    }
    s
}

/// Where an allowed request goes, and what the pipeline said to remove.
struct Forwarding {
    target: Target,
    strip_authorization: bool,
    /// Rate-limit decisions whose fields go on the upstream's response.
    limits: Option<tollgate_policy::LimitOutcome>,
}

async fn forward(
    gw: &Arc<Gateway>,
    active: &Arc<Active>,
    parts: http::request::Parts,
    body: Incoming,
    dest: Forwarding,
    http1: bool,
    mut done: Completion,
) -> Response<ProxyBody> {
    let Forwarding {
        target,
        strip_authorization,
        limits,
    } = dest;
    let authority = authority(&target);
    let uri = format!(
        "{}://{}{}",
        target.scheme.as_str(),
        authority,
        target.path_and_query
    );
    let (Ok(uri), Ok(host_value)) = (uri.parse::<Uri>(), HeaderValue::from_str(&authority)) else {
        return deny(done, &bad_request("the target URL is not valid"));
    };
    let mut headers = parts.headers;
    hop::strip_hop_by_hop(&mut headers);
    for name in active.policy.strip_headers() {
        headers.remove(name);
    }
    // The route's caller identified itself with a Tollgate key in
    // `Authorization`: it must not travel on to the third party.
    if strip_authorization {
        headers.remove(http::header::AUTHORIZATION);
    }
    headers.insert(HOST, host_value);
    if let Ok(v) = HeaderValue::from_str(&done.request_id) {
        headers.insert(X_REQUEST_ID.clone(), v);
    }
    request_id::ensure_traceparent(&mut headers);

    let stats = Arc::new(BodyStats::default());
    done.bytes_in = BytesIn::Streamed(stats.clone());
    let mut up = Request::new(RequestBody::new(body, stats.clone()));
    *up.method_mut() = parts.method;
    *up.uri_mut() = uri;
    *up.headers_mut() = headers;

    let upstream = &active.upstream;
    let sent = Instant::now();
    let result = tokio::time::timeout(
        upstream.response_header_timeout,
        upstream.client.request(up),
    )
    .await;
    done.upstream_duration = Some(sent.elapsed());
    let resp = match result {
        Err(_) => {
            let err = GatewayError::new(
                ErrorCode::UpstreamTimeout,
                "the upstream did not send response headers in time",
            );
            return deny(done, &err);
        }
        Ok(Err(e)) => {
            if let Some(ce) = connect_error_in(&e) {
                count_connect_error(gw, ce);
                if matches!(ce, ConnectError::Resolve(ResolveError::Blocked(_))) {
                    // Nothing was sent: the guard refused every address.
                    done.upstream_duration = None;
                }
            }
            let err = upstream_failure(&e, stats.failed());
            tracing::debug!(request.id = %done.request_id, error = %e, "upstream request failed");
            return deny(done, &err);
        }
        Ok(Ok(resp)) => resp,
    };
    let (mut rparts, rbody) = resp.into_parts();
    done.upstream_addr = rparts.extensions.get::<UpstreamAddr>().map(|a| a.0);
    done.status = rparts.status.as_u16();
    hop::strip_hop_by_hop(&mut rparts.headers);
    if !rparts.headers.contains_key(&X_REQUEST_ID)
        && let Ok(v) = HeaderValue::from_str(&done.request_id)
    {
        rparts.headers.insert(X_REQUEST_ID.clone(), v);
    }
    // A response finishing during shutdown closes its HTTP/1 connection.
    if http1 && gw.shutdown.is_triggered() {
        rparts
            .headers
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    if let Some(o) = &limits {
        limit_headers::apply(&mut rparts.headers, o, false);
    }
    rparts.version = Version::HTTP_11;
    let mut body = ProxyBody::upstream(rbody);
    body.on_complete(done);
    Response::from_parts(rparts, body)
}
