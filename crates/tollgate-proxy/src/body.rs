//! Streaming bodies with byte counting. The request body is handed to the
//! upstream client frame by frame, the upstream response body to the client
//! likewise. The one exception is a request that may be retried: its body, up
//! to `retry.max_replay_body`, is held in a [`Buffered`] so every attempt can
//! send it again (see `retry.rs`); a longer one is sent as the part already
//! read followed by the rest of the stream. The wrappers count bytes, notice a
//! broken client body (bad chunking, reset), and the response wrapper finishes
//! the request's log line and metrics when it ends or is dropped, so the access
//! log carries the final byte counts.
//!
//! Body size limits (`body_limits`, see dlp_body.rs) are enforced here while
//! streaming: a request body that grows past its limit ends in
//! [`BodyError::TooLarge`] (the upstream request fails and the client gets 413),
//! a response body is passed up to exactly its limit and then ends in the same
//! error, which aborts the response (HTTP/1: the connection closes before the
//! body is complete; HTTP/2: the stream is reset).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::observe::Completion;

/// Counters shared between the request body (written while streaming
/// upstream) and the request's completion.
#[derive(Debug, Default)]
pub struct BodyStats {
    pub bytes: AtomicU64,
    /// The client's body stream failed (e.g. invalid chunked encoding).
    pub failed: AtomicBool,
    /// The client's body grew past `body_limits.request` (also sets `failed`).
    pub too_large: AtomicBool,
}

/// Why a body stream stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error(transparent)]
    Stream(#[from] hyper::Error),
    #[error("the body is larger than the limit of {0} bytes")]
    TooLarge(u64),
}

impl BodyStats {
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }
    pub fn too_large(&self) -> bool {
        self.too_large.load(Ordering::Relaxed)
    }
}

/// A complete request body kept in memory so it can be sent more than once.
#[derive(Debug, Default)]
pub struct Buffered {
    pub chunks: Vec<Bytes>,
    pub trailers: Option<http::HeaderMap>,
    pub len: u64,
}

/// The client's request body on its way upstream.
pub struct RequestBody {
    source: Source,
}

enum Source {
    /// Streamed from the client, counted as it passes.
    Client {
        inner: Incoming,
        stats: Arc<BodyStats>,
        /// `body_limits.request`; `u64::MAX` when there is none.
        limit: u64,
    },
    /// A replay of a buffered body (the client's bytes were counted when read).
    Replay {
        data: Arc<Buffered>,
        next: usize,
        trailers_sent: bool,
    },
    /// Frames already read from the client, then the rest of its stream.
    Prefixed {
        prefix: VecDeque<Bytes>,
        rest: Box<RequestBody>,
    },
}

impl RequestBody {
    pub fn new(inner: Incoming, stats: Arc<BodyStats>) -> Self {
        Self {
            source: Source::Client {
                inner,
                stats,
                limit: u64::MAX,
            },
        }
    }
    /// Fails the stream with [`BodyError::TooLarge`] once more than `limit` bytes came.
    pub fn with_limit(mut self, limit: Option<u64>) -> Self {
        if let (Source::Client { limit: l, .. }, Some(n)) = (&mut self.source, limit) {
            *l = n;
        }
        self
    }
    /// Sends `data` again from its start.
    pub fn replay(data: Arc<Buffered>) -> Self {
        Self {
            source: Source::Replay {
                data,
                next: 0,
                trailers_sent: false,
            },
        }
    }
    /// Sends `prefix` (already read from `rest`) and then whatever `rest` still yields.
    pub fn prefixed(prefix: Vec<Bytes>, rest: RequestBody) -> Self {
        Self {
            source: Source::Prefixed {
                prefix: prefix.into(),
                rest: Box::new(rest),
            },
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match &mut self.source {
            Source::Client {
                inner,
                stats,
                limit,
            } => {
                let res = Pin::new(inner).poll_frame(cx);
                match &res {
                    Poll::Ready(Some(Ok(f))) => {
                        if let Some(d) = f.data_ref() {
                            let n = d.len() as u64;
                            let total = stats.bytes.fetch_add(n, Ordering::Relaxed) + n;
                            if total > *limit {
                                stats.too_large.store(true, Ordering::Relaxed);
                                stats.failed.store(true, Ordering::Relaxed);
                                return Poll::Ready(Some(Err(BodyError::TooLarge(*limit))));
                            }
                        }
                    }
                    Poll::Ready(Some(Err(_))) => stats.failed.store(true, Ordering::Relaxed),
                    _ => {}
                }
                res.map_err(BodyError::from)
            }
            Source::Replay {
                data,
                next,
                trailers_sent,
            } => {
                if let Some(c) = data.chunks.get(*next) {
                    *next += 1;
                    return Poll::Ready(Some(Ok(Frame::data(c.clone()))));
                }
                if !*trailers_sent {
                    *trailers_sent = true;
                    if let Some(t) = &data.trailers {
                        return Poll::Ready(Some(Ok(Frame::trailers(t.clone()))));
                    }
                }
                Poll::Ready(None)
            }
            Source::Prefixed { prefix, rest } => match prefix.pop_front() {
                Some(c) => Poll::Ready(Some(Ok(Frame::data(c)))),
                None => Pin::new(rest.as_mut()).poll_frame(cx),
            },
        }
    }
    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Client { inner, .. } => inner.is_end_stream(),
            Source::Replay {
                data,
                next,
                trailers_sent,
            } => *next >= data.chunks.len() && (*trailers_sent || data.trailers.is_none()),
            Source::Prefixed { prefix, rest } => prefix.is_empty() && rest.is_end_stream(),
        }
    }
    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Client { inner, .. } => inner.size_hint(),
            Source::Replay { data, next, .. } => {
                let left: u64 = data
                    .chunks
                    .get(*next..)
                    .unwrap_or(&[])
                    .iter()
                    .map(|c| c.len() as u64)
                    .sum();
                SizeHint::with_exact(left)
            }
            Source::Prefixed { prefix, rest } => {
                let have: u64 = prefix.iter().map(|c| c.len() as u64).sum();
                let r = rest.size_hint();
                let mut h = SizeHint::new();
                h.set_lower(r.lower() + have);
                if let Some(u) = r.upper() {
                    h.set_upper(u + have);
                }
                h
            }
        }
    }
}

