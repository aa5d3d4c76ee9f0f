//! The tokio runtime each subcommand runs on: multi-threaded for the long-running
//! servers, single-threaded for the short admin and control-plane clients.

use std::process::ExitCode;

use tokio::runtime::{Builder, Runtime};

/// Which runtime a subcommand needs.
#[derive(Clone, Copy)]
pub enum Flavor {
    /// `tollgate run` and `tollgate control-plane`: work on every core.
    Server,
    /// One-shot clients (`limits`, `discover`, `cp`): one thread is plenty.
    Client,
}

/// Builds the runtime, or prints why it cannot start and gives the exit code to return.
pub fn build(flavor: Flavor) -> Result<Runtime, ExitCode> {
    let mut builder = match flavor {
        Flavor::Server => Builder::new_multi_thread(),
        Flavor::Client => Builder::new_current_thread(),
    };
    builder.enable_all().build().map_err(|e| {
        eprintln!("error: cannot start the async runtime: {e}");
        ExitCode::FAILURE
    })
}
