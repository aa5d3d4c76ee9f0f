//! Metrics of the JWKS fetches of `auth.jwt` issuers (docs/auth.md): fetches by result and the
//! keys loaded. The only label is the issuer's `name` from config (never its `jwks_url`, which
//! may carry credentials), so cardinality is bounded by the config. Fetches are rare
//! (`refresh`, unknown `kid` at most once per `min_refetch_interval`): no handle cache.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IssuerLabels {
    issuer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IssuerResultLabels {
    issuer: String,
    result: &'static str,
}

pub(super) struct JwksMetrics {
    fetches: Family<IssuerResultLabels, Counter>,
    keys: Family<IssuerLabels, Gauge>,
}

impl JwksMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let m = JwksMetrics {
            fetches: Family::default(),
            keys: Family::default(),
        };
        registry.register(
            "tollgate_jwks_fetches",
            "JWKS fetches of a JWT issuer, by result (success, or failure: connect error, timeout, non-2xx status or a document without usable keys)",
            m.fetches.clone(),
        );
        registry.register(
            "tollgate_jwks_keys",
            "Verification keys of a JWT issuer loaded from its last successful JWKS fetch",
            m.keys.clone(),
        );
        m
    }
}

impl super::Metrics {
    /// A successful JWKS fetch of issuer `issuer` (config `name`) that loaded `keys` keys.
    pub fn jwks_fetched(&self, issuer: &str, keys: usize) {
        let j = &self.jwks;
        j.fetches
            .get_or_create(&IssuerResultLabels {
                issuer: issuer.to_owned(),
                result: "success",
            })
            .inc();
        let keys = i64::try_from(keys).unwrap_or(i64::MAX);
        j.keys
            .get_or_create(&IssuerLabels {
                issuer: issuer.to_owned(),
            })
            .set(keys);
    }

    /// A failed JWKS fetch of issuer `issuer` (the previous keys stay loaded).
    pub fn jwks_fetch_failed(&self, issuer: &str) {
        self.jwks
            .fetches
            .get_or_create(&IssuerResultLabels {
                issuer: issuer.to_owned(),
                result: "failure",
            })
            .inc();
    }
}
