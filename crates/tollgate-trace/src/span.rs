//! Spans: the request span (kind SERVER) that lives as long as the request's response, and its
//! children — queue wait and cache lookup (INTERNAL) and one span per upstream attempt (CLIENT).
//!
//! A finished span is handed to the exporter's bounded queue at once (`Tracer::submit`); spans
//! of one trace need not travel together. Attribute values are config names, methods, status
//! codes and Tollgate codes: never header values, query strings or bodies.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http::HeaderMap;

use crate::Tracer;
use crate::context::{self, Parent, SpanId, TRACEPARENT, TraceId};

/// Nanoseconds since the Unix epoch, now.
pub fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// OTLP `Span.SpanKind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    Internal = 1,
    Server = 2,
    Client = 3,
}

/// An attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(Box<str>),
    Static(&'static str),
    Int(i64),
    Bool(bool),
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.into())
    }
}

/// OTLP `Status`: code 0 unset, 1 ok, 2 error.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Status {
    pub code: u8,
    pub message: Cow<'static, str>,
}

impl Status {
    pub fn error(message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code: 2,
            message: message.into(),
        }
    }
}

/// A finished span, as queued for export.
#[derive(Debug, Clone)]
pub struct SpanData {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent: Option<SpanId>,
    /// The parent span is the caller's (from `traceparent`), not one of Tollgate's.
    pub remote_parent: bool,
    pub trace_state: Option<Arc<str>>,
    /// W3C trace flags (1 = sampled).
    pub flags: u8,
    pub name: Cow<'static, str>,
    pub kind: SpanKind,
    pub start: u64,
    pub end: u64,
    pub attributes: Vec<(&'static str, Value)>,
    pub status: Status,
}

/// What a child span needs of its request: the trace, the parent span and the exporter.
#[derive(Clone)]
pub struct ChildCtx {
    tracer: Arc<Tracer>,
    trace_id: TraceId,
    parent: SpanId,
    trace_state: Option<Arc<str>>,
}

impl ChildCtx {
    /// Records a finished INTERNAL child span that started at `start` (see [`now_nanos`]).
    pub fn internal(
        &self,
        name: &'static str,
        start: u64,
        attributes: Vec<(&'static str, Value)>,
        status: Status,
    ) {
        self.tracer.submit(SpanData {
            trace_id: self.trace_id,
            span_id: context::new_span_id(),
            parent: Some(self.parent),
            remote_parent: false,
            trace_state: self.trace_state.clone(),
            flags: 1,
            name: Cow::Borrowed(name),
            kind: SpanKind::Internal,
            start,
            end: now_nanos(),
            attributes,
            status,
        });
    }

    /// Starts the CLIENT span of upstream attempt number `attempt` (1 for the first) and points
    /// the outgoing `traceparent` at it; `tracestate` travels as the caller sent it.
    pub fn attempt(
        &self,
        attempt: u32,
        method: &http::Method,
        uri: &http::Uri,
        headers: &mut HeaderMap,
    ) -> AttemptSpan {
        let span_id = context::new_span_id();
        headers.insert(
            &TRACEPARENT,
            context::traceparent(&self.trace_id, &span_id, true),
        );
        let host = uri.host().unwrap_or("");
        let port = uri
            .port_u16()
            .unwrap_or(if uri.scheme_str() == Some("https") {
                443
            } else {
                80
            });
        let attributes = vec![
            ("http.request.method", Value::from(method.as_str())),
            ("server.address", Value::from(host.trim_matches(['[', ']']))),
            ("server.port", Value::Int(i64::from(port))),
            ("tollgate.attempt", Value::Int(i64::from(attempt))),
            (
                "http.request.resend_count",
                Value::Int(i64::from(attempt.saturating_sub(1))),
            ),
        ];
        AttemptSpan {
            data: Some(SpanData {
                trace_id: self.trace_id,
                span_id,
                parent: Some(self.parent),
                remote_parent: false,
                trace_state: self.trace_state.clone(),
                flags: 1,
                name: Cow::Owned(method.as_str().to_owned()),
                kind: SpanKind::Client,
                start: now_nanos(),
                end: 0,
                attributes,
                status: Status::default(),
            }),
            tracer: self.tracer.clone(),
        }
    }
}

/// One upstream attempt in flight. Ended with [`AttemptSpan::response`] or
/// [`AttemptSpan::failed`]; dropped unended (the request was abandoned) it is recorded as
/// cancelled.
pub struct AttemptSpan {
    data: Option<SpanData>,
    tracer: Arc<Tracer>,
}

impl AttemptSpan {
    /// The span's ID (what the upstream sees as its parent).
    pub fn span_id(&self) -> Option<SpanId> {
        self.data.as_ref().map(|d| d.span_id)
    }

