//! `GET /admin/limits`: every limit of every API with its live counters.
//!
//! For each limit: scope, algorithm, quota, window, `on_store_failure`, the priority queue's
//! depth, and for each live key (at most [`MAX_KEYS`] per limit): `used`, `remaining` and
//! `reset_after_ms`. For each API also its circuit breaker, provider back-off (whether it is
//! shared through Redis, and per credential key when the API has several) and concurrency. Keys are shown
//! without the `<api>:<limit>:` prefix: `-` (whole API), a consumer name, an allow-rule index,
//! or, for `by: header:<name>`, the value's hash (never the value). Global limits are read from
//! Redis (SCAN + one peek per limit, nothing charged); while the store is degraded they are
//! listed with `"store": "unavailable"` and the fallback counters of this instance.

use serde_json::{Value, json};
use tollgate_config::{LimitAlgorithm, LimitScope, OnStoreFailure};
use tollgate_policy::LimitInfo;
use tollgate_state::LimitRequest;

use crate::state::Gateway;

/// Keys listed per limit; `keys_truncated` says when there were more.
pub const MAX_KEYS: usize = 100;

fn algorithm(a: LimitAlgorithm) -> &'static str {
    match a {
        LimitAlgorithm::Fixed => "fixed",
        LimitAlgorithm::Sliding => "sliding",
        LimitAlgorithm::Gcra => "gcra",
    }
}

fn key_rows(
    info: &LimitInfo,
    keys: &[String],
    decisions: &[tollgate_state::Decision],
) -> Vec<Value> {
    keys.iter()
        .zip(decisions)
        .map(|(k, d)| {
            json!({
                "key": k.strip_prefix(&info.key_prefix).unwrap_or(k),
                "used": d.limit.saturating_sub(d.remaining),
                "remaining": d.remaining,
                "reset_after_ms": d.reset_after_ms,
            })
        })
        .collect()
}

fn peeks(info: &LimitInfo, keys: &[String]) -> Vec<LimitRequest> {
    // Cost 0 is a peek: nothing is charged and `remaining` is what is left now.
    keys.iter()
        .map(|k| LimitRequest::new(k.clone(), info.spec, 0))
        .collect()
}

/// The JSON document for `GET /admin/limits`.
pub async fn snapshot(gw: &Gateway) -> Value {
    let active = gw.active.load_full();
    let global = gw.global.load_full();
    let degraded = global.as_ref().is_some_and(|g| g.is_degraded());
    let mut apis: Vec<(String, Vec<Value>)> = Vec::new();
    for info in active.policy.limit_catalog() {
        let mut store = "local";
        let (keys, decisions) = match info.scope {
            LimitScope::Global if !degraded && global.is_some() => {
                store = "redis";
                let g = global.as_ref().map(|g| g.redis().clone());
                match g {
                    Some(r) => match r.keys_with_prefix(&info.key_prefix, MAX_KEYS + 1).await {
                        Ok(keys) => {
                            let shown: Vec<String> = keys.iter().take(MAX_KEYS).cloned().collect();
                            let mut ds = Vec::with_capacity(shown.len());
                            // One script call per key keeps each call small; listings are rare.
                            let mut failed = false;
                            for req in peeks(&info, &shown) {
                                match r.peek_all(std::slice::from_ref(&req)).await {
                                    Ok(d) => ds.extend(d),
                                    Err(_) => {
                                        failed = true;
                                        break;
                                    }
                                }
                            }
                            if failed {
                                store = "unavailable";
                                (Vec::new(), Vec::new())
                            } else {
                                (keys, ds)
                            }
                        }
                        Err(_) => {
                            store = "unavailable";
                            (Vec::new(), Vec::new())
                        }
                    },
                    None => (Vec::new(), Vec::new()),
                }
            }
            scope => {
                if scope == LimitScope::Global {
                    // Degraded or no store: what this instance enforces on its own.
                    store = "unavailable";
                }
                let keys = gw.limits.keys_with_prefix(&info.key_prefix, MAX_KEYS + 1);
                let shown: Vec<String> = keys.iter().take(MAX_KEYS).cloned().collect();
                let ds = gw.limits.peek_all(&peeks(&info, &shown));
                (keys, ds)
            }
        };
        let truncated = keys.len() > MAX_KEYS;
        let rows = key_rows(&info, &keys[..keys.len().min(MAX_KEYS)], &decisions);
        let limit = json!({
            "name": &*info.name,
            "scope": match info.scope { LimitScope::Local => "local", LimitScope::Global => "global" },
            "store": store,
            "algorithm": algorithm(info.algorithm),
            "quota": info.quota,
            "window": info.per.to_string(),
            "window_secs": info.window_secs,
            "on_store_failure": match info.on_store_failure { OnStoreFailure::Open => "open", OnStoreFailure::Closed => "closed" },
            "keys": rows,
            "keys_truncated": truncated,
            "queue_depth": gw.waiting.queue_depth(&info.api, &info.name),
        });
        match apis.last_mut() {
            Some((name, list)) if name.as_str() == &*info.api => list.push(limit),
            _ => apis.push((info.api.to_string(), vec![limit])),
        }
    }
    // APIs without limits still show their breaker, back-off and concurrency.
    for name in active.policy.api_names() {
        if !apis.iter().any(|(n, _)| n == name) {
            apis.push((name.to_owned(), Vec::new()));
        }
    }
    json!({
        "store": {
            "redis": global.is_some(),
            "degraded": degraded,
            "instances": global.as_ref().map_or(1, |g| g.instances()),
        },
        "apis": apis
            .into_iter()
            .map(|(name, limits)| {
                let resilience = gw.resilience.status(&name);
                let concurrency = gw.waiting.concurrency(&name).map(|(in_flight, queued)| {
                    json!({ "in_flight": in_flight, "queued": queued })
                });
                json!({
                    "name": name,
                    "limits": limits,
                    "breaker": resilience.as_ref().map_or(Value::Null, |r| r["breaker"].clone()),
                    "provider_backoff_ms": resilience.as_ref().map_or(Value::Null, |r| r["provider_backoff_ms"].clone()),
                    "provider_backoff_shared": resilience.as_ref().map_or(Value::Null, |r| r["provider_backoff_shared"].clone()),
                    "key_backoff_ms": resilience.as_ref().map_or(Value::Null, |r| r["key_backoff_ms"].clone()),
                    "concurrency": concurrency,
                })
            })
            .collect::<Vec<_>>(),
    })
}
