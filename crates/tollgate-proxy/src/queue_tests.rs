//! Release order, deadlines, bound and cancellation, with tokio's paused clock.
use std::sync::Mutex as StdMutex;

use super::*;

fn who(consumer: &str, priority: i32) -> Who {
    Who {
        consumer: Arc::from(consumer),
        priority,
    }
}

const KEY: &str = "api:limit:-";

fn key() -> Arc<str> {
    Arc::from(KEY)
}

/// Spawns a waiter that, once released, records `label` and is admitted.
fn admit_when_released(
    q: &Arc<WaitQueue>,
    w: Who,
    ready_in: Duration,
    label: &'static str,
    log: &Arc<StdMutex<Vec<&'static str>>>,
) -> tokio::task::JoinHandle<Result<(), TimedOut>> {
    let mut waiter = q.join(w, key(), Some(ready_in)).unwrap();
    let log = log.clone();
    tokio::spawn(async move {
        waiter
            .released(Instant::now() + Duration::from_secs(60))
            .await?;
        log.lock().unwrap().push(label);
        waiter.admitted();
        Ok(())
    })
}

async fn settle() {
    // Let spawned tasks run to their next await point (the clock is paused).
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn higher_priority_first_then_fifo() {
    let q = WaitQueue::new(10);
    let log = Arc::new(StdMutex::new(Vec::new()));
    let s = Duration::from_secs(1);
    let tasks = [
        admit_when_released(&q, who("a", 0), s, "a0-first", &log),
        admit_when_released(&q, who("a", 0), s, "a0-second", &log),
        admit_when_released(&q, who("vip", 10), s, "vip", &log),
        admit_when_released(&q, who("mid", 5), s, "mid", &log),
    ];
    assert_eq!(q.depth(), 4);
    settle().await;
    // Nobody is released before the limit's retry time.
    assert!(log.lock().unwrap().is_empty());
    tokio::time::sleep(s).await;
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(
        *log.lock().unwrap(),
        ["vip", "mid", "a0-first", "a0-second"]
    );
    assert_eq!(q.depth(), 0);
}

#[tokio::test(start_paused = true)]
async fn consumers_of_equal_priority_take_turns() {
    let q = WaitQueue::new(10);
    let log = Arc::new(StdMutex::new(Vec::new()));
    let s = Duration::from_millis(10);
    let mut tasks = Vec::new();
    for label in ["a1", "a2", "a3"] {
        tasks.push(admit_when_released(&q, who("a", 0), s, label, &log));
    }
    for label in ["b1", "b2"] {
        tasks.push(admit_when_released(&q, who("b", 0), s, label, &log));
    }
    tasks.push(admit_when_released(&q, who("c", 0), s, "c1", &log));
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(*log.lock().unwrap(), ["a1", "b1", "c1", "a2", "b2", "a3"]);
}

#[tokio::test(start_paused = true)]
async fn refusal_puts_back_in_place_and_holds_the_same_key() {
    let q = WaitQueue::new(10);
    let start = Instant::now();
    let mut first = q
        .join(who("a", 0), key(), Some(Duration::from_secs(1)))
        .unwrap();
    let mut second = q
        .join(who("a", 0), key(), Some(Duration::from_secs(1)))
        .unwrap();
    // A waiter for another counter is not held up by this key's refusals.
    let mut other = q
        .join(
            who("b", 0),
            Arc::from("api:limit:x"),
            Some(Duration::from_secs(2)),
        )
        .unwrap();
    let far = start + Duration::from_secs(60);
    first.released(far).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    // Still full: back in line for 5 s, and `second` (same key) waits as long.
    first.refused(Duration::from_secs(5));
    other.released(far).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    other.admitted();
    // `first` keeps its place ahead of `second`.
    first.released(far).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(6));
    first.admitted();
    second.released(far).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(6));
    second.admitted();
    assert_eq!(q.depth(), 0);
}

#[tokio::test(start_paused = true)]
async fn deadline_bound_and_newcomers() {
    let q = WaitQueue::new(2);
    let start = Instant::now();
    let mut w1 = q
        .join(who("a", 0), key(), Some(Duration::from_secs(10)))
        .unwrap();
    // A newcomer for the same key becomes ready with the others.
    let mut w2 = q.join(who("b", 0), key(), None).unwrap();
    assert!(q.has_waiters(KEY) && !q.has_waiters("api:other:-"));
    // The bound: a third waiter is refused at once.
    assert_eq!(q.join(who("c", 9), key(), None).unwrap_err(), QueueFull);
    // The deadline passes before the limit has room.
    assert_eq!(
        w1.released(start + Duration::from_secs(3)).await,
        Err(TimedOut)
    );
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    drop(w1);
    assert_eq!(q.depth(), 1);
    w2.released(start + Duration::from_secs(60)).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn dropped_waiters_leave_at_once_and_pass_on_a_release() {
    let q = WaitQueue::new(10);
    let log = Arc::new(StdMutex::new(Vec::new()));
    let s = Duration::from_secs(1);
    // A client that disconnects: its handler future (here a task) is dropped while queued.
    let gone = admit_when_released(&q, who("vip", 10), s, "gone", &log);
    let stays = admit_when_released(&q, who("a", 0), s, "stays", &log);
    settle().await;
    assert_eq!(q.depth(), 2);
    gone.abort();
    assert!(gone.await.unwrap_err().is_cancelled());
    assert_eq!(q.depth(), 1);
    stays.await.unwrap().unwrap();
    assert_eq!(*log.lock().unwrap(), ["stays"]);

    // A waiter released but dropped before it re-checks passes the release on.
    let mut held = q.join(who("vip", 10), key(), Some(s)).unwrap();
    let next = admit_when_released(&q, who("a", 0), s, "next", &log);
    held.released(Instant::now() + Duration::from_secs(60))
        .await
        .unwrap();
    settle().await;
    assert_eq!(log.lock().unwrap().len(), 1);
    drop(held);
    next.await.unwrap().unwrap();
    assert_eq!(*log.lock().unwrap(), ["stays", "next"]);
    assert_eq!(q.depth(), 0);
}

#[test]
fn line_orders_by_priority_turns_and_fifo() {
    let mut line: Line<&str> = Line::default();
    line.push(&who("a", 0), 1, "a1");
    line.push(&who("a", 0), 2, "a2");
    line.push(&who("b", 0), 3, "b1");
    line.push(&who("v", 7), 4, "v1");
    // Put back by id: goes before a2 again.
    let (w, id, item) = line.pop_first(|_, _| true).unwrap();
    assert_eq!((&*w.consumer, w.priority, id, item), ("v", 7, 4, "v1"));
    let order: Vec<&str> =
        std::iter::from_fn(|| line.pop_first(|_, _| true).map(|x| x.2)).collect();
    assert_eq!(order, ["a1", "b1", "a2"]);
    assert_eq!(line.len(), 0);
    line.push(&who("a", 0), 9, "late");
    line.push(&who("a", 0), 5, "early");
    assert_eq!(line.remove(&who("a", 0), 9), Some("late"));
    assert_eq!(line.remove(&who("a", 0), 9), None);
    // Only eligible waiters are taken; others keep their turn.
    line.push(&who("b", 0), 6, "b");
    assert_eq!(line.pop_first(|c, _| &**c == "b").map(|x| x.2), Some("b"));
    assert_eq!(line.pop_first(|_, _| true).map(|x| x.2), Some("early"));
}
