//! Body glue for data-loss protection and body size limits: decides which
//! bodies are scanned, buffers them up to `dlp.max_scan`, decodes
//! `Content-Encoding` (gzip, deflate, br) for the scan, applies the
//! detectors' verdict and fixes the framing. The detectors and the engine are
//! in `tollgate_policy::dlp`.
//!
//! What the client sees: 403 `dlp_blocked` naming the detector (request or
//! response blocked; nothing of a blocked request reaches the upstream), 413
//! `request_too_large` (request body over `body_limits.request`), 502
//! `response_too_large` (response `Content-Length` over
//! `body_limits.response`), 400 `bad_request` (a compressed request body that
//! does not decode). Bodies that need no scan are streamed untouched.
//!
//! Redaction sends the rewritten body *decoded*: `Content-Encoding` is removed,
//! `Content-Length` set to the new length, and headers that could no longer
//! match (`Content-MD5`, `Digest`, `Content-Digest`, `Repr-Digest`, `ETag`) are
//! removed. A body that is scanned but not rewritten is forwarded byte for
//! byte as received (still compressed).

use std::io::Read;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tollgate_config::dlp::DlpAction;
use tollgate_policy::dlp::{OVERSIZE, blocked_error, oversize_error};
use tollgate_policy::{DlpRef, ErrorCode, GatewayError, Oversize, Scan};

use crate::body::{BodyStats, Buffered, ProxyBody, RequestBody};
use crate::observe::Completion;
use crate::state::Gateway;

/// Headers whose value describes the exact body bytes and is wrong after a rewrite
/// (a response's strong `ETag` would let caches mix the masked and the original body).
const DIGEST_HEADERS: [&str; 5] = [
    "content-md5",
    "digest",
    "content-digest",
    "repr-digest",
    "etag",
];

/// How the body is encoded, as far as scanning is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coding {
    Identity,
    Gzip,
    Deflate,
    Brotli,
    /// Anything else (zstd, several codings): cannot be scanned.
    Unknown,
}

fn coding(headers: &HeaderMap) -> Coding {
    let mut values = headers.get_all(CONTENT_ENCODING).iter();
    let (Some(v), None) = (values.next(), values.next()) else {
        return if headers.contains_key(CONTENT_ENCODING) {
            Coding::Unknown
        } else {
            Coding::Identity
        };
    };
    let v = v.to_str().unwrap_or("").trim().to_ascii_lowercase();
    match v.as_str() {
        "" | "identity" => Coding::Identity,
        "gzip" | "x-gzip" => Coding::Gzip,
        "deflate" => Coding::Deflate,
        "br" => Coding::Brotli,
        _ => Coding::Unknown,
    }
}

/// The declared `Content-Length`, if any and valid.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Decoded bytes, or `None` when decoding would exceed `max` bytes.
fn decode(raw: &[u8], c: Coding, max: u64) -> Result<Option<Vec<u8>>, std::io::Error> {
    let mut out = Vec::new();
    let cap = max.saturating_add(1);
    match c {
        Coding::Identity => return Ok((raw.len() as u64 <= max).then(|| raw.to_vec())),
        Coding::Gzip => {
            flate2::read::MultiGzDecoder::new(raw)
                .take(cap)
                .read_to_end(&mut out)?;
        }
        Coding::Deflate => {
            // RFC 9110's "deflate" is zlib; some senders use raw deflate.
            let zlib = flate2::read::ZlibDecoder::new(raw)
                .take(cap)
                .read_to_end(&mut out);
            if zlib.is_err() {
                out.clear();
                flate2::read::DeflateDecoder::new(raw)
                    .take(cap)
                    .read_to_end(&mut out)?;
            }
        }
        Coding::Brotli => {
            brotli::Decompressor::new(raw, 8192)
                .take(cap)
                .read_to_end(&mut out)?;
        }
        Coding::Unknown => return Ok(None),
    }
    Ok((out.len() as u64 <= max).then_some(out))
}

