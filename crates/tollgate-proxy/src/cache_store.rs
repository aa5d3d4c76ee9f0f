//! Memory for the response cache (cache.rs): stored responses bounded in bytes
//! (`cache.max_bytes`, weighed as body + headers) with moka's TinyLFU eviction,
//! the `Vary` variants of each key, purging, and the single-flight table that
//! collapses concurrent misses of one key into one upstream request.
//!
//! moka's synchronous cache is used because a response is stored from inside
//! the body stream (a `poll_frame`), and it must be visible to the very next
//! request: an insert is complete when it returns.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use moka::notification::RemovalCause;
use tokio::sync::watch;
use tollgate_telemetry::Metrics;

use crate::cache::Entry;

/// Variants of one key kept at most (different `Vary`-selected request headers).
const MAX_VARIANTS: usize = 8;

/// The stored responses of one primary key, newest first.
pub(crate) struct Variants {
    api: Arc<str>,
    url: Arc<str>,
    list: Vec<Arc<Entry>>,
}

/// The process-wide response cache.
pub struct Store {
    entries: moka::sync::Cache<Arc<str>, Arc<Variants>>,
    flights: Mutex<HashMap<Arc<str>, watch::Receiver<()>>>,
    metrics: Arc<Metrics>,
}

impl Store {
    /// A cache holding at most `max_bytes` of responses.
    pub fn new(max_bytes: u64, metrics: Arc<Metrics>) -> Arc<Store> {
        let evicted = metrics.clone();
        let entries = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|k: &Arc<str>, v: &Arc<Variants>| {
                let w: u64 = v.list.iter().map(|e| e.weight()).sum::<u64>() + k.len() as u64;
                u32::try_from(w).unwrap_or(u32::MAX)
            })
            .eviction_listener(move |_k, _v, cause| {
                if cause == RemovalCause::Size {
                    evicted.cache_evicted();
                }
            })
            .support_invalidation_closures()
            .build();
        Arc::new(Store {
            entries,
            flights: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    /// The stored variants of `key`, newest first.
    pub(crate) fn variants(&self, key: &str) -> Vec<Arc<Entry>> {
        self.entries
            .get(key)
            .map(|v| v.list.clone())
            .unwrap_or_default()
    }

    /// Stores `entry` under `key`, replacing the variant it supersedes (the same
    /// `Vary`-selected request headers).
    pub(crate) fn insert(&self, key: &Arc<str>, api: &Arc<str>, url: &Arc<str>, entry: Arc<Entry>) {
        let mut list = vec![entry.clone()];
        if let Some(old) = self.entries.get(&**key) {
            for e in &old.list {
                if !entry.same_variant(e) && list.len() < MAX_VARIANTS {
                    list.push(e.clone());
                }
            }
        }
        self.entries.insert(
            key.clone(),
            Arc::new(Variants {
                api: api.clone(),
                url: url.clone(),
                list,
            }),
        );
        self.entries.run_pending_tasks();
        self.update_gauges();
    }

    /// Removes every entry of `api` (with `url`: only that URL's). Returns once the
    /// entries are gone.
    pub fn purge(&self, api: &str, url: Option<&str>) {
        let api: Arc<str> = api.into();
        let url: Option<Arc<str>> = url.map(Into::into);
        let res = self.entries.invalidate_entries_if(move |_k, v| {
            *v.api == *api && url.as_deref().is_none_or(|u| *v.url == *u)
        });
        if let Err(e) = res {
            tracing::warn!(error = %e, "cache purge by predicate failed; purging everything");
            self.entries.invalidate_all();
        }
        self.entries.run_pending_tasks();
        self.update_gauges();
    }

    /// Bytes and keys held now.
    pub fn size(&self) -> (u64, u64) {
        self.entries.run_pending_tasks();
        (self.entries.weighted_size(), self.entries.entry_count())
    }

    fn update_gauges(&self) {
        self.metrics
            .cache_size(self.entries.weighted_size(), self.entries.entry_count());
    }

    /// Makes this request the one that fetches `key`, or returns the pending
    /// fetch to wait for.
    pub(crate) fn lead_or_wait(
        self: &Arc<Self>,
        key: &Arc<str>,
    ) -> Result<Flight, watch::Receiver<()>> {
        let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(rx) = flights.get(key) {
            return Err(rx.clone());
        }
        let (tx, rx) = watch::channel(());
        flights.insert(key.clone(), rx);
        Ok(Flight {
            store: self.clone(),
            key: key.clone(),
            tx,
        })
    }

    /// Like [`Store::lead_or_wait`], but never waits: `None` when another request leads.
    pub(crate) fn lead(self: &Arc<Self>, key: &Arc<str>) -> Option<Flight> {
        self.lead_or_wait(key).ok()
    }
}

/// The lead of a single flight: while it lives, identical misses wait. Dropped
/// when the response is stored, turned out not storable, or failed.
pub struct Flight {
    store: Arc<Store>,
    key: Arc<str>,
    tx: watch::Sender<()>,
}

impl Drop for Flight {
    fn drop(&mut self) {
        let mut flights = self
            .store
            .flights
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if flights
            .get(&self.key)
            .is_some_and(|rx| rx.same_channel(&self.tx.subscribe()))
        {
            flights.remove(&self.key);
        }
        drop(flights);
        // Waiters see the change (or the sender closing) and look again.
        let _ = self.tx.send(());
    }
}
