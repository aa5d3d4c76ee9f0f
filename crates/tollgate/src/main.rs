//! The `tollgate` command: one binary, several subcommands.

mod explain;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tollgate_proxy::reload::{ConfigSource, load_policy};

/// Tollgate: an egress API gateway. It governs outbound traffic from your
/// workloads to third-party APIs: allowlists, consumers, network guard,
/// access logs and metrics.
#[derive(Debug, Parser)]
#[command(name = "tollgate", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway (forward proxy, CONNECT tunnels and routes on one
    /// listener, plus the admin listener). Without --config, runs the embedded
    /// default configuration: proxy on 127.0.0.1:8080, admin on 127.0.0.1:8081,
    /// public destinations allowed and logged, private and metadata addresses blocked.
    Run(run::RunArgs),
    /// Check a configuration file (or directory). Prints every error with file,
    /// line, column and key path; exits 0 when valid, 1 otherwise.
    Validate {
        /// The configuration file or directory.
        file: PathBuf,
    },
    /// Show how a request would be handled: which consumer and API matched, and
    /// each stage's decision with its reason. Nothing is sent anywhere.
    Explain(explain::ExplainArgs),
    /// Print the JSON Schema of the configuration (for editor completion).
    Schema,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run::main(args),
        Command::Validate { file } => validate(file),
        Command::Explain(args) => explain::main(args),
        Command::Schema => match serde_json::to_string_pretty(&tollgate_config::json_schema()) {
            Ok(s) => {
                println!("{s}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn validate(file: PathBuf) -> ExitCode {
    let source = ConfigSource::Path(file.clone());
    match load_policy(&source, 1) {
        Ok(policy) => {
            let cfg = policy.config();
            println!(
                "{}: valid ({} APIs, {} consumers, default_action {})",
                file.display(),
                cfg.apis.len(),
                cfg.consumers.len(),
                serde_json::to_value(cfg.default_action)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{}: {} error(s)", file.display(), errors.0.len());
            ExitCode::FAILURE
        }
    }
}
