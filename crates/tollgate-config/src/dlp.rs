//! Configuration types for data-loss protection (`apis[].dlp`,
//! `consumers[].dlp`) and body size limits (`apis[].body_limits`,
//! `consumers[].body_limits`). Shape checks serde cannot express (a custom
//! detector with exactly one of `regex` / `keywords`, unique names, sizes above
//! zero) are in [`problems`] / [`limit_problems`]; regular expressions are
//! compiled, with key paths, when `tollgate-policy` compiles the configuration.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::units::ByteSize;

/// Which bodies are scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ScanDirection {
    /// The client's request body, before it is sent upstream.
    Request,
    /// The upstream's response body, before it is sent to the client.
    Response,
}

/// What happens when a detector finds something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DlpAction {
    /// Refuse with 403 `dlp_blocked` naming the detector (never the matched data). Under the
    /// API's `mode: report` (or `report_only`) a block is only reported.
    Block,
    /// Replace each match with `[REDACTED:<detector>]` and forward the rewritten body.
    Redact,
    /// Forward unchanged; log the detector and count in the access log (`dlp`) and metrics.
    Report,
}

/// What happens to a body that needs a scan but is larger than `max_scan` (after decoding).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnOversize {
    /// Forward it unscanned (default).
    #[default]
    Allow,
    /// Refuse with 403 `dlp_blocked` (detector `oversize`).
    Block,
    /// Forward it unscanned and record `oversize` in the access log and metrics.
    Report,
}

/// The built-in detectors, by name.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum BuiltinDetector {
    /// Payment card numbers: 13–19 digits, optionally grouped by spaces or dashes, Luhn-valid.
    Card,
    /// International bank account numbers with a valid mod-97 checksum.
    Iban,
    /// US social security numbers `AAA-GG-SSSS` (area not 000, 666 or 9xx; group and serial not zero).
    Ssn,
    /// E-mail addresses.
    Email,
    /// AWS access key ids (`AKIA…`, `ASIA…`, 20 characters).
    AwsKey,
    /// PEM private keys (`-----BEGIN … PRIVATE KEY-----`).
    PrivateKey,
    /// JSON Web Tokens: three base64url parts whose header decodes to JSON with `alg`.
    Jwt,
    /// Long tokens (24+ characters of letters, digits and `+_-`, then optional `=` padding) with high Shannon entropy.
    HighEntropy,
}

impl BuiltinDetector {
    pub const ALL: [BuiltinDetector; 8] = [
        Self::Card,
        Self::Iban,
        Self::Ssn,
        Self::Email,
        Self::AwsKey,
        Self::PrivateKey,
        Self::Jwt,
        Self::HighEntropy,
    ];

    /// The name used in config, logs, metrics and error bodies.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Card => "card",
            Self::Iban => "iban",
            Self::Ssn => "ssn",
            Self::Email => "email",
            Self::AwsKey => "aws_key",
            Self::PrivateKey => "private_key",
            Self::Jwt => "jwt",
            Self::HighEntropy => "high_entropy",
        }
    }
}

/// A detector defined in the configuration: exactly one of `regex` or `keywords`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomDetector {
    /// Unique within the profile, different from the built-in names; appears in logs,
    /// metrics and error bodies.
    pub name: String,
    /// A regular expression (Rust `regex` syntax); each match is a finding.
    #[serde(default)]
    pub regex: Option<String>,
    /// Literal words or phrases, matched case-insensitively; each occurrence is a finding.
    #[serde(default)]
    pub keywords: Vec<String>,
    /// `block`, `redact` or `report`.
    pub action: DlpAction,
}

fn default_scan() -> Vec<ScanDirection> {
    vec![ScanDirection::Request]
}

fn mib_1() -> ByteSize {
    ByteSize(1 << 20)
}

fn default_content_types() -> Vec<String> {
    Vec::new()
}

