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
        self.run(reqs, now_ms(), Mode::Charge)
    }

    /// Decides without charging.
    pub fn peek_all(&self, reqs: &[LimitRequest]) -> Vec<Decision> {
        self.run(reqs, now_ms(), Mode::Peek)
    }

    /// [`LocalStore::check_all`] at an explicit instant (ms since the epoch), for tests and
    /// replay.
    pub fn check_all_at(&self, reqs: &[LimitRequest], now_ms: u64) -> Vec<Decision> {
        self.run(reqs, now_ms, Mode::Charge)
    }

    /// [`LocalStore::peek_all`] at an explicit instant.
    pub fn peek_all_at(&self, reqs: &[LimitRequest], now_ms: u64) -> Vec<Decision> {
        self.run(reqs, now_ms, Mode::Peek)
    }

    /// Like [`LocalStore::peek_all`] (charges nothing, even when every limit allows), but a
    /// shared limit that refuses records its group's demand exactly as
    /// [`LocalStore::check_all`] would. For callers that decide local limits before charging
    /// elsewhere and stop at a local refusal: the refused group is not taken for idle.
    pub fn peek_all_noting_refusals(&self, reqs: &[LimitRequest]) -> Vec<Decision> {
        self.run(reqs, now_ms(), Mode::NoteRefusals)
    }

    /// [`LocalStore::peek_all_noting_refusals`] at an explicit instant.
    pub fn peek_all_noting_refusals_at(&self, reqs: &[LimitRequest], now_ms: u64) -> Vec<Decision> {
        self.run(reqs, now_ms, Mode::NoteRefusals)
    }

    fn run(&self, reqs: &[LimitRequest], now_ms: u64, mode: Mode) -> Vec<Decision> {
        // Every counter key each request reads: its own, or one per share group.
        let keys: Vec<Vec<String>> = reqs.iter().map(LimitRequest::counter_keys).collect();
        // Lock every shard involved, in ascending order so concurrent multi-key calls cannot
        // deadlock; holding them all makes check-then-charge atomic across the limits.
        let mut order: Vec<usize> = keys.iter().flatten().map(|k| self.shard_of(k)).collect();
        order.sort_unstable();
        order.dedup();
        let mut guards: Vec<MutexGuard<'_, Shard>> =
            order.iter().map(|&i| lock(&self.shards[i])).collect();
        let slot = |key: &str| order.binary_search(&self.shard_of(key)).unwrap_or(0);
        let stored = |guards: &[MutexGuard<'_, Shard>], key: &str| {
            guards[slot(key)]
                .map
                .get(key)
                .filter(|e| e.expires_at_ms > now_ms)
                .map(|e| e.state)
        };

        // Stage new states (key written, evaluation); a key named twice sees its own staged
        // state.
        let mut staged: Vec<(String, algo::Evaluation)> = Vec::with_capacity(reqs.len());
        let mut all_allowed = true;
        for (r, ks) in reqs.iter().zip(&keys) {
            let current = |k: &str| {
                staged
                    .iter()
                    .rev()
                    .find(|(sk, _)| sk == k)
                    .map(|(_, e)| e.new_state)
                    .or_else(|| stored(&guards, k))
            };
            let (written, ev) = evaluate(r, ks, current, now_ms, r.cost);
            all_allowed &= ev.decision.allowed;
            staged.push((written, ev));
        }

        let mut out = Vec::with_capacity(reqs.len());
        for ((r, ks), (_, ev)) in reqs.iter().zip(&keys).zip(&staged) {
            let mut d = ev.decision;
            if !all_allowed && d.allowed {
                // Another limit denied: this one is not charged, so report it as unaffected
                // and denied (the request does not go ahead).
                d = evaluate(r, ks, |k| stored(&guards, k), now_ms, 0)
                    .1
                    .decision;
                d.allowed = false;
            }
            out.push(d);
        }
        if mode != Mode::Peek {
            for (r, (key, ev)) in reqs.iter().zip(staged) {
                // A refused request charges nothing; only a shared limit that refused it
                // records the group's demand (its `seen_ms`), so an idle group claims its
                // reservation back at once.
                let refused_here = !ev.decision.allowed && r.cost > 0 && is_shared(r);
                let charged = mode == Mode::Charge && all_allowed;
                if !charged && !refused_here {
                    continue;
                }
                let entry = Entry {
                    state: ev.new_state,
                    expires_at_ms: ev.expires_at_ms,
                    persist: algo::is_long_window(&r.spec),
                };
                let shard = &mut guards[slot(&key)];
                match shard.map.get_mut(&key) {
                    Some(e) => *e = entry,
                    None => {
                        shard.map.insert(key, entry);
                    }
                }
            }
        }
        for g in guards.iter_mut() {
            g.ops += 1;
            if g.ops % SWEEP_EVERY == 0 {
                g.map.retain(|_, e| e.expires_at_ms > now_ms);
            }
        }
        out
    }

    /// Gives back what [`LocalStore::check_all`] charged `reqs` (same requests, same costs)
    /// when the request then did not go ahead; see [`algo::refund`] for what is given back.
    /// A shared limit's units go back to the requester's group. Never fails.
    pub fn refund(&self, reqs: &[LimitRequest]) {
        self.refund_at(reqs, now_ms());
    }

    /// [`LocalStore::refund`] at an explicit instant.
    pub fn refund_at(&self, reqs: &[LimitRequest], now_ms: u64) {
        for r in reqs.iter().filter(|r| r.cost > 0) {
            let key = refund_key(r);
            let mut g = lock(&self.shards[self.shard_of(&key)]);
            if let Some(e) = g.map.get_mut(&key).filter(|e| e.expires_at_ms > now_ms)
                && let Some(state) = algo::refund(&r.spec, e.state, now_ms, r.cost)
            {
                e.state = state;
            }
        }
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

/// What [`LocalStore::run`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Charge when every limit allows; note refusals by shared limits.
    Charge,
    /// Write nothing.
    Peek,
    /// Charge nothing; note refusals by shared limits.
    NoteRefusals,
}

