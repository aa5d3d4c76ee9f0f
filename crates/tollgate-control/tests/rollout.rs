//! Rollouts and group-scoped viewer tokens over real HTTPS on loopback, on both stores
//! (embedded SQLite and the real PostgreSQL at 127.0.0.1:5432, a throw-away database per test):
//! staged publish, canary by share and by labels (what each gateway's long-poll really gets),
//! promote, rollback as a new higher version carrying the old config, drift, audit, 409s on
//! illegal transitions; a viewer scoped to one group sees nothing of another.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{Value, json};
use tollgate_control::agent::client::{Client, parse_fingerprint};
use tollgate_control::bundle::{SignedBundle, parse_public_key, verify};
use tollgate_control::server::{Running, ServerConfig, start};

const V1: &str = "default_action: deny\n";
const V2: &str = "default_action: allow\n";
const V3: &str = "default_action: report\n";

tokio::task_local! {
    static PG_URL: String;
}

fn pg_url() -> Option<String> {
    PG_URL.try_with(|u| u.clone()).ok()
}

async fn pg_admin(url: &str, sql: &str) {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL at 127.0.0.1:5432");
    tokio::spawn(conn);
    c.batch_execute(sql).await.unwrap();
}

async fn on_postgres(body: impl std::future::Future<Output = ()>) {
    let mut raw = [0u8; 8];
    getrandom::fill(&mut raw).unwrap();
    let name = format!(
        "tg_ro_{}",
        raw.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let user = std::env::var("PGUSER").unwrap_or_else(|_| "postgres".into());
    let admin = format!("postgres://{user}@127.0.0.1:5432/test");
    pg_admin(&admin, &format!("CREATE DATABASE {name}")).await;
    PG_URL
        .scope(format!("postgres://{user}@127.0.0.1:5432/{name}"), body)
        .await;
    pg_admin(
        &admin,
        &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
    )
    .await;
}

struct Cp {
    run: Running,
    client: Client,
    admin: String,
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
    let admin = run.admin_token.clone().unwrap();
    Cp { run, client, admin }
}

struct Gw {
    id: String,
    cred: String,
    labels: Value,
}

impl Cp {
    async fn call(
        &self,
        m: Method,
        path: &str,
        token: &str,
        body: Option<&str>,
    ) -> (StatusCode, Value) {
        let reply = self
            .client
            .call(
                m,
                path,
                Some(token),
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

    async fn ok(&self, m: Method, path: &str, body: Option<&str>) -> Value {
        let (s, v) = self.call(m, path, &self.admin, body).await;
        assert!(s.is_success(), "{path}: {s} {v}");
        v
    }

    async fn group(&self, name: &str) {
        self.ok(
            Method::POST,
            "/v1/groups",
            Some(&json!({ "name": name }).to_string()),
        )
        .await;
    }

    async fn enroll(&self, group: &str, name: &str, labels: Value) -> Gw {
        let t = self
            .ok(
                Method::POST,
                &format!("/v1/groups/{group}/enrollment-tokens"),
                None,
            )
            .await;
        let body = json!({"token": t["token"], "name": name, "labels": labels}).to_string();
        let reply = self
            .client
            .call(
                Method::POST,
                "/v1/enroll",
                None,
                Some(body.into_bytes()),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        let v: Value = serde_json::from_slice(&reply.body).unwrap();
        Gw {
            id: v["gateway_id"].as_str().unwrap().into(),
            cred: v["credential"].as_str().unwrap().into(),
            labels,
        }
    }

    /// What the gateway's long-poll returns right now (`wait=0`): the bundle's version and
    /// YAML (signature checked with the pinned key), or None for 204.
    async fn poll(&self, gw: &Gw, after: u64) -> Option<(u64, String)> {
        let (s, v) = self
            .call(
                Method::GET,
                &format!("/v1/gateway/config?after={after}&wait=0"),
                &gw.cred,
                None,
            )
            .await;
        if s == StatusCode::NO_CONTENT {
            return None;
        }
        assert_eq!(s, StatusCode::OK, "{v}");
        let signed: SignedBundle = serde_json::from_value(v).unwrap();
        let key = parse_public_key(&self.run.key.public_key_b64).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        verify(&signed, &[(self.run.key.key_id.clone(), key)], now).unwrap();
        Some((signed.bundle.version, signed.bundle.config_yaml))
    }

    async fn report(&self, gw: &Gw, applied: u64) {
        let body =
            json!({"applied_version": applied, "healthy": true, "started_at": 1}).to_string();
        let (s, v) = self
            .call(Method::POST, "/v1/gateway/status", &gw.cred, Some(&body))
            .await;
        assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    }

    async fn publish(&self, group: &str, yaml: &str, assign: bool) -> u64 {
        let q = if assign { "" } else { "?assign=false" };
        let v = self
            .ok(
                Method::POST,
                &format!("/v1/groups/{group}/configs{q}"),
                Some(yaml),
            )
            .await;
        v["version"].as_u64().unwrap()
    }
}

fn canaries(status: &Value) -> BTreeSet<String> {
    status["gateways"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["canary"] == true)
        .map(|g| g["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn canary_promote_rollback_and_drift() {
    let dir = tempfile::tempdir().unwrap();
    let cp = boot(dir.path()).await;
    cp.group("acme").await;
    let mut gws = Vec::new();
    for i in 0..12 {
        let labels = if i < 3 {
            json!({"ring": "canary"})
        } else {
            json!({"ring": "main"})
        };
        gws.push(cp.enroll("acme", &format!("gw-{i}"), labels).await);
    }
    assert_eq!(cp.publish("acme", V1, true).await, 1);
    for g in &gws {
        assert_eq!(cp.poll(g, 0).await.unwrap().0, 1);
        cp.report(g, 1).await;
    }

    // A staged publish is stored and signed, but nobody gets it.
    assert_eq!(cp.publish("acme", V2, false).await, 2);
    for g in &gws {
        assert_eq!(cp.poll(g, 1).await, None);
    }
    let groups = cp.ok(Method::GET, "/v1/groups", None).await;
    assert_eq!(groups[0]["assigned_version"], 1);

    // Canary by share: 50 % of the group, chosen by a stable hash of the id.
    let (s, v) = cp
        .call(
            Method::POST,
            "/v1/groups/acme/rollout",
            &cp.admin,
            Some(r#"{"version": 2, "canary_percent": 50}"#),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["rollout"]["state"], "canary");
    assert_eq!(v["rollout"]["base_version"], 1);
    assert_eq!(v["rollout"]["started_by"], "admin");
    assert_eq!(v["group_version"], 1);
    let canary = canaries(&v);
    let expected: BTreeSet<String> = gws
        .iter()
        .filter(|g| tollgate_control::server::canary_bucket(&g.id) < 50)
        .map(|g| g.id.clone())
        .collect();
    assert_eq!(canary, expected);
    // What each gateway really receives matches the membership shown.
    for g in &gws {
        let got = cp.poll(g, 1).await;
        if canary.contains(&g.id) {
            assert_eq!(got, Some((2, V2.to_owned())), "canary {}", g.id);
        } else {
            assert_eq!(got, None, "non-canary {}", g.id);
        }
    }
    // Drift: canaries are assigned 2 but still report 1.
    let list = cp.ok(Method::GET, "/v1/gateways", None).await;
    for g in list.as_array().unwrap() {
        let is_canary = canary.contains(g["id"].as_str().unwrap());
        assert_eq!(g["canary"], is_canary);
        assert_eq!(g["assigned_version"], if is_canary { 2 } else { 1 });
        assert_eq!(g["drift"], is_canary, "{g}");
    }
    for g in gws.iter().filter(|g| canary.contains(&g.id)) {
        cp.report(g, 2).await;
    }
    let list = cp.ok(Method::GET, "/v1/gateways", None).await;
    assert!(list.as_array().unwrap().iter().all(|g| g["drift"] == false));

    // While a rollout is in progress: no second rollout, no plain publish, viewer cannot act.
    let (s, v) = cp
        .call(
            Method::POST,
            "/v1/groups/acme/rollout",
            &cp.admin,
            Some(r#"{"version": 2}"#),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let (s, v) = cp
        .call(Method::POST, "/v1/groups/acme/configs", &cp.admin, Some(V3))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("rollout in progress")
    );
    let (s, v) = cp
        .call(
            Method::POST,
            "/v1/groups/acme/configs/1/restore",
            &cp.admin,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let viewer = cp
        .ok(
            Method::POST,
            "/v1/operator-tokens",
            Some(r#"{"name":"v","role":"viewer"}"#),
        )
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, _) = cp
        .call(
            Method::POST,
            "/v1/groups/acme/rollout/promote",
            &viewer,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, v) = cp
        .call(Method::GET, "/v1/groups/acme/rollout", &viewer, None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(canaries(&v), canary, "membership is stable");

    // Promote: every gateway gets version 2.
    let v = cp
        .ok(Method::POST, "/v1/groups/acme/rollout/promote", None)
        .await;
    assert_eq!(v["rollout"]["state"], "promoted");
    assert_eq!(v["group_version"], 2);
    assert!(canaries(&v).is_empty());
    for g in &gws {
        assert_eq!(cp.poll(g, 1).await.unwrap().0, 2);
        cp.report(g, 2).await;
    }
    let (s, _) = cp
        .call(
            Method::POST,
            "/v1/groups/acme/rollout/promote",
            &cp.admin,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "nothing left to promote");
    let (s, _) = cp
        .call(
            Method::POST,
            "/v1/groups/acme/rollout/rollback",
            &cp.admin,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "nothing to roll back");
    // Gateways refuse older versions: a rollout of an old or unknown version is refused.
    let (s, _) = cp
        .call(
            Method::POST,
            "/v1/groups/acme/rollout",
            &cp.admin,
            Some(r#"{"version": 1}"#),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, _) = cp
        .call(
            Method::POST,
            "/v1/groups/acme/rollout",
            &cp.admin,
            Some(r#"{"version": 9}"#),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Canary by labels, then rollback.
    assert_eq!(cp.publish("acme", V3, false).await, 3);
    let v = cp
        .ok(
            Method::POST,
            "/v1/groups/acme/rollout",
            Some(r#"{"version": 3, "canary_labels": {"ring": "canary"}}"#),
        )
        .await;
    let labelled: BTreeSet<String> = gws
        .iter()
        .filter(|g| g.labels["ring"] == "canary")
        .map(|g| g.id.clone())
        .collect();
    assert_eq!(canaries(&v), labelled);
    for g in &gws {
        let got = cp.poll(g, 2).await;
        if labelled.contains(&g.id) {
            assert_eq!(got, Some((3, V3.to_owned())));
            cp.report(g, 3).await;
        } else {
            assert_eq!(got, None);
        }
    }
    let v = cp
        .ok(Method::POST, "/v1/groups/acme/rollout/rollback", None)
        .await;
    assert_eq!(v["rollout"]["state"], "rolled_back");
    // Back = forward: version 4 carries version 2's configuration, for everyone.
    assert_eq!(v["rollout"]["rollback_version"], 4);
    assert_eq!(v["group_version"], 4);
    for g in &gws {
        let applied = if labelled.contains(&g.id) { 3 } else { 2 };
        assert_eq!(cp.poll(g, applied).await, Some((4, V2.to_owned())));
    }
    let versions = cp.ok(Method::GET, "/v1/groups/acme/configs", None).await;
    assert_eq!(versions[0]["version"], 4);
    assert_eq!(versions[0]["assigned"], true);
    assert_eq!(versions[0]["sha256"], versions[2]["sha256"]);

    // Every change is audited: who, when, what.
    let audit = cp.ok(Method::GET, "/v1/audit?limit=1000", None).await;
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"].as_str().unwrap().starts_with("rollout."))
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "rollout.rollback",
            "rollout.start",
            "rollout.promote",
            "rollout.start"
        ]
    );
    let rb = &audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "rollout.rollback")
        .unwrap();
    assert_eq!(rb["actor"], "admin");
    assert_eq!(rb["target"], "acme");
    assert!(rb["at_ms"].as_u64().unwrap() > 0);
    assert_eq!(rb["detail"]["rollback_version"], 4);
    assert_eq!(rb["detail"]["base_version"], 2);

    // Going back after the fact: version 3's configuration again, as version 5, for everyone.
    let v = cp
        .ok(Method::POST, "/v1/groups/acme/configs/3/restore", None)
        .await;
    assert_eq!(v["version"], 5);
    for g in &gws {
        assert_eq!(cp.poll(g, 4).await, Some((5, V3.to_owned())));
    }
    let (s, _) = cp
        .call(
            Method::POST,
            "/v1/groups/acme/configs/42/restore",
            &cp.admin,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = cp
        .call(
            Method::POST,
            "/v1/groups/acme/configs/3/restore",
            &viewer,
            None,
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let audit = cp.ok(Method::GET, "/v1/audit?limit=1", None).await;
    assert_eq!(audit[0]["action"], "config.restore");
    assert_eq!(audit[0]["detail"]["restored_from"], 3);

    // State survives a restart.
    cp.run.stop();
    let cp2 = boot_again(dir.path()).await;
    let (s, v) = cp2
        .call(Method::GET, "/v1/groups/acme/rollout", &viewer, None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["rollout"]["state"], "rolled_back");
    assert_eq!(v["group_version"], 5);
    cp2.run.stop();
}

/// A second start on the same data directory/database (no admin token is printed again).
async fn boot_again(dir: &std::path::Path) -> Cp {
    let run = start(ServerConfig {
        data_dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: pg_url(),
        tls_cert: None,
        tls_key: None,
    })
    .await
    .unwrap();
    assert!(run.admin_token.is_none());
    let fp = parse_fingerprint(&run.fingerprint).unwrap();
    let client = Client::new(&format!("https://127.0.0.1:{}", run.addr.port()), Some(fp)).unwrap();
    Cp {
        run,
        client,
        admin: String::new(),
    }
}

async fn a_scoped_viewer_sees_only_its_group() {
    let dir = tempfile::tempdir().unwrap();
    let cp = boot(dir.path()).await;
    for g in ["acme", "globex"] {
        cp.group(g).await;
        let gw = cp.enroll(g, &format!("{g}-gw"), json!({})).await;
        cp.publish(g, V1, true).await;
        cp.report(&gw, 1).await;
    }
    let (s, v) = cp
        .call(
            Method::POST,
            "/v1/operator-tokens",
            &cp.admin,
            Some(r#"{"name":"acme-view","role":"viewer","group":"acme"}"#),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let scoped = v["token"].as_str().unwrap().to_owned();
    // Only viewers can be scoped; the group must exist.
    let (s, _) = cp
        .call(
            Method::POST,
            "/v1/operator-tokens",
            &cp.admin,
            Some(r#"{"name":"x","role":"admin","group":"acme"}"#),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = cp
        .call(
            Method::POST,
            "/v1/operator-tokens",
            &cp.admin,
            Some(r#"{"name":"y","role":"viewer","group":"nope"}"#),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let (_, v) = cp.call(Method::GET, "/v1/groups", &scoped, None).await;
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["acme"]);
    let (_, v) = cp.call(Method::GET, "/v1/gateways", &scoped, None).await;
    let groups: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["group"].as_str().unwrap())
        .collect();
    assert_eq!(groups, ["acme"]);
    for path in [
        "/v1/groups/globex/configs",
        "/v1/groups/globex/rollout",
        // An unknown group is forbidden too: a scoped token learns nothing about other names.
        "/v1/groups/nope/configs",
    ] {
        let (s, v) = cp.call(Method::GET, path, &scoped, None).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{path}: {v}");
        assert_eq!(v["error"], "forbidden");
    }
    let (s, _) = cp
        .call(Method::GET, "/v1/groups/acme/configs", &scoped, None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = cp
        .call(Method::GET, "/v1/groups/acme/rollout", &scoped, None)
        .await;
    assert_eq!(s, StatusCode::OK);
    // Audit: acme's records (group, enroll, publish, applied), nothing of globex, no operators.
    let (_, mine) = cp
        .call(Method::GET, "/v1/audit?limit=1000", &scoped, None)
        .await;
    let mine = mine.as_array().unwrap();
    let text = serde_json::to_string(mine).unwrap();
    assert!(!text.contains("globex"), "{text}");
    assert!(mine.iter().all(|e| e["action"] != "operator.create"));
    let actions: BTreeSet<&str> = mine.iter().map(|e| e["action"].as_str().unwrap()).collect();
    for a in [
        "group.create",
        "enrollment_token.create",
        "gateway.enroll",
        "config.publish",
        "config.applied",
    ] {
        assert!(actions.contains(a), "{a} missing from {actions:?}");
    }
    // The unscoped admin sees both groups' records.
    let all = cp.ok(Method::GET, "/v1/audit?limit=1000", None).await;
    assert!(all.as_array().unwrap().len() > mine.len());
    // A scoped viewer is still read-only.
    let (s, _) = cp
        .call(Method::POST, "/v1/groups/acme/configs", &scoped, Some(V2))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    cp.run.stop();
}

/// After a restore from an older backup the gateways may serve versions the database does not
/// have; new versions must be numbered above them (gateways refuse older ones).
async fn new_versions_are_numbered_above_what_gateways_serve() {
    let dir = tempfile::tempdir().unwrap();
    let cp = boot(dir.path()).await;
    cp.group("acme").await;
    let gw = cp.enroll("acme", "gw", json!({})).await;
    assert_eq!(cp.publish("acme", V1, true).await, 1);
    cp.report(&gw, 7).await;
    assert_eq!(cp.publish("acme", V2, true).await, 8);
    assert_eq!(cp.poll(&gw, 7).await.unwrap().0, 8);
    let body = json!({"applied_version": u64::MAX, "healthy": true, "started_at": 1}).to_string();
    let (s, _) = cp
        .call(Method::POST, "/v1/gateway/status", &gw.cred, Some(&body))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    cp.run.stop();
}

mod sqlite {
    #[tokio::test]
    async fn new_versions_are_numbered_above_what_gateways_serve() {
        super::new_versions_are_numbered_above_what_gateways_serve().await
    }
    #[tokio::test]
    async fn canary_promote_rollback_and_drift() {
        super::canary_promote_rollback_and_drift().await
    }
    #[tokio::test]
    async fn a_scoped_viewer_sees_only_its_group() {
        super::a_scoped_viewer_sees_only_its_group().await
    }
}

mod postgres {
    #[tokio::test]
    async fn new_versions_are_numbered_above_what_gateways_serve() {
        super::on_postgres(super::new_versions_are_numbered_above_what_gateways_serve()).await
    }
    #[tokio::test]
    async fn canary_promote_rollback_and_drift() {
        super::on_postgres(super::canary_promote_rollback_and_drift()).await
    }
    #[tokio::test]
    async fn a_scoped_viewer_sees_only_its_group() {
        super::on_postgres(super::a_scoped_viewer_sees_only_its_group()).await
    }
}