enum Kind {
    Full(Option<Bytes>),
    Upstream(Incoming),
    /// Frames already read from the upstream (a DLP scan that gave up at `max_scan`),
    /// then the rest of its body.
    Prefixed(VecDeque<Bytes>, Incoming),
}

/// Every response body the proxy sends: a small generated one or the
/// upstream's, streamed. Holds the request's [`Completion`], run once when
/// the body is dropped (after its last frame, or early if the client left).
pub struct ProxyBody {
    kind: Kind,
    bytes: u64,
    ended: bool,
    completion: Option<Box<Completion>>,
    /// `body_limits.response`: bytes passed before the body is cut.
    limit: Option<u64>,
    /// The limit was reached and more data came: the next poll fails.
    cut: bool,
    /// The response cache's copy of the body (cache.rs), stored when it ends complete.
    tee: Option<Box<crate::cache::Tee>>,
    /// Response-based cost (cost.rs): counts and reads the body, charges when dropped.
    meter: Option<Box<crate::cost::Meter>>,
}

impl ProxyBody {
    pub fn full(bytes: Bytes) -> Self {
        Self {
            kind: Kind::Full(Some(bytes)),
            bytes: 0,
            ended: false,
            completion: None,
            limit: None,
            cut: false,
            tee: None,
            meter: None,
        }
    }
    pub fn empty() -> Self {
        Self::full(Bytes::new())
    }
    pub fn upstream(body: Incoming) -> Self {
        Self {
            kind: Kind::Upstream(body),
            bytes: 0,
            ended: false,
            completion: None,
            limit: None,
            cut: false,
            tee: None,
            meter: None,
        }
    }
    /// `prefix` (already read from `rest`), then whatever `rest` still yields.
    pub fn upstream_prefixed(prefix: Vec<Bytes>, rest: Incoming) -> Self {
        Self {
            kind: Kind::Prefixed(prefix.into(), rest),
            bytes: 0,
            ended: false,
            completion: None,
            limit: None,
            cut: false,
            tee: None,
            meter: None,
        }
    }
    /// Cuts the body after `limit` bytes (`body_limits.response`).
    pub fn with_limit(mut self, limit: Option<u64>) -> Self {
        self.limit = limit;
        self
    }
    /// Copies the body into the response cache as it streams (cache.rs).
    pub fn with_tee(mut self, tee: Box<crate::cache::Tee>) -> Self {
        self.tee = Some(tee);
        self
    }
    /// Measures the body for response-based limit costs (cost.rs).
    pub fn with_meter(mut self, mut meter: Option<Box<crate::cost::Meter>>) -> Self {
        if let Some(m) = meter.as_mut() {
            m.attach();
        }
        self.meter = meter;
        self
    }
    /// Runs `c` when this body finishes.
    pub fn on_complete(&mut self, c: Completion) {
        self.completion = Some(Box::new(c));
    }

    /// Moves the completion to another body (a gRPC error's body is replaced, upgrade.rs).
    pub fn take_completion(&mut self) -> Option<Box<Completion>> {
        self.completion.take()
    }
}

impl ProxyBody {
    /// Applies the response limit to a data frame about to be passed on: the part within
    /// the limit goes out, and the body is marked cut when anything was left over.
    fn clip(&mut self, frame: Frame<Bytes>) -> Frame<Bytes> {
        let Some(limit) = self.limit else {
            return frame;
        };
        match frame.into_data() {
            Ok(mut d) => {
                let room = limit.saturating_sub(self.bytes);
                if d.len() as u64 > room {
                    d.truncate(room as usize);
                    self.cut = true;
                }
                self.bytes += d.len() as u64;
                Frame::data(d)
            }
            Err(f) => f,
        }
    }

