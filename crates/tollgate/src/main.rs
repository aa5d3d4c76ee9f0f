//! The `tollgate` command: one binary, several subcommands.

mod ca;
mod control_plane;
mod cp;
mod cp_usage;
mod discover;
mod explain;
mod limits_cli;
mod managed;
mod run;
mod runtime;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc: the proxy allocates and frees many small buffers per request;
/// glibc's allocator measurably costs more here (see bench/README.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
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
    /// Run the control plane: the HTTPS API remote gateways enroll with and pull signed
    /// configuration from, and operators manage the fleet through (SQLite under --data-dir).
    ControlPlane(control_plane::ControlPlaneArgs),
    /// Operate a control plane: groups, enrollment tokens, config publishing, gateways.
    Cp(cp::CpArgs),
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
    /// The TLS interception CA: `ca init` creates it, `ca cert` prints the
    /// certificate clients must trust (for APIs with `tls: intercept`).
    Ca(ca::CaArgs),
    /// Show a running gateway's rate limits and live counters (from its admin
    /// API, `GET /admin/limits`): per API and limit, each key's used and
    /// remaining quota and time to reset, and whether the shared store is degraded.
    Limits(limits_cli::LimitsArgs),
    /// Show the endpoints a running gateway has seen, managed or not (from its
    /// admin API, `GET /admin/discovery`): per host, method and path pattern, counts,
    /// statuses, latency, consumers and provider rate limits. `--suggest` prints a
    /// starting policy for them instead.
    Discover(discover::DiscoverArgs),
    /// Print a shell completion script to stdout, e.g.
    /// `tollgate completions bash > /etc/bash_completion.d/tollgate`.
    Completions {
        /// The shell to generate completions for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run::main(args),
        Command::ControlPlane(args) => control_plane::main(args),
        Command::Cp(args) => cp::main(args),
        Command::Validate { file } => validate(file),
        Command::Explain(args) => explain::main(args),
        Command::Limits(args) => limits_cli::main(args),
        Command::Discover(args) => discover::main(args),
        Command::Ca(args) => ca::main(args),
        Command::Completions { shell } => {
            // Generated from the same clap definition that parses arguments, so
            // completions cannot drift from the real subcommands and flags.
            let mut cmd = <Cli as clap::CommandFactory>::command();
            // Render into memory first: `generate` panics on a write error, and a
            // closed pipe (`tollgate completions bash | head`) must not be a panic.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "tollgate", &mut script);
            match std::io::Write::write_all(&mut std::io::stdout().lock(), &script) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: cannot write the completion script: {e}");
                    ExitCode::FAILURE
                }
            }
        }
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

fn summary(policy: &tollgate_policy::Policy) -> String {
    let cfg = policy.config();
    format!(
        "{} APIs, {} consumers, default_action {}",
        cfg.apis.len(),
        cfg.consumers.len(),
        serde_json::to_value(cfg.default_action)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    )
}

fn validate(file: PathBuf) -> ExitCode {
    let source = ConfigSource::Path(file.clone());
    let checked = load_policy(&source, 1).and_then(|policy| {
        // Build the runtime pieces too (network guard, DNS resolver, upstream
        // TLS with `upstream.ca_file`, the admin token), so `validate` catches
        // what `run` would refuse. Only binding the listeners and opening the
        // access log are left to `run`.
        let summary = summary(&policy);
        tollgate_proxy::state::Active::build(policy, &[], None)
            .map(|_| summary)
            .map_err(|e| {
                let located = match tollgate_config::load_file(&file) {
                    Ok(loaded) => loaded.source.locate(e.key_path(), e.to_string()),
                    Err(mut errors) => errors.0.remove(0),
                };
                tollgate_config::ConfigErrors(vec![located])
            })
    });
    match checked {
        Ok(summary) => {
            println!("{}: valid ({summary})", file.display());
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{}: {} error(s)", file.display(), errors.0.len());
            ExitCode::FAILURE
        }
    }
}
