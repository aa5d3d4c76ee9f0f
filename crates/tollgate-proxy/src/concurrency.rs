//! Concurrency limits: how many requests of one API may be in flight at once, in total (`max`)
//! and per consumer (`per_consumer`).
//!
//! A request holds a [`Permit`] from admission until its response body has ended (or its tunnel
//! has closed): the handler moves the permit into the response's completion, which drops it
//! when the log line is written. A request that finds the API full either gets 429
//! `concurrency_limited` at once (`on_limit: reject`, the default) or waits in a bounded queue
//! (`on_limit: { queue: 2s, max_queue: 100 }`) released in priority order — higher consumer
//! `priority` first, consumers of equal priority in turn, FIFO per consumer (see
//! [`crate::queue`]). A finishing request hands its slot directly to the first waiter that may
//! take it (one whose consumer is under `per_consumer`), so a newcomer can never overtake a
//! waiter. A waiter whose client disconnects leaves the queue at once; one that times out gets
//! 429 `concurrency_limited`.
//!
//! Counts are per gateway process (not shared through Redis). Locking: one `std` mutex per
//! limiter, never held across an `.await`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::queue::{Line, Who};

/// The bounds of one API (from its `concurrency` config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Most requests in flight to the API; `None`: unbounded.
    pub max: Option<u32>,
    /// Most requests in flight per consumer; `None`: unbounded.
    pub per_consumer: Option<u32>,
    /// Most waiters; 0: refuse at once when full (`on_limit: reject`).
    pub max_queue: usize,
}

/// Why a request got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Full and `on_limit: reject`.
    #[error("concurrency limit reached")]
    Full,
    /// Full and the wait queue is full too.
    #[error("concurrency limit reached and its wait queue is full")]
    QueueFull,
    /// Waited until the deadline without getting a slot.
    #[error("no concurrency slot became free in time")]
    TimedOut,
}

#[derive(Debug)]
struct Inner {
    bounds: Bounds,
    total: u32,
    by_consumer: HashMap<Arc<str>, u32>,
    line: Line<oneshot::Sender<()>>,
    next_id: u64,
}

impl Inner {
    fn fits(&self, consumer: &str) -> bool {
        self.bounds.max.is_none_or(|m| self.total < m)
            && self
                .bounds
                .per_consumer
                .is_none_or(|p| self.by_consumer.get(consumer).copied().unwrap_or(0) < p)
    }

    fn take(&mut self, consumer: &Arc<str>) {
        self.total += 1;
        *self.by_consumer.entry(consumer.clone()).or_default() += 1;
    }

    fn give_back(&mut self, consumer: &Arc<str>) {
        self.total = self.total.saturating_sub(1);
        if let Some(n) = self.by_consumer.get_mut(consumer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.by_consumer.remove(consumer);
            }
        }
    }

    /// Hands free slots to waiters in release order while some waiter fits.
    fn hand_over(&mut self) {
        loop {
            let Inner {
                bounds,
                total,
                by_consumer,
                line,
                ..
            } = self;
            let full = bounds.max.is_some_and(|m| *total >= m);
            if full || line.len() == 0 {
                return;
            }
            let per = bounds.per_consumer;
            let Some((who, _, tx)) = line
                .pop_first(|c, _| per.is_none_or(|p| by_consumer.get(c).copied().unwrap_or(0) < p))
            else {
                return;
            };
            self.take(&who.consumer);
            // The slot is the waiter's now. If it has just given up (timed out or dropped), its
            // `Place` finds itself out of line and gives the slot back, exactly once.
            let _ = tx.send(());
        }
    }
}

/// The concurrency limiter of one API. Lives across config reloads (keyed by API name).
#[derive(Debug)]
pub struct ConcurrencyLimiter {
    inner: Mutex<Inner>,
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // Every mutation leaves `Inner` consistent before anything can panic.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ConcurrencyLimiter {
    pub fn new(bounds: Bounds) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner {
                bounds,
                total: 0,
                by_consumer: HashMap::new(),
                line: Line::default(),
                next_id: 0,
            }),
        })
    }

    /// New bounds after a reload; raised bounds let waiters in at once.
    pub fn set_bounds(&self, bounds: Bounds) {
        let mut g = lock(&self.inner);
        g.bounds = bounds;
        g.hand_over();
    }

    /// Whether `consumer` would get a slot right now without waiting.
    pub fn has_room(&self, consumer: &str) -> bool {
        lock(&self.inner).fits(consumer)
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> u32 {
        lock(&self.inner).total
    }

    /// Requests waiting for a slot.
    pub fn queued(&self) -> usize {
        lock(&self.inner).line.len()
    }

    /// Takes a slot for `who`, waiting until `deadline` when full and the bounds allow a
    /// queue. Dropping the returned future leaves the queue at once.
    pub async fn acquire(self: &Arc<Self>, who: Who, deadline: Instant) -> Result<Permit, Refusal> {
        let (id, rx) = {
            let mut g = lock(&self.inner);
            // Waiters that fit were handed a slot already, so anyone still in line is blocked;
            // a newcomer only goes ahead when it fits.
            if g.fits(&who.consumer) {
                g.take(&who.consumer);
                return Ok(self.permit(who.consumer));
            }
            if g.bounds.max_queue == 0 {
                return Err(Refusal::Full);
            }
            if g.line.len() >= g.bounds.max_queue {
                return Err(Refusal::QueueFull);
            }
            let (tx, rx) = oneshot::channel();
            let id = g.next_id;
            g.next_id += 1;
            g.line.push(&who, id, tx);
            (id, rx)
        };
        let mut place = Place {
            limiter: self,
            who: Some(who),
            id,
        };
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(())) => {
                let who = place.who.take();
                Ok(self.permit(who.map(|w| w.consumer).unwrap_or_else(|| Arc::from(""))))
            }
            // Timed out (a slot handed over meanwhile is given back by `Place::drop`).
            _ => Err(Refusal::TimedOut),
        }
    }

    fn permit(self: &Arc<Self>, consumer: Arc<str>) -> Permit {
        Permit {
            limiter: self.clone(),
            consumer,
        }
    }
}

/// A waiter's place in line; leaving it (timeout, cancellation) removes it, or gives back a
/// slot that was handed over but not taken.
struct Place<'a> {
    limiter: &'a ConcurrencyLimiter,
    /// `None` once the slot became a [`Permit`].
    who: Option<Who>,
    id: u64,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let Some(who) = self.who.take() else { return };
        let mut g = lock(&self.limiter.inner);
        if g.line.remove(&who, self.id).is_none() {
            // Not in line any more: a slot was handed to us after all.
            g.give_back(&who.consumer);
            g.hand_over();
        }
    }
}

/// One in-flight request's slot; dropping it frees the slot for the next waiter.
#[derive(Debug)]
pub struct Permit {
    limiter: Arc<ConcurrencyLimiter>,
    consumer: Arc<str>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut g = lock(&self.limiter.inner);
        g.give_back(&self.consumer);
        g.hand_over();
    }
}

#[cfg(test)]
#[path = "concurrency_tests.rs"]
mod tests;
