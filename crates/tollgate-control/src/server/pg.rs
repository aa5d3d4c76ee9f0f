//! The PostgreSQL back end of [`super::store::Store`], for several control-plane replicas behind
//! a load balancer on one database.
//!
//! Same operations and guarantees as SQLite: every change and its audit record commit in one
//! transaction; a one-time enrollment token is consumed by `UPDATE … WHERE used_at IS NULL
//! RETURNING`, which takes a row lock, so of concurrent enrollments on any replicas exactly one
//! wins. Migrations (migrations/postgres/*.sql) run at start inside one transaction holding
//! `pg_advisory_xact_lock`, so replicas starting together apply each version once; a database
//! newer than this binary is refused.
//!
//! Long-poll wake-ups across replicas: a publish runs `pg_notify('tollgate_config', ..)` in its
//! transaction (delivered on commit); every replica LISTENs on a dedicated connection and wakes
//! its local long-polls. While that connection is down every group is woken every 2 s instead,
//! and once more when LISTEN is back (a publish in the gap was heard by nobody); a long-poll
//! re-reads the store, so a spurious wake costs one query.
//!
//! Only `postgres://` URLs are supported; TLS follows libpq's `sslmode` / `sslrootcert` (see
//! [`super::pg_tls`]). The URL may carry a password: it is never printed (errors name the URL
//! with the credentials replaced by `***`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Mutex;
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, Client, Config, Transaction};

use super::pg_tls::MakeRustls;

use super::store::{
    GatewayAuth, NewVersion, Operator, ROLLOUT_COLS, Role, StoreError, labels_json, labels_parse,
    rollout_in_progress,
};
use crate::protocol::{AuditEntry, ConfigVersion, GatewayInfo, Group, Rollout};

/// Ordered migrations; the index + 1 is the schema version.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/postgres/0001_init.sql"),
    include_str!("migrations/postgres/0002_rollouts.sql"),
    include_str!("migrations/postgres/0003_usage.sql"),
];
/// Connections per replica: the control plane's query rate is small; long-polls hold none.
const POOL_SIZE: usize = 4;
/// The NOTIFY channel; the payload is `<version>:<group>`.
pub const CHANNEL: &str = "tollgate_config";
/// Arbitrary constant key for the migration advisory lock ("tollgate" in ASCII, truncated).
const MIGRATION_LOCK: i64 = 0x746f_6c6c_6761_7465;
/// `application_name` of the LISTEN connection.
pub const LISTENER_APP_NAME: &str = "tollgate-cp-listen";
/// How often every long-poll is woken while the LISTEN connection is down.
const FALLBACK_POLL: Duration = Duration::from_secs(2);

/// What the listener tells the server.
#[derive(Debug, Clone)]
pub enum Wake {
    /// One group's assigned version changed (possibly on another replica).
    Group(String, u64),
    /// Notifications may have been missed: wake every long-poll to re-read the store.
    All,
}

/// A small fixed pool: each slot is one connection, reconnected on next use when it died.
#[derive(Clone)]
pub struct Postgres {
    config: Arc<Config>,
    tls: MakeRustls,
    slots: Arc<Vec<Mutex<Option<Client>>>>,
    next: Arc<AtomicUsize>,
    /// `scheme://***@host/db`, for messages.
    pub redacted: String,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres")
            .field("url", &self.redacted)
            .finish()
    }
}

pub(super) fn pg_err(e: tokio_postgres::Error) -> StoreError {
    // The driver's Display hides the server's message behind "db error"; show it (it never
    // contains the connection password).
    let msg = match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => match std::error::Error::source(&e) {
            Some(src) => format!("{e}: {src}"),
            None => e.to_string(),
        },
    };
    StoreError::Backend(format!("postgres: {msg}"))
}

/// Says which TLS setting to look at when a connection fails in the TLS layer.
fn tls_hint(message: &str, ssl: &super::pg_tls::Settings) -> &'static str {
    use super::pg_tls::Verify;
    if message.contains("server does not support TLS") {
        " (TLS: the server has ssl=off; sslmode=require and stricter need it on)"
    } else if message.contains("NotValidForName") || message.contains("not valid for name") {
        " (TLS, sslmode=verify-full: the certificate does not name this host; connect by a name it carries, or use verify-ca)"
    } else if message.contains("UnknownIssuer") || message.contains("BadSignature") {
        " (TLS: the server certificate does not chain to sslrootcert)"
    } else if message.contains("invalid peer certificate") && ssl.verify != Verify::None {
        " (TLS: the server certificate was refused)"
    } else {
        ""
    }
}

fn unique_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
}

