//! Applies the header-rules and credentials stages to an allowed request on
//! its way upstream, and header rules to the upstream's response.
//!
//! Request order (fixed, see docs/stages/header-rules.md): remove the
//! caller's credentials for the API → API header rules → consumer header
//! rules → inject the credential (so no rule can overwrite the key). The
//! refusals are 503 `credential_unavailable` when an OAuth token cannot be
//! obtained, and 429 `rate_limited` when every key of the API is at one of its
//! own `limits` (keys' limits are charged here, when the key is picked: a key
//! whose limit is exhausted is skipped like a key in back-off); nothing has
//! been sent upstream then.

use http::header::HeaderMap;
use http::uri::PathAndQuery;
use http::{Response, Uri};
use tollgate_policy::{
    ApiCredentials, CredentialKey, ErrorCode, GatewayError, HeaderVars, LimitOutcome, LimitVerdict,
};

use crate::body::ProxyBody;
use crate::observe::Completion;
use crate::state::{Active, Gateway};

/// Why a request was not sent upstream, with the key limits' decision for the `RateLimit`
/// fields when every key was at its limit.
pub struct Refused {
    pub error: GatewayError,
    pub limits: Option<LimitOutcome>,
}

impl From<GatewayError> for Refused {
    fn from(error: GatewayError) -> Self {
        Refused {
            error,
            limits: None,
        }
    }
}

/// The response for a [`Refused`] request (with `RateLimit` fields and `Retry-After` for a
/// key-limit refusal).
pub fn refuse(done: Completion, r: Refused) -> Response<ProxyBody> {
    let mut resp = crate::handler::deny(done, &r.error);
    if let Some(o) = &r.limits {
        crate::limit_headers::apply(resp.headers_mut(), o, true);
    }
    resp
}

/// Picks a key within its own limits: the keys in rotation order (keys in back-off last),
/// charging each one's limits until one admits the request. When none does, the refusal
/// names every key's exhausted limits and carries the decision of the key free soonest.
async fn pick_within_limits<'c>(
    gw: &Gateway,
    c: &'c ApiCredentials,
    api: &str,
    consumer: &str,
    headers: &HeaderMap,
    prefer: Option<&str>,
) -> Result<&'c CredentialKey, Refused> {
    let internal = || GatewayError::new(ErrorCode::Internal, "credential key index out of range");
    let mut exhausted: Vec<(usize, LimitOutcome)> = Vec::new();
    let mut store_error = None;
    let mut reported = None;
    let mut order = c.candidates();
    if let Some(p) = prefer
        && let Some(at) = order.iter().position(|&i| &*c.keys()[i].name == p)
    {
        let i = order.remove(at);
        order.insert(0, i);
    }
    for i in order {
        let Some(plan) = c.key_plan(i, consumer, headers) else {
            return c.take(i).ok_or_else(|| internal().into());
        };
        let admitted = crate::admission::admit(gw, &plan).await;
        match admitted.verdict {
            LimitVerdict::Admitted => return c.take(i).ok_or_else(|| internal().into()),
            // Report mode: prefer a key within its limits; else the first one refused.
            LimitVerdict::Reported(_) => {
                reported.get_or_insert(i);
            }
            LimitVerdict::Refused(e) => match admitted.outcome {
                Some(o) => exhausted.push((i, o)),
                None => store_error = Some(e),
            },
        }
    }
    if let Some(i) = reported {
        tracing::info!(api, credential = %c.keys()[i].name, "every credential key is at its limit; report mode sends the request anyway");
        return c.take(i).ok_or_else(|| internal().into());
    }
    let soonest = exhausted
        .iter()
        .min_by_key(|(_, o)| o.retry_after_secs().unwrap_or(u64::MAX));
    let Some((_, outcome)) = soonest else {
        // No key could be decided (a `closed` global limit and Redis unavailable).
        return Err(store_error.unwrap_or_else(internal).into());
    };
    let mut names = Vec::new();
    for (_, o) in &exhausted {
        names.extend(
            o.results
                .iter()
                .filter(|r| r.limited)
                .map(|r| r.name.to_string()),
        );
    }
    let retry = outcome.retry_after_secs().unwrap_or(1);
    tracing::info!(api, limits = %names.join(","), retry_after.secs = retry, "every credential key is at its limit");
    Err(Refused {
        error: GatewayError::new(
            ErrorCode::RateLimited,
            format!(
                "every credential key of API {api:?} is at its own limit ({}); retry in {retry} s",
                names.join(", ")
            ),
        ),
        limits: Some(outcome.clone()),
    })
}

