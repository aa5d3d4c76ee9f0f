//! Priority wait queue for limits with `on_limit: { queue: <wait>, max_queue: <n> }`.
//!
//! A request refused by such a limit does not get its 429 at once: it joins the limit's queue
//! (one per API and limit) and waits to be *released*, then checks the limits again. Release
//! order: higher consumer `priority` first; among equal priorities, consumers take turns
//! (round-robin); one consumer's waiters go first-in, first-out. One waiter is released at a
//! time: it re-checks and reports back ([`Waiter::admitted`] releases the next one at once, since
//! there may be room for more; [`Waiter::refused`] puts it back in its place until the limit's
//! next availability).
//!
//! When a waiter can be released is driven by the limit: each waiter has a `key` (the counter
//! it waits for) and a ready time (now + the refusal's `retry_after`); a refusal pushes every
//! waiter of the same key to the new ready time, so waiters of a key that is still exhausted are
//! not re-checked in vain while waiters of other keys go ahead. A timer task (holding only a
//! weak reference) fires at the earliest ready time.
//!
//! What a client sees: nothing while it waits; then either its request goes ahead, or 429 when
//! the queue is full on arrival ([`QueueFull`]) or the wait exceeds the limit's `queue` time
//! ([`TimedOut`]). A client that disconnects drops its handler future, and with it the
//! [`Waiter`], which leaves the queue at once (and passes on a release it was holding).
//!
//! Locking: one `std` mutex per queue, never held across an `.await`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Who is waiting: the consumer (for turn-taking) and its priority.
#[derive(Debug, Clone)]
pub struct Who {
    pub consumer: Arc<str>,
    pub priority: i32,
}

/// The queue already holds `max_queue` waiters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the wait queue is full")]
pub struct QueueFull;

/// The waiter was not released before its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the wait in the queue timed out")]
pub struct TimedOut;

/// Waiters in release order: priority (highest first), then consumers in turn, then FIFO.
/// Shared by the limit queue and the concurrency limiter.
#[derive(Debug)]
pub(crate) struct Line<T> {
    levels: BTreeMap<Reverse<i32>, Level<T>>,
    len: usize,
}

#[derive(Debug)]
struct Level<T> {
    /// Consumers with waiters at this priority; the front one has the next turn.
    turn: VecDeque<Arc<str>>,
    fifo: HashMap<Arc<str>, VecDeque<(u64, T)>>,
}

impl<T> Default for Line<T> {
    fn default() -> Self {
        Self {
            levels: BTreeMap::new(),
            len: 0,
        }
    }
}

impl<T> Line<T> {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Adds a waiter; `id`s grow with arrival, and a waiter put back keeps its place by id.
    pub(crate) fn push(&mut self, who: &Who, id: u64, item: T) {
        let level = self
            .levels
            .entry(Reverse(who.priority))
            .or_insert_with(|| Level {
                turn: VecDeque::new(),
                fifo: HashMap::new(),
            });
        let q = level.fifo.entry(who.consumer.clone()).or_default();
        if q.is_empty() {
            level.turn.push_back(who.consumer.clone());
        }
        let at = q.partition_point(|(i, _)| *i < id);
        q.insert(at, (id, item));
        self.len += 1;
    }

    /// Removes waiter `id` if it is still in line.
    pub(crate) fn remove(&mut self, who: &Who, id: u64) -> Option<T> {
        let key = Reverse(who.priority);
        let level = self.levels.get_mut(&key)?;
        let q = level.fifo.get_mut(&who.consumer)?;
        let at = q.iter().position(|(i, _)| *i == id)?;
        let (_, item) = q.remove(at)?;
        if q.is_empty() {
            level.fifo.remove(&who.consumer);
            level.turn.retain(|c| *c != who.consumer);
            if level.turn.is_empty() {
                self.levels.remove(&key);
            }
        }
        self.len -= 1;
        Some(item)
    }