async fn connect(config: &Config, tls: &MakeRustls) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = config.connect(tls.clone()).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!(error = %e, "control plane database connection ended");
        }
    });
    Ok(client)
}

/// Runs the body inside one transaction on a pooled connection (`t` is the transaction) and
/// commits it when the body returns `Ok`; an `Err` or early return rolls it back. A macro, not a
/// closure-taking method, so the handlers' futures stay `Send`.
macro_rules! pg_tx {
    ($self:ident, |$t:ident| $body:block) => {{
        let mut guard = $self.client().await?;
        let c = guard
            .as_mut()
            .ok_or_else(|| StoreError::Backend("no connection".into()))?;
        let tx = c.transaction().await.map_err(pg_err)?;
        let out: Result<_, StoreError> = async {
            let $t = &tx;
            $body
        }
        .await;
        let out = out?;
        tx.commit().await.map_err(pg_err)?;
        Ok::<_, StoreError>(out)
    }};
}

impl Postgres {
    /// Connects and runs pending migrations.
    pub async fn open(url: &str, redacted: String) -> Result<Postgres, StoreError> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(StoreError::Backend(format!(
                "--database-url {redacted}: only postgres:// URLs are supported"
            )));
        }
        let (url, ssl) = super::pg_tls::split_url(url)
            .map_err(|e| StoreError::Backend(format!("--database-url {redacted}: {e}")))?;
        let mut config: Config = url.parse().map_err(|e: tokio_postgres::Error| {
            StoreError::Backend(format!("--database-url {redacted}: {e}"))
        })?;
        config.ssl_mode(ssl.mode);
        let tls = super::pg_tls::connector(&ssl)
            .map_err(|e| StoreError::Backend(format!("--database-url {redacted}: {e}")))?;
        let first = connect(&config, &tls).await.map_err(|e| {
            let StoreError::Backend(m) = pg_err(e) else {
                return StoreError::Backend(format!("cannot connect to {redacted}"));
            };
            StoreError::Backend(format!(
                "cannot connect to {redacted}{}: {m}",
                tls_hint(&m, &ssl)
            ))
        })?;
        let mut slots = Vec::with_capacity(POOL_SIZE);
        slots.push(Mutex::new(Some(first)));
        for _ in 1..POOL_SIZE {
            slots.push(Mutex::new(None));
        }
        let pg = Postgres {
            config: Arc::new(config),
            tls,
            slots: Arc::new(slots),
            next: Arc::new(AtomicUsize::new(0)),
            redacted,
        };
        {
            let mut guard = pg.client().await?;
            let c = guard
                .as_mut()
                .ok_or_else(|| StoreError::Backend("no connection".into()))?;
            migrate(c).await?;
        }
        Ok(pg)
    }

    /// A live connection, exclusively: a free slot if there is one, else waits for one.
    pub(super) async fn client(
        &self,
    ) -> Result<tokio::sync::MutexGuard<'_, Option<Client>>, StoreError> {
        let n = self.slots.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut guard = None;
        for i in 0..n {
            if let Ok(g) = self.slots[(start + i) % n].try_lock() {
                guard = Some(g);
                break;
            }
        }
        let mut guard = match guard {
            Some(g) => g,
            None => self.slots[start % n].lock().await,
        };
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            *guard = Some(connect(&self.config, &self.tls).await.map_err(pg_err)?);
        }
        Ok(guard)
    }

    /// A connection of its own, outside the pool (for session state such as an advisory lock).
    pub(super) async fn dedicated(&self) -> Result<Client, StoreError> {
        connect(&self.config, &self.tls).await.map_err(pg_err)
    }

    /// Starts the LISTEN task; it reconnects forever and calls `wake` on every notification.
    pub fn listen(&self, wake: Arc<dyn Fn(Wake) + Send + Sync>) -> tokio::task::JoinHandle<()> {
        let config = Arc::clone(&self.config);
        let tls = self.tls.clone();
        tokio::spawn(async move {
            loop {
                match listen_once(&config, &tls, &wake).await {
                    Ok(()) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "control plane LISTEN connection lost; polling every 2 s")
                    }
                }
                // Down: wake everyone now (notifications may have been lost) and keep doing
                // it until the listener is back.
                wake(Wake::All);
                tokio::time::sleep(FALLBACK_POLL).await;
            }
        })
    }

    pub async fn operator_count(&self) -> Result<u64, StoreError> {
        pg_tx!(self, |t| {
            let r = t
                .query_one("SELECT COUNT(*) FROM operator_tokens", &[])
                .await
                .map_err(pg_err)?;
            Ok(r.get::<_, i64>(0) as u64)
        })
    }

    pub async fn create_operator(
        &self,
        name: String,
        role: Role,
        token_hash: String,
        group_scope: Option<String>,
        actor: String,
    ) -> Result<(), StoreError> {
        pg_tx!(self, |t| {
            if let Some(g) = &group_scope
                && t.query_opt("SELECT 1 FROM groups WHERE name = $1 FOR SHARE", &[g])
                    .await
                    .map_err(pg_err)?
                    .is_none()
            {
                return Err(StoreError::NotFound(format!("no group {g:?}")));
            }
            t.execute(
                "INSERT INTO operator_tokens (name, role, token_hash, created_at, group_scope) VALUES ($1, $2, $3, $4, $5)",
                &[&name, &role.as_str(), &token_hash, &(crate::server::unix_now() as i64), &group_scope],
            )
            .await
            .map_err(|e| {
                if unique_violation(&e) {
                    StoreError::Conflict(format!("operator token {name:?} already exists"))
                } else {
                    pg_err(e)
                }
            })?;
            audit(
                t,
                &actor,
                "operator.create",
                &name,
                serde_json::json!({"role": role.as_str(), "scope": group_scope}),
            )
            .await
        })
    }

    pub async fn operator_by_hash(&self, hash: String) -> Result<Option<Operator>, StoreError> {
        pg_tx!(self, |t| {
            let row = t
                .query_opt(
                    "SELECT name, role, group_scope FROM operator_tokens WHERE token_hash = $1",
                    &[&hash],
                )
                .await
                .map_err(pg_err)?;
            Ok(row.and_then(|r| {
                Role::parse(r.get::<_, &str>(1)).map(|role| Operator {
                    name: r.get(0),
                    role,
                    group_scope: r.get(2),
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
        let now = crate::server::unix_now();
        pg_tx!(self, |t| {
            t.execute(
                "INSERT INTO groups (name, labels, created_at) VALUES ($1, $2, $3)",
                &[&name, &labels_json(&labels), &(now as i64)],
            )
            .await
            .map_err(|e| {
                if unique_violation(&e) {
                    StoreError::Conflict(format!("group {name:?} already exists"))
                } else {
                    pg_err(e)
                }
            })?;
            audit(
                t,
                &actor,
                "group.create",
                &name,
                serde_json::json!({"labels": labels}),
            )
            .await
        })?;
        Ok(Group {
            name,
            labels,
            created_at: now,
            assigned_version: 0,
        })
    }

    pub async fn groups(&self) -> Result<Vec<Group>, StoreError> {
        pg_tx!(self, |t| {
            let rows = t
                .query(
                    "SELECT name, labels, created_at, assigned_version FROM groups ORDER BY name",
                    &[],
                )
                .await
                .map_err(pg_err)?;
            Ok(rows
                .iter()
                .map(|r| Group {
                    name: r.get(0),
                    labels: labels_parse(r.get(1)),
                    created_at: r.get::<_, i64>(2) as u64,
                    assigned_version: r.get::<_, i64>(3) as u64,
                })
                .collect())
        })
    }

    pub async fn group_exists(&self, name: String) -> Result<bool, StoreError> {
        pg_tx!(self, |t| {
            Ok(
                t.query_opt("SELECT 1 FROM groups WHERE name = $1", &[&name])
                    .await
                    .map_err(pg_err)?
                    .is_some(),
            )
        })
    }

    pub async fn create_enrollment_token(
        &self,
        group: String,
        token_hash: String,
        expires_at: u64,
        actor: String,
    ) -> Result<(), StoreError> {
        pg_tx!(self, |t| {
            // FOR SHARE: the group cannot disappear between this check and the insert.
            let exists = t
                .query_opt("SELECT 1 FROM groups WHERE name = $1 FOR SHARE", &[&group])
                .await
                .map_err(pg_err)?
                .is_some();
            if !exists {
                return Err(StoreError::NotFound(format!("no group {group:?}")));
            }
            t.execute(
                "INSERT INTO enrollment_tokens (token_hash, group_name, created_at, expires_at, created_by)
                 VALUES ($1, $2, $3, $4, $5)",
                &[&token_hash, &group, &(crate::server::unix_now() as i64), &(expires_at as i64), &actor],
            )
            .await
            .map_err(pg_err)?;
            audit(
                t,
                &actor,
                "enrollment_token.create",
                &group,
                serde_json::json!({"expires_at": expires_at}),
            )
            .await
        })
    }

    pub async fn enroll(
        &self,
        token_hash: String,
        gateway_id: String,
        name: String,
        labels: BTreeMap<String, String>,
        credential_hash: String,
    ) -> Result<Option<String>, StoreError> {
        let now = crate::server::unix_now() as i64;
        pg_tx!(self, |t| {
            // The UPDATE row-locks the token; a concurrent enrollment waits, then re-checks
            // `used_at IS NULL` on the committed row and matches nothing.
            let row = t
                .query_opt(
                    "UPDATE enrollment_tokens SET used_at = $2, used_by = $3
                     WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2
                     RETURNING group_name",
                    &[&token_hash, &now, &gateway_id],
                )
                .await
                .map_err(pg_err)?;
            let Some(row) = row else {
                return Ok(None);
            };
            let group: String = row.get(0);
            t.execute(
                "INSERT INTO gateways (id, name, group_name, labels, credential_hash, enrolled_at, last_seen)
                 VALUES ($1, $2, $3, $4, $5, $6, $6)",
                &[&gateway_id, &name, &group, &labels_json(&labels), &credential_hash, &now],
            )
            .await
            .map_err(pg_err)?;
            audit(
                t,
                &format!("gateway:{gateway_id}"),
                "gateway.enroll",
                &gateway_id,
                serde_json::json!({"group": group, "name": name, "labels": labels}),
            )
            .await?;
            Ok(Some(group))
        })
    }

    pub async fn gateway_by_hash(&self, hash: String) -> Result<Option<GatewayAuth>, StoreError> {
        pg_tx!(self, |t| {
            let row = t
                .query_opt(
                    "SELECT id, group_name, revoked, labels FROM gateways WHERE credential_hash = $1",
                    &[&hash],
                )
                .await
                .map_err(pg_err)?
                .map(|r| GatewayAuth {
                    id: r.get(0),
                    group: r.get(1),
                    revoked: r.get::<_, i64>(2) != 0,
                    labels: labels_parse(r.get(3)),
                });
            if let Some(g) = &row
                && !g.revoked
            {
                t.execute(
                    "UPDATE gateways SET last_seen = $2 WHERE id = $1",
                    &[&g.id, &(crate::server::unix_now() as i64)],
                )
                .await
                .map_err(pg_err)?;
            }
            Ok(row)
        })
    }

    pub async fn gateways(&self) -> Result<Vec<GatewayInfo>, StoreError> {
        pg_tx!(self, |t| {
            let rows = t
                .query(
                    "SELECT g.id, g.name, g.group_name, g.labels, g.enrolled_at, g.revoked, g.last_seen,
                            g.applied_version, g.healthy, g.last_error, g.applied_at_ms, gr.assigned_version
                     FROM gateways g JOIN groups gr ON gr.name = g.group_name
                     ORDER BY g.group_name, g.name, g.id",
                    &[],
                )
                .await
                .map_err(pg_err)?;
            Ok(rows
                .iter()
                .map(|r| GatewayInfo {
                    id: r.get(0),
                    name: r.get(1),
                    group: r.get(2),
                    labels: labels_parse(r.get(3)),
                    enrolled_at: r.get::<_, i64>(4) as u64,
                    revoked: r.get::<_, i64>(5) != 0,
                    last_seen: r.get::<_, i64>(6) as u64,
                    applied_version: r.get::<_, i64>(7) as u64,
                    healthy: r.get::<_, i64>(8) != 0,
                    last_error: r.get(9),
                    applied_at_ms: r.get::<_, i64>(10) as u64,
                    group_version: r.get::<_, i64>(11) as u64,
                    // Filled in by `Store::gateways` (rollout-aware).
                    assigned_version: 0,
                    canary: false,
                    drift: false,
                })
                .collect())
        })
    }

    pub async fn revoke(&self, id: String, actor: String) -> Result<(), StoreError> {
        pg_tx!(self, |t| {
            let n = t
                .execute("UPDATE gateways SET revoked = 1 WHERE id = $1", &[&id])
                .await
                .map_err(pg_err)?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("no gateway {id:?}")));
            }
            audit(t, &actor, "gateway.revoke", &id, serde_json::json!({})).await
        })
    }

    pub async fn report_status(
        &self,
        id: String,
        applied_version: u64,
        healthy: bool,
        last_error: Option<String>,
        started_at: u64,
    ) -> Result<Option<u64>, StoreError> {
        let now_ms = crate::server::unix_now_ms();
        pg_tx!(self, |t| {
            // FOR UPDATE: two reports of one gateway on two replicas see each other's result.
            let r = t
                .query_opt(
                    "SELECT applied_version, group_name FROM gateways WHERE id = $1 FOR UPDATE",
                    &[&id],
                )
                .await
                .map_err(pg_err)?
                .ok_or_else(|| StoreError::NotFound(format!("no gateway {id:?}")))?;
            let prev: i64 = r.get(0);
            let group: String = r.get(1);
            let changed = prev as u64 != applied_version;
            t.execute(
                "UPDATE gateways SET applied_version = $2, healthy = $3, last_error = $4, started_at = $5,
                        applied_at_ms = CASE WHEN $6::boolean THEN $7 ELSE applied_at_ms END
                 WHERE id = $1",
                &[&id, &(applied_version as i64), &(healthy as i64), &last_error, &(started_at as i64), &changed, &(now_ms as i64)],
            )
            .await
            .map_err(pg_err)?;
            let mut lag = None;
            if changed && applied_version > 0 {
                let published: Option<i64> = t
                    .query_opt(
                        "SELECT created_at_ms FROM config_versions WHERE group_name = $1 AND version = $2",
                        &[&group, &(applied_version as i64)],
                    )
                    .await
                    .map_err(pg_err)?
                    .map(|r| r.get(0));
                lag = published.map(|p| now_ms.saturating_sub(p as u64));
                audit(
                    t,
                    &format!("gateway:{id}"),
                    "config.applied",
                    &id,
                    serde_json::json!({"group": group, "version": applied_version, "publish_to_applied_ms": lag}),
                )
                .await?;
            }
            Ok(lag)
        })
    }

    pub async fn next_version(&self, group: String) -> Result<u64, StoreError> {
        pg_tx!(self, |t| {
            let v: Option<i64> = t
                .query_opt(
                    // Also above every version a gateway of the group reports (a restore from
                    // an older backup must not hand out numbers the gateways refuse).
                    "SELECT GREATEST((SELECT COALESCE(MAX(version), 0) FROM config_versions WHERE group_name = $1),
                                     (SELECT COALESCE(MAX(applied_version), 0) FROM gateways WHERE group_name = $1))::BIGINT
                     FROM groups WHERE name = $1",
                    &[&group],
                )
                .await
                .map_err(pg_err)?
                .map(|r| r.get(0));
            match v {
                Some(v) => Ok(v as u64 + 1),
                None => Err(StoreError::NotFound(format!("no group {group:?}"))),
            }
        })
    }

    pub async fn publish(&self, v: NewVersion) -> Result<(), StoreError> {
        pg_tx!(self, |t| {
            // FOR UPDATE: serialises with rollout changes of the group.
            lock_group(t, &v.group).await?;
            if v.assign
                && latest_rollout(t, &v.group)
                    .await?
                    .is_some_and(|r| r.state == "canary")
            {
                return Err(rollout_in_progress(&v.group));
            }
            t.execute(
                "INSERT INTO config_versions (group_name, version, yaml, sha256, created_at_ms, created_by, signed_bundle)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[&v.group, &(v.version as i64), &v.yaml, &v.sha256, &(v.created_at_ms as i64), &v.created_by, &v.signed_bundle],
            )
            .await
            .map_err(|e| {
                if unique_violation(&e) {
                    StoreError::Conflict(format!("version {} of {:?} already exists", v.version, v.group))
                } else {
                    pg_err(e)
                }
            })?;
            if v.assign {
                t.execute(
                    "UPDATE groups SET assigned_version = $2 WHERE name = $1",
                    &[&v.group, &(v.version as i64)],
                )
                .await
                .map_err(pg_err)?;
            }
            let (action, detail) = super::store::publish_audit(&v);
            audit(t, &v.created_by, action, &v.group, detail).await?;
            // Delivered to every replica's listener when (and only if) this commits.
            notify(t, &v.group, v.version).await
        })
    }

    pub async fn versions(&self, group: String) -> Result<Vec<ConfigVersion>, StoreError> {
        pg_tx!(self, |t| {
            let assigned: i64 = t
                .query_opt(
                    "SELECT assigned_version FROM groups WHERE name = $1",
                    &[&group],
                )
                .await
                .map_err(pg_err)?
                .map(|r| r.get(0))
                .ok_or_else(|| StoreError::NotFound(format!("no group {group:?}")))?;
            let rows = t
                .query(
                    "SELECT version, created_at_ms, created_by, sha256 FROM config_versions
                     WHERE group_name = $1 ORDER BY version DESC",
                    &[&group],
                )
                .await
                .map_err(pg_err)?;
            Ok(rows
                .iter()
                .map(|r| {
                    let version: i64 = r.get(0);
                    ConfigVersion {
                        version: version as u64,
                        created_at_ms: r.get::<_, i64>(1) as u64,
                        created_by: r.get(2),
                        sha256: r.get(3),
                        assigned: version == assigned,
                    }
                })
                .collect())
        })
    }

    pub async fn assigned_bundle(
        &self,
        group: String,
    ) -> Result<Option<(u64, String)>, StoreError> {
        pg_tx!(self, |t| {
            Ok(t
                .query_opt(
                    "SELECT v.version, v.signed_bundle FROM groups g
                     JOIN config_versions v ON v.group_name = g.name AND v.version = g.assigned_version
                     WHERE g.name = $1",
                    &[&group],
                )
                .await
                .map_err(pg_err)?
                .map(|r| (r.get::<_, i64>(0) as u64, r.get::<_, String>(1))))
        })
    }

    pub async fn audit(&self, limit: u64) -> Result<Vec<AuditEntry>, StoreError> {
        pg_tx!(self, |t| {
            let rows = t
                .query(
                    "SELECT id, at_ms, actor, action, target, detail FROM audit ORDER BY id DESC LIMIT $1",
                    &[&(limit.min(i64::MAX as u64) as i64)],
                )
                .await
                .map_err(pg_err)?;
            Ok(rows
                .iter()
                .map(|r| AuditEntry {
                    id: r.get::<_, i64>(0) as u64,
                    at_ms: r.get::<_, i64>(1) as u64,
                    actor: r.get(2),
                    action: r.get(3),
                    target: r.get(4),
                    detail: serde_json::from_str(r.get(5)).unwrap_or(serde_json::Value::Null),
                })
                .collect())
        })
    }
}

/// Holds LISTEN until the connection drops; forwards each notification to `wake`.
async fn listen_once(
    config: &Config,
    tls: &MakeRustls,
    wake: &Arc<dyn Fn(Wake) + Send + Sync>,
) -> Result<(), tokio_postgres::Error> {
    let mut config = config.clone();
    // Named, so an operator (or a test) can find this replica's listener in pg_stat_activity.
    config.application_name(LISTENER_APP_NAME);
    let (client, mut conn) = config.connect(tls.clone()).await?;
    // Drive the connection here (not in a spawned task) so notifications can be read from it.
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel::<()>();
    let wake_after_listen = Arc::clone(wake);
    let listen = async move {
        let r = client.batch_execute(&format!("LISTEN {CHANNEL}")).await;
        if r.is_ok() {
            // Listening again after a gap: a publish in the gap sent a notification nobody
            // heard, so every long-poll re-reads its group once.
            wake_after_listen(Wake::All);
        }
        // Keep the client alive (dropping it closes the connection) until the driver ends.
        let _ = (&mut done_rx).await;
        drop(client);
        r
    };
    let drive = async move {
        loop {
            match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if let Some((v, g)) = n.payload().split_once(':') {
                        wake(Wake::Group(g.to_owned(), v.parse().unwrap_or(0)));
                    }
                }
                // Notices and other messages: nothing to do.
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    let _ = done_tx.send(());
                    return Err(e);
                }
                None => {
                    let _ = done_tx.send(());
                    return Ok(());
                }
            }
        }
    };
    let (l, d) = tokio::join!(listen, drive);
    l?;
    d
}

