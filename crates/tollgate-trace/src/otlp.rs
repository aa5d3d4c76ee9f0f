//! Protobuf encoding of the small part of OTLP Tollgate sends: `ExportTraceServiceRequest` →
//! `ResourceSpans` → `ScopeSpans` → `Span` (with `KeyValue`/`AnyValue` attributes and `Status`).
//! Field numbers are those of opentelemetry-proto (`collector/trace/v1/trace_service.proto`,
//! `trace/v1/trace.proto`, `common/v1/common.proto`, `resource/v1/resource.proto`); the
//! end-to-end tests decode what is sent with the official Python classes.
//!
//! Hand-written rather than generated: a few dozen lines of wire format instead of a code
//! generator and its runtime, and the exporter encodes straight from [`SpanData`].

use crate::span::{SpanData, Value};

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn key(buf: &mut Vec<u8>, field: u32, wire: u8) {
    varint(buf, (u64::from(field) << 3) | u64::from(wire));
}

fn bytes(buf: &mut Vec<u8>, field: u32, b: &[u8]) {
    key(buf, field, LEN);
    varint(buf, b.len() as u64);
    buf.extend_from_slice(b);
}

/// A string field; proto3 leaves empty strings out.
fn string(buf: &mut Vec<u8>, field: u32, s: &str) {
    if !s.is_empty() {
        bytes(buf, field, s.as_bytes());
    }
}

fn uint(buf: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        key(buf, field, VARINT);
        varint(buf, v);
    }
}

fn fixed64(buf: &mut Vec<u8>, field: u32, v: u64) {
    key(buf, field, FIXED64);
    buf.extend_from_slice(&v.to_le_bytes());
}

fn fixed32(buf: &mut Vec<u8>, field: u32, v: u32) {
    key(buf, field, FIXED32);
    buf.extend_from_slice(&v.to_le_bytes());
}

/// An embedded message, encoded by `f` into a scratch buffer and copied in with its length.
fn message(
    buf: &mut Vec<u8>,
    field: u32,
    scratch: &mut Vec<Vec<u8>>,
    f: impl FnOnce(&mut Vec<u8>, &mut Vec<Vec<u8>>),
) {
    let mut inner = scratch.pop().unwrap_or_default();
    inner.clear();
    f(&mut inner, scratch);
    bytes(buf, field, &inner);
    scratch.push(inner);
}

/// `KeyValue { key = 1; AnyValue value = 2 }`,
/// `AnyValue { oneof { string_value = 1; bool_value = 2; int_value = 3; double_value = 4 } }`.
fn key_value(buf: &mut Vec<u8>, field: u32, k: &str, v: &Value, scratch: &mut Vec<Vec<u8>>) {
    message(buf, field, scratch, |kv, scratch| {
        string(kv, 1, k);
        message(kv, 2, scratch, |any, _| match v {
            Value::Str(s) => bytes(any, 1, s.as_bytes()),
            Value::Static(s) => bytes(any, 1, s.as_bytes()),
            Value::Bool(b) => {
                key(any, 2, VARINT);
                varint(any, u64::from(*b));
            }
            Value::Int(i) => {
                key(any, 3, VARINT);
                varint(any, *i as u64);
            }
        });
    });
}

/// The resource (`service.name` and friends) and instrumentation scope of every export.
pub struct Resource {
    pub attributes: Vec<(&'static str, Value)>,
}

/// `ExportTraceServiceRequest { repeated ResourceSpans resource_spans = 1 }` with one
/// `ResourceSpans { Resource resource = 1; repeated ScopeSpans scope_spans = 2 }` and one
/// `ScopeSpans { InstrumentationScope scope = 1; repeated Span spans = 2 }`.
pub fn encode_request(resource: &Resource, spans: &[SpanData]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + spans.len() * 320);
    let mut scratch = Vec::new();
    message(&mut out, 1, &mut scratch, |rs, scratch| {
        // Resource { repeated KeyValue attributes = 1 }
        message(rs, 1, scratch, |r, scratch| {
            for (k, v) in &resource.attributes {
                key_value(r, 1, k, v, scratch);
            }
        });
        message(rs, 2, scratch, |ss, scratch| {
            // InstrumentationScope { name = 1; version = 2 }
            message(ss, 1, scratch, |sc, _| {
                string(sc, 1, "tollgate");
                string(sc, 2, env!("CARGO_PKG_VERSION"));
            });
            for s in spans {
                message(ss, 2, scratch, |b, scratch| span(b, s, scratch));
            }
        });
    });
    out
}

