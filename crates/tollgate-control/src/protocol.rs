//! Wire types of the control-plane HTTP+JSON API (version prefix `/v1`).
//!
//! Gateway endpoints (`Authorization: Bearer <credential>` after enrollment; a revoked or unknown
//! credential gets 401):
//! - `POST /v1/enroll` [`EnrollRequest`] → 200 [`EnrollResponse`]; the enrollment token is
//!   one-time, a second use gets 401.
//! - `GET /v1/gateway/config?after=<version>&wait=<secs ≤ 60>` ([`ConfigQuery`]) → 200
//!   [`crate::bundle::SignedBundle`] when the group's assigned version is greater than `after`;
//!   otherwise the request is held until a version is published or `wait` elapses → 204.
//! - `POST /v1/gateway/status` [`StatusReport`] → 204.
//!
//! Operator endpoints (`Authorization: Bearer <operator token>`; role admin or viewer, a viewer
//! changing anything gets 403): `POST /v1/groups` [`CreateGroup`] → [`Group`], `GET /v1/groups`
//! → `[Group]`, `POST /v1/groups/{g}/enrollment-tokens` → [`TokenResponse`], `GET /v1/gateways` →
//! `[GatewayInfo]`, `POST /v1/gateways/{id}/revoke` → 204, `POST /v1/groups/{g}/configs` (body:
//! YAML text) → [`PublishResponse`] or 422 [`ApiError`] listing every located error,
//! `GET /v1/groups/{g}/configs` → `[ConfigVersion]`, `GET /v1/audit` → `[AuditEntry]`,
//! `POST /v1/operator-tokens` [`CreateOperatorToken`] → [`TokenResponse`],
//! `GET /v1/groups/{g}/rollout` → [`RolloutStatus`], `POST /v1/groups/{g}/rollout`
//! [`StartRollout`] → 201 [`RolloutStatus`], `POST /v1/groups/{g}/rollout/promote` and
//! `…/rollback` → [`RolloutStatus`].
//!
//! Every error response is an [`ApiError`] JSON body.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Longest long-poll hold the server grants, in seconds; larger `wait` values are clamped.
pub const MAX_WAIT_SECS: u64 = 60;

/// `POST /v1/enroll` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The one-time enrollment token from `POST /v1/groups/{g}/enrollment-tokens`.
    pub token: String,
    /// The gateway's name as operators will see it (e.g. its host name).
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// The control plane's bundle-signing public key, to pin at enrollment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlPlaneKey {
    /// [`crate::bundle::key_id`] of the key.
    pub key_id: String,
    /// Standard base64 of the 32-byte ed25519 public key.
    pub public_key_b64: String,
}

/// `POST /v1/enroll` 200 response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollResponse {
    pub gateway_id: String,
    /// Bearer credential for the gateway endpoints. Shown once; the server keeps only a hash.
    pub credential: String,
    pub group: String,
    pub control_plane_key: ControlPlaneKey,
}

/// Query of `GET /v1/gateway/config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ConfigQuery {
    /// The version the gateway already has (0 = none).
    #[serde(default)]
    pub after: u64,
    /// Seconds to hold the request when nothing newer exists (0 = answer at once); at most
    /// [`MAX_WAIT_SECS`].
    #[serde(default)]
    pub wait: u64,
}

/// `POST /v1/gateway/status` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusReport {
    /// Version currently applied (0 = none yet).
    pub applied_version: u64,
    pub healthy: bool,
    #[serde(default)]
    pub last_error: Option<String>,
    /// When the gateway process started (unix seconds).
    pub started_at: u64,
}

/// `POST /v1/groups` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateGroup {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A gateway group as listed by `GET /v1/groups`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Unix seconds.
    pub created_at: u64,
    /// Version currently assigned to the group (0 = none published yet).
    pub assigned_version: u64,
}

/// `POST /v1/operator-tokens` body (admin only): a new operator token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateOperatorToken {
    /// Unique name; recorded as the actor in the audit log.
    pub name: String,
    /// `admin` or `viewer` (read-only).
    pub role: String,
    /// Viewer only: the token sees this group's gateways, versions, rollout, audit and usage
    /// and nothing of any other group (403 on another group's resource; lists are filtered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// `POST /v1/groups/{g}/enrollment-tokens` and `POST /v1/operator-tokens` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenResponse {
    /// One-time enrollment token. Shown once; the server keeps only a hash.
    pub token: String,
}

