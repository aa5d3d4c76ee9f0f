//! `tollgate control-plane`: runs the control plane server (see `tollgate_control::server`).
//!
//! Prints, once, what an operator needs to continue: the listen address, the TLS certificate's
//! SHA-256 fingerprint (to pin with `--ca-fingerprint` / `--cp-fingerprint`), the bundle-signing
//! key, and — on the first start only — the admin operator token (only its hash is stored, so
//! it cannot be shown again).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use tollgate_control::server::{ServerConfig, start};

#[derive(Debug, Args)]
pub struct ControlPlaneArgs {
    /// Directory for the database, signing key and generated TLS certificate (created if missing).
    #[arg(long, env = "TOLLGATE_CP_DATA_DIR", default_value = "tollgate-cp")]
    data_dir: PathBuf,
    /// HTTPS listen address.
    #[arg(long, env = "TOLLGATE_CP_LISTEN", default_value = "127.0.0.1:9443")]
    listen: SocketAddr,
    /// PostgreSQL URL (`postgres://user:pass@host:5432/db?sslmode=verify-full&sslrootcert=ca.pem`)
    /// for several replicas on one database; the embedded SQLite database under --data-dir is
    /// used when omitted.
    #[arg(long, env = "TOLLGATE_CP_DATABASE_URL")]
    database_url: Option<String>,
    /// PEM certificate chain to serve instead of the generated self-signed one (with --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Do not serve: write a restorable copy of --data-dir (consistent SQLite snapshot, signing
    /// key, generated TLS identity) to this new directory and exit. Safe while a control plane
    /// serves from the same data directory. (PostgreSQL: use pg_dump.)
    #[arg(long, value_name = "DIR", conflicts_with = "database_url")]
    backup_to: Option<PathBuf>,
}

pub fn main(args: ControlPlaneArgs) -> ExitCode {
    let runtime = match crate::runtime::build(crate::runtime::Flavor::Server) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    tollgate_telemetry::init_tracing("info");
    if let Some(out) = &args.backup_to {
        return match tollgate_control::server::backup(&args.data_dir, out) {
            Ok(()) => {
                println!("backed up {} to {}", args.data_dir.display(), out.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: backup failed: {e}");
                ExitCode::FAILURE
            }
        };
    }
    runtime.block_on(async move {
        let cfg = ServerConfig {
            data_dir: args.data_dir,
            listen: args.listen,
            database_url: args.database_url,
            tls_cert: args.tls_cert,
            tls_key: args.tls_key,
        };
        let running = match start(cfg).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        println!("control plane listening on https://{}", running.addr);
        println!(
            "TLS certificate SHA-256 fingerprint: {}",
            running.fingerprint
        );
        println!(
            "bundle signing key: key_id {} public_key {}",
            running.key.key_id, running.key.public_key_b64
        );
        if let Some(token) = &running.admin_token {
            println!("admin operator token (shown once, store it now): {token}");
        }
        tokio::select! {
            () = shutdown_signal() => {}
            () = running.wait() => {}
        }
        ExitCode::SUCCESS
    })
}

/// Ctrl-C or SIGTERM (what `docker stop` and systemd send).
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}
