//! `tollgate control-plane` and `tollgate cp …` as an operator uses them: the real binary, the
//! real HTTPS listener on loopback, the printed fingerprint and admin token.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

struct Server {
    child: Child,
    url: String,
    fingerprint: String,
    admin: Option<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the control plane on an ephemeral port and reads what it prints at start: the address,
/// the fingerprint, the signing key and — on a first start only — the admin token, in that order.
fn start(data_dir: &std::path::Path, first_start: bool) -> Server {
    let mut child = Command::new(BIN)
        .args(["control-plane", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env_remove("TOLLGATE_CP_DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = || lines.next().expect("control plane exited early").unwrap();
    let value = |line: String| line.rsplit(' ').next().unwrap().to_owned();
    let url = next();
    assert!(
        url.starts_with("control plane listening on https://"),
        "{url}"
    );
    let fp = next();
    assert!(
        fp.starts_with("TLS certificate SHA-256 fingerprint: "),
        "{fp}"
    );
    let key = next();
    assert!(key.starts_with("bundle signing key: key_id "), "{key}");
    let admin = first_start.then(|| {
        let line = next();
        assert!(line.starts_with("admin operator token"), "{line}");
        value(line)
    });
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    Server {
        child,
        url: value(url),
        fingerprint: value(fp),
        admin,
    }
}

fn cp(s: &Server, token: &str, args: &[&str]) -> Output {
    cp_with(&s.url, &s.fingerprint, token, args)
}

fn cp_with(url: &str, fingerprint: &str, token: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("cp")
        .args(args)
        .env("TOLLGATE_CP_URL", url)
        .env("TOLLGATE_CP_TOKEN", token)
        .env("TOLLGATE_CP_FINGERPRINT", fingerprint)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn operator_flow_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cp");
    let server = start(&data, true);
    let admin = server
        .admin
        .clone()
        .expect("first start prints the admin token");
    assert!(admin.starts_with("tgop_"), "{admin}");
    assert_eq!(server.fingerprint.len(), 64);

    let o = cp(
        &server,
        &admin,
        &["groups", "create", "acme", "--label", "tier=gold"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = cp(&server, &admin, &["tokens", "create", "acme"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).trim().starts_with("tgen_"), "{}", stdout(&o));

    let good = dir.path().join("good.yaml");
    std::fs::write(&good, "default_action: deny\n").unwrap();
    let o = cp(
        &server,
        &admin,
        &["configs", "publish", "acme", good.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("as version 1"), "{}", stdout(&o));

    // Invalid: exit 1, every error located, nothing published.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "default_action: deny\nbogus: 1\n").unwrap();
    let o = cp(
        &server,
        &admin,
        &["configs", "publish", "acme", bad.to_str().unwrap()],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("422"), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("acme.yaml:2:1: bogus: unknown field"),
        "{}",
        stderr(&o)
    );

    let o = cp(&server, &admin, &["configs", "list", "acme"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: Vec<String> = stdout(&o).lines().skip(1).map(str::to_owned).collect();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(rows[0].trim_start().starts_with("1  yes"), "{rows:?}");

    let o = cp(&server, &admin, &["groups", "list"]);
    assert!(
        stdout(&o).contains("acme") && stdout(&o).contains(r#"{"tier":"gold"}"#),
        "{}",
        stdout(&o)
    );
    // Enroll a gateway with the CLI-made token (as `tollgate run --enroll-token` would), then
    // list and revoke it through the CLI.
    let o = cp(&server, &admin, &["tokens", "create", "acme"]);
    let token = stdout(&o).trim().to_owned();
    let client = tollgate_control::agent::client::Client::new(
        &server.url,
        tollgate_control::agent::client::parse_fingerprint(&server.fingerprint),
    )
    .unwrap();
    let body = format!(r#"{{"token":"{token}","name":"edge-1"}}"#).into_bytes();
    let reply = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(client.call(
            http::Method::POST,
            "/v1/enroll",
            None,
            Some(body),
            std::time::Duration::from_secs(10),
        ))
        .unwrap();
    assert_eq!(reply.status, 200);
    let enrolled: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    let id = enrolled["gateway_id"].as_str().unwrap();
    let o = cp(&server, &admin, &["gateways", "list"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let row = stdout(&o)
        .lines()
        .find(|l| l.starts_with(id))
        .map(str::to_owned);
    let row = row.unwrap_or_else(|| panic!("{} not listed: {}", id, stdout(&o)));
    let cols: Vec<&str> = row.split_whitespace().collect();
    // id, name, group, applied, assigned ("*": drift, nothing applied yet), health
    assert_eq!(
        &cols[1..6],
        ["edge-1", "acme", "0", "*1", "unhealthy"],
        "{row}"
    );
    let o = cp(&server, &admin, &["gateways", "revoke", id]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = cp(&server, &admin, &["gateways", "list"]);
    assert!(
        stdout(&o)
            .lines()
            .any(|l| l.starts_with(id) && l.contains("revoked")),
        "{}",
        stdout(&o)
    );

    // A viewer token made through the CLI can read but not publish; the audit shows the publish.
    let o = cp(
        &server,
        &admin,
        &["operators", "create", "auditor", "--role", "viewer"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let viewer = stdout(&o).trim().to_owned();
    let o = cp(
        &server,
        &viewer,
        &["configs", "publish", "acme", good.to_str().unwrap()],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("403"), "{}", stderr(&o));
    let o = cp(&server, &viewer, &["audit"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o)
            .lines()
            .any(|l| l.contains(" admin ") && l.contains("config.publish") && l.contains("acme")),
        "{}",
        stdout(&o)
    );

    // A wrong token and a wrong fingerprint both fail clearly.
    let o = cp(&server, "tgop_wrong", &["groups", "list"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("401"), "{}", stderr(&o));
    let o = cp_with(&server.url, &"00".repeat(32), &admin, &["groups", "list"]);
    assert!(!o.status.success());
    assert!(stderr(&o).to_lowercase().contains("tls"), "{}", stderr(&o));
}

/// Runs one statement on the real PostgreSQL (database `test`, user `$PGUSER` or `postgres`).
fn pg_admin(sql: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let user = std::env::var("PGUSER").unwrap_or_else(|_| "postgres".into());
        let (c, conn) = tokio_postgres::connect(
            &format!("postgres://{user}@127.0.0.1:5432/test"),
            tokio_postgres::NoTls,
        )
        .await
        .expect("PostgreSQL at 127.0.0.1:5432");
        tokio::spawn(conn);
        c.batch_execute(sql).await.unwrap();
    });
}

#[test]
fn database_url_starts_on_postgres_and_a_bad_one_hides_its_password() {
    // A good URL: the server migrates a fresh database and starts (prints its admin token).
    let db = format!("tg_cli_{}", std::process::id());
    pg_admin(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"));
    pg_admin(&format!("CREATE DATABASE {db}"));
    let user = std::env::var("PGUSER").unwrap_or_else(|_| "postgres".into());
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["control-plane", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env(
            "TOLLGATE_CP_DATABASE_URL",
            format!("postgres://{user}@127.0.0.1:5432/{db}"),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines: Vec<String> = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .take(4)
        .map(|l| l.unwrap())
        .collect();
    let _ = child.kill();
    let _ = child.wait();
    pg_admin(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"));
    assert!(
        lines[0].starts_with("control plane listening on https://"),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("admin operator token")),
        "{lines:?}"
    );

    // A bad URL (nothing listens on port 1): a clear error, without the password.
    let o = Command::new(BIN)
        .args([
            "control-plane",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            "postgres://u:secret@127.0.0.1:1/x",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("cannot connect to postgres://***@127.0.0.1:1/x"),
        "{err}"
    );
    assert!(
        !err.contains("secret"),
        "the password must not be printed: {err}"
    );
}
