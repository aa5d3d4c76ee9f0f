//! Applies the header-rules and credentials stages to an allowed request on
//! its way upstream, and header rules to the upstream's response.
//!
//! Request order (fixed, see docs/stages/header-rules.md): remove the
//! caller's credentials for the API → API header rules → consumer header
//! rules → inject the credential (so no rule can overwrite the key). The
//! only refusal is 503 `credential_unavailable` when an OAuth token cannot
//! be obtained; nothing has been sent upstream then.

use http::Uri;
use http::header::HeaderMap;
use http::uri::PathAndQuery;
use tollgate_policy::{ErrorCode, GatewayError, HeaderVars};

use crate::observe::Completion;
use crate::state::{Active, Gateway};

fn vars(done: &Completion) -> HeaderVars<'_> {
    HeaderVars {
        consumer: done.consumer.as_deref().unwrap_or(""),
        request_id: &done.request_id,
        api: done.api.as_deref().unwrap_or(""),
    }
}

/// Runs the request side. On success `done.credential` names the key used.
pub async fn prepare_request(
    gw: &Gateway,
    active: &Active,
    done: &mut Completion,
    headers: &mut HeaderMap,
    uri: &mut Uri,
) -> Result<(), GatewayError> {
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
            ));
        }
        let key = c.pick();
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
