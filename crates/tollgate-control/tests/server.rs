//! The control plane over real HTTPS on loopback: enrollment, publishing (valid and invalid),
//! long-poll wake-up and timeout, bundle signatures, revocation, roles, audit and persistence
//! across a restart on the same data directory — each on both stores: embedded SQLite and the real
//! PostgreSQL at 127.0.0.1:5432 (a throw-away database per test; `$PGUSER` or `postgres`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{Value, json};
use tollgate_control::agent::client::{Client, parse_fingerprint};
use tollgate_control::bundle::{SignedBundle, parse_public_key, verify};
use tollgate_control::server::{Running, ServerConfig, start};

const VALID: &str = "default_action: deny\n";
const VALID_2: &str = "default_action: allow\n";
/// Two problems on two lines: both must come back, located.
const INVALID: &str = "default_action: deny\nlisten:\n  proxy: not-an-addr\nbogus: 1\n";

struct Cp {
    run: Running,
    client: Client,
}

tokio::task_local! {
    /// The PostgreSQL URL of the current test's database; unset = embedded SQLite.
    static PG_URL: String;
}

fn pg_url() -> Option<String> {
    PG_URL.try_with(|u| u.clone()).ok()
}

fn pg_user() -> String {
    std::env::var("PGUSER").unwrap_or_else(|_| "postgres".into())
}

async fn pg_admin(url: &str, sql: &str) {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL at 127.0.0.1:5432");
    tokio::spawn(conn);
    c.batch_execute(sql).await.unwrap();
}

