//! Data-loss protection stage: scans request bodies (and, when configured,
//! response bodies) for sensitive data — payment cards, IBANs, US SSNs,
//! e-mail addresses, AWS access keys, PEM private keys, JWTs, high-entropy
//! secrets and custom regexes / keyword lists — and acts per detector:
//!
//! - `block`: the client gets 403 `dlp_blocked`; the problem+json detail
//!   names the detector, never the matched data. Nothing goes upstream (or,
//!   for a response, nothing of the upstream's body reaches the client).
//!   Under `mode: report` (or `report_only`) a block is only reported.
//! - `redact`: each match is replaced by `[REDACTED:<detector>]`; the proxy
//!   fixes the framing (`Content-Length`).
//! - `report`: the body passes unchanged; the access log's `dlp` field and
//!   `tollgate_dlp_findings_total` record detector names and counts.
//!
//! This file holds the compiled profiles and the scanning engine (no
//! sockets); the proxy (`dlp_body.rs`) decides which bodies are scanned,
//! buffers and decodes them. Profiles are compiled once per configuration.

use std::collections::HashMap;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use regex_automata::meta::Regex;
use tollgate_config::dlp::{
    BodyLimits, BuiltinDetector, Dlp, DlpAction, OnOversize, ScanDirection,
};
use tollgate_config::{Config, Mode};

use crate::error::{ErrorCode, GatewayError};
use crate::pipeline::PathError;
use crate::stage::dlp_detectors as det;

/// What a detector matches with.
#[derive(Debug)]
enum Matcher {
    Builtin(BuiltinDetector, Regex),
    Regex(Regex),
    Keywords(AhoCorasick),
}

#[derive(Debug)]
struct Detector {
    name: Arc<str>,
    action: DlpAction,
    matcher: Matcher,
}

/// How a body's bytes are laid out, which decides how it is scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// Text and other scanned types: scanned as they are.
    Raw,
    /// JSON (`application/json`, `*+json`): string escapes (`\uXXXX`, `\n` …) are decoded
    /// before scanning; a redacted match inside a string keeps the document valid JSON.
    Json,
    /// `application/x-www-form-urlencoded`: each name and value is percent-decoded
    /// before scanning, and re-encoded when redacted.
    Form,
}

/// One compiled `dlp` section.
#[derive(Debug)]
pub struct DlpProfile {
    scan_request: bool,
    scan_response: bool,
    max_scan: u64,
    on_oversize: OnOversize,
    /// Extra media types (lower case) besides JSON, forms and text; `any` for `*`.
    extra_types: Vec<String>,
    any_type: bool,
    /// In priority order: when two findings overlap, the earlier detector keeps its match.
    detectors: Vec<Detector>,
}

/// Per-detector result of one scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub detector: Arc<str>,
    /// The action taken (a `block` under report mode is `report`).
    pub action: DlpAction,
    pub count: u32,
}

/// The outcome of scanning one body.
#[derive(Debug, Default)]
pub struct Scan {
    /// Detectors that found something, in profile order.
    pub findings: Vec<Finding>,
    /// The first detector whose (effective) action is `block`.
    pub blocked_by: Option<Arc<str>>,
    /// The rewritten body when a `redact` detector found something and nothing blocked.
    pub redacted: Option<Vec<u8>>,
    /// A `block` detector found something but report mode only reported it.
    pub reported_block: bool,
}

impl Scan {
    /// `card:2,email:1` for the access log: names and counts, never data.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        for f in &self.findings {
            if !s.is_empty() {
                s.push(',');
            }
            s.push_str(&f.detector);
            s.push(':');
            s.push_str(&f.count.to_string());
        }
        s
    }
}

/// The effective action of `a` under report mode.
fn effective(a: DlpAction, report_mode: bool) -> DlpAction {
    if report_mode && a == DlpAction::Block {
        DlpAction::Report
    } else {
        a
    }
}

/// What to do with a body too large to scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Oversize {
    Allow,
    Report,
    Block,
}

/// The pseudo-detector name used for `on_oversize` in logs, metrics and errors.
pub const OVERSIZE: &str = "oversize";

/// The 403 for a body a detector blocks. `what` is "request" or "response".
pub fn blocked_error(detector: &str, what: &str) -> GatewayError {
    GatewayError::new(
        ErrorCode::DlpBlocked,
        format!(
            "the {what} body contains data that data-loss protection blocks (detector `{detector}`)"
        ),
    )
}

