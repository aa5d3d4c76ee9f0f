//! The control plane's persistent state: groups, operator tokens, enrollment tokens, gateways,
//! config versions and the audit log.
//!
//! [`Store`] is an enum over back ends: embedded SQLite (below) and PostgreSQL for several
//! replicas behind a load balancer (see [`super::pg`]); each method dispatches on the variant and
//! both give the same transactional guarantees. SQLite work is blocking, so every call runs
//! on tokio's blocking pool with the one connection behind a mutex (SQLite serialises writers
//! anyway, and the control plane's write rate is tiny).
//!
//! Migrations: ordered SQL files (migrations/sqlite/, twins in migrations/postgres/) embedded with `include_str!`, applied inside one transaction
//! each and recorded in `schema_migrations`; a database newer than this binary is refused.
//!
//! Secrets (operator tokens, enrollment tokens, gateway credentials) are stored only as SHA-256
//! hashes. A plain, unsalted hash is enough because every token is 256 bits from the OS random
//! source: there is no dictionary to attack, so a slow password hash would only cost latency on
//! every gateway call. Lookups compare hashes, not tokens, so a timing side channel reveals
//! at most a prefix of a hash, which does not help forge a token.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension as _, params};

use super::pg::{Postgres, Wake};

use crate::protocol::{AuditEntry, ConfigVersion, GatewayInfo, Group, Rollout};

/// Ordered migrations; the index + 1 is the schema version.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/sqlite/0001_init.sql"),
    include_str!("migrations/sqlite/0002_rollouts.sql"),
    include_str!("migrations/sqlite/0003_usage.sql"),
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("database schema version {found} is newer than this binary supports ({supported})")]
    TooNew { found: i64, supported: i64 },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the group's rollout state (409, not retried).
    #[error("{0}")]
    State(String),
    /// The request itself is invalid (400).
    #[error("{0}")]
    Invalid(String),
    #[error("database worker failed: {0}")]
    Worker(String),
    /// PostgreSQL errors and connection problems (already redacted).
    #[error("{0}")]
    Backend(String),
}

/// Operator role carried by an operator token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
        }
    }
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "viewer" => Some(Role::Viewer),
            _ => None,
        }
    }
}

/// An authenticated operator.
#[derive(Debug, Clone)]
pub struct Operator {
    pub name: String,
    pub role: Role,
    /// Viewer tokens only: the one group this token may see. Every read handler checks it
    /// with [`Operator::sees_group`] (lists) or `api::require_group` (403 for one resource).
    pub group_scope: Option<String>,
}

impl Operator {
    /// Whether this operator may see `group`'s gateways, versions, rollout, audit and usage.
    pub fn sees_group(&self, group: &str) -> bool {
        self.group_scope.as_deref().is_none_or(|g| g == group)
    }

    /// `Some(group)` for a group-scoped token (to filter in SQL), `None` = sees every group.
    pub fn visible_group(&self) -> Option<&str> {
        self.group_scope.as_deref()
    }
}

/// An authenticated gateway.
#[derive(Debug, Clone)]
pub struct GatewayAuth {
    pub id: String,
    pub group: String,
    pub revoked: bool,
    /// Labels given at enrollment (canary selection by labels).
    pub labels: BTreeMap<String, String>,
}

/// A new config version to record.
#[derive(Debug, Clone)]
pub struct NewVersion {
    pub group: String,
    pub version: u64,
    pub yaml: String,
    pub sha256: String,
    pub created_at_ms: u64,
    pub created_by: String,
    pub signed_bundle: String,
    /// Assign it to the whole group at once (a plain publish). `false` stores it for a rollout.
    pub assign: bool,
    /// A copy of this earlier version's configuration (audited as `config.restore`).
    pub restored_from: Option<u64>,
}

/// Back ends; every method dispatches on the variant.
#[derive(Debug, Clone)]
pub enum Store {
    Sqlite(Sqlite),
    Postgres(Postgres),
}

/// Embedded SQLite: one file, one connection.
#[derive(Debug, Clone)]
pub struct Sqlite {
    conn: Arc<Mutex<Connection>>,
}

impl Sqlite {
    /// Opens (creating if needed) the database file and runs pending migrations.
    pub fn open(path: &Path) -> Result<Sqlite, StoreError> {
        let mut conn = Connection::open(path)?;
        // WAL: readers (long-polls, listings) do not block the occasional writer.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&mut conn)?;
        Ok(Sqlite {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    pub(super) async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .map_err(|_| StoreError::Worker("database mutex poisoned".into()))?;
            f(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Worker(e.to_string()))?
    }
}

/// Writes a transactionally consistent copy of the SQLite database at `db` to `out` (which must
/// not exist) with `VACUUM INTO`; a control plane may be writing meanwhile (WAL mode).
pub fn sqlite_snapshot(db: &Path, out: &Path) -> Result<(), StoreError> {
    let conn = Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let target = out
        .to_str()
        .ok_or_else(|| StoreError::Worker("backup path is not UTF-8".into()))?;
    conn.execute("VACUUM INTO ?1", params![target])?;
    Ok(())
}

/// Applies every migration newer than the recorded schema version.
pub fn migrate(conn: &mut Connection) -> Result<i64, StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
    )?;
    let current: i64 = conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
        [],
        |r| r.get(0),
    )?;
    let supported = MIGRATIONS.len() as i64;
    if current > supported {
        return Err(StoreError::TooNew {
            found: current,
            supported,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate() {
        let version = i as i64 + 1;
        if version <= current {
            continue;
        }
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
            params![version, crate::server::unix_now() as i64],
        )?;
        tx.commit()?;
        tracing::info!(schema.version = version, "control plane database migrated");
    }
    Ok(supported)
}

pub(super) fn labels_json(labels: &BTreeMap<String, String>) -> String {
    serde_json::to_string(labels).unwrap_or_else(|_| "{}".into())
}

pub(super) fn labels_parse(s: &str) -> BTreeMap<String, String> {
    serde_json::from_str(s).unwrap_or_default()
}

fn unique_violation(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation
    )
}