/// Writes an audit record inside the caller's transaction. Its group (what a group-scoped
/// viewer may see) is named in the detail, else the gateway's group when the target is a
/// gateway, else the target when it names a group.
async fn audit(
    t: &Transaction<'_>,
    actor: &str,
    action: &str,
    target: &str,
    detail: serde_json::Value,
) -> Result<(), StoreError> {
    let group = detail
        .get("group")
        .and_then(|g| g.as_str())
        .map(str::to_owned);
    t.execute(
        "INSERT INTO audit (at_ms, actor, action, target, detail, group_name) VALUES ($1, $2, $3, $4, $5,
             COALESCE($6, (SELECT group_name FROM gateways WHERE id = $4),
                      CASE WHEN $3 NOT LIKE 'operator.%' THEN (SELECT name FROM groups WHERE name = $4) END))",
        &[
            &(crate::server::unix_now_ms() as i64),
            &actor,
            &action,
            &target,
            &detail.to_string(),
            &group,
        ],
    )
    .await
    .map_err(pg_err)?;
    Ok(())
}

/// Wakes the group's long-polls on every replica (delivered when the transaction commits).
async fn notify(t: &Transaction<'_>, group: &str, version: u64) -> Result<(), StoreError> {
    t.execute(
        "SELECT pg_notify($1, $2)",
        &[&CHANNEL, &format!("{version}:{group}")],
    )
    .await
    .map_err(pg_err)?;
    Ok(())
}

