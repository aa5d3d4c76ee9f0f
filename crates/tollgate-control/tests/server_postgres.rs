//! The control plane on the real PostgreSQL at 127.0.0.1:5432 (user `$PGUSER` or `postgres`,
//! trust auth): each test creates its own database with a random name and drops it after.
//! Covers the full enroll → publish → long-poll flow, persistence across a restart, two
//! replicas on one database (a publish on A wakes a long-poll held by B via LISTEN/NOTIFY; one
//! enrollment token wins exactly once across both), the refused too-new schema, and that a
//! bad URL's error never shows its password.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{Value, json};
use tollgate_control::agent::client::{Client, parse_fingerprint};
use tollgate_control::bundle::SignedBundle;
use tollgate_control::server::{Running, ServerConfig, start};

const VALID: &str = "default_action: deny\n";

fn user() -> String {
    std::env::var("PGUSER").unwrap_or_else(|_| "postgres".into())
}

/// A throw-away database, dropped (with its connections) when the test ends.
struct TestDb {
    name: String,
}

impl TestDb {
    async fn create() -> TestDb {
        let mut raw = [0u8; 8];
        getrandom::fill(&mut raw).unwrap();
        let name = format!(
            "tg_cp_{}",
            raw.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        admin_exec(&format!("CREATE DATABASE {name}")).await;
        TestDb { name }
    }

    fn url(&self) -> String {
        format!("postgres://{}@127.0.0.1:5432/{}", user(), self.name)
    }

    async fn drop_db(self) {
        admin_exec(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .await;
    }
}

async fn admin_exec(sql: &str) {
    let (c, conn) = tokio_postgres::connect(
        &format!("postgres://{}@127.0.0.1:5432/test", user()),
        tokio_postgres::NoTls,
    )
    .await
    .expect("PostgreSQL at 127.0.0.1:5432 (database `test`)");
    tokio::spawn(conn);
    c.batch_execute(sql).await.unwrap();
}

async fn db_exec(url: &str, sql: &str) {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c.batch_execute(sql).await.unwrap();
}

struct Cp {
    run: Running,
    client: Client,
}

async fn boot(dir: &std::path::Path, url: &str) -> Cp {
    let run = start(ServerConfig {
        data_dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: Some(url.to_owned()),
        tls_cert: None,
        tls_key: None,
    })
    .await
    .unwrap();
    let fp = parse_fingerprint(&run.fingerprint).unwrap();
    let client = Client::new(&format!("https://127.0.0.1:{}", run.addr.port()), Some(fp)).unwrap();
    Cp { run, client }
}

impl Cp {
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (StatusCode, Value) {
        let reply = self
            .client
            .call(
                method,
                path,
                token,
                body.map(|b| b.as_bytes().to_vec()),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        let v = if reply.body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&reply.body).unwrap()
        };
        (reply.status, v)
    }

    async fn token(&self, admin: &str, group: &str) -> String {
        let (s, v) = self
            .call(
                Method::POST,
                &format!("/v1/groups/{group}/enrollment-tokens"),
                Some(admin),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v["token"].as_str().unwrap().to_owned()
    }

    async fn group(&self, admin: &str, group: &str) {
        let (s, v) = self
            .call(
                Method::POST,
                "/v1/groups",
                Some(admin),
                Some(&json!({"name": group, "labels": {"tier": "gold"}}).to_string()),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }

    async fn enroll(&self, token: &str, name: &str) -> (StatusCode, Value) {
        self.call(
            Method::POST,
            "/v1/enroll",
            None,
            Some(&json!({"token": token, "name": name}).to_string()),
        )
        .await
    }

    /// Starts a long-poll (`after=0`, held up to 20 s) in the background.
    fn long_poll(
        &self,
        cred: &str,
    ) -> tokio::task::JoinHandle<tollgate_control::agent::client::Reply> {
        let client = self.client.clone();
        let cred = cred.to_owned();
        tokio::spawn(async move {
            client
                .call(
                    Method::GET,
                    "/v1/gateway/config?after=0&wait=20",
                    Some(&cred),
                    None,
                    Duration::from_secs(30),
                )
                .await
                .unwrap()
        })
    }
}

#[tokio::test]
async fn postgres_flow_and_restart() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let cp = boot(dir.path(), &db.url()).await;
    let admin = cp.run.admin_token.clone().unwrap();
    cp.group(&admin, "acme").await;
    // Duplicate group: 409 (unique violation mapped like SQLite).
    let (s, _) = cp
        .call(
            Method::POST,
            "/v1/groups",
            Some(&admin),
            Some(&json!({"name": "acme"}).to_string()),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let token = cp.token(&admin, "acme").await;
    let (s, v) = cp.enroll(&token, "gw-1").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let cred = v["credential"].as_str().unwrap().to_owned();
    let (s, _) = cp.enroll(&token, "gw-2").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    let poll = cp.long_poll(&cred);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!poll.is_finished());
    let (s, v) = cp
        .call(
            Method::POST,
            "/v1/groups/acme/configs",
            Some(&admin),
            Some(VALID),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["version"], 1);
    let reply = poll.await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    let signed: SignedBundle = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(signed.bundle.version, 1);

    let (_, audit) = cp
        .call(Method::GET, "/v1/audit?limit=50", Some(&admin), None)
        .await;
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for a in [
        "operator.create",
        "group.create",
        "enrollment_token.create",
        "gateway.enroll",
        "config.publish",
    ] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
    cp.run.stop();

    // Restart on the same database: migrations are not re-applied, no new admin token, state
    // is there.
    let cp = boot(dir.path(), &db.url()).await;
    assert!(cp.run.admin_token.is_none());
    let (s, v) = cp
        .call(Method::GET, "/v1/groups/acme/configs", Some(&admin), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v[0]["version"], 1);
    cp.run.stop();
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_wakeups_and_one_time_tokens() {
    let db = TestDb::create().await;
    // Replicas share the data directory's signing key and TLS identity (as documented).
    let dir = tempfile::tempdir().unwrap();
    let a = boot(dir.path(), &db.url()).await;
    let admin = a.run.admin_token.clone().unwrap();
    let b = boot(dir.path(), &db.url()).await;
    assert!(b.run.admin_token.is_none());
    a.group(&admin, "acme").await;
    let token = a.token(&admin, "acme").await;
    // Enrollment on B with a token made on A.
    let (s, v) = b.enroll(&token, "gw-1").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let cred = v["credential"].as_str().unwrap().to_owned();

    // The gateway long-polls B; the publish happens on A. Without the cross-replica NOTIFY
    // B's poll would only end at its 20 s wait, empty (204).
    let poll = b.long_poll(&cred);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!poll.is_finished(), "the long-poll must hold");
    let (s, v) = a
        .call(
            Method::POST,
            "/v1/groups/acme/configs",
            Some(&admin),
            Some(VALID),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let reply = poll.await.unwrap();
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "B's long-poll must be woken by A's publish"
    );
    let signed: SignedBundle = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(signed.bundle.version, 1);

    // One token, eight concurrent enrollments alternating between the replicas: one wins.
    let token = a.token(&admin, "acme").await;
    let calls: Vec<_> = (0..8)
        .map(|i| {
            let client = if i % 2 == 0 {
                a.client.clone()
            } else {
                b.client.clone()
            };
            let body = json!({"token": token, "name": format!("race-{i}")})
                .to_string()
                .into_bytes();
            tokio::spawn(async move {
                client
                    .call(
                        Method::POST,
                        "/v1/enroll",
                        None,
                        Some(body),
                        Duration::from_secs(10),
                    )
                    .await
                    .unwrap()
                    .status
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for c in calls {
        statuses.push(c.await.unwrap());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::UNAUTHORIZED)
            .count(),
        7,
        "{statuses:?}"
    );
    let (_, v) = b
        .call(Method::GET, "/v1/gateways", Some(&admin), None)
        .await;
    assert_eq!(v.as_array().unwrap().len(), 2, "{v}");
    a.run.stop();
    b.run.stop();
    db.drop_db().await;
}

#[tokio::test]
async fn newer_schema_is_refused() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    boot(dir.path(), &db.url()).await.run.stop();
    db_exec(&db.url(), "INSERT INTO schema_migrations VALUES (99, 0)").await;
    let err = start(ServerConfig {
        data_dir: dir.path().to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: Some(db.url()),
        tls_cert: None,
        tls_key: None,
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("newer than this binary"), "{err}");
    db.drop_db().await;
}

#[tokio::test]
async fn a_bad_url_error_hides_the_password() {
    let dir = tempfile::tempdir().unwrap();
    for url in [
        // Nothing listens on port 1.
        "postgres://tg:s3cretpw@127.0.0.1:1/x".to_owned(),
        // Not a postgres URL.
        "mysql://tg:s3cretpw@127.0.0.1/x".to_owned(),
    ] {
        let err = start(ServerConfig {
            data_dir: dir.path().to_path_buf(),
            listen: "127.0.0.1:0".parse().unwrap(),
            database_url: Some(url.clone()),
            tls_cert: None,
            tls_key: None,
        })
        .await
        .unwrap_err()
        .to_string();
        assert!(!err.contains("s3cretpw"), "{err}");
        assert!(err.contains("***@127.0.0.1"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_migrate_once() {
    let db = TestDb::create().await;
    // Separate data directories: this is about the shared database only.
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let url = db.url();
    let (a, b) = tokio::join!(boot(d1.path(), &url), boot(d2.path(), &url));
    // Exactly one of them created (and would print) the admin token.
    assert_eq!(
        [&a, &b]
            .iter()
            .filter(|cp| cp.run.admin_token.is_some())
            .count(),
        1
    );
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    // Every migration recorded exactly once (one row per version, 1..=latest).
    let r = c
        .query_one(
            "SELECT COUNT(*), MAX(version)::BIGINT FROM schema_migrations",
            &[],
        )
        .await
        .unwrap();
    let (n, max): (i64, i64) = (r.get(0), r.get(1));
    assert!(max >= 2, "{max}");
    assert_eq!(n, max);
    drop(c);
    a.run.stop();
    b.run.stop();
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_listen_connection_still_delivers_publishes() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let a = boot(dir.path(), &db.url()).await;
    let admin = a.run.admin_token.clone().unwrap();
    let b = boot(dir.path(), &db.url()).await;
    a.group(&admin, "acme").await;
    let token = a.token(&admin, "acme").await;
    let (s, v) = b.enroll(&token, "gw-1").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let cred = v["credential"].as_str().unwrap().to_owned();
    let poll = b.long_poll(&cred);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Kill both replicas' LISTEN connections, then publish while they are (likely) down: the
    // notification is lost, and B must still answer its held poll (fallback / re-listen wake).
    let (c, conn) = tokio_postgres::connect(&db.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let killed = c
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = $1 AND application_name = 'tollgate-cp-listen'",
            &[&db.name],
        )
        .await
        .unwrap()
        .len();
    assert_eq!(killed, 2, "one LISTEN connection per replica");
    let (s, v) = a
        .call(
            Method::POST,
            "/v1/groups/acme/configs",
            Some(&admin),
            Some(VALID),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let reply = poll.await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    a.run.stop();
    b.run.stop();
    db.drop_db().await;
}
