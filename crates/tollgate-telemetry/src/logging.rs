//! Process-wide diagnostic logging: `tracing` events as JSON lines on stderr.
//!
//! The filter comes from `TOLLGATE_LOG` when it is set and valid, otherwise from the caller
//! (usually the config's log level). A filter that does not parse never prevents start-up: the
//! next candidate is used and a warning says why.

use tracing_subscriber::EnvFilter;

/// Environment variable that overrides the configured filter.
pub const LOG_ENV: &str = "TOLLGATE_LOG";

/// Filter used when neither the environment nor the caller gives a valid one.
const FALLBACK_FILTER: &str = "info";

/// Installs the global subscriber. Later calls (and calls after another subscriber was
/// installed) do nothing.
pub fn init_tracing(filter: &str) {
    let from_env = std::env::var(LOG_ENV).ok();
    let (filter, warnings) = choose_filter(from_env.as_deref(), filter);
    let installed = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .try_init()
        .is_ok();
    if installed {
        for warning in warnings {
            tracing::warn!(log.filter.error = %warning, "ignored invalid log filter");
        }
    }
}

/// Picks the first candidate that parses, collecting why earlier ones were rejected.
fn choose_filter(from_env: Option<&str>, configured: &str) -> (EnvFilter, Vec<String>) {
    let mut warnings = Vec::new();
    let candidates = from_env
        .map(|f| (LOG_ENV, f))
        .into_iter()
        .chain([("configured filter", configured)]);
    for (source, text) in candidates {
        match EnvFilter::try_new(text) {
            Ok(filter) => return (filter, warnings),
            Err(error) => warnings.push(format!("{source} {text:?}: {error}")),
        }
    }
    (EnvFilter::new(FALLBACK_FILTER), warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_wins_when_valid() {
        let (filter, warnings) = choose_filter(Some("debug,hyper=warn"), "info");
        assert!(warnings.is_empty());
        assert_eq!(filter.to_string(), "hyper=warn,debug");
    }

    #[test]
    fn configured_filter_without_environment() {
        let (filter, warnings) = choose_filter(None, "tollgate=trace");
        assert!(warnings.is_empty());
        assert_eq!(filter.to_string(), "tollgate=trace");
    }

    #[test]
    fn invalid_candidates_fall_through_with_warnings() {
        let (filter, warnings) = choose_filter(Some("[[["), "warn");
        assert_eq!(filter.to_string(), "warn");
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].starts_with("TOLLGATE_LOG"), "{warnings:?}");

        let (filter, warnings) = choose_filter(Some("[[["), "also=[bad");
        assert_eq!(filter.to_string(), "info");
        assert_eq!(warnings.len(), 2);
    }

    #[test]
    fn init_twice_is_harmless() {
        init_tracing("info");
        init_tracing("debug");
        tracing::info!(test.field = 1, "still logging");
    }
}
