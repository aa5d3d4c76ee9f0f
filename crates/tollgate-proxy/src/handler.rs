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
    ErrorCode, Fault, GatewayError, LimitVerdict, Outcome, RequestInfo, Scheme, Target, TrafficKind,
};

use crate::body::{BodyStats, ProxyBody};
use crate::observe::{BytesIn, Completion};
use crate::respond::error_response;
use crate::state::{Active, Gateway, X_REQUEST_ID};
use crate::upstream::{UpstreamAddr, bare_host};
use crate::{connect, hop, limit_headers, request_id};

/// Per-connection facts the handler needs.
pub struct ConnCtx {
    pub gateway: Arc<Gateway>,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// Framing verdicts from the connection's [`crate::framing::Sniffer`].
    pub framing: Arc<crate::framing::Verdicts>,
    /// Set on the decrypted connection inside an intercepted CONNECT tunnel
    /// (intercept.rs): every request goes to the tunnel's host.
    pub tunnel: Option<Arc<crate::intercept::Tunnel>>,
    /// The client certificate verified on the TLS listener (tls_listener.rs);
    /// inherited by the requests inside an intercepted tunnel.
    pub client_cert: Option<Arc<tollgate_policy::ClientCert>>,
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
    tunnel: Option<&'a crate::intercept::Tunnel>,
) -> Result<Dest<'a>, GatewayError> {
    let uri = &parts.uri;
    // Inside an intercepted tunnel the destination is the CONNECT's, whatever
    // the request says (intercept::prepare refused a disagreeing Host).
    if let Some(t) = tunnel {
        return Ok(Dest {
            kind: TrafficKind::Intercept,
            scheme: Scheme::Https,
            host: &t.host,
            port: t.port,
            path: uri.path(),
            query: uri.query(),
        });
    }
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
    // CORS (cors.rs): every response to an allowed origin of a route API with `cors`,
    // gateway-generated ones included, carries the Access-Control-* fields.
    let mut cors = None;
    let grpc = crate::upgrade::is_grpc(req.version(), req.headers());
    let mut resp = handle_request(ctx, req, &mut cors).await?;
    if let Some(c) = cors {
        c.apply(resp.headers_mut());
    }
    if grpc && resp.headers().contains_key(&crate::respond::TOLLGATE_ERROR) {
        crate::upgrade::grpc_error(&mut resp);
    }
    Ok(resp)
}

