//! Active health checks of an upstream group: one background task per group probes every
//! target with `GET <health_check.path>` each `interval` (all targets concurrently, each within
//! `timeout`). A 2xx or 3xx answer is a success; anything else, a connect error or a timeout is
//! a failure. `unhealthy_threshold` failures in a row take a target out of rotation,
//! `healthy_threshold` successes in a row bring it back. Targets start healthy.
//!
//! The task belongs to one configuration: `balance::Groups` aborts it when that configuration is
//! dropped (after a reload, once its last request finished), so reloads do not leak tasks.

use std::sync::Arc;

use http::{HeaderValue, Method, Request, Uri};

use crate::balance::Group;
use crate::body::RequestBody;

/// Runs the checks of `group` until aborted.
pub async fn run(group: Arc<Group>) {
    let Some(hc) = group.health.clone() else {
        return;
    };
    let scheme = if group.https { "https" } else { "http" };
    let uris: Vec<Option<Uri>> = group
        .targets
        .iter()
        .map(|t| {
            format!("{scheme}://{}{}", t.authority, hc.path)
                .parse::<Uri>()
                .ok()
        })
        .collect();
    // (consecutive successes, consecutive failures) per target.
    let mut streaks = vec![(0u32, 0u32); group.targets.len()];
    let mut tick = tokio::time::interval(hc.interval.get());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let probes = uris.iter().enumerate().map(|(i, uri)| {
            let group = &group;
            let timeout = hc.timeout.get();
            async move {
                let Some(uri) = uri else { return (i, false) };
                (i, probe(group, uri.clone(), i, timeout).await)
            }
        });
        for (i, ok) in futures_util::future::join_all(probes).await {
            let Some(s) = streaks.get_mut(i) else {
                continue;
            };
            if ok {
                *s = (s.0.saturating_add(1), 0);
                if s.0 >= hc.healthy_threshold {
                    group.set_healthy(i, true);
                }
            } else {
                *s = (0, s.1.saturating_add(1));
                if s.1 >= hc.unhealthy_threshold {
                    group.set_healthy(i, false);
                }
            }
        }
    }
}

async fn probe(group: &Group, uri: Uri, i: usize, timeout: std::time::Duration) -> bool {
    let Some(t) = group.targets.get(i) else {
        return false;
    };
    let mut req = Request::new(RequestBody::replay(Arc::default()));
    *req.method_mut() = Method::GET;
    *req.uri_mut() = uri;
    if let Ok(v) = HeaderValue::from_str(t.authority.as_str()) {
        req.headers_mut().insert(http::header::HOST, v);
    }
    req.headers_mut().insert(
        http::header::USER_AGENT,
        HeaderValue::from_static("tollgate-health-check"),
    );
    match tokio::time::timeout(timeout, group.client.client.request(req)).await {
        Ok(Ok(resp)) => {
            let s = resp.status();
            // Dropping the body unread is fine: probes are tiny and rare.
            s.is_success() || s.is_redirection()
        }
        Ok(Err(e)) => {
            tracing::debug!(api = %group.api, target = %t.label, error = %e, "health check failed");
            false
        }
        Err(_) => {
            tracing::debug!(api = %group.api, target = %t.label, "health check timed out");
            false
        }
    }
}