    /// Takes the first waiter in release order for which `eligible` holds, and moves its
    /// consumer to the back of its priority's turn order.
    pub(crate) fn pop_first(
        &mut self,
        mut eligible: impl FnMut(&Arc<str>, &T) -> bool,
    ) -> Option<(Who, u64, T)> {
        let mut found = None;
        'levels: for (prio, level) in &self.levels {
            for (t, consumer) in level.turn.iter().enumerate() {
                let Some(q) = level.fifo.get(consumer) else {
                    continue;
                };
                if let Some(at) = q.iter().position(|(_, item)| eligible(consumer, item)) {
                    found = Some((*prio, t, consumer.clone(), at));
                    break 'levels;
                }
            }
        }
        let (prio, t, consumer, at) = found?;
        let level = self.levels.get_mut(&prio)?;
        let q = level.fifo.get_mut(&consumer)?;
        let (id, item) = q.remove(at)?;
        level.turn.remove(t);
        if q.is_empty() {
            level.fifo.remove(&consumer);
            if level.turn.is_empty() {
                self.levels.remove(&prio);
            }
        } else {
            level.turn.push_back(consumer.clone());
        }
        self.len -= 1;
        Some((
            Who {
                consumer,
                priority: prio.0,
            },
            id,
            item,
        ))
    }

    pub(crate) fn items_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.levels
            .values_mut()
            .flat_map(|l| l.fifo.values_mut())
            .flat_map(|q| q.iter_mut().map(|(_, item)| item))
    }
}

/// A queued waiter's slot in the line.
#[derive(Debug)]
struct Slot {
    key: Arc<str>,
    ready_at: Instant,
    notify: Arc<Notify>,
}

#[derive(Debug)]
struct Inner {
    line: Line<Slot>,
    max: usize,
    /// Waiters that joined and have not left (in line or being re-checked).
    depth: usize,
    next_id: u64,
    /// The waiter released to re-check, if any; nobody else is released meanwhile.
    releasing: Option<u64>,
    /// The earliest instant a timer task is armed for.
    timer_at: Option<Instant>,
}

/// The wait queue of one limit. See the module docs.
#[derive(Debug)]
pub struct WaitQueue {
    inner: Mutex<Inner>,
    me: Weak<WaitQueue>,
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // Every mutation below leaves `Inner` consistent before anything can panic.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl WaitQueue {
    /// A queue that holds at most `max` waiters.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            inner: Mutex::new(Inner {
                line: Line::default(),
                max,
                depth: 0,
                next_id: 0,
                releasing: None,
                timer_at: None,
            }),
            me: me.clone(),
        })
    }

    /// Changes the bound (config reload); waiters already queued stay.
    pub fn set_max(&self, max: usize) {
        lock(&self.inner).max = max;
    }

    /// Waiters that joined and have not left yet.
    pub fn depth(&self) -> usize {
        lock(&self.inner).depth
    }

    /// Whether someone is waiting for `key` (then a newcomer should queue behind them rather
    /// than take capacity they are waiting for).
    pub fn has_waiters(&self, key: &str) -> bool {
        let mut g = lock(&self.inner);
        g.line.items_mut().any(|s| &*s.key == key)
    }

    /// Joins the queue, waiting for counter `key`. `ready_in`: when the limit may have room
    /// (the refusal's retry time); `None` for a newcomer queueing behind others waiting for
    /// the same key (it becomes ready with them).
    pub fn join(
        self: &Arc<Self>,
        who: Who,
        key: Arc<str>,
        ready_in: Option<Duration>,
    ) -> Result<Waiter, QueueFull> {
        let now = Instant::now();
        let notify = Arc::new(Notify::new());
        let mut g = lock(&self.inner);
        if g.depth >= g.max {
            return Err(QueueFull);
        }
        let ready_at = match ready_in {
            Some(d) => now + d,
            None => g
                .line
                .items_mut()
                .filter(|s| s.key == key)
                .map(|s| s.ready_at)
                .max()
                .unwrap_or(now),
        };
        let id = g.next_id;
        g.next_id += 1;
        g.depth += 1;
        g.line.push(
            &who,
            id,
            Slot {
                key: key.clone(),
                ready_at,
                notify: notify.clone(),
            },
        );
        self.pump(&mut g, now);
        drop(g);
        Ok(Waiter {
            queue: self.clone(),
            who,
            id,
            key,
            notify,
        })
    }

    /// Releases the best ready waiter unless one is re-checking; otherwise makes sure a timer
    /// fires when the next waiter becomes ready.
    fn pump(&self, g: &mut Inner, now: Instant) {
        if g.releasing.is_some() {
            return;
        }
        if let Some((_, id, slot)) = g.line.pop_first(|_, s| s.ready_at <= now) {
            g.releasing = Some(id);
            slot.notify.notify_one();
            return;
        }
        let Some(next) = g.line.items_mut().map(|s| s.ready_at).min() else {
            return;
        };
        if g.timer_at.is_some_and(|t| t <= next) {
            return;
        }
        // Waiters can be dropped while the runtime shuts down; then nobody needs a timer.
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        g.timer_at = Some(next);
        let me = self.me.clone();
        rt.spawn(async move {
            tokio::time::sleep_until(next).await;
            if let Some(q) = me.upgrade() {
                let mut g = lock(&q.inner);
                if g.timer_at == Some(next) {
                    g.timer_at = None;
                }
                q.pump(&mut g, Instant::now());
            }
        });
    }
}