async fn handle_request(
    ctx: Arc<ConnCtx>,
    req: Request<Incoming>,
    cors_out: &mut Option<crate::cors::Decision>,
) -> Result<Response<ProxyBody>, Infallible> {
    let start = Instant::now();
    // Consumed for every request, in order, to stay aligned with the sniffer.
    let ambiguous = ctx.framing.next_is_ambiguous();
    let active = ctx.gateway.active.load_full();
    let (mut parts, body) = req.into_parts();
    let request_id = request_id::request_id(&parts.headers, &X_REQUEST_ID);
    let trace = crate::spans::begin(&ctx.gateway, &mut parts.headers);
    let http1 = parts.version < Version::HTTP_2;

    // A WebSocket upgrade (upgrade.rs): the client side's handle, kept until the upstream's 101.
    let upgrade = crate::upgrade::take(&mut parts);
    let tunnel_check = match &ctx.tunnel {
        Some(t) => crate::intercept::prepare(&mut parts, t),
        None => Ok(()),
    };
    let dest = classify(&parts, ctx.local, ctx.tunnel.as_deref());
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
        attempts: 0,
        credential: None,
        concurrency: None,
        dlp: None,
        provider_limits: None,
        cache: None,
        trace,
    };
    if kind == TrafficKind::Connect {
        done.path.clear();
    }
    let dest = match dest {
        Ok(d) => d,
        Err(e) => return Ok(deny(done, &e)),
    };
    if let Err(e) = tunnel_check {
        return Ok(deny(done, &e));
    }
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
    if kind == TrafficKind::Route
        && let Some(c) = active.cors.lookup(parts.uri.path(), &parts.headers)
    {
        // A preflight is answered here, before identification (it carries no credentials).
        if c.is_preflight(&parts.method, &parts.headers) {
            return Ok(c.preflight(done, &parts.headers));
        }
        *cors_out = Some(c);
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
        client_cert: ctx.client_cert.as_deref(),
    };
    if kind == TrafficKind::Route {
        // A JWT signed with a key not fetched yet: a bounded wait for the JWKS refetch.
        crate::jwks::await_unknown_kid(&active.policy, &parts.headers).await;
    }
    let mut eval = active.policy.evaluate(&info, &ctx.gateway.switches, false);
    // Response cache (cache.rs): after access and policy, before the breaker, back-off and
    // admission, so a hit consumes no rate-limit quota and never reaches the upstream.
    let mut cache = None;
    if kind != TrafficKind::Connect && upgrade.is_none() && matches!(eval.outcome, Outcome::Allow) {
        let head = parts.method == Method::HEAD;
        let span_start = crate::spans::start(&done);
        match crate::cache::lookup(&ctx.gateway, &active, &eval, &parts).await {
            None => {}
            Some(crate::cache::Begin::Forward(p)) => {
                crate::spans::cache_lookup(&done, eval.api.as_deref(), span_start, "miss");
                cache = Some(p);
            }
            Some(crate::cache::Begin::Hit(hit)) => {
                crate::spans::cache_lookup(&done, eval.api.as_deref(), span_start, "hit");
                done.consumer = eval.consumer.clone();
                done.api = eval.api.clone();
                done.decision = eval.decision();
                return Ok(crate::cache::serve(done, hit, head));
            }
            Some(crate::cache::Begin::Refresh(hit, p)) => {
                crate::spans::cache_lookup(&done, eval.api.as_deref(), span_start, "refresh");
                done.consumer = eval.consumer.clone();
                done.api = eval.api.clone();
                done.decision = eval.decision();
                // Served stale now; this request goes on upstream in the background to
                // refresh the entry (stale-while-revalidate; it takes no limit quota).
                if let Some(target) = eval.target.take() {
                    let dest = Forwarding {
                        target,
                        strip_authorization: eval.strip_authorization,
                        limits: None,
                        resilience: None,
                        permit: None,
                        cache: Some(p),
                        meter: None,
                        charged: None,
                        upgrade: None,
                    };
                    let refresh = crate::cache::detached(&done);
                    let run = (
                        ctx.gateway.clone(),
                        active.clone(),
                        parts,
                        body,
                        dest,
                        http1,
                    );
                    spawn_refresh(run, refresh);
                }
                return Ok(crate::cache::serve(done, hit, head));
            }
        }
    }
    // Circuit breaker and provider back-off come before admission, so a request
    // they refuse consumes no rate-limit quota (resilience.rs).
    let mut resilience = None;
    let mut permit = None;
    if kind != TrafficKind::Connect
        && matches!(eval.outcome, Outcome::Allow)
        && let Some(api) = &eval.api
        && let Some(r) = ctx.gateway.resilience.get(api, &active.policy)
    {
        let global = ctx.gateway.global.load();
        match r.admit(global.as_ref(), &active.policy) {
            Ok(p) => permit = p,
            Err(refusal) if r.report => eval.reported.push(refusal.error),
            Err(refusal) => {
                done.consumer = eval.consumer.clone();
                done.api = eval.api.clone();
                return Ok(refuse(done, &refusal));
            }
        }
        resilience = Some(r);
    }
    // Admission: the rate limits the policy planned (only for requests it allowed), waiting
    // where they queue; then a concurrency slot, so a request waiting for quota holds no slot.
    let mut limits = None;
    let mut meter = None;
    let mut charged = None;
    if let (Outcome::Allow, Some(plan)) = (&eval.outcome, eval.limit_plan.take()) {
        let consumer = eval.consumer.as_deref().unwrap_or("");
        let span = done.trace.as_ref().map(|t| t.child());
        let admitted = crate::waiting::admit_or_wait(
            &ctx.gateway,
            active.policy.config(),
            &plan,
            consumer,
            span.as_ref(),
        )
        .await;
        limits = admitted.outcome;
        charged = Some(admitted.charged);
        if !matches!(admitted.verdict, LimitVerdict::Refused(_)) {
            // Limits whose cost is read from the response are charged when it ends (cost.rs).
            meter = crate::cost::Meter::for_plan(&ctx.gateway, &plan);
        }
        match admitted.verdict {
            LimitVerdict::Admitted => {}
            LimitVerdict::Reported(e) => eval.reported.push(e),
            LimitVerdict::Refused(e) => eval.outcome = Outcome::Deny(e),
        }
    }
    if matches!(eval.outcome, Outcome::Allow)
        && let Some(api) = &eval.api
        && active
            .policy
            .matched_api(&eval)
            .is_some_and(|a| a.concurrency.is_some())
    {
        let consumer = eval.consumer.as_deref().unwrap_or("");
        let cfg = active.policy.config();
        let span = done.trace.as_ref().map(|t| t.child());
        match crate::waiting::acquire_slot(&ctx.gateway, cfg, api, consumer, span.as_ref()).await {
            Ok(slot) => done.concurrency = slot,
            Err(r) if r.report => eval.reported.push(r.error),
            Err(r) => {
                // Admitted by the rate limits but not going ahead: give back what they
                // charged, so a request refused by one limit consumes none of the others.
                if let Some(c) = charged.take() {
                    crate::admission::refund(&ctx.gateway, c).await;
                }
                done.consumer = eval.consumer.clone();
                done.api = eval.api.clone();
                let mut resp = deny(done, &r.error);
                resp.headers_mut()
                    .insert(http::header::RETRY_AFTER, HeaderValue::from(1u32));
                return Ok(resp);
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
        let mut resp = match crate::intercept::for_api(&active, done.api.as_deref()) {
            Some(interceptor) => {
                let auth = parts
                    .headers
                    .get(http::header::PROXY_AUTHORIZATION)
                    .cloned();
                crate::intercept::open(&ctx, &active, interceptor, &target, auth, on_upgrade, done)
                    .await
            }
            None => connect::open(&ctx, &active, &target, on_upgrade, done).await,
        };
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
        resilience,
        permit,
        cache,
        meter,
        charged,
        upgrade,
    };
    Ok(forward(&ctx.gateway, &active, parts, body, dest, http1, done).await)
}

/// Forwards a request in the background to refresh a stale cache entry (its
/// response is read to the end so the cache stores it). A plain function, so the
/// spawned future is not part of `handle`'s.
fn spawn_refresh(
    run: (
        Arc<Gateway>,
        Arc<Active>,
        http::request::Parts,
        Incoming,
        Forwarding,
        bool,
    ),
    done: Completion,
) {
    let (gw, active, parts, body, dest, http1) = run;
    tokio::spawn(async move {
        let resp = forward(&gw, &active, parts, body, dest, http1, done).await;
        crate::cache::drain(resp).await;
    });
}

/// A refusal by the circuit breaker or a provider back-off: the gateway error
/// plus `Retry-After`; nothing was sent upstream.
fn refuse(done: Completion, r: &crate::resilience::Refusal) -> Response<ProxyBody> {
    let mut resp = deny(done, &r.error);
    resp.headers_mut().insert(
        http::header::RETRY_AFTER,
        HeaderValue::from(crate::backoff::retry_after_secs(r.retry_after)),
    );
    resp
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
    /// The API's breaker / back-off / retry state, and the breaker's leave for the first attempt.
    resilience: Option<Arc<crate::resilience::ApiResilience>>,
    permit: Option<crate::breaker::Permit>,
    /// The response cache's plan for this request (cache.rs), when its API caches.
    cache: Option<Box<crate::cache::Plan>>,
    /// Response-based limit costs, charged when the response body ends (cost.rs).
    meter: Option<Box<crate::cost::Meter>>,
    /// What the API's rate limits charged, given back if a credential key's own limits
    /// refuse the request (admission.rs `refund`).
    charged: Option<crate::admission::Charged>,
    /// The client connection's upgrade handle for a WebSocket request (upgrade.rs).
    upgrade: Option<hyper::upgrade::OnUpgrade>,
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
        resilience,
        permit,
        mut cache,
        meter,
        charged,
        upgrade,
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
    let grpc = crate::upgrade::is_grpc(parts.version, &parts.headers);
    let h2c = grpc && target.scheme == Scheme::Http;
    let mut headers = parts.headers;
    hop::strip_hop_by_hop(&mut headers);
    if upgrade.is_some() {
        crate::upgrade::restore(&mut headers);
    }
    if grpc {
        // gRPC servers require `TE: trailers` (a hop-by-hop field, removed above).
        headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
    }
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
    // Header rules, then credentials, last: nothing after them changes what
    // they set (docs/stages/header-rules.md has the order).
    let mut uri = uri;
    let prefer = cache.as_ref().and_then(|p| p.credential());
    if let Err(e) =
        crate::outbound::prepare_request(gw, active, &mut done, &mut headers, &mut uri, prefer)
            .await
    {
        // Every credential key is at its own limit: the API's limits give back what they
        // charged, so a request refused by one limit consumes none of the others.
        if e.limits.is_some()
            && let Some(c) = charged
        {
            crate::admission::refund(gw, c).await;
        }
        return crate::outbound::refuse(done, e);
    }
    if let Some(p) = cache.as_mut() {
        p.credential_used(done.credential.as_deref());
    }

    let stats = Arc::new(BodyStats::default());
    done.bytes_in = BytesIn::Streamed(stats.clone());
    // Body limits and data-loss protection (dlp_body.rs): a scanned body is
    // buffered here, so the retry loop replays the same bytes.
    let api = done.api.clone();
    let consumer = done.consumer.clone();
    let (dlp, body_limits) = match api.as_deref() {
        Some(a) => (
            active.policy.dlp(a, consumer.as_deref()),
            active.policy.body_limits(a, consumer.as_deref()),
        ),
        None => (None, None),
    };
    let request_limit = body_limits.and_then(|l| l.request).map(|b| b.get());
    let response_limit = body_limits.and_then(|l| l.response).map(|b| b.get());
    let is_head = parts.method == Method::HEAD;
    let check = crate::dlp_body::RequestCheck {
        gw,
        api: api.as_deref().unwrap_or(""),
        dlp,
        limit: request_limit,
    };
    let body =
        match crate::dlp_body::request(check, &mut headers, body, stats.clone(), &mut done).await {
            Ok(b) => b,
            Err(e) => return deny(done, &e),
        };
    // A stale cached response is revalidated with its validators (cache.rs).
    if let Some(p) = &cache {
        p.add_validators(&mut headers);
    }
    // The upstream send, with retries when the API has them (retry.rs).
    if let Some(t) = done.trace.as_mut() {
        t.set_upstream(&target.host, target.port);
    }
    // An upstream group picks the target per attempt (balance.rs).
    let group = api
        .as_deref()
        .filter(|_| done.kind == TrafficKind::Route)
        .and_then(|a| active.groups.get(a))
        .map(|g| crate::balance::Pick::new(g.clone(), consumer.as_deref(), &headers));
    let out = crate::retry::Outgoing {
        method: parts.method,
        uri,
        headers,
        trace: done.trace.as_ref().map(|t| t.child()),
        group,
        h2c,
    };
    let exchange = crate::retry::send(
        gw,
        &active.upstream,
        resilience.as_deref(),
        out,
        body,
        stats.clone(),
        permit,
        &done.request_id,
    )
    .await;
    done.attempts = exchange.attempts;
    done.upstream_duration = Some(exchange.upstream_duration);
    let resp = match exchange.sent {
        crate::retry::Sent::Response(resp) => resp,
        crate::retry::Sent::Failed { err, not_sent } => {
            if not_sent {
                done.upstream_duration = None;
                done.attempts = 0;
            }
            if stats.too_large() {
                gw.metrics
                    .body_limit_exceeded(api.as_deref().unwrap_or(""), "request");
                return deny(done, &crate::dlp_body::request_too_large(request_limit));
            }
            if let Some(p) = &cache {
                // stale-if-error: a stale entry answers instead of the failure.
                if let Some(hit) = p.on_error() {
                    return crate::cache::serve(done, hit, is_head);
                }
                done.cache = Some(p.failed_result());
                gw.metrics
                    .cache_lookup(api.as_deref().unwrap_or(""), p.failed_result());
            }
            return deny(done, &err);
        }
    };
    let (mut rparts, rbody) = resp.into_parts();
    // Provider back-off per credential key (resilience.rs), from the final response.
    if let (Some(r), Some(key)) = (&resilience, &done.credential) {
        r.learn_key(&active.policy, key, rparts.status.as_u16(), &rparts.headers);
    }
    done.upstream_addr = rparts.extensions.get::<UpstreamAddr>().map(|a| a.0);
    done.status = rparts.status.as_u16();
    // Read before Tollgate's own rate-limit fields are added below.
    if active.policy.config().discovery.enabled {
        done.provider_limits = crate::discovery::ProviderLimits::from_headers(&rparts.headers);
    }
    hop::strip_hop_by_hop(&mut rparts.headers);
    crate::outbound::apply_response(active, &done, &mut rparts.headers);
    // The response cache decides before Tollgate's own per-request fields are added.
    let mut tee = None;
    if let Some(p) = cache {
        match p.on_response(&rparts, is_head) {
            crate::cache::After::Serve(hit) => {
                drop(rbody);
                return crate::cache::serve(done, hit, is_head);
            }
            crate::cache::After::Pass {
                tee: t,
                status,
                result,
            } => {
                tee = t;
                rparts
                    .headers
                    .insert(crate::cache::CACHE_STATUS.clone(), status);
                done.cache = Some(result);
                gw.metrics
                    .cache_lookup(api.as_deref().unwrap_or(""), result);
            }
        }
    }
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
    // The upstream accepted the WebSocket upgrade: relay the 101 and splice both sides.
    if rparts.status == http::StatusCode::SWITCHING_PROTOCOLS {
        let upstream_upgrade = rparts.extensions.remove::<hyper::upgrade::OnUpgrade>();
        let (Some(client), Some(up)) = (upgrade, upstream_upgrade) else {
            let e = GatewayError::new(
                ErrorCode::UpstreamProtocolError,
                "the upstream switched protocols without being asked to",
            );
            return deny(done, &e);
        };
        drop(rbody);
        crate::upgrade::restore(&mut rparts.headers);
        let idle = active.policy.config().connect.idle_timeout.get();
        crate::upgrade::splice(gw, client, up, idle, done);
        return Response::from_parts(rparts, ProxyBody::empty());
    }
    let no_body = is_head
        || rparts.status.is_informational()
        || rparts.status == http::StatusCode::NO_CONTENT
        || rparts.status == http::StatusCode::NOT_MODIFIED;
    let mut body = match crate::dlp_body::response(
        gw,
        api.as_deref().unwrap_or(""),
        dlp,
        response_limit,
        no_body,
        &mut rparts.headers,
        rbody,
        &mut done,
    )
    .await
    {
        crate::dlp_body::ResponseBody::Send(b) => b,
        crate::dlp_body::ResponseBody::Refuse(e) => return deny(done, &e),
    };
    if let Some(mut t) = tee {
        t.check_rewrite(&rparts.headers);
        body = body.with_tee(t);
    }
    body = body.with_meter(meter);
    body.on_complete(done);
    Response::from_parts(rparts, body)
}
