//! Slots, hand-over order, deadlines, bound and cancellation, with tokio's paused clock.
use std::sync::Mutex as StdMutex;
use std::time::Duration;

use super::*;

fn who(consumer: &str, priority: i32) -> Who {
    Who {
        consumer: Arc::from(consumer),
        priority,
    }
}

fn bounds(max: Option<u32>, per_consumer: Option<u32>, max_queue: usize) -> Bounds {
    Bounds {
        max,
        per_consumer,
        max_queue,
    }
}

fn later(secs: u64) -> Instant {
    Instant::now() + Duration::from_secs(secs)
}

async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn reject_when_full_and_free_on_drop() {
    let l = ConcurrencyLimiter::new(bounds(Some(2), None, 0));
    let a = l.acquire(who("a", 0), later(1)).await.unwrap();
    let _b = l.acquire(who("b", 0), later(1)).await.unwrap();
    assert_eq!(l.in_flight(), 2);
    assert_eq!(
        l.acquire(who("c", 0), later(1)).await.unwrap_err(),
        Refusal::Full
    );
    drop(a);
    assert_eq!(l.in_flight(), 1);
    assert!(l.acquire(who("c", 0), later(1)).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn per_consumer_bound_leaves_room_for_others() {
    let l = ConcurrencyLimiter::new(bounds(Some(3), Some(1), 0));
    let _a = l.acquire(who("a", 0), later(1)).await.unwrap();
    assert_eq!(
        l.acquire(who("a", 0), later(1)).await.unwrap_err(),
        Refusal::Full
    );
    let _b = l.acquire(who("b", 0), later(1)).await.unwrap();
    assert_eq!(l.in_flight(), 2);
}

/// Spawns a waiter that records `label` when it gets a slot and then holds it until told.
fn wait_and_hold(
    l: &Arc<ConcurrencyLimiter>,
    w: Who,
    label: &'static str,
    log: &Arc<StdMutex<Vec<&'static str>>>,
) -> tokio::task::JoinHandle<Result<Permit, Refusal>> {
    let (l, log) = (l.clone(), log.clone());
    tokio::spawn(async move {
        let p = l.acquire(w, later(60)).await?;
        log.lock().unwrap().push(label);
        Ok(p)
    })
}

#[tokio::test(start_paused = true)]
async fn freed_slots_go_by_priority_turns_and_fifo() {
    let l = ConcurrencyLimiter::new(bounds(Some(1), None, 10));
    let log = Arc::new(StdMutex::new(Vec::new()));
    let holder = l.acquire(who("x", 0), later(1)).await.unwrap();
    let mut tasks = Vec::new();
    for (w, label) in [
        (who("a", 0), "a1"),
        (who("a", 0), "a2"),
        (who("b", 0), "b1"),
        (who("vip", 9), "vip"),
    ] {
        tasks.push(wait_and_hold(&l, w, label, &log));
        settle().await; // join in this order
    }
    assert_eq!(l.queued(), 4);
    // Each waiter that gets the slot finishes at once, handing it to the next in line.
    let mut done = Vec::new();
    for t in tasks {
        done.push(tokio::spawn(async move { drop(t.await.unwrap().unwrap()) }));
    }
    drop(holder);
    for d in done {
        d.await.unwrap();
    }
    assert_eq!(*log.lock().unwrap(), ["vip", "a1", "b1", "a2"]);
    assert_eq!((l.in_flight(), l.queued()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn waiter_blocked_per_consumer_does_not_block_others() {
    let l = ConcurrencyLimiter::new(bounds(Some(2), Some(1), 10));
    let log = Arc::new(StdMutex::new(Vec::new()));
    let a = l.acquire(who("a", 0), later(1)).await.unwrap();
    let b = l.acquire(who("b", 0), later(1)).await.unwrap();
    // a's second request waits for a's slot; c waits for any slot.
    let a2 = wait_and_hold(&l, who("a", 5), "a2", &log);
    settle().await;
    let c = wait_and_hold(&l, who("c", 0), "c", &log);
    settle().await;
    // b finishes: a2 (higher priority) may not take it (a is at its bound), so c does.
    drop(b);
    let c = c.await.unwrap().unwrap();
    assert_eq!(*log.lock().unwrap(), ["c"]);
    drop(a);
    let a2 = a2.await.unwrap().unwrap();
    assert_eq!(*log.lock().unwrap(), ["c", "a2"]);
    drop((a2, c));
    assert_eq!(l.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn timeout_bound_and_cancellation() {
    let l = ConcurrencyLimiter::new(bounds(Some(1), None, 2));
    let log = Arc::new(StdMutex::new(Vec::new()));
    let holder = l.acquire(who("x", 0), later(1)).await.unwrap();
    let start = Instant::now();
    // Times out after 2 s with nothing freed.
    let err = l
        .acquire(who("a", 0), start + Duration::from_secs(2))
        .await
        .unwrap_err();
    assert_eq!(err, Refusal::TimedOut);
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert_eq!(l.queued(), 0);
    // Bound: two may wait, the third is refused at once.
    let gone = wait_and_hold(&l, who("vip", 9), "gone", &log);
    let stays = wait_and_hold(&l, who("b", 0), "stays", &log);
    settle().await;
    assert_eq!(
        l.acquire(who("c", 0), later(5)).await.unwrap_err(),
        Refusal::QueueFull
    );
    // A client that disconnects leaves the line at once, and the slot goes to the next.
    gone.abort();
    assert!(gone.await.unwrap_err().is_cancelled());
    assert_eq!(l.queued(), 1);
    drop(holder);
    let p = stays.await.unwrap().unwrap();
    assert_eq!(*log.lock().unwrap(), ["stays"]);
    assert_eq!(l.in_flight(), 1);
    drop(p);
    assert_eq!(l.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn raised_bounds_let_waiters_in() {
    let l = ConcurrencyLimiter::new(bounds(Some(1), None, 5));
    let log = Arc::new(StdMutex::new(Vec::new()));
    let _holder = l.acquire(who("x", 0), later(1)).await.unwrap();
    let w = wait_and_hold(&l, who("a", 0), "a", &log);
    settle().await;
    l.set_bounds(bounds(Some(2), None, 5));
    let _p = w.await.unwrap().unwrap();
    assert_eq!(l.in_flight(), 2);
}