fn vars(done: &Completion) -> HeaderVars<'_> {
    HeaderVars {
        consumer: done.consumer.as_deref().unwrap_or(""),
        request_id: &done.request_id,
        api: done.api.as_deref().unwrap_or(""),
    }
}

/// Runs the request side. On success `done.credential` names the key used: `prefer` (the key
/// the response cache looked up with, see cache.rs) when it is usable, else the rotation's.
pub async fn prepare_request(
    gw: &Gateway,
    active: &Active,
    done: &mut Completion,
    headers: &mut HeaderMap,
    uri: &mut Uri,
    prefer: Option<&str>,
) -> Result<(), Refused> {
    let policy = &active.policy;
    let creds = done.api.as_deref().and_then(|a| policy.credentials(a));
    let mut path_and_query: Option<String> = None;
    if let Some(c) = creds {
        let pq = uri.path_and_query().map_or("/", PathAndQuery::as_str);
        path_and_query = c.strip(headers, pq);
    }
    {
        let v = vars(done);
        for rules in policy.header_rules(done.api.as_deref(), done.consumer.as_deref()) {
            rules.request.apply(headers, &v);
        }
    }
    if let (Some(c), Some(api)) = (creds, done.api.clone()) {
        let (scheme, host) = (uri.scheme_str().unwrap_or(""), uri.host().unwrap_or(""));
        if !c.may_send(scheme, host) {
            return Err(GatewayError::new(
                ErrorCode::DestinationNotAllowed,
                format!(
                    "API {api:?} injects credentials, which are only sent over https (the request is plain http; see credentials.allow_plaintext)"
                ),
            )
            .into());
        }
        let key = if c.has_key_limits() {
            let consumer = done.consumer.as_deref().unwrap_or("");
            pick_within_limits(gw, c, &api, consumer, headers, prefer).await?
        } else if let Some(p) = prefer {
            c.pick_preferred(p)
        } else {
            c.pick()
        };
        let bearer = match key.oauth2() {
            Some(_) => Some(active.tokens.bearer(&gw.metrics, &api, &key.name).await?),
            None => None,
        };
        let pq = path_and_query
            .as_deref()
            .unwrap_or_else(|| uri.path_and_query().map_or("/", PathAndQuery::as_str));
        if let Some(new) = c.inject(key, headers, pq, bearer) {
            path_and_query = Some(new);
        }
        gw.metrics.credential_used(&api, &key.name);
        done.credential = Some(key.name.clone());
    }
    if let Some(pq) = path_and_query {
        let invalid = || {
            GatewayError::new(
                ErrorCode::Internal,
                "the request target became invalid after credential injection",
            )
        };
        let mut parts = uri.clone().into_parts();
        parts.path_and_query = Some(PathAndQuery::try_from(pq).map_err(|_| invalid())?);
        *uri = Uri::from_parts(parts).map_err(|_| invalid())?;
    }
    Ok(())
}

/// Applies response header rules (API, then consumer) to an upstream response.
pub fn apply_response(active: &Active, done: &Completion, headers: &mut HeaderMap) {
    let v = vars(done);
    for rules in active
        .policy
        .header_rules(done.api.as_deref(), done.consumer.as_deref())
    {
        rules.response.apply(headers, &v);
    }
}