/// A place in a [`WaitQueue`]. Dropping it leaves the queue (and passes on a release it holds).
#[derive(Debug)]
pub struct Waiter {
    queue: Arc<WaitQueue>,
    who: Who,
    id: u64,
    key: Arc<str>,
    notify: Arc<Notify>,
}

impl Waiter {
    /// Waits until released (then re-check the limits and report with [`Waiter::admitted`] or
    /// [`Waiter::refused`]) or until `deadline`.
    pub async fn released(&mut self, deadline: Instant) -> Result<(), TimedOut> {
        match tokio::time::timeout_at(deadline, self.notify.notified()).await {
            Ok(()) => Ok(()),
            // A release that raced the deadline is still ours: Drop passes it on.
            Err(_) => Err(TimedOut),
        }
    }

    /// The re-check admitted the request: leave the queue and release the next waiter now
    /// (there may be room for more).
    pub fn admitted(self) {
        // Drop does it.
    }

    /// The re-check refused again: back in line at the same place, ready after `retry_after`;
    /// every other waiter for the same key waits at least as long.
    pub fn refused(&mut self, retry_after: Duration) {
        let q = &self.queue;
        let now = Instant::now();
        // At least 1 ms, so a limit that reports "no wait" cannot spin the queue.
        let ready_at = now + retry_after.max(Duration::from_millis(1));
        let mut g = lock(&q.inner);
        for s in g.line.items_mut() {
            if s.key == self.key && s.ready_at < ready_at {
                s.ready_at = ready_at;
            }
        }
        g.line.push(
            &self.who,
            self.id,
            Slot {
                key: self.key.clone(),
                ready_at,
                notify: self.notify.clone(),
            },
        );
        if g.releasing == Some(self.id) {
            g.releasing = None;
        }
        q.pump(&mut g, now);
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let q = &self.queue;
        let mut g = lock(&q.inner);
        g.line.remove(&self.who, self.id);
        g.depth = g.depth.saturating_sub(1);
        // Released (whether or not `released` saw it): let the next waiter go.
        if g.releasing == Some(self.id) {
            g.releasing = None;
        }
        q.pump(&mut g, Instant::now());
    }
}

#[cfg(test)]
#[path = "queue_tests.rs"]
mod tests;
