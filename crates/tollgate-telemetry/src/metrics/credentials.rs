//! Metrics of injected credentials: which key each request used, and OAuth
//! token fetches. Labels are API and key *names* from config, never values.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::handle_cache::HandleCache;
use super::{api_label, label_value};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct KeyLabels {
    api: String,
    key: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct FetchLabels {
    api: String,
    key: String,
    /// `ok` or `error`.
    result: &'static str,
}

pub(super) struct CredentialMetrics {
    uses: Family<KeyLabels, Counter>,
    uses_cache: HandleCache<2, Counter>,
    token_fetches: Family<FetchLabels, Counter>,
}

impl CredentialMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let m = CredentialMetrics {
            uses: Family::default(),
            uses_cache: HandleCache::new(),
            token_fetches: Family::default(),
        };
        registry.register(
            "tollgate_credential_uses",
            "Upstream requests that carried an injected credential, by API and key name",
            m.uses.clone(),
        );
        registry.register(
            "tollgate_credential_token_fetches",
            "OAuth token requests (each attempt), by API, key name and result (ok or error)",
            m.token_fetches.clone(),
        );
        m
    }
}

impl super::Metrics {
    /// Counts one request that used key `key` (a name from config) of `api`.
    pub fn credential_used(&self, api: &str, key: &str) {
        let m = &self.credentials;
        m.uses_cache.with(
            [api, key],
            || {
                m.uses.get_or_create_owned(&KeyLabels {
                    api: label_value(api_label(api)),
                    key: label_value(key),
                })
            },
            |c| {
                c.inc();
            },
        );
    }

    /// Counts one OAuth token request attempt (rare: no handle cache).
    pub fn credential_token_fetch(&self, api: &str, key: &str, ok: bool) {
        self.credentials
            .token_fetches
            .get_or_create(&FetchLabels {
                api: label_value(api_label(api)),
                key: label_value(key),
                result: if ok { "ok" } else { "error" },
            })
            .inc();
    }
}
