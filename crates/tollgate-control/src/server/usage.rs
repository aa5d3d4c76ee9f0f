//! Fleet usage and audit events: ingest from gateways, queries for the API, CLI and dashboard.
//!
//! Ingest (`POST /v1/gateway/usage`, gateway credential): one [`UsageBatch`] per call. In one
//! transaction the server inserts the `(gateway, seq)` row into `usage_batches` and, only when
//! that row is new, adds the batch's rows into `usage_minutes` (upsert: counters add up) and its
//! events into `usage_events`. A batch sent again (a retry after a lost answer, or a replay
//! from the gateway's disk buffer after a crash) finds its row and changes nothing: it is
//! acknowledged with `duplicate: true`, so the gateway deletes it.
//!
//! Queries (`GET /v1/usage`, `GET /v1/audit/events`, operator tokens): filter by group,
//! gateway, API, consumer, endpoint and time range; `step` buckets the minutes and `by`
//! splits the series by one dimension. Latency percentiles are computed from the summed
//! fixed buckets ([`tollgate_proxy::usage::quantile_ms`]). A group-scoped viewer token is
//! always filtered to its own group; asking for another group is 403.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use tollgate_proxy::usage::{BUCKETS, EventRow, LimitRow, UsageRow, quantile_ms};

use super::AppState;
use super::api::{Fail, gateway, operator, require_group};
use super::store::{Operator, Store, StoreError};
use crate::protocol::{UsageAck, UsageBatch};

/// Most rows (and events) one batch may carry; the agent splits larger drains.
pub const MAX_BATCH_ROWS: usize = 10_000;
/// Longest name (API, consumer, endpoint, reason) stored; longer ones are cut.
const MAX_NAME: usize = 256;
/// Most points one usage query returns.
const MAX_POINTS: usize = 50_000;

/// A dimension to split usage by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageDim {
    Group,
    Gateway,
    Api,
    Consumer,
    Endpoint,
    StatusClass,
}

impl UsageDim {
    fn column(self) -> &'static str {
        match self {
            UsageDim::Group => "group_name",
            UsageDim::Gateway => "gateway_id",
            UsageDim::Api => "api",
            UsageDim::Consumer => "consumer",
            UsageDim::Endpoint => "endpoint",
            UsageDim::StatusClass => "status_class",
        }
    }
}

/// A usage query (see the module docs). Times are unix seconds, `[from, to)`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageQuery {
    pub group: Option<String>,
    pub gateway: Option<String>,
    pub api: Option<String>,
    pub consumer: Option<String>,
    pub endpoint: Option<String>,
    pub from: u64,
    pub to: u64,
    /// Bucket width in seconds (rounded up to whole minutes); 0 = one bucket for the range.
    pub step: u64,
    pub by: Option<UsageDim>,
}

/// One bucket of one series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsagePoint {
    /// Bucket start (unix seconds).
    pub t: u64,
    /// The `by` dimension's value ("" without `by`).
    pub key: String,
    pub requests: u64,
    pub errors: u64,
    pub limited: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub cost: u64,
    pub latency_ms_sum: u64,
    /// Summed latency histogram ([`tollgate_proxy::usage::LATENCY_BOUNDS_MS`], then +Inf).
    pub latency_buckets: Vec<u64>,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
}

/// An audit-event query. Times are unix seconds; events overlapping `[from, to)` match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventQuery {
    pub group: Option<String>,
    pub gateway: Option<String>,
    pub kind: Option<String>,
    pub api: Option<String>,
    pub consumer: Option<String>,
    pub from: u64,
    pub to: u64,
    /// At most this many (newest first).
    pub limit: u64,
}

/// A fleet audit event: `count` occurrences in one minute on one gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageEvent {
    pub gateway: String,
    pub group: String,
    pub minute: u64,
    /// `deny`, `limit`, `dlp`, `report` or `config_applied`.
    pub kind: String,
    pub api: String,
    pub consumer: String,
    pub reason: String,
    pub count: u64,
    pub first_at_ms: u64,
    pub last_at_ms: u64,
}

/// Quota usage of one limit key in one bucket: the highest `used` reported in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitPoint {
    pub t: u64,
    pub group: String,
    /// Reporting gateway (a `global` limit is one shared counter: every gateway reports it).
    pub gateway: String,
    pub api: String,
    pub limit: String,
    pub key: String,
    pub scope: String,
    pub used: u64,
    pub quota: u64,
    pub window_secs: u64,
}

