//! The embedded default configuration and the bundled example.

use crate::error::ConfigErrors;
use crate::load::{Loaded, load_str};

/// The configuration `tollgate run` uses when no file is given: proxy on
/// 127.0.0.1:8080, admin on 127.0.0.1:8081, public destinations allowed and
/// logged, the network guard on, unknown callers anonymous, no APIs. The text
/// is commented so it doubles as a tour of the main settings.
pub const DEFAULT_CONFIG: &str = include_str!("../default.yaml");

/// A fuller sample: a header-identified and an API-key consumer, two APIs
/// with routes and allow rules, `default_action: deny`. The API key is
/// `${env:ACME_KEY}`, which is only read when the configuration is compiled.
pub const EXAMPLE_CONFIG: &str = include_str!("../example.yaml");

/// Origin name used in errors about [`DEFAULT_CONFIG`].
pub const DEFAULT_ORIGIN: &str = "<embedded default>";

/// Loads [`DEFAULT_CONFIG`]. Only fails if the embedded text is broken, which
/// the crate's tests rule out.
pub fn embedded_default() -> Result<Loaded, ConfigErrors> {
    load_str(DEFAULT_CONFIG, DEFAULT_ORIGIN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Config, DefaultAction, Identify, Mode, UnknownConsumerAction};
    use crate::secret::SecretRef;

    #[test]
    fn default_loads_and_matches_the_promise() {
        let d = embedded_default().unwrap().config;
        assert_eq!(d.listen.proxy.to_string(), "127.0.0.1:8080");
        assert_eq!(d.listen.admin.to_string(), "127.0.0.1:8081");
        assert_eq!(d.default_action, DefaultAction::Allow);
        assert_eq!(d.unknown_consumer.action, UnknownConsumerAction::Anonymous);
        assert!(!d.network_guard.allow_private);
        assert!(d.apis.is_empty() && d.consumers.is_empty());
        // The file spells out the built-in defaults; it must not drift from them
        // (apart from the redaction list, which the file leaves implicit).
        let mut builtin = Config::default();
        builtin.logging.redact_query_params = d.logging.redact_query_params.clone();
        assert_eq!(d, builtin);
    }

    #[test]
    fn example_loads_and_validates() {
        let loaded = load_str(EXAMPLE_CONFIG, "example.yaml").unwrap();
        let c = &loaded.config;
        assert_eq!(c.default_action, DefaultAction::Deny);
        assert_eq!(c.consumers.len(), 2);
        assert!(matches!(c.consumers[0].identify, Identify::Header(_)));
        // Parsing keeps the reference; nothing reads the environment until resolve().
        match &c.consumers[1].identify {
            Identify::ApiKey(k) => assert_eq!(k.key, Some(SecretRef::Env("ACME_KEY".into()))),
            other => panic!("unexpected identify {other:?}"),
        }
        assert_eq!(c.apis.len(), 2);
        assert_eq!(c.apis[0].route.as_deref(), Some("/github"));
        assert_eq!(c.apis[0].allow[0].paths, ["/repos/**", "/users/{user}"]);
        assert_eq!(c.apis[1].mode, Mode::Report);
        assert_eq!(
            loaded.source.position("apis[1].name").map(|p| p.1),
            Some(56)
        );
    }
}
