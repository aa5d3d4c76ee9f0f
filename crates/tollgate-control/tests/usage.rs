//! Fleet usage on a real control plane over HTTPS, on SQLite and on the real PostgreSQL at
//! 127.0.0.1:5432 (user `$PGUSER` or `postgres`, a throw-away database per test): batches are
//! stored exactly once per (gateway, seq) — a retry or replay adds nothing —, queries sum,
//! bucket and split correctly, percentiles come from the merged buckets, CSV parses, audit
//! events are filterable, and a group-scoped viewer sees only its own group.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{Value, json};
use tollgate_control::agent::client::{Client, parse_fingerprint};
use tollgate_control::server::{Running, ServerConfig, start};

struct Cp {
    run: Running,
    client: Client,
    admin: String,
}

async fn boot(dir: &std::path::Path, url: Option<String>) -> Cp {
    let run = start(ServerConfig {
        data_dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: url,
        tls_cert: None,
        tls_key: None,
    })
    .await
    .unwrap();
    let fp = parse_fingerprint(&run.fingerprint).unwrap();
    let client = Client::new(&format!("https://127.0.0.1:{}", run.addr.port()), Some(fp)).unwrap();
    let admin = run.admin_token.clone().unwrap();
    Cp { run, client, admin }
}

impl Cp {
    async fn raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<String>,
    ) -> (StatusCode, Vec<u8>) {
        let r = self
            .client
            .call(
                method,
                path,
                token,
                body.map(String::into_bytes),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        (r.status, r.body.to_vec())
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let (s, b) = self
            .raw(method, path, token, body.map(|b| b.to_string()))
            .await;
        let v = if b.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&b).unwrap()
        };
        (s, v)
    }

    /// Creates the group and enrolls one gateway in it; returns its credential.
    async fn gateway(&self, group: &str) -> String {
        let admin = Some(self.admin.as_str());
        let (s, v) = self
            .call(
                Method::POST,
                "/v1/groups",
                admin,
                Some(json!({"name": group})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let (s, v) = self
            .call(
                Method::POST,
                &format!("/v1/groups/{group}/enrollment-tokens"),
                admin,
                None,
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let (s, v) = self
            .call(
                Method::POST,
                "/v1/enroll",
                None,
                Some(json!({"token": v["token"], "name": format!("{group}-gw")})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["credential"].as_str().unwrap().to_owned()
    }
}

/// One row: `n` requests of which `err` 5xx, latencies all in the (25, 50] ms bucket.
fn row(minute: u64, api: &str, consumer: &str, class: &str, n: u64, err: u64) -> Value {
    let mut buckets = vec![0u64; 12];
    buckets[3] = n;
    json!({
        "minute": minute, "api": api, "consumer": consumer, "endpoint": "GET /v1/items/{id}",
        "status_class": class, "count": n, "errors": err, "limited": 0,
        "bytes_in": 10 * n, "bytes_out": 100 * n, "cost": n,
        "latency_ms_sum": 40 * n, "latency_buckets": buckets,
    })
}

fn batch(seq: u64, rows: Vec<Value>, events: Vec<Value>) -> Value {
    json!({"seq": seq, "rows": rows, "events": events})
}

fn limit(minute: u64, used: u64) -> Value {
    json!({"minute": minute, "api": "github", "limit": "hourly", "key": "ci", "scope": "local",
        "used": used, "quota": 100, "window_secs": 3600})
}

const T0: u64 = 1_800_000_000 / 60 * 60;

async fn exercise(cp: &Cp) {
    let acme = cp.gateway("acme").await;
    let globex = cp.gateway("globex").await;
    let admin = Some(cp.admin.as_str());

    // Unauthenticated and operator tokens cannot upload.
    let b1 = batch(1, vec![row(T0, "github", "ci", "2xx", 5, 0)], vec![]);
    let (s, _) = cp
        .call(Method::POST, "/v1/gateway/usage", None, Some(b1.clone()))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = cp
        .call(Method::POST, "/v1/gateway/usage", admin, Some(b1.clone()))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // Stored once; the same batch again (a retry, a replay after a crash) adds nothing.
    let ev = json!({"minute": T0, "kind": "deny", "api": "github", "consumer": "ci",
        "reason": "endpoint_not_allowed", "count": 2, "first_at_ms": T0 * 1000 + 5,
        "last_at_ms": T0 * 1000 + 900});
    let b1 = batch(
        1,
        vec![row(T0, "github", "ci", "2xx", 5, 0)],
        vec![ev.clone()],
    );
    let (s, v) = cp
        .call(
            Method::POST,
            "/v1/gateway/usage",
            Some(&acme),
            Some(b1.clone()),
        )
        .await;
    assert_eq!(
        (s, &v),
        (StatusCode::OK, &json!({"seq": 1, "duplicate": false}))
    );
    for _ in 0..2 {
        let (s, v) = cp
            .call(
                Method::POST,
                "/v1/gateway/usage",
                Some(&acme),
                Some(b1.clone()),
            )
            .await;
        assert_eq!(
            (s, &v),
            (StatusCode::OK, &json!({"seq": 1, "duplicate": true}))
        );
    }
    // A later batch with the same key adds up; another minute and API are separate rows.
    let b2 = batch(
        2,
        vec![
            row(T0, "github", "ci", "2xx", 3, 0),
            row(T0, "github", "ci", "5xx", 2, 2),
            row(T0 + 60, "stripe", "web", "2xx", 4, 0),
        ],
        vec![ev.clone()],
    );
    let mut b2 = b2;
    b2["limits"] = json!([limit(T0, 30), limit(T0 + 60, 45)]);
    let (s, v) = cp
        .call(Method::POST, "/v1/gateway/usage", Some(&acme), Some(b2))
        .await;
    assert_eq!(v["duplicate"], false, "{s} {v}");
    // A later report of the same minute keeps the highest `used`.
    let b3 = json!({"seq": 3, "limits": [limit(T0, 20)]});
    let (_, v) = cp
        .call(Method::POST, "/v1/gateway/usage", Some(&acme), Some(b3))
        .await;
    assert_eq!(v["duplicate"], false, "{v}");
    // The other gateway's seq 1 is its own: not a duplicate of acme's.
    let (_, v) = cp
        .call(
            Method::POST,
            "/v1/gateway/usage",
            Some(&globex),
            Some(batch(
                1,
                vec![row(T0, "github", "ops", "2xx", 7, 0)],
                vec![],
            )),
        )
        .await;
    assert_eq!(v["duplicate"], false);

    // Malformed batches are refused (400), not half-stored.
    let (s, _) = cp
        .raw(
            Method::POST,
            "/v1/gateway/usage",
            Some(&acme),
            Some("{\"seq\": 3, \"rows\": [{\"minute\": 1}]}".into()),
        )
        .await;
    assert_eq!(s.as_u16() / 100, 4);

    let range = format!("from={}&to={}", T0, T0 + 120);
    // Totals over the range (step=0 → one bucket).
    let (s, v) = cp
        .call(
            Method::GET,
            &format!("/v1/usage?{range}&step=0"),
            admin,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let pts = v["points"].as_array().unwrap();
    assert_eq!(pts.len(), 1, "{v}");
    assert_eq!(pts[0]["requests"], 5 + 3 + 2 + 4 + 7);
    assert_eq!(pts[0]["errors"], 2);
    assert_eq!(pts[0]["bytes_out"], 100 * 21);
    let p50 = pts[0]["p50_ms"].as_f64().unwrap();
    assert!(p50 > 25.0 && p50 <= 50.0, "{p50}");

    // Per minute, per API.
    let (_, v) = cp
        .call(
            Method::GET,
            &format!("/v1/usage?{range}&step=60&by=api&group=acme"),
            admin,
            None,
        )
        .await;
    let got: Vec<(u64, String, u64)> = v["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["t"].as_u64().unwrap(),
                p["key"].as_str().unwrap().to_owned(),
                p["requests"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![(T0, "github".into(), 10), (T0 + 60, "stripe".into(), 4)]
    );

    // Quota usage against each limit: per minute, and the maximum over one bucket.
    let (s, v) = cp
        .call(
            Method::GET,
            &format!("/v1/usage/limits?{range}&step=60"),
            admin,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let used: Vec<(u64, u64, u64)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            assert_eq!(
                (&p["group"], &p["limit"], &p["key"]),
                (&json!("acme"), &json!("hourly"), &json!("ci"))
            );
            (
                p["t"].as_u64().unwrap(),
                p["used"].as_u64().unwrap(),
                p["quota"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(used, vec![(T0, 30, 100), (T0 + 60, 45, 100)]);
    let (_, v) = cp
        .call(
            Method::GET,
            &format!("/v1/usage/limits?{range}&step=0"),
            admin,
            None,
        )
        .await;
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v[0]["used"], 45);

    // By group: the comparison of customers.
    let (_, v) = cp
        .call(
            Method::GET,
            &format!("/v1/usage?{range}&step=0&by=group"),
            admin,
            None,
        )
        .await;
    let by_group: Vec<(String, u64)> = v["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["key"].as_str().unwrap().to_owned(),
                p["requests"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(by_group, vec![("acme".into(), 14), ("globex".into(), 7)]);

    // CSV: by format=… and by Accept.
    let (s, body) = cp
        .raw(
            Method::GET,
            &format!("/v1/usage?{range}&step=0&by=consumer&format=csv"),
            admin,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let text = String::from_utf8(body).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("t,key,requests,errors,limited"),
        "{text}"
    );
    let ops = lines
        .iter()
        .find(|l| l.split(',').nth(1) == Some("ops"))
        .unwrap();
    assert_eq!(ops.split(',').nth(2), Some("7"), "{text}");

    // Audit events: both batches' deny events of one minute merge (2 + 2).
    let (_, v) = cp
        .call(
            Method::GET,
            &format!("/v1/audit/events?{range}&kind=deny"),
            admin,
            None,
        )
        .await;
    let evs = v.as_array().unwrap();
    assert_eq!(evs.len(), 1, "{v}");
    assert_eq!(evs[0]["count"], 4);
    assert_eq!(evs[0]["group"], "acme");
    assert_eq!(evs[0]["reason"], "endpoint_not_allowed");

    // A viewer scoped to globex sees globex only, and is refused acme outright.
    let (s, v) = cp
        .call(
            Method::POST,
            "/v1/operator-tokens",
            admin,
            Some(json!({"name": "globex-viewer", "role": "viewer", "group": "globex"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let viewer = v["token"].as_str().unwrap().to_owned();
    let (_, v) = cp
        .call(
            Method::GET,
            &format!("/v1/usage?{range}&step=0&by=group"),
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(v["points"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["points"][0]["key"], "globex");
    assert_eq!(v["points"][0]["requests"], 7);
    let (s, _) = cp
        .call(
            Method::GET,
            &format!("/v1/usage?{range}&group=acme"),
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, v) = cp
        .call(
            Method::GET,
            &format!("/v1/audit/events?{range}"),
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        v,
        json!([]),
        "acme's events are invisible to globex's viewer"
    );
    let (s, v) = cp
        .call(
            Method::GET,
            &format!("/v1/usage/limits?{range}"),
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!((s, v), (StatusCode::OK, json!([])));
    let (s, _) = cp
        .call(
            Method::GET,
            &format!("/v1/audit/events?{range}&group=acme"),
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn usage_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let cp = boot(dir.path(), None).await;
    exercise(&cp).await;
    openapi_describes_the_usage_types(&cp).await;
    cp.run.stop();
}

/// The OpenAPI schemas of the usage endpoints list exactly the wire types' fields.
async fn openapi_describes_the_usage_types(cp: &Cp) {
    use std::collections::BTreeSet;
    use tollgate_control::protocol::{UsageAck, UsageBatch};
    use tollgate_control::server::usage::{LimitPoint, UsageEvent, UsagePoint};
    use tollgate_proxy::usage::{EventRow, LimitRow, UsageRow};
    let (_, doc) = cp.call(Method::GET, "/v1/openapi.json", None, None).await;
    let fields = |schema: &str| -> BTreeSet<String> {
        doc["components"]["schemas"][schema]["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("schema {schema} is documented"))
            .keys()
            .cloned()
            .collect()
    };
    let keys = |v: Value| -> BTreeSet<String> { v.as_object().unwrap().keys().cloned().collect() };
    let row: UsageRow = serde_json::from_value(row(T0, "a", "b", "2xx", 1, 0)).unwrap();
    let ev = EventRow {
        minute: 0,
        kind: String::new(),
        api: String::new(),
        consumer: String::new(),
        reason: String::new(),
        count: 0,
        first_at_ms: 0,
        last_at_ms: 0,
    };
    let point = UsagePoint {
        t: 0,
        key: String::new(),
        requests: 0,
        errors: 0,
        limited: 0,
        bytes_in: 0,
        bytes_out: 0,
        cost: 0,
        latency_ms_sum: 0,
        latency_buckets: vec![],
        p50_ms: 0.0,
        p90_ms: 0.0,
        p99_ms: 0.0,
    };
    let event = UsageEvent {
        gateway: String::new(),
        group: String::new(),
        minute: 0,
        kind: String::new(),
        api: String::new(),
        consumer: String::new(),
        reason: String::new(),
        count: 0,
        first_at_ms: 0,
        last_at_ms: 0,
    };
    let batch = UsageBatch {
        seq: 1,
        rows: vec![],
        events: vec![],
        limits: vec![],
    };
    let ack = UsageAck {
        seq: 1,
        duplicate: false,
    };
    let lrow: LimitRow = serde_json::from_value(limit(T0, 1)).unwrap();
    let lpoint = LimitPoint {
        t: 0,
        group: String::new(),
        gateway: String::new(),
        api: String::new(),
        limit: String::new(),
        key: String::new(),
        scope: String::new(),
        used: 0,
        quota: 0,
        window_secs: 0,
    };
    let rule = tollgate_control::server::alerts::AlertRule {
        name: String::new(),
        group: None,
        kind: String::new(),
        threshold: 0.0,
        window_secs: 0,
        api: None,
        consumer: None,
        min_requests: 0,
        webhook: String::new(),
        cooldown_secs: 0,
        action: Some(tollgate_control::server::alerts::AlertAction { roll_group_to: 1 }),
    };
    let info = tollgate_control::server::alerts::AlertInfo {
        rule: rule.clone(),
        firing: false,
        last_value: None,
        last_notified_ms: 0,
        last_evaluated_ms: 0,
        last_error: None,
        action_state: None,
    };
    for (name, v) in [
        ("AlertRule", serde_json::to_value(&rule).unwrap()),
        ("AlertInfo", serde_json::to_value(&info).unwrap()),
        ("LimitRow", serde_json::to_value(&lrow).unwrap()),
        ("LimitPoint", serde_json::to_value(&lpoint).unwrap()),
        ("UsageRow", serde_json::to_value(&row).unwrap()),
        ("EventRow", serde_json::to_value(&ev).unwrap()),
        ("UsagePoint", serde_json::to_value(&point).unwrap()),
        ("UsageEvent", serde_json::to_value(&event).unwrap()),
        ("UsageBatch", serde_json::to_value(&batch).unwrap()),
        ("UsageAck", serde_json::to_value(&ack).unwrap()),
    ] {
        assert_eq!(fields(name), keys(v), "{name}");
    }
}

fn pg_user() -> String {
    std::env::var("PGUSER").unwrap_or_else(|_| "postgres".into())
}

async fn pg_admin(sql: &str) {
    let (c, conn) = tokio_postgres::connect(
        &format!("postgres://{}@127.0.0.1:5432/test", pg_user()),
        tokio_postgres::NoTls,
    )
    .await
    .expect("PostgreSQL at 127.0.0.1:5432 (database `test`)");
    tokio::spawn(conn);
    c.batch_execute(sql).await.unwrap();
}

#[tokio::test]
async fn usage_on_postgres() {
    let mut raw = [0u8; 8];
    getrandom::fill(&mut raw).unwrap();
    let name = format!(
        "tg_usage_{}",
        raw.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    pg_admin(&format!("CREATE DATABASE {name}")).await;
    let dir = tempfile::tempdir().unwrap();
    let cp = boot(
        dir.path(),
        Some(format!("postgres://{}@127.0.0.1:5432/{name}", pg_user())),
    )
    .await;
    exercise(&cp).await;
    cp.run.stop();
    pg_admin(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
}