/// A query parameter value, bound per back end.
#[derive(Debug, Clone)]
pub(super) enum P {
    I(i64),
    S(String),
    /// NULL (text columns).
    N,
}

/// A SQL text with `{n}` placeholders rendered for the back end (`?n` or `$n`).
pub(super) fn render(sql: &str, pg: bool) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let Some(j) = rest[i..].find('}') else {
            break;
        };
        out.push(if pg { '$' } else { '?' });
        out.push_str(&rest[i + 1..i + j]);
        rest = &rest[i + j + 1..];
    }
    out.push_str(rest);
    out
}

const SUMS: &str = "CAST(SUM(requests) AS BIGINT), CAST(SUM(errors) AS BIGINT), \
    CAST(SUM(limited) AS BIGINT), CAST(SUM(bytes_in) AS BIGINT), CAST(SUM(bytes_out) AS BIGINT), \
    CAST(SUM(cost) AS BIGINT), CAST(SUM(latency_ms_sum) AS BIGINT), \
    CAST(SUM(b0) AS BIGINT), CAST(SUM(b1) AS BIGINT), CAST(SUM(b2) AS BIGINT), \
    CAST(SUM(b3) AS BIGINT), CAST(SUM(b4) AS BIGINT), CAST(SUM(b5) AS BIGINT), \
    CAST(SUM(b6) AS BIGINT), CAST(SUM(b7) AS BIGINT), CAST(SUM(b8) AS BIGINT), \
    CAST(SUM(b9) AS BIGINT), CAST(SUM(b10) AS BIGINT), CAST(SUM(b11) AS BIGINT)";

/// The usage query as SQL with `{n}` placeholders, and its parameters.
fn usage_sql(q: &UsageQuery) -> (String, Vec<P>) {
    let from = q.from / 60 * 60;
    let to = q.to.max(from + 1);
    let step = if q.step == 0 {
        (to - from).div_ceil(60) * 60
    } else {
        q.step.div_ceil(60) * 60
    }
    .max(60);
    let mut params = vec![P::I(from as i64), P::I(to as i64), P::I(step as i64)];
    let mut wh = String::from("minute >= {1} AND minute < {2}");
    for (col, v) in [
        ("group_name", &q.group),
        ("gateway_id", &q.gateway),
        ("api", &q.api),
        ("consumer", &q.consumer),
        ("endpoint", &q.endpoint),
    ] {
        if let Some(v) = v {
            params.push(P::S(v.clone()));
            wh.push_str(&format!(" AND {col} = {{{}}}", params.len()));
        }
    }
    let key = q.by.map_or("''", UsageDim::column);
    let group = match q.by {
        Some(d) => format!("1, {}", d.column()),
        None => "1".to_owned(),
    };
    let sql = format!(
        "SELECT {{1}} + ((minute - {{1}}) / {{3}}) * {{3}} AS t, {key} AS k, {SUMS}
         FROM usage_minutes WHERE {wh} GROUP BY {group} ORDER BY 1, 3 DESC, 2 LIMIT {MAX_POINTS}"
    );
    (sql, params)
}

fn point(t: i64, key: String, v: &[i64]) -> UsagePoint {
    let u = |i: usize| unsigned(v.get(i).copied().unwrap_or(0));
    let buckets: Vec<u64> = (0..BUCKETS).map(|i| u(7 + i)).collect();
    UsagePoint {
        t: unsigned(t),
        key,
        requests: u(0),
        errors: u(1),
        limited: u(2),
        bytes_in: u(3),
        bytes_out: u(4),
        cost: u(5),
        latency_ms_sum: u(6),
        p50_ms: quantile_ms(&buckets, 0.50),
        p90_ms: quantile_ms(&buckets, 0.90),
        p99_ms: quantile_ms(&buckets, 0.99),
        latency_buckets: buckets,
    }
}

/// Bucket start expression, range and filter clause shared by the usage and limit queries.
fn bucketed(q: &UsageQuery) -> (String, Vec<P>) {
    let (sql, params) = usage_sql(q);
    let start = sql.find("WHERE ").map_or(0, |i| i + 6);
    let end = sql.find(" GROUP BY").unwrap_or(sql.len());
    (sql[start..end].to_owned(), params)
}

