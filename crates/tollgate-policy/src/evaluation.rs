//! The result of running the pipeline over one request.

use std::sync::Arc;

use crate::error::GatewayError;
use crate::request::Target;
use crate::stage::limits::LimitPlan;

/// What the proxy should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Forward to `Evaluation::target`.
    Allow,
    /// Answer with this error; nothing goes upstream.
    Deny(GatewayError),
}

/// How one stage decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The stage let the request continue.
    Continue,
    /// The stage refused the request.
    Deny,
    /// The stage would have refused, but runs in report mode.
    Report,
    /// The stage did not apply.
    Skip,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Continue => "continue",
            Self::Deny => "deny",
            Self::Report => "report",
            Self::Skip => "skip",
        }
    }
}

/// One line of the decision trace (what `tollgate explain` prints).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceStep {
    pub stage: &'static str,
    pub verdict: Verdict,
    pub reason: String,
}

/// The pipeline's answer for one request.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// The identified consumer (`anonymous` when unknown callers are let through).
    pub consumer: Option<Arc<str>>,
    /// The matched API, if any.
    pub api: Option<Arc<str>>,
    /// Its index in `config().apis` (see [`crate::Policy::matched_api`]), so later stages read its
    /// settings without looking the name up again.
    pub api_index: Option<usize>,
    /// Where to send the request (absent when denied before the target was resolved).
    pub target: Option<Target>,
    pub outcome: Outcome,
    /// Denials that report mode turned into log lines (the request went ahead).
    pub reported: Vec<GatewayError>,
    /// Every stage's verdict, filled only when tracing was asked for.
    pub trace: Vec<TraceStep>,
    /// The consumer was identified by a Tollgate API key in `Authorization:
    /// Bearer` (routes only): remove that header before forwarding so the key
    /// never reaches the upstream. Otherwise `Authorization` is the client's
    /// own and passes through.
    pub strip_authorization: bool,
    /// The limits to charge, when the API has limits and the request was
    /// allowed by every earlier stage (the proxy's admission step charges them).
    pub limit_plan: Option<LimitPlan>,
}

impl Evaluation {
    /// The stable decision name for logs and metrics: `allow`, `deny` or `report`.
    pub fn decision(&self) -> &'static str {
        match (&self.outcome, self.reported.is_empty()) {
            (Outcome::Deny(_), _) => "deny",
            (Outcome::Allow, true) => "allow",
            (Outcome::Allow, false) => "report",
        }
    }
}