    /// Records the cut in the request's log line and metrics.
    fn note_cut(&mut self) {
        if let Some(c) = self.completion.as_mut() {
            c.reason = Some(tollgate_policy::ErrorCode::ResponseTooLarge.as_str());
            let api = c.api.as_deref().unwrap_or("");
            c.gateway.metrics.body_limit_exceeded(api, "response");
            tracing::warn!(
                request.id = %c.request_id, api = %api, limit = self.limit.unwrap_or(0),
                "response body cut at body_limits.response"
            );
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let res = self.as_mut().poll_inner(cx);
        if self.tee.is_some() {
            self.feed_tee(&res);
        }
        if self.meter.is_some() {
            let end = self.inner_end_stream();
            if let Some(m) = self.meter.as_mut() {
                match &res {
                    Poll::Ready(Some(Ok(f))) => {
                        if let Some(d) = f.data_ref() {
                            m.data(d);
                        }
                        if end {
                            m.end();
                        }
                    }
                    Poll::Ready(None) => m.end(),
                    _ => {}
                }
            }
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner_size_hint()
    }
}

impl ProxyBody {
    /// Hands what was passed to the client to the cache's copy: data, the end (store), or a
    /// failure (give up).
    fn feed_tee(&mut self, res: &Poll<Option<Result<Frame<Bytes>, BodyError>>>) {
        let end = self.inner_end_stream();
        let Some(tee) = self.tee.as_mut() else { return };
        match res {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    tee.data(d);
                }
                if end {
                    tee.finish();
                }
            }
            Poll::Ready(None) => tee.finish(),
            Poll::Ready(Some(Err(_))) => tee.abandon(),
            Poll::Pending => {}
        }
    }

    fn poll_inner(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if this.cut {
            this.cut = false;
            this.limit = None;
            this.note_cut();
            return Poll::Ready(Some(Err(BodyError::TooLarge(this.bytes))));
        }
        if this.limit.is_some() && !matches!(this.kind, Kind::Full(_)) {
            let inner = match &mut this.kind {
                Kind::Prefixed(prefix, rest) => match prefix.pop_front() {
                    Some(c) => Poll::Ready(Some(Ok(Frame::data(c)))),
                    None => Pin::new(rest).poll_frame(cx),
                },
                Kind::Upstream(inner) => Pin::new(inner).poll_frame(cx),
                Kind::Full(_) => Poll::Ready(None),
            };
            return match inner {
                Poll::Ready(Some(Ok(f))) => Poll::Ready(Some(Ok(this.clip(f)))),
                Poll::Ready(None) => {
                    this.ended = true;
                    Poll::Ready(None)
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
                Poll::Pending => Poll::Pending,
            };
        }
        match &mut this.kind {
            Kind::Prefixed(prefix, rest) => match prefix.pop_front() {
                Some(c) => {
                    this.bytes += c.len() as u64;
                    Poll::Ready(Some(Ok(Frame::data(c))))
                }
                None => {
                    let res = Pin::new(&mut *rest).poll_frame(cx);
                    match &res {
                        Poll::Ready(Some(Ok(f))) => {
                            if let Some(d) = f.data_ref() {
                                this.bytes += d.len() as u64;
                            }
                        }
                        Poll::Ready(None) => this.ended = true,
                        _ => {}
                    }
                    res.map_err(BodyError::from)
                }
            },
            Kind::Full(b) => match b.take() {
                Some(b) if !b.is_empty() => {
                    this.bytes += b.len() as u64;
                    this.ended = true;
                    Poll::Ready(Some(Ok(Frame::data(b))))
                }
                _ => {
                    this.ended = true;
                    Poll::Ready(None)
                }
            },
            Kind::Upstream(inner) => {
                let res = Pin::new(&mut *inner).poll_frame(cx);
                match &res {
                    Poll::Ready(Some(Ok(f))) => {
                        if let Some(d) = f.data_ref() {
                            this.bytes += d.len() as u64;
                        }
                        if inner.is_end_stream() {
                            this.ended = true;
                        }
                    }
                    Poll::Ready(None) => this.ended = true,
                    _ => {}
                }
                res.map_err(BodyError::from)
            }
        }
    }

    fn inner_end_stream(&self) -> bool {
        if self.cut {
            return false;
        }
        match &self.kind {
            Kind::Full(b) => b.as_ref().is_none_or(Bytes::is_empty),
            Kind::Upstream(i) => i.is_end_stream(),
            Kind::Prefixed(p, i) => p.is_empty() && i.is_end_stream(),
        }
    }

    fn inner_size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Upstream(i) => i.size_hint(),
            Kind::Prefixed(p, i) => {
                let have: u64 = p.iter().map(|c| c.len() as u64).sum();
                let r = i.size_hint();
                let mut h = SizeHint::new();
                h.set_lower(r.lower() + have);
                if let Some(u) = r.upper() {
                    h.set_upper(u + have);
                }
                h
            }
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        if let Some(c) = self.completion.take() {
            let ended = self.ended || self.is_end_stream();
            c.finish(self.bytes, ended);
        }
        if let Some(mut tee) = self.tee.take() {
            // A body that ended without a last poll (empty, HEAD) is complete too.
            if self.ended || self.inner_end_stream() {
                tee.finish();
            }
        }
    }
}