fn limits_sql(q: &UsageQuery) -> (String, Vec<P>) {
    let (wh, params) = bucketed(q);
    let sql = format!(
        "SELECT {{1}} + ((minute - {{1}}) / {{3}}) * {{3}} AS t, group_name, gateway_id, api, limit_name,
                limit_key, MAX(scope), CAST(MAX(used) AS BIGINT), CAST(MAX(quota) AS BIGINT),
                CAST(MAX(window_secs) AS BIGINT)
         FROM usage_limits WHERE {wh}
         GROUP BY 1, group_name, gateway_id, api, limit_name, limit_key
         ORDER BY 1, api, limit_name, limit_key, gateway_id LIMIT {MAX_POINTS}"
    );
    (sql, params)
}

fn events_sql(q: &EventQuery) -> (String, Vec<P>) {
    let mut params = vec![
        P::I((q.from.saturating_mul(1000)) as i64),
        P::I((q.to.saturating_mul(1000)).min(i64::MAX as u64) as i64),
    ];
    let mut wh = String::from("last_at_ms >= {1} AND first_at_ms < {2}");
    for (col, v) in [
        ("group_name", &q.group),
        ("gateway_id", &q.gateway),
        ("kind", &q.kind),
        ("api", &q.api),
        ("consumer", &q.consumer),
    ] {
        if let Some(v) = v {
            params.push(P::S(v.clone()));
            wh.push_str(&format!(" AND {col} = {{{}}}", params.len()));
        }
    }
    let limit = q.limit.clamp(1, 10_000);
    let sql = format!(
        "SELECT gateway_id, group_name, minute, kind, api, consumer, reason, count, first_at_ms, last_at_ms
         FROM usage_events WHERE {wh} ORDER BY last_at_ms DESC, id DESC LIMIT {limit}"
    );
    (sql, params)
}

fn cut(s: &str) -> &str {
    if s.len() <= MAX_NAME {
        return s;
    }
    let mut end = MAX_NAME;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

const UPSERT_ROW: &str = "INSERT INTO usage_minutes (minute, group_name, gateway_id, api, consumer, endpoint, status_class,
        requests, errors, limited, bytes_in, bytes_out, cost, latency_ms_sum,
        b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11)
     VALUES ({1}, {2}, {3}, {4}, {5}, {6}, {7}, {8}, {9}, {10}, {11}, {12}, {13}, {14},
        {15}, {16}, {17}, {18}, {19}, {20}, {21}, {22}, {23}, {24}, {25}, {26})
     ON CONFLICT (gateway_id, minute, api, consumer, endpoint, status_class) DO UPDATE SET
        requests = usage_minutes.requests + excluded.requests,
        errors = usage_minutes.errors + excluded.errors,
        limited = usage_minutes.limited + excluded.limited,
        bytes_in = usage_minutes.bytes_in + excluded.bytes_in,
        bytes_out = usage_minutes.bytes_out + excluded.bytes_out,
        cost = usage_minutes.cost + excluded.cost,
        latency_ms_sum = usage_minutes.latency_ms_sum + excluded.latency_ms_sum,
        b0 = usage_minutes.b0 + excluded.b0, b1 = usage_minutes.b1 + excluded.b1,
        b2 = usage_minutes.b2 + excluded.b2, b3 = usage_minutes.b3 + excluded.b3,
        b4 = usage_minutes.b4 + excluded.b4, b5 = usage_minutes.b5 + excluded.b5,
        b6 = usage_minutes.b6 + excluded.b6, b7 = usage_minutes.b7 + excluded.b7,
        b8 = usage_minutes.b8 + excluded.b8, b9 = usage_minutes.b9 + excluded.b9,
        b10 = usage_minutes.b10 + excluded.b10, b11 = usage_minutes.b11 + excluded.b11";

const UPSERT_EVENT: &str = "INSERT INTO usage_events (minute, group_name, gateway_id, kind, api, consumer, reason, count, first_at_ms, last_at_ms)
     VALUES ({1}, {2}, {3}, {4}, {5}, {6}, {7}, {8}, {9}, {10})
     ON CONFLICT (gateway_id, minute, kind, api, consumer, reason) DO UPDATE SET
        count = usage_events.count + excluded.count,
        first_at_ms = LEAST_FN(usage_events.first_at_ms, excluded.first_at_ms),
        last_at_ms = GREATEST_FN(usage_events.last_at_ms, excluded.last_at_ms)";

