//! Streaming bodies with byte counting. Nothing is buffered: the request body
//! is handed to the upstream client frame by frame, the upstream response body
//! to the client likewise. The wrappers count bytes, notice a broken client
//! body (bad chunking, reset), and the response wrapper finishes the request's
//! log line and metrics when it ends or is dropped, so the access log carries
//! the final byte counts.

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
}

impl BodyStats {
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }
}

/// The client's request body on its way upstream.
pub struct RequestBody {
    inner: Incoming,
    stats: Arc<BodyStats>,
}

impl RequestBody {
    pub fn new(inner: Incoming, stats: Arc<BodyStats>) -> Self {
        Self { inner, stats }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let res = Pin::new(&mut this.inner).poll_frame(cx);
        match &res {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.stats
                        .bytes
                        .fetch_add(d.len() as u64, Ordering::Relaxed);
                }
            }
            Poll::Ready(Some(Err(_))) => this.stats.failed.store(true, Ordering::Relaxed),
            _ => {}
        }
        res
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

enum Kind {
    Full(Option<Bytes>),
    Upstream(Incoming),
}

/// Every response body the proxy sends: a small generated one or the
/// upstream's, streamed. Holds the request's [`Completion`], run once when
/// the body is dropped (after its last frame, or early if the client left).
pub struct ProxyBody {
    kind: Kind,
    bytes: u64,
    ended: bool,
    completion: Option<Box<Completion>>,
}

impl ProxyBody {
    pub fn full(bytes: Bytes) -> Self {
        Self {
            kind: Kind::Full(Some(bytes)),
            bytes: 0,
            ended: false,
            completion: None,
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
        }
    }
    /// Runs `c` when this body finishes.
    pub fn on_complete(&mut self, c: Completion) {
        self.completion = Some(Box::new(c));
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        match &mut this.kind {
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
                res
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) => b.as_ref().is_none_or(Bytes::is_empty),
            Kind::Upstream(i) => i.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Upstream(i) => i.size_hint(),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        if let Some(c) = self.completion.take() {
            let ended = self.ended || self.is_end_stream();
            c.finish(self.bytes, ended);
        }
    }
}
