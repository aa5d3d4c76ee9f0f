//! Queueing by priority, client disconnects while queued, shares under contention and
//! concurrency limits, through the proxy over real loopback sockets.
//!
//! Waits are event-driven (queue depths polled from the gateway) with generous bounds; the only
//! timing assumption is that a handful of loopback requests is sent within the limit's refill
//! time (2-3 s).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/harness.rs"]
mod harness;

use std::net::SocketAddr;
use std::time::Duration;

use harness::{Proxy, echo_upstream, raw, read_response};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const CONSUMERS: &str = "consumers:
  - { name: vip, identify: { header: { name: x-team, value: vip } }, priority: 10 }
  - { name: normal, identify: { header: { name: x-team, value: normal } } }
  - { name: acme, identify: { header: { name: x-team, value: acme } } }
  - { name: others, identify: { header: { name: x-team, value: others } } }
";

fn get(up: SocketAddr, path: &str, team: &str) -> String {
    format!(
        "GET http://{up}{path} HTTP/1.1\r\nHost: x\r\nx-team: {team}\r\nConnection: close\r\n\r\n"
    )
}

/// Waits (bounded) until `f` holds.
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..1_000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Sends a request on its own connection and returns the task reading its response.
async fn send(proxy: SocketAddr, req: String) -> tokio::task::JoinHandle<harness::RawResponse> {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    tokio::spawn(async move { read_response(&mut s, false).await })
}

fn paths_seen(up: &harness::Upstream) -> Vec<String> {
    up.seen
        .lock()
        .unwrap()
        .iter()
        .map(|v| v["uri"].as_str().unwrap().to_owned())
        .collect()
}