/// `LEAST`/`GREATEST` are PostgreSQL; SQLite's scalar `MIN`/`MAX` take several arguments.
fn upsert_event_sql(pg: bool) -> String {
    let (least, greatest) = if pg {
        ("LEAST", "GREATEST")
    } else {
        ("MIN", "MAX")
    };
    render(UPSERT_EVENT, pg)
        .replace("LEAST_FN", least)
        .replace("GREATEST_FN", greatest)
}

const UPSERT_LIMIT: &str = "INSERT INTO usage_limits (minute, group_name, gateway_id, api, limit_name, limit_key, scope, used, quota, window_secs)
     VALUES ({1}, {2}, {3}, {4}, {5}, {6}, {7}, {8}, {9}, {10})
     ON CONFLICT (gateway_id, minute, api, limit_name, limit_key) DO UPDATE SET
        used = GREATEST_FN(usage_limits.used, excluded.used),
        quota = excluded.quota, window_secs = excluded.window_secs, scope = excluded.scope";

fn upsert_limit_sql(pg: bool) -> String {
    render(UPSERT_LIMIT, pg).replace("GREATEST_FN", if pg { "GREATEST" } else { "MAX" })
}

fn limit_params(gw: &str, group: &str, l: &LimitRow) -> Vec<P> {
    let i = |v: u64| P::I(v.min(i64::MAX as u64) as i64);
    vec![
        i(l.minute / 60 * 60),
        P::S(group.to_owned()),
        P::S(gw.to_owned()),
        P::S(cut(&l.api).to_owned()),
        P::S(cut(&l.limit).to_owned()),
        P::S(cut(&l.key).to_owned()),
        P::S(cut(&l.scope).to_owned()),
        i(l.used),
        i(l.quota),
        i(l.window_secs),
    ]
}

fn row_params(gw: &str, group: &str, r: &UsageRow) -> Vec<P> {
    let i = |v: u64| P::I(v.min(i64::MAX as u64) as i64);
    let mut p = vec![
        i(r.minute / 60 * 60),
        P::S(group.to_owned()),
        P::S(gw.to_owned()),
        P::S(cut(&r.api).to_owned()),
        P::S(cut(&r.consumer).to_owned()),
        P::S(cut(&r.endpoint).to_owned()),
        P::S(cut(&r.status_class).to_owned()),
        i(r.count),
        i(r.errors),
        i(r.limited),
        i(r.bytes_in),
        i(r.bytes_out),
        i(r.cost),
        i(r.latency_ms_sum),
    ];
    for b in 0..BUCKETS {
        p.push(i(r.latency_buckets.get(b).copied().unwrap_or(0)));
    }
    p
}

fn event_params(gw: &str, group: &str, e: &EventRow) -> Vec<P> {
    let i = |v: u64| P::I(v.min(i64::MAX as u64) as i64);
    vec![
        i(e.minute / 60 * 60),
        P::S(group.to_owned()),
        P::S(gw.to_owned()),
        P::S(cut(&e.kind).to_owned()),
        P::S(cut(&e.api).to_owned()),
        P::S(cut(&e.consumer).to_owned()),
        P::S(cut(&e.reason).to_owned()),
        i(e.count),
        i(e.first_at_ms),
        i(e.last_at_ms),
    ]
}

pub(super) fn sqlite_params(p: &[P]) -> Vec<rusqlite::types::Value> {
    p.iter()
        .map(|p| match p {
            P::I(i) => rusqlite::types::Value::Integer(*i),
            P::S(s) => rusqlite::types::Value::Text(s.clone()),
            P::N => rusqlite::types::Value::Null,
        })
        .collect()
}

pub(super) fn pg_params(p: &[P]) -> Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>> {
    p.iter()
        .map(|p| -> Box<dyn tokio_postgres::types::ToSql + Sync + Send> {
            match p {
                P::I(i) => Box::new(*i),
                P::S(s) => Box::new(s.clone()),
                P::N => Box::new(None::<String>),
            }
        })
        .collect()
}