/// Row-locks the group (rollout changes and publishes of one group serialise) and returns its
/// assigned version; `NotFound` when there is no such group.
async fn lock_group(t: &Transaction<'_>, group: &str) -> Result<u64, StoreError> {
    t.query_opt(
        "SELECT assigned_version FROM groups WHERE name = $1 FOR UPDATE",
        &[&group],
    )
    .await
    .map_err(pg_err)?
    .map(|r| r.get::<_, i64>(0) as u64)
    .ok_or_else(|| StoreError::NotFound(format!("no group {group:?}")))
}

fn rollout_row(r: &tokio_postgres::Row) -> Rollout {
    Rollout {
        id: r.get::<_, i64>(0) as u64,
        group: r.get(1),
        version: r.get::<_, i64>(2) as u64,
        base_version: r.get::<_, i64>(3) as u64,
        canary_percent: r.get::<_, i64>(4).clamp(0, 100) as u8,
        canary_labels: labels_parse(r.get(5)),
        state: r.get(6),
        rollback_version: r.get::<_, Option<i64>>(7).map(|v| v as u64),
        started_by: r.get(8),
        started_at_ms: r.get::<_, i64>(9) as u64,
        updated_by: r.get(10),
        updated_at_ms: r.get::<_, i64>(11) as u64,
    }
}

