//! OpenTelemetry span hooks of the request path (`telemetry.tracing`, crate `tollgate-trace`).
//!
//! The request span starts in `handler::handle` ([`begin`]) and ends with the access-log line
//! ([`finish`], from `Completion::finish`); the cache lookup ([`cache_lookup`]), queue waits
//! (waiting.rs) and each upstream attempt (retry.rs) are its children. With tracing off the
//! gateway holds no tracer: [`begin`] is one atomic load and everything else sees `None`.

use http::HeaderMap;
use tollgate_trace::{Decision, RequestEnd, RequestSpan, Status, TRACEPARENT, Value, now_nanos};

use crate::observe::Completion;
use crate::state::Gateway;

/// Samples the request. A sampled one gets its span; an unsampled one without a caller
/// context gets an unsampled `traceparent` to carry upstream.
pub fn begin(gw: &Gateway, headers: &mut HeaderMap) -> Option<Box<RequestSpan>> {
    let guard = gw.tracer.load();
    let tracer = guard.as_ref()?;
    match tracer.request(headers) {
        Decision::Sampled(span) => Some(span),
        Decision::NotSampled(Some(tp)) => {
            headers.insert(&TRACEPARENT, tp);
            None
        }
        Decision::NotSampled(None) => None,
    }
}

/// The start time of a child span, when the request is traced.
pub fn start(done: &Completion) -> Option<u64> {
    done.trace.as_ref().map(|_| now_nanos())
}

/// Records the cache lookup that started at `start`; `result` is `hit`, `stale`, `miss` (the
/// request goes upstream) or `refresh` (served stale, refreshed in the background).
pub fn cache_lookup(
    done: &Completion,
    api: Option<&str>,
    start: Option<u64>,
    result: &'static str,
) {
    if let (Some(t), Some(start)) = (&done.trace, start) {
        let mut attrs = vec![("tollgate.cache.result", Value::Static(result))];
        if let Some(a) = api {
            attrs.push(("tollgate.api", Value::from(a)));
        }
        t.child()
            .internal("tollgate.cache_lookup", start, attrs, Status::default());
    }
}

/// A queue wait (rate-limit or concurrency queue) being timed, for its span.
pub struct QueueSpan {
    ctx: tollgate_trace::ChildCtx,
    start: u64,
}

impl QueueSpan {
    pub fn start(ctx: Option<&tollgate_trace::ChildCtx>) -> Option<Self> {
        ctx.map(|c| QueueSpan {
            ctx: c.clone(),
            start: now_nanos(),
        })
    }

    /// Ends the span: `limit` is the rate limit's name (or `concurrency`), `result` the wait's
    /// outcome (`admitted`, `timeout`, `full`, `cancelled`).
    pub fn end(self, api: &str, limit: &str, result: &'static str) {
        let status = if result == "admitted" {
            Status::default()
        } else {
            Status::error(result)
        };
        self.ctx.internal(
            "tollgate.queue_wait",
            self.start,
            vec![
                ("tollgate.api", Value::from(api)),
                ("tollgate.limit", Value::from(limit)),
                ("tollgate.queue.result", Value::Static(result)),
            ],
            status,
        );
    }
}

/// Ends the request span with what the access log records.
pub fn finish(c: &mut Completion, reason: Option<&str>) {
    let Some(span) = c.trace.take() else { return };
    span.finish(&RequestEnd {
        kind: c.kind.as_str(),
        method: c.method.as_str(),
        api: c.api.as_deref(),
        consumer: c.consumer.as_deref(),
        status: c.status,
        decision: c.decision,
        reason,
        request_id: &c.request_id,
        attempts: c.attempts,
        cache: c.cache,
    });
}