pub(super) fn pg_refs(
    b: &[Box<dyn tokio_postgres::types::ToSql + Sync + Send>],
) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
    b.iter()
        .map(|b| b.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect()
}

use super::pg::pg_err;

impl Store {
    /// Stores one batch exactly once. `Ok(true)` = it had been stored before (nothing added).
    pub async fn ingest_usage(
        &self,
        gateway_id: String,
        group: String,
        batch: UsageBatch,
    ) -> Result<bool, StoreError> {
        let now = crate::server::unix_now_ms() as i64;
        let rows: Vec<Vec<P>> = batch
            .rows
            .iter()
            .map(|r| row_params(&gateway_id, &group, r))
            .collect();
        let events: Vec<Vec<P>> = batch
            .events
            .iter()
            .map(|e| event_params(&gateway_id, &group, e))
            .collect();
        let limits: Vec<Vec<P>> = batch
            .limits
            .iter()
            .map(|l| limit_params(&gateway_id, &group, l))
            .collect();
        let head = vec![
            P::S(gateway_id.clone()),
            P::I(batch.seq.min(i64::MAX as u64) as i64),
            P::I(now),
            P::I(rows.len() as i64),
            P::I(events.len() as i64),
        ];
        const MARK: &str =
            "INSERT INTO usage_batches (gateway_id, seq, received_at_ms, row_count, event_count)
             VALUES ({1}, {2}, {3}, {4}, {5}) ON CONFLICT (gateway_id, seq) DO NOTHING";
        match self {
            Store::Sqlite(s) => {
                s.run(move |c| {
                    let tx = c.transaction()?;
                    let fresh = tx.execute(
                        &render(MARK, false),
                        rusqlite::params_from_iter(sqlite_params(&head)),
                    )?;
                    if fresh == 0 {
                        return Ok(true);
                    }
                    {
                        let mut st = tx.prepare_cached(&render(UPSERT_ROW, false))?;
                        for r in &rows {
                            st.execute(rusqlite::params_from_iter(sqlite_params(r)))?;
                        }
                        let mut st = tx.prepare_cached(&upsert_event_sql(false))?;
                        for e in &events {
                            st.execute(rusqlite::params_from_iter(sqlite_params(e)))?;
                        }
                        let mut st = tx.prepare_cached(&upsert_limit_sql(false))?;
                        for l in &limits {
                            st.execute(rusqlite::params_from_iter(sqlite_params(l)))?;
                        }
                    }
                    tx.commit()?;
                    Ok(false)
                })
                .await
            }
            Store::Postgres(p) => {
                let mut guard = p.client().await?;
                let c = guard
                    .as_mut()
                    .ok_or_else(|| StoreError::Backend("no connection".into()))?;
                let tx = c.transaction().await.map_err(pg_err)?;
                let hb = pg_params(&head);
                let fresh = tx
                    .execute(&render(MARK, true), &pg_refs(&hb))
                    .await
                    .map_err(pg_err)?;
                if fresh == 0 {
                    // A concurrent replay on another replica waits on the row lock and then
                    // sees the committed row: exactly one of them adds the rows.
                    return Ok(true);
                }
                let st = tx
                    .prepare(&render(UPSERT_ROW, true))
                    .await
                    .map_err(pg_err)?;
                for r in &rows {
                    let b = pg_params(r);
                    tx.execute(&st, &pg_refs(&b)).await.map_err(pg_err)?;
                }
                let st = tx.prepare(&upsert_event_sql(true)).await.map_err(pg_err)?;
                for e in &events {
                    let b = pg_params(e);
                    tx.execute(&st, &pg_refs(&b)).await.map_err(pg_err)?;
                }
                let st = tx.prepare(&upsert_limit_sql(true)).await.map_err(pg_err)?;
                for l in &limits {
                    let b = pg_params(l);
                    tx.execute(&st, &pg_refs(&b)).await.map_err(pg_err)?;
                }
                tx.commit().await.map_err(pg_err)?;
                Ok(false)
            }
        }
    }

