//! Maps a borrowed label tuple to metric handles without taking a lock on the hot path.
//!
//! prometheus-client's `Family` needs an owned label set for every lookup (allocating the label
//! strings) and takes a read lock on its map. Label values here come from config, so the set of
//! combinations is small and almost never grows after warm-up. The cache therefore keeps an
//! immutable snapshot behind an `ArcSwap`: readers load it lock-free and compare the borrowed
//! `&str`s; a miss (first time a combination is seen) copies the table under a mutex, inserts,
//! and publishes the new snapshot. The `Family` stays the source of truth for encoding; the cache
//! only holds clones of its handles, which share the same atomics.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;

/// Beyond this many cached combinations new ones still get counted (through the slow `make`
/// path) but are not cached, so a misconfiguration that feeds unbounded label values cannot make
/// every miss copy an ever-larger table.
const MAX_ENTRIES: usize = 10_000;

struct Slot<const N: usize, V> {
    key: [Box<str>; N],
    value: V,
}

struct Table<const N: usize, V> {
    /// Keyed by the hash of the borrowed key; collisions share a short vector.
    by_hash: HashMap<u64, Vec<Arc<Slot<N, V>>>>,
    len: usize,
}

impl<const N: usize, V> Table<N, V> {
    fn find(&self, hash: u64, key: &[&str; N]) -> Option<&Arc<Slot<N, V>>> {
        self.by_hash.get(&hash)?.iter().find(|slot| {
            slot.key
                .iter()
                .zip(key.iter())
                .all(|(have, want)| **have == **want)
        })
    }
}

pub(crate) struct HandleCache<const N: usize, V> {
    snapshot: ArcSwap<Table<N, V>>,
    /// Serialises writers so two concurrent misses do not lose each other's insert.
    writer: Mutex<()>,
    hasher: RandomState,
}

impl<const N: usize, V> HandleCache<N, V> {
    pub(crate) fn new() -> Self {
        HandleCache {
            snapshot: ArcSwap::from_pointee(Table {
                by_hash: HashMap::new(),
                len: 0,
            }),
            writer: Mutex::new(()),
            hasher: RandomState::new(),
        }
    }

    /// Runs `use_value` on the handles for `key`, creating them with `make` on first use.
    pub(crate) fn with<R>(
        &self,
        key: [&str; N],
        make: impl FnOnce() -> V,
        use_value: impl FnOnce(&V) -> R,
    ) -> R {
        let hash = self.hasher.hash_one(key);
        {
            let table = self.snapshot.load();
            if let Some(slot) = table.find(hash, &key) {
                return use_value(&slot.value);
            }
        }
        self.miss(hash, key, make, use_value)
    }

    #[cold]
    fn miss<R>(
        &self,
        hash: u64,
        key: [&str; N],
        make: impl FnOnce() -> V,
        use_value: impl FnOnce(&V) -> R,
    ) -> R {
        let slot = {
            let writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
            let current = self.snapshot.load_full();
            // Another writer may have inserted the same key while we waited for the lock.
            if let Some(slot) = current.find(hash, &key) {
                Arc::clone(slot)
            } else if current.len >= MAX_ENTRIES {
                drop(writer);
                return use_value(&make());
            } else {
                let slot = Arc::new(Slot {
                    key: key.map(Box::from),
                    value: make(),
                });
                let mut by_hash = current.by_hash.clone();
                by_hash.entry(hash).or_default().push(Arc::clone(&slot));
                self.snapshot.store(Arc::new(Table {
                    by_hash,
                    len: current.len + 1,
                }));
                slot
            }
        };
        use_value(&slot.value)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.snapshot.load().len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn makes_once_per_key_and_distinguishes_parts() {
        let cache: HandleCache<2, usize> = HandleCache::new();
        let made = AtomicUsize::new(0);
        let make = || made.fetch_add(1, Ordering::SeqCst);
        assert_eq!(cache.with(["a", "bc"], make, |v| *v), 0);
        assert_eq!(cache.with(["a", "bc"], make, |v| *v), 0);
        // Same concatenation, different split: must be a different entry.
        assert_eq!(cache.with(["ab", "c"], make, |v| *v), 1);
        assert_eq!(cache.with(["a", "bc"], make, |v| *v), 0);
        assert_eq!(made.load(Ordering::SeqCst), 2);
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn concurrent_misses_keep_every_insert() {
        let cache: Arc<HandleCache<1, String>> = Arc::new(HandleCache::new());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let cache = Arc::clone(&cache);
                std::thread::spawn(move || {
                    for i in 0..50 {
                        let key = format!("k{}", (i + t) % 60);
                        let got = cache.with([key.as_str()], || key.clone(), |v| v.clone());
                        assert_eq!(got, key);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(cache.len(), 53);
    }
}