/// The 403 for a body too large to scan under `on_oversize: block`.
pub fn oversize_error(max: u64, what: &str) -> GatewayError {
    GatewayError::new(
        ErrorCode::DlpBlocked,
        format!(
            "the {what} body is larger than the {max} bytes data-loss protection scans \
             (detector `oversize`)"
        ),
    )
}

impl DlpProfile {
    fn compile(d: &Dlp, at: &str, errs: &mut Vec<PathError>) -> Self {
        let mut detectors = Vec::new();
        // Specific detectors first, so a JWT is reported as `jwt`, not also as `high_entropy`.
        let order = [
            BuiltinDetector::PrivateKey,
            BuiltinDetector::Jwt,
            BuiltinDetector::AwsKey,
            BuiltinDetector::Iban,
            BuiltinDetector::Card,
            BuiltinDetector::Ssn,
            BuiltinDetector::Email,
        ];
        for b in order {
            if let Some(&action) = d.detectors.get(&b) {
                push_builtin(&mut detectors, b, action, at, errs);
            }
        }
        for (i, c) in d.custom.iter().enumerate() {
            let matcher = if let Some(re) = &c.regex {
                match Regex::new(re) {
                    Ok(r) => Matcher::Regex(r),
                    Err(e) => {
                        errs.push(PathError {
                            path: format!("{at}.dlp.custom[{i}].regex"),
                            message: format!("invalid regular expression: {e}"),
                        });
                        continue;
                    }
                }
            } else {
                let built = AhoCorasickBuilder::new()
                    .ascii_case_insensitive(true)
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(&c.keywords);
                match built {
                    Ok(a) => Matcher::Keywords(a),
                    Err(e) => {
                        errs.push(PathError {
                            path: format!("{at}.dlp.custom[{i}].keywords"),
                            message: format!("cannot be compiled: {e}"),
                        });
                        continue;
                    }
                }
            };
            detectors.push(Detector {
                name: c.name.as_str().into(),
                action: c.action,
                matcher,
            });
        }
        if let Some(&action) = d.detectors.get(&BuiltinDetector::HighEntropy) {
            push_builtin(
                &mut detectors,
                BuiltinDetector::HighEntropy,
                action,
                at,
                errs,
            );
        }
        let extra_types: Vec<String> = d
            .content_types
            .iter()
            .filter(|t| t.as_str() != "*")
            .map(|t| t.to_ascii_lowercase())
            .collect();
        Self {
            scan_request: d.scan.contains(&ScanDirection::Request),
            scan_response: d.scan.contains(&ScanDirection::Response),
            max_scan: d.max_scan.get(),
            on_oversize: d.on_oversize,
            any_type: d.content_types.iter().any(|t| t == "*"),
            extra_types,
            detectors,
        }
    }

    pub fn scans_request(&self) -> bool {
        self.scan_request
    }
    pub fn scans_response(&self) -> bool {
        self.scan_response
    }
    /// The most bytes (after decoding) read for a scan.
    pub fn max_scan(&self) -> u64 {
        self.max_scan
    }

    /// Whether `on_oversize: block` is configured (what report mode turns into `report`).
    pub fn blocks_oversize(&self) -> bool {
        self.on_oversize == OnOversize::Block
    }

    /// What to do with a body larger than `max_scan`, report mode applied.
    pub fn oversize(&self, report_mode: bool) -> Oversize {
        match self.on_oversize {
            OnOversize::Allow => Oversize::Allow,
            OnOversize::Report => Oversize::Report,
            OnOversize::Block if report_mode => Oversize::Report,
            OnOversize::Block => Oversize::Block,
        }
    }

    /// How a body with this `Content-Type` is scanned, or `None` when it is not scanned:
    /// JSON (`application/json`, `*+json`), text (`text/*` except `text/event-stream`) and
    /// configured extra types are scanned raw, forms decoded. A body without a type is
    /// scanned only under `*`; `text/event-stream` only when listed explicitly.
    pub fn body_kind(&self, content_type: Option<&str>) -> Option<BodyKind> {
        let Some(ct) = content_type else {
            return self.any_type.then_some(BodyKind::Raw);
        };
        let media = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if media == "application/x-www-form-urlencoded" {
            return Some(BodyKind::Form);
        }
        if self.extra_types.contains(&media) {
            return Some(BodyKind::Raw);
        }
        // Server-sent events are an open-ended stream (LLM token streams): buffering them
        // would hold the client until `max_scan` bytes arrived. Only scanned when listed.
        if media == "text/event-stream" {
            return None;
        }
        if media == "application/json" || media.ends_with("+json") {
            return Some(BodyKind::Json);
        }
        let scanned = media.starts_with("text/") || self.any_type;
        scanned.then_some(BodyKind::Raw)
    }

