//! A lock-free duration histogram.
//!
//! prometheus-client's own `Histogram` takes a write lock on every observation, which every proxy
//! worker would contend on. This one keeps each bucket, the count and the sum in separate atomics,
//! so observing is a handful of relaxed `fetch_add`s. A scrape may see a sum and buckets from
//! slightly different instants; Prometheus tolerates that, and the count is derived from the
//! buckets so `_count` always equals the `+Inf` bucket.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Upper bounds in seconds, from half a millisecond (a loopback round trip) to a minute (a slow
/// upstream or a long request body); roughly 1-2.5-5 steps so quantile estimates stay close.
pub const DURATION_BUCKETS_SECONDS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

const BUCKETS: usize = DURATION_BUCKETS_SECONDS.len();

/// Bucket bounds in nanoseconds, so an observation is classified without float arithmetic.
const BOUNDS_NANOS: [u64; BUCKETS] = {
    let mut out = [0u64; BUCKETS];
    let mut i = 0;
    while i < BUCKETS {
        // +0.5 rounds: 0.001 * 1e9 is a hair under 1e6 in binary floating point.
        out[i] = (DURATION_BUCKETS_SECONDS[i] * 1e9 + 0.5) as u64;
        i += 1;
    }
    out
};

#[derive(Debug, Default)]
struct Cells {
    /// Non-cumulative counts; the last slot is the `+Inf` overflow bucket.
    buckets: [AtomicU64; BUCKETS + 1],
    /// Sum of observations in whole microseconds: an integer so it can be a single `fetch_add`,
    /// and microseconds rather than nanoseconds to push overflow centuries away.
    sum_micros: AtomicU64,
}

/// Cheap to clone: clones share the same cells.
#[derive(Debug, Clone, Default)]
pub(crate) struct DurationHistogram {
    cells: Arc<Cells>,
}

impl DurationHistogram {
    pub(crate) fn observe(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        // `le` semantics: an observation equal to a bound belongs to that bound's bucket.
        let idx = BOUNDS_NANOS.partition_point(|&bound| bound < nanos);
        if let Some(cell) = self.cells.buckets.get(idx) {
            cell.fetch_add(1, Ordering::Relaxed);
        }
        // Round to the nearest microsecond so truncation does not bias the sum downwards.
        let micros = nanos.saturating_add(500) / 1_000;
        self.cells.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    #[cfg(test)]
    pub(crate) fn count(&self) -> u64 {
        self.cells
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .sum()
    }
}

impl TypedMetric for DurationHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for DurationHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let mut buckets = [(0.0f64, 0u64); BUCKETS + 1];
        let mut count = 0u64;
        for (i, slot) in buckets.iter_mut().enumerate() {
            let n = self
                .cells
                .buckets
                .get(i)
                .map_or(0, |b| b.load(Ordering::Relaxed));
            count = count.wrapping_add(n);
            // The encoder renders `f64::MAX` as `+Inf`.
            *slot = (
                DURATION_BUCKETS_SECONDS.get(i).copied().unwrap_or(f64::MAX),
                n,
            );
        }
        let sum = self.cells.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(
            sum,
            count,
            &buckets,
            None::<&HashMap<usize, Exemplar<NoLabelSet, f64>>>,
        )
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::{Registry, Unit};

    #[test]
    fn bounds_are_increasing_and_exact() {
        assert!(BOUNDS_NANOS.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(BOUNDS_NANOS[0], 500_000);
        assert_eq!(BOUNDS_NANOS[1], 1_000_000);
        assert_eq!(BOUNDS_NANOS[BUCKETS - 1], 60_000_000_000);
    }

    #[test]
    fn encodes_cumulative_buckets_sum_and_count() {
        let h = DurationHistogram::default();
        let mut registry = Registry::default();
        registry.register_with_unit("t", "test", Unit::Seconds, h.clone());
        h.observe(Duration::from_micros(500)); // exactly on the first bound
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(120)); // overflow
        assert_eq!(h.count(), 3);

        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        assert!(out.contains("# TYPE t_seconds histogram"), "{out}");
        assert!(out.contains("t_seconds_count 3\n"), "{out}");
        assert!(out.contains("t_seconds_sum 120.0035\n"), "{out}");
        assert!(out.contains("t_seconds_bucket{le=\"0.0005\"} 1\n"), "{out}");
        assert!(out.contains("t_seconds_bucket{le=\"0.0025\"} 1\n"), "{out}");
        assert!(out.contains("t_seconds_bucket{le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("t_seconds_bucket{le=\"60.0\"} 2\n"), "{out}");
        assert!(out.contains("t_seconds_bucket{le=\"+Inf\"} 3\n"), "{out}");
    }
}