    /// Runs one read query on either back end and maps each row with `map` (one mapping for
    /// both: [`Cols`] reads a column from a SQLite or a PostgreSQL row alike).
    async fn select<T, F>(&self, sql: String, params: Vec<P>, map: F) -> Result<Vec<T>, StoreError>
    where
        T: Send + 'static,
        F: Fn(&dyn Cols) -> Result<T, StoreError> + Send + 'static,
    {
        match self {
            Store::Sqlite(s) => {
                s.run(move |c| {
                    let mut st = c.prepare(&render(&sql, false))?;
                    let mut rows = st.query(rusqlite::params_from_iter(sqlite_params(&params)))?;
                    let mut out = Vec::new();
                    while let Some(r) = rows.next()? {
                        out.push(map(r)?);
                    }
                    Ok(out)
                })
                .await
            }
            Store::Postgres(p) => {
                let guard = p.client().await?;
                let c = guard
                    .as_ref()
                    .ok_or_else(|| StoreError::Backend("no connection".into()))?;
                let b = pg_params(&params);
                let rows = c
                    .query(&render(&sql, true), &pg_refs(&b))
                    .await
                    .map_err(pg_err)?;
                rows.iter().map(|r| map(r)).collect()
            }
        }
    }

    /// Usage points, ordered by bucket start, then requests (most first).
    pub async fn usage(&self, q: UsageQuery) -> Result<Vec<UsagePoint>, StoreError> {
        let (sql, params) = usage_sql(&q);
        let ncols = 2 + 7 + BUCKETS;
        self.select(sql, params, move |r| {
            let v = (2..ncols)
                .map(|i| r.int(i))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(point(r.int(0)?, r.text(1)?, &v))
        })
        .await
    }

    /// Quota usage against each limit, per bucket and limit key (highest `used` in the bucket).
    /// `q.by`, `q.consumer` and `q.endpoint` do not apply.
    pub async fn usage_limits(&self, q: UsageQuery) -> Result<Vec<LimitPoint>, StoreError> {
        let q = UsageQuery {
            consumer: None,
            endpoint: None,
            by: None,
            ..q
        };
        let (sql, params) = limits_sql(&q);
        self.select(sql, params, |r| {
            Ok(LimitPoint {
                t: unsigned(r.int(0)?),
                group: r.text(1)?,
                gateway: r.text(2)?,
                api: r.text(3)?,
                limit: r.text(4)?,
                key: r.text(5)?,
                scope: r.text(6)?,
                used: unsigned(r.int(7)?),
                quota: unsigned(r.int(8)?),
                window_secs: unsigned(r.int(9)?),
            })
        })
        .await
    }

    /// Fleet audit events, newest first.
    pub async fn usage_events(&self, q: EventQuery) -> Result<Vec<UsageEvent>, StoreError> {
        let (sql, params) = events_sql(&q);
        self.select(sql, params, |r| {
            Ok(UsageEvent {
                gateway: r.text(0)?,
                group: r.text(1)?,
                minute: unsigned(r.int(2)?),
                kind: r.text(3)?,
                api: r.text(4)?,
                consumer: r.text(5)?,
                reason: r.text(6)?,
                count: unsigned(r.int(7)?),
                first_at_ms: unsigned(r.int(8)?),
                last_at_ms: unsigned(r.int(9)?),
            })
        })
        .await
    }
}

// ---- HTTP ----

type St = State<Arc<AppState>>;

pub(super) fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/gateway/usage", post(ingest))
        .route("/v1/usage", get(usage))
        .route("/v1/usage/limits", get(limits))
        .route("/v1/audit/events", get(events))
}

async fn ingest(
    State(state): St,
    headers: HeaderMap,
    body: Result<Json<UsageBatch>, JsonRejection>,
) -> Result<Json<UsageAck>, Fail> {
    let gw = gateway(&state, &headers).await?;
    let Json(batch) = body.map_err(|e| Fail::new(e.status(), "bad_request", e.body_text()))?;
    if batch.rows.len() > MAX_BATCH_ROWS
        || batch.events.len() > MAX_BATCH_ROWS
        || batch.limits.len() > MAX_BATCH_ROWS
    {
        return Err(Fail::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "bad_request",
            format!("a usage batch carries at most {MAX_BATCH_ROWS} rows and events"),
        ));
    }
    if let Some(r) = batch
        .rows
        .iter()
        .find(|r| r.latency_buckets.len() > BUCKETS)
    {
        return Err(Fail::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!(
                "latency_buckets has {} entries, at most {BUCKETS}",
                r.latency_buckets.len()
            ),
        ));
    }
    let seq = batch.seq;
    let (rows, events) = (batch.rows.len(), batch.events.len());
    let duplicate = state
        .store
        .ingest_usage(gw.id.clone(), gw.group.clone(), batch)
        .await?;
    tracing::debug!(gateway.id = %gw.id, usage.seq = seq, usage.rows = rows, usage.events = events, usage.duplicate = duplicate, "usage batch received");
    Ok(Json(UsageAck { seq, duplicate }))
}