/// Whether `r` is split into share groups (and so decided by [`algo::evaluate_shared`]).
fn is_shared(r: &LimitRequest) -> bool {
    r.shares.as_ref().is_some_and(|s| !s.spec.groups.is_empty())
}

/// The counter key a request was charged to: its own, or its share group's.
pub(crate) fn refund_key(r: &LimitRequest) -> String {
    match &r.shares {
        Some(s) if !s.spec.groups.is_empty() => {
            let g = &s.spec.groups[s.group.min(s.spec.groups.len() - 1)];
            crate::group_key(&r.key, &g.name)
        }
        _ => r.key.clone(),
    }
}

/// Evaluates one request against the states `current` returns for its counter keys `ks`;
/// returns the key whose state the evaluation would write (the requester's group for a shared
/// limit) and the evaluation.
fn evaluate(
    r: &LimitRequest,
    ks: &[String],
    current: impl Fn(&str) -> Option<CounterState>,
    now_ms: u64,
    cost: u64,
) -> (String, algo::Evaluation) {
    match &r.shares {
        Some(share) if !share.spec.groups.is_empty() => {
            let states: Vec<Option<CounterState>> = ks.iter().map(|k| current(k)).collect();
            let guarantees: Vec<u64> = share.spec.groups.iter().map(|g| g.guarantee).collect();
            let me = share.group.min(ks.len().saturating_sub(1));
            let ev = algo::evaluate_shared(
                &r.spec,
                &states,
                &guarantees,
                me,
                share.spec.borrow,
                now_ms,
                cost,
            );
            (ks.get(me).cloned().unwrap_or_else(|| r.key.clone()), ev)
        }
        _ => (
            r.key.clone(),
            algo::evaluate(&r.spec, current(&r.key), now_ms, cost),
        ),
    }
}

impl LocalStore {
    /// Live keys (not expired at the process clock) that start with `prefix`, sorted, at most
    /// `max` of them. For the admin API's listing of counters; locks one shard at a time.
    pub fn keys_with_prefix(&self, prefix: &str, max: usize) -> Vec<String> {
        let now = now_ms();
        let mut out = Vec::new();
        for s in self.shards.iter() {
            let g = lock(s);
            out.extend(
                g.map
                    .iter()
                    .filter(|(k, e)| e.expires_at_ms > now && k.starts_with(prefix))
                    .map(|(k, _)| k.clone()),
            );
        }
        out.sort_unstable();
        out.truncate(max);
        out
    }
}

#[cfg(test)]
#[path = "local_tests.rs"]
mod tests;