/// A gateway as listed by `GET /v1/gateways`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayInfo {
    pub id: String,
    pub name: String,
    pub group: String,
    pub labels: BTreeMap<String, String>,
    /// Unix seconds.
    pub enrolled_at: u64,
    pub revoked: bool,
    /// Last authenticated call (unix seconds), 0 = never.
    pub last_seen: u64,
    /// From the last status report.
    pub applied_version: u64,
    /// The version assigned to the gateway's group; differing from `applied_version` means the
    /// gateway has not (yet) applied it — in flight, failing, or offline (drift).
    pub group_version: u64,
    pub healthy: bool,
    pub last_error: Option<String>,
    /// Unix milliseconds of the first status report naming the group's assigned version; with
    /// [`ConfigVersion::created_at_ms`] it gives the publish-to-applied time.
    pub applied_at_ms: u64,
    /// The version this gateway should serve: `group_version`, or the rollout's version while
    /// it is a canary of a rollout in progress.
    #[serde(default)]
    pub assigned_version: u64,
    /// Member of the canary set of the group's rollout in progress.
    #[serde(default)]
    pub canary: bool,
    /// Not revoked and `applied_version` differs from `assigned_version` (in flight, failing,
    /// or offline).
    #[serde(default)]
    pub drift: bool,
}

/// `POST /v1/groups/{g}/rollout` body (admin): start rolling `version` out to a canary set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartRollout {
    /// An already published version of the group, newer than the group's current version.
    pub version: u64,
    /// Share (0-100) of the candidate gateways that become canaries, chosen by a stable hash
    /// of the gateway id. Default 100 (every candidate).
    #[serde(default = "hundred")]
    pub canary_percent: u8,
    /// Candidates are the group's gateways carrying all these labels (empty: every gateway).
    #[serde(default)]
    pub canary_labels: BTreeMap<String, String>,
}

fn hundred() -> u8 {
    100
}

/// A rollout of one group (`GET /v1/groups/{g}/rollout`, and the result of every action).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    pub id: u64,
    pub group: String,
    /// The version being rolled out.
    pub version: u64,
    /// The group's version when the rollout started (non-canaries keep serving it).
    pub base_version: u64,
    pub canary_percent: u8,
    pub canary_labels: BTreeMap<String, String>,
    /// `canary` (in progress), `promoted` or `rolled_back`.
    pub state: String,
    /// After a rollback: the new version carrying `base_version`'s configuration (gateways
    /// refuse older versions, so going back means going forward with the old config).
    pub rollback_version: Option<u64>,
    pub started_by: String,
    /// Unix milliseconds.
    pub started_at_ms: u64,
    pub updated_by: String,
    /// Unix milliseconds.
    pub updated_at_ms: u64,
}

/// `GET /v1/groups/{g}/rollout`: the group's version, its latest rollout and, per gateway,
/// whether it is a canary and what it should serve.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutStatus {
    pub group: String,
    /// What every gateway that is not a canary of a rollout in progress gets.
    pub group_version: u64,
    /// The latest rollout (in progress or finished), if any.
    pub rollout: Option<Rollout>,
    pub gateways: Vec<GatewayInfo>,
}

/// `POST /v1/groups/{g}/configs` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishResponse {
    pub version: u64,
}

/// A stored config version as listed by `GET /v1/groups/{g}/configs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigVersion {
    pub version: u64,
    /// Unix milliseconds of the publish.
    pub created_at_ms: u64,
    /// Operator token name that published it.
    pub created_by: String,
    /// Hex SHA-256 of the YAML text.
    pub sha256: String,
    /// Whether it is the group's assigned version.
    pub assigned: bool,
}

/// One audit record (`GET /v1/audit`, newest first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: u64,
    /// Unix milliseconds.
    pub at_ms: u64,
    /// Who: operator token name, or `gateway:<id>`.
    pub actor: String,
    /// What: e.g. `group.create`, `config.publish`, `gateway.enroll`, `gateway.revoke`.
    pub action: String,
    /// On what: group name or gateway id.
    pub target: String,
    /// Details as JSON (e.g. `{"version":1}`).
    pub detail: serde_json::Value,
}

/// Every error response body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// Stable machine-readable code: `unauthorized`, `forbidden`, `not_found`, `conflict`,
    /// `bad_request`, `invalid_config`, `internal`.
    pub error: String,
    pub message: String,
    /// For `invalid_config`: every problem, located as `file:line:column: path: message`
    /// (the same text `tollgate validate` prints).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// `POST /v1/gateway/usage` body: one batch from the gateway's on-disk usage buffer. The
/// control plane stores `(gateway id, seq)` in the same transaction as the rows, so a batch sent
/// again (a retry, or a replay after a crash before the acknowledgement) is counted once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageBatch {
    /// Per-gateway sequence number, increasing, never reused (gaps are allowed).
    pub seq: u64,
    #[serde(default)]
    pub rows: Vec<tollgate_proxy::usage::UsageRow>,
    #[serde(default)]
    pub events: Vec<tollgate_proxy::usage::EventRow>,
    /// Limit keys in use at the end of the interval (quota usage against each limit).
    #[serde(default)]
    pub limits: Vec<tollgate_proxy::usage::LimitRow>,
}

/// `POST /v1/gateway/usage` 200 response: the batch is stored (now or before).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageAck {
    pub seq: u64,
    /// The batch had been stored already; nothing was added.
    pub duplicate: bool,
}