/// Query string of `GET /v1/usage`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageParams {
    group: Option<String>,
    gateway: Option<String>,
    api: Option<String>,
    consumer: Option<String>,
    endpoint: Option<String>,
    /// Unix seconds; default: `to` minus one hour.
    from: Option<u64>,
    /// Unix seconds; default: now.
    to: Option<u64>,
    /// Seconds; default 60. 0 = one bucket for the whole range.
    step: Option<u64>,
    by: Option<UsageDim>,
    /// `json` (default) or `csv` (also chosen by `Accept: text/csv`).
    format: Option<String>,
}

/// A result row of either back end, as the usage queries read it.
trait Cols {
    /// An integer column; SQL NULL (an empty aggregate) reads as 0.
    fn int(&self, i: usize) -> Result<i64, StoreError>;
    fn text(&self, i: usize) -> Result<String, StoreError>;
}

impl Cols for rusqlite::Row<'_> {
    fn int(&self, i: usize) -> Result<i64, StoreError> {
        Ok(self.get::<_, Option<i64>>(i)?.unwrap_or(0))
    }
    fn text(&self, i: usize) -> Result<String, StoreError> {
        Ok(self.get(i)?)
    }
}

impl Cols for tokio_postgres::Row {
    fn int(&self, i: usize) -> Result<i64, StoreError> {
        Ok(self
            .try_get::<_, Option<i64>>(i)
            .map_err(pg_err)?
            .unwrap_or(0))
    }
    fn text(&self, i: usize) -> Result<String, StoreError> {
        self.try_get(i).map_err(pg_err)
    }
}

/// Counters and times are stored signed; a negative value (never written) reads as 0.
fn unsigned(v: i64) -> u64 {
    v.max(0) as u64
}

/// The group a query is limited to: a scoped viewer always gets its own group, and asking
/// for another one is 403.
fn scoped_group(op: &Operator, asked: Option<String>) -> Result<Option<String>, Fail> {
    match (op.visible_group(), asked) {
        (Some(scope), Some(g)) => {
            require_group(op, &g)?;
            debug_assert_eq!(scope, g);
            Ok(Some(g))
        }
        (Some(scope), None) => Ok(Some(scope.to_owned())),
        (None, asked) => Ok(asked),
    }
}

fn range(from: Option<u64>, to: Option<u64>) -> (u64, u64) {
    let to = to.unwrap_or_else(|| crate::server::unix_now() + 60);
    let from = from.unwrap_or_else(|| to.saturating_sub(3600));
    (from, to)
}

fn wants_csv(format: Option<&str>, headers: &HeaderMap) -> Result<bool, Fail> {
    match format {
        Some("csv") => Ok(true),
        Some("json") => Ok(false),
        Some(other) => Err(Fail::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("format {other:?}: use json or csv"),
        )),
        None => Ok(headers
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/csv"))),
    }
}

async fn usage(
    State(state): St,
    headers: HeaderMap,
    q: Result<Query<UsageParams>, QueryRejection>,
) -> Result<Response, Fail> {
    let op = operator(&state, &headers).await?;
    let Query(p) = q.map_err(|e| Fail::new(e.status(), "bad_request", e.body_text()))?;
    let csv = wants_csv(p.format.as_deref(), &headers)?;
    let (from, to) = range(p.from, p.to);
    if to <= from {
        return Err(Fail::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "`to` must be after `from`",
        ));
    }
    let query = UsageQuery {
        group: scoped_group(&op, p.group)?,
        gateway: p.gateway,
        api: p.api,
        consumer: p.consumer,
        endpoint: p.endpoint,
        from,
        to,
        step: p.step.unwrap_or(60),
        by: p.by,
    };
    let points = state.store.usage(query.clone()).await?;
    if csv {
        return Ok((
            [(http::header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            usage_csv(&points),
        )
            .into_response());
    }
    Ok(Json(serde_json::json!({
        "from": query.from,
        "to": query.to,
        "step": query.step,
        "by": query.by,
        "group": query.group,
        "points": points,
    }))
    .into_response())
}

/// Query string of `GET /v1/usage/limits`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitParams {
    group: Option<String>,
    gateway: Option<String>,
    api: Option<String>,
    from: Option<u64>,
    to: Option<u64>,
    step: Option<u64>,
}