/// Data-loss protection for an API's bodies (`dlp:`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Dlp {
    /// Which bodies to scan: `[request]` (default) or `[request, response]`.
    #[serde(default = "default_scan")]
    pub scan: Vec<ScanDirection>,
    /// Built-in detectors to run and their action (`{ card: block, email: report }`).
    /// Detectors not listed do not run.
    #[serde(default)]
    pub detectors: BTreeMap<BuiltinDetector, DlpAction>,
    /// Detectors of your own: regular expressions or keyword lists.
    #[serde(default)]
    pub custom: Vec<CustomDetector>,
    /// The most a body is read (after decoding gzip/deflate/br) to scan it. Default 1MiB.
    #[serde(default = "mib_1")]
    pub max_scan: ByteSize,
    /// A body larger than `max_scan`: `allow` (default, forwarded unscanned), `block` or `report`.
    #[serde(default)]
    pub on_oversize: OnOversize,
    /// Extra media types to scan besides JSON (`application/json`, `*+json`), forms
    /// (`application/x-www-form-urlencoded`) and text (`text/*`): e.g. `application/xml`.
    /// `*` scans every body, whatever its type (or none), except `text/event-stream`, which is
    /// scanned only when listed.
    #[serde(default = "default_content_types")]
    pub content_types: Vec<String>,
}

/// Body size limits (`body_limits:`), enforced while streaming.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BodyLimits {
    /// The largest request body sent upstream; larger → 413 `request_too_large`. Absent: no limit.
    #[serde(default)]
    pub request: Option<ByteSize>,
    /// The largest response body passed to the client: a larger `Content-Length` → 502
    /// `response_too_large`; a streamed body is cut at the limit. Absent: no limit.
    #[serde(default)]
    pub response: Option<ByteSize>,
}

impl BodyLimits {
    /// The stricter of two limit sets, per direction.
    pub fn min(a: Option<&Self>, b: Option<&Self>) -> Option<Self> {
        fn m(x: Option<ByteSize>, y: Option<ByteSize>) -> Option<ByteSize> {
            match (x, y) {
                (Some(x), Some(y)) => Some(x.min(y)),
                (x, y) => x.or(y),
            }
        }
        match (a, b) {
            (None, None) => None,
            (a, b) => Some(Self {
                request: m(a.and_then(|l| l.request), b.and_then(|l| l.request)),
                response: m(a.and_then(|l| l.response), b.and_then(|l| l.response)),
            }),
        }
    }
}

/// Problems with a `dlp` section, as (key relative to it, message).
pub fn problems(d: &Dlp) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if d.scan.is_empty() {
        out.push((
            "dlp.scan".into(),
            "must list request and/or response".into(),
        ));
    }
    if d.max_scan.get() == 0 {
        out.push(("dlp.max_scan".into(), "must be greater than 0".into()));
    }
    if d.detectors.is_empty() && d.custom.is_empty() {
        out.push((
            "dlp.detectors".into(),
            "no detector configured: list built-in `detectors` or `custom` ones".into(),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, c) in d.custom.iter().enumerate() {
        let at = format!("dlp.custom[{i}]");
        let valid_name = !c.name.is_empty()
            && c.name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-');
        if !valid_name {
            out.push((
                format!("{at}.name"),
                "must be non-empty letters, digits, `_` or `-`".into(),
            ));
        } else if BuiltinDetector::ALL.iter().any(|b| b.as_str() == c.name) || c.name == "oversize"
        {
            out.push((
                format!("{at}.name"),
                format!("{:?} is the name of a built-in detector", c.name),
            ));
        } else if !seen.insert(c.name.as_str()) {
            out.push((format!("{at}.name"), format!("duplicate name {:?}", c.name)));
        }
        match (&c.regex, c.keywords.is_empty()) {
            (Some(_), false) | (None, true) => out.push((
                at.clone(),
                "needs exactly one of `regex` or `keywords`".into(),
            )),
            (Some(r), true) if r.is_empty() => {
                out.push((format!("{at}.regex"), "must not be empty".into()));
            }
            _ => {}
        }
        for (j, k) in c.keywords.iter().enumerate() {
            if k.is_empty() {
                out.push((format!("{at}.keywords[{j}]"), "must not be empty".into()));
            }
        }
    }
    for (i, t) in d.content_types.iter().enumerate() {
        if t != "*" && !t.contains('/') {
            out.push((
                format!("dlp.content_types[{i}]"),
                "must be a media type such as application/xml, or `*`".into(),
            ));
        }
    }
    out
}

/// Problems with a `body_limits` section, as (key relative to it, message).
pub fn limit_problems(l: &BodyLimits) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if l.request.is_some_and(|s| s.get() == 0) {
        out.push((
            "body_limits.request".into(),
            "must be greater than 0".into(),
        ));
    }
    if l.response.is_some_and(|s| s.get() == 0) {
        out.push((
            "body_limits.response".into(),
            "must be greater than 0".into(),
        ));
    }
    out
}
