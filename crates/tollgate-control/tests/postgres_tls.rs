//! TLS between the control plane and the real PostgreSQL at 127.0.0.1:5432 (which runs with
//! `ssl=on` and a self-signed certificate for `localhost`, as Debian's cluster does): `require`
//! encrypts, `verify-full` with that certificate as `sslrootcert` connects by name, a wrong
//! host name or a foreign CA is refused with a message that says which setting to look at, and
//! the server's own view (`pg_stat_ssl`) confirms the control plane's connections use TLS.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use tollgate_control::server::{ServerConfig, start};

fn user() -> String {
    std::env::var("PGUSER").unwrap_or_else(|_| "postgres".into())
}

async fn admin(sql: &str) {
    let url = format!("postgres://{}@127.0.0.1:5432/test", user());
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL at 127.0.0.1:5432");
    tokio::spawn(conn);
    c.batch_execute(sql).await.unwrap();
}

struct Db(String);

impl Db {
    async fn create() -> Db {
        let mut raw = [0u8; 8];
        getrandom::fill(&mut raw).unwrap();
        let name = format!(
            "tg_tls_{}",
            raw.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        admin(&format!("CREATE DATABASE {name}")).await;
        Db(name)
    }
    async fn drop_db(self) {
        admin(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.0)).await;
    }
}

/// The server's certificate (self-signed): what an operator would pass as `sslrootcert`.
async fn server_cert(dir: &std::path::Path) -> std::path::PathBuf {
    let url = format!("postgres://{}@127.0.0.1:5432/test", user());
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let ssl: String = c.query_one("SHOW ssl", &[]).await.unwrap().get(0);
    assert_eq!(
        ssl, "on",
        "the local PostgreSQL must run with ssl=on for this test"
    );
    let file: String = c.query_one("SHOW ssl_cert_file", &[]).await.unwrap().get(0);
    let out = dir.join("server-ca.pem");
    std::fs::copy(&file, &out).unwrap();
    out
}

async fn boot(
    dir: &std::path::Path,
    url: String,
) -> Result<tollgate_control::server::Running, String> {
    start(ServerConfig {
        data_dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: Some(url),
        tls_cert: None,
        tls_key: None,
    })
    .await
    .map_err(|e| e.to_string())
}

/// `pg_stat_ssl` for the database's control-plane connections: `(application_name, ssl)`.
async fn connections(db: &str) -> Vec<(String, bool)> {
    let url = format!("postgres://{}@127.0.0.1:5432/test", user());
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c.query(
        "SELECT a.application_name, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s ON s.pid = a.pid
         WHERE a.datname = $1",
        &[&db],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

async fn wait_for_listener(db: &str) -> Vec<(String, bool)> {
    for _ in 0..100 {
        let c = connections(db).await;
        if c.iter().any(|(app, _)| app == "tollgate-cp-listen") {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the LISTEN connection never appeared");
}

#[tokio::test]
async fn require_and_verify_full_use_tls() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = server_cert(tmp.path()).await;
    let db = Db::create().await;

    // require: encrypted (every connection, the LISTEN one included).
    let dir = tmp.path().join("a");
    let run = boot(
        &dir,
        format!(
            "postgres://{}@127.0.0.1:5432/{}?sslmode=require",
            user(),
            db.0
        ),
    )
    .await
    .unwrap();
    let conns = wait_for_listener(&db.0).await;
    assert!(conns.iter().all(|(_, ssl)| *ssl), "{conns:?}");
    run.stop();

    // verify-full against the server's certificate, by the name it carries.
    let dir = tmp.path().join("b");
    let run = boot(
        &dir,
        format!(
            "postgres://{}@localhost:5432/{}?sslmode=verify-full&sslrootcert={}",
            user(),
            db.0,
            ca.display()
        ),
    )
    .await
    .unwrap();
    let conns = wait_for_listener(&db.0).await;
    assert!(conns.iter().all(|(_, ssl)| *ssl), "{conns:?}");
    run.stop();

    // disable: plain text (to show the check above can fail).
    let dir = tmp.path().join("c");
    let run = boot(
        &dir,
        format!(
            "postgres://{}@127.0.0.1:5432/{}?sslmode=disable",
            user(),
            db.0
        ),
    )
    .await
    .unwrap();
    let mut plain = false;
    for _ in 0..100 {
        if connections(&db.0).await.iter().any(|(_, ssl)| !*ssl) {
            plain = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(plain);
    run.stop();
    db.drop_db().await;
}

#[tokio::test]
async fn tls_failures_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = server_cert(tmp.path()).await;
    let db = Db::create().await;
    let u = user();

    // The certificate names localhost, not 127.0.0.1: verify-full refuses, verify-ca accepts.
    let err = boot(
        &tmp.path().join("a"),
        format!(
            "postgres://{u}:s3cret@127.0.0.1:5432/{}?sslmode=verify-full&sslrootcert={}",
            db.0,
            ca.display()
        ),
    )
    .await
    .unwrap_err();
    assert!(err.contains("does not name this host"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
    let run = boot(
        &tmp.path().join("b"),
        format!(
            "postgres://{u}@127.0.0.1:5432/{}?sslmode=verify-ca&sslrootcert={}",
            db.0,
            ca.display()
        ),
    )
    .await
    .unwrap();
    run.stop();

    // A CA that did not sign the server's certificate.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let other_ca = tmp.path().join("other-ca.pem");
    std::fs::write(&other_ca, other.cert.pem()).unwrap();
    let err = boot(
        &tmp.path().join("c"),
        format!(
            "postgres://{u}@localhost:5432/{}?sslmode=verify-full&sslrootcert={}",
            db.0,
            other_ca.display()
        ),
    )
    .await
    .unwrap_err();
    assert!(err.contains("does not chain to sslrootcert"), "{err}");

    // Configuration mistakes are named before any connection.
    let err = boot(
        &tmp.path().join("d"),
        format!(
            "postgres://{u}@localhost:5432/{}?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
            db.0
        ),
    )
    .await
    .unwrap_err();
    assert!(err.contains("sslrootcert /nonexistent/ca.pem"), "{err}");
    let err = boot(
        &tmp.path().join("e"),
        format!("postgres://{u}@localhost:5432/{}?sslmode=verify_full", db.0),
    )
    .await
    .unwrap_err();
    assert!(err.contains("sslmode=\"verify_full\""), "{err}");
    db.drop_db().await;
}