async fn latest_rollout(t: &Transaction<'_>, group: &str) -> Result<Option<Rollout>, StoreError> {
    Ok(t.query_opt(
        &format!(
            "SELECT {ROLLOUT_COLS} FROM rollouts WHERE group_name = $1 ORDER BY id DESC LIMIT 1"
        ),
        &[&group],
    )
    .await
    .map_err(pg_err)?
    .as_ref()
    .map(rollout_row))
}

/// Rollouts (see [`super::rollout`] for the rules) and group-filtered audit.
impl Postgres {
    pub async fn audit_for(
        &self,
        limit: u64,
        group: Option<String>,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        pg_tx!(self, |t| {
            let rows = t
                .query(
                    "SELECT id, at_ms, actor, action, target, detail FROM audit
                     WHERE $2::text IS NULL OR group_name = $2 ORDER BY id DESC LIMIT $1",
                    &[&(limit.min(i64::MAX as u64) as i64), &group],
                )
                .await
                .map_err(pg_err)?;
            Ok(rows
                .iter()
                .map(|r| AuditEntry {
                    id: r.get::<_, i64>(0) as u64,
                    at_ms: r.get::<_, i64>(1) as u64,
                    actor: r.get(2),
                    action: r.get(3),
                    target: r.get(4),
                    detail: serde_json::from_str(r.get(5)).unwrap_or(serde_json::Value::Null),
                })
                .collect())
        })
    }