macro_rules! dispatch {
    ($self:ident, |$c:ident| $body:expr) => {
        $self.run(move |$c| $body).await
    };
}

impl Sqlite {
    pub async fn operator_count(&self) -> Result<u64, StoreError> {
        dispatch!(self, |c| Ok(
            c.query_row("SELECT COUNT(*) FROM operator_tokens", [], |r| r
                .get::<_, i64>(0))? as u64
        ))
    }

    pub async fn create_operator(
        &self,
        name: String,
        role: Role,
        token_hash: String,
        group_scope: Option<String>,
        actor: String,
    ) -> Result<(), StoreError> {
        dispatch!(self, |c| {
            let tx = c.transaction()?;
            if let Some(g) = &group_scope
                && tx
                    .query_row("SELECT 1 FROM groups WHERE name = ?1", params![g], |_| {
                        Ok(())
                    })
                    .optional()?
                    .is_none()
            {
                return Err(StoreError::NotFound(format!("no group {g:?}")));
            }
            tx.execute(
                "INSERT INTO operator_tokens (name, role, token_hash, created_at, group_scope) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![name, role.as_str(), token_hash, crate::server::unix_now() as i64, group_scope],
            )
            .map_err(|e| {
                if unique_violation(&e) {
                    StoreError::Conflict(format!("operator token {name:?} already exists"))
                } else {
                    e.into()
                }
            })?;
            audit_tx(
                &tx,
                &actor,
                "operator.create",
                &name,
                serde_json::json!({"role": role.as_str(), "scope": group_scope}),
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    pub async fn operator_by_hash(&self, hash: String) -> Result<Option<Operator>, StoreError> {
        dispatch!(self, |c| {
            let row = c
                .query_row(
                    "SELECT name, role, group_scope FROM operator_tokens WHERE token_hash = ?1",
                    params![hash],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, Option<String>>(2)?,
                        ))
                    },
                )
                .optional()?;
            Ok(row.and_then(|(name, role, group_scope)| {
                Role::parse(&role).map(|role| Operator {
                    name,
                    role,
                    group_scope,
                })
            }))
        })
    }

    pub async fn create_group(
        &self,
        name: String,
        labels: BTreeMap<String, String>,
        actor: String,
    ) -> Result<Group, StoreError> {
        dispatch!(self, |c| {
            let now = crate::server::unix_now();
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO groups (name, labels, created_at) VALUES (?1, ?2, ?3)",
                params![name, labels_json(&labels), now as i64],
            )
            .map_err(|e| {
                if unique_violation(&e) {
                    StoreError::Conflict(format!("group {name:?} already exists"))
                } else {
                    e.into()
                }
            })?;
            audit_tx(
                &tx,
                &actor,
                "group.create",
                &name,
                serde_json::json!({"labels": labels}),
            )?;
            tx.commit()?;
            Ok(Group {
                name,
                labels,
                created_at: now,
                assigned_version: 0,
            })
        })
    }

