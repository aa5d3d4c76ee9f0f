//! Rollouts: a published version goes to a canary set of the group first, then to every
//! gateway (promote) or nowhere (rollback).
//!
//! Rules (the store enforces them inside one transaction per change, on both back ends):
//! - A group has one *group version* (`groups.assigned_version`) that every gateway serves,
//!   except the canaries of the rollout in progress, which get the rollout's version.
//! - Canaries are the group's gateways carrying all `canary_labels` (every gateway when empty)
//!   whose [`canary_bucket`] — a stable hash of the gateway id, 0-99 — is below
//!   `canary_percent`. Deterministic: the same gateway is a canary on every replica, every
//!   poll, and stays one when other gateways join; a gateway enrolling during the rollout is
//!   in or out by the same rule.
//! - Start: the version must be published (`publish ?assign=false` stores one without assigning
//!   it) and newer than the group version (gateways refuse older versions); one rollout in
//!   progress per group, and a plain publish waits for it to end (409).
//! - Promote: the group version becomes the rollout's version — every gateway gets it.
//! - Rollback: gateways refuse a bundle older than the one they serve, so "back" is forward:
//!   the base version's configuration is signed again as a *new, higher* version, which becomes
//!   the group version. Canaries return to the old configuration; the others re-apply the
//!   configuration they already serve (the validate-and-swap path makes that harmless).
//!
//! Every change writes an audit record (`rollout.start`, `rollout.promote`, `rollout.rollback`)
//! in the same transaction and wakes the group's long-polls.

use std::collections::BTreeMap;

use sha2::{Digest as _, Sha256};

use super::AppState;
use super::store::{GatewayAuth, NewVersion, Operator, StoreError};
use crate::bundle::{Bundle, SignedBundle, sign};
use crate::protocol::{GatewayInfo, Rollout, RolloutStatus, StartRollout};