/// `Span`: trace_id 1, span_id 2, trace_state 3, parent_span_id 4, name 5, kind 6,
/// start 7 / end 8 (fixed64 ns), attributes 9, status 15, flags 16 (fixed32).
fn span(b: &mut Vec<u8>, s: &SpanData, scratch: &mut Vec<Vec<u8>>) {
    bytes(b, 1, &s.trace_id);
    bytes(b, 2, &s.span_id);
    if let Some(ts) = &s.trace_state {
        string(b, 3, ts);
    }
    if let Some(p) = &s.parent {
        bytes(b, 4, p);
    }
    string(b, 5, &s.name);
    uint(b, 6, s.kind as u64);
    fixed64(b, 7, s.start);
    fixed64(b, 8, s.end.max(s.start));
    for (k, v) in &s.attributes {
        key_value(b, 9, k, v, scratch);
    }
    if s.status.code != 0 || !s.status.message.is_empty() {
        // Status { string message = 2; StatusCode code = 3 }
        message(b, 15, scratch, |st, _| {
            string(st, 2, &s.status.message);
            uint(st, 3, u64::from(s.status.code));
        });
    }
    // SpanFlags: the W3C trace flags, plus "has is_remote" (0x100) and "is_remote" (0x200)
    // when the parent came from another process.
    let mut flags = u32::from(s.flags);
    if s.parent.is_some() {
        flags |= 0x100;
        if s.remote_parent {
            flags |= 0x200;
        }
    }
    fixed32(b, 16, flags);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::{SpanKind, Status};

    #[test]
    fn varints() {
        let mut b = Vec::new();
        varint(&mut b, 1);
        varint(&mut b, 300);
        varint(&mut b, u64::MAX);
        assert_eq!(b[..3], [0x01, 0xac, 0x02]);
        assert_eq!(b.len(), 3 + 10);
    }

    #[test]
    fn encodes_a_span_byte_for_byte() {
        let s = SpanData {
            trace_id: [0x11; 16],
            span_id: [0x22; 8],
            parent: Some([0x33; 8]),
            remote_parent: false,
            trace_state: None,
            flags: 1,
            name: "GET x".into(),
            kind: SpanKind::Client,
            start: 5,
            end: 7,
            attributes: vec![("a", Value::Int(-1))],
            status: Status::error("boom"),
        };
        let mut b = Vec::new();
        span(&mut b, &s, &mut Vec::new());
        let mut want = vec![0x0a, 16];
        want.extend([0x11; 16]);
        want.extend([0x12, 8]);
        want.extend([0x22; 8]);
        want.extend([0x22, 8]);
        want.extend([0x33; 8]);
        want.extend([0x2a, 5]);
        want.extend(b"GET x");
        want.extend([0x30, 3]);
        want.extend([0x39, 5, 0, 0, 0, 0, 0, 0, 0]);
        want.extend([0x41, 7, 0, 0, 0, 0, 0, 0, 0]);
        // attributes: KeyValue { key "a", value AnyValue { int_value -1 } }
        want.extend([0x4a, 16, 0x0a, 1, b'a', 0x12, 11, 0x18]);
        want.extend([0xff; 9]);
        want.push(0x01);
        // status { message "boom", code ERROR }
        want.extend([0x7a, 8, 0x12, 4]);
        want.extend(b"boom");
        want.extend([0x18, 2]);
        // flags (field 16, fixed32): sampled + has-is-remote
        want.extend([0x85, 0x01, 0x01, 0x01, 0, 0]);
        assert_eq!(b, want);
    }
}