    /// Scans `body` laid out as `kind`. `report_mode` turns `block` into `report`.
    pub fn scan(&self, body: &[u8], kind: BodyKind, report_mode: bool) -> Scan {
        match kind {
            BodyKind::Raw => self.scan_raw(body, report_mode),
            BodyKind::Json => self.scan_json(body, report_mode),
            BodyKind::Form => self.scan_form(body, report_mode),
        }
    }

    /// All findings in `text` as (start, end, detector index), overlaps resolved by priority.
    fn matches(&self, text: &[u8]) -> Vec<(usize, usize, usize)> {
        let mut all: Vec<(usize, usize, usize)> = Vec::new();
        for (i, d) in self.detectors.iter().enumerate() {
            let mut found: Vec<(usize, usize)> = Vec::new();
            match &d.matcher {
                Matcher::Builtin(b, re) => {
                    for m in re.find_iter(text) {
                        if det::validate(*b, &text[m.range()]) {
                            found.push((m.start(), m.end()));
                        }
                    }
                }
                Matcher::Regex(re) => {
                    found.extend(
                        re.find_iter(text)
                            .filter(|m| !m.is_empty())
                            .map(|m| (m.start(), m.end())),
                    );
                }
                Matcher::Keywords(ac) => {
                    for m in ac.find_iter(text) {
                        if word_bounded(text, m.start(), m.end()) {
                            found.push((m.start(), m.end()));
                        }
                    }
                }
            }
            for (s, e) in found {
                if !all.iter().any(|&(s2, e2, _)| s < e2 && s2 < e) {
                    all.push((s, e, i));
                }
            }
        }
        all.sort_unstable();
        all
    }

    fn tally(&self, found: &[(usize, usize, usize)], report_mode: bool) -> Scan {
        let mut counts = vec![0u32; self.detectors.len()];
        for &(_, _, i) in found {
            counts[i] += 1;
        }
        let mut scan = Scan::default();
        for (d, &n) in self.detectors.iter().zip(&counts) {
            if n == 0 {
                continue;
            }
            let action = effective(d.action, report_mode);
            if d.action == DlpAction::Block && action != DlpAction::Block {
                scan.reported_block = true;
            }
            if action == DlpAction::Block && scan.blocked_by.is_none() {
                scan.blocked_by = Some(d.name.clone());
            }
            scan.findings.push(Finding {
                detector: d.name.clone(),
                action,
                count: n,
            });
        }
        scan
    }

    fn redacts(&self, found: &[(usize, usize, usize)]) -> bool {
        found
            .iter()
            .any(|&(_, _, i)| self.detectors[i].action == DlpAction::Redact)
    }

    /// `text` with every redact-action match replaced by its mask.
    fn redact(&self, text: &[u8], found: &[(usize, usize, usize)]) -> Vec<u8> {
        let mut out = Vec::with_capacity(text.len());
        let mut at = 0;
        for &(s, e, i) in found {
            let d = &self.detectors[i];
            if d.action != DlpAction::Redact {
                continue;
            }
            out.extend_from_slice(&text[at..s]);
            out.extend_from_slice(b"[REDACTED:");
            out.extend_from_slice(d.name.as_bytes());
            out.push(b']');
            at = e;
        }
        out.extend_from_slice(&text[at..]);
        out
    }

    fn scan_raw(&self, body: &[u8], report_mode: bool) -> Scan {
        let found = self.matches(body);
        let mut scan = self.tally(&found, report_mode);
        if scan.blocked_by.is_none() && self.redacts(&found) {
            scan.redacted = Some(self.redact(body, &found));
        }
        scan
    }