/// 0-99, stable for a gateway id: the first 8 bytes of SHA-256 over
/// `"tollgate-canary:" + id`, big-endian, modulo 100.
pub fn canary_bucket(gateway_id: &str) -> u8 {
    let d = Sha256::digest(format!("tollgate-canary:{gateway_id}").as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    (u64::from_be_bytes(b) % 100) as u8
}

/// Whether a gateway is a canary of `r` (regardless of the rollout's state).
pub fn is_canary(r: &Rollout, gateway_id: &str, labels: &BTreeMap<String, String>) -> bool {
    r.canary_labels
        .iter()
        .all(|(k, v)| labels.get(k).is_some_and(|l| l == v))
        && canary_bucket(gateway_id) < r.canary_percent
}

/// The version a gateway should serve, given its group's version and latest rollout.
pub fn assigned_version(
    group_version: u64,
    latest: Option<&Rollout>,
    gateway_id: &str,
    labels: &BTreeMap<String, String>,
) -> u64 {
    match latest {
        Some(r) if r.state == "canary" && is_canary(r, gateway_id, labels) => r.version,
        _ => group_version,
    }
}

/// Fills a listed gateway's `assigned_version`, `canary` and `drift` (`active`: its group's
/// rollout in progress, if any).
pub fn annotate(g: &mut GatewayInfo, active: Option<&Rollout>) {
    g.canary = active.is_some_and(|r| r.state == "canary" && is_canary(r, &g.id, &g.labels));
    g.assigned_version = assigned_version(g.group_version, active, &g.id, &g.labels);
    g.drift = !g.revoked && g.applied_version != g.assigned_version;
}

/// Start preconditions (checked by the store inside its transaction).
pub(super) fn check_start(
    group: &str,
    base: u64,
    version: u64,
    latest: Option<&Rollout>,
) -> Result<(), StoreError> {
    if latest.is_some_and(|r| r.state == "canary") {
        return Err(super::store::rollout_in_progress(group));
    }
    if version <= base {
        return Err(StoreError::State(format!(
            "version {version} is not newer than group {group:?}'s version {base}: gateways refuse older versions"
        )));
    }
    Ok(())
}

/// The rollout in progress, or a 409 saying there is none.
pub(super) fn in_progress(group: &str, latest: Option<Rollout>) -> Result<Rollout, StoreError> {
    match latest {
        Some(r) if r.state == "canary" => Ok(r),
        Some(r) => Err(StoreError::State(format!(
            "group {group:?} has no rollout in progress (the last one, of version {}, is {})",
            r.version, r.state
        ))),
        None => Err(StoreError::State(format!(
            "group {group:?} has no rollout in progress"
        ))),
    }
}

/// The signed bundle this gateway should serve (rollout-aware): `(version, bundle JSON)`.
pub async fn bundle_for(
    state: &AppState,
    gw: &GatewayAuth,
) -> Result<Option<(u64, String)>, StoreError> {
    let (group_version, latest) = state.store.rollout_state(gw.group.clone()).await?;
    let v = assigned_version(group_version, latest.as_ref(), &gw.id, &gw.labels);
    if v == 0 {
        return Ok(None);
    }
    Ok(state
        .store
        .version(gw.group.clone(), v)
        .await?
        .map(|(_, bundle)| (v, bundle)))
}

/// The group's version, latest rollout and gateways (with canary membership and drift).
pub async fn status(state: &AppState, group: &str) -> Result<RolloutStatus, StoreError> {
    let (group_version, rollout) = state.store.rollout_state(group.to_owned()).await?;
    let mut gateways = state.store.gateways().await?;
    gateways.retain(|g| g.group == group);
    Ok(RolloutStatus {
        group: group.to_owned(),
        group_version,
        rollout,
        gateways,
    })
}

/// Starts rolling `req.version` out to the canaries (admin action; the caller checks the role).
pub async fn start(
    state: &AppState,
    op: &Operator,
    group: &str,
    req: StartRollout,
) -> Result<RolloutStatus, StoreError> {
    if req.canary_percent > 100 {
        return Err(StoreError::Invalid("canary_percent must be 0-100".into()));
    }
    if req.canary_percent == 0 {
        return Err(StoreError::Invalid(
            "canary_percent 0 selects no gateway; use 1-100".into(),
        ));
    }
    let r = state
        .store
        .rollout_start(
            group.to_owned(),
            req.version,
            req.canary_percent,
            req.canary_labels,
            op.name.clone(),
        )
        .await?;
    state.notify(group, r.version);
    tracing::info!(group.name = %group, config.version = r.version, rollout.canary_percent = r.canary_percent, operator.name = %op.name, "rollout started");
    status(state, group).await
}

/// Gives the rollout's version to every gateway of the group.
pub async fn promote(
    state: &AppState,
    op: &Operator,
    group: &str,
) -> Result<RolloutStatus, StoreError> {
    let r = state
        .store
        .rollout_promote(group.to_owned(), op.name.clone())
        .await?;
    state.notify(group, r.version);
    tracing::info!(group.name = %group, config.version = r.version, operator.name = %op.name, "rollout promoted");
    status(state, group).await
}

/// Returns the canaries to the base configuration, signed as a new version (see the module
/// docs for why it is a new version).
pub async fn rollback(
    state: &AppState,
    op: &Operator,
    group: &str,
) -> Result<RolloutStatus, StoreError> {
    let (_, latest) = state.store.rollout_state(group.to_owned()).await?;
    let r = in_progress(group, latest)?;
    if r.base_version == 0 {
        return Err(StoreError::State(format!(
            "group {group:?} had no version before this rollout: nothing to roll back to (publish a fixed version instead)"
        )));
    }
    let (yaml, _) = state
        .store
        .version(group.to_owned(), r.base_version)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("version {} is gone", r.base_version)))?;
    let sha = crate::bundle::hex(&Sha256::digest(yaml.as_bytes()));
    // A concurrent staged publish may take the number: retry with the next one.
    for _ in 0..5 {
        let version = state.store.next_version(group.to_owned()).await?;
        let v = signed_version(state, group, version, &yaml, &sha, &op.name, false)?;
        match state.store.rollout_rollback(r.id, v).await {
            Ok(done) => {
                let back = done.rollback_version.unwrap_or(version);
                state.notify(group, back);
                tracing::info!(group.name = %group, config.version = r.version, rollout.rollback_version = back, operator.name = %op.name, "rollout rolled back");
                return status(state, group).await;
            }
            Err(StoreError::Conflict(_)) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::State("concurrent publishes; retry".into()))
}

