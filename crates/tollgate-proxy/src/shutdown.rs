//! Graceful shutdown. [`Shutdown::trigger`] (SIGTERM/SIGINT in `main`) moves
//! the gateway to *draining*: the accept loop stops (new connections are
//! refused), requests already in flight finish, and a new request arriving on
//! an open connection during a short drain window is answered 503
//! `shutting_down` with `Connection: close`. After the window the remaining
//! connections are shut down gracefully (idle ones close at once, busy ones
//! after their response). Tunnels keep running until `server.shutdown_grace`
//! ends; then everything still open is *forced* closed.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};

/// How long open connections keep answering new requests with 503 before
/// they are closed (capped by the configured grace period).
pub const DRAIN_WINDOW: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    Draining,
    Forced,
}

/// The gateway's shutdown state, shared by the accept loop, every connection
/// and every tunnel.
#[derive(Debug)]
pub struct Shutdown {
    phase: watch::Sender<Phase>,
    tracker: Tracker,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        Self {
            phase: watch::Sender::new(Phase::Running),
            tracker: Tracker::default(),
        }
    }

    /// Starts the graceful shutdown. Idempotent.
    pub fn trigger(&self) {
        self.phase.send_if_modified(|p| {
            let change = *p == Phase::Running;
            if change {
                *p = Phase::Draining;
            }
            change
        });
    }

    pub fn is_triggered(&self) -> bool {
        *self.phase.borrow() != Phase::Running
    }

    /// Resolves once shutdown has been triggered.
    pub async fn triggered(&self) {
        let mut rx = self.phase.subscribe();
        let _ = rx.wait_for(|p| *p != Phase::Running).await;
    }

    /// Ends the grace period: everything still open closes now.
    pub fn force(&self) {
        self.phase.send_replace(Phase::Forced);
    }

    pub async fn forced(&self) {
        let mut rx = self.phase.subscribe();
        let _ = rx.wait_for(|p| *p == Phase::Forced).await;
    }

    /// Connections and tunnels register here so shutdown can wait for them.
    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }
}

/// Counts live connections and tunnels.
#[derive(Debug, Default, Clone)]
pub struct Tracker(Arc<TrackerInner>);

#[derive(Debug, Default)]
struct TrackerInner {
    live: AtomicUsize,
    idle: Notify,
}

impl Tracker {
    pub fn track(&self) -> TrackGuard {
        self.0.live.fetch_add(1, Ordering::AcqRel);
        TrackGuard(self.0.clone())
    }

    pub fn live(&self) -> usize {
        self.0.live.load(Ordering::Acquire)
    }

    /// Resolves when nothing is tracked.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.0.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.live() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Held by one connection or tunnel task.
#[derive(Debug)]
pub struct TrackGuard(Arc<TrackerInner>);

impl Drop for TrackGuard {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn phases_and_tracking() {
        let s = Shutdown::new();
        assert!(!s.is_triggered());
        let g = s.tracker().track();
        s.trigger();
        s.triggered().await;
        assert!(s.is_triggered());
        let t = s.tracker().clone();
        let waiter = tokio::spawn(async move { t.wait_idle().await });
        drop(g);
        waiter.await.unwrap();
        s.force();
        s.forced().await;
    }
}
