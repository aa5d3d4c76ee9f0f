//! `tollgate ca init | cert`: the interception CA for `tls: intercept` APIs.
//!
//! `init` writes `ca.crt` and `ca.key` (mode 0600) in `--dir`, refusing to
//! replace them without `--force`; `cert` prints the certificate clients must
//! trust. The CA is made by `tollgate_proxy::mint`, the same code the tests use.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use tollgate_proxy::mint;

#[derive(Debug, Args)]
pub struct CaArgs {
    #[command(subcommand)]
    command: CaCommand,
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Create a new interception CA (ECDSA P-256, 10 years): `ca.crt` and
    /// `ca.key` (mode 0600) in --dir. Point `tls_intercept.ca_cert` and
    /// `tls_intercept.ca_key` at them.
    Init {
        /// Directory for `ca.crt` and `ca.key` (created if missing).
        #[arg(long, env = "TOLLGATE_CA_DIR", default_value = "tollgate-ca")]
        dir: PathBuf,
        /// Replace an existing CA (clients trusting the old one stop trusting Tollgate).
        #[arg(long)]
        force: bool,
    },
    /// Print the CA certificate (PEM) that clients must trust.
    Cert {
        /// Directory holding `ca.crt`.
        #[arg(long, env = "TOLLGATE_CA_DIR", default_value = "tollgate-ca")]
        dir: PathBuf,
    },
}

pub fn main(args: CaArgs) -> ExitCode {
    match args.command {
        CaCommand::Init { dir, force } => match mint::write_ca(&dir, force) {
            Ok((crt, key)) => {
                println!("wrote {} and {}", crt.display(), key.display());
                println!(
                    "configure:\n  tls_intercept:\n    ca_cert: {}\n    ca_key: {}",
                    crt.display(),
                    key.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        CaCommand::Cert { dir } => {
            let path = dir.join(mint::CA_CERT_FILE);
            match std::fs::read_to_string(&path) {
                Ok(pem) => {
                    print!("{pem}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!(
                        "error: {}: {e} (run `tollgate ca init` first)",
                        path.display()
                    );
                    ExitCode::FAILURE
                }
            }
        }
    }
}
