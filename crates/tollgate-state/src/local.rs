//! In-process counters: sharded maps guarded by std mutexes (never held across an `.await`; the
//! API is synchronous), with expiry of stale keys and JSON persistence of long windows.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::algo::{self, CounterState};
use crate::{Decision, LimitRequest, StoreError};

const DEFAULT_SHARDS: usize = 64;
/// Sweep a shard for expired keys every this many decisions touching it, so memory stays
/// bounded by live keys without a background task.
const SWEEP_EVERY: u64 = 1024;

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Entry {
    state: CounterState,
    expires_at_ms: u64,
    /// Hour-or-longer windows are persisted so a restart does not reset them.
    persist: bool,
}

#[derive(Debug, Default)]
struct Shard {
    map: HashMap<String, Entry>,
    ops: u64,
}

/// In-process counter store. Cheap to clone (shared inner state).
#[derive(Debug, Clone)]
pub struct LocalStore {
    shards: Arc<Vec<Mutex<Shard>>>,
}

impl Default for LocalStore {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Serialize, Deserialize)]
struct Persisted {
    version: u32,
    entries: Vec<(String, CounterState, u64)>,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn lock(m: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    // A panic while holding the lock cannot leave an entry half-written (entries are Copy and
    // replaced whole), so a poisoned shard is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl LocalStore {
    pub fn new() -> Self {
        Self::with_shards(DEFAULT_SHARDS)
    }

    pub fn with_shards(n: usize) -> Self {
        let shards = (0..n.max(1))
            .map(|_| Mutex::new(Shard::default()))
            .collect();
        Self {
            shards: Arc::new(shards),
        }
    }

    fn shard_of(&self, key: &str) -> usize {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        (h.finish() % self.shards.len() as u64) as usize
    }

    /// Decides and charges all limits at the process clock's current time.
    pub fn check_all(&self, reqs: &[LimitRequest]) -> Vec<Decision> {
        self.run(reqs, now_ms(), true)
    }

    /// Decides without charging.
    pub fn peek_all(&self, reqs: &[LimitRequest]) -> Vec<Decision> {
        self.run(reqs, now_ms(), false)
    }

    /// [`LocalStore::check_all`] at an explicit instant (ms since the epoch), for tests and
    /// replay.
    pub fn check_all_at(&self, reqs: &[LimitRequest], now_ms: u64) -> Vec<Decision> {
        self.run(reqs, now_ms, true)
    }

    /// [`LocalStore::peek_all`] at an explicit instant.
    pub fn peek_all_at(&self, reqs: &[LimitRequest], now_ms: u64) -> Vec<Decision> {
        self.run(reqs, now_ms, false)
    }

    fn run(&self, reqs: &[LimitRequest], now_ms: u64, charge: bool) -> Vec<Decision> {
        // Lock every shard involved, in ascending order so concurrent multi-key calls cannot
        // deadlock; holding them all makes check-then-charge atomic across the limits.
        let mut idx: Vec<usize> = reqs.iter().map(|r| self.shard_of(&r.key)).collect();
        let mut order = idx.clone();
        order.sort_unstable();
        order.dedup();
        let mut guards: Vec<(usize, MutexGuard<'_, Shard>)> =
            order.iter().map(|&i| (i, lock(&self.shards[i]))).collect();
        let slot = |i: usize| order.binary_search(&i).unwrap_or(0);
        for s in idx.iter_mut() {
            *s = slot(*s);
        }

        // Stage new states; a key named twice sees its own staged state.
        let mut staged: Vec<(usize, algo::Evaluation)> = Vec::with_capacity(reqs.len());
        let mut all_allowed = true;
        for (n, r) in reqs.iter().enumerate() {
            let prior = staged
                .iter()
                .rev()
                .find(|(j, _)| reqs[*j].key == r.key)
                .map(|(_, e)| e.new_state)
                .or_else(|| {
                    let g = &guards[idx[n]].1;
                    g.map
                        .get(&r.key)
                        .filter(|e| e.expires_at_ms > now_ms)
                        .map(|e| e.state)
                });
            let ev = algo::evaluate(&r.spec, prior, now_ms, r.cost);
            all_allowed &= ev.decision.allowed;
            staged.push((n, ev));
        }

        let mut out = Vec::with_capacity(reqs.len());
        for (n, ev) in &staged {
            let mut d = ev.decision;
            if !all_allowed && d.allowed {
                // Another limit denied: this one is not charged, so report it as unaffected
                // and denied (the request does not go ahead).
                let r = &reqs[*n];
                let prior = guards[idx[*n]].1.map.get(&r.key).map(|e| e.state);
                d = algo::evaluate(&r.spec, prior, now_ms, 0).decision;
                d.allowed = false;
            }
            out.push(d);
        }
        if charge && all_allowed {
            for (n, ev) in staged {
                let r = &reqs[n];
                let entry = Entry {
                    state: ev.new_state,
                    expires_at_ms: ev.expires_at_ms,
                    persist: algo::is_long_window(&r.spec),
                };
                let shard = &mut guards[idx[n]].1;
                match shard.map.get_mut(&r.key) {
                    Some(e) => *e = entry,
                    None => {
                        shard.map.insert(r.key.clone(), entry);
                    }
                }
            }
        }
        for (_, g) in guards.iter_mut() {
            g.ops += 1;
            if g.ops % SWEEP_EVERY == 0 {
                g.map.retain(|_, e| e.expires_at_ms > now_ms);
            }
        }
        out
    }

    /// Drops every key whose state has expired at `now_ms`. Returns how many were dropped.
    pub fn purge_expired(&self, now_ms: u64) -> usize {
        let mut dropped = 0;
        for s in self.shards.iter() {
            let mut g = lock(s);
            let before = g.map.len();
            g.map.retain(|_, e| e.expires_at_ms > now_ms);
            dropped += before - g.map.len();
        }
        dropped
    }

    /// Number of keys currently held (including expired ones not yet swept).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).map.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes the live long-window counters (hour and longer) to `path` as JSON, atomically:
    /// a temporary file in the same directory is written, synced, then renamed over `path`.
    pub fn save(&self, path: &Path) -> Result<usize, StoreError> {
        let now = now_ms();
        let mut entries = Vec::new();
        for s in self.shards.iter() {
            let g = lock(s);
            entries.extend(
                g.map
                    .iter()
                    .filter(|(_, e)| e.persist && e.expires_at_ms > now)
                    .map(|(k, e)| (k.clone(), e.state, e.expires_at_ms)),
            );
        }
        let n = entries.len();
        let body = serde_json::to_vec(&Persisted {
            version: 1,
            entries,
        })
        .map_err(|e| StoreError::Persist(e.to_string()))?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let io = |e: std::io::Error| StoreError::Persist(format!("{}: {e}", path.display()));
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
        tmp.write_all(&body).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(path).map_err(|e| io(e.error))?;
        Ok(n)
    }

    /// Loads counters saved by [`LocalStore::save`], skipping expired ones. A missing file
    /// loads nothing (first start). Loaded entries replace in-memory ones with the same key.
    pub fn load(&self, path: &Path) -> Result<usize, StoreError> {
        let body = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(StoreError::Persist(format!("{}: {e}", path.display()))),
        };
        let p: Persisted = serde_json::from_slice(&body)
            .map_err(|e| StoreError::Persist(format!("{}: {e}", path.display())))?;
        let now = now_ms();
        let mut n = 0;
        for (key, state, expires_at_ms) in p.entries {
            if expires_at_ms <= now {
                continue;
            }
            let i = self.shard_of(&key);
            lock(&self.shards[i]).map.insert(
                key,
                Entry {
                    state,
                    expires_at_ms,
                    persist: true,
                },
            );
            n += 1;
        }
        Ok(n)
    }
}

#[cfg(test)]
#[path = "local_tests.rs"]
mod tests;