    /// JSON: scanned with its string escapes decoded (dlp_json.rs); a redact match replaces
    /// the raw bytes that encoded it with the mask, escaped for a JSON string.
    fn scan_json(&self, body: &[u8], report_mode: bool) -> Scan {
        let Some(decoded) = super::dlp_json::decode(body) else {
            return self.scan_raw(body, report_mode);
        };
        let found = self.matches(&decoded.text);
        let mut scan = self.tally(&found, report_mode);
        if scan.blocked_by.is_none() && self.redacts(&found) {
            let mut out = Vec::with_capacity(body.len());
            let mut at = 0;
            for &(s, e, i) in &found {
                let d = &self.detectors[i];
                if d.action != DlpAction::Redact {
                    continue;
                }
                let (rs, re) = decoded.raw_range(s, e);
                if rs < at {
                    continue;
                }
                out.extend_from_slice(&body[at..rs]);
                out.extend_from_slice(b"[REDACTED:");
                super::dlp_json::push_escaped(&mut out, d.name.as_bytes());
                out.push(b']');
                at = re;
            }
            out.extend_from_slice(&body[at..]);
            scan.redacted = Some(out);
        }
        scan
    }

    /// Forms: each `name=value` part is decoded and scanned on its own; parts that change
    /// under redaction are re-encoded, the others keep their original bytes.
    fn scan_form(&self, body: &[u8], report_mode: bool) -> Scan {
        let mut all: Vec<(usize, usize, usize)> = Vec::new();
        let mut out = Vec::with_capacity(body.len());
        let mut redacted = false;
        for (n, pair) in body.split(|b| *b == b'&').enumerate() {
            if n > 0 {
                out.push(b'&');
            }
            let mut parts = pair.splitn(2, |b| *b == b'=');
            let name = parts.next().unwrap_or(b"");
            let value = parts.next();
            for (k, raw) in [Some(name), value].into_iter().flatten().enumerate() {
                if k == 1 {
                    out.push(b'=');
                }
                let decoded = percent_decode(raw);
                let found = self.matches(&decoded);
                if self.redacts(&found) {
                    redacted = true;
                    out.extend_from_slice(&percent_encode(&self.redact(&decoded, &found)));
                } else {
                    out.extend_from_slice(raw);
                }
                all.extend(found);
            }
        }
        let mut scan = self.tally(&all, report_mode);
        if scan.blocked_by.is_none() && redacted {
            scan.redacted = Some(out);
        }
        scan
    }
}

fn push_builtin(
    out: &mut Vec<Detector>,
    b: BuiltinDetector,
    action: DlpAction,
    at: &str,
    errs: &mut Vec<PathError>,
) {
    match det::compile(b) {
        Ok(re) => out.push(Detector {
            name: b.as_str().into(),
            action,
            matcher: Matcher::Builtin(b, re),
        }),
        Err(e) => errs.push(PathError {
            path: format!("{at}.dlp.detectors.{}", b.as_str()),
            message: format!("internal: the built-in pattern does not compile: {e}"),
        }),
    }
}

/// A keyword that starts or ends with a word character must not be part of a longer word
/// (`secret` does not match `secretary`).
fn word_bounded(text: &[u8], s: usize, e: usize) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let before = s.checked_sub(1).and_then(|i| text.get(i)).copied();
    let first = text.get(s).copied();
    let last = e.checked_sub(1).and_then(|i| text.get(i)).copied();
    let after = text.get(e).copied();
    let left_ok = !(first.is_some_and(word) && before.is_some_and(word));
    let right_ok = !(last.is_some_and(word) && after.is_some_and(word));
    left_ok && right_ok
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte; a broken
/// escape stays as it is.
pub fn percent_decode(s: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' => {
                if let (Some(h), Some(l)) = (
                    s.get(i + 1).copied().and_then(hex),
                    s.get(i + 2).copied().and_then(hex),
                ) {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// Form encoding of one name or value (unreserved characters kept, space as `+`).
pub fn percent_encode(s: &[u8]) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = Vec::with_capacity(s.len());
    for &b in s {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => out.push(b),
            b' ' => out.push(b'+'),
            _ => {
                out.push(b'%');
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 15)]);
            }
        }
    }
    out
}

/// The profile that applies to one request, with its report mode.
#[derive(Debug, Clone, Copy)]
pub struct DlpRef<'a> {
    pub profile: &'a DlpProfile,
    /// The API's `mode: report` or the global `report_only`: `block` is only reported.
    pub report_mode: bool,
}

