//! The pipeline's stages, one file each, run in a fixed order by
//! [`crate::pipeline`]: identify → resolve → access → limits. A stage reports its
//! decisions through [`Ctx`], which applies report mode in one place and
//! builds trace lines only when tracing was asked for.

pub(crate) mod access;
pub(crate) mod credentials;
pub mod dlp;
pub(crate) mod dlp_detectors;
pub(crate) mod dlp_json;
#[cfg(test)]
mod dlp_tests;
pub(crate) mod headers;
pub(crate) mod identify;
pub(crate) mod jwt;
pub(crate) mod limits;
pub(crate) mod resolve;
pub(crate) mod shares;

use crate::error::GatewayError;
use crate::evaluation::{TraceStep, Verdict};

/// Per-request decision state shared by the stages.
#[derive(Debug)]
pub(crate) struct Ctx {
    trace_on: bool,
    pub(crate) trace: Vec<TraceStep>,
    pub(crate) reported: Vec<GatewayError>,
    /// Whether refusals that report mode may soften are only reported: set by
    /// the pipeline from the global `report_only` and the matched API's `mode`.
    pub(crate) report_mode: bool,
}

impl Ctx {
    pub(crate) fn new(trace_on: bool) -> Self {
        Self {
            trace_on,
            trace: Vec::new(),
            reported: Vec::new(),
            report_mode: false,
        }
    }

    /// Records a trace line. `reason` runs only when tracing, so the hot path
    /// never formats strings.
    pub(crate) fn step(
        &mut self,
        stage: &'static str,
        verdict: Verdict,
        reason: impl FnOnce() -> String,
    ) {
        if self.trace_on {
            self.trace.push(TraceStep {
                stage,
                verdict,
                reason: reason(),
            });
        }
    }

    /// A stage refuses the request. When the refusal is `reportable` and
    /// report mode is on, it is recorded and the request continues (`Ok`);
    /// otherwise the pipeline stops with the error.
    pub(crate) fn refuse(
        &mut self,
        stage: &'static str,
        err: GatewayError,
        reportable: bool,
        reason: impl FnOnce() -> String,
    ) -> Result<(), GatewayError> {
        if reportable && self.report_mode {
            self.step(stage, Verdict::Report, || {
                format!("{} (report mode: not enforced)", reason())
            });
            self.reported.push(err);
            Ok(())
        } else {
            self.step(stage, Verdict::Deny, reason);
            Err(err)
        }
    }

    /// A refusal that is always only reported (`default_action: report`).
    pub(crate) fn report(
        &mut self,
        stage: &'static str,
        err: GatewayError,
        reason: impl FnOnce() -> String,
    ) {
        self.step(stage, Verdict::Report, reason);
        self.reported.push(err);
    }
}
