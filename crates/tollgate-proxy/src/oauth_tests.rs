use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

/// A scripted token endpoint: answers from `script` in order (the last entry repeats).
struct Fake {
    calls: AtomicUsize,
    script: Vec<Result<u64, FetchError>>,
    delay: Duration,
}

impl Fake {
    fn new(script: Vec<Result<u64, FetchError>>) -> Arc<Self> {
        Arc::new(Self {
            calls: AtomicUsize::new(0),
            script,
            delay: Duration::from_millis(50),
        })
    }
    async fn fetch(self: Arc<Self>) -> Result<Fetched, FetchError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        let step = self.script[n.min(self.script.len() - 1)].clone();
        step.map(|secs| Fetched {
            bearer: HeaderValue::from_str(&format!("Bearer t{n}")).unwrap(),
            expires_in: Duration::from_secs(secs),
        })
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

async fn get(cache: &TokenCache, fake: &Arc<Fake>) -> Result<HeaderValue, String> {
    let f = fake.clone();
    cache
        .get(Duration::from_secs(30), move || f.clone().fetch())
        .await
}

fn transient() -> Result<u64, FetchError> {
    Err(FetchError::Transient("status 500".into()))
}

#[tokio::test(start_paused = true)]
async fn concurrent_requests_share_one_fetch() {
    let cache = Arc::new(TokenCache::default());
    let fake = Fake::new(vec![Ok(3600)]);
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (cache, fake) = (cache.clone(), fake.clone());
        tasks.push(tokio::spawn(async move { get(&cache, &fake).await }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), "Bearer t0");
    }
    assert_eq!(fake.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn refreshes_refresh_before_expiry_and_keeps_serving_meanwhile() {
    let cache = Arc::new(TokenCache::default());
    let fake = Fake::new(vec![Ok(60), Ok(60)]);
    assert_eq!(get(&cache, &fake).await.unwrap(), "Bearer t0");
    tokio::time::advance(Duration::from_secs(29)).await;
    assert_eq!(get(&cache, &fake).await.unwrap(), "Bearer t0");
    assert_eq!(fake.calls(), 1);
    tokio::time::advance(Duration::from_secs(2)).await;
    // Past refresh time: one request refreshes while another still gets the old token.
    let (c2, f2) = (cache.clone(), fake.clone());
    let refresher = tokio::spawn(async move { get(&c2, &f2).await });
    tokio::task::yield_now().await;
    assert_eq!(get(&cache, &fake).await.unwrap(), "Bearer t0");
    assert_eq!(refresher.await.unwrap().unwrap(), "Bearer t1");
    assert_eq!(get(&cache, &fake).await.unwrap(), "Bearer t1");
    assert_eq!(fake.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn transient_failures_are_retried_with_backoff() {
    let cache = TokenCache::default();
    let fake = Fake::new(vec![transient(), transient(), Ok(3600)]);
    let start = Instant::now();
    assert_eq!(get(&cache, &fake).await.unwrap(), "Bearer t2");
    assert_eq!(fake.calls(), 3);
    // Three 50 ms attempts and the two backoff delays, on the paused clock.
    assert_eq!(start.elapsed(), Duration::from_millis(150 + 100 + 400));
}

#[tokio::test(start_paused = true)]
async fn without_a_token_failures_are_reported_and_held() {
    let cache = TokenCache::default();
    let fake = Fake::new(vec![transient()]);
    let err = get(&cache, &fake).await.unwrap_err();
    assert!(err.contains("status 500"), "{err}");
    assert_eq!(fake.calls(), 3);
    // Within the hold, no new fetch.
    assert!(get(&cache, &fake).await.is_err());
    assert_eq!(fake.calls(), 3);
    tokio::time::advance(FAILURE_HOLD).await;
    assert!(get(&cache, &fake).await.is_err());
    assert_eq!(fake.calls(), 6);

    // A permanent failure is not retried.
    let cache = TokenCache::default();
    let fake = Fake::new(vec![Err(FetchError::Permanent(
        "status 401 (invalid_client)".into(),
    ))]);
    let err = get(&cache, &fake).await.unwrap_err();
    assert!(err.contains("invalid_client"), "{err}");
    assert_eq!(fake.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_still_valid_token_outlives_a_failed_refresh() {
    let cache = TokenCache::default();
    let fake = Fake::new(vec![Ok(60), transient()]);
    assert_eq!(get(&cache, &fake).await.unwrap(), "Bearer t0");
    tokio::time::advance(Duration::from_secs(31)).await;
    assert_eq!(get(&cache, &fake).await.unwrap(), "Bearer t0");
    assert_eq!(fake.calls(), 4);
    // Expired, endpoint still down: unavailable.
    tokio::time::advance(Duration::from_secs(30)).await;
    assert!(get(&cache, &fake).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn short_lifetimes_refresh_half_way() {
    let cache = TokenCache::default();
    let fake = Fake::new(vec![Ok(10)]);
    get(&cache, &fake).await.unwrap();
    tokio::time::advance(Duration::from_secs(4)).await;
    get(&cache, &fake).await.unwrap();
    assert_eq!(fake.calls(), 1);
    tokio::time::advance(Duration::from_secs(2)).await;
    get(&cache, &fake).await.unwrap();
    assert_eq!(fake.calls(), 2);
}

#[test]
fn token_responses() {
    let f =
        parse_token(br#"{"access_token":"abc","token_type":"bearer","expires_in":120}"#).unwrap();
    assert_eq!(f.bearer, "Bearer abc");
    assert!(f.bearer.is_sensitive());
    assert_eq!(f.expires_in, Duration::from_secs(120));
    let f = parse_token(br#"{"access_token":"abc","expires_in":"90"}"#).unwrap();
    assert_eq!(f.expires_in, Duration::from_secs(90));
    let f = parse_token(br#"{"access_token":"abc"}"#).unwrap();
    assert_eq!(f.expires_in, DEFAULT_EXPIRES_IN);
    for bad in [
        &br#"{"token_type":"bearer"}"#[..],
        br#"{"access_token":"a","token_type":"mac"}"#,
        br#"{"access_token":"a\nb"}"#,
        br#"{"access_token":"a","expires_in":-1}"#,
        b"nope",
    ] {
        assert!(matches!(parse_token(bad), Err(FetchError::Permanent(_))));
    }
}