    /// The upstream answered with `status` (5xx marks the span as an error).
    pub fn response(mut self, status: u16) {
        if let Some(mut d) = self.data.take() {
            d.attributes
                .push(("http.response.status_code", Value::Int(i64::from(status))));
            if status >= 500 {
                d.attributes
                    .push(("error.type", Value::Str(status.to_string().into())));
                d.status = Status::error("");
            }
            d.end = now_nanos();
            self.tracer.submit(d);
        }
    }

    /// The attempt failed without a response; `code` is the Tollgate error code.
    pub fn failed(mut self, code: &'static str) {
        if let Some(mut d) = self.data.take() {
            d.attributes.push(("error.type", Value::Static(code)));
            d.status = Status::error(code);
            d.end = now_nanos();
            self.tracer.submit(d);
        }
    }
}

impl Drop for AttemptSpan {
    fn drop(&mut self) {
        if let Some(mut d) = self.data.take() {
            d.attributes
                .push(("error.type", Value::Static("cancelled")));
            d.status = Status::error("cancelled");
            d.end = now_nanos();
            self.tracer.submit(d);
        }
    }
}

/// What is known about the request when it ends (from the access-log record).
pub struct RequestEnd<'a> {
    pub kind: &'a str,
    pub method: &'a str,
    pub api: Option<&'a str>,
    pub consumer: Option<&'a str>,
    pub status: u16,
    pub decision: &'a str,
    /// Tollgate's error or reason code, when there is one.
    pub reason: Option<&'a str>,
    pub request_id: &'a str,
    pub attempts: u32,
    pub cache: Option<&'a str>,
}

/// The request's SERVER span, from arrival to the end of the response body.
pub struct RequestSpan {
    tracer: Arc<Tracer>,
    trace_id: TraceId,
    span_id: SpanId,
    parent: Option<SpanId>,
    trace_state: Option<Arc<str>>,
    start: u64,
    upstream: Option<(Box<str>, u16)>,
}

impl RequestSpan {
    pub(crate) fn new(tracer: Arc<Tracer>, trace_id: TraceId, parent: Option<Parent>) -> Self {
        let (parent, trace_state) = match parent {
            Some(p) => (Some(p.span_id), p.trace_state.map(Arc::from)),
            None => (None, None),
        };
        Self {
            tracer,
            trace_id,
            span_id: context::new_span_id(),
            parent,
            trace_state,
            start: now_nanos(),
            upstream: None,
        }
    }

    pub fn trace_id(&self) -> TraceId {
        self.trace_id
    }

    pub fn span_id(&self) -> SpanId {
        self.span_id
    }

    /// The context for this request's child spans.
    pub fn child(&self) -> ChildCtx {
        ChildCtx {
            tracer: self.tracer.clone(),
            trace_id: self.trace_id,
            parent: self.span_id,
            trace_state: self.trace_state.clone(),
        }
    }

    /// Records the upstream the request was sent to (its configured host, not the client's).
    pub fn set_upstream(&mut self, host: &str, port: u16) {
        self.upstream = Some((host.into(), port));
    }

    /// Ends the span and queues it for export.
    pub fn finish(self, end: &RequestEnd<'_>) {
        let mut attributes = Vec::with_capacity(12);
        attributes.push(("http.request.method", Value::from(end.method)));
        attributes.push(("tollgate.kind", Value::from(end.kind)));
        attributes.push(("tollgate.request_id", Value::from(end.request_id)));
        attributes.push(("tollgate.decision", Value::from(end.decision)));
        if let Some(a) = end.api {
            attributes.push(("tollgate.api", Value::from(a)));
            attributes.push(("http.route", Value::from(a)));
        }
        if let Some(c) = end.consumer {
            attributes.push(("tollgate.consumer", Value::from(c)));
        }
        if end.status != 0 {
            attributes.push((
                "http.response.status_code",
                Value::Int(i64::from(end.status)),
            ));
        }
        if let Some(r) = end.reason {
            attributes.push(("tollgate.error", Value::from(r)));
        }
        if end.attempts > 0 {
            attributes.push(("tollgate.attempts", Value::Int(i64::from(end.attempts))));
        }
        if let Some(c) = end.cache {
            attributes.push(("tollgate.cache", Value::from(c)));
        }
        if let Some((h, p)) = &self.upstream {
            attributes.push(("tollgate.upstream.host", Value::Str(h.clone())));
            attributes.push(("tollgate.upstream.port", Value::Int(i64::from(*p))));
        }
        let status = if end.status >= 500 || end.status == 0 {
            Status::error(Cow::Owned(end.reason.unwrap_or("").to_owned()))
        } else {
            Status::default()
        };
        let name = match end.api {
            Some(a) => Cow::Owned(format!("{} {a}", end.method)),
            None => Cow::Owned(end.method.to_owned()),
        };
        self.tracer.submit(SpanData {
            trace_id: self.trace_id,
            span_id: self.span_id,
            parent: self.parent,
            remote_parent: self.parent.is_some(),
            trace_state: self.trace_state.clone(),
            flags: 1,
            name,
            kind: SpanKind::Server,
            start: self.start,
            end: now_nanos(),
            attributes,
            status,
        });
    }
}