    pub async fn groups(&self) -> Result<Vec<Group>, StoreError> {
        dispatch!(self, |c| {
            let mut st = c.prepare(
                "SELECT name, labels, created_at, assigned_version FROM groups ORDER BY name",
            )?;
            let rows = st.query_map([], |r| {
                Ok(Group {
                    name: r.get(0)?,
                    labels: labels_parse(&r.get::<_, String>(1)?),
                    created_at: r.get::<_, i64>(2)? as u64,
                    assigned_version: r.get::<_, i64>(3)? as u64,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    pub async fn group_exists(&self, name: String) -> Result<bool, StoreError> {
        dispatch!(self, |c| Ok(c
            .query_row(
                "SELECT 1 FROM groups WHERE name = ?1",
                params![name],
                |_| Ok(())
            )
            .optional()?
            .is_some()))
    }

    pub async fn create_enrollment_token(
        &self,
        group: String,
        token_hash: String,
        expires_at: u64,
        actor: String,
    ) -> Result<(), StoreError> {
        dispatch!(self, |c| {
            let tx = c.transaction()?;
            let exists = tx
                .query_row(
                    "SELECT 1 FROM groups WHERE name = ?1",
                    params![group],
                    |_| Ok(()),
                )
                .optional()?
                .is_some();
            if !exists {
                return Err(StoreError::NotFound(format!("no group {group:?}")));
            }
            tx.execute(
                "INSERT INTO enrollment_tokens (token_hash, group_name, created_at, expires_at, created_by)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![token_hash, group, crate::server::unix_now() as i64, expires_at as i64, actor],
            )?;
            audit_tx(
                &tx,
                &actor,
                "enrollment_token.create",
                &group,
                serde_json::json!({"expires_at": expires_at}),
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    /// Consumes an enrollment token and registers the gateway, atomically: of two concurrent
    /// enrollments with one token exactly one succeeds. `Ok(None)` = unknown, used or expired.
    #[allow(clippy::too_many_arguments)]
    pub async fn enroll(
        &self,
        token_hash: String,
        gateway_id: String,
        name: String,
        labels: BTreeMap<String, String>,
        credential_hash: String,
    ) -> Result<Option<String>, StoreError> {
        dispatch!(self, |c| {
            let now = crate::server::unix_now();
            let tx = c.transaction()?;
            let group: Option<String> = tx
                .query_row(
                    "UPDATE enrollment_tokens SET used_at = ?2, used_by = ?3
                     WHERE token_hash = ?1 AND used_at IS NULL AND expires_at > ?2
                     RETURNING group_name",
                    params![token_hash, now as i64, gateway_id],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(group) = group else {
                return Ok(None);
            };
            tx.execute(
                "INSERT INTO gateways (id, name, group_name, labels, credential_hash, enrolled_at, last_seen)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
                params![gateway_id, name, group, labels_json(&labels), credential_hash, now as i64],
            )?;
            audit_tx(
                &tx,
                &format!("gateway:{gateway_id}"),
                "gateway.enroll",
                &gateway_id,
                serde_json::json!({"group": group, "name": name, "labels": labels}),
            )?;
            tx.commit()?;
            Ok(Some(group))
        })
    }

    /// Looks a gateway up by credential hash and records that it was seen.
    pub async fn gateway_by_hash(&self, hash: String) -> Result<Option<GatewayAuth>, StoreError> {
        dispatch!(self, |c| {
            let row = c
                .query_row(
                    "SELECT id, group_name, revoked, labels FROM gateways WHERE credential_hash = ?1",
                    params![hash],
                    |r| {
                        Ok(GatewayAuth {
                            id: r.get(0)?,
                            group: r.get(1)?,
                            revoked: r.get::<_, i64>(2)? != 0,
                            labels: labels_parse(&r.get::<_, String>(3)?),
                        })
                    },
                )
                .optional()?;
            if let Some(g) = &row
                && !g.revoked
            {
                c.execute(
                    "UPDATE gateways SET last_seen = ?2 WHERE id = ?1",
                    params![g.id, crate::server::unix_now() as i64],
                )?;
            }
            Ok(row)
        })
    }

    pub async fn gateways(&self) -> Result<Vec<GatewayInfo>, StoreError> {
        dispatch!(self, |c| {
            let mut st = c.prepare(
                "SELECT g.id, g.name, g.group_name, g.labels, g.enrolled_at, g.revoked, g.last_seen,
                        g.applied_version, g.healthy, g.last_error, g.applied_at_ms, gr.assigned_version
                 FROM gateways g JOIN groups gr ON gr.name = g.group_name
                 ORDER BY g.group_name, g.name, g.id",
            )?;
            let rows = st.query_map([], |r| {
                Ok(GatewayInfo {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    group: r.get(2)?,
                    labels: labels_parse(&r.get::<_, String>(3)?),
                    enrolled_at: r.get::<_, i64>(4)? as u64,
                    revoked: r.get::<_, i64>(5)? != 0,
                    last_seen: r.get::<_, i64>(6)? as u64,
                    applied_version: r.get::<_, i64>(7)? as u64,
                    healthy: r.get::<_, i64>(8)? != 0,
                    last_error: r.get(9)?,
                    applied_at_ms: r.get::<_, i64>(10)? as u64,
                    group_version: r.get::<_, i64>(11)? as u64,
                    // Filled in by `Store::gateways` (rollout-aware).
                    assigned_version: 0,
                    canary: false,
                    drift: false,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    pub async fn revoke(&self, id: String, actor: String) -> Result<(), StoreError> {
        dispatch!(self, |c| {
            let tx = c.transaction()?;
            let n = tx.execute("UPDATE gateways SET revoked = 1 WHERE id = ?1", params![id])?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("no gateway {id:?}")));
            }
            audit_tx(&tx, &actor, "gateway.revoke", &id, serde_json::json!({}))?;
            tx.commit()?;
            Ok(())
        })
    }

    /// Records a status report. Returns the publish-to-applied time in ms when this report is
    /// the first to name a newly applied version.
    pub async fn report_status(
        &self,
        id: String,
        applied_version: u64,
        healthy: bool,
        last_error: Option<String>,
        started_at: u64,
    ) -> Result<Option<u64>, StoreError> {
        dispatch!(self, |c| {
            let now_ms = crate::server::unix_now_ms();
            let tx = c.transaction()?;
            let (prev, group): (i64, String) = tx.query_row(
                "SELECT applied_version, group_name FROM gateways WHERE id = ?1",
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let changed = prev as u64 != applied_version;
            tx.execute(
                "UPDATE gateways SET applied_version = ?2, healthy = ?3, last_error = ?4, started_at = ?5,
                        applied_at_ms = CASE WHEN ?6 THEN ?7 ELSE applied_at_ms END
                 WHERE id = ?1",
                params![id, applied_version as i64, healthy as i64, last_error, started_at as i64, changed, now_ms as i64],
            )?;
            let mut lag = None;
            if changed && applied_version > 0 {
                let published: Option<i64> = tx
                    .query_row(
                        "SELECT created_at_ms FROM config_versions WHERE group_name = ?1 AND version = ?2",
                        params![group, applied_version as i64],
                        |r| r.get(0),
                    )
                    .optional()?;
                lag = published.map(|p| now_ms.saturating_sub(p as u64));
                audit_tx(
                    &tx,
                    &format!("gateway:{id}"),
                    "config.applied",
                    &id,
                    serde_json::json!({"group": group, "version": applied_version, "publish_to_applied_ms": lag}),
                )?;
            }
            tx.commit()?;
            Ok(lag)
        })
    }

    /// The next version number for a group (1 for the first): above every stored version and
    /// every version its gateways report having applied.
    pub async fn next_version(&self, group: String) -> Result<u64, StoreError> {
        dispatch!(self, |c| {
            let v: Option<i64> = c
                .query_row(
                    // Also above every version a gateway of the group reports: after a restore
                    // from an older backup, new versions must still be newer than what the
                    // gateways serve (they refuse older ones).
                    "SELECT MAX((SELECT COALESCE(MAX(version), 0) FROM config_versions WHERE group_name = ?1),
                                (SELECT COALESCE(MAX(applied_version), 0) FROM gateways WHERE group_name = ?1))
                     FROM groups WHERE name = ?1",
                    params![group],
                    |r| r.get(0),
                )
                .optional()?;
            match v {
                Some(v) => Ok(v as u64 + 1),
                None => Err(StoreError::NotFound(format!("no group {group:?}"))),
            }
        })
    }

    /// Stores a signed version and assigns it to its group. Fails with `Conflict` when another
    /// publish took the same version number first (the caller retries with a fresh number).
    pub async fn publish(&self, v: NewVersion) -> Result<(), StoreError> {
        dispatch!(self, |c| {
            let tx = c.transaction()?;
            if v.assign && latest_rollout(&tx, &v.group)?.is_some_and(|r| r.state == "canary") {
                return Err(rollout_in_progress(&v.group));
            }
            tx.execute(
                "INSERT INTO config_versions (group_name, version, yaml, sha256, created_at_ms, created_by, signed_bundle)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![v.group, v.version as i64, v.yaml, v.sha256, v.created_at_ms as i64, v.created_by, v.signed_bundle],
            )
            .map_err(|e| {
                if unique_violation(&e) {
                    StoreError::Conflict(format!("version {} of {:?} already exists", v.version, v.group))
                } else {
                    e.into()
                }
            })?;
            if v.assign {
                tx.execute(
                    "UPDATE groups SET assigned_version = ?2 WHERE name = ?1",
                    params![v.group, v.version as i64],
                )?;
            }
            let (action, detail) = publish_audit(&v);
            audit_tx(&tx, &v.created_by, action, &v.group, detail)?;
            tx.commit()?;
            Ok(())
        })
    }

    pub async fn versions(&self, group: String) -> Result<Vec<ConfigVersion>, StoreError> {
        dispatch!(self, |c| {
            let assigned: Option<i64> = c
                .query_row(
                    "SELECT assigned_version FROM groups WHERE name = ?1",
                    params![group],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(assigned) = assigned else {
                return Err(StoreError::NotFound(format!("no group {group:?}")));
            };
            let mut st = c.prepare(
                "SELECT version, created_at_ms, created_by, sha256 FROM config_versions
                 WHERE group_name = ?1 ORDER BY version DESC",
            )?;
            let rows = st.query_map(params![group], |r| {
                let version: i64 = r.get(0)?;
                Ok(ConfigVersion {
                    version: version as u64,
                    created_at_ms: r.get::<_, i64>(1)? as u64,
                    created_by: r.get(2)?,
                    sha256: r.get(3)?,
                    assigned: version == assigned,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// The group's assigned version and its signed bundle (JSON), if any.
    pub async fn assigned_bundle(
        &self,
        group: String,
    ) -> Result<Option<(u64, String)>, StoreError> {
        dispatch!(self, |c| {
            let row = c
                .query_row(
                    "SELECT v.version, v.signed_bundle FROM groups g
                     JOIN config_versions v ON v.group_name = g.name AND v.version = g.assigned_version
                     WHERE g.name = ?1",
                    params![group],
                    |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, String>(1)?)),
                )
                .optional()?;
            Ok(row)
        })
    }

    pub async fn audit(&self, limit: u64) -> Result<Vec<AuditEntry>, StoreError> {
        dispatch!(self, |c| {
            let mut st = c.prepare(
                "SELECT id, at_ms, actor, action, target, detail FROM audit ORDER BY id DESC LIMIT ?1",
            )?;
            let rows = st.query_map(params![limit as i64], |r| {
                Ok(AuditEntry {
                    id: r.get::<_, i64>(0)? as u64,
                    at_ms: r.get::<_, i64>(1)? as u64,
                    actor: r.get(2)?,
                    action: r.get(3)?,
                    target: r.get(4)?,
                    detail: serde_json::from_str(&r.get::<_, String>(5)?)
                        .unwrap_or(serde_json::Value::Null),
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }
}

/// Rollouts (see [`super::rollout`] for the rules) and group-filtered audit.
impl Sqlite {
    pub async fn audit_for(
        &self,
        limit: u64,
        group: Option<String>,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        dispatch!(self, |c| {
            let mut st = c.prepare(
                "SELECT id, at_ms, actor, action, target, detail FROM audit
                 WHERE ?2 IS NULL OR group_name = ?2 ORDER BY id DESC LIMIT ?1",
            )?;
            let rows = st.query_map(params![limit as i64, group], |r| {
                Ok(AuditEntry {
                    id: r.get::<_, i64>(0)? as u64,
                    at_ms: r.get::<_, i64>(1)? as u64,
                    actor: r.get(2)?,
                    action: r.get(3)?,
                    target: r.get(4)?,
                    detail: serde_json::from_str(&r.get::<_, String>(5)?)
                        .unwrap_or(serde_json::Value::Null),
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    pub async fn rollout_state(&self, group: String) -> Result<(u64, Option<Rollout>), StoreError> {
        dispatch!(self, |c| Ok((
            group_version(c, &group)?,
            latest_rollout(c, &group)?
        )))
    }

    pub async fn active_rollouts(&self) -> Result<Vec<Rollout>, StoreError> {
        dispatch!(self, |c| {
            let mut st = c.prepare(&format!(
                "SELECT {ROLLOUT_COLS} FROM rollouts r WHERE state = 'canary'
                 AND id = (SELECT MAX(id) FROM rollouts WHERE group_name = r.group_name)"
            ))?;
            let rows = st.query_map([], rollout_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// A stored version: `(yaml, signed bundle JSON)`.
    pub async fn version(
        &self,
        group: String,
        version: u64,
    ) -> Result<Option<(String, String)>, StoreError> {
        dispatch!(self, |c| {
            Ok(c
            .query_row(
                "SELECT yaml, signed_bundle FROM config_versions WHERE group_name = ?1 AND version = ?2",
                params![group, version as i64],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
        })
    }

    pub async fn rollout_start(
        &self,
        group: String,
        version: u64,
        canary_percent: u8,
        canary_labels: BTreeMap<String, String>,
        actor: String,
    ) -> Result<Rollout, StoreError> {
        dispatch!(self, |c| {
            let now = crate::server::unix_now_ms() as i64;
            let tx = c.transaction()?;
            let base = group_version(&tx, &group)?;
            super::rollout::check_start(
                &group,
                base,
                version,
                latest_rollout(&tx, &group)?.as_ref(),
            )?;
            let exists = tx
                .query_row(
                    "SELECT 1 FROM config_versions WHERE group_name = ?1 AND version = ?2",
                    params![group, version as i64],
                    |_| Ok(()),
                )
                .optional()?
                .is_some();
            if !exists {
                return Err(StoreError::NotFound(format!(
                    "group {group:?} has no version {version}"
                )));
            }
            tx.execute(
                "INSERT INTO rollouts (group_name, version, base_version, canary_percent, canary_labels, state,
                                       started_by, started_at_ms, updated_by, updated_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'canary', ?6, ?7, ?6, ?7)",
                params![group, version as i64, base as i64, canary_percent as i64, labels_json(&canary_labels), actor, now],
            )?;
            audit_tx(
                &tx,
                &actor,
                "rollout.start",
                &group,
                serde_json::json!({"group": group, "version": version, "base_version": base,
                                   "canary_percent": canary_percent, "canary_labels": canary_labels}),
            )?;
            let r = latest_rollout(&tx, &group)?
                .ok_or_else(|| StoreError::Worker("rollout vanished".into()))?;
            tx.commit()?;
            Ok(r)
        })
    }

    pub async fn rollout_promote(
        &self,
        group: String,
        actor: String,
    ) -> Result<Rollout, StoreError> {
        dispatch!(self, |c| {
            let now = crate::server::unix_now_ms() as i64;
            let tx = c.transaction()?;
            group_version(&tx, &group)?;
            let r = super::rollout::in_progress(&group, latest_rollout(&tx, &group)?)?;
            tx.execute(
                "UPDATE rollouts SET state = 'promoted', updated_by = ?2, updated_at_ms = ?3 WHERE id = ?1",
                params![r.id as i64, actor, now],
            )?;
            tx.execute(
                "UPDATE groups SET assigned_version = ?2 WHERE name = ?1",
                params![group, r.version as i64],
            )?;
            audit_tx(
                &tx,
                &actor,
                "rollout.promote",
                &group,
                serde_json::json!({"group": group, "version": r.version, "base_version": r.base_version}),
            )?;
            let r = latest_rollout(&tx, &group)?
                .ok_or_else(|| StoreError::Worker("rollout vanished".into()))?;
            tx.commit()?;
            Ok(r)
        })
    }

    /// Ends rollout `rollout_id` (still in progress) by storing `v` (the base configuration
    /// signed as a new version) and assigning it to the whole group.
    pub async fn rollout_rollback(
        &self,
        rollout_id: u64,
        v: NewVersion,
    ) -> Result<Rollout, StoreError> {
        dispatch!(self, |c| {
            let now = crate::server::unix_now_ms() as i64;
            let tx = c.transaction()?;
            let r = super::rollout::in_progress(&v.group, latest_rollout(&tx, &v.group)?)?;
            if r.id != rollout_id {
                return Err(StoreError::State(
                    "the rollout changed meanwhile; retry".into(),
                ));
            }
            tx.execute(
                "INSERT INTO config_versions (group_name, version, yaml, sha256, created_at_ms, created_by, signed_bundle)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![v.group, v.version as i64, v.yaml, v.sha256, v.created_at_ms as i64, v.created_by, v.signed_bundle],
            )
            .map_err(|e| {
                if unique_violation(&e) {
                    StoreError::Conflict(format!("version {} of {:?} already exists", v.version, v.group))
                } else {
                    e.into()
                }
            })?;
            tx.execute(
                "UPDATE groups SET assigned_version = ?2 WHERE name = ?1",
                params![v.group, v.version as i64],
            )?;
            tx.execute(
                "UPDATE rollouts SET state = 'rolled_back', rollback_version = ?2, updated_by = ?3, updated_at_ms = ?4
                 WHERE id = ?1",
                params![r.id as i64, v.version as i64, v.created_by, now],
            )?;
            audit_tx(
                &tx,
                &v.created_by,
                "rollout.rollback",
                &v.group,
                serde_json::json!({"group": v.group, "version": r.version, "base_version": r.base_version,
                                   "rollback_version": v.version, "sha256": v.sha256}),
            )?;
            let r = latest_rollout(&tx, &v.group)?
                .ok_or_else(|| StoreError::Worker("rollout vanished".into()))?;
            tx.commit()?;
            Ok(r)
        })
    }
}

impl Store {
    /// Opens the store: SQLite under `data_dir` unless a database URL is given.
    pub async fn open(data_dir: &Path, database_url: Option<&str>) -> Result<Store, StoreError> {
        if let Some(url) = database_url {
            return Ok(Store::Postgres(Postgres::open(url, redact_url(url)).await?));
        }
        Ok(Store::Sqlite(Sqlite::open(
            &data_dir.join("control-plane.db"),
        )?))
    }

    /// Cross-replica wake-ups (PostgreSQL only: a single SQLite server wakes its own
    /// long-polls directly).
    pub fn listen(
        &self,
        wake: Arc<dyn Fn(Wake) + Send + Sync>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        match self {
            Store::Sqlite(_) => None,
            Store::Postgres(p) => Some(p.listen(wake)),
        }
    }

    pub async fn operator_count(&self) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => s.operator_count().await,
            Store::Postgres(p) => p.operator_count().await,
        }
    }

    /// `group_scope`: a viewer token that sees only that group (`NotFound` if it does not exist).
    pub async fn create_operator(
        &self,
        name: String,
        role: Role,
        token_hash: String,
        group_scope: Option<String>,
        actor: String,
    ) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => {
                s.create_operator(name, role, token_hash, group_scope, actor)
                    .await
            }
            Store::Postgres(p) => {
                p.create_operator(name, role, token_hash, group_scope, actor)
                    .await
            }
        }
    }

    pub async fn operator_by_hash(&self, hash: String) -> Result<Option<Operator>, StoreError> {
        match self {
            Store::Sqlite(s) => s.operator_by_hash(hash).await,
            Store::Postgres(p) => p.operator_by_hash(hash).await,
        }
    }

    pub async fn create_group(
        &self,
        name: String,
        labels: BTreeMap<String, String>,
        actor: String,
    ) -> Result<Group, StoreError> {
        match self {
            Store::Sqlite(s) => s.create_group(name, labels, actor).await,
            Store::Postgres(p) => p.create_group(name, labels, actor).await,
        }
    }

    pub async fn groups(&self) -> Result<Vec<Group>, StoreError> {
        match self {
            Store::Sqlite(s) => s.groups().await,
            Store::Postgres(p) => p.groups().await,
        }
    }

    pub async fn group_exists(&self, name: String) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(s) => s.group_exists(name).await,
            Store::Postgres(p) => p.group_exists(name).await,
        }
    }

    pub async fn create_enrollment_token(
        &self,
        group: String,
        token_hash: String,
        expires_at: u64,
        actor: String,
    ) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => {
                s.create_enrollment_token(group, token_hash, expires_at, actor)
                    .await
            }
            Store::Postgres(p) => {
                p.create_enrollment_token(group, token_hash, expires_at, actor)
                    .await
            }
        }
    }

    pub async fn enroll(
        &self,
        token_hash: String,
        gateway_id: String,
        name: String,
        labels: BTreeMap<String, String>,
        credential_hash: String,
    ) -> Result<Option<String>, StoreError> {
        match self {
            Store::Sqlite(s) => {
                s.enroll(token_hash, gateway_id, name, labels, credential_hash)
                    .await
            }
            Store::Postgres(p) => {
                p.enroll(token_hash, gateway_id, name, labels, credential_hash)
                    .await
            }
        }
    }

    pub async fn gateway_by_hash(&self, hash: String) -> Result<Option<GatewayAuth>, StoreError> {
        match self {
            Store::Sqlite(s) => s.gateway_by_hash(hash).await,
            Store::Postgres(p) => p.gateway_by_hash(hash).await,
        }
    }

    /// Every gateway with its rollout-aware `assigned_version`, `canary` and `drift`.
    pub async fn gateways(&self) -> Result<Vec<GatewayInfo>, StoreError> {
        let mut list = match self {
            Store::Sqlite(s) => s.gateways().await,
            Store::Postgres(p) => p.gateways().await,
        }?;
        let active = self.active_rollouts().await?;
        for g in &mut list {
            let r = active.iter().find(|r| r.group == g.group);
            super::rollout::annotate(g, r);
        }
        Ok(list)
    }

    pub async fn revoke(&self, id: String, actor: String) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.revoke(id, actor).await,
            Store::Postgres(p) => p.revoke(id, actor).await,
        }
    }

    pub async fn report_status(
        &self,
        id: String,
        applied_version: u64,
        healthy: bool,
        last_error: Option<String>,
        started_at: u64,
    ) -> Result<Option<u64>, StoreError> {
        match self {
            Store::Sqlite(s) => {
                s.report_status(id, applied_version, healthy, last_error, started_at)
                    .await
            }
            Store::Postgres(p) => {
                p.report_status(id, applied_version, healthy, last_error, started_at)
                    .await
            }
        }
    }

    pub async fn next_version(&self, group: String) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => s.next_version(group).await,
            Store::Postgres(p) => p.next_version(group).await,
        }
    }

    pub async fn publish(&self, v: NewVersion) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.publish(v).await,
            Store::Postgres(p) => p.publish(v).await,
        }
    }

    pub async fn versions(&self, group: String) -> Result<Vec<ConfigVersion>, StoreError> {
        match self {
            Store::Sqlite(s) => s.versions(group).await,
            Store::Postgres(p) => p.versions(group).await,
        }
    }

    pub async fn assigned_bundle(
        &self,
        group: String,
    ) -> Result<Option<(u64, String)>, StoreError> {
        match self {
            Store::Sqlite(s) => s.assigned_bundle(group).await,
            Store::Postgres(p) => p.assigned_bundle(group).await,
        }
    }

    pub async fn audit(&self, limit: u64) -> Result<Vec<AuditEntry>, StoreError> {
        self.audit_for(limit, None).await
    }

    /// Newest first; `group: Some(g)` keeps only records about group `g` (its gateways,
    /// versions, rollouts) — what a group-scoped viewer sees.
    pub async fn audit_for(
        &self,
        limit: u64,
        group: Option<String>,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        match self {
            Store::Sqlite(s) => s.audit_for(limit, group).await,
            Store::Postgres(p) => p.audit_for(limit, group).await,
        }
    }

    /// The group's version (what non-canaries get) and its latest rollout. `NotFound` for an
    /// unknown group.
    pub async fn rollout_state(&self, group: String) -> Result<(u64, Option<Rollout>), StoreError> {
        match self {
            Store::Sqlite(s) => s.rollout_state(group).await,
            Store::Postgres(p) => p.rollout_state(group).await,
        }
    }

    /// Every group's rollout in progress.
    pub async fn active_rollouts(&self) -> Result<Vec<Rollout>, StoreError> {
        match self {
            Store::Sqlite(s) => s.active_rollouts().await,
            Store::Postgres(p) => p.active_rollouts().await,
        }
    }

    /// A stored version of a group: `(yaml, signed bundle JSON)`.
    pub async fn version(
        &self,
        group: String,
        version: u64,
    ) -> Result<Option<(String, String)>, StoreError> {
        match self {
            Store::Sqlite(s) => s.version(group, version).await,
            Store::Postgres(p) => p.version(group, version).await,
        }
    }

    /// Starts a rollout (use [`super::rollout::start`], which also wakes the long-polls).
    pub async fn rollout_start(
        &self,
        group: String,
        version: u64,
        canary_percent: u8,
        canary_labels: BTreeMap<String, String>,
        actor: String,
    ) -> Result<Rollout, StoreError> {
        match self {
            Store::Sqlite(s) => {
                s.rollout_start(group, version, canary_percent, canary_labels, actor)
                    .await
            }
            Store::Postgres(p) => {
                p.rollout_start(group, version, canary_percent, canary_labels, actor)
                    .await
            }
        }
    }

    /// Promotes the group's rollout in progress (use [`super::rollout::promote`]).
    pub async fn rollout_promote(
        &self,
        group: String,
        actor: String,
    ) -> Result<Rollout, StoreError> {
        match self {
            Store::Sqlite(s) => s.rollout_promote(group, actor).await,
            Store::Postgres(p) => p.rollout_promote(group, actor).await,
        }
    }

    /// Rolls back (use [`super::rollout::rollback`], which signs the new version).
    pub async fn rollout_rollback(
        &self,
        rollout_id: u64,
        v: NewVersion,
    ) -> Result<Rollout, StoreError> {
        match self {
            Store::Sqlite(s) => s.rollout_rollback(rollout_id, v).await,
            Store::Postgres(p) => p.rollout_rollback(rollout_id, v).await,
        }
    }
}

/// Writes an audit record inside the caller's transaction, so a change and its record commit
/// (or roll back) together.
fn audit_tx(
    tx: &rusqlite::Transaction<'_>,
    actor: &str,
    action: &str,
    target: &str,
    detail: serde_json::Value,
) -> Result<(), StoreError> {
    // The record's group (what a group-scoped viewer may see): named in the detail, else the
    // gateway's group when the target is a gateway, else the target when it names a group.
    let group = detail
        .get("group")
        .and_then(|g| g.as_str())
        .map(str::to_owned);
    tx.execute(
        "INSERT INTO audit (at_ms, actor, action, target, detail, group_name) VALUES (?1, ?2, ?3, ?4, ?5,
             COALESCE(?6, (SELECT group_name FROM gateways WHERE id = ?4),
                      CASE WHEN ?3 NOT LIKE 'operator.%' THEN (SELECT name FROM groups WHERE name = ?4) END))",
        params![
            crate::server::unix_now_ms() as i64,
            actor,
            action,
            target,
            detail.to_string(),
            group
        ],
    )?;
    Ok(())
}

/// The audit action and detail of a publish (or a restore, which is a publish of an old config).
pub(super) fn publish_audit(v: &NewVersion) -> (&'static str, serde_json::Value) {
    match v.restored_from {
        Some(from) => (
            "config.restore",
            serde_json::json!({"version": v.version, "sha256": v.sha256, "restored_from": from}),
        ),
        None => (
            "config.publish",
            serde_json::json!({"version": v.version, "sha256": v.sha256, "assigned": v.assign}),
        ),
    }
}

/// The 409 for changes that need the group's rollout in progress to end first.
pub(super) fn rollout_in_progress(group: &str) -> StoreError {
    StoreError::State(format!(
        "group {group:?} has a rollout in progress: promote or roll it back first"
    ))
}

/// `SELECT` list matching [`rollout_row`] / `pg::rollout_row`.
pub(super) const ROLLOUT_COLS: &str =
    "id, group_name, version, base_version, canary_percent, canary_labels, state,
     rollback_version, started_by, started_at_ms, updated_by, updated_at_ms";

fn rollout_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Rollout> {
    Ok(Rollout {
        id: r.get::<_, i64>(0)? as u64,
        group: r.get(1)?,
        version: r.get::<_, i64>(2)? as u64,
        base_version: r.get::<_, i64>(3)? as u64,
        canary_percent: r.get::<_, i64>(4)?.clamp(0, 100) as u8,
        canary_labels: labels_parse(&r.get::<_, String>(5)?),
        state: r.get(6)?,
        rollback_version: r.get::<_, Option<i64>>(7)?.map(|v| v as u64),
        started_by: r.get(8)?,
        started_at_ms: r.get::<_, i64>(9)? as u64,
        updated_by: r.get(10)?,
        updated_at_ms: r.get::<_, i64>(11)? as u64,
    })
}

fn latest_rollout(c: &Connection, group: &str) -> Result<Option<Rollout>, StoreError> {
    Ok(c.query_row(
        &format!(
            "SELECT {ROLLOUT_COLS} FROM rollouts WHERE group_name = ?1 ORDER BY id DESC LIMIT 1"
        ),
        params![group],
        rollout_row,
    )
    .optional()?)
}

fn group_version(c: &Connection, group: &str) -> Result<u64, StoreError> {
    c.query_row(
        "SELECT assigned_version FROM groups WHERE name = ?1",
        params![group],
        |r| r.get::<_, i64>(0),
    )
    .optional()?
    .map(|v| v as u64)
    .ok_or_else(|| StoreError::NotFound(format!("no group {group:?}")))
}

/// Hides a password in a database URL before it is printed.
pub(super) fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***{}", &url[..s], &url[at..]),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_idempotent_and_recorded() {
        let mut c = Connection::open_in_memory().unwrap();
        let n = MIGRATIONS.len() as i64;
        assert_eq!(migrate(&mut c).unwrap(), n);
        assert_eq!(migrate(&mut c).unwrap(), n);
        let recorded: i64 = c
            .query_row("SELECT COUNT(*) FROM schema_migrations", [], |r| r.get(0))
            .unwrap();
        assert_eq!(recorded, n);
    }

    #[test]
    fn newer_schema_is_refused() {
        let mut c = Connection::open_in_memory().unwrap();
        migrate(&mut c).unwrap();
        c.execute("INSERT INTO schema_migrations VALUES (99, 0)", [])
            .unwrap();
        assert!(matches!(
            migrate(&mut c),
            Err(StoreError::TooNew { found: 99, .. })
        ));
    }

    #[test]
    fn url_password_is_redacted() {
        assert_eq!(redact_url("postgres://u:pw@db/x"), "postgres://***@db/x");
    }
}