fn metric_line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.lines().find(|l| l.starts_with(prefix))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vip_requests_leave_the_queue_first() {
    let up = echo_upstream().await;
    // One request every 2 s; refused ones wait up to 30 s.
    let proxy = Proxy::start(&format!(
        "{CONSUMERS}apis:
  - name: slow
    hosts: [\"127.0.0.1\"]
    limits: [{{ name: trickle, requests: 1, per: 2s, algorithm: gcra, on_limit: {{ queue: 30s, max_queue: 10 }} }}]
"
    ))
    .await;
    let gw = proxy.gateway.clone();
    let depth = move || gw.waiting.queue_depth("slow", "trickle");

    let first = raw(proxy.addr, get(up.addr, "/first", "normal").as_bytes()).await;
    assert_eq!(first.status, 200, "{first:?}");
    let n1 = send(proxy.addr, get(up.addr, "/normal-1", "normal")).await;
    until("normal-1 queued", || depth() == 1).await;
    let n2 = send(proxy.addr, get(up.addr, "/normal-2", "normal")).await;
    until("normal-2 queued", || depth() == 2).await;
    let v1 = send(proxy.addr, get(up.addr, "/vip-1", "vip")).await;
    until("vip-1 queued", || depth() == 3).await;

    for t in [v1, n1, n2] {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "{r:?}");
    }
    assert_eq!(
        paths_seen(&up),
        ["/first", "/vip-1", "/normal-1", "/normal-2"]
    );
    assert_eq!(depth(), 0);
    let m = proxy.gateway.metrics.encode();
    assert_eq!(
        metric_line(
            &m,
            "tollgate_limit_queued_total{api=\"slow\",limit=\"trickle\",result=\"admitted\"}"
        ),
        Some("tollgate_limit_queued_total{api=\"slow\",limit=\"trickle\",result=\"admitted\"} 3")
    );
    assert!(
        m.contains("tollgate_limit_queue_wait_seconds_count{api=\"slow\"} 3"),
        "{m}"
    );
    assert!(
        m.contains("tollgate_limit_queue_depth{api=\"slow\",limit=\"trickle\"} 0"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnected_client_leaves_the_queue_and_a_full_queue_refuses() {
    let up = echo_upstream().await;
    let proxy = Proxy::start(&format!(
        "{CONSUMERS}apis:
  - name: q
    hosts: [\"127.0.0.1\"]
    limits: [{{ name: hourly, requests: 1, per: 1h, algorithm: gcra, on_limit: {{ queue: 60s, max_queue: 1 }} }}]
"
    ))
    .await;
    let gw = proxy.gateway.clone();
    let depth = move || gw.waiting.queue_depth("q", "hourly");
    assert_eq!(
        raw(proxy.addr, get(up.addr, "/a", "normal").as_bytes())
            .await
            .status,
        200
    );
    // This one waits (the next unit is an hour away)...
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(get(up.addr, "/b", "normal").as_bytes())
        .await
        .unwrap();
    until("the request queued", || depth() == 1).await;
    let m = proxy.gateway.metrics.encode();
    assert!(
        m.contains("tollgate_limit_queue_depth{api=\"q\",limit=\"hourly\"} 1"),
        "{m}"
    );
    // ...and the queue (max 1) is full: the next is refused at once.
    let full = raw(proxy.addr, get(up.addr, "/c", "vip").as_bytes()).await;
    assert_eq!(full.status, 429, "{full:?}");
    assert_eq!(full.header("tollgate-error"), Some("rate_limited"));
    // The client goes away: its request leaves the queue at once.
    drop(s);
    until("the queue emptied", || depth() == 0).await;
    let m = proxy.gateway.metrics.encode();
    assert!(
        m.contains(
            "tollgate_limit_queued_total{api=\"q\",limit=\"hourly\",result=\"cancelled\"} 1"
        ),
        "{m}"
    );
    assert!(
        m.contains("tollgate_limit_queued_total{api=\"q\",limit=\"hourly\",result=\"full\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("tollgate_limit_queue_depth{api=\"q\",limit=\"hourly\"} 0"),
        "{m}"
    );
    // With room in the queue again, a request waits (and times out only after 60 s).
    let waiting = send(proxy.addr, get(up.addr, "/d", "normal")).await;
    until("queued again", || depth() == 1).await;
    waiting.abort();
    assert_eq!(paths_seen(&up), ["/a"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shares_hold_under_contention() {
    let up = echo_upstream().await;
    // 20 per 30 days (a sliding window far longer than the test): acme is guaranteed 5, others
    // 10, and (`borrow: unallocated`) only the 5 nobody is guaranteed may be borrowed, even
    // while acme is idle.
    let proxy = Proxy::start(&format!(
        "{CONSUMERS}apis:
  - name: shared
    hosts: [\"127.0.0.1\"]
    limits: [{{ name: monthly, requests: 20, per: 30d, algorithm: sliding, shares: {{ acme: 25%, others: 50% }}, borrow: unallocated }}]
"
    ))
    .await;
    // others saturate with concurrent clients: their 10 plus the 5 unreserved, never acme's 5.
    let mut tasks = Vec::new();
    for i in 0..24 {
        tasks.push(send(proxy.addr, get(up.addr, &format!("/o{i}"), "others")).await);
    }
    let mut ok = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            200 => ok += 1,
            429 => assert_eq!(r.header("tollgate-error"), Some("rate_limited")),
            s => panic!("unexpected {s}: {r:?}"),
        }
    }
    assert_eq!(ok, 15);
    // acme still gets its whole guarantee, then the limit is full.
    for i in 0..5 {
        let r = raw(
            proxy.addr,
            get(up.addr, &format!("/a{i}"), "acme").as_bytes(),
        )
        .await;
        assert_eq!(r.status, 200, "acme request {i}: {r:?}");
    }
    let r = raw(proxy.addr, get(up.addr, "/a5", "acme").as_bytes()).await;
    assert_eq!(r.status, 429, "{r:?}");
    // Unlisted consumers share the default 0%: nothing is left to borrow.
    let r = raw(proxy.addr, get(up.addr, "/v", "vip").as_bytes()).await;
    assert_eq!(r.status, 429, "{r:?}");
    assert_eq!(up.seen.lock().unwrap().len(), 20);
}

/// A proxy with 20 requests per 30 days split acme 25% (5) / others 75% (15) and the default
/// `borrow: true`.
async fn full_split() -> Proxy {
    Proxy::start(&format!(
        "{CONSUMERS}apis:
  - name: shared
    hosts: [\"127.0.0.1\"]
    limits: [{{ name: monthly, requests: 20, per: 30d, algorithm: sliding, shares: {{ acme: 25%, others: 75% }} }}]
"
    ))
    .await
}

/// Sends `n` concurrent requests as `team`; returns how many were admitted (the rest must be
/// 429 `rate_limited`).
async fn burst(proxy: &Proxy, up: SocketAddr, team: &str, n: usize) -> usize {
    let mut tasks = Vec::new();
    for i in 0..n {
        tasks.push(send(proxy.addr, get(up, &format!("/{team}{i}"), team)).await);
    }
    let mut ok = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            200 => ok += 1,
            429 => assert_eq!(r.header("tollgate-error"), Some("rate_limited")),
            s => panic!("unexpected {s}: {r:?}"),
        }
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shares_lend_an_idle_consumers_guarantee() {
    let up = echo_upstream().await;
    let proxy = full_split().await;
    // acme has sent nothing: its 5 may be borrowed, and RateLimit says so (19 left, not 14).
    let r = raw(proxy.addr, get(up.addr, "/first", "others").as_bytes()).await;
    assert_eq!(r.status, 200, "{r:?}");
    let rl = r.header("ratelimit").unwrap();
    assert!(rl.starts_with("\"monthly\";r=19;"), "{rl}");
    assert_eq!(burst(&proxy, up.addr, "others", 24).await, 19);
    // What others borrowed is used: acme, arriving now, finds the limit full.
    let r = raw(proxy.addr, get(up.addr, "/late", "acme").as_bytes()).await;
    assert_eq!(r.status, 429, "{r:?}");
    assert_eq!(r.header("tollgate-error"), Some("rate_limited"));
    assert_eq!(up.seen.lock().unwrap().len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shares_reserve_an_active_consumers_guarantee() {
    let up = echo_upstream().await;
    let proxy = full_split().await;
    // others use 10 while acme is idle.
    assert_eq!(burst(&proxy, up.addr, "others", 10).await, 10);
    // acme's first request makes it active: the other 4 of its 5 are reserved at once.
    let r = raw(proxy.addr, get(up.addr, "/a0", "acme").as_bytes()).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = raw(proxy.addr, get(up.addr, "/o", "others").as_bytes()).await;
    assert_eq!(r.status, 200, "{r:?}");
    // others: 11 of their 15 used, 12 of 20 in all, acme's 4 reserved: 4 left.
    let rl = r.header("ratelimit").unwrap();
    assert!(rl.starts_with("\"monthly\";r=4;"), "{rl}");
    assert_eq!(burst(&proxy, up.addr, "others", 24).await, 4);
    // acme still gets the rest of its guarantee, then the limit is full.
    for i in 1..5 {
        let r = raw(
            proxy.addr,
            get(up.addr, &format!("/a{i}"), "acme").as_bytes(),
        )
        .await;
        assert_eq!(r.status, 200, "acme request {i}: {r:?}");
    }
    let r = raw(proxy.addr, get(up.addr, "/a5", "acme").as_bytes()).await;
    assert_eq!(r.status, 429, "{r:?}");
    assert_eq!(up.seen.lock().unwrap().len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlisted_consumers_are_refused_with_default_share_deny() {
    let up = echo_upstream().await;
    let proxy = Proxy::start(&format!(
        "{CONSUMERS}apis:
  - name: partners
    hosts: [\"127.0.0.1\"]
    limits: [{{ name: daily, requests: 10, per: 1d, shares: {{ acme: 50% }}, default_share: deny }}]
"
    ))
    .await;
    let r = raw(proxy.addr, get(up.addr, "/x", "vip").as_bytes()).await;
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.header("tollgate-error"), Some("consumer_not_allowed"));
    let detail = r.json()["detail"].as_str().unwrap().to_owned();
    assert!(detail.contains("no share of limit \"daily\""), "{detail}");
    let r = raw(proxy.addr, get(up.addr, "/y", "acme").as_bytes()).await;
    assert_eq!(r.status, 200, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_slots_are_held_to_body_end_and_handed_over_by_priority() {
    let up = echo_upstream().await;
    let proxy = Proxy::start(&format!(
        "{CONSUMERS}apis:
  - name: narrow
    hosts: [\"127.0.0.1\"]
    concurrency: {{ max: 1, on_limit: {{ queue: 30s, max_queue: 2 }} }}
"
    ))
    .await;
    let gw = proxy.gateway.clone();
    let state = move || gw.waiting.concurrency("narrow").unwrap_or((0, 0));

    // Holds the only slot for 3 s while the others line up.
    let holder = send(proxy.addr, get(up.addr, "/slow/3000", "normal")).await;
    until("the slot is taken", || state().0 == 1).await;
    let n = send(proxy.addr, get(up.addr, "/normal", "normal")).await;
    until("normal queued", || state().1 == 1).await;
    let v = send(proxy.addr, get(up.addr, "/vip", "vip")).await;
    until("vip queued", || state().1 == 2).await;
    // The queue holds 2: a third waiter is refused at once.
    let full = raw(proxy.addr, get(up.addr, "/third", "acme").as_bytes()).await;
    assert_eq!(full.status, 429, "{full:?}");
    assert_eq!(full.header("tollgate-error"), Some("concurrency_limited"));
    assert_eq!(full.header("retry-after"), Some("1"));
    for t in [holder, v, n] {
        assert_eq!(t.await.unwrap().status, 200);
    }
    assert_eq!(paths_seen(&up), ["/slow/3000", "/vip", "/normal"]);
    until("all slots free", || state() == (0, 0)).await;
    let m = proxy.gateway.metrics.encode();
    assert!(
        m.contains("tollgate_concurrency_in_flight{api=\"narrow\"} 0"),
        "{m}"
    );
    assert!(
        m.contains("tollgate_concurrency_queued_total{api=\"narrow\",result=\"admitted\"} 2"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_reject_refuses_at_once_and_per_consumer_leaves_room() {
    let up = echo_upstream().await;
    let proxy = Proxy::start(&format!(
        "{CONSUMERS}apis:
  - name: strict
    hosts: [\"127.0.0.1\"]
    concurrency: {{ max: 2, per_consumer: 1 }}
"
    ))
    .await;
    let gw = proxy.gateway.clone();
    let state = move || gw.waiting.concurrency("strict").unwrap_or((0, 0));
    let holder = send(proxy.addr, get(up.addr, "/slow/2000", "normal")).await;
    until("the slot is taken", || state().0 == 1).await;
    // `on_limit: reject` (the default): normal's second request is refused at once...
    let r = raw(proxy.addr, get(up.addr, "/again", "normal").as_bytes()).await;
    assert_eq!(r.status, 429, "{r:?}");
    assert_eq!(r.header("tollgate-error"), Some("concurrency_limited"));
    let detail = r.json()["detail"].as_str().unwrap().to_owned();
    assert!(detail.contains("1 per consumer"), "{detail}");
    // ...while another consumer still has room.
    let r = raw(proxy.addr, get(up.addr, "/other", "acme").as_bytes()).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(holder.await.unwrap().status, 200);
    until("all slots free", || state() == (0, 0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waiting_for_quota_holds_no_concurrency_slot() {
    let up = echo_upstream().await;
    let proxy = Proxy::start(&format!(
        "{CONSUMERS}apis:
  - name: both
    hosts: [\"127.0.0.1\"]
    concurrency: {{ max: 1 }}
    limits: [{{ name: hourly, requests: 1, per: 1h, algorithm: gcra, on_limit: {{ queue: 60s }} }}]
"
    ))
    .await;
    let gw = proxy.gateway.clone();
    let slots = move || gw.waiting.concurrency("both").unwrap_or((0, 0));
    let gw = proxy.gateway.clone();
    let depth = move || gw.waiting.queue_depth("both", "hourly");
    let r = raw(proxy.addr, get(up.addr, "/a", "normal").as_bytes()).await;
    assert_eq!(r.status, 200, "{r:?}");
    until("slot freed", || slots() == (0, 0)).await;
    // Waits for quota (an hour away) without taking the only slot.
    let waiting = send(proxy.addr, get(up.addr, "/b", "normal")).await;
    until("queued for quota", || depth() == 1).await;
    assert_eq!(slots(), (0, 0));
    waiting.abort();
}