/// Records the scan's findings in metrics and the log line.
fn record(gw: &Gateway, api: &str, scan: &Scan, done: &mut Completion) {
    for f in &scan.findings {
        let action = match f.action {
            DlpAction::Block => "block",
            DlpAction::Redact => "redact",
            DlpAction::Report => "report",
        };
        gw.metrics
            .dlp_findings(api, &f.detector, action, u64::from(f.count));
    }
    if !scan.findings.is_empty() {
        append(done, &scan.summary());
    }
    if scan.reported_block {
        reported(done);
    }
}

/// Report mode let through what DLP would have blocked: logged like other
/// report-mode refusals (`decision: report`, `reason: dlp_blocked`).
fn reported(done: &mut Completion) {
    done.decision = "report";
    done.reason.get_or_insert(ErrorCode::DlpBlocked.as_str());
}

fn record_oversize(gw: &Gateway, api: &str, action: &'static str, done: &mut Completion) {
    gw.metrics.dlp_findings(api, OVERSIZE, action, 1);
    append(done, "oversize:1");
}

fn append(done: &mut Completion, s: &str) {
    match &mut done.dlp {
        Some(d) => {
            d.push(',');
            d.push_str(s);
        }
        None => done.dlp = Some(s.to_owned()),
    }
}

/// Puts a rewritten body's framing right.
fn rewritten(headers: &mut HeaderMap, len: usize) {
    headers.remove(CONTENT_ENCODING);
    for h in DIGEST_HEADERS {
        headers.remove(h);
    }
    headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
}

fn too_large(limit: u64) -> GatewayError {
    GatewayError::new(
        ErrorCode::RequestTooLarge,
        format!("the request body is larger than the {limit} bytes this API accepts"),
    )
}

/// The 413 for a client body that grew past its limit while streaming.
pub fn request_too_large(limit: Option<u64>) -> GatewayError {
    too_large(limit.unwrap_or(0))
}

/// Everything the request side needs.
pub struct RequestCheck<'a> {
    pub gw: &'a Gateway,
    pub api: &'a str,
    pub dlp: Option<DlpRef<'a>>,
    /// `body_limits.request`.
    pub limit: Option<u64>,
}

/// Applies the request body limit and DLP to the client's body and returns the body to
/// send upstream. `headers` are the upstream request's (framing fixed on redaction).
pub async fn request(
    check: RequestCheck<'_>,
    headers: &mut HeaderMap,
    body: Incoming,
    stats: Arc<BodyStats>,
    done: &mut Completion,
) -> Result<RequestBody, GatewayError> {
    let RequestCheck {
        gw,
        api,
        dlp,
        limit,
    } = check;
    if let (Some(max), Some(len)) = (limit, content_length(headers))
        && len > max
    {
        gw.metrics.body_limit_exceeded(api, "request");
        return Err(too_large(max));
    }
    let stream = RequestBody::new(body, stats.clone()).with_limit(limit);
    let Some(d) = dlp.filter(|d| d.profile.scans_request()) else {
        return Ok(stream);
    };
    let ct = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let Some(kind) = d.profile.body_kind(ct) else {
        return Ok(stream);
    };
    if stream.is_end_stream() {
        return Ok(stream);
    }
    let max = d.profile.max_scan();
    let coding = coding(headers);
    let declared_over = content_length(headers).is_some_and(|n| n > max);
    if coding == Coding::Unknown || declared_over {
        return oversize_request(gw, api, d, max, Vec::new(), stream, done);
    }
    // Read up to max_scan raw bytes.
    let mut stream = stream;
    let mut buf = Buffered::default();
    while let Some(frame) = stream.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(_) if stats.too_large() => {
                gw.metrics.body_limit_exceeded(api, "request");
                return Err(request_too_large(limit));
            }
            Err(_) => {
                return Err(GatewayError::new(
                    ErrorCode::BadRequest,
                    "the request body could not be read (invalid chunked encoding or aborted)",
                ));
            }
        };
        match frame.into_data() {
            Ok(data) => {
                buf.len += data.len() as u64;
                buf.chunks.push(data);
                if buf.len > max {
                    return oversize_request(gw, api, d, max, buf.chunks, stream, done);
                }
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    buf.trailers = Some(t);
                }
            }
        }
    }
    let raw: Vec<u8> = buf.chunks.concat();
    let decoded = match decode(&raw, coding, max) {
        Ok(Some(b)) => b,
        Ok(None) => {
            let replay = RequestBody::replay(Arc::new(buf));
            return oversize_request(gw, api, d, max, Vec::new(), replay, done);
        }
        Err(_) => {
            return Err(GatewayError::new(
                ErrorCode::BadRequest,
                "the request body does not decode with its Content-Encoding",
            ));
        }
    };
    let scan = d.profile.scan(&decoded, kind, d.report_mode);
    record(gw, api, &scan, done);
    if let Some(det) = &scan.blocked_by {
        return Err(blocked_error(det, "request"));
    }
    if let Some(new) = scan.redacted {
        rewritten(headers, new.len());
        let len = new.len() as u64;
        let body = Buffered {
            chunks: vec![Bytes::from(new)],
            trailers: buf.trailers,
            len,
        };
        return Ok(RequestBody::replay(Arc::new(body)));
    }
    Ok(RequestBody::replay(Arc::new(buf)))
}