/// Runs a test body against the real PostgreSQL at 127.0.0.1:5432 in a throw-away database
/// (random name, dropped after).
async fn on_postgres(body: impl std::future::Future<Output = ()>) {
    let mut raw = [0u8; 8];
    getrandom::fill(&mut raw).unwrap();
    let name = format!(
        "tg_srv_{}",
        raw.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let admin = format!("postgres://{}@127.0.0.1:5432/test", pg_user());
    pg_admin(&admin, &format!("CREATE DATABASE {name}")).await;
    let url = format!("postgres://{}@127.0.0.1:5432/{name}", pg_user());
    PG_URL.scope(url, body).await;
    pg_admin(
        &admin,
        &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
    )
    .await;
}

/// Runs one statement (no parameters) directly on the test's database, either back end.
async fn exec_sql(dir: &std::path::Path, sql: &str) {
    match pg_url() {
        Some(url) => pg_admin(&url, sql).await,
        None => {
            let db = rusqlite::Connection::open(dir.join("control-plane.db")).unwrap();
            db.execute_batch(sql).unwrap();
        }
    }
}

/// Every test runs twice: `<sqlite mod>::name` and `<postgres mod>::name`.
macro_rules! on_both_stores {
    ($sqlite:ident, $postgres:ident, #[$attr:meta] $($name:ident),* $(,)?) => {
        mod $sqlite {
            $( #[$attr] async fn $name() { super::$name().await } )*
        }
        mod $postgres {
            $( #[$attr] async fn $name() { super::on_postgres(super::$name()).await } )*
        }
    };
}

async fn boot(dir: &std::path::Path) -> Cp {
    let run = start(ServerConfig {
        data_dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: pg_url(),
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
        self.call_timeout(method, path, token, body, Duration::from_secs(10))
            .await
    }

    async fn call_timeout(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
        timeout: Duration,
    ) -> (StatusCode, Value) {
        let reply = self
            .client
            .call(
                method,
                path,
                token,
                body.map(|b| b.as_bytes().to_vec()),
                timeout,
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

    async fn group_and_token(&self, admin: &str, group: &str) -> String {
        let (s, _) = self
            .call(
                Method::POST,
                "/v1/groups",
                Some(admin),
                Some(&json!({"name": group, "labels": {"tier": "gold"}}).to_string()),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED);
        let (s, v) = self
            .call(
                Method::POST,
                &format!("/v1/groups/{group}/enrollment-tokens"),
                Some(admin),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::CREATED);
        v["token"].as_str().unwrap().to_owned()
    }

    async fn enroll(&self, token: &str, name: &str) -> (StatusCode, Value) {
        self.call(
            Method::POST,
            "/v1/enroll",
            None,
            Some(&json!({"token": token, "name": name, "labels": {"site": "eu"}}).to_string()),
        )
        .await
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn enroll_publish_poll_verify_revoke() {
    let dir = tempfile::tempdir().unwrap();
    let cp = boot(dir.path()).await;
    let admin = cp.run.admin_token.clone().unwrap();

    // No token / a wrong token: 401.
    let (s, v) = cp.call(Method::GET, "/v1/groups", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(v["error"], "unauthorized");
    let (s, _) = cp
        .call(Method::GET, "/v1/groups", Some("tgop_nope"), None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    let token = cp.group_and_token(&admin, "acme").await;
    let (s, v) = cp.enroll(&token, "gw-1").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["group"], "acme");
    assert_eq!(
        v["control_plane_key"],
        json!({"key_id": cp.run.key.key_id, "public_key_b64": cp.run.key.public_key_b64})
    );
    let cred = v["credential"].as_str().unwrap().to_owned();
    let gw_id = v["gateway_id"].as_str().unwrap().to_owned();

    // The enrollment token is one-time.
    let (s, v) = cp.enroll(&token, "gw-2").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");

    // Nothing published yet: an immediate poll is 204.
    let (s, _) = cp
        .call(
            Method::GET,
            "/v1/gateway/config?after=0&wait=0",
            Some(&cred),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);

    // A held long-poll is answered by the publish, with the new bundle.
    let poll = {
        let client = cp.client.clone();
        let cred = cred.clone();
        tokio::spawn(async move {
            client
                .call(
                    Method::GET,
                    "/v1/gateway/config?after=0&wait=30",
                    Some(&cred),
                    None,
                    Duration::from_secs(40),
                )
                .await
                .unwrap()
        })
    };
    // Let the poll reach the server and start waiting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !poll.is_finished(),
        "the long-poll must hold while nothing is published"
    );
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
    let reply = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    let signed: SignedBundle = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(signed.bundle.version, 1);
    assert_eq!(signed.bundle.group, "acme");
    assert_eq!(signed.bundle.config_yaml, VALID);

    // The bundle verifies with the key handed out at enrollment, and only with it.
    let vk = parse_public_key(&cp.run.key.public_key_b64).unwrap();
    let keys = vec![(cp.run.key.key_id.clone(), vk)];
    assert_eq!(verify(&signed, &keys, now()).unwrap().version, 1);
    let mut tampered = signed.clone();
    tampered.bundle.config_yaml = VALID_2.into();
    assert!(verify(&tampered, &keys, now()).is_err());

    // Already at the newest version: the poll holds for `wait` and ends with 204.
    let (s, _) = cp
        .call(
            Method::GET,
            "/v1/gateway/config?after=1&wait=1",
            Some(&cred),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    // Behind: answered at once.
    let (s, v) = cp
        .call(
            Method::GET,
            "/v1/gateway/config?after=0&wait=30",
            Some(&cred),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["bundle"]["version"], 1);

    // Invalid config: 422, every error located, nothing published.
    let (s, v) = cp
        .call(
            Method::POST,
            "/v1/groups/acme/configs",
            Some(&admin),
            Some(INVALID),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["error"], "invalid_config");
    let errors: Vec<&str> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0].starts_with("acme.yaml:3:10: listen.proxy:"),
        "{errors:?}"
    );
    assert!(errors[1].starts_with("acme.yaml:4:1: bogus:"), "{errors:?}");
    let (s, v) = cp
        .call(Method::GET, "/v1/groups/acme/configs", Some(&admin), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["version"], 1);
    assert_eq!(v[0]["assigned"], true);

    // Status reports land in the fleet listing with the publish-to-applied time.
    let (s, _) = cp
        .call(
            Method::POST,
            "/v1/gateway/status",
            Some(&cred),
            Some(&json!({"applied_version": 1, "healthy": true, "last_error": null, "started_at": 5}).to_string()),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = cp
        .call(Method::GET, "/v1/gateways", Some(&admin), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v[0]["id"], gw_id.as_str());
    assert_eq!(v[0]["name"], "gw-1");
    assert_eq!(v[0]["labels"], json!({"site": "eu"}));
    assert_eq!(v[0]["applied_version"], 1);
    assert_eq!(v[0]["group_version"], 1);
    assert_eq!(v[0]["healthy"], true);
    assert!(v[0]["applied_at_ms"].as_u64().unwrap() > 0);

    // Revoked: every gateway call is 401.
    let (s, _) = cp
        .call(
            Method::POST,
            &format!("/v1/gateways/{gw_id}/revoke"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = cp
        .call(
            Method::GET,
            "/v1/gateway/config?after=0&wait=0",
            Some(&cred),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    let (s, _) = cp
        .call(
            Method::POST,
            "/v1/gateway/status",
            Some(&cred),
            Some(&json!({"applied_version": 1, "healthy": true, "started_at": 5}).to_string()),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // The audit log has who published what, and the revocation.
    let (s, v) = cp.call(Method::GET, "/v1/audit", Some(&admin), None).await;
    assert_eq!(s, StatusCode::OK);
    let entries = v.as_array().unwrap();
    let publish = entries
        .iter()
        .find(|e| e["action"] == "config.publish")
        .unwrap();
    assert_eq!(publish["actor"], "admin");
    assert_eq!(publish["target"], "acme");
    assert_eq!(publish["detail"]["version"], 1);
    assert!(publish["at_ms"].as_u64().unwrap() > 0);
    assert!(
        entries
            .iter()
            .any(|e| e["action"] == "gateway.revoke" && e["target"] == gw_id.as_str())
    );
    assert!(
        entries
            .iter()
            .any(|e| e["action"] == "gateway.enroll" && e["target"] == gw_id.as_str())
    );
    assert!(
        entries
            .iter()
            .any(|e| e["action"] == "config.applied" && e["target"] == gw_id.as_str())
    );
    cp.run.stop();
}

async fn viewer_is_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let cp = boot(dir.path()).await;
    let admin = cp.run.admin_token.clone().unwrap();
    cp.group_and_token(&admin, "acme").await;
    let (s, v) = cp
        .call(
            Method::POST,
            "/v1/operator-tokens",
            Some(&admin),
            Some(r#"{"name":"ops-view","role":"viewer"}"#),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let viewer = v["token"].as_str().unwrap().to_owned();

    let (s, v) = cp
        .call(
            Method::POST,
            "/v1/groups/acme/configs",
            Some(&viewer),
            Some(VALID),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(v["error"], "forbidden");
    let (s, _) = cp
        .call(
            Method::POST,
            "/v1/groups",
            Some(&viewer),
            Some(r#"{"name":"x"}"#),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = cp
        .call(
            Method::POST,
            "/v1/groups/acme/enrollment-tokens",
            Some(&viewer),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = cp
        .call(
            Method::POST,
            "/v1/operator-tokens",
            Some(&viewer),
            Some(r#"{"name":"me2","role":"admin"}"#),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // Reads are allowed.
    let (s, v) = cp
        .call(Method::GET, "/v1/groups", Some(&viewer), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v[0]["name"], "acme");
    assert_eq!(v[0]["assigned_version"], 0);
    let (s, _) = cp.call(Method::GET, "/v1/audit", Some(&viewer), None).await;
    assert_eq!(s, StatusCode::OK);
    // Nothing was published by the viewer.
    let (_, v) = cp
        .call(Method::GET, "/v1/groups/acme/configs", Some(&viewer), None)
        .await;
    assert_eq!(v, json!([]));
    cp.run.stop();
}

async fn state_persists_across_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cp = boot(dir.path()).await;
    let admin = cp.run.admin_token.clone().unwrap();
    let fp = cp.run.fingerprint.clone();
    let key = cp.run.key.clone();
    let token = cp.group_and_token(&admin, "acme").await;
    let (_, v) = cp.enroll(&token, "gw-1").await;
    let cred = v["credential"].as_str().unwrap().to_owned();
    let (s, _) = cp
        .call(
            Method::POST,
            "/v1/groups/acme/configs",
            Some(&admin),
            Some(VALID),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    cp.run.stop();

    let cp = boot(dir.path()).await;
    // Same identity: no new admin token, same TLS certificate, same signing key.
    assert!(cp.run.admin_token.is_none());
    assert_eq!(cp.run.fingerprint, fp);
    assert_eq!(cp.run.key, key);
    // The old admin token, the gateway credential and the published version survive.
    let (s, v) = cp
        .call(
            Method::POST,
            "/v1/groups/acme/configs",
            Some(&admin),
            Some(VALID_2),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["version"], 2);
    let (s, v) = cp
        .call(
            Method::GET,
            "/v1/gateway/config?after=1&wait=0",
            Some(&cred),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["bundle"]["version"], 2);
    // The used enrollment token stays used.
    let (s, _) = cp.enroll(&token, "gw-2").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (_, v) = cp
        .call(Method::GET, "/v1/audit?limit=1000", Some(&admin), None)
        .await;
    let publishes = v
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "config.publish")
        .count();
    assert_eq!(publishes, 2);
    // Secret files are owner-only.
    use std::os::unix::fs::PermissionsExt as _;
    for f in ["signing.key", "tls/key.pem"] {
        let mode = std::fs::metadata(dir.path().join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{f} mode {mode:o}");
    }
    cp.run.stop();
}

async fn publish_to_unknown_group_and_bad_names() {
    let dir = tempfile::tempdir().unwrap();
    let cp = boot(dir.path()).await;
    let admin = cp.run.admin_token.clone().unwrap();
    let (s, v) = cp
        .call(
            Method::POST,
            "/v1/groups/nope/configs",
            Some(&admin),
            Some(VALID),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (s, _) = cp
        .call(
            Method::POST,
            "/v1/groups",
            Some(&admin),
            Some(r#"{"name":"Bad Name"}"#),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    cp.group_and_token(&admin, "acme").await;
    let (s, v) = cp
        .call(
            Method::POST,
            "/v1/groups",
            Some(&admin),
            Some(r#"{"name":"acme"}"#),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let (s, _) = cp
        .call(
            Method::POST,
            "/v1/groups/nope/enrollment-tokens",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    cp.run.stop();
}

async fn gateway_side_secrets_do_not_block_publish_but_bad_references_do() {
    let dir = tempfile::tempdir().unwrap();
    let cp = boot(dir.path()).await;
    let admin = cp.run.admin_token.clone().unwrap();
    cp.group_and_token(&admin, "acme").await;
    // The secret lives on the gateway, not the control plane: publishing must work.
    let with_secret = "apis:\n  - name: github\n    hosts: [api.github.com]\n    credentials:\n      header: authorization\n      value: \"Bearer ${env:TG_CP_TEST_UNSET_VAR}\"\n";
    let (s, v) = cp
        .call(
            Method::POST,
            "/v1/groups/acme/configs",
            Some(&admin),
            Some(with_secret),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // A malformed reference is a config error and is still refused, located.
    let bad_ref = with_secret.replace("${env:TG_CP_TEST_UNSET_VAR}", "${nope:X}");
    let (s, v) = cp
        .call(
            Method::POST,
            "/v1/groups/acme/configs",
            Some(&admin),
            Some(&bad_ref),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(
        v["errors"][0].as_str().unwrap().starts_with("acme.yaml:6:"),
        "{v}"
    );
    cp.run.stop();
}

async fn a_gateway_sees_only_its_own_group() {
    let dir = tempfile::tempdir().unwrap();
    let cp = boot(dir.path()).await;
    let admin = cp.run.admin_token.clone().unwrap();
    let ta = cp.group_and_token(&admin, "a").await;
    let tb = cp.group_and_token(&admin, "b").await;
    let (_, va) = cp.enroll(&ta, "gw-a").await;
    let (_, vb) = cp.enroll(&tb, "gw-b").await;
    assert_eq!(vb["group"], "b");
    let cred_b = vb["credential"].as_str().unwrap().to_owned();
    let cred_a = va["credential"].as_str().unwrap().to_owned();
    let (s, _) = cp
        .call(
            Method::POST,
            "/v1/groups/a/configs",
            Some(&admin),
            Some(VALID),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    // b's long-poll is not woken by a's publish: it times out with 204.
    let (s, _) = cp
        .call(
            Method::GET,
            "/v1/gateway/config?after=0&wait=1",
            Some(&cred_b),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = cp
        .call(
            Method::GET,
            "/v1/gateway/config?after=0&wait=0",
            Some(&cred_a),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["bundle"]["group"], "a");
    // Operator tokens are not gateway credentials, and vice versa.
    let (s, _) = cp
        .call(
            Method::GET,
            "/v1/gateway/config?after=0&wait=0",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = cp
        .call(Method::GET, "/v1/gateways", Some(&cred_a), None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    cp.run.stop();
}

async fn an_old_bundle_is_re_signed_with_a_fresh_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let cp = boot(dir.path()).await;
    let admin = cp.run.admin_token.clone().unwrap();
    let token = cp.group_and_token(&admin, "acme").await;
    let (_, v) = cp.enroll(&token, "gw-1").await;
    let cred = v["credential"].as_str().unwrap().to_owned();
    let (s, _) = cp
        .call(
            Method::POST,
            "/v1/groups/acme/configs",
            Some(&admin),
            Some(VALID),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (_, fresh) = cp
        .call(
            Method::GET,
            "/v1/gateway/config?after=0&wait=0",
            Some(&cred),
            None,
        )
        .await;
    let issued_at = fresh["bundle"]["issued_at"].as_u64().unwrap();
    cp.run.stop();

    // Age the stored bundle: it now expires in 60 s.
    let mut old = fresh.clone();
    old["bundle"]["expires_at"] = json!(now() + 60);
    exec_sql(
        dir.path(),
        &format!(
            "UPDATE config_versions SET signed_bundle = '{}'",
            old.to_string().replace('\'', "''")
        ),
    )
    .await;

    let cp = boot(dir.path()).await;
    let (s, v) = cp
        .call(
            Method::GET,
            "/v1/gateway/config?after=0&wait=0",
            Some(&cred),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let signed: SignedBundle = serde_json::from_value(v).unwrap();
    assert!(
        signed.bundle.expires_at > now() + 29 * 24 * 3600,
        "{:?}",
        signed.bundle
    );
    assert_eq!(signed.bundle.issued_at, issued_at);
    assert_eq!(signed.bundle.version, 1);
    let vk = parse_public_key(&cp.run.key.public_key_b64).unwrap();
    verify(&signed, &[(cp.run.key.key_id.clone(), vk)], now()).unwrap();
    cp.run.stop();
}

async fn an_enrollment_token_wins_once_under_concurrency_and_expires() {
    let dir = tempfile::tempdir().unwrap();
    let cp = boot(dir.path()).await;
    let admin = cp.run.admin_token.clone().unwrap();
    let token = cp.group_and_token(&admin, "acme").await;
    let body = |name: &str| {
        Some(
            json!({"token": token, "name": name})
                .to_string()
                .into_bytes(),
        )
    };
    let calls = (0..8).map(|i| {
        let client = cp.client.clone();
        let b = body(&format!("gw-{i}"));
        tokio::spawn(async move {
            client
                .call(Method::POST, "/v1/enroll", None, b, Duration::from_secs(10))
                .await
                .unwrap()
                .status
        })
    });
    let mut statuses = Vec::new();
    for c in calls.collect::<Vec<_>>() {
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
    let (_, v) = cp
        .call(Method::GET, "/v1/gateways", Some(&admin), None)
        .await;
    assert_eq!(v.as_array().unwrap().len(), 1);

    // An expired, unused token is refused too.
    let token = cp
        .call(
            Method::POST,
            "/v1/groups/acme/enrollment-tokens",
            Some(&admin),
            None,
        )
        .await
        .1["token"]
        .as_str()
        .unwrap()
        .to_owned();
    exec_sql(
        dir.path(),
        "UPDATE enrollment_tokens SET expires_at = 1 WHERE used_at IS NULL",
    )
    .await;
    let (s, _) = cp.enroll(&token, "late").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    cp.run.stop();
}

async fn malformed_requests_get_json_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cp = boot(dir.path()).await;
    let admin = cp.run.admin_token.clone().unwrap();
    let (s, v) = cp
        .call(Method::POST, "/v1/groups", Some(&admin), Some("{not json"))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"], "bad_request");
    let (s, v) = cp
        .call(
            Method::POST,
            "/v1/enroll",
            None,
            Some(r#"{"token":"x","name":"n","extra":1}"#),
        )
        .await;
    assert_eq!(v["error"], "bad_request", "{s} {v}");
    let (s, v) = cp.call(Method::GET, "/v1/nope", Some(&admin), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(v["error"], "not_found");
    // Unauthenticated garbage is a 401, not a parse error: nothing is parsed before auth.
    let (s, _) = cp
        .call(Method::POST, "/v1/groups", None, Some("{not json"))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    cp.run.stop();
}

/// The OpenAPI description must not drift from the server: every documented route answers
/// (not the "no such endpoint" fallback, not 405), and each schema lists exactly the fields the
/// wire types serialise.
async fn openapi_matches_the_server() {
    use std::collections::BTreeSet;
    use tollgate_control::protocol::*;
    let dir = tempfile::tempdir().unwrap();
    let cp = boot(dir.path()).await;
    let admin = cp.run.admin_token.clone().unwrap();
    let (s, doc) = cp.call(Method::GET, "/v1/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let paths = doc["paths"].as_object().unwrap();
    assert_eq!(paths.len(), 22, "{:?}", paths.keys().collect::<Vec<_>>());
    for (path, ops) in paths {
        let concrete = path
            .replace("{g}", "nogroup")
            .replace("{id}", "noid")
            .replace("{v}", "1");
        for method in ops.as_object().unwrap().keys() {
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let (s, v) = cp.call(m, &concrete, Some(&admin), Some("{}")).await;
            assert_ne!(s, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert_ne!(
                v["message"], "no such endpoint",
                "{method} {path} is documented but not served"
            );
        }
    }
    let fields = |schema: &str| -> BTreeSet<String> {
        doc["components"]["schemas"][schema]["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    let keys = |v: Value| -> BTreeSet<String> { v.as_object().unwrap().keys().cloned().collect() };
    let gw = GatewayInfo {
        id: String::new(),
        name: String::new(),
        group: String::new(),
        labels: Default::default(),
        enrolled_at: 0,
        revoked: false,
        last_seen: 0,
        applied_version: 0,
        healthy: false,
        last_error: None,
        applied_at_ms: 0,
        group_version: 0,
        assigned_version: 0,
        canary: false,
        drift: false,
    };
    assert_eq!(
        fields("GatewayInfo"),
        keys(serde_json::to_value(gw).unwrap())
    );
    let ro = Rollout {
        id: 0,
        group: String::new(),
        version: 0,
        base_version: 0,
        canary_percent: 0,
        canary_labels: Default::default(),
        state: String::new(),
        rollback_version: None,
        started_by: String::new(),
        started_at_ms: 0,
        updated_by: String::new(),
        updated_at_ms: 0,
    };
    assert_eq!(fields("Rollout"), keys(serde_json::to_value(&ro).unwrap()));
    let rs = RolloutStatus {
        group: String::new(),
        group_version: 0,
        rollout: Some(ro),
        gateways: Vec::new(),
    };
    assert_eq!(
        fields("RolloutStatus"),
        keys(serde_json::to_value(rs).unwrap())
    );
    let sr = StartRollout {
        version: 0,
        canary_percent: 0,
        canary_labels: Default::default(),
    };
    assert_eq!(
        fields("StartRollout"),
        keys(serde_json::to_value(sr).unwrap())
    );
    let ot = CreateOperatorToken {
        name: String::new(),
        role: String::new(),
        group: Some(String::new()),
    };
    assert_eq!(
        fields("CreateOperatorToken"),
        keys(serde_json::to_value(ot).unwrap())
    );
    let g = Group {
        name: String::new(),
        labels: Default::default(),
        created_at: 0,
        assigned_version: 0,
    };
    assert_eq!(fields("Group"), keys(serde_json::to_value(g).unwrap()));
    let c = ConfigVersion {
        version: 0,
        created_at_ms: 0,
        created_by: String::new(),
        sha256: String::new(),
        assigned: false,
    };
    assert_eq!(
        fields("ConfigVersion"),
        keys(serde_json::to_value(c).unwrap())
    );
    let a = AuditEntry {
        id: 0,
        at_ms: 0,
        actor: String::new(),
        action: String::new(),
        target: String::new(),
        detail: Value::Null,
    };
    assert_eq!(fields("AuditEntry"), keys(serde_json::to_value(a).unwrap()));
    let st = StatusReport {
        applied_version: 0,
        healthy: false,
        last_error: None,
        started_at: 0,
    };
    assert_eq!(
        fields("StatusReport"),
        keys(serde_json::to_value(st).unwrap())
    );
    let e = EnrollRequest {
        token: String::new(),
        name: String::new(),
        labels: Default::default(),
    };
    assert_eq!(
        fields("EnrollRequest"),
        keys(serde_json::to_value(e).unwrap())
    );
    let r = EnrollResponse {
        gateway_id: String::new(),
        credential: String::new(),
        group: String::new(),
        control_plane_key: cp.run.key.clone(),
    };
    assert_eq!(
        fields("EnrollResponse"),
        keys(serde_json::to_value(r).unwrap())
    );
    let b = tollgate_control::bundle::Bundle {
        version: 0,
        group: String::new(),
        issued_at: 0,
        expires_at: 0,
        key_id: String::new(),
        config_yaml: String::new(),
    };
    assert_eq!(fields("Bundle"), keys(serde_json::to_value(b).unwrap()));
    cp.run.stop();
}

/// One publish wakes every held long-poll of the group: 50 gateways, one publish, 50 bundles.
async fn one_publish_wakes_fifty_long_polls() {
    let dir = tempfile::tempdir().unwrap();
    let cp = boot(dir.path()).await;
    let admin = cp.run.admin_token.clone().unwrap();
    cp.group_and_token(&admin, "fleet").await;
    let mut creds = Vec::new();
    for i in 0..50 {
        let (_, t) = cp
            .call(
                Method::POST,
                "/v1/groups/fleet/enrollment-tokens",
                Some(&admin),
                None,
            )
            .await;
        let (s, v) = cp
            .enroll(t["token"].as_str().unwrap(), &format!("gw-{i}"))
            .await;
        assert_eq!(s, StatusCode::OK);
        creds.push(v["credential"].as_str().unwrap().to_owned());
    }
    let polls: Vec<_> = creds
        .into_iter()
        .map(|cred| {
            let client = cp.client.clone();
            tokio::spawn(async move {
                client
                    .call(
                        Method::GET,
                        "/v1/gateway/config?after=0&wait=60",
                        Some(&cred),
                        None,
                        Duration::from_secs(90),
                    )
                    .await
                    .unwrap()
            })
        })
        .collect();
    // Wait until the polls are held (none can finish: nothing is published).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(polls.iter().all(|p| !p.is_finished()));
    let (s, _) = cp
        .call(
            Method::POST,
            "/v1/groups/fleet/configs",
            Some(&admin),
            Some(VALID),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    // Well under the 60 s hold: answered by the publish, not by the timeout.
    let all = tokio::time::timeout(Duration::from_secs(30), async {
        let mut out = Vec::new();
        for p in polls {
            out.push(p.await.unwrap());
        }
        out
    })
    .await
    .expect("every held poll is answered by the publish");
    for reply in all {
        assert_eq!(reply.status, StatusCode::OK);
        let b: SignedBundle = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(b.bundle.version, 1);
    }
    cp.run.stop();
}

on_both_stores!(
    sqlite,
    postgres,
    #[tokio::test]
    enroll_publish_poll_verify_revoke,
    viewer_is_read_only,
    state_persists_across_restart,
    publish_to_unknown_group_and_bad_names,
    gateway_side_secrets_do_not_block_publish_but_bad_references_do,
    a_gateway_sees_only_its_own_group,
    an_old_bundle_is_re_signed_with_a_fresh_expiry,
    an_enrollment_token_wins_once_under_concurrency_and_expires,
    malformed_requests_get_json_errors,
    openapi_matches_the_server,
);

on_both_stores!(
    sqlite_multi_thread,
    postgres_multi_thread,
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    one_publish_wakes_fifty_long_polls,
);
