//! Metrics of the shared response cache. Labels are API names from config and
//! fixed result words, never URLs or keys.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{api_label, label_value};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct LookupLabels {
    api: String,
    /// `hit`, `miss`, `stale`, `revalidated` or `bypass`.
    result: &'static str,
}

pub(super) struct CacheMetrics {
    lookups: Family<LookupLabels, Counter>,
    bytes: Gauge,
    entries: Gauge,
    evictions: Counter,
}

impl CacheMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let m = CacheMetrics {
            lookups: Family::default(),
            bytes: Gauge::default(),
            entries: Gauge::default(),
            evictions: Counter::default(),
        };
        registry.register(
            "tollgate_cache_lookups",
            "Response cache lookups by API and result (hit, miss, stale, revalidated, bypass)",
            m.lookups.clone(),
        );
        registry.register(
            "tollgate_cache_bytes",
            "Bytes of responses held by the response cache",
            m.bytes.clone(),
        );
        registry.register(
            "tollgate_cache_entries",
            "Cache keys held by the response cache",
            m.entries.clone(),
        );
        registry.register(
            "tollgate_cache_evictions",
            "Cached responses evicted to stay within cache.max_bytes",
            m.evictions.clone(),
        );
        m
    }
}

impl super::Metrics {
    /// Counts one cache lookup of `api` with `result`.
    pub fn cache_lookup(&self, api: &str, result: &'static str) {
        self.cache
            .lookups
            .get_or_create(&LookupLabels {
                api: label_value(api_label(api)),
                result,
            })
            .inc();
    }

    /// Sets the cache's size gauges.
    pub fn cache_size(&self, bytes: u64, entries: u64) {
        self.cache
            .bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        self.cache
            .entries
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
    }

    /// Counts one entry evicted for size.
    pub fn cache_evicted(&self) {
        self.cache.evictions.inc();
    }
}