/// One API's or consumer's compiled `dlp` and `body_limits`.
#[derive(Debug, Default)]
struct Entry {
    profile: Option<Arc<DlpProfile>>,
    limits: Option<BodyLimits>,
    /// APIs only: `mode: report` or the global `report_only`.
    report_mode: bool,
}

/// Compiled `dlp` and `body_limits` of every API and consumer.
#[derive(Debug, Default)]
pub(crate) struct DlpStage {
    /// Every API (its report mode matters even when only a consumer has `dlp`).
    apis: HashMap<Arc<str>, Entry>,
    /// Consumers with `dlp` or `body_limits`.
    consumers: HashMap<Arc<str>, Entry>,
}

impl DlpStage {
    pub(crate) fn compile(config: &Config, errs: &mut Vec<PathError>) -> Self {
        let mut stage = Self::default();
        for (i, a) in config.apis.iter().enumerate() {
            let at = format!("apis[{i}]");
            let profile = a
                .dlp
                .as_ref()
                .map(|d| Arc::new(DlpProfile::compile(d, &at, errs)));
            let entry = Entry {
                profile,
                limits: a.body_limits,
                report_mode: config.report_only || a.mode == Mode::Report,
            };
            stage.apis.insert(a.name.as_str().into(), entry);
        }
        for (i, c) in config.consumers.iter().enumerate() {
            let at = format!("consumers[{i}]");
            let profile = c
                .dlp
                .as_ref()
                .map(|d| Arc::new(DlpProfile::compile(d, &at, errs)));
            if profile.is_some() || c.body_limits.is_some() {
                let entry = Entry {
                    profile,
                    limits: c.body_limits,
                    report_mode: false,
                };
                stage.consumers.insert(c.name.as_str().into(), entry);
            }
        }
        stage
    }

    /// The DLP profile for `api` called by `consumer`: the consumer's when it has one, else
    /// the API's; report mode always follows the API.
    pub(crate) fn profile(&self, api: &str, consumer: Option<&str>) -> Option<DlpRef<'_>> {
        let api_entry = self.apis.get(api);
        let consumer_profile = consumer
            .and_then(|c| self.consumers.get(c))
            .and_then(|e| e.profile.as_deref());
        let api_profile = api_entry.and_then(|e| e.profile.as_deref());
        consumer_profile.or(api_profile).map(|profile| DlpRef {
            profile,
            report_mode: api_entry.is_some_and(|e| e.report_mode),
        })
    }

    /// Trace lines for `tollgate explain`: the body limits and DLP profile that would apply.
    pub(crate) fn describe(
        &self,
        api: &str,
        consumer: Option<&str>,
    ) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some(l) = self.limits(api, consumer) {
            let show = |s: Option<tollgate_config::ByteSize>| {
                s.map_or("none".to_owned(), |s| s.to_string())
            };
            out.push((
                "body_size",
                format!("request {}, response {}", show(l.request), show(l.response)),
            ));
        }
        if let Some(d) = self.profile(api, consumer) {
            let p = d.profile;
            let mut dirs = Vec::new();
            if p.scan_request {
                dirs.push("request");
            }
            if p.scan_response {
                dirs.push("response");
            }
            let detectors: Vec<String> = p
                .detectors
                .iter()
                .map(|det| {
                    let a = match effective(det.action, d.report_mode) {
                        DlpAction::Block => "block",
                        DlpAction::Redact => "redact",
                        DlpAction::Report => "report",
                    };
                    format!("{}={a}", det.name)
                })
                .collect();
            let oversize = match p.oversize(d.report_mode) {
                Oversize::Allow => "allow",
                Oversize::Report => "report",
                Oversize::Block => "block",
            };
            out.push((
                "dlp",
                format!(
                    "scan {}: {}; max_scan {} bytes, on_oversize {oversize}{}",
                    dirs.join(" and "),
                    detectors.join(", "),
                    p.max_scan,
                    if d.report_mode { " (report mode)" } else { "" }
                ),
            ));
        }
        out
    }

    /// The stricter of the API's and the consumer's body limits.
    pub(crate) fn limits(&self, api: &str, consumer: Option<&str>) -> Option<BodyLimits> {
        let a = self.apis.get(api).and_then(|e| e.limits.as_ref());
        let c = consumer
            .and_then(|c| self.consumers.get(c))
            .and_then(|e| e.limits.as_ref());
        BodyLimits::min(a, c)
    }
}