/// A request body too large (or encoded too oddly) to scan: `on_oversize` decides.
fn oversize_request(
    gw: &Gateway,
    api: &str,
    d: DlpRef<'_>,
    max: u64,
    prefix: Vec<Bytes>,
    rest: RequestBody,
    done: &mut Completion,
) -> Result<RequestBody, GatewayError> {
    match d.profile.oversize(d.report_mode) {
        Oversize::Block => {
            record_oversize(gw, api, "block", done);
            Err(oversize_error(max, "request"))
        }
        o => {
            if o == Oversize::Report {
                record_oversize(gw, api, "report", done);
                if d.profile.blocks_oversize() {
                    reported(done);
                }
            }
            Ok(if prefix.is_empty() {
                rest
            } else {
                RequestBody::prefixed(prefix, rest)
            })
        }
    }
}

/// What to do with the upstream's response.
pub enum ResponseBody {
    Send(ProxyBody),
    Refuse(GatewayError),
}

/// Applies the response limit and DLP to the upstream's response. `headers` are the
/// response headers sent to the client (framing fixed on redaction). `no_body`: a HEAD
/// request or a status without content.
#[allow(clippy::too_many_arguments)]
pub async fn response(
    gw: &Gateway,
    api: &str,
    dlp: Option<DlpRef<'_>>,
    limit: Option<u64>,
    no_body: bool,
    headers: &mut HeaderMap,
    body: Incoming,
    done: &mut Completion,
) -> ResponseBody {
    if no_body {
        return ResponseBody::Send(ProxyBody::upstream(body));
    }
    if let (Some(max), Some(len)) = (limit, content_length(headers))
        && len > max
    {
        gw.metrics.body_limit_exceeded(api, "response");
        return ResponseBody::Refuse(GatewayError::new(
            ErrorCode::ResponseTooLarge,
            format!(
                "the upstream response ({len} bytes) is larger than the {max} bytes this API allows"
            ),
        ));
    }
    let ct = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let scanned = dlp
        .filter(|d| d.profile.scans_response())
        .and_then(|d| Some((d, d.profile.body_kind(ct)?)));
    let Some((d, kind)) = scanned else {
        return ResponseBody::Send(ProxyBody::upstream(body).with_limit(limit));
    };
    let max = d.profile.max_scan();
    let coding = coding(headers);
    let declared_over = content_length(headers).is_some_and(|n| n > max);
    let mut body = body;
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut len = 0u64;
    if coding != Coding::Unknown && !declared_over {
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                return ResponseBody::Refuse(GatewayError::new(
                    ErrorCode::UpstreamProtocolError,
                    "the upstream response body could not be read",
                ));
            };
            if let Ok(data) = frame.into_data() {
                len += data.len() as u64;
                chunks.push(data);
                if len > max {
                    break;
                }
            }
        }
    }
    let complete = len <= max && coding != Coding::Unknown && !declared_over;
    let raw: Vec<u8> = if complete {
        chunks.concat()
    } else {
        Vec::new()
    };
    let decoded = if complete {
        match decode(&raw, coding, max) {
            Ok(d) => d,
            Err(_) => {
                return ResponseBody::Refuse(GatewayError::new(
                    ErrorCode::UpstreamProtocolError,
                    "the upstream response body does not decode with its Content-Encoding",
                ));
            }
        }
    } else {
        None
    };
    let Some(decoded) = decoded else {
        // Too large (or undecodable coding) to scan.
        return match d.profile.oversize(d.report_mode) {
            Oversize::Block => {
                record_oversize(gw, api, "block", done);
                ResponseBody::Refuse(oversize_error(max, "response"))
            }
            o => {
                if o == Oversize::Report {
                    record_oversize(gw, api, "report", done);
                    if d.profile.blocks_oversize() {
                        reported(done);
                    }
                }
                let out = if complete {
                    ProxyBody::full(Bytes::from(raw))
                } else {
                    ProxyBody::upstream_prefixed(chunks, body)
                };
                ResponseBody::Send(out.with_limit(limit))
            }
        };
    };
    let scan = d.profile.scan(&decoded, kind, d.report_mode);
    record(gw, api, &scan, done);
    if let Some(det) = &scan.blocked_by {
        return ResponseBody::Refuse(blocked_error(det, "response"));
    }
    let out = match scan.redacted {
        Some(new) => {
            rewritten(headers, new.len());
            new
        }
        None => raw,
    };
    if let Some(max) = limit
        && out.len() as u64 > max
    {
        gw.metrics.body_limit_exceeded(api, "response");
        return ResponseBody::Refuse(GatewayError::new(
            ErrorCode::ResponseTooLarge,
            format!("the upstream response is larger than the {max} bytes this API allows"),
        ));
    }
    ResponseBody::Send(ProxyBody::full(Bytes::from(out)))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn decodes_gzip_deflate_and_brotli_within_the_cap() {
        let text = b"card 4111111111111111 and more text".repeat(4);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&text).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(decode(&gz, Coding::Gzip, 1 << 20).unwrap().unwrap(), text);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&text).unwrap();
        assert_eq!(
            decode(&z.finish().unwrap(), Coding::Deflate, 1 << 20)
                .unwrap()
                .unwrap(),
            text
        );
        let mut raw =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        raw.write_all(&text).unwrap();
        assert_eq!(
            decode(&raw.finish().unwrap(), Coding::Deflate, 1 << 20)
                .unwrap()
                .unwrap(),
            text
        );
        let mut br = Vec::new();
        {
            let mut w = brotli::CompressorWriter::new(&mut br, 4096, 5, 22);
            w.write_all(&text).unwrap();
        }
        assert_eq!(decode(&br, Coding::Brotli, 1 << 20).unwrap().unwrap(), text);
        // Over the cap after decoding (a small zip bomb): not scanned.
        let zeros = vec![0u8; 100_000];
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&zeros).unwrap();
        let gz = gz.finish().unwrap();
        assert!(gz.len() < 1000);
        assert!(decode(&gz, Coding::Gzip, 10_000).unwrap().is_none());
        assert!(decode(b"not gzip", Coding::Gzip, 100).is_err());
        assert!(decode(b"x", Coding::Unknown, 100).unwrap().is_none());
    }

    #[test]
    fn content_encoding_is_classified() {
        let mut h = HeaderMap::new();
        assert_eq!(coding(&h), Coding::Identity);
        h.insert(CONTENT_ENCODING, HeaderValue::from_static("GZIP"));
        assert_eq!(coding(&h), Coding::Gzip);
        h.insert(CONTENT_ENCODING, HeaderValue::from_static("br"));
        assert_eq!(coding(&h), Coding::Brotli);
        h.insert(CONTENT_ENCODING, HeaderValue::from_static("zstd"));
        assert_eq!(coding(&h), Coding::Unknown);
        h.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        h.append(CONTENT_ENCODING, HeaderValue::from_static("br"));
        assert_eq!(coding(&h), Coding::Unknown);
    }

    #[test]
    fn rewriting_fixes_framing_headers() {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        h.insert(CONTENT_LENGTH, HeaderValue::from(999));
        h.insert("content-md5", HeaderValue::from_static("x"));
        h.insert("x-other", HeaderValue::from_static("kept"));
        rewritten(&mut h, 42);
        assert_eq!(h.get(CONTENT_LENGTH).unwrap(), "42");
        assert!(h.get(CONTENT_ENCODING).is_none() && h.get("content-md5").is_none());
        assert_eq!(h.get("x-other").unwrap(), "kept");
    }
}