    pub async fn rollout_state(&self, group: String) -> Result<(u64, Option<Rollout>), StoreError> {
        pg_tx!(self, |t| {
            let v = t
                .query_opt(
                    "SELECT assigned_version FROM groups WHERE name = $1",
                    &[&group],
                )
                .await
                .map_err(pg_err)?
                .map(|r| r.get::<_, i64>(0) as u64)
                .ok_or_else(|| StoreError::NotFound(format!("no group {group:?}")))?;
            Ok((v, latest_rollout(t, &group).await?))
        })
    }

    pub async fn active_rollouts(&self) -> Result<Vec<Rollout>, StoreError> {
        pg_tx!(self, |t| {
            let rows = t
                .query(
                    &format!(
                        "SELECT {ROLLOUT_COLS} FROM rollouts r WHERE state = 'canary'
                         AND id = (SELECT MAX(id) FROM rollouts WHERE group_name = r.group_name)"
                    ),
                    &[],
                )
                .await
                .map_err(pg_err)?;
            Ok(rows.iter().map(rollout_row).collect())
        })
    }

    pub async fn version(
        &self,
        group: String,
        version: u64,
    ) -> Result<Option<(String, String)>, StoreError> {
        pg_tx!(self, |t| {
            Ok(t
                .query_opt(
                    "SELECT yaml, signed_bundle FROM config_versions WHERE group_name = $1 AND version = $2",
                    &[&group, &(version as i64)],
                )
                .await
                .map_err(pg_err)?
                .map(|r| (r.get(0), r.get(1))))
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
        let now = crate::server::unix_now_ms() as i64;
        pg_tx!(self, |t| {
            let base = lock_group(t, &group).await?;
            super::rollout::check_start(
                &group,
                base,
                version,
                latest_rollout(t, &group).await?.as_ref(),
            )?;
            let exists = t
                .query_opt(
                    "SELECT 1 FROM config_versions WHERE group_name = $1 AND version = $2",
                    &[&group, &(version as i64)],
                )
                .await
                .map_err(pg_err)?
                .is_some();
            if !exists {
                return Err(StoreError::NotFound(format!(
                    "group {group:?} has no version {version}"
                )));
            }
            let row = t
                .query_one(
                    &format!(
                        "INSERT INTO rollouts (group_name, version, base_version, canary_percent, canary_labels, state,
                                               started_by, started_at_ms, updated_by, updated_at_ms)
                         VALUES ($1, $2, $3, $4, $5, 'canary', $6, $7, $6, $7) RETURNING {ROLLOUT_COLS}"
                    ),
                    &[&group, &(version as i64), &(base as i64), &(canary_percent as i64), &labels_json(&canary_labels), &actor, &now],
                )
                .await
                .map_err(pg_err)?;
            audit(
                t,
                &actor,
                "rollout.start",
                &group,
                serde_json::json!({"group": group, "version": version, "base_version": base,
                                   "canary_percent": canary_percent, "canary_labels": canary_labels}),
            )
            .await?;
            notify(t, &group, version).await?;
            Ok(rollout_row(&row))
        })
    }

    pub async fn rollout_promote(
        &self,
        group: String,
        actor: String,
    ) -> Result<Rollout, StoreError> {
        let now = crate::server::unix_now_ms() as i64;
        pg_tx!(self, |t| {
            lock_group(t, &group).await?;
            let r = super::rollout::in_progress(&group, latest_rollout(t, &group).await?)?;
            let row = t
                .query_one(
                    &format!(
                        "UPDATE rollouts SET state = 'promoted', updated_by = $2, updated_at_ms = $3
                         WHERE id = $1 RETURNING {ROLLOUT_COLS}"
                    ),
                    &[&(r.id as i64), &actor, &now],
                )
                .await
                .map_err(pg_err)?;
            t.execute(
                "UPDATE groups SET assigned_version = $2 WHERE name = $1",
                &[&group, &(r.version as i64)],
            )
            .await
            .map_err(pg_err)?;
            audit(
                t,
                &actor,
                "rollout.promote",
                &group,
                serde_json::json!({"group": group, "version": r.version, "base_version": r.base_version}),
            )
            .await?;
            notify(t, &group, r.version).await?;
            Ok(rollout_row(&row))
        })
    }

    pub async fn rollout_rollback(
        &self,
        rollout_id: u64,
        v: NewVersion,
    ) -> Result<Rollout, StoreError> {
        let now = crate::server::unix_now_ms() as i64;
        pg_tx!(self, |t| {
            lock_group(t, &v.group).await?;
            let r = super::rollout::in_progress(&v.group, latest_rollout(t, &v.group).await?)?;
            if r.id != rollout_id {
                return Err(StoreError::State(
                    "the rollout changed meanwhile; retry".into(),
                ));
            }
            t.execute(
                "INSERT INTO config_versions (group_name, version, yaml, sha256, created_at_ms, created_by, signed_bundle)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[&v.group, &(v.version as i64), &v.yaml, &v.sha256, &(v.created_at_ms as i64), &v.created_by, &v.signed_bundle],
            )
            .await
            .map_err(|e| {
                if unique_violation(&e) {
                    StoreError::Conflict(format!("version {} of {:?} already exists", v.version, v.group))
                } else {
                    pg_err(e)
                }
            })?;
            t.execute(
                "UPDATE groups SET assigned_version = $2 WHERE name = $1",
                &[&v.group, &(v.version as i64)],
            )
            .await
            .map_err(pg_err)?;
            let row = t
                .query_one(
                    &format!(
                        "UPDATE rollouts SET state = 'rolled_back', rollback_version = $2, updated_by = $3,
                                updated_at_ms = $4 WHERE id = $1 RETURNING {ROLLOUT_COLS}"
                    ),
                    &[&(r.id as i64), &(v.version as i64), &v.created_by, &now],
                )
                .await
                .map_err(pg_err)?;
            audit(
                t,
                &v.created_by,
                "rollout.rollback",
                &v.group,
                serde_json::json!({"group": v.group, "version": r.version, "base_version": r.base_version,
                                   "rollback_version": v.version, "sha256": v.sha256}),
            )
            .await?;
            notify(t, &v.group, v.version).await?;
            Ok(rollout_row(&row))
        })
    }
}

/// Applies pending migrations under a transaction-scoped advisory lock (replicas starting
/// together serialise here; the second sees the first's versions and applies nothing).
async fn migrate(c: &mut Client) -> Result<i64, StoreError> {
    let tx = c.transaction().await.map_err(pg_err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg_err)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
    )
    .await
    .map_err(pg_err)?;
    let current: i64 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0)::BIGINT FROM schema_migrations",
            &[],
        )
        .await
        .map_err(pg_err)?
        .get(0);
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
        tx.batch_execute(sql).await.map_err(pg_err)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
            &[&version, &(crate::server::unix_now() as i64)],
        )
        .await
        .map_err(pg_err)?;
        tracing::info!(schema.version = version, "control plane database migrated");
    }
    tx.commit().await.map_err(pg_err)?;
    Ok(supported)
}