/// Signs `yaml` as `version` of `group` (expiring [`super::BUNDLE_TTL_SECS`] from now).
pub(super) fn signed_version(
    state: &AppState,
    group: &str,
    version: u64,
    yaml: &str,
    sha256: &str,
    actor: &str,
    assign: bool,
) -> Result<NewVersion, StoreError> {
    let issued_at = super::unix_now();
    let bundle = Bundle {
        version,
        group: group.to_owned(),
        issued_at,
        expires_at: issued_at + super::BUNDLE_TTL_SECS,
        key_id: String::new(),
        config_yaml: yaml.to_owned(),
    };
    let signed: SignedBundle = sign(&bundle, &state.signing, &state.key.key_id)
        .map_err(|e| StoreError::Worker(format!("signing: {e}")))?;
    let signed_json =
        serde_json::to_string(&signed).map_err(|e| StoreError::Worker(e.to_string()))?;
    Ok(NewVersion {
        group: group.to_owned(),
        version,
        yaml: yaml.to_owned(),
        sha256: sha256.to_owned(),
        created_at_ms: super::unix_now_ms(),
        created_by: actor.to_owned(),
        signed_bundle: signed_json,
        assign,
        restored_from: None,
    })
}

/// Assigns a copy of `version`'s configuration to the whole group as a new, higher version
/// (gateways refuse older versions, so "go back to version 3" is a new version with version
/// 3's text). Refused (409) while a rollout is in progress. Returns the new version.
pub async fn restore(
    state: &AppState,
    actor: &str,
    group: &str,
    version: u64,
) -> Result<u64, StoreError> {
    let (yaml, _) = state
        .store
        .version(group.to_owned(), version)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("group {group:?} has no version {version}")))?;
    let sha = crate::bundle::hex(&Sha256::digest(yaml.as_bytes()));
    for _ in 0..5 {
        let next = state.store.next_version(group.to_owned()).await?;
        let mut v = signed_version(state, group, next, &yaml, &sha, actor, true)?;
        v.restored_from = Some(version);
        match state.store.publish(v).await {
            Ok(()) => {
                state.notify(group, next);
                tracing::info!(group.name = %group, config.version = next, config.restored_from = version, operator.name = %actor, "config restored");
                return Ok(next);
            }
            Err(StoreError::Conflict(_)) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::State("concurrent publishes; retry".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout(percent: u8, labels: &[(&str, &str)]) -> Rollout {
        Rollout {
            id: 1,
            group: "g".into(),
            version: 2,
            base_version: 1,
            canary_percent: percent,
            canary_labels: labels
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            state: "canary".into(),
            rollback_version: None,
            started_by: "admin".into(),
            started_at_ms: 0,
            updated_by: "admin".into(),
            updated_at_ms: 0,
        }
    }

    #[test]
    fn buckets_are_stable_and_spread() {
        assert_eq!(canary_bucket("gw_0001"), canary_bucket("gw_0001"));
        let ids: Vec<String> = (0..1000).map(|i| format!("gw_{i:016x}")).collect();
        let in20 = ids.iter().filter(|id| canary_bucket(id) < 20).count();
        // A share, not all or nothing (binomial: 200 ± a few dozen).
        assert!((120..280).contains(&in20), "{in20}");
    }

    #[test]
    fn share_and_labels_select_canaries() {
        let none = BTreeMap::new();
        let ring: BTreeMap<String, String> = [("ring".to_string(), "canary".to_string())].into();
        let all = rollout(100, &[]);
        assert!(is_canary(&all, "gw_a", &none));
        let by_label = rollout(100, &[("ring", "canary")]);
        assert!(is_canary(&by_label, "gw_a", &ring));
        assert!(!is_canary(&by_label, "gw_a", &none));
        // A percentage below the bucket excludes, at or above includes.
        let b = canary_bucket("gw_a");
        assert!(!is_canary(&rollout(b, &[]), "gw_a", &none));
        assert!(is_canary(&rollout(b + 1, &[]), "gw_a", &none));
        // Only a rollout in progress changes the assignment.
        assert_eq!(assigned_version(1, Some(&all), "gw_a", &none), 2);
        let mut done = all.clone();
        done.state = "promoted".into();
        assert_eq!(assigned_version(2, Some(&done), "gw_a", &none), 2);
        assert_eq!(assigned_version(1, None, "gw_a", &none), 1);
    }
}
