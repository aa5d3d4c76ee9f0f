//! The gateway-side sync agent against the real control plane in-process (HTTPS on loopback,
//! certificate pinned by fingerprint): enrollment stores the credential and the signing key,
//! the first bundle is verified and compiled, the backup is written and re-read, a restart needs
//! no token, a wrong pinned key refuses to start, and the running agent applies a newly published
//! version through the proxy's validate-and-swap path (`Reloader::apply_text`). Traffic through
//! the applied policy is covered end to end in tests/python/test_managed.py.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::json;
use tollgate_control::agent::client::{Client, parse_fingerprint};
use tollgate_control::agent::{self, Agent, AgentError, Options};
use tollgate_control::server::{Running, ServerConfig, start};
use tollgate_proxy::reload::{ConfigSource, Reloader};
use tollgate_proxy::state::Gateway;
use tollgate_telemetry::{AccessLog, Metrics};

const V1: &str = "default_action: deny\nlogging:\n  access_log: \"off\"\n";
const V2: &str = "default_action: allow\nlogging:\n  access_log: \"off\"\n";

async fn boot(dir: &std::path::Path) -> (Running, Client) {
    let run = start(ServerConfig {
        data_dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: None,
        tls_cert: None,
        tls_key: None,
    })
    .await
    .unwrap();
    let fp = parse_fingerprint(&run.fingerprint).unwrap();
    let client = Client::new(&format!("https://127.0.0.1:{}", run.addr.port()), Some(fp)).unwrap();
    (run, client)
}

async fn op(client: &Client, admin: &str, path: &str, body: Option<String>) -> serde_json::Value {
    let r = client
        .call(
            Method::POST,
            path,
            Some(admin),
            body.map(String::into_bytes),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert!(r.status.is_success(), "{path}: {} {:?}", r.status, r.body);
    if r.status == StatusCode::NO_CONTENT {
        return serde_json::Value::Null;
    }
    serde_json::from_slice(&r.body).unwrap()
}

fn options(run: &Running, state: &std::path::Path, token: Option<String>) -> Options {
    Options {
        control_plane: format!("https://127.0.0.1:{}", run.addr.port()),
        enroll_token: token,
        state_dir: state.to_path_buf(),
        pinned_key: None,
        fingerprint: parse_fingerprint(&run.fingerprint),
        name: "test-gw".into(),
        labels: BTreeMap::new(),
        wait_secs: 2,
        status_interval: Duration::from_secs(30),
    }
}

#[tokio::test]
async fn enroll_first_bundle_backup_restart_and_live_apply() {
    let tmp = tempfile::tempdir().unwrap();
    let (run, client) = boot(&tmp.path().join("cp")).await;
    let admin = run.admin_token.clone().unwrap();
    op(
        &client,
        &admin,
        "/v1/groups",
        Some(json!({"name": "acme"}).to_string()),
    )
    .await;
    let token = op(&client, &admin, "/v1/groups/acme/enrollment-tokens", None).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    op(&client, &admin, "/v1/groups/acme/configs", Some(V1.into())).await;

    // First start: enroll, no backup yet, the first bundle is v1.
    let state = tmp.path().join("state");
    let metrics = Arc::new(Metrics::new());
    let agent = Agent::start(options(&run, &state, Some(token.clone())), metrics.clone())
        .await
        .unwrap();
    assert_eq!(agent.group(), "acme");
    assert!(agent.backup().is_none());
    let ready = agent.first_bundle().await;
    assert_eq!(ready.signed.bundle.version, 1);
    assert!(!ready.from_backup);
    agent.started_with(&ready.signed, false);
    assert_eq!(agent.applied(), 1);

    // The backup verifies and compiles; a restart needs no token (it was spent).
    let again = Agent::start(options(&run, &state, None), Arc::new(Metrics::new()))
        .await
        .unwrap();
    let backup = again.backup().expect("backup serves");
    assert!(backup.from_backup);
    assert_eq!(backup.signed, ready.signed);
    // The spent token cannot enroll another gateway.
    let err = Agent::start(
        options(&run, &tmp.path().join("other"), Some(token)),
        Arc::new(Metrics::new()),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, AgentError::EnrollRefused { status: 401, .. }),
        "{err}"
    );

    // Live: build a gateway from v1, let the agent run, publish v2.
    let policy = ready.policy;
    let gateway = Gateway::new(
        policy,
        metrics.clone(),
        AccessLog::open("off", &metrics).unwrap(),
        &[],
    )
    .unwrap();
    let reloader = Reloader::new(
        ConfigSource::Managed {
            control_plane: "test".into(),
        },
        gateway,
        vec![],
        1,
    );
    let _task = agent.spawn(Arc::clone(&reloader));
    op(&client, &admin, "/v1/groups/acme/configs", Some(V2.into())).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while reloader.status().version != 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "v2 not applied: {:?}",
            reloader.status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(agent.applied(), 2);
    let text = metrics.encode();
    assert!(text.contains("tollgate_config_applied_version 2"), "{text}");
    assert!(
        text.contains("tollgate_control_plane_connected 1"),
        "{text}"
    );
    // The new backup is v2.
    let b = again.backup().unwrap();
    assert_eq!(b.signed.bundle.version, 2);
}

#[tokio::test]
async fn pinned_key_mismatch_refuses_enrollment() {
    let tmp = tempfile::tempdir().unwrap();
    let (run, client) = boot(&tmp.path().join("cp")).await;
    let admin = run.admin_token.clone().unwrap();
    op(
        &client,
        &admin,
        "/v1/groups",
        Some(json!({"name": "acme"}).to_string()),
    )
    .await;
    let token = op(&client, &admin, "/v1/groups/acme/enrollment-tokens", None).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut opts = options(&run, &tmp.path().join("state"), Some(token));
    opts.pinned_key = Some(ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key());
    let err = Agent::start(opts, Arc::new(Metrics::new()))
        .await
        .unwrap_err();
    assert!(matches!(err, AgentError::KeyMismatch { .. }), "{err}");
    assert!(
        !tmp.path()
            .join("state")
            .join(agent::store::ENROLLMENT_FILE)
            .exists()
    );
}