async fn limits(
    State(state): St,
    headers: HeaderMap,
    q: Result<Query<LimitParams>, QueryRejection>,
) -> Result<Response, Fail> {
    let op = operator(&state, &headers).await?;
    let Query(p) = q.map_err(|e| Fail::new(e.status(), "bad_request", e.body_text()))?;
    let (from, to) = range(p.from, p.to);
    let query = UsageQuery {
        group: scoped_group(&op, p.group)?,
        gateway: p.gateway,
        api: p.api,
        from,
        to,
        step: p.step.unwrap_or(60),
        ..Default::default()
    };
    Ok(Json(state.store.usage_limits(query).await?).into_response())
}

/// CSV (RFC 4180) of usage points; the header names the columns.
pub fn usage_csv(points: &[UsagePoint]) -> String {
    let mut out = String::from(
        "t,key,requests,errors,limited,bytes_in,bytes_out,cost,latency_ms_sum,p50_ms,p90_ms,p99_ms\n",
    );
    for p in points {
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{:.1},{:.1},{:.1}\n",
            p.t,
            csv_field(&p.key),
            p.requests,
            p.errors,
            p.limited,
            p.bytes_in,
            p.bytes_out,
            p.cost,
            p.latency_ms_sum,
            p.p50_ms,
            p.p90_ms,
            p.p99_ms
        ));
    }
    out
}

fn csv_field(s: &str) -> String {
    // A leading = + - @ would be a formula to a spreadsheet: quote-prefix it.
    let s = if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s.to_owned()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// Query string of `GET /v1/audit/events`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventParams {
    group: Option<String>,
    gateway: Option<String>,
    kind: Option<String>,
    api: Option<String>,
    consumer: Option<String>,
    from: Option<u64>,
    to: Option<u64>,
    limit: Option<u64>,
}

async fn events(
    State(state): St,
    headers: HeaderMap,
    q: Result<Query<EventParams>, QueryRejection>,
) -> Result<Response, Fail> {
    let op = operator(&state, &headers).await?;
    let Query(p) = q.map_err(|e| Fail::new(e.status(), "bad_request", e.body_text()))?;
    let to = p.to.unwrap_or_else(|| crate::server::unix_now() + 60);
    let from = p.from.unwrap_or_else(|| to.saturating_sub(24 * 3600));
    let query = EventQuery {
        group: scoped_group(&op, p.group)?,
        gateway: p.gateway,
        kind: p.kind,
        api: p.api,
        consumer: p.consumer,
        from,
        to,
        limit: p.limit.unwrap_or(100).clamp(1, 1000),
    };
    Ok(Json(state.store.usage_events(query).await?).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_render_per_back_end() {
        assert_eq!(render("a = {1} AND b = {12}", false), "a = ?1 AND b = ?12");
        assert_eq!(render("a = {1} AND b = {12}", true), "a = $1 AND b = $12");
    }

    #[test]
    fn usage_sql_filters_and_groups() {
        let (sql, params) = usage_sql(&UsageQuery {
            group: Some("acme".into()),
            api: Some("github".into()),
            from: 125,
            to: 3600,
            step: 90,
            by: Some(UsageDim::Consumer),
            ..Default::default()
        });
        assert!(
            sql.contains("group_name = {4}") && sql.contains("api = {5}"),
            "{sql}"
        );
        assert!(sql.contains("GROUP BY 1, consumer"), "{sql}");
        // from rounds down to the minute, step up to whole minutes.
        assert!(matches!(params[0], P::I(120)) && matches!(params[2], P::I(120)));
    }

    #[test]
    fn csv_quotes_and_defuses_formulas() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("=cmd()"), "'=cmd()");
        assert_eq!(csv_field("say \"hi\", ok"), "\"say \"\"hi\"\", ok\"");
    }
}
